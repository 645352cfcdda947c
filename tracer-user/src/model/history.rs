//! The daemon's history in the model's terms: a group's minute (what closed, how long it lingered, what was alive at its end), a finding's life (start, end, worst evidence), which connections are kept whole, and a window of stored minutes merged back into an aggregator a report is drawn from. The store is `host::history`.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use serde::{Deserialize, Serialize};
use tracer_common::TcpState;

use crate::model::{
    aggregate::{Aggregator, GroupKey, Now, Peers, Stats, Windowing},
    diagnose::{Figure, Finding, Pathology, STUCK_LINGER_MS, Who},
    event::PodName,
    tracker::{ClosedBy, ConnRecord, LiveConn},
};

pub const MINUTE_NS: u64 = 60_000_000_000;

/// A minute is cut this long after it ends. What ended in it can arrive
/// later than it happened: by a read of the sockets' entries (every
/// second), a TIME_WAIT lookup (every 5 s), a busy drain. What arrives
/// later still is left out of the history (it is in the live figures).
pub const SETTLE_NS: u64 = 15_000_000_000;

/// At most this many connections are kept whole per minute; the rest are
/// counted in the minute's row.
pub const CONNECTIONS_PER_MINUTE: usize = 600;

/// The connections still open behind a finding kept whole: at most this
/// many per life of the finding (its figures count them all)...
pub const OPEN_PER_LIFE: usize = 100;
/// ...and this many at a look, a look a minute while it stands, so a
/// finding that grows has its newer sockets kept too.
pub const OPEN_PER_LOOK: usize = 25;

/// One group's minute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slice {
    pub key: GroupKey,
    /// What closed (and TIME_WAIT sockets that ended) in the minute.
    pub stats: Stats,
    /// The sockets alive at the minute's end (the first look after it).
    pub now: Now,
    /// (pid, connections) of the processes the group has seen so far, and
    /// how many there were.
    pub pids: Vec<(u32, u64)>,
    pub processes: u64,
    pub peers: Peers,
    /// The Kubernetes pod of the busiest process, when the node named it
    /// (filled in by the daemon, which can look it up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodName>,
}

/// Cuts the daemon's running aggregate into minutes, each once it has
/// settled, with the picture of the sockets alive at its end.
#[derive(Debug, Default)]
pub struct Slicer {
    /// The first minute (boot-clock minutes) not cut yet.
    next: u64,
    /// The live sockets at the end of minutes not cut yet, by group: taken
    /// at the first look after each minute ended.
    ends: BTreeMap<u64, HashMap<GroupKey, Now>>,
}

impl Slicer {
    /// Minutes are cut from the one `start_ns` (boot ns) falls in.
    pub fn new(start_ns: u64) -> Self {
        Self {
            next: start_ns / MINUTE_NS,
            ends: BTreeMap::new(),
        }
    }

    /// After a look at the live sockets: the picture of the minute that
    /// ended last, unless it was taken already.
    pub fn on_look(&mut self, agg: &Aggregator, now_ns: u64) {
        let Some(ended) = (now_ns / MINUTE_NS).checked_sub(1) else {
            return;
        };
        if ended < self.next || self.ends.contains_key(&ended) {
            return;
        }
        self.ends.insert(ended, picture(agg));
    }

    /// The minutes settled by `now_ns` and not cut yet: (minute, its
    /// slices), oldest first. A minute nothing happened in has no slices.
    pub fn due(&mut self, agg: &Aggregator, now_ns: u64) -> Vec<(u64, Vec<Slice>)> {
        let mut out = Vec::new();
        while (self.next + 1) * MINUTE_NS + SETTLE_NS <= now_ns {
            let minute = self.next;
            let mut picture = self.ends.remove(&minute).unwrap_or_default();
            let (from, to) = (minute * MINUTE_NS, (minute + 1) * MINUTE_NS);
            let mut slices = Vec::new();
            let folded = (agg.folded() > 0).then_some((&GroupKey::OTHER, agg.other()));
            for (key, group) in agg.groups().chain(folded) {
                let stats = agg.between(group, from, to);
                let now = picture.remove(key);
                if stats.is_empty() && now.is_none() {
                    continue;
                }
                slices.push(Slice {
                    key: *key,
                    stats,
                    now: now.unwrap_or_default(),
                    pids: group.procs.kept().to_vec(),
                    processes: group.procs.count(),
                    peers: group.peers.clone(),
                    pod: None,
                });
            }
            // Same input, same rows: the groups come out of a hash map.
            slices.sort_by_key(|s| s.key);
            out.push((minute, slices));
            self.next += 1;
        }
        let next = self.next;
        self.ends.retain(|&m, _| m >= next);
        out
    }

    /// At the end: every minute not cut yet, up to the one `now_ns` falls
    /// in (partial, with the sockets alive now), settled or not.
    pub fn rest(&mut self, agg: &Aggregator, now_ns: u64) -> Vec<(u64, Vec<Slice>)> {
        let current = now_ns / MINUTE_NS;
        if current >= self.next {
            self.ends.entry(current).or_insert_with(|| picture(agg));
        }
        self.due(agg, (current + 1) * MINUTE_NS + SETTLE_NS)
    }
}

/// The sockets alive now, by group.
fn picture(agg: &Aggregator) -> HashMap<GroupKey, Now> {
    agg.groups()
        .chain([(&GroupKey::OTHER, agg.other())])
        .filter(|(_, g)| g.now.total() > 0)
        .map(|(k, g)| (*k, g.now.clone()))
        .collect()
}

/// Stored minutes as an aggregator a report is drawn from: counts summed,
/// processes and client addresses merged, and the picture of what is alive
/// taken from the last minute of the window (a group missing from it had
/// nothing alive then). `slices` are (minute, slice), in any order.
pub fn restore<'a>(
    slices: impl IntoIterator<Item = &'a (i64, Slice)>,
    max_groups: usize,
) -> Aggregator {
    let mut slices: Vec<&(i64, Slice)> = slices.into_iter().collect();
    slices.sort_by_key(|(minute, s)| (*minute, s.key));
    let last = slices.last().map(|(m, _)| *m);
    let mut agg = Aggregator::new(max_groups, 0, Windowing::WHOLE_RUN);
    for (minute, s) in slices {
        let now = (Some(*minute) == last).then_some(&s.now);
        agg.restore(s.key, &s.stats, now, (&s.pids, s.processes), &s.peers);
    }
    agg
}

/// A figure with its kind, as stored (JSON numbers alone lose it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredFigure {
    Count(u64),
    Ms(f64),
    Percent(f64),
    PerSecond(f64),
    Fds(Vec<u32>),
}

impl From<&Figure> for StoredFigure {
    fn from(f: &Figure) -> Self {
        match f {
            Figure::Count(n) => Self::Count(*n),
            Figure::Ms(v) => Self::Ms(*v),
            Figure::Percent(v) => Self::Percent(*v),
            Figure::PerSecond(v) => Self::PerSecond(*v),
            Figure::Fds(fds) => Self::Fds(fds.clone()),
        }
    }
}

impl From<StoredFigure> for Figure {
    fn from(f: StoredFigure) -> Self {
        match f {
            StoredFigure::Count(n) => Self::Count(n),
            StoredFigure::Ms(v) => Self::Ms(v),
            StoredFigure::Percent(v) => Self::Percent(v),
            StoredFigure::PerSecond(v) => Self::PerSecond(v),
            StoredFigure::Fds(fds) => Self::Fds(fds),
        }
    }
}

/// A finding as stored: everything a report prints of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredFinding {
    pub pathology: String,
    pub key: GroupKey,
    pub pid: Option<u32>,
    pub processes: u64,
    pub pids: Vec<u32>,
    pub client: Option<IpAddr>,
    pub evidence: Vec<(String, StoredFigure)>,
    pub summary: String,
    pub window_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodName>,
}

impl From<&Finding> for StoredFinding {
    fn from(f: &Finding) -> Self {
        Self {
            pathology: f.pathology.id().to_string(),
            key: f.key,
            pid: f.who.pid,
            processes: f.who.processes,
            pids: f.who.pids.clone(),
            client: f.client,
            evidence: f
                .evidence
                .iter()
                .map(|(n, v)| (n.to_string(), v.into()))
                .collect(),
            summary: f.summary.clone(),
            window_s: f.window_s,
            pod: f.who.pod.clone(),
        }
    }
}

impl StoredFinding {
    /// The finding again; `None` for a pathology this version does not
    /// know (a store written by a newer one).
    pub fn finding(&self) -> Option<Finding> {
        Some(Finding {
            pathology: Pathology::from_id(&self.pathology)?,
            key: self.key,
            who: Who {
                pid: self.pid,
                processes: self.processes,
                pids: self.pids.clone(),
                pod: self.pod.clone(),
            },
            client: self.client,
            evidence: self
                .evidence
                .iter()
                .map(|(n, v)| (Cow::Owned(n.clone()), v.clone().into()))
                .collect(),
            summary: self.summary.clone(),
            window_s: self.window_s,
        })
    }
}

/// A finding's life as stored, times in unix ms.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredLife {
    /// The daemon run it belongs to (its start, unix ms) and its number there.
    pub run_ms: i64,
    pub life: u64,
    pub start_ms: i64,
    pub last_ms: i64,
    /// `None` while it stands (or if the daemon was stopped before it
    /// could say; the next run closes it at `last_ms`).
    pub end_ms: Option<i64>,
    pub peak: StoredFinding,
}

/// A finding from when it was first seen to when it was over, at its worst.
#[derive(Debug, Clone, PartialEq)]
pub struct Life {
    /// Numbered from 1 within one run of the daemon.
    pub id: u64,
    /// First and last seen (boot ns).
    pub start_ns: u64,
    pub last_ns: u64,
    /// When it was over (the last time it was seen); `None` while it stands.
    pub end_ns: Option<u64>,
    /// The finding when its main figure was at its largest.
    pub peak: Finding,
}

/// The lives of the findings of one run of the daemon.
#[derive(Debug, Default)]
pub struct Lives {
    last_id: u64,
    open: HashMap<(Pathology, GroupKey), Life>,
    /// Over, not handed out yet.
    ended: Vec<Life>,
}

impl Lives {
    /// After an analysis that found `current` at `now_ns`: a life for each
    /// new finding, the worst of each kept; a life whose finding is neither
    /// found now nor `still_standing` (the daemon waits a few analyses
    /// before it calls a finding over) ends when it was last seen.
    pub fn update(
        &mut self,
        current: &[Finding],
        still_standing: impl Fn(&(Pathology, GroupKey)) -> bool,
        now_ns: u64,
    ) {
        for f in current {
            let key = (f.pathology, f.key);
            if let Some(life) = self.open.get_mut(&key) {
                life.last_ns = now_ns;
                if f.magnitude() > life.peak.magnitude() {
                    life.peak = f.clone();
                }
            } else {
                self.last_id += 1;
                self.open.insert(
                    key,
                    Life {
                        id: self.last_id,
                        start_ns: now_ns,
                        last_ns: now_ns,
                        end_ns: None,
                        peak: f.clone(),
                    },
                );
            }
        }
        let over: Vec<(Pathology, GroupKey)> = self
            .open
            .keys()
            .filter(|k| !current.iter().any(|f| (f.pathology, f.key) == **k) && !still_standing(k))
            .copied()
            .collect();
        for key in over {
            if let Some(mut life) = self.open.remove(&key) {
                life.end_ns = Some(life.last_ns);
                self.ended.push(life);
            }
        }
    }

    /// Every life to store now: those standing, as they stand, and those
    /// over since the last call. By id.
    pub fn take(&mut self) -> Vec<Life> {
        let mut out: Vec<Life> = std::mem::take(&mut self.ended);
        out.extend(self.open.values().cloned());
        out.sort_by_key(|l| l.id);
        out
    }

    /// The findings standing now, each with its life's number.
    pub fn standing(&self) -> impl Iterator<Item = ((Pathology, GroupKey), u64)> + '_ {
        self.open.iter().map(|(k, l)| (*k, l.id))
    }

    /// The run stops: every standing life ends when it was last seen.
    pub fn end_all(&mut self) {
        for (_, mut life) in self.open.drain() {
            life.end_ns = Some(life.last_ns);
            self.ended.push(life);
        }
    }
}

/// The states of the open sockets that stand behind a finding of
/// `pathology`: the stuck ones of a leak or a stuck handler, the waiting
/// ones of a pool, the connects still trying of failing connects;
/// TIME_WAIT and listeners never.
fn behind(pathology: Pathology, state: TcpState) -> bool {
    let closing = matches!(
        state,
        TcpState::FinWait1
            | TcpState::FinWait2
            | TcpState::Closing
            | TcpState::CloseWait
            | TcpState::LastAck
    );
    match pathology {
        Pathology::CloseWaitLeak => state == TcpState::CloseWait,
        Pathology::UnansweredRequests | Pathology::LeakedIdle | Pathology::DeadlinePooled => {
            state == TcpState::Established
        }
        Pathology::ClientTimeoutStuckServer | Pathology::ServerCloses | Pathology::NoReuse => {
            closing
        }
        Pathology::ConnectFailures => state == TcpState::SynSent,
    }
}

/// Which of the sockets open now stand behind a finding of `pathology` in
/// group `key`: up to `room` not in `kept` yet, in the states the finding
/// is about, the longest in their state first.
pub fn pick_open(
    live: &[LiveConn],
    (pathology, key): (Pathology, &GroupKey),
    kept: &HashSet<u64>,
    room: usize,
) -> Vec<u64> {
    let mut picked: Vec<(u64, u64)> = live
        .iter()
        .filter(|l| {
            !kept.contains(&l.cookie) && behind(pathology, l.state) && GroupKey::of(&l.id) == *key
        })
        // Unknown since (it predates the tracer): the oldest.
        .map(|l| (l.since_ns.unwrap_or(0), l.cookie))
        .collect();
    picked.sort_unstable();
    picked.into_iter().take(room).map(|(_, c)| c).collect()
}

/// Why a finished connection is worth keeping whole: a connect that
/// failed, a reset, or lingering in a closing state as long as the rules
/// call stuck. `None` for the rest (nearly all of them).
pub fn notable(r: &ConnRecord) -> Option<&'static str> {
    if r.open_state.is_some() {
        return None;
    }
    if r.connect_failed.is_some() {
        return Some("connect_failed");
    }
    if matches!(r.closed_by, ClosedBy::ResetLocal | ClosedBy::ResetRemote) {
        return Some("reset");
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a positive constant of milliseconds"
    )]
    let stuck_ns = (STUCK_LINGER_MS * 1e6) as u64;
    [
        (TcpState::FinWait2, "lingered_fin_wait2"),
        (TcpState::CloseWait, "lingered_close_wait"),
        (TcpState::LastAck, "lingered_last_ack"),
    ]
    .into_iter()
    .find(|&(state, _)| r.states.get(state).is_some_and(|ns| ns >= stuck_ns))
    .map(|(_, why)| why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::aggregate::Windowing,
        model::diagnose::diagnose,
        model::tracker::Role,
        testutil::{figures, id, record},
    };

    const S: u64 = 1_000_000_000;

    fn daemon_agg() -> Aggregator {
        // The daemon's windowing: 10-second buckets, a little over 5 minutes.
        Aggregator::new(100, 0, Windowing::sliding(10 * S, 310 * S))
    }

    fn close_at(agg: &mut Aggregator, port: u16, at_ns: u64, by: ClosedBy) {
        let mut r = record(id(1, Role::Client, port), by, 5, None);
        r.end_ns = at_ns;
        agg.on_record(&r);
    }

    #[test]
    fn a_minute_is_cut_once_settled_with_only_its_own_closes() {
        let mut agg = daemon_agg();
        let mut slicer = Slicer::new(0);
        close_at(&mut agg, 80, 10 * S, ClosedBy::Local);
        close_at(&mut agg, 80, 59 * S, ClosedBy::Remote);
        close_at(&mut agg, 80, 61 * S, ClosedBy::Local);
        // Not settled yet.
        assert!(slicer.due(&agg, 60 * S + SETTLE_NS - 1).is_empty());
        let due = slicer.due(&agg, 60 * S + SETTLE_NS);
        assert_eq!(due.len(), 1);
        let (minute, slices) = &due[0];
        assert_eq!(*minute, 0);
        assert_eq!(slices.len(), 1);
        assert_eq!(slices[0].stats.closed, 2);
        assert_eq!(slices[0].stats.closed_by(ClosedBy::Remote), 1);
        // Cut once.
        assert!(slicer.due(&agg, 61 * S + SETTLE_NS).is_empty());
        let due = slicer.due(&agg, 120 * S + SETTLE_NS);
        assert_eq!(due[0].0, 1);
        assert_eq!(due[0].1[0].stats.closed, 1);
    }

    #[test]
    fn quiet_minutes_have_no_slices_and_several_due_come_in_order() {
        let mut agg = daemon_agg();
        let mut slicer = Slicer::new(0);
        close_at(&mut agg, 80, 130 * S, ClosedBy::Local);
        let due = slicer.due(&agg, 180 * S + SETTLE_NS);
        let minutes: Vec<u64> = due.iter().map(|(m, _)| *m).collect();
        assert_eq!(minutes, [0, 1, 2]);
        assert!(due[0].1.is_empty() && due[1].1.is_empty());
        assert_eq!(due[2].1[0].stats.closed, 1);
    }

    #[test]
    fn the_picture_of_a_minute_is_the_first_look_after_it() {
        let mut agg = daemon_agg();
        let mut slicer = Slicer::new(0);
        let live = |n: u64| {
            (0..n).map(|i| crate::model::aggregate::LiveSocket {
                id: id(1, Role::Server, 8080),
                owner_known: true,
                cookie: i,
                state: TcpState::CloseWait,
                since_ns: Some(0),
                io: None,
            })
        };
        agg.observe(live(3), 30 * S);
        slicer.on_look(&agg, 30 * S);
        agg.observe(live(5), 62 * S);
        slicer.on_look(&agg, 62 * S);
        // A later look does not replace it.
        agg.observe(live(9), 67 * S);
        slicer.on_look(&agg, 67 * S);
        let due = slicer.due(&agg, 60 * S + SETTLE_NS);
        let slice = &due[0].1[0];
        assert_eq!(slice.now.count(TcpState::CloseWait), 5);
        assert!(slice.stats.is_empty());
    }

    #[test]
    fn a_window_of_minutes_adds_up_and_shows_what_was_alive_at_its_end() {
        let mut agg = daemon_agg();
        let mut slicer = Slicer::new(0);
        for minute in 0..3 {
            for i in 0..4 {
                close_at(&mut agg, 80, minute * 60 * S + i * S, ClosedBy::Local);
            }
        }
        let mut stored = Vec::new();
        for (minute, slices) in slicer.due(&agg, 180 * S + SETTLE_NS) {
            for s in slices {
                // Through JSON, as the store keeps them.
                let s: Slice = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
                stored.push((i64::try_from(minute).unwrap(), s));
            }
        }
        let restored = restore(&stored, 100);
        let (key, group) = restored.groups().next().unwrap();
        assert_eq!(key.port, 80);
        let total = group.total();
        assert_eq!(total.closed, 12);
        assert_eq!(total.closed_by(ClosedBy::Local), 12);
        assert_eq!(total.lifetime.count(), 12);
        assert_eq!(
            restore(&stored[..2], 100)
                .groups()
                .next()
                .unwrap()
                .1
                .total()
                .closed,
            8
        );
    }

    #[test]
    fn a_finding_survives_the_store_and_judges_the_same() {
        let mut agg = Aggregator::new(10, 0, Windowing::WHOLE_RUN);
        for _ in 0..20 {
            let mut r = record(id(1, Role::Server, 80), ClosedBy::Local, 5, None);
            r.tcp = Some(figures(0, 0, 1, 1));
            agg.on_record(&r);
        }
        let findings = diagnose(&agg, &[u64::MAX], 10 * S);
        assert!(!findings.is_empty());
        for f in &findings {
            let stored: StoredFinding =
                serde_json::from_str(&serde_json::to_string(&StoredFinding::from(f)).unwrap())
                    .unwrap();
            assert_eq!(stored.finding().as_ref(), Some(f));
        }
        let mut unknown = StoredFinding::from(&findings[0]);
        unknown.pathology = "from_a_newer_version".into();
        assert_eq!(unknown.finding(), None);
    }

    #[test]
    fn a_life_keeps_its_worst_and_ends_when_last_seen() {
        let mut agg = Aggregator::new(10, 0, Windowing::WHOLE_RUN);
        let mut judge = |closes: usize| {
            for _ in 0..closes {
                let mut r = record(id(1, Role::Server, 80), ClosedBy::Local, 5, None);
                r.tcp = Some(figures(0, 0, 1, 1));
                agg.on_record(&r);
            }
            diagnose(&agg, &[u64::MAX], 10 * S)
        };
        let mut lives = Lives::default();
        let small = judge(20);
        lives.update(&small, |_| false, 5 * S);
        let big = judge(40);
        lives.update(&big, |_| false, 10 * S);
        // Missing, but the daemon still counts it as standing.
        lives.update(&[], |_| true, 15 * S);
        let standing = lives.take();
        assert_eq!(standing.len(), big.len());
        let life = &standing[0];
        assert_eq!(
            (life.start_ns, life.last_ns, life.end_ns),
            (5 * S, 10 * S, None)
        );
        assert_eq!(life.peak, big[0]);
        assert!(life.peak.magnitude() > small[0].magnitude());
        lives.update(&[], |_| false, 20 * S);
        let over = lives.take();
        assert_eq!(over[0].end_ns, Some(10 * S));
        assert_eq!(over[0].id, life.id);
        assert!(lives.take().is_empty());
    }

    #[test]
    fn open_sockets_behind_a_finding_are_those_it_is_about_oldest_first() {
        let server = id(1, Role::Server, 8080);
        let key = GroupKey::of(&server);
        let conn = |cookie, state, since_ns| LiveConn {
            cookie,
            id: server,
            owner_known: true,
            state,
            since_ns,
        };
        let mut other = conn(9, TcpState::CloseWait, Some(0));
        other.id = crate::testutil::id_named(2, "other", Role::Server, 80);
        let live = [
            conn(1, TcpState::Established, Some(S)),
            conn(2, TcpState::CloseWait, Some(5 * S)),
            conn(3, TcpState::CloseWait, Some(2 * S)),
            conn(4, TcpState::TimeWait, Some(0)),
            conn(5, TcpState::Listen, Some(0)),
            conn(6, TcpState::CloseWait, None),
            conn(7, TcpState::LastAck, Some(3 * S)),
            conn(8, TcpState::Established, Some(0)),
            other,
        ];
        let none = HashSet::new();
        let leak = (Pathology::CloseWaitLeak, &key);
        // A leak's: its CLOSE_WAIT sockets only, not the healthy ones.
        assert_eq!(pick_open(&live, leak, &none, 10), [6, 3, 2]);
        assert_eq!(pick_open(&live, leak, &none, 2), [6, 3]);
        let kept: HashSet<u64> = [6, 3].into();
        assert_eq!(pick_open(&live, leak, &kept, 2), [2]);
        assert!(pick_open(&live, leak, &none, 0).is_empty());
        // A stuck handler's: every closing state.
        let stuck = (Pathology::ClientTimeoutStuckServer, &key);
        assert_eq!(pick_open(&live, stuck, &none, 10), [6, 3, 7, 2]);
        // A pool's: the established ones.
        let pool = (Pathology::UnansweredRequests, &key);
        assert_eq!(pick_open(&live, pool, &none, 10), [8, 1]);
    }

    #[test]
    fn failed_connects_resets_and_long_closing_lingers_are_notable_the_rest_is_not() {
        let c = id(1, Role::Client, 80);
        assert_eq!(notable(&record(c, ClosedBy::Local, 5, None)), None);
        assert_eq!(
            notable(&record(c, ClosedBy::ResetRemote, 5, None)),
            Some("reset")
        );
        assert_eq!(notable(&record(c, ClosedBy::Local, 5, Some(999))), None);
        assert_eq!(
            notable(&record(c, ClosedBy::Local, 5, Some(1_000))),
            Some("lingered_fin_wait2")
        );
        let mut open = record(c, ClosedBy::ResetLocal, 5, None);
        open.open_state = Some(TcpState::Established);
        assert_eq!(notable(&open), None);
        // A refused connect is a reset too, but said for what it is.
        let mut refused = record(c, ClosedBy::ResetRemote, 1, None);
        refused.connect_failed = Some(crate::model::tracker::ConnectFailure::Refused);
        assert_eq!(notable(&refused), Some("connect_failed"));
    }
}
