//! The aggregator fed as the tracker would: groups, windows, folding and making room, the sockets alive now.

use std::net::{IpAddr, Ipv4Addr};

use tracer_common::TcpFigures;

use super::*;
use crate::{
    model::tracker::ClosedBy,
    testutil::{MS, figures, id, id_named, live, record},
};

fn whole() -> Aggregator {
    Aggregator::new(10, 0, Windowing::WHOLE_RUN)
}

#[test]
fn closes_are_counted_by_side_with_percentiles() {
    let mut a = whole();
    let client = id(1, Role::Client, 8080);
    for i in 0..100 {
        a.on_opened(&client, 0);
        a.on_record(&record(
            client,
            ClosedBy::Local,
            1000 + i,
            Some(2000 + 10 * i),
        ));
    }
    a.on_record(&record(client, ClosedBy::Remote, 5, None));
    let (key, g) = a.groups().next().unwrap();
    let s = g.total();
    assert_eq!(key.endpoint(), "10.0.0.2:8080");
    assert_eq!(key.comm_name(), "app");
    assert_eq!(g.procs.main(), Some(1));
    assert_eq!(s.opened, 100);
    assert_eq!(s.closed, 101);
    assert_eq!(s.closed_by(ClosedBy::Local), 100);
    assert!((s.share(&[ClosedBy::Local]) - 100.0 / 101.0).abs() < 1e-9);
    assert_eq!(s.fin_wait2.count(), 100);
    let p50 = s.fin_wait2.quantile_ms(0.5).unwrap();
    assert!((p50 - 2495.0).abs() <= 30.0, "{p50}");
    let p99 = s.fin_wait2.quantile_ms(0.99).unwrap();
    assert!((p99 - 2980.0).abs() <= 35.0, "{p99}");
    assert_eq!(s.time_wait_closes, 100);
    assert_eq!(s.close_wait.quantile_ms(0.5), None);
}

#[test]
fn servers_group_by_their_port_whatever_the_client() {
    let mut a = whole();
    for (i, rport) in [50001, 50002, 50003].into_iter().enumerate() {
        let mut s = id(2, Role::Server, rport);
        s.raddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2 + u8::try_from(i).unwrap()));
        a.on_record(&record(s, ClosedBy::Remote, 10, None));
    }
    assert_eq!(a.groups().count(), 1, "one server group for many clients");
    let (key, g) = a.groups().next().unwrap();
    assert_eq!(key.port, 8080);
    assert_eq!(key.endpoint(), ":8080");
    assert_eq!(g.total().closed, 3);
    assert_eq!(g.peers.kept.len(), 3);
    assert_eq!(g.peers.single(), None);
}

#[test]
fn processes_of_one_name_fold_into_one_group() {
    let mut a = whole();
    for pid in 100..300 {
        let c = id_named(pid, "curl", Role::Client, 8080);
        a.on_opened(&c, 0);
        a.on_record(&record(c, ClosedBy::Local, 5, None));
    }
    assert_eq!(a.groups().count(), 1);
    let g = a.groups().next().unwrap().1;
    assert_eq!(g.procs.count(), 200);
    assert_eq!(g.procs.pids().len(), PIDS_KEPT);
    assert_eq!(g.total().opened, 200);
}

#[test]
fn idle_groups_make_room_and_the_rest_fold_into_other() {
    let mut a = Aggregator::new(2, 0, Windowing::sliding(10_000 * MS, 60_000 * MS));
    for port in 1..=5 {
        a.on_record(&record(
            id(3, Role::Client, port),
            ClosedBy::Local,
            10,
            None,
        ));
    }
    assert_eq!(a.groups().count(), 2, "capped");
    assert_eq!(a.retired(), 3, "groups with nothing alive made room");
    assert_eq!(a.folded(), 0);
    // Groups with sockets alive keep their place: newcomers fold.
    a.observe(
        [
            live(id(3, Role::Client, 4), 1, TcpState::Established, 0, None),
            live(id(3, Role::Client, 5), 2, TcpState::Established, 0, None),
        ],
        MS,
    );
    a.on_record(&record(id(3, Role::Client, 6), ClosedBy::Local, 10, None));
    assert_eq!(a.folded(), 1);
    assert_eq!(a.other().total().closed, 1);
}

#[test]
fn a_report_never_drops_groups_it_will_print() {
    let mut a = Aggregator::new(2, 0, Windowing::WHOLE_RUN);
    for port in 1..=5 {
        a.on_record(&record(
            id(3, Role::Client, port),
            ClosedBy::Local,
            10,
            None,
        ));
    }
    assert_eq!(a.groups().count(), 2);
    assert_eq!(a.folded(), 3);
    assert_eq!(a.other().total().closed, 3);
}

#[test]
fn windows_hold_only_recent_buckets_and_groups_age_out() {
    let mut a = Aggregator::new(10, 0, Windowing::sliding(10_000 * MS, 60_000 * MS));
    let c = id(4, Role::Client, 80);
    for t in [1_000, 15_000, 25_000, 55_000] {
        let mut r = record(c, ClosedBy::Local, 10, None);
        r.end_ns = t * MS;
        a.on_record(&r);
    }
    let g = a.groups().next().unwrap().1;
    assert_eq!(
        a.window(g, 30_000 * MS, 56_000 * MS).closed,
        2,
        "buckets 2..=5"
    );
    assert_eq!(a.window(g, 60_000 * MS, 56_000 * MS).closed, 4);
    assert!((a.span_s(60_000 * MS, 56_000 * MS) - 56.0).abs() < 1e-9);
    a.expire(80_000 * MS);
    let g = a.groups().next().unwrap().1;
    assert_eq!(g.total().closed, 2, "buckets older than a minute dropped");
    a.expire(200_000 * MS);
    assert_eq!(a.groups().count(), 0, "nothing left, nothing alive: over");
    assert_eq!(a.retired(), 1);
}

#[test]
fn closes_are_classified_by_the_tcp_figures() {
    let mut a = whole();
    let c = id(5, Role::Client, 80);
    let mut add = |closed_by, lifetime_ms, t: TcpFigures| {
        let mut r = record(c, closed_by, lifetime_ms, None);
        r.tcp = Some(t);
        a.on_record(&r);
    };
    // One request, answered, closed right after by the client / server.
    add(ClosedBy::Local, 2, figures(0, 0, 1, 1));
    add(ClosedBy::Remote, 2, figures(1, 0, 1, 3));
    // Idle a second, then closed by the server's idle timeout.
    add(ClosedBy::Remote, 1_002, figures(1_000, 1_000, 1, 1));
    // Given up on: the request was never answered.
    add(ClosedBy::Local, 1_000, figures(1_000, 1_000, 1, 0));
    // A pooled connection cut mid-request at its deadline.
    add(ClosedBy::Local, 3_000, figures(76, 76, 30, 29));
    let s = a.groups().next().unwrap().1.total();
    assert_eq!(s.with_figures, 5);
    assert_eq!(s.prompt(), 3);
    assert_eq!(s.prompt_by(ClosedBy::Local), 2);
    assert_eq!(s.one_exchange, 2);
    assert_eq!(s.busy, 3, "{s:?}");
}

#[test]
fn lifetimes_of_sockets_opened_before_the_tracer_are_not_recorded() {
    let mut a = whole();
    let mut r = record(id(6, Role::Client, 80), ClosedBy::Local, 9_210, None);
    r.opened_seen = false;
    a.on_record(&r);
    let s = a.groups().next().unwrap().1.total();
    assert_eq!(s.closed, 1);
    assert_eq!(s.timed, 0);
    assert_eq!(s.lifetime.count(), 0);
}

#[test]
fn live_sockets_make_the_current_picture() {
    let mut a = whole();
    let c = id(4, Role::Client, 9000);
    let now = 100_000;
    a.observe(
        [
            // Talked 10 s ago, answered: idle.
            live(
                c,
                1,
                TcpState::Established,
                0,
                Some((Some(now - 10_000), Some(now - 9_999))),
            ),
            // Sent 5 s ago, no answer: awaiting.
            live(
                c,
                2,
                TcpState::Established,
                0,
                Some((Some(now - 5_000), Some(now - 60_000))),
            ),
            // Sent just now: neither.
            live(c, 3, TcpState::Established, 0, Some((Some(now - 10), None))),
            live(c, 4, TcpState::CloseWait, now - 30_000, None),
            live(c, 5, TcpState::TimeWait, now - 1_000, None),
        ],
        now * MS,
    );
    let g = a.groups().next().unwrap().1;
    assert_eq!(g.now.count(TcpState::Established), 3);
    assert_eq!(g.now.idle, 1);
    assert_eq!(g.now.awaiting, 1);
    assert_eq!(g.now.oldest_awaiting_ns, 5_000 * MS);
    assert_eq!(g.now.idle_time.count(), 3);
    assert!((g.now.idle_time.quantile_ms(0.5).unwrap() - 5_000.0).abs() < 50.0);
    assert_eq!(g.now.oldest_close_wait_ns, 30_000 * MS);
    assert_eq!(g.now.close_wait_sample, vec![(1, 4)]);
    assert_eq!(g.now.main_pid(|p| p.close_wait), Some(4));
    assert_eq!(g.lingering(), 2);
    assert_eq!(g.established_growth(0), (3, 3));
    // Observed again with more open: growth is measured from the first look.
    a.observe(
        (10..20).map(|i| live(c, i, TcpState::Established, now, None)),
        (now + 1) * MS,
    );
    let g = a.groups().next().unwrap().1;
    assert_eq!(g.now.count(TcpState::Established), 10);
    assert_eq!(g.established_growth(0), (3, 10));
    assert_eq!(
        g.established_growth((now + 1) * MS),
        (10, 10),
        "window from the last look"
    );
    assert_eq!(g.now.count(TcpState::CloseWait), 0, "replaced, not added");
}

#[test]
fn a_group_born_after_the_first_look_started_from_zero() {
    let mut a = whole();
    a.observe([], 0);
    let c = id(5, Role::Client, 7000);
    a.on_opened(&c, 0);
    a.observe([live(c, 1, TcpState::Established, 0, None)], MS);
    assert_eq!(a.groups().next().unwrap().1.established_growth(0), (0, 1));
}

#[test]
fn records_still_lingering_at_exit_are_not_closes() {
    let mut a = whole();
    let mut r = record(id(6, Role::Server, 1), ClosedBy::Remote, 10, None);
    r.open_state = Some(TcpState::CloseWait);
    a.on_record(&r);
    assert_eq!(a.groups().count(), 0);
}

#[test]
fn followed_timewait_sockets_are_counted_as_they_come_and_go() {
    let mut a = whole();
    let s = id(8, Role::Client, 443);
    for _ in 0..3 {
        a.on_timewait_start(&s, 0);
    }
    // An observation replaces the rest of the picture, not these.
    a.observe([live(s, 9, TcpState::TimeWait, 0, None)], MS);
    let g = a.groups().next().unwrap().1;
    assert_eq!(g.now.count(TcpState::TimeWait), 4);
    assert_eq!(g.lingering(), 4);
    a.on_timewait_end(
        &TimewaitEnd {
            id: s,
            duration_ns: 60_000 * MS,
        },
        MS,
    );
    a.observe([], 2 * MS);
    let g = a.groups().next().unwrap().1;
    assert_eq!(g.now.count(TcpState::TimeWait), 2);
    let tw = g.total().time_wait;
    assert_eq!(tw.count(), 1);
    assert!((tw.quantile_ms(0.5).unwrap() - 60_000.0).abs() < 600.0);
}
