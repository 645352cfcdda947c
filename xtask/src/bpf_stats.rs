//! The kernel's BPF run-time statistics for the benchmark: `kernel.bpf_stats_enabled` switched on for a measurement and back to what it was, and the run time, run count and recursion misses of the programs one process holds, read from its `/proc/PID/fd` and `fdinfo`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    sync::atomic::{AtomicU8, Ordering},
};

use anyhow::{Context as _, Result, bail};

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// The value to put back if a signal ends the benchmark while the
/// statistics are on (the handler can only read a static).
static PREVIOUS: AtomicU8 = AtomicU8::new(0);

/// Signals that end the benchmark from outside (a terminal's ^C, kill).
const FATAL_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Puts the sysctl back, then dies of the signal as it would have.
extern "C" fn restore_and_die(signal: libc::c_int) {
    let value = [b'0' + PREVIOUS.load(Ordering::Relaxed)];
    // SAFETY: open, write, close, signal and raise are async-signal-safe;
    // the path is a NUL-terminated constant and the buffer lives on the
    // stack for the call.
    unsafe {
        let fd = libc::open(
            c"/proc/sys/kernel/bpf_stats_enabled".as_ptr(),
            libc::O_WRONLY,
        );
        if fd >= 0 {
            libc::write(fd, value.as_ptr().cast(), 1);
            libc::close(fd);
        }
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

/// `kernel.bpf_stats_enabled` on while this lives; the previous value comes
/// back when it is dropped (an error or a panic included) or when SIGINT,
/// SIGTERM or SIGHUP ends the process.
pub struct StatsOn {
    previous: u8,
    handlers: Vec<(libc::c_int, libc::sighandler_t)>,
}

fn write_sysctl(value: u8) -> std::io::Result<()> {
    fs::write(SYSCTL, [b'0' + value, b'\n'])
}

impl StatsOn {
    pub fn new() -> Result<StatsOn> {
        let text = fs::read_to_string(SYSCTL)
            .with_context(|| format!("reading {SYSCTL} (BPF run-time statistics)"))?;
        let previous: u8 = match text.trim() {
            "0" => 0,
            "1" => 1,
            other => bail!("{SYSCTL} holds {other:?}, not 0 or 1"),
        };
        PREVIOUS.store(previous, Ordering::Relaxed);
        let handler = restore_and_die as extern "C" fn(libc::c_int);
        let handlers = FATAL_SIGNALS
            .iter()
            // SAFETY: installs a handler that only makes async-signal-safe
            // calls; the old one is kept to be put back.
            .map(|&s| (s, unsafe { libc::signal(s, handler as libc::sighandler_t) }))
            .collect();
        let on = StatsOn { previous, handlers };
        write_sysctl(1).with_context(|| format!("writing 1 to {SYSCTL}"))?;
        Ok(on)
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        if let Err(e) = write_sysctl(self.previous) {
            eprintln!(
                "bench: could not put {SYSCTL} back to {}: {e}",
                self.previous
            );
        }
        for &(signal, old) in &self.handlers {
            // SAFETY: puts back the disposition this guard replaced.
            unsafe { libc::signal(signal, old) };
        }
    }
}

/// One program's counters, as its fdinfo gives them (run time and count
/// only grow while the statistics are on; recursion misses always).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub run_time_ns: u64,
    pub run_cnt: u64,
    pub recursion_misses: u64,
}

/// What one fdinfo says about BPF programs: a program fd's own counters, or
/// the program a link fd holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FdInfo {
    Program(u32, Counters),
    Link(u32),
}

fn parse_fdinfo(text: &str) -> Option<FdInfo> {
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
    };
    let id = u32::try_from(field("prog_id")?).ok()?;
    if text.lines().any(|l| l.starts_with("prog_type:")) {
        Some(FdInfo::Program(
            id,
            Counters {
                run_time_ns: field("run_time_ns").unwrap_or(0),
                run_cnt: field("run_cnt").unwrap_or(0),
                recursion_misses: field("recursion_misses").unwrap_or(0),
            },
        ))
    } else if text.lines().any(|l| l.starts_with("link_type:")) {
        Some(FdInfo::Link(id))
    } else {
        None
    }
}

/// The BPF programs process `pid` holds, by program id: those it has an fd
/// of (counters from fdinfo), and those only a link of its holds (counters
/// from the kernel's program info). Programs of other processes are not
/// counted, whatever else runs on the host.
pub fn programs_of(pid: u32) -> BTreeMap<u32, Counters> {
    let mut programs = BTreeMap::new();
    let mut linked = BTreeSet::new();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return programs;
    };
    for fd in fds.filter_map(Result::ok) {
        let is_bpf = fs::read_link(fd.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("anon_inode:bpf"));
        if !is_bpf {
            continue;
        }
        let info = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        match parse_fdinfo(&info) {
            Some(FdInfo::Program(id, counters)) => {
                programs.insert(id, counters);
            }
            Some(FdInfo::Link(id)) => {
                linked.insert(id);
            }
            None => {}
        }
    }
    linked.retain(|id| !programs.contains_key(id));
    if !linked.is_empty() {
        for p in aya::programs::loaded_programs().filter_map(Result::ok) {
            if linked.contains(&p.id()) {
                programs.insert(
                    p.id(),
                    Counters {
                        run_time_ns: u64::try_from(p.run_time().as_nanos()).unwrap_or(u64::MAX),
                        run_cnt: p.run_count(),
                        recursion_misses: 0,
                    },
                );
            }
        }
    }
    programs
}

/// Whether process `pid` holds a BPF program yet.
pub fn holds_programs(pid: u32) -> bool {
    !programs_of(pid).is_empty()
}

/// The kernel's (15-character) names of these programs.
pub fn names(ids: impl IntoIterator<Item = u32>) -> BTreeMap<u32, String> {
    let wanted: BTreeSet<u32> = ids.into_iter().collect();
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| wanted.contains(&p.id()))
        .map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_string()))
        .collect()
}

/// One program over a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProgramRun {
    pub name: String,
    pub run_time_ns: u64,
    pub runs: u64,
    pub recursion_misses: u64,
}

/// What each program did between two readings of the same process, by name
/// (programs that share a name are added together), names from `names`.
pub fn delta(
    before: &BTreeMap<u32, Counters>,
    after: &BTreeMap<u32, Counters>,
    names: &BTreeMap<u32, String>,
) -> Vec<ProgramRun> {
    let mut by_name: BTreeMap<String, ProgramRun> = BTreeMap::new();
    for (id, end) in after {
        let start = before.get(id).copied().unwrap_or_default();
        let name = names.get(id).cloned().unwrap_or_else(|| format!("id {id}"));
        let run = by_name.entry(name.clone()).or_insert_with(|| ProgramRun {
            name,
            ..ProgramRun::default()
        });
        run.run_time_ns += end.run_time_ns.saturating_sub(start.run_time_ns);
        run.runs += end.run_cnt.saturating_sub(start.run_cnt);
        run.recursion_misses += end.recursion_misses.saturating_sub(start.recursion_misses);
    }
    by_name.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROGRAM: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1038\nprog_type:\t26\nprog_jited:\t1\nprog_tag:\t5de3a21955b57082\nmemlock:\t4096\nprog_id:\t12449\nrun_time_ns:\t123456\nrun_cnt:\t789\nrecursion_misses:\t3\nverified_insns:\t374\n";
    const LINK: &str = "pos:\t0\nflags:\t02000000\nmnt_id:\t15\nino:\t1039\nlink_type:\traw_tracepoint\nlink_id:\t77\nprog_tag:\t5de3a21955b57082\nprog_id:\t12449\ntp_name:\tinet_sock_set_state\n";
    const MAP: &str =
        "pos:\t0\nflags:\t02000002\nmap_type:\t27\nkey_size:\t0\nmap_id:\t5\nfrozen:\t0\n";

    #[test]
    fn reads_a_program_fd() {
        assert_eq!(
            parse_fdinfo(PROGRAM),
            Some(FdInfo::Program(
                12449,
                Counters {
                    run_time_ns: 123_456,
                    run_cnt: 789,
                    recursion_misses: 3
                }
            ))
        );
    }

    #[test]
    fn reads_a_link_fd_and_ignores_maps() {
        assert_eq!(parse_fdinfo(LINK), Some(FdInfo::Link(12449)));
        assert_eq!(parse_fdinfo(MAP), None);
        assert_eq!(parse_fdinfo(""), None);
    }

    #[test]
    fn a_program_without_statistics_counts_zero() {
        let old = "prog_type:\t5\nprog_id:\t9\n";
        assert_eq!(
            parse_fdinfo(old),
            Some(FdInfo::Program(9, Counters::default()))
        );
    }

    #[test]
    fn delta_adds_programs_of_one_name_and_names_unknown_ids() {
        let c = |t, n, m| Counters {
            run_time_ns: t,
            run_cnt: n,
            recursion_misses: m,
        };
        let before = BTreeMap::from([(1, c(100, 10, 0)), (2, c(50, 5, 1))]);
        let after = BTreeMap::from([(1, c(300, 20, 0)), (2, c(150, 15, 2)), (3, c(40, 4, 0))]);
        let names = BTreeMap::from([(1, "set_state".to_string()), (2, "set_state".to_string())]);
        assert_eq!(
            delta(&before, &after, &names),
            vec![
                ProgramRun {
                    name: "id 3".into(),
                    run_time_ns: 40,
                    runs: 4,
                    recursion_misses: 0
                },
                ProgramRun {
                    name: "set_state".into(),
                    run_time_ns: 300,
                    runs: 20,
                    recursion_misses: 1
                },
            ]
        );
    }
}
