//! What is open right now: every TCP socket of every network namespace (sock_diag), with its owner (/proc/*/fd). Seeds the tracker at start and backs `sockets`.

use std::collections::{HashMap, HashSet};

use tracer_common::TcpState;

use crate::{
    host::netns::{self, NetnsPaths},
    host::owners::{fds_of, socket_owners},
    host::sock_diag::{self, Diag, DiagSocket},
    model::event::Family,
    model::select::Filters,
    model::tracker::{Alive, Seed, role_by_ports},
};

/// Every state a socket can be found in by a dump.
pub const ALL_STATES: [TcpState; 11] = [
    TcpState::Established,
    TcpState::SynSent,
    TcpState::SynRecv,
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::TimeWait,
    TcpState::CloseWait,
    TcpState::LastAck,
    TcpState::Listen,
    TcpState::Closing,
    TcpState::Close,
];

/// A socket found by a dump, and the namespace it lives in.
#[derive(Debug, Clone)]
pub struct Found {
    pub netns: u32,
    pub socket: DiagSocket,
}

/// Every socket of every namespace, by cookie, and the namespaces read in
/// full: what the tracker is checked against after a loss.
pub fn alive() -> Alive {
    let mask = sock_diag::states(&ALL_STATES);
    let mut paths = NetnsPaths::default();
    let mut alive = Alive::default();
    for inum in netns::all().into_keys() {
        let Ok(Some(mut diag)) = Diag::open_for(inum, &mut paths) else {
            continue;
        };
        let mut complete = true;
        for family in Family::ALL {
            match diag.dump(family, mask.clone(), false) {
                Ok(sockets) => {
                    for s in &sockets {
                        alive.states.insert(s.cookie, s.state);
                        if s.timewait_expires_ms.is_some() {
                            alive.timewait.insert(s.cookie);
                        }
                    }
                }
                Err(_) => complete = false,
            }
        }
        if complete {
            alive.netns.insert(inum);
        }
    }
    alive
}

/// Dumps `states` in every namespace, both families. Returns the sockets
/// and how many dumps failed (a namespace gone or unreadable is skipped).
pub fn dump_all(states: &[TcpState], info: bool) -> (Vec<Found>, usize) {
    let mask = sock_diag::states(states);
    let mut paths = NetnsPaths::default();
    let mut found = Vec::new();
    let mut failed = 0;
    for inum in netns::all().into_keys() {
        let Ok(Some(mut diag)) = Diag::open_for(inum, &mut paths) else {
            failed += 1;
            continue;
        };
        for family in Family::ALL {
            match diag.dump(family, mask.clone(), info) {
                Ok(sockets) => found.extend(sockets.into_iter().map(|socket| Found {
                    netns: inum,
                    socket,
                })),
                Err(_) => failed += 1,
            }
        }
    }
    (found, failed)
}

/// Seeds for every socket the filters admit, and a count of the dumps
/// that failed (skipped, not fatal).
pub fn take(filters: &Filters) -> (Vec<Seed>, usize) {
    let (found, failed) = dump_all(&ALL_STATES, false);
    let owners = socket_owners();
    let listening: HashSet<(u32, u16)> = found
        .iter()
        .filter(|f| f.socket.state == TcpState::Listen)
        .map(|f| (f.netns, f.socket.lport))
        .collect();
    let mut paths = NetnsPaths::default();
    let mut ephemeral: HashMap<u32, (u16, u16)> = HashMap::new();
    let seeds = found
        .into_iter()
        .filter(|f| f.socket.timewait_expires_ms.is_none())
        .filter_map(|Found { netns, socket: s }| {
            let owner = owners.get(&s.inode).copied();
            let range = *ephemeral
                .entry(netns)
                .or_insert_with(|| netns::ephemeral_ports(netns, &mut paths));
            let role = role_by_ports(
                listening.contains(&(netns, s.lport)),
                s.lport,
                s.rport,
                range,
            );
            filters
                .admits(s.family, s.lport, s.rport, owner.map(|o| o.pid))
                .then_some(Seed {
                    role,
                    cookie: s.cookie,
                    netns,
                    family: s.family,
                    state: s.state,
                    laddr: s.laddr,
                    lport: s.lport,
                    raddr: s.raddr,
                    rport: s.rport,
                    owner,
                })
        })
        .collect();
    (seeds, failed)
}

/// File descriptors of `pid` that hold these CLOSE_WAIT sockets, given as
/// (netns, cookie): sock_diag names their inodes, /proc/PID/fd the fds.
pub fn close_wait_fds(pid: u32, sample: &[(u32, u64)]) -> Vec<u32> {
    let mut by_netns: HashMap<u32, HashSet<u64>> = HashMap::new();
    for &(netns, cookie) in sample {
        by_netns.entry(netns).or_default().insert(cookie);
    }
    let mut paths = NetnsPaths::default();
    let mut inodes = HashSet::new();
    for (inum, cookies) in by_netns {
        let Ok(Some(mut diag)) = Diag::open_for(inum, &mut paths) else {
            continue;
        };
        for family in Family::ALL {
            if let Ok(sockets) = diag.dump(family, sock_diag::states(&[TcpState::CloseWait]), false)
            {
                inodes.extend(
                    sockets
                        .iter()
                        .filter(|s| cookies.contains(&s.cookie))
                        .map(|s| s.inode),
                );
            }
        }
    }
    fds_of(pid, &inodes)
}
