//! Kubernetes names of a container (namespace, pod, container) from what the node already has, without the API server: the OCI bundle's annotations (containerd, CRI-O), Docker's container config, or the kubelet's log layout.
//!
//! Each runtime writes the names where its shims and the kubelet read
//! them back, so they are there as long as the container runs:
//!
//! | runtime | file | keys |
//! |---|---|---|
//! | containerd | `/run/containerd/io.containerd.runtime.v2.task/k8s.io/<id>/config.json` | annotations `io.kubernetes.cri.sandbox-namespace`, `…sandbox-name`, `…container-name` |
//! | CRI-O | `/run/containers/storage/overlay-containers/<id>/userdata/config.json` | annotations `io.kubernetes.pod.namespace`, `…pod.name`, `io.kubernetes.container.name` |
//! | Docker (cri-dockerd) | `/var/lib/docker/containers/<id>/config.v2.json` | `Config.Labels`, the same keys as CRI-O |
//! | any (kubelet) | `/var/log/containers/<pod>_<namespace>_<container>-<id>.log` | the name itself |
//!
//! A pod's own cgroup (no container id) is named from
//! `/var/log/pods/<namespace>_<pod>_<uid>/`.

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
};

use serde_json::Value;

pub use crate::model::event::PodName;

/// A bundle's config is a few KiB; beyond this it is not one.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

fn read_json(path: &Path) -> Option<Value> {
    let mut text = String::new();
    fs::File::open(path)
        .ok()?
        .take(MAX_CONFIG_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    serde_json::from_str(&text).ok()
}

/// The names among `map` (annotations or labels) under these keys.
fn named(map: &Value, namespace: &str, pod: &str, container: &str) -> Option<PodName> {
    let get = |k: &str| map.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    Some(PodName {
        namespace: get(namespace)?.to_string(),
        pod: get(pod)?.to_string(),
        container: get(container).map(str::to_string),
    })
}

/// CRI-O's and the kubelet's label keys (Docker's labels use them too).
fn kubelet_keys(map: &Value) -> Option<PodName> {
    named(
        map,
        "io.kubernetes.pod.namespace",
        "io.kubernetes.pod.name",
        "io.kubernetes.container.name",
    )
}

/// Where the node's files are: `/`, or where a container mounted the
/// host's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFiles {
    root: PathBuf,
}

impl Default for NodeFiles {
    fn default() -> Self {
        Self::new(PathBuf::from("/"))
    }
}

impl NodeFiles {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn at(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// The names of the container with this id (64 hex digits), if the
    /// node has them.
    pub fn container(&self, id: &str) -> Option<PodName> {
        let containerd = self.at(&format!(
            "/run/containerd/io.containerd.runtime.v2.task/k8s.io/{id}/config.json"
        ));
        if let Some(found) = read_json(&containerd).and_then(|c| {
            named(
                c.get("annotations")?,
                "io.kubernetes.cri.sandbox-namespace",
                "io.kubernetes.cri.sandbox-name",
                "io.kubernetes.cri.container-name",
            )
        }) {
            return Some(found);
        }
        let crio = self.at(&format!(
            "/run/containers/storage/overlay-containers/{id}/userdata/config.json"
        ));
        if let Some(found) = read_json(&crio).and_then(|c| kubelet_keys(c.get("annotations")?)) {
            return Some(found);
        }
        let docker = self.at(&format!("/var/lib/docker/containers/{id}/config.v2.json"));
        if let Some(found) =
            read_json(&docker).and_then(|c| kubelet_keys(c.get("Config")?.get("Labels")?))
        {
            return Some(found);
        }
        self.by_log_name(id)
    }

    /// `/var/log/containers/<pod>_<namespace>_<container>-<id>.log`.
    fn by_log_name(&self, id: &str) -> Option<PodName> {
        let suffix = format!("-{id}.log");
        fs::read_dir(self.at("/var/log/containers"))
            .ok()?
            .flatten()
            .find_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let stem = name.strip_suffix(&suffix)?;
                // Pod and namespace names have no `_` (DNS labels);
                // a container name neither.
                let mut parts = stem.splitn(3, '_');
                let (pod, namespace, container) = (parts.next()?, parts.next()?, parts.next()?);
                Some(PodName {
                    namespace: namespace.to_string(),
                    pod: pod.to_string(),
                    container: Some(container.to_string()),
                })
            })
    }

    /// The namespace and name of the pod with this uid, from the kubelet's
    /// `/var/log/pods/<namespace>_<pod>_<uid>/`.
    pub fn pod(&self, uid: &str) -> Option<PodName> {
        let suffix = format!("_{uid}");
        fs::read_dir(self.at("/var/log/pods"))
            .ok()?
            .flatten()
            .find_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let (namespace, pod) = name.strip_suffix(&suffix)?.split_once('_')?;
                Some(PodName {
                    namespace: namespace.to_string(),
                    pod: pod.to_string(),
                    container: None,
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901";

    fn node(tag: &str) -> (NodeFiles, PathBuf) {
        let root =
            std::env::temp_dir().join(format!("tcplinger-kube-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        (NodeFiles::new(root.clone()), root)
    }

    fn write(root: &Path, path: &str, text: &str) {
        let path = root.join(path.trim_start_matches('/'));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn web() -> PodName {
        PodName {
            namespace: "shop".into(),
            pod: "web-7d9f8-x2x4q".into(),
            container: Some("nginx".into()),
        }
    }

    #[test]
    fn containerd_bundle_annotations() {
        let (node, root) = node("containerd");
        write(
            &root,
            &format!("/run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}/config.json"),
            r#"{"ociVersion":"1.1.0","annotations":{
                "io.kubernetes.cri.container-type":"container",
                "io.kubernetes.cri.sandbox-namespace":"shop",
                "io.kubernetes.cri.sandbox-name":"web-7d9f8-x2x4q",
                "io.kubernetes.cri.container-name":"nginx"}}"#,
        );
        assert_eq!(node.container(ID), Some(web()));
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn a_containerd_sandbox_has_no_container_name() {
        let (node, root) = node("sandbox");
        write(
            &root,
            &format!("/run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}/config.json"),
            r#"{"annotations":{"io.kubernetes.cri.container-type":"sandbox",
                "io.kubernetes.cri.sandbox-namespace":"shop",
                "io.kubernetes.cri.sandbox-name":"web-7d9f8-x2x4q"}}"#,
        );
        assert_eq!(
            node.container(ID),
            Some(PodName {
                container: None,
                ..web()
            })
        );
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn crio_bundle_annotations() {
        let (node, root) = node("crio");
        write(
            &root,
            &format!("/run/containers/storage/overlay-containers/{ID}/userdata/config.json"),
            r#"{"annotations":{"io.kubernetes.pod.namespace":"shop",
                "io.kubernetes.pod.name":"web-7d9f8-x2x4q",
                "io.kubernetes.container.name":"nginx"}}"#,
        );
        assert_eq!(node.container(ID), Some(web()));
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn docker_labels() {
        let (node, root) = node("docker");
        write(
            &root,
            &format!("/var/lib/docker/containers/{ID}/config.v2.json"),
            r#"{"ID":"x","Config":{"Labels":{"io.kubernetes.pod.namespace":"shop",
                "io.kubernetes.pod.name":"web-7d9f8-x2x4q",
                "io.kubernetes.container.name":"nginx"}}}"#,
        );
        assert_eq!(node.container(ID), Some(web()));
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn the_kubelets_log_layout() {
        let (node, root) = node("logs");
        write(
            &root,
            &format!("/var/log/containers/web-7d9f8-x2x4q_shop_nginx-{ID}.log"),
            "",
        );
        write(
            &root,
            &format!("/var/log/pods/shop_web-7d9f8-x2x4q_{UID}/nginx/0.log"),
            "",
        );
        assert_eq!(node.container(ID), Some(web()));
        assert_eq!(
            node.pod(UID),
            Some(PodName {
                container: None,
                ..web()
            })
        );
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn nothing_known_and_bad_files_name_nothing() {
        let (node, root) = node("none");
        assert_eq!(node.container(ID), None);
        assert_eq!(node.pod(UID), None);
        write(
            &root,
            &format!("/run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}/config.json"),
            "{not json",
        );
        write(
            &root,
            &format!("/run/containers/storage/overlay-containers/{ID}/userdata/config.json"),
            r#"{"annotations":{"io.kubernetes.pod.name":"no-namespace"}}"#,
        );
        assert_eq!(node.container(ID), None);
        let _ = fs::remove_dir_all(root);
    }
}
