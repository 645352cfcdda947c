//! Per-socket lifecycle state machine: turns ring events, timewait observations and the start-up snapshot into one record per connection, saying who closed first and how long each state lasted.

use std::{collections::VecDeque, net::IpAddr, num::NonZeroUsize};

use foldhash::{HashMap, HashMapExt as _, HashSet};

use tracer_common::{TcpFigures, TcpState};

use crate::{
    bpf::decode::{Comm, Family, Kind, Record},
    host::sock_diag::{Sightings, TimewaitSighting, Wanted},
};

/// A timewait socket's timer restarts at this when FIN_WAIT2 becomes
/// TIME_WAIT (`TCP_TIMEWAIT_LEN`), which dates the switch.
pub const TIMEWAIT_LEN_NS: u64 = 60_000_000_000;

/// How long a closed socket waits for the RST or destroy record that the
/// same kernel path writes right after the CLOSE (an abortive close traces
/// CLOSE first, then the RST); the destroy can come much later if the
/// application keeps the file open.
pub const CLOSE_GRACE_NS: u64 = 100_000_000;

/// Timer rounding tolerated before a vanished timewait socket counts as
/// killed early rather than expired.
const EXPIRY_SLACK_NS: u64 = 20_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// This host sent the SYN.
    Client,
    /// This host accepted the connection.
    Server,
    /// Seen mid-life with nothing telling which.
    Unknown,
}

impl Role {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
            Self::Unknown => "unknown",
        }
    }
}

/// The first closing act of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClosedBy {
    /// This host sent the first FIN (ESTABLISHED -> FIN_WAIT1).
    Local = 0,
    /// The peer's FIN came first (ESTABLISHED -> CLOSE_WAIT).
    Remote,
    /// Both FINs crossed (FIN_WAIT1 -> CLOSING).
    Simultaneous,
    /// This host reset the connection before any FIN.
    ResetLocal,
    /// The peer reset the connection before any FIN.
    ResetRemote,
    Unknown,
}

impl ClosedBy {
    /// How many there are: the discriminants are 0..COUNT.
    pub const COUNT: usize = Self::Unknown as usize + 1;

    pub const fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Remote => "remote",
            Self::Simultaneous => "simultaneous",
            Self::ResetLocal => "reset_local",
            Self::ResetRemote => "reset_remote",
            Self::Unknown => "unknown",
        }
    }
}

/// How a FIN_WAIT2 linger ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fw2End {
    /// The peer's FIN arrived: on to TIME_WAIT.
    PeerFin,
    /// `tcp_fin_timeout` expired with no FIN from the peer.
    Timeout,
    /// A RST ended it, or the timewait socket was killed early.
    Reset,
    /// Still lingering when the tracer stopped.
    Open,
}

impl Fw2End {
    pub const fn name(self) -> &'static str {
        match self {
            Self::PeerFin => "peer_fin",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::Open => "open",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnerRef {
    pub pid: u32,
    pub comm: Comm,
    /// cgroup v2 id; 0 if unknown.
    pub cgroup_id: u64,
}

impl From<crate::bpf::decode::Owner> for OwnerRef {
    fn from(o: crate::bpf::decode::Owner) -> Self {
        Self {
            pid: o.pid,
            comm: o.comm,
            cgroup_id: o.cgroup_id,
        }
    }
}

/// A connection's owner in the 32 bytes of an [`OwnerRef`]: pid 0 (no
/// process has it) stands for none, saving the option's tag in every
/// tracked socket.
#[derive(Debug, Clone, Copy)]
struct KeptOwner(OwnerRef);

impl KeptOwner {
    fn new(owner: Option<OwnerRef>) -> Self {
        Self(owner.filter(|o| o.pid != 0).unwrap_or(OwnerRef {
            pid: 0,
            comm: Comm::new([0; tracer_common::COMM_LEN]),
            cgroup_id: 0,
        }))
    }

    fn get(self) -> Option<OwnerRef> {
        (self.0.pid != 0).then_some(self.0)
    }
}

/// Who a connection belongs to and where it goes: what aggregation groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnId {
    pub netns: u32,
    pub owner: Option<OwnerRef>,
    pub role: Role,
    pub family: Family,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
}

/// A socket alive now, as the tracker knows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveConn {
    pub cookie: u64,
    pub id: ConnId,
    /// False while the owner is only the listener's (an accepted socket no
    /// process has been seen with yet): see [`Tracker::provisional`].
    pub owner_known: bool,
    /// FIN_WAIT2 for an orphan living on as a timewait socket.
    pub state: TcpState,
    /// When it entered `state`; `None` if that predates what was seen.
    pub since_ns: Option<u64>,
}

/// A TIME_WAIT socket that went away, and how long it lasted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimewaitEnd {
    pub id: ConnId,
    pub duration_ns: u64,
}

/// A TIME_WAIT socket still followed after its connection's record was
/// written, to time TIME_WAIT itself.
#[derive(Debug, Clone, Copy)]
struct Timewait {
    id: ConnId,
    since_ns: u64,
    seen_ns: u64,
    expires_ns: u64,
}

/// States in the order a lifecycle passes through them, for output.
const LIFECYCLE_ORDER: [TcpState; 8] = [
    TcpState::SynSent,
    TcpState::SynRecv,
    TcpState::Established,
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::Closing,
    TcpState::CloseWait,
    TcpState::LastAck,
];

/// Nanoseconds spent in each state of the lifecycle a connection entered
/// (one slot per [`LIFECYCLE_ORDER`] state: this is in every tracked
/// socket, so it is kept small).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateTimes {
    /// [`NOT_ENTERED`] for a state the connection never entered.
    ns: [u64; LIFECYCLE_ORDER.len()],
}

/// No real duration comes near it (585 years).
const NOT_ENTERED: u64 = u64::MAX;

/// A date not known.
const NOT_KNOWN: u64 = u64::MAX;

impl Default for StateTimes {
    fn default() -> Self {
        Self {
            ns: [NOT_ENTERED; LIFECYCLE_ORDER.len()],
        }
    }
}

/// A state's slot in [`StateTimes`]; `None` for states no full socket
/// passes through mid-lifecycle (CLOSE, LISTEN, TIME_WAIT...).
const fn slot(state: TcpState) -> Option<usize> {
    let mut i = 0;
    while i < LIFECYCLE_ORDER.len() {
        if LIFECYCLE_ORDER[i] as u8 == state as u8 {
            return Some(i);
        }
        i += 1;
    }
    None
}

impl StateTimes {
    fn enter(&mut self, state: TcpState) {
        if let Some(i) = slot(state)
            && self.ns[i] == NOT_ENTERED
        {
            self.ns[i] = 0;
        }
    }

    fn add(&mut self, state: TcpState, ns: u64) {
        if let Some(i) = slot(state) {
            let before = if self.ns[i] == NOT_ENTERED {
                0
            } else {
                self.ns[i]
            };
            self.ns[i] = before.saturating_add(ns).min(NOT_ENTERED - 1);
        }
    }

    pub fn get(&self, state: TcpState) -> Option<u64> {
        let i = slot(state)?;
        (self.ns[i] != NOT_ENTERED).then_some(self.ns[i])
    }

    /// A copy with `ns` spent in `state`.
    #[cfg(test)]
    pub fn with(mut self, state: TcpState, ns: u64) -> Self {
        self.add(state, ns);
        self
    }

    /// Entered states with their time, in lifecycle order.
    pub fn iter(&self) -> impl Iterator<Item = (TcpState, u64)> + '_ {
        LIFECYCLE_ORDER
            .iter()
            .filter_map(|&s| self.get(s).map(|ns| (s, ns)))
    }
}

/// One connection's lifecycle, as `watch` prints it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnRecord {
    /// Boot-clock ns when the lifecycle step that completed it happened.
    pub end_ns: u64,
    pub cookie: u64,
    pub netns: u32,
    pub owner: Option<OwnerRef>,
    pub role: Role,
    pub family: Family,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
    pub closed_by: ClosedBy,
    /// From the first state seen to the full socket's CLOSE (or to now, for
    /// a socket still open at exit); a timewait socket's linger is in `states`.
    pub lifetime_ns: u64,
    pub states: StateTimes,
    /// Set when the connection entered FIN_WAIT2 and its end is known.
    pub fin_wait2_end: Option<Fw2End>,
    pub time_wait: bool,
    /// False when events may be missing: the socket predates the tracer,
    /// events were lost, or its transitions did not chain.
    pub complete: bool,
    /// The state a socket is still in when the tracer stops; `None` for a
    /// completed lifecycle.
    pub open_state: Option<TcpState>,
    /// The connection's opening was seen, so `lifetime_ns` is its real
    /// age; false for a socket that predates the tracer (or was first
    /// heard of mid-life), whose lifetime is unknown.
    pub opened_seen: bool,
    /// What the TCP socket knew of its traffic at the first closing act
    /// (leaving ESTABLISHED); `None` if that step was not seen.
    pub tcp: Option<TcpFigures>,
}

impl ConnRecord {
    pub fn id(&self) -> ConnId {
        ConnId {
            netns: self.netns,
            owner: self.owner,
            role: self.role,
            family: self.family,
            laddr: self.laddr,
            lport: self.lport,
            raddr: self.raddr,
            rport: self.rport,
        }
    }
}

/// What sock_diag must be asked: the cookies followed in one namespace and family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagRequest {
    pub netns: u32,
    pub family: Family,
    /// Orphans to find among FIN_WAIT2 timewait sockets, with their
    /// 4-tuple: one missing from that dump is looked up by itself (it
    /// turned TIME_WAIT, or it is gone).
    pub fin_wait2: Vec<Wanted>,
    /// TIME_WAIT sockets followed to their end: a TIME_WAIT dump.
    pub time_wait: Vec<u64>,
}

impl DiagRequest {
    /// Every cookie asked about.
    pub fn cookies(&self) -> impl Iterator<Item = u64> + '_ {
        self.fin_wait2
            .iter()
            .map(|w| w.cookie)
            .chain(self.time_wait.iter().copied())
    }
}

/// Every socket a sock_diag dump of all namespaces found, to check the
/// tracker against after events were lost.
#[derive(Debug, Default, Clone)]
pub struct Alive {
    /// Cookie -> state of every socket found (timewait sockets keep the
    /// cookie of the socket they replace).
    pub states: HashMap<u64, TcpState>,
    /// Namespaces whose every dump succeeded: only their sockets can be
    /// declared gone.
    pub netns: HashSet<u32>,
}

/// A socket found by the start-up sock_diag dump.
#[derive(Debug, Clone)]
pub struct Seed {
    pub cookie: u64,
    pub netns: u32,
    pub family: Family,
    pub state: TcpState,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
    pub owner: Option<OwnerRef>,
    /// What the sockets it was found with say (a listener on its local
    /// port makes it a server); used when no listener is known here.
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The full socket is alive.
    Live,
    /// The full socket reached CLOSE at `at_ns`. Waiting for its destroy or
    /// the grace period, or, for a `timewait_candidate` (closed from
    /// FIN_WAIT2 or CLOSING without a reset), for sock_diag to say whether a
    /// timewait socket took its place.
    Closed {
        at_ns: u64,
        timewait_candidate: bool,
    },
    /// An orphaned FIN_WAIT2 living on as a timewait socket, followed with
    /// sock_diag until the peer's FIN, the timeout or a reset ends it.
    Fw2Timewait {
        closed_ns: u64,
        /// When sock_diag last saw it in FIN_WAIT2.
        seen_ns: u64,
        /// When its timer is due, as of that sighting.
        expires_ns: u64,
    },
}

#[derive(Debug, Clone)]
struct Conn {
    netns: u32,
    family: Family,
    laddr: IpAddr,
    lport: u16,
    raddr: IpAddr,
    rport: u16,
    owner: KeptOwner,
    /// The owner is the process's own (seen in a record, or found holding
    /// the socket), not just inherited from the listener.
    owner_known: bool,
    /// Its opening was seen but not yet passed on: it waits for the owner
    /// to be known, so that the opening and the close of one connection
    /// count in the same group.
    opened_pending: bool,
    /// The opening was seen: the lifetime is real.
    born: bool,
    role: Role,
    closed_by: Option<ClosedBy>,
    /// Side of the first RST seen: true = sent by this host.
    reset_local: Option<bool>,
    state: TcpState,
    /// When `state` was entered; [`NOT_KNOWN`] for a socket first seen
    /// mid-life. Never earlier than any step applied so far. (Not an
    /// `Option`: that would cost 8 bytes in every tracked socket.)
    since_ns: u64,
    first_ns: u64,
    /// The last transition applied, to recognise a duplicate record.
    last_step: (TcpState, TcpState),
    times: StateTimes,
    fin_wait2_end: Option<Fw2End>,
    time_wait: bool,
    complete: bool,
    phase: Phase,
}

impl Conn {
    /// A socket first heard of through `r`, in `state` (its old state).
    /// A `born` one started there: at `r.since_ns` when the kernel left out
    /// the step that began it (connect), else at `r`.
    fn from_record(r: &Record, state: TcpState, role: Role, born: bool) -> Self {
        let start = r.since_ns.unwrap_or(r.ts_ns).min(r.ts_ns);
        Self {
            netns: r.netns,
            family: r.family,
            laddr: r.laddr,
            lport: r.lport,
            raddr: r.raddr,
            rport: r.rport,
            owner: KeptOwner::new(r.owner.map(OwnerRef::from)),
            owner_known: r.owner.is_some_and(|o| o.pid != 0),
            opened_pending: false,
            born,
            role,
            closed_by: None,
            reset_local: None,
            state,
            since_ns: if born { start } else { NOT_KNOWN },
            first_ns: if born { start } else { r.ts_ns },
            last_step: (state, state),
            times: StateTimes::default(),
            fin_wait2_end: None,
            time_wait: false,
            complete: born,
            phase: Phase::Live,
        }
    }

    fn since(&self) -> Option<u64> {
        (self.since_ns != NOT_KNOWN).then_some(self.since_ns)
    }

    fn id(&self) -> ConnId {
        ConnId {
            netns: self.netns,
            owner: self.owner.get(),
            role: self.role,
            family: self.family,
            laddr: self.laddr,
            lport: self.lport,
            raddr: self.raddr,
            rport: self.rport,
        }
    }

    /// Closes the books on the current state at `now` and enters `next`.
    fn enter(&mut self, next: TcpState, now: u64) {
        if let Some(since) = self.since() {
            self.times.add(self.state, now.saturating_sub(since));
        }
        if next != TcpState::Close {
            self.times.enter(next);
        }
        self.state = next;
        self.since_ns = now;
    }

    fn record(
        &self,
        tcp: Option<TcpFigures>,
        cookie: u64,
        end_ns: u64,
        lifetime_end_ns: u64,
        open_state: Option<TcpState>,
    ) -> ConnRecord {
        let closed_by = self.closed_by.unwrap_or(match self.reset_local {
            Some(true) => ClosedBy::ResetLocal,
            Some(false) => ClosedBy::ResetRemote,
            None => ClosedBy::Unknown,
        });
        ConnRecord {
            end_ns,
            cookie,
            netns: self.netns,
            owner: self.owner.get(),
            role: self.role,
            family: self.family,
            laddr: self.laddr,
            lport: self.lport,
            raddr: self.raddr,
            rport: self.rport,
            closed_by,
            lifetime_ns: lifetime_end_ns.saturating_sub(self.first_ns),
            states: self.times,
            fin_wait2_end: self.fin_wait2_end,
            time_wait: self.time_wait,
            complete: self.complete,
            open_state,
            opened_seen: self.born,
            tcp,
        }
    }
}

/// Tracks every connection it hears of, up to a cap.
pub struct Tracker {
    conns: LruTable<Conn>,
    /// Owner of each listening socket, by (netns, port): accepted sockets
    /// start with no owner until their first I/O, and inherit this.
    listeners: HashMap<(u32, u16), Option<OwnerRef>>,
    /// Sockets closed without a timewait successor, in closing order,
    /// waiting out [`CLOSE_GRACE_NS`].
    closing: VecDeque<(u64, u64)>,
    /// Cookies sock_diag must look up, by (netns, family).
    followed: HashMap<(u32, Family), HashSet<u64>>,
    /// TIME_WAIT sockets followed to their end, when asked to.
    timewaits: Option<HashMap<u64, Timewait>>,
    cap: usize,
    ready: Vec<ConnRecord>,
    opened: Vec<ConnId>,
    timewait_starts: Vec<ConnId>,
    timewait_ends: Vec<TimewaitEnd>,
    evicted: u64,
    /// The TCP figures of sockets past their first closing act, by cookie.
    figures: HashMap<u64, TcpFigures>,
}

impl Tracker {
    pub fn new(max_sockets: NonZeroUsize) -> Self {
        Self {
            conns: LruTable::new(max_sockets.get()),
            listeners: HashMap::new(),
            closing: VecDeque::new(),
            followed: HashMap::new(),
            timewaits: None,
            cap: max_sockets.get(),
            ready: Vec::new(),
            opened: Vec::new(),
            timewait_starts: Vec::new(),
            timewait_ends: Vec::new(),
            evicted: 0,
            figures: HashMap::new(),
        }
    }

    /// Also follow TIME_WAIT sockets after their record, to time TIME_WAIT
    /// (at most `max_sockets` of them; more are counted as evicted).
    pub fn follow_timewait(mut self) -> Self {
        self.timewaits = Some(HashMap::new());
        self
    }

    /// Sockets currently tracked.
    pub fn tracked(&self) -> usize {
        self.conns.len()
    }

    /// Sockets dropped to stay under the cap.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Records completed since the last call.
    pub fn take_ready(&mut self) -> Vec<ConnRecord> {
        std::mem::take(&mut self.ready)
    }

    /// Connections whose opening was seen since the last call.
    pub fn take_opened(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.opened)
    }

    /// TIME_WAIT sockets followed from now on (each will have an end):
    /// what keeps counts of TIME_WAIT sockets without walking them.
    pub fn take_timewait_starts(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.timewait_starts)
    }

    /// TIME_WAIT sockets that ended since the last call.
    pub fn take_timewait_ends(&mut self) -> Vec<TimewaitEnd> {
        std::mem::take(&mut self.timewait_ends)
    }

    /// Every socket alive now but TIME_WAIT ones: full sockets in their
    /// state, and orphans in timewait FIN_WAIT2. (TIME_WAIT sockets are
    /// counted from [`Self::take_timewait_starts`] and ends instead: there
    /// can be far more of them, and they change once.)
    pub fn live(&self) -> impl Iterator<Item = LiveConn> + '_ {
        self.conns.iter().filter_map(|(&cookie, c)| {
            let (state, since_ns) = match c.phase {
                Phase::Live => (c.state, c.since()),
                Phase::Fw2Timewait { closed_ns, .. } => {
                    // It entered FIN_WAIT2 before its full socket closed.
                    let before = c.times.get(TcpState::FinWait2).unwrap_or(0);
                    (TcpState::FinWait2, Some(closed_ns.saturating_sub(before)))
                }
                Phase::Closed { .. } => return None,
            };
            Some(LiveConn {
                cookie,
                id: c.id(),
                owner_known: c.owner_known,
                state,
                since_ns,
            })
        })
    }

    fn insert(&mut self, cookie: u64, conn: Conn) {
        if let Some((old, _)) = self.conns.push(cookie, conn)
            && old != cookie
        {
            self.evicted += 1;
            self.figures.remove(&old);
        }
    }

    fn follow(&mut self, cookie: u64, netns: u32, family: Family) {
        self.followed
            .entry((netns, family))
            .or_default()
            .insert(cookie);
    }

    fn unfollow(&mut self, cookie: u64, netns: u32, family: Family) {
        if let Some(set) = self.followed.get_mut(&(netns, family)) {
            set.remove(&cookie);
            if set.is_empty() {
                self.followed.remove(&(netns, family));
            }
        }
    }

    /// Passes on a connection's opening, once its owner is known or (with
    /// `now`) with whatever is known: its record is about to be written.
    fn pass_opened(&mut self, conn: &mut Conn, now: bool) {
        if conn.opened_pending && (now || conn.owner_known) {
            conn.opened_pending = false;
            self.opened.push(conn.id());
        }
    }

    /// Live sockets whose owner is only inherited from their listener: an
    /// accepted socket that no process has been seen with yet (a prefork
    /// server's worker accepted it, or it waits in the accept queue). By
    /// cookie and network namespace, for a lookup of who holds it.
    pub fn provisional(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.conns
            .iter()
            .filter(|(_, c)| !c.owner_known && c.phase == Phase::Live)
            .map(|(&cookie, c)| (cookie, c.netns))
    }

    /// Passes on every opening still waiting for its owner, with the owner
    /// known so far: the run is ending, and those connections were opened
    /// during it.
    pub fn finish_opened(&mut self) {
        let mut ids = Vec::new();
        self.conns.for_each_mut(|_, conn| {
            if conn.opened_pending {
                conn.opened_pending = false;
                ids.push(conn.id());
            }
        });
        self.opened.extend(ids);
    }

    /// `owner` holds the socket (found in its file table): it is the
    /// connection's owner from now on.
    pub fn resolve(&mut self, cookie: u64, owner: OwnerRef) {
        let Some(conn) = self.conns.peek_mut(&cookie) else {
            return;
        };
        conn.owner = KeptOwner::new(Some(owner));
        conn.owner_known = true;
        let opened = conn.opened_pending.then(|| {
            conn.opened_pending = false;
            conn.id()
        });
        self.opened.extend(opened);
    }

    /// Ends a lifecycle: the record is ready and the socket forgotten.
    fn finalize(&mut self, cookie: u64, end_ns: u64) {
        if let Some(mut conn) = self.conns.pop(&cookie) {
            self.pass_opened(&mut conn, true);
            let lifetime_end = match conn.phase {
                Phase::Closed { at_ns, .. } => at_ns,
                Phase::Fw2Timewait { closed_ns, .. } => closed_ns,
                Phase::Live => end_ns,
            };
            self.unfollow(cookie, conn.netns, conn.family);
            if conn.time_wait
                && let Some(timewaits) = &mut self.timewaits
            {
                if timewaits.len() < self.cap {
                    self.timewait_starts.push(conn.id());
                    timewaits.insert(
                        cookie,
                        Timewait {
                            id: conn.id(),
                            since_ns: end_ns,
                            seen_ns: end_ns,
                            // Unknown until seen; a TIME_WAIT lasts this long.
                            expires_ns: end_ns + TIMEWAIT_LEN_NS,
                        },
                    );
                } else {
                    self.evicted += 1;
                }
            }
            self.ready.push(conn.record(
                self.figures.remove(&cookie),
                cookie,
                end_ns,
                lifetime_end,
                None,
            ));
        }
    }

    pub fn on_record(&mut self, r: &Record) {
        match r.kind {
            Kind::StateChange { old, new } => self.on_transition(r, old, new),
            Kind::Destroy { .. } => self.on_destroy(r),
            Kind::SendReset { .. } => self.on_reset(r, true),
            Kind::ReceiveReset { .. } => self.on_reset(r, false),
        }
    }

    fn on_transition(&mut self, r: &Record, old: TcpState, new: TcpState) {
        use TcpState::*;
        if new == Listen {
            let owner = r.owner.map(OwnerRef::from);
            self.listeners.insert((r.netns, r.lport), owner);
            return;
        }
        if old == Listen && new == Close {
            self.listeners.remove(&(r.netns, r.lport));
            return;
        }
        // A socket that failed to connect can connect again: a new lifecycle
        // under the same cookie (its connect dated by `since_ns` when the
        // kernel left that record out).
        let reconnect = match (old, new) {
            (Close, SynSent) => Some(r.ts_ns),
            (SynSent, _) => r.since_ns,
            _ => None,
        };
        if let Some(connect_ns) = reconnect
            && let Some(Phase::Closed { at_ns, .. }) = self.conns.peek(&r.cookie).map(|c| c.phase)
            && connect_ns >= at_ns
        {
            self.finalize(r.cookie, at_ns);
        }
        if !self.conns.contains(&r.cookie) {
            let (role, born) = match (old, new) {
                (Close, SynSent) => (Role::Client, true),
                (Listen | NewSynRecv, SynRecv) => (Role::Server, true),
                // Connect's record left out: this one dates it.
                (SynSent, _) => (Role::Client, r.since_ns.is_some()),
                // An accepted socket is born on the handshake's last ACK and
                // made ESTABLISHED in the same instant (its creation's
                // record may be left out).
                (SynRecv, Established) => (Role::Server, true),
                (SynRecv | NewSynRecv, _) => (Role::Server, false),
                _ if self.listeners.contains_key(&(r.netns, r.lport)) => (Role::Server, false),
                _ => (Role::Unknown, false),
            };
            let mut conn = Conn::from_record(r, old, role, born);
            if conn.owner.get().is_none() && role == Role::Server {
                // Provisional: the process that created the listener did
                // not necessarily accept this socket (prefork servers).
                conn.owner =
                    KeptOwner::new(self.listeners.get(&(r.netns, r.lport)).copied().flatten());
            }
            conn.opened_pending = born;
            self.pass_opened(&mut conn, false);
            self.insert(r.cookie, conn);
        }
        let Some(conn) = self.conns.get_mut(&r.cookie) else {
            return;
        };
        if conn.last_step == (old, new) && conn.since() == Some(r.ts_ns) {
            // The same record twice: nothing new.
            return;
        }
        if conn.phase != Phase::Live {
            // A transition after CLOSE: events were missed or reordered.
            conn.complete = false;
            return;
        }
        // Every step so far is dated no later than the current state's entry.
        if r.ts_ns < conn.since().unwrap_or(0) {
            conn.complete = false;
        }
        if old != conn.state {
            match (conn.state, old, r.since_ns) {
                // An orphan's FIN_WAIT1 -> FIN_WAIT2, left out by the kernel
                // and dated by this record.
                (FinWait1, FinWait2, Some(since)) => {
                    let floor = conn.since().unwrap_or(0);
                    let at = since.max(floor).min(r.ts_ns.max(floor));
                    conn.enter(FinWait2, at);
                }
                // A step is missing between what we saw last and this one.
                _ => conn.complete = false,
            }
        }
        let now = r.ts_ns.max(conn.since().unwrap_or(0));
        conn.last_step = (old, new);
        if conn.lport == 0 && r.lport != 0 {
            // A client's port is picked after CLOSE -> SYN_SENT is traced.
            conn.laddr = r.laddr;
            conn.lport = r.lport;
        }
        conn.enter(new, now);
        if let Some(o) = r.owner.filter(|o| o.pid != 0) {
            conn.owner = KeptOwner::new(Some(o.into()));
            conn.owner_known = true;
        }
        if let Some(t) = r.tcp {
            // The first closing act's figures: kept beside the table, as
            // only closing sockets have them.
            self.figures.entry(r.cookie).or_insert(t);
        }
        let opened = (conn.opened_pending && conn.owner_known).then(|| {
            conn.opened_pending = false;
            conn.id()
        });
        match (old, new) {
            (Established | SynRecv, FinWait1) if conn.closed_by.is_none() => {
                conn.closed_by = Some(ClosedBy::Local)
            }
            (Established | SynRecv, CloseWait) if conn.closed_by.is_none() => {
                conn.closed_by = Some(ClosedBy::Remote)
            }
            // FIN_WAIT1 -> CLOSING, or leaving CLOSING when that step was
            // missed (a lost or skipped record): the FINs crossed.
            (FinWait1, Closing) | (Closing, _)
                if matches!(conn.closed_by, None | Some(ClosedBy::Local)) =>
            {
                conn.closed_by = Some(ClosedBy::Simultaneous)
            }
            // The deciding step was missed (seen mid-life, or lost): a closing
            // state still tells who sent the first FIN.
            _ if conn.closed_by.is_none() => conn.closed_by = closer_implied_by(old),
            _ => {}
        }
        self.opened.extend(opened);
        if new == Close {
            self.closed(r.cookie, old, now, r.peer_fin);
        }
    }

    /// The full socket reached CLOSE: decide what must be learned before
    /// its record can be written.
    /// `peer_fin`: whether the peer's FIN had arrived when the full socket
    /// closed (`None`: not known).
    fn closed(&mut self, cookie: u64, from: TcpState, at_ns: u64, peer_fin: Option<bool>) {
        let Some(conn) = self.conns.get_mut(&cookie) else {
            return;
        };
        // FIN_WAIT2 and CLOSING are the states a timewait socket replaces;
        // a RST rules it out.
        let successor =
            matches!(from, TcpState::FinWait2 | TcpState::Closing) && conn.reset_local.is_none();
        // With the peer's FIN in (always so from CLOSING), the successor is
        // in TIME_WAIT from this instant: nothing to ask sock_diag.
        if successor && (from == TcpState::Closing || peer_fin == Some(true)) {
            conn.phase = Phase::Closed {
                at_ns,
                timewait_candidate: false,
            };
            conn.time_wait = true;
            if from == TcpState::FinWait2 {
                conn.fin_wait2_end = Some(Fw2End::PeerFin);
            }
            self.finalize(cookie, at_ns);
            return;
        }
        let timewait_candidate = successor;
        conn.phase = Phase::Closed {
            at_ns,
            timewait_candidate,
        };
        if from == TcpState::FinWait2 && conn.reset_local.is_some() {
            conn.fin_wait2_end = Some(Fw2End::Reset);
        }
        let (netns, family) = (conn.netns, conn.family);
        if timewait_candidate {
            self.follow(cookie, netns, family);
        } else {
            self.closing.push_back((at_ns, cookie));
        }
    }

    fn on_destroy(&mut self, r: &Record) {
        let Some(conn) = self.conns.get_mut(&r.cookie) else {
            return;
        };
        match conn.phase {
            Phase::Live => {
                // The CLOSE record was lost: close it now.
                conn.complete = false;
                let (from, now) = (conn.state, r.ts_ns.max(conn.since().unwrap_or(0)));
                conn.enter(TcpState::Close, now);
                self.closed(r.cookie, from, now, None);
                self.on_destroy(r);
            }
            Phase::Closed {
                at_ns,
                timewait_candidate: false,
            } => self.finalize(r.cookie, at_ns),
            // A timewait candidate's destroy says nothing about its successor.
            Phase::Closed { .. } | Phase::Fw2Timewait { .. } => {}
        }
    }

    fn on_reset(&mut self, r: &Record, local: bool) {
        let Some(conn) = self.conns.get_mut(&r.cookie) else {
            return;
        };
        if conn.reset_local.is_none() {
            conn.reset_local = Some(local);
        }
        // A RST after a FIN does not change who closed first.
        if conn.closed_by.is_none() {
            conn.closed_by = Some(if local {
                ClosedBy::ResetLocal
            } else {
                ClosedBy::ResetRemote
            });
        }
        match conn.phase {
            Phase::Live => {
                if conn.state == TcpState::FinWait2 {
                    conn.fin_wait2_end = Some(Fw2End::Reset);
                }
            }
            Phase::Closed {
                at_ns,
                timewait_candidate: true,
            } => {
                // Reset right after the CLOSE (e.g. FIN_WAIT2 with linger2 < 0):
                // no timewait successor to wait for.
                if conn.times.get(TcpState::FinWait2).is_some() {
                    conn.fin_wait2_end = Some(Fw2End::Reset);
                }
                conn.phase = Phase::Closed {
                    at_ns,
                    timewait_candidate: false,
                };
                let (netns, family) = (conn.netns, conn.family);
                self.unfollow(r.cookie, netns, family);
                self.closing.push_back((at_ns, r.cookie));
            }
            Phase::Closed { .. } => {}
            Phase::Fw2Timewait { closed_ns, .. } => {
                // The orphan's timewait socket sent or got a RST: that ends it,
                // to the nanosecond.
                let end = r.ts_ns.max(closed_ns);
                conn.times.add(TcpState::FinWait2, end - closed_ns);
                conn.fin_wait2_end = Some(Fw2End::Reset);
                self.finalize(r.cookie, end);
            }
        }
    }

    /// Events were lost since the last call: every socket alive now, and
    /// every record not yet written, may be missing some.
    pub fn note_loss(&mut self) {
        self.conns.for_each_mut(|_, conn| conn.complete = false);
        for record in &mut self.ready {
            record.complete = false;
        }
    }

    /// After a loss, what the kernel holds now (`alive`, dumped from
    /// `started_ns`) corrects what the lost events would have: a live
    /// socket not heard from since before the dump began and no longer
    /// there is written as ended (when it was last known of, incomplete,
    /// `closed_by` as far as its last state says); one found in TIME_WAIT
    /// is written as such; one found in another state moves there. Without
    /// this a socket whose closing events were all dropped would count as
    /// open until evicted.
    pub fn reconcile(&mut self, alive: &Alive, started_ns: u64) {
        let mut ended = Vec::new();
        let mut moved = Vec::new();
        for (&cookie, conn) in self.conns.iter() {
            let last_known = conn.since().unwrap_or(conn.first_ns);
            if conn.phase != Phase::Live
                || last_known >= started_ns
                || !alive.netns.contains(&conn.netns)
            {
                continue;
            }
            match alive.states.get(&cookie) {
                None => ended.push((cookie, last_known, false)),
                Some(TcpState::TimeWait) => ended.push((cookie, last_known, true)),
                Some(&state) if state != conn.state => moved.push((cookie, state)),
                Some(_) => {}
            }
        }
        for (cookie, last_known, time_wait) in ended {
            let Some(mut conn) = self.conns.pop(&cookie) else {
                continue;
            };
            self.pass_opened(&mut conn, true);
            self.unfollow(cookie, conn.netns, conn.family);
            conn.complete = false;
            if conn.closed_by.is_none() {
                conn.closed_by = closer_implied_by(conn.state).or(
                    // Only the side that sent a FIN first (or both) gets there.
                    time_wait.then_some(ClosedBy::Local),
                );
            }
            conn.time_wait = time_wait;
            // How long its last state really lasted is unknown.
            conn.since_ns = NOT_KNOWN;
            conn.enter(TcpState::Close, last_known);
            self.ready.push(conn.record(
                self.figures.remove(&cookie),
                cookie,
                last_known,
                last_known,
                None,
            ));
        }
        for (cookie, state) in moved {
            if let Some(conn) = self.conns.peek_mut(&cookie) {
                conn.complete = false;
                if conn.closed_by.is_none() {
                    conn.closed_by = closer_implied_by(state);
                }
                // Its old state's end is unknown; the new one is timed
                // from the dump, a lower bound.
                conn.since_ns = NOT_KNOWN;
                conn.enter(state, started_ns);
                conn.last_step = (state, state);
            }
        }
    }

    /// Writes the records of sockets whose grace period has passed.
    pub fn tick(&mut self, now_ns: u64) {
        while let Some(&(at_ns, cookie)) = self.closing.front() {
            if at_ns.saturating_add(CLOSE_GRACE_NS) > now_ns {
                break;
            }
            self.closing.pop_front();
            let due = self.conns.peek(&cookie).is_some_and(|c| {
                c.phase
                    == Phase::Closed {
                        at_ns,
                        timewait_candidate: false,
                    }
            });
            if due {
                self.finalize(cookie, at_ns);
            }
        }
    }

    /// What sock_diag should be asked now; empty when nothing is followed.
    /// With `timewait`, the followed TIME_WAIT sockets too: they change
    /// once in 60 s, and their table can be large.
    pub fn diag_requests(&self, timewait: bool) -> Vec<DiagRequest> {
        let mut by_namespace: HashMap<(u32, Family), DiagRequest> = HashMap::new();
        fn request(
            map: &mut HashMap<(u32, Family), DiagRequest>,
            netns: u32,
            family: Family,
        ) -> &mut DiagRequest {
            map.entry((netns, family)).or_insert_with(|| DiagRequest {
                netns,
                family,
                fin_wait2: Vec::new(),
                time_wait: Vec::new(),
            })
        }
        for (&(netns, family), cookies) in &self.followed {
            for &cookie in cookies {
                if let Some(c) = self.conns.peek(&cookie) {
                    request(&mut by_namespace, netns, family)
                        .fin_wait2
                        .push(Wanted {
                            cookie,
                            laddr: c.laddr,
                            lport: c.lport,
                            raddr: c.raddr,
                            rport: c.rport,
                        });
                }
            }
        }
        if timewait {
            for (&cookie, tw) in self.timewaits.iter().flatten() {
                request(&mut by_namespace, tw.id.netns, tw.id.family)
                    .time_wait
                    .push(cookie);
            }
        }
        by_namespace.into_values().collect()
    }

    /// A followed TIME_WAIT socket in a dump, or missing from it.
    fn on_timewait_sighting(&mut self, cookie: u64, seen: Option<&TimewaitSighting>, done_ns: u64) {
        let Some(timewaits) = &mut self.timewaits else {
            return;
        };
        let Some(tw) = timewaits.get_mut(&cookie) else {
            return;
        };
        match seen {
            Some(s) => {
                tw.seen_ns = s.seen_ns;
                tw.expires_ns = expiry(s);
            }
            None => {
                let end = if done_ns.saturating_add(EXPIRY_SLACK_NS) < tw.expires_ns {
                    // Gone early: reused by a new connection, or killed by a RST.
                    done_ns
                } else {
                    tw.expires_ns.clamp(tw.seen_ns, done_ns.max(tw.seen_ns))
                };
                self.timewait_ends.push(TimewaitEnd {
                    id: tw.id,
                    duration_ns: end.saturating_sub(tw.since_ns),
                });
                timewaits.remove(&cookie);
            }
        }
    }

    /// Applies one dump (timewait sockets by cookie) taken for `request`;
    /// `done_ns` is when the dump finished. A namespace that no longer
    /// exists is an empty dump: its timewait sockets went with it.
    pub fn on_diag(&mut self, request: &DiagRequest, timewait: &Sightings, done_ns: u64) {
        for cookie in request.cookies() {
            let seen = timewait.get(&cookie);
            let Some(conn) = self.conns.get_mut(&cookie) else {
                self.unfollow(cookie, request.netns, request.family);
                self.on_timewait_sighting(cookie, seen, done_ns);
                continue;
            };
            match conn.phase {
                Phase::Closed {
                    at_ns,
                    timewait_candidate: true,
                } => match seen {
                    Some(tw) if tw.state == TcpState::TimeWait => {
                        // Either created as TIME_WAIT (the FIN had come while
                        // the full socket lived) or it switched from FIN_WAIT2
                        // before this first look: the timer dates which.
                        conn.time_wait = true;
                        let mut end = at_ns;
                        if conn.times.get(TcpState::FinWait2).is_some() {
                            end = timewait_switch(tw, at_ns);
                            conn.times.add(TcpState::FinWait2, end - at_ns);
                            conn.fin_wait2_end = Some(Fw2End::PeerFin);
                        }
                        self.finalize(cookie, end);
                    }
                    Some(tw) => {
                        conn.phase = Phase::Fw2Timewait {
                            closed_ns: at_ns,
                            seen_ns: tw.seen_ns,
                            expires_ns: expiry(tw),
                        };
                        // Keep followed sockets away from LRU eviction.
                        self.conns.promote(&cookie);
                    }
                    None => {
                        // No successor: the timewait table was full
                        // (tcp_max_tw_buckets) or it was gone before we asked.
                        self.finalize(cookie, at_ns);
                    }
                },
                Phase::Fw2Timewait {
                    closed_ns,
                    seen_ns,
                    expires_ns,
                } => match seen {
                    Some(tw) if tw.state == TcpState::TimeWait => {
                        let end = timewait_switch(tw, seen_ns);
                        conn.times
                            .add(TcpState::FinWait2, end.saturating_sub(closed_ns));
                        conn.fin_wait2_end = Some(Fw2End::PeerFin);
                        conn.time_wait = true;
                        self.finalize(cookie, end);
                    }
                    Some(tw) => {
                        conn.phase = Phase::Fw2Timewait {
                            closed_ns,
                            seen_ns: tw.seen_ns,
                            expires_ns: expiry(tw),
                        };
                        self.conns.promote(&cookie);
                    }
                    None => {
                        let (end, how) = if done_ns.saturating_add(EXPIRY_SLACK_NS) < expires_ns {
                            // Gone before its timer: killed by a RST or reused.
                            (done_ns, Fw2End::Reset)
                        } else {
                            (
                                expires_ns.clamp(seen_ns, done_ns.max(seen_ns)),
                                Fw2End::Timeout,
                            )
                        };
                        conn.times
                            .add(TcpState::FinWait2, end.saturating_sub(closed_ns));
                        conn.fin_wait2_end = Some(how);
                        self.finalize(cookie, end);
                    }
                },
                _ => self.unfollow(cookie, request.netns, request.family),
            }
        }
    }

    /// sock_diag could not answer `request`: sockets waiting for their
    /// first look are written without a verdict on their successor
    /// (incomplete); followed ones wait for a later look.
    pub fn on_diag_failed(&mut self, request: &DiagRequest) {
        for cookie in request.cookies() {
            if let Some(conn) = self.conns.peek_mut(&cookie)
                && let Phase::Closed {
                    at_ns,
                    timewait_candidate: true,
                } = conn.phase
            {
                conn.complete = false;
                self.finalize(cookie, at_ns);
            }
        }
    }

    /// Adds the sockets open when tracing started. Sockets already known
    /// from events only get what they lack (owner, role).
    pub fn seed(&mut self, seeds: &[Seed], now_ns: u64) {
        for s in seeds.iter().filter(|s| s.state == TcpState::Listen) {
            self.listeners.entry((s.netns, s.lport)).or_insert(s.owner);
        }
        for s in seeds {
            if matches!(
                s.state,
                TcpState::Listen
                    | TcpState::Close
                    | TcpState::SynRecv
                    | TcpState::NewSynRecv
                    | TcpState::TimeWait
            ) {
                continue;
            }
            let serves = self.listeners.contains_key(&(s.netns, s.lport));
            let role = if serves { Role::Server } else { s.role };
            if let Some(conn) = self.conns.peek_mut(&s.cookie) {
                // A process found holding the socket beats one inherited
                // from the listener.
                if !conn.owner_known && s.owner.is_some() {
                    conn.owner = KeptOwner::new(s.owner);
                    conn.owner_known = true;
                }
                if conn.role == Role::Unknown {
                    conn.role = role;
                }
                let opened = (conn.opened_pending && conn.owner_known).then(|| {
                    conn.opened_pending = false;
                    conn.id()
                });
                self.opened.extend(opened);
                continue;
            }
            let mut times = StateTimes::default();
            times.enter(s.state);
            let conn = Conn {
                netns: s.netns,
                family: s.family,
                laddr: s.laddr,
                lport: s.lport,
                raddr: s.raddr,
                rport: s.rport,
                owner: KeptOwner::new(s.owner),
                owner_known: s.owner.is_some(),
                opened_pending: false,
                born: false,
                role,
                closed_by: closer_implied_by(s.state),
                reset_local: None,
                state: s.state,
                since_ns: now_ns,
                first_ns: now_ns,
                last_step: (s.state, s.state),
                times,
                fin_wait2_end: None,
                time_wait: false,
                complete: false,
                phase: Phase::Live,
            };
            self.insert(s.cookie, conn);
        }
    }

    /// At exit: records for every socket still lingering (closing states,
    /// timewait FIN_WAIT2), timed up to `now_ns`, plus any closed socket
    /// still waiting for its verdict. Open connections are not records.
    pub fn finish(&mut self, now_ns: u64) -> Vec<ConnRecord> {
        let mut out = self.take_ready();
        let cookies: Vec<u64> = self.conns.iter().map(|(&c, _)| c).collect();
        for cookie in cookies {
            let Some(mut conn) = self.conns.pop(&cookie) else {
                continue;
            };
            // Open ones too: the opening was seen during the run.
            self.pass_opened(&mut conn, true);
            let tcp = self.figures.remove(&cookie);
            match conn.phase {
                Phase::Live => {
                    let state = conn.state;
                    if !matches!(
                        state,
                        TcpState::FinWait1
                            | TcpState::FinWait2
                            | TcpState::Closing
                            | TcpState::CloseWait
                            | TcpState::LastAck
                    ) {
                        continue;
                    }
                    if let Some(since) = conn.since() {
                        conn.times.add(state, now_ns.saturating_sub(since));
                    }
                    if state == TcpState::FinWait2 {
                        conn.fin_wait2_end = Some(Fw2End::Open);
                    }
                    out.push(conn.record(tcp, cookie, now_ns, now_ns, Some(state)));
                }
                Phase::Closed { at_ns, .. } => {
                    out.push(conn.record(tcp, cookie, at_ns, at_ns, None));
                }
                Phase::Fw2Timewait { closed_ns, .. } => {
                    conn.times
                        .add(TcpState::FinWait2, now_ns.saturating_sub(closed_ns));
                    conn.fin_wait2_end = Some(Fw2End::Open);
                    out.push(conn.record(tcp, cookie, now_ns, closed_ns, Some(TcpState::FinWait2)));
                }
            }
        }
        self.followed.clear();
        self.figures.clear();
        self.closing.clear();
        out
    }
}

/// The role of a socket found open, by what its ports say: a listener on
/// its local port makes it a server; so does a local port outside the
/// ephemeral range talking to a port inside it (a server's socket whose
/// listener is gone, e.g. the TIME_WAIT of a server that exited); anything
/// else dialled out.
pub fn role_by_ports(listening: bool, lport: u16, rport: u16, ephemeral: (u16, u16)) -> Role {
    let in_range = |port: u16| (ephemeral.0..=ephemeral.1).contains(&port);
    if listening || (!in_range(lport) && in_range(rport)) {
        Role::Server
    } else {
        Role::Client
    }
}

/// Who closed first, as implied by being in `state`: only the local-first
/// path passes FIN_WAIT1/FIN_WAIT2 without CLOSING.
fn closer_implied_by(state: TcpState) -> Option<ClosedBy> {
    match state {
        TcpState::FinWait1 | TcpState::FinWait2 => Some(ClosedBy::Local),
        TcpState::CloseWait | TcpState::LastAck => Some(ClosedBy::Remote),
        TcpState::Closing => Some(ClosedBy::Simultaneous),
        _ => None,
    }
}

/// When a timewait socket seen in TIME_WAIT left FIN_WAIT2: its timer
/// restarted at [`TIMEWAIT_LEN_NS`] then. Clamped to after `not_before`
/// (when it was last known to be in FIN_WAIT2) and to the sighting itself.
fn timewait_switch(tw: &TimewaitSighting, not_before: u64) -> u64 {
    let left_ns = u64::from(tw.expires_ms) * 1_000_000;
    let switched = tw
        .seen_ns
        .saturating_sub(TIMEWAIT_LEN_NS.saturating_sub(left_ns));
    switched.clamp(not_before, tw.seen_ns.max(not_before))
}

/// When a timewait socket's timer is due, from one sighting.
fn expiry(tw: &TimewaitSighting) -> u64 {
    tw.seen_ns + u64::from(tw.expires_ms) * 1_000_000
}

mod table;

use table::LruTable;

#[cfg(test)]
mod tests;
