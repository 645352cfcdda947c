//! TCP peers for the tests. The test binary re-executes itself (`__peer ...`) inside a namespace, so each peer is its own process with its own pid and comm; its behaviour is set by flags.

use std::{
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};

pub const SERVER_COMM: &str = "tl-server";
pub const CLIENT_COMM: &str = "tl-client";

/// Bounds every blocking call of a peer: a stuck test fails instead of hanging.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// UDP port both peers sink jam datagrams on, so no ICMP answers them.
const JAM_PORT: u16 = 9;

/// When a peer closes its side, after the request/response exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Close {
    /// Right away: this side sends the first FIN.
    First,
    /// After the peer's FIN (read returns 0).
    AfterEof,
    /// Never: the socket stays open until the process is killed.
    Never,
    /// When a line arrives on stdin (clients only).
    OnStdin,
    /// Shut down writing right away (the first FIN), then wait for the
    /// peer's FIN before closing: FIN_WAIT2 spent in the full socket.
    ShutdownFirst,
}

#[derive(Debug, Clone, Parser)]
#[command(no_binary_name = true)]
pub struct PeerArgs {
    /// `server` or `client`.
    pub role: String,
    /// Listen on (server) or connect to (client).
    pub addr: SocketAddr,
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    #[arg(long, value_enum, default_value_t = Close::First)]
    pub close: Close,
    /// Server: sleep this long after reading the request (a stuck handler).
    #[arg(long, default_value_t = 0)]
    pub hold_ms: u64,
    /// Server: do not answer.
    #[arg(long)]
    pub no_reply: bool,
    /// Client: give up waiting for the answer after this long.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Close with SO_LINGER 0: an abortive close (RST).
    #[arg(long)]
    pub linger0: bool,
    /// Before closing, queue UDP junk to this address's port 9, so a
    /// rate-limited link delays the FIN behind it.
    #[arg(long)]
    pub jam: Option<std::net::IpAddr>,
    /// After the exchange, keep the connection this long before closing.
    #[arg(long, default_value_t = 0)]
    pub keep_ms: u64,
    /// Run all `count` connections at once, one thread each.
    #[arg(long)]
    pub parallel: bool,
    /// Server: answer with this many bytes instead of `ok\n`.
    #[arg(long)]
    pub reply_bytes: Option<usize>,
    /// Client: a connect that fails is said (`connect failed: ...`) and
    /// the next attempted, rather than ending the peer.
    #[arg(long)]
    pub connect_may_fail: bool,
}

/// A peer process; killed if still running when dropped.
pub struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    pub pid: u32,
}

impl Peer {
    /// Starts `__peer ARGS` in namespace `ns`. A server returns once it is
    /// listening; a client once it has connected and exchanged.
    pub fn start(ns: &str, args: &[&str]) -> Peer {
        let exe = std::env::current_exe().expect("test executable path");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(exe)
            .arg("__peer")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning peer");
        let stdout = child.stdout.take().expect("peer stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // `ip netns exec` execs the command, so the pid is the peer's own.
        let pid = child.id();
        let stdin = child.stdin.take();
        let peer = Peer {
            child,
            stdin,
            lines,
            pid,
        };
        if args.first() == Some(&"server") {
            peer.expect_line("listening");
        }
        peer
    }

    /// A server on `addr` in `ns` with extra flags; returns once it listens.
    pub fn server(ns: &str, addr: SocketAddr, flags: &[&str]) -> Peer {
        let addr = addr.to_string();
        let mut args = vec!["server", addr.as_str()];
        args.extend_from_slice(flags);
        Self::start(ns, &args)
    }

    /// A client of `addr` in `ns` with extra flags.
    pub fn client(ns: &str, addr: SocketAddr, flags: &[&str]) -> Peer {
        let addr = addr.to_string();
        let mut args = vec!["client", addr.as_str()];
        args.extend_from_slice(flags);
        Self::start(ns, &args)
    }

    /// Waits for the peer to print `want` (e.g. `connected`).
    pub fn expect_line(&self, want: &str) {
        let line = self
            .lines
            .recv_timeout(IO_TIMEOUT)
            .unwrap_or_else(|_| panic!("peer {} never said {want:?}", self.pid));
        assert_eq!(line.trim(), want, "peer {} said {line:?}", self.pid);
    }

    /// Sends a line to the peer's stdin (`--close on-stdin`).
    pub fn tell(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("peer stdin");
        writeln!(stdin, "{line}").expect("writing to peer");
        stdin.flush().expect("flushing peer stdin");
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

fn set_linger0(stream: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a valid fd and a properly sized struct.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            libc::socklen_t::try_from(size_of::<libc::linger>()).expect("a small struct"),
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

/// Reads until EOF; a reset counts as the end too.
fn read_to_eof(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Two full-size datagrams: the first uses the link's burst, the second
/// (and the FIN behind it) waits for the rate limiter.
fn jam(to: std::net::IpAddr) -> std::io::Result<()> {
    let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .expect("literal");
    let socket = UdpSocket::bind(bind)?;
    for _ in 0..2 {
        socket.send_to(&[0u8; 1400], (to, JAM_PORT))?;
    }
    Ok(())
}

/// Closes as `--close` says; a connection never closed is handed back to
/// be held.
fn close(mut stream: TcpStream, args: &PeerArgs) -> std::io::Result<Option<TcpStream>> {
    // The scenario, not a settle: `--keep-ms` is how long the connection
    // lives before this side acts (a fixed age, an idle pooled connection).
    std::thread::sleep(Duration::from_millis(args.keep_ms));
    match args.close {
        Close::First => {}
        Close::AfterEof => read_to_eof(&mut stream)?,
        Close::Never => return Ok(Some(stream)),
        Close::OnStdin => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
        }
        Close::ShutdownFirst => {
            stream.shutdown(std::net::Shutdown::Write)?;
            read_to_eof(&mut stream)?;
        }
    }
    if let Some(to) = args.jam {
        jam(to)?;
    }
    if args.linger0 {
        set_linger0(&stream);
    }
    drop(stream);
    Ok(None)
}

/// Runs `one` `count` times, in turn or all at once; returns the
/// connections to hold open.
fn repeat(
    args: &PeerArgs,
    mut next: impl FnMut() -> std::io::Result<TcpStream>,
    one: impl Fn(TcpStream) -> std::io::Result<Option<TcpStream>> + Sync,
) -> std::io::Result<Vec<TcpStream>> {
    let mut held = Vec::new();
    if args.parallel {
        let streams = (0..args.count)
            .map(|_| next())
            .collect::<std::io::Result<Vec<_>>>()?;
        let results: Vec<std::io::Result<Option<TcpStream>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = streams
                .into_iter()
                .map(|s| scope.spawn(|| one(s)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("peer thread"))
                .collect()
        });
        for r in results {
            held.extend(r?);
        }
    } else {
        for _ in 0..args.count {
            held.extend(one(next()?)?);
        }
    }
    Ok(held)
}

fn serve(args: &PeerArgs) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.addr)?;
    println!("listening");
    std::io::stdout().flush()?;
    let held = repeat(
        args,
        || listener.accept().map(|(s, _)| s),
        |mut stream| {
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            let mut buf = [0u8; 64];
            let n = stream.read(&mut buf)?;
            if n == 0 {
                // A client killed before its request (a test ending
                // churn by killing both peers): an error, not a panic's
                // backtrace in the test log.
                return Err(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "client sent nothing",
                ));
            }
            // The scenario: a handler stuck this long (the peer's FIN, if
            // it comes, waits in CLOSE_WAIT meanwhile).
            std::thread::sleep(Duration::from_millis(args.hold_ms));
            if !args.no_reply {
                match args.reply_bytes {
                    Some(n) => stream.write_all(&vec![b'x'; n])?,
                    None => stream.write_all(b"ok\n")?,
                }
            }
            close(stream, args)
        },
    )?;
    if !held.is_empty() {
        // The scenario: keep them open until the test kills this process;
        // the sleep only bounds how long they stay if it never does.
        std::thread::sleep(IO_TIMEOUT * 3);
    }
    Ok(())
}

fn connect(args: &PeerArgs) -> std::io::Result<()> {
    if args.connect_may_fail {
        // Each attempt in turn; a failure is the scenario.
        for _ in 0..args.count {
            match TcpStream::connect_timeout(&args.addr, IO_TIMEOUT) {
                Ok(stream) => drop(stream),
                Err(e) => println!("connect failed: {e}"),
            }
        }
        println!("done");
        return std::io::stdout().flush();
    }
    let held = repeat(
        args,
        || TcpStream::connect_timeout(&args.addr, IO_TIMEOUT),
        |mut stream| {
            stream.write_all(b"req\n")?;
            let timeout = args.timeout_ms.map_or(IO_TIMEOUT, Duration::from_millis);
            stream.set_read_timeout(Some(timeout))?;
            let mut buf = [0u8; 64];
            match stream.read(&mut buf) {
                Ok(_) => {}
                // The client-side timeout: give up on the answer and close.
                Err(e)
                    if args.timeout_ms.is_some()
                        && matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e),
            }
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            if args.count == 1 {
                println!("connected");
                std::io::stdout().flush()?;
            }
            close(stream, args)
        },
    )?;
    println!("done");
    std::io::stdout().flush()?;
    if !held.is_empty() {
        // As the server's: held open until killed, bounded all the same.
        std::thread::sleep(IO_TIMEOUT * 3);
    }
    Ok(())
}

/// Entry point of a holder process: `__hold N` opens N loopback
/// connections (2N sockets, both ends here: the fd limit of one process
/// bounds N), says `held`, and keeps them until its stdin closes.
pub fn hold(argv: &[String]) -> ! {
    let n: usize = argv.first().and_then(|n| n.parse().ok()).expect("__hold N");
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding on loopback");
    let addr = listener.local_addr().expect("local address");
    let mut held = Vec::with_capacity(2 * n);
    for _ in 0..n {
        held.push(TcpStream::connect(addr).expect("connecting on loopback"));
        held.push(listener.accept().expect("accepting on loopback").0);
    }
    println!("held");
    std::io::stdout().flush().expect("stdout");
    let mut rest = String::new();
    let _ = std::io::stdin().read_to_string(&mut rest);
    drop(held);
    std::process::exit(0)
}

/// Entry point of a peer process: `__peer server|client ADDR [flags]`.
pub fn run(argv: &[String]) -> ! {
    let args = match PeerArgs::try_parse_from(argv) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("peer: {e}");
            std::process::exit(2);
        }
    };
    // Absorb the other side's jam datagrams (no ICMP port-unreachable noise).
    let _sink = args.jam.map(|to| {
        let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:9" } else { "[::]:9" }
            .parse()
            .expect("literal");
        UdpSocket::bind(any).expect("binding the jam sink")
    });
    let result = match args.role.as_str() {
        "server" => {
            set_comm(SERVER_COMM);
            serve(&args)
        }
        "client" => {
            set_comm(CLIENT_COMM);
            connect(&args)
        }
        other => {
            eprintln!("peer: unknown role {other}");
            std::process::exit(2);
        }
    };
    match result {
        Ok(()) => std::process::exit(0),
        Err(err) => {
            eprintln!("peer {}: {err}", args.role);
            std::process::exit(1);
        }
    }
}
