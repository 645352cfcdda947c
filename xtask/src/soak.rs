//! `cargo xtask soak`: the daemon under maximum connection churn for minutes on end, its memory sampled as it goes, to show it stays flat.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    bench::{build_tcplinger, cpu_seconds, free_port, machine},
    churn::{self, Churn},
};

#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// How long the churn runs.
    #[arg(long, default_value_t = 10)]
    pub minutes: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 30)]
    pub every: u64,
    /// Client (and server) threads of the churn.
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// Measure this tcplinger binary instead of building this tree's.
    #[arg(long, value_name = "PATH")]
    pub tcplinger: Option<PathBuf>,
    /// Also write the table to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The daemon under test; killed on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn rss_kb(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The daemon's own figures: one scrape, the value of each named series.
fn scrape(addr: SocketAddr, names: &[&str]) -> Vec<f64> {
    let mut text = String::new();
    if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: soak\r\n\r\n");
        let _ = s.read_to_string(&mut text);
    }
    names
        .iter()
        .map(|name| {
            text.lines()
                .find(|l| {
                    l.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with(' '))
                })
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or(f64::NAN)
        })
        .collect()
}

#[expect(
    clippy::too_many_lines,
    reason = "the soak step by step: start, churn, sample, stop, report"
)]
pub fn run(args: &SoakArgs, root: &Path) -> Result<()> {
    // SAFETY: geteuid is always safe.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the soak loads eBPF programs: run it as root");
    }
    if args.minutes == 0 || args.every == 0 {
        bail!("--minutes and --every must be at least 1");
    }
    let tcplinger = build_tcplinger(root, args.tcplinger.as_deref())?;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let mut child = Command::new(&tcplinger)
        .args(["daemon", "--listen", &listen.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the daemon")?;
    let stderr = child.stderr.take().expect("piped");
    let daemon = Daemon(child);
    let pid = daemon.0.id();
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("tracing") => break,
            Some(Ok(_)) => {}
            _ => bail!("the daemon did not start"),
        }
    }
    std::thread::spawn(move || for _ in lines.by_ref() {});
    let duration = Duration::from_secs(args.minutes * 60);
    let threads = args.threads;
    let churn = std::thread::spawn(move || {
        churn::run(Churn {
            port: free_port(),
            threads,
            duration,
            max_connections: u64::MAX,
            rate: None,
        })
    });
    eprintln!(
        "soak: {} minutes of churn, a sample every {} s",
        args.minutes, args.every
    );
    let names = [
        "tcplinger_events_total",
        "tcplinger_events_dropped_total",
        "tcplinger_tracked_sockets",
        "tcplinger_sockets_evicted_total",
    ];
    let mut table = String::from(
        "| elapsed | daemon RSS | tracked sockets | events | dropped | evicted | daemon CPU (cores) |\n|---|---|---|---|---|---|---|\n",
    );
    let start = Instant::now();
    let mut rss_samples = Vec::new();
    let (mut last_cpu, mut last_at) = (cpu_seconds(pid), Instant::now());
    while start.elapsed() < duration {
        let next = Duration::from_secs(args.every * (rss_samples.len() as u64 + 1));
        std::thread::sleep(next.saturating_sub(start.elapsed()).min(duration));
        let rss = rss_kb(pid, "VmRSS:");
        let v = scrape(listen, &names);
        let cpu = cpu_seconds(pid);
        let cores = (cpu - last_cpu) / last_at.elapsed().as_secs_f64();
        (last_cpu, last_at) = (cpu, Instant::now());
        rss_samples.push(rss);
        eprintln!(
            "soak: {:>4.0} s  RSS {:.1} MB  tracked {}  events {}  dropped {}",
            start.elapsed().as_secs_f64(),
            rss as f64 / 1024.0,
            v[2],
            v[0],
            v[1]
        );
        let _ = writeln!(
            table,
            "| {:.0} s | {:.1} MB | {} | {} | {} | {} | {cores:.3} |",
            start.elapsed().as_secs_f64(),
            rss as f64 / 1024.0,
            v[2],
            v[0],
            v[1],
            v[3]
        );
    }
    let outcome = churn
        .join()
        .map_err(|_| anyhow::anyhow!("the churn thread panicked"))?
        .context("running the churn")?;
    let peak = rss_kb(pid, "VmHWM:");
    drop(daemon);
    let first = rss_samples.first().copied().unwrap_or(0) as f64 / 1024.0;
    let last = rss_samples.last().copied().unwrap_or(0) as f64 / 1024.0;
    let max = rss_samples.iter().copied().max().unwrap_or(0) as f64 / 1024.0;
    let mut report = machine(root, args.tcplinger.as_deref());
    let _ = writeln!(
        report,
        "Soak: `tcplinger daemon` for {} minutes of loopback churn as fast as it goes ({} threads): {} connections, {:.0}/s, {} failed.\n",
        args.minutes,
        args.threads,
        outcome.connections,
        outcome.per_second(),
        outcome.failures
    );
    report.push_str(&table);
    let _ = writeln!(
        report,
        "\nDaemon RSS: {first:.1} MB at the first sample, {last:.1} MB at the last, {max:.1} MB at most among samples; peak (VmHWM, start-up included) {:.1} MB.",
        peak as f64 / 1024.0
    );
    println!("{report}");
    if let Some(path) = &args.out {
        fs::write(path, &report).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
