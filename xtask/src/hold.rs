//! The scale part of the benchmark: many real ESTABLISHED sockets held open on loopback by helper processes (a process may not raise its fd limit here), then `sockets` and `daemon` timed and weighed against them.

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, TcpListener},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::churn::connect_from;

/// Connection pairs per helper: two fds each, under a 20,000 fd limit.
const PAIRS_PER_HOLDER: u64 = 9_000;

fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with valid pointers.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
    }
}

/// `xtask hold INDEX PAIRS`: opens PAIRS loopback connections (both ends
/// held here), says "held", and keeps them until stdin closes.
pub fn hold(index: u8, pairs: u64) -> Result<()> {
    raise_fd_limit();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let to = listener.local_addr()?;
    let mut held = Vec::with_capacity(2 * usize::try_from(pairs)?);
    for i in 0..pairs {
        // A source address per 250 connections keeps ephemeral ports plentiful.
        let src = Ipv4Addr::new(
            127,
            10 + index,
            u8::try_from(i / 250)?,
            1 + u8::try_from(i % 250)?,
        );
        let client = connect_from(src, to.port())?;
        let (server, _) = listener.accept()?;
        held.push(client);
        held.push(server);
    }
    println!("held {}", held.len());
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

/// Helpers holding the sockets; they let go when dropped.
struct Holders(Vec<Child>);

impl Drop for Holders {
    fn drop(&mut self) {
        for child in &mut self.0 {
            drop(child.stdin.take());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_holders(sockets: u64) -> Result<Holders> {
    let exe = std::env::current_exe()?;
    let mut pairs_left = sockets / 2;
    let mut holders = Holders(Vec::new());
    let mut index = 0u8;
    while pairs_left > 0 {
        let pairs = pairs_left.min(PAIRS_PER_HOLDER);
        let child = Command::new(&exe)
            .args(["hold", &index.to_string(), &pairs.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a socket holder")?;
        holders.0.push(child);
        pairs_left -= pairs;
        index += 1;
    }
    for child in &mut holders.0 {
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("piped")).read_line(&mut line)?;
        if !line.starts_with("held") {
            bail!("a socket holder failed: {line:?}");
        }
    }
    Ok(holders)
}

/// Runs `cmd` to the end; wall time and peak RSS (kB) from wait4.
fn timed(mut cmd: Command) -> Result<(Duration, u64)> {
    let start = Instant::now();
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers, a pid of our own child.
    unsafe { libc::wait4(child.id().cast_signed(), &raw mut status, 0, &raw mut usage) };
    Ok((start.elapsed(), usage.ru_maxrss.cast_unsigned()))
}

fn rss_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// What the daemon did on a host at rest.
struct DaemonAtRest {
    /// From start until it said it traces (the start-up snapshot included).
    ready: Duration,
    rss_kb: u64,
    peak_rss_kb: u64,
    /// user+sys CPU per second of wall over `settle`, after ready.
    cores: f64,
}

/// The daemon from start until it says it traces; then its CPU over
/// `settle` (which includes its periodic looks at every open socket) and
/// its RSS at the end.
fn daemon_at_rest(tcplinger: &Path, settle: Duration) -> Result<DaemonAtRest> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let start = Instant::now();
    let mut child = Command::new(tcplinger)
        // Not the host's history: this measures the tracer at rest.
        .args([
            "daemon",
            "--no-history",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let err = child.stderr.take().expect("piped");
    let mut lines = BufReader::new(err).lines();
    let ready = loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("tracing") => break start.elapsed(),
            Some(_) => {}
            None => bail!("the daemon exited before tracing"),
        }
    };
    let cpu0 = crate::bench::cpu_seconds(child.id());
    std::thread::sleep(settle);
    let cores = (crate::bench::cpu_seconds(child.id()) - cpu0) / settle.as_secs_f64();
    let (rss_kb, peak_rss_kb) = (rss_kb(child.id(), "VmRSS:"), rss_kb(child.id(), "VmHWM:"));
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id().cast_signed(), libc::SIGTERM) };
    let _ = child.wait();
    Ok(DaemonAtRest {
        ready,
        rss_kb,
        peak_rss_kb,
        cores,
    })
}

/// Long enough for two of the daemon's looks at every open socket (one
/// each 5 s).
const SETTLE: Duration = Duration::from_secs(11);

pub fn scale(sockets: u64, tcplinger: &Path) -> Result<String> {
    let mb = |kb: u64| kb as f64 / 1024.0;
    let mut s = String::from("| measurement | figure |\n|---|---|\n");
    eprintln!("bench: daemon idle");
    let idle = daemon_at_rest(tcplinger, SETTLE)?;
    let _ = writeln!(
        s,
        "| daemon on an idle host: RSS {} s after start (peak during start-up) / CPU | {:.1} MB ({:.1} MB) / {:.3} cores |",
        SETTLE.as_secs(),
        mb(idle.rss_kb),
        mb(idle.peak_rss_kb),
        idle.cores
    );
    eprintln!("bench: holding {sockets} ESTABLISHED sockets");
    let holders = start_holders(sockets)?;
    let mut sockets_cmd = Command::new(tcplinger);
    sockets_cmd.args(["sockets", "--format", "json"]);
    let (took, peak) = timed(sockets_cmd)?;
    let _ = writeln!(
        s,
        "| `tcplinger sockets` with {sockets} ESTABLISHED sockets: wall time / peak RSS | {:.2} s / {:.1} MB |",
        took.as_secs_f64(),
        mb(peak)
    );
    let held = daemon_at_rest(tcplinger, SETTLE)?;
    let _ = writeln!(
        s,
        "| daemon with {sockets} ESTABLISHED sockets: start to tracing (snapshot included) | {:.2} s |",
        held.ready.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "| daemon with {sockets} ESTABLISHED sockets: RSS {} s later (peak) / CPU | {:.1} MB ({:.1} MB) / {:.3} cores |",
        SETTLE.as_secs(),
        mb(held.rss_kb),
        mb(held.peak_rss_kb),
        held.cores
    );
    drop(holders);
    Ok(format!(
        "Scale: {sockets} real ESTABLISHED sockets held on loopback by helper processes.\n\n{s}"
    ))
}
