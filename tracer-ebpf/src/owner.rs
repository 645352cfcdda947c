//! Who owns each socket, per cookie: recorded by the hooks that run in the owning process, read by the ones that run in softirq, where the current task is unrelated.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{bpf_get_current_cgroup_id, bpf_get_current_task},
    },
    macros::map,
    maps::LruHashMap,
};
use tracer_common::{
    COMM_LEN, NO_OFFSET, OWNERS_MAX_ENTRIES, OwnerSource, SocketEntry, TcpState, failed,
};

use crate::{
    config::config,
    record::count_failure,
    sock::{probe, sock_flag},
};

/// Cookie -> who owns the socket and when it entered its state.
/// (Socket-local storage was measured too: its lookups are cheaper, but
/// creating and freeing an entry for every socket cost four times what
/// an LRU insert and delete do, and connections that live for
/// milliseconds are what this tool must keep up with.)
#[map]
pub static OWNERS: LruHashMap<u64, SocketEntry> =
    LruHashMap::with_max_entries(OWNERS_MAX_ENTRIES, 0);

/// Who a record names, and how that was learned.
pub struct Attribution {
    pub tgid: u32,
    pub comm: [u8; COMM_LEN],
    pub cgroup_id: u64,
    pub source: OwnerSource,
}

impl Attribution {
    pub const UNKNOWN: Self = Self {
        tgid: 0,
        comm: [0; COMM_LEN],
        cgroup_id: 0,
        source: OwnerSource::Unknown,
    };

    fn of(entry: &SocketEntry, source: OwnerSource) -> Self {
        Self {
            tgid: entry.tgid,
            comm: entry.comm,
            cgroup_id: entry.cgroup_id,
            source,
        }
    }
}

/// The socket's entry, if it has one.
#[inline(always)]
fn entry_of(cookie: u64) -> Option<&'static mut SocketEntry> {
    // SAFETY: the map hands out a pointer to its value, valid for this
    // program run (RCU); programs that race on it are on other CPUs or
    // interrupt this one, and every field is a plain integer, so a torn
    // read is a stale value, never an invalid one.
    OWNERS.get_ptr_mut(cookie).map(|p| unsafe { &mut *p })
}

/// Gives the socket the entry `init`; false if that failed (allocation
/// failure: the owner then stays unknown for softirq events).
#[inline(always)]
fn create_entry(cookie: u64, init: &SocketEntry) -> bool {
    let created = OWNERS.insert(cookie, init, 0).is_ok();
    if !created {
        count_failure(failed::OWNER_INSERT);
    }
    created
}

/// The socket's entry goes: it is being destroyed.
#[inline(always)]
pub fn forget(cookie: u64) {
    let _ = OWNERS.remove(cookie);
}

/// The owner as recorded for the socket, without trusting the current task.
#[inline(always)]
pub fn recorded_owner(cookie: u64) -> Attribution {
    match entry_of(cookie) {
        Some(entry) => Attribution::of(entry, OwnerSource::Recorded),
        None => Attribution::UNKNOWN,
    }
}

/// The current process.
#[inline(always)]
pub fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// What a state change learned from and left in the socket's entry.
pub struct Step {
    pub owner: Attribution,
    /// When the socket entered the old state; 0 if not recorded.
    pub since_ns: u64,
    /// The entry holds the new state's entry time: the next record can
    /// carry it, so this one may be skipped.
    pub recorded: bool,
}

impl Step {
    /// An accepted socket's creation: nobody owns it yet.
    pub const CREATED: Self = Self {
        owner: Attribution::UNKNOWN,
        since_ns: 0,
        recorded: false,
    };
}

/// Moves the socket's recorded state on to `new` at `now`, returning when
/// it had entered `old`.
#[inline(always)]
fn advance(entry: &mut SocketEntry, old: u8, new: u8, now: u64) -> u64 {
    let since = if entry.since_state == old {
        entry.since_ns
    } else {
        0
    };
    entry.since_state = new;
    entry.since_ns = now;
    since
}

/// A state change in softirq or timer context: the recorded owner, if any.
#[inline(always)]
pub fn step_recorded(cookie: u64, old: u8, new: u8, now: u64) -> Step {
    match entry_of(cookie) {
        Some(entry) => Step {
            since_ns: advance(entry, old, new, now),
            owner: Attribution::of(entry, OwnerSource::Recorded),
            recorded: true,
        },
        None => Step {
            owner: Attribution::UNKNOWN,
            since_ns: 0,
            recorded: false,
        },
    }
}

/// A state change inside a syscall of the owner: the current task is
/// recorded as the owner.
#[inline(always)]
pub fn step_current(cookie: u64, tgid: u32, old: u8, new: u8, now: u64) -> Step {
    if let Some(entry) = entry_of(cookie) {
        adopt(entry, tgid);
        return Step {
            since_ns: advance(entry, old, new, now),
            owner: Attribution::of(entry, OwnerSource::Current),
            recorded: true,
        };
    }
    let entry = new_entry(tgid, new, now);
    let recorded = create_entry(cookie, &entry);
    Step {
        owner: Attribution::of(&entry, OwnerSource::Current),
        since_ns: 0,
        recorded,
    }
}

/// The current task did I/O on the socket: it owns it (the first I/O of
/// an accepted socket, or a socket handed to another process).
#[inline(always)]
pub fn note_io(cookie: u64, tgid: u32) {
    match entry_of(cookie) {
        // The common case, every send and receive: nothing to do.
        Some(entry) if entry.tgid == tgid => {}
        Some(entry) => adopt(entry, tgid),
        None => {
            create_entry(cookie, &new_entry(tgid, 0, 0));
        }
    }
}

/// Makes `tgid` the owner; the comm and cgroup are only fetched when the
/// socket changes hands.
#[inline(always)]
fn adopt(entry: &mut SocketEntry, tgid: u32) {
    if entry.tgid != tgid {
        entry.tgid = tgid;
        entry.comm = process_comm();
        // SAFETY: no arguments; the current task's cgroup v2 id.
        entry.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    }
}

/// The current process as the owner of a socket in `state` since `since_ns`.
#[inline(always)]
fn new_entry(tgid: u32, state: u8, since_ns: u64) -> SocketEntry {
    SocketEntry {
        // SAFETY: no arguments; the current task's cgroup v2 id.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        since_ns,
        comm: process_comm(),
        tgid,
        since_state: state,
        _pad: [0; 3],
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

/// Transitions that only happen inside a syscall of the owning process, so
/// the current task is the owner: connect, listen, close and shutdown.
#[inline(always)]
pub fn runs_in_owner(old: u8, new: u8) -> bool {
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
        (CLOSE, SYN_SENT | LISTEN)
            | (LISTEN, CLOSE)
            | (ESTABLISHED | SYN_RECV, FIN_WAIT1)
            | (CLOSE_WAIT, LAST_ACK)
    )
}

/// Steps whose record can be left out (see `Config::every_transition`):
/// the next record's `since_ns` dates them. Connect and an accepted
/// socket's creation (its SYN_RECV lasts no time: it is born on the final
/// ACK and made ESTABLISHED at once); an orphan's FIN_WAIT1 -> FIN_WAIT2,
/// which hands over to a timewait socket in the same instant.
#[inline(always)]
pub fn skippable(sk: *const u8, old: u8, new: u8, recorded: bool) -> bool {
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
