//! Finds network namespaces by inode number, so sock_diag can be asked inside the namespace a socket lives in.

use std::{
    collections::HashMap,
    fs, io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

/// Where `ip netns` keeps named namespaces alive without any process in them.
const NAMED_DIRS: [&str; 2] = ["/run/netns", "/var/run/netns"];

/// The inode number of the namespace behind an `ns/net` file or mount; the
/// same number the kernel programs report.
pub fn inum_of(path: &Path) -> io::Result<u32> {
    // nsfs inode numbers are the kernel's `unsigned int` inum.
    u32::try_from(fs::metadata(path)?.ino())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not a namespace inode"))
}

/// The tracer's own network namespace.
pub fn own() -> io::Result<u32> {
    inum_of(Path::new("/proc/self/ns/net"))
}

/// Every network namespace reachable through a named mount or a process,
/// by inode number, with one path to open it.
pub fn all() -> HashMap<u32, PathBuf> {
    let mut found = HashMap::new();
    let mut add = |path: PathBuf| {
        if let Ok(inum) = inum_of(&path) {
            found.entry(inum).or_insert(path);
        }
    };
    for dir in NAMED_DIRS {
        if let Ok(entries) = fs::read_dir(dir) {
            entries.flatten().for_each(|e| add(e.path()));
        }
    }
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            {
                add(entry.path().join("ns/net"));
            }
        }
    }
    found
}

/// Runs `f` inside the network namespace at `ns_path`, on a short-lived
/// thread: setns only moves the calling thread, and the rest of the tracer
/// never changes namespace. What `f` creates there (a netlink socket)
/// stays bound to that namespace; what it reads from /proc/sys/net is that
/// namespace's.
pub fn run_in<T: Send>(ns_path: &Path, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let ns = fs::File::open(ns_path)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on a valid namespace fd; affects this thread only.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    })
}

/// Remembers where each namespace can be opened; rescans on a miss, since
/// namespaces come and go.
#[derive(Debug, Default)]
pub struct NetnsPaths {
    known: HashMap<u32, PathBuf>,
    own: Option<u32>,
}

impl NetnsPaths {
    /// The tracer's own namespace (0 if it cannot be read).
    pub fn own(&mut self) -> u32 {
        *self.own.get_or_insert_with(|| own().unwrap_or(0))
    }

    pub fn find(&mut self, inum: u32) -> Option<PathBuf> {
        if let Some(path) = self.known.get(&inum)
            && inum_of(path).ok() == Some(inum)
        {
            return Some(path.clone());
        }
        self.known = all();
        self.known.get(&inum).cloned()
    }
}

/// A `/proc/sys` file as the namespace `inum` sees it (`net.*` settings
/// are per namespace); `None` if it cannot be read.
pub fn sysctl_in(inum: u32, paths: &mut NetnsPaths, file: &str) -> Option<String> {
    let read = || fs::read_to_string(file);
    if inum == 0 || inum == paths.own() {
        read().ok()
    } else {
        paths.find(inum).and_then(|path| run_in(&path, read).ok())
    }
}

/// The local port range connect() picks from in namespace `inum`
/// (`net.ipv4.ip_local_port_range`), Linux's default if unreadable.
pub fn ephemeral_ports(inum: u32, paths: &mut NetnsPaths) -> (u16, u16) {
    sysctl_in(inum, paths, "/proc/sys/net/ipv4/ip_local_port_range")
        .and_then(|text| {
            let mut ports = text.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((ports.next()??, ports.next()??))
        })
        .unwrap_or((32768, 60999))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_is_found_among_all() {
        let own = own().unwrap();
        assert_ne!(own, 0);
        assert!(all().contains_key(&own));
        let mut paths = NetnsPaths::default();
        let path = paths.find(own).unwrap();
        assert_eq!(inum_of(&path).unwrap(), own);
        assert_eq!(paths.find(1), None, "inode 1 is no namespace");
    }

    #[test]
    fn the_ephemeral_range_is_read() {
        let mut paths = NetnsPaths::default();
        let own = paths.own();
        let text = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
        let want: Vec<u16> = text
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(ephemeral_ports(own, &mut paths), (want[0], want[1]));
    }
}
