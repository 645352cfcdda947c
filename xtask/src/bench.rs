//! `cargo xtask bench`: churn and keep-alive traffic with no tracer, tcplinger (daemon, watch) and its peers (bpftrace, libbpf-tools `tcplife` and `tcpstates`), interleaved round by round; each tracer's cost per connection and per request with BPF run-time statistics on; 100,000 live sockets under `sockets` and `daemon`. Prints Markdown tables for BENCHMARKS.md (drawn by `bench_report`).

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader},
    net::TcpListener,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    bench_report,
    bpf_stats::{self, ProgramRun, StatsOn},
    churn::{self, Churn},
    keepalive::{self, KeepAlive},
    peers::{self, LibbpfTools},
};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Interleaved rounds of every configuration under each workload (0:
    /// only the cost runs).
    #[arg(long, default_value_t = 6)]
    pub rounds: usize,
    /// Seconds of traffic per run.
    #[arg(long, default_value_t = 4)]
    pub seconds: u64,
    /// Workloads to run: churn (a connection per request) and keep-alive
    /// (requests on persistent connections).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_values_t = [Workload::Churn, Workload::KeepAlive]
    )]
    pub workloads: Vec<Workload>,
    /// Client (and server) threads of the churn: enough that the machine
    /// has no idle CPU (each connection waits on its peer).
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// Connections per second to aim for in the churn rounds; default: as
    /// fast as possible.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Persistent connections of the keep-alive workload (a client and a
    /// server thread each).
    #[arg(long, default_value_t = 4)]
    pub keepalive_connections: usize,
    /// Bytes of each keep-alive request and of each reply.
    #[arg(long, default_value_t = 64)]
    pub request_bytes: usize,
    /// Interleaved runs of each tracer with BPF run-time statistics on, for
    /// the cost per connection and per request (0 skips them).
    #[arg(long, default_value_t = 2)]
    pub cost_rounds: usize,
    /// Connections per second of the churn during the cost runs (0: as
    /// fast as possible).
    #[arg(long, default_value_t = 10_000)]
    pub kernel_rate: u64,
    /// Requests per second of the keep-alive workload during the cost runs
    /// (0: as fast as possible).
    #[arg(long, default_value_t = 50_000)]
    pub keepalive_kernel_rate: u64,
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
    /// Skip the libbpf-tools comparisons (tcplife, tcpstates).
    #[arg(long)]
    pub no_libbpf_tools: bool,
    /// Only these tracers (the no-tracer baseline always runs), e.g.
    /// `--only daemon,tcplife`; for quick iterations.
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
    /// The daemon keeping its history (and the daemon without, to compare).
    DaemonHistory,
    Watch,
    Record,
    Bpftrace,
    Tcplife,
    Tcpstates,
}

/// The traffic a round runs under each configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Workload {
    /// Open, one byte each way, close (`--threads` clients at once).
    Churn,
    /// Requests and replies on a few persistent connections.
    KeepAlive,
}

impl Workload {
    /// What one unit of work is, in the tables.
    pub fn unit(self) -> &'static str {
        match self {
            Workload::Churn => "connection",
            Workload::KeepAlive => "request",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Workload::Churn => "churn",
            Workload::KeepAlive => "keep-alive",
        }
    }

    /// The workload and its unit, for the cost tables.
    pub fn label(self) -> &'static str {
        match self {
            Workload::Churn => "churn (per connection)",
            Workload::KeepAlive => "keep-alive (per request)",
        }
    }

    /// The tracers worth running under it: those that hook only state
    /// changes cost the same on keep-alive traffic, so tcplife speaks for
    /// them there.
    fn runs(self, config: Config) -> bool {
        match self {
            Workload::Churn => true,
            Workload::KeepAlive => matches!(
                config,
                Config::NoTracer
                    | Config::Daemon
                    | Config::DaemonHistory
                    | Config::Watch
                    | Config::Record
                    | Config::Tcplife
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Config {
    NoTracer,
    Daemon,
    DaemonHistory,
    Watch,
    Record,
    Bpftrace,
    Tcplife,
    Tcpstates,
}

impl Config {
    pub fn name(self) -> &'static str {
        match self {
            Config::NoTracer => "no tracer",
            Config::Daemon => "tcplinger daemon --no-history",
            Config::DaemonHistory => "tcplinger daemon, history on",
            Config::Watch => "tcplinger watch --format json > /dev/null",
            Config::Record => "tcplinger record -o FILE",
            Config::Bpftrace => "bpftrace printing each transition > /dev/null",
            Config::Tcplife => "libbpf-tools tcplife > /dev/null",
            Config::Tcpstates => "libbpf-tools tcpstates > /dev/null",
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// Connections (churn) or requests (keep-alive) done.
    pub done: u64,
    pub failures: u64,
    pub elapsed: Duration,
    /// The tracer's user+sys CPU seconds over the run.
    pub cpu_seconds: f64,
    pub peak_rss_kb: u64,
    pub events: Option<u64>,
    pub dropped: Option<u64>,
    /// The tracer's programs over the run (run time and count only while
    /// the statistics are on).
    pub programs: Vec<ProgramRun>,
    /// `record`: the file's size, and how long `report --from` took on it.
    pub recording: Option<(u64, Duration)>,
}

impl Run {
    pub fn per_second(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Tracer CPU per wall second.
    pub fn cores(&self) -> f64 {
        self.cpu_seconds / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Tracer CPU (its own process: userspace and its system calls) per
    /// unit of work, in ns.
    pub fn cpu_ns_per_unit(&self) -> f64 {
        self.cpu_seconds * 1e9 / self.done.max(1) as f64
    }

    /// The tracer's programs' run time per unit of work, in ns.
    pub fn kernel_ns_per_unit(&self) -> f64 {
        self.programs.iter().map(|p| p.run_time_ns).sum::<u64>() as f64 / self.done.max(1) as f64
    }

    pub fn recursion_misses(&self) -> u64 {
        self.programs.iter().map(|p| p.recursion_misses).sum()
    }
}

const BPFTRACE_SCRIPT: &str = r#"tracepoint:sock:inet_sock_set_state { printf("%s %d %d %d\n", comm, pid, args->oldstate, args->newstate); }"#;

/// Bounds the count of each run; the time (`--seconds`) ends it first.
const MAX_CONNECTIONS: u64 = 10_000_000;
const MAX_REQUESTS: u64 = 100_000_000;

/// Seconds of each cost run at most.
pub const COST_SECONDS: u64 = 5;

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
    (ticks(11) + ticks(12)) * clock_tick_seconds()
}

/// The unit of utime and stime in /proc/PID/stat.
pub fn clock_tick_seconds() -> f64 {
    // SAFETY: sysconf is always safe to call.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    1.0 / hz.max(1.0)
}

/// The rate a cost run aims at (`None`: as fast as possible).
pub fn cost_rate(workload: Workload, args: &BenchArgs) -> Option<u64> {
    let rate = match workload {
        Workload::Churn => args.kernel_rate,
        Workload::KeepAlive => args.keepalive_kernel_rate,
    };
    (rate > 0).then_some(rate)
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

/// The binaries under measurement.
struct Tools {
    tcplinger: PathBuf,
    libbpf: LibbpfTools,
}

/// A tracer configuration under measurement; killed on drop.
struct Subject {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Subject {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Subject {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start_tracer(config: Config, tools: &Tools) -> Result<Subject> {
    let peer = |path: &Option<PathBuf>| -> Result<Command> {
        let path = path
            .as_ref()
            .with_context(|| format!("{} is not installed", config.name()))?;
        Ok(Command::new(path))
    };
    let mut cmd = match config {
        Config::NoTracer => bail!("no tracer to start"),
        Config::Daemon => {
            let mut c = Command::new(&tools.tcplinger);
            c.args([
                "daemon",
                "--no-history",
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
            ]);
            c
        }
        Config::DaemonHistory => {
            // A history of its own each run, never the host's.
            let dir = history_dir();
            let _ = fs::remove_dir_all(&dir);
            let mut c = Command::new(&tools.tcplinger);
            c.args(["daemon", "--listen", &format!("127.0.0.1:{}", free_port())])
                .arg("--history-dir")
                .arg(&dir);
            c
        }
        Config::Watch => {
            let mut c = Command::new(&tools.tcplinger);
            c.args(["watch", "--format", "json"]);
            c
        }
        Config::Record => {
            let _ = fs::remove_file(recording_path());
            let mut c = Command::new(&tools.tcplinger);
            c.arg("record").arg("-o").arg(recording_path());
            c
        }
        Config::Bpftrace => {
            let mut c = Command::new("bpftrace");
            c.args(["-e", BPFTRACE_SCRIPT]);
            c
        }
        Config::Tcplife => peer(&tools.libbpf.tcplife)?,
        Config::Tcpstates => peer(&tools.libbpf.tcpstates)?,
    };
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    // The tracer ends with the benchmark, whatever ends it (the drop below
    // does not run when a signal does).
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
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
    let mut tracer = Subject { child, stderr: rx };
    let start = Instant::now();
    let mut said = Vec::new();
    // Ready: our tracers say so; a peer holds its programs (it attaches
    // them right after loading; the settling below covers that).
    loop {
        said.extend(tracer.stderr.try_iter());
        let ready = match config {
            Config::Daemon | Config::DaemonHistory | Config::Watch => {
                said.iter().any(|l| l.contains("tracing"))
            }
            Config::Record => said.iter().any(|l| l.contains("tracing")),
            _ => bpf_stats::holds_programs(tracer.pid()),
        };
        if ready {
            break;
        }
        if let Ok(Some(status)) = tracer.child.try_wait() {
            std::thread::sleep(Duration::from_millis(100));
            said.extend(tracer.stderr.try_iter());
            bail!(
                "{} exited before tracing ({status}): {}",
                config.name(),
                said.join(" / ")
            );
        }
        if start.elapsed() > Duration::from_mins(1) {
            bail!("{} did not start within a minute", config.name());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the start-up snapshot and the peers' own set-up settle.
    std::thread::sleep(Duration::from_millis(500));
    Ok(tracer)
}

/// Stops a tracer and reads the events/dropped figures of our exit summary.
fn stop_tracer(mut tracer: Subject) -> (Option<u64>, Option<u64>) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(tracer.pid().cast_signed(), libc::SIGTERM) };
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

/// Units of work done, failures, and how long it took.
struct Work {
    done: u64,
    failures: u64,
    elapsed: Duration,
}

/// Runs the workload for `seconds` (or its count bound) on loopback.
fn drive(workload: Workload, args: &BenchArgs, seconds: u64, rate: Option<u64>) -> Result<Work> {
    let duration = Duration::from_secs(seconds);
    match workload {
        Workload::Churn => {
            let o = churn::run(Churn {
                port: free_port(),
                threads: args.threads,
                duration,
                max_connections: MAX_CONNECTIONS,
                rate,
            })
            .context("running the churn")?;
            Ok(Work {
                done: o.connections,
                failures: o.failures,
                elapsed: o.elapsed,
            })
        }
        Workload::KeepAlive => {
            let o = keepalive::run(KeepAlive {
                connections: args.keepalive_connections,
                bytes: args.request_bytes,
                duration,
                max_requests: MAX_REQUESTS,
                rate,
            })
            .context("running the keep-alive workload")?;
            Ok(Work {
                done: o.requests,
                failures: o.failures,
                elapsed: o.elapsed,
            })
        }
    }
}

/// One configuration under one workload: the tracer started, the traffic
/// run, the tracer's CPU and programs read before and after, the tracer
/// stopped.
fn run_once(
    workload: Workload,
    config: Config,
    args: &BenchArgs,
    tools: &Tools,
    seconds: u64,
    rate: Option<u64>,
) -> Result<Run> {
    if config == Config::NoTracer {
        let w = drive(workload, args, seconds, rate)?;
        return Ok(Run {
            done: w.done,
            failures: w.failures,
            elapsed: w.elapsed,
            ..Run::default()
        });
    }
    let tracer = start_tracer(config, tools)?;
    let pid = tracer.pid();
    let (cpu0, programs0) = (cpu_seconds(pid), bpf_stats::programs_of(pid));
    let w = drive(workload, args, seconds, rate)?;
    let (cpu1, programs1) = (cpu_seconds(pid), bpf_stats::programs_of(pid));
    let peak_rss_kb = peak_rss_kb(pid);
    let names = bpf_stats::names(programs1.keys().copied());
    let (events, dropped) = stop_tracer(tracer);
    let recording = if config == Config::Record {
        Some(replay(tools)?)
    } else {
        None
    };
    Ok(Run {
        done: w.done,
        failures: w.failures,
        elapsed: w.elapsed,
        cpu_seconds: cpu1 - cpu0,
        peak_rss_kb,
        events,
        dropped,
        programs: bpf_stats::delta(&programs0, &programs1, &names),
        recording,
    })
}

/// Where `record` writes during the benchmark (one run at a time).
/// Where the daemon with history keeps it during a run.
pub fn history_dir() -> PathBuf {
    std::env::temp_dir().join("tcplinger-bench-history")
}

fn recording_path() -> PathBuf {
    std::env::temp_dir().join("tcplinger-bench.tlrec")
}

/// The recording's size, and the time `report --from` takes on it (as
/// fast as it can, its report thrown away); the file is removed.
fn replay(tools: &Tools) -> Result<(u64, Duration)> {
    let path = recording_path();
    let bytes = fs::metadata(&path)
        .with_context(|| format!("the recording {}", path.display()))?
        .len();
    let start = Instant::now();
    let status = Command::new(&tools.tcplinger)
        .args(["report", "--format", "json", "--from"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("replaying the recording")?;
    let took = start.elapsed();
    let _ = fs::remove_file(&path);
    anyhow::ensure!(
        status.success(),
        "report --from the recording failed: {status}"
    );
    Ok((bytes, took))
}

/// The configurations, in the order of the first round; each round starts
/// one further along, so that no configuration always follows the same one
/// (a run leaves TIME_WAIT sockets and warm caches to the next).
fn rotated(configs: &[Config], round: usize) -> Vec<Config> {
    let mut v = configs.to_vec();
    if !v.is_empty() {
        let by = round % v.len();
        v.rotate_left(by);
    }
    v
}

/// The configurations this run measures, the peers installed if missing
/// (those that cannot be are left out, and said so).
fn configurations(args: &BenchArgs, libbpf: &mut LibbpfTools) -> Vec<Config> {
    let wanted = |o: Only| args.only.is_empty() || args.only.contains(&o);
    let mut configs = vec![Config::NoTracer];
    if wanted(Only::Daemon) || wanted(Only::DaemonHistory) {
        configs.push(Config::Daemon);
    }
    if wanted(Only::DaemonHistory) {
        configs.push(Config::DaemonHistory);
    }
    if wanted(Only::Watch) {
        configs.push(Config::Watch);
    }
    if wanted(Only::Record) {
        configs.push(Config::Record);
    }
    let mut tracefs = false;
    if !args.no_bpftrace && wanted(Only::Bpftrace) {
        if peers::have_bpftrace() {
            tracefs = true;
            configs.push(Config::Bpftrace);
        } else {
            eprintln!(
                "bench: bpftrace is not installed and could not be (Debian package bpftrace): its row is left out"
            );
        }
    }
    if !args.no_libbpf_tools && (wanted(Only::Tcplife) || wanted(Only::Tcpstates)) {
        *libbpf = peers::libbpf_tools();
        for (only, config, path) in [
            (Only::Tcplife, Config::Tcplife, &libbpf.tcplife),
            (Only::Tcpstates, Config::Tcpstates, &libbpf.tcpstates),
        ] {
            if !wanted(only) {
                continue;
            }
            if let Some(path) = path {
                eprintln!("bench: {} is {}", config.name(), path.display());
                tracefs = true;
                configs.push(config);
            } else {
                eprintln!(
                    "bench: {} is not installed and could not be (Debian package libbpf-tools): its row is left out",
                    config.name()
                );
            }
        }
    }
    if tracefs {
        peers::ensure_tracefs();
    }
    configs
}

pub fn run(args: &BenchArgs, root: &Path) -> Result<()> {
    // SAFETY: geteuid is always safe.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark loads eBPF programs: run it as root");
    }
    if args.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let mut libbpf = LibbpfTools::default();
    let configs = configurations(args, &mut libbpf);
    let tools = Tools {
        tcplinger: build_tcplinger(root, args.tcplinger.as_deref())?,
        libbpf,
    };
    let mut workloads = args.workloads.clone();
    workloads.sort();
    workloads.dedup();
    let plan: Vec<(Workload, Vec<Config>)> = workloads
        .iter()
        .map(|&w| (w, configs.iter().copied().filter(|&c| w.runs(c)).collect()))
        .collect();
    let mut rounds: BTreeMap<(Workload, Config), Vec<Run>> = BTreeMap::new();
    let mut costs: BTreeMap<(Workload, Config), Vec<Run>> = BTreeMap::new();
    // Keep-alive first, its rounds then its cost runs, then the churn's:
    // a churn leaves a TIME_WAIT socket per connection for 60 s, which the
    // tracers that follow them (and the daemon's start-up snapshot) would
    // count into the keep-alive figures.
    let mut order = plan.clone();
    order.sort_by_key(|(w, _)| *w != Workload::KeepAlive);
    for (workload, configs) in &order {
        throughput_rounds(*workload, configs, args, &tools, &mut rounds)?;
        cost_runs(*workload, configs, args, &tools, &mut costs)?;
    }
    let mut report = machine(root, args.tcplinger.as_deref());
    if args.rounds > 0 {
        for (workload, configs) in &plan {
            report.push_str(&bench_report::throughput(*workload, configs, &rounds, args));
            report.push('\n');
        }
    }
    if !costs.is_empty() {
        report.push_str(&bench_report::costs(&plan, &costs, args));
        report.push('\n');
        report.push_str(&bench_report::recordings(&plan, &costs));
    }
    if args.live_sockets > 0 {
        report.push('\n');
        report.push_str(&crate::hold::scale(args.live_sockets, &tools.tcplinger)?);
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

/// Interleaved rounds of the configurations under one workload.
fn throughput_rounds(
    workload: Workload,
    configs: &[Config],
    args: &BenchArgs,
    tools: &Tools,
    rounds: &mut BTreeMap<(Workload, Config), Vec<Run>>,
) -> Result<()> {
    let rate = match workload {
        Workload::Churn => args.rate,
        Workload::KeepAlive => None,
    };
    for round in 0..args.rounds {
        for config in rotated(configs, round) {
            eprintln!(
                "bench: round {}/{}, {}: {}",
                round + 1,
                args.rounds,
                workload.name(),
                config.name()
            );
            let run = run_once(workload, config, args, tools, args.seconds, rate)?;
            eprintln!(
                "bench:   {:.0} {}s/s, tracer {:.2} cores",
                run.per_second(),
                workload.unit(),
                run.cores()
            );
            rounds.entry((workload, config)).or_default().push(run);
        }
    }
    Ok(())
}

/// Each tracer under one workload at a steady rate, interleaved, with the
/// kernel's BPF run-time statistics on for these runs only (they add to
/// every program run, so the throughput rounds run without them). A steady
/// rate leaves the machine room to spare: a program's run time is then its
/// own, not the contention of a saturated machine.
fn cost_runs(
    workload: Workload,
    configs: &[Config],
    args: &BenchArgs,
    tools: &Tools,
    costs: &mut BTreeMap<(Workload, Config), Vec<Run>>,
) -> Result<()> {
    let tracers: Vec<Config> = configs
        .iter()
        .copied()
        .filter(|&c| c != Config::NoTracer)
        .collect();
    if args.cost_rounds == 0 || tracers.is_empty() {
        return Ok(());
    }
    let seconds = args.seconds.min(COST_SECONDS);
    let rate = cost_rate(workload, args);
    let aim = rate.map_or("as fast as possible".to_string(), |r| format!("at {r}/s"));
    let stats = StatsOn::new()?;
    for round in 0..args.cost_rounds {
        for config in rotated(&tracers, round) {
            eprintln!(
                "bench: cost {}/{}, {} {aim}: {}",
                round + 1,
                args.cost_rounds,
                workload.name(),
                config.name()
            );
            let run = run_once(workload, config, args, tools, seconds, rate)?;
            eprintln!(
                "bench:   kernel {:.0} ns, tracer CPU {:.0} ns per {}",
                run.kernel_ns_per_unit(),
                run.cpu_ns_per_unit(),
                workload.unit()
            );
            costs.entry((workload, config)).or_default().push(run);
        }
    }
    drop(stats);
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
