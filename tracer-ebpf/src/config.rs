//! The settings userspace gives the programs at load time (filters, field offsets, the wakeup threshold), read as constants.

use tracer_common::{Config, MAX_FILTER_PIDS, MAX_FILTER_PORTS, NO_OFFSET, SockOffsets};

/// Set by userspace before load (`EbpfLoader::override_global`). The
/// non-zero placeholder keeps it in `.rodata`, which aya freezes, so the
/// verifier sees every field as a constant and prunes disabled filters.
#[unsafe(no_mangle)]
pub static CONFIG: Config = Config {
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
        bytes_acked: NO_OFFSET,
        bytes_received: NO_OFFSET,
        srtt_us: NO_OFFSET,
        mdev_us: NO_OFFSET,
        total_retrans: NO_OFFSET,
        sk_err: NO_OFFSET,
        skc_hash: 0,
        nulls_node: 0,
        skc_cookie: 0,
        death_row_hashinfo: NO_OFFSET,
        ehash: 0,
        ehash_mask: 0,
        _pad: 0,
    },
    jiffy_us: 0,
};

/// One field of [`CONFIG`], as loaded.
macro_rules! config {
    ($($field:tt)+) => {
        // SAFETY: reading a static that nothing writes; volatile so the
        // placeholder value is not constant-folded into the program: the
        // loaded value is what counts.
        unsafe {
            ::core::ptr::read_volatile(::core::ptr::addr_of!($crate::config::CONFIG.$($field)+))
        }
    };
}
pub(crate) use config;
