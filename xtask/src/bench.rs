//! `cargo xtask bench`: connection churn with no tracer, the daemon, `watch` and bpftrace, interleaved; kernel ns per program run; 100,000 live sockets under `sockets` and `daemon`. Prints Markdown tables for BENCHMARKS.md.

use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::churn::{self, Churn, Outcome};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Interleaved rounds of every configuration (0: kernel run time only).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds of churn per run.
    #[arg(long, default_value_t = 8)]
    pub seconds: u64,
    /// Client (and server) threads of the churn: enough that the machine
    /// has no idle CPU (each connection waits on its peer).
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// Connections per second to aim for; default: as fast as possible.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Connections per second during the kernel run-time measurement.
    #[arg(long, default_value_t = 10_000)]
    pub kernel_rate: u64,
    /// Live sockets held for the scale part (0 to skip it).
    #[arg(long, default_value_t = 100_000)]
    pub live_sockets: u64,
    /// Synthetic sockets for the in-process tracker/aggregator benchmark
    /// (0 to skip it).
    #[arg(long, default_value_t = 1_000_000)]
    pub synthetic_sockets: u64,
    /// Skip the bpftrace comparison.
    #[arg(long)]
    pub no_bpftrace: bool,
    /// Only these tracers (the no-tracer baseline always runs), e.g.
    /// `--only daemon`; for quick iterations.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Only>,
    /// Measure this tcplinger binary (another build, to compare) instead
    /// of building this tree's.
    #[arg(long, value_name = "PATH")]
    pub tcplinger: Option<PathBuf>,
    /// Also write the tables to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    Daemon,
    Watch,
    Bpftrace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Config {
    NoTracer,
    Daemon,
    Watch,
    Bpftrace,
}

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::NoTracer => "no tracer",
            Config::Daemon => "tcplinger daemon",
            Config::Watch => "tcplinger watch --format json > /dev/null",
            Config::Bpftrace => "bpftrace printing each transition > /dev/null",
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    conns_per_s: f64,
    failures: u64,
    /// Subject user+sys CPU seconds per wall second.
    cpu: f64,
    peak_rss_kb: u64,
    events: Option<u64>,
    dropped: Option<u64>,
}

const BPFTRACE_SCRIPT: &str = r#"tracepoint:sock:inet_sock_set_state { printf("%s %d %d %d\n", comm, pid, args->oldstate, args->newstate); }"#;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").map_or(0, |l| l.local_addr().map_or(0, |a| a.port()))
}

/// user+sys of a process, in seconds, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised comm: state is field 3; utime 14, stime 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf is always safe to call.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// Peak resident set (kB) of a live process.
fn peak_rss_kb(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A tracer configuration under measurement; killed on drop.
struct Subject {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Drop for Subject {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Programs loaded now, by id.
fn program_ids() -> HashSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect()
}

fn start_tracer(config: Config, tcplinger: &Path) -> Result<Subject> {
    let before = program_ids();
    let mut cmd = match config {
        Config::NoTracer => bail!("no tracer to start"),
        Config::Daemon => {
            let mut c = Command::new(tcplinger);
            c.args(["daemon", "--listen", &format!("127.0.0.1:{}", free_port())]);
            c
        }
        Config::Watch => {
            let mut c = Command::new(tcplinger);
            c.args(["watch", "--format", "json"]);
            c
        }
        Config::Bpftrace => {
            let mut c = Command::new("bpftrace");
            c.args(["-e", BPFTRACE_SCRIPT]);
            c
        }
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", config.name()))?;
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let tracer = Subject { child, stderr: rx };
    let start = Instant::now();
    // Ready: our tracers say so; bpftrace's program shows up in the kernel.
    loop {
        let ready = match config {
            Config::Bpftrace => program_ids().difference(&before).next().is_some(),
            _ => tracer.stderr.try_iter().any(|l| l.contains("tracing")),
        };
        if ready {
            break;
        }
        if start.elapsed() > Duration::from_mins(1) {
            bail!("{} did not start", config.name());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the start-up snapshot and bpftrace's own set-up settle.
    std::thread::sleep(Duration::from_millis(500));
    Ok(tracer)
}

/// Stops a tracer and reads the events/dropped figures of our exit summary.
fn stop_tracer(mut tracer: Subject) -> (Option<u64>, Option<u64>) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(tracer.child.id().cast_signed(), libc::SIGTERM) };
    let _ = tracer.child.wait();
    let lines: Vec<String> = tracer.stderr.try_iter().collect();
    let summary = lines.iter().find(|l| l.contains(" events, "));
    let number_before = |word: &str| -> Option<u64> {
        let words: Vec<&str> = summary?.split_whitespace().collect();
        let i = words.iter().position(|w| w.trim_end_matches(',') == word)?;
        words.get(i.checked_sub(1)?)?.parse().ok()
    };
    (number_before("events"), number_before("dropped"))
}

fn churn(args: &BenchArgs, seconds: u64) -> Result<Outcome> {
    churn_at(args, seconds, args.rate)
}

fn churn_at(args: &BenchArgs, seconds: u64, rate: Option<u64>) -> Result<Outcome> {
    churn::run(Churn {
        port: free_port(),
        threads: args.threads,
        duration: Duration::from_secs(seconds),
        max_connections: 10_000_000,
        rate,
    })
    .context("running the churn")
}

fn run_once(config: Config, args: &BenchArgs, tcplinger: &Path) -> Result<Run> {
    if config == Config::NoTracer {
        let o = churn(args, args.seconds)?;
        return Ok(Run {
            conns_per_s: o.per_second(),
            failures: o.failures,
            ..Run::default()
        });
    }
    let tracer = start_tracer(config, tcplinger)?;
    let pid = tracer.child.id();
    let cpu0 = cpu_seconds(pid);
    let o = churn(args, args.seconds)?;
    let cpu = (cpu_seconds(pid) - cpu0) / o.elapsed.as_secs_f64();
    let peak_rss_kb = peak_rss_kb(pid);
    let (events, dropped) = stop_tracer(tracer);
    Ok(Run {
        conns_per_s: o.per_second(),
        failures: o.failures,
        cpu,
        peak_rss_kb,
        events,
        dropped,
    })
}

/// Mean ns per run of each program a tracer loaded, with BPF run-time
/// statistics on (they cost every program a little, so they are measured
/// in a separate run).
fn kernel_ns(
    config: Config,
    args: &BenchArgs,
    tcplinger: &Path,
) -> Result<Vec<(String, f64, u64)>> {
    let before = program_ids();
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling BPF run-time statistics")?;
    let tracer = start_tracer(config, tcplinger)?;
    let ours: Vec<u32> = program_ids().difference(&before).copied().collect();
    let read = || -> BTreeMap<u32, (String, u64, u64)> {
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| ours.contains(&p.id()))
            .map(|p| {
                let name = p.name_as_str().unwrap_or("?").to_string();
                (
                    p.id(),
                    (
                        name,
                        u64::try_from(p.run_time().as_nanos()).unwrap_or(u64::MAX),
                        p.run_count(),
                    ),
                )
            })
            .collect()
    };
    let start = read();
    // At a steady rate the machine has room to spare: a program's run time
    // is then its own, not the contention of a saturated machine.
    churn_at(args, args.seconds.min(5), Some(args.kernel_rate))?;
    let end = read();
    stop_tracer(tracer);
    // Statistics stay on for as long as this fd is open.
    drop(stats);
    let mut out: Vec<(String, f64, u64)> = end
        .iter()
        .map(|(id, (name, ns, runs))| {
            let (_, ns0, runs0) = start.get(id).cloned().unwrap_or_default();
            let runs = runs - runs0;
            (
                name.clone(),
                if runs > 0 {
                    (ns - ns0) as f64 / runs as f64
                } else {
                    0.0
                },
                runs,
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// bpftrace, installed from the distribution's package if missing (the
/// peer is part of the benchmark, not of the tool).
fn have_bpftrace() -> bool {
    let present = || Command::new("bpftrace").arg("--version").output().is_ok();
    if present() {
        return true;
    }
    eprintln!("bench: installing bpftrace (apt-get install bpftrace)");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let install = [
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        "bpftrace",
    ];
    // Package lists may be stale on a fresh machine: refresh once if needed.
    let installed = apt(&install) || (apt(&["update", "-qq"]) && apt(&install));
    installed && present()
}

fn ensure_tracefs() {
    // bpftrace's classic tracepoints need tracefs (not mounted on every machine).
    if !Path::new("/sys/kernel/tracing/events").exists() {
        let _ = Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status();
    }
}

pub fn run(args: &BenchArgs, root: &Path) -> Result<()> {
    // SAFETY: geteuid is always safe.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark loads eBPF programs: run it as root");
    }
    let tcplinger = build_tcplinger(root, args.tcplinger.as_deref())?;
    let wanted = |o: Only| args.only.is_empty() || args.only.contains(&o);
    let mut configs = vec![Config::NoTracer];
    if wanted(Only::Daemon) {
        configs.push(Config::Daemon);
    }
    if wanted(Only::Watch) {
        configs.push(Config::Watch);
    }
    if !args.no_bpftrace && wanted(Only::Bpftrace) {
        if have_bpftrace() {
            ensure_tracefs();
            configs.push(Config::Bpftrace);
        } else {
            eprintln!(
                "bench: bpftrace is not installed and could not be (Debian package bpftrace): its row is left out"
            );
        }
    }
    let mut runs: BTreeMap<Config, Vec<Run>> = BTreeMap::new();
    for round in 1..=args.rounds {
        for &config in &configs {
            eprintln!("bench: round {round}/{}: {}", args.rounds, config.name());
            let run = run_once(config, args, &tcplinger)?;
            eprintln!(
                "bench:   {:.0} connections/s, tracer {:.2} cores",
                run.conns_per_s, run.cpu
            );
            runs.entry(config).or_default().push(run);
        }
    }
    let mut kernel = BTreeMap::new();
    for &config in configs.iter().filter(|c| **c != Config::NoTracer) {
        eprintln!("bench: kernel run time of {}", config.name());
        kernel.insert(config, kernel_ns(config, args, &tcplinger)?);
    }
    let mut report = machine(root, args.tcplinger.as_deref());
    if args.rounds > 0 {
        report.push_str(&throughput_table(&configs, &runs, args));
        report.push('\n');
    }
    report.push_str(&kernel_table(&kernel, args.kernel_rate));
    if args.live_sockets > 0 {
        report.push('\n');
        report.push_str(&crate::hold::scale(args.live_sockets, &tcplinger)?);
    }
    if args.synthetic_sockets > 0 {
        eprintln!(
            "bench: {} synthetic sockets through the tracker and aggregator",
            args.synthetic_sockets
        );
        report.push('\n');
        report.push_str(&synthetic(args.synthetic_sockets, root)?);
    }
    println!("{report}");
    if let Some(path) = &args.out {
        fs::write(path, &report).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The release binary of this tree (built now), or `given`.
pub fn build_tcplinger(root: &Path, given: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--quiet", "-p", "tracer-user"])
        .current_dir(root)
        .status()
        .context("building tcplinger")?;
    if !status.success() {
        bail!("building tcplinger failed");
    }
    Ok(root.join("target/release/tcplinger"))
}

/// Where the figures come from: kernel, CPUs, memory, and the commit.
pub fn machine(root: &Path, binary: Option<&Path>) -> String {
    let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or_else(
            || "unknown CPU".into(),
            |v| v.trim_start_matches([' ', '\t', ':']).to_string(),
        );
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / (1024.0 * 1024.0));
    let kernel = read("/proc/sys/kernel/osrelease");
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let measured = match binary {
        Some(path) => format!("the tcplinger binary {}", path.display()),
        None => format!("tcplinger at commit {commit}"),
    };
    format!(
        "Machine: {cpus} CPUs ({model}), {mem_gib:.0} GiB, Linux {}; {measured}.\n\n",
        kernel.trim()
    )
}

/// The in-process micro-benchmark (`tracer-user/benches/scale.rs`).
fn synthetic(sockets: u64, root: &Path) -> Result<String> {
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "bench",
            "--quiet",
            "-p",
            "tracer-user",
            "--bench",
            "scale",
            "--",
        ])
        .args(["--sockets", &sockets.to_string(), "--rounds", "3"])
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .context("running the scale micro-benchmark")?;
    if !out.status.success() {
        bail!("the scale micro-benchmark failed ({})", out.status);
    }
    String::from_utf8(out.stdout).context("scale micro-benchmark output")
}

fn throughput_table(
    configs: &[Config],
    runs: &BTreeMap<Config, Vec<Run>>,
    args: &BenchArgs,
) -> String {
    let baseline = mean(
        &runs[&Config::NoTracer]
            .iter()
            .map(|r| r.conns_per_s)
            .collect::<Vec<_>>(),
    );
    let mut s = format!(
        "Churn on loopback, {} rounds of {} s per configuration, interleaved; {} client and {} server threads; {}; half the connections closed by the client first, half by the server.\n\n",
        args.rounds,
        args.seconds,
        args.threads,
        args.threads,
        args.rate
            .map_or("as fast as possible".to_string(), |r| format!(
                "aiming at {r} connections/s"
            ))
    );
    s.push_str("| configuration | connections/s (per round) | vs no tracer | vs no tracer in the same round (median) | tracer CPU (cores) | CPU per 10k conn/s | peak RSS | events | dropped |\n|---|---|---|---|---|---|---|---|---|\n");
    let baseline_rounds = &runs[&Config::NoTracer];
    for config in configs {
        let r = &runs[config];
        // Rounds run back to back, so a round's ratio is the least
        // disturbed by the machine's drift over the whole run.
        let mut ratios: Vec<f64> = r
            .iter()
            .zip(baseline_rounds)
            .map(|(x, b)| x.conns_per_s / b.conns_per_s.max(1.0))
            .collect();
        ratios.sort_by(f64::total_cmp);
        let median_ratio = ratios.get(ratios.len() / 2).copied().unwrap_or(0.0);
        let per_round: Vec<String> = r.iter().map(|x| format!("{:.0}", x.conns_per_s)).collect();
        let rate = mean(&r.iter().map(|x| x.conns_per_s).collect::<Vec<_>>());
        let cpu = mean(&r.iter().map(|x| x.cpu).collect::<Vec<_>>());
        let sum = |f: fn(&Run) -> Option<u64>| -> String {
            let v: Vec<u64> = r.iter().filter_map(f).collect();
            if v.is_empty() {
                "-".into()
            } else {
                v.iter().sum::<u64>().to_string()
            }
        };
        let (cpu_cell, per10k, rss) = if *config == Config::NoTracer {
            ("-".to_string(), "-".to_string(), "-".to_string())
        } else {
            (
                format!("{cpu:.3}"),
                format!("{:.3}", cpu / (rate / 10_000.0)),
                format!(
                    "{:.1} MB",
                    r.iter().map(|x| x.peak_rss_kb).max().unwrap_or(0) as f64 / 1024.0
                ),
            )
        };
        let failures: u64 = r.iter().map(|x| x.failures).sum();
        let _ = writeln!(
            s,
            "| {}{} | {:.0} ({}) | {:.1}% | {:.1}% | {} | {} | {} | {} | {} |",
            config.name(),
            if failures > 0 {
                format!(" ({failures} failed connects)")
            } else {
                String::new()
            },
            rate,
            per_round.join(", "),
            100.0 * rate / baseline,
            100.0 * median_ratio,
            cpu_cell,
            per10k,
            rss,
            sum(|x| x.events),
            sum(|x| x.dropped),
        );
    }
    s
}

fn kernel_table(kernel: &BTreeMap<Config, Vec<(String, f64, u64)>>, rate: u64) -> String {
    let mut s = format!(
        "Kernel side, from the kernel's BPF run-time statistics (`kernel.bpf_stats_enabled`) over a separate churn run aiming at {rate} connections/s:\n\n| configuration | program | mean ns per run | runs |\n|---|---|---|---|\n",
    );
    for (config, programs) in kernel {
        for (name, ns, runs) in programs {
            let _ = writeln!(s, "| {} | `{name}` | {ns:.0} | {runs} |", config.name());
        }
    }
    s
}
