//! What the commands run with: the command line (and the daemon's TOML file) turned once into validated settings, built from the types the layers below take (`session::TraceOptions`, `bpf::load::LoadOptions`). Nothing flows back, and nothing below the commands sees a flag.

pub mod file;
pub mod values;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tracer_common::{MAX_FILTER_PIDS, MAX_FILTER_PORTS, TcpState};

use crate::{
    error::UsageError,
    model::select::{FamilyFilter, Filters, Selection},
    output::{Format, ReportFormat},
    session::TraceOptions,
};

/// What the table is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Lingering,
    Rate,
    CloseWaitAge,
    FinWait2,
    Established,
}

/// How findings are logged on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `report` traces this long unless told otherwise.
pub const REPORT_DURATION: Duration = Duration::from_secs(30);

/// Where the daemon keeps its history (systemd's `StateDirectory=tcplinger`).
pub const HISTORY_DIR: &str = "/var/lib/tcplinger";
pub const HISTORY_DAYS: u32 = 14;
pub const HISTORY_MAX_BYTES: &str = "256MiB";

/// A command and everything it runs with.
#[derive(Debug)]
pub enum Command {
    Watch(Watch),
    Report(Report),
    Top(Top),
    Sockets(Sockets),
    /// Boxed: its file's values make it the largest by far.
    Daemon(Box<Daemon>),
    Record(Record),
    RecordInfo(RecordInfo),
    History(History),
}

/// A point of a replay (`--since`, `--until`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// A wall-clock time.
    At(std::time::SystemTime),
    /// This far into the recording; for the daemon's history, this long ago.
    Into(Duration),
}

impl When {
    /// The boot-clock time of this point in a recording that started at
    /// `start_boot_ns` on the boot clock and `start_unix_ns` on the wall
    /// clock (a time before it is its start).
    pub fn boot_ns(self, start_boot_ns: u64, start_unix_ns: u64) -> u64 {
        let into = match self {
            When::Into(d) => d,
            When::At(at) => at
                .duration_since(std::time::UNIX_EPOCH + Duration::from_nanos(start_unix_ns))
                .unwrap_or_default(),
        };
        start_boot_ns.saturating_add(u64::try_from(into.as_nanos()).unwrap_or(u64::MAX))
    }
}

impl When {
    /// The wall-clock time of this point of the daemon's history, read at
    /// `now`: a duration is how long ago.
    pub fn ago(self, now: std::time::SystemTime) -> std::time::SystemTime {
        match self {
            When::At(at) => at,
            When::Into(d) => now.checked_sub(d).unwrap_or(std::time::UNIX_EPOCH),
        }
    }
}

/// How much history the daemon keeps, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryKeep {
    pub dir: PathBuf,
    pub days: u32,
    pub max_bytes: u64,
}

/// `tcplinger history`: the findings (or the connections kept whole) the
/// daemon stored over a window.
#[derive(Debug)]
pub struct History {
    pub dir: PathBuf,
    pub since: When,
    pub until: Option<When>,
    pub pathologies: Vec<crate::model::diagnose::Pathology>,
    pub selection: Selection,
    pub connections: bool,
    pub format: Format,
}

/// What of a replay is shown: `--since` and `--until`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub since: Option<When>,
    pub until: Option<When>,
}

/// `record -o FILE`.
#[derive(Debug)]
pub struct Record {
    pub duration: Option<Duration>,
    pub trace: TraceOptions,
    pub output: PathBuf,
    /// `--force`: an existing `output` file may be replaced.
    pub replace_output: bool,
    pub max_bytes: Option<u64>,
    /// The command line, kept in the recording.
    pub args: Vec<String>,
    /// `--comm` and `--remote` as given: the selection its replays
    /// default to.
    pub comm: Vec<String>,
    pub remote: Vec<ipnet::IpNet>,
}

/// `record --info FILE`.
#[derive(Debug)]
pub struct RecordInfo {
    pub path: PathBuf,
    pub format: Format,
}

#[derive(Debug)]
pub struct Watch {
    /// `--from`: a recording replayed instead of the kernel.
    pub from: Option<PathBuf>,
    pub window: Window,
    pub duration: Option<Duration>,
    pub trace: TraceOptions,
    /// Every state change as a line (`--transitions`).
    pub transitions: bool,
    pub format: Format,
    pub output: Option<PathBuf>,
    /// `--force`: an existing `output` file may be replaced.
    pub replace_output: bool,
}

#[derive(Debug)]
pub struct Report {
    /// `--from`: a recording replayed instead of the kernel.
    pub from: Option<PathBuf>,
    pub window: Window,
    pub duration: Duration,
    pub trace: TraceOptions,
    pub format: ReportFormat,
    /// Groups listed in text and Markdown.
    pub top: usize,
    pub output: Option<PathBuf>,
    /// `--force`: an existing `output` file may be replaced.
    pub replace_output: bool,
    pub max_groups: usize,
    /// `--since` without `--from`: the report of the daemon's history kept
    /// here over the window.
    pub history_dir: Option<PathBuf>,
    /// `-q`: no progress line while tracing.
    pub quiet: bool,
}

#[derive(Debug)]
pub struct Top {
    /// `--from`: a recording shown at `speed` times its pace.
    pub from: Option<PathBuf>,
    pub speed: f64,
    pub window: Window,
    pub duration: Option<Duration>,
    pub trace: TraceOptions,
    pub sort: SortKey,
    pub max_groups: usize,
}

#[derive(Debug)]
pub struct Sockets {
    pub filters: Filters,
    pub selection: Selection,
    /// The states shown; empty: every state but LISTEN.
    pub states: Vec<TcpState>,
    pub format: Format,
    /// Where the node's files are, for Kubernetes names.
    pub node_root: PathBuf,
}

#[derive(Debug)]
pub struct Daemon {
    pub duration: Option<Duration>,
    pub trace: TraceOptions,
    pub listen: std::net::SocketAddr,
    pub log_format: LogFormat,
    pub max_groups: usize,
    pub max_endpoints: usize,
    /// `None`: `--no-history`.
    pub history: Option<HistoryKeep>,
    /// `--check-config`: print `file` as it would be used, and stop.
    pub check_config: bool,
    /// The settings in the file's terms, for `--check-config`.
    pub file: file::DaemonValues,
}

/// The kernel-side filters: sorted, no repeats, within the kernel's slots,
/// and pids that exist (a typo would otherwise trace nothing, silently).
pub fn filters(pids: &[u32], ports: &[u16], family: FamilyFilter) -> Result<Filters, UsageError> {
    let mut pids = pids.to_vec();
    pids.sort_unstable();
    pids.dedup();
    if pids.len() > MAX_FILTER_PIDS {
        return Err(UsageError(format!(
            "--pid: at most {MAX_FILTER_PIDS} process ids (got {})",
            pids.len()
        )));
    }
    if let Some(pid) = pids
        .iter()
        .find(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    {
        return Err(UsageError(format!("--pid: no process {pid}")));
    }
    let mut ports = ports.to_vec();
    ports.sort_unstable();
    ports.dedup();
    if ports.len() > MAX_FILTER_PORTS {
        return Err(UsageError(format!(
            "--port: at most {MAX_FILTER_PORTS} ports (got {})",
            ports.len()
        )));
    }
    Ok(Filters {
        pids,
        ports,
        family,
    })
}
