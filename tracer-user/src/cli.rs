//! Command-line flags (clap) and their validation into the settings the tracer runs with.

use std::{num::NonZeroUsize, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracer_common::{MAX_FILTER_PIDS, MAX_FILTER_PORTS};

use crate::bpf::decode::Family;

#[derive(Debug, Parser)]
#[command(
    name = "tcplinger",
    version,
    about = "Trace the TCP connection lifecycle: who closes first, how long sockets linger, and why",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print one record per connection as its lifecycle completes (or, with
    /// --transitions, every state change).
    Watch(WatchArgs),
    /// Trace for a while, then print what is wrong (findings) and the
    /// busiest process/endpoint groups.
    Report(ReportArgs),
    /// Live table of process/endpoint groups, with findings as they appear.
    Top(TopArgs),
    /// What lingers right now, by process and endpoint (no tracing).
    Sockets(SocketsArgs),
    /// Run in the background: Prometheus metrics on /metrics, findings as
    /// log lines, until SIGTERM.
    Daemon(DaemonArgs),
}

/// The daemon's flags. Each can also be set in the --config file under the
/// same name; a flag given here wins over the file.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// TOML file with the same keys as these flags (e.g. max-sockets = 100000).
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,

    /// Validate the configuration, print it as it would be used, and exit.
    #[arg(long)]
    pub check_config: bool,

    /// Address for /metrics and /healthz [default: 127.0.0.1:9917]. An
    /// address beyond loopback also needs --allow-non-loopback.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_listen)]
    pub listen: Option<std::net::SocketAddr>,

    /// Let --listen serve metrics beyond this host (they name processes and
    /// the addresses of their peers): for a scraper on another machine.
    #[arg(long)]
    pub allow_non_loopback: bool,

    /// Findings on stdout as text lines or JSON lines [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,

    /// Only sockets owned by these process ids.
    #[arg(long, value_name = "PID", value_delimiter = ',', value_parser = parse_pid, allow_hyphen_values = true)]
    pub pid: Option<Vec<u32>>,

    /// Only sockets with one of these local or remote ports.
    #[arg(long, value_name = "PORT", value_delimiter = ',', value_parser = parse_port, allow_hyphen_values = true)]
    pub port: Option<Vec<u16>>,

    /// Only sockets owned by a process with this command name.
    #[arg(long, value_name = "NAME", value_delimiter = ',', value_parser = crate::model::select::parse_comm)]
    pub comm: Option<Vec<String>>,

    /// Only connections whose remote address is in this network (address or CIDR).
    #[arg(long, value_name = "CIDR", value_delimiter = ',', value_parser = crate::model::select::parse_remote)]
    pub remote: Option<Vec<ipnet::IpNet>>,

    /// Only IPv4 sockets.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Only IPv6 sockets.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,

    /// Only sockets whose owner's cgroup path starts with this (e.g.
    /// /kubepods.slice or /system.slice/nginx.service).
    #[arg(long, value_name = "PATH", value_parser = parse_cgroup)]
    pub cgroup: Option<String>,

    /// Most sockets followed at once [default: 262144].
    #[arg(long, value_name = "N", value_parser = parse_max_sockets, allow_hyphen_values = true)]
    pub max_sockets: Option<NonZeroUsize>,

    /// Most process/endpoint groups aggregated for the findings [default: 500].
    #[arg(long, value_name = "N", value_parser = parse_max_groups, allow_hyphen_values = true)]
    pub max_groups: Option<usize>,

    /// Most remote endpoints (address and port) with metric series of their
    /// own; the rest share remote_addr="other" [default: 100].
    #[arg(long, value_name = "N", value_parser = parse_max_endpoints, allow_hyphen_values = true)]
    pub max_endpoints: Option<usize>,

    /// Kernel-to-userspace ring size, a power of two [default: 4MiB].
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_bytes, allow_hyphen_values = true)]
    pub ring_bytes: Option<u32>,

    /// Stop after this long (mostly for tests); default: until SIGTERM.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub duration: Option<Duration>,

    /// Tests only: behave as if this kernel hook could not be attached.
    #[arg(long, value_name = "HOOK", value_delimiter = ',', value_parser = parse_hook, hide = true)]
    pub disable_hook: Vec<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Print every state change (and every RST) as its own line.
    #[arg(long)]
    pub transitions: bool,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Write the records to this file (created, or truncated) instead of
    /// stdout. If it cannot be written (disk full), tracing stops: the
    /// error and the summary go to stderr, and the exit code is 1.
    #[arg(long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub trace: TraceArgs,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,

    /// Groups listed after the findings (all groups in JSON).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 20,
        allow_hyphen_values = true
    )]
    pub top: usize,

    /// Write the report to this file (created, or truncated) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub analysis: AnalysisArgs,

    #[command(flatten)]
    pub trace: TraceArgs,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Initial sort key (change it with the keys shown at the bottom).
    #[arg(long, value_enum, default_value_t = SortKey::Lingering)]
    pub sort: SortKey,

    #[command(flatten)]
    pub analysis: AnalysisArgs,

    #[command(flatten)]
    pub trace: TraceArgs,
}

/// Flags of the commands that aggregate.
#[derive(Debug, Args)]
pub struct AnalysisArgs {
    /// Most process/endpoint groups kept; the rest are folded into one
    /// "other" row and counted.
    #[arg(long, value_name = "N", default_value = "500", value_parser = parse_max_groups, allow_hyphen_values = true)]
    pub max_groups: usize,
}

#[derive(Debug, Args)]
pub struct SocketsArgs {
    /// Only these states (comma-separated, e.g. close-wait,time-wait);
    /// default: every state but LISTEN.
    #[arg(long, value_name = "STATE", value_delimiter = ',', value_parser = parse_state)]
    pub state: Vec<tracer_common::TcpState>,

    /// Only sockets owned by these process ids.
    #[arg(long, value_name = "PID", value_delimiter = ',', value_parser = parse_pid, allow_hyphen_values = true)]
    pub pid: Vec<u32>,

    /// Only sockets with one of these local or remote ports.
    #[arg(long, value_name = "PORT", value_delimiter = ',', value_parser = parse_port, allow_hyphen_values = true)]
    pub port: Vec<u16>,

    /// Only IPv4 sockets.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Only IPv6 sockets.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    #[command(flatten)]
    pub select: SelectArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Aligned columns for a terminal.
    Text,
    /// `{"findings":[...],"groups":[...]}`.
    Json,
    /// Headings and tables to paste into an incident ticket.
    Markdown,
}

/// What `top` sorts its rows by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SortKey {
    /// Sockets in closing states and TIME_WAIT now.
    Lingering,
    /// Connections opened per second.
    Rate,
    /// Age of the oldest CLOSE_WAIT socket.
    CloseWaitAge,
    /// FIN_WAIT2 p99.
    FinWait2,
    /// ESTABLISHED sockets now.
    Established,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

/// Userspace selection flags: by owner command name and remote network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct SelectArgs {
    /// Only sockets owned by a process with this command name, as `ps -o comm`
    /// shows it (comma-separated or repeated; names longer than the 15
    /// characters the kernel keeps match on those 15).
    #[arg(long, value_name = "NAME", value_delimiter = ',', value_parser = crate::model::select::parse_comm)]
    pub comm: Vec<String>,

    /// Only connections whose remote address is in this network: an address
    /// or CIDR (e.g. 10.0.0.0/8, fd00::/8; comma-separated or repeated).
    #[arg(long, value_name = "CIDR", value_delimiter = ',', value_parser = crate::model::select::parse_remote)]
    pub remote: Vec<ipnet::IpNet>,
}

impl SelectArgs {
    pub fn selection(&self) -> crate::model::select::Selection {
        crate::model::select::Selection::new(&self.comm, &self.remote)
    }
}

/// Flags shared by every command that traces.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Stop after this long (e.g. 30s, 5m, 1h30m); default: until Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub duration: Option<Duration>,

    /// Only sockets owned by these process ids (comma-separated or repeated, at most 8).
    #[arg(long, value_name = "PID", value_delimiter = ',', value_parser = parse_pid, allow_hyphen_values = true)]
    pub pid: Vec<u32>,

    /// Only sockets with one of these local or remote ports (comma-separated or repeated, at most 8).
    #[arg(long, value_name = "PORT", value_delimiter = ',', value_parser = parse_port, allow_hyphen_values = true)]
    pub port: Vec<u16>,

    /// Only IPv4 sockets.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Only IPv6 sockets (including IPv4-mapped ones).
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,

    /// Most sockets followed at once; beyond it the stalest is dropped
    /// (counted as evicted) to bound memory.
    #[arg(long, value_name = "N", default_value = "262144", value_parser = parse_max_sockets, allow_hyphen_values = true)]
    pub max_sockets: NonZeroUsize,

    /// Size of the kernel-to-userspace ring buffer: a power of two, at least
    /// 4KiB (suffixes K, M, G, KiB, MiB, GiB).
    #[arg(long, value_name = "BYTES", default_value = "4MiB", value_parser = parse_ring_bytes, allow_hyphen_values = true)]
    pub ring_bytes: u32,

    #[command(flatten)]
    pub select: SelectArgs,

    /// Tests only: behave as if this kernel hook could not be attached.
    #[arg(long, value_name = "HOOK", value_delimiter = ',', value_parser = parse_hook, hide = true)]
    pub disable_hook: Vec<&'static str>,
}

/// The largest ring accepted: far beyond any burst, and locked kernel memory.
const MAX_RING_BYTES: u64 = 1 << 30;
const MIN_RING_BYTES: u64 = 4096;

/// Which address families to trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyFilter {
    Any,
    Ipv4,
    Ipv6,
}

/// Validated kernel-side filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filters {
    pub pids: Vec<u32>,
    pub ports: Vec<u16>,
    pub family: FamilyFilter,
}

impl Filters {
    /// The kernel's filters, for sockets userspace finds by itself (the
    /// start-up snapshot): family, any port local or remote, owner pid.
    pub fn admits(&self, family: Family, lport: u16, rport: u16, pid: Option<u32>) -> bool {
        let family_ok = match self.family {
            FamilyFilter::Any => true,
            FamilyFilter::Ipv4 => family == Family::Ipv4,
            FamilyFilter::Ipv6 => family == Family::Ipv6,
        };
        let port_ok = self.ports.is_empty() || self.ports.iter().any(|&p| p == lport || p == rport);
        let pid_ok = self.pids.is_empty() || pid.is_some_and(|pid| self.pids.contains(&pid));
        family_ok && port_ok && pid_ok
    }
}

/// A flag value that parsed but cannot be used; the message names the flag.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl TraceArgs {
    pub fn filters(&self) -> Result<Filters, UsageError> {
        let mut pids = self.pid.clone();
        pids.sort_unstable();
        pids.dedup();
        if pids.len() > MAX_FILTER_PIDS {
            return Err(UsageError(format!(
                "--pid: at most {MAX_FILTER_PIDS} process ids (got {})",
                pids.len()
            )));
        }
        let mut ports = self.port.clone();
        ports.sort_unstable();
        ports.dedup();
        if ports.len() > MAX_FILTER_PORTS {
            return Err(UsageError(format!(
                "--port: at most {MAX_FILTER_PORTS} ports (got {})",
                ports.len()
            )));
        }
        let family = match (self.ipv4, self.ipv6) {
            (true, _) => FamilyFilter::Ipv4,
            (_, true) => FamilyFilter::Ipv6,
            _ => FamilyFilter::Any,
        };
        Ok(Filters {
            pids,
            ports,
            family,
        })
    }
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("expected a duration like 30s, 5m or 1h ({e})"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

pub(crate) fn parse_pid(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(0) => Err("pid 0 is not a process".into()),
        Ok(pid) if pid > i32::MAX as u32 => Err(format!("{pid} is beyond any pid")),
        Ok(pid) => Ok(pid),
        Err(_) => Err(format!("'{s}' is not a process id")),
    }
}

pub(crate) fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u32>() {
        Ok(port @ 1..=65535) => Ok(port as u16),
        Ok(port) => Err(format!("{port} is not a port (1-65535)")),
        Err(_) => Err(format!("'{s}' is not a port number")),
    }
}

/// A kernel hook by its program name (`sock_recv_length`).
pub(crate) fn parse_hook(s: &str) -> Result<&'static str, String> {
    crate::bpf::load::HOOKS
        .iter()
        .map(|h| h.program)
        .find(|name| *name == s.trim())
        .ok_or_else(|| {
            let names: Vec<&str> = crate::bpf::load::HOOKS.iter().map(|h| h.program).collect();
            format!("'{s}' is not a hook ({})", names.join(", "))
        })
}

pub(crate) fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("'{s}' is not an address:port (e.g. 127.0.0.1:9917 or [::1]:9917)"))
}

pub(crate) fn parse_cgroup(s: &str) -> Result<String, String> {
    if s.starts_with('/') {
        Ok(s.trim_end_matches('/').to_string())
    } else {
        Err(format!("'{s}' is not a cgroup path (they start with /)"))
    }
}

/// Keeps the metric series of one daemon within what Prometheus handles well.
const MAX_MAX_ENDPOINTS: usize = 10_000;

pub(crate) fn parse_max_endpoints(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n @ 0..=MAX_MAX_ENDPOINTS) => Ok(n),
        Ok(_) => Err(format!("at most {MAX_MAX_ENDPOINTS}")),
        Err(_) => Err(format!("'{s}' is not a count")),
    }
}

/// Far more groups than a screen or a report can use.
const MAX_MAX_GROUPS: usize = 100_000;

pub(crate) fn parse_max_groups(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n @ 1..=MAX_MAX_GROUPS) => Ok(n),
        Ok(_) => Err(format!("between 1 and {MAX_MAX_GROUPS}")),
        Err(_) => Err(format!("'{s}' is not a count")),
    }
}

/// A TCP state by its name, any case, `-` or `_`: `close-wait`, `TIME_WAIT`.
fn parse_state(s: &str) -> Result<tracer_common::TcpState, String> {
    let wanted = s.trim().to_ascii_uppercase().replace('-', "_");
    (1..=13)
        .filter_map(tracer_common::TcpState::from_u8)
        .find(|state| state.name() == wanted)
        .ok_or_else(|| {
            format!("'{s}' is not a TCP state (e.g. established, close-wait, fin-wait2, time-wait)")
        })
}

/// Far more than any host holds; keeps a typo from reserving absurd memory.
const MAX_MAX_SOCKETS: usize = 1 << 26;

pub(crate) fn parse_max_sockets(s: &str) -> Result<NonZeroUsize, String> {
    match s.trim().parse::<usize>() {
        Ok(n @ 1..=MAX_MAX_SOCKETS) => Ok(NonZeroUsize::new(n).expect("n >= 1")),
        Ok(_) => Err(format!("between 1 and {MAX_MAX_SOCKETS}")),
        Err(_) => Err(format!("'{s}' is not a count")),
    }
}

pub(crate) fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit '{other}' (use K, M or G)")),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 4MiB, 262144)"))?;
    let bytes = value
        .checked_mul(multiplier)
        .filter(|&b| b <= MAX_RING_BYTES)
        .ok_or_else(|| format!("at most {}MiB", MAX_RING_BYTES >> 20))?;
    if bytes < MIN_RING_BYTES {
        return Err(format!("at least {MIN_RING_BYTES} bytes (one page)"));
    }
    if !bytes.is_power_of_two() {
        return Err(format!("{bytes} is not a power of two"));
    }
    Ok(bytes as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tcplinger").chain(args.iter().copied()))
    }

    fn watch(args: &[&str]) -> WatchArgs {
        let mut all = vec!["watch"];
        all.extend(args);
        match parse(&all).unwrap().command {
            Command::Watch(w) => w,
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let w = watch(&[]);
        assert!(!w.transitions);
        assert_eq!(w.format, Format::Text);
        assert_eq!(w.trace.duration, None);
        assert_eq!(w.trace.ring_bytes, 4 << 20);
        assert_eq!(w.trace.max_sockets.get(), 262144);
        assert_eq!(
            w.trace.filters().unwrap(),
            Filters {
                pids: vec![],
                ports: vec![],
                family: FamilyFilter::Any
            }
        );
    }

    #[test]
    fn pids_and_ports_accept_lists_and_repeats() {
        let w = watch(&[
            "--pid", "10,20", "--pid", "10", "--port", "80", "--port", "443,8080",
        ]);
        let f = w.trace.filters().unwrap();
        assert_eq!(f.pids, vec![10, 20]);
        assert_eq!(f.ports, vec![80, 443, 8080]);
    }

    #[test]
    fn family_flags() {
        assert_eq!(
            watch(&["-4"]).trace.filters().unwrap().family,
            FamilyFilter::Ipv4
        );
        assert_eq!(
            watch(&["-6"]).trace.filters().unwrap().family,
            FamilyFilter::Ipv6
        );
        assert!(parse(&["watch", "-4", "-6"]).is_err());
    }

    #[test]
    fn too_many_filter_values_name_the_flag() {
        let pids: Vec<String> = (1..=9).map(|p| p.to_string()).collect();
        let w = watch(&["--pid", &pids.join(",")]);
        let err = w.trace.filters().unwrap_err().to_string();
        assert!(err.starts_with("--pid:"), "{err}");
        let w = watch(&["--port", "1,2,3,4,5,6,7,8,9"]);
        assert!(
            w.trace
                .filters()
                .unwrap_err()
                .to_string()
                .starts_with("--port:")
        );
    }

    #[test]
    fn bad_values_are_rejected() {
        for args in [
            &["watch", "--port", "70000"][..],
            &["watch", "--port", "0"],
            &["watch", "--port", "http"],
            &["watch", "--pid", "0"],
            &["watch", "--pid", "-5"],
            &["watch", "--pid", "abc"],
            &["watch", "--duration", "-1s"],
            &["watch", "--duration", "0s"],
            &["watch", "--duration", "soon"],
            &["watch", "--format", "xml"],
            &["watch", "--ring-bytes", "3000"],
            &["watch", "--ring-bytes", "5MiB"],
            &["watch", "--ring-bytes", "2GiB"],
            &["watch", "--ring-bytes", "99999999999999999999"],
            &["watch", "--ring-bytes", "4XB"],
            &["watch", "--no-such-flag"],
            &["watch", "--max-sockets", "0"],
            &["watch", "--max-sockets", "many"],
        ] {
            let err = parse(args).expect_err(&format!("{args:?} should fail"));
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn error_names_the_flag_and_reason() {
        for (args, flag, reason) in [
            (&["watch", "--port", "70000"][..], "--port", "1-65535"),
            (&["watch", "--duration", "-3s"], "--duration", "duration"),
            (&["watch", "--pid", "-5"], "--pid", "not a process id"),
        ] {
            let err = parse(args).unwrap_err().to_string();
            let first = err.lines().next().unwrap();
            assert!(first.contains(flag) && first.contains(reason), "{first}");
        }
    }

    #[test]
    fn userspace_filter_matches_the_kernel_rules() {
        let any = watch(&[]).trace.filters().unwrap();
        assert!(any.admits(Family::Ipv6, 1, 2, None));
        let f = watch(&["-4", "--port", "80", "--pid", "7"])
            .trace
            .filters()
            .unwrap();
        assert!(f.admits(Family::Ipv4, 80, 5000, Some(7)));
        assert!(
            f.admits(Family::Ipv4, 5000, 80, Some(7)),
            "remote port counts"
        );
        assert!(!f.admits(Family::Ipv6, 80, 5000, Some(7)));
        assert!(!f.admits(Family::Ipv4, 81, 5000, Some(7)));
        assert!(!f.admits(Family::Ipv4, 80, 5000, Some(8)));
        assert!(
            !f.admits(Family::Ipv4, 80, 5000, None),
            "unknown owner fails a pid filter"
        );
    }

    #[test]
    fn report_top_and_sockets_flags() {
        let Command::Report(r) = parse(&[
            "report",
            "--format",
            "markdown",
            "--duration",
            "10s",
            "--max-groups",
            "5",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        assert_eq!(r.format, ReportFormat::Markdown);
        assert_eq!(r.analysis.max_groups, 5);
        assert_eq!(r.trace.duration, Some(Duration::from_secs(10)));
        let Command::Top(t) = parse(&["top", "--sort", "close-wait-age"]).unwrap().command else {
            panic!()
        };
        assert_eq!(t.sort, SortKey::CloseWaitAge);
        let Command::Sockets(s) =
            parse(&["sockets", "--state", "close-wait,TIME_WAIT", "--pid", "1"])
                .unwrap()
                .command
        else {
            panic!()
        };
        assert_eq!(
            s.state,
            vec![
                tracer_common::TcpState::CloseWait,
                tracer_common::TcpState::TimeWait
            ]
        );
        assert_eq!(s.pid, vec![1]);
        for bad in [
            &["report", "--format", "html"][..],
            &["report", "--max-groups", "0"],
            &["top", "--sort", "bogus"],
            &["sockets", "--state", "half-open"],
            &["sockets", "--duration", "5s"],
        ] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(
            watch(&["--duration", "1m30s"]).trace.duration,
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            watch(&["--duration", "250ms"]).trace.duration,
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_ring_bytes("4096"), Ok(4096));
        assert_eq!(parse_ring_bytes("64K"), Ok(65536));
        assert_eq!(parse_ring_bytes("16MiB"), Ok(16 << 20));
        assert_eq!(parse_ring_bytes("1G"), Ok(1 << 30));
    }
}
