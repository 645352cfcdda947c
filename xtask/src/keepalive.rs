//! Keep-alive request/response on loopback for the benchmark: a few persistent connections, a fixed-size request and reply at a time on each, bounded in time and count.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

/// A socket waits this long at most for its peer; bounds a stuck run.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the connections may take to be set up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub struct KeepAlive {
    /// Persistent connections, each with its own client and server thread.
    pub connections: usize,
    /// Bytes of each request and of each reply.
    pub bytes: usize,
    pub duration: Duration,
    /// Stop after this many requests in all, whichever comes first.
    pub max_requests: u64,
    /// Requests per second to aim for, over all connections; `None` = as
    /// fast as possible.
    pub rate: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Requests answered.
    pub requests: u64,
    /// Connections that broke before the end (each stops its client).
    pub failures: u64,
    pub elapsed: Duration,
}

/// Answers each request of `bytes` with a reply of the same size until the
/// client closes (or goes silent for [`IO_TIMEOUT`]).
fn serve(mut s: TcpStream, bytes: usize) {
    let mut buf = vec![0u8; bytes];
    let reply = vec![b'r'; bytes];
    while s.read_exact(&mut buf).is_ok() {
        if s.write_all(&reply).is_err() {
            return;
        }
    }
}

/// One client: request, wait for the whole reply, again, until the time or
/// its share of the requests is up. Returns the requests answered and
/// whether the connection broke.
fn client(mut s: TcpStream, c: KeepAlive, start: Instant, max: u64) -> (u64, bool) {
    let request = vec![b'q'; c.bytes];
    let mut reply = vec![0u8; c.bytes];
    let per_connection_rate = c.rate.map(|r| r as f64 / c.connections as f64);
    let mut done: u64 = 0;
    while done < max && start.elapsed() < c.duration {
        if let Some(rate) = per_connection_rate {
            let due = Duration::from_secs_f64(done as f64 / rate);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                thread::sleep(wait.min(c.duration));
            }
        }
        if s.write_all(&request).is_err() || s.read_exact(&mut reply).is_err() {
            return (done, true);
        }
        done += 1;
    }
    (done, false)
}

fn configure(s: &TcpStream) -> std::io::Result<()> {
    // Each request is written whole: send it now, as an RPC client would.
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))
}

/// The connections, client and server end of each, set up before the clock
/// starts.
fn connect_all(n: usize) -> std::io::Result<Vec<(TcpStream, TcpStream)>> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    listener.set_nonblocking(true)?;
    let to: SocketAddr = listener.local_addr()?;
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let mut pairs = Vec::with_capacity(n);
    for _ in 0..n {
        let client = TcpStream::connect_timeout(&to, SETUP_TIMEOUT)?;
        let server = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e),
            }
        };
        server.set_nonblocking(false)?;
        configure(&client)?;
        configure(&server)?;
        pairs.push((client, server));
    }
    Ok(pairs)
}

/// Runs the workload; its server and clients live inside this call.
pub fn run(c: KeepAlive) -> std::io::Result<Outcome> {
    let connections = c.connections.max(1);
    let c = KeepAlive {
        connections,
        bytes: c.bytes.max(1),
        ..c
    };
    let pairs = connect_all(connections)?;
    let max_per_connection = c.max_requests / connections as u64;
    let start = Instant::now();
    let mut servers = Vec::with_capacity(connections);
    let mut clients = Vec::with_capacity(connections);
    for (client_end, server_end) in pairs {
        servers.push(thread::spawn(move || serve(server_end, c.bytes)));
        clients.push(thread::spawn(move || {
            client(client_end, c, start, max_per_connection)
        }));
    }
    let (mut requests, mut failures) = (0, 0);
    for handle in clients {
        // A client that panicked answered nothing we can count.
        let (done, broke) = handle.join().unwrap_or((0, true));
        requests += done;
        failures += u64::from(broke);
    }
    let elapsed = start.elapsed();
    // The clients' ends are closed now: each server sees EOF and returns.
    for handle in servers {
        let _ = handle.join();
    }
    Ok(Outcome {
        requests,
        failures,
        elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_requests_and_stops_at_the_count() {
        let o = run(KeepAlive {
            connections: 2,
            bytes: 64,
            duration: Duration::from_secs(10),
            max_requests: 2_000,
            rate: None,
        })
        .expect("loopback keep-alive");
        assert_eq!(o.requests, 2_000);
        assert_eq!(o.failures, 0);
        assert!(o.elapsed < Duration::from_secs(10));
    }

    #[test]
    fn stops_at_the_time() {
        let o = run(KeepAlive {
            connections: 1,
            bytes: 8,
            duration: Duration::from_millis(200),
            max_requests: u64::MAX,
            rate: Some(1_000),
        })
        .expect("loopback keep-alive");
        // About 200 at 1,000/s; generous bounds for a busy machine.
        assert!((50..=260).contains(&o.requests), "{} requests", o.requests);
        assert!(o.elapsed < Duration::from_secs(2));
    }
}
