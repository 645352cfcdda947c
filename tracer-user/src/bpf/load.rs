//! Loads the committed eBPF object, configures it for this kernel and these filters, and attaches its programs.

use std::{
    fs,
    io::ErrorKind,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{MapData, MapError, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, ProgramError},
};
use tracer_common::{
    AF_INET, AF_INET6, Config, GLOBAL_CONFIG, MAP_DROPS, MAP_ENTRY_COUNTS, MAP_EVENTS, MAP_FAILED,
    MAP_OWNERS, MAP_RING_PEAK, MAX_FILTER_PIDS, MAX_FILTER_PORTS, entry_counts, failed,
};

use crate::{
    bpf::{entries::EntryReader, offsets},
    model::select::{FamilyFilter, Filters},
};

/// Built by `cargo xtask build-ebpf`; committed so running the tool needs no
/// eBPF toolchain.
static OBJECT: &[u8] = aya::include_bytes_aligned!("../../ebpf/tcplinger.bpf.o");

const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

/// A program of the object, named as its tracepoint, and what is lost
/// without it.
#[derive(Debug, Clone, Copy)]
pub struct Hook {
    pub program: &'static str,
    /// The tracepoint it is attached to, where it is not named after it.
    pub tracepoint: Option<&'static str>,
    /// `None`: nothing works without it. Otherwise what a run without it
    /// cannot do, for the warning.
    pub without: Option<&'static str>,
    /// Attached only when each step must name its owner as it happens:
    /// the kernel's `--pid` filter, and `--transitions`, which prints
    /// every step at once. The I/O hooks run on every send and receive of
    /// every socket (two runs per request on a keep-alive connection,
    /// ~700 ns of kernel time per request here) to name an accepted
    /// socket's owner before its first close; the per-connection commands
    /// learn it from the process holding its fd, or from the close itself.
    /// The destroy hook frees the entries that outlive their socket's
    /// CLOSE step there (kept for the owner of every step, or made anew by
    /// an I/O hook); otherwise the step to CLOSE frees its entry itself.
    pub for_step_owners: bool,
}

/// The state change program's second copy (see its hook).
const NESTED_PROGRAM: &str = "state_nested";

pub const HOOKS: [Hook; 7] = [
    Hook {
        program: "inet_sock_set_state",
        tracepoint: None,
        without: None,
        for_step_owners: false,
    },
    Hook {
        program: "tcp_destroy_sock",
        tracepoint: None,
        without: Some(
            "owner entries of closed sockets stay in the kernel's table until newer ones push them out",
        ),
        for_step_owners: true,
    },
    Hook {
        program: "tcp_send_reset",
        tracepoint: None,
        without: Some(
            "RSTs this host sends are not seen: connections it aborts show closed_by \"unknown\"",
        ),
        for_step_owners: false,
    },
    Hook {
        program: "tcp_receive_reset",
        tracepoint: None,
        without: Some(
            "RSTs from peers are not seen: connections they abort show closed_by \"unknown\"",
        ),
        for_step_owners: false,
    },
    Hook {
        program: "sock_send_length",
        tracepoint: None,
        without: Some(
            "sends do not name a socket's owner: an accepted socket's steps before the server's own close show no pid, and --pid skips them (counted)",
        ),
        for_step_owners: true,
    },
    Hook {
        program: "sock_recv_length",
        tracepoint: None,
        without: Some(
            "receives do not name a socket's owner: an accepted socket's steps before the server's own close show no pid, and --pid skips them (counted)",
        ),
        for_step_owners: true,
    },
    // The state change program's second copy: it takes the runs the
    // kernel skips because the first was already running on the CPU (a
    // softirq interrupting it), which would otherwise be lost.
    Hook {
        program: NESTED_PROGRAM,
        tracepoint: Some("inet_sock_set_state"),
        without: Some(
            "state changes in a softirq that interrupts the state change program on the same CPU are lost (counted as missed)",
        ),
        for_step_owners: false,
    },
];

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Why the kernel side could not be loaded: each says what is missing and
/// how to get it, and keeps the kernel's own answer as its source.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "not enough privilege to load eBPF programs: needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); run it as root, e.g. with sudo"
    )]
    NotPrivileged,
    #[error(
        "kernel BTF not found at /sys/kernel/btf/vmlinux: tcplinger needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(
        "the kernel has no tracepoint {0} (BTF type btf_trace_{0} missing): tcplinger needs Linux 6.3 or later"
    )]
    TracepointMissing(&'static str),
    #[error("the kernel refused to {action} {program}")]
    Program {
        action: &'static str,
        program: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0} is not in the eBPF object (a stale build?)")]
    Missing(&'static str),
    #[error("this kernel's socket layout is not understood")]
    Layout(#[from] offsets::LayoutError),
}

/// What the kernel side is told at load time.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub filters: Filters,
    pub ring_bytes: u32,
    /// A record for every transition (`--transitions`); else the steps the
    /// tracker can rebuild are left out.
    pub every_transition: bool,
    /// Hooks to treat as unavailable (the hidden `--disable-hook`, to test
    /// how a kernel without them is handled).
    pub disabled_hooks: Vec<&'static str>,
    /// Entries of the kernel's owner map: as many sockets as the tracker
    /// follows (`--max-sockets`), so an owner is not recycled out of the
    /// kernel's memory while the tracker still follows its socket.
    pub owner_entries: u32,
}

/// What the kernel side lost besides dropped records (see
/// `tracer_common::failed`), in all.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelLosses {
    /// Program runs cut short by a failed kernel read (their record lost).
    pub failed_runs: u64,
    /// Owner entries the map refused: those sockets' records in softirq
    /// name no owner.
    pub owner_inserts: u64,
    /// Records skipped by `--pid` because their socket's owner was unknown.
    pub unattributed: u64,
    /// Steps to CLOSE from FIN_WAIT2 or CLOSING where the kernel could not
    /// tell whether a timewait socket took the full socket's place (taken
    /// to have had one). Absent from recordings made before it was counted.
    #[serde(default)]
    pub timewait_unchecked: u64,
}

/// An optional hook that could not be attached, and what that costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Degraded {
    pub program: &'static str,
    pub reason: String,
    pub without: &'static str,
}

impl std::fmt::Display for Degraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.program == NESTED_PROGRAM {
            return write!(
                f,
                "the second program on tracepoint inet_sock_set_state ({NESTED_PROGRAM}) unavailable ({}): {}",
                self.reason, self.without
            );
        }
        write!(
            f,
            "tracepoint {} unavailable ({}): {}",
            self.program, self.reason, self.without
        )
    }
}

/// Attached programs plus the maps userspace reads. Dropping the `Ebpf`
/// detaches every program; the maps are held apart so the ring can still be
/// drained after detaching.
pub struct Attached {
    ebpf: Option<Ebpf>,
    ring: Option<RingBuf<MapData>>,
    drops: PerCpuArray<MapData, u64>,
    ring_peak: PerCpuArray<MapData, u64>,
    failed: PerCpuArray<MapData, u64>,
    /// The per-socket entries, read for live sockets' logged steps; `None`
    /// when every transition is written at once (nothing is logged).
    entries: Option<EntryReader>,
    entry_counts: PerCpuArray<MapData, u64>,
    ring_bytes: u32,
    /// `missed_runs` as read just before detaching, when the programs go.
    missed_at_detach: u64,
    /// Optional hooks this run goes without.
    pub degraded: Vec<Degraded>,
}

impl Attached {
    /// The ring to consume; taken once by the event source.
    pub fn take_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.ring.take()
    }

    /// Records the kernel could not write because the ring was full.
    pub fn dropped(&self) -> anyhow::Result<u64> {
        let per_cpu = self.drops.get(&0, 0)?;
        Ok(per_cpu.iter().sum())
    }

    /// The kernel side's other losses, summed over the CPUs.
    pub fn losses(&self) -> KernelLosses {
        let slot = |index: u32| {
            self.failed
                .get(&index, 0)
                .map_or(0, |per_cpu| per_cpu.iter().sum())
        };
        KernelLosses {
            failed_runs: slot(failed::RUN),
            owner_inserts: slot(failed::OWNER_INSERT),
            unattributed: slot(failed::UNATTRIBUTED),
            timewait_unchecked: slot(failed::TIMEWAIT_UNCHECKED),
        }
    }

    /// Program runs the kernel skipped because a program of ours was already
    /// running on that CPU (e.g. a softirq interrupting it), less those the
    /// state change program's second copy made instead; the others' events
    /// are lost like drops. Read from each program's fdinfo.
    pub fn missed_runs(&self) -> u64 {
        let Some(ebpf) = &self.ebpf else {
            return self.missed_at_detach;
        };
        // The second copy's own skips are not losses: it is skipped only
        // while it runs on the CPU, and then the first takes the run unless
        // it is running too, which its own count says.
        let skipped: u64 = ebpf
            .programs()
            .filter(|(name, _)| *name != NESTED_PROGRAM)
            .filter_map(|(_, program)| program.fd().ok())
            .filter_map(|fd| {
                let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
                let info = fs::read_to_string(path).ok()?;
                info.lines()
                    .find_map(|l| l.strip_prefix("recursion_misses:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .sum();
        // Read after the misses: the kernel counts a skip before the copy
        // takes it (the copy is attached after the first, and a
        // tracepoint calls its programs in that order), so a rescue under way while the fdinfo files are read
        // (tens of µs) is in both figures by now, not counted as lost for
        // a moment; only one within the copy's own first instructions can
        // still be.
        let rescued: u64 = self
            .entry_counts
            .get(&entry_counts::RESCUED, 0)
            .map_or(0, |per_cpu| per_cpu.iter().sum());
        skipped.saturating_sub(rescued)
    }

    /// Whether the kernel logs each socket's steps in its entry (and so
    /// the entries must be read for what is open now).
    pub fn folds(&self) -> bool {
        self.entries.is_some()
    }

    /// Per-socket entries made and freed so far, summed over the CPUs.
    pub fn entry_turnover(&self) -> (u64, u64) {
        let slot = |index: u32| {
            self.entry_counts
                .get(&index, 0)
                .map_or(0, |per_cpu| per_cpu.iter().sum())
        };
        (slot(entry_counts::MADE), slot(entry_counts::FREED))
    }

    /// Hands every per-socket entry (cookie, raw value) to `each`.
    pub fn read_entries(&mut self, each: &mut dyn FnMut(u64, &[u8])) -> std::io::Result<usize> {
        match &mut self.entries {
            Some(reader) => reader.read(each),
            None => Ok(0),
        }
    }

    /// The ring's size in bytes.
    pub fn ring_bytes(&self) -> u32 {
        self.ring_bytes
    }

    /// The fullest the ring has been (bytes waiting) since the last call.
    pub fn ring_peak_and_reset(&mut self) -> u64 {
        let peak = self
            .ring_peak
            .get(&0, 0)
            .map_or(0, |v| v.iter().copied().max().unwrap_or(0));
        if let Ok(cpus) = aya::util::nr_cpus()
            && let Ok(zeros) = aya::maps::PerCpuValues::try_from(vec![0u64; cpus])
        {
            let _ = self.ring_peak.set(0, zeros, 0);
        }
        peak
    }

    /// Detaches and unloads every program; the maps stay readable.
    pub fn detach(&mut self) {
        if self.ebpf.is_some() {
            self.missed_at_detach = self.missed_runs();
            self.ebpf = None;
        }
    }
}

/// Effective capabilities of this process, from /proc/self/status.
fn effective_caps() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn has_cap(caps: u64, cap: u32) -> bool {
    caps & (1 << cap) != 0
}

/// Fails early with one clear line rather than an EPERM deep in a syscall.
pub fn check_privileges() -> Result<(), LoadError> {
    let caps = effective_caps().unwrap_or(0);
    if has_cap(caps, CAP_SYS_ADMIN) || (has_cap(caps, CAP_BPF) && has_cap(caps, CAP_PERFMON)) {
        Ok(())
    } else {
        Err(LoadError::NotPrivileged)
    }
}

fn kernel_config(options: &LoadOptions, mut offsets: tracer_common::SockOffsets) -> Config {
    let hz = crate::bpf::hz::kernel_hz();
    if hz.is_none() {
        // Ages in jiffies cannot be told in milliseconds: no figures
        // rather than wrong ones.
        offsets.lsndtime = tracer_common::NO_OFFSET;
    }
    let mut config = Config {
        offsets,
        jiffy_us: hz.map_or(0, |hz| 1_000_000 / hz),
        // A quarter full: the consumer's timer normally drains long before,
        // so wakeups only happen in bursts, in time to avoid drops.
        wakeup_bytes: options.ring_bytes / 4,
        every_transition: options.every_transition.into(),
        ..Config::default()
    };
    let filters = &options.filters;
    for (slot, pid) in config
        .pids
        .iter_mut()
        .zip(filters.pids.iter().take(MAX_FILTER_PIDS))
    {
        *slot = *pid;
    }
    for (slot, port) in config
        .ports
        .iter_mut()
        .zip(filters.ports.iter().take(MAX_FILTER_PORTS))
    {
        *slot = *port;
    }
    config.family = match filters.family {
        FamilyFilter::Any => 0,
        FamilyFilter::Ipv4 => AF_INET,
        FamilyFilter::Ipv6 => AF_INET6,
    };
    config
}

fn is_permission(err: &std::io::Error) -> bool {
    matches!(err.kind(), ErrorKind::PermissionDenied) || err.raw_os_error() == Some(libc::EPERM)
}

fn program_error(action: &'static str, program: &'static str, err: ProgramError) -> LoadError {
    match err {
        ProgramError::Btf(aya::BtfError::UnknownBtfTypeName { .. }) => {
            LoadError::TracepointMissing(program)
        }
        ProgramError::LoadError { io_error, .. } if is_permission(&io_error) => {
            LoadError::NotPrivileged
        }
        ProgramError::SyscallError(e) if is_permission(&e.io_error) => LoadError::NotPrivileged,
        other => LoadError::Program {
            action,
            program,
            source: Box::new(other),
        },
    }
}

fn ebpf_error(err: EbpfError) -> LoadError {
    match err {
        EbpfError::MapError(MapError::CreateError { io_error, .. }) if is_permission(&io_error) => {
            LoadError::NotPrivileged
        }
        other => LoadError::Program {
            action: "load",
            program: "the eBPF object",
            source: Box::new(other),
        },
    }
}

/// Loads and attaches everything; on error nothing stays attached (the
/// partially built `Ebpf` is dropped).
pub fn load(options: &LoadOptions) -> Result<Attached, LoadError> {
    check_privileges()?;
    raise_memlock_limit();

    // One parse of the kernel's BTF at a time: each takes tens of MB.
    let layout = btf_rs::Btf::from_file(BTF_PATH).map_err(|e| LoadError::NoBtf(Box::new(e)))?;
    let config = kernel_config(options, offsets::sock_offsets(&layout)?);
    drop(layout);
    let btf = aya::Btf::from_sys_fs().map_err(|e| LoadError::NoBtf(Box::new(e)))?;

    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .map_max_entries(MAP_EVENTS, options.ring_bytes)
        .map_max_entries(MAP_OWNERS, options.owner_entries.max(1))
        .override_global(GLOBAL_CONFIG, &config, true)
        .load(OBJECT)
        .map_err(ebpf_error)?;

    let mut degraded = Vec::new();
    for hook in HOOKS {
        let name = hook.program;
        if hook.for_step_owners && options.filters.pids.is_empty() && !options.every_transition {
            continue;
        }
        // A disabled hook is handled as a kernel without its tracepoint.
        let attached = if options.disabled_hooks.contains(&name) {
            Err(LoadError::TracepointMissing(name))
        } else {
            attach(&mut ebpf, name, hook.tracepoint.unwrap_or(name), &btf)
        };
        match (attached, hook.without) {
            (Ok(()), _) => {}
            // Privilege problems are not a kernel lacking a feature.
            (Err(err @ LoadError::NotPrivileged), _) | (Err(err), None) => return Err(err),
            (Err(err), Some(without)) => degraded.push(Degraded {
                program: name,
                reason: match err {
                    LoadError::TracepointMissing(_) => "not in this kernel".into(),
                    LoadError::Program { source, .. } => source
                        .to_string()
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                    other => other.to_string(),
                },
                without,
            }),
        }
    }
    let ring = take_map(&mut ebpf, MAP_EVENTS, RingBuf::try_from)?;
    let drops = take_map(&mut ebpf, MAP_DROPS, PerCpuArray::try_from)?;
    let ring_peak = take_map(&mut ebpf, MAP_RING_PEAK, PerCpuArray::try_from)?;
    let failed = take_map(&mut ebpf, MAP_FAILED, PerCpuArray::try_from)?;
    let entry_counts = take_map(&mut ebpf, MAP_ENTRY_COUNTS, PerCpuArray::try_from)?;
    let entries = if options.every_transition {
        None
    } else {
        let map = take_map(&mut ebpf, MAP_OWNERS, |map| match map {
            aya::maps::Map::LruHashMap(data) => Ok(data),
            _ => Err(MapError::InvalidName {
                name: MAP_OWNERS.into(),
            }),
        })?;
        Some(EntryReader::new(map, options.owner_entries.max(1)))
    };
    Ok(Attached {
        ebpf: Some(ebpf),
        ring: Some(ring),
        drops,
        ring_peak,
        failed,
        entries,
        entry_counts,
        ring_bytes: options.ring_bytes,
        missed_at_detach: 0,
        degraded,
    })
}

/// Takes map `name` out of the object as the type `open` makes of it.
fn take_map<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    open: impl FnOnce(aya::maps::Map) -> Result<T, MapError>,
) -> Result<T, LoadError> {
    let map = ebpf.take_map(name).ok_or(LoadError::Missing(name))?;
    open(map).map_err(|e| LoadError::Program {
        action: "open",
        program: name,
        source: Box::new(e),
    })
}

fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    tracepoint: &str,
    btf: &aya::Btf,
) -> Result<(), LoadError> {
    let program: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .ok_or(LoadError::Missing(name))?
        .try_into()
        .map_err(|e| program_error("load", name, e))?;
    program
        .load(tracepoint, btf)
        .map_err(|e| program_error("load", name, e))?;
    program
        .attach()
        .map_err(|e| program_error("attach", name, e))?;
    Ok(())
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones
/// ignore it, so a failure here is not worth reporting.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_bits() {
        assert!(has_cap(1 << CAP_SYS_ADMIN, CAP_SYS_ADMIN));
        assert!(!has_cap(1 << CAP_BPF, CAP_PERFMON));
        assert!(has_cap(0x1ff_ffff_ffff, CAP_BPF));
    }

    #[test]
    fn config_carries_filters_and_wakeup_threshold() {
        let options = LoadOptions {
            filters: Filters {
                pids: vec![7, 9],
                ports: vec![80],
                family: FamilyFilter::Ipv6,
            },
            ring_bytes: 1 << 20,
            every_transition: false,
            disabled_hooks: vec![],
            owner_entries: 1024,
        };
        let c = kernel_config(&options, tracer_common::SockOffsets::default());
        assert_eq!(c.pids[..3], [7, 9, 0]);
        assert_eq!(c.ports[..2], [80, 0]);
        assert_eq!(c.family, AF_INET6);
        assert_eq!(c.wakeup_bytes, 1 << 18);
        assert_eq!(c.every_transition, 0);
        let all = kernel_config(
            &LoadOptions {
                every_transition: true,
                ..options
            },
            tracer_common::SockOffsets::default(),
        );
        assert_eq!(all.every_transition, 1);
    }

    #[test]
    fn only_the_state_change_hook_is_required() {
        let required: Vec<&str> = HOOKS
            .iter()
            .filter(|h| h.without.is_none())
            .map(|h| h.program)
            .collect();
        assert_eq!(required, ["inet_sock_set_state"]);
        let io: Vec<&str> = HOOKS
            .iter()
            .filter(|h| h.for_step_owners)
            .map(|h| h.program)
            .collect();
        assert_eq!(
            io,
            ["tcp_destroy_sock", "sock_send_length", "sock_recv_length"]
        );
        let degraded = Degraded {
            program: "sock_recv_length",
            reason: "not in this kernel".into(),
            without: HOOKS[5].without.unwrap(),
        };
        assert!(degraded.to_string().starts_with(
            "tracepoint sock_recv_length unavailable (not in this kernel): receives do not name"
        ));
    }
}
