//! Each rule fires on its pattern, built through the aggregator as the tracer would feed it (with the TCP figures real programs showed at their first closing act), and stays silent on healthy traffic.

use tracer_common::{TcpFigures, TcpState};

use super::*;
use crate::{
    model::aggregate::{Aggregator, Windowing},
    model::diagnose::finding::Severity,
    model::tracker::ConnRecord,
    model::tracker::{ClosedBy, ConnId, ConnectFailure, Role},
    testutil::{MS, figures, id, id_named, live, record},
};

/// A 30-second report's "now".
const NOW_NS: u64 = 30_000 * MS;

fn whole() -> Aggregator {
    Aggregator::new(100, 0, Windowing::WHOLE_RUN)
}

fn findings(a: &Aggregator) -> Vec<Finding> {
    diagnose(a, &[u64::MAX], NOW_NS)
}

fn only(a: &Aggregator, pathology: Pathology) -> Finding {
    let all = findings(a);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].pathology, pathology, "{all:#?}");
    all.into_iter().next().unwrap()
}

/// `n` connections opened and closed `by`, each with these TCP figures.
fn closes(
    a: &mut Aggregator,
    id: ConnId,
    n: u64,
    by: ClosedBy,
    lifetime_ms: u64,
    fin_wait2_ms: Option<u64>,
    tcp: Option<TcpFigures>,
) {
    for _ in 0..n {
        a.on_opened(&id, 0);
        let mut r = record(id, by, lifetime_ms, fin_wait2_ms);
        r.tcp = tcp;
        a.on_record(&r);
    }
}

/// One request answered, then closed at once (0 ms since data moved):
/// what curl, Go and Python clients and servers showed.
#[expect(
    clippy::unnecessary_wraps,
    reason = "fills the optional field it is written into"
)]
fn one_exchange() -> Option<TcpFigures> {
    Some(figures(0, 0, 1, 1))
}

/// Keep-alive traffic: a few long connections busy with requests, the odd
/// close from either side after an idle timeout, normal lingers.
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
    let idle = Some(figures(90_000, 90_000, 300, 300));
    closes(a, client, 3, ClosedBy::Local, 45_000, Some(1), idle);
    closes(a, client, 2, ClosedBy::Remote, 12_000, None, idle);
    let mut r = record(server, ClosedBy::Remote, 30_000, None);
    r.states = r.states.with(TcpState::CloseWait, 2 * MS);
    r.tcp = idle;
    a.on_record(&r);
}

#[test]
fn healthy_keep_alive_traffic_has_no_findings() {
    let mut a = whole();
    a.observe([], 0);
    healthy(&mut a, 100_000);
    assert_eq!(findings(&a), vec![]);
}

#[test]
fn client_timeout_racing_a_stuck_server_on_both_sides() {
    let mut a = whole();
    // Go Client.Timeout 1 s against a 3 s handler: the request sent, no
    // answer (0 segments in), closed 1 s later.
    let gave_up = Some(figures(1_000, 1_000, 1, 0));
    closes(
        &mut a,
        id(1, Role::Client, 8080),
        5,
        ClosedBy::Local,
        1_000,
        Some(2_000),
        gave_up,
    );
    let f = only(&a, Pathology::ClientTimeoutStuckServer);
    assert_eq!(f.who.pid, Some(1));
    assert_eq!(f.key.endpoint(), "10.0.0.2:8080");
    assert!(
        matches!(f.figure("fin_wait2_p50_ms"), Some(Figure::Ms(v)) if (v - 2000.0).abs() <= 25.0),
        "{f:#?}"
    );
    assert!(f.summary.contains("app (pid 1)"), "{}", f.summary);

    let mut a = whole();
    let server = id(2, Role::Server, 50000);
    for _ in 0..4 {
        let mut r = record(server, ClosedBy::Remote, 3_000, None);
        r.states = r.states.with(TcpState::CloseWait, 2_000 * MS);
        r.tcp = Some(figures(1_000, 1_000, 0, 1));
        a.on_record(&r);
    }
    let f = only(&a, Pathology::ClientTimeoutStuckServer);
    assert_eq!(f.key.role, Role::Server);
    assert_eq!(f.remote(), "10.0.0.2:*", "one client address");
    assert!(
        f.summary
            .starts_with("The clients at 10.0.0.2 of :8080 close first"),
        "{}",
        f.summary
    );
}

#[test]
fn a_server_closing_right_after_answering_whoever_wins_the_race() {
    // nginx keepalive_timeout 0 with curl: the server's FIN came first on
    // 39% (20-57% over runs), the rest the client's, all right after the
    // answer.
    for server_first in [20u64, 39, 57, 86] {
        let mut a = whole();
        let s = id(3, Role::Server, 50000);
        closes(
            &mut a,
            s,
            server_first,
            ClosedBy::Local,
            1,
            None,
            one_exchange(),
        );
        closes(
            &mut a,
            s,
            100 - server_first,
            ClosedBy::Remote,
            1,
            None,
            one_exchange(),
        );
        let f = only(&a, Pathology::ServerCloses);
        assert!(
            matches!(f.figure("closed_by_local_pct"), Some(Figure::Percent(p)) if (*p - server_first as f64).abs() < 0.1),
            "{f:#?}"
        );
        assert!(
            matches!(f.figure("prompt_close_pct"), Some(Figure::Percent(p)) if (*p - 100.0).abs() < 1e-9)
        );
        assert_eq!(f.severity(), Severity::Notice);
    }
}

#[test]
fn a_keep_alive_server_is_not_said_to_close() {
    // nginx with keep-alive and curl (a process per request): curl closes
    // right after its answer, every time: the server never closes first.
    let mut a = whole();
    closes(
        &mut a,
        id(4, Role::Server, 50000),
        200,
        ClosedBy::Remote,
        1,
        None,
        one_exchange(),
    );
    assert_eq!(findings(&a), vec![]);
    // nginx timing out idle clients after 1 s: the server closes first,
    // but a second after the last exchange.
    let mut a = whole();
    let idle = Some(figures(1_000, 1_000, 1, 1));
    closes(
        &mut a,
        id(5, Role::Server, 50000),
        50,
        ClosedBy::Local,
        1_002,
        None,
        idle,
    );
    assert_eq!(findings(&a), vec![]);
}

#[test]
fn a_client_opening_a_connection_per_request_whoever_closes() {
    // Go with DisableKeepAlives: the server closed 71% first.
    let mut a = whole();
    let c = id(6, Role::Client, 8080);
    closes(&mut a, c, 58, ClosedBy::Local, 1, None, one_exchange());
    closes(&mut a, c, 142, ClosedBy::Remote, 1, None, one_exchange());
    let f = only(&a, Pathology::NoReuse);
    assert!(
        matches!(f.figure("one_exchange_pct"), Some(Figure::Percent(p)) if (*p - 100.0).abs() < 1e-9)
    );
    assert!(
        f.summary.contains("the server closed 71% of them first"),
        "{}",
        f.summary
    );
    // curl in a loop: 200 processes, one row, one finding.
    let mut a = whole();
    for pid in 1000..1200 {
        closes(
            &mut a,
            id_named(pid, "curl", Role::Client, 80),
            1,
            ClosedBy::Local,
            1,
            None,
            one_exchange(),
        );
    }
    let f = only(&a, Pathology::NoReuse);
    assert_eq!(f.who.processes, 200);
    assert_eq!(f.process_short(), "curl ×200");
    assert!(
        f.summary.starts_with("curl (200 processes) opens"),
        "{}",
        f.summary
    );
    assert!(f.summary.contains("reuse connections"), "{}", f.summary);
}

#[test]
fn slow_or_pooled_clients_are_not_no_reuse() {
    // Fewer than 2 a second over the window.
    let mut a = whole();
    closes(
        &mut a,
        id(7, Role::Client, 8080),
        30,
        ClosedBy::Local,
        1,
        None,
        one_exchange(),
    );
    assert!(diagnose(&a, &[u64::MAX], 60_000 * MS).is_empty());
    // A pool whose connections carried many requests.
    let mut a = whole();
    let reused = Some(figures(0, 0, 20, 20));
    closes(
        &mut a,
        id(8, Role::Client, 8080),
        100,
        ClosedBy::Local,
        200,
        None,
        reused,
    );
    assert_eq!(findings(&a), vec![]);
}

#[test]
fn a_deadline_on_pooled_connections_despite_one_cut_short() {
    // Go, SetDeadline(3 s) once in Dial, 100 ms handler: 8 connections
    // lived 3.0 s and were closed mid-request (76 ms since data moved, 30
    // requests each); the last was cut short when the server exited.
    let mut a = whole();
    let c = id(9, Role::Client, 8080);
    closes(
        &mut a,
        c,
        8,
        ClosedBy::Local,
        3_020,
        Some(1),
        Some(figures(76, 76, 30, 29)),
    );
    closes(
        &mut a,
        c,
        1,
        ClosedBy::Remote,
        1_011,
        None,
        Some(figures(4, 4, 10, 10)),
    );
    let f = only(&a, Pathology::DeadlinePooled);
    assert!(
        matches!(f.figure("lifetime_p50_ms"), Some(Figure::Ms(v)) if (v - 3020.0).abs() <= 35.0),
        "{f:#?}"
    );
    assert!(
        matches!(f.figure("clustered_pct"), Some(Figure::Percent(p)) if (*p - 88.9).abs() < 0.1)
    );
}

#[test]
fn a_slow_answer_per_connection_or_an_idle_timeout_is_no_deadline() {
    // A connection per request to a server that takes 1.5 s: closed right
    // after each answer.
    let mut a = whole();
    closes(
        &mut a,
        id(10, Role::Client, 8080),
        10,
        ClosedBy::Local,
        1_500,
        Some(1),
        one_exchange(),
    );
    assert_eq!(findings(&a), vec![]);
    // A pool closing connections idle for 5 s (one request each).
    let mut a = whole();
    let idle = Some(figures(4_990, 4_990, 1, 1));
    closes(
        &mut a,
        id(11, Role::Client, 8080),
        10,
        ClosedBy::Local,
        5_002,
        Some(1),
        idle,
    );
    assert_eq!(findings(&a), vec![]);
}

#[test]
fn lifetimes_of_connections_older_than_the_tracer_prove_nothing() {
    // 8 idle connections opened before the tracer, closed when their
    // process exits 9.21 s after it started: their lifetime is unknown.
    let mut a = whole();
    let c = id(12, Role::Client, 8080);
    for _ in 0..8 {
        let mut r = record(c, ClosedBy::Local, 9_210, Some(1));
        r.opened_seen = false;
        r.complete = false;
        r.tcp = Some(figures(9_000, 9_000, 3, 3));
        a.on_record(&r);
    }
    assert_eq!(findings(&a), vec![]);
}

#[test]
fn leaked_idle_connections_grow() {
    let mut a = whole();
    let c = id(13, Role::Client, 6379);
    a.observe([live(c, 1, TcpState::Established, 0, None)], 0);
    let idle = Some((Some(1_000), Some(1_001)));
    a.observe(
        (0..20).map(|i| live(c, i, TcpState::Established, 500, idle)),
        10_000 * MS,
    );
    let f = only(&a, Pathology::LeakedIdle);
    assert_eq!(f.figure("established_first"), Some(&Figure::Count(1)));
    assert_eq!(f.figure("established_now"), Some(&Figure::Count(20)));
    assert_eq!(f.who.pid, Some(13));
    assert_eq!(f.severity(), Severity::Critical);
}

#[test]
fn unanswered_requests_fill_the_pool() {
    let mut a = whole();
    let c = id(14, Role::Client, 8080);
    let sent = Some((Some(5_000), Some(1_000)));
    a.observe(
        (0..16).map(|i| live(c, i, TcpState::Established, 900, sent)),
        12_000 * MS,
    );
    let f = only(&a, Pathology::UnansweredRequests);
    assert_eq!(f.figure("awaiting_reply"), Some(&Figure::Count(16)));
    assert!(matches!(f.figure("oldest_wait_ms"), Some(Figure::Ms(v)) if (v - 7000.0).abs() < 1.0));
}

#[test]
fn a_close_wait_leak_names_the_process_holding_the_sockets() {
    let mut a = whole();
    // A prefork server: the child (pid 21) holds the leaked sockets; the
    // parent (pid 20) holds only the listener.
    let child = id_named(21, "python3", Role::Server, 40000);
    a.observe(
        (0..10).map(|i| live(child, i, TcpState::CloseWait, 1_000, None)),
        12_000 * MS,
    );
    let f = only(&a, Pathology::CloseWaitLeak);
    assert_eq!(f.who.pid, Some(21));
    assert_eq!(f.figure("close_wait_now"), Some(&Figure::Count(10)));
    assert!(
        f.summary
            .starts_with("python3 (pid 21) has 10 sockets with the clients at 10.0.0.2 of :8080"),
        "{}",
        f.summary
    );
}

#[test]
fn the_daemon_judges_a_burst_after_hours_on_its_last_minute() {
    // 200 new connections in 19 s, after 105 s of quiet uptime (the burst
    // starts half-way through a 10-s bucket).
    let spans = [300_000 * MS, 60_000 * MS];
    let mut a = Aggregator::new(100, 0, Windowing::sliding(10_000 * MS, 310_000 * MS));
    let c = id(15, Role::Client, 8080);
    for i in 0..200u64 {
        let at = 105_000 * MS + i * 95 * MS;
        a.on_opened(&c, at);
        let mut r = record(c, ClosedBy::Local, 1, None);
        r.end_ns = at;
        r.tcp = one_exchange();
        a.on_record(&r);
    }
    let now = 125_000 * MS;
    let f = diagnose(&a, &spans, now);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].pathology, Pathology::NoReuse);
    assert!(f[0].window_s <= 125.0, "{}", f[0].window_s);
    // The rate is the burst's, counted from its first opening: 200 over
    // the 20 s since (from its bucket's start it would read 8/s).
    let Some(Figure::PerSecond(rate)) = f[0].figure("opened_per_s") else {
        panic!("{f:#?}");
    };
    assert!((9.9..=10.1).contains(rate), "{rate}/s");
    // An hour later the burst is over: so is the finding, and the group.
    let later = now + 3_600_000 * MS;
    a.expire(later);
    assert_eq!(diagnose(&a, &spans, later), vec![]);
    assert_eq!(a.groups().count(), 0);
}

#[test]
fn a_stuck_handler_after_a_day_of_healthy_traffic_is_found_within_a_minute() {
    let spans = [300_000 * MS, 60_000 * MS];
    let sliding = Windowing::sliding(10_000 * MS, 310_000 * MS);
    let (mut a, mut whole) = (Aggregator::new(100, 0, sliding), whole());
    let s = id(16, Role::Server, 50000);
    let feed = |a: &mut Aggregator, whole: &mut Aggregator, r: &ConnRecord| {
        a.on_record(r);
        whole.on_record(r);
    };
    // A day of healthy closes, one a second: CLOSE_WAIT of a microsecond.
    let day = 86_400_000 * MS;
    let mut at = 0;
    while at < day {
        let mut r = record(s, ClosedBy::Remote, 5, None);
        r.end_ns = at;
        r.states = r.states.with(TcpState::CloseWait, 1_000);
        feed(&mut a, &mut whole, &r);
        at += 1_000 * MS;
    }
    // Then the handler gets stuck: every close has 3 s of CLOSE_WAIT.
    let mut found_after = None;
    for i in 0..60u64 {
        let mut r = record(s, ClosedBy::Remote, 4_000, None);
        r.end_ns = day + i * 2_000 * MS;
        r.states = r.states.with(TcpState::CloseWait, 3_000 * MS);
        feed(&mut a, &mut whole, &r);
        let now = r.end_ns;
        a.expire(now);
        let f = diagnose(&a, &spans, now);
        if found_after.is_none() && !f.is_empty() {
            assert_eq!(
                f[0].pathology,
                Pathology::ClientTimeoutStuckServer,
                "{f:#?}"
            );
            found_after = Some((now - day) / MS);
        }
    }
    let found_after = found_after.expect("found on the recent window");
    assert!(
        found_after <= 70_000,
        "found {found_after} ms after the onset"
    );
    // Judged on everything since the start, a day of healthy closes
    // drowns it.
    assert_eq!(diagnose(&whole, &[u64::MAX], day + 120_000 * MS), vec![]);
}

#[test]
fn groups_folded_beyond_the_cap_are_judged_too() {
    let mut a = Aggregator::new(1, 0, Windowing::WHOLE_RUN);
    let first = id_named(30, "busy", Role::Client, 443);
    a.observe([live(first, 1, TcpState::Established, 0, None)], MS);
    let leaker = id_named(31, "leaker", Role::Server, 50000);
    a.observe(
        std::iter::once(live(first, 1, TcpState::Established, 0, None))
            .chain((10..20).map(|i| live(leaker, i, TcpState::CloseWait, 0, None))),
        10_000 * MS,
    );
    assert!(a.folded() > 0);
    let f = only(&a, Pathology::CloseWaitLeak);
    assert!(f.key.is_other());
    assert!(
        f.summary.contains("folded beyond --max-groups"),
        "{}",
        f.summary
    );
}

#[test]
fn findings_are_most_urgent_first() {
    let mut a = whole();
    let s = id(40, Role::Server, 50000);
    closes(&mut a, s, 50, ClosedBy::Local, 1, None, one_exchange());
    let leaker = id_named(41, "leaker", Role::Server, 50001);
    a.observe(
        (0..5).map(|i| live(leaker, i, TcpState::CloseWait, 0, None)),
        10_000 * MS,
    );
    let all = findings(&a);
    let order: Vec<Pathology> = all.iter().map(|f| f.pathology).collect();
    assert_eq!(
        order,
        vec![Pathology::CloseWaitLeak, Pathology::ServerCloses]
    );
}

#[test]
fn closes_without_tcp_figures_are_not_judged_on_them() {
    let mut a = whole();
    closes(
        &mut a,
        id(50, Role::Server, 50000),
        50,
        ClosedBy::Local,
        1,
        None,
        None,
    );
    closes(
        &mut a,
        id(51, Role::Client, 8080),
        100,
        ClosedBy::Local,
        1,
        None,
        None,
    );
    assert_eq!(findings(&a), vec![]);
}

/// A close's network figures: `retrans` segments retransmitted, RTT `rtt_us`.
fn net(retrans: u32, rtt_us: u32) -> tracer_common::NetFigures {
    crate::testutil::at_close(120, 400, rtt_us, retrans, 0)
}

/// The Go deadline story: 3 s lifetimes closed by the client while in use.
fn deadline_closes(a: &mut Aggregator, figures_at_end: impl Fn(u64) -> tracer_common::NetFigures) {
    let c = id(30, Role::Client, 8080);
    for i in 0..8 {
        a.on_opened(&c, 0);
        let mut r = record(c, ClosedBy::Local, 3_020, Some(1));
        r.tcp = Some(figures(20, 20, 30, 30));
        r.net = Some(figures_at_end(i));
        a.on_record(&r);
    }
}

#[test]
fn a_timed_finding_says_whether_the_network_explains_the_wait() {
    // Loopback: no retransmission, a 41 µs RTT against a 3 s deadline.
    let mut a = whole();
    deadline_closes(&mut a, |_| net(0, 41));
    let f = only(&a, Pathology::DeadlinePooled);
    assert_eq!(f.figure("retrans_pct"), Some(&Figure::Percent(0.0)));
    assert_eq!(f.figure("retrans_segments"), Some(&Figure::Count(0)));
    assert!(matches!(f.figure("rtt_p50_ms"), Some(Figure::Ms(v)) if (v - 0.041).abs() < 0.002));
    assert!(
        f.summary.ends_with(
            " Not the network: RTT p50 0.041ms, 0 of 8 connections retransmitted: the wait is in the application."
        ),
        "{}",
        f.summary
    );
    // Half of them retransmitted: the network may explain it.
    let mut a = whole();
    deadline_closes(&mut a, |i| net(if i % 2 == 0 { 4 } else { 0 }, 41));
    let f = only(&a, Pathology::DeadlinePooled);
    assert_eq!(f.figure("retrans_segments"), Some(&Figure::Count(16)));
    assert!(
        f.summary.contains(" The network may explain part of the wait: 4 of 8 connections retransmitted (16 segments)"),
        "{}",
        f.summary
    );
    // No retransmission, but an RTT of a third of a second against 3 s.
    let mut a = whole();
    deadline_closes(&mut a, |_| net(0, 330_000));
    let f = only(&a, Pathology::DeadlinePooled);
    assert!(
        f.summary.contains("The network may explain"),
        "{}",
        f.summary
    );
    // Without the figures (an older kernel layout or recording): no claim.
    let mut a = whole();
    closes(
        &mut a,
        id(30, Role::Client, 8080),
        8,
        ClosedBy::Local,
        3_020,
        Some(1),
        Some(figures(20, 20, 30, 30)),
    );
    let f = only(&a, Pathology::DeadlinePooled);
    assert!(!f.summary.contains("network"), "{}", f.summary);
    assert_eq!(f.figure("retrans_pct"), None);
}

#[test]
fn unanswered_requests_say_whether_the_peer_acknowledged_them() {
    let c = id(14, Role::Client, 8080);
    let sent = Some((Some(5_000), Some(1_000)));
    for (unacked, retrans, says) in [
        (
            0,
            0,
            " Not the network: the peer's TCP acknowledged every request (RTT p50 0.050ms, no retransmission): its application does not answer.",
        ),
        (
            1,
            3,
            " The network may be involved: 16 of 16 requests not yet acknowledged by the peer's TCP, 48 retransmissions, RTT p50 0.050ms; check the path and the peer's host.",
        ),
    ] {
        let mut a = whole();
        a.observe(
            (0..16).map(|i| {
                let mut s = live(c, i, TcpState::Established, 900, sent);
                s.io = s.io.map(|io| crate::model::aggregate::LastIo {
                    net: Some(crate::model::aggregate::LiveNet {
                        unacked,
                        retrans,
                        rtt_us: 50,
                    }),
                    ..io
                });
                s
            }),
            12_000 * MS,
        );
        let f = only(&a, Pathology::UnansweredRequests);
        assert!(f.summary.ends_with(says), "{}", f.summary);
        assert_eq!(
            f.figure("unacked_requests"),
            Some(&Figure::Count(if unacked > 0 { 16 } else { 0 }))
        );
    }
}

/// `n` connect attempts of `c` that failed for `reason`, with `syns` SYN
/// retransmissions each.
fn failed_connects(a: &mut Aggregator, c: ConnId, n: u64, reason: ConnectFailure, syns: u32) {
    for _ in 0..n {
        a.on_opened(&c, 0);
        let mut r = record(c, ClosedBy::Unknown, 1_000, None);
        r.connect_failed = Some(reason);
        r.net = Some(net(syns, 0));
        a.on_record(&r);
    }
}

#[test]
fn a_client_that_keeps_failing_to_connect_is_a_finding_with_the_reason() {
    let c = id(40, Role::Client, 9);
    let mut a = whole();
    failed_connects(&mut a, c, 6, ConnectFailure::Refused, 0);
    let f = only(&a, Pathology::ConnectFailures);
    assert_eq!(f.figure("connects_failed"), Some(&Figure::Count(6)));
    assert_eq!(f.figure("failed_refused"), Some(&Figure::Count(6)));
    assert_eq!(f.severity(), Severity::Warning);
    assert!(
        f.summary.starts_with("app (pid 40) fails to connect to 10.0.0.2:9: 6 of 6 attempts (100%), mostly refused: 10.0.0.2:9 answers its SYNs with a RST"),
        "{}",
        f.summary
    );
    assert_eq!(f.brief(), "6 of 6 connects failed, mostly refused");
    // Failed attempts are not closes: no lifetime, no closing pattern.
    let stats = a.window(a.groups().next().unwrap().1, u64::MAX, NOW_NS);
    assert_eq!((stats.closed, stats.timed), (0, 0));

    let mut a = whole();
    failed_connects(&mut a, c, 5, ConnectFailure::Timeout, 2);
    let f = only(&a, Pathology::ConnectFailures);
    assert_eq!(f.figure("syn_retransmits"), Some(&Figure::Count(10)));
    assert!(f.summary.contains("mostly timeout: its SYNs to 10.0.0.2:9 go unanswered until the kernel gives up (10 SYN retransmissions in all)"), "{}", f.summary);

    // curl --connect-timeout 1.5 against SYNs dropped on the way: each
    // attempt retried its SYN once, then curl closed the socket.
    let mut a = whole();
    failed_connects(&mut a, c, 5, ConnectFailure::Abandoned, 1);
    let f = only(&a, Pathology::ConnectFailures);
    assert_eq!(f.figure("failed_abandoned"), Some(&Figure::Count(5)));
    assert!(f.summary.contains("mostly abandoned: it gives up before the handshake with 10.0.0.2:9 completes (its own connect timeout, shorter than the kernel's), after 5 SYN retransmissions in all"), "{}", f.summary);

    // A few failures among many good connections, or too few: nothing.
    let mut a = whole();
    failed_connects(&mut a, c, 5, ConnectFailure::Refused, 0);
    closes(
        &mut a,
        c,
        20,
        ClosedBy::Local,
        5,
        Some(1),
        Some(figures(90_000, 90_000, 3, 3)),
    );
    assert_eq!(findings(&a), vec![]);
    let mut a = whole();
    failed_connects(&mut a, c, 4, ConnectFailure::Refused, 0);
    assert_eq!(findings(&a), vec![]);
}
