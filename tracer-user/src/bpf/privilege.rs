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

/// Capabilities a running tracer keeps, each with why. Each was checked
/// against a process of another user (`privileged::safety`,
/// `each_kept_capability_is_needed_to_name_another_users_socket`): none
/// of the three covers for another.
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
        // CAP_SYS_PTRACE does not cover it: /proc/PID/fd is a mode 0500
        // directory owned by the process's user, and the kernel checks
        // ordinary permissions on it (with CAP_DAC_READ_SEARCH as the
        // override) before any ptrace access check on its links.
        Capability::CAP_DAC_READ_SEARCH,
        "list and look up /proc/PID/fd directories of processes of other users",
    ),
];

/// Why giving up privileges after attaching did not fully succeed.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error("could not drop capabilities after attaching: {0}")]
    Caps(#[from] caps::errors::CapsError),
    #[error(
        "could not set no_new_privs after attaching (a program it executed could gain privileges): {0}"
    )]
    NoNewPrivs(std::io::Error),
}

/// Keeps only `KEPT` (of what this process has) in the effective and
/// permitted sets, empties the inheritable and ambient sets, and narrows
/// the bounding set when allowed to (a service manager may have done that
/// already); no_new_privs stops any exec from regaining privilege.
///
/// no_new_privs is set first and whatever becomes of the rest: it needs no
/// privilege, and it is worth having even if a capability could not be
/// dropped. When both fail, the capability error is the one returned.
pub fn drop_after_attach() -> Result<(), DropError> {
    let no_new_privs = set_no_new_privs();
    drop_capabilities()?;
    no_new_privs.map_err(DropError::NoNewPrivs)
}

fn drop_capabilities() -> Result<(), caps::errors::CapsError> {
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
    Ok(())
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`: refused by kernels older than 3.5, a
/// seccomp filter or a security module; then said, not assumed.
fn set_no_new_privs() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Drops what is not needed; a refusal is a warning for the user (the
/// tracer works either way, and the user should know which it is).
pub fn drop_or_warning() -> Option<String> {
    drop_after_attach().err().map(|err| err.to_string())
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
    fn a_refused_no_new_privs_is_a_warning_naming_it() {
        let refused = DropError::NoNewPrivs(std::io::Error::from_raw_os_error(libc::EINVAL));
        let warning = refused.to_string();
        assert!(warning.contains("no_new_privs"), "{warning}");
        assert!(warning.contains("Invalid argument"), "{warning}");
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
