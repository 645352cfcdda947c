//! Records and settings shared by the kernel programs and userspace: their byte layout is the ABI between the two.
#![no_std]
#![expect(
    clippy::pub_underscore_fields,
    reason = "explicit padding of #[repr(C)] types, public so both sides can build them"
)]

/// Length of a task's `comm`, NUL padded (kernel `TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// Slots in the kernel-side pid and port filters; a zero slot is unused.
pub const MAX_FILTER_PIDS: usize = 8;
pub const MAX_FILTER_PORTS: usize = 8;

/// Names of the objects in the eBPF object that userspace looks up.
pub const MAP_EVENTS: &str = "EVENTS";
pub const MAP_DROPS: &str = "DROPS";
pub const MAP_OWNERS: &str = "OWNERS";
pub const MAP_FAILED: &str = "FAILED";
pub const MAP_RING_PEAK: &str = "RING_PEAK";
pub const MAP_ENTRY_COUNTS: &str = "ENTRY_COUNTS";
pub const GLOBAL_CONFIG: &str = "CONFIG";

/// What a ring record reports. Discriminants are ABI: never renumber.
/// (2 was a destroy record, no longer written: the number stays taken.)
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `sock:inet_sock_set_state` on a TCP socket: `old_state` -> `new_state`.
    StateChange = 1,
    /// `tcp:tcp_send_reset`: this host sent a RST on the socket.
    SendReset = 3,
    /// `tcp:tcp_receive_reset`: the peer's RST arrived.
    ReceiveReset = 4,
    /// A socket's logged steps ([`Log`]): written when its full socket's
    /// life ends (the step to CLOSE) or its log fills.
    Log = 5,
}

impl EventKind {
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::StateChange),
            3 => Some(Self::SendReset),
            4 => Some(Self::ReceiveReset),
            5 => Some(Self::Log),
            _ => None,
        }
    }
}

/// Where an event's `tgid`/`comm` came from. Discriminants are ABI.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerSource {
    /// Nobody was recorded for the socket yet (e.g. an accepted socket before
    /// its first read): `tgid` is 0 and means nothing.
    Unknown = 0,
    /// The transition runs in the owning process (connect, close, shutdown,
    /// listen), so the current task is the owner.
    Current = 1,
    /// Taken from the per-cookie owner map, because the current task may be
    /// unrelated (softirq).
    Recorded = 2,
}

impl OwnerSource {
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Unknown),
            1 => Some(Self::Current),
            2 => Some(Self::Recorded),
            _ => None,
        }
    }
}

/// TCP states with the kernel's numbering (`include/net/tcp_states.h`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    NewSynRecv = 12,
    BoundInactive = 13,
}

impl TcpState {
    pub const fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Established,
            2 => Self::SynSent,
            3 => Self::SynRecv,
            4 => Self::FinWait1,
            5 => Self::FinWait2,
            6 => Self::TimeWait,
            7 => Self::Close,
            8 => Self::CloseWait,
            9 => Self::LastAck,
            10 => Self::Listen,
            11 => Self::Closing,
            12 => Self::NewSynRecv,
            13 => Self::BoundInactive,
            _ => return None,
        })
    }

    /// The kernel's name without the `TCP_` prefix, as printed everywhere.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::NewSynRecv => "NEW_SYN_RECV",
            Self::BoundInactive => "BOUND_INACTIVE",
        }
    }
}

/// One ring-buffer record. Widest fields first; `_pad` makes every byte explicit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_boot_ns()` when the hook ran.
    pub ts_ns: u64,
    /// Socket cookie: the one key shared with sock_diag and timewait sockets.
    pub cookie: u64,
    /// For a state change: when the socket entered `old_state`, as the
    /// owner map recorded it; 0 if unknown. For a [`Log`], the entry's
    /// `prior_ns`.
    pub since_ns: u64,
    /// Owner's cgroup v2 id (the inode of its cgroup directory); 0 if unknown.
    pub cgroup_id: u64,
    /// Local address; IPv4 uses the first 4 bytes, network order.
    pub saddr: [u8; 16],
    /// Remote address, same encoding as `saddr`.
    pub daddr: [u8; 16],
    /// Owner's comm, NUL padded; meaningless when `owner_source` is `Unknown`.
    pub comm: [u8; COMM_LEN],
    /// Owner's thread-group id (the userspace pid), 0 when unknown.
    pub tgid: u32,
    /// Inode number of the socket's network namespace (`/proc/PID/ns/net`),
    /// which is where sock_diag must be asked about it; 0 if unknown.
    pub netns: u32,
    /// Local port, host order.
    pub sport: u16,
    /// Remote port, host order.
    pub dport: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// An [`EventKind`].
    pub kind: u8,
    /// State before the transition; for other kinds, the socket's state.
    pub old_state: u8,
    /// State after the transition; 0 for other kinds.
    pub new_state: u8,
    /// An [`OwnerSource`].
    pub owner_source: u8,
    /// For a state change: 1 if the peer's FIN had arrived (the socket's
    /// `SOCK_DONE` flag, which `tcp_fin` sets), 0 if not, [`FIN_UNKNOWN`]
    /// if the flag could not be read. It tells a FIN_WAIT2 -> CLOSE that
    /// handed over to a TIME_WAIT socket from one that left an orphan in
    /// FIN_WAIT2. (`sk_shutdown` cannot: `close()` sets both bits.)
    pub fin_received: u8,
    /// 1 when `tcp` below was read (a state change leaving ESTABLISHED, or
    /// SYN_RECV for another state than ESTABLISHED: the connection's first
    /// closing act, or its reset).
    pub has_tcp: u8,
    /// For a state change from FIN_WAIT2 or CLOSING to CLOSE: 1 if no
    /// timewait socket took the full socket's place (see
    /// [`STEP_NO_TIMEWAIT`]); 0 otherwise, and when it could not be told.
    pub no_timewait: u8,
    pub _pad: [u8; 3],
    /// What the TCP socket knew of its own traffic at that moment.
    pub tcp: TcpFigures,
    /// For a state change to CLOSE (and a [`Log`] whose last step is one):
    /// the TCP socket's account of its whole life, read then.
    pub net: NetFigures,
}

/// A TCP socket's account of its whole life, read from `struct tcp_sock`
/// and `struct sock` once, at its step to CLOSE (the full socket's end:
/// a close, a reset, a handover to a timewait socket, or a connect that
/// failed). The counters TCP_INFO reports, without a hook on the I/O or
/// packet path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetFigures {
    /// `tcp_sock.bytes_acked`: bytes this side sent that the peer
    /// acknowledged (RFC 4898 `tcpEStatsAppHCThruOctetsAcked`).
    pub bytes_acked: u64,
    /// `tcp_sock.bytes_received`: bytes received in order (RFC 4898
    /// `tcpEStatsAppHCThruOctetsReceived`).
    pub bytes_received: u64,
    /// Smoothed round-trip time, microseconds (`srtt_us >> 3`); 0 if no
    /// RTT sample was ever taken.
    pub srtt_us: u32,
    /// Its mean deviation, microseconds (`mdev_us >> 2`, as TCP_INFO's
    /// `tcpi_rttvar`).
    pub rttvar_us: u32,
    /// `tcp_sock.total_retrans`: segments retransmitted over the life
    /// (SYNs included).
    pub retrans: u32,
    /// `sock.sk_err`: the error the socket ended with (an errno:
    /// `ECONNREFUSED` for a connect answered by a RST, `ETIMEDOUT` when
    /// retransmissions gave up, `EHOSTUNREACH`... from ICMP), 0 if none.
    pub error: u16,
    /// 1 when the figures were read; 0 otherwise (not a step to CLOSE, a
    /// socket that is not a full TCP one, or a kernel whose layout lacks
    /// a field).
    pub read: u8,
    pub _pad: u8,
}

/// A TCP socket's own account of its traffic, read from `struct tcp_sock`
/// when the connection leaves ESTABLISHED: how long ago data last moved
/// each way (`lsndtime`, `icsk_ack.lrcvtime`, converted from jiffies) and
/// how many data segments it carried (`data_segs_out`, `data_segs_in`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFigures {
    /// Milliseconds since this side last sent data (or since the
    /// connection was established, if it never did); saturates.
    pub send_age_ms: u32,
    /// Milliseconds since this side last received data (or since it was
    /// established); saturates.
    pub recv_age_ms: u32,
    /// Data segments sent.
    pub segs_out: u32,
    /// Data segments received.
    pub segs_in: u32,
}

/// [`Event::fin_received`] when it is not known.
pub const FIN_UNKNOWN: u8 = 0xff;

/// Steps a socket's entry logs before they are written to the ring: the
/// longest common lives take 5 (a client: CLOSE->SYN_SENT, ->ESTABLISHED,
/// ->FIN_WAIT1, ->FIN_WAIT2, ->CLOSE); a fuller log is written out early.
pub const LOG_STEPS: usize = 6;

/// [`Step::flags`]: the step ran in the owner's process (connect, listen,
/// close, shutdown), so the entry's owner was the current task.
pub const STEP_IN_OWNER: u8 = 1;
/// [`Step::flags`]: the entry's `tcp` figures were read at this step (the
/// connection left ESTABLISHED).
pub const STEP_TCP: u8 = 2;
/// [`Step::flags`]: this step, FIN_WAIT2 or CLOSING to CLOSE, found no
/// timewait socket holding the socket's endpoints and cookie in the
/// kernel's socket table, where `tcp_time_wait()` puts one before the full
/// socket's CLOSE is traced. The kernel made none: its TIME_WAIT table was
/// full (`net.ipv4.tcp_max_tw_buckets`, counted as `TCPTimeWaitOverflow`),
/// or the socket was reset. Not set when the table could not be read.
pub const STEP_NO_TIMEWAIT: u8 = 4;

/// One step of a socket's life as its entry logs it: a state change or a
/// RST on the full socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// `bpf_ktime_get_boot_ns()` when the hook ran.
    pub ts_ns: u64,
    /// An [`EventKind`]: `StateChange`, `SendReset` or `ReceiveReset`.
    pub kind: u8,
    /// As [`Event::old_state`].
    pub old_state: u8,
    /// As [`Event::new_state`].
    pub new_state: u8,
    /// As [`Event::fin_received`].
    pub fin_received: u8,
    /// [`STEP_IN_OWNER`], [`STEP_TCP`], [`STEP_NO_TIMEWAIT`].
    pub flags: u8,
    pub _pad: [u8; 3],
}

/// A socket's entry in the per-cookie map: who owns it, when it entered
/// its state, and (unless every transition is written at once) the steps
/// of its life not yet written to the ring, with what userspace needs to
/// read them while the socket lives: its endpoints and namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketEntry {
    /// The owner's cgroup v2 id when it was recorded.
    pub cgroup_id: u64,
    /// Boot-clock ns when the socket entered `since_state`.
    pub since_ns: u64,
    /// When the socket entered the first logged step's old state (the
    /// last step of the previous log); 0 if unknown.
    pub prior_ns: u64,
    /// Local and remote address as [`Event::saddr`], at the last step.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub comm: [u8; COMM_LEN],
    /// The TCP socket's figures when it left ESTABLISHED (see
    /// [`STEP_TCP`]).
    pub tcp: TcpFigures,
    pub tgid: u32,
    /// As [`Event::netns`].
    pub netns: u32,
    /// Logs of this socket written to the ring so far: tells a log read
    /// from the map from one already written.
    pub generation: u32,
    /// Local and remote port (host order), at the last step.
    pub sport: u16,
    pub dport: u16,
    /// `AF_INET` or `AF_INET6`; 0 before the first step is logged.
    pub family: u16,
    /// The state the socket is in since `since_ns`; 0 until a transition
    /// is seen with the entry present.
    pub since_state: u8,
    /// Steps in `steps`, at most [`LOG_STEPS`].
    pub steps_len: u8,
    pub _pad: [u8; 4],
    pub steps: [Step; LOG_STEPS],
}

impl SocketEntry {
    /// What a [`Log`] of this entry says of socket `cookie` besides its
    /// steps: endpoints, owner, namespace, the TCP figures, `since_ns` its
    /// `prior_ns`; written at `ts_ns`. The kernel writes it, and userspace
    /// reads a live entry as the same head.
    #[inline]
    #[must_use]
    pub const fn log_head(&self, cookie: u64, ts_ns: u64) -> Event {
        Event {
            ts_ns,
            cookie,
            since_ns: self.prior_ns,
            cgroup_id: self.cgroup_id,
            saddr: self.saddr,
            daddr: self.daddr,
            comm: self.comm,
            tgid: self.tgid,
            netns: self.netns,
            sport: self.sport,
            dport: self.dport,
            family: self.family,
            kind: EventKind::Log as u8,
            old_state: 0,
            new_state: 0,
            owner_source: if self.tgid == 0 {
                OwnerSource::Unknown as u8
            } else {
                OwnerSource::Recorded as u8
            },
            fin_received: FIN_UNKNOWN,
            has_tcp: 0,
            no_timewait: 0,
            _pad: [0; 3],
            tcp: self.tcp,
            net: NetFigures {
                bytes_acked: 0,
                bytes_received: 0,
                srtt_us: 0,
                rttvar_us: 0,
                retrans: 0,
                error: 0,
                read: 0,
                _pad: 0,
            },
        }
    }
}

/// A ring record of kind [`EventKind::Log`]: a socket's logged steps.
/// `head` says what an [`Event`] says of the socket (endpoints at the
/// time of writing, owner, namespace, the TCP figures); its `ts_ns` is
/// when the log was written, its `since_ns` the entry's `prior_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Log {
    pub head: Event,
    /// The entry's generation when the log was written.
    pub generation: u32,
    /// Steps in `steps`, at most [`LOG_STEPS`].
    pub steps_len: u8,
    pub _pad: [u8; 3],
    pub steps: [Step; LOG_STEPS],
}

/// Byte offsets of the fields the programs read, resolved from the running
/// kernel's BTF at load time so one object works across kernel layouts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `sock_common.skc_daddr` (u32, network order).
    pub daddr: u16,
    /// `sock_common.skc_rcv_saddr` (u32, network order).
    pub rcv_saddr: u16,
    /// `sock_common.skc_dport` (u16, network order).
    pub dport: u16,
    /// `sock_common.skc_num` (u16, host order).
    pub num: u16,
    /// `sock_common.skc_family` (u16).
    pub family: u16,
    /// `sock_common.skc_state` (u8).
    pub state: u16,
    /// `sock_common.skc_v6_daddr` (16 bytes).
    pub v6_daddr: u16,
    /// `sock_common.skc_v6_rcv_saddr` (16 bytes).
    pub v6_rcv_saddr: u16,
    /// `sock.sk_protocol` (u16).
    pub protocol: u16,
    /// `inet_sock.inet_sport` (u16, network order). Full sockets only: it
    /// keeps the local port after `inet_put_port()` zeroes `skc_num`, which
    /// happens just before the transition to CLOSE is traced.
    pub inet_sport: u16,
    /// `sock_common.skc_net.net` (`struct net *`), or [`NO_OFFSET`] on a
    /// kernel without network namespaces.
    pub net: u16,
    /// `net.ns.inum` (u32), or [`NO_OFFSET`].
    pub net_inum: u16,
    /// `sock_common.skc_flags` (unsigned long), or [`NO_OFFSET`].
    pub flags: u16,
    /// The bit of `SOCK_DONE` in it (from `enum sock_flags`).
    pub flag_done_bit: u16,
    /// The bit of `SOCK_DEAD` (orphaned: closed by its process).
    pub flag_dead_bit: u16,
    /// `task_struct.group_leader` (pointer): the process's main thread,
    /// whose `comm` is the process name (`/proc/PID/comm`).
    pub group_leader: u16,
    /// `task_struct.comm` (16 bytes).
    pub task_comm: u16,
    /// `tcp_sock.lsndtime` (u32, jiffies).
    pub lsndtime: u16,
    /// `tcp_sock.inet_conn.icsk_ack.lrcvtime` (u32, jiffies).
    pub lrcvtime: u16,
    /// `tcp_sock.data_segs_out` (u32).
    pub data_segs_out: u16,
    /// `tcp_sock.data_segs_in` (u32).
    pub data_segs_in: u16,
    /// `tcp_sock.bytes_acked` (u64).
    pub bytes_acked: u16,
    /// `tcp_sock.bytes_received` (u64).
    pub bytes_received: u16,
    /// `tcp_sock.srtt_us` (u32, microseconds << 3).
    pub srtt_us: u16,
    /// `tcp_sock.mdev_us` (u32, microseconds << 2).
    pub mdev_us: u16,
    /// `tcp_sock.total_retrans` (u32).
    pub total_retrans: u16,
    /// `sock.sk_err` (int).
    pub sk_err: u16,
    /// `sock_common.skc_hash` (u32): the socket's bucket in the socket
    /// table, masked.
    pub skc_hash: u16,
    /// `sock_common.skc_nulls_node` (`struct hlist_nulls_node`): a socket's
    /// link in its bucket's chain.
    pub nulls_node: u16,
    /// `sock_common.skc_cookie` (u64): a timewait socket keeps its full
    /// socket's.
    pub skc_cookie: u16,
    /// `net.ipv4.tcp_death_row.hashinfo` (`struct inet_hashinfo *`): the
    /// table `tcp_time_wait()` puts a timewait socket in; [`NO_OFFSET`] on
    /// a kernel that has none there (before 6.1), and then no check.
    pub death_row_hashinfo: u16,
    /// `inet_hashinfo.ehash` (`struct inet_ehash_bucket *`, 8-byte buckets).
    pub ehash: u16,
    /// `inet_hashinfo.ehash_mask` (u32).
    pub ehash_mask: u16,
    pub _pad: u16,
}

/// Marks a field this kernel does not have.
pub const NO_OFFSET: u16 = u16::MAX;

/// Entries of the per-cookie owner map as compiled: LRU, so on a host with
/// more live sockets than this the stalest entries are recycled. Userspace
/// sizes it to `--max-sockets` at load time, so the kernel remembers an
/// owner for every socket the tracker can follow.
pub const OWNERS_MAX_ENTRIES: u32 = 65536;

/// Slots of the per-CPU `FAILED` map: losses the kernel side counts.
/// Indices are ABI: never renumber.
pub mod failed {
    /// Program runs that ended early because a kernel read failed.
    pub const RUN: u32 = 0;
    /// Owner entries that could not be created (the map refused the
    /// insert): those sockets' softirq records name no owner.
    pub const OWNER_INSERT: u32 = 1;
    /// Records skipped under a pid filter because their socket's owner was
    /// not known (no entry: recycled, or never made), so the filter could
    /// not tell whether they belong to the pids asked for.
    pub const UNATTRIBUTED: u32 = 2;
    /// Steps from FIN_WAIT2 or CLOSING to CLOSE where whether a timewait
    /// socket took the full socket's place could not be told (a failed
    /// read, or an ambiguous bucket): those are taken to have had one, as
    /// almost all do.
    pub const TIMEWAIT_UNCHECKED: u32 = 3;
    /// Slots in all.
    pub const SLOTS: u32 = 4;
}

/// Slots of the per-CPU `ENTRY_COUNTS` map: entries of the per-socket map
/// made and freed. What is neither freed nor in the map was recycled by
/// the LRU map when it was full (more sockets than `--max-sockets`).
/// Indices are ABI: never renumber.
pub mod entry_counts {
    /// Entries inserted.
    pub const MADE: u32 = 0;
    /// Entries deleted at their socket's end (its step to CLOSE, or its
    /// destruction where entries outlive CLOSE).
    pub const FREED: u32 = 1;
    /// Not an entry count: runs of the state-change program the kernel
    /// skipped (it was already running on that CPU, interrupted by a
    /// softirq) that its second copy made instead. The kernel counts them
    /// among the first program's recursion misses; they were not lost.
    pub const RESCUED: u32 = 2;
    /// Slots in all.
    pub const SLOTS: u32 = 3;
}

/// Load-time settings of the kernel programs (a read-only global).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Trace only sockets owned by these tgids; all zero = no pid filter.
    pub pids: [u32; MAX_FILTER_PIDS],
    /// Trace only sockets with one of these ports, local or remote; all zero = any.
    pub ports: [u16; MAX_FILTER_PORTS],
    /// `AF_INET` or `AF_INET6` to trace one family; 0 for both.
    pub family: u16,
    /// Non-zero: a record for every transition as it happens (`watch
    /// --transitions`). Zero: each socket's steps are logged in its map
    /// entry, which userspace reads while the socket lives, and written to
    /// the ring as one [`Log`] when its full socket's life ends: one record
    /// per socket at the same answer.
    pub every_transition: u8,
    pub _pad: u8,
    /// Ring fill level (bytes) from which a record forces a consumer wakeup;
    /// below it records are written silently and userspace drains on a timer.
    pub wakeup_bytes: u32,
    /// Microseconds per jiffy (1_000_000 / CONFIG_HZ), to turn the TCP
    /// socket's jiffy stamps into [`TcpFigures`] milliseconds.
    pub jiffy_us: u32,
    pub offsets: SockOffsets,
}

// The structs must have no implicit padding: every byte is a named field.
const _: () = assert!(size_of::<Event>() == 152);
const _: () = assert!(
    size_of::<Event>()
        == 8 + 8
            + 8
            + 8
            + 16
            + 16
            + COMM_LEN
            + 4
            + 4
            + 2
            + 2
            + 2
            + 1
            + 1
            + 1
            + 1
            + 1
            + 1
            + 1
            + 3
            + size_of::<TcpFigures>()
            + size_of::<NetFigures>()
);
const _: () = assert!(size_of::<TcpFigures>() == 4 * 4);
const _: () = assert!(size_of::<NetFigures>() == 8 + 8 + 4 + 4 + 4 + 2 + 1 + 1);
const _: () = assert!(size_of::<Step>() == 8 + 5 + 3);
const _: () = assert!(
    size_of::<SocketEntry>()
        == 8 + 8
            + 8
            + 16
            + 16
            + COMM_LEN
            + size_of::<TcpFigures>()
            + 4
            + 4
            + 4
            + 2
            + 2
            + 2
            + 1
            + 1
            + 4
            + LOG_STEPS * size_of::<Step>()
);
const _: () =
    assert!(size_of::<Log>() == size_of::<Event>() + 4 + 1 + 3 + LOG_STEPS * size_of::<Step>());
const _: () = assert!(size_of::<SockOffsets>() == 34 * 2);
const _: () = assert!(
    size_of::<Config>()
        == 4 * MAX_FILTER_PIDS
            + 2 * MAX_FILTER_PORTS
            + 2
            + 1
            + 1
            + 4
            + 4
            + size_of::<SockOffsets>()
);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `repr(C)`, no implicit padding (asserted above).
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::SocketEntry {}
    unsafe impl aya::Pod for super::Log {}
    unsafe impl aya::Pod for super::Config {}
}
