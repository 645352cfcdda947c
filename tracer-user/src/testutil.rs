//! Fixtures the unit tests share: comms, owners, connection ids, records, TCP figures and live sockets as the model sees them.

use std::net::{IpAddr, Ipv4Addr};

use tracer_common::{
    AF_INET, AF_INET6, COMM_LEN, Event, EventKind, FIN_UNKNOWN, LOG_STEPS, Log, NetFigures,
    OwnerSource, STEP_NO_TIMEWAIT, STEP_TCP, SocketEntry, Step, TcpFigures, TcpState,
};

use crate::model::{
    aggregate::{LastIo, LiveSocket},
    event::{Comm, Family, Kind, LoggedStep, Owner, Record, StepLog},
    tracker::{ClosedBy, ConnId, ConnRecord, Role, StateTimes},
};

/// The initial network namespace's inode number on most hosts.
pub const NETNS: u32 = 4_026_531_840;

/// A comm as the kernel stores it: at most 15 bytes and a NUL.
pub fn comm(name: &str) -> [u8; COMM_LEN] {
    let mut raw = [0; COMM_LEN];
    let n = name.len().min(COMM_LEN - 1);
    raw[..n].copy_from_slice(&name.as_bytes()[..n]);
    raw
}

/// A process as the kernel names it.
pub fn owner(pid: u32, name: &str) -> Owner {
    Owner {
        pid,
        comm: Comm::new(comm(name)),
        cgroup_id: 0,
    }
}

/// Nanoseconds in a millisecond.
pub const MS: u64 = 1_000_000;

/// A connection of process `pid` ("app") to or from 10.0.0.2.
pub fn id(pid: u32, role: Role, rport: u16) -> ConnId {
    id_named(pid, "app", role, rport)
}

pub fn id_named(pid: u32, name: &str, role: Role, rport: u16) -> ConnId {
    ConnId {
        netns: 1,
        owner: Some(owner(pid, name)),
        role,
        family: Family::Ipv4,
        laddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        lport: if role == Role::Server {
            8080
        } else {
            40000 + rport % 100
        },
        raddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        rport,
    }
}

/// A finished connection of `id`, closed by `closed_by`, with a
/// TIME_WAIT after `fin_wait2_ms` of FIN_WAIT2 if that is given.
pub fn record(
    id: ConnId,
    closed_by: ClosedBy,
    lifetime_ms: u64,
    fin_wait2_ms: Option<u64>,
) -> ConnRecord {
    let mut states = StateTimes::default();
    if let Some(ms) = fin_wait2_ms {
        states = states.with(TcpState::FinWait2, ms * MS);
    }
    ConnRecord {
        end_ns: 0,
        cookie: 1,
        netns: id.netns,
        owner: id.owner,
        role: id.role,
        family: id.family,
        laddr: id.laddr,
        lport: id.lport,
        raddr: id.raddr,
        rport: id.rport,
        closed_by,
        lifetime_ns: lifetime_ms * MS,
        states,
        fin_wait2_end: None,
        time_wait: fin_wait2_ms.is_some(),
        time_wait_refused: false,
        complete: true,
        open_state: None,
        opened_seen: true,
        tcp: None,
        net: None,
        connect_failed: None,
    }
}

/// A socket's figures at its end, as the kernel reads them at CLOSE:
/// `acked` bytes sent and acknowledged, `received`, the smoothed RTT
/// (its deviation half of it), `retrans`, and `error` (an errno, 0 for
/// none).
pub fn at_close(acked: u64, received: u64, srtt_us: u32, retrans: u32, error: u16) -> NetFigures {
    NetFigures {
        bytes_acked: acked,
        bytes_received: received,
        srtt_us,
        rttvar_us: srtt_us / 2,
        retrans,
        error,
        read: 1,
        _pad: 0,
    }
}

/// TCP figures at the first closing act.
pub fn figures(send_age_ms: u32, recv_age_ms: u32, segs_out: u32, segs_in: u32) -> TcpFigures {
    TcpFigures {
        send_age_ms,
        recv_age_ms,
        segs_out,
        segs_in,
    }
}

/// A socket alive now, in `state` since `since_ms`, with its last I/O.
pub fn live(
    id: ConnId,
    cookie: u64,
    state: TcpState,
    since_ms: u64,
    io: Option<(Option<u64>, Option<u64>)>,
) -> LiveSocket {
    LiveSocket {
        id,
        owner_known: true,
        cookie,
        state,
        since_ns: Some(since_ms * MS),
        io: io.map(|(s, r)| LastIo {
            send_ns: s.map(|ms| ms * MS),
            recv_ns: r.map(|ms| ms * MS),
            net: None,
        }),
    }
}

/// Events of one socket: client side is 10.0.0.1:40000 -> 10.0.0.2:8080.
pub struct Sock {
    pub cookie: u64,
    pub server: bool,
    pub owner: Option<Owner>,
}

impl Sock {
    /// A socket of `curl` (pid 100).
    pub fn client(cookie: u64) -> Self {
        Self {
            cookie,
            server: false,
            owner: Some(owner(100, "curl")),
        }
    }

    /// A socket of `nginx` (pid 200).
    pub fn server(cookie: u64) -> Self {
        Self {
            cookie,
            server: true,
            owner: Some(owner(200, "nginx")),
        }
    }

    /// A record of kind `kind` at `ms`.
    pub fn record(&self, ms: u64, kind: Kind) -> Record {
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let (laddr, lport, raddr, rport) = if self.server {
            (b, 8080, a, 40000)
        } else {
            (a, 40000, b, 8080)
        };
        Record {
            ts_ns: ms * MS,
            cookie: self.cookie,
            kind,
            family: Family::Ipv4,
            laddr,
            lport,
            raddr,
            rport,
            owner: self.owner,
            netns: NETNS,
            peer_fin: matches!(kind, Kind::StateChange { .. }).then_some(false),
            since_ns: None,
            tcp: None,
            net: None,
            no_timewait: false,
        }
    }

    /// A state change at `ms`, in its owner's process.
    pub fn step(&self, ms: u64, old: TcpState, new: TcpState) -> Record {
        self.record(ms, Kind::StateChange { old, new })
    }

    /// A state change at `ms` with no process known (softirq).
    pub fn unowned_step(&self, ms: u64, old: TcpState, new: TcpState) -> Record {
        Record {
            owner: None,
            ..self.step(ms, old, new)
        }
    }
}

/// A record as the kernel writes it in the ring: the inverse of
/// `bpf::decode::decode`, for tests that feed a session raw records.
pub fn encode(r: &Record) -> Vec<u8> {
    bytes_of(&event_of(r))
}

/// The raw bytes of a plain-data kernel type.
fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
    // SAFETY: only used on the shared `#[repr(C)]` types, plain data
    // without padding.
    unsafe {
        std::slice::from_raw_parts(std::ptr::from_ref::<T>(value).cast::<u8>(), size_of::<T>())
    }
    .to_vec()
}

/// The kernel's steps of a log, and its head.
fn raw_log(log: &StepLog) -> (Event, [Step; LOG_STEPS]) {
    let mut steps = [Step::default(); LOG_STEPS];
    for (raw, step) in steps.iter_mut().zip(log.steps()) {
        let (kind, old, new) = kind_of(step.kind);
        *raw = Step {
            ts_ns: step.ts_ns,
            kind: kind as u8,
            old_state: old,
            new_state: new,
            fin_received: step.peer_fin.map_or(FIN_UNKNOWN, u8::from),
            flags: if step.tcp { STEP_TCP } else { 0 }
                | if step.no_timewait {
                    STEP_NO_TIMEWAIT
                } else {
                    0
                },
            _pad: [0; 3],
        };
    }
    let mut head = event_of(&log.socket);
    head.kind = EventKind::Log as u8;
    head.old_state = 0;
    head.new_state = 0;
    head.since_ns = log.prior_ns.unwrap_or(0);
    head.tcp = log.tcp.unwrap_or_default();
    head.has_tcp = 0;
    head.net = log
        .net
        .map_or_else(Default::default, |n| NetFigures { read: 1, ..n });
    if log.socket.owner.is_some() {
        head.owner_source = OwnerSource::Recorded as u8;
    }
    (head, steps)
}

/// The log of one socket's `steps` (records of the same socket, in
/// order), as the kernel would fold them; net figures are set apart
/// ([`StepLog::with_net`]).
pub fn log_of(steps: &[Record]) -> StepLog {
    let logged: Vec<LoggedStep> = steps
        .iter()
        .map(|r| LoggedStep {
            ts_ns: r.ts_ns,
            kind: r.kind,
            peer_fin: r.peer_fin,
            tcp: r.tcp.is_some(),
            no_timewait: r.no_timewait,
        })
        .collect();
    StepLog::new(steps[0], 0, None, steps.iter().find_map(|r| r.tcp), &logged)
}

/// A log as the kernel writes it in the ring (inverse of
/// `bpf::decode::decode_any`).
pub fn encode_log(log: &StepLog) -> Vec<u8> {
    let (head, steps) = raw_log(log);
    bytes_of(&Log {
        head,
        generation: log.generation,
        steps_len: u8::try_from(log.steps().len()).unwrap_or(u8::MAX),
        _pad: [0; 3],
        steps,
    })
}

/// A log as a socket's entry holds it in the owner map (inverse of
/// `bpf::decode::decode_entry`).
pub fn encode_entry(log: &StepLog) -> Vec<u8> {
    let (head, steps) = raw_log(log);
    let last = log.steps().last();
    bytes_of(&SocketEntry {
        cgroup_id: head.cgroup_id,
        since_ns: last.map_or(0, |s| s.ts_ns),
        prior_ns: head.since_ns,
        saddr: head.saddr,
        daddr: head.daddr,
        comm: head.comm,
        tcp: head.tcp,
        tgid: head.tgid,
        netns: head.netns,
        generation: log.generation,
        sport: head.sport,
        dport: head.dport,
        family: head.family,
        since_state: match last.map(|s| s.kind) {
            Some(Kind::StateChange { new, .. }) => new as u8,
            _ => 0,
        },
        steps_len: u8::try_from(log.steps().len()).unwrap_or(u8::MAX),
        _pad: [0; 4],
        steps,
    })
}

fn kind_of(kind: Kind) -> (EventKind, u8, u8) {
    match kind {
        Kind::StateChange { old, new } => (EventKind::StateChange, old as u8, new as u8),
        Kind::SendReset { state } => (EventKind::SendReset, state as u8, 0),
        Kind::ReceiveReset { state } => (EventKind::ReceiveReset, state as u8, 0),
    }
}

/// The kernel's record of `r`.
fn event_of(r: &Record) -> Event {
    let raw = |a: IpAddr| match a {
        IpAddr::V4(v4) => {
            let mut raw = [0; 16];
            raw[..4].copy_from_slice(&v4.octets());
            raw
        }
        IpAddr::V6(v6) => v6.octets(),
    };
    let (kind, old, new) = kind_of(r.kind);
    Event {
        ts_ns: r.ts_ns,
        cookie: r.cookie,
        since_ns: r.since_ns.unwrap_or(0),
        cgroup_id: r.owner.map_or(0, |o| o.cgroup_id),
        saddr: raw(r.laddr),
        daddr: raw(r.raddr),
        comm: r.owner.map_or([0; COMM_LEN], |o| {
            let mut raw = [0; COMM_LEN];
            raw[..o.comm.as_bytes().len()].copy_from_slice(o.comm.as_bytes());
            raw
        }),
        tgid: r.owner.map_or(0, |o| o.pid),
        netns: r.netns,
        sport: r.lport,
        dport: r.rport,
        family: match r.family {
            Family::Ipv4 => AF_INET,
            Family::Ipv6 => AF_INET6,
        },
        kind: kind as u8,
        old_state: old,
        new_state: new,
        owner_source: if r.owner.is_some() {
            OwnerSource::Current as u8
        } else {
            OwnerSource::Unknown as u8
        },
        fin_received: r.peer_fin.map_or(FIN_UNKNOWN, u8::from),
        has_tcp: u8::from(r.tcp.is_some()),
        no_timewait: u8::from(r.no_timewait),
        _pad: [0; 3],
        tcp: r.tcp.unwrap_or_default(),
        net: r
            .net
            .map_or_else(Default::default, |n| NetFigures { read: 1, ..n }),
    }
}
