//! A host scripted by a test: ring records, loss counters, dumps, lookups, socket holders and cgroups given by the test, and a clock it moves. The session and its analysis run on it exactly as on the kernel.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    future::Future,
};

use super::host::{Event, Host, HostLosses, LookAnswer, LookRequest};
use crate::{
    bpf::ring::MAX_BATCH,
    host::{
        cgroups::{self, Container},
        clock::WallClock,
        follow::DiagAnswer,
        last_io::ByCookie,
    },
    model::{
        event::{Owner, Record},
        tracker::{Alive, DiagRequest, Sightings},
    },
    testutil::encode,
};

#[derive(Default)]
pub struct ScriptedHost {
    /// The boot clock, as the test sets it.
    pub now_ns: u64,
    /// What the host has next for the session, in order; once empty, the
    /// ring's turn.
    pub events: VecDeque<Event>,
    /// Raw records waiting in the ring.
    pub ring: VecDeque<Vec<u8>>,
    /// The kernel's per-socket entries, raw, by cookie.
    pub entries: Vec<(u64, Vec<u8>)>,
    /// Per-socket entries made and freed, as the kernel counts them.
    pub entries_made: u64,
    pub entries_freed: u64,
    /// Records that reach the ring while the entries are read (after the
    /// read, before the drain that follows it).
    pub written_during_read: Vec<Vec<u8>>,
    pub dropped: u64,
    pub missed: u64,
    /// What sock_diag finds of timewait sockets: every lookup is answered
    /// with it.
    pub timewait: Sightings,
    /// What a dump of every socket finds.
    pub alive: Alive,
    /// Lookups and dumps asked for, in order.
    pub diag_asked: Vec<DiagRequest>,
    pub alive_asked: usize,
    pub looks_asked: usize,
    /// Answers not yet handed over (work "in flight").
    in_flight: Vec<Event>,
    pub open: ByCookie,
    pub holders: HashMap<u32, Vec<Owner>>,
    /// `pid` -> fds holding its CLOSE_WAIT sockets.
    pub close_wait_fds: HashMap<u32, Vec<u32>>,
    /// cgroup id -> path.
    pub cgroups: HashMap<u64, String>,
    pub detached: bool,
}

impl ScriptedHost {
    /// Records into the ring, encoded as the kernel writes them.
    pub fn write(&mut self, records: &[Record]) {
        self.ring.extend(records.iter().map(encode));
    }

    /// Nothing is in flight.
    pub fn idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// A look answered from what the test made visible.
    fn look(&self, request: &LookRequest) -> LookAnswer {
        // Every socket the test made visible, whatever namespaces were
        // asked: they are the tracker's, and so are these.
        let seen = if request.sockets.is_empty() {
            ByCookie::default()
        } else {
            self.open.clone()
        };
        let inodes: HashSet<u32> = request
            .holders_of
            .iter()
            .filter_map(|cookie| seen.get(cookie).map(|s| s.inode))
            .collect();
        LookAnswer {
            fds_only: request.fds_only,
            holders: self
                .holders
                .iter()
                .filter(|(inode, _)| inodes.contains(inode))
                .map(|(&inode, owners)| (inode, owners.clone()))
                .collect(),
            fds: request
                .fds_of
                .iter()
                .filter_map(|(pid, _)| Some((*pid, self.close_wait_fds.get(pid)?.clone())))
                .collect(),
            seen,
        }
    }

    fn answer(&self, requests: Vec<DiagRequest>) -> Vec<DiagAnswer> {
        requests
            .into_iter()
            .map(|request| DiagAnswer {
                timewait: Some(
                    self.timewait
                        .iter()
                        .filter(|(cookie, _)| request.cookies().any(|c| c == **cookie))
                        .map(|(&c, &s)| (c, s))
                        .collect(),
                ),
                request,
                done_ns: self.now_ns,
            })
            .collect()
    }
}

impl Host for ScriptedHost {
    fn next(&mut self, _backlog: bool) -> impl Future<Output = Event> {
        let event = if self.in_flight.is_empty() {
            self.events.pop_front().unwrap_or(Event::Ring)
        } else {
            self.in_flight.remove(0)
        };
        std::future::ready(event)
    }

    fn drain(&mut self, each: &mut dyn FnMut(&[u8])) -> usize {
        let n = self.ring.len().min(MAX_BATCH);
        for bytes in self.ring.drain(..n) {
            each(&bytes);
        }
        n
    }

    fn read_entries(&mut self, each: &mut dyn FnMut(u64, &[u8])) -> usize {
        for (cookie, bytes) in &self.entries {
            each(*cookie, bytes);
        }
        self.ring.extend(self.written_during_read.drain(..));
        self.entries.len()
    }

    fn entry_turnover(&mut self) -> (u64, u64) {
        (self.entries_made, self.entries_freed)
    }

    fn ask_diag(&mut self, requests: Vec<DiagRequest>) -> bool {
        self.diag_asked.extend(requests.iter().cloned());
        let answers = self.answer(requests);
        self.in_flight.push(Event::Diag {
            answers,
            warning: None,
        });
        true
    }

    fn ask_alive(&mut self) {
        self.alive_asked += 1;
        self.in_flight.push(Event::Alive {
            alive: self.alive.clone(),
            started_ns: self.now_ns,
        });
    }

    fn settle(&mut self) -> impl Future<Output = Vec<Event>> {
        std::future::ready(std::mem::take(&mut self.in_flight))
    }

    fn diag_now(&mut self, requests: Vec<DiagRequest>) -> impl Future<Output = Vec<DiagAnswer>> {
        self.diag_asked.extend(requests.iter().cloned());
        std::future::ready(self.answer(requests))
    }

    fn alive_now(&mut self) -> impl Future<Output = Option<(Alive, u64)>> {
        self.alive_asked += 1;
        std::future::ready(Some((self.alive.clone(), self.now_ns)))
    }

    fn ask_look(&mut self, request: LookRequest) -> bool {
        self.looks_asked += 1;
        let answer = self.look(&request);
        self.in_flight.push(Event::Looked(answer));
        true
    }

    fn look_now(&mut self, request: LookRequest) -> impl Future<Output = Option<LookAnswer>> {
        self.looks_asked += 1;
        std::future::ready(Some(self.look(&request)))
    }

    fn losses(&mut self) -> HostLosses {
        HostLosses::default()
    }

    fn dropped(&mut self) -> u64 {
        self.dropped
    }

    fn missed(&mut self) -> u64 {
        self.missed
    }

    fn now_ns(&mut self) -> u64 {
        self.now_ns
    }

    fn wall_clock(&mut self) -> WallClock {
        WallClock::new()
    }

    fn detach(&mut self) {
        self.detached = true;
    }

    fn container(&mut self, id: u64) -> Option<Container> {
        self.cgroups.get(&id).map(|path| cgroups::parse(path))
    }

    fn ring_peak_and_reset(&mut self) -> u64 {
        0
    }

    fn ring_bytes(&self) -> u32 {
        4 << 20
    }

    fn take_warnings(&mut self) -> Vec<String> {
        Vec::new()
    }
}
