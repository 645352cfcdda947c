//! Statistics per group (one program talking to one endpoint in one role), in time buckets so findings can judge a recent window, with the sockets alive now and a cap on groups.
//!
//! A group is keyed by the process *name*, not its pid: a shell loop of
//! `curl` is 200 pids with one connection each, and a prefork server is
//! several workers doing the same job; people read both as one row
//! (`curl ×200`). The pids are kept inside the group, to name the one a
//! finding is about. A server's connections group by its listening port,
//! whatever client they come from.

use std::{collections::VecDeque, net::IpAddr};

use foldhash::{HashMap, HashMapExt as _};
use tracer_common::TcpState;

use crate::{
    model::dist::Dist,
    model::event::Comm,
    model::tracker::{ClosedBy, ConnId, ConnRecord, ConnectFailure, Role, TimewaitEnd},
};

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

/// One group: processes of one name talking to one endpoint in one role.
/// Ordered only so that ties in a ranking come out the same every run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct GroupKey {
    /// The process name; `None` when no process was seen with the sockets.
    pub comm: Option<Comm>,
    pub role: Role,
    /// The remote address of a client's connections; `None` for a server,
    /// whose clients come from anywhere.
    pub peer: Option<IpAddr>,
    /// The service port: the remote port of a client, the local (listening)
    /// port of a server.
    pub port: u16,
}

impl GroupKey {
    /// The key standing for every group folded beyond the cap.
    pub const OTHER: Self = Self {
        comm: None,
        role: Role::Unknown,
        peer: None,
        port: 0,
    };

    pub fn of(id: &ConnId) -> Self {
        let server = id.role == Role::Server;
        Self {
            comm: id.owner.map(|o| o.comm),
            role: id.role,
            peer: (!server).then(|| id.raddr.to_canonical()),
            port: if server { id.lport } else { id.rport },
        }
    }

    /// The one way an endpoint is written: `10.0.0.2:8080` (`[fd00::2]:443`)
    /// for the server a client talks to, `:8080` for a server's own
    /// listening port.
    pub fn endpoint(&self) -> String {
        match self.peer {
            Some(IpAddr::V4(a)) => format!("{a}:{}", self.port),
            Some(IpAddr::V6(a)) => format!("[{a}]:{}", self.port),
            None => format!(":{}", self.port),
        }
    }

    /// The process name, or `-` when no process was seen.
    pub fn comm_name(&self) -> String {
        self.comm.map_or_else(|| "-".into(), |c| c.to_string())
    }

    pub fn is_other(&self) -> bool {
        *self == Self::OTHER
    }
}

/// The processes seen in a group, and how many connections each had.
#[derive(Debug, Clone, Default)]
pub struct Procs {
    /// (pid, connections), the first [`PIDS_KEPT`] pids seen.
    kept: Vec<(u32, u64)>,
    /// Every pid seen, up to [`PIDS_COUNTED`]; beyond, the count is a floor.
    counted: foldhash::HashSet<u32>,
    /// A count known without the pids behind it (a stored minute's): the
    /// count is at least this.
    at_least: u64,
    /// The cgroup of each pid kept, where an owner said it: which
    /// container (and pod) a pid is in.
    cgroups: Vec<(u32, u64)>,
}

/// Pids counted exactly per group; a count at this cap means "at least".
pub const PIDS_COUNTED: usize = 4096;

impl Procs {
    pub fn add(&mut self, pid: u32, conns: u64) {
        if self.counted.len() < PIDS_COUNTED {
            self.counted.insert(pid);
        }
        if let Some(entry) = self.kept.iter_mut().find(|(p, _)| *p == pid) {
            entry.1 += conns;
        } else if self.kept.len() < PIDS_KEPT {
            self.kept.push((pid, conns));
        }
    }

    /// How many processes (at least, once [`PIDS_COUNTED`]).
    pub fn count(&self) -> u64 {
        (self.counted.len() as u64).max(self.at_least)
    }

    /// Counts `conns` connections of `owner`, remembering its cgroup.
    pub fn add_owner(&mut self, owner: &crate::model::event::Owner, conns: u64) {
        self.add(owner.pid, conns);
        if owner.cgroup_id != 0
            && self.cgroups.len() < PIDS_KEPT
            && !self.cgroups.iter().any(|(p, _)| *p == owner.pid)
        {
            self.cgroups.push((owner.pid, owner.cgroup_id));
        }
    }

    /// The cgroup of a pid kept, if an owner said it.
    pub fn cgroup_of(&self, pid: u32) -> Option<u64> {
        self.cgroups
            .iter()
            .find_map(|&(p, cgroup)| (p == pid).then_some(cgroup))
    }

    /// (pid, connections) of the pids kept, in the order first seen.
    pub fn kept(&self) -> &[(u32, u64)] {
        &self.kept
    }

    /// Adds what a stored minute kept: its pids and its count of processes.
    pub fn restore(&mut self, kept: &[(u32, u64)], count: u64) {
        for &(pid, conns) in kept {
            self.add(pid, conns);
        }
        self.at_least = self.at_least.max(count);
    }

    /// The pid with the most connections (the lowest on a tie).
    pub fn main(&self) -> Option<u32> {
        self.kept
            .iter()
            .max_by_key(|&&(pid, n)| (n, std::cmp::Reverse(pid)))
            .map(|&(pid, _)| pid)
    }

    /// The pids kept, busiest first.
    pub fn pids(&self) -> Vec<u32> {
        let mut kept = self.kept.clone();
        kept.sort_by_key(|&(pid, n)| (std::cmp::Reverse(n), pid));
        kept.into_iter().map(|(pid, _)| pid).collect()
    }
}

/// The client addresses of a server group.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Peers {
    pub kept: Vec<IpAddr>,
    /// More addresses than [`PEERS_KEPT`] were seen.
    pub more: bool,
}

impl Peers {
    fn add(&mut self, addr: IpAddr) {
        let addr = addr.to_canonical();
        if self.kept.contains(&addr) {
            return;
        }
        if self.kept.len() < PEERS_KEPT {
            self.kept.push(addr);
        } else {
            self.more = true;
        }
    }

    /// The only client address, if there is exactly one.
    pub fn single(&self) -> Option<IpAddr> {
        (self.kept.len() == 1 && !self.more).then(|| self.kept[0])
    }

    fn merge(&mut self, other: &Peers) {
        for &addr in &other.kept {
            self.add(addr);
        }
        self.more |= other.more;
    }
}

/// What a group saw happen over some time: one bucket, or a window of them
/// merged.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub opened: u64,
    pub closed: u64,
    /// Closed connections by [`ClosedBy`] (indexed by its discriminant).
    closed_by: [u64; ClosedBy::COUNT],
    /// Closed connections that went on to TIME_WAIT here.
    pub time_wait_closes: u64,
    pub incomplete: u64,
    /// Closes whose first closing act carried the TCP socket's figures.
    pub with_figures: u64,
    /// Of those, the ones whose first closing act came within
    /// [`PROMPT_MS`] of the last data, by who closed first.
    prompt: [u64; ClosedBy::COUNT],
    /// Of those, the ones that carried one request, answered, and ended
    /// right after it: a connection used for a single exchange.
    pub one_exchange: u64,
    /// Closes with a known lifetime (the opening was seen).
    pub timed: u64,
    /// Of those with figures and a known lifetime, the ones closed while in
    /// use: data moved in the last half of their life.
    pub busy: u64,
    /// Lifetimes of connections whose opening was seen.
    pub lifetime: Dist,
    pub fin_wait2: Dist,
    pub close_wait: Dist,
    pub last_ack: Dist,
    pub time_wait: Dist,
    /// Connect attempts that never completed their handshake, by
    /// [`ConnectFailure`] (indexed by its discriminant). Not in `closed`:
    /// they never were connections.
    #[serde(default)]
    connect_failed: [u64; ConnectFailure::COUNT],
    /// SYN retransmissions of those failed attempts.
    #[serde(default)]
    pub failed_syn_retrans: u64,
    /// Closes that carried the socket's figures at its end.
    #[serde(default)]
    pub with_net: u64,
    /// Of those, the ones that retransmitted at least one segment.
    #[serde(default)]
    pub retrans_conns: u64,
    /// Segments retransmitted, in all (SYNs included).
    #[serde(default)]
    pub retrans_segs: u64,
    /// Bytes sent and acknowledged by the peer, and bytes received, in all.
    #[serde(default)]
    pub bytes_acked: u64,
    #[serde(default)]
    pub bytes_received: u64,
    /// Smoothed RTT of each connection at its end (those with a sample).
    #[serde(default)]
    pub rtt: Dist,
}

impl Stats {
    /// Failed connect attempts for `reason`.
    pub fn connect_failed(&self, reason: ConnectFailure) -> u64 {
        self.connect_failed[reason as usize]
    }

    /// Failed connect attempts, whatever the reason.
    pub fn connects_failed(&self) -> u64 {
        self.connect_failed.iter().sum()
    }

    /// Share of closes with figures that retransmitted, 0 when none.
    pub fn retrans_share(&self) -> f64 {
        ratio(self.retrans_conns, self.with_net)
    }

    pub fn closed_by(&self, by: ClosedBy) -> u64 {
        self.closed_by[by as usize]
    }

    /// Share of closed connections closed `by`, 0 when none closed.
    pub fn share(&self, by: &[ClosedBy]) -> f64 {
        ratio(by.iter().map(|b| self.closed_by(*b)).sum(), self.closed)
    }

    /// Prompt closes (see [`Self::prompt`]) whose first act was `by`.
    pub fn prompt_by(&self, by: ClosedBy) -> u64 {
        self.prompt[by as usize]
    }

    pub fn prompt(&self) -> u64 {
        self.prompt.iter().sum()
    }

    /// Nothing was counted.
    pub fn is_empty(&self) -> bool {
        *self == Stats::default()
    }

    pub fn merge(&mut self, o: &Stats) {
        self.opened += o.opened;
        self.closed += o.closed;
        for (a, b) in self.closed_by.iter_mut().zip(o.closed_by) {
            *a += b;
        }
        for (a, b) in self.prompt.iter_mut().zip(o.prompt) {
            *a += b;
        }
        self.time_wait_closes += o.time_wait_closes;
        self.incomplete += o.incomplete;
        self.with_figures += o.with_figures;
        self.one_exchange += o.one_exchange;
        self.timed += o.timed;
        self.busy += o.busy;
        self.lifetime.merge(&o.lifetime);
        self.fin_wait2.merge(&o.fin_wait2);
        self.close_wait.merge(&o.close_wait);
        self.last_ack.merge(&o.last_ack);
        self.time_wait.merge(&o.time_wait);
        for (a, b) in self.connect_failed.iter_mut().zip(o.connect_failed) {
            *a += b;
        }
        self.failed_syn_retrans += o.failed_syn_retrans;
        self.with_net += o.with_net;
        self.retrans_conns += o.retrans_conns;
        self.retrans_segs += o.retrans_segs;
        self.bytes_acked += o.bytes_acked;
        self.bytes_received += o.bytes_received;
        self.rtt.merge(&o.rtt);
    }

    fn on_record(&mut self, r: &ConnRecord) {
        if let Some(reason) = r.connect_failed {
            self.connect_failed[reason as usize] += 1;
            self.failed_syn_retrans += r.net.map_or(0, |n| u64::from(n.retrans));
            return;
        }
        if let Some(n) = r.net {
            self.with_net += 1;
            if n.retrans > 0 {
                self.retrans_conns += 1;
            }
            self.retrans_segs += u64::from(n.retrans);
            self.bytes_acked += n.bytes_acked;
            self.bytes_received += n.bytes_received;
            if n.srtt_us > 0 {
                self.rtt.record(u64::from(n.srtt_us) * 1_000);
            }
        }
        self.closed += 1;
        self.closed_by[r.closed_by as usize] += 1;
        if r.time_wait {
            self.time_wait_closes += 1;
        }
        if !r.complete {
            self.incomplete += 1;
        }
        if r.opened_seen {
            self.timed += 1;
            self.lifetime.record(r.lifetime_ns);
        }
        for (state, dist) in [
            (TcpState::FinWait2, &mut self.fin_wait2),
            (TcpState::CloseWait, &mut self.close_wait),
            (TcpState::LastAck, &mut self.last_ack),
        ] {
            if let Some(ns) = r.states.get(state) {
                dist.record(ns);
            }
        }
        if let Some(t) = r.tcp {
            self.with_figures += 1;
            let quiet_ms = t.send_age_ms.min(t.recv_age_ms);
            let prompt = quiet_ms <= PROMPT_MS;
            if prompt {
                self.prompt[r.closed_by as usize] += 1;
            }
            // The request goes one way, the answer the other; the answer
            // came last.
            let (requests, answers, answer_age, request_age) = match r.role {
                Role::Server => (t.segs_in, t.segs_out, t.send_age_ms, t.recv_age_ms),
                _ => (t.segs_out, t.segs_in, t.recv_age_ms, t.send_age_ms),
            };
            if prompt
                && r.role != Role::Unknown
                && (1..=ONE_REQUEST_SEGS).contains(&requests)
                && answers > 0
                && answer_age <= request_age
            {
                self.one_exchange += 1;
            }
            if r.opened_seen && u64::from(quiet_ms) * 2_000_000 < r.lifetime_ns {
                self.busy += 1;
            }
        }
    }
}

/// `part / whole`, 0 when `whole` is 0.
pub fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The sockets of one process of a group alive at the last observation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PidNow {
    pub established: u64,
    pub close_wait: u64,
    pub awaiting: u64,
    pub idle: u64,
}

/// Sockets of a group alive at the last observation.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Now {
    /// When it was taken (boot-clock ns); 0 before the first.
    pub at_ns: u64,
    /// Count per state, indexed by the kernel's state number.
    pub by_state: [u64; 16],
    /// ESTABLISHED and silent for [`IDLE_AFTER_NS`] or more, last activity
    /// not an unanswered send.
    pub idle: u64,
    /// ESTABLISHED whose last activity is a send with no receive since,
    /// [`UNANSWERED_AFTER_NS`] or more ago.
    pub awaiting: u64,
    pub oldest_awaiting_ns: u64,
    /// Of the awaiting sockets, those whose network figures are known;
    /// among them the ones whose request the peer's TCP has not even
    /// acknowledged, their retransmissions, and their RTTs.
    #[serde(default)]
    pub awaiting_with_net: u64,
    #[serde(default)]
    pub awaiting_unacked: u64,
    #[serde(default)]
    pub awaiting_retrans: u64,
    #[serde(default)]
    pub awaiting_rtt: Dist,
    /// How long each ESTABLISHED socket has been silent (since its last
    /// send or receive, or since it was first seen).
    pub idle_time: Dist,
    pub oldest_close_wait_ns: u64,
    /// (netns, cookie) of some CLOSE_WAIT sockets, to find their fds.
    pub close_wait_sample: Vec<(u32, u64)>,
    /// TIME_WAIT sockets the tracker follows, counted as they start and
    /// end rather than walked at each observation: there can be hundreds
    /// of thousands, and each changes once.
    pub time_wait_followed: u64,
    /// Per process (the first [`PIDS_KEPT`]).
    pub pids: Vec<(u32, PidNow)>,
}

impl Now {
    pub fn count(&self, state: TcpState) -> u64 {
        let followed = if state == TcpState::TimeWait {
            self.time_wait_followed
        } else {
            0
        };
        self.by_state[state as usize] + followed
    }

    /// Every socket alive.
    pub fn total(&self) -> u64 {
        self.by_state.iter().sum::<u64>() + self.time_wait_followed
    }

    /// The process with the most of what `of` counts.
    pub fn main_pid(&self, of: impl Fn(&PidNow) -> u64) -> Option<u32> {
        self.pids
            .iter()
            .filter(|(_, p)| of(p) > 0)
            .max_by_key(|(pid, p)| (of(p), std::cmp::Reverse(*pid)))
            .map(|(pid, _)| *pid)
    }

    fn pid(&mut self, pid: u32) -> Option<&mut PidNow> {
        if let Some(i) = self.pids.iter().position(|(p, _)| *p == pid) {
            return Some(&mut self.pids[i].1);
        }
        if self.pids.len() >= PIDS_KEPT {
            return None;
        }
        self.pids.push((pid, PidNow::default()));
        self.pids.last_mut().map(|(_, p)| p)
    }
}

/// One time bucket of a group.
#[derive(Debug, Clone)]
struct Bucket {
    index: u64,
    stats: Stats,
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
        // Events arrive nearly in time order: look from the newest.
        match self.buckets.iter().rposition(|b| b.index <= index) {
            Some(i) if self.buckets[i].index == index => &mut self.buckets[i].stats,
            Some(i) => {
                self.buckets.insert(
                    i + 1,
                    Bucket {
                        index,
                        stats: Stats::default(),
                    },
                );
                &mut self.buckets[i + 1].stats
            }
            None => {
                self.buckets.push_front(Bucket {
                    index,
                    stats: Stats::default(),
                });
                &mut self.buckets[0].stats
            }
        }
    }
}

/// When a socket last moved data (boot-clock ns), as the kernel tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct LastIo {
    /// The last data sent; `None` if none was.
    pub send_ns: Option<u64>,
    /// The last data received; `None` if none was.
    pub recv_ns: Option<u64>,
    /// What the socket says of the network now; `None` from a recording
    /// older than these figures.
    #[serde(default)]
    pub net: Option<LiveNet>,
}

/// An open socket's network figures, from TCP_INFO at a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct LiveNet {
    /// Segments sent that the peer has not acknowledged yet.
    pub unacked: u32,
    /// Segments retransmitted over the socket's life.
    pub retrans: u32,
    /// Smoothed RTT, µs.
    pub rtt_us: u32,
}

/// A socket alive now, with what the kernel knows of its last I/O.
#[derive(Debug, Clone, Copy)]
pub struct LiveSocket {
    pub id: ConnId,
    /// False while the owner is only inherited from the listener: the
    /// socket is counted in its group, but names no process.
    pub owner_known: bool,
    pub cookie: u64,
    pub state: TcpState,
    pub since_ns: Option<u64>,
    pub io: Option<LastIo>,
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
        g.bucket(index).opened += 1;
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
    /// `span_ns` up to `now_ns`, in seconds: from the start of its first
    /// bucket there with an opening. Rates divide by it, so a burst after
    /// a quiet hour is not diluted by the quiet part of the window.
    pub fn opening_span_s(&self, group: &Group, span_ns: u64, now_ns: u64) -> f64 {
        let window_start = now_ns.saturating_sub(span_ns).max(self.started_ns);
        let from = self.index(now_ns.saturating_sub(span_ns));
        let first = group
            .buckets
            .iter()
            .find(|b| b.index >= from && b.stats.opened > 0)
            .map_or(window_start, |b| {
                b.index
                    .saturating_mul(self.windowing.bucket_ns)
                    .max(window_start)
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
mod tests {
    use std::net::Ipv4Addr;

    use tracer_common::TcpFigures;

    use super::*;
    use crate::testutil::{MS, figures, id, id_named, live, record};

    fn whole() -> Aggregator {
        Aggregator::new(10, 0, Windowing::WHOLE_RUN)
    }

    #[test]
    fn closes_are_counted_by_side_with_percentiles() {
        let mut a = whole();
        let client = id(1, Role::Client, 8080);
        for i in 0..100 {
            a.on_opened(&client, 0);
            a.on_record(&record(
                client,
                ClosedBy::Local,
                1000 + i,
                Some(2000 + 10 * i),
            ));
        }
        a.on_record(&record(client, ClosedBy::Remote, 5, None));
        let (key, g) = a.groups().next().unwrap();
        let s = g.total();
        assert_eq!(key.endpoint(), "10.0.0.2:8080");
        assert_eq!(key.comm_name(), "app");
        assert_eq!(g.procs.main(), Some(1));
        assert_eq!(s.opened, 100);
        assert_eq!(s.closed, 101);
        assert_eq!(s.closed_by(ClosedBy::Local), 100);
        assert!((s.share(&[ClosedBy::Local]) - 100.0 / 101.0).abs() < 1e-9);
        assert_eq!(s.fin_wait2.count(), 100);
        let p50 = s.fin_wait2.quantile_ms(0.5).unwrap();
        assert!((p50 - 2495.0).abs() <= 30.0, "{p50}");
        let p99 = s.fin_wait2.quantile_ms(0.99).unwrap();
        assert!((p99 - 2980.0).abs() <= 35.0, "{p99}");
        assert_eq!(s.time_wait_closes, 100);
        assert_eq!(s.close_wait.quantile_ms(0.5), None);
    }

    #[test]
    fn servers_group_by_their_port_whatever_the_client() {
        let mut a = whole();
        for (i, rport) in [50001, 50002, 50003].into_iter().enumerate() {
            let mut s = id(2, Role::Server, rport);
            s.raddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2 + u8::try_from(i).unwrap()));
            a.on_record(&record(s, ClosedBy::Remote, 10, None));
        }
        assert_eq!(a.groups().count(), 1, "one server group for many clients");
        let (key, g) = a.groups().next().unwrap();
        assert_eq!(key.port, 8080);
        assert_eq!(key.endpoint(), ":8080");
        assert_eq!(g.total().closed, 3);
        assert_eq!(g.peers.kept.len(), 3);
        assert_eq!(g.peers.single(), None);
    }

    #[test]
    fn processes_of_one_name_fold_into_one_group() {
        let mut a = whole();
        for pid in 100..300 {
            let c = id_named(pid, "curl", Role::Client, 8080);
            a.on_opened(&c, 0);
            a.on_record(&record(c, ClosedBy::Local, 5, None));
        }
        assert_eq!(a.groups().count(), 1);
        let g = a.groups().next().unwrap().1;
        assert_eq!(g.procs.count(), 200);
        assert_eq!(g.procs.pids().len(), PIDS_KEPT);
        assert_eq!(g.total().opened, 200);
    }

    #[test]
    fn idle_groups_make_room_and_the_rest_fold_into_other() {
        let mut a = Aggregator::new(2, 0, Windowing::sliding(10_000 * MS, 60_000 * MS));
        for port in 1..=5 {
            a.on_record(&record(
                id(3, Role::Client, port),
                ClosedBy::Local,
                10,
                None,
            ));
        }
        assert_eq!(a.groups().count(), 2, "capped");
        assert_eq!(a.retired(), 3, "groups with nothing alive made room");
        assert_eq!(a.folded(), 0);
        // Groups with sockets alive keep their place: newcomers fold.
        a.observe(
            [
                live(id(3, Role::Client, 4), 1, TcpState::Established, 0, None),
                live(id(3, Role::Client, 5), 2, TcpState::Established, 0, None),
            ],
            MS,
        );
        a.on_record(&record(id(3, Role::Client, 6), ClosedBy::Local, 10, None));
        assert_eq!(a.folded(), 1);
        assert_eq!(a.other().total().closed, 1);
    }

    #[test]
    fn a_report_never_drops_groups_it_will_print() {
        let mut a = Aggregator::new(2, 0, Windowing::WHOLE_RUN);
        for port in 1..=5 {
            a.on_record(&record(
                id(3, Role::Client, port),
                ClosedBy::Local,
                10,
                None,
            ));
        }
        assert_eq!(a.groups().count(), 2);
        assert_eq!(a.folded(), 3);
        assert_eq!(a.other().total().closed, 3);
    }

    #[test]
    fn windows_hold_only_recent_buckets_and_groups_age_out() {
        let mut a = Aggregator::new(10, 0, Windowing::sliding(10_000 * MS, 60_000 * MS));
        let c = id(4, Role::Client, 80);
        for t in [1_000, 15_000, 25_000, 55_000] {
            let mut r = record(c, ClosedBy::Local, 10, None);
            r.end_ns = t * MS;
            a.on_record(&r);
        }
        let g = a.groups().next().unwrap().1;
        assert_eq!(
            a.window(g, 30_000 * MS, 56_000 * MS).closed,
            2,
            "buckets 2..=5"
        );
        assert_eq!(a.window(g, 60_000 * MS, 56_000 * MS).closed, 4);
        assert!((a.span_s(60_000 * MS, 56_000 * MS) - 56.0).abs() < 1e-9);
        a.expire(80_000 * MS);
        let g = a.groups().next().unwrap().1;
        assert_eq!(g.total().closed, 2, "buckets older than a minute dropped");
        a.expire(200_000 * MS);
        assert_eq!(a.groups().count(), 0, "nothing left, nothing alive: over");
        assert_eq!(a.retired(), 1);
    }

    #[test]
    fn closes_are_classified_by_the_tcp_figures() {
        let mut a = whole();
        let c = id(5, Role::Client, 80);
        let mut add = |closed_by, lifetime_ms, t: TcpFigures| {
            let mut r = record(c, closed_by, lifetime_ms, None);
            r.tcp = Some(t);
            a.on_record(&r);
        };
        // One request, answered, closed right after by the client / server.
        add(ClosedBy::Local, 2, figures(0, 0, 1, 1));
        add(ClosedBy::Remote, 2, figures(1, 0, 1, 3));
        // Idle a second, then closed by the server's idle timeout.
        add(ClosedBy::Remote, 1_002, figures(1_000, 1_000, 1, 1));
        // Given up on: the request was never answered.
        add(ClosedBy::Local, 1_000, figures(1_000, 1_000, 1, 0));
        // A pooled connection cut mid-request at its deadline.
        add(ClosedBy::Local, 3_000, figures(76, 76, 30, 29));
        let s = a.groups().next().unwrap().1.total();
        assert_eq!(s.with_figures, 5);
        assert_eq!(s.prompt(), 3);
        assert_eq!(s.prompt_by(ClosedBy::Local), 2);
        assert_eq!(s.one_exchange, 2);
        assert_eq!(s.busy, 3, "{s:?}");
    }

    #[test]
    fn lifetimes_of_sockets_opened_before_the_tracer_are_not_recorded() {
        let mut a = whole();
        let mut r = record(id(6, Role::Client, 80), ClosedBy::Local, 9_210, None);
        r.opened_seen = false;
        a.on_record(&r);
        let s = a.groups().next().unwrap().1.total();
        assert_eq!(s.closed, 1);
        assert_eq!(s.timed, 0);
        assert_eq!(s.lifetime.count(), 0);
    }

    #[test]
    fn live_sockets_make_the_current_picture() {
        let mut a = whole();
        let c = id(4, Role::Client, 9000);
        let now = 100_000;
        a.observe(
            [
                // Talked 10 s ago, answered: idle.
                live(
                    c,
                    1,
                    TcpState::Established,
                    0,
                    Some((Some(now - 10_000), Some(now - 9_999))),
                ),
                // Sent 5 s ago, no answer: awaiting.
                live(
                    c,
                    2,
                    TcpState::Established,
                    0,
                    Some((Some(now - 5_000), Some(now - 60_000))),
                ),
                // Sent just now: neither.
                live(c, 3, TcpState::Established, 0, Some((Some(now - 10), None))),
                live(c, 4, TcpState::CloseWait, now - 30_000, None),
                live(c, 5, TcpState::TimeWait, now - 1_000, None),
            ],
            now * MS,
        );
        let g = a.groups().next().unwrap().1;
        assert_eq!(g.now.count(TcpState::Established), 3);
        assert_eq!(g.now.idle, 1);
        assert_eq!(g.now.awaiting, 1);
        assert_eq!(g.now.oldest_awaiting_ns, 5_000 * MS);
        assert_eq!(g.now.idle_time.count(), 3);
        assert!((g.now.idle_time.quantile_ms(0.5).unwrap() - 5_000.0).abs() < 50.0);
        assert_eq!(g.now.oldest_close_wait_ns, 30_000 * MS);
        assert_eq!(g.now.close_wait_sample, vec![(1, 4)]);
        assert_eq!(g.now.main_pid(|p| p.close_wait), Some(4));
        assert_eq!(g.lingering(), 2);
        assert_eq!(g.established_growth(0), (3, 3));
        // Observed again with more open: growth is measured from the first look.
        a.observe(
            (10..20).map(|i| live(c, i, TcpState::Established, now, None)),
            (now + 1) * MS,
        );
        let g = a.groups().next().unwrap().1;
        assert_eq!(g.now.count(TcpState::Established), 10);
        assert_eq!(g.established_growth(0), (3, 10));
        assert_eq!(
            g.established_growth((now + 1) * MS),
            (10, 10),
            "window from the last look"
        );
        assert_eq!(g.now.count(TcpState::CloseWait), 0, "replaced, not added");
    }

    #[test]
    fn a_group_born_after_the_first_look_started_from_zero() {
        let mut a = whole();
        a.observe([], 0);
        let c = id(5, Role::Client, 7000);
        a.on_opened(&c, 0);
        a.observe([live(c, 1, TcpState::Established, 0, None)], MS);
        assert_eq!(a.groups().next().unwrap().1.established_growth(0), (0, 1));
    }

    #[test]
    fn records_still_lingering_at_exit_are_not_closes() {
        let mut a = whole();
        let mut r = record(id(6, Role::Server, 1), ClosedBy::Remote, 10, None);
        r.open_state = Some(TcpState::CloseWait);
        a.on_record(&r);
        assert_eq!(a.groups().count(), 0);
    }

    #[test]
    fn followed_timewait_sockets_are_counted_as_they_come_and_go() {
        let mut a = whole();
        let s = id(8, Role::Client, 443);
        for _ in 0..3 {
            a.on_timewait_start(&s, 0);
        }
        // An observation replaces the rest of the picture, not these.
        a.observe([live(s, 9, TcpState::TimeWait, 0, None)], MS);
        let g = a.groups().next().unwrap().1;
        assert_eq!(g.now.count(TcpState::TimeWait), 4);
        assert_eq!(g.lingering(), 4);
        a.on_timewait_end(
            &TimewaitEnd {
                id: s,
                duration_ns: 60_000 * MS,
            },
            MS,
        );
        a.observe([], 2 * MS);
        let g = a.groups().next().unwrap().1;
        assert_eq!(g.now.count(TcpState::TimeWait), 2);
        let tw = g.total().time_wait;
        assert_eq!(tw.count(), 1);
        assert!((tw.quantile_ms(0.5).unwrap() - 60_000.0).abs() < 600.0);
    }
}
