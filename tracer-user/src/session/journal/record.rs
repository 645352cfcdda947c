//! [`Recorder`]: a host whose every answer is also written to a recording, as blocks in the order the session asked.

use std::{collections::HashMap, io};

use serde::Serialize;

use super::{Counters, SAME_ENTRY, Timed, tag};
use crate::{
    host::{
        cgroups::Container, clock::WallClock, follow::DiagAnswer, recording_file::RecordingWriter,
    },
    model::tracker::{Alive, DiagRequest},
    session::host::{Event, Host, HostLosses, LookAnswer, LookRequest},
};

/// A host whose every answer is also written to a recording.
pub struct Recorder<H: Host> {
    /// The host recorded (a test scripts it through here).
    pub(in crate::session) inner: H,
    out: RecordingWriter,
    counters: Counters,
    wall: Option<WallClock>,
    containers: HashMap<u64, Option<Container>>,
    /// Cookie -> a hash of its entry as last written: an entry read again
    /// unchanged is written as a reference (a quiet host's every read
    /// would otherwise repeat the whole map).
    entries: HashMap<u64, u64>,
    /// The first write that failed; the recording stops there.
    failure: Option<io::Error>,
    /// Ring records written.
    pub records: u64,
}

impl<H: Host> Recorder<H> {
    pub fn new(inner: H, out: RecordingWriter) -> Self {
        Self {
            inner,
            out,
            counters: Counters::default(),
            wall: None,
            containers: HashMap::new(),
            entries: HashMap::new(),
            failure: None,
            records: 0,
        }
    }

    /// Why writing stopped, if it did (a full disk).
    pub fn failure(&self) -> Option<&io::Error> {
        self.failure.as_ref()
    }

    /// The file reached its `--max-bytes`.
    pub fn is_full(&self) -> bool {
        self.out.is_full()
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.out.written()
    }

    /// Blocks left out once the file was full.
    pub fn left_out(&self) -> u64 {
        self.out.blocks_left_out
    }

    /// Notes the boot-to-wall offset if it moved (NTP): replays date
    /// records with it from there on.
    pub fn note_wall_clock(&mut self) {
        let _ = self.wall_clock();
    }

    /// Notes the network namespaces of the host and their
    /// `tcp_fin_timeout` (seconds): what a reader needs to judge FIN_WAIT2
    /// lingers against.
    pub fn note_namespaces(&mut self, fin_timeouts: &std::collections::BTreeMap<u32, u64>) {
        let now = self.inner.now_ns();
        self.push_json(tag::NAMESPACES, now, fin_timeouts);
    }

    /// Writes the last chunk; the file's size.
    pub fn finish(&mut self) -> io::Result<u64> {
        if let Some(e) = self.failure.take() {
            return Err(e);
        }
        self.out.finish()
    }

    fn push(&mut self, tag: u8, payload: &[u8]) {
        if self.failure.is_some() {
            return;
        }
        if let Err(e) = self.out.push(tag, payload) {
            self.failure = Some(e);
        }
    }

    fn push_json<T: Serialize>(&mut self, tag: u8, now_ns: u64, value: &T) {
        match serde_json::to_vec(&Timed { now_ns, value }) {
            Ok(bytes) => self.push(tag, &bytes),
            Err(e) => {
                if self.failure.is_none() {
                    self.failure = Some(io::Error::other(e));
                }
            }
        }
    }

    fn note_counters(&mut self) {
        let (ns, counters) = (self.inner.now_ns(), self.counters);
        self.push_json(tag::COUNTERS, ns, &counters);
    }
}

impl<H: Host> Host for Recorder<H> {
    async fn next(&mut self, backlog: bool) -> Event {
        let event = self.inner.next(backlog).await;
        let now = self.inner.now_ns();
        if let Event::Diag { answers, warning } = &event {
            let trimmed = Event::Diag {
                answers: trimmed(answers),
                warning: warning.clone(),
            };
            self.push_json(tag::EVENT, now, &trimmed);
        } else {
            self.push_json(tag::EVENT, now, &event);
        }
        event
    }

    fn drain(&mut self, each: &mut dyn FnMut(&[u8])) -> usize {
        if self.failure.is_some() {
            return self.inner.drain(each);
        }
        let Self {
            inner,
            out,
            failure,
            records,
            ..
        } = self;
        let mut n = 0;
        // Each record goes once from the ring into the chunk being built;
        // the block's time (the drain's end) is written over its place.
        let pushed = out.push_with(tag::RING, |buf| {
            let at = buf.len();
            buf.extend_from_slice(&[0; 8]);
            n = inner.drain(&mut |bytes| {
                buf.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(0).to_le_bytes());
                buf.extend_from_slice(bytes);
                each(bytes);
            });
            buf[at..at + 8].copy_from_slice(&inner.now_ns().to_le_bytes());
            // Written even when empty: a replay's drains then take the
            // blocks of the drains they stand for (two drains in a row, a
            // read of the entries' empty one and its step's, would
            // otherwise take each other's records).
            true
        });
        if let Err(e) = pushed {
            failure.get_or_insert(e);
        }
        *records += n as u64;
        n
    }

    fn read_entries(&mut self, each: &mut dyn FnMut(u64, &[u8])) -> usize {
        if self.failure.is_some() {
            return self.inner.read_entries(each);
        }
        let Self {
            inner,
            out,
            failure,
            entries,
            ..
        } = self;
        let mut read = HashMap::with_capacity(entries.len());
        let mut n = 0;
        // Written as the ring's records are: straight into the chunk being
        // built, the block's time and count over their places at the end.
        let pushed = out.push_with(tag::ENTRIES, |buf| {
            let at = buf.len();
            buf.extend_from_slice(&[0; 16]);
            n = inner.read_entries(&mut |cookie, bytes| {
                let hash = entry_hash(bytes);
                buf.extend_from_slice(&cookie.to_le_bytes());
                if entries.get(&cookie) == Some(&hash) {
                    buf.extend_from_slice(&SAME_ENTRY.to_le_bytes());
                } else {
                    buf.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(0).to_le_bytes());
                    buf.extend_from_slice(bytes);
                }
                read.insert(cookie, hash);
                each(cookie, bytes);
            });
            buf[at..at + 8].copy_from_slice(&inner.now_ns().to_le_bytes());
            buf[at + 8..at + 16].copy_from_slice(&(n as u64).to_le_bytes());
            n > 0 || buf.len() > at + 16
        });
        *entries = read;
        if let Err(e) = pushed {
            failure.get_or_insert(e);
        }
        n
    }

    fn entry_turnover(&mut self) -> (u64, u64) {
        let turnover = self.inner.entry_turnover();
        let now = self.inner.now_ns();
        self.push_json(tag::TURNOVER, now, &turnover);
        turnover
    }

    fn ask_diag(&mut self, requests: Vec<DiagRequest>) -> bool {
        self.inner.ask_diag(requests)
    }

    fn ask_alive(&mut self) {
        self.inner.ask_alive();
    }

    fn ask_look(&mut self, request: LookRequest) -> bool {
        self.inner.ask_look(request)
    }

    async fn settle(&mut self) -> Vec<Event> {
        let events = self.inner.settle().await;
        let now = self.inner.now_ns();
        self.push_json(tag::SETTLED, now, &events);
        events
    }

    async fn diag_now(&mut self, requests: Vec<DiagRequest>) -> Vec<DiagAnswer> {
        let answers = self.inner.diag_now(requests).await;
        let now = self.inner.now_ns();
        self.push_json(tag::DIAG_NOW, now, &trimmed(&answers));
        answers
    }

    async fn alive_now(&mut self) -> Option<(Alive, u64)> {
        let alive = self.inner.alive_now().await;
        let now = self.inner.now_ns();
        self.push_json(tag::ALIVE_NOW, now, &alive);
        alive
    }

    async fn look_now(&mut self, request: LookRequest) -> Option<LookAnswer> {
        let answer = self.inner.look_now(request).await;
        let now = self.inner.now_ns();
        self.push_json(tag::LOOK_NOW, now, &answer);
        answer
    }

    fn dropped(&mut self) -> u64 {
        let n = self.inner.dropped();
        if n != self.counters.dropped {
            self.counters.dropped = n;
            self.note_counters();
        }
        n
    }

    fn missed(&mut self) -> u64 {
        let n = self.inner.missed();
        if n != self.counters.missed {
            self.counters.missed = n;
            self.note_counters();
        }
        n
    }

    fn losses(&mut self) -> HostLosses {
        let losses = self.inner.losses();
        if losses != self.counters.losses {
            self.counters.losses = losses;
            self.note_counters();
        }
        losses
    }

    fn now_ns(&mut self) -> u64 {
        self.inner.now_ns()
    }

    fn wall_clock(&mut self) -> WallClock {
        let clock = self.inner.wall_clock();
        // Resyncs jitter by microseconds; a step worth noting is larger.
        let moved = self
            .wall
            .is_none_or(|w| w.offset_ns().abs_diff(clock.offset_ns()) > 1_000_000);
        if moved {
            self.wall = Some(clock);
            let now = self.inner.now_ns();
            self.push_json(tag::WALL, now, &clock);
        }
        clock
    }

    fn detach(&mut self) {
        self.inner.detach();
        let now = self.inner.now_ns();
        self.push_json(tag::STOP, now, &());
    }

    fn container(&mut self, id: u64) -> Option<Container> {
        let container = self.inner.container(id);
        if self.containers.get(&id) != Some(&container) {
            self.containers.insert(id, container.clone());
            let now = self.inner.now_ns();
            self.push_json(tag::CONTAINER, now, &(id, &container));
        }
        container
    }

    fn ring_peak_and_reset(&mut self) -> u64 {
        self.inner.ring_peak_and_reset()
    }

    fn ring_bytes(&self) -> u32 {
        self.inner.ring_bytes()
    }

    fn take_warnings(&mut self) -> Vec<String> {
        let warnings = self.inner.take_warnings();
        if !warnings.is_empty() {
            let now = self.inner.now_ns();
            self.push_json(tag::WARNINGS, now, &warnings);
        }
        warnings
    }
}

/// Lookup answers with only the sockets asked about: a TIME_WAIT dump
/// finds every timewait socket of its namespace (a host after a churn
/// holds tens of thousands), and the tracker reads only those it asked
/// for.
pub(super) fn trimmed(answers: &[DiagAnswer]) -> Vec<DiagAnswer> {
    answers
        .iter()
        .map(|a| DiagAnswer {
            request: a.request.clone(),
            timewait: a.timewait.as_ref().map(|seen| {
                a.request
                    .cookies()
                    .filter_map(|c| seen.get(&c).map(|s| (c, *s)))
                    .collect()
            }),
            done_ns: a.done_ns,
        })
        .collect()
}

/// A hash of an entry's bytes, to tell a changed entry from one read
/// again as it was.
pub(super) fn entry_hash(bytes: &[u8]) -> u64 {
    use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(bytes)
}
