//! The eight pathologies: rules over a group's recent window and its sockets alive now, each finding naming the process, the endpoint, the evidence and the likely cause.
//!
//! Every threshold is a named constant here and in the README, with the
//! real-software figures it was set from. A rule fires only when all of
//! its thresholds are met, so a quiet or healthy group (steady keep-alive
//! traffic, a keep-alive server timing out idle clients) produces nothing.
//!
//! Signals that depend on a race are avoided: when a server answers
//! `Connection: close`, both sides close at once and who sends the first
//! FIN is luck (Go server and client: the server 78-86% of the time;
//! nginx and curl: 20-57%). What does not race is how the connection was
//! used and how soon after its last exchange it ended, which the kernel
//! side reads from the TCP socket at the first closing act.

use tracer_common::TcpState;

use crate::{
    model::aggregate::{Aggregator, Group, GroupKey, PROMPT_MS, Stats, ratio},
    model::tracker::{ClosedBy, ConnectFailure, Role},
};

/// Fewest closed connections before a closing pattern is judged.
pub const MIN_CLOSED: u64 = 3;
/// client_timeout_stuck_server: FIN_WAIT2 (client) or CLOSE_WAIT (server)
/// median at least this long, on connections mostly closed by the client.
pub const STUCK_LINGER_MS: f64 = 1_000.0;
/// Share of closes that must follow the pattern (client_timeout_stuck_server).
pub const STUCK_SHARE: f64 = 0.5;
/// server_closes: fewest closes, most of them ending right after an
/// exchange, and among them at least this share (and count) where the
/// server's FIN came first. A keep-alive server never closes first right
/// after answering (0 of 200 with nginx and curl); one that closes after
/// every answer wins the race on 21-58% of connections (nginx and curl,
/// ten runs), 77-86% (Go), 87-98% (Python's http.server) between
/// namespaces, and on nearly all over a real network.
pub const SERVER_CLOSES_MIN: u64 = 10;
pub const SERVER_CLOSES_PROMPT_SHARE: f64 = 0.8;
pub const SERVER_FIRST_SHARE: f64 = 0.05;
pub const SERVER_FIRST_MIN: u64 = 5;
/// no_reuse: fewest connections opened and closed, at this rate or more,
/// this share of them used for one exchange and closed right after it (by
/// either side).
pub const NO_REUSE_MIN_OPENED: u64 = 20;
pub const NO_REUSE_MIN_RATE: f64 = 2.0;
pub const NO_REUSE_ONE_EXCHANGE_SHARE: f64 = 0.8;
/// leaked_idle: ESTABLISHED grew by at least this much, and this share of
/// them is idle.
pub const LEAK_MIN_GROWTH: u64 = 10;
pub const LEAK_IDLE_SHARE: f64 = 0.8;
/// unanswered_requests: at least this many connections wait for an
/// answer, and they are this share of the group's ESTABLISHED ones.
pub const UNANSWERED_MIN: u64 = 8;
pub const UNANSWERED_SHARE: f64 = 0.8;
/// deadline_pooled: fewest closes with a known lifetime; share closed by
/// this side (FIN or RST); median lifetime at least this long; this share
/// of lifetimes within `DEADLINE_BAND` of the median (plus 50 ms of
/// scheduling noise: one connection cut short must not hide the pattern);
/// this share closed while in use (data moved in the last half of their
/// life: a deadline, not an idle timeout); and connections reused (at most
/// this share used for one exchange, else it is a slow answer per
/// connection).
pub const DEADLINE_MIN_CLOSED: u64 = 5;
pub const DEADLINE_LOCAL_SHARE: f64 = 0.8;
pub const DEADLINE_MIN_LIFETIME_MS: f64 = 1_000.0;
pub const DEADLINE_BAND: f64 = 0.1;
pub const DEADLINE_CLUSTER_SHARE: f64 = 0.75;
pub const DEADLINE_BUSY_SHARE: f64 = 0.5;
pub const DEADLINE_ONE_EXCHANGE_SHARE: f64 = 0.5;
/// close_wait_leak: at least this many CLOSE_WAIT sockets, the oldest this old.
pub const CLOSE_WAIT_LEAK_MIN: u64 = 3;
pub const CLOSE_WAIT_LEAK_AGE_MS: f64 = 5_000.0;
/// connect_failures: at least this many connect attempts of a client
/// group failed in the window, and they are at least this share of its
/// attempts.
pub const CONNECT_FAIL_MIN: u64 = 5;
pub const CONNECT_FAIL_SHARE: f64 = 0.5;
/// The network may explain a wait when at least this share of the
/// connections judged retransmitted a segment, or when their RTT p99 is at
/// least this fraction of the wait (an exchange takes a few round trips).
/// On loopback and between namespaces here no connection retransmits and
/// the RTT is 10-100 µs; with 10% of packets dropped on a veth, 1 MiB
/// transfers retransmit on every connection.
pub const NET_RETRANS_SHARE: f64 = 0.1;
pub const NET_RTT_SHARE_OF_WAIT: f64 = 0.1;
/// Share of closes that must carry the TCP figures before a rule built on
/// them judges (they are missing when the kernel's layout could not be read).
const FIGURES_SHARE: f64 = 0.8;

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
const PIDS_SHOWN: usize = 16;

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
    fn with_note(mut self, note: &str) -> Self {
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

fn pct(share: f64) -> Figure {
    Figure::Percent((share * 1000.0).round() / 10.0)
}

fn ms(v: f64) -> Figure {
    Figure::Ms((v * 10.0).round() / 10.0)
}

/// An RTT to the microsecond (they are tens of µs on a LAN).
fn rtt_ms(v: f64) -> Figure {
    Figure::Ms((v * 1000.0).round() / 1000.0)
}

/// An RTT for summaries: `0.041ms`, `12.3ms`.
fn rtt_dur(ms: f64) -> String {
    crate::model::human::human_ms(ms)
}

/// `1.95s` / `850ms`, for summaries.
fn dur(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2}s", ms / 1000.0)
    } else {
        format!("{ms:.0}ms")
    }
}

/// The far end in words: `10.0.0.2:8080` for a client, `the clients of
/// :8080` (`the clients at 10.0.0.1 of :8080`) for a server.
fn far_end(key: &GroupKey, client: Option<std::net::IpAddr>) -> String {
    if key.is_other() {
        return "various endpoints".into();
    }
    match (key.peer, client) {
        (Some(_), _) => key.endpoint(),
        (None, Some(addr)) => format!("the clients at {addr} of {}", key.endpoint()),
        (None, None) => format!("the clients of {}", key.endpoint()),
    }
}

/// What a rule looks at.
struct Case<'a> {
    key: &'a GroupKey,
    group: &'a Group,
    /// The window's closes.
    stats: &'a Stats,
    /// How long the window covers, in seconds.
    span_s: f64,
    /// How long of it the group has been opening connections, in seconds.
    opening_s: f64,
    /// The window starts here (boot ns): growth is measured from it.
    since_ns: u64,
}

impl Case<'_> {
    fn who(&self, pid: Option<u32>) -> Who {
        let pids: Vec<u32> = self
            .group
            .procs
            .pids()
            .into_iter()
            .take(PIDS_SHOWN)
            .collect();
        Who {
            pid: pid.or_else(|| self.group.procs.main()),
            processes: self.group.procs.count().max(u64::from(pid.is_some())),
            pids,
            pod: None,
        }
    }

    fn finding(
        &self,
        pathology: Pathology,
        pid: Option<u32>,
        evidence: Vec<(&'static str, Figure)>,
        summary: impl FnOnce(&str, &str) -> String,
    ) -> Finding {
        let who = self.who(pid);
        let client = self.group.peers.single();
        let summary = summary(&process_words(self.key, &who), &far_end(self.key, client));
        Finding {
            pathology,
            key: *self.key,
            who,
            client,
            evidence: evidence
                .into_iter()
                .map(|(name, figure)| (name.into(), figure))
                .collect(),
            summary,
            window_s: (self.span_s * 10.0).round() / 10.0,
        }
    }

    /// The closes carried the TCP figures the rule needs.
    fn has_figures(&self) -> bool {
        self.stats.closed > 0 && ratio(self.stats.with_figures, self.stats.closed) >= FIGURES_SHARE
    }
}

type Rule = fn(&Case) -> Option<Finding>;

/// The rules judged on closes, over a window.
const CLOSING_RULES: [Rule; 5] = [
    client_timeout_stuck_server,
    server_closes,
    no_reuse,
    deadline_pooled,
    connect_failures,
];
/// The rules judged on the sockets alive now.
const LIVE_RULES: [Rule; 3] = [leaked_idle, unanswered_requests, close_wait_leak];

/// Every rule over every group, the closing patterns judged on each window
/// of `spans_ns` (longest first; a finding is kept from the first window
/// it fires on) up to `now_ns`, the live ones on the sockets alive now
/// with growth counted over the longest window. Most urgent first.
pub fn diagnose(agg: &Aggregator, spans_ns: &[u64], now_ns: u64) -> Vec<Finding> {
    let mut findings = Vec::new();
    let longest = spans_ns.iter().copied().max().unwrap_or(u64::MAX);
    // What was folded beyond the cap is judged too, so it cannot hide a
    // pathology (the finding then says it is among the folded groups).
    let groups = agg
        .groups()
        .chain((agg.folded() > 0).then_some((&GroupKey::OTHER, agg.other())));
    for (key, group) in groups {
        let mut fired: Vec<Pathology> = Vec::new();
        for &span in spans_ns {
            let stats = agg.window(group, span, now_ns);
            let case = Case {
                key,
                group,
                stats: &stats,
                span_s: agg.span_s(span, now_ns),
                opening_s: agg.opening_span_s(group, span, now_ns),
                since_ns: now_ns.saturating_sub(span),
            };
            for rule in CLOSING_RULES {
                if let Some(f) = rule(&case)
                    && !fired.contains(&f.pathology)
                {
                    fired.push(f.pathology);
                    findings.push(f);
                }
            }
        }
        let stats = Stats::default();
        let case = Case {
            key,
            group,
            stats: &stats,
            span_s: agg.span_s(longest, now_ns),
            opening_s: agg.span_s(longest, now_ns),
            since_ns: now_ns.saturating_sub(longest),
        };
        findings.extend(LIVE_RULES.iter().filter_map(|rule| rule(&case)));
    }
    sort(&mut findings);
    findings
}

/// Most urgent first, then the biggest, then by name: a stable order.
pub fn sort(findings: &mut [Finding]) {
    findings.sort_by(order);
}

/// Most urgent first: by severity, then the larger main figure.
pub fn order(a: &Finding, b: &Finding) -> std::cmp::Ordering {
    a.severity()
        .cmp(&b.severity())
        .then(b.magnitude().total_cmp(&a.magnitude()))
        .then(a.pathology.cmp(&b.pathology))
        .then(a.key.comm_name().cmp(&b.key.comm_name()))
        .then(a.key.endpoint().cmp(&b.key.endpoint()))
        .then(a.key.cmp(&b.key))
}

/// Closes first, then lingers in FIN_WAIT2 (client) / CLOSE_WAIT (server) for seconds.
fn client_timeout_stuck_server(c: &Case) -> Option<Finding> {
    let s = c.stats;
    if s.closed < MIN_CLOSED {
        return None;
    }
    let (side, dist) = match c.key.role {
        Role::Client => (ClosedBy::Local, &s.fin_wait2),
        Role::Server => (ClosedBy::Remote, &s.close_wait),
        Role::Unknown => return None,
    };
    let share = s.share(&[side]);
    let p50 = dist.quantile_ms(0.5)?;
    if share < STUCK_SHARE || p50 < STUCK_LINGER_MS {
        return None;
    }
    let p99 = dist.quantile_ms(0.99).unwrap_or(p50);
    let client = c.key.role == Role::Client;
    let mut evidence = vec![
        ("closed", Figure::Count(s.closed)),
        (
            if client {
                "closed_by_local_pct"
            } else {
                "closed_by_remote_pct"
            },
            pct(share),
        ),
        (
            if client {
                "fin_wait2_p50_ms"
            } else {
                "close_wait_p50_ms"
            },
            ms(p50),
        ),
        (
            if client {
                "fin_wait2_p99_ms"
            } else {
                "close_wait_p99_ms"
            },
            ms(p99),
        ),
    ];
    // The wait the network would have to explain: the client's, until it
    // gave up (the lifetime), or the linger itself.
    let wait = s.lifetime.quantile_ms(0.5).unwrap_or(p50).max(p50);
    let network = network_closes(s, wait, &mut evidence);
    let finding = c.finding(Pathology::ClientTimeoutStuckServer, None, evidence, |who, far| {
        if client {
            format!(
                "{who} gives up and closes first, then waits {} (p50) in FIN_WAIT2 for {far} to close: a client timeout racing a stuck server handler; check the server's handler latency against the client's timeout.",
                dur(p50)
            )
        } else {
            let far = far_end_capitalized(far);
            format!(
                "{far} close first and {who} keeps their sockets in CLOSE_WAIT for {} (p50): its handler is stuck past the clients' timeout; check what the handler waits on (locks, downstream calls, pool limits).",
                dur(p50)
            )
        }
    });
    Some(finding.with_note(&network))
}

fn far_end_capitalized(far: &str) -> String {
    let mut chars = far.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// The server ends its connections right after answering: most closes come
/// within [`PROMPT_MS`] of its last exchange, and on a fair share of them
/// its FIN came first (on the rest the client won the race to close).
fn server_closes(c: &Case) -> Option<Finding> {
    let s = c.stats;
    if c.key.role != Role::Server || s.closed < SERVER_CLOSES_MIN || !c.has_figures() {
        return None;
    }
    let prompt_share = ratio(s.prompt(), s.with_figures);
    let first_here = s.prompt_by(ClosedBy::Local) + s.prompt_by(ClosedBy::Simultaneous);
    let first_share = ratio(first_here, s.with_figures);
    if prompt_share < SERVER_CLOSES_PROMPT_SHARE
        || first_share < SERVER_FIRST_SHARE
        || first_here < SERVER_FIRST_MIN
    {
        return None;
    }
    let time_wait = c.group.now.count(TcpState::TimeWait);
    let mut evidence = vec![
        ("closed", Figure::Count(s.closed)),
        ("prompt_close_pct", pct(prompt_share)),
        ("closed_by_local_pct", pct(first_share)),
        (
            "one_exchange_pct",
            pct(ratio(s.one_exchange, s.with_figures)),
        ),
        ("time_wait_now", Figure::Count(time_wait)),
    ];
    if let Some(p50) = s.lifetime.quantile_ms(0.5) {
        evidence.push(("lifetime_p50_ms", ms(p50)));
    }
    Some(c.finding(Pathology::ServerCloses, None, evidence, |who, far| {
        format!(
            "{who} ends {:.0}% of its connections with {far} right after answering (within {PROMPT_MS}ms), and its FIN comes first on {:.0}% (the clients close at once on the rest): keep-alive is off or it answers Connection: close (set by it, or asked for by its clients); TIME_WAIT piles up here, {time_wait} now.",
            prompt_share * 100.0,
            first_share * 100.0,
        )
    }))
}

/// Many connections to one endpoint, each used for one exchange and closed
/// right after it, whoever closed.
fn no_reuse(c: &Case) -> Option<Finding> {
    let s = c.stats;
    if c.key.role != Role::Client
        || s.opened < NO_REUSE_MIN_OPENED
        || s.closed < NO_REUSE_MIN_OPENED
        || !c.has_figures()
    {
        return None;
    }
    let rate = s.opened as f64 / c.opening_s.max(1.0);
    let once = ratio(s.one_exchange, s.with_figures);
    if rate < NO_REUSE_MIN_RATE || once < NO_REUSE_ONE_EXCHANGE_SHARE {
        return None;
    }
    let server_first = s.share(&[ClosedBy::Remote]);
    let mut evidence = vec![
        ("opened", Figure::Count(s.opened)),
        (
            "opened_per_s",
            Figure::PerSecond((rate * 10.0).round() / 10.0),
        ),
        ("one_exchange_pct", pct(once)),
        ("closed_by_remote_pct", pct(server_first)),
        (
            "time_wait_now",
            Figure::Count(c.group.now.count(TcpState::TimeWait)),
        ),
    ];
    if let Some(p50) = s.lifetime.quantile_ms(0.5) {
        evidence.push(("lifetime_p50_ms", ms(p50)));
    }
    Some(c.finding(Pathology::NoReuse, None, evidence, |who, far| {
        let why = if server_first >= 0.5 {
            format!(
                "the server closed {:.0}% of them first: it answers Connection: close or has keep-alive off, unless this client asks for that; check both sides' keep-alive settings",
                server_first * 100.0
            )
        } else {
            "reuse connections (HTTP keep-alive, one shared client or pool per process; a process per request cannot)".into()
        };
        format!(
            "{who} opens a new connection to {far} for each request ({rate:.1}/s, {:.0}% used for one exchange and closed right after), churning TIME_WAIT: {why}.",
            once * 100.0
        )
    }))
}

/// Lifetimes cluster at one value and end by this side's close or reset
/// while in use, while the peer answers the close promptly.
fn deadline_pooled(c: &Case) -> Option<Finding> {
    let s = c.stats;
    if c.key.role == Role::Server || s.timed < DEADLINE_MIN_CLOSED || !c.has_figures() {
        return None;
    }
    let share = s.share(&[ClosedBy::Local, ClosedBy::ResetLocal]);
    let p50 = s.lifetime.quantile_ms(0.5)?;
    let band = p50 * DEADLINE_BAND + 50.0;
    let clustered = s.lifetime.share_within_ms(p50 - band, p50 + band);
    let busy = ratio(s.busy, s.timed.min(s.with_figures));
    let once = ratio(s.one_exchange, s.with_figures);
    // A peer that keeps FIN_WAIT2 long is the stuck-server pattern instead.
    let prompt_peer = s
        .fin_wait2
        .quantile_ms(0.5)
        .is_none_or(|fw2| fw2 < STUCK_LINGER_MS);
    if share < DEADLINE_LOCAL_SHARE
        || p50 < DEADLINE_MIN_LIFETIME_MS
        || clustered < DEADLINE_CLUSTER_SHARE
        || busy < DEADLINE_BUSY_SHARE
        || once > DEADLINE_ONE_EXCHANGE_SHARE
        || !prompt_peer
    {
        return None;
    }
    let (p10, p90) = (s.lifetime.quantile_ms(0.1)?, s.lifetime.quantile_ms(0.9)?);
    let mut evidence = vec![
        ("closed", Figure::Count(s.timed)),
        ("closed_by_local_pct", pct(share)),
        ("lifetime_p10_ms", ms(p10)),
        ("lifetime_p50_ms", ms(p50)),
        ("lifetime_p90_ms", ms(p90)),
        ("clustered_pct", pct(clustered)),
        ("band_ms", ms(band)),
        ("closed_in_use_pct", pct(busy)),
    ];
    let network = network_closes(s, p50, &mut evidence);
    let finding = c.finding(Pathology::DeadlinePooled, None, evidence, |who, far| {
        format!(
            "{who} closes its connections to {far} {} after they open ({:.0}% within ±{}), while they are in use: a fixed deadline or maximum connection age on pooled connections (requests in flight fail, or are retried); check deadlines set once per connection, client timeouts and pool max-lifetime settings.",
            dur(p50),
            clustered * 100.0,
            dur(band)
        )
    });
    Some(finding.with_note(&network))
}

/// ESTABLISHED keeps growing, and nearly all of it is idle. Judged on the
/// side that opens the connections: a server holding them is the victim.
fn leaked_idle(c: &Case) -> Option<Finding> {
    if c.key.role == Role::Server {
        return None;
    }
    let now = &c.group.now;
    let (first, established) = c.group.established_growth(c.since_ns);
    let growth = established.saturating_sub(first);
    if growth < LEAK_MIN_GROWTH || established == 0 {
        return None;
    }
    let share = ratio(now.idle, established);
    if share < LEAK_IDLE_SHARE {
        return None;
    }
    let evidence = vec![
        ("established_first", Figure::Count(first)),
        ("established_now", Figure::Count(established)),
        ("idle_now", Figure::Count(now.idle)),
        ("idle_pct", pct(share)),
    ];
    Some(c.finding(
        Pathology::LeakedIdle,
        now.main_pid(|p| p.established),
        evidence,
        |who, far| {
            format!(
                "{who} holds {established} connections to {far} (up from {first}), {:.0}% of them idle: connections are opened and never closed, e.g. a client/transport or pool created per request; reuse one and close what it opens.",
                share * 100.0
            )
        },
    ))
}

/// Requests sent, nothing back, and they fill the pool (client side).
fn unanswered_requests(c: &Case) -> Option<Finding> {
    if c.key.role == Role::Server {
        return None;
    }
    let now = &c.group.now;
    let established = now.count(TcpState::Established);
    if now.awaiting < UNANSWERED_MIN || established == 0 {
        return None;
    }
    let share = ratio(now.awaiting, established);
    if share < UNANSWERED_SHARE {
        return None;
    }
    let oldest = now.oldest_awaiting_ns as f64 / 1e6;
    let awaiting = now.awaiting;
    let mut evidence = vec![
        ("awaiting_reply", Figure::Count(awaiting)),
        ("established_now", Figure::Count(established)),
        ("awaiting_pct", pct(share)),
        ("oldest_wait_ms", ms(oldest)),
    ];
    let network = network_awaiting(now, &mut evidence);
    let finding = c.finding(
        Pathology::UnansweredRequests,
        now.main_pid(|p| p.awaiting),
        evidence,
        |who, far| {
            format!(
                "{who} has {awaiting} connections to {far} whose last act was sending a request, unanswered for up to {}: the peer does not answer and the pool fills up (a pool limit may be reached); check the peer's health and set a request timeout.",
                dur(oldest)
            )
        },
    );
    Some(finding.with_note(&network))
}

/// Sockets the peer closed that the application never closes.
fn close_wait_leak(c: &Case) -> Option<Finding> {
    let now = &c.group.now;
    let count = now.count(TcpState::CloseWait);
    let oldest = now.oldest_close_wait_ns as f64 / 1e6;
    if count < CLOSE_WAIT_LEAK_MIN || oldest < CLOSE_WAIT_LEAK_AGE_MS {
        return None;
    }
    let evidence = vec![
        ("close_wait_now", Figure::Count(count)),
        ("oldest_close_wait_ms", ms(oldest)),
    ];
    Some(c.finding(
        Pathology::CloseWaitLeak,
        now.main_pid(|p| p.close_wait),
        evidence,
        |who, far| {
            format!(
                "{who} has {count} sockets with {far} in CLOSE_WAIT, the oldest for {}: the peer closed them and the application never does, a socket leak; check the error paths that return without close().",
                dur(oldest)
            )
        },
    ))
}

/// A client's connect attempts keep failing: refused, timed out,
/// unreachable, or given up by the process itself.
fn connect_failures(c: &Case) -> Option<Finding> {
    let s = c.stats;
    let failed = s.connects_failed();
    if c.key.role != Role::Client || failed < CONNECT_FAIL_MIN {
        return None;
    }
    // Attempts: the openings counted in the window (an attempt's opening
    // and its failure may fall in different windows).
    let attempts = s.opened.max(failed);
    let share = ratio(failed, attempts);
    if share < CONNECT_FAIL_SHARE {
        return None;
    }
    let mut evidence = vec![
        ("connect_attempts", Figure::Count(attempts)),
        ("connects_failed", Figure::Count(failed)),
        ("failed_pct", pct(share)),
    ];
    for reason in ConnectFailure::ALL {
        let n = s.connect_failed(reason);
        if n > 0 {
            evidence.push((failed_name(reason), Figure::Count(n)));
        }
    }
    if s.failed_syn_retrans > 0 {
        evidence.push(("syn_retransmits", Figure::Count(s.failed_syn_retrans)));
    }
    let main = ConnectFailure::ALL
        .into_iter()
        .max_by_key(|&r| (s.connect_failed(r), std::cmp::Reverse(r)))
        .unwrap_or(ConnectFailure::Other);
    let syns = s.failed_syn_retrans;
    Some(c.finding(Pathology::ConnectFailures, None, evidence, |who, far| {
        let why = match main {
            ConnectFailure::Refused => format!(
                "{far} answers its SYNs with a RST: nothing listens on that port (the service is down, restarting, or the address or port is wrong) or a firewall rejects"
            ),
            ConnectFailure::Timeout => format!(
                "its SYNs to {far} go unanswered until the kernel gives up ({syns} SYN retransmissions in all): a firewall drops them, or the host is down or unreachable"
            ),
            ConnectFailure::Unreachable => format!(
                "ICMP errors say {far} cannot be reached: check routes, the address and firewalls on the way"
            ),
            ConnectFailure::Abandoned if syns > 0 => format!(
                "it gives up before the handshake with {far} completes (its own connect timeout, shorter than the kernel's), after {syns} SYN retransmissions in all: the SYNs or their answers are lost on the way (a firewall dropping them, a host down), or the peer's accept backlog is full"
            ),
            ConnectFailure::Abandoned => format!(
                "it gives up before the handshake with {far} completes (its own connect timeout, shorter than the kernel's first SYN retry): the timeout is shorter than the round trip, or the peer is slow to answer SYNs"
            ),
            ConnectFailure::Other => {
                "the kernel ended them with errors other than refused or timed out (see the records' error), or the reason could not be read".into()
            }
        };
        format!(
            "{who} fails to connect to {far}: {failed} of {attempts} attempts ({:.0}%), mostly {}: {why}.",
            share * 100.0,
            main.name()
        )
    }))
}

/// The evidence name of a count of failed connects.
const fn failed_name(reason: ConnectFailure) -> &'static str {
    match reason {
        ConnectFailure::Refused => "failed_refused",
        ConnectFailure::Timeout => "failed_timeout",
        ConnectFailure::Unreachable => "failed_unreachable",
        ConnectFailure::Abandoned => "failed_abandoned",
        ConnectFailure::Other => "failed_other",
    }
}

/// Whether the network can explain a wait of `wait_ms` over the closes of
/// `s`: their RTT and retransmissions as evidence, and a sentence saying
/// so (empty when no close carried the figures).
fn network_closes(s: &Stats, wait_ms: f64, evidence: &mut Vec<(&'static str, Figure)>) -> String {
    if s.with_net == 0 {
        return String::new();
    }
    let (p50, p99) = (s.rtt.quantile_ms(0.5), s.rtt.quantile_ms(0.99));
    if let (Some(p50), Some(p99)) = (p50, p99) {
        evidence.push(("rtt_p50_ms", rtt_ms(p50)));
        evidence.push(("rtt_p99_ms", rtt_ms(p99)));
    }
    evidence.push(("retrans_pct", pct(s.retrans_share())));
    evidence.push(("retrans_segments", Figure::Count(s.retrans_segs)));
    let rtt = p50.map_or_else(
        || "no RTT sample".into(),
        |p| format!("RTT p50 {}", rtt_dur(p)),
    );
    let retransmitted = format!(
        "{} of {} connections retransmitted",
        s.retrans_conns, s.with_net
    );
    let slow = p99.is_some_and(|p| p >= wait_ms * NET_RTT_SHARE_OF_WAIT);
    if s.retrans_share() >= NET_RETRANS_SHARE || slow {
        format!(
            " The network may explain part of the wait: {retransmitted} ({} segments), {rtt}, p99 {}; check the path for loss or delay before the application.",
            s.retrans_segs,
            p99.map_or_else(|| "-".into(), rtt_dur)
        )
    } else {
        format!(" Not the network: {rtt}, {retransmitted}: the wait is in the application.")
    }
}

/// As [`network_closes`], for requests awaiting an answer now: whether
/// the peer's TCP acknowledged them.
fn network_awaiting(
    now: &crate::model::aggregate::Now,
    evidence: &mut Vec<(&'static str, Figure)>,
) -> String {
    if now.awaiting_with_net == 0 {
        return String::new();
    }
    evidence.push(("unacked_requests", Figure::Count(now.awaiting_unacked)));
    evidence.push(("retrans_segments", Figure::Count(now.awaiting_retrans)));
    let rtt = now.awaiting_rtt.quantile_ms(0.5);
    if let Some(p50) = rtt {
        evidence.push(("rtt_p50_ms", rtt_ms(p50)));
    }
    let rtt = rtt.map_or_else(
        || "no RTT sample".into(),
        |p| format!("RTT p50 {}", rtt_dur(p)),
    );
    if now.awaiting_unacked == 0 && now.awaiting_retrans == 0 {
        format!(
            " Not the network: the peer's TCP acknowledged every request ({rtt}, no retransmission): its application does not answer."
        )
    } else {
        format!(
            " The network may be involved: {} of {} requests not yet acknowledged by the peer's TCP, {} retransmissions, {rtt}; check the path and the peer's host.",
            now.awaiting_unacked, now.awaiting_with_net, now.awaiting_retrans
        )
    }
}

#[cfg(test)]
mod tests;
