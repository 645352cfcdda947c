//! The command line as written (clap): flags, their defaults (each written here once) and the parsing of each value. `settings` turns it into what the commands run with; nothing else sees it.

use std::{collections::HashSet, ffi::OsString, num::NonZeroUsize, time::Duration};

use clap::{
    ArgMatches, Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum,
    builder::PossibleValue, parser::ValueSource,
};

use crate::{
    bpf::load::HOOKS,
    cmd::{daemon::LogFormat, top::SortKey},
    model::select::{parse_comm, parse_remote},
    output::{Format, ReportFormat},
};

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

/// The daemon's flags. Each but --config and --check-config can also be set
/// in the --config file under the same name; a flag given here wins over
/// the file, the file over the default.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// TOML file with the same keys as these flags (e.g. max-sockets = 100000).
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,

    /// Validate the configuration, print it as it would be used, and exit.
    #[arg(long)]
    pub check_config: bool,

    /// Address for /metrics and /healthz. An address beyond loopback also
    /// needs --allow-non-loopback.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9917", value_parser = parse_listen)]
    pub listen: std::net::SocketAddr,

    /// Let --listen serve metrics beyond this host (they name processes and
    /// the addresses of their peers): for a scraper on another machine.
    #[arg(long)]
    pub allow_non_loopback: bool,

    /// Findings on stdout as text lines or JSON lines.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Only sockets whose owner's cgroup path starts with this (e.g.
    /// /kubepods.slice or /system.slice/nginx.service).
    #[arg(long, value_name = "PATH", value_parser = parse_cgroup)]
    pub cgroup: Option<String>,

    /// Most remote endpoints (address and port) with metric series of their
    /// own; the rest share remote_addr="other".
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = parse_max_endpoints, allow_hyphen_values = true)]
    pub max_endpoints: usize,

    #[command(flatten)]
    pub analysis: AnalysisArgs,

    #[command(flatten)]
    pub trace: TraceArgs,
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
    /// "other" row, counted and judged.
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = parse_max_groups, allow_hyphen_values = true)]
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

/// The values a flag takes, as clap lists them in help and errors.
macro_rules! value_enum {
    ($ty:ty, $($variant:path => $name:literal),+ $(,)?) => {
        impl ValueEnum for $ty {
            fn value_variants<'a>() -> &'a [Self] {
                &[$($variant),+]
            }
            fn to_possible_value(&self) -> Option<PossibleValue> {
                Some(PossibleValue::new(match self {
                    $($variant => $name),+
                }))
            }
        }
    };
}

value_enum!(Format, Format::Text => "text", Format::Json => "json");
value_enum!(ReportFormat, ReportFormat::Text => "text", ReportFormat::Json => "json", ReportFormat::Markdown => "markdown");
value_enum!(LogFormat, LogFormat::Text => "text", LogFormat::Json => "json");
value_enum!(
    SortKey,
    SortKey::Lingering => "lingering",
    SortKey::Rate => "rate",
    SortKey::CloseWaitAge => "close-wait-age",
    SortKey::FinWait2 => "fin-wait2",
    SortKey::Established => "established",
);

/// Userspace selection flags: by owner command name and remote network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct SelectArgs {
    /// Only sockets owned by a process with this command name, as `ps -o comm`
    /// shows it (comma-separated or repeated; names longer than the 15
    /// characters the kernel keeps match on those 15).
    #[arg(long, value_name = "NAME", value_delimiter = ',', value_parser = parse_comm)]
    pub comm: Vec<String>,

    /// Only connections whose remote address is in this network: an address
    /// or CIDR (e.g. 10.0.0.0/8, fd00::/8; comma-separated or repeated).
    #[arg(long, value_name = "CIDR", value_delimiter = ',', value_parser = parse_remote)]
    pub remote: Vec<ipnet::IpNet>,
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

/// The command line, parsed, and which flags it really gave (as opposed to
/// their defaults): the daemon's file settings yield to the former only.
#[derive(Debug)]
pub struct Parsed {
    pub cli: Cli,
    /// Ids of the flags given on the command line (clap's argument ids:
    /// field names, `max_sockets`).
    pub given: HashSet<String>,
}

/// Parses `args` (the program name first).
pub fn parse_from(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
) -> Result<Parsed, clap::Error> {
    let matches = Cli::command().try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let given = matches
        .subcommand()
        .map(|(_, sub)| given(sub))
        .unwrap_or_default();
    Ok(Parsed { cli, given })
}

fn given(matches: &ArgMatches) -> HashSet<String> {
    matches
        .ids()
        .filter(|id| matches.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| id.as_str().to_string())
        .collect()
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
    HOOKS
        .iter()
        .map(|h| h.program)
        .find(|name| *name == s.trim())
        .ok_or_else(|| {
            let names: Vec<&str> = HOOKS.iter().map(|h| h.program).collect();
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
pub(crate) fn parse_state(s: &str) -> Result<tracer_common::TcpState, String> {
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
pub(crate) mod tests {
    use super::*;

    pub(crate) fn parse(args: &[&str]) -> Result<Parsed, clap::Error> {
        parse_from(std::iter::once("tcplinger").chain(args.iter().copied()))
    }

    fn watch(args: &[&str]) -> WatchArgs {
        let mut all = vec!["watch"];
        all.extend(args);
        match parse(&all).unwrap().cli.command {
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
    }

    #[test]
    fn only_flags_on_the_command_line_count_as_given() {
        let p = parse(&["daemon", "--max-sockets", "10", "--port", "80"]).unwrap();
        assert!(
            p.given.contains("max_sockets") && p.given.contains("port"),
            "{:?}",
            p.given
        );
        assert!(!p.given.contains("ring_bytes"), "a default is not given");
        assert!(!p.given.contains("listen"));
    }

    #[test]
    fn family_flags_conflict() {
        assert!(watch(&["-4"]).trace.ipv4);
        assert!(watch(&["-6"]).trace.ipv6);
        assert!(parse(&["watch", "-4", "-6"]).is_err());
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
            &["report", "--format", "html"],
            &["report", "--max-groups", "0"],
            &["top", "--sort", "bogus"],
            &["sockets", "--state", "half-open"],
            &["sockets", "--duration", "5s"],
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
    fn enums_list_their_values() {
        let err = parse(&["watch", "--format", "yaml"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("text") && err.contains("json"), "{err}");
        let Command::Top(t) = parse(&["top", "--sort", "close-wait-age"])
            .unwrap()
            .cli
            .command
        else {
            panic!()
        };
        assert_eq!(t.sort, SortKey::CloseWaitAge);
        let Command::Report(r) = parse(&["report", "--format", "markdown"])
            .unwrap()
            .cli
            .command
        else {
            panic!()
        };
        assert_eq!(r.format, ReportFormat::Markdown);
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
