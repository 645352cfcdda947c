//! Connection churn on loopback, in the test process: many short connections as fast as a few threads make them, for tests of what a tracer costs over millions of connections. Bounded by count and time.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// Churn under way: a server and clients on `port`, until `total`
/// connections are made or `limit` passes.
pub struct Churn {
    made: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Churn {
    /// Starts `clients` client threads and as many server threads. The
    /// server closes first, so TIME_WAIT lands on the listening side and
    /// client ports are never exhausted, however many connections.
    pub fn start(port: u16, clients: usize, total: u64, limit: Duration) -> Churn {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("churn listener");
        let made = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + limit;
        let mut threads = Vec::new();
        for _ in 0..clients {
            let listener = listener.try_clone().expect("sharing the listener");
            listener
                .set_nonblocking(true)
                .expect("non-blocking listener");
            let stop = stop.clone();
            threads.push(thread::spawn(move || serve(&listener, &stop)));
        }
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        for _ in 0..clients {
            let (made, failed, stop) = (made.clone(), failed.clone(), stop.clone());
            threads.push(thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if made.fetch_add(1, Ordering::Relaxed) >= total {
                        made.fetch_sub(1, Ordering::Relaxed);
                        break;
                    }
                    if exchange(target).is_err() {
                        made.fetch_sub(1, Ordering::Relaxed);
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        Churn {
            made,
            failed,
            stop,
            threads,
        }
    }

    /// True until the clients are done (count reached or time up).
    pub fn running(&self) -> bool {
        self.threads[self.threads.len() / 2..]
            .iter()
            .any(|t| !t.is_finished())
    }

    /// Connections made so far.
    pub fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    /// Waits for the clients to finish (count or time), stops the server;
    /// returns the connections made and the attempts that failed.
    pub fn finish(mut self) -> (u64, u64) {
        let clients: Vec<_> = self.threads.drain(self.threads.len() / 2..).collect();
        for t in clients {
            let _ = t.join();
        }
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        (self.made(), self.failed.load(Ordering::Relaxed))
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One connection: a byte each way, then the server's FIN, then ours.
fn exchange(target: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect(target)?;
    s.write_all(b"?")?;
    let mut buf = [0u8; 8];
    // The answer, then end of stream.
    while s.read(&mut buf)? > 0 {}
    Ok(())
}

fn serve(listener: &TcpListener, stop: &AtomicBool) {
    let mut buf = [0u8; 1];
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut s, _)) => {
                let _ = s.set_nonblocking(false);
                if s.read_exact(&mut buf).is_ok() {
                    let _ = s.write_all(b"!");
                }
            }
            // Pacing, not a settle: nobody is waiting to be accepted, so
            // look again shortly instead of spinning (the loop is
            // non-blocking so that it sees `stop`).
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_micros(200));
            }
            Err(_) => thread::sleep(Duration::from_millis(1)),
        }
    }
}
