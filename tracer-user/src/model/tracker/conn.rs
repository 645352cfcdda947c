//! One tracked socket: where it is in its lifecycle, its owner kept compactly, and its record when it ends.

use std::net::IpAddr;

use tracer_common::TcpState;

use super::types::{
    ClosedBy, ConnId, ConnRecord, ConnectFailure, Figures, Fw2End, Role, StateTimes,
};
use crate::model::event::{Comm, Family, Owner, Record};

/// A connection's owner in the 32 bytes of an [`Owner`]: pid 0 (no
/// process has it) stands for none, saving the option's tag in every
/// tracked socket.
#[derive(Debug, Clone, Copy)]
pub(super) struct KeptOwner(Owner);

impl KeptOwner {
    pub(super) fn new(owner: Option<Owner>) -> Self {
        Self(owner.filter(|o| o.pid != 0).unwrap_or(Owner {
            pid: 0,
            comm: Comm::new([0; tracer_common::COMM_LEN]),
            cgroup_id: 0,
        }))
    }

    pub(super) fn get(self) -> Option<Owner> {
        (self.0.pid != 0).then_some(self.0)
    }
}

/// A TIME_WAIT socket still followed after its connection's record was
/// written, to time TIME_WAIT itself.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timewait {
    pub(super) id: ConnId,
    pub(super) since_ns: u64,
    pub(super) seen_ns: u64,
    pub(super) expires_ns: u64,
}

/// A date not known.
pub(super) const NOT_KNOWN: u64 = u64::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
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
pub(super) struct Conn {
    pub(super) netns: u32,
    pub(super) family: Family,
    pub(super) laddr: IpAddr,
    pub(super) lport: u16,
    pub(super) raddr: IpAddr,
    pub(super) rport: u16,
    pub(super) owner: KeptOwner,
    /// The owner is the process's own (seen in a record, or found holding
    /// the socket), not just inherited from the listener.
    pub(super) owner_known: bool,
    /// Its opening was seen but not yet passed on: it waits for the owner
    /// to be known, so that the opening and the close of one connection
    /// count in the same group.
    pub(super) opened_pending: bool,
    /// The opening was seen: the lifetime is real.
    pub(super) born: bool,
    pub(super) role: Role,
    pub(super) closed_by: Option<ClosedBy>,
    /// Side of the first RST seen: true = sent by this host.
    pub(super) reset_local: Option<bool>,
    pub(super) state: TcpState,
    /// When `state` was entered; [`NOT_KNOWN`] for a socket first seen
    /// mid-life. Never earlier than any step applied so far. (Not an
    /// `Option`: that would cost 8 bytes in every tracked socket.)
    pub(super) since_ns: u64,
    pub(super) first_ns: u64,
    /// The last transition applied, to recognise a duplicate record.
    pub(super) last_step: (TcpState, TcpState),
    pub(super) times: StateTimes,
    pub(super) fin_wait2_end: Option<Fw2End>,
    pub(super) time_wait: bool,
    /// As [`ConnRecord::time_wait_refused`].
    pub(super) time_wait_refused: bool,
    pub(super) complete: bool,
    pub(super) phase: Phase,
}

impl Conn {
    /// A socket first heard of through `r`, in `state` (its old state).
    /// A `born` one started there: at `r.since_ns` when the kernel left out
    /// the step that began it (connect), else at `r`.
    pub(super) fn from_record(r: &Record, state: TcpState, role: Role, born: bool) -> Self {
        let start = r.since_ns.unwrap_or(r.ts_ns).min(r.ts_ns);
        Self {
            netns: r.netns,
            family: r.family,
            laddr: r.laddr,
            lport: r.lport,
            raddr: r.raddr,
            rport: r.rport,
            owner: KeptOwner::new(r.owner),
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
            time_wait_refused: false,
            complete: born,
            phase: Phase::Live,
        }
    }

    pub(super) fn since(&self) -> Option<u64> {
        (self.since_ns != NOT_KNOWN).then_some(self.since_ns)
    }

    pub(super) fn id(&self) -> ConnId {
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
    pub(super) fn enter(&mut self, next: TcpState, now: u64) {
        if let Some(since) = self.since() {
            self.times.add(self.state, now.saturating_sub(since));
        }
        if next != TcpState::Close {
            self.times.enter(next);
        }
        self.state = next;
        self.since_ns = now;
    }

    pub(super) fn record(
        &self,
        figures: Figures,
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
            time_wait_refused: self.time_wait_refused,
            complete: self.complete,
            open_state,
            opened_seen: self.born,
            tcp: figures.tcp,
            net: figures.net,
            connect_failed: (self.last_step == (TcpState::SynSent, TcpState::Close)).then(|| {
                ConnectFailure::of(
                    figures.net.map(|n| n.error),
                    self.reset_local == Some(false),
                )
            }),
        }
    }
}

/// Who closed first, as implied by being in `state`: only the local-first
/// path passes FIN_WAIT1/FIN_WAIT2 without CLOSING.
pub(super) fn closer_implied_by(state: TcpState) -> Option<ClosedBy> {
    match state {
        TcpState::FinWait1 | TcpState::FinWait2 => Some(ClosedBy::Local),
        TcpState::CloseWait | TcpState::LastAck => Some(ClosedBy::Remote),
        TcpState::Closing => Some(ClosedBy::Simultaneous),
        _ => None,
    }
}
