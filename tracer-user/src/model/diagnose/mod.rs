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

mod finding;
mod network;
mod rules;
mod thresholds;

pub use finding::{Figure, Finding, Pathology, Who, process_short, process_words, remote_of};
pub use thresholds::*;

use crate::model::aggregate::{Aggregator, Group, GroupKey, Stats, ratio};
use finding::{PIDS_SHOWN, far_end};
use rules::{
    client_timeout_stuck_server, close_wait_leak, connect_failures, deadline_pooled, leaked_idle,
    no_reuse, server_closes, unanswered_requests,
};

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

#[cfg(test)]
mod tests;
