//! [`ReplayHost`]: a host that hands a recording back in the order it was written, with a window cut by time and no kernel.

use std::{collections::HashMap, fs::File, future::Future, io::BufReader, path::Path, rc::Rc};

use serde::{Serialize, de::DeserializeOwned};

use super::{Counters, EntryRead, SAME_ENTRY, TimedOwned, cookie_and_time, tag};
use crate::{
    bpf::{decode::widen_legacy, ring::MAX_BATCH},
    host::{
        cgroups::Container,
        clock::WallClock,
        follow::DiagAnswer,
        recording_file::{Header, ReadError, RecordingReader},
    },
    model::tracker::{Alive, DiagRequest},
    session::host::{Event, Host, HostLosses, LookAnswer, LookRequest},
};

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
pub(super) fn containers_in(path: &Path) -> HashMap<u64, Option<Container>> {
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
pub(super) fn json<T: DeserializeOwned>(payload: &[u8]) -> Option<(u64, T)> {
    let timed: TimedOwned<T> = serde_json::from_slice(payload).ok()?;
    Some((timed.now_ns, timed.value))
}

/// The first format version whose ring records carry the sockets' figures
/// at their end (`tracer_common::NetFigures`); earlier records are
/// widened to today's layout as they are read.
pub(super) const NET_FIGURES_VERSION: u32 = 3;

/// A ring block: its time, then each record as a length and its bytes.
pub(super) fn decode_ring(payload: &[u8]) -> Option<(Vec<Vec<u8>>, u64)> {
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
pub(super) fn decode_entries(
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
