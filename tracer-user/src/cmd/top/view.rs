//! What `top` shows, computed at each refresh from the analysis: the rows (sorted, filtered, idle ones dimmed then gone), the findings in severity order, and the detail of one group.

use std::collections::HashMap;

use ratatui::widgets::TableState;
use tracer_common::TcpState;

use crate::{
    model::aggregate::{Group, GroupKey, Stats},
    model::diagnose::{self, Finding, process_short},
    model::tracker::{ClosedBy, Role},
    output::Endpoint,
    session::Host,
    session::analysis::Analysis,
    settings::{SortKey, values::parse_state},
};

/// Rates on screen cover about this much (whole 10-s buckets: the title
/// says how long exactly).
pub const RATE_NS: u64 = 10_000_000_000;
/// Percentiles in a row and the detail view's counts cover the last minute.
pub const RECENT_NS: u64 = 60_000_000_000;
/// The findings pane shows this many at a time (two lines each).
pub const FINDINGS_SHOWN: usize = 3;
/// A group with nothing open, opened or closed is dimmed; this long idle,
/// it leaves the screen (a program that came and went; `report` keeps it).
pub const GONE_AFTER_NS: u64 = 60_000_000_000;

/// One table row, computed at each refresh.
#[derive(Debug, Clone, PartialEq)]
pub struct RowView {
    pub key: GroupKey,
    pub process: String,
    pub remote: String,
    pub lingering: u64,
    pub established: u64,
    pub close_wait: u64,
    pub fin_wait2: u64,
    pub time_wait: u64,
    pub opened_per_s: f64,
    pub oldest_close_wait_ns: u64,
    pub fin_wait2_p99_ms: Option<f64>,
    /// `namespace/pod` of its busiest process, on a Kubernetes node.
    pub pod: Option<String>,
    /// How long nothing was open, opened or closed in it (0: active).
    pub idle_ns: u64,
}

impl RowView {
    /// `rate` is what the group saw over the last `rate_s` seconds,
    /// `recent` over the last minute.
    pub fn of(key: &GroupKey, g: &Group, rate: &Stats, rate_s: f64, recent: &Stats) -> Self {
        Self {
            key: *key,
            process: process_short(key, g.procs.main(), g.procs.count()),
            remote: match key.role {
                Role::Unknown => format!("?{}", key.endpoint()),
                _ => key.endpoint(),
            },
            lingering: g.lingering(),
            established: g.now.count(TcpState::Established),
            close_wait: g.now.count(TcpState::CloseWait),
            fin_wait2: g.now.count(TcpState::FinWait2),
            time_wait: g.now.count(TcpState::TimeWait),
            opened_per_s: rate.opened as f64 / rate_s.max(1.0),
            oldest_close_wait_ns: g.now.oldest_close_wait_ns,
            fin_wait2_p99_ms: recent.fin_wait2.quantile_ms(0.99),
            pod: None,
            idle_ns: 0,
        }
    }

    /// The figure the table is sorted by, and the one that breaks ties.
    fn sort_value(&self, key: SortKey) -> (f64, f64) {
        match key {
            SortKey::Lingering => (self.lingering as f64, self.close_wait as f64),
            SortKey::Rate => (self.opened_per_s, 0.0),
            SortKey::CloseWaitAge => (self.oldest_close_wait_ns as f64, self.close_wait as f64),
            // The FW2 column, its p99 over the last minute next.
            SortKey::FinWait2 => (self.fin_wait2 as f64, self.fin_wait2_p99_ms.unwrap_or(0.0)),
            SortKey::Established => (self.established as f64, 0.0),
        }
    }

    /// The row is kept by the filter `/`: a state with a column of its own
    /// (`cw` or `close-wait`, `fw2`, `tw`, `estab`) keeps rows with sockets
    /// in it; any other text is looked for in the process, endpoint and pod.
    fn kept_by(&self, filter: &str) -> bool {
        let f = filter.trim().to_lowercase();
        if f.is_empty() {
            return true;
        }
        let state = match f.as_str() {
            "cw" => Some(TcpState::CloseWait),
            "fw2" => Some(TcpState::FinWait2),
            "tw" => Some(TcpState::TimeWait),
            "estab" => Some(TcpState::Established),
            other => parse_state(other).ok(),
        };
        match state {
            Some(TcpState::CloseWait) => return self.close_wait > 0,
            Some(TcpState::FinWait2) => return self.fin_wait2 > 0,
            Some(TcpState::TimeWait) => return self.time_wait > 0,
            Some(TcpState::Established) => return self.established > 0,
            _ => {}
        }
        [&self.process, &self.remote]
            .into_iter()
            .chain(self.pod.as_ref())
            .any(|text| text.to_lowercase().contains(&f))
    }
}

/// The sorts `s` cycles through, in the order of their columns.
pub const SORTS: [SortKey; 5] = [
    SortKey::Lingering,
    SortKey::Established,
    SortKey::FinWait2,
    SortKey::Rate,
    SortKey::CloseWaitAge,
];

pub fn sort_name(key: SortKey) -> &'static str {
    match key {
        SortKey::Lingering => "lingering",
        SortKey::Rate => "rate",
        SortKey::CloseWaitAge => "close-wait-age",
        SortKey::FinWait2 => "fin-wait2",
        SortKey::Established => "established",
    }
}

/// A live socket of the group shown in detail.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketView {
    pub pid: Option<u32>,
    pub state: TcpState,
    /// In that state for this long; `None`: since before tracing began.
    pub age_ns: Option<u64>,
    pub local: String,
    pub remote: String,
}

/// One group in full: `Enter` on its row.
#[derive(Debug, Clone, PartialEq)]
pub struct Detail {
    pub row: RowView,
    pub pids: Vec<u32>,
    pub processes: u64,
    /// Over the last minute.
    pub recent: Stats,
    /// Since `top` started (as far as it keeps them).
    pub total: Stats,
    pub findings: Vec<Finding>,
    /// Longest in their state first.
    pub sockets: Vec<SocketView>,
}

/// Which pane the arrows move in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Focus {
    #[default]
    Table,
    Findings,
}

/// Where a replay shown by `top` is.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    pub speed: f64,
    pub paused: bool,
    /// One refresh's worth asked while paused (`n`).
    pub step: bool,
    /// The recording is over: the last picture stays until `q`.
    pub ended: bool,
}

/// What the screen shows.
#[derive(Debug, Default)]
pub struct Model {
    /// Every group, as of the last refresh.
    pub rows: Vec<RowView>,
    /// The rows on screen: sorted, filtered, the long idle left out.
    pub shown: Vec<RowView>,
    /// Severity first.
    pub findings: Vec<Finding>,
    pub sort: Option<SortKey>,
    /// Ascending instead (`r`).
    pub reverse: bool,
    /// `/`: what rows must match; being typed while `editing`.
    pub filter: String,
    pub editing: bool,
    /// `?`: the keys, over everything.
    pub help: bool,
    /// `Enter`: the group shown in full, and its picture.
    pub detail_key: Option<GroupKey>,
    pub detail: Option<Detail>,
    pub focus: Focus,
    /// The first finding shown in the findings pane.
    pub findings_offset: usize,
    pub events_per_s: f64,
    pub dropped: u64,
    pub folded: u64,
    pub seeded: bool,
    pub elapsed_s: f64,
    /// What the rates cover, in seconds.
    pub rate_s: f64,
    pub table: TableState,
    pub last_events: u64,
    /// The host's clock at the last refresh (a replay's is recorded time).
    pub last_refresh_ns: u64,
    /// Since when each idle group has been idle (host clock).
    pub idle_since: HashMap<GroupKey, u64>,
    /// Showing a recording: its state.
    pub replay: Option<Replay>,
}

impl Model {
    pub fn sort_key(&self) -> SortKey {
        self.sort.unwrap_or(SortKey::Lingering)
    }

    pub fn next_sort(&mut self) {
        let i = SORTS
            .iter()
            .position(|&s| s == self.sort_key())
            .unwrap_or(0);
        self.sort = Some(SORTS[(i + 1) % SORTS.len()]);
        self.arrange();
    }

    pub fn reverse_sort(&mut self) {
        self.reverse = !self.reverse;
        self.arrange();
    }

    /// The rows on screen from all of them: filtered, the long idle gone,
    /// sorted (the largest first unless reversed), the selection kept on
    /// the same group where it can be.
    pub fn arrange(&mut self) {
        let selected = self.selected_key();
        let key = self.sort_key();
        self.shown = self
            .rows
            .iter()
            .filter(|r| r.idle_ns < GONE_AFTER_NS && r.kept_by(&self.filter))
            .cloned()
            .collect();
        self.shown.sort_by(|a, b| {
            let (x, y) = (a.sort_value(key), b.sort_value(key));
            let order = y.0.total_cmp(&x.0).then(y.1.total_cmp(&x.1));
            let order = if self.reverse { order.reverse() } else { order };
            order.then_with(|| a.process.cmp(&b.process))
        });
        let at = selected.and_then(|k| self.shown.iter().position(|r| r.key == k));
        match (at, self.table.selected()) {
            (Some(i), _) => self.table.select(Some(i)),
            (None, Some(i)) => self
                .table
                .select((!self.shown.is_empty()).then(|| i.min(self.shown.len() - 1))),
            (None, None) => {}
        }
    }

    pub fn selected_key(&self) -> Option<GroupKey> {
        self.table
            .selected()
            .and_then(|i| self.shown.get(i))
            .map(|r| r.key)
    }

    /// Shows the last look's picture, and asks for the next (its answer
    /// is applied as it comes, off the thread that drains the ring).
    pub fn refresh<H: Host>(&mut self, analysis: &mut Analysis<H>) {
        analysis.look();
        let window_s = analysis.window_s();
        let now = analysis.now_ns();
        let agg = &analysis.agg;
        self.rate_s = agg.covered_s(RATE_NS, now);
        let mut rows: Vec<RowView> = agg
            .groups()
            .map(|(k, g)| {
                let rate = agg.window(g, RATE_NS, now);
                let recent = agg.window(g, RECENT_NS, now);
                let mut row = RowView::of(k, g, &rate, self.rate_s, &recent);
                let active = g.now.total() > 0 || rate.opened > 0 || rate.closed > 0;
                if active {
                    self.idle_since.remove(k);
                } else {
                    let since = *self.idle_since.entry(*k).or_insert(now);
                    row.idle_ns = now.saturating_sub(since);
                }
                row
            })
            .collect();
        self.idle_since.retain(|k, _| agg.group_of(k).is_some());
        let mut pods = analysis.pods();
        for row in &mut rows {
            row.pod = pods
                .remove(&row.key)
                .map(|p| format!("{}/{}", p.namespace, p.pod));
        }
        self.rows = rows;
        self.arrange();
        let mut findings = analysis.findings();
        diagnose::sort(&mut findings);
        self.findings = findings;
        self.findings_offset = self
            .findings_offset
            .min(self.findings.len().saturating_sub(FINDINGS_SHOWN));
        self.refresh_detail(analysis);
        let events = analysis.session.counts.events;
        // Over the time the host's clock says passed: a second live, the
        // recorded time on a replay, whatever its speed.
        let passed_s = if self.last_refresh_ns == 0 {
            1.0
        } else {
            now.saturating_sub(self.last_refresh_ns) as f64 / 1e9
        };
        self.events_per_s = (events - self.last_events) as f64 / passed_s.max(1e-3);
        self.last_events = events;
        self.last_refresh_ns = now;
        self.dropped = analysis.session.host.dropped();
        self.folded = analysis.agg.folded();
        self.seeded = analysis.seeded;
        self.elapsed_s = window_s;
    }

    /// The group shown in full, drawn again from what the analysis holds
    /// (no new look: a paused replay stays where it is).
    pub fn refresh_detail<H: Host>(&mut self, analysis: &mut Analysis<H>) {
        let now = analysis.now_ns();
        self.detail = self
            .detail_key
            .and_then(|k| detail(analysis, &k, &self.rows, &self.findings, now));
    }

    /// Moves the selection in the focused pane.
    pub fn scroll(&mut self, down: bool) {
        match self.focus {
            Focus::Table => {
                let last = self.shown.len().saturating_sub(1);
                // Nothing selected yet: the first move selects the top row.
                let next = match self.table.selected() {
                    None => 0,
                    Some(at) if down => (at + 1).min(last),
                    Some(at) => at.saturating_sub(1),
                };
                self.table.select(Some(next));
            }
            Focus::Findings => self.scroll_findings(if down { 1 } else { -1 }),
        }
    }

    /// Scrolls the findings pane, never past its last full page.
    pub fn scroll_findings(&mut self, by: isize) {
        let last = self.findings.len().saturating_sub(FINDINGS_SHOWN);
        self.findings_offset = self.findings_offset.saturating_add_signed(by).min(last);
    }
}

/// The group `key` in full, if it is still there.
fn detail<H: Host>(
    analysis: &mut Analysis<H>,
    key: &GroupKey,
    rows: &[RowView],
    findings: &[Finding],
    now: u64,
) -> Option<Detail> {
    let row = rows.iter().find(|r| r.key == *key)?.clone();
    let mut sockets: Vec<SocketView> = analysis
        .live_resolved()
        .into_iter()
        .filter(|l| GroupKey::of(&l.id) == *key && l.state != TcpState::Listen)
        .map(|l| SocketView {
            pid: l.id.owner.map(|o| o.pid),
            state: l.state,
            age_ns: l.since_ns.map(|since| now.saturating_sub(since)),
            local: Endpoint(l.id.laddr, l.id.lport).to_string(),
            remote: Endpoint(l.id.raddr, l.id.rport).to_string(),
        })
        .collect();
    sockets.sort_by_key(|s| std::cmp::Reverse(s.age_ns.unwrap_or(u64::MAX)));
    let findings = findings.iter().filter(|f| f.key == *key).cloned().collect();
    let agg = &analysis.agg;
    let g = agg.group_of(key)?;
    Some(Detail {
        row,
        pids: g.procs.pids(),
        processes: g.procs.count(),
        recent: agg.window(g, RECENT_NS, now),
        total: g.total(),
        findings,
        sockets,
    })
}

/// Who closed first, as shares of what closed: `local 80%, remote 20%`.
pub fn closers(s: &Stats) -> String {
    if s.closed == 0 {
        return "-".into();
    }
    [
        ("here", ClosedBy::Local),
        ("peer", ClosedBy::Remote),
        ("both", ClosedBy::Simultaneous),
        ("reset here", ClosedBy::ResetLocal),
        ("reset by peer", ClosedBy::ResetRemote),
    ]
    .into_iter()
    .filter(|(_, by)| s.closed_by(*by) > 0)
    .map(|(name, by)| format!("{name} {:.0}%", s.share(&[by]) * 100.0))
    .collect::<Vec<_>>()
    .join(", ")
}
