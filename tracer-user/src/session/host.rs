//! The one seam between a tracing session and the machine: everything the session and its analysis consume from the kernel and the host comes through [`Host`] — ring records, loss counters, the start-up snapshot, sock_diag lookups and dumps, the processes holding sockets, cgroups, the clocks. [`LiveHost`] asks the running kernel; a test or a recording can stand in for it.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    io,
    time::SystemTime,
};

use anyhow::Context as _;
use tokio::{
    task::JoinHandle,
    time::{Interval, MissedTickBehavior, interval},
};

use crate::{
    bpf::{
        load::{self, Attached, LoadOptions},
        ring::EventSource,
    },
    host::{
        cgroups::{Cgroups, Container},
        clock::{self, WallClock},
        follow::{DIAG_INTERVAL, DiagAnswer, Follower},
        last_io::{ByCookie, IoReader},
        owners, snapshot,
    },
    model::{
        event::{Family, Owner},
        tracker::{Alive, DiagRequest, Seed},
    },
};

/// Something the host has for the session.
#[derive(Debug)]
pub enum Event {
    /// Records may be waiting in the ring (or its drain timer came round).
    Ring,
    /// Time to look up the sockets followed with sock_diag.
    DiagTick,
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
    /// Starts looking up followed sockets (answered by [`Event::Diag`]);
    /// false if a lookup is still in flight.
    fn ask_diag(&mut self, requests: Vec<DiagRequest>) -> bool;
    /// Starts a dump of every socket (answered by [`Event::Alive`]).
    fn ask_alive(&mut self);
    /// Waits for the work in flight (lookups, dumps) and returns its answers.
    fn settle(&mut self) -> impl Future<Output = Vec<Event>>;
    /// Looks up followed sockets now, and waits for the answers.
    fn diag_now(&mut self, requests: Vec<DiagRequest>) -> impl Future<Output = Vec<DiagAnswer>>;
    /// Dumps every socket now, and waits for it.
    fn alive_now(&mut self) -> impl Future<Output = Option<(Alive, u64)>>;
    /// Records the kernel side could not write (the ring was full), in all.
    fn dropped(&mut self) -> u64;
    /// Program runs the kernel skipped, in all (costlier to read).
    fn missed(&mut self) -> u64;
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
    /// Last I/O and inode of the ESTABLISHED and CLOSE_WAIT sockets of
    /// these namespaces and families.
    fn open_sockets(&mut self, wanted: Vec<(u32, Family)>) -> ByCookie;
    /// The processes holding these socket inodes.
    fn holders(&mut self, inodes: &HashSet<u32>) -> HashMap<u32, Vec<Owner>>;
    /// The fds of `pid` holding these CLOSE_WAIT sockets (netns, cookie).
    fn close_wait_fds(&mut self, pid: u32, sample: &[(u32, u64)]) -> Vec<u32>;
    /// The cgroup v2 of this id (its path, and the container and pod it
    /// names), if it exists.
    fn container(&mut self, id: u64) -> Option<Container>;
    /// The fullest the ring has been since the last call, in bytes.
    fn ring_peak_and_reset(&mut self) -> u64;
    /// The ring's size in bytes.
    fn ring_bytes(&self) -> u32;
    /// Warnings of the kernel side since the last call (hooks missing,
    /// capabilities kept).
    fn take_warnings(&mut self) -> Vec<String>;
}

/// The running kernel and this host.
pub struct LiveHost {
    attached: Attached,
    source: EventSource,
    clock: WallClock,
    seeding: Option<JoinHandle<(Vec<Seed>, usize)>>,
    follower: Option<Follower>,
    diag: Option<JoinHandle<(Follower, Vec<DiagAnswer>)>>,
    diag_tick: Interval,
    recheck: Option<JoinHandle<(Alive, u64)>>,
    io: IoReader,
    cgroups: Cgroups,
    warnings: Vec<String>,
}

impl LiveHost {
    /// Loads and attaches the programs; with `snapshot`, the snapshot of
    /// open sockets starts in the background (while events flow, so a slow
    /// /proc scan cannot overflow the ring).
    pub fn start(options: &LoadOptions, snapshot: bool) -> anyhow::Result<Self> {
        let mut attached = load::load(options)?;
        let mut warnings: Vec<String> = attached.degraded.iter().map(ToString::to_string).collect();
        warnings.extend(crate::bpf::privilege::drop_or_warning());
        let source = EventSource::new(attached.take_ring().context("ring buffer already taken")?)
            .context("watching the ring buffer")?;
        let filters = options.filters.clone();
        let seeding =
            snapshot.then(|| tokio::task::spawn_blocking(move || snapshot::take(&filters)));
        let mut diag_tick = interval(DIAG_INTERVAL);
        diag_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Self {
            attached,
            source,
            clock: WallClock::new(),
            seeding,
            follower: Some(Follower::default()),
            diag: None,
            diag_tick,
            recheck: None,
            io: IoReader::default(),
            cgroups: Cgroups::new(),
            warnings,
        })
    }

    fn diag_event(
        &mut self,
        result: Result<(Follower, Vec<DiagAnswer>), tokio::task::JoinError>,
    ) -> Event {
        self.diag = None;
        match result {
            Ok((mut follower, answers)) => {
                let warning = follower.warning.take();
                self.follower = Some(follower);
                Event::Diag { answers, warning }
            }
            // The lookup thread died: a fresh follower next time.
            Err(err) => {
                self.follower = Some(Follower::default());
                Event::Diag {
                    answers: Vec::new(),
                    warning: Some(format!("the sock_diag lookup failed: {err}")),
                }
            }
        }
    }
}

impl Host for LiveHost {
    async fn next(&mut self, backlog: bool) -> Event {
        let Self {
            seeding,
            diag,
            diag_tick,
            follower,
            source,
            recheck,
            ..
        } = self;
        tokio::select! {
            biased;
            r = async { seeding.as_mut().expect("guarded").await }, if seeding.is_some() => {
                self.seeding = None;
                let (seeds, unreadable) = r.unwrap_or_default();
                Event::Seeded { seeds, unreadable }
            }
            r = async { diag.as_mut().expect("guarded").await }, if diag.is_some() => self.diag_event(r),
            r = async { recheck.as_mut().expect("guarded").await }, if recheck.is_some() => {
                self.recheck = None;
                match r {
                    Ok((alive, started_ns)) => Event::Alive { alive, started_ns },
                    Err(_) => Event::Ring,
                }
            }
            _ = diag_tick.tick(), if follower.is_some() => Event::DiagTick,
            () = source.ready(), if !backlog => Event::Ring,
            () = tokio::task::yield_now(), if backlog => Event::Ring,
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

    fn ask_diag(&mut self, requests: Vec<DiagRequest>) -> bool {
        let Some(mut follower) = self.follower.take() else {
            return false;
        };
        self.diag = Some(tokio::task::spawn_blocking(move || {
            let answers = follower.poll(requests);
            (follower, answers)
        }));
        true
    }

    fn ask_alive(&mut self) {
        if self.recheck.is_none() {
            let started_ns = clock::boot_ns();
            self.recheck = Some(tokio::task::spawn_blocking(move || {
                (snapshot::alive(), started_ns)
            }));
        }
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
        events
    }

    async fn diag_now(&mut self, requests: Vec<DiagRequest>) -> Vec<DiagAnswer> {
        let Some(mut follower) = self.follower.take() else {
            return Vec::new();
        };
        match tokio::task::spawn_blocking(move || {
            let answers = follower.poll(requests);
            (follower, answers)
        })
        .await
        {
            Ok((follower, answers)) => {
                self.follower = Some(follower);
                answers
            }
            Err(_) => Vec::new(),
        }
    }

    async fn alive_now(&mut self) -> Option<(Alive, u64)> {
        let started_ns = clock::boot_ns();
        tokio::task::spawn_blocking(snapshot::alive)
            .await
            .ok()
            .map(|alive| (alive, started_ns))
    }

    fn dropped(&mut self) -> u64 {
        self.attached.dropped().unwrap_or(0)
    }

    fn missed(&mut self) -> u64 {
        self.attached.missed_runs()
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

    fn open_sockets(&mut self, wanted: Vec<(u32, Family)>) -> ByCookie {
        self.io.read(wanted)
    }

    fn holders(&mut self, inodes: &HashSet<u32>) -> HashMap<u32, Vec<Owner>> {
        owners::holders(inodes)
    }

    fn close_wait_fds(&mut self, pid: u32, sample: &[(u32, u64)]) -> Vec<u32> {
        snapshot::close_wait_fds(pid, sample)
    }

    fn container(&mut self, id: u64) -> Option<Container> {
        self.cgroups.lookup(id).cloned()
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
