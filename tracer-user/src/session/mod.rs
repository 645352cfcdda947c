//! A connection-tracing session shared by `watch`, `report`, `top` and `daemon`: the ring drained into the tracker, the start-up snapshot, the timewait follower and the checks after a loss, all through the [`Host`] seam.

pub mod analysis;
pub mod host;
pub mod journal;
#[cfg(test)]
mod scripted;
#[cfg(test)]
mod tests;

use std::{fmt::Write as _, io};

use tracer_common::TcpState;

use self::host::Event;
pub use self::host::{Host, HostLosses, LiveHost, LookAnswer, LookRequest};
use crate::{
    bpf::{decode::decode, load::LoadOptions, ring::MAX_BATCH},
    host::follow::DiagAnswer,
    model::{
        event::Record,
        tracker::{Alive, CLOSE_GRACE_NS, Tracker},
    },
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

/// Missed runs are read from each program's fdinfo (a file per program):
/// at most this often, where the drop counter is one map read per step.
/// An idle tracer steps 50 times a second, and those reads were most of
/// what it did.
const MISSED_READ_EVERY_NS: u64 = 1_000_000_000;

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
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub events: u64,
    pub malformed: u64,
    /// Why the first malformed record was refused.
    pub first_malformed: Option<String>,
}

/// Passes every waiting ring record, decoded, to `each`; returns how many
/// were read. Malformed records are counted, the first one's reason kept.
pub fn drain<H: Host>(host: &mut H, counts: &mut Counts, mut each: impl FnMut(&Record)) -> usize {
    host.drain(&mut |bytes| {
        counts.events += 1;
        match decode(bytes) {
            Ok(record) => each(&record),
            Err(err) => {
                if counts.malformed == 0 {
                    counts.first_malformed = Some(err.to_string());
                }
                counts.malformed += 1;
            }
        }
    })
}

/// Something a step of the session did that its user may want to show.
#[derive(Debug, Clone)]
pub enum Progress {
    /// The start-up snapshot is in: `open` sockets already existed; dumps of
    /// `unreadable` namespaces failed.
    Seeded { open: usize, unreadable: usize },
    /// A look asked for is answered, for the analysis to apply.
    Answered(Box<LookAnswer>),
    /// The analysis applied a look (and the fds of any CLOSE_WAIT leak
    /// found are in): what it shows is fresh.
    Looked,
    /// Records were processed (or nothing happened).
    Drained,
}

/// A tracker fed from a host: the ring's records, the start-up snapshot,
/// the lookups of followed sockets, and after a loss a dump to check
/// against.
pub struct Session<H: Host = LiveHost> {
    pub host: H,
    pub tracker: Tracker,
    pub counts: Counts,
    /// What the user should know, not yet shown (see [`Self::take_warnings`]).
    warnings: Vec<String>,
    seeded: bool,
    follow_timewait: bool,
    last_timewait_poll_ns: u64,
    losses: Losses,
    backlog: bool,
    /// Events were lost since the last check against the kernel's sockets.
    recheck_wanted: bool,
    recheck_asked: bool,
    /// A dump back, applied once the ring holds nothing older than it.
    recheck_done: Option<(Alive, u64)>,
    last_recheck_ns: u64,
}

impl Session<LiveHost> {
    /// Loads and attaches; the snapshot of open sockets starts in the background.
    pub fn start(
        options: &LoadOptions,
        tracker: Tracker,
        follow_timewait: bool,
    ) -> anyhow::Result<Self> {
        Ok(Self::new(
            LiveHost::start(options, true)?,
            tracker,
            follow_timewait,
        ))
    }
}

impl<H: Host> Session<H> {
    /// A session on `host`. With `follow_timewait`, TIME_WAIT sockets are
    /// followed to their end.
    pub fn new(host: H, tracker: Tracker, follow_timewait: bool) -> Self {
        Self {
            host,
            tracker,
            counts: Counts::default(),
            warnings: Vec::new(),
            seeded: false,
            follow_timewait,
            last_timewait_poll_ns: 0,
            losses: Losses::default(),
            backlog: false,
            recheck_wanted: false,
            recheck_asked: false,
            recheck_done: None,
            last_recheck_ns: 0,
        }
    }

    /// Waits for something to do and does it. Cancel-safe: a caller's
    /// `select!` can only interrupt the wait, never the work.
    pub async fn step(&mut self) -> io::Result<Progress> {
        let event = self.host.next(self.backlog).await;
        let mut progress = Progress::Drained;
        match event {
            Event::Seeded { seeds, unreadable } => {
                self.seeded = true;
                let now = self.host.now_ns();
                self.tracker.seed(&seeds, now);
                let open = seeds.iter().filter(|s| s.state != TcpState::Listen).count();
                drop(seeds);
                progress = Progress::Seeded { open, unreadable };
                // Start-up is over (the kernel's BTF parsed, every socket
                // dumped): hand what it used back, so a long-running tracer
                // does not keep its peak.
                release_free_memory();
            }
            Event::Diag { answers, warning } => {
                self.warnings.extend(warning);
                self.apply(&answers);
            }
            Event::Alive { alive, started_ns } => {
                self.recheck_asked = false;
                self.recheck_done = Some((alive, started_ns));
            }
            Event::AliveFailed => {
                self.recheck_asked = false;
                self.recheck_wanted = true;
            }
            Event::DiagTick => self.ask_diag(),
            Event::Looked(answer) => progress = Progress::Answered(Box::new(answer)),
            Event::Ring => {}
        }
        self.backlog = self.drain() == MAX_BATCH;
        // After the drain: a loss counted now may concern any record read so far.
        if self.losses_grew(false) {
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
        let now = self.host.now_ns();
        self.tracker.tick(now);
        Ok(progress)
    }

    /// True if records were dropped or hook runs missed since the last
    /// call; `all` reads the costly counters now whatever their period.
    fn losses_grew(&mut self, all: bool) -> bool {
        let now = self.host.now_ns();
        let dropped = self.host.dropped().max(self.losses.dropped);
        let mut missed = self.losses.missed;
        if all || now.saturating_sub(self.losses.missed_read_ns) >= MISSED_READ_EVERY_NS {
            missed = self.host.missed();
            self.losses.missed_read_ns = now;
        }
        let grew = dropped > self.losses.dropped || missed > self.losses.missed;
        self.losses.dropped = dropped;
        self.losses.missed = missed;
        grew
    }

    /// Dumps every socket in the background if a loss asks for it (and
    /// start-up seeding, which does the same, is over).
    fn start_recheck(&mut self) {
        let now = self.host.now_ns();
        if !self.recheck_wanted
            || self.recheck_asked
            || self.recheck_done.is_some()
            || !self.seeded
            || now.saturating_sub(self.last_recheck_ns) < RECHECK_EVERY_NS
        {
            return;
        }
        self.recheck_wanted = false;
        self.recheck_asked = true;
        self.last_recheck_ns = now;
        self.host.ask_alive();
    }

    fn drain(&mut self) -> usize {
        let malformed = self.counts.malformed;
        let tracker = &mut self.tracker;
        let n = drain(&mut self.host, &mut self.counts, |r| tracker.on_record(r));
        if malformed == 0
            && let Some(first) = &self.counts.first_malformed
        {
            self.warnings
                .push(format!("skipping malformed records: {first}"));
        }
        n
    }

    /// What the user should know since the last call: optional hooks
    /// missing, capabilities not dropped, malformed records, failed lookups.
    pub fn take_warnings(&mut self) -> Vec<String> {
        let mut warnings = self.host.take_warnings();
        warnings.append(&mut self.warnings);
        warnings
    }

    fn ask_diag(&mut self) {
        let now = self.host.now_ns();
        let timewait = self.follow_timewait
            && now.saturating_sub(self.last_timewait_poll_ns) >= TIMEWAIT_POLL_NS;
        let requests = self.tracker.diag_requests(timewait);
        if requests.is_empty() {
            return;
        }
        if self.host.ask_diag(requests) && timewait {
            self.last_timewait_poll_ns = now;
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
        self.host.detach();
        self.drain();
        if self.losses_grew(true) {
            self.tracker.note_loss();
            self.recheck_wanted = true;
        }
        for event in self.host.settle().await {
            match event {
                Event::Alive { alive, started_ns } => self.recheck_done = Some((alive, started_ns)),
                Event::Diag { answers, warning } => {
                    self.warnings.extend(warning);
                    self.apply(&answers);
                }
                // A look in flight is stale by now: the analysis looks
                // again once stopped.
                Event::Seeded { .. }
                | Event::Ring
                | Event::DiagTick
                | Event::Looked(_)
                | Event::AliveFailed => {}
            }
        }
        // A loss not yet checked against the kernel's sockets is, now: the
        // last records must not describe sockets long gone as open.
        if self.recheck_wanted && self.recheck_done.is_none() {
            self.recheck_done = self.host.alive_now().await;
        }
        if let Some((alive, started_ns)) = self.recheck_done.take() {
            self.tracker.reconcile(&alive, started_ns);
        }
        let requests = self.tracker.diag_requests(false);
        if !requests.is_empty() {
            let answers = self.host.diag_now(requests).await;
            self.apply(&answers);
        }
        let now = self.host.now_ns();
        self.tracker.tick(now.saturating_add(CLOSE_GRACE_NS));
        Ok(())
    }

    /// The one-line account of what was seen and lost.
    /// Losses besides the usual four appear when there are any.
    pub fn summary(&mut self, max_sockets: usize) -> String {
        let mut line = format!(
            "tcplinger: {} events, {} dropped (ring full), {} missed (hook busy), {} malformed, {} evicted (over --max-sockets {max_sockets})",
            self.counts.events,
            self.host.dropped(),
            self.host.missed(),
            self.counts.malformed,
            self.tracker.evicted(),
        );
        let unfollowed = self.tracker.timewait_unfollowed();
        if unfollowed > 0 {
            let _ = write!(
                line,
                ", {unfollowed} TIME_WAIT untimed (over --max-sockets)"
            );
        }
        for (n, what) in self.host.losses().named() {
            let _ = write!(line, ", {n} {what}");
        }
        line
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
