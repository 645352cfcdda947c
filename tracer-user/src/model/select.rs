//! Which connections a user asked about: the filters the kernel applies (pids, ports, family) and those applied to what the tracker reports (owner command names, remote networks).
//!
//! These are applied in userspace, where a connection's owner is final: an
//! accepted socket is first seen under its listener's process and only
//! later under the one that reads it, so a kernel-side comm filter would
//! drop the steps that decide `closed_by`.

use std::net::IpAddr;

use ipnet::IpNet;

use tracer_common::COMM_LEN;

use crate::model::event::{Comm, Family};

/// Which address families are traced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyFilter {
    Any,
    Ipv4,
    Ipv6,
}

/// The filters the kernel programs apply (`--pid`, `--port`, `-4`/`-6`):
/// at most [`tracer_common::MAX_FILTER_PIDS`] pids and
/// [`tracer_common::MAX_FILTER_PORTS`] ports, sorted, no repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filters {
    pub pids: Vec<u32>,
    pub ports: Vec<u16>,
    pub family: FamilyFilter,
}

impl Default for Filters {
    fn default() -> Self {
        Self {
            pids: Vec::new(),
            ports: Vec::new(),
            family: FamilyFilter::Any,
        }
    }
}

impl Filters {
    /// The same decision as the kernel's, for sockets seen otherwise (the
    /// start-up snapshot, `sockets`).
    pub fn admits(&self, family: Family, lport: u16, rport: u16, pid: Option<u32>) -> bool {
        let family_ok = match self.family {
            FamilyFilter::Any => true,
            FamilyFilter::Ipv4 => family == Family::Ipv4,
            FamilyFilter::Ipv6 => family == Family::Ipv6,
        };
        let port_ok = self.ports.is_empty() || self.ports.iter().any(|&p| p == lport || p == rport);
        let pid_ok = self.pids.is_empty() || pid.is_some_and(|pid| self.pids.contains(&pid));
        family_ok && port_ok && pid_ok
    }
}

/// The kernel keeps this many bytes of a command name (`TASK_COMM_LEN` - 1).
const COMM_KEPT: usize = COMM_LEN - 1;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Command names as the kernel keeps them (at most 15 bytes).
    comms: Vec<Vec<u8>>,
    remotes: Vec<IpNet>,
    /// Kubernetes namespaces, and pods (`name` or `namespace/name`).
    namespaces: Vec<String>,
    pods: Vec<String>,
    /// A process left out whatever else is selected: the daemon's own.
    without_pid: Option<u32>,
}

impl Selection {
    pub fn new(comms: &[String], remotes: &[IpNet]) -> Self {
        let mut comms: Vec<Vec<u8>> = comms
            .iter()
            .map(|c| c.as_bytes()[..c.len().min(COMM_KEPT)].to_vec())
            .collect();
        comms.sort();
        comms.dedup();
        let mut remotes: Vec<IpNet> = remotes.iter().map(IpNet::trunc).collect();
        remotes.sort();
        remotes.dedup();
        Self {
            comms,
            remotes,
            namespaces: Vec::new(),
            pods: Vec::new(),
            without_pid: None,
        }
    }

    /// Also never the sockets of process `pid` (the daemon's own: the
    /// scrapes of its metrics are not what it is there to judge).
    #[must_use]
    pub fn without_pid(mut self, pid: Option<u32>) -> Self {
        self.without_pid = pid;
        self
    }

    /// A socket owned by `pid` (if known) is not left out as the tool's own.
    pub fn admits_pid(&self, pid: Option<u32>) -> bool {
        self.without_pid.is_none() || pid != self.without_pid
    }

    /// Also only owners in these Kubernetes namespaces and pods (a pod as
    /// `name` or `namespace/name`).
    #[must_use]
    pub fn with_pods(mut self, namespaces: &[String], pods: &[String]) -> Self {
        self.namespaces = namespaces.to_vec();
        self.pods = pods.to_vec();
        self
    }

    /// `--namespace` or `--pod` was given: the owner's pod must be looked up.
    pub fn wants_pods(&self) -> bool {
        !self.namespaces.is_empty() || !self.pods.is_empty()
    }

    /// An owner in this pod (`None`: not a pod, or not known) is wanted.
    pub fn admits_pod(&self, pod: Option<(&str, &str)>) -> bool {
        if !self.wants_pods() {
            return true;
        }
        let Some((namespace, name)) = pod else {
            return false;
        };
        (self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == namespace))
            && (self.pods.is_empty()
                || self.pods.iter().any(|p| match p.split_once('/') {
                    Some((ns, pod)) => ns == namespace && pod == name,
                    None => p == name,
                }))
    }

    /// Nothing is selected away.
    pub fn is_empty(&self) -> bool {
        self.comms.is_empty() && self.remotes.is_empty() && !self.wants_pods()
    }

    /// A process name as printed (`Comm`'s display) is one of `--comm`.
    pub fn admits_name(&self, name: &str) -> bool {
        self.comms.is_empty() || self.comms.iter().any(|w| w.as_slice() == name.as_bytes())
    }

    /// Whether a connection owned by `comm` (if known) to `raddr` is wanted;
    /// with nothing selected, two emptiness checks. (The pod is judged
    /// apart, [`Self::admits_pod`]: it takes a lookup.)
    /// An IPv4 network also matches the IPv4-mapped form of its addresses,
    /// which is how dual-stack sockets show IPv4 peers.
    pub fn admits(&self, comm: Option<&Comm>, raddr: IpAddr) -> bool {
        let comm_ok = self.comms.is_empty()
            || comm.is_some_and(|c| self.comms.iter().any(|w| w.as_slice() == c.as_bytes()));
        let remote_ok = self.remotes.is_empty() || {
            let canonical = raddr.to_canonical();
            self.remotes
                .iter()
                .any(|net| net.contains(&raddr) || net.contains(&canonical))
        };
        comm_ok && remote_ok
    }
}

/// `--remote`: an address (`10.0.0.7`, `::1`) or a network in CIDR form
/// (`10.0.0.0/8`, `fd00::/8`).
pub fn parse_remote(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    s.parse::<IpNet>().map_err(|_| {
        format!("'{s}' is not an address or a network (e.g. 10.0.0.7, 10.0.0.0/8, fd00::/8)")
    })
}

/// `--comm`: a command name as `ps -o comm` shows it.
pub fn parse_comm(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("an empty command name matches nothing".into());
    }
    if s.bytes().any(|b| b == 0 || b == b'\n') {
        return Err("a command name has no NUL or newline".into());
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comm(name: &str) -> Comm {
        Comm::new(crate::testutil::comm(name))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn empty_selection_admits_everything() {
        let s = Selection::default();
        assert!(s.admits(None, ip("192.0.2.1")));
    }

    #[test]
    fn comm_matches_exactly_and_needs_an_owner() {
        let s = Selection::new(&["curl".into()], &[]);
        assert!(s.admits(Some(&comm("curl")), ip("192.0.2.1")));
        assert!(!s.admits(Some(&comm("curly")), ip("192.0.2.1")));
        assert!(!s.admits(Some(&comm("cur")), ip("192.0.2.1")));
        assert!(!s.admits(None, ip("192.0.2.1")));
    }

    #[test]
    fn long_comm_is_matched_as_the_kernel_truncates_it() {
        let s = Selection::new(&["kube-controller-manager".into()], &[]);
        // What the kernel keeps of that name: its first 15 bytes.
        assert!(s.admits(Some(&comm("kube-controller")), ip("::1")));
        assert!(!s.admits(Some(&comm("kube-controlle")), ip("::1")));
        assert!(!s.admits(Some(&comm("kube-scheduler")), ip("::1")));
    }

    #[test]
    fn remote_networks_match_v4_v6_and_mapped() {
        let nets = [
            parse_remote("10.0.0.0/8").unwrap(),
            parse_remote("fd00::/8").unwrap(),
        ];
        let s = Selection::new(&[], &nets);
        assert!(s.admits(None, ip("10.1.2.3")));
        assert!(s.admits(None, ip("::ffff:10.1.2.3")));
        assert!(s.admits(None, ip("fd12::1")));
        assert!(!s.admits(None, ip("11.0.0.1")));
        assert!(!s.admits(None, ip("fe80::1")));
    }

    #[test]
    fn a_bare_address_is_one_host_and_host_bits_are_ignored() {
        let s = Selection::new(&[], &[parse_remote("192.0.2.7").unwrap()]);
        assert!(s.admits(None, ip("192.0.2.7")));
        assert!(!s.admits(None, ip("192.0.2.8")));
        let s = Selection::new(&[], &[parse_remote("192.0.2.7/24").unwrap()]);
        assert!(s.admits(None, ip("192.0.2.200")));
    }

    #[test]
    fn both_must_hold() {
        let s = Selection::new(&["curl".into()], &[parse_remote("10.0.0.0/8").unwrap()]);
        assert!(s.admits(Some(&comm("curl")), ip("10.0.0.1")));
        assert!(!s.admits(Some(&comm("curl")), ip("11.0.0.1")));
        assert!(!s.admits(Some(&comm("wget")), ip("10.0.0.1")));
    }

    #[test]
    fn bad_values_say_why() {
        for bad in ["10.0.0.0/33", "10.0.0", "example.com", "fd00::/129", ""] {
            let err = parse_remote(bad).unwrap_err();
            assert!(err.contains("not an address or a network"), "{bad}: {err}");
        }
        assert!(parse_comm("").is_err());
        assert!(parse_comm("a\nb").is_err());
        assert_eq!(parse_comm("nginx").unwrap(), "nginx");
    }

    #[test]
    fn pods_are_selected_by_namespace_name_or_both() {
        let none = Selection::default();
        assert!(!none.wants_pods() && none.admits_pod(None));
        let shop = Selection::default().with_pods(&["shop".into()], &[]);
        assert!(shop.admits_pod(Some(("shop", "web-1"))));
        assert!(!shop.admits_pod(Some(("kube-system", "web-1"))));
        assert!(!shop.admits_pod(None), "not in a pod: not selected");
        let web = Selection::default().with_pods(&[], &["web-1".into(), "db/pg-0".into()]);
        assert!(web.admits_pod(Some(("shop", "web-1"))));
        assert!(web.admits_pod(Some(("db", "pg-0"))));
        assert!(!web.admits_pod(Some(("shop", "pg-0"))));
        assert!(!web.is_empty());
    }
}
