//! What a group saw happen over some time (one bucket, or a window merged): opens, closes by who closed first, lingers, how connections were used and what the network did.

use tracer_common::TcpState;

use super::{ONE_REQUEST_SEGS, PROMPT_MS};
use crate::model::{
    dist::Dist,
    tracker::{ClosedBy, ConnRecord, ConnectFailure, Role},
};

/// What a group saw happen over some time: one bucket, or a window of them
/// merged.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub opened: u64,
    pub closed: u64,
    /// Closed connections by [`ClosedBy`] (indexed by its discriminant).
    closed_by: [u64; ClosedBy::COUNT],
    /// Closed connections that went on to TIME_WAIT here.
    pub time_wait_closes: u64,
    /// Closed connections that owed a TIME_WAIT here and got none: the
    /// kernel's TIME_WAIT table was full. Not in `time_wait_closes`.
    #[serde(default)]
    pub time_wait_refused: u64,
    pub incomplete: u64,
    /// Closes whose first closing act carried the TCP socket's figures.
    pub with_figures: u64,
    /// Of those, the ones whose first closing act came within
    /// [`PROMPT_MS`] of the last data, by who closed first.
    prompt: [u64; ClosedBy::COUNT],
    /// Of those, the ones that carried one request, answered, and ended
    /// right after it: a connection used for a single exchange.
    pub one_exchange: u64,
    /// Closes with a known lifetime (the opening was seen).
    pub timed: u64,
    /// Of those with figures and a known lifetime, the ones closed while in
    /// use: data moved in the last half of their life.
    pub busy: u64,
    /// Lifetimes of connections whose opening was seen.
    pub lifetime: Dist,
    pub fin_wait2: Dist,
    pub close_wait: Dist,
    pub last_ack: Dist,
    pub time_wait: Dist,
    /// Connect attempts that never completed their handshake, by
    /// [`ConnectFailure`] (indexed by its discriminant). Not in `closed`:
    /// they never were connections.
    #[serde(default)]
    connect_failed: [u64; ConnectFailure::COUNT],
    /// SYN retransmissions of those failed attempts.
    #[serde(default)]
    pub failed_syn_retrans: u64,
    /// Closes that carried the socket's figures at its end.
    #[serde(default)]
    pub with_net: u64,
    /// Of those, the ones that retransmitted at least one segment.
    #[serde(default)]
    pub retrans_conns: u64,
    /// Segments retransmitted, in all (SYNs included).
    #[serde(default)]
    pub retrans_segs: u64,
    /// Bytes sent and acknowledged by the peer, and bytes received, in all.
    #[serde(default)]
    pub bytes_acked: u64,
    #[serde(default)]
    pub bytes_received: u64,
    /// Smoothed RTT of each connection at its end (those with a sample).
    #[serde(default)]
    pub rtt: Dist,
}

impl Stats {
    /// Failed connect attempts for `reason`.
    pub fn connect_failed(&self, reason: ConnectFailure) -> u64 {
        self.connect_failed[reason as usize]
    }

    /// Failed connect attempts, whatever the reason.
    pub fn connects_failed(&self) -> u64 {
        self.connect_failed.iter().sum()
    }

    /// Share of closes with figures that retransmitted, 0 when none.
    pub fn retrans_share(&self) -> f64 {
        ratio(self.retrans_conns, self.with_net)
    }

    pub fn closed_by(&self, by: ClosedBy) -> u64 {
        self.closed_by[by as usize]
    }

    /// Share of closed connections closed `by`, 0 when none closed.
    pub fn share(&self, by: &[ClosedBy]) -> f64 {
        ratio(by.iter().map(|b| self.closed_by(*b)).sum(), self.closed)
    }

    /// Prompt closes (see [`Self::prompt`]) whose first act was `by`.
    pub fn prompt_by(&self, by: ClosedBy) -> u64 {
        self.prompt[by as usize]
    }

    pub fn prompt(&self) -> u64 {
        self.prompt.iter().sum()
    }

    /// Nothing was counted.
    pub fn is_empty(&self) -> bool {
        *self == Stats::default()
    }

    pub fn merge(&mut self, o: &Stats) {
        self.opened += o.opened;
        self.closed += o.closed;
        for (a, b) in self.closed_by.iter_mut().zip(o.closed_by) {
            *a += b;
        }
        for (a, b) in self.prompt.iter_mut().zip(o.prompt) {
            *a += b;
        }
        self.time_wait_closes += o.time_wait_closes;
        self.time_wait_refused += o.time_wait_refused;
        self.incomplete += o.incomplete;
        self.with_figures += o.with_figures;
        self.one_exchange += o.one_exchange;
        self.timed += o.timed;
        self.busy += o.busy;
        self.lifetime.merge(&o.lifetime);
        self.fin_wait2.merge(&o.fin_wait2);
        self.close_wait.merge(&o.close_wait);
        self.last_ack.merge(&o.last_ack);
        self.time_wait.merge(&o.time_wait);
        for (a, b) in self.connect_failed.iter_mut().zip(o.connect_failed) {
            *a += b;
        }
        self.failed_syn_retrans += o.failed_syn_retrans;
        self.with_net += o.with_net;
        self.retrans_conns += o.retrans_conns;
        self.retrans_segs += o.retrans_segs;
        self.bytes_acked += o.bytes_acked;
        self.bytes_received += o.bytes_received;
        self.rtt.merge(&o.rtt);
    }

    pub(super) fn on_record(&mut self, r: &ConnRecord) {
        if let Some(reason) = r.connect_failed {
            self.connect_failed[reason as usize] += 1;
            self.failed_syn_retrans += r.net.map_or(0, |n| u64::from(n.retrans));
            return;
        }
        if let Some(n) = r.net {
            self.with_net += 1;
            if n.retrans > 0 {
                self.retrans_conns += 1;
            }
            self.retrans_segs += u64::from(n.retrans);
            self.bytes_acked += n.bytes_acked;
            self.bytes_received += n.bytes_received;
            if n.srtt_us > 0 {
                self.rtt.record(u64::from(n.srtt_us) * 1_000);
            }
        }
        self.closed += 1;
        self.closed_by[r.closed_by as usize] += 1;
        if r.time_wait {
            self.time_wait_closes += 1;
        }
        if r.time_wait_refused {
            self.time_wait_refused += 1;
        }
        if !r.complete {
            self.incomplete += 1;
        }
        if r.opened_seen {
            self.timed += 1;
            self.lifetime.record(r.lifetime_ns);
        }
        for (state, dist) in [
            (TcpState::FinWait2, &mut self.fin_wait2),
            (TcpState::CloseWait, &mut self.close_wait),
            (TcpState::LastAck, &mut self.last_ack),
        ] {
            if let Some(ns) = r.states.get(state) {
                dist.record(ns);
            }
        }
        if let Some(t) = r.tcp {
            self.with_figures += 1;
            let quiet_ms = t.send_age_ms.min(t.recv_age_ms);
            let prompt = quiet_ms <= PROMPT_MS;
            if prompt {
                self.prompt[r.closed_by as usize] += 1;
            }
            // The request goes one way, the answer the other; the answer
            // came last.
            let (requests, answers, answer_age, request_age) = match r.role {
                Role::Server => (t.segs_in, t.segs_out, t.send_age_ms, t.recv_age_ms),
                _ => (t.segs_out, t.segs_in, t.recv_age_ms, t.send_age_ms),
            };
            if prompt
                && r.role != Role::Unknown
                && (1..=ONE_REQUEST_SEGS).contains(&requests)
                && answers > 0
                && answer_age <= request_age
            {
                self.one_exchange += 1;
            }
            if r.opened_seen && u64::from(quiet_ms) * 2_000_000 < r.lifetime_ns {
                self.busy += 1;
            }
        }
    }
}

/// `part / whole`, 0 when `whole` is 0.
pub fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}
