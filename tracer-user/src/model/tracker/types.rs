//! The tracker's vocabulary: roles, who closed first, how FIN_WAIT2 ended, connections as the rest of the program sees them (ids, records, live sockets), and what it asks of and hears from sock_diag and the start-up snapshot.

use std::net::IpAddr;

use foldhash::{HashMap, HashSet};
use tracer_common::{NetFigures, TcpFigures, TcpState};

use crate::model::event::{Family, Owner};

/// A timewait socket's timer restarts at this when FIN_WAIT2 becomes
/// TIME_WAIT (`TCP_TIMEWAIT_LEN`), which dates the switch.
pub const TIMEWAIT_LEN_NS: u64 = 60_000_000_000;

/// How long a closed socket waits for the RST or destroy record that the
/// same kernel path writes right after the CLOSE (an abortive close traces
/// CLOSE first, then the RST); the destroy can come much later if the
/// application keeps the file open.
pub const CLOSE_GRACE_NS: u64 = 100_000_000;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
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

/// Why a connect failed: its handshake never completed (SYN_SENT ->
/// CLOSE), by the error the kernel left on the socket (`sk_err`, read at
/// that CLOSE). Discriminants index counts (0..COUNT).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum ConnectFailure {
    /// The peer answered the SYN with a RST (`ECONNREFUSED`): nothing
    /// listens on that port, or a firewall rejects.
    Refused = 0,
    /// The kernel's SYN retransmissions went unanswered and it gave up
    /// (`ETIMEDOUT`, after `net.ipv4.tcp_syn_retries`): the SYNs or the
    /// answers are dropped on the way.
    Timeout,
    /// An ICMP error said the host or network cannot be reached
    /// (`EHOSTUNREACH`, `ENETUNREACH`).
    Unreachable,
    /// The process closed the socket before the handshake completed, with
    /// no error on it: its own connect timeout gave up first, or the dial
    /// was cancelled.
    Abandoned,
    /// Another error, or none known (the socket's figures were not read:
    /// a kernel layout without them, or a recording older than them).
    Other,
}

impl ConnectFailure {
    pub const COUNT: usize = Self::Other as usize + 1;
    pub const ALL: [Self; Self::COUNT] = [
        Self::Refused,
        Self::Timeout,
        Self::Unreachable,
        Self::Abandoned,
        Self::Other,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
            Self::Abandoned => "abandoned",
            Self::Other => "other",
        }
    }

    /// The reason for the error the socket ended with (`None`: not read);
    /// `reset_by_peer`: a RST arrived, which says refused when the error
    /// is not known.
    pub fn of(error: Option<u16>, reset_by_peer: bool) -> Self {
        let Some(errno) = error else {
            return if reset_by_peer {
                Self::Refused
            } else {
                Self::Other
            };
        };
        match i32::from(errno) {
            libc::ECONNREFUSED => Self::Refused,
            libc::ETIMEDOUT => Self::Timeout,
            libc::EHOSTUNREACH | libc::ENETUNREACH => Self::Unreachable,
            0 if reset_by_peer => Self::Refused,
            0 => Self::Abandoned,
            _ => Self::Other,
        }
    }
}

/// What the TCP socket told of its traffic: at its first closing act
/// (kept from then to its record), and at its end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    pub tcp: Option<TcpFigures>,
    pub net: Option<NetFigures>,
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

/// Who a connection belongs to and where it goes: what aggregation groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnId {
    pub netns: u32,
    pub owner: Option<Owner>,
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

/// States in the order a lifecycle passes through them, for output.
pub(super) const LIFECYCLE_ORDER: [TcpState; 8] = [
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
pub(super) const NOT_ENTERED: u64 = u64::MAX;

impl Default for StateTimes {
    fn default() -> Self {
        Self {
            ns: [NOT_ENTERED; LIFECYCLE_ORDER.len()],
        }
    }
}

/// A state's slot in [`StateTimes`]; `None` for states no full socket
/// passes through mid-lifecycle (CLOSE, LISTEN, TIME_WAIT...).
pub(super) const fn slot(state: TcpState) -> Option<usize> {
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
    pub(super) fn enter(&mut self, state: TcpState) {
        if let Some(i) = slot(state)
            && self.ns[i] == NOT_ENTERED
        {
            self.ns[i] = 0;
        }
    }

    pub(super) fn add(&mut self, state: TcpState, ns: u64) {
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
    pub owner: Option<Owner>,
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
    /// The socket owed a TIME_WAIT (this side closed first, or the FINs
    /// crossed) but the kernel made no timewait socket for it: its
    /// TIME_WAIT table was full (`net.ipv4.tcp_max_tw_buckets`). The
    /// socket was freed at once; a late segment of the connection meets a
    /// RST instead of being absorbed.
    pub time_wait_refused: bool,
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
    /// The socket's account of its whole life (bytes, RTT,
    /// retransmissions, its error), read at its CLOSE; `None` if that step
    /// was not seen or the kernel could not read them.
    pub net: Option<NetFigures>,
    /// Set when the handshake never completed (SYN_SENT -> CLOSE).
    pub connect_failed: Option<ConnectFailure>,
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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Alive {
    /// Cookie -> state of every socket found (timewait sockets keep the
    /// cookie of the socket they replace).
    pub states: HashMap<u64, TcpState>,
    /// Namespaces whose every dump succeeded: only their sockets can be
    /// declared gone.
    pub netns: HashSet<u32>,
    /// The cookies in `states` that are timewait sockets: a FIN_WAIT2 one
    /// is an orphan whose full socket has closed, not a live socket.
    #[serde(default)]
    pub timewait: HashSet<u64>,
}

/// A socket found by the start-up sock_diag dump.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Seed {
    pub cookie: u64,
    pub netns: u32,
    pub family: Family,
    pub state: TcpState,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
    pub owner: Option<Owner>,
    /// What the sockets it was found with say (a listener on its local
    /// port makes it a server); used when no listener is known here.
    pub role: Role,
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

/// A socket to find by itself: its cookie and 4-tuple, as seen locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Wanted {
    pub cookie: u64,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
}

/// What the follower needs of a timewait socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TimewaitSighting {
    /// Its substate: FIN_WAIT2 or TIME_WAIT.
    pub state: TcpState,
    /// Boot-clock ns when the kernel reported it.
    pub seen_ns: u64,
    /// Milliseconds then left on its timer.
    pub expires_ms: u32,
}

/// Timewait sockets by cookie.
pub type Sightings = HashMap<u64, TimewaitSighting>;
