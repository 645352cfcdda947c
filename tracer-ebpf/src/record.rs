//! Writing records to the ring, and counting those that could not be written.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use tracer_common::{
    Event, EventKind, LOG_STEPS, Log, NetFigures, SocketEntry, TcpFigures, failed,
};

use crate::{
    config::config,
    owner::Attribution,
    sock::{Tuple, addresses, netns_of},
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

/// What a record says besides the socket's own fields.
pub struct Record {
    pub kind: EventKind,
    pub cookie: u64,
    /// State before the transition; for a RST, the socket's state.
    pub old_state: u8,
    /// State after the transition; 0 for a RST.
    pub new_state: u8,
    pub owner: Attribution,
    pub fin_received: u8,
    /// When the socket entered `old_state`; 0 if not recorded.
    pub since_ns: u64,
    pub ts_ns: u64,
    pub tcp: Option<TcpFigures>,
    /// At a step to CLOSE: the socket's whole life.
    pub net: Option<NetFigures>,
    /// At a step to CLOSE from FIN_WAIT2 or CLOSING: no timewait socket
    /// took the socket's place (see `sock::timewait_successor`).
    pub no_timewait: bool,
}

/// Losses the kernel side counts, per CPU, one slot each (see
/// `tracer_common::failed`).
#[map]
static FAILED: PerCpuArray<u64> = PerCpuArray::with_max_entries(failed::SLOTS, 0);

/// Counts a loss in slot `which` of `FAILED`.
#[inline(always)]
pub fn count_failure(which: u32) {
    count(&FAILED, which);
}

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn count(counter: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = counter.get_ptr_mut(index) {
        // SAFETY: a valid per-CPU slot for this run; atomic because a
        // softirq program can interrupt a process-context one on the same
        // CPU (core's AtomicU64 is not offered on the BPF target, whose
        // atomics lack compare-and-swap, but a plain atomic add is one insn).
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, 1) };
    }
}

/// Writes the record of socket `sk`.
#[inline(always)]
pub fn emit(sk: *const u8, tuple: &Tuple, r: &Record) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(&DROPS, 0);
        return;
    };
    let (saddr, daddr) = addresses(sk, tuple.family);
    entry.write(Event {
        ts_ns: r.ts_ns,
        cookie: r.cookie,
        since_ns: r.since_ns,
        cgroup_id: r.owner.cgroup_id,
        saddr,
        daddr,
        comm: r.owner.comm,
        tgid: r.owner.tgid,
        netns: netns_of(sk),
        sport: tuple.sport,
        dport: tuple.dport,
        family: tuple.family,
        kind: r.kind as u8,
        old_state: r.old_state,
        new_state: r.new_state,
        owner_source: r.owner.source as u8,
        fin_received: r.fin_received,
        has_tcp: u8::from(r.tcp.is_some()),
        no_timewait: u8::from(r.no_timewait),
        _pad: [0; 3],
        tcp: r.tcp.unwrap_or_default(),
        net: r.net.unwrap_or_default(),
    });
    entry.submit(submit_flags());
}

/// Writes the steps logged in `log`, the entry of socket `cookie`, as one
/// record; the endpoints are the entry's, as of its last step; `net` the
/// socket's figures when that step ends its life.
#[inline(always)]
pub fn emit_log(cookie: u64, log: &SocketEntry, now: u64, net: Option<NetFigures>) {
    let Some(mut entry) = EVENTS.reserve::<Log>(0) else {
        count(&DROPS, 0);
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points to the reserved, writable `Log`; every field
    // is written (field by field: a whole `Log` would not fit the
    // programs' stack) before it is submitted.
    unsafe {
        (*record).head = log.log_head(cookie, now);
        if let Some(net) = net {
            (*record).head.net = net;
        }
        (*record).generation = log.generation;
        (*record).steps_len = log.steps_len;
        (*record)._pad = [0; 3];
        let mut i = 0;
        while i < LOG_STEPS {
            (*record).steps[i] = log.steps[i];
            i += 1;
        }
    }
    entry.submit(submit_flags());
}

/// Below the wakeup threshold a record is written without waking the
/// consumer, which drains on a short timer: a wakeup per record is what
/// makes tracing expensive at high connection rates. Notes the ring's
/// fill level on the way.
#[inline(always)]
fn submit_flags() -> u64 {
    let wakeup_bytes = u64::from(config!(wakeup_bytes));
    let avail = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    if let Some(peak) = RING_PEAK.get_ptr_mut(0) {
        // SAFETY: a valid per-CPU slot for this run. A lost race between
        // nested writers on this CPU only lowers a watermark.
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
    u64::from(flags)
}
