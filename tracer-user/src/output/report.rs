//! `report` output: findings first, then the busiest groups, as text, JSON or Markdown.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{self, Write},
};

use serde::{Serialize, Serializer};
use tracer_common::TcpState;

use super::connections::human;
use crate::{
    aggregate::{Dist, Group, GroupKey},
    cli::ReportFormat,
    diagnose::{Figure, Finding},
    tracker::ClosedBy,
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

impl Figure {
    /// For text and Markdown: `2.00s`, `95%`, `4.8/s`, `[3, 5]`.
    pub fn show(&self) -> String {
        match self {
            Figure::Count(n) => n.to_string(),
            Figure::Ms(v) => human((*v * 1e6) as u64),
            Figure::Percent(v) => format!("{v:.0}%"),
            Figure::PerSecond(v) => format!("{v:.1}/s"),
            Figure::Fds(fds) => format!("{fds:?}"),
        }
    }
}

#[derive(Serialize)]
struct JsonFinding<'a> {
    pathology: &'static str,
    pid: Option<u32>,
    comm: Option<String>,
    remote: String,
    role: &'static str,
    evidence: BTreeMap<&'static str, &'a Figure>,
    summary: &'a str,
}

fn json_finding(f: &Finding) -> JsonFinding<'_> {
    JsonFinding {
        pathology: f.pathology.id(),
        pid: f.key.pid,
        comm: f.key.comm.map(|c| c.to_string()),
        remote: f.key.remote(),
        role: f.key.role.name(),
        evidence: f.evidence.iter().map(|(n, v)| (*n, v)).collect(),
        summary: &f.summary,
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
struct JsonGroup {
    pid: Option<u32>,
    comm: Option<String>,
    role: &'static str,
    remote: String,
    /// The server's own port, for server groups.
    #[serde(skip_serializing_if = "Option::is_none")]
    local_port: Option<u16>,
    opened: u64,
    closed: u64,
    closed_by: BTreeMap<&'static str, u64>,
    time_wait_closes: u64,
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
}

fn json_group(key: Option<&GroupKey>, g: &Group) -> JsonGroup {
    JsonGroup {
        pid: key.and_then(|k| k.pid),
        comm: key.and_then(|k| k.comm).map(|c| c.to_string()),
        role: key.map_or("other", |k| k.role.name()),
        remote: key.map_or_else(|| "other".into(), GroupKey::remote),
        local_port: key
            .filter(|k| k.role == crate::tracker::Role::Server)
            .map(|k| k.port),
        opened: g.opened,
        closed: g.closed,
        closed_by: CLOSERS
            .iter()
            .filter(|&&b| g.closed_by(b) > 0)
            .map(|&b| (b.name(), g.closed_by(b)))
            .collect(),
        time_wait_closes: g.time_wait_closes,
        incomplete: g.incomplete,
        now: SHOWN_STATES
            .iter()
            .filter(|&&s| g.now.count(s) > 0)
            .map(|&s| (s.name(), g.now.count(s)))
            .collect(),
        idle: g.now.idle,
        awaiting_reply: g.now.awaiting,
        established_idle_ms: percentiles(&g.now.idle_time),
        oldest_close_wait_ms: (g.now.oldest_close_wait_ns > 0)
            .then(|| (g.now.oldest_close_wait_ns as f64 / 1e3).round() / 1e3),
        lifetime_ms: percentiles(&g.lifetime),
        fin_wait2_ms: percentiles(&g.fin_wait2),
        close_wait_ms: percentiles(&g.close_wait),
        last_ack_ms: percentiles(&g.last_ack),
        time_wait_ms: percentiles(&g.time_wait),
    }
}

/// Everything a report shows.
pub struct Report<'a> {
    pub window_s: f64,
    pub events: u64,
    pub dropped: u64,
    pub findings: &'a [Finding],
    /// Sorted, most interesting first.
    pub groups: Vec<(&'a GroupKey, &'a Group)>,
    pub other: &'a Group,
    pub folded: u64,
    /// Groups shown in text and Markdown.
    pub top: usize,
}

/// Most interesting first: groups with findings, then by sockets
/// lingering now, then by activity.
pub fn rank<'a>(
    groups: impl Iterator<Item = (&'a GroupKey, &'a Group)>,
    findings: &[Finding],
) -> Vec<(&'a GroupKey, &'a Group)> {
    let mut v: Vec<_> = groups.collect();
    v.sort_by_key(|(k, g)| {
        let flagged = findings.iter().any(|f| f.key == **k);
        std::cmp::Reverse((
            flagged,
            g.lingering(),
            g.opened + g.closed,
            g.now.count(TcpState::Established),
        ))
    });
    v
}

fn pct(g: &Group, by: &[ClosedBy]) -> String {
    if g.closed == 0 {
        "-".into()
    } else {
        format!("{:.0}%", g.share(by) * 100.0)
    }
}

fn p50(d: &Dist) -> String {
    d.quantile_ms(0.5)
        .map_or("-".into(), |v| human((v * 1e6) as u64))
}

fn p50_p99(d: &Dist) -> String {
    match (d.quantile_ms(0.5), d.quantile_ms(0.99)) {
        (Some(a), Some(b)) => format!("{}/{}", human((a * 1e6) as u64), human((b * 1e6) as u64)),
        _ => "-".into(),
    }
}

/// The cells of one group row, shared by text and Markdown.
fn row(key: Option<&GroupKey>, g: &Group) -> [String; 13] {
    let remote = match key {
        Some(k) if k.role == crate::tracker::Role::Server => {
            format!("{} (:{})", k.remote(), k.port)
        }
        Some(k) => k.remote(),
        None => "(other groups)".into(),
    };
    [
        key.map_or("-".into(), GroupKey::process),
        key.map_or("-", |k| k.role.name()).to_string(),
        remote,
        g.opened.to_string(),
        g.closed.to_string(),
        format!(
            "{}/{}/{}",
            pct(g, &[ClosedBy::Local]),
            pct(g, &[ClosedBy::Remote]),
            pct(g, &[ClosedBy::ResetLocal, ClosedBy::ResetRemote])
        ),
        g.now.count(TcpState::Established).to_string(),
        g.now.count(TcpState::CloseWait).to_string(),
        g.now.count(TcpState::FinWait2).to_string(),
        g.now.count(TcpState::TimeWait).to_string(),
        p50(&g.lifetime),
        p50_p99(&g.fin_wait2),
        p50_p99(&g.close_wait),
    ]
}

const HEADERS: [&str; 13] = [
    "PROCESS",
    "ROLE",
    "REMOTE",
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
];

impl Report<'_> {
    fn shown(&self) -> Vec<[String; 13]> {
        let mut rows: Vec<[String; 13]> = self
            .groups
            .iter()
            .take(self.top)
            .map(|(k, g)| row(Some(k), g))
            .collect();
        if self.folded > 0 {
            rows.push(row(None, self.other));
        }
        rows
    }

    fn headline(&self) -> String {
        format!(
            "tcplinger report: {:.1}s traced, {} events, {} dropped; {} findings, {} groups{}",
            self.window_s,
            self.events,
            self.dropped,
            self.findings.len(),
            self.groups.len(),
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

    pub fn write(&self, format: ReportFormat, out: &mut impl Write) -> io::Result<()> {
        match format {
            ReportFormat::Json => {
                #[derive(Serialize)]
                struct Json<'a> {
                    window_s: f64,
                    events: u64,
                    dropped: u64,
                    findings: Vec<JsonFinding<'a>>,
                    groups: Vec<JsonGroup>,
                    /// Events of groups beyond --max-groups, and their totals.
                    folded: u64,
                    other: JsonGroup,
                }
                let json = Json {
                    window_s: (self.window_s * 10.0).round() / 10.0,
                    events: self.events,
                    dropped: self.dropped,
                    findings: self.findings.iter().map(json_finding).collect(),
                    groups: self
                        .groups
                        .iter()
                        .map(|(k, g)| json_group(Some(k), g))
                        .collect(),
                    folded: self.folded,
                    other: json_group(None, self.other),
                };
                serde_json::to_writer(&mut *out, &json)?;
                writeln!(out)
            }
            ReportFormat::Text => out.write_all(self.text().as_bytes()),
            ReportFormat::Markdown => out.write_all(self.markdown().as_bytes()),
        }
    }

    fn text(&self) -> String {
        let mut s = format!("{}\n\n", self.headline());
        if self.findings.is_empty() {
            s.push_str("FINDINGS: none (no pattern crossed its thresholds)\n\n");
        } else {
            let _ = writeln!(s, "FINDINGS");
            for (i, f) in self.findings.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "{:>2}. [{}] {} {} -> {}",
                    i + 1,
                    f.pathology.id(),
                    f.key.process(),
                    f.key.role.name(),
                    f.key.remote()
                );
                let _ = writeln!(s, "    {}", f.summary);
                let evidence: Vec<String> = f
                    .evidence
                    .iter()
                    .map(|(n, v)| format!("{n}={}", v.show()))
                    .collect();
                let _ = writeln!(s, "    evidence: {}\n", evidence.join(", "));
            }
        }
        let rows = self.shown();
        let _ = writeln!(
            s,
            "GROUPS (top {} of {}, most lingering first; closes LOCAL/REMOTE/RST = who closed first)",
            rows.len().min(self.top),
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
        s
    }

    fn markdown(&self) -> String {
        let mut s = format!("## {}\n\n### Findings\n\n", self.headline());
        if self.findings.is_empty() {
            s.push_str("None: no pattern crossed its thresholds.\n\n");
        }
        for (i, f) in self.findings.iter().enumerate() {
            let _ = writeln!(
                s,
                "{}. **{}**: `{}` ({}) -> `{}`  \n   {}\n",
                i + 1,
                f.pathology.id(),
                f.key.process(),
                f.key.role.name(),
                f.key.remote(),
                f.summary
            );
            let _ = writeln!(s, "   | evidence | value |\n   |---|---|");
            for (n, v) in &f.evidence {
                let _ = writeln!(s, "   | {n} | {} |", v.show());
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
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        aggregate::{
            Aggregator,
            tests::{id, record},
        },
        diagnose::diagnose,
        tracker::Role,
    };

    fn render(format: ReportFormat) -> String {
        let mut a = Aggregator::new(1, 0);
        let c = id(1, Role::Client, 8080);
        for _ in 0..5 {
            a.on_opened(&c);
            a.on_record(&record(c, ClosedBy::Local, 1_000, Some(2_000)));
        }
        // Beyond the cap of 1 group: folded.
        a.on_record(&record(
            id(2, Role::Client, 9999),
            ClosedBy::Remote,
            10,
            None,
        ));
        let findings = diagnose(a.groups(), 30.0);
        let report = Report {
            window_s: 30.0,
            events: 77,
            dropped: 0,
            findings: &findings,
            groups: rank(a.groups(), &findings),
            other: a.other(),
            folded: a.folded(),
            top: 20,
        };
        let mut out = Vec::new();
        report.write(format, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_has_findings_and_groups_per_the_contract() {
        let v: serde_json::Value = serde_json::from_str(&render(ReportFormat::Json)).unwrap();
        let f = &v["findings"][0];
        assert_eq!(f["pathology"], "client_timeout_stuck_server");
        assert_eq!(f["pid"], 1);
        assert_eq!(f["comm"], "app");
        assert_eq!(f["remote"], "10.0.0.2:8080");
        assert_eq!(f["role"], "client");
        assert_eq!(f["evidence"]["closed"], 5);
        assert!(f["summary"].as_str().unwrap().ends_with('.'));
        let g = &v["groups"][0];
        assert_eq!(g["closed"], 5);
        assert_eq!(g["closed_by"]["local"], 5);
        assert!((g["fin_wait2_ms"]["p50"].as_f64().unwrap() - 2000.0).abs() < 20.0);
        assert_eq!(v["folded"], 1);
        assert_eq!(v["other"]["closed"], 1);
    }

    #[test]
    fn text_puts_findings_before_groups() {
        let text = render(ReportFormat::Text);
        let findings = text.find("FINDINGS").unwrap();
        let groups = text.find("GROUPS").unwrap();
        assert!(findings < groups, "{text}");
        assert!(
            text.contains("[client_timeout_stuck_server] 1/app client -> 10.0.0.2:8080"),
            "{text}"
        );
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
        assert!(md.contains("**client_timeout_stuck_server**"), "{md}");
        assert!(md.contains("| PROCESS | ROLE | REMOTE |"), "{md}");
        assert!(md.contains("| evidence | value |"), "{md}");
    }
}
