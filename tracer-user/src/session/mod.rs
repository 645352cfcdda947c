//! A connection-tracing session shared by `watch`, `report` and `top`: programs attached, the ring drained into the tracker, the start-up snapshot and the timewait follower running alongside.

pub mod analysis;

use std::io;

use anyhow::Context as _;
use tokio::{
    task::JoinHandle,
    time::{Interval, MissedTickBehavior, interval},
};
use tracer_common::TcpState;

use crate::{
    bpf::decode::decode,
    bpf::load::{self, LoadOptions, Tracer},
    bpf::ring::{EventSource, MAX_BATCH},
    host::clock::{self, WallClock},
    host::follow::{DIAG_INTERVAL, DiagAnswer, Follower},
    host::snapshot,
    model::event::Record,
    model::tracker::{Alive, CLOSE_GRACE_NS, Seed, Tracker},
};

/// After a loss, the tracker is checked against a dump of every socket at
/// most this often: a dump of a large host costs tens of ms, and under a
/// sustained flood losses are noted at every step.
const RECHECK_EVERY_NS: u64 = 2_000_000_000;

/// How often followed TIME_WAIT sockets are looked up: they change once
/// in 60 s, and their table can be large (a dump of 130,000 costs tens of
/// ms). Expiry is dated from the timer; only a TIME_WAIT cut short (reused,
/// reset) is dated to the look that missed it, up to this late.
const TIMEWAIT_POLL_NS: u64 = 5_000_000_000;

/// What a tracing session is started with (built by `settings`).
#[derive(Debug, Clone)]
pub struct TraceOptions {
    /// What the kernel side is told.
    pub load: LoadOptions,
    /// Most sockets the tracker follows at once.
    pub max_sockets: std::num::NonZeroUsize,
    /// `--comm` and `--remote`: what is reported of what was traced.
    pub selection: crate::model::select::Selection,
    /// Only owners in cgroups under this path (the daemon's `--cgroup`).
    pub cgroup: Option<String>,
}

/// What one run saw and lost.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub events: u64,
    pub malformed: u64,
}

/// Passes every waiting ring record, decoded, to `each`; returns how many
/// were read. Malformed records are counted and the first is reported.
pub fn drain(
    source: &mut EventSource,
    counts: &mut Counts,
    mut each: impl FnMut(&Record) -> io::Result<()>,
) -> io::Result<usize> {
    source.drain(|bytes| {
        counts.events += 1;
        match decode(bytes) {
            Ok(record) => each(&record),
            Err(err) => {
                if counts.malformed == 0 {
                    eprintln!("tcplinger: skipping malformed record: {err}");
                }
                counts.malformed += 1;
                Ok(())
            }
        }
    })
}

/// Once the programs are attached: says what a missing optional hook
/// costs, and gives up the capabilities only loading needed.
pub fn attached(tracer: &Tracer) {
    for d in &tracer.degraded {
        eprintln!("tcplinger: warning: {d}");
    }
    crate::bpf::privilege::drop_or_warn();
}

/// Says that the start-up snapshot could not read some namespaces, if so.
pub fn warn_unreadable(unreadable: usize) {
    if unreadable > 0 {
        eprintln!(
            "tcplinger: warning: {unreadable} sock_diag dumps of network namespaces failed; their sockets already open are not known"
        );
    }
}

/// Something a step of the session did that its user may want to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The start-up snapshot is in: `open` sockets already existed; dumps of
    /// `unreadable` namespaces failed.
    Seeded { open: usize, unreadable: usize },
    /// Records were processed (or nothing happened).
    Drained,
}

pub struct Session {
    pub tracer: Tracer,
    pub tracker: Tracker,
    pub clock: WallClock,
    pub counts: Counts,
    source: EventSource,
    seeding: Option<JoinHandle<(Vec<Seed>, usize)>>,
    follower: Option<Follower>,
    diag: Option<JoinHandle<(Follower, Vec<DiagAnswer>)>>,
    diag_tick: Interval,
    follow_timewait: bool,
    last_timewait_poll_ns: u64,
    losses: Losses,
    backlog: bool,
    /// Events were lost since the last check against the kernel's sockets.
    recheck_wanted: bool,
    recheck: Option<JoinHandle<(Alive, u64)>>,
    /// A dump back, applied once the ring holds nothing older than it.
    recheck_done: Option<(Alive, u64)>,
    last_recheck_ns: u64,
}

enum Woke {
    Seeded(Result<(Vec<Seed>, usize), tokio::task::JoinError>),
    Rechecked(Result<(Alive, u64), tokio::task::JoinError>),
    Diag(Result<(Follower, Vec<DiagAnswer>), tokio::task::JoinError>),
    DiagTick,
    Ring,
}

impl Session {
    /// Loads and attaches; the snapshot of open sockets starts in the background.
    pub fn start(
        options: &LoadOptions,
        tracker: Tracker,
        follow_timewait: bool,
    ) -> anyhow::Result<Self> {
        let mut tracer = load::load(options)?;
        attached(&tracer);
        let source = EventSource::new(tracer.take_ring().context("ring buffer already taken")?)
            .context("watching the ring buffer")?;
        let filters = options.filters.clone();
        // Runs while events flow, so a slow /proc scan cannot overflow the ring.
        let seeding = Some(tokio::task::spawn_blocking(move || {
            snapshot::take(&filters)
        }));
        let mut diag_tick = interval(DIAG_INTERVAL);
        diag_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Self {
            tracer,
            tracker,
            clock: WallClock::new(),
            counts: Counts::default(),
            source,
            seeding,
            follower: Some(Follower::default()),
            diag: None,
            diag_tick,
            follow_timewait,
            last_timewait_poll_ns: 0,
            losses: Losses::default(),
            backlog: false,
            recheck_wanted: false,
            recheck: None,
            recheck_done: None,
            last_recheck_ns: 0,
        })
    }

    /// Waits for something to do and does it. Cancel-safe: a caller's
    /// `select!` can only interrupt the wait, never the work.
    pub async fn step(&mut self) -> io::Result<Progress> {
        let Self {
            seeding,
            diag,
            diag_tick,
            follower,
            source,
            backlog,
            recheck,
            ..
        } = self;
        let woke = tokio::select! {
            biased;
            r = async { seeding.as_mut().expect("guarded").await }, if seeding.is_some() => Woke::Seeded(r),
            r = async { diag.as_mut().expect("guarded").await }, if diag.is_some() => Woke::Diag(r),
            r = async { recheck.as_mut().expect("guarded").await }, if recheck.is_some() => Woke::Rechecked(r),
            _ = diag_tick.tick(), if follower.is_some() => Woke::DiagTick,
            () = source.ready(), if !*backlog => Woke::Ring,
            () = tokio::task::yield_now(), if *backlog => Woke::Ring,
        };
        let mut progress = Progress::Drained;
        match woke {
            Woke::Seeded(r) => {
                self.seeding = None;
                let (seeds, unreadable) = r.unwrap_or_default();
                self.tracker.seed(&seeds, clock::boot_ns());
                let open = seeds.iter().filter(|s| s.state != TcpState::Listen).count();
                drop(seeds);
                progress = Progress::Seeded { open, unreadable };
                // Start-up is over (the kernel's BTF parsed, every socket
                // dumped): hand what it used back, so a long-running tracer
                // does not keep its peak.
                release_free_memory();
            }
            Woke::Diag(r) => {
                self.diag = None;
                if let Ok((back, answers)) = r {
                    self.follower = Some(back);
                    self.apply(&answers);
                }
            }
            Woke::Rechecked(r) => {
                self.recheck = None;
                self.recheck_done = r.ok();
            }
            Woke::DiagTick => self.ask_diag(),
            Woke::Ring => {}
        }
        self.clock.resync();
        self.backlog = self.drain()? == MAX_BATCH;
        // After the drain: a loss counted now may concern any record read so far.
        if self.losses.grew(&self.tracer) {
            self.tracker.note_loss();
            self.recheck_wanted = true;
        }
        // Only once the ring is empty: a record older than the dump still
        // waiting there would otherwise be contradicted by it.
        if !self.backlog
            && let Some((alive, started_ns)) = self.recheck_done.take()
        {
            self.tracker.reconcile(&alive, started_ns);
        }
        self.start_recheck();
        self.tracker.tick(clock::boot_ns());
        Ok(progress)
    }

    /// Dumps every socket in the background if a loss asks for it (and
    /// start-up seeding, which does the same, is over).
    fn start_recheck(&mut self) {
        let now = clock::boot_ns();
        if !self.recheck_wanted
            || self.recheck.is_some()
            || self.recheck_done.is_some()
            || self.seeding.is_some()
            || now.saturating_sub(self.last_recheck_ns) < RECHECK_EVERY_NS
        {
            return;
        }
        self.recheck_wanted = false;
        self.last_recheck_ns = now;
        self.recheck = Some(tokio::task::spawn_blocking(move || {
            (snapshot::alive(), now)
        }));
    }

    fn drain(&mut self) -> io::Result<usize> {
        let tracker = &mut self.tracker;
        drain(&mut self.source, &mut self.counts, |r| {
            tracker.on_record(r);
            Ok(())
        })
    }

    fn ask_diag(&mut self) {
        let now = clock::boot_ns();
        let timewait = self.follow_timewait
            && now.saturating_sub(self.last_timewait_poll_ns) >= TIMEWAIT_POLL_NS;
        let requests = self.tracker.diag_requests(timewait);
        if requests.is_empty() {
            return;
        }
        if timewait {
            self.last_timewait_poll_ns = now;
        }
        if let Some(mut follower) = self.follower.take() {
            self.diag = Some(tokio::task::spawn_blocking(move || {
                let answers = follower.poll(requests);
                (follower, answers)
            }));
        }
    }

    fn apply(&mut self, answers: &[DiagAnswer]) {
        for a in answers {
            match &a.timewait {
                Some(timewait) => self.tracker.on_diag(&a.request, timewait, a.done_ns),
                None => self.tracker.on_diag_failed(&a.request),
            }
        }
    }

    /// Detaches, takes in the last records and one last timewait lookup,
    /// and lets sockets closed moments ago through their grace period. The
    /// tracker then holds only what is still alive.
    pub async fn stop(&mut self) -> io::Result<()> {
        self.tracer.detach();
        self.drain()?;
        if self.losses.refresh(&self.tracer) {
            self.tracker.note_loss();
            self.recheck_wanted = true;
        }
        // A loss not yet checked against the kernel's sockets is, now: the
        // last records must not describe sockets long gone as open.
        if let Some(pending) = self.recheck.take()
            && let Ok(done) = pending.await
        {
            self.recheck_done = Some(done);
        }
        if self.recheck_wanted && self.recheck_done.is_none() {
            let started_ns = clock::boot_ns();
            if let Ok(alive) = tokio::task::spawn_blocking(snapshot::alive).await {
                self.recheck_done = Some((alive, started_ns));
            }
        }
        if let Some((alive, started_ns)) = self.recheck_done.take() {
            self.tracker.reconcile(&alive, started_ns);
        }
        if let Some(pending) = self.diag.take()
            && let Ok((back, answers)) = pending.await
        {
            self.follower = Some(back);
            self.apply(&answers);
        }
        let requests = self.tracker.diag_requests(false);
        if let Some(mut follower) = self.follower.take().filter(|_| !requests.is_empty())
            && let Ok(answers) = tokio::task::spawn_blocking(move || follower.poll(requests)).await
        {
            self.apply(&answers);
        }
        self.tracker
            .tick(clock::boot_ns().saturating_add(CLOSE_GRACE_NS));
        Ok(())
    }

    /// The one-line account of what was seen and lost.
    pub fn summary(&self, max_sockets: usize) -> String {
        format!(
            "tcplinger: {} events, {} dropped (ring full), {} missed (hook busy), {} malformed, {} evicted (over --max-sockets {max_sockets})",
            self.counts.events,
            self.tracer.dropped().unwrap_or(0),
            self.tracer.missed_runs(),
            self.counts.malformed,
            self.tracker.evicted(),
        )
    }
}

/// Returns freed heap memory to the system (glibc keeps it otherwise).
fn release_free_memory() {
    // SAFETY: no preconditions; it only walks the allocator's free lists.
    unsafe { libc::malloc_trim(0) };
}

/// Kernel-side loss counters as last seen.
#[derive(Default)]
struct Losses {
    dropped: u64,
    missed: u64,
    missed_read_ns: u64,
}

/// Missed runs are read from each program's fdinfo (a file per program):
/// at most this often, where the drop counter is one map read per step.
/// An idle tracer steps 50 times a second, and those reads were most of
/// what it did.
const MISSED_READ_EVERY_NS: u64 = 1_000_000_000;

impl Losses {
    /// True if records were dropped or hook runs missed since the last call.
    fn grew(&mut self, tracer: &Tracer) -> bool {
        let dropped = tracer.dropped().unwrap_or(self.dropped);
        let now = clock::boot_ns();
        let mut missed = self.missed;
        if now.saturating_sub(self.missed_read_ns) >= MISSED_READ_EVERY_NS {
            missed = tracer.missed_runs();
            self.missed_read_ns = now;
        }
        let grew = dropped > self.dropped || missed > self.missed;
        self.dropped = dropped;
        self.missed = missed;
        grew
    }

    /// Reads every counter now (at the end of a run).
    fn refresh(&mut self, tracer: &Tracer) -> bool {
        self.missed_read_ns = 0;
        self.grew(tracer)
    }
}
