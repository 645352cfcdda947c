//! What the programs read of a socket: fields at the offsets userspace resolved from BTF, the filters decided on them, and the TCP socket's own figures.

use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_probe_read_kernel,
    generated::{bpf_get_socket_cookie, bpf_jiffies64, bpf_skc_to_tcp_sock},
};
use tracer_common::{
    AF_INET, AF_INET6, FIN_UNKNOWN, IPPROTO_TCP, MAX_FILTER_PIDS, MAX_FILTER_PORTS, NO_OFFSET,
    NetFigures, TcpFigures, TcpState, failed,
};

use crate::{config::config, record::count_failure};

/// A socket's family and ports, as a record wants them.
pub struct Tuple {
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
}

/// Reads a `T` at `base + offset` with a plain load. The programs are
/// `tp_btf`, so the verifier knows `base` is a `struct sock` (or the type a
/// helper returned) and checks each offset (a constant, from frozen
/// `.rodata`) against the kernel's BTF; the JIT emits a load that cannot
/// fault. Several times cheaper than a `bpf_probe_read_kernel` call per
/// field, which matters: these programs sit on every state change.
#[inline(always)]
pub fn field<T>(base: *const u8, offset: u16) -> T {
    // SAFETY: see above: the verifier accepts the load only within the
    // BTF type of `base`, and the JIT makes it fault-free.
    unsafe { core::ptr::read_volatile(base.wrapping_add(offset as usize).cast::<T>()) }
}

/// Reads a `T` at `base + offset` through the helper, for fields outside
/// what the BTF type of `base` covers.
#[inline(always)]
pub fn probe<T>(base: *const u8, offset: u16) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails (an
    // error, not a fault) when it cannot be read.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
}

/// The socket's family if it is inet and passes the family filter.
#[inline(always)]
pub fn traced_family(sk: *const u8) -> Option<u16> {
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
pub fn traced_ports(sk: *const u8, full_sock: bool) -> Result<Option<(u16, u16)>, i32> {
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
pub fn tuple_if_traced(sk: *const u8, full_sock: bool) -> Result<Option<Tuple>, i32> {
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

/// Whether `tgid` passes the pid filter.
#[inline(always)]
pub fn pid_allowed(tgid: u32) -> bool {
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
pub fn is_tcp(sk: *const u8) -> bool {
    field::<u16>(sk, config!(offsets.protocol)) == IPPROTO_TCP
}

/// Inode number of the socket's network namespace; 0 if the kernel has
/// none or the read fails.
#[inline(always)]
pub fn netns_of(sk: *const u8) -> u32 {
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
pub fn fin_received(sk: *const u8) -> u8 {
    match sock_flag(sk, config!(offsets.flag_done_bit)) {
        Some(set) => u8::from(set),
        None => FIN_UNKNOWN,
    }
}

/// Bit `bit` of the socket's `skc_flags`; `None` if they cannot be read.
#[inline(always)]
pub fn sock_flag(sk: *const u8, bit: u16) -> Option<bool> {
    let offset = config!(offsets.flags);
    if offset == NO_OFFSET {
        return None;
    }
    let flags: u64 = field(sk, offset);
    Some((flags >> (bit & 63)) & 1 != 0)
}

/// Nodes of a socket-table bucket's chain [`timewait_successor`] walks:
/// at the kernel's sizing a chain holds a socket or two, and the timewait
/// socket it looks for was put at its head just before.
const CHAIN_NODES: usize = 8;

/// `TCP_TIME_WAIT`, the state of every timewait socket (its substate,
/// FIN_WAIT2 or TIME_WAIT, is kept apart).
const TIME_WAIT: u8 = TcpState::TimeWait as u8;

/// Whether the step `old` -> `new` is where a timewait socket may take the
/// full socket's place, so [`timewait_successor`] has something to tell.
#[inline(always)]
fn may_hand_over(old: u8, new: u8) -> bool {
    new == TcpState::Close as u8
        && (old == TcpState::FinWait2 as u8 || old == TcpState::Closing as u8)
}

/// [`timewait_successor`] at a step that may hand over, as a record says
/// it: true when no timewait socket took the place; a check that could
/// not be made is counted and says false.
#[inline(always)]
pub fn no_timewait(sk: *const u8, tuple: &Tuple, cookie: u64, old: u8, new: u8) -> bool {
    if !may_hand_over(old, new) {
        return false;
    }
    if let Some(made) = timewait_successor(sk, tuple, cookie) {
        !made
    } else {
        count_failure(failed::TIMEWAIT_UNCHECKED);
        false
    }
}

/// At a full socket's step to CLOSE from FIN_WAIT2 or CLOSING: whether a
/// timewait socket took its place. `tcp_time_wait()` allocates one, puts
/// it at the head of the socket's bucket in the established table and
/// unhashes the full socket, then calls `tcp_done()`, whose state change
/// is the one traced; when the table is full (`tcp_max_tw_buckets`) it
/// allocates none and counts `TCPTimeWaitOverflow` instead. So the chain
/// is walked for a timewait socket with this cookie. `None` when it cannot
/// be told: a kernel without the fields, a failed read, a timewait socket
/// on the same ports whose cookie was never made (0), or a chain longer
/// than the walk. `tuple`: the socket's ports (its `skc_num` is zeroed by
/// now).
#[inline(always)]
fn timewait_successor(sk: *const u8, tuple: &Tuple, cookie: u64) -> Option<bool> {
    let hashinfo_offset = config!(offsets.death_row_hashinfo);
    let net_offset = config!(offsets.net);
    if hashinfo_offset == NO_OFFSET || net_offset == NO_OFFSET {
        return None;
    }
    let net: *const u8 = field(sk, net_offset);
    if net.is_null() {
        return None;
    }
    // Typed loads as far as the BTF goes; the bucket is found by a computed
    // index, which the verifier allows only through the helper, so the
    // array's address is read as a plain number.
    let hashinfo: *const u8 = field(net, hashinfo_offset);
    if hashinfo.is_null() {
        return None;
    }
    let ehash: u64 = probe(hashinfo, config!(offsets.ehash)).ok()?;
    let mask: u32 = field(hashinfo, config!(offsets.ehash_mask));
    let hash: u32 = field(sk, config!(offsets.skc_hash));
    let bucket = ehash.wrapping_add(u64::from(hash & mask) * 8);
    let mut node: u64 = probe(bucket as *const u8, 0).ok()?;
    let mut i = 0;
    while i < CHAIN_NODES {
        // A nulls list ends in an odd "pointer": no more sockets.
        if node & 1 != 0 {
            return Some(false);
        }
        let common = node.wrapping_sub(u64::from(config!(offsets.nulls_node))) as *const u8;
        let state: u8 = probe(common, config!(offsets.state)).ok()?;
        if state == TIME_WAIT {
            let theirs: u64 = probe(common, config!(offsets.skc_cookie)).ok()?;
            if theirs == cookie {
                return Some(true);
            }
            if theirs == 0 {
                let num: u16 = probe(common, config!(offsets.num)).ok()?;
                let dport: u16 = probe(common, config!(offsets.dport)).ok()?;
                if num == tuple.sport && u16::from_be(dport) == tuple.dport {
                    return None;
                }
            }
        }
        // `hlist_nulls_node.next` comes first.
        node = probe(node as *const u8, 0).ok()?;
        i += 1;
    }
    None
}

/// The socket's cookie: the one key shared with sock_diag and timewait
/// sockets.
#[inline(always)]
pub fn cookie_of(sk: *const u8) -> u64 {
    // SAFETY: `sk` is the tracepoint's socket argument; the helper takes
    // any socket pointer the program was given.
    unsafe { bpf_get_socket_cookie(sk.cast_mut().cast::<c_void>()) }
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

/// Local and remote address of a socket of `family`.
#[inline(always)]
pub fn addresses(sk: *const u8, family: u16) -> ([u8; 16], [u8; 16]) {
    if family == AF_INET {
        (
            v4_addr(field(sk, config!(offsets.rcv_saddr))),
            v4_addr(field(sk, config!(offsets.daddr))),
        )
    } else {
        (
            v6_addr(sk, config!(offsets.v6_rcv_saddr)),
            v6_addr(sk, config!(offsets.v6_daddr)),
        )
    }
}

/// The TCP socket's figures if the step `old` -> `new` leaves ESTABLISHED
/// (or SYN_RECV, but for ESTABLISHED): the first closing act, or a reset.
/// What the socket knows of its traffic then says how the connection was
/// used and how soon after its last exchange it ended.
#[inline(always)]
pub fn closing_figures(sk: *const u8, old: u8, new: u8) -> Option<TcpFigures> {
    let leaves = old == TcpState::Established as u8
        || (old == TcpState::SynRecv as u8 && new != TcpState::Established as u8);
    if leaves { tcp_figures(sk) } else { None }
}

/// The TCP socket's own figures, read when a connection leaves
/// ESTABLISHED. `None` when the socket is not a full TCP socket or the
/// offsets are unknown.
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
    let tp = tcp_sock(sk)?;
    // `tcp_jiffies32` is the low 32 bits of jiffies; the stamps wrap with it.
    // SAFETY: no arguments; reads the kernel's jiffies.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the low 32 bits, on purpose"
    )]
    let now = unsafe { bpf_jiffies64() } as u32;
    let jiffy_us = u64::from(config!(jiffy_us));
    let age_ms = |stamp: u32| -> u32 {
        let ms = u64::from(now.wrapping_sub(stamp)) * jiffy_us / 1000;
        u32::try_from(ms).unwrap_or(u32::MAX)
    };
    Some(TcpFigures {
        send_age_ms: age_ms(field(tp, lsndtime)),
        recv_age_ms: age_ms(field(tp, lrcvtime)),
        segs_out: field(tp, segs_out),
        segs_in: field(tp, segs_in),
    })
}

/// `sk` as a `struct tcp_sock *`, if it is a full TCP socket.
#[inline(always)]
fn tcp_sock(sk: *const u8) -> Option<*const u8> {
    // SAFETY: the helper checks that `sk` is a full TCP socket and returns
    // it typed as `struct tcp_sock *` (or NULL), so the verifier checks
    // each plain load from it against that type.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk.cast_mut().cast::<c_void>()) } as *const u8;
    (!tp.is_null()).then_some(tp)
}

/// The TCP socket's account of its whole life if the step goes to CLOSE
/// (the full socket's end, whatever ended it): read once per connection,
/// on a path every connection takes anyway, so that bytes, RTT,
/// retransmissions and the error it ended with cost no hook on the I/O or
/// packet path. `None` on other steps, for a socket that is not a full
/// TCP one, or when the kernel's layout lacks a field.
#[inline(always)]
pub fn final_figures(sk: *const u8, new: u8) -> Option<NetFigures> {
    if new != TcpState::Close as u8 {
        return None;
    }
    let acked = config!(offsets.bytes_acked);
    let received = config!(offsets.bytes_received);
    let srtt = config!(offsets.srtt_us);
    let mdev = config!(offsets.mdev_us);
    let retrans = config!(offsets.total_retrans);
    let err = config!(offsets.sk_err);
    if acked == NO_OFFSET
        || received == NO_OFFSET
        || srtt == NO_OFFSET
        || mdev == NO_OFFSET
        || retrans == NO_OFFSET
        || err == NO_OFFSET
    {
        return None;
    }
    let tp = tcp_sock(sk)?;
    // An errno; a negative or huge value would be a kernel bug, kept
    // visible rather than folded to 0.
    let error: i32 = field(sk, err);
    Some(NetFigures {
        bytes_acked: field(tp, acked),
        bytes_received: field(tp, received),
        srtt_us: field::<u32>(tp, srtt) >> 3,
        rttvar_us: field::<u32>(tp, mdev) >> 2,
        retrans: field(tp, retrans),
        error: u16::try_from(error).unwrap_or(u16::MAX),
        read: 1,
        _pad: 0,
    })
}
