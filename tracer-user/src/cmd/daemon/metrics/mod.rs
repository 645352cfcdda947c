//! The daemon's Prometheus metrics: closes, linger histograms, sockets now, findings and the tracer's own health, with every label's cardinality bounded.

use std::collections::HashMap;

use prometheus::{
    Encoder as _, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tracer_common::TcpState;

use crate::{
    host::cgroups::Container,
    model::aggregate::GroupKey,
    model::diagnose::Finding,
    model::event::Comm,
    model::tracker::{ConnId, ConnRecord, Role, TimewaitEnd},
    session::HostLosses,
};

mod budget;
mod series;

pub use budget::{Budgeted, LabelBudget, STALE_NS};
use budget::{container_key, endpoint_key, linger_key};
use series::{
    CONN_LABELS, ConnKey, ConnSeries, ContainerLabels, GaugeKey, LINGER_CACHE, LingerSeries,
    SERIES_CACHE, as_gauge, comm_name, counter, counter_vec, gauge, histogram_vec, labelled,
    with_label,
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

/// RTT buckets in seconds: tens of µs on a host or a LAN, milliseconds
/// across a region, a second only on a path in trouble.
const RTT_BUCKETS: [f64; 12] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.25, 1.0,
];

/// Process names with series of their own (the `comm` label).
pub const COMMS_KEPT: usize = 200;

/// (process name, role) pairs with linger histograms of their own. Each
/// pair costs 110 series (five histograms of 16 buckets and one of 12,
/// each with `+Inf`, sum and count), so fewer than the names the counters keep: the histograms of
/// the busiest programs, the rest under `comm="other"`.
pub const LINGERS_KEPT: usize = 64;

/// Containers (a `container_id` and `pod_uid` pair) with series of their
/// own: above the pods a node runs at once (the kubelet's default cap is
/// 110), with room for the ones replaced within [`STALE_NS`].
pub const CONTAINERS_KEPT: usize = 256;

/// A cached series handle unused this long is dropped (its series stays):
/// under churn every short-lived process brings new connection keys, and
/// their handles, 600 bytes each, would otherwise pile up to the caches'
/// caps over many minutes. A key used again is resolved anew.
const HANDLE_IDLE_NS: u64 = 60_000_000_000;

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

/// The history's state, in totals (all zero without one).
#[derive(Debug, Clone, Copy, Default)]
pub struct HistoryLosses {
    pub bytes: u64,
    /// Minutes not written because the store's thread was behind.
    pub batches_dropped: u64,
    /// Minutes the store could not write (the error is logged).
    pub write_failures: u64,
    /// Connections worth keeping whole beyond a minute's share.
    pub connections_not_kept: u64,
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
    rtt: HistogramVec,
    connect_failed: IntCounterVec,
    retrans: IntCounterVec,
    time_wait_refused: IntCounterVec,
    bytes: IntCounterVec,
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
    history_bytes: IntGauge,
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
    containers: LabelBudget,
    /// (process name, role) pairs with linger histograms of their own.
    lingers: LabelBudget,
    /// Closes counted under `other`, by the budget that was full
    /// (indexed by [`Budgeted`]).
    folded_by: [IntCounter; 4],
    /// Boot ns of the last [`Self::note_uses`]: handles unused since are
    /// not walked again.
    noted_ns: u64,
    /// Followed TIME_WAIT sockets now, by owner.
    time_wait_followed: HashMap<GaugeKey, i64>,
    conn_cache: foldhash::HashMap<ConnKey, ConnSeries>,
    /// Boot ns of the current refresh.
    now_ns: u64,
    /// The series of a key whose container is not known yet.
    uncached: Option<ConnSeries>,
    linger_cache: foldhash::HashMap<(Option<Comm>, Role), LingerSeries>,
}

impl Metrics {
    /// `max_endpoints` bounds the remote endpoints (address and service
    /// port) with series of their own; process names and containers have
    /// fixed budgets ([`COMMS_KEPT`], [`CONTAINERS_KEPT`]); pids are never
    /// labels. `now_ns` (boot clock) is when it starts: records can come
    /// before the first refresh, and a label value used "at 0" would look
    /// unused for as long as the machine has been up, its series deleted
    /// at that refresh.
    pub fn new(max_endpoints: usize, now_ns: u64) -> Self {
        let mut m = Self::registered(max_endpoints);
        m.at(now_ns);
        m
    }

    #[expect(
        clippy::too_many_lines,
        reason = "one registration per series, read as a list"
    )]
    fn registered(max_endpoints: usize) -> Self {
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
                &with_label("closed_by"),
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
            rtt: histogram_vec(
                &r,
                "tcplinger_connection_rtt_seconds",
                "Smoothed RTT of each connection at its end.",
                &RTT_BUCKETS,
            ),
            connect_failed: counter_vec(
                &r,
                "tcplinger_connect_failures_total",
                "Connect attempts whose handshake never completed, by reason.",
                &with_label("reason"),
            ),
            time_wait_refused: counter_vec(
                &r,
                "tcplinger_time_wait_refused_total",
                "Closes that owed a TIME_WAIT and got none: the kernel's TIME_WAIT table was full (net.ipv4.tcp_max_tw_buckets).",
                &CONN_LABELS,
            ),
            retrans: counter_vec(
                &r,
                "tcplinger_retransmitted_segments_total",
                "Segments the closed connections retransmitted (SYNs included).",
                &CONN_LABELS,
            ),
            bytes: counter_vec(
                &r,
                "tcplinger_connection_bytes_total",
                "Bytes of the closed connections: sent (acknowledged by the peer) and received.",
                &with_label("direction"),
            ),
            sockets: {
                let v = IntGaugeVec::new(
                    Opts::new(
                        "tcplinger_sockets",
                        "TCP sockets now, by owning process and state.",
                    ),
                    &[
                        "comm",
                        "state",
                        "container_id",
                        "pod_uid",
                        "namespace",
                        "pod",
                        "container",
                    ],
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
            folded_by: {
                let v = counter_vec(
                    &r,
                    "tcplinger_connections_folded_total",
                    "Closes counted under the label value \"other\" because that label's budget was full (comm, endpoint or container on the connection counters; linger: comm on the linger histograms).",
                    &["label"],
                );
                Budgeted::ALL.map(|b| v.with_label_values(&[b.name()]))
            },
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
            history_bytes: gauge(
                &r,
                "tcplinger_history_bytes",
                "Bytes the daemon's history takes on disk (0 without one).",
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
            comms: LabelBudget::new(COMMS_KEPT),
            containers: LabelBudget::new(CONTAINERS_KEPT),
            lingers: LabelBudget::new(LINGERS_KEPT),
            noted_ns: 0,
            time_wait_followed: HashMap::new(),
            conn_cache: foldhash::HashMap::default(),
            now_ns: 0,
            uncached: None,
            linger_cache: foldhash::HashMap::default(),
        }
    }

    /// A connection's labels, each budget asked once; and which budgets
    /// were full (indexed by [`Budgeted`]).
    fn conn_labels(
        &mut self,
        id: &ConnId,
        container: Option<&Container>,
    ) -> ([String; 9], [bool; 3]) {
        let key = GroupKey::of(id);
        // A server's clients are many: its series are per listening port.
        let peer = key.peer.map_or_else(|| "*".to_string(), |p| p.to_string());
        let port = key.port.to_string();
        let endpoint_folded = !self.endpoints.admit(&endpoint_key(&peer, &port));
        let (addr, port) = if endpoint_folded {
            (OTHER.to_string(), OTHER.to_string())
        } else {
            (peer, port)
        };
        let comm = self.comm_label(id.owner.map(|o| o.comm));
        let comm_folded = comm == OTHER;
        let ([container_id, pod_uid, namespace, pod, name], container_folded) =
            self.container_labels(container);
        (
            [
                comm,
                key.role.name().to_string(),
                addr,
                port,
                container_id,
                pod_uid,
                namespace,
                pod,
                name,
            ],
            [comm_folded, endpoint_folded, container_folded],
        )
    }

    fn comm_label(&mut self, comm: Option<Comm>) -> String {
        self.comms.label(&comm_name(comm))
    }

    /// The `container_id`, `pod_uid`, `namespace`, `pod` and `container`
    /// labels of an owner's container, within the container budget (the
    /// names come with the ids: they take no slot of their own); whether
    /// that budget was full. An owner outside containers has empty labels,
    /// one value for all, unbudgeted.
    fn container_labels(&mut self, container: Option<&Container>) -> (ContainerLabels, bool) {
        let container_id = container
            .and_then(|c| c.container_id.clone())
            .unwrap_or_default();
        let pod_uid = container
            .and_then(|c| c.pod_uid.clone())
            .unwrap_or_default();
        let kube = container.and_then(|c| c.kube.as_ref());
        let names = [
            kube.map(|k| k.namespace.clone()).unwrap_or_default(),
            kube.map(|k| k.pod.clone()).unwrap_or_default(),
            kube.and_then(|k| k.container.clone()).unwrap_or_default(),
        ];
        let [namespace, pod, name] = names;
        if container_id.is_empty() && pod_uid.is_empty() {
            return ([container_id, pod_uid, namespace, pod, name], false);
        }
        if self
            .containers
            .admit(&container_key(&container_id, &pod_uid))
        {
            ([container_id, pod_uid, namespace, pod, name], false)
        } else {
            (std::array::from_fn(|_| OTHER.to_string()), true)
        }
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
                // The series stay registered; only their handles are
                // dropped, their uses noted first so no slot in use looks
                // stale.
                self.note_uses();
                self.conn_cache.clear();
            }
            let cgroup_id = key.cgroup_id;
            let found = (cgroup_id != 0).then(|| container(cgroup_id)).flatten();
            let (labels, folded) = self.conn_labels(id, found.as_ref());
            let series = ConnSeries {
                labels,
                folded,
                used_ns: self.now_ns,
                opened: None,
                closed: Default::default(),
                failed: Default::default(),
                retrans: None,
                time_wait_refused: None,
                bytes: Default::default(),
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
            if self.linger_cache.len() >= LINGER_CACHE {
                // As for the connection series: handles dropped, series kept.
                self.note_uses();
                self.linger_cache.clear();
            }
            let (name, role) = (comm_name(key.0), id.role.name());
            let folded = !self.lingers.admit(&linger_key(&name, role));
            let labels = [
                if folded { OTHER.to_string() } else { name },
                role.to_string(),
            ];
            let child = |h: &HistogramVec| h.with_label_values(&labels);
            let series = LingerSeries {
                used_ns: self.now_ns,
                folded,
                lifetime: child(&self.lifetime),
                fin_wait2: child(&self.fin_wait2),
                close_wait: child(&self.close_wait),
                last_ack: child(&self.last_ack),
                time_wait: child(&self.time_wait),
                rtt: child(&self.rtt),
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
        if let Some(reason) = r.connect_failed {
            // An attempt, not a connection: counted by its reason only.
            let failed = self.connect_failed.clone();
            let series = self.conn_series(&id, container);
            series.used_ns = now;
            series.failed[reason as usize]
                .get_or_insert_with(|| {
                    failed.with_label_values(&labelled(&series.labels, reason.name()))
                })
                .inc();
            return;
        }
        let (retrans, bytes) = (self.retrans.clone(), self.bytes.clone());
        let refused = self.time_wait_refused.clone();
        let series = self.conn_series(&id, container);
        series.used_ns = now;
        series.closed[r.closed_by as usize]
            .get_or_insert_with(|| {
                closed.with_label_values(&labelled(&series.labels, r.closed_by.name()))
            })
            .inc();
        if r.time_wait_refused {
            series
                .time_wait_refused
                .get_or_insert_with(|| refused.with_label_values(&series.labels))
                .inc();
        }
        if let Some(n) = r.net {
            series
                .retrans
                .get_or_insert_with(|| retrans.with_label_values(&series.labels))
                .inc_by(u64::from(n.retrans));
            for (i, (direction, count)) in [("sent", n.bytes_acked), ("received", n.bytes_received)]
                .into_iter()
                .enumerate()
            {
                series.bytes[i]
                    .get_or_insert_with(|| {
                        bytes.with_label_values(&labelled(&series.labels, direction))
                    })
                    .inc_by(count);
            }
        }
        let folded = series.folded;
        for (budget, counter) in folded.iter().zip(&self.folded_by) {
            if *budget {
                counter.inc();
            }
        }
        let seconds = |ns: u64| ns as f64 / 1e9;
        if self.linger_series(&id).folded {
            self.folded_by[Budgeted::Linger as usize].inc();
        }
        let lingers = self.linger_series(&id);
        if let Some(n) = r.net.filter(|n| n.srtt_us > 0) {
            lingers.rtt.observe(f64::from(n.srtt_us) / 1e6);
        }
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
        // Owners beyond a budget add up under `other`: gauges are redrawn
        // each time, so nothing needs counting as folded.
        let mut counts: HashMap<[String; 7], i64> = HashMap::new();
        for ((owner, state), n) in by_owner {
            let container = container(owner.cgroup_id);
            let ([container_id, pod_uid, namespace, pod, name], _) =
                self.container_labels(container.as_ref());
            let labels = [
                self.comm_label(owner.comm),
                state.name().to_string(),
                container_id,
                pod_uid,
                namespace,
                pod,
                name,
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
        self.containers.at(now_ns);
        self.lingers.at(now_ns);
    }

    /// Tells the budgets when the values of cached handles were last used:
    /// an increment through a cached handle does not ask its budget.
    fn note_uses(&mut self) {
        let since = self.noted_ns;
        for s in self.conn_cache.values().chain(self.uncached.as_ref()) {
            if s.used_ns < since {
                // Noted already, at a previous call.
                continue;
            }
            let [comm, _, addr, port, container_id, pod_uid, ..] = &s.labels;
            let [comm_folded, endpoint_folded, container_folded] = s.folded;
            if !comm_folded {
                self.comms.touch(comm, s.used_ns);
            }
            if !endpoint_folded {
                self.endpoints.touch(&endpoint_key(addr, port), s.used_ns);
            }
            let in_container = !container_id.is_empty() || !pod_uid.is_empty();
            if in_container && !container_folded {
                self.containers
                    .touch(&container_key(container_id, pod_uid), s.used_ns);
            }
        }
        for ((comm, role), s) in &self.linger_cache {
            if s.used_ns >= since && !s.folded {
                self.lingers
                    .touch(&linger_key(&comm_name(*comm), role.name()), s.used_ns);
            }
        }
        self.noted_ns = self.now_ns;
    }

    /// Gives back the label slots of process names, endpoints, containers
    /// and linger histograms unused for [`STALE_NS`] (processes that
    /// exited, peers no longer talked to, containers removed) and deletes
    /// their series, so new ones get series of their own.
    pub fn release_stale(&mut self) {
        self.note_uses();
        let now = self.now_ns;
        // Their uses are noted: the handles can go, their slots stay.
        self.conn_cache
            .retain(|_, s| now.saturating_sub(s.used_ns) <= HANDLE_IDLE_NS);
        self.linger_cache
            .retain(|_, s| now.saturating_sub(s.used_ns) <= HANDLE_IDLE_NS);
        let comms = self.comms.release_stale(STALE_NS);
        let endpoints = self.endpoints.release_stale(STALE_NS);
        let containers = self.containers.release_stale(STALE_NS);
        let lingers = self.lingers.release_stale(STALE_NS);
        let released = [&comms, &endpoints, &containers, &lingers];
        if released.iter().all(|r| r.is_empty()) {
            return;
        }
        // The handles of the series about to go went above (idle ones); a
        // handle used since holds its values' slots, so it stays. Handles
        // folded into `other` go too: asked again, their values may get
        // the slots just freed.
        self.conn_cache.retain(|_, s| !s.folded.contains(&true));
        self.uncached = None;
        self.linger_cache.retain(|_, s| !s.folded);
        // The connection counters go by their comm, endpoint and container;
        // the linger histograms by their (comm, role) alone.
        let stale_linger =
            |labels: &HashMap<&str, &str>| match (labels.get("comm"), labels.get("role")) {
                (Some(c), Some(r)) => lingers.contains(&linger_key(c, r)),
                _ => false,
            };
        let stale = |labels: &HashMap<&str, &str>| {
            labels.get("comm").is_some_and(|c| comms.contains(*c))
                || match (labels.get("remote_addr"), labels.get("port")) {
                    (Some(a), Some(p)) => endpoints.contains(&endpoint_key(a, p)),
                    _ => false,
                }
                || match (labels.get("container_id"), labels.get("pod_uid")) {
                    (Some(c), Some(p)) => containers.contains(&container_key(c, p)),
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
                // Deleting a series that is not there is harmless. The
                // socket gauges are redrawn from what is alive each second.
                let counter = |v: &IntCounterVec| {
                    if stale(&labels) {
                        let _ = v.remove(&labels);
                    }
                };
                let histogram = |v: &HistogramVec| {
                    if stale_linger(&labels) {
                        let _ = v.remove(&labels);
                    }
                };
                match family.name() {
                    "tcplinger_connections_opened_total" => counter(&self.opened),
                    "tcplinger_connections_closed_total" => counter(&self.closed),
                    "tcplinger_connection_lifetime_seconds" => histogram(&self.lifetime),
                    "tcplinger_fin_wait2_seconds" => histogram(&self.fin_wait2),
                    "tcplinger_close_wait_seconds" => histogram(&self.close_wait),
                    "tcplinger_last_ack_seconds" => histogram(&self.last_ack),
                    "tcplinger_time_wait_seconds" => histogram(&self.time_wait),
                    "tcplinger_connection_rtt_seconds" => histogram(&self.rtt),
                    "tcplinger_connect_failures_total" => counter(&self.connect_failed),
                    "tcplinger_retransmitted_segments_total" => counter(&self.retrans),
                    "tcplinger_time_wait_refused_total" => counter(&self.time_wait_refused),
                    "tcplinger_connection_bytes_total" => counter(&self.bytes),
                    _ => {}
                }
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
    pub fn set_losses(
        &mut self,
        host: &HostLosses,
        timewait_unfollowed: u64,
        logs_out_of_step: u64,
        http: [u64; 2],
        history: &HistoryLosses,
    ) {
        let totals = [
            ("kernel_read_failed", host.kernel.failed_runs),
            ("owner_not_recorded", host.kernel.owner_inserts),
            ("unattributed_skipped", host.kernel.unattributed),
            ("timewait_unchecked", host.kernel.timewait_unchecked),
            ("lookup_failed", host.lookups_failed),
            ("dump_failed", host.dumps_failed),
            ("netns_not_found", host.netns_not_found),
            ("cgroup_unknown", host.cgroups_unknown),
            ("host_job_failed", host.jobs_failed),
            ("entry_read_failed", host.entry_reads_failed),
            ("time_wait_unfollowed", timewait_unfollowed),
            ("log_out_of_step", logs_out_of_step),
            ("http_connection_shed", http[0]),
            ("http_accept_failed", http[1]),
            ("history_minute_dropped", history.batches_dropped),
            ("history_write_failed", history.write_failures),
            ("history_connection_not_kept", history.connections_not_kept),
        ];
        self.history_bytes.set(as_gauge(history.bytes));
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
mod tests;
