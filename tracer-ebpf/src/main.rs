//! Kernel programs: TCP state changes and resets keyed by socket cookie, folded into one ring record per socket (or written one by one for `--transitions`), with each socket's owner kept in a map fed by the hooks that run in the owning process. One thin entry per program; the work is in `try_` functions whose failures are counted.
#![no_std]
#![no_main]
// `atomic_xadd` (record.rs): core's AtomicU64::fetch_add is not offered on
// the BPF target.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "core_intrinsics, for atomic_xadd")]
// Helpers are inlined into each program on purpose: a BPF-to-BPF call costs
// a frame and the verifier re-checks the callee per call site anyway.
#![expect(clippy::inline_always, reason = "see above")]

mod config;
mod fold;
mod owner;
mod record;
mod sock;

use aya_ebpf::{
    helpers::generated::bpf_ktime_get_boot_ns,
    macros::{btf_tracepoint, map},
    maps::PerCpuArray,
    programs::BtfTracePointContext,
};
use tracer_common::{EventKind, FIN_UNKNOWN, TcpState, failed};

use crate::{
    config::config,
    owner::{
        SCRATCH_NESTED, SCRATCH_STEP, Transition, count_rescued, current_tgid, forget, note_io,
        recorded_owner, runs_in_owner, step_current, step_recorded,
    },
    record::{Record, count_failure, emit},
    sock::{
        closing_figures, cookie_of, field, fin_received, final_figures, is_tcp, no_timewait,
        pid_allowed, traced_family, traced_ports, tuple_if_traced,
    },
};

/// Counts a run that failed; every program returns 0 either way.
#[inline(always)]
fn done(result: Result<(), i32>) -> i32 {
    if result.is_err() {
        count_failure(failed::RUN);
    }
    0
}

/// Boot-clock now, as records are stamped.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: no arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// Non-zero while [`inet_sock_set_state`] runs on this CPU.
///
/// The kernel never runs a program inside itself: a state change in a
/// softirq that interrupts the program on the same CPU (a timer's ACK
/// finishing an orphan's FIN_WAIT1 and its hand-over to a timewait socket,
/// while a process closes another socket) is skipped and counted as a
/// recursion miss. For a folded socket that loses its last steps and the
/// log they end with. A second program on the same tracepoint has its own
/// recursion guard: [`state_nested`] does the skipped run,
/// and only then.
#[map]
static BUSY: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// `trace_inet_sock_set_state()` (include/trace/events/sock.h), fired by
/// `inet_sk_state_store()`/`inet_sk_set_state()` on every state change of an
/// inet socket; `tp_btf` so the `struct sock *` is typed and the cookie helper
/// can take it.
#[btf_tracepoint(function = "inet_sock_set_state")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature the macro requires"
)]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let busy = BUSY.get_ptr_mut(0);
    if let Some(busy) = busy {
        // SAFETY: this CPU's slot, valid for this run.
        unsafe { *busy = 1 };
    }
    let result = done(try_inet_sock_set_state(&ctx, SCRATCH_STEP));
    if let Some(busy) = busy {
        // SAFETY: as above.
        unsafe { *busy = 0 };
    }
    result
}

/// The state change [`inet_sock_set_state`] could not take because it was
/// running on this CPU already (see [`BUSY`]); every other run returns at
/// once.
#[btf_tracepoint(function = "inet_sock_set_state")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature the macro requires"
)]
pub fn state_nested(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: this CPU's slot, valid for this run.
    let busy = BUSY.get_ptr(0).is_some_and(|busy| unsafe { *busy } != 0);
    if !busy {
        return 0;
    }
    count_rescued();
    done(try_inet_sock_set_state(&ctx, SCRATCH_NESTED))
}

/// The state change program's work; `slot` is the scratch slot of the
/// copy running.
#[inline(always)]
fn try_inet_sock_set_state(ctx: &BtfTracePointContext, slot: u32) -> Result<(), i32> {
    // The tracepoint's arguments are (sk, oldstate, newstate).
    let (sk, old, new): (*const u8, i32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    if sk.is_null() || !is_tcp(sk) {
        return Ok(());
    }
    let Some(tuple) = tuple_if_traced(sk, true)? else {
        return Ok(());
    };
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "TCP states are 1..=12"
    )]
    let (old, new) = (old as u8, new as u8);
    // An accepted socket's creation, in softirq: no process holds it yet.
    // It lasts no time (the socket is born on the handshake's last ACK and
    // made ESTABLISHED at once), so a log starts at the next step.
    let created = old == TcpState::Listen as u8 && new == TcpState::SynRecv as u8;
    if created && config!(every_transition) == 0 {
        return Ok(());
    }
    let cookie = cookie_of(sk);
    let now = now_ns();
    if config!(every_transition) == 0 {
        fold::state_change(slot, sk, &tuple, cookie, old, new, now);
        return Ok(());
    }
    let step = if created {
        Transition::CREATED
    } else if runs_in_owner(old, new) {
        step_current(slot, cookie, current_tgid(), old, new, now)
    } else {
        step_recorded(cookie, old, new, now)
    };
    if !pid_allowed(step.owner.tgid) {
        if step.owner.tgid == 0 && !created {
            count_failure(failed::UNATTRIBUTED);
        }
        return Ok(());
    }
    let record = Record {
        kind: EventKind::StateChange,
        cookie,
        old_state: old,
        new_state: new,
        owner: step.owner,
        fin_received: fin_received(sk),
        since_ns: step.since_ns,
        ts_ns: now,
        tcp: closing_figures(sk, old, new),
        net: final_figures(sk, new),
        no_timewait: no_timewait(sk, &tuple, cookie, old, new),
    };
    emit(sk, &tuple, &record);
    Ok(())
}

/// `trace_tcp_destroy_sock()` from `tcp_v4_destroy_sock()`: the full socket is
/// freed (closed, or replaced by a timewait socket with the same cookie).
/// Its entry goes with it, rather than waiting for LRU recycling to push
/// out an entry still in use. No record: the tracker closes a lifecycle on
/// its CLOSE.
#[btf_tracepoint(function = "tcp_destroy_sock")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature the macro requires"
)]
pub fn tcp_destroy_sock(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    if !sk.is_null() && traced_family(sk).is_some() {
        forget(cookie_of(sk));
    }
    0
}

/// `trace_tcp_send_reset()` from `tcp_v4_send_reset()`/`tcp_send_active_reset()`:
/// this host sends a RST. `sk` may be NULL (no socket), a request or a
/// timewait socket, so only `sock_common` fields are read.
#[btf_tracepoint(function = "tcp_send_reset")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature the macro requires"
)]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> i32 {
    done(try_reset(&ctx, EventKind::SendReset))
}

/// `trace_tcp_receive_reset()` from `tcp_reset()`: the peer's RST arrived.
#[btf_tracepoint(function = "tcp_receive_reset")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature the macro requires"
)]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    done(try_reset(&ctx, EventKind::ReceiveReset))
}

/// Only a received RST is sure to find a full socket.
fn try_reset(ctx: &BtfTracePointContext, kind: EventKind) -> Result<(), i32> {
    // Both reset tracepoints take the socket first.
    let sk: *const u8 = ctx.arg(0);
    if sk.is_null() {
        return Ok(());
    }
    let Some(tuple) = tuple_if_traced(sk, kind == EventKind::ReceiveReset)? else {
        return Ok(());
    };
    let cookie = cookie_of(sk);
    let state: u8 = field(sk, config!(offsets.state));
    let now = now_ns();
    if config!(every_transition) == 0 && fold::reset(sk, &tuple, cookie, kind, state, now) {
        return Ok(());
    }
    let owner = recorded_owner(cookie);
    if !pid_allowed(owner.tgid) {
        if owner.tgid == 0 {
            count_failure(failed::UNATTRIBUTED);
        }
        return Ok(());
    }
    let record = Record {
        kind,
        cookie,
        old_state: state,
        new_state: 0,
        owner,
        fin_received: FIN_UNKNOWN,
        since_ns: 0,
        ts_ns: now,
        tcp: None,
        net: None,
        no_timewait: false,
    };
    emit(sk, &tuple, &record);
    Ok(())
}

/// `trace_sock_send_length()` from `sock_sendmsg_nosec()`: runs in the task
/// doing the I/O, so it names the owner (an accepted socket's first, or a
/// socket handed to another process). No record is written; this hook sits
/// on every send of every socket, so its common path is one lookup. (When
/// data last moved, the kernel keeps itself: userspace reads TCP_INFO.)
#[btf_tracepoint(function = "sock_send_length")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature the macro requires"
)]
pub fn sock_send_length(ctx: BtfTracePointContext) -> i32 {
    done(track_io(&ctx))
}

/// `trace_sock_recv_length()` from `sock_recvmsg_nosec()`: as above, for receives.
#[btf_tracepoint(function = "sock_recv_length")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature the macro requires"
)]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    done(track_io(&ctx))
}

fn track_io(ctx: &BtfTracePointContext) -> Result<(), i32> {
    // Both I/O tracepoints take the socket first.
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
    note_io(cookie_of(sk), tgid);
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
