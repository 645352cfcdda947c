//! Scale micro-benchmark: synthetic ring records for a million sockets through the decoder, the tracker and the aggregator, in-process, with time per record and memory per tracked socket.
//!
//! `cargo bench -p tracer-user --bench scale [-- --sockets N --rounds R]`
//! prints a Markdown table. Each phase runs `R` times on fresh state and
//! the fastest run is kept (the others are noise from the rest of the
//! machine); memory is counted by a wrapping allocator, so it is exact
//! heap bytes, not page-granular RSS.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    num::NonZeroUsize,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use tracer_common::{
    AF_INET, COMM_LEN, Event, EventKind, NetFigures, OwnerSource, TcpFigures, TcpState,
};
use tracer_user::{
    bpf::decode::decode,
    model::aggregate::{Aggregator, LiveSocket, Windowing},
    model::tracker::{CLOSE_GRACE_NS, Tracker},
};

/// Counts live and peak heap bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let grow = new_size - layout.size();
                let now = LIVE.fetch_add(grow, Ordering::Relaxed) + grow;
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MS: u64 = 1_000_000;
/// Processes and remote endpoints the sockets are spread over.
const PROCESSES: u32 = 50;
const ENDPOINTS: u32 = 500;

fn comm(name: &str) -> [u8; COMM_LEN] {
    let mut c = [0; COMM_LEN];
    c[..name.len()].copy_from_slice(name.as_bytes());
    c
}

/// The ring bytes of one record for socket `i`: even ones are clients of
/// endpoint `i % ENDPOINTS`, odd ones are accepted by a server on port
/// 8080. Made on the fly (a million sockets' records would take more
/// memory than what is measured); the time it takes is measured apart and
/// taken off.
fn event(
    i: u32,
    ts_ns: u64,
    since_ns: u64,
    old: TcpState,
    new: TcpState,
) -> [u8; size_of::<Event>()] {
    let client = i.is_multiple_of(2);
    let peer = 0x0a00_0000 + (i % ENDPOINTS);
    let mut saddr = [0; 16];
    saddr[..4].copy_from_slice(&0x0a01_0001u32.to_be_bytes());
    let mut daddr = [0; 16];
    daddr[..4].copy_from_slice(&peer.to_be_bytes());
    let ephemeral = 10_000 + (i / ENDPOINTS % 50_000) as u16;
    let event = Event {
        ts_ns,
        cookie: u64::from(i) + 1,
        since_ns,
        cgroup_id: 1000 + u64::from(i % PROCESSES),
        saddr,
        daddr,
        comm: comm(if client { "client" } else { "server" }),
        tgid: 100 + i % PROCESSES,
        netns: 4_026_531_840,
        sport: if client { ephemeral } else { 8080 },
        dport: if client { 443 } else { ephemeral },
        family: AF_INET,
        kind: EventKind::StateChange as u8,
        old_state: old as u8,
        new_state: new as u8,
        owner_source: OwnerSource::Recorded as u8,
        fin_received: 0,
        has_tcp: 0,
        no_timewait: 0,
        _pad: [0; 3],
        tcp: TcpFigures::default(),
        net: NetFigures::default(),
    };
    // SAFETY: `Event` is plain data with no padding (asserted in tracer-common).
    unsafe { std::mem::transmute::<Event, [u8; size_of::<Event>()]>(event) }
}

/// Socket `i`'s opening record: a client's connect dated by `since_ns`,
/// an accepted socket born with its record.
fn open_record(i: u32) -> [u8; size_of::<Event>()] {
    let t = u64::from(i) * 1_000;
    if i.is_multiple_of(2) {
        event(i, t + 50_000, t, TcpState::SynSent, TcpState::Established)
    } else {
        event(i, t + 50_000, 0, TcpState::SynRecv, TcpState::Established)
    }
}

/// Socket `i`'s closing records, ten seconds on: the peer's FIN, the
/// application's close, the last ACK.
fn close_record(i: u32, step: u32) -> [u8; size_of::<Event>()] {
    use TcpState::{Close, CloseWait, Established, LastAck};
    let t = 10_000 * MS + u64::from(i) * 1_000;
    match step {
        0 => event(i, t, 0, Established, CloseWait),
        1 => event(i, t + 200_000, t, CloseWait, LastAck),
        _ => event(i, t + 300_000, t + 200_000, LastAck, Close),
    }
}

struct Phase {
    name: &'static str,
    items: usize,
    best: Duration,
}

fn per_item_ns(p: &Phase) -> f64 {
    p.best.as_nanos() as f64 / p.items as f64
}

fn rss_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

struct Args {
    sockets: u32,
    rounds: usize,
}

fn args() -> Args {
    let mut out = Args {
        sockets: 1_000_000,
        rounds: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} takes a number"))
        };
        match arg.as_str() {
            "--sockets" => {
                out.sockets = u32::try_from(value("--sockets")).expect("--sockets fits in a u32");
            }
            "--rounds" => out.rounds = value("--rounds").max(1),
            // What `cargo bench` passes to every bench target.
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    out
}

fn main() {
    let Args { sockets, rounds } = args();
    let cap = NonZeroUsize::new(sockets as usize).expect("non-zero");
    let mut open = Phase {
        name: "open: decode + track (ESTABLISHED)",
        items: sockets as usize,
        best: Duration::MAX,
    };
    let mut observe = Phase {
        name: "observe: live sockets into the aggregate",
        items: sockets as usize,
        best: Duration::MAX,
    };
    let mut close = Phase {
        name: "close: decode + track + aggregate (3 records each)",
        items: sockets as usize * 3,
        best: Duration::MAX,
    };
    let mut making = Duration::MAX;
    let mut tracked_heap = 0;
    let mut tracked_rss_kb = 0;
    for _ in 0..rounds {
        let start = Instant::now();
        for i in 0..sockets {
            black_box(open_record(i));
            for step in 0..3 {
                black_box(close_record(i, step));
            }
        }
        making = making.min(start.elapsed());
        let before = LIVE.load(Ordering::Relaxed);
        let mut tracker = Tracker::new(cap).follow_timewait().with_openings();
        let mut agg = Aggregator::new(100_000, 0, Windowing::WHOLE_RUN);

        let start = Instant::now();
        for i in 0..sockets {
            let record = decode(&open_record(i)).expect("valid record");
            tracker.on_record(&record);
        }
        for id in tracker.take_opened() {
            agg.on_opened(&id, 0);
        }
        open.best = open.best.min(start.elapsed());
        assert_eq!(tracker.tracked(), sockets as usize);
        tracked_heap = LIVE.load(Ordering::Relaxed) - before;
        tracked_rss_kb = rss_kb("VmRSS:");

        let start = Instant::now();
        agg.observe(
            tracker.live().map(|l| LiveSocket {
                id: l.id,
                owner_known: l.owner_known,
                cookie: l.cookie,
                state: l.state,
                since_ns: l.since_ns,
                io: None,
            }),
            5_000 * MS,
        );
        observe.best = observe.best.min(start.elapsed());

        let start = Instant::now();
        for i in 0..sockets {
            for step in 0..3 {
                let record = decode(&close_record(i, step)).expect("valid record");
                tracker.on_record(&record);
            }
            // The session ticks after each drain of the ring.
            if i % 1024 == 0 {
                tracker.tick(10_000 * MS + u64::from(i) * 1_000);
                for r in tracker.take_ready() {
                    agg.on_record(&r);
                }
            }
        }
        tracker.tick(u64::MAX - CLOSE_GRACE_NS);
        for r in tracker.take_ready() {
            agg.on_record(&r);
        }
        close.best = close.best.min(start.elapsed());
        assert_eq!(tracker.tracked(), 0);
        let closed: u64 = agg.groups().map(|(_, g)| g.total().closed).sum();
        assert_eq!(closed, u64::from(sockets));
        black_box((&tracker, &agg));
    }
    println!(
        "Tracker and aggregator in-process (`cargo bench -p tracer-user --bench scale`): {sockets} synthetic sockets spread over {PROCESSES} processes and {ENDPOINTS} remote endpoints; best of {rounds} runs.\n"
    );
    // Making a record takes about the same for every kind: a quarter of
    // the loop that made all four of each socket's.
    let make_ns = making.as_nanos() as f64 / (f64::from(sockets) * 4.0);
    println!("| phase | items | ns per item |\n|---|---|---|");
    for (p, made) in [(&open, true), (&observe, false), (&close, true)] {
        let ns = per_item_ns(p) - if made { make_ns } else { 0.0 };
        println!("| {} | {} | {:.0} |", p.name, p.items, ns.max(0.0));
    }
    println!(
        "\n| memory | value |\n|---|---|\n| heap with {sockets} sockets tracked | {:.1} MiB ({:.0} bytes per socket) |\n| process RSS with {sockets} sockets tracked | {:.1} MiB |\n| peak heap of the run | {:.1} MiB |",
        mib(tracked_heap),
        tracked_heap as f64 / f64::from(sockets),
        tracked_rss_kb as f64 / 1024.0,
        mib(PEAK.load(Ordering::Relaxed)),
    );
}
