//! Each rule fires on its pattern, built through the aggregator as the tracer would feed it, and stays silent on healthy traffic.

use tracer_common::TcpState;

use super::*;
use crate::{
    aggregate::{
        Aggregator,
        tests::{MS, id, live, record},
    },
    tracker::ConnId,
};

const WINDOW_S: f64 = 30.0;

fn findings(a: &Aggregator) -> Vec<Finding> {
    diagnose(a.groups(), WINDOW_S)
}

fn only(a: &Aggregator, pathology: Pathology) -> Finding {
    let all = findings(a);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].pathology, pathology, "{all:#?}");
    all.into_iter().next().unwrap()
}

fn closes(
    a: &mut Aggregator,
    id: ConnId,
    n: u64,
    by: ClosedBy,
    lifetime_ms: u64,
    fin_wait2_ms: Option<u64>,
) {
    for _ in 0..n {
        a.on_opened(&id);
        a.on_record(&record(id, by, lifetime_ms, fin_wait2_ms));
    }
}

/// Keep-alive traffic: a few long connections busy with requests, the odd
/// close from either side, normal lingers.
fn healthy(a: &mut Aggregator, now_ms: u64) {
    let client = id(10, Role::Client, 443);
    let server = id(11, Role::Server, 60000);
    let busy = Some((Some(now_ms - 50), Some(now_ms - 40)));
    let live_now: Vec<_> = (0..8)
        .flat_map(|i| {
            [
                live(client, i, TcpState::Established, 0, busy),
                live(server, 100 + i, TcpState::Established, 0, busy),
            ]
        })
        .collect();
    a.observe(live_now, now_ms * MS);
    closes(a, client, 3, ClosedBy::Local, 45_000, Some(1));
    closes(a, client, 2, ClosedBy::Remote, 12_000, None);
    let mut r = record(server, ClosedBy::Remote, 30_000, None);
    r.states = r.states.with(TcpState::CloseWait, 2 * MS);
    a.on_record(&r);
}

#[test]
fn healthy_keep_alive_traffic_has_no_findings() {
    let mut a = Aggregator::new(100, 0);
    a.observe([], 0);
    healthy(&mut a, 100_000);
    assert_eq!(findings(&a), vec![]);
}

#[test]
fn client_timeout_racing_a_stuck_server_on_both_sides() {
    let mut a = Aggregator::new(100, 0);
    let client = id(1, Role::Client, 8080);
    closes(&mut a, client, 5, ClosedBy::Local, 1_000, Some(2_000));
    let f = only(&a, Pathology::ClientTimeoutStuckServer);
    assert_eq!(f.key.pid, Some(1));
    assert_eq!(f.key.remote(), "10.0.0.2:8080");
    assert!(
        matches!(f.figure("fin_wait2_p50_ms"), Some(Figure::Ms(v)) if (v - 2000.0).abs() <= 10.0),
        "{f:?}"
    );
    assert_eq!(
        f.figure("closed_by_local_pct"),
        Some(&Figure::Percent(100.0))
    );

    let mut a = Aggregator::new(100, 0);
    let server = id(2, Role::Server, 50000);
    for _ in 0..5 {
        let mut r = record(server, ClosedBy::Remote, 3_000, None);
        r.states = r.states.with(TcpState::CloseWait, 2_000 * MS);
        a.on_record(&r);
    }
    let f = only(&a, Pathology::ClientTimeoutStuckServer);
    assert_eq!(f.key.role, Role::Server);
    assert!(f.summary.contains("CLOSE_WAIT"), "{}", f.summary);
}

#[test]
fn client_timeout_needs_a_long_linger_and_enough_closes() {
    let mut a = Aggregator::new(100, 0);
    // Lifetimes spread out, so no deadline either.
    for life in [100, 500, 2_000, 7_000, 30_000] {
        closes(
            &mut a,
            id(1, Role::Client, 8080),
            1,
            ClosedBy::Local,
            life,
            Some(900),
        );
    }
    closes(
        &mut a,
        id(1, Role::Client, 8081),
        2,
        ClosedBy::Local,
        1_000,
        Some(5_000),
    );
    assert_eq!(findings(&a), vec![]);
}

#[test]
fn server_closing_every_connection_seen_from_either_side() {
    let mut a = Aggregator::new(100, 0);
    closes(
        &mut a,
        id(3, Role::Client, 80),
        12,
        ClosedBy::Remote,
        20,
        None,
    );
    let f = only(&a, Pathology::ServerCloses);
    assert_eq!(
        f.figure("closed_by_remote_pct"),
        Some(&Figure::Percent(100.0))
    );

    let mut a = Aggregator::new(100, 0);
    let server = id(4, Role::Server, 50001);
    closes(&mut a, server, 12, ClosedBy::Local, 20, Some(1));
    a.observe(
        (0..12).map(|i| live(server, i, TcpState::TimeWait, 0, None)),
        MS,
    );
    let f = only(&a, Pathology::ServerCloses);
    assert_eq!(f.figure("time_wait_now"), Some(&Figure::Count(12)));
    // 9 of 12 is 75%: below the share.
    let mut a = Aggregator::new(100, 0);
    closes(&mut a, server, 9, ClosedBy::Local, 20, Some(1));
    closes(&mut a, server, 3, ClosedBy::Remote, 20, None);
    assert_eq!(findings(&a), vec![]);
}

#[test]
fn a_connection_per_request() {
    let mut a = Aggregator::new(100, 0);
    closes(
        &mut a,
        id(5, Role::Client, 9000),
        150,
        ClosedBy::Local,
        3,
        Some(1),
    );
    let f = only(&a, Pathology::NoReuse);
    assert_eq!(f.figure("opened_per_s"), Some(&Figure::PerSecond(5.0)));
    // The same volume spread over an hour is no churn.
    assert_eq!(diagnose(a.groups(), 3600.0), vec![]);
}

#[test]
fn leaked_idle_connections_grow() {
    let mut a = Aggregator::new(100, 0);
    let c = id(6, Role::Client, 6379);
    a.observe([live(c, 0, TcpState::Established, 0, None)], 0);
    let answered = Some((Some(1_000), Some(1_001)));
    a.observe(
        (0..21).map(|i| live(c, i, TcpState::Established, 500, answered)),
        20_000 * MS,
    );
    let f = only(&a, Pathology::LeakedIdle);
    assert_eq!(f.figure("established_first"), Some(&Figure::Count(1)));
    assert_eq!(f.figure("established_now"), Some(&Figure::Count(21)));
    assert_eq!(f.figure("idle_pct"), Some(&Figure::Percent(100.0)));
}

#[test]
fn many_but_busy_connections_are_no_leak() {
    let mut a = Aggregator::new(100, 0);
    let c = id(6, Role::Client, 6379);
    a.observe([], 0);
    let busy = Some((Some(19_990), Some(19_995)));
    a.observe(
        (0..30).map(|i| live(c, i, TcpState::Established, 500, busy)),
        20_000 * MS,
    );
    assert_eq!(findings(&a), vec![]);
}

#[test]
fn unanswered_requests_fill_the_pool() {
    let mut a = Aggregator::new(100, 0);
    let c = id(7, Role::Client, 8080);
    let sent = Some((Some(10_000), Some(9_000)));
    a.observe(
        (0..10).map(|i| live(c, i, TcpState::Established, 8_000, sent)),
        13_000 * MS,
    );
    let f = only(&a, Pathology::UnansweredRequests);
    assert_eq!(f.figure("awaiting_reply"), Some(&Figure::Count(10)));
    assert_eq!(f.figure("oldest_wait_ms"), Some(&Figure::Ms(3000.0)));
}

#[test]
fn a_fixed_deadline_on_pooled_connections() {
    let mut a = Aggregator::new(100, 0);
    let c = id(8, Role::Client, 5432);
    for i in 0..6 {
        a.on_opened(&c);
        a.on_record(&record(c, ClosedBy::Local, 3_000 + i * 5, Some(2)));
    }
    let f = only(&a, Pathology::DeadlinePooled);
    assert!(
        matches!(f.figure("lifetime_p50_ms"), Some(Figure::Ms(v)) if (v - 3010.0).abs() < 40.0),
        "{f:?}"
    );
    // Spread-out lifetimes are no deadline.
    let mut a = Aggregator::new(100, 0);
    for (i, life) in [1_000, 3_000, 9_000, 20_000, 40_000, 60_000]
        .into_iter()
        .enumerate()
    {
        let c = id(8, Role::Client, 5432);
        a.on_record(&record(c, ClosedBy::Local, life + i as u64, Some(2)));
    }
    assert_eq!(findings(&a), vec![]);
}

#[test]
fn close_wait_piling_up_and_aging() {
    let mut a = Aggregator::new(100, 0);
    let s = id(9, Role::Server, 50002);
    a.observe(
        (0..4).map(|i| live(s, i, TcpState::CloseWait, 1_000 * i, None)),
        12_000 * MS,
    );
    let f = only(&a, Pathology::CloseWaitLeak);
    assert_eq!(f.figure("close_wait_now"), Some(&Figure::Count(4)));
    assert_eq!(
        f.figure("oldest_close_wait_ms"),
        Some(&Figure::Ms(12_000.0))
    );
    // Young CLOSE_WAITs are just sockets about to be closed.
    a.observe(
        (0..4).map(|i| live(s, i, TcpState::CloseWait, 11_000, None)),
        12_000 * MS,
    );
    assert_eq!(findings(&a), vec![]);
}

#[test]
fn a_server_holding_idle_or_answered_connections_is_not_blamed() {
    let mut a = Aggregator::new(100, 0);
    let s = id(12, Role::Server, 50003);
    a.observe([], 0);
    // Answered last (send after receive), then silent: keep-alive idle.
    let answered = Some((Some(1_001), Some(1_000)));
    a.observe(
        (0..20).map(|i| live(s, i, TcpState::Established, 500, answered)),
        20_000 * MS,
    );
    assert_eq!(findings(&a), vec![]);
    let g = a.groups().next().unwrap().1;
    assert_eq!((g.now.awaiting, g.now.idle), (0, 20));
}

#[test]
fn every_pathology_has_a_brief_line() {
    let mut a = Aggregator::new(100, 0);
    closes(
        &mut a,
        id(1, Role::Client, 8080),
        5,
        ClosedBy::Local,
        1_000,
        Some(2_000),
    );
    let f = only(&a, Pathology::ClientTimeoutStuckServer);
    assert_eq!(
        f.brief(),
        "FIN_WAIT2 p50 2.00s p99 2.00s, 100% closed here first"
    );
    let mut a = Aggregator::new(100, 0);
    let s = id(9, Role::Server, 50002);
    a.observe(
        (0..4).map(|i| live(s, i, TcpState::CloseWait, 1_000 * i, None)),
        12_000 * MS,
    );
    assert_eq!(
        only(&a, Pathology::CloseWaitLeak).brief(),
        "4 in CLOSE_WAIT, oldest 12.00s"
    );
}
