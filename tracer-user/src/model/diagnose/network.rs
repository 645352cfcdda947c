//! Whether the network can explain what a finding shows: RTT and retransmissions of the connections behind it, in evidence and in one sentence.

use super::{
    NET_RETRANS_SHARE, NET_RTT_SHARE_OF_WAIT,
    finding::{Figure, pct, rtt_dur, rtt_ms},
};
use crate::model::aggregate::Stats;

/// Whether the network can explain a wait of `wait_ms` over the closes of
/// `s`: their RTT and retransmissions as evidence, and a sentence saying
/// so (empty when no close carried the figures).
pub(super) fn network_closes(
    s: &Stats,
    wait_ms: f64,
    evidence: &mut Vec<(&'static str, Figure)>,
) -> String {
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
pub(super) fn network_awaiting(
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
