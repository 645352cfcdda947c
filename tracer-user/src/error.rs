//! Failures that end the program, and the exit code each maps to.

use crate::cli::UsageError;

/// Something about the machine stops the tracer; each message says what is
/// missing and how to get it. Exit code 1.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error(
        "not enough privilege to load eBPF programs: needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); run it as root, e.g. with sudo"
    )]
    NotPrivileged,
    #[error(
        "kernel BTF not found at /sys/kernel/btf/vmlinux: tcplinger needs a kernel built with CONFIG_DEBUG_INFO_BTF=y ({0})"
    )]
    NoBtf(String),
    #[error(
        "the kernel has no tracepoint {0} (BTF type btf_trace_{0} missing): tcplinger needs Linux 6.3 or later"
    )]
    TracepointMissing(&'static str),
    #[error("the kernel refused to {action} {program}: {reason}")]
    Program {
        action: &'static str,
        program: &'static str,
        reason: String,
    },
    #[error(
        "cannot serve metrics on {addr}: {reason} (another tcplinger daemon? choose one with --listen)"
    )]
    Listen {
        addr: std::net::SocketAddr,
        reason: String,
    },
    #[error("this kernel's socket layout is not understood: {0}")]
    Layout(#[from] crate::bpf::offsets::LayoutError),
}

/// Exit codes: 0 success, 1 environment or runtime failure, 2 bad usage.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<UsageError>().is_some() {
        2
    } else {
        1
    }
}
