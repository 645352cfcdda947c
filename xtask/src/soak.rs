//! `cargo xtask soak`: the daemon for minutes on end under maximum connection churn, with short-lived processes (each with a name of its own, in a cgroup of its own) churning beside it; its memory, series and CPU sampled as it goes, to show they stay flat.

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
    procs::{self, ProcChurn},
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
    /// Short-lived processes started per second, each in a scratch cgroup
    /// of its own.
    #[arg(long, default_value_t = 20)]
    pub procs_per_second: u32,
    /// Connections each short-lived process opens and closes.
    #[arg(long, default_value_t = 10)]
    pub proc_connections: u32,
    /// Seconds each short-lived process spreads its connections over.
    #[arg(long, default_value_t = 3)]
    pub proc_seconds: u64,
    /// Process names the short-lived processes cycle through (the daemon
    /// keeps series for 200).
    #[arg(long, default_value_t = 400)]
    pub proc_names: u32,
    /// Measure this tcplinger binary instead of building this tree's.
    #[arg(long, value_name = "PATH")]
    pub tcplinger: Option<PathBuf>,
    /// Run the daemon without its history (by default it keeps one in a
    /// scratch directory, and its size is sampled).
    #[arg(long)]
    pub no_history: bool,
    /// The daemon's --history-max-bytes (e.g. 8M, to see the bound hold
    /// within the soak).
    #[arg(long, value_name = "BYTES", default_value = "256MiB")]
    pub history_max_bytes: String,
    /// Also write the table to this file, and the daemon's exposition
    /// after warm-up and at the end beside it (`FILE.warm.prom`,
    /// `FILE.end.prom`), to see which series came.
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

/// The 1-minute load average of the machine.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string()
}

/// The daemon's exposition: one scrape of /metrics (empty if it failed).
fn scrape(addr: SocketAddr) -> String {
    let mut text = String::new();
    if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: soak\r\n\r\n");
        let _ = s.read_to_string(&mut text);
    }
    // The body only: what follows the headers.
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// The value of each named series without labels, in one exposition.
fn values(text: &str, names: &[&str]) -> Vec<f64> {
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

/// The series Prometheus would store from one scrape: every line but
/// comments (a histogram's every bucket is one).
fn series(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count()
}

/// Series per metric family (a histogram's buckets, sum and count under
/// its name).
fn by_family(text: &str) -> std::collections::BTreeMap<String, usize> {
    let mut families = std::collections::BTreeMap::new();
    for l in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name = l.split(['{', ' ']).next().unwrap_or(l);
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        *families.entry(name.to_string()).or_default() += 1;
    }
    families
}

/// How many distinct values `label` takes among the series of `metric`.
fn distinct(text: &str, metric: &str, label: &str) -> usize {
    let prefix = format!("{metric}{{");
    let key = format!("{label}=\"");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let rest = &l[l.find(&key)? + key.len()..];
            rest.split('"').next()
        })
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// How fast the history grew (from the first sample with a minute in it
/// to the last, per hour), and how long `report --since` took to read
/// the whole soak back.
fn history_growth(sizes: &[(f64, f64)], tcplinger: &Path, dir: &Path, rate: f64) -> String {
    let written: Vec<&(f64, f64)> = sizes.iter().filter(|(_, b)| *b > 0.0).collect();
    let growth = match (written.first(), written.last()) {
        (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) / (b.0 - a.0) * 3600.0,
        _ => 0.0,
    };
    let asked = Instant::now();
    let out = Command::new(tcplinger)
        .args([
            "report",
            "--since",
            "2h",
            "--format",
            "json",
            "--history-dir",
        ])
        .arg(dir)
        .stderr(Stdio::null())
        .output();
    let took = asked.elapsed();
    let read = match out {
        Ok(o) if o.status.success() => format!("{:.2} s", took.as_secs_f64()),
        Ok(o) => format!("failed ({})", o.status),
        Err(e) => format!("failed ({e})"),
    };
    format!(
        "\nHistory: {:.2} MB on disk at the last sample; it grew {:.1} MB an hour (from the first sample with a minute written to the last) at {:.0} connections/s of churn with the process churn beside it. `report --since 2h` of it took {read}.\n",
        written.last().map_or(0.0, |s| s.1) / 1e6,
        growth / 1e6,
        rate
    )
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
    let history = std::env::temp_dir().join("tcplinger-soak-history");
    let _ = fs::remove_dir_all(&history);
    let mut daemon_args = vec!["daemon".to_string(), "--listen".into(), listen.to_string()];
    if args.no_history {
        daemon_args.push("--no-history".into());
    } else {
        daemon_args.extend([
            "--history-dir".into(),
            history.display().to_string(),
            "--history-max-bytes".into(),
            args.history_max_bytes.clone(),
        ]);
    }
    let mut child = Command::new(&tcplinger)
        .args(&daemon_args)
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
    // Before any churn: the daemon's start-up footprint, and what else
    // the machine was doing (the churn's figures depend on it).
    let rss_start = rss_kb(pid, "VmRSS:");
    let load_start = load_average();
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
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let proc_churn = ProcChurn {
        duration,
        per_second: args.procs_per_second,
        connections: args.proc_connections,
        lifetime: Duration::from_secs(args.proc_seconds),
        names: args.proc_names,
    };
    let procs = std::thread::spawn(move || procs::run(proc_churn, &exe));
    eprintln!(
        "soak: {} minutes of churn, a sample every {} s",
        args.minutes, args.every
    );
    let names = [
        "tcplinger_events_total",
        "tcplinger_events_dropped_total",
        "tcplinger_tracked_sockets",
        "tcplinger_sockets_evicted_total",
        "tcplinger_history_bytes",
        "tcplinger_losses_total{kind=\"history_minute_dropped\"}",
        "tcplinger_losses_total{kind=\"history_write_failed\"}",
    ];
    let mut table = String::from(
        "| elapsed | daemon RSS | series | scrape | tracked sockets | events | dropped | evicted | daemon CPU (cores) | history on disk | history minutes dropped, failed |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    // (elapsed s, history bytes) at each sample.
    let mut history_sizes: Vec<(f64, f64)> = Vec::new();
    let start = Instant::now();
    let mut samples: Vec<(u64, usize)> = Vec::new();
    let (mut last_cpu, mut last_at) = (cpu_seconds(pid), Instant::now());
    let mut text = String::new();
    // The exposition after warm-up, to show at the end what grew.
    let mut warm_text = String::new();
    while start.elapsed() < duration {
        // Samples at fixed times, whatever a scrape took.
        let next = Duration::from_secs(args.every * (samples.len() as u64 + 1));
        std::thread::sleep(next.saturating_sub(start.elapsed()).min(duration));
        let rss = rss_kb(pid, "VmRSS:");
        let asked = Instant::now();
        text = scrape(listen);
        let scrape_ms = asked.elapsed().as_secs_f64() * 1000.0;
        let v = values(&text, &names);
        let n = series(&text);
        let cpu = cpu_seconds(pid);
        let cores = (cpu - last_cpu) / last_at.elapsed().as_secs_f64();
        (last_cpu, last_at) = (cpu, Instant::now());
        samples.push((rss, n));
        if samples.len() == 2 {
            warm_text.clone_from(&text);
        }
        eprintln!(
            "soak: {:>4.0} s  RSS {:.1} MB  series {n} (scrape {scrape_ms:.0} ms)  tracked {}  events {}  dropped {}  CPU {cores:.3}",
            start.elapsed().as_secs_f64(),
            rss as f64 / 1024.0,
            v[2],
            v[0],
            v[1]
        );
        history_sizes.push((start.elapsed().as_secs_f64(), v[4]));
        let _ = writeln!(
            table,
            "| {:.0} s | {:.1} MB | {n} | {scrape_ms:.0} ms | {} | {} | {} | {} | {cores:.3} | {:.2} MB | {}, {} |",
            start.elapsed().as_secs_f64(),
            rss as f64 / 1024.0,
            v[2],
            v[0],
            v[1],
            v[3],
            v[4] / 1e6,
            v[5],
            v[6]
        );
    }
    let total_cpu = cpu_seconds(pid);
    let load_end = load_average();
    let outcome = churn
        .join()
        .map_err(|_| anyhow::anyhow!("the churn thread panicked"))?
        .context("running the churn")?;
    let proc_outcome = procs
        .join()
        .map_err(|_| anyhow::anyhow!("the process churn thread panicked"))?
        .context("running the process churn")?;
    let peak = rss_kb(pid, "VmHWM:");
    drop(daemon);
    let history_report = if args.no_history {
        String::new()
    } else {
        history_growth(&history_sizes, &tcplinger, &history, outcome.per_second())
    };
    let mb = |kb: u64| kb as f64 / 1024.0;
    let rss: Vec<u64> = samples.iter().map(|s| s.0).collect();
    let warm = rss.get(1).copied().unwrap_or(0);
    let last = rss.last().copied().unwrap_or(0);
    let max_after_warm = rss.iter().skip(1).copied().max().unwrap_or(0);
    let counts: Vec<usize> = samples.iter().map(|s| s.1).collect();
    let mut report = machine(root, args.tcplinger.as_deref());
    let _ = writeln!(
        report,
        "Soak: `tcplinger daemon` for {} minutes of loopback churn as fast as it goes ({} threads): {} connections, {:.0}/s, {} failed. Beside it, {} short-lived processes ({}/s, each living {} s), each in a cgroup of its own made and removed for it (`pod<uid>/<container id>`), named from a pool of {}, each opening {} connections to itself on its own loopback address: {} connections, {} processes failed.\n",
        args.minutes,
        args.threads,
        outcome.connections,
        outcome.per_second(),
        outcome.failures,
        proc_outcome.processes,
        args.procs_per_second,
        args.proc_seconds,
        args.proc_names,
        args.proc_connections,
        proc_outcome.connections,
        proc_outcome.failed
    );
    report.push_str(&table);
    let closed = "tcplinger_connections_closed_total";
    let folded = |label: &str| {
        values(
            &text,
            &[&format!(
                "tcplinger_connections_folded_total{{label=\"{label}\"}}"
            )],
        )[0]
    };
    let _ = writeln!(
        report,
        "\nDaemon RSS: {:.1} MB before the churn, {:.1} MB after warm-up (the second sample), {:.1} MB at the end, {:.1} MB at most after warm-up; peak (VmHWM, start-up included) {:.1} MB. \
         Series: {} at the first sample, {} at most, {} at the last. \
         Daemon CPU: {:.1} s over the run. Load average (1 min) {load_start} at the start, {load_end} at the end. \
         At the end, among the closes' series: {} process names, {} remote addresses, {} container ids (`other` included); closes folded into `other`: {} by name, {} by endpoint, {} by container.",
        mb(rss_start),
        mb(warm),
        mb(last),
        mb(max_after_warm),
        mb(peak),
        counts.first().copied().unwrap_or(0),
        counts.iter().copied().max().unwrap_or(0),
        counts.last().copied().unwrap_or(0),
        total_cpu,
        distinct(&text, closed, "comm"),
        distinct(&text, closed, "remote_addr"),
        distinct(&text, closed, "container_id"),
        folded("comm"),
        folded("endpoint"),
        folded("container"),
    );
    report.push_str(&history_report);
    let _ = writeln!(
        report,
        "\n| metric family | series after warm-up | series at the end |\n|---|---|---|"
    );
    let warm_families = by_family(&warm_text);
    let end_families = by_family(&text);
    for (family, n) in &end_families {
        let warm = warm_families.get(family).copied().unwrap_or(0);
        let _ = writeln!(report, "| `{family}` | {warm} | {n} |");
    }
    println!("{report}");
    if let Some(path) = &args.out {
        for (path, content) in [
            (path.clone(), &report),
            (path.with_extension("warm.prom"), &warm_text),
            (path.with_extension("end.prom"), &text),
        ] {
            fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}
