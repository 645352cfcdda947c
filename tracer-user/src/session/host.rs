//! The one seam between a tracing session and the machine: everything the session and its analysis consume from the kernel and the host comes through [`Host`] — ring records, loss counters, the start-up snapshot, sock_diag lookups and dumps, the processes holding sockets, cgroups, the clocks. [`LiveHost`] asks the running kernel; a test or a recording can stand in for it.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    io,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use tokio::{
    sync::oneshot,
    time::{Interval, MissedTickBehavior, interval},
};

use crate::{
    bpf::{
        load::{self, Attached, KernelLosses, LoadOptions},
        ring::EventSource,
    },
    host::{
        cgroups::{Cgroups, Container},
        clock::{self, WallClock},
        follow::{DIAG_INTERVAL, DiagAnswer, Follower},
        last_io::{Asked, ByCookie, IoReader},
        owners, snapshot,
        workers::Workers,
    },
    model::{
        event::Owner,
        tracker::{Alive, DiagRequest, Seed},
    },
};

/// Something the host has for the session.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Event {
    /// Records may be waiting in the ring (or its drain timer came round).
    Ring,
    /// Time to look up the sockets followed with sock_diag.
    DiagTick,
    /// Time to read the per-socket entries for the steps of live sockets
    /// ([`Host::read_entries`]).
    EntriesTick,
    /// The start-up snapshot: the sockets open, and how many namespace
    /// dumps failed.
    Seeded { seeds: Vec<Seed>, unreadable: usize },
    /// Answers to the last lookups, with a warning if some failed.
    Diag {
        answers: Vec<DiagAnswer>,
        warning: Option<String>,
    },
    /// A dump of every socket, started at `started_ns`.
    Alive { alive: Alive, started_ns: u64 },
    /// The dump of every socket failed outright (asked again later).
    AliveFailed,
    /// The answer to a look at the open sockets ([`Host::ask_look`]).
    Looked(LookAnswer),
}

/// What a look at the sockets open now asks of the host: all of it reads
/// sock_diag and /proc, which takes long on a large host, so it is asked
/// and answered later, never done on the thread that drains the ring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LookRequest {
    /// The open sockets whose last I/O and inodes are wanted (if still
    /// ESTABLISHED or CLOSE_WAIT): the answer is for them alone, not for
    /// other ports or sockets not followed.
    pub sockets: Vec<Asked>,
    /// Sockets (by cookie) whose holding processes are wanted, found from
    /// the inodes the same look gives.
    pub holders_of: HashSet<u64>,
    /// Processes whose fds holding these CLOSE_WAIT sockets (netns,
    /// cookie) are wanted.
    pub fds_of: Vec<(u32, Vec<(u32, u64)>)>,
    /// A look at fds only, following a full one: the picture of what is
    /// alive stays as that one drew it.
    pub fds_only: bool,
}

/// The answer to a [`LookRequest`].
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct LookAnswer {
    /// The request was for fds only ([`LookRequest::fds_only`]).
    pub fds_only: bool,
    /// Last I/O and inode of the sockets found, by cookie.
    pub seen: ByCookie,
    /// Socket inode -> the processes holding it, for `holders_of`.
    pub holders: HashMap<u32, Vec<Owner>>,
    /// pid -> its fds holding the CLOSE_WAIT sockets asked about.
    pub fds: HashMap<u32, Vec<u32>>,
}

/// What the host side lost, in all: each is a reason a figure or a
/// verdict is less than it would have been, and is shown.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostLosses {
    /// The kernel side's (besides dropped records and missed runs).
    pub kernel: KernelLosses,
    /// Lookups of followed FIN_WAIT2/TIME_WAIT sockets that failed: their
    /// linger is unknown and their records say `complete: false`.
    pub lookups_failed: u64,
    /// Dumps of open sockets (last I/O, inodes) that failed at a look.
    pub dumps_failed: u64,
    /// Namespaces asked about and found nowhere.
    pub netns_not_found: u64,
    /// Cgroup ids found in no scan of the cgroup tree: those owners'
    /// container is unknown, and `--cgroup` leaves them out.
    pub cgroups_unknown: u64,
    /// Host jobs (snapshot, dumps, /proc scans) that failed outright
    /// (panicked): their answers were lost.
    pub jobs_failed: u64,
    /// Reads of the per-socket entries that failed: live sockets' steps
    /// wait for the next read, or their socket's end.
    pub entry_reads_failed: u64,
}

impl HostLosses {
    /// The losses as `(count, what)`, the non-zero ones, for the summary.
    pub fn named(&self) -> Vec<(u64, &'static str)> {
        [
            (self.kernel.failed_runs, "failed (kernel read)"),
            (self.kernel.owner_inserts, "owners not recorded (map full)"),
            (self.kernel.unattributed, "skipped (owner unknown to --pid)"),
            (
                self.kernel.timewait_unchecked,
                "TIME_WAIT hand-overs unchecked (kernel read)",
            ),
            (self.lookups_failed, "lookups failed (linger unknown)"),
            (self.dumps_failed, "dumps failed"),
            (self.netns_not_found, "namespaces not found"),
            (self.cgroups_unknown, "cgroup lookups failed"),
            (self.jobs_failed, "host jobs failed"),
            (self.entry_reads_failed, "reads of socket entries failed"),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .collect()
    }
}

/// Everything a session consumes from the machine.
pub trait Host {
    /// Waits for the next event; with `backlog`, records are known to be
    /// waiting and [`Event::Ring`] comes at once (after other tasks had a
    /// turn). Cancel-safe.
    fn next(&mut self, backlog: bool) -> impl Future<Output = Event>;
    /// Hands the waiting ring records to `each`, raw, at most
    /// [`crate::bpf::ring::MAX_BATCH`]; returns how many.
    fn drain(&mut self, each: &mut dyn FnMut(&[u8])) -> usize;
    /// Hands every per-socket entry of the kernel (cookie, raw value) to
    /// `each`: the steps of live sockets not yet written to the ring.
    /// Returns how many; none when the kernel logs no steps.
    fn read_entries(&mut self, each: &mut dyn FnMut(u64, &[u8])) -> usize;
    /// Per-socket entries the kernel made and freed so far: with the
    /// entries read, what tells how many the full map recycled.
    fn entry_turnover(&mut self) -> (u64, u64);
    /// Starts looking up followed sockets (answered by [`Event::Diag`]);
    /// false if a lookup is still in flight.
    fn ask_diag(&mut self, requests: Vec<DiagRequest>) -> bool;
    /// Starts a dump of every socket (answered by [`Event::Alive`]).
    fn ask_alive(&mut self);
    /// Starts a look at the open sockets (answered by [`Event::Looked`]);
    /// false if a look is still in flight.
    fn ask_look(&mut self, request: LookRequest) -> bool;
    /// Waits for the work in flight (lookups, dumps, looks) and returns
    /// its answers.
    fn settle(&mut self) -> impl Future<Output = Vec<Event>>;
    /// Looks up followed sockets now, and waits for the answers.
    fn diag_now(&mut self, requests: Vec<DiagRequest>) -> impl Future<Output = Vec<DiagAnswer>>;
    /// Dumps every socket now, and waits for it.
    fn alive_now(&mut self) -> impl Future<Output = Option<(Alive, u64)>>;
    /// Looks at the open sockets now, and waits for the answer (`None` if
    /// the look failed).
    fn look_now(&mut self, request: LookRequest) -> impl Future<Output = Option<LookAnswer>>;
    /// Records the kernel side could not write (the ring was full), in all.
    fn dropped(&mut self) -> u64;
    /// Program runs the kernel skipped, in all (costlier to read).
    fn missed(&mut self) -> u64;
    /// Everything else lost, in all.
    fn losses(&mut self) -> HostLosses;
    /// The boot clock now, as records are stamped.
    fn now_ns(&mut self) -> u64;
    /// The wall-clock time of a boot-clock stamp.
    fn wall(&mut self, boot_ns: u64) -> SystemTime {
        self.wall_clock().wall(boot_ns)
    }
    /// How boot-clock stamps map to wall-clock time now.
    fn wall_clock(&mut self) -> WallClock;
    /// Detaches the kernel programs; records already written stay readable.
    fn detach(&mut self);
    /// The cgroup v2 of this id (its path, and the container and pod it
    /// names), if it exists.
    fn container(&mut self, id: u64) -> Option<Container>;
    /// The Kubernetes pod and container of the cgroup with this id, when
    /// the node names them.
    fn pod(&mut self, id: u64) -> Option<crate::model::event::PodName> {
        self.container(id).and_then(|c| c.kube)
    }
    /// The fullest the ring has been since the last call, in bytes.
    fn ring_peak_and_reset(&mut self) -> u64;
    /// The ring's size in bytes.
    fn ring_bytes(&self) -> u32;
    /// Warnings of the kernel side since the last call (hooks missing,
    /// capabilities kept, host work that failed).
    fn take_warnings(&mut self) -> Vec<String>;
    /// A replay has handed over everything but its stop: the command ends
    /// as it would on Ctrl-C. A live host never is.
    fn exhausted(&mut self) -> bool {
        false
    }
    /// Time comes from a recording, not from the clock: a command's
    /// periodic work follows [`Self::now_ns`] rather than a timer.
    fn replayed(&self) -> bool {
        false
    }
    /// A replay: the recorded time of what the session takes next (none
    /// live, or at the end).
    fn next_at(&mut self) -> Option<u64> {
        None
    }
}

/// How often the per-socket entries are read: what is open now is at most
/// this old in `top`, the daemon's gauges and the rules. A read walks the
/// whole map (its buckets are sized to `--max-sockets`), a few ms.
pub const ENTRIES_INTERVAL: Duration = Duration::from_secs(1);

/// Threads for the host's blocking work: one for the follower's lookups
/// (every 200 ms), one for the rest (snapshot, dumps, /proc scans), so a
/// slow scan does not hold up the timewait lookups.
const WORKERS: usize = 2;

/// A job on the workers, and what it hands back with its answer.
type Pending<T> = Option<oneshot::Receiver<T>>;

/// The running kernel and this host.
pub struct LiveHost {
    attached: Attached,
    source: EventSource,
    clock: WallClock,
    workers: Workers,
    seeding: Pending<(Vec<Seed>, usize)>,
    follower: Option<Follower>,
    diag: Pending<(Follower, Vec<DiagAnswer>)>,
    /// When the lookup out now was asked (boot ns).
    diag_asked_ns: u64,
    diag_tick: Interval,
    /// `None` when the kernel logs no steps (every transition is written).
    entries_tick: Option<Interval>,
    recheck: Pending<(Alive, u64)>,
    io: Option<IoReader>,
    look: Pending<(IoReader, LookAnswer)>,
    cgroups: Cgroups,
    warnings: Vec<String>,
    /// Losses of follower and reader instances that were replaced.
    losses: HostLosses,
}

impl LiveHost {
    /// Loads and attaches the programs; with `snapshot`, the snapshot of
    /// open sockets starts in the background (while events flow, so a slow
    /// /proc scan cannot overflow the ring).
    /// Loads and attaches as `options` say; containers are named from
    /// the node's files under `node_root`.
    pub fn start(
        options: &LoadOptions,
        node_root: &std::path::Path,
        snapshot: bool,
    ) -> anyhow::Result<Self> {
        let mut attached = load::load(options)?;
        let mut warnings: Vec<String> = attached.degraded.iter().map(ToString::to_string).collect();
        warnings.extend(crate::bpf::privilege::drop_or_warning());
        // After the capabilities are dropped (they are per thread, and a
        // new thread inherits its creator's). A host that cannot give two
        // threads (pids.max reached) is told so plainly; the programs go
        // with `attached`.
        let workers = Workers::start(WORKERS)
            .context("cannot start the tracer's helper threads (is the pids limit reached?)")?;
        let source = EventSource::new(attached.take_ring().context("ring buffer already taken")?)
            .context("watching the ring buffer")?;
        let filters = options.filters.clone();
        let seeding = snapshot.then(|| workers.run(move || snapshot::take(&filters)));
        let mut diag_tick = interval(DIAG_INTERVAL);
        diag_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let entries_tick = attached.folds().then(|| {
            let mut tick = interval(ENTRIES_INTERVAL);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            tick
        });
        Ok(Self {
            attached,
            source,
            clock: WallClock::new(),
            workers,
            seeding,
            follower: Some(Follower::default()),
            diag: None,
            diag_asked_ns: 0,
            diag_tick,
            entries_tick,
            recheck: None,
            io: Some(IoReader::default()),
            look: None,
            cgroups: Cgroups::new(crate::host::kube::NodeFiles::new(node_root.to_path_buf())),
            warnings,
            losses: HostLosses::default(),
        })
    }

    fn diag_event(
        &mut self,
        result: Result<(Follower, Vec<DiagAnswer>), oneshot::error::RecvError>,
    ) -> Event {
        self.diag = None;
        if let Ok((mut follower, answers)) = result {
            let warning = follower.warning.take();
            self.follower = Some(follower);
            return Event::Diag { answers, warning };
        }
        // The lookup failed outright (it panicked): a fresh follower next
        // time. Its sockets were in the requests, now lost: they are asked
        // for again at the next tick.
        self.losses.lookups_failed += 1;
        self.follower = Some(Follower::default());
        Event::Diag {
            answers: Vec::new(),
            warning: Some("a sock_diag lookup failed outright; the follower was restarted".into()),
        }
    }

    fn look_event(
        &mut self,
        result: Result<(IoReader, LookAnswer), oneshot::error::RecvError>,
    ) -> Option<Event> {
        self.look = None;
        if let Ok((io, answer)) = result {
            self.io = Some(io);
            return Some(Event::Looked(answer));
        }
        self.io = Some(IoReader::default());
        self.warnings
            .push("a look at the open sockets failed outright; the next one starts afresh".into());
        None
    }

    fn seeded_event(
        &mut self,
        result: Result<(Vec<Seed>, usize), oneshot::error::RecvError>,
    ) -> Event {
        self.seeding = None;
        let (seeds, unreadable) = result.unwrap_or_else(|_| {
            self.warnings.push(
                "the snapshot of sockets open at the start failed: sockets opened before tcplinger started are not known".into(),
            );
            (Vec::new(), 0)
        });
        Event::Seeded { seeds, unreadable }
    }

    /// How long the lookup of followed sockets now out has been (0 if
    /// none is): one that never comes back leaves TIME_WAIT untimed.
    pub fn follower_busy_ns(&self) -> u64 {
        if self.diag.is_some() {
            clock::boot_ns().saturating_sub(self.diag_asked_ns)
        } else {
            0
        }
    }

    /// The optional hooks this run goes without, and what that costs.
    pub fn degraded(&self) -> Vec<String> {
        self.attached
            .degraded
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// The lookups `requests` as a job: the follower goes with it and
    /// comes back.
    fn diag_job(
        &self,
        mut follower: Follower,
        requests: Vec<DiagRequest>,
    ) -> oneshot::Receiver<(Follower, Vec<DiagAnswer>)> {
        self.workers.run(move || {
            let answers = follower.poll(requests);
            (follower, answers)
        })
    }

    /// The look `request` as a job: the reader goes with it and comes back.
    fn look_job(&mut self, request: LookRequest) -> oneshot::Receiver<(IoReader, LookAnswer)> {
        let mut io = self.io.take().unwrap_or_default();
        self.workers.run(move || {
            let answer = look(&mut io, &request);
            (io, answer)
        })
    }
}

/// Does one look: the sockets asked about (looked up, or their namespace
/// dumped when many), the holders of those asked about by their inodes,
/// and the fds of CLOSE_WAIT sockets.
fn look(io: &mut IoReader, request: &LookRequest) -> LookAnswer {
    let fds_only = request.fds_only;
    let seen = if request.sockets.is_empty() {
        ByCookie::default()
    } else {
        io.read(&request.sockets)
    };
    let inodes: HashSet<u32> = request
        .holders_of
        .iter()
        .filter_map(|cookie| seen.get(cookie).map(|s| s.inode))
        .filter(|&inode| inode != 0)
        .collect();
    let holders = owners::holders(&inodes);
    let fds = request
        .fds_of
        .iter()
        .map(|(pid, sample)| (*pid, snapshot::close_wait_fds(*pid, sample)))
        .collect();
    LookAnswer {
        fds_only,
        seen,
        holders,
        fds,
    }
}

impl Host for LiveHost {
    async fn next(&mut self, backlog: bool) -> Event {
        loop {
            let Self {
                seeding,
                diag,
                diag_tick,
                entries_tick,
                follower,
                source,
                recheck,
                look,
                ..
            } = self;
            let event = tokio::select! {
                biased;
                r = async { seeding.as_mut().expect("guarded").await }, if seeding.is_some() => Some(self.seeded_event(r)),
                r = async { diag.as_mut().expect("guarded").await }, if diag.is_some() => Some(self.diag_event(r)),
                r = async { recheck.as_mut().expect("guarded").await }, if recheck.is_some() => {
                    self.recheck = None;
                    if let Ok((alive, started_ns)) = r {
                        Some(Event::Alive { alive, started_ns })
                    } else {
                        self.warnings.push("a check of every socket after a loss failed outright".into());
                        Some(Event::AliveFailed)
                    }
                }
                r = async { look.as_mut().expect("guarded").await }, if look.is_some() => self.look_event(r),
                _ = diag_tick.tick(), if follower.is_some() => Some(Event::DiagTick),
                _ = async { entries_tick.as_mut().expect("guarded").tick().await }, if entries_tick.is_some() => Some(Event::EntriesTick),
                () = source.ready(), if !backlog => Some(Event::Ring),
                () = tokio::task::yield_now(), if backlog => Some(Event::Ring),
            };
            if let Some(event) = event {
                return event;
            }
        }
    }

    fn drain(&mut self, each: &mut dyn FnMut(&[u8])) -> usize {
        self.source
            .drain(|bytes| {
                each(bytes);
                Ok::<(), io::Error>(())
            })
            .unwrap_or(0)
    }

    fn read_entries(&mut self, each: &mut dyn FnMut(u64, &[u8])) -> usize {
        match self.attached.read_entries(each) {
            Ok(n) => n,
            Err(err) => {
                if self.losses.entry_reads_failed == 0 {
                    self.warnings
                        .push(format!("reading the kernel's socket entries failed: {err}"));
                }
                self.losses.entry_reads_failed += 1;
                0
            }
        }
    }

    fn entry_turnover(&mut self) -> (u64, u64) {
        self.attached.entry_turnover()
    }

    fn ask_diag(&mut self, requests: Vec<DiagRequest>) -> bool {
        let Some(follower) = self.follower.take() else {
            return false;
        };
        self.diag_asked_ns = clock::boot_ns();
        self.diag = Some(self.diag_job(follower, requests));
        true
    }

    fn ask_alive(&mut self) {
        if self.recheck.is_none() {
            let started_ns = clock::boot_ns();
            self.recheck = Some(self.workers.run(move || (snapshot::alive(), started_ns)));
        }
    }

    fn ask_look(&mut self, request: LookRequest) -> bool {
        if self.look.is_some() {
            return false;
        }
        self.look = Some(self.look_job(request));
        true
    }

    async fn settle(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        if let Some(pending) = self.recheck.take()
            && let Ok((alive, started_ns)) = pending.await
        {
            events.push(Event::Alive { alive, started_ns });
        }
        if let Some(pending) = self.diag.take() {
            let result = pending.await;
            events.push(self.diag_event(result));
        }
        if let Some(pending) = self.look.take() {
            let result = pending.await;
            events.extend(self.look_event(result));
        }
        events
    }

    async fn diag_now(&mut self, requests: Vec<DiagRequest>) -> Vec<DiagAnswer> {
        if let Some(pending) = self.diag.take() {
            let result = pending.await;
            let _ = self.diag_event(result);
        }
        let Some(follower) = self.follower.take() else {
            return Vec::new();
        };
        let job = self.diag_job(follower, requests);
        match self.diag_event(job.await) {
            Event::Diag { answers, warning } => {
                self.warnings.extend(warning);
                answers
            }
            _ => Vec::new(),
        }
    }

    async fn alive_now(&mut self) -> Option<(Alive, u64)> {
        let started_ns = clock::boot_ns();
        self.workers
            .run(snapshot::alive)
            .await
            .ok()
            .map(|alive| (alive, started_ns))
    }

    async fn look_now(&mut self, request: LookRequest) -> Option<LookAnswer> {
        if let Some(pending) = self.look.take() {
            let result = pending.await;
            let _ = self.look_event(result);
        }
        let job = self.look_job(request);
        match self.look_event(job.await) {
            Some(Event::Looked(answer)) => Some(answer),
            _ => None,
        }
    }

    fn dropped(&mut self) -> u64 {
        self.attached.dropped().unwrap_or(0)
    }

    fn missed(&mut self) -> u64 {
        self.attached.missed_runs()
    }

    fn losses(&mut self) -> HostLosses {
        // Counters of a follower or reader out on a job are read when it
        // is back: a figure may lag by one job, never be lost.
        let follower = self.follower.as_ref();
        let io = self.io.as_ref();
        HostLosses {
            kernel: self.attached.losses(),
            lookups_failed: self.losses.lookups_failed + follower.map_or(0, |f| f.failed),
            dumps_failed: self.losses.dumps_failed + io.map_or(0, |r| r.failed),
            netns_not_found: self.losses.netns_not_found
                + follower.map_or(0, Follower::netns_not_found)
                + io.map_or(0, IoReader::netns_not_found),
            cgroups_unknown: self.cgroups.unknown,
            jobs_failed: self.workers.failed(),
            entry_reads_failed: self.losses.entry_reads_failed,
        }
    }

    fn now_ns(&mut self) -> u64 {
        clock::boot_ns()
    }

    fn wall_clock(&mut self) -> WallClock {
        self.clock.resync();
        self.clock
    }

    fn detach(&mut self) {
        self.attached.detach();
    }

    fn container(&mut self, id: u64) -> Option<Container> {
        self.cgroups.lookup(id).cloned()
    }

    // Asked for every record `watch` prints: only a pod is cloned.
    fn pod(&mut self, id: u64) -> Option<crate::model::event::PodName> {
        self.cgroups.lookup(id).and_then(|c| c.kube.clone())
    }

    fn ring_peak_and_reset(&mut self) -> u64 {
        self.attached.ring_peak_and_reset()
    }

    fn ring_bytes(&self) -> u32 {
        self.attached.ring_bytes()
    }

    fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }
}
