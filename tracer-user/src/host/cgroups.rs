//! cgroup v2 ids to paths, the container id and pod uid a path names (systemd and cgroupfs layouts of Docker, containerd, CRI-O, Podman and Kubernetes), and the Kubernetes names the node has for them (`host::kube`).

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::kube::{NodeFiles, PodName};

/// What a cgroup says about the container it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[expect(clippy::struct_field_names, reason = "named as the labels they become")]
pub struct Container {
    /// The cgroup path below the cgroup2 mount, e.g. `/system.slice/nginx.service`.
    pub path: String,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
    /// The pod's namespace and name and the container's name, when the
    /// node has them (a Kubernetes node). Absent from older recordings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube: Option<PodName>,
}

/// A rescan of the cgroup tree at most this often, however many unknown ids arrive.
const RESCAN_EVERY: Duration = Duration::from_secs(1);
/// A container the node had no names for is asked again after this long
/// (its runtime may not have written them yet when its cgroup was seen).
const NAMES_RETRY: Duration = Duration::from_secs(30);

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The container id and pod uid in a cgroup path, if it follows one of
/// the usual layouts.
pub fn parse(path: &str) -> Container {
    let mut container_id = None;
    let mut pod_uid = None;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let stem = part.strip_suffix(".scope").unwrap_or(part);
        // systemd: docker-<id>.scope, cri-containerd-<id>.scope, crio-<id>.scope, libpod-<id>.scope
        let id = stem.rsplit('-').next().unwrap_or(stem);
        if is_container_id(id) {
            container_id = Some(id.to_string());
            continue;
        }
        // systemd: kubepods-burstable-pod<uid_with_underscores>.slice;
        // cgroupfs: pod<uid>
        let slice = part.strip_suffix(".slice").unwrap_or(part);
        if let Some(idx) = slice.rfind("pod") {
            let uid = &slice[idx + 3..];
            let looks_like_uid = uid.len() >= 32
                && uid
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_');
            if looks_like_uid && (idx == 0 || slice[..idx].ends_with('-')) {
                pod_uid = Some(uid.replace('_', "-"));
            }
        }
    }
    Container {
        path: path.to_string(),
        container_id,
        pod_uid,
        kube: None,
    }
}

/// Where cgroup v2 is mounted, from /proc/self/mountinfo.
fn cgroup2_root() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        // "... mount_point ... - cgroup2 cgroup2 rw"
        let (fields, fstype) = line.split_once(" - ")?;
        let mount_point = fields.split(' ').nth(4)?;
        fstype
            .starts_with("cgroup2 ")
            .then(|| PathBuf::from(mount_point))
    })
}

/// Resolves cgroup ids (as the kernel programs report them) to containers.
#[derive(Debug)]
pub struct Cgroups {
    root: Option<PathBuf>,
    node: NodeFiles,
    /// Kubernetes names by container id (or `pod:<uid>`), and when they
    /// were looked for: kept while the container's cgroup is.
    names: HashMap<String, (Option<PodName>, Instant)>,
    by_id: HashMap<u64, Container>,
    last_scan: Option<Instant>,
    /// Lookups of an id found nowhere (a cgroup made since the last scan,
    /// within the rescan limit, or gone before any scan saw it), in all:
    /// its owner's container is unknown, and `--cgroup` cannot admit it.
    pub unknown: u64,
}

impl Default for Cgroups {
    fn default() -> Self {
        Self::new(NodeFiles::default())
    }
}

impl Cgroups {
    /// Containers named from the node's files under `node`.
    pub fn new(node: NodeFiles) -> Self {
        Self {
            root: cgroup2_root(),
            node,
            names: HashMap::new(),
            by_id: HashMap::new(),
            last_scan: None,
            unknown: 0,
        }
    }

    /// The cgroup with this id; a miss rescans the tree (rate-limited).
    pub fn lookup(&mut self, id: u64) -> Option<&Container> {
        if id == 0 {
            return None;
        }
        if !self.by_id.contains_key(&id)
            && self.last_scan.is_none_or(|t| t.elapsed() >= RESCAN_EVERY)
        {
            self.scan();
        }
        let found = self.by_id.get(&id);
        if found.is_none() {
            self.unknown += 1;
        }
        found
    }

    /// The cgroup id of a process, from /proc/PID/cgroup.
    pub fn id_of_pid(&self, pid: u32) -> Option<u64> {
        let root = self.root.as_ref()?;
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
        Some(
            fs::metadata(root.join(path.trim_start_matches('/')))
                .ok()?
                .ino(),
        )
    }

    fn scan(&mut self) {
        self.last_scan = Some(Instant::now());
        let Some(root) = self.root.clone() else {
            return;
        };
        let mut by_id = HashMap::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(meta) = fs::metadata(&dir) else {
                continue;
            };
            let relative = Path::new("/").join(dir.strip_prefix(&root).unwrap_or(Path::new("")));
            by_id.insert(meta.ino(), parse(&relative.to_string_lossy()));
            if let Ok(entries) = fs::read_dir(&dir) {
                stack.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        // Cgroups removed since the last scan are kept, so records of a
        // container's last sockets (closing after it exited) still name it;
        // once they outnumber the live ones, they go.
        if self.by_id.len() > 2 * by_id.len() + 1024 {
            self.by_id = by_id;
        } else {
            self.by_id.extend(by_id);
        }
        self.name_containers();
    }

    /// Kubernetes names for the containers and pods known, each looked
    /// for once (again after [`NAMES_RETRY`] if the node had none); those
    /// of cgroups no longer known are forgotten.
    fn name_containers(&mut self) {
        let now = Instant::now();
        let mut wanted = std::collections::HashSet::new();
        for c in self.by_id.values_mut() {
            let key = match (&c.container_id, &c.pod_uid) {
                (Some(id), _) => id.clone(),
                (None, Some(uid)) => format!("pod:{uid}"),
                (None, None) => continue,
            };
            let stale = |(names, at): &(Option<PodName>, Instant)| {
                names.is_none() && now.duration_since(*at) >= NAMES_RETRY
            };
            if self.names.get(&key).is_none_or(stale) {
                let found = match key.strip_prefix("pod:") {
                    Some(uid) => self.node.pod(uid),
                    None => self.node.container(&key),
                };
                self.names.insert(key.clone(), (found, now));
            }
            c.kube = self.names.get(&key).and_then(|(n, _)| n.clone());
            wanted.insert(key);
        }
        self.names.retain(|k, _| wanted.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn kubernetes_systemd_driver() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901.slice/cri-containerd-{ID}.scope"
        );
        let c = parse(&path);
        assert_eq!(c.container_id.as_deref(), Some(ID));
        assert_eq!(
            c.pod_uid.as_deref(),
            Some("1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901")
        );
    }

    #[test]
    fn kubernetes_cgroupfs_driver() {
        let c = parse(&format!(
            "/kubepods/besteffort/pod1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901/{ID}"
        ));
        assert_eq!(c.container_id.as_deref(), Some(ID));
        assert_eq!(
            c.pod_uid.as_deref(),
            Some("1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901")
        );
    }

    #[test]
    fn docker_podman_and_crio() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
            format!("/machine.slice/libpod-{ID}.scope"),
            format!("/kubepods.slice/crio-{ID}.scope"),
        ] {
            let c = parse(&path);
            assert_eq!(c.container_id.as_deref(), Some(ID), "{path}");
            assert_eq!(c.pod_uid, None, "{path}");
        }
    }

    #[test]
    fn plain_services_are_no_containers() {
        for path in [
            "/",
            "/system.slice/nginx.service",
            "/user.slice/user-1000.slice/session-2.scope",
            "/podcast.slice",
        ] {
            let c = parse(path);
            assert_eq!((c.container_id, c.pod_uid), (None, None), "{path}");
        }
    }

    #[test]
    fn this_process_resolves_to_its_cgroup() {
        let mut cgroups = Cgroups::default();
        let Some(id) = cgroups.id_of_pid(std::process::id()) else {
            // No cgroup v2 mounted: nothing to resolve on this machine.
            assert!(cgroup2_root().is_none());
            return;
        };
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap()
            .to_string();
        assert_eq!(cgroups.lookup(id).map(|c| c.path.clone()), Some(path));
    }
}
