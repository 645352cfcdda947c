//! Who a group is: the process name, role and endpoint that key it, the pids inside it, and a server's client addresses.

use std::net::IpAddr;

use super::{PEERS_KEPT, PIDS_KEPT};
use crate::model::{
    event::Comm,
    tracker::{ConnId, Role},
};

/// One group: processes of one name talking to one endpoint in one role.
/// Ordered only so that ties in a ranking come out the same every run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct GroupKey {
    /// The process name; `None` when no process was seen with the sockets.
    pub comm: Option<Comm>,
    pub role: Role,
    /// The remote address of a client's connections; `None` for a server,
    /// whose clients come from anywhere.
    pub peer: Option<IpAddr>,
    /// The service port: the remote port of a client, the local (listening)
    /// port of a server.
    pub port: u16,
}

impl GroupKey {
    /// The key standing for every group folded beyond the cap.
    pub const OTHER: Self = Self {
        comm: None,
        role: Role::Unknown,
        peer: None,
        port: 0,
    };

    pub fn of(id: &ConnId) -> Self {
        let server = id.role == Role::Server;
        Self {
            comm: id.owner.map(|o| o.comm),
            role: id.role,
            peer: (!server).then(|| id.raddr.to_canonical()),
            port: if server { id.lport } else { id.rport },
        }
    }

    /// The one way an endpoint is written: `10.0.0.2:8080` (`[fd00::2]:443`)
    /// for the server a client talks to, `:8080` for a server's own
    /// listening port.
    pub fn endpoint(&self) -> String {
        match self.peer {
            Some(IpAddr::V4(a)) => format!("{a}:{}", self.port),
            Some(IpAddr::V6(a)) => format!("[{a}]:{}", self.port),
            None => format!(":{}", self.port),
        }
    }

    /// The process name, or `-` when no process was seen.
    pub fn comm_name(&self) -> String {
        self.comm.map_or_else(|| "-".into(), |c| c.to_string())
    }

    pub fn is_other(&self) -> bool {
        *self == Self::OTHER
    }
}

/// The processes seen in a group, and how many connections each had.
#[derive(Debug, Clone, Default)]
pub struct Procs {
    /// (pid, connections), the first [`PIDS_KEPT`] pids seen.
    kept: Vec<(u32, u64)>,
    /// Every pid seen, up to [`PIDS_COUNTED`]; beyond, the count is a floor.
    counted: foldhash::HashSet<u32>,
    /// A count known without the pids behind it (a stored minute's): the
    /// count is at least this.
    at_least: u64,
    /// The cgroup of each pid kept, where an owner said it: which
    /// container (and pod) a pid is in.
    cgroups: Vec<(u32, u64)>,
}

/// Pids counted exactly per group; a count at this cap means "at least".
pub const PIDS_COUNTED: usize = 4096;

impl Procs {
    pub fn add(&mut self, pid: u32, conns: u64) {
        if self.counted.len() < PIDS_COUNTED {
            self.counted.insert(pid);
        }
        if let Some(entry) = self.kept.iter_mut().find(|(p, _)| *p == pid) {
            entry.1 += conns;
        } else if self.kept.len() < PIDS_KEPT {
            self.kept.push((pid, conns));
        }
    }

    /// How many processes (at least, once [`PIDS_COUNTED`]).
    pub fn count(&self) -> u64 {
        (self.counted.len() as u64).max(self.at_least)
    }

    /// Counts `conns` connections of `owner`, remembering its cgroup.
    pub fn add_owner(&mut self, owner: &crate::model::event::Owner, conns: u64) {
        self.add(owner.pid, conns);
        if owner.cgroup_id != 0
            && self.cgroups.len() < PIDS_KEPT
            && !self.cgroups.iter().any(|(p, _)| *p == owner.pid)
        {
            self.cgroups.push((owner.pid, owner.cgroup_id));
        }
    }

    /// The cgroup of a pid kept, if an owner said it.
    pub fn cgroup_of(&self, pid: u32) -> Option<u64> {
        self.cgroups
            .iter()
            .find_map(|&(p, cgroup)| (p == pid).then_some(cgroup))
    }

    /// (pid, connections) of the pids kept, in the order first seen.
    pub fn kept(&self) -> &[(u32, u64)] {
        &self.kept
    }

    /// Adds what a stored minute kept: its pids and its count of processes.
    pub fn restore(&mut self, kept: &[(u32, u64)], count: u64) {
        for &(pid, conns) in kept {
            self.add(pid, conns);
        }
        self.at_least = self.at_least.max(count);
    }

    /// The pid with the most connections (the lowest on a tie).
    pub fn main(&self) -> Option<u32> {
        self.kept
            .iter()
            .max_by_key(|&&(pid, n)| (n, std::cmp::Reverse(pid)))
            .map(|&(pid, _)| pid)
    }

    /// The pids kept, busiest first.
    pub fn pids(&self) -> Vec<u32> {
        let mut kept = self.kept.clone();
        kept.sort_by_key(|&(pid, n)| (std::cmp::Reverse(n), pid));
        kept.into_iter().map(|(pid, _)| pid).collect()
    }
}

/// The client addresses of a server group.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Peers {
    pub kept: Vec<IpAddr>,
    /// More addresses than [`PEERS_KEPT`] were seen.
    pub more: bool,
}

impl Peers {
    pub(super) fn add(&mut self, addr: IpAddr) {
        let addr = addr.to_canonical();
        if self.kept.contains(&addr) {
            return;
        }
        if self.kept.len() < PEERS_KEPT {
            self.kept.push(addr);
        } else {
            self.more = true;
        }
    }

    /// The only client address, if there is exactly one.
    pub fn single(&self) -> Option<IpAddr> {
        (self.kept.len() == 1 && !self.more).then(|| self.kept[0])
    }

    pub(super) fn merge(&mut self, other: &Peers) {
        for &addr in &other.kept {
            self.add(addr);
        }
        self.more |= other.more;
    }
}
