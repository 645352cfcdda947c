//! Statistics per group (one program talking to one endpoint in one role), in time buckets so findings can judge a recent window, with the sockets alive now and a cap on groups.
//!
//! A group is keyed by the process *name*, not its pid: a shell loop of
//! `curl` is 200 pids with one connection each, and a prefork server is
//! several workers doing the same job; people read both as one row
//! (`curl ×200`). The pids are kept inside the group, to name the one a
//! finding is about. A server's connections group by its listening port,
//! whatever client they come from.

use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt as _};
use tracer_common::TcpState;

use crate::model::tracker::{ConnId, ConnRecord, Role, TimewaitEnd};

mod key;
mod now;
mod stats;

pub use key::{GroupKey, Peers, Procs};
pub use now::{LastIo, LiveNet, LiveSocket, Now, PidNow};
pub use stats::{Stats, ratio};

/// ESTABLISHED sockets silent this long count as idle.
pub const IDLE_AFTER_NS: u64 = 2_000_000_000;
/// A send unanswered this long counts as an unanswered request.
pub const UNANSWERED_AFTER_NS: u64 = 1_000_000_000;
/// A first closing act that came this soon after data last moved either
/// way ended the connection "right after an exchange". Real clients and
/// servers that close after answering (curl, Go net/http, nginx, Python)
/// do it within one jiffy (0-4 ms measured); the idle timeouts that end
/// healthy keep-alive connections are a second or more.
pub const PROMPT_MS: u32 = 200;
/// At most this many data segments carry "one request" (a request's
/// headers and body may go in two writes).
pub const ONE_REQUEST_SEGS: u32 = 2;

/// At most this many CLOSE_WAIT sockets per group are remembered, to name
/// their file descriptors in a finding.
const CLOSE_WAIT_SAMPLE: usize = 16;
/// Pids remembered per group (more are only counted).
const PIDS_KEPT: usize = 64;
/// Client addresses remembered per server group.
const PEERS_KEPT: usize = 8;

/// One time bucket of a group.
#[derive(Debug, Clone)]
struct Bucket {
    index: u64,
    stats: Stats,
    /// When its first connection opened (boot ns): a rate is counted from
    /// there, not from the bucket's start, which may be up to a bucket
    /// earlier.
    first_open_ns: Option<u64>,
}

impl Bucket {
    fn new(index: u64) -> Self {
        Self {
            index,
            stats: Stats::default(),
            first_open_ns: None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Group {
    buckets: VecDeque<Bucket>,
    pub now: Now,
    /// ESTABLISHED count at each observation: (boot ns, count).
    established: VecDeque<(u64, u64)>,
    /// A group born after the first observation had nothing open before.
    born_after_first_look: bool,
    /// When it was first observed (boot ns).
    first_look_ns: u64,
    pub procs: Procs,
    pub peers: Peers,
    /// Last time anything was counted in it (boot ns).
    last_active_ns: u64,
}

impl Group {
    /// Everything its buckets from index `from` on hold.
    fn stats_from(&self, from: u64) -> Stats {
        self.stats_between(from, u64::MAX)
    }

    /// Everything its buckets with an index in `from..to` hold.
    fn stats_between(&self, from: u64, to: u64) -> Stats {
        let mut out = Stats::default();
        for b in self
            .buckets
            .iter()
            .filter(|b| (from..to).contains(&b.index))
        {
            out.merge(&b.stats);
        }
        out
    }

    /// Everything it holds (for a report: its whole run).
    pub fn total(&self) -> Stats {
        self.stats_from(0)
    }

    /// ESTABLISHED at the start of the window from `since_ns` (0 for a
    /// group born after the first look, as it had none then) and now.
    pub fn established_growth(&self, since_ns: u64) -> (u64, u64) {
        let now = self.now.count(TcpState::Established);
        if self.born_after_first_look && self.first_look_ns >= since_ns {
            return (0, now);
        }
        let first = self
            .established
            .iter()
            .find(|&&(at, _)| at >= since_ns)
            .map_or(now, |&(_, n)| n);
        (first, now)
    }

    /// Sockets in a closing or waiting state now: what "lingering" means.
    pub fn lingering(&self) -> u64 {
        [
            TcpState::FinWait1,
            TcpState::FinWait2,
            TcpState::Closing,
            TcpState::CloseWait,
            TcpState::LastAck,
            TcpState::TimeWait,
        ]
        .iter()
        .map(|&s| self.now.count(s))
        .sum()
    }

    fn bucket(&mut self, index: u64) -> &mut Stats {
        &mut self.bucket_at(index).stats
    }

    fn bucket_at(&mut self, index: u64) -> &mut Bucket {
        // Events arrive nearly in time order: look from the newest.
        match self.buckets.iter().rposition(|b| b.index <= index) {
            Some(i) if self.buckets[i].index == index => &mut self.buckets[i],
            Some(i) => {
                self.buckets.insert(i + 1, Bucket::new(index));
                &mut self.buckets[i + 1]
            }
            None => {
                self.buckets.push_front(Bucket::new(index));
                &mut self.buckets[0]
            }
        }
    }
}

/// How time is cut into buckets, and how much of it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windowing {
    pub bucket_ns: u64,
    /// Buckets older than this are dropped; groups with nothing in them
    /// and nothing alive go with them.
    pub keep_ns: u64,
}

impl Windowing {
    /// One bucket for the whole run, nothing forgotten (`report`).
    pub const WHOLE_RUN: Self = Self {
        bucket_ns: u64::MAX,
        keep_ns: u64::MAX,
    };

    /// Buckets of `bucket_ns`, kept for `keep_ns` (`daemon`, `top`).
    pub const fn sliding(bucket_ns: u64, keep_ns: u64) -> Self {
        Self { bucket_ns, keep_ns }
    }
}

/// Every group, up to a cap; beyond it, groups with nothing alive make
/// room, and only when none can are the newcomers folded into `other`.
pub struct Aggregator {
    groups: HashMap<GroupKey, Group>,
    other: Group,
    max_groups: usize,
    /// Events (opens, closes, sockets observed) folded into `other`.
    folded: u64,
    /// Groups dropped to make room, or because they were over.
    retired: u64,
    started_ns: u64,
    observed: bool,
    windowing: Windowing,
}

impl Aggregator {
    pub fn new(max_groups: usize, started_ns: u64, windowing: Windowing) -> Self {
        Self {
            groups: HashMap::new(),
            other: Group::default(),
            max_groups,
            folded: 0,
            retired: 0,
            started_ns,
            observed: false,
            windowing,
        }
    }

    fn index(&self, at_ns: u64) -> u64 {
        at_ns / self.windowing.bucket_ns.max(1)
    }

    /// The group for `key`, or `other` once the cap is reached and no group
    /// can make room.
    fn group(&mut self, key: GroupKey, at_ns: u64) -> &mut Group {
        if !self.groups.contains_key(&key) && self.groups.len() >= self.max_groups {
            // The least recently active group with nothing alive but
            // TIME_WAIT sockets (which no process holds: what is left of
            // a program that came and went).
            let idle = self
                .groups
                .iter()
                .filter(|(_, g)| g.now.total() == g.now.time_wait_followed)
                .min_by_key(|(_, g)| g.last_active_ns)
                .map(|(k, _)| *k);
            match idle {
                Some(k) if self.windowing != Windowing::WHOLE_RUN => {
                    self.groups.remove(&k);
                    self.retired += 1;
                }
                _ => {
                    self.folded += 1;
                    self.other.last_active_ns = at_ns;
                    return &mut self.other;
                }
            }
        }
        let observed = self.observed;
        let g = self.groups.entry(key).or_insert_with(|| Group {
            born_after_first_look: observed,
            ..Group::default()
        });
        g.last_active_ns = g.last_active_ns.max(at_ns);
        g
    }

    /// A connection's opening, counted when its owner is known.
    pub fn on_opened(&mut self, id: &ConnId, at_ns: u64) {
        let index = self.index(at_ns);
        let g = self.group(GroupKey::of(id), at_ns);
        let b = g.bucket_at(index);
        b.stats.opened += 1;
        b.first_open_ns = Some(b.first_open_ns.map_or(at_ns, |t| t.min(at_ns)));
        if let Some(o) = &id.owner {
            g.procs.add_owner(o, 1);
        }
        if id.role == Role::Server {
            g.peers.add(id.raddr);
        }
    }

    pub fn on_record(&mut self, r: &ConnRecord) {
        if r.open_state.is_some() {
            // Still lingering at exit: part of the current picture, not a close.
            return;
        }
        let index = self.index(r.end_ns);
        let g = self.group(GroupKey::of(&r.id()), r.end_ns);
        g.bucket(index).on_record(r);
        if let Some(o) = &r.owner {
            // Opened ones were counted at their opening.
            g.procs.add_owner(o, u64::from(!r.opened_seen));
        }
        if r.role == Role::Server {
            g.peers.add(r.raddr);
        }
    }

    /// The tracker follows one more TIME_WAIT socket.
    pub fn on_timewait_start(&mut self, id: &ConnId, at_ns: u64) {
        self.group(GroupKey::of(id), at_ns).now.time_wait_followed += 1;
    }

    pub fn on_timewait_end(&mut self, end: &TimewaitEnd, at_ns: u64) {
        let index = self.index(at_ns);
        // A group that made room for others is not brought back by the
        // end of its last TIME_WAIT.
        let g = match self.groups.get_mut(&GroupKey::of(&end.id)) {
            Some(g) => g,
            None => &mut self.other,
        };
        g.bucket(index).time_wait.record(end.duration_ns);
        g.now.time_wait_followed = g.now.time_wait_followed.saturating_sub(1);
    }

    /// Replaces the picture of what is alive now: `live` are the sockets
    /// alive but the followed TIME_WAIT ones, which are counted as they
    /// come and go.
    pub fn observe(&mut self, live: impl IntoIterator<Item = LiveSocket>, now_ns: u64) {
        for g in self.groups.values_mut().chain([&mut self.other]) {
            g.now = Now {
                time_wait_followed: g.now.time_wait_followed,
                ..Now::default()
            };
        }
        for s in live {
            let started_ns = self.started_ns;
            let key = GroupKey::of(&s.id);
            let g = self.group(key, now_ns);
            if key.role == Role::Server {
                g.peers.add(s.id.raddr);
            }
            let now = &mut g.now;
            now.by_state[s.state as usize] += 1;
            let since = s.since_ns.unwrap_or(started_ns);
            let mut pid = PidNow::default();
            match s.state {
                TcpState::Established => {
                    pid.established = 1;
                    let io = s.io.unwrap_or_default();
                    let last = [io.send_ns, io.recv_ns, Some(since)]
                        .into_iter()
                        .flatten()
                        .max()
                        .unwrap_or(since);
                    let silent = now_ns.saturating_sub(last);
                    now.idle_time.record(silent);
                    // A server that answered and waits for the next request
                    // also sent last: for it that is idleness, not waiting.
                    let unanswered = key.role != Role::Server
                        && io
                            .send_ns
                            .is_some_and(|send| send > io.recv_ns.unwrap_or(0));
                    if unanswered && silent >= UNANSWERED_AFTER_NS {
                        now.awaiting += 1;
                        pid.awaiting = 1;
                        now.oldest_awaiting_ns = now.oldest_awaiting_ns.max(silent);
                        if let Some(n) = io.net {
                            now.awaiting_with_net += 1;
                            now.awaiting_unacked += u64::from(n.unacked > 0);
                            now.awaiting_retrans += u64::from(n.retrans);
                            if n.rtt_us > 0 {
                                now.awaiting_rtt.record(u64::from(n.rtt_us) * 1_000);
                            }
                        }
                    } else if !unanswered && silent >= IDLE_AFTER_NS {
                        now.idle += 1;
                        pid.idle = 1;
                    }
                }
                TcpState::CloseWait => {
                    pid.close_wait = 1;
                    now.oldest_close_wait_ns =
                        now.oldest_close_wait_ns.max(now_ns.saturating_sub(since));
                    if now.close_wait_sample.len() < CLOSE_WAIT_SAMPLE {
                        now.close_wait_sample.push((s.id.netns, s.cookie));
                    }
                }
                _ => {}
            }
            if let Some(owner) = s.id.owner.filter(|_| s.owner_known)
                && let Some(p) = now.pid(owner.pid)
            {
                p.established += pid.established;
                p.close_wait += pid.close_wait;
                p.awaiting += pid.awaiting;
                p.idle += pid.idle;
            }
            if let Some(owner) = s.id.owner.filter(|_| s.owner_known) {
                g.procs.add_owner(&owner, 0);
            }
        }
        let keep = self.windowing.keep_ns;
        for g in self.groups.values_mut() {
            if g.established.is_empty() {
                g.first_look_ns = now_ns;
            }
            g.now.at_ns = now_ns;
            let established = g.now.count(TcpState::Established);
            if g.now.total() > 0 {
                g.last_active_ns = now_ns;
            }
            g.established.push_back((now_ns, established));
            while g
                .established
                .front()
                .is_some_and(|&(at, _)| now_ns.saturating_sub(at) > keep)
                && g.established.len() > 1
            {
                g.established.pop_front();
            }
            for (pid, _) in &g.now.pids {
                g.procs.add(*pid, 0);
            }
        }
        self.other.now.at_ns = now_ns;
        self.observed = true;
    }

    /// Forgets buckets older than the windowing keeps, and groups with
    /// nothing left in them and nothing alive (processes that exited).
    pub fn expire(&mut self, now_ns: u64) {
        let keep = self.windowing.keep_ns;
        if keep == u64::MAX {
            return;
        }
        let oldest = self.index(now_ns.saturating_sub(keep));
        for g in self.groups.values_mut().chain([&mut self.other]) {
            while g.buckets.front().is_some_and(|b| b.index < oldest) {
                g.buckets.pop_front();
            }
        }
        let before = self.groups.len();
        self.groups.retain(|_, g| {
            !g.buckets.is_empty()
                || g.now.total() > 0
                || now_ns.saturating_sub(g.last_active_ns) <= keep
        });
        self.retired += (before - self.groups.len()) as u64;
    }

    /// What a group saw in the window of `span_ns` up to `now_ns`.
    pub fn window(&self, group: &Group, span_ns: u64, now_ns: u64) -> Stats {
        group.stats_from(self.index(now_ns.saturating_sub(span_ns)))
    }

    /// What a group saw from `from_ns` to `to_ns` (boot ns), to the
    /// precision of its buckets: those that start in the span.
    pub fn between(&self, group: &Group, from_ns: u64, to_ns: u64) -> Stats {
        let bucket = self.windowing.bucket_ns.max(1);
        group.stats_between(from_ns.div_ceil(bucket), to_ns.div_ceil(bucket))
    }

    /// Adds a stored minute of a group (the daemon's history): its counts,
    /// its processes and client addresses, and, when `now` is given, the
    /// sockets alive at its end as the group's picture of now.
    pub fn restore(
        &mut self,
        key: GroupKey,
        stats: &Stats,
        now: Option<&Now>,
        procs: (&[(u32, u64)], u64),
        peers: &Peers,
    ) {
        let g = if key.is_other() {
            self.folded += stats.opened + stats.closed;
            &mut self.other
        } else {
            self.group(key, 0)
        };
        g.bucket(0).merge(stats);
        if let Some(now) = now {
            g.now = now.clone();
        }
        g.procs.restore(procs.0, procs.1);
        g.peers.merge(peers);
    }

    /// How long the window of `span_ns` up to `now_ns` really covers, in
    /// seconds: no more than the run so far.
    pub fn span_s(&self, span_ns: u64, now_ns: u64) -> f64 {
        span_ns.min(now_ns.saturating_sub(self.started_ns)) as f64 / 1e9
    }

    /// The stretch a window of `span_ns` up to `now_ns` really covers, in
    /// seconds: windows are counted in whole buckets, from the start of
    /// the one `span_ns` ago (never before the run began). A rate over the
    /// window divides by this.
    pub fn covered_s(&self, span_ns: u64, now_ns: u64) -> f64 {
        let first = self
            .index(now_ns.saturating_sub(span_ns))
            .saturating_mul(self.windowing.bucket_ns);
        now_ns.saturating_sub(first.max(self.started_ns)) as f64 / 1e9
    }

    /// How long `group` has been opening connections within the window of
    /// `span_ns` up to `now_ns`, in seconds: from its first opening there
    /// (a bucket restored from history: from the bucket's start). Rates
    /// divide by it, so a burst after a quiet hour is not diluted by the
    /// quiet part of the window, nor by the part of a bucket before it.
    pub fn opening_span_s(&self, group: &Group, span_ns: u64, now_ns: u64) -> f64 {
        let window_start = now_ns.saturating_sub(span_ns).max(self.started_ns);
        let from = self.index(now_ns.saturating_sub(span_ns));
        let first = group
            .buckets
            .iter()
            .find(|b| b.index >= from && b.stats.opened > 0)
            .map_or(window_start, |b| {
                // A bucket restored from history has no first opening:
                // its start stands for it.
                let first_open = b
                    .first_open_ns
                    .unwrap_or_else(|| b.index.saturating_mul(self.windowing.bucket_ns));
                first_open.max(window_start)
            });
        now_ns.saturating_sub(first) as f64 / 1e9
    }

    pub fn groups(&self) -> impl Iterator<Item = (&GroupKey, &Group)> {
        self.groups.iter()
    }

    pub fn group_of(&self, key: &GroupKey) -> Option<&Group> {
        self.groups.get(key)
    }

    /// Everything beyond the group cap, merged.
    pub fn other(&self) -> &Group {
        &self.other
    }

    pub fn folded(&self) -> u64 {
        self.folded
    }

    /// Groups forgotten: over, or making room for new ones.
    #[cfg(test)]
    pub fn retired(&self) -> u64 {
        self.retired
    }
}

#[cfg(test)]
mod tests;
