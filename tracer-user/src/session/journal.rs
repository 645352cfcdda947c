//! Sessions on record: [`Recorder`] stands between a session and its host and writes everything the host hands over (events, ring records, counters, clocks, answers at the stop) to a recording; [`ReplayHost`] hands the same back in the same order, with no kernel and no root. The blocks are listed in RECORDING.md.

use std::{
    collections::HashMap,
    fs::File,
    future::Future,
    io::{self, BufReader},
    path::Path,
    rc::Rc,
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::host::{Event, Host, HostLosses, LookAnswer, LookRequest};
use crate::{
    bpf::{
        decode::{Decoded, decode_any, widen_legacy},
        ring::MAX_BATCH,
    },
    host::{
        cgroups::Container,
        clock::WallClock,
        follow::DiagAnswer,
        recording_file::{Header, ReadError, RecordingReader, RecordingWriter},
    },
    model::tracker::{Alive, DiagRequest},
};

/// Block tags. A reader skips tags it does not know (a later build of the
/// same format version may add some); changing what a tag holds is a new
/// format version.
mod tag {
    pub const EVENT: u8 = 1;
    pub const RING: u8 = 2;
    pub const COUNTERS: u8 = 3;
    pub const WALL: u8 = 4;
    pub const WARNINGS: u8 = 5;
    pub const CONTAINER: u8 = 6;
    pub const STOP: u8 = 7;
    pub const SETTLED: u8 = 8;
    pub const DIAG_NOW: u8 = 9;
    pub const ALIVE_NOW: u8 = 10;
    pub const LOOK_NOW: u8 = 11;
    pub const NAMESPACES: u8 = 12;
    pub const TURNOVER: u8 = 13;
    pub const ENTRIES: u8 = 14;
}

/// In an [`tag::ENTRIES`] block, the length that says an entry's bytes
/// are those of the socket's entry in the block before.
const SAME_ENTRY: u32 = u32::MAX;

/// A block's JSON payload: what the host handed over, and when (boot ns).
#[derive(Serialize)]
struct Timed<'a, T> {
    now_ns: u64,
    value: &'a T,
}

#[derive(Deserialize)]
struct TimedOwned<T> {
    now_ns: u64,
    value: T,
}

/// The loss counters, written whenever one of them moves.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Counters {
    dropped: u64,
    missed: u64,
    losses: HostLosses,
}

/// A host whose every answer is also written to a recording.
pub struct Recorder<H: Host> {
    /// The host recorded (a test scripts it through here).
    pub(super) inner: H,
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
fn trimmed(answers: &[DiagAnswer]) -> Vec<DiagAnswer> {
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
fn entry_hash(bytes: &[u8]) -> u64 {
    use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(bytes)
}

/// A socket's entry as read: its cookie and raw bytes (shared with the
/// reads that refer to it).
type EntryRead = (u64, Rc<[u8]>);

/// A ring record's socket and time (a log's: its last step's), if it
/// decodes.
fn cookie_and_time(bytes: &[u8]) -> Option<(u64, u64)> {
    match decode_any(bytes).ok()? {
        Decoded::Record(r) => Some((r.cookie, r.ts_ns)),
        Decoded::Log(log) => Some((log.cookie(), log.socket.ts_ns)),
    }
}

/// A block a replay hands over in order (the others update its state as
/// they are passed).
enum Main {
    Event(Event),
    /// Raw records, as drained then.
    Ring(Vec<Vec<u8>>),
    /// A read of the per-socket entries: how many the host said, and each.
    Entries(usize, Vec<EntryRead>),
    /// Entries made and freed so far.
    Turnover((u64, u64)),
    Stop,
    Settled(Vec<Event>),
    DiagNow(Vec<DiagAnswer>),
    AliveNow(Option<(Alive, u64)>),
    LookNow(Option<LookAnswer>),
}

/// A host that hands back a recording.
pub struct ReplayHost {
    path: std::path::PathBuf,
    reader: RecordingReader<BufReader<File>>,
    /// The next main block, and its time.
    next: Option<(u64, Main)>,
    now_ns: u64,
    /// `--until`: the replay ends at the first block after it.
    until_ns: Option<u64>,
    counters: Counters,
    clock: WallClock,
    containers: HashMap<u64, Option<Container>>,
    /// The entries of the last read, for the next one's references.
    entries: HashMap<u64, Rc<[u8]>>,
    /// The last count of entries made and freed taken: what the host
    /// still says where a recording cut short lacks the next.
    turnover: (u64, u64),
    /// Network namespace -> its `tcp_fin_timeout` (s), as recorded.
    fin_timeouts: std::collections::BTreeMap<u32, u64>,
    warnings: Vec<String>,
    /// Where the file stopped being readable, if it did.
    damage: Option<ReadError>,
    /// The recording's end (its stop, or the end of what could be read).
    ended: bool,
}

impl ReplayHost {
    /// Opens the recording at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let reader = RecordingReader::open(path)?;
        let header = &reader.header;
        let clock = WallClock::at(header.started_boot_ns, header.started_unix_ns);
        // With `record --cgroup`, every owner's cgroup is known from the
        // start: the recorder looked some up only as the run ended, after
        // the blocks a replay reads to its stop.
        let containers = if header.cgroup.is_some() {
            containers_in(path)
        } else {
            HashMap::new()
        };
        Ok(Self {
            path: path.to_path_buf(),
            now_ns: header.started_boot_ns,
            reader,
            next: None,
            until_ns: None,
            counters: Counters::default(),
            clock,
            containers,
            entries: HashMap::new(),
            turnover: (0, 0),
            fin_timeouts: std::collections::BTreeMap::new(),
            warnings: Vec::new(),
            damage: None,
            ended: false,
        })
    }

    pub fn header(&self) -> &Header {
        &self.reader.header
    }

    /// Ends the replay at the first block after `until_ns` (boot clock),
    /// as if stopped then.
    pub fn until(&mut self, until_ns: u64) {
        self.until_ns = Some(until_ns);
    }

    fn peek(&mut self) -> Option<&Main> {
        while self.next.is_none() && !self.ended {
            match self.read() {
                Ok(Some(timed)) => self.next = Some(timed),
                Ok(None) => {}
                Err(e) => {
                    // A recording cut short (a crash, a full disk) is
                    // replayed up to there, as tcpdump reads a capture.
                    self.warnings.push(format!(
                        "{}: {e}; what came before is replayed",
                        self.path.display()
                    ));
                    self.damage = Some(e);
                    self.ended = true;
                }
            }
        }
        self.next.as_ref().map(|(_, main)| main)
    }

    /// The next main block; the clock moves to its time.
    fn take(&mut self) -> Option<Main> {
        self.peek();
        let (at, main) = self.next.take()?;
        self.now_ns = self.now_ns.max(at);
        // What was written after it and before the next main block (the
        // loss counters read after a drain) applies now, as it did live.
        self.peek();
        Some(main)
    }

    /// [`Self::take`] if the next main block is `wanted`; else it stays
    /// next.
    fn take_if(&mut self, wanted: impl FnOnce(&Main) -> bool) -> Option<Main> {
        if self.peek().is_some_and(wanted) {
            self.take()
        } else {
            None
        }
    }

    /// Reads one block: a main one and its time, or `None` after applying
    /// a side one.
    fn read(&mut self) -> Result<Option<(u64, Main)>, ReadError> {
        let Some((tag, payload)) = self.reader.next_block()? else {
            self.ended = true;
            return Ok(None);
        };
        let (chunk, offset) = (self.reader.chunks, self.reader.offset);
        let bad = move || ReadError::Damaged {
            what: "a block that does not decode",
            chunk,
            offset,
        };
        if tag == tag::RING {
            let (mut records, now) = decode_ring(&payload).ok_or_else(bad)?;
            if self.reader.version < NET_FIGURES_VERSION {
                for record in &mut records {
                    widen_legacy(record);
                }
            }
            return Ok(Some((now, Main::Ring(records))));
        }
        if tag == tag::ENTRIES {
            let (now, n, read) = decode_entries(&payload, &self.entries).ok_or_else(bad)?;
            self.entries = read.iter().cloned().collect();
            return Ok(Some((now, Main::Entries(n, read))));
        }
        let main = match tag {
            tag::EVENT => json(&payload).map(|(now, e)| (now, Some(Main::Event(e)))),
            tag::STOP => json::<()>(&payload).map(|(now, ())| (now, Some(Main::Stop))),
            tag::SETTLED => json(&payload).map(|(now, e)| (now, Some(Main::Settled(e)))),
            tag::DIAG_NOW => json(&payload).map(|(now, a)| (now, Some(Main::DiagNow(a)))),
            tag::ALIVE_NOW => json(&payload).map(|(now, a)| (now, Some(Main::AliveNow(a)))),
            tag::LOOK_NOW => json(&payload).map(|(now, a)| (now, Some(Main::LookNow(a)))),
            tag::TURNOVER => json(&payload).map(|(now, t)| (now, Some(Main::Turnover(t)))),
            tag::COUNTERS => json(&payload).map(|(now, c)| {
                self.counters = c;
                (now, None)
            }),
            tag::WALL => json(&payload).map(|(now, c)| {
                self.clock = c;
                (now, None)
            }),
            tag::WARNINGS => json::<Vec<String>>(&payload).map(|(now, w)| {
                self.warnings.extend(w);
                (now, None)
            }),
            tag::NAMESPACES => {
                json::<std::collections::BTreeMap<u32, u64>>(&payload).map(|(now, seen)| {
                    self.fin_timeouts.extend(seen);
                    (now, None)
                })
            }
            tag::CONTAINER => json::<(u64, Option<Container>)>(&payload).map(|(now, (id, c))| {
                if c.is_some() || !self.containers.contains_key(&id) {
                    self.containers.insert(id, c);
                }
                (now, None)
            }),
            _ => return Ok(None),
        };
        let (now, main) = main.ok_or_else(bad)?;
        Ok(main.map(|main| (now, main)))
    }
}

/// Every cgroup a recording names (a damaged end is left to the replay
/// to report).
fn containers_in(path: &Path) -> HashMap<u64, Option<Container>> {
    let mut found = HashMap::new();
    let Ok(mut reader) = RecordingReader::open(path) else {
        return found;
    };
    while let Ok(Some((tag, payload))) = reader.next_block() {
        if tag == tag::CONTAINER
            && let Some((_, (id, container))) = json::<(u64, Option<Container>)>(&payload)
            && container.is_some()
        {
            found.insert(id, container);
        }
    }
    found
}

/// A JSON block's time and value.
fn json<T: DeserializeOwned>(payload: &[u8]) -> Option<(u64, T)> {
    let timed: TimedOwned<T> = serde_json::from_slice(payload).ok()?;
    Some((timed.now_ns, timed.value))
}

/// The first format version whose ring records carry the sockets' figures
/// at their end (`tracer_common::NetFigures`); earlier records are
/// widened to today's layout as they are read.
const NET_FIGURES_VERSION: u32 = 3;

/// A ring block: its time, then each record as a length and its bytes.
fn decode_ring(payload: &[u8]) -> Option<(Vec<Vec<u8>>, u64)> {
    let now = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    let mut rest = &payload[8..];
    let mut records = Vec::new();
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        records.push(rest.get(4..4 + len)?.to_vec());
        rest = &rest[4 + len..];
        if records.len() > MAX_BATCH {
            return None;
        }
    }
    Some((records, now))
}

/// An entries block: its time, the count the host returned, and each
/// entry, references resolved against the read before (`last`).
fn decode_entries(
    payload: &[u8],
    last: &HashMap<u64, Rc<[u8]>>,
) -> Option<(u64, usize, Vec<EntryRead>)> {
    let now = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    let n = usize::try_from(u64::from_le_bytes(payload.get(8..16)?.try_into().ok()?)).ok()?;
    let mut rest = &payload[16..];
    let mut read = Vec::new();
    while !rest.is_empty() {
        let cookie = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
        let len = u32::from_le_bytes(rest.get(8..12)?.try_into().ok()?);
        rest = &rest[12..];
        let bytes = if len == SAME_ENTRY {
            Rc::clone(last.get(&cookie)?)
        } else {
            // Only the kernel's entries: a larger one would be copied
            // into every read that refers to it.
            let len = len as usize;
            if len != size_of::<tracer_common::SocketEntry>() {
                return None;
            }
            let bytes = Rc::from(rest.get(..len)?);
            rest = &rest[len..];
            bytes
        };
        read.push((cookie, bytes));
    }
    Some((now, n, read))
}

impl Host for ReplayHost {
    /// What the session steps through is done; only the recording's stop
    /// (if it was written) remains.
    fn exhausted(&mut self) -> bool {
        let until = self.until_ns.unwrap_or(u64::MAX);
        self.peek();
        // A drain after `--until` may still hold records from before it
        // (records are stamped when written, blocks when drained).
        !matches!(&self.next, Some((at, Main::Event(_))) if *at <= until)
            && !matches!(&self.next, Some((_, Main::Ring(_))))
    }

    fn replayed(&self) -> bool {
        true
    }

    fn next_at(&mut self) -> Option<u64> {
        self.peek();
        self.next.as_ref().map(|(at, _)| *at)
    }

    fn next(&mut self, _backlog: bool) -> impl Future<Output = Event> {
        let event = match self.take_if(|m| matches!(m, Main::Event(_))) {
            Some(Main::Event(event)) => event,
            // Records waiting, or the end: the session drains (nothing, at
            // the end; its driver stops on `exhausted`).
            _ => Event::Ring,
        };
        std::future::ready(event)
    }

    fn drain(&mut self, each: &mut dyn FnMut(&[u8])) -> usize {
        let Some(Main::Ring(mut records)) = self.take_if(|m| matches!(m, Main::Ring(_))) else {
            return 0;
        };
        if let Some(until) = self.until_ns
            && self.now_ns > until
        {
            // A drain after `--until`: its records from before it (the
            // replay ends at the next event, `exhausted`).
            records.retain(|r| cookie_and_time(r).is_some_and(|(_, ts)| ts <= until));
        }
        for r in &records {
            each(r);
        }
        records.len()
    }

    fn read_entries(&mut self, each: &mut dyn FnMut(u64, &[u8])) -> usize {
        let Some(Main::Entries(n, read)) = self.take_if(|m| matches!(m, Main::Entries(..))) else {
            return 0;
        };
        for (cookie, bytes) in &read {
            each(*cookie, bytes);
        }
        n
    }

    fn entry_turnover(&mut self) -> (u64, u64) {
        if let Some(Main::Turnover(turnover)) = self.take_if(|m| matches!(m, Main::Turnover(_))) {
            self.turnover = turnover;
        }
        self.turnover
    }

    fn ask_diag(&mut self, _requests: Vec<DiagRequest>) -> bool {
        true
    }

    fn ask_alive(&mut self) {}

    fn ask_look(&mut self, _request: LookRequest) -> bool {
        true
    }

    fn settle(&mut self) -> impl Future<Output = Vec<Event>> {
        let events = match self.take_if(|m| matches!(m, Main::Settled(_))) {
            Some(Main::Settled(events)) => events,
            _ => Vec::new(),
        };
        std::future::ready(events)
    }

    fn diag_now(&mut self, _requests: Vec<DiagRequest>) -> impl Future<Output = Vec<DiagAnswer>> {
        let answers = match self.take_if(|m| matches!(m, Main::DiagNow(_))) {
            Some(Main::DiagNow(answers)) => answers,
            _ => Vec::new(),
        };
        std::future::ready(answers)
    }

    fn alive_now(&mut self) -> impl Future<Output = Option<(Alive, u64)>> {
        let alive = match self.take_if(|m| matches!(m, Main::AliveNow(_))) {
            Some(Main::AliveNow(alive)) => alive,
            _ => None,
        };
        std::future::ready(alive)
    }

    fn look_now(&mut self, _request: LookRequest) -> impl Future<Output = Option<LookAnswer>> {
        let answer = match self.take_if(|m| matches!(m, Main::LookNow(_))) {
            Some(Main::LookNow(answer)) => answer,
            _ => None,
        };
        std::future::ready(answer)
    }

    fn dropped(&mut self) -> u64 {
        self.counters.dropped
    }

    fn missed(&mut self) -> u64 {
        self.counters.missed
    }

    fn losses(&mut self) -> HostLosses {
        self.counters.losses
    }

    fn now_ns(&mut self) -> u64 {
        self.now_ns
    }

    fn wall_clock(&mut self) -> WallClock {
        self.clock
    }

    fn detach(&mut self) {
        if matches!(self.peek(), Some(Main::Stop)) {
            self.take();
            return;
        }
        // Stopped before the recording's end (`--until`, Ctrl-C): it ends
        // here, as if stopped now; what the recording says after (the
        // answers at its own stop included) describes a later time. Only
        // records written before then and drained after are still taken
        // (the last drain hands them over).
        let (now, until) = (self.now_ns, self.until_ns.unwrap_or(self.now_ns));
        let mut late = Vec::new();
        while let Some(main) = self.take() {
            match main {
                // Reads of live entries after the cut describe a later
                // time: what is open at the cut is as the last read before
                // it said (at most a second before).
                Main::Event(_) | Main::Entries(..) | Main::Turnover(_) => {}
                Main::Ring(records) => {
                    let before = records
                        .into_iter()
                        .filter(|r| cookie_and_time(r).is_some_and(|(_, ts)| ts <= until))
                        .collect::<Vec<_>>();
                    if before.is_empty() {
                        break;
                    }
                    late.extend(before);
                }
                _ => break,
            }
        }
        self.now_ns = now;
        self.next = Some((now, Main::Ring(late)));
        self.ended = true;
    }

    fn container(&mut self, id: u64) -> Option<Container> {
        self.containers.get(&id).cloned().flatten()
    }

    fn ring_peak_and_reset(&mut self) -> u64 {
        0
    }

    fn ring_bytes(&self) -> u32 {
        0
    }

    fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }
}

/// What `record --info` says of a recording.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// The file's format version.
    pub version: u32,
    pub header: Header,
    pub bytes: u64,
    pub chunks: u64,
    /// Boot ns of the first and last block.
    pub first_ns: Option<u64>,
    pub last_ns: Option<u64>,
    pub records: u64,
    /// Distinct sockets in the records and in the reads of live entries.
    pub sockets: u64,
    pub dropped: u64,
    pub missed: u64,
    /// Network namespace -> its `tcp_fin_timeout` (s).
    pub tcp_fin_timeout_s: std::collections::BTreeMap<u32, u64>,
    /// The recording's stop was written (it was not cut short).
    pub complete: bool,
    /// Where it stopped being readable, if it did.
    pub damage: Option<String>,
}

/// Reads a whole recording for its [`Summary`].
pub fn summarize(path: &Path) -> anyhow::Result<Summary> {
    let bytes = std::fs::metadata(path)?.len();
    let mut host = ReplayHost::open(path)?;
    let mut summary = Summary {
        version: host.reader.version,
        header: host.header().clone(),
        bytes,
        ..Summary::default()
    };
    let mut cookies = std::collections::HashSet::new();
    loop {
        let main = host.take();
        let now = host.now_ns;
        if main.is_some() {
            summary.first_ns.get_or_insert(now);
            summary.last_ns = Some(now);
        }
        match main {
            None => break,
            Some(Main::Ring(records)) => {
                summary.records += records.len() as u64;
                for r in &records {
                    if let Some((cookie, _)) = cookie_and_time(r) {
                        cookies.insert(cookie);
                    }
                }
            }
            // Sockets alive throughout show only in reads of the entries.
            Some(Main::Entries(_, read)) => cookies.extend(read.iter().map(|(cookie, _)| *cookie)),
            Some(Main::Stop) => summary.complete = true,
            Some(_) => {}
        }
    }
    summary.sockets = cookies.len() as u64;
    summary.dropped = host.counters.dropped;
    summary.missed = host.counters.missed;
    summary.tcp_fin_timeout_s = host.fin_timeouts.clone();
    summary.chunks = host.reader.chunks;
    summary.damage = host.damage.as_ref().map(ToString::to_string);
    Ok(summary)
}

/// Opens a recording for the errors a user should see: the path named.
pub fn open(path: &Path) -> anyhow::Result<ReplayHost> {
    ReplayHost::open(path).map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::recording_file::{Header, RecordingWriter};

    fn recording_of(blocks: &[(u8, Vec<u8>)], name: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "tcplinger-unit-journal-{}-{name}",
            std::process::id()
        ));
        let file = File::create(&path).unwrap();
        let mut w = RecordingWriter::new(Box::new(file), &Header::default(), None).unwrap();
        for (tag, payload) in blocks {
            w.push(*tag, payload).unwrap();
        }
        w.finish().unwrap();
        path
    }

    /// A recording cut short inside a read of the entries still answers
    /// the count of entries made and freed as last recorded: (0, 0) would
    /// count every entry ever made as recycled.
    #[test]
    fn a_turnover_missing_at_the_cut_is_the_last_one_recorded() {
        let turnover = serde_json::to_vec(&Timed {
            now_ns: 5,
            value: &(40u64, 38u64),
        })
        .unwrap();
        let path = recording_of(&[(tag::TURNOVER, turnover)], "turnover");
        let mut host = ReplayHost::open(&path).unwrap();
        assert_eq!(host.entry_turnover(), (40, 38));
        assert_eq!(host.entry_turnover(), (40, 38), "the file ends here");
        let _ = std::fs::remove_file(&path);
    }

    fn entries_block(entries: &[(u64, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&7u64.to_le_bytes());
        b.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        for (cookie, bytes) in entries {
            b.extend_from_slice(&cookie.to_le_bytes());
            match bytes {
                Some(bytes) => {
                    b.extend_from_slice(&u32::try_from(bytes.len()).unwrap().to_le_bytes());
                    b.extend_from_slice(bytes);
                }
                None => b.extend_from_slice(&SAME_ENTRY.to_le_bytes()),
            }
        }
        b
    }

    #[test]
    fn entries_blocks_take_only_entries_and_known_references() {
        let entry = vec![3u8; size_of::<tracer_common::SocketEntry>()];
        let none = HashMap::new();
        let (now, n, read) = decode_entries(&entries_block(&[(1, Some(&entry))]), &none).unwrap();
        assert_eq!((now, n, read.len()), (7, 1, 1));
        let last: HashMap<u64, Rc<[u8]>> = read.into_iter().collect();
        let (_, _, again) = decode_entries(&entries_block(&[(1, None)]), &last).unwrap();
        assert_eq!(&*again[0].1, &entry[..], "a reference is the entry before");
        // A reference to a socket not read before, an entry of another
        // size, a block cut inside an entry: damage, not a panic.
        assert!(decode_entries(&entries_block(&[(2, None)]), &last).is_none());
        assert!(decode_entries(&entries_block(&[(1, Some(&[1, 2, 3]))]), &none).is_none());
        let cut = entries_block(&[(1, Some(&entry))]);
        assert!(decode_entries(&cut[..cut.len() - 1], &none).is_none());
    }
}
