//! What a finding is: its pathology and severity, the process and endpoint it names, its evidence, and the words summaries are made of.

use crate::model::{aggregate::GroupKey, tracker::Role};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pathology {
    ClientTimeoutStuckServer,
    ServerCloses,
    NoReuse,
    LeakedIdle,
    UnansweredRequests,
    DeadlinePooled,
    CloseWaitLeak,
    ConnectFailures,
}

/// How urgent a finding is; findings are listed most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    /// Sockets or a pool are being exhausted: a leak, a pool filling.
    Critical,
    /// Requests fail or wait on timeouts.
    Warning,
    /// Wasteful but working: connection churn, TIME_WAIT build-up.
    Notice,
}

impl Severity {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::Warning => "warning",
            Self::Notice => "notice",
        }
    }
}

impl Pathology {
    pub const ALL: [Pathology; 8] = [
        Self::ClientTimeoutStuckServer,
        Self::ServerCloses,
        Self::NoReuse,
        Self::LeakedIdle,
        Self::UnansweredRequests,
        Self::DeadlinePooled,
        Self::CloseWaitLeak,
        Self::ConnectFailures,
    ];

    /// The pathology whose [`Self::id`] this is.
    pub fn from_id(id: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.id() == id)
    }

    pub const fn id(self) -> &'static str {
        match self {
            Self::ClientTimeoutStuckServer => "client_timeout_stuck_server",
            Self::ServerCloses => "server_closes",
            Self::NoReuse => "no_reuse",
            Self::LeakedIdle => "leaked_idle",
            Self::UnansweredRequests => "unanswered_requests",
            Self::DeadlinePooled => "deadline_pooled",
            Self::CloseWaitLeak => "close_wait_leak",
            Self::ConnectFailures => "connect_failures",
        }
    }

    pub const fn severity(self) -> Severity {
        match self {
            Self::CloseWaitLeak | Self::UnansweredRequests | Self::LeakedIdle => Severity::Critical,
            Self::ClientTimeoutStuckServer | Self::DeadlinePooled | Self::ConnectFailures => {
                Severity::Warning
            }
            Self::ServerCloses | Self::NoReuse => Severity::Notice,
        }
    }

    /// Judged on the sockets alive now rather than on closes.
    pub const fn is_live(self) -> bool {
        matches!(
            self,
            Self::LeakedIdle | Self::UnansweredRequests | Self::CloseWaitLeak
        )
    }
}

/// One named figure of a finding's evidence.
#[derive(Debug, Clone, PartialEq)]
pub enum Figure {
    Count(u64),
    Ms(f64),
    /// 0..=100.
    Percent(f64),
    PerSecond(f64),
    /// File descriptors, filled in when they can be found.
    Fds(Vec<u32>),
}

impl Figure {
    /// For text and Markdown, with its unit: `2.00s`, `95%`, `4.8/s`, `[3, 5]`.
    pub fn show(&self) -> String {
        match self {
            Figure::Count(n) => n.to_string(),
            Figure::Ms(v) => crate::model::human::human_ms(*v),
            Figure::Percent(v) => format!("{v:.0}%"),
            Figure::PerSecond(v) => format!("{v:.1}/s"),
            Figure::Fds(fds) => format!("{fds:?}"),
        }
    }
}

/// The process(es) a finding is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    /// The one holding most of what the finding counts.
    pub pid: Option<u32>,
    /// How many processes of that name the group has seen.
    pub processes: u64,
    /// Some of them, busiest first.
    pub pids: Vec<u32>,
    /// The Kubernetes pod and container of `pid`, when the node names it
    /// (filled in by the session, which can look it up).
    pub pod: Option<crate::model::event::PodName>,
}

/// Pids listed in a finding.
pub(super) const PIDS_SHOWN: usize = 16;

#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub pathology: Pathology,
    pub key: GroupKey,
    pub who: Who,
    /// For a server: its only client address, if it has one.
    pub client: Option<std::net::IpAddr>,
    /// Named figures; the names are the rules' own, or a stored finding's.
    pub evidence: Vec<(std::borrow::Cow<'static, str>, Figure)>,
    pub summary: String,
    /// How long a stretch of time it was judged on, in seconds.
    pub window_s: f64,
}

impl Finding {
    pub fn figure(&self, name: &str) -> Option<&Figure> {
        self.evidence
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| f)
    }

    pub fn severity(&self) -> Severity {
        self.pathology.severity()
    }

    /// The same finding with `note` (a sentence, or nothing) after its
    /// summary.
    #[must_use]
    pub(super) fn with_note(mut self, note: &str) -> Self {
        self.summary.push_str(note);
        self
    }

    /// `4242/curl`, `nginx ×2`, `-`: the short form for tables.
    pub fn process_short(&self) -> String {
        process_short(&self.key, self.who.pid, self.who.processes)
    }

    /// The far end as JSON's `remote` says it: `addr:port` for a client;
    /// for a server, its clients (`addr:*` when one address, else `*:*`).
    pub fn remote(&self) -> String {
        remote_of(&self.key, self.client)
    }

    /// One number that grows as the problem does, to tell a finding that
    /// got worse from one that merely persists.
    pub fn magnitude(&self) -> f64 {
        let name = match self.pathology {
            Pathology::ClientTimeoutStuckServer if self.key.role == Role::Client => {
                "fin_wait2_p50_ms"
            }
            Pathology::ClientTimeoutStuckServer => "close_wait_p50_ms",
            Pathology::ServerCloses | Pathology::DeadlinePooled => "closed",
            Pathology::NoReuse => "opened_per_s",
            Pathology::LeakedIdle => "established_now",
            Pathology::UnansweredRequests => "awaiting_reply",
            Pathology::CloseWaitLeak => "close_wait_now",
            Pathology::ConnectFailures => "connects_failed",
        };
        match self.figure(name) {
            Some(Figure::Count(n)) => *n as f64,
            Some(Figure::Ms(v) | Figure::Percent(v) | Figure::PerSecond(v)) => *v,
            _ => 0.0,
        }
    }

    /// The decisive figures in a few words, for a one-line display.
    pub fn brief(&self) -> String {
        let f = |name| self.figure(name).map_or_else(|| "?".into(), Figure::show);
        match self.pathology {
            Pathology::ClientTimeoutStuckServer if self.key.role == Role::Client => format!(
                "FIN_WAIT2 p50 {} p99 {}, {} closed here first",
                f("fin_wait2_p50_ms"),
                f("fin_wait2_p99_ms"),
                f("closed_by_local_pct")
            ),
            Pathology::ClientTimeoutStuckServer => format!(
                "CLOSE_WAIT p50 {} p99 {}, {} closed by the peer",
                f("close_wait_p50_ms"),
                f("close_wait_p99_ms"),
                f("closed_by_remote_pct")
            ),
            Pathology::ServerCloses => format!(
                "{} of {} ended right after answering, {} FIN first here, {} in TIME_WAIT",
                f("prompt_close_pct"),
                f("closed"),
                f("closed_by_local_pct"),
                f("time_wait_now")
            ),
            Pathology::NoReuse => format!(
                "{} opened ({}), {} used once",
                f("opened"),
                f("opened_per_s"),
                f("one_exchange_pct")
            ),
            Pathology::LeakedIdle => format!(
                "ESTABLISHED {} -> {}, {} idle",
                f("established_first"),
                f("established_now"),
                f("idle_pct")
            ),
            Pathology::UnansweredRequests => {
                format!(
                    "{} awaiting a reply, oldest {}",
                    f("awaiting_reply"),
                    f("oldest_wait_ms")
                )
            }
            Pathology::DeadlinePooled => format!(
                "lifetime p50 {}, {} within ±{}",
                f("lifetime_p50_ms"),
                f("clustered_pct"),
                f("band_ms")
            ),
            Pathology::CloseWaitLeak => {
                let fds = self
                    .figure("fds")
                    .map(|fds| format!(", fds {}", fds.show()))
                    .unwrap_or_default();
                format!(
                    "{} in CLOSE_WAIT, oldest {}{fds}",
                    f("close_wait_now"),
                    f("oldest_close_wait_ms")
                )
            }
            Pathology::ConnectFailures => format!(
                "{} of {} connects failed, mostly {}",
                f("connects_failed"),
                f("connect_attempts"),
                self.evidence
                    .iter()
                    .filter(|(n, _)| n.starts_with("failed_"))
                    .max_by(|a, b| {
                        let count = |f: &Figure| match f {
                            Figure::Count(n) => *n,
                            _ => 0,
                        };
                        count(&a.1).cmp(&count(&b.1))
                    })
                    .map_or("?", |(n, _)| n.trim_start_matches("failed_"))
            ),
        }
    }
}

/// `curl (pid 4242)`, `curl (200 processes)`, `an unidentified process`.
pub fn process_words(key: &GroupKey, who: &Who) -> String {
    if key.is_other() {
        return "one of the groups folded beyond --max-groups".into();
    }
    match (key.comm, who.pid) {
        (Some(comm), _) if who.processes > 1 => format!("{comm} ({} processes)", who.processes),
        (Some(comm), Some(pid)) => format!("{comm} (pid {pid})"),
        (Some(comm), None) => comm.to_string(),
        (None, _) => "an unidentified process".into(),
    }
}

/// `4242/curl`, `curl ×200`, `-`.
pub fn process_short(key: &GroupKey, pid: Option<u32>, processes: u64) -> String {
    if key.is_other() {
        return "(other groups)".into();
    }
    match (key.comm, pid) {
        (Some(comm), _) if processes > 1 => format!("{comm} ×{processes}"),
        (Some(comm), Some(pid)) => format!("{pid}/{comm}"),
        (Some(comm), None) => comm.to_string(),
        (None, _) => "-".into(),
    }
}

/// `addr:port` for a client group; `addr:*` or `*:*` for a server's clients.
pub fn remote_of(key: &GroupKey, client: Option<std::net::IpAddr>) -> String {
    if key.is_other() {
        return "other".into();
    }
    match (key.peer, client) {
        (Some(_), _) => key.endpoint(),
        (None, Some(std::net::IpAddr::V6(a))) => format!("[{a}]:*"),
        (None, Some(a)) => format!("{a}:*"),
        (None, None) => "*:*".into(),
    }
}

pub(super) fn pct(share: f64) -> Figure {
    Figure::Percent((share * 1000.0).round() / 10.0)
}

pub(super) fn ms(v: f64) -> Figure {
    Figure::Ms((v * 10.0).round() / 10.0)
}

/// An RTT to the microsecond (they are tens of µs on a LAN).
pub(super) fn rtt_ms(v: f64) -> Figure {
    Figure::Ms((v * 1000.0).round() / 1000.0)
}

/// An RTT for summaries: `0.041ms`, `12.3ms`.
pub(super) fn rtt_dur(ms: f64) -> String {
    crate::model::human::human_ms(ms)
}

/// `1.95s` / `850ms`, for summaries.
pub(super) fn dur(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2}s", ms / 1000.0)
    } else {
        format!("{ms:.0}ms")
    }
}

/// The far end in words: `10.0.0.2:8080` for a client, `the clients of
/// :8080` (`the clients at 10.0.0.1 of :8080`) for a server.
pub(super) fn far_end(key: &GroupKey, client: Option<std::net::IpAddr>) -> String {
    if key.is_other() {
        return "various endpoints".into();
    }
    match (key.peer, client) {
        (Some(_), _) => key.endpoint(),
        (None, Some(addr)) => format!("the clients at {addr} of {}", key.endpoint()),
        (None, None) => format!("the clients of {}", key.endpoint()),
    }
}
