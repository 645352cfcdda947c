//! The command line as written (clap): flags and their defaults (each written here once); `into_settings` turns it into the validated settings the commands run with. Nothing else sees clap.

#[cfg(test)]
mod file_tests;
pub mod generate;
mod into_settings;

pub use into_settings::into_settings;

use std::{collections::HashSet, ffi::OsString, num::NonZeroUsize, time::Duration};

use clap::{
    ArgMatches, Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum,
    builder::PossibleValue, parser::ValueSource,
};

use crate::{
    model::select::{parse_comm, parse_remote},
    output::{Format, ReportFormat},
    settings::{
        LogFormat, SortKey,
        values::{
            parse_cgroup, parse_duration, parse_history_bytes, parse_history_days, parse_hook,
            parse_kube_name, parse_listen, parse_max_bytes, parse_max_endpoints, parse_max_groups,
            parse_max_sockets, parse_pathology, parse_pid, parse_port, parse_ring_bytes,
            parse_speed, parse_state, parse_top, parse_when,
        },
    },
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
    /// Record what the kernel and the host say to a file, for `watch`,
    /// `report` or `top` --from FILE later: anywhere, without root.
    Record(RecordArgs),
    /// The findings the daemon kept in its history, over time (no tracing;
    /// no root where the history is readable). `report --since` gives the
    /// full report of a window.
    History(HistoryArgs),
    /// Print the shell completion script for SHELL (e.g. `tcplinger
    /// completions bash > /usr/share/bash-completion/completions/tcplinger`).
    Completions(CompletionsArgs),
    /// Print the man page, tcplinger(1); with --dir, write it and one page
    /// per command there (tcplinger-watch.1, ...).
    Manpage(ManpageArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManpageArgs {
    /// Write tcplinger.1 and tcplinger-COMMAND.1 in this directory.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// From this time on: a time of day (03:00, the last time the clock
    /// showed it), an RFC 3339 time (2026-12-01T03:00:00Z), or this long
    /// ago (2h, 3d).
    #[arg(long, value_name = "WHEN", default_value = "24h", value_parser = parse_when)]
    pub since: crate::settings::When,

    /// Up to this time (same forms as --since); default: now.
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    pub until: Option<crate::settings::When>,

    /// Only these pathologies (comma-separated or repeated).
    #[arg(long, value_name = "NAME", value_delimiter = ',', value_parser = parse_pathology)]
    pub pathology: Vec<crate::model::diagnose::Pathology>,

    /// Only these process names (comma-separated or repeated).
    #[arg(long, value_name = "NAME", value_delimiter = ',', value_parser = parse_comm)]
    pub comm: Vec<String>,

    /// List the connections kept whole instead (reset, or stuck in a
    /// closing state for a second or more), as `watch` prints them.
    #[arg(long)]
    pub connections: bool,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// The daemon's history directory.
    #[arg(long, value_name = "DIR", default_value = crate::settings::HISTORY_DIR)]
    pub history_dir: std::path::PathBuf,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["output", "info"])))]
pub struct RecordArgs {
    /// The recording to write: a new file, made readable by its owner only,
    /// unless --force.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,

    /// Let --output replace an existing file (a regular file of yours with
    /// no other hard link).
    #[arg(long)]
    pub force: bool,

    /// Stop once the file would grow beyond this (e.g. 100M, 2G): the
    /// recording ends there, readable, and the summary says so.
    #[arg(long, value_name = "BYTES", value_parser = parse_max_bytes, allow_hyphen_values = true)]
    pub max_bytes: Option<u64>,

    /// Say what a recording holds (host, kernel, time span, sockets,
    /// records, drops, size) instead of recording.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["output", "force", "max_bytes"])]
    pub info: Option<std::path::PathBuf>,

    /// Output format of --info.
    #[arg(long, value_enum, default_value_t = Format::Text, requires = "info")]
    pub format: Format,

    /// Only sockets whose owner's cgroup path starts with this (e.g.
    /// /kubepods.slice): every record is kept, with the cgroups of their
    /// owners, and replays report only these.
    #[arg(long, value_name = "PATH", value_parser = parse_cgroup)]
    pub cgroup: Option<String>,

    #[command(flatten)]
    pub trace: TraceArgs,
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

    /// Judge the daemon's own sockets too (the scrapes of its metrics):
    /// left out by default.
    #[arg(long)]
    pub include_self: bool,

    /// Only sockets whose owner's cgroup path starts with this (e.g.
    /// /kubepods.slice or /system.slice/nginx.service).
    #[arg(long, value_name = "PATH", value_parser = parse_cgroup)]
    pub cgroup: Option<String>,

    /// Most remote endpoints (address and port) with metric series of their
    /// own; the rest share remote_addr="other".
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = parse_max_endpoints, allow_hyphen_values = true)]
    pub max_endpoints: usize,

    /// Keep a history here (each group's minutes, the findings with their
    /// start, end and worst figures, connections reset or stuck) for
    /// `report --since` and `tcplinger history`.
    #[arg(long, value_name = "DIR", default_value = crate::settings::HISTORY_DIR)]
    pub history_dir: std::path::PathBuf,

    /// Keep no history.
    #[arg(long)]
    pub no_history: bool,

    /// Days of history kept; older minutes go first.
    #[arg(long, value_name = "DAYS", default_value_t = crate::settings::HISTORY_DAYS, value_parser = parse_history_days)]
    pub history_days: u32,

    /// Most bytes the history takes on disk (with its log); beyond, the
    /// oldest minutes go.
    #[arg(long, value_name = "BYTES", default_value = crate::settings::HISTORY_MAX_BYTES, value_parser = parse_history_bytes)]
    pub history_max_bytes: u64,

    #[command(flatten)]
    pub analysis: AnalysisArgs,

    #[command(flatten)]
    pub trace: TraceArgs,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Print every state change (and every RST) as its own line.
    #[arg(long, conflicts_with = "from")]
    pub transitions: bool,

    #[command(flatten)]
    pub replay: ReplayArgs,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Write the records to this file instead of stdout: a new file, made
    /// readable by its owner only, unless --force. A symbolic link is
    /// refused. If it cannot be written (disk full), tracing stops: the
    /// error and the summary go to stderr, and the exit code is 1.
    #[arg(long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,

    /// Let --output replace an existing file (a regular file of yours with
    /// no other hard link; its mode is kept). It is emptied only once
    /// tracing has started: a run that fails to start leaves it as it was.
    #[arg(long)]
    pub force: bool,

    #[command(flatten)]
    pub trace: TraceArgs,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub replay: ReplayArgs,

    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,

    /// Groups listed after the findings (all groups in JSON).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 20,
        value_parser = parse_top,
        allow_hyphen_values = true
    )]
    pub top: usize,

    /// With --since and no --from: the daemon's history directory.
    #[arg(long, value_name = "DIR", default_value = crate::settings::HISTORY_DIR)]
    pub history_dir: std::path::PathBuf,

    /// Write the report to this file instead of stdout: a new file, made
    /// readable by its owner only, unless --force. A symbolic link is
    /// refused.
    #[arg(long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,

    /// Let --output replace an existing file (a regular file of yours with
    /// no other hard link; its mode is kept). It is emptied only when the
    /// report is written: a run that fails leaves it as it was.
    #[arg(long)]
    pub force: bool,

    /// No progress line on stderr while tracing (there is none when stderr
    /// is not a terminal).
    #[arg(short, long)]
    pub quiet: bool,

    #[command(flatten)]
    pub analysis: AnalysisArgs,

    #[command(flatten)]
    pub trace: TraceArgs,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub replay: ReplayArgs,

    /// With --from: recorded seconds shown per second (0.1 to 1000).
    #[arg(long, value_name = "N", default_value_t = 1.0, value_parser = parse_speed, requires = "from")]
    pub speed: f64,

    /// Initial sort key (change it with the keys shown at the bottom).
    #[arg(long, value_enum, default_value_t = SortKey::Lingering)]
    pub sort: SortKey,

    #[command(flatten)]
    pub analysis: AnalysisArgs,

    #[command(flatten)]
    pub trace: TraceArgs,
}

/// Flags of the commands that can replay a recording (`watch`, `report`,
/// `top`).
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Replay a recording (`tcplinger record`) instead of tracing: no root
    /// needed; --comm and --remote select after the fact (`top` shows it
    /// at its pace: space pauses, n steps a second).
    #[arg(long, value_name = "FILE")]
    pub from: Option<std::path::PathBuf>,

    /// With --from: from this time on (RFC 3339, e.g.
    /// 2026-12-01T03:00:00Z, UTC if no offset; or 03:00, local), or this
    /// far into the recording (90s, 5m). What came before is read, not
    /// shown; connections open then count as already open. `report`
    /// without --from: the daemon's history from then (03:00, RFC 3339, or
    /// this long ago: 2h).
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    pub since: Option<crate::settings::When>,

    /// With --from: stop the replay at this time, or this far into the
    /// recording; it ends as if stopped then. `report --since`: the end of
    /// the window (default: now).
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    pub until: Option<crate::settings::When>,
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

    /// Where the node's files are, read for Kubernetes names (see the
    /// tracing commands' --node-root).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub node_root: std::path::PathBuf,
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
value_enum!(ReportFormat, ReportFormat::Text => "text", ReportFormat::Json => "json", ReportFormat::Markdown => "markdown", ReportFormat::Html => "html");
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

    /// Only sockets of processes in pods of this Kubernetes namespace
    /// (comma-separated or repeated; named from the node's own files).
    #[arg(long, value_name = "NAMESPACE", value_delimiter = ',', value_parser = parse_kube_name)]
    pub namespace: Vec<String>,

    /// Only sockets of processes in this pod: NAME or NAMESPACE/NAME
    /// (comma-separated or repeated).
    #[arg(long, value_name = "POD", value_delimiter = ',', value_parser = parse_kube_name)]
    pub pod: Vec<String>,
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
    /// (counted as evicted) to bound memory. The kernel's owner map is
    /// sized to match (280 bytes of kernel memory per socket: 70 MiB at
    /// the default).
    #[arg(long, value_name = "N", default_value = "262144", value_parser = parse_max_sockets, allow_hyphen_values = true)]
    pub max_sockets: NonZeroUsize,

    /// Size of the kernel-to-userspace ring buffer: a power of two, at least
    /// 4KiB (suffixes K, M, G, KiB, MiB, GiB).
    #[arg(long, value_name = "BYTES", default_value = "4MiB", value_parser = parse_ring_bytes, allow_hyphen_values = true)]
    pub ring_bytes: u32,

    #[command(flatten)]
    pub select: SelectArgs,

    /// Where the node's files are (its /run, /var/log, /var/lib/docker),
    /// read for Kubernetes names: / unless tcplinger runs in a container
    /// that mounts the host's root elsewhere (e.g. /host).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub node_root: std::path::PathBuf,

    /// Tests only: behave as if this kernel hook could not be attached.
    #[arg(long, value_name = "HOOK", value_delimiter = ',', value_parser = parse_hook, hide = true)]
    pub disable_hook: Vec<&'static str>,
}

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

/// clap's error text as tcplinger prints it: our name for its `error:`,
/// its blank lines gone, the rest (allowed values, a suggestion, the usage
/// line, where to read more) indented under it.
pub fn usage_block(clap_text: &str) -> String {
    let mut out = String::new();
    for (i, line) in clap_text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
    {
        if i == 0 {
            out.push_str("tcplinger: ");
            out.push_str(line.strip_prefix("error: ").unwrap_or(line));
        } else {
            out.push_str("  ");
            out.push_str(line.trim());
        }
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str("tcplinger: invalid arguments\n");
    }
    out
}

fn given(matches: &ArgMatches) -> HashSet<String> {
    matches
        .ids()
        .filter(|id| matches.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| id.as_str().to_string())
        .collect()
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
        assert_eq!(w.trace.max_sockets.get(), 262_144);
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
            &["report", "--format", "pdf"],
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
    }

    /// The block a usage error prints: clap's own words under our name.
    fn block(args: &[&str]) -> String {
        usage_block(&parse(args).unwrap_err().to_string())
    }

    #[test]
    fn a_bad_value_lists_the_values_allowed() {
        let b = block(&["watch", "--format", "yaml"]);
        assert!(
            b.starts_with("tcplinger: invalid value 'yaml' for '--format <FORMAT>'"),
            "{b}"
        );
        assert!(b.contains("[possible values: text, json]"), "{b}");
        assert!(!b.contains("error:") && !b.contains("\n\n"), "{b}");
        assert!(b.lines().skip(1).all(|l| l.starts_with("  ")), "{b}");
        assert!(b.lines().count() <= 6, "short: {b}");
    }

    #[test]
    fn a_mistyped_command_or_flag_gets_a_suggestion() {
        let b = block(&["wtach"]);
        assert!(b.contains("'wtach'") && b.contains("'watch'"), "{b}");
        let b = block(&["report", "--duraton", "5s"]);
        assert!(b.contains("'--duration'"), "{b}");
    }

    #[test]
    fn report_top_must_list_something() {
        let b = block(&["report", "--top", "0"]);
        assert!(b.contains("at least 1"), "{b}");
        assert!(parse(&["report", "--top", "1"]).is_ok());
    }

    #[test]
    fn completions_and_manpage_parse() {
        assert!(parse(&["completions", "bash"]).is_ok());
        assert!(block(&["completions", "tcsh"]).contains("possible values"));
        assert!(parse(&["manpage", "--dir", "/tmp/x"]).is_ok());
    }
}
