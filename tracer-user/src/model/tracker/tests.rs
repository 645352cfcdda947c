//! The tracker on synthetic event sequences: every closing pattern, timewait follow-ups, and missing, duplicated and out-of-order events.

use std::num::NonZeroUsize;

use tracer_common::TcpState::{self, *};

use super::*;
use crate::model::event::{Family, Kind, Owner, Record};
use crate::testutil::{MS, NETNS, Sock, owner as named};

#[expect(
    clippy::unnecessary_wraps,
    reason = "fills the optional field it is written into"
)]
fn owner(pid: u32, name: &str) -> Option<Owner> {
    Some(named(pid, name))
}

fn tracker() -> Tracker {
    Tracker::new(NonZeroUsize::new(1000).unwrap()).with_openings()
}

fn feed(t: &mut Tracker, records: &[Record]) {
    for r in records {
        t.on_record(r);
    }
}

/// A sock_diag sighting of a timewait socket.
fn timewait(
    cookie: u64,
    substate: TcpState,
    seen_ms: u64,
    expires_ms: u32,
) -> (u64, TimewaitSighting) {
    (
        cookie,
        TimewaitSighting {
            state: substate,
            seen_ns: seen_ms * MS,
            expires_ms,
        },
    )
}

/// Answers every pending sock_diag request with `sightings`.
fn diag(t: &mut Tracker, sightings: &[(u64, TimewaitSighting)], done_ms: u64) {
    let seen: Sightings = sightings.iter().copied().collect();
    for request in t.diag_requests(true) {
        t.on_diag(&request, &seen, done_ms * MS);
    }
}

fn ms(ns: Option<u64>) -> Option<f64> {
    ns.map(|ns| ns as f64 / MS as f64)
}

fn only(records: Vec<ConnRecord>) -> ConnRecord {
    assert_eq!(records.len(), 1, "{records:#?}");
    records.into_iter().next().unwrap()
}

/// Client handshake and an exchange, ESTABLISHED from 1 ms.
fn client_open(c: &Sock) -> Vec<Record> {
    // No local port yet when CLOSE -> SYN_SENT is traced.
    let connect = Record {
        lport: 0,
        ..c.step(0, Close, SynSent)
    };
    vec![connect, c.step(1, SynSent, Established)]
}

fn server_open(s: &Sock) -> Vec<Record> {
    vec![
        s.unowned_step(0, Listen, SynRecv),
        s.unowned_step(1, SynRecv, Established),
    ]
}

#[test]
fn client_closes_first_and_lingers_in_timewait_fin_wait2_until_peer_fin() {
    let mut t = tracker();
    let c = Sock::client(1);
    feed(&mut t, &client_open(&c));
    feed(
        &mut t,
        &[
            c.step(1000, Established, FinWait1),
            c.unowned_step(1001, FinWait1, FinWait2),
            // Orphaned: replaced by a timewait socket in FIN_WAIT2 at once.
            c.unowned_step(1001, FinWait2, Close),
        ],
    );
    assert!(t.take_ready().is_empty(), "must wait for sock_diag");
    let requests = t.diag_requests(false);
    assert_eq!(
        requests,
        vec![DiagRequest {
            netns: NETNS,
            family: Family::Ipv4,
            fin_wait2: vec![Wanted {
                cookie: 1,
                laddr: "10.0.0.1".parse().unwrap(),
                lport: 40000,
                raddr: "10.0.0.2".parse().unwrap(),
                rport: 8080,
            }],
            time_wait: vec![],
        }],
        "the orphan, with its 4-tuple for a lookup by itself"
    );
    diag(&mut t, &[timewait(1, FinWait2, 1100, 59_900)], 1100);
    assert!(t.take_ready().is_empty(), "still in FIN_WAIT2");
    // The peer's FIN at 3000 ms restarted the timer at 60 s.
    diag(&mut t, &[timewait(1, TimeWait, 3200, 59_800)], 3200);
    let r = only(t.take_ready());
    assert_eq!(r.role, Role::Client);
    assert_eq!(r.closed_by, ClosedBy::Local);
    assert_eq!(r.fin_wait2_end, Some(Fw2End::PeerFin));
    assert!(r.time_wait);
    assert!(r.complete);
    assert_eq!(ms(r.states.get(FinWait2)), Some(1999.0));
    assert_eq!(ms(r.states.get(FinWait1)), Some(1.0));
    assert_eq!(ms(r.states.get(Established)), Some(999.0));
    assert_eq!(r.lifetime_ns, 1001 * MS);
    assert_eq!(r.end_ns, 3000 * MS);
    assert_eq!(r.owner.unwrap().pid, 100);
    assert_eq!(r.lport, 40000);
    assert!(t.diag_requests(false).is_empty(), "nothing left to follow");
    assert_eq!(t.tracked(), 0);
}

#[test]
fn server_sees_close_wait_then_last_ack_and_inherits_the_listener_owner() {
    let mut t = tracker();
    let s = Sock::server(2);
    t.on_record(&s.step(0, Close, Listen));
    feed(&mut t, &server_open(&s));
    feed(
        &mut t,
        &[
            s.unowned_step(1000, Established, CloseWait),
            s.step(3000, CloseWait, LastAck),
            s.unowned_step(3001, LastAck, Close),
        ],
    );
    // The grace period after CLOSE passes.
    t.tick(u64::MAX / 2);
    let r = only(t.take_ready());
    assert_eq!(r.role, Role::Server);
    assert_eq!(r.closed_by, ClosedBy::Remote);
    assert_eq!(ms(r.states.get(CloseWait)), Some(2000.0));
    assert_eq!(ms(r.states.get(LastAck)), Some(1.0));
    assert_eq!(r.fin_wait2_end, None);
    assert!(!r.time_wait);
    assert!(r.complete);
    assert!(
        t.diag_requests(false).is_empty(),
        "LAST_ACK -> CLOSE has no timewait successor"
    );
}

#[test]
fn accepted_socket_without_io_is_owned_by_its_listener() {
    let mut t = tracker();
    let s = Sock::server(3);
    t.on_record(&s.step(0, Close, Listen));
    feed(&mut t, &server_open(&s));
    feed(
        &mut t,
        &[
            s.unowned_step(5, Established, CloseWait),
            s.unowned_step(6, CloseWait, LastAck),
            s.unowned_step(7, LastAck, Close),
        ],
    );
    // The grace period after CLOSE passes.
    t.tick(u64::MAX / 2);
    let r = only(t.take_ready());
    assert_eq!(r.owner.map(|o| o.pid), Some(200));
}

#[test]
fn server_closes_first_and_timewait_lands_on_it() {
    let mut t = tracker();
    let s = Sock::server(4);
    feed(&mut t, &server_open(&s));
    feed(
        &mut t,
        &[
            s.step(10, Established, FinWait1),
            s.unowned_step(11, FinWait1, FinWait2),
            s.unowned_step(11, FinWait2, Close),
        ],
    );
    // By the first dump the client's FIN had come: already TIME_WAIT.
    diag(&mut t, &[timewait(4, TimeWait, 200, 59_950)], 200);
    let r = only(t.take_ready());
    assert_eq!(r.closed_by, ClosedBy::Local);
    assert!(r.time_wait);
    assert_eq!(r.fin_wait2_end, Some(Fw2End::PeerFin));
    // Dated from the timer: the FIN came at 150 ms, 139 ms into FIN_WAIT2.
    assert_eq!(ms(r.states.get(FinWait2)), Some(139.0));
}

#[test]
fn fin_wait2_that_turned_into_time_wait_before_the_close_is_dated_by_the_close() {
    // A FIN_WAIT2 full socket (shutdown, still open) gets the peer's FIN:
    // the tracepoint shows FIN_WAIT2 -> CLOSE and the successor is TIME_WAIT.
    let mut t = tracker();
    let c = Sock::client(5);
    feed(&mut t, &client_open(&c));
    feed(
        &mut t,
        &[
            c.step(10, Established, FinWait1),
            c.unowned_step(11, FinWait1, FinWait2),
            c.unowned_step(500, FinWait2, Close),
        ],
    );
    diag(&mut t, &[timewait(5, TimeWait, 600, 59_900)], 600);
    let r = only(t.take_ready());
    assert_eq!(ms(r.states.get(FinWait2)), Some(489.0));
    assert_eq!(r.fin_wait2_end, Some(Fw2End::PeerFin));
    assert_eq!(r.end_ns, 500 * MS);
}

fn orphaned_fin_wait2(t: &mut Tracker, cookie: u64) -> Sock {
    let c = Sock::client(cookie);
    feed(t, &client_open(&c));
    feed(
        t,
        &[
            c.step(1000, Established, FinWait1),
            c.unowned_step(1001, FinWait1, FinWait2),
            c.unowned_step(1001, FinWait2, Close),
        ],
    );
    // tcp_fin_timeout 3 s: due at 4001 ms.
    diag(t, &[timewait(cookie, FinWait2, 1101, 2900)], 1101);
    c
}

#[test]
fn fin_wait2_timeout_when_the_peer_never_closes() {
    let mut t = tracker();
    orphaned_fin_wait2(&mut t, 6);
    diag(&mut t, &[timewait(6, FinWait2, 3000, 1001)], 3000);
    assert!(t.take_ready().is_empty());
    diag(&mut t, &[], 4100);
    let r = only(t.take_ready());
    assert_eq!(r.fin_wait2_end, Some(Fw2End::Timeout));
    assert!(!r.time_wait);
    assert_eq!(ms(r.states.get(FinWait2)), Some(3000.0));
    assert_eq!(r.end_ns, 4001 * MS);
}

#[test]
fn fin_wait2_gone_before_its_timer_was_killed_early() {
    let mut t = tracker();
    orphaned_fin_wait2(&mut t, 7);
    diag(&mut t, &[], 2000);
    let r = only(t.take_ready());
    assert_eq!(r.fin_wait2_end, Some(Fw2End::Reset));
    assert_eq!(ms(r.states.get(FinWait2)), Some(999.0));
}

#[test]
fn rst_from_the_timewait_socket_ends_fin_wait2_exactly() {
    // The server writes into the half-closed connection; the client's
    // orphaned FIN_WAIT2 answers with a RST.
    let mut t = tracker();
    let c = orphaned_fin_wait2(&mut t, 8);
    t.on_record(&Record {
        owner: None,
        ..c.record(2500, Kind::SendReset { state: FinWait2 })
    });
    let r = only(t.take_ready());
    assert_eq!(
        r.closed_by,
        ClosedBy::Local,
        "a RST after the FIN does not change closed_by"
    );
    assert_eq!(r.fin_wait2_end, Some(Fw2End::Reset));
    assert_eq!(ms(r.states.get(FinWait2)), Some(1499.0));
    assert!(t.diag_requests(false).is_empty());
}

#[test]
fn abortive_close_is_reset_local_on_one_side_and_reset_remote_on_the_other() {
    let mut t = tracker();
    let c = Sock::client(9);
    let s = Sock::server(10);
    feed(&mut t, &client_open(&c));
    feed(&mut t, &server_open(&s));
    // SO_LINGER 0: the kernel traces CLOSE, then sends the RST.
    feed(
        &mut t,
        &[
            c.step(50, Established, Close),
            c.record(50, Kind::SendReset { state: Close }),
        ],
    );
    // The server gets the RST; its application still holds the socket.
    feed(
        &mut t,
        &[
            s.record(50, Kind::ReceiveReset { state: Established }),
            s.unowned_step(50, Established, Close),
        ],
    );
    t.tick(50 * MS + CLOSE_GRACE_NS - 1);
    assert!(t.take_ready().is_empty(), "grace not over");
    t.tick(50 * MS + CLOSE_GRACE_NS);
    let mut both = t.take_ready();
    both.sort_by_key(|r| r.cookie);
    let [client, server] = <[ConnRecord; 2]>::try_from(both).expect("two records");
    assert_eq!(client.cookie, 9);
    assert_eq!(client.closed_by, ClosedBy::ResetLocal);
    assert_eq!(server.closed_by, ClosedBy::ResetRemote);
    assert!(!server.time_wait);
    assert!(server.complete);
}

#[test]
fn simultaneous_close_goes_through_closing_to_time_wait() {
    let mut t = tracker();
    let c = Sock::client(11);
    feed(&mut t, &client_open(&c));
    feed(
        &mut t,
        &[
            c.step(10, Established, FinWait1),
            c.unowned_step(60, FinWait1, Closing),
            c.unowned_step(61, Closing, Close),
        ],
    );
    diag(&mut t, &[timewait(11, TimeWait, 100, 59_961)], 100);
    let r = only(t.take_ready());
    assert_eq!(r.closed_by, ClosedBy::Simultaneous);
    assert!(r.time_wait);
    assert_eq!(r.fin_wait2_end, None, "never in FIN_WAIT2");
    assert_eq!(ms(r.states.get(Closing)), Some(1.0));
}

#[test]
fn refused_connect_is_reset_remote_and_a_retry_is_a_new_lifecycle() {
    let mut t = tracker();
    let c = Sock::client(12);
    feed(
        &mut t,
        &[
            c.step(0, Close, SynSent),
            c.record(1, Kind::ReceiveReset { state: SynSent }),
            c.unowned_step(1, SynSent, Close),
            // connect() again on the same socket.
            c.step(5, Close, SynSent),
        ],
    );
    let first = only(t.take_ready());
    assert_eq!(first.closed_by, ClosedBy::ResetRemote);
    assert_eq!(first.role, Role::Client);
    assert_eq!(t.tracked(), 1, "the retry is tracked afresh");
}

#[test]
fn timewait_table_full_means_no_time_wait() {
    let mut t = tracker();
    let c = Sock::client(13);
    feed(&mut t, &client_open(&c));
    feed(
        &mut t,
        &[
            c.step(10, Established, FinWait1),
            c.unowned_step(11, FinWait1, FinWait2),
            c.unowned_step(300, FinWait2, Close),
        ],
    );
    diag(&mut t, &[], 400);
    let r = only(t.take_ready());
    assert!(!r.time_wait);
    assert_eq!(r.fin_wait2_end, None, "unknown, not guessed");
}

#[test]
fn a_lost_transition_makes_the_record_incomplete_but_not_wrong() {
    let mut t = tracker();
    let c = Sock::client(14);
    feed(&mut t, &client_open(&c));
    // ESTABLISHED -> FIN_WAIT1 was dropped.
    feed(
        &mut t,
        &[
            c.unowned_step(1001, FinWait1, FinWait2),
            c.unowned_step(1001, FinWait2, Close),
        ],
    );
    diag(&mut t, &[timewait(14, TimeWait, 1100, 59_950)], 1100);
    let r = only(t.take_ready());
    assert!(!r.complete);
    assert_eq!(
        r.closed_by,
        ClosedBy::Local,
        "FIN_WAIT1 implies a local first FIN"
    );
}

#[test]
fn duplicated_records_change_nothing() {
    let mut t = tracker();
    let s = Sock::server(16);
    let mut records = server_open(&s);
    records.extend([
        s.unowned_step(10, Established, CloseWait),
        s.unowned_step(10, Established, CloseWait),
        s.step(20, CloseWait, LastAck),
        s.unowned_step(21, LastAck, Close),
        s.unowned_step(21, LastAck, Close),
    ]);
    feed(&mut t, &records);
    // The grace period after CLOSE passes.
    t.tick(u64::MAX / 2);
    let r = only(t.take_ready());
    assert!(r.complete);
    assert_eq!(ms(r.states.get(CloseWait)), Some(10.0));
}

#[test]
fn out_of_order_records_are_incomplete_and_never_negative() {
    let mut t = tracker();
    let c = Sock::client(17);
    feed(&mut t, &client_open(&c));
    feed(
        &mut t,
        &[
            c.step(100, Established, FinWait1),
            // Arrives with an earlier timestamp than the one before it.
            c.unowned_step(50, FinWait1, FinWait2),
            c.unowned_step(60, FinWait2, Close),
        ],
    );
    diag(&mut t, &[timewait(17, TimeWait, 200, 59_900)], 200);
    let r = only(t.take_ready());
    assert!(!r.complete);
    assert!(
        r.states.iter().all(|(_, ns)| ns < 1_000 * MS),
        "{:?}",
        r.states
    );
}

#[test]
fn events_for_unknown_sockets_start_mid_life_records() {
    let mut t = tracker();
    let s = Sock::server(18);
    // First seen when the peer closes: pre-existing or evicted.
    feed(
        &mut t,
        &[
            s.step(10, Established, CloseWait),
            s.step(20, CloseWait, LastAck),
            s.step(21, LastAck, Close),
        ],
    );
    // The grace period after CLOSE passes.
    t.tick(u64::MAX / 2);
    let r = only(t.take_ready());
    assert!(!r.complete);
    assert_eq!(r.role, Role::Unknown);
    assert_eq!(r.closed_by, ClosedBy::Remote);
    assert_eq!(
        r.states.get(Established),
        None,
        "its ESTABLISHED time is unknown"
    );
    assert_eq!(ms(r.states.get(CloseWait)), Some(10.0));
}

#[test]
fn eviction_keeps_the_cap_and_counts() {
    let mut t = Tracker::new(NonZeroUsize::new(2).unwrap());
    for cookie in 1..=5 {
        feed(&mut t, &client_open(&Sock::client(cookie)));
    }
    assert_eq!(t.tracked(), 2);
    assert_eq!(t.evicted(), 3);
    // The stalest went first: cookie 1 comes back as a mid-life socket.
    t.on_record(&Sock::client(1).step(10, Established, FinWait1));
    assert_eq!(t.evicted(), 4);
    let c1 = Sock::client(1);
    feed(&mut t, &[c1.unowned_step(11, FinWait1, FinWait2)]);
    let records = t.finish(20 * MS);
    let r = records.iter().find(|r| r.cookie == 1).unwrap();
    assert!(!r.complete);
}

#[test]
fn a_loss_marks_everything_alive_and_pending() {
    let mut t = tracker();
    let a = Sock::client(19);
    let b = Sock::server(20);
    feed(&mut t, &client_open(&a));
    feed(&mut t, &server_open(&b));
    feed(
        &mut t,
        &[
            b.unowned_step(5, Established, CloseWait),
            b.step(6, CloseWait, LastAck),
            b.unowned_step(7, LastAck, Close),
        ],
    );
    t.note_loss();
    // The grace period after CLOSE passes.
    t.tick(u64::MAX / 2);
    assert!(!only(t.take_ready()).complete, "not yet written: marked");
    feed(
        &mut t,
        &[
            a.step(8, Established, FinWait1),
            a.unowned_step(9, FinWait1, FinWait2),
            a.unowned_step(9, FinWait2, Close),
        ],
    );
    diag(&mut t, &[timewait(19, TimeWait, 10, 59_999)], 10);
    assert!(!only(t.take_ready()).complete, "alive at the loss: marked");
}

#[test]
fn seeded_sockets_get_owner_and_role_and_are_incomplete() {
    let mut t = tracker();
    let seed = |cookie, state, lport, rport, pid| Seed {
        cookie,
        netns: NETNS,
        family: Family::Ipv4,
        state,
        laddr: "10.0.0.2".parse().unwrap(),
        lport,
        raddr: "10.0.0.1".parse().unwrap(),
        rport,
        owner: owner(pid, "app"),
        role: Role::Client,
    };
    t.seed(
        &[
            seed(30, Listen, 8080, 0, 200),
            seed(31, Established, 8080, 40000, 200),
            seed(32, Established, 50000, 443, 300),
            seed(33, CloseWait, 8080, 40001, 200),
        ],
        1000 * MS,
    );
    assert_eq!(t.tracked(), 3, "listeners are not connections");
    let server = Sock {
        cookie: 31,
        server: true,
        owner: None,
    };
    feed(
        &mut t,
        &[
            server.unowned_step(1500, Established, CloseWait),
            server.unowned_step(1600, CloseWait, LastAck),
            server.unowned_step(1601, LastAck, Close),
        ],
    );
    // The grace period after CLOSE passes.
    t.tick(u64::MAX / 2);
    let r = only(t.take_ready());
    assert_eq!(r.role, Role::Server);
    assert_eq!(r.owner.map(|o| o.pid), Some(200));
    assert!(!r.complete);
    assert_eq!(r.closed_by, ClosedBy::Remote);
    assert_eq!(
        ms(r.states.get(Established)),
        Some(500.0),
        "from tracer start"
    );
    let at_exit = t.finish(2000 * MS);
    assert_eq!(
        at_exit.len(),
        1,
        "only the CLOSE_WAIT lingers: {at_exit:#?}"
    );
    assert_eq!(at_exit[0].open_state, Some(CloseWait));
    assert_eq!(at_exit[0].closed_by, ClosedBy::Remote);
    assert_eq!(ms(at_exit[0].states.get(CloseWait)), Some(1000.0));
}

#[test]
fn seeding_fills_gaps_of_sockets_already_seen() {
    let mut t = tracker();
    let s = Sock {
        cookie: 40,
        server: true,
        owner: None,
    };
    t.on_record(&s.step(10, Established, CloseWait));
    t.seed(
        &[Seed {
            cookie: 40,
            netns: NETNS,
            family: Family::Ipv4,
            state: CloseWait,
            laddr: "10.0.0.2".parse().unwrap(),
            lport: 8080,
            raddr: "10.0.0.1".parse().unwrap(),
            rport: 40000,
            owner: owner(200, "nginx"),
            role: Role::Server,
        }],
        20 * MS,
    );
    let r = only(t.finish(30 * MS));
    assert_eq!(r.owner.map(|o| o.pid), Some(200));
    assert_eq!(ms(r.states.get(CloseWait)), Some(20.0), "event timing kept");
}

#[test]
fn finish_reports_lingering_sockets_only() {
    let mut t = tracker();
    let open = Sock::client(50);
    feed(&mut t, &client_open(&open));
    orphaned_fin_wait2(&mut t, 51);
    let records = t.finish(2001 * MS);
    let r = only(records);
    assert_eq!(r.cookie, 51);
    assert_eq!(r.fin_wait2_end, Some(Fw2End::Open));
    assert_eq!(r.open_state, Some(FinWait2));
    assert_eq!(ms(r.states.get(FinWait2)), Some(1000.0));
    assert_eq!(r.lifetime_ns, 1001 * MS);
}

#[test]
fn an_open_socket_is_read_as_a_record_and_left_as_it_is() {
    let mut t = tracker();
    let s = Sock::server(52);
    t.on_record(&s.step(0, Close, Listen));
    feed(&mut t, &server_open(&s));
    feed(&mut t, &[s.unowned_step(1000, Established, CloseWait)]);
    let r = t.open_record(52, 4000 * MS).expect("open");
    assert_eq!(r.open_state, Some(CloseWait));
    assert_eq!(r.closed_by, ClosedBy::Remote);
    assert_eq!(ms(r.states.get(CloseWait)), Some(3000.0));
    assert_eq!(r.end_ns, 4000 * MS);
    // Read again later: timed from the state's start, not from the read.
    let later = t.open_record(52, 5000 * MS).expect("still open");
    assert_eq!(ms(later.states.get(CloseWait)), Some(4000.0));
    assert_eq!(t.live().count(), 1);
    assert!(t.open_record(99, 4000 * MS).is_none(), "unknown");
    // Its close completes it as if never read.
    feed(
        &mut t,
        &[
            s.step(6000, CloseWait, LastAck),
            s.unowned_step(6001, LastAck, Close),
        ],
    );
    t.tick(u64::MAX / 2);
    let done = only(t.take_ready());
    assert_eq!(ms(done.states.get(CloseWait)), Some(5000.0));
    assert_eq!(done.open_state, None);
    assert!(t.open_record(52, 7000 * MS).is_none(), "closed");
}

#[test]
fn a_failed_lookup_writes_waiting_sockets_as_incomplete() {
    let mut t = tracker();
    let c = Sock::client(60);
    feed(&mut t, &client_open(&c));
    feed(
        &mut t,
        &[
            c.step(10, Established, FinWait1),
            c.unowned_step(11, FinWait1, FinWait2),
            c.unowned_step(11, FinWait2, Close),
        ],
    );
    for request in t.diag_requests(false) {
        t.on_diag_failed(&request);
    }
    let r = only(t.take_ready());
    assert!(!r.complete);
    assert_eq!(r.closed_by, ClosedBy::Local);
    assert_eq!(r.fin_wait2_end, None);
    assert!(t.diag_requests(false).is_empty());
}

#[test]
fn time_wait_is_followed_to_its_end_when_asked() {
    let mut t = tracker().follow_timewait();
    let s = Sock::server(70);
    t.on_record(&s.step(0, Close, Listen));
    feed(&mut t, &server_open(&s));
    // Its owner is only the listener's until a process is seen with it.
    assert_eq!(t.take_opened().len(), 0);
    feed(
        &mut t,
        &[
            s.step(10, Established, FinWait1),
            s.unowned_step(11, FinWait1, FinWait2),
            s.unowned_step(12, FinWait2, Close),
        ],
    );
    assert_eq!(t.take_opened().len(), 1, "the closing process owns it");
    // The client's FIN came at 20 ms: TIME_WAIT until 60.020 s.
    diag(&mut t, &[timewait(70, TimeWait, 100, 59_920)], 100);
    let r = only(t.take_ready());
    assert!(r.time_wait);
    // Counted from its start and end, not listed among the live.
    assert_eq!(t.live().count(), 0);
    let starts = t.take_timewait_starts();
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].owner.map(|o| o.pid), Some(200), "{starts:?}");
    assert_eq!(starts[0].role, Role::Server);
    assert!(
        t.diag_requests(false).is_empty(),
        "only the slow cadence asks about TIME_WAIT"
    );
    diag(&mut t, &[timewait(70, TimeWait, 30_000, 30_020)], 30_000);
    assert!(t.take_timewait_ends().is_empty());
    diag(&mut t, &[], 61_000);
    let ends = t.take_timewait_ends();
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0].duration_ns, 60_000 * MS);
    assert!(t.take_timewait_starts().is_empty());
}

#[test]
fn a_full_socket_closing_after_the_peers_fin_needs_no_lookup() {
    let mut t = tracker().follow_timewait();
    let c = Sock::client(73);
    feed(&mut t, &client_open(&c));
    // The app shut down writing and waited for EOF: the peer's FIN reached
    // the full socket in FIN_WAIT2, which became TIME_WAIT there and then.
    feed(
        &mut t,
        &[
            c.step(10, Established, FinWait1),
            c.unowned_step(11, FinWait1, FinWait2),
            Record {
                peer_fin: Some(true),
                ..c.unowned_step(500, FinWait2, Close)
            },
        ],
    );
    assert!(
        t.diag_requests(false).is_empty(),
        "nothing to ask sock_diag"
    );
    let r = only(t.take_ready());
    assert!(r.time_wait);
    assert!(r.complete);
    assert_eq!(r.fin_wait2_end, Some(Fw2End::PeerFin));
    assert_eq!(ms(r.states.get(FinWait2)), Some(489.0));
    assert_eq!(r.end_ns, 500 * MS);
    assert_eq!(
        t.take_timewait_starts().len(),
        1,
        "TIME_WAIT followed from 500 ms"
    );
    // Its end still comes from the TIME_WAIT table.
    assert_eq!(t.diag_requests(true).len(), 1);
    diag(&mut t, &[], 60_600);
    let ends = t.take_timewait_ends();
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0].duration_ns, 60_000 * MS);
}

/// The step to CLOSE as the kernel writes it when its TIME_WAIT table
/// was full: it looked for the timewait socket and found none.
fn no_timewait(step: Record) -> Record {
    Record {
        no_timewait: true,
        ..step
    }
}

#[test]
fn a_close_the_kernel_made_no_timewait_for_is_no_time_wait_and_not_followed() {
    let mut t = tracker().follow_timewait();
    // After the peer's FIN (the common client close), in an orphan
    // (no FIN yet) and out of CLOSING: three closes that each owed one.
    let (after_fin, orphan, crossed) = (Sock::client(81), Sock::client(82), Sock::client(83));
    for c in [&after_fin, &orphan, &crossed] {
        feed(&mut t, &client_open(c));
    }
    feed(
        &mut t,
        &[
            after_fin.step(10, Established, FinWait1),
            after_fin.unowned_step(11, FinWait1, FinWait2),
            no_timewait(Record {
                peer_fin: Some(true),
                ..after_fin.unowned_step(12, FinWait2, Close)
            }),
            orphan.step(10, Established, FinWait1),
            orphan.unowned_step(11, FinWait1, FinWait2),
            no_timewait(Record {
                peer_fin: Some(false),
                ..orphan.unowned_step(11, FinWait2, Close)
            }),
            crossed.step(10, Established, FinWait1),
            crossed.unowned_step(11, FinWait1, Closing),
            no_timewait(crossed.unowned_step(12, Closing, Close)),
        ],
    );
    assert!(
        t.diag_requests(true).is_empty(),
        "no timewait socket to ask sock_diag about"
    );
    t.tick(1_000 * MS);
    let mut records = t.take_ready();
    records.sort_by_key(|r| r.cookie);
    assert_eq!(records.len(), 3, "{records:#?}");
    for r in &records {
        assert!(!r.time_wait, "{r:#?}");
        assert!(r.time_wait_refused, "{r:#?}");
        assert!(r.complete, "{r:#?}");
    }
    assert_eq!(records[0].fin_wait2_end, Some(Fw2End::PeerFin));
    assert_eq!(
        records[1].fin_wait2_end, None,
        "it ended with no FIN, unlingered"
    );
    assert_eq!(records[2].closed_by, ClosedBy::Simultaneous);
    assert!(t.take_timewait_starts().is_empty(), "no TIME_WAIT to time");
}

#[test]
fn a_reset_close_owes_no_time_wait_so_none_is_refused() {
    let mut t = tracker().follow_timewait();
    let c = Sock::client(84);
    feed(&mut t, &client_open(&c));
    feed(
        &mut t,
        &[
            c.step(10, Established, FinWait1),
            c.unowned_step(11, FinWait1, FinWait2),
            c.record(20, Kind::ReceiveReset { state: FinWait2 }),
            no_timewait(c.unowned_step(20, FinWait2, Close)),
        ],
    );
    t.tick(1_000 * MS);
    let r = only(t.take_ready());
    assert!(!r.time_wait && !r.time_wait_refused, "{r:#?}");
    assert_eq!(r.fin_wait2_end, Some(Fw2End::Reset));
}

#[test]
fn an_orphan_whose_peer_fin_is_unknown_is_still_looked_up() {
    for peer_fin in [None, Some(false)] {
        let mut t = tracker();
        let c = Sock::client(74);
        feed(&mut t, &client_open(&c));
        feed(
            &mut t,
            &[
                c.step(10, Established, FinWait1),
                c.unowned_step(11, FinWait1, FinWait2),
                Record {
                    peer_fin,
                    ..c.unowned_step(11, FinWait2, Close)
                },
            ],
        );
        assert!(t.take_ready().is_empty(), "{peer_fin:?}");
        let requests = t.diag_requests(false);
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].fin_wait2.len(), 1);
        assert!(requests[0].time_wait.is_empty());
    }
}

#[test]
fn live_lists_open_and_lingering_sockets_with_their_state() {
    let mut t = tracker();
    let c = Sock::client(71);
    feed(&mut t, &client_open(&c));
    orphaned_fin_wait2(&mut t, 72);
    let mut live: Vec<(u64, TcpState, Option<u64>)> =
        t.live().map(|l| (l.cookie, l.state, l.since_ns)).collect();
    live.sort();
    // The orphan entered FIN_WAIT2 at 1001 ms, then lived on as a timewait socket.
    assert_eq!(
        live,
        vec![(71, Established, Some(MS)), (72, FinWait2, Some(1001 * MS))]
    );
    let opened = t.take_opened();
    assert_eq!(opened.len(), 2);
    assert!(
        opened
            .iter()
            .all(|id| id.role == Role::Client && id.owner.map(|o| o.pid) == Some(100))
    );
}

#[test]
fn a_missed_step_into_closing_still_reads_as_simultaneous() {
    let mut t = tracker();
    let c = Sock::client(80);
    feed(&mut t, &client_open(&c));
    feed(
        &mut t,
        &[
            c.step(10, Established, FinWait1),
            // FIN_WAIT1 -> CLOSING skipped by the kernel (hook busy).
            c.unowned_step(61, Closing, Close),
        ],
    );
    diag(&mut t, &[timewait(80, TimeWait, 100, 59_961)], 100);
    let r = only(t.take_ready());
    assert!(!r.complete);
    assert_eq!(r.closed_by, ClosedBy::Simultaneous);
    assert!(r.time_wait);
}

/// A state change carrying the kernel's date for entering its old state.
fn dated(step: Record, since_ms: u64) -> Record {
    Record {
        since_ns: Some(since_ms * MS),
        ..step
    }
}

#[test]
fn lean_records_rebuild_the_same_client_lifecycle() {
    // What the kernel writes without --transitions: no connect, no orphan
    // FIN_WAIT1 -> FIN_WAIT2, no destroy; the next record dates each.
    let mut t = tracker();
    let c = Sock::client(90);
    feed(
        &mut t,
        &[
            dated(c.unowned_step(3, SynSent, Established), 1),
            c.step(1000, Established, FinWait1),
            dated(c.unowned_step(1004, FinWait2, Close), 1002),
        ],
    );
    let opened = t.take_opened();
    assert_eq!(opened.len(), 1, "born at the dated connect");
    assert_eq!(opened[0].role, Role::Client);
    diag(&mut t, &[timewait(90, TimeWait, 1100, 59_950)], 1100);
    let r = only(t.take_ready());
    assert!(r.complete, "{r:?}");
    assert_eq!(r.closed_by, ClosedBy::Local);
    assert_eq!(ms(r.states.get(SynSent)), Some(2.0));
    assert_eq!(ms(r.states.get(Established)), Some(997.0));
    assert_eq!(ms(r.states.get(FinWait1)), Some(2.0));
    // Entered at 1002 by the kernel's date; the peer's FIN came at 1050.
    assert_eq!(ms(r.states.get(FinWait2)), Some(48.0));
    assert_eq!(
        r.lifetime_ns,
        1003 * MS,
        "from connect to the full socket's close"
    );
}

#[test]
fn lean_records_rebuild_the_same_server_lifecycle() {
    let mut t = tracker();
    let s = Sock::server(91);
    t.on_record(&s.step(0, Close, Listen));
    feed(
        &mut t,
        &[
            s.unowned_step(5, SynRecv, Established),
            dated(s.unowned_step(500, Established, CloseWait), 5),
            dated(s.step(700, CloseWait, LastAck), 500),
            dated(s.unowned_step(701, LastAck, Close), 700),
        ],
    );
    assert_eq!(t.take_opened().len(), 1);
    t.tick(701 * MS + CLOSE_GRACE_NS);
    let r = only(t.take_ready());
    assert!(r.complete, "{r:?}");
    assert_eq!(r.role, Role::Server);
    assert_eq!(r.closed_by, ClosedBy::Remote);
    assert_eq!(r.owner.unwrap().pid, 200);
    assert_eq!(ms(r.states.get(CloseWait)), Some(200.0));
    assert_eq!(ms(r.states.get(LastAck)), Some(1.0));
    assert_eq!(r.lifetime_ns, 696 * MS);
}

#[test]
fn a_skipped_step_is_rebuilt_only_where_the_kernel_skips_one() {
    let mut t = tracker();
    let c = Sock::client(92);
    feed(&mut t, &client_open(&c));
    // ESTABLISHED -> FIN_WAIT1 is never left out: its absence is a loss,
    // even with a date.
    t.on_record(&dated(c.unowned_step(50, FinWait2, Close), 40));
    diag(&mut t, &[], 60);
    let r = only(t.take_ready());
    assert!(!r.complete);
    // A date from before the last step seen cannot move time backwards.
    let c = Sock::client(93);
    feed(&mut t, &client_open(&c));
    t.on_record(&c.step(100, Established, FinWait1));
    t.on_record(&dated(c.unowned_step(105, FinWait2, Close), 90));
    diag(&mut t, &[], 120);
    let r = only(t.take_ready());
    assert!(r.complete);
    assert_eq!(ms(r.states.get(FinWait1)), Some(0.0));
    assert_eq!(ms(r.states.get(FinWait2)), Some(5.0));
}

#[test]
fn a_failed_connect_then_a_new_one_are_two_lifecycles_in_lean_records() {
    let mut t = tracker();
    let c = Sock::client(94);
    // Refused: SYN_SENT -> CLOSE, dated connect at 0.
    t.on_record(&dated(c.unowned_step(1, SynSent, Close), 0));
    // Connects again on the same socket at 10.
    t.on_record(&dated(c.unowned_step(12, SynSent, Established), 10));
    let first = only(t.take_ready());
    assert_eq!(first.end_ns, MS);
    assert_eq!(ms(first.states.get(SynSent)), Some(1.0));
    // The first is passed on with its record; the second, whose owner is
    // not known yet, when it is (or when the run ends).
    assert_eq!(t.take_opened().len(), 1);
    t.finish_opened();
    assert_eq!(t.take_opened().len(), 1);
    let live: Vec<LiveConn> = t.live().collect();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].state, Established);
}

/// Every tracked socket costs this much: a million must fit in 300 MB
/// with the table's own overhead (see benches/scale.rs).
#[test]
fn a_tracked_socket_stays_small() {
    assert!(size_of::<Conn>() <= 208, "{}", size_of::<Conn>());
    assert_eq!(size_of::<StateTimes>(), 64);
}

fn alive(states: &[(u64, TcpState)]) -> Alive {
    let mut a = Alive::default();
    a.states.extend(states.iter().copied());
    a.netns.insert(NETNS);
    a
}

#[test]
fn after_a_loss_sockets_gone_from_the_kernel_are_written_incomplete() {
    let mut t = tracker();
    let (c, s) = (Sock::client(1), Sock::server(2));
    feed(&mut t, &client_open(&c));
    feed(&mut t, &server_open(&s));
    // Their closing events were all dropped: the client went on to
    // TIME_WAIT, the server's socket is gone.
    t.note_loss();
    t.reconcile(&alive(&[(1, TimeWait)]), 5000 * MS);
    let mut records = t.take_ready();
    records.sort_by_key(|r| r.cookie);
    assert_eq!(records.len(), 2, "{records:#?}");
    let (client, server) = (&records[0], &records[1]);
    assert!(!client.complete && !server.complete);
    assert!(client.time_wait);
    assert_eq!(client.closed_by, ClosedBy::Local);
    assert_eq!(server.closed_by, ClosedBy::Unknown, "no sign of who closed");
    assert!(!server.time_wait);
    // Dated when last known of, not when found missing.
    assert_eq!(client.end_ns, MS);
    assert_eq!(client.lifetime_ns, MS);
    assert_eq!(
        ms(client.states.get(Established)),
        Some(0.0),
        "a lower bound"
    );
    assert_eq!(t.tracked(), 0);
}

#[test]
fn after_a_loss_a_socket_found_elsewhere_moves_there() {
    let mut t = tracker();
    let s = Sock::server(2);
    feed(&mut t, &server_open(&s));
    t.note_loss();
    t.reconcile(&alive(&[(2, CloseWait)]), 2000 * MS);
    assert!(t.take_ready().is_empty(), "still open");
    let live: Vec<_> = t.live().collect();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].state, CloseWait);
    // Its next events apply as usual.
    feed(
        &mut t,
        &[
            s.step(3000, CloseWait, LastAck),
            s.unowned_step(3001, LastAck, Close),
        ],
    );
    t.tick(4000 * MS);
    let r = only(t.take_ready());
    assert_eq!(r.closed_by, ClosedBy::Remote);
    assert!(!r.complete);
    assert_eq!(
        ms(r.states.get(CloseWait)),
        Some(1000.0),
        "from the dump on"
    );
}

#[test]
fn after_a_loss_an_orphan_found_handed_over_to_a_timewait_socket_is_followed_to_its_end() {
    let mut t = tracker();
    let c = Sock::client(1);
    feed(&mut t, &client_open(&c));
    feed(&mut t, &[c.step(1000, Established, FinWait1)]);
    // FIN_WAIT1 -> FIN_WAIT2 and the hand-over to a timewait socket were
    // lost: the dump finds the cookie as a timewait socket in FIN_WAIT2.
    t.note_loss();
    let mut found = alive(&[(1, FinWait2)]);
    found.timewait.insert(1);
    t.reconcile(&found, 2000 * MS);
    assert_eq!(t.live().count(), 0, "not a live socket any more");
    assert!(t.take_ready().is_empty(), "followed, not written yet");
    // The follower sees it in FIN_WAIT2, then in TIME_WAIT: the peer's FIN.
    diag(&mut t, &[timewait(1, FinWait2, 2100, 59_900)], 2100);
    assert!(t.take_ready().is_empty(), "still in FIN_WAIT2");
    // The peer's FIN at 4000 ms restarted the timer at 60 s.
    diag(&mut t, &[timewait(1, TimeWait, 4200, 59_800)], 4200);
    let r = only(t.take_ready());
    assert_eq!(r.closed_by, ClosedBy::Local);
    assert!(r.time_wait);
    assert!(!r.complete);
    let fw2 = ms(r.states.get(FinWait2)).unwrap();
    assert!(
        fw2 >= 1800.0,
        "FIN_WAIT2 from the dump on, a lower bound: {r:#?}"
    );
}

#[test]
fn after_a_loss_a_full_socket_in_fin_wait2_stays_live() {
    let mut t = tracker();
    let c = Sock::client(1);
    feed(&mut t, &client_open(&c));
    feed(&mut t, &[c.step(1000, Established, FinWait1)]);
    t.note_loss();
    t.reconcile(&alive(&[(1, FinWait2)]), 2000 * MS);
    let live: Vec<_> = t.live().collect();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].state, FinWait2);
}

#[test]
fn a_recheck_leaves_alone_what_it_cannot_judge() {
    let mut t = tracker();
    let (c, late) = (Sock::client(1), Sock::client(3));
    feed(&mut t, &client_open(&c));
    // Heard from after the dump began: the dump may predate it.
    feed(&mut t, &[late.step(6000, SynSent, Established)]);
    // A namespace whose dump failed: its sockets cannot be declared gone.
    let mut partial = alive(&[]);
    partial.netns.clear();
    t.reconcile(&partial, 5000 * MS);
    assert!(t.take_ready().is_empty());
    t.reconcile(&alive(&[(1, Established)]), 5000 * MS);
    assert!(t.take_ready().is_empty());
    assert_eq!(t.tracked(), 2);
    let c_live = t.live().find(|l| l.cookie == 1).unwrap();
    assert_eq!(c_live.state, Established);
}

/// One arbitrary ring record for one of a few sockets.
fn arbitrary_record(
    cookie: u64,
    kind: u8,
    old: u8,
    new: u8,
    ms: u64,
    owned: bool,
    fin: Option<bool>,
) -> Option<Record> {
    let old = TcpState::from_u8(old)?;
    let new = TcpState::from_u8(new)?;
    let kind = match kind {
        0 => Kind::StateChange { old, new },
        1 | 2 => Kind::SendReset { state: old },
        _ => Kind::ReceiveReset { state: old },
    };
    let sock = if cookie.is_multiple_of(2) {
        Sock::client(cookie)
    } else {
        Sock::server(cookie)
    };
    Some(Record {
        owner: if owned { sock.owner } else { None },
        peer_fin: fin,
        since_ns: ms.is_multiple_of(3).then_some(ms.saturating_sub(5) * MS),
        ..sock.record(ms, kind)
    })
}

proptest::proptest! {
    /// Records in any order, duplicated, missing or contradictory, with
    /// follower answers and losses in between: the tracker never panics,
    /// stays under its cap, and every record it writes is well formed.
    #[test]
    fn arbitrary_record_sequences_never_panic(
        steps in proptest::collection::vec(
            (0u64..6, 0u8..4, 1u8..13, 1u8..13, 0u64..5_000, proptest::prelude::any::<bool>(),
             proptest::option::of(proptest::prelude::any::<bool>()), 0u8..12),
            0..80,
        )
    ) {
        let mut t = Tracker::new(NonZeroUsize::new(4).unwrap()).follow_timewait();
        let mut records = Vec::new();
        for (cookie, kind, old, new, ms, owned, fin, extra) in steps {
            if let Some(r) = arbitrary_record(cookie, kind, old, new, ms, owned, fin) {
                t.on_record(&r);
            }
            match extra {
                0 => t.note_loss(),
                1 => t.tick(ms * MS),
                2 => {
                    for request in t.diag_requests(cookie % 2 == 0) {
                        let mut seen = Sightings::default();
                        for c in request.cookies() {
                            seen.insert(c, TimewaitSighting {
                                state: if c % 2 == 0 { TimeWait } else { FinWait2 },
                                seen_ns: ms * MS,
                                expires_ms: (ms % 60_000) as u32,
                            });
                        }
                        t.on_diag(&request, &seen, ms * MS);
                    }
                }
                3 => {
                    for request in t.diag_requests(true) {
                        t.on_diag_failed(&request);
                    }
                }
                4 => {
                    let states = [(cookie, TcpState::from_u8(old).unwrap_or(TimeWait))];
                    t.reconcile(&alive(&states[..usize::from(ms % 2 == 0)]), ms * MS);
                }
                _ => {}
            }
            proptest::prop_assert!(t.tracked() <= 4);
            records.extend(t.take_ready());
            let _ = (t.take_opened(), t.take_timewait_starts(), t.take_timewait_ends(), t.live().count());
        }
        records.extend(t.finish(10_000 * MS));
        for r in records {
            proptest::prop_assert!(r.cookie < 6);
            for (_, ns) in r.states.iter() {
                proptest::prop_assert!(ns <= 10_000 * MS);
            }
        }
    }
}

#[test]
fn openings_are_kept_only_for_a_consumer_that_asked() {
    // `watch` takes records and never openings: they must not pile up.
    let mut t = Tracker::new(NonZeroUsize::new(1000).unwrap());
    for cookie in 1..=100 {
        let c = Sock::client(cookie);
        feed(&mut t, &client_open(&c));
        feed(
            &mut t,
            &[
                c.step(10, Established, FinWait1),
                c.unowned_step(11, FinWait1, FinWait2),
                c.unowned_step(12, FinWait2, Close),
            ],
        );
    }
    assert!(t.opened.is_none());
    assert!(t.take_opened().is_empty());
    let mut asked = tracker();
    let c = Sock::client(1);
    feed(&mut asked, &client_open(&c));
    assert_eq!(asked.take_opened().len(), 1);
}

#[test]
fn timewait_sockets_past_the_follow_cap_are_counted_apart_from_evictions() {
    // Two sockets tracked at most: the third TIME_WAIT is not followed.
    let mut t = Tracker::new(NonZeroUsize::new(2).unwrap()).follow_timewait();
    let mut sightings = Vec::new();
    for cookie in 1..=3 {
        let s = Sock::server(cookie);
        feed(&mut t, &server_open(&s));
        feed(
            &mut t,
            &[
                s.step(10, Established, FinWait1),
                s.unowned_step(11, FinWait1, FinWait2),
                s.unowned_step(11, FinWait2, Close),
            ],
        );
        // Every TIME_WAIT socket so far is still there at each look.
        sightings.push(timewait(cookie, TimeWait, 200, 59_950));
        diag(&mut t, &sightings, 200);
    }
    assert_eq!(t.take_ready().len(), 3, "every record is written");
    assert_eq!(t.take_timewait_starts().len(), 2);
    assert_eq!(t.timewait_unfollowed(), 1);
    assert_eq!(t.evicted(), 0, "no socket was dropped from the table");
}

/// The socket's figures at its end, as the kernel reads them at CLOSE.
fn ending(error: u16, retrans: u32) -> tracer_common::NetFigures {
    if error == 0 {
        crate::testutil::at_close(1_048_578, 5, 46, retrans, 0)
    } else {
        crate::testutil::at_close(0, 0, 0, retrans, error)
    }
}

#[test]
fn a_connections_figures_at_close_reach_its_record() {
    let mut t = tracker();
    let c = Sock::client(95);
    feed(&mut t, &client_open(&c));
    let close = Record {
        net: Some(ending(0, 3)),
        ..c.unowned_step(1003, FinWait2, Close)
    };
    feed(
        &mut t,
        &[
            c.step(1000, Established, FinWait1),
            c.unowned_step(1001, FinWait1, FinWait2),
            Record {
                peer_fin: Some(true),
                ..close
            },
        ],
    );
    let r = only(t.take_ready());
    assert_eq!(r.net, Some(ending(0, 3)));
    assert_eq!(r.connect_failed, None);
    assert_eq!(r.closed_by, ClosedBy::Local);
}

#[test]
fn a_failed_connect_says_why_from_the_sockets_error() {
    for (error, rst, want) in [
        (111, true, ConnectFailure::Refused),
        (110, false, ConnectFailure::Timeout),
        (113, false, ConnectFailure::Unreachable),
        (0, false, ConnectFailure::Abandoned),
        (71, false, ConnectFailure::Other),
    ] {
        let mut t = tracker();
        let c = Sock::client(96);
        t.on_record(&Record {
            lport: 0,
            ..c.step(0, Close, SynSent)
        });
        if rst {
            t.on_record(&c.record(5, Kind::ReceiveReset { state: SynSent }));
        }
        t.on_record(&Record {
            net: Some(ending(error, 2)),
            ..c.unowned_step(5, SynSent, Close)
        });
        t.tick(1_000 * MS);
        let r = only(t.take_ready());
        assert_eq!(r.connect_failed, Some(want), "errno {error}");
        assert_eq!(r.net.map(|n| n.retrans), Some(2));
    }
    // Without the figures (an older kernel layout or recording), a RST
    // still says refused; nothing else can be told.
    for (rst, want) in [
        (true, ConnectFailure::Refused),
        (false, ConnectFailure::Other),
    ] {
        let mut t = tracker();
        let c = Sock::client(97);
        t.on_record(&c.step(0, Close, SynSent));
        if rst {
            t.on_record(&c.record(5, Kind::ReceiveReset { state: SynSent }));
        }
        t.on_record(&c.unowned_step(5, SynSent, Close));
        t.tick(1_000 * MS);
        assert_eq!(only(t.take_ready()).connect_failed, Some(want));
    }
}

/// `c` opens, shuts down at `shutdown_ms` and closes at `close_ms` after
/// the peer's FIN: a TIME_WAIT from then, with no lookup needed.
fn closed_into_time_wait(t: &mut Tracker, c: &Sock, shutdown_ms: u64, close_ms: u64) {
    feed(t, &client_open(c));
    feed(
        t,
        &[
            c.step(shutdown_ms, Established, FinWait1),
            c.unowned_step(shutdown_ms + 1, FinWait1, FinWait2),
            Record {
                peer_fin: Some(true),
                ..c.unowned_step(close_ms, FinWait2, Close)
            },
        ],
    );
}

#[test]
fn a_connect_reusing_the_endpoints_of_a_time_wait_ends_it() {
    let mut t = tracker().follow_timewait();
    let old = Sock::client(80);
    closed_into_time_wait(&mut t, &old, 10, 20);
    assert!(only(t.take_ready()).time_wait);
    assert_eq!(t.take_timewait_starts().len(), 1);
    // A new connect from the same port to the same peer 3 s later: the
    // kernel handed it the timewait socket's endpoints.
    let new = Sock::client(81);
    let connect = Record {
        lport: 0,
        ..new.step(3_000, Close, SynSent)
    };
    feed(&mut t, &[connect]);
    assert!(
        t.take_timewait_ends().is_empty(),
        "no local port yet: nothing to match"
    );
    feed(
        &mut t,
        &[Record {
            since_ns: Some(3_000 * MS),
            ..new.step(3_001, SynSent, Established)
        }],
    );
    let ends = t.take_timewait_ends();
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0].duration_ns, 2_980 * MS, "ended at the connect");
    // Nothing left to end: neither a look nor the timer ends it again.
    diag(&mut t, &[], 70_000);
    t.tick(70_000 * MS);
    assert!(t.take_timewait_ends().is_empty());
}

#[test]
fn a_new_socket_on_other_endpoints_leaves_a_time_wait_alone() {
    let mut t = tracker().follow_timewait();
    let old = Sock::client(82);
    closed_into_time_wait(&mut t, &old, 10, 20);
    let new = Sock::client(83);
    feed(
        &mut t,
        &[Record {
            lport: 40001,
            ..new.step(3_001, SynSent, Established)
        }],
    );
    assert!(t.take_timewait_ends().is_empty());
}

#[test]
fn a_time_wait_ends_when_its_timer_is_due_without_a_look() {
    let mut t = tracker().follow_timewait();
    let c = Sock::client(84);
    closed_into_time_wait(&mut t, &c, 10, 500);
    assert_eq!(t.take_timewait_starts().len(), 1);
    // A look at 10 s sees its timer: due at 60.5 s.
    diag(&mut t, &[timewait(84, TimeWait, 10_000, 50_500)], 10_000);
    t.tick(60_400 * MS);
    assert!(t.take_timewait_ends().is_empty(), "not due yet");
    t.tick(60_600 * MS);
    let ends = t.take_timewait_ends();
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0].duration_ns, 60_000 * MS);
    // A later look that no longer finds it ends nothing twice.
    diag(&mut t, &[], 61_000);
    assert!(t.take_timewait_ends().is_empty());
}

#[test]
fn a_time_wait_whose_timer_a_look_saw_set_later_waits_for_it() {
    let mut t = tracker().follow_timewait();
    let c = Sock::client(85);
    closed_into_time_wait(&mut t, &c, 10, 500);
    // The peer's FIN came again at 30 s: the kernel set the timer anew.
    diag(&mut t, &[timewait(85, TimeWait, 30_000, 60_000)], 30_000);
    t.tick(61_000 * MS);
    assert!(t.take_timewait_ends().is_empty(), "due at 90 s now");
    t.tick(90_100 * MS);
    let ends = t.take_timewait_ends();
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0].duration_ns, 89_500 * MS);
}

#[test]
fn time_waits_ended_by_reuse_leave_no_pile_of_due_dates() {
    let mut t = Tracker::new(NonZeroUsize::new(100).unwrap()).follow_timewait();
    // 10,000 connections from the same port, each reusing the endpoints
    // of the one before it in TIME_WAIT.
    for i in 0..10_000u64 {
        let c = Sock::client(1000 + i);
        let at = i * 10;
        feed(
            &mut t,
            &[
                Record {
                    since_ns: Some(at * MS),
                    ..c.step(at + 1, SynSent, Established)
                },
                c.step(at + 5, Established, FinWait1),
                Record {
                    peer_fin: Some(true),
                    ..c.unowned_step(at + 6, FinWait2, Close)
                },
            ],
        );
    }
    assert_eq!(
        t.take_timewait_ends().len(),
        9_999,
        "each ended by the next"
    );
    let timewaits = t.timewaits.as_ref().unwrap();
    assert_eq!(timewaits.len(), 1);
    assert!(
        timewaits.due.len() <= 2 + timewait::DUE_SLACK,
        "{} due dates kept",
        timewaits.due.len()
    );
    // The last one still ends when due.
    t.tick(200_000 * MS);
    assert_eq!(t.take_timewait_ends().len(), 1);
}

#[test]
fn a_time_wait_due_a_little_later_than_thought_is_not_held_behind_the_rest() {
    let mut t = tracker().follow_timewait();
    let (first, second) = (Sock::client(86), Sock::client(87));
    for (c, close_ms, port) in [(&first, 500, 40_000), (&second, 10_500, 40_001)] {
        feed(
            &mut t,
            &[
                Record {
                    lport: port,
                    ..c.step(close_ms - 10, Established, FinWait1)
                },
                Record {
                    lport: port,
                    peer_fin: Some(true),
                    ..c.unowned_step(close_ms, FinWait2, Close)
                },
            ],
        );
    }
    // A look at 20 s finds the first's timer 100 ms later than its close
    // said (due at 60.6 s), the second's as said (70.5 s).
    diag(
        &mut t,
        &[
            timewait(86, TimeWait, 20_000, 40_600),
            timewait(87, TimeWait, 20_000, 50_500),
        ],
        20_000,
    );
    t.tick(60_700 * MS);
    let ends = t.take_timewait_ends();
    assert_eq!(ends.len(), 1, "the first, when due: {ends:?}");
    assert_eq!(ends[0].duration_ns, 60_100 * MS);
    t.tick(70_600 * MS);
    assert_eq!(t.take_timewait_ends().len(), 1);
}
