//! Connection churn on loopback for the benchmark: open, one-byte request and answer, close; half closed by the client first, half by the server; bounded in time and count.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// The request byte says who closes first.
const CLIENT_CLOSES: u8 = b'C';
const SERVER_CLOSES: u8 = b'S';

/// Sockets live this long at most waiting for a peer; bounds a stuck run.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub struct Churn {
    pub port: u16,
    pub threads: usize,
    pub duration: Duration,
    /// Stop after this many connections, whichever comes first.
    pub max_connections: u64,
    /// Connections per second to aim for; `None` = as fast as possible.
    pub rate: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub connections: u64,
    pub failures: u64,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn per_second(&self) -> f64 {
        self.connections as f64 / self.elapsed.as_secs_f64()
    }
}

fn serve_one(mut s: TcpStream) {
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let mut b = [0u8; 1];
    if s.read_exact(&mut b).is_err() || s.write_all(&b).is_err() {
        return;
    }
    if b[0] == CLIENT_CLOSES {
        // Wait for the client's FIN, then close: the client lingers in FIN_WAIT2 -> TIME_WAIT.
        let _ = s.read(&mut b);
    }
}

#[expect(clippy::cast_possible_truncation, reason = "AF_INET is 2")]
const AF_INET: libc::sa_family_t = libc::AF_INET as libc::sa_family_t;
#[expect(clippy::cast_possible_truncation, reason = "a sockaddr_in is 16 bytes")]
const SOCKADDR_IN_LEN: libc::socklen_t = size_of::<libc::sockaddr_in>() as libc::socklen_t;

/// Listens with one SO_REUSEPORT socket per thread; runs until `stop`.
fn server(
    port: u16,
    threads: usize,
    stop: &Arc<AtomicBool>,
) -> std::io::Result<Vec<thread::JoinHandle<()>>> {
    let mut handles = Vec::new();
    for _ in 0..threads {
        let listener = reuseport_listener(port)?;
        listener.set_nonblocking(true)?;
        let stop = stop.clone();
        handles.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        serve_one(s);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_micros(200));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(1)),
                }
            }
        }));
    }
    Ok(handles)
}

fn reuseport_listener(port: u16) -> std::io::Result<TcpListener> {
    // SAFETY: plain socket syscalls on a fresh fd.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            libc::setsockopt(fd, libc::SOL_SOCKET, opt, (&raw const one).cast(), 4);
        }
        let addr = libc::sockaddr_in {
            sin_family: AF_INET,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        if libc::bind(fd, (&raw const addr).cast(), SOCKADDR_IN_LEN) != 0
            || libc::listen(fd, 4096) != 0
        {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(TcpListener::from_raw_fd(fd))
    }
}

/// A client socket from source address `src` to loopback port `port`, so
/// the 4-tuples spread over many addresses and ephemeral ports never run
/// out under TIME_WAIT (std has no bind-before-connect).
pub fn connect_from(src: Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
    // SAFETY: plain socket syscalls on a fresh fd.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const one).cast(),
            4,
        );
        let addr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: AF_INET,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        let local = addr(src, 0);
        let remote = addr(Ipv4Addr::LOCALHOST, port);
        let len = SOCKADDR_IN_LEN;
        if libc::bind(stream.as_raw_fd(), (&raw const local).cast(), len) != 0
            || libc::connect(stream.as_raw_fd(), (&raw const remote).cast(), len) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

fn one_connection(src: Ipv4Addr, port: u16, client_first: bool) -> std::io::Result<()> {
    let mut s = connect_from(src, port)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut b = [if client_first {
        CLIENT_CLOSES
    } else {
        SERVER_CLOSES
    }];
    s.write_all(&b)?;
    s.read_exact(&mut b)?;
    if !client_first {
        let _ = s.read(&mut b);
    }
    Ok(())
}

/// Runs the churn; the server and clients live inside this call.
pub fn run(c: Churn) -> std::io::Result<Outcome> {
    let stop = Arc::new(AtomicBool::new(false));
    let servers = server(c.port, c.threads, &stop)?;
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let clients: Vec<_> = (0..c.threads)
        .map(|t| {
            let (done, failures) = (done.clone(), failures.clone());
            thread::spawn(move || {
                let per_thread_rate = c.rate.map(|r| r as f64 / c.threads as f64);
                let octet = u8::try_from(1 + t).unwrap_or(u8::MAX);
                let mut i: u64 = 0;
                while start.elapsed() < c.duration
                    && done.load(Ordering::Relaxed) < c.max_connections
                {
                    if let Some(rate) = per_thread_rate {
                        let due = Duration::from_secs_f64(i as f64 / rate);
                        if let Some(wait) = due.checked_sub(start.elapsed()) {
                            thread::sleep(wait);
                        }
                    }
                    // 127.0.T.1 .. 127.0.T.254 (T = thread + 1), a different one per
                    // connection.
                    let src = Ipv4Addr::new(127, 0, octet, 1 + u8::try_from(i % 254).unwrap_or(0));
                    match one_connection(src, c.port, i.is_multiple_of(2)) {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                    };
                    i += 1;
                }
            })
        })
        .collect();
    for client in clients {
        let _ = client.join();
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        let _ = s.join();
    }
    Ok(Outcome {
        connections: done.load(Ordering::Relaxed),
        failures: failures.load(Ordering::Relaxed),
        elapsed,
    })
}
