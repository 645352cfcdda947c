//! Runs the kernel skips as nested (recursion misses) under the pattern that makes them: orphans finished by a delayed ACK's timer in softirq while processes close other sockets on the same CPU; prints each tracer's "missed" count, interleaved.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::churn;

#[derive(Debug, clap::Args)]
pub struct NestedArgs {
    /// tcplinger binaries to compare (each one `watch --format json`).
    #[arg(long = "tcplinger", required = true)]
    pub binaries: Vec<PathBuf>,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds of load per run.
    #[arg(long, default_value_t = 8)]
    pub seconds: u64,
}

/// Clients of the stuck server, each sending a byte, waiting, closing.
const STUCK_THREADS: usize = 8;
/// How long a client waits before it closes: long enough for the server
/// to be in delayed-ACK (pingpong) mode when the FIN comes.
const STUCK_WAIT: Duration = Duration::from_millis(20);

pub fn run(args: &NestedArgs) -> Result<()> {
    println!(
        "| round | tracer | stuck-server connections | churn connections | events | missed (hook busy) |\n|---|---|---|---|---|---|"
    );
    for round in 1..=args.rounds {
        // Each round starts one binary further along.
        for i in 0..args.binaries.len() {
            let binary = &args.binaries[(i + round - 1) % args.binaries.len()];
            let (stuck, churned, events, missed) = one(binary, Duration::from_secs(args.seconds))?;
            println!(
                "| {round} | {} | {stuck} | {churned} | {events} | {missed} |",
                binary.display()
            );
        }
    }
    Ok(())
}

/// One run: the tracer, then the two loads at once; its summary's counts.
fn one(binary: &PathBuf, seconds: Duration) -> Result<(u64, u64, u64, u64)> {
    let mut tracer = Command::new(binary)
        .args(["watch", "--format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stderr = tracer.stderr.take().context("tracer stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    // Attached once it says so.
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("Ctrl-C") => break,
            Some(Ok(_)) => {}
            _ => {
                let _ = tracer.wait();
                bail!("{} ended before tracing", binary.display());
            }
        }
    }
    let churn = thread::spawn(move || {
        churn::run(churn::Churn {
            port: 18_998,
            threads: 4,
            duration: seconds,
            max_connections: u64::MAX,
            rate: None,
        })
    });
    let stuck = stuck_server(seconds)?;
    let churned = churn
        .join()
        .map_err(|_| anyhow::anyhow!("churn panicked"))??
        .connections;
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(tracer.id().cast_signed(), libc::SIGINT) };
    let summary: Vec<String> = lines.map_while(Result::ok).collect();
    tracer.wait()?;
    let last = summary
        .iter()
        .rev()
        .find(|l| l.contains("missed (hook busy)"))
        .with_context(|| format!("no summary from {}: {summary:?}", binary.display()))?;
    // "tcplinger: 5 events, 0 dropped (ring full), 2 missed (hook busy), ...":
    // the number is the word before what it counts.
    let count = |what: &str| -> u64 {
        last.split(", ")
            .find_map(|part| part.strip_suffix(what)?.split_whitespace().next_back())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    Ok((stuck, churned, count("events"), count("missed (hook busy)")))
}

/// A server that reads one byte and never answers nor closes, and clients
/// that close first: each client socket's FIN_WAIT1 -> FIN_WAIT2 -> CLOSE
/// comes in a softirq when the server's delayed ACK's timer fires.
/// Returns the connections made.
fn stuck_server(seconds: Duration) -> Result<u64> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let held = Arc::new(Mutex::new(Vec::new()));
    let acceptor = {
        let (stop, held) = (stop.clone(), held.clone());
        listener.set_nonblocking(true)?;
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                        let mut b = [0u8; 1];
                        let _ = s.read(&mut b);
                        if let Ok(mut held) = held.lock() {
                            held.push(s);
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(1)),
                }
            }
        })
    };
    let start = Instant::now();
    let clients: Vec<_> = (0..STUCK_THREADS)
        .map(|_| {
            thread::spawn(move || {
                let mut made = 0u64;
                while start.elapsed() < seconds {
                    let Ok(mut s) = TcpStream::connect(addr) else {
                        continue;
                    };
                    if s.write_all(b"x").is_ok() {
                        made += 1;
                    }
                    thread::sleep(STUCK_WAIT);
                }
                made
            })
        })
        .collect();
    let made = clients.into_iter().map(|c| c.join().unwrap_or(0)).sum();
    stop.store(true, Ordering::Relaxed);
    let _ = acceptor.join();
    // The held sockets close here (bounded: one per connection made).
    drop(held);
    Ok(made)
}
