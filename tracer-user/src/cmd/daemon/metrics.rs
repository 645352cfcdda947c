//! The daemon's Prometheus metrics: closes, linger histograms, sockets now, findings and the tracer's own health, with every label's cardinality bounded.

use std::collections::{HashMap, HashSet};

use std::net::IpAddr;

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tracer_common::TcpState;

use crate::{
    host::cgroups::Container,
    model::aggregate::GroupKey,
    model::diagnose::Finding,
    model::event::Comm,
    model::tracker::{ClosedBy, ConnId, ConnRecord, Role, TimewaitEnd},
    session::HostLosses,
};

/// Refreshes (one a second) the ring peak is the maximum of.
const RING_PEAK_WINDOW: usize = 60;

/// The label value standing for everything beyond a budget.
pub const OTHER: &str = "other";

/// Buckets in seconds: a healthy close takes microseconds, the lingers
/// worth alerting on take seconds, TIME_WAIT a minute.
const LINGER_BUCKETS: [f64; 16] = [
    0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
const LIFETIME_BUCKETS: [f64; 16] = [
    0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0,
    86400.0,
];

/// Gives label values their own series, the first `limit` values seen;
/// later ones share `other`. A slot stays while its value is in use: a
/// counter's increments must never move between series while it lives.
/// A value unused for longer than the stale age (a process that exited,
/// an endpoint no longer talked to) gives its slot back, and its series
/// are deleted. Every increment is still counted, under `other` if need be.
#[derive(Debug)]
pub struct LabelBudget {
    limit: usize,
    /// Value -> when it was last used (boot ns).
    admitted: HashMap<String, u64>,
    now_ns: u64,
}

impl LabelBudget {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            admitted: HashMap::new(),
            now_ns: 0,
        }
    }

    pub fn label(&mut self, value: &str) -> String {
        if let Some(used) = self.admitted.get_mut(value) {
            *used = self.now_ns;
            return value.to_string();
        }
        if self.admitted.len() >= self.limit {
            return OTHER.to_string();
        }
        self.admitted.insert(value.to_string(), self.now_ns);
        value.to_string()
    }

    /// Values from now on are used at `now_ns`.
    fn at(&mut self, now_ns: u64) {
        self.now_ns = now_ns;
    }

    /// `value`, if it holds a slot, was used at `used_ns`.
    fn touch(&mut self, value: &str, used_ns: u64) {
        if let Some(used) = self.admitted.get_mut(value) {
            *used = (*used).max(used_ns);
        }
    }

    /// Gives back the slots of values unused for `stale_ns`; returns them.
    fn release_stale(&mut self, stale_ns: u64) -> HashSet<String> {
        let now = self.now_ns;
        let stale: HashSet<String> = self
            .admitted
            .iter()
            .filter(|&(_, &used)| now.saturating_sub(used) > stale_ns)
            .map(|(v, _)| v.clone())
            .collect();
        self.admitted.retain(|v, _| !stale.contains(v));
        stale
    }
}

/// A label value unused this long gives its slot back: longer than the
/// daemon's longest judging window, so a group still judged keeps its series.
pub const STALE_NS: u64 = 600_000_000_000;

/// The tracer's own counts, as absolute values.
#[derive(Debug, Default, Clone, Copy)]
pub struct Health {
    pub events: u64,
    pub dropped: u64,
    pub missed: u64,
    pub malformed: u64,
    pub evicted: u64,
    pub tracked: u64,
    pub ring_bytes: u64,
    pub ring_peak: u64,
    pub groups: u64,
    pub folded: u64,
}

/// Counters fed from absolute values: only the increase is added.
#[derive(Debug, Default)]
struct Last(Health);

pub struct Metrics {
    registry: Registry,
    opened: IntCounterVec,
    closed: IntCounterVec,
    lifetime: HistogramVec,
    fin_wait2: HistogramVec,
    close_wait: HistogramVec,
    last_ack: HistogramVec,
    time_wait: HistogramVec,
    sockets: IntGaugeVec,
    findings: IntCounterVec,
    findings_active: IntGaugeVec,
    events: IntCounter,
    dropped: IntCounter,
    missed: IntCounter,
    malformed: IntCounter,
    evicted: IntCounter,
    folded: IntCounter,
    tracked: IntGauge,
    groups: IntGauge,
    ring_bytes: IntGauge,
    ring_peak: IntGauge,
    /// Losses other than drops, misses and evictions, by kind.
    losses: IntCounterVec,
    /// Their totals as last fed (they come as totals).
    losses_last: HashMap<&'static str, u64>,
    last: Last,
    /// Ring peaks of the last minute, one per refresh: a scrape every 15 s
    /// must not miss the burst that nearly filled it.
    ring_peaks: std::collections::VecDeque<u64>,
    /// Remote endpoints (address and service port) with their own series.
    endpoints: LabelBudget,
    comms: LabelBudget,
    /// Followed TIME_WAIT sockets now, by owner.
    time_wait_followed: HashMap<GaugeKey, i64>,
    conn_cache: foldhash::HashMap<ConnKey, ConnSeries>,
    /// Boot ns of the current refresh.
    now_ns: u64,
    /// The series of a key whose container is not known yet.
    uncached: Option<ConnSeries>,
    linger_cache: foldhash::HashMap<(Option<Comm>, Role), LingerSeries>,
}

/// A count as an integer gauge's value (saturating; no count comes near).
fn as_gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Whom a socket gauge counts: processes by name (a pid label would make
/// a series per short-lived process; findings name the pids instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct GaugeKey {
    comm: Option<Comm>,
    cgroup_id: u64,
}

impl GaugeKey {
    fn of(id: &ConnId) -> Self {
        Self {
            comm: id.owner.map(|o| o.comm),
            cgroup_id: id.owner.map_or(0, |o| o.cgroup_id),
        }
    }
}

/// Connection keys whose series handles are kept; beyond it the cache
/// starts over (a bound for hosts talking to very many endpoints).
const SERIES_CACHE: usize = 16_384;

/// What a connection's series are told apart by, before labels are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey {
    comm: Option<Comm>,
    role: Role,
    /// `None` for a server: its series are per listening port.
    peer: Option<IpAddr>,
    port: u16,
    cgroup_id: u64,
}

impl ConnKey {
    fn of(id: &ConnId) -> Self {
        let group = GroupKey::of(id);
        Self {
            comm: group.comm,
            role: group.role,
            peer: group.peer,
            port: group.port,
            cgroup_id: id.owner.map_or(0, |o| o.cgroup_id),
        }
    }
}

/// A connection key's labels and the counters made from them so far.
struct ConnSeries {
    labels: [String; 6],
    /// Last increment (boot ns): keeps its label values' slots.
    used_ns: u64,
    opened: Option<IntCounter>,
    closed: [Option<IntCounter>; ClosedBy::COUNT],
}

/// The histograms of one (comm, role).
struct LingerSeries {
    /// Last observation (boot ns): keeps its comm's slot.
    used_ns: u64,
    lifetime: Histogram,
    fin_wait2: Histogram,
    close_wait: Histogram,
    last_ack: Histogram,
    time_wait: Histogram,
}

/// Labels of a connection's series.
const CONN_LABELS: [&str; 6] = [
    "comm",
    "role",
    "remote_addr",
    "port",
    "container_id",
    "pod_uid",
];

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(v.clone()))
        .expect("unique metric");
    v
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> HistogramVec {
    let v = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        &["comm", "role"],
    )
    .expect("valid metric");
    registry
        .register(Box::new(v.clone()))
        .expect("unique metric");
    v
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

impl Metrics {
    /// `max_endpoints` bounds the remote endpoints (address and service
    /// port) with series of their own; process names and pids get budgets
    /// of their own.
    #[expect(
        clippy::too_many_lines,
        reason = "one registration per series, read as a list"
    )]
    pub fn new(max_endpoints: usize) -> Self {
        let r = Registry::new();
        Self {
            opened: counter_vec(
                &r,
                "tcplinger_connections_opened_total",
                "TCP connections whose opening was seen.",
                &CONN_LABELS,
            ),
            closed: counter_vec(
                &r,
                "tcplinger_connections_closed_total",
                "TCP connections whose lifecycle completed, by who closed first.",
                &[
                    "comm",
                    "role",
                    "closed_by",
                    "remote_addr",
                    "port",
                    "container_id",
                    "pod_uid",
                ],
            ),
            lifetime: histogram_vec(
                &r,
                "tcplinger_connection_lifetime_seconds",
                "From the first state seen to the full socket's close.",
                &LIFETIME_BUCKETS,
            ),
            fin_wait2: histogram_vec(
                &r,
                "tcplinger_fin_wait2_seconds",
                "Time in FIN_WAIT2, including the timewait phase.",
                &LINGER_BUCKETS,
            ),
            close_wait: histogram_vec(
                &r,
                "tcplinger_close_wait_seconds",
                "Time in CLOSE_WAIT.",
                &LINGER_BUCKETS,
            ),
            last_ack: histogram_vec(
                &r,
                "tcplinger_last_ack_seconds",
                "Time in LAST_ACK.",
                &LINGER_BUCKETS,
            ),
            time_wait: histogram_vec(
                &r,
                "tcplinger_time_wait_seconds",
                "Time in TIME_WAIT.",
                &LINGER_BUCKETS,
            ),
            sockets: {
                let v = IntGaugeVec::new(
                    Opts::new(
                        "tcplinger_sockets",
                        "TCP sockets now, by owning process and state.",
                    ),
                    &["comm", "state", "container_id", "pod_uid"],
                )
                .expect("valid metric");
                r.register(Box::new(v.clone())).expect("unique metric");
                v
            },
            findings: counter_vec(
                &r,
                "tcplinger_findings_total",
                "Diagnosis findings raised (each once, and again if it worsens).",
                &["pathology"],
            ),
            findings_active: {
                let v = IntGaugeVec::new(
                    Opts::new(
                        "tcplinger_findings_active",
                        "Diagnosis findings standing now.",
                    ),
                    &["pathology"],
                )
                .expect("valid metric");
                r.register(Box::new(v.clone())).expect("unique metric");
                v
            },
            events: counter(
                &r,
                "tcplinger_events_total",
                "Records received from the kernel.",
            ),
            dropped: counter(
                &r,
                "tcplinger_events_dropped_total",
                "Records the kernel could not write: the ring was full.",
            ),
            missed: counter(
                &r,
                "tcplinger_hook_missed_total",
                "Program runs the kernel skipped because one of ours was already running on that CPU.",
            ),
            malformed: counter(
                &r,
                "tcplinger_records_malformed_total",
                "Records the decoder refused.",
            ),
            evicted: counter(
                &r,
                "tcplinger_sockets_evicted_total",
                "Sockets forgotten to stay under --max-sockets.",
            ),
            folded: counter(
                &r,
                "tcplinger_groups_folded_total",
                "Events of process/endpoint groups beyond --max-groups, folded into one.",
            ),
            tracked: gauge(
                &r,
                "tcplinger_tracked_sockets",
                "Sockets the tracker follows now.",
            ),
            groups: gauge(
                &r,
                "tcplinger_groups",
                "Process/endpoint groups aggregated.",
            ),
            ring_bytes: gauge(
                &r,
                "tcplinger_ring_size_bytes",
                "Size of the kernel-to-userspace ring.",
            ),
            ring_peak: gauge(
                &r,
                "tcplinger_ring_peak_bytes",
                "Most bytes waiting in the ring over the last minute.",
            ),
            losses: counter_vec(
                &r,
                "tcplinger_losses_total",
                "Things the tracer lost or could not learn, by kind (see the README's list).",
                &["kind"],
            ),
            losses_last: HashMap::new(),
            registry: r,
            last: Last::default(),
            ring_peaks: std::collections::VecDeque::new(),
            endpoints: LabelBudget::new(max_endpoints),
            comms: LabelBudget::new(200),
            time_wait_followed: HashMap::new(),
            conn_cache: foldhash::HashMap::default(),
            now_ns: 0,
            uncached: None,
            linger_cache: foldhash::HashMap::default(),
        }
    }

    fn conn_labels(&mut self, id: &ConnId, container: Option<&Container>) -> [String; 6] {
        let key = GroupKey::of(id);
        // A server's clients are many: its series are per listening port.
        let peer = key.peer.map_or_else(|| "*".to_string(), |p| p.to_string());
        let endpoint = format!("{peer}:{}", key.port);
        let (addr, port) = if self.endpoints.label(&endpoint) == OTHER {
            (OTHER.to_string(), OTHER.to_string())
        } else {
            (peer, key.port.to_string())
        };
        [
            self.comm_label(id.owner.map(|o| o.comm)),
            key.role.name().to_string(),
            addr,
            port,
            container
                .and_then(|c| c.container_id.clone())
                .unwrap_or_default(),
            container
                .and_then(|c| c.pod_uid.clone())
                .unwrap_or_default(),
        ]
    }

    fn comm_label(&mut self, comm: Option<Comm>) -> String {
        self.comms
            .label(&comm.map_or_else(String::new, |c| c.to_string()))
    }

    /// The series of a connection's key, resolved on first use: label
    /// strings are built and the registry searched once per key, not per
    /// connection. `container` is asked for on that first use only.
    fn conn_series(
        &mut self,
        id: &ConnId,
        container: &mut dyn FnMut(u64) -> Option<Container>,
    ) -> &mut ConnSeries {
        let key = ConnKey::of(id);
        if !self.conn_cache.contains_key(&key) {
            if self.conn_cache.len() >= SERIES_CACHE {
                // The series stay registered; only their handles are dropped.
                self.conn_cache.clear();
            }
            let cgroup_id = key.cgroup_id;
            let found = (cgroup_id != 0).then(|| container(cgroup_id)).flatten();
            let labels = self.conn_labels(id, found.as_ref());
            let series = ConnSeries {
                labels,
                used_ns: self.now_ns,
                opened: None,
                closed: Default::default(),
            };
            if cgroup_id != 0 && found.is_none() {
                // Not known (yet): not cached, asked again next time.
                self.uncached = Some(series);
                return self.uncached.as_mut().expect("just set");
            }
            self.conn_cache.insert(key, series);
        }
        self.conn_cache.get_mut(&key).expect("just inserted")
    }

    /// The linger histograms of a (comm, role), resolved on first use.
    fn linger_series(&mut self, id: &ConnId) -> &mut LingerSeries {
        let key = (id.owner.map(|o| o.comm), id.role);
        if !self.linger_cache.contains_key(&key) {
            let labels = [self.comm_label(key.0), id.role.name().to_string()];
            let child = |h: &HistogramVec| h.with_label_values(&labels);
            let series = LingerSeries {
                used_ns: self.now_ns,
                lifetime: child(&self.lifetime),
                fin_wait2: child(&self.fin_wait2),
                close_wait: child(&self.close_wait),
                last_ack: child(&self.last_ack),
                time_wait: child(&self.time_wait),
            };
            self.linger_cache.insert(key, series);
        }
        let now = self.now_ns;
        let series = self.linger_cache.get_mut(&key).expect("just inserted");
        series.used_ns = now;
        series
    }

    pub fn on_opened(&mut self, id: &ConnId, container: &mut dyn FnMut(u64) -> Option<Container>) {
        let opened = self.opened.clone();
        let now = self.now_ns;
        let series = self.conn_series(id, container);
        series.used_ns = now;
        series
            .opened
            .get_or_insert_with(|| opened.with_label_values(&series.labels))
            .inc();
    }

    pub fn on_record(
        &mut self,
        r: &ConnRecord,
        container: &mut dyn FnMut(u64) -> Option<Container>,
    ) {
        if r.open_state.is_some() {
            return;
        }
        let id = r.id();
        let closed = self.closed.clone();
        let now = self.now_ns;
        let series = self.conn_series(&id, container);
        series.used_ns = now;
        series.closed[r.closed_by as usize]
            .get_or_insert_with(|| {
                let [comm, role, addr, port, cid, pod] = &series.labels;
                closed.with_label_values(&[comm, role, r.closed_by.name(), addr, port, cid, pod])
            })
            .inc();
        let seconds = |ns: u64| ns as f64 / 1e9;
        let lingers = self.linger_series(&id);
        if r.opened_seen {
            // A socket that predates the tracer has no known lifetime.
            lingers.lifetime.observe(seconds(r.lifetime_ns));
        }
        for (state, hist) in [
            (TcpState::FinWait2, &lingers.fin_wait2),
            (TcpState::CloseWait, &lingers.close_wait),
            (TcpState::LastAck, &lingers.last_ack),
        ] {
            if let Some(ns) = r.states.get(state) {
                hist.observe(seconds(ns));
            }
        }
    }

    pub fn on_timewait_end(&mut self, end: &TimewaitEnd) {
        let owner = GaugeKey::of(&end.id);
        if let Some(n) = self.time_wait_followed.get_mut(&owner) {
            *n -= 1;
            if *n <= 0 {
                self.time_wait_followed.remove(&owner);
            }
        }
        self.linger_series(&end.id)
            .time_wait
            .observe(end.duration_ns as f64 / 1e9);
    }

    /// One more followed TIME_WAIT socket: those are counted as they come
    /// and go rather than walked each second.
    pub fn on_timewait_start(&mut self, id: &ConnId) {
        *self.time_wait_followed.entry(GaugeKey::of(id)).or_default() += 1;
    }

    /// Replaces the socket gauges with what is alive now: `live` are the
    /// sockets but the followed TIME_WAIT ones (see
    /// [`Self::on_timewait_start`]); `container` names a cgroup id's
    /// container, asked once per owner.
    pub fn set_sockets(
        &mut self,
        live: impl IntoIterator<Item = (ConnId, TcpState)>,
        mut container: impl FnMut(u64) -> Option<Container>,
    ) {
        // Counted by compact key first: label strings are made per owner,
        // not per socket.
        let mut by_owner: HashMap<(GaugeKey, TcpState), i64> = HashMap::new();
        for (id, state) in live {
            *by_owner.entry((GaugeKey::of(&id), state)).or_default() += 1;
        }
        for (&owner, &n) in &self.time_wait_followed {
            *by_owner.entry((owner, TcpState::TimeWait)).or_default() += n;
        }
        let mut counts: HashMap<[String; 4], i64> = HashMap::new();
        for ((owner, state), n) in by_owner {
            let container = container(owner.cgroup_id);
            let labels = [
                self.comms
                    .label(&owner.comm.map_or_else(String::new, |c| c.to_string())),
                state.name().to_string(),
                container
                    .as_ref()
                    .and_then(|c| c.container_id.clone())
                    .unwrap_or_default(),
                container
                    .as_ref()
                    .and_then(|c| c.pod_uid.clone())
                    .unwrap_or_default(),
            ];
            *counts.entry(labels).or_default() += n;
        }
        self.sockets.reset();
        for (labels, n) in counts {
            self.sockets.with_label_values(&labels).set(n);
        }
    }

    /// `raised`: findings new or worse since the last call; `active`: all
    /// standing now.
    pub fn on_findings(&mut self, raised: &[Finding], active: &[Finding]) {
        for f in raised {
            self.findings.with_label_values(&[f.pathology.id()]).inc();
        }
        self.findings_active.reset();
        for f in active {
            self.findings_active
                .with_label_values(&[f.pathology.id()])
                .inc();
        }
    }

    /// What happens from now on happens at `now_ns` (boot clock).
    pub fn at(&mut self, now_ns: u64) {
        self.now_ns = now_ns;
        self.comms.at(now_ns);
        self.endpoints.at(now_ns);
    }

    /// Gives back the label slots of process names and endpoints unused for
    /// [`STALE_NS`] (processes that exited, peers no longer talked to) and
    /// deletes their series, so new ones get series of their own.
    pub fn release_stale(&mut self) {
        // Slots in use through cached handles are refreshed first: a
        // cached series does not ask its budget at each increment.
        let now = self.now_ns;
        for series in self.conn_cache.values() {
            let [comm, _, addr, port, ..] = &series.labels;
            self.comms.touch(comm, series.used_ns);
            self.endpoints
                .touch(&format!("{addr}:{port}"), series.used_ns);
        }
        for ((comm, _), series) in &self.linger_cache {
            let name = comm.map_or_else(String::new, |c| c.to_string());
            self.comms.touch(&name, series.used_ns);
        }
        let comms = self.comms.release_stale(STALE_NS);
        let endpoints = self.endpoints.release_stale(STALE_NS);
        if comms.is_empty() && endpoints.is_empty() {
            return;
        }
        self.conn_cache
            .retain(|_, s| now.saturating_sub(s.used_ns) <= STALE_NS);
        self.uncached = None;
        self.linger_cache
            .retain(|_, s| now.saturating_sub(s.used_ns) <= STALE_NS);
        let stale = |labels: &HashMap<&str, &str>| {
            labels.get("comm").is_some_and(|c| comms.contains(*c))
                || match (labels.get("remote_addr"), labels.get("port")) {
                    (Some(a), Some(p)) => endpoints.contains(&format!("{a}:{p}")),
                    _ => false,
                }
        };
        for family in self.registry.gather() {
            for metric in family.get_metric() {
                let labels: HashMap<&str, &str> = metric
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                if !stale(&labels) {
                    continue;
                }
                // Deleting a series that is not there is harmless.
                let _ = match family.name() {
                    "tcplinger_connections_opened_total" => self.opened.remove(&labels),
                    "tcplinger_connections_closed_total" => self.closed.remove(&labels),
                    "tcplinger_connection_lifetime_seconds" => self.lifetime.remove(&labels),
                    "tcplinger_fin_wait2_seconds" => self.fin_wait2.remove(&labels),
                    "tcplinger_close_wait_seconds" => self.close_wait.remove(&labels),
                    "tcplinger_last_ack_seconds" => self.last_ack.remove(&labels),
                    "tcplinger_time_wait_seconds" => self.time_wait.remove(&labels),
                    _ => Ok(()),
                };
            }
        }
    }

    pub fn set_health(&mut self, h: Health) {
        let last = self.last.0;
        self.events.inc_by(h.events.saturating_sub(last.events));
        self.dropped.inc_by(h.dropped.saturating_sub(last.dropped));
        self.missed.inc_by(h.missed.saturating_sub(last.missed));
        self.malformed
            .inc_by(h.malformed.saturating_sub(last.malformed));
        self.evicted.inc_by(h.evicted.saturating_sub(last.evicted));
        self.folded.inc_by(h.folded.saturating_sub(last.folded));
        self.tracked.set(as_gauge(h.tracked));
        self.groups.set(as_gauge(h.groups));
        self.ring_bytes.set(as_gauge(h.ring_bytes));
        if self.ring_peaks.len() >= RING_PEAK_WINDOW {
            self.ring_peaks.pop_front();
        }
        self.ring_peaks.push_back(h.ring_peak);
        self.ring_peak
            .set(as_gauge(self.ring_peaks.iter().copied().max().unwrap_or(0)));
        self.last = Last(h);
    }

    /// The losses as totals: each kind's counter grows by what they grew.
    /// `http`: connections shed at the cap, and accepts that failed.
    pub fn set_losses(&mut self, host: &HostLosses, timewait_unfollowed: u64, http: [u64; 2]) {
        let totals = [
            ("kernel_read_failed", host.kernel.failed_runs),
            ("owner_not_recorded", host.kernel.owner_inserts),
            ("unattributed_skipped", host.kernel.unattributed),
            ("lookup_failed", host.lookups_failed),
            ("dump_failed", host.dumps_failed),
            ("netns_not_found", host.netns_not_found),
            ("cgroup_unknown", host.cgroups_unknown),
            ("host_job_failed", host.jobs_failed),
            ("time_wait_unfollowed", timewait_unfollowed),
            ("http_connection_shed", http[0]),
            ("http_accept_failed", http[1]),
        ];
        for (kind, total) in totals {
            let last = self.losses_last.entry(kind).or_insert(0);
            self.losses
                .with_label_values(&[kind])
                .inc_by(total.saturating_sub(*last));
            *last = total;
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        // Encoding plain counters, gauges and histograms cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::{
        model::event::{Comm, Family},
        model::tracker::{ClosedBy, Role, TimewaitEnd},
        testutil::{comm, owner, record},
    };

    fn id(raddr: IpAddr, rport: u16) -> ConnId {
        ConnId {
            netns: 1,
            owner: Some(owner(7, "curl")),
            role: Role::Client,
            family: Family::Ipv4,
            laddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            lport: 40000,
            raddr,
            rport,
        }
    }

    fn series(text: &str, metric: &str) -> usize {
        text.lines()
            .filter(|l| l.starts_with(&format!("{metric}{{")))
            .count()
    }

    #[test]
    fn closes_and_lingers_are_exported_in_seconds() {
        let mut m = Metrics::new(10);
        let c = id(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 8080);
        for _ in 0..3 {
            m.on_record(&record(c, ClosedBy::Local, 1_000, Some(2_000)), &mut |_| {
                None
            });
        }
        let text = m.encode();
        assert!(
            text.contains(r#"tcplinger_connections_closed_total{closed_by="local",comm="curl",container_id="",pod_uid="",port="8080",remote_addr="10.0.0.2",role="client"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tcplinger_fin_wait2_seconds_count{comm="curl",role="client"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tcplinger_fin_wait2_seconds_sum{comm="curl",role="client"} 6"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"tcplinger_fin_wait2_seconds_bucket{comm="curl",role="client",le="2"} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"tcplinger_fin_wait2_seconds_bucket{comm="curl",role="client",le="1"} 0"#
            ),
            "{text}"
        );
    }

    #[test]
    fn ten_thousand_endpoints_stay_within_the_budget() {
        let limit = 20;
        let mut m = Metrics::new(limit);
        for i in 0..10_000u32 {
            let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            let repeats = if i % 500 == 0 { 5 } else { 1 };
            for _ in 0..repeats {
                m.on_record(
                    &record(id(addr, 443), ClosedBy::Remote, 10, None),
                    &mut |_| None,
                );
            }
        }
        let text = m.encode();
        let n = series(&text, "tcplinger_connections_closed_total");
        assert!(n <= limit + 1, "{n} series for a budget of {limit}");
        assert!(text.contains(r#"port="other",remote_addr="other""#));
        // The first endpoints seen have series of their own, with all their closes.
        assert!(
            text.contains(r#"port="443",remote_addr="10.0.0.0",role="client"} 5"#),
            "{text}"
        );
        let total: u64 = text
            .lines()
            .filter(|l| l.starts_with("tcplinger_connections_closed_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(total, 10_000 - 20 + 20 * 5, "nothing lost by folding");
    }

    #[test]
    fn label_budget_keeps_its_slots_while_used() {
        let mut b = LabelBudget::new(2);
        assert_eq!(b.label("a"), "a");
        assert_eq!(b.label("b"), "b");
        assert_eq!(b.label("c"), OTHER, "budget spent");
        assert_eq!(b.label("a"), "a");
        b.at(STALE_NS);
        assert_eq!(b.label("a"), "a", "a is used again");
        b.at(STALE_NS + 1);
        assert_eq!(b.release_stale(STALE_NS), HashSet::from(["b".to_string()]));
        assert_eq!(b.label("c"), "c", "b's slot went to c");
    }

    #[test]
    fn series_of_processes_gone_are_deleted_and_their_slots_reused() {
        let mut m = Metrics::new(10);
        m.at(0);
        let mut curl = id(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 8080);
        m.on_record(&record(curl, ClosedBy::Local, 10, Some(1)), &mut |_| None);
        let mut wget = curl;
        wget.owner.as_mut().unwrap().comm = Comm::new(comm("wget"));
        // wget keeps going; curl stopped.
        for minute in 1..=11u64 {
            m.at(minute * 60_000_000_000);
            m.on_record(&record(wget, ClosedBy::Local, 10, Some(1)), &mut |_| None);
            m.release_stale();
        }
        let text = m.encode();
        assert!(!text.contains(r#"comm="curl""#), "{text}");
        assert!(
            text.contains(r#"tcplinger_connections_closed_total{closed_by="local",comm="wget""#),
            "{text}"
        );
        assert_eq!(m.comms.admitted.len(), 1);
        // curl is back: a fresh series of its own.
        curl.rport = 8080;
        m.on_record(&record(curl, ClosedBy::Local, 10, Some(1)), &mut |_| None);
        assert!(m.encode().contains(r#"closed_by="local",comm="curl",container_id="",pod_uid="",port="8080",remote_addr="10.0.0.2",role="client"} 1"#));
    }

    #[test]
    fn socket_gauges_are_replaced_not_accumulated() {
        let mut m = Metrics::new(10);
        let c = id(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 8080);
        m.set_sockets([(c, TcpState::CloseWait), (c, TcpState::CloseWait)], |_| {
            None
        });
        assert!(m.encode().contains(
            r#"tcplinger_sockets{comm="curl",container_id="",pod_uid="",state="CLOSE_WAIT"} 2"#
        ));
        m.set_sockets([(c, TcpState::Established)], |_| None);
        let text = m.encode();
        assert!(!text.contains("CLOSE_WAIT"), "{text}");
        assert!(text.contains(r#"state="ESTABLISHED"} 1"#), "{text}");
    }

    #[test]
    fn followed_timewait_sockets_are_counted_as_they_come_and_go() {
        let mut m = Metrics::new(10);
        let c = id(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 8080);
        m.on_timewait_start(&c);
        m.on_timewait_start(&c);
        m.set_sockets([(c, TcpState::TimeWait)], |_| None);
        assert!(
            m.encode()
                .contains(r#"comm="curl",container_id="",pod_uid="",state="TIME_WAIT"} 3"#),
            "{}",
            m.encode()
        );
        for _ in 0..2 {
            m.on_timewait_end(&TimewaitEnd {
                id: c,
                duration_ns: 1,
            });
        }
        m.set_sockets([], |_| None);
        assert!(
            !m.encode().contains(r#"state="TIME_WAIT""#),
            "{}",
            m.encode()
        );
    }

    #[test]
    fn health_counters_follow_absolute_values() {
        let mut m = Metrics::new(10);
        m.set_health(Health {
            events: 100,
            dropped: 2,
            ..Health::default()
        });
        m.set_health(Health {
            events: 150,
            dropped: 2,
            ring_bytes: 4096,
            ..Health::default()
        });
        m.set_health(Health {
            events: 150,
            dropped: 2,
            ring_bytes: 4096,
            ring_peak: 700,
            ..Health::default()
        });
        m.set_health(Health {
            events: 150,
            dropped: 2,
            ring_bytes: 4096,
            ring_peak: 10,
            ..Health::default()
        });
        let text = m.encode();
        assert!(
            text.contains("tcplinger_ring_peak_bytes 700"),
            "the burst is still shown: {text}"
        );
        assert!(text.contains("tcplinger_events_total 150"), "{text}");
        assert!(text.contains("tcplinger_events_dropped_total 2"), "{text}");
        assert!(text.contains("tcplinger_ring_size_bytes 4096"), "{text}");
    }

    /// The metric names in a PromQL expression.
    fn metric_names(expr: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = expr;
        while let Some(i) = rest.find("tcplinger_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            names.push(name);
        }
        names
    }

    #[test]
    fn the_grafana_dashboard_shows_what_the_daemon_exports() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../../deploy/grafana/dashboard.json"))
                .expect("valid JSON");
        let mut m = Metrics::new(10);
        // Make every family appear in the exposition.
        let c = id(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 80);
        let mut r = record(c, ClosedBy::Local, 10, Some(5));
        r.states = r
            .states
            .with(TcpState::CloseWait, 1)
            .with(TcpState::LastAck, 1);
        m.on_record(&r, &mut |_| None);
        m.on_opened(&c, &mut |_| None);
        m.on_timewait_end(&TimewaitEnd {
            id: c,
            duration_ns: 1,
        });
        m.set_sockets([(c, TcpState::TimeWait)], |_| None);
        let a = {
            let mut agg = crate::model::aggregate::Aggregator::new(
                10,
                0,
                crate::model::aggregate::Windowing::WHOLE_RUN,
            );
            let s = crate::testutil::id(1, Role::Server, 80);
            for _ in 0..12 {
                let mut r = record(s, ClosedBy::Local, 5, None);
                r.tcp = Some(crate::testutil::figures(0, 0, 1, 1));
                agg.on_record(&r);
            }
            crate::model::diagnose::diagnose(&agg, &[u64::MAX], 10_000_000_000)
        };
        m.on_findings(&a, &a);
        let exported = m.encode();
        let panels = dashboard["panels"].as_array().unwrap();
        for (title, kind) in [
            ("Closes by side", "timeseries"),
            ("FIN_WAIT2 duration", "heatmap"),
            ("CLOSE_WAIT duration", "heatmap"),
            ("Lingering sockets by process", "timeseries"),
            ("Findings", "timeseries"),
            ("Tracer health", "timeseries"),
        ] {
            let panel = panels
                .iter()
                .find(|p| p["title"] == title)
                .unwrap_or_else(|| panic!("no panel {title}"));
            assert_eq!(panel["type"], kind, "{title}");
        }
        for panel in panels {
            for t in panel["targets"].as_array().unwrap() {
                for name in metric_names(t["expr"].as_str().unwrap()) {
                    assert!(
                        exported.contains(&format!("\n{name}{{"))
                            || exported.contains(&format!("\n{name} ")),
                        "panel {} uses {name}, which the daemon does not export",
                        panel["title"]
                    );
                }
            }
        }
    }

    #[test]
    fn container_labels_appear_when_known() {
        let mut m = Metrics::new(10);
        let mut c = id(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 8080);
        c.owner.as_mut().unwrap().cgroup_id = 42;
        let container = Container {
            path: "/kubepods/pod-x".into(),
            container_id: Some("abc".into()),
            pod_uid: Some("uid-1".into()),
        };
        // Not known at first: asked again, and labelled once known.
        let mut asked = 0;
        m.on_opened(&c, &mut |_| {
            asked += 1;
            None
        });
        for _ in 0..3 {
            m.on_opened(&c, &mut |cgroup_id| {
                asked += 1;
                assert_eq!(cgroup_id, 42);
                Some(container.clone())
            });
        }
        assert_eq!(asked, 2, "cached once known");
        let text = m.encode();
        assert!(
            text.contains(r#"tcplinger_connections_opened_total{comm="curl",container_id="abc",pod_uid="uid-1",port="8080",remote_addr="10.0.0.2",role="client"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tcplinger_connections_opened_total{comm="curl",container_id="",pod_uid="",port="8080",remote_addr="10.0.0.2",role="client"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn losses_given_as_totals_grow_their_counters_by_the_difference() {
        let mut m = Metrics::new(10);
        let mut host = HostLosses::default();
        host.lookups_failed = 3;
        host.kernel.owner_inserts = 1;
        m.set_losses(&host, 2, [5, 0]);
        host.lookups_failed = 4;
        m.set_losses(&host, 2, [5, 1]);
        let text = m.encode();
        for (kind, n) in [
            ("lookup_failed", 4),
            ("owner_not_recorded", 1),
            ("time_wait_unfollowed", 2),
            ("http_connection_shed", 5),
            ("http_accept_failed", 1),
            ("netns_not_found", 0),
        ] {
            let line = format!("tcplinger_losses_total{{kind=\"{kind}\"}} {n}\n");
            assert!(text.contains(&line), "{line} in {text}");
        }
    }
}
