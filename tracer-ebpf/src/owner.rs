//! Who owns each socket, per cookie: recorded by the hooks that run in the owning process, read by the ones that run in softirq, where the current task is unrelated. The entry is also where a socket's steps are logged (`fold.rs`).

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{bpf_get_current_cgroup_id, bpf_get_current_task},
    },
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use tracer_common::{
    COMM_LEN, NO_OFFSET, OWNERS_MAX_ENTRIES, OwnerSource, SocketEntry, TcpFigures, TcpState,
    entry_counts, failed,
};

use crate::{
    config::config,
    record::{count, count_failure},
    sock::probe,
};

/// Cookie -> who owns the socket and when it entered its state.
/// (Socket-local storage was measured too: its lookups are cheaper, but
/// creating and freeing an entry for every socket cost four times what
/// an LRU insert and delete do, and connections that live for
/// milliseconds are what this tool must keep up with.)
#[map]
pub static OWNERS: LruHashMap<u64, SocketEntry> =
    LruHashMap::with_max_entries(OWNERS_MAX_ENTRIES, 0);

/// Entries made and freed, per CPU (see `tracer_common::entry_counts`):
/// the LRU map recycles entries silently, so this is how userspace counts
/// what it recycled.
#[map]
static ENTRY_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(entry_counts::SLOTS, 0);

/// Where a new entry is built before it is inserted: an entry is too
/// large for the programs' stack. Slot [`SCRATCH_STEP`] for the state
/// change program, [`SCRATCH_IO`] for the I/O hooks, [`SCRATCH_NESTED`]
/// for the state change program's second copy: each may interrupt another
/// on the same CPU (a softirq state change during a process-context run),
/// while a program never interrupts itself (the kernel skips such a run).
#[map]
static SCRATCH: PerCpuArray<SocketEntry> = PerCpuArray::with_max_entries(3, 0);

pub const SCRATCH_STEP: u32 = 0;
pub const SCRATCH_IO: u32 = 1;
pub const SCRATCH_NESTED: u32 = 2;

/// Counts a run of the state-change program's second copy (see
/// `tracer_common::entry_counts::RESCUED`).
#[inline(always)]
pub fn count_rescued() {
    count(&ENTRY_COUNTS, entry_counts::RESCUED);
}

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

    pub fn of(entry: &SocketEntry, source: OwnerSource) -> Self {
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
pub fn entry_of(cookie: u64) -> Option<&'static mut SocketEntry> {
    // SAFETY: the map hands out a pointer to its value, valid for this
    // program run (RCU); programs that race on it are on other CPUs or
    // interrupt this one, and every field is a plain integer, so a torn
    // read is a stale value, never an invalid one.
    OWNERS.get_ptr_mut(cookie).map(|p| unsafe { &mut *p })
}

/// A fresh entry in scratch slot `slot`, owned by the current process
/// if `owned` (else by nobody yet), in `state` since `since_ns`, with an
/// empty log; `None` if the slot cannot be had.
#[inline(always)]
pub fn fresh_entry(
    slot: u32,
    owned: bool,
    state: u8,
    since_ns: u64,
) -> Option<&'static mut SocketEntry> {
    // SAFETY: a per-CPU slot valid for this run, which only this program
    // (or, for SCRATCH_IO, the other I/O hook, never nested in it) uses;
    // the state change program and its second copy take their own slots.
    let entry = unsafe { &mut *SCRATCH.get_ptr_mut(slot)? };
    if owned {
        entry.tgid = current_tgid();
        entry.comm = process_comm();
        // SAFETY: no arguments; the current task's cgroup v2 id.
        entry.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    } else {
        entry.tgid = 0;
        entry.comm = [0; COMM_LEN];
        entry.cgroup_id = 0;
    }
    entry.since_ns = since_ns;
    entry.since_state = state;
    entry.prior_ns = 0;
    entry.tcp = TcpFigures::default();
    entry.generation = 0;
    entry.family = 0;
    entry.steps_len = 0;
    // The rest (endpoints, steps) is written before it is read: the
    // endpoints with each logged step, a step before `steps_len` counts it.
    Some(entry)
}

/// Gives the socket the entry `init`; false if that failed (allocation
/// failure: the owner then stays unknown for softirq events).
#[inline(always)]
pub fn create_entry(cookie: u64, init: &SocketEntry) -> bool {
    let created = OWNERS.insert(cookie, init, 0).is_ok();
    if created {
        count(&ENTRY_COUNTS, entry_counts::MADE);
    } else {
        count_failure(failed::OWNER_INSERT);
    }
    created
}

/// The socket's entry goes: it is being destroyed.
#[inline(always)]
pub fn forget(cookie: u64) {
    if OWNERS.remove(cookie).is_ok() {
        count(&ENTRY_COUNTS, entry_counts::FREED);
    }
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

/// What a state change learned from and left in the socket's entry
/// (when every transition is written at once).
pub struct Transition {
    pub owner: Attribution,
    /// When the socket entered the old state; 0 if not recorded.
    pub since_ns: u64,
}

impl Transition {
    /// An accepted socket's creation: nobody owns it yet.
    pub const CREATED: Self = Self {
        owner: Attribution::UNKNOWN,
        since_ns: 0,
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
pub fn step_recorded(cookie: u64, old: u8, new: u8, now: u64) -> Transition {
    match entry_of(cookie) {
        Some(entry) => Transition {
            since_ns: advance(entry, old, new, now),
            owner: Attribution::of(entry, OwnerSource::Recorded),
        },
        None => Transition {
            owner: Attribution::UNKNOWN,
            since_ns: 0,
        },
    }
}

/// A state change inside a syscall of the owner: the current task is
/// recorded as the owner.
#[inline(always)]
pub fn step_current(slot: u32, cookie: u64, tgid: u32, old: u8, new: u8, now: u64) -> Transition {
    if let Some(entry) = entry_of(cookie) {
        adopt(entry, tgid);
        return Transition {
            since_ns: advance(entry, old, new, now),
            owner: Attribution::of(entry, OwnerSource::Current),
        };
    }
    let Some(entry) = fresh_entry(slot, true, new, now) else {
        count_failure(failed::OWNER_INSERT);
        return Transition {
            owner: Attribution::UNKNOWN,
            since_ns: 0,
        };
    };
    create_entry(cookie, entry);
    Transition {
        owner: Attribution::of(entry, OwnerSource::Current),
        since_ns: 0,
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
        None => match fresh_entry(SCRATCH_IO, true, 0, 0) {
            Some(entry) => {
                create_entry(cookie, entry);
            }
            None => count_failure(failed::OWNER_INSERT),
        },
    }
}

/// Makes `tgid` the owner; the comm and cgroup are only fetched when the
/// socket changes hands.
#[inline(always)]
pub fn adopt(entry: &mut SocketEntry, tgid: u32) {
    if entry.tgid != tgid {
        entry.tgid = tgid;
        entry.comm = process_comm();
        // SAFETY: no arguments; the current task's cgroup v2 id.
        entry.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
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
