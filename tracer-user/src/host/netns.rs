//! Finds network namespaces by inode number, so sock_diag can be asked inside the namespace a socket lives in.

use std::{
    collections::HashMap,
    fs::{self, File},
    io,
    os::{
        fd::AsRawFd as _,
        unix::{ffi::OsStringExt as _, fs::MetadataExt as _},
    },
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

/// Every network namespace reachable through a named mount (`ip netns`),
/// any other nsfs mount, a process or any of its threads, by inode number,
/// with one path to open it. A namespace held only by an open fd is not
/// found: callers treat "not found" as unknown, never as gone.
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
    for mount in nsfs_mounts() {
        add(mount);
    }
    let pids = fs::read_dir("/proc").into_iter().flatten().flatten();
    for entry in pids.filter(|e| is_number(&e.file_name())) {
        let proc_dir = entry.path();
        add(proc_dir.join("ns/net"));
        // A thread can have moved to a namespace of its own (setns).
        let tasks = fs::read_dir(proc_dir.join("task"))
            .into_iter()
            .flatten()
            .flatten();
        for task in tasks.filter(|t| t.file_name() != entry.file_name()) {
            add(task.path().join("ns/net"));
        }
    }
    found
}

fn is_number(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Mount points of nsfs files (namespaces bound to a path), wherever they
/// are: `ip netns` uses /run/netns, container runtimes their own places.
fn nsfs_mounts() -> Vec<PathBuf> {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    mountinfo
        .lines()
        .filter_map(|line| {
            let (fields, fstype) = line.split_once(" - ")?;
            fstype
                .starts_with("nsfs ")
                .then(|| fields.split(' ').nth(4).map(unescape))?
        })
        .collect()
}

/// A mountinfo path: spaces, tabs, newlines and backslashes come octal-escaped.
fn unescape(path: &str) -> PathBuf {
    let mut out = Vec::with_capacity(path.len());
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Runs `f` with the calling thread inside the network namespace `ns`,
/// then puts the thread back where it was. What `f` creates there (a
/// netlink socket) stays bound to that namespace; what it reads from
/// /proc/sys/net is that namespace's. No thread is created: a host out of
/// pids can still be traced.
pub fn run_in<T>(ns: &File, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let home = File::open("/proc/thread-self/ns/net")?;
    // SAFETY: setns on a valid namespace fd; affects this thread only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let result = f();
    // SAFETY: as above, back to the namespace the thread came from.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        // Cannot happen with the capability that allowed the first
        // setns; if it did, this thread must not go on in the wrong
        // namespace.
        let err = io::Error::last_os_error();
        panic!("cannot return to the tracer's network namespace: {err}");
    }
    result
}

/// Remembers where each namespace can be opened; rescans on a miss, since
/// namespaces come and go.
#[derive(Debug, Default)]
pub struct NetnsPaths {
    known: HashMap<u32, PathBuf>,
    own: Option<u32>,
    /// Namespaces asked for and found nowhere.
    pub not_found: u64,
}

impl NetnsPaths {
    /// The tracer's own namespace (0 if it cannot be read).
    pub fn own(&mut self) -> u32 {
        *self.own.get_or_insert_with(|| own().unwrap_or(0))
    }

    /// The namespace `inum`, opened; `None` if it is found nowhere. The
    /// opened file is checked to be that namespace: a remembered
    /// /proc/PID path can name another one once the pid is reused.
    pub fn open(&mut self, inum: u32) -> Option<File> {
        if let Some(ns) = self.known.get(&inum).and_then(|p| open_checked(p, inum)) {
            return Some(ns);
        }
        self.known = all();
        let ns = self.known.get(&inum).and_then(|p| open_checked(p, inum));
        if ns.is_none() {
            self.not_found += 1;
        }
        ns
    }
}

/// Opens `path` if it is the namespace `inum` now.
fn open_checked(path: &Path, inum: u32) -> Option<File> {
    let ns = File::open(path).ok()?;
    let ino = ns.metadata().ok()?.ino();
    (u64::from(inum) == ino).then_some(ns)
}

/// A `/proc/sys` file as the namespace `inum` sees it (`net.*` settings
/// are per namespace); `None` if it cannot be read.
pub fn sysctl_in(inum: u32, paths: &mut NetnsPaths, file: &str) -> Option<String> {
    let read = || fs::read_to_string(file);
    if inum == 0 || inum == paths.own() {
        read().ok()
    } else {
        let ns = paths.open(inum)?;
        run_in(&ns, read).ok()
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
        let ns = paths.open(own).unwrap();
        assert_eq!(u64::from(own), ns.metadata().unwrap().ino());
        assert!(paths.open(1).is_none(), "inode 1 is no namespace");
        assert_eq!(paths.not_found, 1);
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
