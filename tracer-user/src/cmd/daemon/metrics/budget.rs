//! Label budgets: which values of a label (process names, endpoints, containers, linger pairs) get series of their own, and when an unused one gives its slot back.

use std::collections::{HashMap, HashSet};

use super::OTHER;

/// The labels whose values come and go with the workload, each with a
/// budget of values that get series of their own. Pids are not among them:
/// no metric has a pid label (a series per short-lived process); the
/// findings in the log name the pids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budgeted {
    /// `comm`, [`COMMS_KEPT`] values.
    Comm = 0,
    /// `remote_addr` and `port` together, `--max-endpoints` values.
    Endpoint = 1,
    /// `container_id` and `pod_uid` together, [`CONTAINERS_KEPT`] values.
    Container = 2,
    /// `comm` and `role` of the linger histograms, [`LINGERS_KEPT`] pairs.
    Linger = 3,
}

impl Budgeted {
    pub(super) const ALL: [Self; 4] = [Self::Comm, Self::Endpoint, Self::Container, Self::Linger];

    /// Its value of the `label` label of `tcplinger_connections_folded_total`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Comm => "comm",
            Self::Endpoint => "endpoint",
            Self::Container => "container",
            Self::Linger => "linger",
        }
    }
}

/// The budget key of an endpoint: its two labels as one value.
pub(super) fn endpoint_key(addr: &str, port: &str) -> String {
    format!("{addr}:{port}")
}

/// The budget key of a linger histogram: its process name and role as one
/// value (the role, a fixed word, first).
pub(super) fn linger_key(comm: &str, role: &str) -> String {
    format!("{role}:{comm}")
}

/// The budget key of a container: its two labels as one value.
pub(super) fn container_key(container_id: &str, pod_uid: &str) -> String {
    format!("{container_id}/{pod_uid}")
}

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
    pub(super) admitted: HashMap<String, u64>,
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

    /// `value` if it has (or now gets) a slot, else `other`.
    pub fn label(&mut self, value: &str) -> String {
        if self.admit(value) {
            value.to_string()
        } else {
            OTHER.to_string()
        }
    }

    /// Whether `value` has a slot, giving it one if one is free; either way
    /// it is in use now.
    pub(super) fn admit(&mut self, value: &str) -> bool {
        if let Some(used) = self.admitted.get_mut(value) {
            *used = self.now_ns;
            return true;
        }
        if self.admitted.len() >= self.limit {
            return false;
        }
        self.admitted.insert(value.to_string(), self.now_ns);
        true
    }

    /// Values from now on are used at `now_ns`.
    pub(super) fn at(&mut self, now_ns: u64) {
        self.now_ns = now_ns;
    }

    /// `value`, if it holds a slot, was used at `used_ns`.
    pub(super) fn touch(&mut self, value: &str, used_ns: u64) {
        if let Some(used) = self.admitted.get_mut(value) {
            *used = (*used).max(used_ns);
        }
    }

    /// Gives back the slots of values unused for `stale_ns`; returns them.
    pub(super) fn release_stale(&mut self, stale_ns: u64) -> HashSet<String> {
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
