//! The session and its analysis driven through the seam by a scripted host: records become lifecycles, lookups finish lingering sockets, a loss is checked against a dump, malformed records are counted, and the analysis names holders and finds a leak with what the host tells it.

use std::{future::Future, num::NonZeroUsize};

use tracer_common::TcpState::{
    Close, CloseWait, Established, FinWait1, FinWait2, LastAck, Listen, SynRecv, SynSent, TimeWait,
};

use super::{
    Progress, Session, TraceOptions,
    analysis::{Analysis, Judging},
    host::Event,
    scripted::ScriptedHost,
};
use crate::{
    bpf::load::LoadOptions,
    host::last_io::Seen,
    model::event::{Kind, LoggedStep, StepLog},
    model::{
        diagnose::{Figure, Pathology},
        select::Selection,
        tracker::{ClosedBy, Fw2End, Role, TimewaitSighting, Tracker},
    },
    testutil::{MS, NETNS, Sock, encode_entry, encode_log, owner},
};

/// Runs a future of the session to its end (the scripted host never waits).
fn run<T>(future: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
        .block_on(future)
}

fn session<H: super::Host>(host: H) -> Session<H> {
    let tracker = Tracker::new(NonZeroUsize::new(1000).unwrap())
        .follow_timewait()
        .with_openings();
    Session::new(host, tracker, true)
}

/// A host whose start-up snapshot found nothing open.
fn seeded_host() -> ScriptedHost {
    let mut host = ScriptedHost::default();
    host.events.push_back(Event::Seeded {
        seeds: Vec::new(),
        unreadable: 0,
    });
    host
}

/// A client that connects, then closes first at 1 s; its socket is
/// orphaned in FIN_WAIT2 at once (a timewait socket takes its place).
fn client_closing_first(c: &Sock) -> Vec<crate::model::event::Record> {
    let connect = crate::model::event::Record {
        lport: 0,
        ..c.step(0, Close, SynSent)
    };
    vec![
        connect,
        c.step(1, SynSent, Established),
        c.step(1000, Established, FinWait1),
        c.unowned_step(1001, FinWait1, FinWait2),
        c.unowned_step(1001, FinWait2, Close),
    ]
}

#[test]
fn ring_records_and_lookups_finish_a_lingering_client_connection() {
    let mut s = session(seeded_host());
    let c = Sock::client(1);
    s.host.write(&client_closing_first(&c));
    s.host.now_ns = 1002 * MS;
    let progress = run(s.step()).unwrap();
    assert!(
        matches!(
            progress,
            Progress::Seeded {
                open: 0,
                unreadable: 0
            }
        ),
        "{progress:?}"
    );
    assert!(
        s.tracker.take_ready().is_empty(),
        "FIN_WAIT2 waits for a lookup"
    );
    // The peer's FIN came at 3 s: the kernel now has it in TIME_WAIT.
    s.host.timewait.insert(
        1,
        TimewaitSighting {
            state: TimeWait,
            seen_ns: 3200 * MS,
            expires_ms: 59_800,
        },
    );
    s.host.now_ns = 3200 * MS;
    s.host.events.push_back(Event::DiagTick);
    run(s.step()).unwrap();
    assert_eq!(s.host.diag_asked.len(), 1, "one lookup of the namespace");
    assert_eq!(s.host.diag_asked[0].fin_wait2[0].cookie, 1);
    run(s.step()).unwrap();
    let records = s.tracker.take_ready();
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = &records[0];
    assert_eq!((r.role, r.closed_by), (Role::Client, ClosedBy::Local));
    assert_eq!(r.fin_wait2_end, Some(Fw2End::PeerFin));
    assert_eq!(r.states.get(FinWait2), Some(1999 * MS));
    assert!(r.complete);
    assert_eq!(s.counts.events, 5);
}

#[test]
fn a_loss_is_checked_against_a_dump_and_what_is_gone_ends_unsure() {
    let mut s = session(seeded_host());
    let (listener, srv) = (Sock::server(70), Sock::server(7));
    s.host.write(&[
        listener.step(0, Close, Listen),
        srv.unowned_step(10, Listen, SynRecv),
        srv.unowned_step(11, SynRecv, Established),
    ]);
    s.host.now_ns = 3_000 * MS;
    run(s.step()).unwrap();
    assert_eq!(s.host.alive_asked, 0, "no loss, no dump");
    // Records were dropped: the connection's end may be among them. The
    // dump finds the listener but not the connection.
    s.host.dropped = 4;
    s.host.alive.states.insert(70, Listen);
    s.host.alive.netns.insert(NETNS);
    run(s.step()).unwrap();
    assert_eq!(s.host.alive_asked, 1, "one dump after the loss");
    run(s.step()).unwrap();
    s.tracker.tick(u64::MAX / 2);
    let records = s.tracker.take_ready();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert!(!records[0].complete, "its end was not seen");
    let summary = s.summary(1000);
    assert!(summary.contains("4 dropped (ring full)"), "{summary}");
}

#[test]
fn malformed_records_are_counted_and_warned_about_once() {
    let mut s = session(ScriptedHost::default());
    s.host.ring.extend([vec![0; 3], vec![0; 200]]);
    run(s.step()).unwrap();
    assert_eq!((s.counts.events, s.counts.malformed), (2, 2));
    let warnings = s.take_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("skipping malformed records: record of 3 bytes"),
        "{warnings:?}"
    );
    assert!(s.take_warnings().is_empty(), "said once");
}

#[test]
fn stopping_detaches_and_looks_up_what_still_lingers() {
    let mut s = session(seeded_host());
    let c = Sock::client(2);
    s.host.write(&client_closing_first(&c));
    s.host.now_ns = 1002 * MS;
    run(s.step()).unwrap();
    // Gone by the time of the last lookup: its FIN_WAIT2 timer ran out.
    s.host.now_ns = 61_002 * MS;
    run(s.stop()).unwrap();
    assert!(s.host.detached);
    assert!(!s.host.diag_asked.is_empty(), "a last lookup");
    let records = s.tracker.take_ready();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0].closed_by, ClosedBy::Local);
    assert!(!records[0].time_wait);
}

/// An accepted socket's life as its entry logs it: established at 10 ms,
/// the peer's FIN at 20 ms, closed by its server at 5 s.
fn server_life() -> Vec<LoggedStep> {
    let step = |ms: u64, old, new| LoggedStep {
        ts_ns: ms * MS,
        kind: Kind::StateChange { old, new },
        peer_fin: Some(matches!(new, CloseWait | LastAck | Close)),
        tcp: false,
        no_timewait: false,
    };
    vec![
        step(10, SynRecv, Established),
        step(20, Established, CloseWait),
        step(5_000, CloseWait, LastAck),
        step(5_001, LastAck, Close),
    ]
}

fn log_of(srv: &Sock, steps: &[LoggedStep]) -> StepLog {
    StepLog::new(srv.step(0, Close, Close), 0, None, None, steps)
}

#[test]
fn live_sockets_steps_come_from_their_entries_and_their_log_adds_the_rest() {
    let mut s = session(seeded_host());
    run(s.step()).unwrap();
    let srv = Sock::server(7);
    let life = server_life();
    // Alive in CLOSE_WAIT: only its entry says so.
    s.host.entries = vec![(7, encode_entry(&log_of(&srv, &life[..2])))];
    s.host.now_ns = 1_000 * MS;
    s.host.events.push_back(Event::EntriesTick);
    run(s.step()).unwrap();
    let live: Vec<_> = s
        .tracker
        .live()
        .map(|l| (l.cookie, l.state, l.since_ns))
        .collect();
    assert_eq!(live, [(7, CloseWait, Some(20 * MS))]);
    // Read again with nothing new: nothing changes.
    s.host.events.push_back(Event::EntriesTick);
    run(s.step()).unwrap();
    assert_eq!(s.tracker.live().count(), 1);
    // Its server closes: the whole log is written, the entry goes.
    s.host.entries.clear();
    s.host.ring.push_back(encode_log(&log_of(&srv, &life)));
    s.host.now_ns = 6_000 * MS;
    run(s.step()).unwrap();
    s.tracker.tick(10_000 * MS);
    let records = s.tracker.take_ready();
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = &records[0];
    assert_eq!((r.role, r.closed_by), (Role::Server, ClosedBy::Remote));
    assert_eq!(r.states.get(CloseWait), Some(4_980 * MS));
    assert_eq!(s.counts.events, 1, "one ring record for the socket's life");
    assert_eq!(s.tracker.live().count(), 0);
}

#[test]
fn a_log_written_while_the_entries_are_read_is_delivered_once() {
    let mut s = session(seeded_host());
    run(s.step()).unwrap();
    let srv = Sock::server(8);
    let life = server_life();
    // The read finds it in CLOSE_WAIT; its life ends before the drain.
    s.host.entries = vec![(8, encode_entry(&log_of(&srv, &life[..2])))];
    s.host
        .written_during_read
        .push(encode_log(&log_of(&srv, &life)));
    s.host.now_ns = 6_000 * MS;
    s.host.events.push_back(Event::EntriesTick);
    run(s.step()).unwrap();
    s.tracker.tick(10_000 * MS);
    let records = s.tracker.take_ready();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0].states.get(CloseWait), Some(4_980 * MS));
    assert_eq!(
        s.tracker.live().count(),
        0,
        "the read's older copy did not bring the socket back"
    );
}

#[test]
fn stopping_reads_the_entries_of_sockets_still_open() {
    let mut s = session(seeded_host());
    run(s.step()).unwrap();
    let srv = Sock::server(9);
    let life = server_life();
    s.host.entries = vec![(9, encode_entry(&log_of(&srv, &life[..2])))];
    s.host.now_ns = 1_000 * MS;
    run(s.stop()).unwrap();
    let finished = s.tracker.finish(1_000 * MS);
    assert_eq!(finished.len(), 1, "{finished:#?}");
    assert_eq!(finished[0].closed_by, ClosedBy::Remote, "{finished:#?}");
}

fn trace() -> TraceOptions {
    TraceOptions {
        load: LoadOptions {
            filters: crate::model::select::Filters::default(),
            ring_bytes: 4 << 20,
            every_transition: false,
            disabled_hooks: Vec::new(),
            owner_entries: 1000,
        },
        max_sockets: NonZeroUsize::new(1000).unwrap(),
        selection: Selection::default(),
        cgroup: None,
        node_root: std::path::PathBuf::from("/"),
    }
}

/// Asks for a look and steps until it, and any look it led to (the fds
/// of a leak), is applied.
fn look(a: &mut Analysis<ScriptedHost>) {
    a.look();
    until_looked(a);
}

/// Steps until the looks asked are applied.
fn until_looked(a: &mut Analysis<ScriptedHost>) {
    for _ in 0..10 {
        let progress = run(a.step()).unwrap();
        if matches!(progress, Progress::Looked) && a.session.host.idle() {
            return;
        }
    }
    panic!("the look never completed");
}

/// A prefork server: the listener's creator (pid 200) forks a worker (pid
/// 201) that accepts; the peers close and the worker never does.
fn prefork_leak(host: &mut ScriptedHost) {
    let listener = Sock::server(100);
    host.write(&[listener.step(0, Close, Listen)]);
    for cookie in 1..=3u64 {
        let s = Sock {
            cookie,
            ..Sock::server(cookie)
        };
        host.write(&[
            s.unowned_step(10, Listen, SynRecv),
            s.unowned_step(11, SynRecv, Established),
            s.unowned_step(20, Established, CloseWait),
        ]);
        let inode = 5000 + u32::try_from(cookie).unwrap();
        host.open.insert(cookie, Seen { io: None, inode });
        host.holders
            .insert(inode, vec![owner(200, "nginx"), owner(201, "nginx")]);
    }
    host.close_wait_fds.insert(201, vec![7, 8, 9]);
}

#[test]
fn analysis_names_the_worker_holding_accepted_sockets_and_finds_their_leak() {
    let mut host = seeded_host();
    prefork_leak(&mut host);
    let mut a = Analysis::new(session(host), &trace(), 100, Judging::whole_run());
    // A boot clock well past the tracer's first look for holders.
    a.session.host.now_ns = 10_000 * MS;
    run(a.step()).unwrap();
    assert!(a.seeded);
    // The first look is asked with the snapshot, and answered after.
    until_looked(&mut a);
    let owners: Vec<u32> = a
        .live()
        .iter()
        .filter(|l| l.state == CloseWait)
        .filter_map(|l| l.id.owner.map(|o| o.pid))
        .collect();
    assert_eq!(
        owners,
        vec![201, 201, 201],
        "the worker, not the listener's creator"
    );
    // Six seconds on, the three are still in CLOSE_WAIT: a leak.
    a.session.host.now_ns = 16_000 * MS;
    look(&mut a);
    let findings = a.findings();
    let leak = findings
        .iter()
        .find(|f| f.pathology == Pathology::CloseWaitLeak)
        .unwrap_or_else(|| panic!("no leak in {findings:#?}"));
    assert_eq!(leak.who.pid, Some(201));
    assert!(
        leak.evidence
            .iter()
            .any(|(name, f)| *name == "fds" && matches!(f, Figure::Fds(fds) if fds == &[7, 8, 9])),
        "{leak:#?}"
    );
    assert!(leak.summary.contains("(fds 7, 8, 9)"), "{}", leak.summary);
}

#[test]
fn analysis_feeds_only_owners_in_the_cgroup_asked_for() {
    let mut host = seeded_host();
    let inside = Sock {
        owner: Some(crate::model::event::Owner {
            cgroup_id: 11,
            ..owner(300, "app")
        }),
        ..Sock::client(1)
    };
    let outside = Sock {
        owner: Some(crate::model::event::Owner {
            cgroup_id: 12,
            ..owner(301, "other")
        }),
        ..Sock::client(2)
    };
    for c in [&inside, &outside] {
        host.write(&[
            c.step(0, Close, SynSent),
            c.step(1, SynSent, Established),
            c.unowned_step(5, Established, CloseWait),
            c.step(6, CloseWait, LastAck),
            c.unowned_step(7, LastAck, Close),
        ]);
    }
    host.cgroups.insert(11, "/system.slice/app.service".into());
    host.cgroups
        .insert(12, "/system.slice/other.service".into());
    let mut options = trace();
    options.cgroup = Some("/system.slice/app.service".into());
    let mut a = Analysis::new(session(host), &options, 100, Judging::whole_run());
    a.tap = Some(super::analysis::Fed::default());
    a.session.host.now_ns = 100 * MS;
    run(a.step()).unwrap();
    a.session.host.now_ns = 10_000 * MS;
    run(a.stop()).unwrap();
    let fed = a.tap.take().unwrap();
    let pids: Vec<u32> = fed
        .records
        .iter()
        .filter_map(|r| r.owner.map(|o| o.pid))
        .collect();
    assert_eq!(pids, vec![300], "{fed:#?}");
}

/// A live socket: cookie, state, since.
type LiveSocket = (u64, tracer_common::TcpState, Option<u64>);

/// Live sockets in cookie order.
fn live_of(t: &Tracker) -> Vec<LiveSocket> {
    let mut l: Vec<_> = t.live().map(|l| (l.cookie, l.state, l.since_ns)).collect();
    l.sort_unstable();
    l
}

/// What a replay of the recording at `path` gives: the live sockets after
/// each step, the records, and the summary. The file is removed.
fn replay_all(
    path: &std::path::Path,
) -> (
    Vec<Vec<LiveSocket>>,
    Vec<crate::model::tracker::ConnRecord>,
    String,
) {
    use super::{Host as _, journal::ReplayHost};
    let mut r = session(ReplayHost::open(path).unwrap());
    let (mut steps, mut records) = (Vec::new(), Vec::new());
    run(async {
        while !r.host.exhausted() {
            r.step().await.unwrap();
            steps.push(live_of(&r.tracker));
            records.extend(r.tracker.take_ready());
        }
        r.stop().await.unwrap();
    });
    let now = r.host.now_ns();
    records.extend(r.tracker.finish(now));
    let _ = std::fs::remove_file(path);
    (steps, records, r.summary(1000))
}

/// A session on record, then its replay: the replay hands the session the
/// same events, records and answers (the scripted host's clock and
/// lookups included), so the same lifecycles come out, with the same
/// figures and the same loss counts.
#[test]
fn a_recorded_session_replays_to_the_same_records() {
    use super::journal::Recorder;
    use crate::host::recording_file::{Header, RecordingWriter};

    let path = std::env::temp_dir().join(format!("tcplinger-unit-journal-{}", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    let header = Header {
        started_boot_ns: 0,
        started_unix_ns: 1_700_000_000_000_000_000,
        ..Header::default()
    };
    let writer = RecordingWriter::new(Box::new(file), &header, None).unwrap();
    let mut host = seeded_host();
    let c = Sock::client(1);
    host.write(&client_closing_first(&c));
    host.now_ns = 1002 * MS;
    host.dropped = 2;
    let mut s = session(Recorder::new(host, writer));
    let mut live = Vec::new();
    run(async {
        s.step().await.unwrap();
        // The peer's FIN: TIME_WAIT, then a lookup finds it so.
        s.host.inner.timewait.insert(
            1,
            TimewaitSighting {
                state: TimeWait,
                seen_ns: 3200 * MS,
                expires_ms: 59_800,
            },
        );
        s.host.inner.now_ns = 3200 * MS;
        s.host.inner.events.push_back(Event::DiagTick);
        s.step().await.unwrap();
        s.step().await.unwrap();
        live.extend(s.tracker.take_ready());
        // Records left for the last drain, and a loss counted at the stop:
        // the replay must see the loss where the session saw it.
        let late = Sock::client(2);
        s.host.inner.write(&client_closing_first(&late));
        s.host.inner.dropped = 3;
        s.stop().await.unwrap();
    });
    live.extend(s.tracker.finish(s.host.inner.now_ns));
    let live_summary = s.summary(1000);
    s.host.finish().unwrap();
    assert_eq!(live.len(), 2, "{live:#?}");

    let (_, replayed, summary) = replay_all(&path);
    assert_eq!(replayed, live);
    assert_eq!(summary, live_summary);
    assert!(live_summary.contains("3 dropped"), "{live_summary}");
}

/// A folding kernel on record: the reads of live entries (one unchanged
/// since the read before, so written as a reference), a log written while
/// they are read, and the counts of entries made and freed replay to the
/// same live sockets after every step, the same records and summary.
#[test]
fn a_recorded_session_of_folded_logs_replays_the_same() {
    use super::journal::Recorder;
    use crate::host::recording_file::{Header, RecordingWriter};

    let path = std::env::temp_dir().join(format!("tcplinger-unit-fold-{}", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    let writer = RecordingWriter::new(Box::new(file), &Header::default(), None).unwrap();
    let (a, b) = (Sock::server(21), Sock::server(22));
    let life = server_life();
    let mut s = session(Recorder::new(seeded_host(), writer));
    let mut live_steps = Vec::new();
    let mut live = Vec::new();
    run(async {
        s.step().await.unwrap();
        live_steps.push(live_of(&s.tracker));
        // Both alive in CLOSE_WAIT.
        s.host.inner.entries = vec![
            (21, encode_entry(&log_of(&a, &life[..2]))),
            (22, encode_entry(&log_of(&b, &life[..2]))),
        ];
        s.host.inner.entries_made = 2;
        s.host.inner.now_ns = 1_000 * MS;
        s.host.inner.events.push_back(Event::EntriesTick);
        s.step().await.unwrap();
        live_steps.push(live_of(&s.tracker));
        // Read again: a unchanged, b's life ends as it is read.
        s.host.inner.entries = vec![(21, encode_entry(&log_of(&a, &life[..2])))];
        s.host
            .inner
            .written_during_read
            .push(encode_log(&log_of(&b, &life)));
        s.host.inner.entries_freed = 1;
        s.host.inner.now_ns = 6_000 * MS;
        s.host.inner.events.push_back(Event::EntriesTick);
        s.step().await.unwrap();
        live_steps.push(live_of(&s.tracker));
        live.extend(s.tracker.take_ready());
        s.stop().await.unwrap();
    });
    live.extend(s.tracker.finish(s.host.inner.now_ns));
    let live_summary = s.summary(1000);
    s.host.finish().unwrap();
    assert_eq!(live_steps[1].len(), 2, "{live_steps:?}");
    assert_eq!(live_steps[2].len(), 1, "{live_steps:?}");

    let (replayed_steps, replayed, summary) = replay_all(&path);
    assert_eq!(replayed_steps, live_steps);
    assert_eq!(replayed, live);
    assert_eq!(summary, live_summary);
}

mod replay_fuzz {
    use proptest::prelude::*;

    use super::{run, session};
    use crate::{
        host::recording_file::{Header, RecordingWriter},
        session::{Host as _, journal::ReplayHost},
    };

    /// A recording of well-framed blocks holding anything: known tags
    /// with arbitrary payloads (JSON or not), unknown tags.
    fn recording(blocks: &[(u8, Vec<u8>)], name: &str) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("tcplinger-unit-fuzz-{}-{name}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let mut w = RecordingWriter::new(Box::new(file), &Header::default(), None).unwrap();
        for (tag, payload) in blocks {
            w.push(*tag, payload).unwrap();
        }
        w.finish().unwrap();
        path
    }

    fn payload() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            // Plausible JSON, wrong shapes.
            Just(br#"{"now_ns":5,"value":"Ring"}"#.to_vec()),
            Just(br#"{"now_ns":5,"value":"DiagTick"}"#.to_vec()),
            Just(br#"{"now_ns":18446744073709551615,"value":{"Seeded":{"seeds":[],"unreadable":3}}}"#.to_vec()),
            Just(br#"{"now_ns":1,"value":{"Looked":{"fds_only":true,"seen":{},"holders":{},"fds":{"7":[1,2]}}}}"#.to_vec()),
            Just(br#"{"now_ns":1,"value":[1,{"path":"/x","container_id":null,"pod_uid":null}]}"#.to_vec()),
            Just(br#"{"now_ns":1,"value":null}"#.to_vec()),
            Just(br#"{"now_ns":"x"}"#.to_vec()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the blocks hold, a replay steps to its end and stops
        /// without panicking.
        #[test]
        fn a_replay_of_any_blocks_ends_without_panicking(
            blocks in proptest::collection::vec((0u8..16, payload()), 0..40)
        ) {
            let path = recording(&blocks, "any");
            let mut s = session(ReplayHost::open(&path).unwrap());
            run(async {
                for _ in 0..200 {
                    if s.host.exhausted() {
                        break;
                    }
                    s.step().await.unwrap();
                }
                s.stop().await.unwrap();
            });
            let now = s.host.now_ns();
            let _ = s.tracker.finish(now);
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[test]
fn entries_the_full_kernel_map_recycled_count_as_evicted() {
    let mut s = session(seeded_host());
    run(s.step()).unwrap();
    let srv = Sock::server(11);
    let life = server_life();
    // 30 entries made, 5 freed, 1 in the map now: the map recycled 24.
    s.host.entries = vec![(11, encode_entry(&log_of(&srv, &life[..1])))];
    (s.host.entries_made, s.host.entries_freed) = (30, 5);
    s.host.events.push_back(Event::EntriesTick);
    run(s.step()).unwrap();
    assert_eq!(s.evicted(), 24);
    // Sockets freed since, none made: the figure never goes back.
    s.host.entries_freed = 29;
    s.host.entries.clear();
    s.host.events.push_back(Event::EntriesTick);
    run(s.step()).unwrap();
    assert_eq!(s.evicted(), 24);
    let summary = s.summary(1000);
    assert!(
        summary.contains("24 evicted (over --max-sockets 1000)"),
        "{summary}"
    );
}

#[test]
fn time_wait_looks_spread_out_as_the_table_grows() {
    use super::timewait_poll_ns;
    const S: u64 = 1_000_000_000;
    assert_eq!(timewait_poll_ns(0), 5 * S, "a quiet host: every 5 s");
    assert_eq!(timewait_poll_ns(100_000), 5 * S);
    assert_eq!(
        timewait_poll_ns(131_072),
        6_553_600_000,
        "20,000 read a second"
    );
    assert_eq!(timewait_poll_ns(400_000), 20 * S);
    assert_eq!(timewait_poll_ns(1_000_000), 30 * S, "at most 30 s apart");
    assert_eq!(timewait_poll_ns(u64::MAX), 30 * S);
}

#[test]
fn the_first_time_wait_look_waits_a_period_after_the_start() {
    // Started 100 s after boot.
    let mut host = seeded_host();
    host.now_ns = 100_000 * MS;
    let mut s = session(host);
    let c = Sock::client(1);
    s.host.write(&client_closing_first(&c));
    s.host.timewait.insert(
        1,
        TimewaitSighting {
            state: TimeWait,
            seen_ns: 101_100 * MS,
            expires_ms: 59_900,
        },
    );
    s.host.now_ns = 101_100 * MS;
    run(s.step()).unwrap();
    s.host.events.push_back(Event::DiagTick);
    run(s.step()).unwrap();
    run(s.step()).unwrap();
    assert_eq!(s.tracker.take_ready().len(), 1, "looked up as an orphan");
    let asks_timewait =
        |s: &Session<ScriptedHost>| s.host.diag_asked.iter().any(|r| !r.time_wait.is_empty());
    s.host.now_ns = 104_900 * MS;
    s.host.events.push_back(Event::DiagTick);
    run(s.step()).unwrap();
    assert!(!asks_timewait(&s), "{:?}", s.host.diag_asked);
    s.host.now_ns = 105_100 * MS;
    s.host.events.push_back(Event::DiagTick);
    run(s.step()).unwrap();
    assert!(asks_timewait(&s), "{:?}", s.host.diag_asked);
}

#[test]
fn a_recordings_analysis_asks_the_looks_a_full_one_asks() {
    // What the host is asked, and the fds of the leak it finds.
    let asked = |lookups_only: bool| {
        let mut host = seeded_host();
        prefork_leak(&mut host);
        let a = Analysis::new(session(host), &trace(), 100, Judging::whole_run());
        let mut a = if lookups_only { a.lookups_only() } else { a };
        a.session.host.now_ns = 10_000 * MS;
        run(a.step()).unwrap();
        until_looked(&mut a);
        a.session.host.now_ns = 16_000 * MS;
        look(&mut a);
        let fds: Vec<Figure> = a
            .findings()
            .into_iter()
            .filter(|f| f.pathology == Pathology::CloseWaitLeak)
            .flat_map(|f| f.evidence)
            .filter(|(name, _)| *name == "fds")
            .map(|(_, f)| f)
            .collect();
        (
            a.session.host.looks_asked,
            fds,
            a.agg.groups().map(|(_, g)| g.total().opened).sum::<u64>(),
        )
    };
    let (full_looks, full_fds, full_opened) = asked(false);
    let (looks, fds, opened) = asked(true);
    assert_eq!(
        looks, full_looks,
        "the same looks, the leak's fds among them"
    );
    assert_eq!(fds, full_fds);
    assert_eq!(fds, vec![Figure::Fds(vec![7, 8, 9])]);
    assert_eq!(
        (full_opened, opened),
        (3, 0),
        "only the full analysis aggregates the openings"
    );
}
