//! Each socket's life folded into its map entry: every state change and RST of the full socket is logged there, and the log goes to the ring as one record when the full socket's life ends (or the log fills). Userspace reads the live entries in batches for what is open now.

use tracer_common::{
    EventKind, FIN_UNKNOWN, LOG_STEPS, NetFigures, OwnerSource, STEP_IN_OWNER, STEP_NO_TIMEWAIT,
    STEP_TCP, SocketEntry, Step, TcpFigures, TcpState, failed,
};

use crate::{
    owner::{
        Attribution, adopt, create_entry, current_tgid, entry_of, forget, fresh_entry,
        runs_in_owner,
    },
    record::{Record, count_failure, emit, emit_log},
    sock::{
        Tuple, addresses, closing_figures, fin_received, final_figures, netns_of, no_timewait,
        pid_allowed,
    },
};

const CLOSE: u8 = TcpState::Close as u8;
const LISTEN: u8 = TcpState::Listen as u8;

/// Logs the state change `old` -> `new` of socket `sk`; at CLOSE, the end
/// of the full socket's life, writes the log out. `slot` is the scratch
/// slot of the program running.
#[inline(always)]
pub fn state_change(
    slot: u32,
    sk: *const u8,
    tuple: &Tuple,
    cookie: u64,
    old: u8,
    new: u8,
    now: u64,
) {
    let in_owner = runs_in_owner(old, new);
    let mut step = Step {
        ts_ns: now,
        kind: EventKind::StateChange as u8,
        old_state: old,
        new_state: new,
        fin_received: fin_received(sk),
        flags: if in_owner { STEP_IN_OWNER } else { 0 },
        _pad: [0; 3],
    };
    let tcp = closing_figures(sk, old, new);
    if tcp.is_some() {
        step.flags |= STEP_TCP;
    }
    if no_timewait(sk, tuple, cookie, old, new) {
        step.flags |= STEP_NO_TIMEWAIT;
    }
    let Some(entry) = entry_of(cookie) else {
        first_step(slot, sk, tuple, cookie, &step, tcp);
        return;
    };
    if in_owner {
        adopt(entry, current_tgid());
    }
    if let Some(tcp) = tcp {
        entry.tcp = tcp;
    }
    append(entry, sk, tuple, cookie, &step);
    entry.since_state = new;
    entry.since_ns = now;
    if new == LISTEN {
        write_out(entry, cookie, now, None);
    } else if new == CLOSE {
        // The end of the full socket's life: its log goes out and its
        // entry with it, here rather than in a destroy hook: the same
        // delete (measured: the same kernel time per connection) with one
        // hook less attached. A socket that connects again after a failed
        // connect starts a new entry.
        write_out(entry, cookie, now, final_figures(sk, new));
        forget(cookie);
    }
}

/// Logs a RST on socket `sk` in `state`; false if it has no entry (or is
/// not a full socket), and so must be written at once.
#[inline(always)]
pub fn reset(
    sk: *const u8,
    tuple: &Tuple,
    cookie: u64,
    kind: EventKind,
    state: u8,
    now: u64,
) -> bool {
    // A timewait or request socket shares no entry with the full socket
    // (a timewait one inherits its cookie, but the full socket's log was
    // written out at its CLOSE).
    if state == TcpState::TimeWait as u8 || state == TcpState::NewSynRecv as u8 || state == CLOSE {
        return false;
    }
    let Some(entry) = entry_of(cookie) else {
        return false;
    };
    let step = Step {
        ts_ns: now,
        kind: kind as u8,
        old_state: state,
        new_state: 0,
        fin_received: FIN_UNKNOWN,
        flags: 0,
        _pad: [0; 3],
    };
    append(entry, sk, tuple, cookie, &step);
    true
}

/// The first step of a socket without an entry: the entry is made with it
/// logged. A step to CLOSE (nothing before it was logged), a listener's
/// (which needs no entry: its steps run in its owner and are written at
/// once), or an entry the map refuses, is written at once as a record of
/// its own.
///
/// A listener's steps are never held back: the tracker names the sockets
/// it accepts after it (their role, and their owner until a process is
/// seen with them), so its LISTEN must reach userspace before any read
/// of their entries does.
#[inline(always)]
fn first_step(
    slot: u32,
    sk: *const u8,
    tuple: &Tuple,
    cookie: u64,
    step: &Step,
    tcp: Option<TcpFigures>,
) {
    let in_owner = step.flags & STEP_IN_OWNER != 0;
    let mut entry = fresh_entry(slot, in_owner, step.new_state, step.ts_ns);
    if let Some(entry) = entry.as_deref_mut()
        && step.new_state != CLOSE
        && step.new_state != LISTEN
    {
        if let Some(tcp) = tcp {
            entry.tcp = tcp;
        }
        set_endpoints(entry, sk, tuple);
        entry.steps[0] = *step;
        entry.steps_len = 1;
        if create_entry(cookie, entry) {
            return;
        }
    }
    let owner = match entry {
        Some(entry) if in_owner => Attribution::of(entry, OwnerSource::Current),
        _ => Attribution::UNKNOWN,
    };
    if !pid_allowed(owner.tgid) {
        if owner.tgid == 0 {
            count_failure(failed::UNATTRIBUTED);
        }
        return;
    }
    emit(
        sk,
        tuple,
        &Record {
            kind: EventKind::StateChange,
            cookie,
            old_state: step.old_state,
            new_state: step.new_state,
            owner,
            fin_received: step.fin_received,
            since_ns: 0,
            ts_ns: step.ts_ns,
            tcp,
            net: final_figures(sk, step.new_state),
            no_timewait: step.flags & STEP_NO_TIMEWAIT != 0,
        },
    );
}

/// Adds `step` to the entry's log, writing the log out first if it is
/// full. The socket's endpoints are noted until they are all known: an
/// entry made by an I/O hook has none, and connect's first step has no
/// local port yet; after that they do not change.
#[inline(always)]
fn append(entry: &mut SocketEntry, sk: *const u8, tuple: &Tuple, cookie: u64, step: &Step) {
    if usize::from(entry.steps_len) >= LOG_STEPS {
        write_out(entry, cookie, step.ts_ns, None);
    }
    let len = usize::from(entry.steps_len);
    if len < LOG_STEPS {
        entry.steps[len] = *step;
        entry.steps_len += 1;
    }
    if entry.family == 0 || entry.sport == 0 {
        set_endpoints(entry, sk, tuple);
    }
}

#[inline(always)]
fn set_endpoints(entry: &mut SocketEntry, sk: *const u8, tuple: &Tuple) {
    let (saddr, daddr) = addresses(sk, tuple.family);
    entry.saddr = saddr;
    entry.daddr = daddr;
    entry.family = tuple.family;
    entry.sport = tuple.sport;
    entry.dport = tuple.dport;
    entry.netns = netns_of(sk);
}

/// Writes the log to the ring (unless the pid filter leaves its owner
/// out) and starts the next one; `net`: the socket's figures, when its
/// last step ends its life.
#[inline(always)]
fn write_out(entry: &mut SocketEntry, cookie: u64, now: u64, net: Option<NetFigures>) {
    if pid_allowed(entry.tgid) {
        emit_log(cookie, entry, now, net);
    } else if entry.tgid == 0 {
        count_failure(failed::UNATTRIBUTED);
    }
    entry.prior_ns = entry.since_ns;
    entry.steps_len = 0;
    entry.generation = entry.generation.wrapping_add(1);
}
