//! TCP peers for the tests. The test binary re-executes itself (`__peer ...`) inside a namespace, so each peer is its own process with its own pid and comm.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

pub const SERVER_COMM: &str = "tl-server";
pub const CLIENT_COMM: &str = "tl-client";

/// Bounds every blocking call of a peer: a stuck test fails instead of hanging.
const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// Who sends the first FIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closer {
    /// This side closes right after the exchange.
    Me,
    /// This side waits for the peer's FIN, then closes.
    Peer,
}

impl Closer {
    fn arg(self) -> &'static str {
        match self {
            Closer::Me => "closes",
            Closer::Peer => "waits",
        }
    }
}

/// A peer process; killed if still running when dropped.
pub struct Peer {
    child: Child,
    pub pid: u32,
}

impl Peer {
    fn spawn(ns: &str, role: &str, addr: SocketAddr, closer: Closer, count: u32) -> Peer {
        let exe = std::env::current_exe().expect("test executable path");
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(exe)
            .args([
                "__peer",
                role,
                &addr.to_string(),
                closer.arg(),
                &count.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning peer");
        // `ip netns exec` execs the command, so the pid is the peer's own.
        let pid = child.id();
        Peer { child, pid }
    }

    /// A server listening on `addr` in `ns`; returns once it is listening.
    pub fn server(ns: &str, addr: SocketAddr, closer: Closer, count: u32) -> Peer {
        let mut peer = Self::spawn(ns, "server", addr, closer, count);
        let stdout = peer.child.stdout.take().expect("peer stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(IO_TIMEOUT)
            .expect("server did not start listening");
        assert_eq!(line.trim(), "listening", "server said {line:?}");
        peer
    }

    pub fn client(ns: &str, addr: SocketAddr, closer: Closer, count: u32) -> Peer {
        Self::spawn(ns, "client", addr, closer, count)
    }

    /// Waits for the peer to finish its connections successfully.
    pub fn finish(mut self) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for peer") {
                assert!(status.success(), "peer {} failed: {status}", self.pid);
                return;
            }
            assert!(
                start.elapsed() < IO_TIMEOUT,
                "peer {} did not finish",
                self.pid
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn set_comm(name: &str) {
    let mut raw = [0u8; 16];
    raw[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, raw.as_ptr()) };
}

/// One request/response, then the close as `closer` says.
fn exchange(mut stream: TcpStream, server: bool, closer: Closer) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = [0u8; 64];
    if server {
        let n = stream.read(&mut buf)?;
        assert!(n > 0, "client sent nothing");
        stream.write_all(b"ok\n")?;
    } else {
        stream.write_all(b"req\n")?;
        let n = stream.read(&mut buf)?;
        assert!(n > 0, "server sent nothing");
    }
    if closer == Closer::Peer {
        // Wait for the peer's FIN (read returns 0) before closing.
        while stream.read(&mut buf)? > 0 {}
    }
    drop(stream);
    Ok(())
}

/// Entry point of a peer process: `__peer server|client ADDR closes|waits COUNT`.
pub fn run(args: &[String]) -> ! {
    let [role, addr, closer, count] = args else {
        eprintln!("usage: __peer server|client ADDR closes|waits COUNT");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse().expect("peer address");
    let closer = if closer == "closes" {
        Closer::Me
    } else {
        Closer::Peer
    };
    let count: u32 = count.parse().expect("peer count");
    let result: std::io::Result<()> = match role.as_str() {
        "server" => {
            set_comm(SERVER_COMM);
            (|| {
                let listener = TcpListener::bind(addr)?;
                println!("listening");
                std::io::stdout().flush()?;
                for _ in 0..count {
                    let (stream, _) = listener.accept()?;
                    exchange(stream, true, closer)?;
                }
                Ok(())
            })()
        }
        _ => {
            set_comm(CLIENT_COMM);
            (|| {
                for _ in 0..count {
                    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
                    exchange(stream, false, closer)?;
                }
                Ok(())
            })()
        }
    };
    match result {
        Ok(()) => std::process::exit(0),
        Err(err) => {
            eprintln!("peer {role}: {err}");
            std::process::exit(1);
        }
    }
}
