//! Giving up, once the programs are attached, every capability a running tracer no longer needs.
//!
//! Loading and attaching needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN);
//! afterwards the maps and the ring are used through file descriptors this
//! process already holds, which needs no capability. What stays is what the
//! userspace side keeps doing for as long as it runs: sock_diag lookups in
//! other network namespaces and reading other processes' /proc entries.
//!
//! Capabilities belong to threads. This runs on the thread that loaded the
//! programs, before any other thread exists (the runtime is single-threaded
//! and blocking helpers start later), so every thread created afterwards
//! inherits the reduced sets.

use caps::{CapSet, Capability, CapsHashSet};

/// Capabilities a running tracer keeps, each with why.
pub const KEPT: [(Capability, &str); 3] = [
    (
        Capability::CAP_SYS_ADMIN,
        "setns() into other network namespaces, where sock_diag follows timewait sockets and reads containers' open sockets",
    ),
    (
        Capability::CAP_SYS_PTRACE,
        "read other processes' /proc/PID/fd links and /proc/PID/ns/net: socket owners, fds of CLOSE_WAIT leaks, namespaces",
    ),
    (
        Capability::CAP_DAC_READ_SEARCH,
        "list /proc/PID/fd directories of processes of other users",
    ),
];

/// Keeps only `KEPT` (of what this process has) in the effective and
/// permitted sets, empties the inheritable and ambient sets, and narrows
/// the bounding set when allowed to (a service manager may have done that
/// already); no_new_privs then stops any exec from regaining privilege.
pub fn drop_after_attach() -> Result<(), caps::errors::CapsError> {
    let permitted = caps::read(None, CapSet::Permitted)?;
    let kept: CapsHashSet = KEPT
        .iter()
        .map(|(cap, _)| *cap)
        .filter(|cap| permitted.contains(cap))
        .collect();

    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        for cap in caps::read(None, CapSet::Bounding)? {
            if !kept.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    // Effective first: it must stay a subset of permitted at every step.
    caps::set(None, CapSet::Effective, &kept)?;
    caps::set(None, CapSet::Permitted, &kept)?;
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    }
    Ok(())
}

/// Drops what is not needed; a refusal is a warning for the user (the
/// tracer works either way, and the user should know which it is).
pub fn drop_or_warning() -> Option<String> {
    drop_after_attach()
        .err()
        .map(|err| format!("could not drop capabilities after attaching: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_mask_matches_the_capability_numbers() {
        // The mask the privileged test expects in /proc/PID/status:
        // CAP_DAC_READ_SEARCH 2, CAP_SYS_PTRACE 19, CAP_SYS_ADMIN 21.
        let mask = KEPT.iter().fold(0, |m, (cap, _)| m | cap.bitmask());
        assert_eq!(mask, (1 << 2) | (1 << 19) | (1 << 21));
    }

    #[test]
    fn nothing_needed_only_to_load_is_kept() {
        for (cap, why) in KEPT {
            assert!(
                ![
                    Capability::CAP_BPF,
                    Capability::CAP_PERFMON,
                    Capability::CAP_NET_ADMIN
                ]
                .contains(&cap),
                "{cap}"
            );
            assert!(!why.is_empty());
        }
    }
}
