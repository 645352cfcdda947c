//! Per-socket lifecycle state machine: turns ring events, timewait observations and the start-up snapshot into one record per connection, saying who closed first and how long each state lasted.

mod conn;
mod recovery;
mod seed;
mod table;
mod timewait;
mod types;

use std::{collections::VecDeque, num::NonZeroUsize};

use foldhash::{HashMap, HashMapExt as _, HashSet};
use tracer_common::TcpState;

use conn::{Conn, KeptOwner, Phase, Timewait, closer_implied_by};
use table::LruTable;
use timewait::Timewaits;
pub use types::*;

use crate::model::event::{Family, Kind, Owner, Record};

/// Tracks every connection it hears of, up to a cap.
pub struct Tracker {
    conns: LruTable<Conn>,
    /// Owner of each listening socket, by (netns, port): accepted sockets
    /// start with no owner until a record or a look names one, and
    /// inherit this meanwhile.
    listeners: HashMap<(u32, u16), Option<Owner>>,
    /// Sockets closed without a timewait successor, in closing order,
    /// waiting out [`CLOSE_GRACE_NS`].
    closing: VecDeque<(u64, u64)>,
    /// Cookies sock_diag must look up, by (netns, family).
    followed: HashMap<(u32, Family), HashSet<u64>>,
    /// TIME_WAIT sockets followed to their end, when asked to.
    timewaits: Option<Timewaits>,
    cap: usize,
    ready: Vec<ConnRecord>,
    /// Openings passed on, when asked for ([`Self::with_openings`]): only
    /// a consumer that takes them may have them kept, or they would pile
    /// up for the life of the run.
    opened: Option<Vec<ConnId>>,
    timewait_starts: Vec<ConnId>,
    timewait_ends: Vec<TimewaitEnd>,
    evicted: u64,
    /// TIME_WAIT sockets not followed because `max_sockets` were already:
    /// their record is written, their TIME_WAIT goes untimed.
    timewait_unfollowed: u64,
    /// The TCP figures of sockets past their first closing act, by
    /// cookie: kept beside the table, as only closing sockets have them.
    figures: HashMap<u64, Figures>,
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
            opened: None,
            timewait_starts: Vec::new(),
            timewait_ends: Vec::new(),
            evicted: 0,
            timewait_unfollowed: 0,
            figures: HashMap::new(),
        }
    }

    /// Also follow TIME_WAIT sockets after their record, to time TIME_WAIT
    /// (at most `max_sockets` of them; more are counted apart, see
    /// [`Self::timewait_unfollowed`]).
    pub fn follow_timewait(mut self) -> Self {
        self.timewaits = Some(Timewaits::default());
        self
    }

    /// Also pass on each connection's opening ([`Self::take_opened`]),
    /// for a consumer that counts them.
    pub fn with_openings(mut self) -> Self {
        self.opened = Some(Vec::new());
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

    /// TIME_WAIT sockets left untimed because the follow cap was reached.
    pub fn timewait_unfollowed(&self) -> u64 {
        self.timewait_unfollowed
    }

    /// Records completed since the last call.
    pub fn take_ready(&mut self) -> Vec<ConnRecord> {
        std::mem::take(&mut self.ready)
    }

    /// Connections whose opening was seen since the last call.
    pub fn take_opened(&mut self) -> Vec<ConnId> {
        self.opened.as_mut().map(std::mem::take).unwrap_or_default()
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

    pub(super) fn note_opened(&mut self, ids: impl IntoIterator<Item = ConnId>) {
        if let Some(opened) = &mut self.opened {
            opened.extend(ids);
        }
    }

    /// Passes on a connection's opening, once its owner is known or (with
    /// `now`) with whatever is known: its record is about to be written.
    fn pass_opened(&mut self, conn: &mut Conn, now: bool) {
        if conn.opened_pending && (now || conn.owner_known) {
            conn.opened_pending = false;
            let id = conn.id();
            self.note_opened([id]);
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
        self.note_opened(ids);
    }

    /// `owner` holds the socket (found in its file table): it is the
    /// connection's owner from now on.
    pub fn resolve(&mut self, cookie: u64, owner: Owner) {
        let Some(conn) = self.conns.peek_mut(&cookie) else {
            return;
        };
        conn.owner = KeptOwner::new(Some(owner));
        conn.owner_known = true;
        let opened = conn.opened_pending.then(|| {
            conn.opened_pending = false;
            conn.id()
        });
        self.note_opened(opened);
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
                    self.timewait_unfollowed += 1;
                }
            }
            self.ready.push(conn.record(
                self.figures.remove(&cookie).unwrap_or_default(),
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
            Kind::SendReset { .. } => self.on_reset(r, true),
            Kind::ReceiveReset { .. } => self.on_reset(r, false),
        }
    }

    /// Starts following a socket first seen in this step: its role, and
    /// whether this step is its birth.
    fn track_new(&mut self, r: &Record, old: TcpState, new: TcpState) {
        use TcpState::{Close, Established, Listen, NewSynRecv, SynRecv, SynSent};
        let (role, born) = match (old, new) {
            (Close, SynSent) => (Role::Client, true),
            // Creation, or (born on the last ACK and made ESTABLISHED
            // at once) its first step if creation's record was left out.
            (Listen | NewSynRecv, SynRecv) | (SynRecv, Established) => (Role::Server, true),
            // Connect's record left out: this one dates it.
            (SynSent, _) => (Role::Client, r.since_ns.is_some()),
            (SynRecv | NewSynRecv, _) => (Role::Server, false),
            _ if self.listeners.contains_key(&(r.netns, r.lport)) => (Role::Server, false),
            _ => (Role::Unknown, false),
        };
        let mut conn = Conn::from_record(r, old, role, born);
        if conn.owner.get().is_none() && role == Role::Server {
            // Provisional: the process that created the listener did
            // not necessarily accept this socket (prefork servers).
            conn.owner = KeptOwner::new(self.listeners.get(&(r.netns, r.lport)).copied().flatten());
        }
        conn.opened_pending = born;
        self.pass_opened(&mut conn, false);
        self.insert(r.cookie, conn);
    }

    fn on_transition(&mut self, r: &Record, old: TcpState, new: TcpState) {
        use TcpState::{
            Close, CloseWait, Closing, Established, FinWait1, FinWait2, Listen, SynRecv, SynSent,
        };
        if new == Listen {
            let owner = r.owner;
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
            self.track_new(r, old, new);
        }
        if new == Established && matches!(old, SynSent | SynRecv) {
            // Its endpoints are known from here on (a connect's first
            // step has no local port yet).
            self.end_reused_timewait(r);
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
            conn.owner = KeptOwner::new(Some(o));
            conn.owner_known = true;
        }
        if let Some(t) = r.tcp {
            // The first closing act's.
            let kept = self.figures.entry(r.cookie).or_default();
            kept.tcp = kept.tcp.or(Some(t));
        }
        if let Some(n) = r.net {
            // The full socket's end.
            self.figures.entry(r.cookie).or_default().net = Some(n);
        }
        let opened = (conn.opened_pending && conn.owner_known).then(|| {
            conn.opened_pending = false;
            conn.id()
        });
        match (old, new) {
            (Established | SynRecv, FinWait1) if conn.closed_by.is_none() => {
                conn.closed_by = Some(ClosedBy::Local);
            }
            (Established | SynRecv, CloseWait) if conn.closed_by.is_none() => {
                conn.closed_by = Some(ClosedBy::Remote);
            }
            // FIN_WAIT1 -> CLOSING, or leaving CLOSING when that step was
            // missed (a lost or skipped record): the FINs crossed.
            (FinWait1, Closing) | (Closing, _)
                if matches!(conn.closed_by, None | Some(ClosedBy::Local)) =>
            {
                conn.closed_by = Some(ClosedBy::Simultaneous);
            }
            // The deciding step was missed (seen mid-life, or lost): a closing
            // state still tells who sent the first FIN.
            _ if conn.closed_by.is_none() => conn.closed_by = closer_implied_by(old),
            _ => {}
        }
        self.note_opened(opened);
        if new == Close {
            self.closed(r.cookie, old, now, r.peer_fin, r.no_timewait);
        }
    }

    /// The full socket reached CLOSE: decide what must be learned before
    /// its record can be written.
    /// `peer_fin`: whether the peer's FIN had arrived when the full socket
    /// closed (`None`: not known). `no_timewait`: the kernel found no
    /// timewait socket in its place.
    fn closed(
        &mut self,
        cookie: u64,
        from: TcpState,
        at_ns: u64,
        peer_fin: Option<bool>,
        no_timewait: bool,
    ) {
        let Some(conn) = self.conns.get_mut(&cookie) else {
            return;
        };
        // FIN_WAIT2 and CLOSING are the states a timewait socket replaces;
        // a RST rules it out.
        let owed =
            matches!(from, TcpState::FinWait2 | TcpState::Closing) && conn.reset_local.is_none();
        // Owed one and none was made: the TIME_WAIT table was full. Nothing
        // lingers; no sock_diag answer could say more.
        if owed && no_timewait {
            conn.time_wait_refused = true;
            if from == TcpState::FinWait2 && peer_fin == Some(true) {
                conn.fin_wait2_end = Some(Fw2End::PeerFin);
            }
        }
        let successor = owed && !no_timewait;
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

    /// Writes the records of sockets whose grace period has passed.
    pub fn tick(&mut self, now_ns: u64) {
        self.expire_timewaits(now_ns);
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
}

#[cfg(test)]
mod tests;
