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
    bpf::{
        decode::{Decoded, decode_any, decode_entry, entry_progress},
        load::LoadOptions,
        ring::MAX_BATCH,
    },
    host::follow::DiagAnswer,
    model::{
        event::Record,
        fold::Unfolder,
        tracker::{Alive, CLOSE_GRACE_NS, Tracker},
    },
};

/// After a loss, the tracker is checked against a dump of every socket at
/// most this often: a dump of a large host costs tens of ms, and under a
/// sustained flood losses are noted at every step.
const RECHECK_EVERY_NS: u64 = 2_000_000_000;

/// Followed TIME_WAIT sockets are looked up at least this often.
/// Their timers end them, dated from what a look saw, and a new socket on
/// the same endpoints ends a reused one; a look catches only a TIME_WAIT
/// cut short otherwise (a reset, a reuse by a socket not traced), dated to
/// the look that missed it.
const TIMEWAIT_POLL_NS: u64 = 5_000_000_000;
/// A look dumps every timewait socket of the namespace (a host after a
/// churn holds tens of thousands; a dump of 130,000 costs tens of ms):
/// looks are spaced so that about this many sockets are read a second, as
/// many as the last dumps held... Not further: the TIME_WAITs a look finds
/// gone early are followed until then, and one look answering more of
/// them holds the ring's drain up for longer (5 s apart at 100,000
/// sockets; at 5,000 a second, 26 s apart, a 30-s churn left the
/// `record` holding 180 MB against 105 and dropped records in one run
/// of two).
const TIMEWAIT_POLL_PER_S: u64 = 20_000;
/// ...but never further apart than this.
const TIMEWAIT_POLL_MAX_NS: u64 = 30_000_000_000;

/// How long between looks at TIME_WAIT sockets when the last dumps held
/// `dumped` timewait sockets.
fn timewait_poll_ns(dumped: u64) -> u64 {
    let spread = dumped.saturating_mul(1_000_000_000) / TIMEWAIT_POLL_PER_S;
    spread.clamp(TIMEWAIT_POLL_NS, TIMEWAIT_POLL_MAX_NS)
}

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
    /// Where the node's files are, for Kubernetes names (`--node-root`).
    pub node_root: std::path::PathBuf,
}

/// Ring drains in a row, at most, to empty the ring after a read of the
/// per-socket entries (the read is applied only once the ring holds
/// nothing written before it).
const CATCH_UP_DRAINS: usize = 4;

/// What one run saw and lost.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Ring records read (a socket's log counts once).
    pub events: u64,
    pub malformed: u64,
    /// Why the first malformed record was refused.
    pub first_malformed: Option<String>,
}

impl Counts {
    fn malformed(&mut self, err: &dyn std::fmt::Display) {
        if self.malformed == 0 {
            self.first_malformed = Some(err.to_string());
        }
        self.malformed += 1;
    }
}

/// Passes every waiting ring record, decoded, to `each` (a socket's log
/// as its steps not yet delivered, through `unfolder`); returns how many
/// were read. Malformed records are counted, the first one's reason kept.
pub fn drain<H: Host>(
    host: &mut H,
    counts: &mut Counts,
    unfolder: &mut Unfolder,
    mut each: impl FnMut(&Record),
) -> usize {
    host.drain(&mut |bytes| {
        counts.events += 1;
        match decode_any(bytes) {
            Ok(Decoded::Record(record)) => each(&record),
            Ok(Decoded::Log(log)) => unfolder.written(&log, &mut each),
            Err(err) => counts.malformed(&err),
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
    unfolder: Unfolder,
    /// Per-socket entries the kernel's full map recycled (more sockets
    /// than `--max-sockets`), as far as reads tell: evictions, counted
    /// with the tracker's.
    recycled: u64,
    /// What the user should know, not yet shown (see [`Self::take_warnings`]).
    warnings: Vec<String>,
    seeded: bool,
    follow_timewait: bool,
    last_timewait_poll_ns: u64,
    /// Timewait sockets the last TIME_WAIT dumps held, in all namespaces.
    timewait_dumped: u64,
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
        trace: &TraceOptions,
        tracker: Tracker,
        follow_timewait: bool,
    ) -> anyhow::Result<Self> {
        let host = LiveHost::start(&trace.load, &trace.node_root, true)?;
        Ok(Self::new(host, tracker, follow_timewait).with_pids(trace.load.filters.pids.clone()))
    }
}

impl<H: Host> Session<H> {
    /// A session on `host`. With `follow_timewait`, TIME_WAIT sockets are
    /// followed to their end.
    pub fn new(mut host: H, tracker: Tracker, follow_timewait: bool) -> Self {
        // The first TIME_WAIT look waits a period too: the timers end
        // TIME_WAITs without one, and a busy host's table, dumped at once,
        // would cost a short run more than all its connections.
        let started_ns = host.now_ns();
        Self {
            host,
            tracker,
            counts: Counts::default(),
            unfolder: Unfolder::default(),
            recycled: 0,
            warnings: Vec::new(),
            seeded: false,
            follow_timewait,
            last_timewait_poll_ns: started_ns,
            timewait_dumped: 0,
            losses: Losses::default(),
            backlog: false,
            recheck_wanted: false,
            recheck_asked: false,
            recheck_done: None,
            last_recheck_ns: 0,
        }
    }

    /// Only sockets of these owners are traced (`--pid`): the kernel
    /// filters the records it writes, the session what it reads of live
    /// sockets' entries.
    #[must_use]
    pub fn with_pids(mut self, pids: Vec<u32>) -> Self {
        self.unfolder = Unfolder::new(pids);
        self
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
            Event::EntriesTick => self.catch_up(),
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
            // The steps of live sockets too: the dump must not contradict
            // steps still waiting in their entries.
            self.catch_up();
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
        let n = drain(&mut self.host, &mut self.counts, &mut self.unfolder, |r| {
            tracker.on_record(r);
        });
        self.warn_malformed(malformed);
        n
    }

    /// Warns of the first malformed record, if it came after `before` were
    /// counted.
    fn warn_malformed(&mut self, before: u64) {
        if before == 0
            && let Some(first) = &self.counts.first_malformed
        {
            self.warnings
                .push(format!("skipping malformed records: {first}"));
        }
    }

    /// Brings the tracker up to date with the steps the kernel holds in
    /// live sockets' entries: the entries are read, the ring drained (so
    /// every log written before the read comes first), then the steps not
    /// yet delivered are (see `model::fold`). If the ring cannot be
    /// emptied, the read is dropped and the next one makes up for it.
    fn catch_up(&mut self) {
        let malformed = self.counts.malformed;
        let (mut unchanged, mut fresh) = (Vec::new(), Vec::new());
        // Made before the read, freed after it: an entry made during the
        // read may be in it, one freed during it may not, so the figure
        // below never counts more recycled entries than there were.
        let (made, _) = self.host.entry_turnover();
        let Self {
            host,
            unfolder,
            counts,
            ..
        } = self;
        let read = host.read_entries(&mut |cookie, bytes| {
            let Some((generation, len)) = entry_progress(bytes) else {
                counts.malformed(&format!("socket entry of {} bytes", bytes.len()));
                return;
            };
            if !unfolder.is_new(cookie, generation, len) {
                if len > 0 {
                    unchanged.push(cookie);
                }
                return;
            }
            match decode_entry(cookie, bytes) {
                Ok(log) => fresh.push(log),
                Err(err) => counts.malformed(&err),
            }
        });
        let (_, freed) = self.host.entry_turnover();
        let in_map = u64::try_from(read).unwrap_or(u64::MAX);
        self.recycled = self
            .recycled
            .max(made.saturating_sub(freed).saturating_sub(in_map));
        let mut emptied = false;
        for _ in 0..CATCH_UP_DRAINS {
            if self.drain() < MAX_BATCH {
                emptied = true;
                break;
            }
        }
        if emptied {
            let tracker = &mut self.tracker;
            self.unfolder
                .apply_read(&unchanged, &fresh, &mut |r| tracker.on_record(r));
        } else {
            self.unfolder.read_dropped();
            self.backlog = true;
        }
        self.warn_malformed(malformed);
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
            && now.saturating_sub(self.last_timewait_poll_ns)
                >= timewait_poll_ns(self.timewait_dumped);
        let requests = self.tracker.diag_requests(timewait);
        if requests.is_empty() {
            return;
        }
        if self.host.ask_diag(requests) && timewait {
            self.last_timewait_poll_ns = now;
        }
    }

    fn apply(&mut self, answers: &[DiagAnswer]) {
        let dumps: Vec<u64> = answers
            .iter()
            .filter(|a| !a.request.time_wait.is_empty())
            .filter_map(|a| Some(a.timewait.as_ref()?.len() as u64))
            .collect();
        if !dumps.is_empty() {
            self.timewait_dumped = dumps.iter().sum();
        }
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
        // What live sockets' entries hold, now that nothing adds to them.
        self.catch_up();
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
                | Event::EntriesTick
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

    /// Sockets not followed for want of room: evicted by the tracker, or
    /// recycled out of the kernel's per-socket map (their steps until then
    /// lost; a later step starts them afresh, incomplete).
    pub fn evicted(&self) -> u64 {
        self.tracker.evicted() + self.recycled
    }

    /// Socket logs that did not follow on from what was delivered of their
    /// socket (its kernel entry was recycled and made anew).
    pub fn logs_out_of_step(&self) -> u64 {
        self.unfolder.discontinuities()
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
            self.evicted(),
        );
        let unfollowed = self.tracker.timewait_unfollowed();
        if unfollowed > 0 {
            let _ = write!(
                line,
                ", {unfollowed} TIME_WAIT untimed (over --max-sockets)"
            );
        }
        let out_of_step = self.logs_out_of_step();
        if out_of_step > 0 {
            let _ = write!(
                line,
                ", {out_of_step} socket logs out of step (entry recycled)"
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
