//! Kernel programs: TCP state changes, destroys and resets as ring records keyed by socket cookie, plus a per-cookie owner map fed by process-context hooks.
#![no_std]
#![no_main]
// `atomic_xadd`: core's AtomicU64::fetch_add is not offered on the BPF target,
// whose atomics lack compare-and-swap, but a plain atomic add is a BPF insn.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
    ptr::{addr_of, read_volatile},
};

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_task, bpf_get_socket_cookie, bpf_jiffies64,
            bpf_ktime_get_boot_ns, bpf_skc_to_tcp_sock,
        },
    },
    macros::{btf_tracepoint, map},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use tracer_common::{
    AF_INET, AF_INET6, COMM_LEN, Config, Event, EventKind, FIN_UNKNOWN, IPPROTO_TCP,
    MAX_FILTER_PIDS, MAX_FILTER_PORTS, NO_OFFSET, OWNERS_MAX_ENTRIES, Owner, OwnerSource,
    SockOffsets, TcpFigures, TcpState,
};

/// Set by userspace before load (`EbpfLoader::set_global`). The non-zero
/// placeholder keeps it in `.rodata`, which aya freezes, so the verifier sees
/// every field as a constant and prunes disabled filters.
#[unsafe(no_mangle)]
static CONFIG: Config = Config {
    pids: [0; MAX_FILTER_PIDS],
    ports: [0; MAX_FILTER_PORTS],
    family: 0,
    every_transition: 1,
    _pad: 0,
    wakeup_bytes: u32::MAX,
    offsets: SockOffsets {
        daddr: 0,
        rcv_saddr: 0,
        dport: 0,
        num: 0,
        family: 0,
        state: 0,
        v6_daddr: 0,
        v6_rcv_saddr: 0,
        protocol: 0,
        inet_sport: 0,
        net: NO_OFFSET,
        net_inum: NO_OFFSET,
        flags: NO_OFFSET,
        flag_done_bit: 0,
        flag_dead_bit: 0,
        group_leader: NO_OFFSET,
        task_comm: NO_OFFSET,
        lsndtime: NO_OFFSET,
        lrcvtime: NO_OFFSET,
        data_segs_out: NO_OFFSET,
        data_segs_in: NO_OFFSET,
        _pad: 0,
    },
    jiffy_us: 0,
};

/// Size is replaced at load time from `--ring-bytes`.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Records lost because the ring was full, per CPU; slot 0.
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Highest ring fill level (bytes) seen by a writer, per CPU; userspace
/// reads and resets it to show how close the ring came to dropping.
#[map]
static RING_PEAK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Cookie -> who owns the socket and when it entered its state.
/// (Socket-local storage was measured too: its lookups are cheaper, but
/// creating and freeing an entry for every socket cost four times what
/// an LRU insert and delete do, and connections that live for
/// milliseconds are what this tool must keep up with.)
#[map]
static OWNERS: LruHashMap<u64, Owner> = LruHashMap::with_max_entries(OWNERS_MAX_ENTRIES, 0);

/// The socket's owner entry, if it has one.
#[inline(always)]
fn owner_of(cookie: u64) -> Option<&'static mut Owner> {
    OWNERS.get_ptr_mut(&cookie).map(|p| unsafe { &mut *p })
}

/// Gives the socket the owner entry `init`; false if that failed
/// (allocation failure: the owner then stays unknown for softirq events).
#[inline(always)]
fn create_owner(cookie: u64, init: &Owner) -> bool {
    OWNERS.insert(&cookie, init, 0).is_ok()
}

macro_rules! config {
    ($($field:tt)+) => {
        // Volatile: the static's placeholder value must not be constant-folded
        // into the program; the loaded value is what counts.
        unsafe { read_volatile(addr_of!(CONFIG.$($field)+)) }
    };
}

/// Local and remote endpoint of a socket, as the event wants them.
struct Tuple {
    family: u16,
    sport: u16,
    dport: u16,
}

/// The owner to report for an event.
struct OwnerInfo {
    tgid: u32,
    comm: [u8; COMM_LEN],
    cgroup_id: u64,
    source: OwnerSource,
}

impl OwnerInfo {
    const UNKNOWN: Self = Self {
        tgid: 0,
        comm: [0; COMM_LEN],
        cgroup_id: 0,
        source: OwnerSource::Unknown,
    };
}

/// Reads a `T` at `base + offset` with a plain load. The programs are
/// `tp_btf`, so the verifier knows `base` is a `struct sock` and checks each
/// offset (a constant, from frozen `.rodata`) against the kernel's BTF; the
/// JIT emits a load that cannot fault. Several times cheaper than a
/// `bpf_probe_read_kernel` call per field, which mattered: these programs
/// sit on every state change, send and receive.
#[inline(always)]
fn field<T>(base: *const u8, offset: u16) -> T {
    unsafe { read_volatile(base.wrapping_add(offset as usize).cast::<T>()) }
}

/// Reads a `T` at `base + offset` through the helper, for fields outside
/// what the BTF type of `base` covers.
#[inline(always)]
fn probe<T>(base: *const u8, offset: u16) -> Result<T, i32> {
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
}

/// The socket's family if it is inet and passes the family filter.
#[inline(always)]
fn traced_family(sk: *const u8) -> Option<u16> {
    let family: u16 = field(sk, config!(offsets.family));
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    let want_family = config!(family);
    if want_family != 0 && want_family != family {
        return None;
    }
    Some(family)
}

/// Local and remote port (host order) if they pass the port filter.
/// `full_sock`: `sk` is a full socket, not a request or timewait one, so
/// `inet_sport` can stand in when `skc_num` was already zeroed on the way to
/// CLOSE (otherwise the closing transitions would lose their local port and
/// escape a `--port` filter on it).
#[inline(always)]
fn traced_ports(sk: *const u8, full_sock: bool) -> Result<Option<(u16, u16)>, i32> {
    let mut sport: u16 = field(sk, config!(offsets.num));
    if sport == 0 && full_sock {
        // In `struct inet_sock`, beyond the `struct sock` the BTF type covers.
        sport = u16::from_be(probe::<u16>(sk, config!(offsets.inet_sport))?);
    }
    let dport = u16::from_be(field::<u16>(sk, config!(offsets.dport)));
    Ok(port_allowed(sport, dport).then_some((sport, dport)))
}

/// Family and ports of a socket that passes the family and port filters.
#[inline(always)]
fn tuple_if_traced(sk: *const u8, full_sock: bool) -> Result<Option<Tuple>, i32> {
    let Some(family) = traced_family(sk) else {
        return Ok(None);
    };
    let Some((sport, dport)) = traced_ports(sk, full_sock)? else {
        return Ok(None);
    };
    Ok(Some(Tuple {
        family,
        sport,
        dport,
    }))
}

#[inline(always)]
fn port_allowed(sport: u16, dport: u16) -> bool {
    if config!(ports[0]) == 0 {
        return true;
    }
    let mut i = 0;
    while i < MAX_FILTER_PORTS {
        let port = config!(ports[i]);
        if port != 0 && (port == sport || port == dport) {
            return true;
        }
        i += 1;
    }
    false
}

#[inline(always)]
fn pid_allowed(tgid: u32) -> bool {
    if config!(pids[0]) == 0 {
        return true;
    }
    let mut i = 0;
    while i < MAX_FILTER_PIDS {
        let pid = config!(pids[i]);
        if pid != 0 && pid == tgid {
            return true;
        }
        i += 1;
    }
    false
}

#[inline(always)]
fn is_tcp(sk: *const u8) -> bool {
    field::<u16>(sk, config!(offsets.protocol)) == IPPROTO_TCP
}

/// Inode number of the socket's network namespace; 0 if the kernel has
/// none or the read fails.
#[inline(always)]
fn netns_of(sk: *const u8) -> u32 {
    let net_offset = config!(offsets.net);
    if net_offset == NO_OFFSET {
        return 0;
    }
    // A pointer member: the verifier types the loaded value `struct net *`.
    let net: *const u8 = field(sk, net_offset);
    if net.is_null() {
        return 0;
    }
    field::<u32>(net, config!(offsets.net_inum))
}

/// Whether the peer's FIN has arrived (`SOCK_DONE`), or [`FIN_UNKNOWN`].
#[inline(always)]
fn fin_received(sk: *const u8) -> u8 {
    match sock_flag(sk, config!(offsets.flag_done_bit)) {
        Some(set) => set as u8,
        None => FIN_UNKNOWN,
    }
}

/// Bit `bit` of the socket's `skc_flags`; `None` if they cannot be read.
#[inline(always)]
fn sock_flag(sk: *const u8, bit: u16) -> Option<bool> {
    let offset = config!(offsets.flags);
    if offset == NO_OFFSET {
        return None;
    }
    let flags: u64 = field(sk, offset);
    Some((flags >> (bit & 63)) & 1 != 0)
}

#[inline(always)]
fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

#[inline(always)]
fn cookie_of(sk: *const u8) -> u64 {
    unsafe { bpf_get_socket_cookie(sk.cast_mut().cast::<c_void>()) }
}

/// The owner as recorded for the socket, without trusting the current task.
#[inline(always)]
fn recorded_owner(cookie: u64) -> OwnerInfo {
    match owner_of(cookie) {
        Some(owner) => recorded(owner),
        None => OwnerInfo::UNKNOWN,
    }
}

#[inline(always)]
fn recorded(owner: &Owner) -> OwnerInfo {
    OwnerInfo {
        tgid: owner.tgid,
        comm: owner.comm,
        cgroup_id: owner.cgroup_id,
        source: OwnerSource::Recorded,
    }
}

/// What a state change learned from and left in the owner entry.
struct Step {
    owner: OwnerInfo,
    /// When the socket entered the old state; 0 if not recorded.
    since_ns: u64,
    /// The entry holds the new state's entry time: the next record can
    /// carry it, so this one may be skipped.
    recorded: bool,
}

/// Moves the socket's recorded state on to `new` at `now`, returning when
/// it had entered `old`.
#[inline(always)]
fn advance(owner: &mut Owner, old: u8, new: u8, now: u64) -> u64 {
    let since = if owner.since_state == old {
        owner.since_ns
    } else {
        0
    };
    owner.since_state = new;
    owner.since_ns = now;
    since
}

/// A state change in softirq or timer context: the recorded owner, if any.
#[inline(always)]
fn step_recorded(cookie: u64, old: u8, new: u8, now: u64) -> Step {
    match owner_of(cookie) {
        Some(owner) => Step {
            since_ns: advance(owner, old, new, now),
            owner: recorded(owner),
            recorded: true,
        },
        None => Step {
            owner: OwnerInfo::UNKNOWN,
            since_ns: 0,
            recorded: false,
        },
    }
}

/// A state change inside a syscall of the owner: the current task is
/// recorded as the owner.
#[inline(always)]
fn step_current(cookie: u64, tgid: u32, old: u8, new: u8, now: u64) -> Step {
    if let Some(owner) = owner_of(cookie) {
        adopt(owner, tgid);
        return Step {
            since_ns: advance(owner, old, new, now),
            owner: current(owner),
            recorded: true,
        };
    }
    let owner = new_owner(tgid, new, now);
    let recorded = create_owner(cookie, &owner);
    Step {
        owner: current(&owner),
        since_ns: 0,
        recorded,
    }
}

/// Makes `tgid` the owner; the comm and cgroup are only fetched when the
/// socket changes hands.
#[inline(always)]
fn adopt(owner: &mut Owner, tgid: u32) {
    if owner.tgid != tgid {
        owner.tgid = tgid;
        owner.comm = process_comm();
        owner.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    }
}

/// The current process's name: its main thread's `comm`, which is what
/// `/proc/PID/comm` and `ps` show. `bpf_get_current_comm()` is the
/// current *thread's* name (`tokio-runtime-w`, `http-nio-8080-e`), which
/// would split one program into groups per thread; it is only the
/// fallback when the leader cannot be read.
#[inline(always)]
fn process_comm() -> [u8; COMM_LEN] {
    let (leader_offset, comm_offset) = (config!(offsets.group_leader), config!(offsets.task_comm));
    if leader_offset != NO_OFFSET && comm_offset != NO_OFFSET {
        // SAFETY: the helper returns the current task's address, valid for
        // this program run; both reads go through bpf_probe_read_kernel,
        // which checks the addresses and fails rather than faults.
        let task = unsafe { bpf_get_current_task() } as *const u8;
        if let Ok(leader) = probe::<u64>(task, leader_offset)
            && let Ok(comm) = probe::<[u8; COMM_LEN]>(leader as *const u8, comm_offset)
        {
            return comm;
        }
    }
    bpf_get_current_comm().unwrap_or([0; COMM_LEN])
}

/// The TCP socket's own figures, read when a connection leaves
/// ESTABLISHED or SYN_RECV. `None` when the socket is not a full TCP
/// socket or the offsets are unknown.
#[inline(always)]
fn tcp_figures(sk: *const u8) -> Option<TcpFigures> {
    let lsndtime = config!(offsets.lsndtime);
    let lrcvtime = config!(offsets.lrcvtime);
    let segs_out = config!(offsets.data_segs_out);
    let segs_in = config!(offsets.data_segs_in);
    if lsndtime == NO_OFFSET
        || lrcvtime == NO_OFFSET
        || segs_out == NO_OFFSET
        || segs_in == NO_OFFSET
    {
        return None;
    }
    // SAFETY: the helper checks that `sk` is a full TCP socket and returns
    // it typed as `struct tcp_sock *` (or NULL), so the verifier checks
    // each plain load below against that type.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk.cast_mut().cast::<c_void>()) } as *const u8;
    if tp.is_null() {
        return None;
    }
    // `tcp_jiffies32` is the low 32 bits of jiffies; the stamps wrap with it.
    let now = unsafe { bpf_jiffies64() } as u32;
    let jiffy_us = u64::from(config!(jiffy_us));
    let age_ms = |stamp: u32| -> u32 {
        let ms = u64::from(now.wrapping_sub(stamp)) * jiffy_us / 1000;
        if ms > u64::from(u32::MAX) {
            u32::MAX
        } else {
            ms as u32
        }
    };
    Some(TcpFigures {
        send_age_ms: age_ms(field(tp, lsndtime)),
        recv_age_ms: age_ms(field(tp, lrcvtime)),
        segs_out: field(tp, segs_out),
        segs_in: field(tp, segs_in),
    })
}

#[inline(always)]
fn current(owner: &Owner) -> OwnerInfo {
    OwnerInfo {
        tgid: owner.tgid,
        comm: owner.comm,
        cgroup_id: owner.cgroup_id,
        source: OwnerSource::Current,
    }
}

/// The current task as the owner of a socket in `state` since `since_ns`.
#[inline(always)]
fn new_owner(tgid: u32, state: u8, since_ns: u64) -> Owner {
    Owner {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        since_ns,
        comm: process_comm(),
        tgid,
        since_state: state,
        _pad: [0; 3],
    }
}

/// Steps whose record can be left out (see `Config::every_transition`):
/// the next record's `since_ns` dates them. Connect and an accepted
/// socket's creation (its SYN_RECV lasts no time: it is born on the final
/// ACK and made ESTABLISHED at once); an orphan's FIN_WAIT1 -> FIN_WAIT2,
/// which hands over to a timewait socket in the same instant.
#[inline(always)]
fn skippable(sk: *const u8, old: u8, new: u8, recorded: bool) -> bool {
    const CLOSE: u8 = TcpState::Close as u8;
    const SYN_SENT: u8 = TcpState::SynSent as u8;
    const LISTEN: u8 = TcpState::Listen as u8;
    const SYN_RECV: u8 = TcpState::SynRecv as u8;
    const FIN_WAIT1: u8 = TcpState::FinWait1 as u8;
    const FIN_WAIT2: u8 = TcpState::FinWait2 as u8;
    match (old, new) {
        (CLOSE, SYN_SENT) => recorded,
        (LISTEN, SYN_RECV) => true,
        (FIN_WAIT1, FIN_WAIT2) => {
            recorded && sock_flag(sk, config!(offsets.flag_dead_bit)) == Some(true)
        }
        _ => false,
    }
}

/// Transitions that only happen inside a syscall of the owning process, so
/// the current task is the owner: connect, listen, close and shutdown.
#[inline(always)]
fn runs_in_owner(old: u8, new: u8) -> bool {
    const CLOSE: u8 = TcpState::Close as u8;
    const SYN_SENT: u8 = TcpState::SynSent as u8;
    const LISTEN: u8 = TcpState::Listen as u8;
    const ESTABLISHED: u8 = TcpState::Established as u8;
    const FIN_WAIT1: u8 = TcpState::FinWait1 as u8;
    const CLOSE_WAIT: u8 = TcpState::CloseWait as u8;
    const LAST_ACK: u8 = TcpState::LastAck as u8;
    const SYN_RECV: u8 = TcpState::SynRecv as u8;
    matches!(
        (old, new),
        (CLOSE, SYN_SENT)
            | (CLOSE, LISTEN)
            | (LISTEN, CLOSE)
            | (ESTABLISHED, FIN_WAIT1)
            | (SYN_RECV, FIN_WAIT1)
            | (CLOSE_WAIT, LAST_ACK)
    )
}

#[inline(always)]
fn count_drop() {
    if let Some(slot) = DROPS.get_ptr_mut(0) {
        // Atomic: a softirq program can interrupt a process-context one on
        // the same CPU.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, 1) };
    }
}

/// An IPv4 address (network order, as loaded) in the record's 16 bytes.
#[inline(always)]
fn v4_addr(raw: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&raw.to_ne_bytes());
    out
}

/// An IPv6 address in two 8-byte loads (the widest a BPF load goes).
#[inline(always)]
fn v6_addr(sk: *const u8, offset: u16) -> [u8; 16] {
    let high: u64 = field(sk, offset);
    let low: u64 = field(sk, offset + 8);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&high.to_ne_bytes());
    out[8..].copy_from_slice(&low.to_ne_bytes());
    out
}

/// Writes one record. Below the wakeup threshold the record is written
/// without waking the consumer, which drains on a short timer: a wakeup per
/// record is what makes tracing expensive at high connection rates.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn emit(
    sk: *const u8,
    kind: EventKind,
    cookie: u64,
    tuple: &Tuple,
    old_state: u8,
    new_state: u8,
    owner: &OwnerInfo,
    fin_received: u8,
    since_ns: u64,
    ts_ns: u64,
    tcp: Option<TcpFigures>,
) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count_drop();
        return;
    };
    let (saddr, daddr) = if tuple.family == AF_INET {
        (
            v4_addr(field(sk, config!(offsets.rcv_saddr))),
            v4_addr(field(sk, config!(offsets.daddr))),
        )
    } else {
        (
            v6_addr(sk, config!(offsets.v6_rcv_saddr)),
            v6_addr(sk, config!(offsets.v6_daddr)),
        )
    };
    entry.write(Event {
        ts_ns,
        cookie,
        since_ns,
        cgroup_id: owner.cgroup_id,
        saddr,
        daddr,
        comm: owner.comm,
        tgid: owner.tgid,
        netns: netns_of(sk),
        sport: tuple.sport,
        dport: tuple.dport,
        family: tuple.family,
        kind: kind as u8,
        old_state,
        new_state,
        owner_source: owner.source as u8,
        fin_received,
        has_tcp: tcp.is_some() as u8,
        _pad: [0; 4],
        tcp: tcp.unwrap_or_default(),
    });
    let wakeup_bytes = config!(wakeup_bytes) as u64;
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if let Some(peak) = RING_PEAK.get_ptr_mut(0) {
        // Per CPU: a lost race between nested writers only lowers a watermark.
        unsafe {
            if avail > *peak {
                *peak = avail;
            }
        }
    }
    let flags = if avail >= wakeup_bytes {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
}

/// `trace_inet_sock_set_state()` (include/trace/events/sock.h), fired by
/// `inet_sk_state_store()`/`inet_sk_set_state()` on every state change of an
/// inet socket; `tp_btf` so the `struct sock *` is typed and the cookie helper
/// can take it.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let _ = try_inet_sock_set_state(&ctx);
    0
}

fn try_inet_sock_set_state(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let sk: *const u8 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if sk.is_null() || !is_tcp(sk) {
        return Ok(());
    }
    let Some(tuple) = tuple_if_traced(sk, true)? else {
        return Ok(());
    };
    let (old, new) = (old as u8, new as u8);
    // An accepted socket's creation, in softirq: no process holds it yet,
    // so it has no owner entry to look up, and its record is one the
    // tracker does without.
    let created = old == TcpState::Listen as u8 && new == TcpState::SynRecv as u8;
    if created && config!(every_transition) == 0 {
        return Ok(());
    }
    let cookie = cookie_of(sk);
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let step = if created {
        Step {
            owner: OwnerInfo::UNKNOWN,
            since_ns: 0,
            recorded: false,
        }
    } else if runs_in_owner(old, new) {
        step_current(cookie, current_tgid(), old, new, now)
    } else {
        step_recorded(cookie, old, new, now)
    };
    if !pid_allowed(step.owner.tgid) {
        return Ok(());
    }
    if config!(every_transition) == 0 && skippable(sk, old, new, step.recorded) {
        return Ok(());
    }
    // Leaving ESTABLISHED (or SYN_RECV, but for ESTABLISHED) is the first
    // closing act, or a reset: what the socket knows of its traffic then says how the
    // connection was used and how soon after its last exchange it ended.
    let leaves = old == TcpState::Established as u8
        || (old == TcpState::SynRecv as u8 && new != TcpState::Established as u8);
    let figures = if leaves { tcp_figures(sk) } else { None };
    emit(
        sk,
        EventKind::StateChange,
        cookie,
        &tuple,
        old,
        new,
        &step.owner,
        fin_received(sk),
        step.since_ns,
        now,
        figures,
    );
    Ok(())
}

/// `trace_tcp_destroy_sock()` from `tcp_v4_destroy_sock()`: the full socket is
/// freed (closed, or replaced by a timewait socket with the same cookie).
/// Its owner entry goes with it, rather than waiting for LRU recycling to
/// push out an entry still in use. No record: the tracker closes a
/// lifecycle on its CLOSE, and `--transitions` prints state changes.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    if !sk.is_null() && traced_family(sk).is_some() {
        let _ = OWNERS.remove(&cookie_of(sk));
    }
    0
}

/// `trace_tcp_send_reset()` from `tcp_v4_send_reset()`/`tcp_send_active_reset()`:
/// this host sends a RST. `sk` may be NULL (no socket), a request or a
/// timewait socket, so only `sock_common` fields are read.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> i32 {
    let _ = try_reset(&ctx, EventKind::SendReset);
    0
}

/// `trace_tcp_receive_reset()` from `tcp_reset()`: the peer's RST arrived.
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    let _ = try_reset(&ctx, EventKind::ReceiveReset);
    0
}

/// Only a received RST is sure to find a full socket.
fn try_reset(ctx: &BtfTracePointContext, kind: EventKind) -> Result<(), i32> {
    let sk: *const u8 = ctx.arg(0);
    if sk.is_null() {
        return Ok(());
    }
    let Some(tuple) = tuple_if_traced(sk, kind == EventKind::ReceiveReset)? else {
        return Ok(());
    };
    let cookie = cookie_of(sk);
    let owner = recorded_owner(cookie);
    if !pid_allowed(owner.tgid) {
        return Ok(());
    }
    let state: u8 = field(sk, config!(offsets.state));
    emit(
        sk,
        kind,
        cookie,
        &tuple,
        state,
        0,
        &owner,
        FIN_UNKNOWN,
        0,
        unsafe { bpf_ktime_get_boot_ns() },
        None,
    );
    Ok(())
}

/// `trace_sock_send_length()` from `sock_sendmsg_nosec()`: runs in the task
/// doing the I/O, so it names the owner (an accepted socket's first, or a
/// socket handed to another process). No record is written; this hook sits
/// on every send of every socket, so its common path is one lookup. (When
/// data last moved, the kernel keeps itself: userspace reads TCP_INFO.)
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> i32 {
    let _ = track_io(&ctx);
    0
}

/// `trace_sock_recv_length()` from `sock_recvmsg_nosec()`: as above, for receives.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    let _ = track_io(&ctx);
    0
}

fn track_io(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let sk: *const u8 = ctx.arg(0);
    if sk.is_null() || traced_family(sk).is_none() || !is_tcp(sk) {
        return Ok(());
    }
    if config!(ports[0]) != 0 && traced_ports(sk, true)?.is_none() {
        return Ok(());
    }
    let tgid = current_tgid();
    if !pid_allowed(tgid) {
        return Ok(());
    }
    let cookie = cookie_of(sk);
    match owner_of(cookie) {
        // The common case, every send and receive: nothing to do.
        Some(owner) if owner.tgid == tgid => {}
        Some(owner) => adopt(owner, tgid),
        None => {
            create_owner(cookie, &new_owner(tgid, 0, 0));
        }
    }
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
