//! `report` output: findings first, then the busiest groups, as text, JSON or Markdown.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    io::{self, Write},
};

use serde::{Serialize, Serializer};
use tracer_common::TcpState;

use crate::model::human::human_ms;
use crate::{
    model::aggregate::{Aggregator, Group, GroupKey, Stats},
    model::diagnose::{Figure, Finding, process_short, remote_of},
    model::dist::Dist,
    model::event::PodName,
    model::tracker::{ClosedBy, ConnectFailure, Role},
};

/// States shown as current counts, in this order.
pub const SHOWN_STATES: [TcpState; 9] = [
    TcpState::SynSent,
    TcpState::Established,
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::Closing,
    TcpState::CloseWait,
    TcpState::LastAck,
    TcpState::TimeWait,
    TcpState::SynRecv,
];

const CLOSERS: [ClosedBy; 6] = [
    ClosedBy::Local,
    ClosedBy::Remote,
    ClosedBy::Simultaneous,
    ClosedBy::ResetLocal,
    ClosedBy::ResetRemote,
    ClosedBy::Unknown,
];

impl Serialize for Figure {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Figure::Count(n) => s.serialize_u64(*n),
            Figure::Ms(v) | Figure::Percent(v) | Figure::PerSecond(v) => s.serialize_f64(*v),
            Figure::Fds(fds) => fds.serialize(s),
        }
    }
}

/// An evidence name for text, where the value carries its unit: the JSON
/// name's unit suffix (`_ms`, `_pct`) would contradict it. A rate is
/// `_rate` (`opened_per_s` beside `opened` would read as the same figure
/// twice).
pub fn text_name(name: &str) -> std::borrow::Cow<'_, str> {
    if let Some(stem) = name.strip_suffix("_per_s") {
        return format!("{stem}_rate").into();
    }
    ["_ms", "_pct"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
        .into()
}

/// `name=value, ...` for text.
pub fn evidence_text(f: &Finding) -> String {
    f.evidence
        .iter()
        .map(|(n, v)| format!("{}={}", text_name(n), v.show()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `1 finding`, `2 findings`.
pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// A finding as JSON (`report` and the daemon's log share it).
#[derive(Serialize)]
pub struct JsonFinding<'a> {
    pathology: &'static str,
    severity: &'static str,
    /// The process holding most of what the finding counts.
    pid: Option<u32>,
    comm: Option<String>,
    /// How many processes of that name the group has seen, and some pids.
    processes: u64,
    pids: &'a [u32],
    role: &'static str,
    /// The one way an endpoint is written: `addr:port` a client talks to,
    /// `:port` a server listens on.
    endpoint: String,
    /// `addr:port` for a client; a server's clients (`addr:*`, `*:*`).
    remote: String,
    /// A server's own (listening) port.
    #[serde(skip_serializing_if = "Option::is_none")]
    local_port: Option<u16>,
    /// Seconds of traffic the finding was judged on.
    window_s: f64,
    evidence: BTreeMap<&'a str, &'a Figure>,
    summary: &'a str,
    /// The Kubernetes pod of `pid`, when the node names it.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    kube: Option<JsonPod<'a>>,
}

/// `namespace`, `pod` and `container` fields.
#[derive(Serialize)]
pub struct JsonPod<'a> {
    namespace: &'a str,
    pod: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<&'a str>,
}

impl<'a> JsonPod<'a> {
    pub fn of(p: &'a PodName) -> Self {
        Self {
            namespace: &p.namespace,
            pod: &p.pod,
            container: p.container.as_deref(),
        }
    }
}

pub fn json_finding(f: &Finding) -> JsonFinding<'_> {
    JsonFinding {
        pathology: f.pathology.id(),
        severity: f.severity().name(),
        pid: f.who.pid,
        comm: f.key.comm.map(|c| c.to_string()),
        processes: f.who.processes,
        pids: &f.who.pids,
        role: f.key.role.name(),
        endpoint: f.key.endpoint(),
        remote: f.remote(),
        local_port: (f.key.role == Role::Server).then_some(f.key.port),
        window_s: f.window_s,
        evidence: f.evidence.iter().map(|(n, v)| (n.as_ref(), v)).collect(),
        summary: &f.summary,
        kube: f.who.pod.as_ref().map(JsonPod::of),
    }
}

/// Percentiles of one distribution, in ms.
#[derive(Serialize)]
struct Percentiles {
    count: u64,
    p50: f64,
    p90: f64,
    p99: f64,
}

fn percentiles(d: &Dist) -> Option<Percentiles> {
    let round = |v: f64| (v * 1000.0).round() / 1000.0;
    Some(Percentiles {
        count: d.count(),
        p50: round(d.quantile_ms(0.5)?),
        p90: round(d.quantile_ms(0.9)?),
        p99: round(d.quantile_ms(0.99)?),
    })
}

#[derive(Serialize)]
struct JsonGroup<'a> {
    /// The busiest process.
    pid: Option<u32>,
    /// Its Kubernetes pod, when the node names it.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    kube: Option<JsonPod<'a>>,
    comm: Option<String>,
    processes: u64,
    pids: Vec<u32>,
    role: &'static str,
    endpoint: String,
    remote: String,
    /// The server's own port, for server groups.
    #[serde(skip_serializing_if = "Option::is_none")]
    local_port: Option<u16>,
    opened: u64,
    closed: u64,
    closed_by: BTreeMap<&'static str, u64>,
    time_wait_closes: u64,
    /// Closes that owed a TIME_WAIT and got none (the table was full).
    #[serde(skip_serializing_if = "is_zero")]
    time_wait_refused: u64,
    incomplete: u64,
    now: BTreeMap<&'static str, u64>,
    idle: u64,
    awaiting_reply: u64,
    /// Silence of the ESTABLISHED sockets now (since their last send/receive).
    established_idle_ms: Option<Percentiles>,
    oldest_close_wait_ms: Option<f64>,
    lifetime_ms: Option<Percentiles>,
    fin_wait2_ms: Option<Percentiles>,
    close_wait_ms: Option<Percentiles>,
    last_ack_ms: Option<Percentiles>,
    time_wait_ms: Option<Percentiles>,
    /// Connect attempts that never completed, by reason (not in `closed`).
    failed_connects: BTreeMap<&'static str, u64>,
    /// What the closed connections' sockets said of the network at their
    /// end; absent when none carried the figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    net: Option<JsonGroupNet>,
}

/// A group's network figures over the window.
#[derive(Serialize)]
struct JsonGroupNet {
    /// Closes that carried them.
    connections: u64,
    /// Smoothed RTT of each connection at its end.
    rtt_ms: Option<Percentiles>,
    /// Connections that retransmitted, their share, and segments in all.
    retrans_connections: u64,
    retrans_pct: f64,
    retrans_segments: u64,
    /// Mean bytes per connection, each way.
    bytes_acked_per_connection: u64,
    bytes_received_per_connection: u64,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "the signature serde's skip_serializing_if calls"
)]
const fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn json_group_net(s: &Stats) -> Option<JsonGroupNet> {
    (s.with_net > 0).then(|| JsonGroupNet {
        connections: s.with_net,
        rtt_ms: percentiles(&s.rtt),
        retrans_connections: s.retrans_conns,
        retrans_pct: (s.retrans_share() * 1000.0).round() / 10.0,
        retrans_segments: s.retrans_segs,
        bytes_acked_per_connection: s.bytes_acked / s.with_net,
        bytes_received_per_connection: s.bytes_received / s.with_net,
    })
}

fn json_group<'a>(v: &GroupView, pods: &'a HashMap<GroupKey, PodName>) -> JsonGroup<'a> {
    let (key, g, s) = (v.key, v.group, &v.stats);
    let other = key.is_other();
    JsonGroup {
        pid: g.procs.main(),
        kube: pods.get(key).map(JsonPod::of),
        comm: key.comm.map(|c| c.to_string()),
        processes: g.procs.count(),
        pids: g.procs.pids().into_iter().take(16).collect(),
        role: if other { "other" } else { key.role.name() },
        endpoint: if other {
            "other".into()
        } else {
            key.endpoint()
        },
        remote: remote_of(key, g.peers.single()),
        local_port: (key.role == Role::Server).then_some(key.port),
        opened: s.opened,
        closed: s.closed,
        closed_by: CLOSERS
            .iter()
            .filter(|&&b| s.closed_by(b) > 0)
            .map(|&b| (b.name(), s.closed_by(b)))
            .collect(),
        time_wait_closes: s.time_wait_closes,
        time_wait_refused: s.time_wait_refused,
        incomplete: s.incomplete,
        now: SHOWN_STATES
            .iter()
            .filter(|&&st| g.now.count(st) > 0)
            .map(|&st| (st.name(), g.now.count(st)))
            .collect(),
        idle: g.now.idle,
        awaiting_reply: g.now.awaiting,
        established_idle_ms: percentiles(&g.now.idle_time),
        oldest_close_wait_ms: (g.now.oldest_close_wait_ns > 0)
            .then(|| (g.now.oldest_close_wait_ns as f64 / 1e3).round() / 1e3),
        lifetime_ms: percentiles(&s.lifetime),
        fin_wait2_ms: percentiles(&s.fin_wait2),
        close_wait_ms: percentiles(&s.close_wait),
        last_ack_ms: percentiles(&s.last_ack),
        time_wait_ms: percentiles(&s.time_wait),
        failed_connects: ConnectFailure::ALL
            .iter()
            .filter(|&&r| s.connect_failed(r) > 0)
            .map(|&r| (r.name(), s.connect_failed(r)))
            .collect(),
        net: json_group_net(s),
    }
}

/// One group and what it saw over the report's window.
pub struct GroupView<'a> {
    pub key: &'a GroupKey,
    pub group: &'a Group,
    pub stats: Stats,
}

impl GroupView<'_> {
    fn lingering(&self) -> u64 {
        self.group.lingering()
    }
}

/// Everything a report shows.
pub struct Report<'a> {
    pub window_s: f64,
    pub events: u64,
    pub dropped: u64,
    pub findings: &'a [Finding],
    /// Sorted, most interesting first.
    pub groups: Vec<GroupView<'a>>,
    pub other: GroupView<'a>,
    pub folded: u64,
    /// Groups shown in text and Markdown.
    pub top: usize,
    /// The Kubernetes pod of each group's busiest process, where known.
    pub pods: HashMap<GroupKey, PodName>,
}

/// Every group over its whole run, most interesting first: groups with
/// findings, then by sockets lingering now, then by activity.
pub fn rank<'a>(agg: &'a Aggregator, findings: &[Finding]) -> Vec<GroupView<'a>> {
    let mut v: Vec<GroupView<'a>> = agg
        .groups()
        .map(|(key, group)| GroupView {
            key,
            group,
            stats: group.total(),
        })
        .collect();
    // Groups come out of a hash map: the key breaks ties, so the same
    // input ranks the same way every run.
    v.sort_by_key(|g| {
        let flagged = findings.iter().any(|f| f.key == *g.key);
        (
            std::cmp::Reverse((
                flagged,
                g.lingering(),
                g.stats.opened + g.stats.closed,
                g.group.now.count(TcpState::Established),
            )),
            *g.key,
        )
    });
    v
}

/// The folded groups, as one.
pub fn other(agg: &Aggregator) -> GroupView<'_> {
    GroupView {
        key: &GroupKey::OTHER,
        group: agg.other(),
        stats: agg.other().total(),
    }
}

/// A distribution as bars, one per band of [`super::EDGES_MS`]
/// (labelled by [`super::EDGE_LABELS`]), scaled to the fullest:
/// `[▁▁▇█   ]`.
pub fn bars(d: &Dist) -> String {
    const LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let counts = d.counts_between(&super::EDGES_MS);
    let max = counts.iter().copied().max().unwrap_or(0).max(1);
    let bars: String = counts
        .iter()
        .map(|&n| {
            if n == 0 {
                ' '
            } else {
                #[expect(
                    clippy::cast_possible_truncation,
                    reason = "n <= max: an index of 0..=7"
                )]
                let level = ((n * 7).div_ceil(max)) as usize;
                LEVELS[level.min(7)]
            }
        })
        .collect();
    format!("[{bars}]")
}

/// A distribution as one line of bars: `[▁▁▇█   ]  41 closes; bands …`.
fn spark(d: &Dist) -> String {
    format!(
        "{}  {}; bands {}",
        bars(d),
        plural(usize::try_from(d.count()).unwrap_or(usize::MAX), "close"),
        super::EDGE_LABELS.join(" ")
    )
}

fn pct(s: &Stats, by: &[ClosedBy]) -> String {
    if s.closed == 0 {
        "-".into()
    } else {
        format!("{:.0}%", s.share(by) * 100.0)
    }
}

fn p50(d: &Dist) -> String {
    d.quantile_ms(0.5).map_or("-".into(), human_ms)
}

fn p50_p99(d: &Dist) -> String {
    match (d.quantile_ms(0.5), d.quantile_ms(0.99)) {
        (Some(a), Some(b)) => format!("{}/{}", human_ms(a), human_ms(b)),
        _ => "-".into(),
    }
}

/// Share of closes with figures that retransmitted, `-` without figures.
fn retrans(s: &Stats) -> String {
    if s.with_net == 0 {
        "-".into()
    } else {
        format!("{:.0}%", s.retrans_share() * 100.0)
    }
}

/// The cells of one group row, shared by text and Markdown.
fn row(v: &GroupView) -> [String; COLUMNS] {
    let (key, g, s) = (v.key, v.group, &v.stats);
    [
        process_short(key, g.procs.main(), g.procs.count()),
        if key.is_other() { "-" } else { key.role.name() }.to_string(),
        if key.is_other() {
            "-".into()
        } else {
            key.endpoint()
        },
        s.opened.to_string(),
        s.closed.to_string(),
        format!(
            "{}/{}/{}",
            pct(s, &[ClosedBy::Local]),
            pct(s, &[ClosedBy::Remote]),
            pct(s, &[ClosedBy::ResetLocal, ClosedBy::ResetRemote])
        ),
        g.now.count(TcpState::Established).to_string(),
        g.now.count(TcpState::CloseWait).to_string(),
        g.now.count(TcpState::FinWait2).to_string(),
        g.now.count(TcpState::TimeWait).to_string(),
        p50(&s.lifetime),
        p50_p99(&s.fin_wait2),
        p50_p99(&s.close_wait),
        p50_p99(&s.rtt),
        retrans(s),
        match s.connects_failed() {
            0 => "-".into(),
            n => n.to_string(),
        },
    ]
}

const COLUMNS: usize = 16;

const HEADERS: [&str; COLUMNS] = [
    "PROCESS",
    "ROLE",
    "ENDPOINT",
    "OPENED",
    "CLOSED",
    "LOCAL/REMOTE/RST",
    "ESTAB",
    "CLOSE_WAIT",
    "FIN_WAIT2",
    "TIME_WAIT",
    "LIFETIME_P50",
    "FIN_WAIT2_P50/P99",
    "CLOSE_WAIT_P50/P99",
    "RTT_P50/P99",
    "RETRANS",
    "CONNECT_FAILED",
];

impl Report<'_> {
    fn shown(&self) -> Vec<[String; COLUMNS]> {
        let mut rows: Vec<[String; COLUMNS]> = self.groups.iter().take(self.top).map(row).collect();
        if self.folded > 0 {
            rows.push(row(&self.other));
        }
        rows
    }

    pub fn headline(&self) -> String {
        format!(
            "tcplinger report: {:.1}s traced, {}, {} dropped; {}, {}{}",
            self.window_s,
            plural(usize::try_from(self.events).unwrap_or(usize::MAX), "event"),
            self.dropped,
            plural(self.findings.len(), "finding"),
            plural(self.groups.len(), "group"),
            if self.folded > 0 {
                format!(
                    " (+{} events folded into \"other\" beyond --max-groups)",
                    self.folded
                )
            } else {
                String::new()
            }
        )
    }

    /// The report as one JSON document and a newline.
    pub fn write_json(&self, out: &mut impl Write) -> io::Result<()> {
        #[derive(Serialize)]
        struct Json<'a> {
            window_s: f64,
            events: u64,
            dropped: u64,
            findings: Vec<JsonFinding<'a>>,
            groups: Vec<JsonGroup<'a>>,
            /// Events of groups beyond --max-groups, and their totals.
            folded: u64,
            other: JsonGroup<'a>,
            /// Closes, over every group, that owed a TIME_WAIT and got
            /// none: the kernel's table was full.
            #[serde(skip_serializing_if = "is_zero")]
            time_wait_refused: u64,
        }
        let json = Json {
            window_s: (self.window_s * 10.0).round() / 10.0,
            events: self.events,
            dropped: self.dropped,
            findings: self.findings.iter().map(json_finding).collect(),
            groups: self
                .groups
                .iter()
                .map(|g| json_group(g, &self.pods))
                .collect(),
            folded: self.folded,
            other: json_group(&self.other, &self.pods),
            time_wait_refused: self.time_wait_refused(),
        };
        serde_json::to_writer(&mut *out, &json)?;
        writeln!(out)
    }

    /// The report as text for a terminal.
    pub fn text(&self) -> String {
        let mut s = format!("{}\n\n", self.headline());
        if self.findings.is_empty() {
            s.push_str("FINDINGS: none (no pattern crossed its thresholds)\n\n");
        } else {
            let _ = writeln!(s, "FINDINGS (most urgent first)");
            for (i, f) in self.findings.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "{:>2}. {} [{}] {} {} {}{}",
                    i + 1,
                    f.severity().name().to_uppercase(),
                    f.pathology.id(),
                    f.process_short(),
                    f.key.role.name(),
                    f.key.endpoint(),
                    f.who
                        .pod
                        .as_ref()
                        .map(|p| format!(" (pod {p})"))
                        .unwrap_or_default()
                );
                let _ = writeln!(s, "    {}", f.summary);
                let _ = writeln!(s, "    evidence: {}", evidence_text(f));
                if let Some(g) = self.groups.iter().find(|g| *g.key == f.key) {
                    for (name, d) in [
                        ("FIN_WAIT2", &g.stats.fin_wait2),
                        ("CLOSE_WAIT", &g.stats.close_wait),
                    ] {
                        if d.count() > 0 {
                            let _ = writeln!(s, "    {name:<10} {}", spark(d));
                        }
                    }
                }
                s.push('\n');
            }
        }
        let rows = self.shown();
        let _ = writeln!(
            s,
            "GROUPS (top {} of {}, most lingering first; closes LOCAL/REMOTE/RST = who closed first)",
            self.groups.len().min(self.top),
            self.groups.len()
        );
        let mut widths: Vec<usize> = HEADERS.iter().map(|h| h.len()).collect();
        for r in &rows {
            for (w, cell) in widths.iter_mut().zip(r) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| -> String {
            let parts: Vec<String> = cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (c, w))| {
                    if i < 3 {
                        format!("{c:<w$}")
                    } else {
                        format!("{c:>w$}")
                    }
                })
                .collect();
            parts.join("  ").trim_end().to_string()
        };
        let _ = writeln!(s, "{}", line(&HEADERS.map(String::from)));
        for r in &rows {
            let _ = writeln!(s, "{}", line(r));
        }
        if let Some(note) = self.time_wait_refused_note() {
            let _ = writeln!(s, "\n{note}");
        }
        s
    }

    /// Closes that owed a TIME_WAIT and got none, over every group.
    fn time_wait_refused(&self) -> u64 {
        self.groups
            .iter()
            .map(|g| g.stats.time_wait_refused)
            .sum::<u64>()
            + if self.folded > 0 {
                self.other.stats.time_wait_refused
            } else {
                0
            }
    }

    /// A line saying the kernel's TIME_WAIT table was full, when it was.
    pub fn time_wait_refused_note(&self) -> Option<String> {
        let n = self.time_wait_refused();
        (n > 0).then(|| {
            format!(
                "TIME_WAIT table full: {} owed a TIME_WAIT and got none (the kernel's \
                 net.ipv4.tcp_max_tw_buckets was reached; it counts them as TCPTimeWaitOverflow): \
                 those sockets were freed at once, and a late segment of theirs meets a RST",
                plural(usize::try_from(n).unwrap_or(usize::MAX), "close")
            )
        })
    }

    /// The report as Markdown (a ticket, a chat).
    pub fn markdown(&self) -> String {
        let mut s = format!("## {}\n\n### Findings\n\n", self.headline());
        if self.findings.is_empty() {
            s.push_str("None: no pattern crossed its thresholds.\n\n");
        }
        for (i, f) in self.findings.iter().enumerate() {
            let _ = writeln!(
                s,
                "{}. **{}** ({}): `{}` ({}) `{}`  \n   {}\n",
                i + 1,
                f.pathology.id(),
                f.severity().name(),
                f.process_short(),
                f.key.role.name(),
                f.key.endpoint(),
                f.summary
            );
            let _ = writeln!(s, "   | evidence | value |\n   |---|---|");
            for (n, v) in &f.evidence {
                let _ = writeln!(s, "   | {} | {} |", text_name(n), v.show());
            }
            s.push('\n');
        }
        let _ = writeln!(s, "### Groups\n");
        let _ = writeln!(s, "| {} |", HEADERS.join(" | "));
        let _ = writeln!(s, "|{}", "---|".repeat(HEADERS.len()));
        for r in self.shown() {
            let cells: Vec<String> = r.iter().map(|c| c.replace('|', "\\|")).collect();
            let _ = writeln!(s, "| {} |", cells.join(" | "));
        }
        if let Some(note) = self.time_wait_refused_note() {
            let _ = writeln!(s, "\n{note}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::aggregate::{Aggregator, Windowing},
        model::diagnose::diagnose,
        model::tracker::Role,
        output::ReportFormat,
        testutil::{id, record},
    };

    #[test]
    fn groups_alike_rank_the_same_whatever_their_order_in_the_map() {
        let ranked = |first: Role| {
            let mut a = Aggregator::new(10, 0, Windowing::WHOLE_RUN);
            let roles = if first == Role::Client {
                [Role::Client, Role::Server]
            } else {
                [Role::Server, Role::Client]
            };
            for role in roles {
                for port in [80, 81, 82] {
                    let c = id(1, role, port);
                    a.on_opened(&c, 0);
                    a.on_record(&record(c, ClosedBy::Local, 10, None));
                }
            }
            rank(&a, &[]).iter().map(|g| *g.key).collect::<Vec<_>>()
        };
        let once = ranked(Role::Client);
        assert_eq!(once.len(), 4, "three client groups, one server group");
        for _ in 0..5 {
            assert_eq!(ranked(Role::Server), once);
            assert_eq!(ranked(Role::Client), once);
        }
    }

    fn render(format: ReportFormat) -> String {
        render_with(format, 0)
    }

    /// The report of five client closes to one server and one folded
    /// beyond `--max-groups`; the last `refused` of the five, and the
    /// folded one if any is, owed a TIME_WAIT the kernel did not make.
    fn render_with(format: ReportFormat, refused: usize) -> String {
        let mut a = Aggregator::new(1, 0, Windowing::WHOLE_RUN);
        let c = id(1, Role::Client, 8080);
        for i in 0..5 {
            a.on_opened(&c, 0);
            let mut r = record(c, ClosedBy::Local, 1_000, Some(2_000));
            if i >= 5 - refused {
                r.time_wait = false;
                r.time_wait_refused = true;
            }
            a.on_record(&r);
        }
        // Beyond the cap of 1 group: folded.
        let mut folded = record(id(2, Role::Client, 9999), ClosedBy::Remote, 10, None);
        folded.time_wait_refused = refused > 0;
        a.on_record(&folded);
        let findings = diagnose(&a, &[u64::MAX], 30_000_000_000);
        let report = Report {
            window_s: 30.0,
            events: 77,
            dropped: 0,
            findings: &findings,
            groups: rank(&a, &findings),
            other: other(&a),
            folded: a.folded(),
            top: 20,
            pods: HashMap::new(),
        };
        let mut out = Vec::new();
        super::super::write_report(
            &report,
            format,
            &mut out,
            &super::super::html::Pictures::default(),
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_has_findings_and_groups_per_the_contract() {
        let v: serde_json::Value = serde_json::from_str(&render(ReportFormat::Json)).unwrap();
        let f = &v["findings"][0];
        assert_eq!(f["pathology"], "client_timeout_stuck_server");
        assert_eq!(f["severity"], "warning");
        assert_eq!(f["pid"], 1);
        assert_eq!(f["comm"], "app");
        assert_eq!(f["processes"], 1);
        assert_eq!(f["pids"], serde_json::json!([1]));
        assert_eq!(f["remote"], "10.0.0.2:8080");
        assert_eq!(f["endpoint"], "10.0.0.2:8080");
        assert_eq!(f["role"], "client");
        assert_eq!(f["evidence"]["closed"], 5);
        assert!(f["summary"].as_str().unwrap().ends_with('.'));
        let g = &v["groups"][0];
        assert_eq!(g["closed"], 5);
        assert_eq!(g["closed_by"]["local"], 5);
        assert!((g["fin_wait2_ms"]["p50"].as_f64().unwrap() - 2000.0).abs() < 25.0);
        assert_eq!(v["folded"], 1);
        assert_eq!(v["other"]["closed"], 1);
        assert_eq!(v["other"]["role"], "other");
    }

    #[test]
    fn closes_refused_a_time_wait_are_counted_and_said_only_when_there_are_some() {
        for format in [
            ReportFormat::Json,
            ReportFormat::Text,
            ReportFormat::Markdown,
            ReportFormat::Html,
        ] {
            assert!(
                !render(format).contains("refused") && !render(format).contains("table full"),
                "{format:?}"
            );
        }
        let v: serde_json::Value =
            serde_json::from_str(&render_with(ReportFormat::Json, 3)).unwrap();
        assert_eq!(v["groups"][0]["time_wait_refused"], 3);
        assert_eq!(v["other"]["time_wait_refused"], 1);
        assert_eq!(v["time_wait_refused"], 4, "the groups' and the folded one");
        for format in [
            ReportFormat::Text,
            ReportFormat::Markdown,
            ReportFormat::Html,
        ] {
            let out = render_with(format, 3);
            assert!(
                out.contains("TIME_WAIT table full: 4 closes owed a TIME_WAIT and got none"),
                "{out}"
            );
            assert!(out.contains("tcp_max_tw_buckets"), "{out}");
        }
    }

    #[test]
    fn text_puts_findings_before_groups_with_units_in_values() {
        let text = render(ReportFormat::Text);
        let findings = text.find("FINDINGS").unwrap();
        let groups = text.find("GROUPS").unwrap();
        assert!(findings < groups, "{text}");
        assert!(
            text.contains("WARNING [client_timeout_stuck_server] 1/app client 10.0.0.2:8080"),
            "{text}"
        );
        assert!(text.contains("1 finding, 1 group"), "{text}");
        // The value says its unit; the name does not contradict it.
        assert!(text.contains("fin_wait2_p50=2.00s"), "{text}");
        assert!(!text.contains("_ms="), "{text}");
        assert!(text.contains("(other groups)"), "{text}");
        // Header and rows line up on the first numeric column.
        let lines: Vec<&str> = text.lines().collect();
        let header = lines.iter().position(|l| l.starts_with("PROCESS")).unwrap();
        assert_eq!(
            lines[header].find("OPENED").map(|i| i + 6),
            lines[header + 1].find(" 5 ").map(|i| i + 2)
        );
    }

    #[test]
    fn markdown_is_a_ticket_paste() {
        let md = render(ReportFormat::Markdown);
        assert!(md.starts_with("## tcplinger report"), "{md}");
        assert!(
            md.contains("**client_timeout_stuck_server** (warning)"),
            "{md}"
        );
        assert!(md.contains("| PROCESS | ROLE | ENDPOINT |"), "{md}");
        assert!(md.contains("| evidence | value |"), "{md}");
    }

    #[test]
    fn plurals_and_names() {
        assert_eq!(plural(1, "finding"), "1 finding");
        assert_eq!(plural(0, "group"), "0 groups");
        assert_eq!(text_name("close_wait_p50_ms"), "close_wait_p50");
        assert_eq!(text_name("idle_pct"), "idle");
        assert_eq!(text_name("opened_per_s"), "opened_rate");
        assert_eq!(text_name("closed"), "closed");
    }

    #[test]
    fn a_distribution_becomes_one_line_of_bars_by_band() {
        let mut d = Dist::default();
        for _ in 0..10 {
            d.record(2_000_000_000); // 2 s: the 1-10s band
        }
        d.record(500_000); // 0.5 ms: under 1 ms
        assert_eq!(
            spark(&d),
            "[▂   █  ]  11 closes; bands <1ms 1-10ms 10-100ms 0.1-1s 1-10s 10-60s ≥60s"
        );
    }
}
