//! Test rig for the privileged tests: network namespaces joined by veth, TCP peers run as separate processes, and a tracer process whose output is collected. The test files share helpers only through here, never with each other.

pub mod churn;
pub mod daemon;
pub mod netns;
pub mod peer;
pub mod real;
pub mod scene;
pub mod tmux;
pub mod tracer;
pub mod verdict;

use std::time::{Duration, Instant};

/// Polls `done` every 20 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// Privileged tests never skip: without root they fail and say why.
pub fn require_root() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "privileged test: run as root (sudo -E env \"PATH=$PATH\" cargo xtask test)"
    );
}

/// A `kB` field of `/proc/PID/status` (`VmRSS:`, `VmHWM:`), in KiB.
pub fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
