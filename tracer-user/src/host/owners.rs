//! Maps socket inodes to the processes holding them, from /proc/*/fd: the owners of sockets the tracer never saw being used.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::Path,
};

use tracer_common::COMM_LEN;

use crate::{
    host::cgroups::Cgroups,
    model::event::{Comm, Owner},
};

/// The inode in a `/proc/PID/fd/N` link target such as `socket:[12345]`.
fn socket_inode(target: &Path) -> Option<u32> {
    target
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn comm_of(pid_dir: &Path) -> Comm {
    let mut raw = [0u8; COMM_LEN];
    if let Ok(comm) = fs::read(pid_dir.join("comm")) {
        let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
        let len = comm.len().min(COMM_LEN);
        raw[..len].copy_from_slice(&comm[..len]);
    }
    Comm::new(raw)
}

/// Socket inode -> the first process (lowest pid) holding it. Processes
/// that vanish mid-scan, or whose fds cannot be read, are skipped.
pub fn socket_owners() -> HashMap<u32, Owner> {
    let mut pids: Vec<u32> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let cgroups = Cgroups::default();
    let mut owners = HashMap::new();
    for pid in pids {
        let dir = Path::new("/proc").join(pid.to_string());
        let Ok(fds) = fs::read_dir(dir.join("fd")) else {
            continue;
        };
        let mut owner = None;
        for fd in fds.flatten() {
            let Some(inode) = fs::read_link(fd.path())
                .ok()
                .as_deref()
                .and_then(socket_inode)
            else {
                continue;
            };
            let owner = *owner.get_or_insert_with(|| Owner {
                pid,
                comm: comm_of(&dir),
                cgroup_id: cgroups.id_of_pid(pid).unwrap_or(0),
            });
            owners.entry(inode).or_insert(owner);
        }
    }
    owners
}

/// Socket inode -> every process holding one of `inodes` (a socket shared
/// across a fork is in several). Processes that vanish mid-scan, or whose
/// fds cannot be read, are skipped.
pub fn holders(inodes: &HashSet<u32>) -> HashMap<u32, Vec<Owner>> {
    let mut found: HashMap<u32, Vec<Owner>> = HashMap::new();
    if inodes.is_empty() {
        return found;
    }
    let cgroups = Cgroups::default();
    let pids = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok());
    for pid in pids {
        let dir = Path::new("/proc").join(pid.to_string());
        let Ok(fds) = fs::read_dir(dir.join("fd")) else {
            continue;
        };
        let mut owner = None;
        for fd in fds.flatten() {
            let Some(inode) = fs::read_link(fd.path())
                .ok()
                .as_deref()
                .and_then(socket_inode)
                .filter(|i| inodes.contains(i))
            else {
                continue;
            };
            let owner = *owner.get_or_insert_with(|| Owner {
                pid,
                comm: comm_of(&dir),
                cgroup_id: cgroups.id_of_pid(pid).unwrap_or(0),
            });
            let list = found.entry(inode).or_default();
            if !list.iter().any(|o| o.pid == pid) {
                list.push(owner);
            }
        }
    }
    found
}

/// The fds of `pid` that refer to one of `inodes`, in order.
pub fn fds_of(pid: u32, inodes: &HashSet<u32>) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut fds: Vec<u32> = entries
        .flatten()
        .filter(|e| {
            fs::read_link(e.path())
                .ok()
                .as_deref()
                .and_then(socket_inode)
                .is_some_and(|inode| inodes.contains(&inode))
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    fds
}

#[cfg(test)]
mod tests {
    use std::{
        net::TcpListener,
        os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    };

    use super::*;

    #[test]
    fn parses_socket_links_only() {
        assert_eq!(socket_inode(Path::new("socket:[12345]")), Some(12345));
        assert_eq!(socket_inode(Path::new("pipe:[12345]")), None);
        assert_eq!(socket_inode(Path::new("socket:[x]")), None);
        assert_eq!(socket_inode(Path::new("/dev/null")), None);
    }

    #[test]
    fn finds_this_process_as_owner_of_its_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let link = format!("/proc/self/fd/{}", listener.as_raw_fd());
        let inode = u32::try_from(fs::metadata(&link).unwrap().ino()).unwrap();
        let owner = socket_owners()[&inode];
        assert_eq!(owner.pid, std::process::id());
        assert!(!owner.comm.as_bytes().is_empty());
        let fds = fds_of(std::process::id(), &HashSet::from([inode]));
        assert_eq!(fds, vec![listener.as_raw_fd().cast_unsigned()]);
        let found = holders(&HashSet::from([inode]));
        assert_eq!(found[&inode].len(), 1);
        assert_eq!(found[&inode][0].pid, std::process::id());
        assert!(holders(&HashSet::new()).is_empty());
    }
}
