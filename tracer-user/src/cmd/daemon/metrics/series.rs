//! The series behind the metrics: what a connection's and a gauge's series are told apart by, their cached handles, their label lists and the registration helpers.

use std::net::IpAddr;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use crate::model::{
    aggregate::GroupKey,
    event::Comm,
    tracker::{ClosedBy, ConnId, ConnectFailure, Role},
};

/// A process name as its label value (empty when no process was seen).
pub(super) fn comm_name(comm: Option<Comm>) -> String {
    comm.map_or_else(String::new, |c| c.to_string())
}

/// A count as an integer gauge's value (saturating; no count comes near).
pub(super) fn as_gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Whom a socket gauge counts: processes by name (a pid label would make
/// a series per short-lived process; findings name the pids instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct GaugeKey {
    pub(super) comm: Option<Comm>,
    pub(super) cgroup_id: u64,
}

impl GaugeKey {
    pub(super) fn of(id: &ConnId) -> Self {
        Self {
            comm: id.owner.map(|o| o.comm),
            cgroup_id: id.owner.map_or(0, |o| o.cgroup_id),
        }
    }
}

/// Connection keys whose series handles are kept; beyond it the cache
/// starts over (a bound for hosts talking to very many endpoints).
pub(super) const SERIES_CACHE: usize = 16_384;

/// (process name, role) keys whose histogram handles are kept. The key is
/// the raw name, so names beyond [`LINGERS_KEPT`] (folded into one `other`
/// series per role) would each add an entry; beyond this the cache starts
/// over. Every pair with a slot fits, with room to spare.
pub(super) const LINGER_CACHE: usize = 1024;

/// What a connection's series are told apart by, before labels are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct ConnKey {
    pub(super) comm: Option<Comm>,
    pub(super) role: Role,
    /// `None` for a server: its series are per listening port.
    pub(super) peer: Option<IpAddr>,
    pub(super) port: u16,
    pub(super) cgroup_id: u64,
}

impl ConnKey {
    pub(super) fn of(id: &ConnId) -> Self {
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
pub(super) struct ConnSeries {
    pub(super) labels: [String; 9],
    /// The budgets that were full when the labels were made (indexed by
    /// [`Budgeted`]): its closes are counted as folded.
    pub(super) folded: [bool; 3],
    /// Last increment (boot ns): keeps its label values' slots.
    pub(super) used_ns: u64,
    pub(super) opened: Option<IntCounter>,
    pub(super) closed: [Option<IntCounter>; ClosedBy::COUNT],
    pub(super) failed: [Option<IntCounter>; ConnectFailure::COUNT],
    pub(super) retrans: Option<IntCounter>,
    pub(super) time_wait_refused: Option<IntCounter>,
    /// Bytes acknowledged by the peer, and received.
    pub(super) bytes: [Option<IntCounter>; 2],
}

/// The histograms of one (comm, role).
pub(super) struct LingerSeries {
    /// Last observation (boot ns): keeps its comm's slot.
    pub(super) used_ns: u64,
    /// Its comm is counted under `other`: the linger budget was full.
    pub(super) folded: bool,
    pub(super) lifetime: Histogram,
    pub(super) fin_wait2: Histogram,
    pub(super) close_wait: Histogram,
    pub(super) last_ack: Histogram,
    pub(super) time_wait: Histogram,
    pub(super) rtt: Histogram,
}

/// Labels of a connection's series.
pub(super) const CONN_LABELS: [&str; 9] = [
    "comm",
    "role",
    "remote_addr",
    "port",
    "container_id",
    "pod_uid",
    "namespace",
    "pod",
    "container",
];

/// What a container's labels say, in this order: its ids as the cgroup
/// path gives them, its Kubernetes names as the node does.
pub(super) type ContainerLabels = [String; 5];

/// The connection labels with `name` third, as `closed_by` is.
pub(super) fn with_label(name: &'static str) -> [&'static str; 10] {
    let [comm, role, rest @ ..] = CONN_LABELS;
    let mut out = [name; 10];
    out[0] = comm;
    out[1] = role;
    out[3..].copy_from_slice(&rest);
    out
}

pub(super) fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(v.clone()))
        .expect("unique metric");
    v
}

pub(super) fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
) -> HistogramVec {
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

pub(super) fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

pub(super) fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

/// A connection's labels with `value` third (see [`with_label`]).
pub(super) fn labelled<'a>(labels: &'a [String; 9], value: &'a str) -> [&'a str; 10] {
    let [comm, role, addr, port, cid, uid, namespace, pod, name] = labels;
    [
        comm, role, value, addr, port, cid, uid, namespace, pod, name,
    ]
}
