//! Finds where the kernel keeps the socket fields the programs read, from the running kernel's BTF.
//!
//! The kernel programs are built once and committed; passing these offsets
//! as load-time constants is what lets one object read `struct sock`
//! correctly on kernels whose layout differs from the build machine's.

use btf_rs::{Btf, Type};
use tracer_common::{COMM_LEN, NO_OFFSET, SockOffsets};

/// Why the kernel's socket layout could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("struct {0} not found in kernel BTF")]
    NoStruct(&'static str),
    #[error("{strukt}.{field} not found in kernel BTF")]
    NoField {
        strukt: &'static str,
        field: &'static str,
    },
    #[error("{strukt}.{field} is {got} bytes (or a bitfield), expected {want}")]
    Size {
        strukt: &'static str,
        field: &'static str,
        got: usize,
        want: usize,
    },
    #[error("{strukt}.{field} lies beyond what a 16-bit offset can reach")]
    TooFar {
        strukt: &'static str,
        field: &'static str,
    },
    #[error("reading kernel BTF: {0}")]
    Btf(#[from] btf_rs::Error),
}

/// A named member found inside a struct.
struct Found {
    /// Bits from the start of the outermost struct searched.
    bit_offset: usize,
    bitfield: bool,
    ty: Type,
}

/// Strips typedefs and qualifiers down to the type that has a size.
fn resolve(btf: &Btf, mut ty: Type) -> Result<Type, btf_rs::Error> {
    loop {
        #[expect(
            clippy::match_same_arms,
            reason = "the same call on five different types"
        )]
        let next = match ty {
            Type::Typedef(t) => btf.resolve_chained_type(&t)?,
            Type::Volatile(t) => btf.resolve_chained_type(&t)?,
            Type::Const(t) => btf.resolve_chained_type(&t)?,
            Type::Restrict(t) => btf.resolve_chained_type(&t)?,
            Type::TypeTag(t) => btf.resolve_chained_type(&t)?,
            other => return Ok(other),
        };
        ty = next;
    }
}

fn size_of_type(btf: &Btf, ty: Type) -> Result<usize, btf_rs::Error> {
    Ok(match resolve(btf, ty)? {
        Type::Int(i) => i.size(),
        Type::Enum(e) => e.size(),
        Type::Struct(s) | Type::Union(s) => s.size(),
        Type::Array(a) => a.len() * size_of_type(btf, btf.resolve_chained_type(&a)?)?,
        Type::Ptr(_) => size_of::<usize>(),
        _ => 0,
    })
}

/// Depth-first search for `field`, descending into anonymous struct/union
/// members the way C name lookup does (`skc_daddr` lives in an unnamed union).
fn find(
    btf: &Btf,
    members: &[btf_rs::Member],
    base_bits: usize,
    field: &str,
) -> Result<Option<Found>, btf_rs::Error> {
    for member in members {
        let name = btf.resolve_name(member)?;
        let bits = base_bits + member.bit_offset() as usize;
        let ty = btf.resolve_chained_type(member)?;
        if name == field {
            return Ok(Some(Found {
                bit_offset: bits,
                bitfield: member.bitfield_size().is_some_and(|b| b != 0),
                ty,
            }));
        }
        if name.is_empty()
            && let Type::Struct(inner) | Type::Union(inner) = resolve(btf, ty)?
            && let Some(found) = find(btf, &inner.members, bits, field)?
        {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

fn struct_members(btf: &Btf, name: &'static str) -> Result<Vec<btf_rs::Member>, LayoutError> {
    for ty in btf
        .resolve_types_by_name(name)
        .map_err(|_| LayoutError::NoStruct(name))?
    {
        if let Type::Struct(s) = ty {
            return Ok(s.members);
        }
    }
    Err(LayoutError::NoStruct(name))
}

/// Offset of `strukt.a.b...` (each step a named member, possibly inside
/// anonymous members), checked to be a whole-byte field of `want` bytes.
fn offset(
    btf: &Btf,
    strukt: &'static str,
    path: &[&'static str],
    want: usize,
) -> Result<u16, LayoutError> {
    let field = path.last().copied().unwrap_or("");
    let mut members = struct_members(btf, strukt)?;
    let mut bits = 0;
    for (i, step) in path.iter().enumerate() {
        let found = find(btf, &members, 0, step)?.ok_or(LayoutError::NoField {
            strukt,
            field: step,
        })?;
        bits += found.bit_offset;
        if i + 1 == path.len() {
            let size = size_of_type(btf, found.ty)?;
            if found.bitfield || !bits.is_multiple_of(8) || size != want {
                return Err(LayoutError::Size {
                    strukt,
                    field,
                    got: size,
                    want,
                });
            }
            break;
        }
        members = match resolve(btf, found.ty)? {
            Type::Struct(s) | Type::Union(s) => s.members,
            _ => return Err(LayoutError::NoField { strukt, field }),
        };
    }
    u16::try_from(bits / 8)
        .ok()
        .filter(|&o| o != NO_OFFSET)
        .ok_or(LayoutError::TooFar { strukt, field })
}

/// The bit number of `name` in `enum sock_flags`, if the kernel has it.
fn sock_flag_bit(btf: &Btf, name: &str) -> Result<Option<u16>, LayoutError> {
    let Ok(types) = btf.resolve_types_by_name("sock_flags") else {
        return Ok(None);
    };
    for ty in types {
        if let Type::Enum(e) = ty {
            for member in &e.members {
                if btf.resolve_name(member)? == name {
                    return Ok(u16::try_from(member.val()).ok().filter(|&b| b < 64));
                }
            }
        }
    }
    Ok(None)
}

/// Resolves every offset the programs need.
pub fn sock_offsets(btf: &Btf) -> Result<SockOffsets, LayoutError> {
    let c = |field, want| offset(btf, "sock_common", &[field], want);
    // `struct sock` starts with its `sock_common`, so these offsets hold for
    // full, request and timewait sockets alike.
    let optional = |result: Result<u16, LayoutError>| match result {
        // A kernel without IPv6 has no AF_INET6 sockets to read; one without
        // network namespaces has a single one.
        Err(LayoutError::NoField { .. }) => Ok(NO_OFFSET),
        other => other,
    };
    let (done, dead) = (
        sock_flag_bit(btf, "SOCK_DONE")?,
        sock_flag_bit(btf, "SOCK_DEAD")?,
    );
    Ok(SockOffsets {
        daddr: c("skc_daddr", 4)?,
        rcv_saddr: c("skc_rcv_saddr", 4)?,
        dport: c("skc_dport", 2)?,
        num: c("skc_num", 2)?,
        family: c("skc_family", 2)?,
        state: c("skc_state", 1)?,
        v6_daddr: optional(c("skc_v6_daddr", 16))?,
        v6_rcv_saddr: optional(c("skc_v6_rcv_saddr", 16))?,
        protocol: offset(btf, "sock", &["sk_protocol"], 2)?,
        inet_sport: offset(btf, "inet_sock", &["inet_sport"], 2)?,
        net: optional(offset(
            btf,
            "sock_common",
            &["skc_net", "net"],
            size_of::<u64>(),
        ))?,
        net_inum: optional(offset(btf, "net", &["ns", "inum"], 4))?,
        // Without them userspace asks sock_diag about every FIN_WAIT2
        // close, and every orphan's FIN_WAIT1 -> FIN_WAIT2 is recorded.
        flags: match (done, dead) {
            (Some(_), Some(_)) => optional(c("skc_flags", size_of::<u64>()))?,
            _ => NO_OFFSET,
        },
        flag_done_bit: done.unwrap_or(0),
        flag_dead_bit: dead.unwrap_or(0),
        // Without these the kernel names a socket's owner by the thread's
        // name, and records carry no TCP figures.
        group_leader: optional(offset(
            btf,
            "task_struct",
            &["group_leader"],
            size_of::<u64>(),
        ))?,
        task_comm: optional(offset(btf, "task_struct", &["comm"], COMM_LEN))?,
        lsndtime: optional(offset(btf, "tcp_sock", &["lsndtime"], 4))?,
        lrcvtime: optional(offset(
            btf,
            "tcp_sock",
            &["inet_conn", "icsk_ack", "lrcvtime"],
            4,
        ))?,
        data_segs_out: optional(offset(btf, "tcp_sock", &["data_segs_out"], 4))?,
        data_segs_in: optional(offset(btf, "tcp_sock", &["data_segs_in"], 4))?,
        // Without these records carry no bytes, RTT, retransmissions or
        // the error a connection ended with (failed connects have no
        // reason).
        bytes_acked: optional(offset(btf, "tcp_sock", &["bytes_acked"], 8))?,
        bytes_received: optional(offset(btf, "tcp_sock", &["bytes_received"], 8))?,
        srtt_us: optional(offset(btf, "tcp_sock", &["srtt_us"], 4))?,
        mdev_us: optional(offset(btf, "tcp_sock", &["mdev_us"], 4))?,
        total_retrans: optional(offset(btf, "tcp_sock", &["total_retrans"], 4))?,
        sk_err: optional(offset(btf, "sock", &["sk_err"], 4))?,
        ..timewait_table(btf).unwrap_or(SockOffsets {
            death_row_hashinfo: NO_OFFSET,
            ..SockOffsets::default()
        })
    })
}

/// Where the kernel programs look, at a step from FIN_WAIT2 or CLOSING to
/// CLOSE, for the timewait socket that took the full socket's place. A
/// kernel without one of these fields (before 6.1 the table had no
/// pointer in the namespace) gets no check: an error here is not the
/// tracer's, so it leaves `death_row_hashinfo` at `NO_OFFSET` and the
/// rest of the offsets apply.
fn timewait_table(btf: &Btf) -> Result<SockOffsets, LayoutError> {
    // The programs index the bucket array with 8-byte steps.
    let bucket = btf
        .resolve_types_by_name("inet_ehash_bucket")
        .map_err(|_| LayoutError::NoStruct("inet_ehash_bucket"))?
        .into_iter()
        .find_map(|ty| match ty {
            Type::Struct(s) => Some(s.size()),
            _ => None,
        })
        .ok_or(LayoutError::NoStruct("inet_ehash_bucket"))?;
    if bucket != size_of::<u64>() {
        return Err(LayoutError::Size {
            strukt: "inet_ehash_bucket",
            field: "chain",
            got: bucket,
            want: size_of::<u64>(),
        });
    }
    let c = |field, want| offset(btf, "sock_common", &[field], want);
    Ok(SockOffsets {
        skc_hash: c("skc_hash", 4)?,
        nulls_node: c("skc_nulls_node", 2 * size_of::<u64>())?,
        skc_cookie: c("skc_cookie", size_of::<u64>())?,
        death_row_hashinfo: offset(
            btf,
            "net",
            &["ipv4", "tcp_death_row", "hashinfo"],
            size_of::<u64>(),
        )?,
        ehash: offset(btf, "inet_hashinfo", &["ehash"], size_of::<u64>())?,
        ehash_mask: offset(btf, "inet_hashinfo", &["ehash_mask"], 4)?,
        ..SockOffsets::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's BTF, when there is one (every machine that can
    /// run the tracer has it; the privileged tests need it too).
    fn kernel_btf() -> Btf {
        Btf::from_file("/sys/kernel/btf/vmlinux").expect("kernel BTF at /sys/kernel/btf/vmlinux")
    }

    #[test]
    fn resolves_the_running_kernels_sock_layout() {
        let o = sock_offsets(&kernel_btf()).unwrap();
        // sock_common has kept this prefix since Linux 4.x; a regression in
        // the anonymous-union descent would show up as a zero or a mismatch.
        assert_eq!(o.daddr, 0);
        assert_eq!(o.rcv_saddr, 4);
        assert_eq!(o.dport, 12);
        assert_eq!(o.num, 14);
        assert_eq!(o.family, 16);
        assert_eq!(o.state, 18);
        assert!(
            o.v6_daddr >= 20 && o.v6_rcv_saddr == o.v6_daddr + 16,
            "{o:?}"
        );
        // sk_protocol sits well past sock_common.
        assert!(o.protocol > o.v6_rcv_saddr, "{o:?}");
        // inet_sock embeds struct sock first, so its own fields come after.
        assert!(o.inet_sport > o.protocol, "{o:?}");
        // skc_net sits between the addresses and the IPv6 addresses; inum
        // is somewhere inside struct net.
        assert!(o.net > o.state && o.net < o.v6_daddr, "{o:?}");
        assert!(o.net_inum != NO_OFFSET, "{o:?}");
        // Since 6.1 each namespace points at the table its timewait
        // sockets go in. A socket's hash follows its two IPv4 addresses;
        // its cookie and chain link lie further in sock_common.
        assert!(o.death_row_hashinfo != NO_OFFSET, "{o:?}");
        assert!(o.ehash != o.ehash_mask, "{o:?}");
        assert_eq!(o.skc_hash, 8, "{o:?}");
        for off in [o.nulls_node, o.skc_cookie] {
            assert!(off > o.state && off < o.protocol, "{o:?}");
        }
        // In sock_common, after the addresses; SOCK_DONE follows SOCK_DEAD.
        assert!(o.flags > o.daddr && o.flags < o.protocol, "{o:?}");
        assert_eq!(o.flag_done_bit, 1, "{o:?}");
        assert_eq!(o.flag_dead_bit, 0, "{o:?}");
        // task_struct and tcp_sock fields are found, tcp_sock's beyond the
        // inet_connection_sock it starts with (whose icsk_ack holds lrcvtime).
        for off in [
            o.group_leader,
            o.task_comm,
            o.lsndtime,
            o.lrcvtime,
            o.data_segs_out,
            o.data_segs_in,
            o.bytes_acked,
            o.bytes_received,
            o.srtt_us,
            o.mdev_us,
            o.total_retrans,
            o.sk_err,
        ] {
            assert_ne!(off, NO_OFFSET, "{o:?}");
        }
        assert!(
            o.lrcvtime < o.lsndtime && o.lsndtime < o.data_segs_out.max(o.data_segs_in),
            "{o:?}"
        );
        // sk_err is struct sock's, before inet_sock's own fields; the
        // counters are tcp_sock's, beyond the connection sock it starts with.
        assert!(o.sk_err < o.inet_sport, "{o:?}");
        assert!(
            o.bytes_acked > o.lrcvtime && o.srtt_us > o.lrcvtime,
            "{o:?}"
        );
    }

    #[test]
    fn missing_struct_and_field_are_errors() {
        let btf = kernel_btf();
        assert!(matches!(
            struct_members(&btf, "no_such_struct_tcplinger"),
            Err(LayoutError::NoStruct(_))
        ));
        assert!(matches!(
            offset(&btf, "sock_common", &["no_such_field"], 4),
            Err(LayoutError::NoField { .. })
        ));
        assert!(matches!(
            offset(&btf, "sock_common", &["skc_family"], 4),
            Err(LayoutError::Size {
                got: 2,
                want: 4,
                ..
            })
        ));
        // A path that continues through a member that is not a struct.
        assert!(matches!(
            offset(&btf, "sock_common", &["skc_family", "x"], 2),
            Err(LayoutError::NoField { .. })
        ));
    }
}
