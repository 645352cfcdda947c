//! What is open when tracing starts: every TCP socket of every network namespace (sock_diag), with its owner (/proc/*/fd), as seeds for the tracker.

use tracer_common::TcpState;

use crate::{
    cli::Filters,
    decode::Family,
    netns,
    owners::socket_owners,
    sock_diag::{self, Diag},
    tracker::{OwnerRef, Seed},
};

/// All states but the ones the tracker ignores.
const STATES: [TcpState; 10] = [
    TcpState::Established,
    TcpState::SynSent,
    TcpState::SynRecv,
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::CloseWait,
    TcpState::LastAck,
    TcpState::Listen,
    TcpState::Closing,
    TcpState::TimeWait,
];

/// Seeds for every socket the filters admit, and a count of the
/// namespaces that could not be read (they are skipped, not fatal).
pub fn take(filters: &Filters) -> (Vec<Seed>, usize) {
    let states = sock_diag::states(&STATES);
    let own = netns::own().unwrap_or(0);
    let mut found = Vec::new();
    let mut unreadable = 0;
    for (inum, path) in netns::all() {
        let diag = if inum == own {
            Diag::open()
        } else {
            Diag::open_in(&path)
        };
        let Ok(mut diag) = diag else {
            unreadable += 1;
            continue;
        };
        for family in Family::ALL {
            match diag.dump(family, states.clone()) {
                Ok(sockets) => found.extend(sockets.into_iter().map(|s| (inum, s))),
                Err(_) => unreadable += 1,
            }
        }
    }
    let owners = socket_owners();
    let seeds = found
        .into_iter()
        .filter(|(_, s)| s.timewait_expires_ms.is_none())
        .filter_map(|(netns, s)| {
            let owner = owners.get(&s.inode).map(|o| OwnerRef {
                pid: o.pid,
                comm: o.comm,
            });
            filters
                .admits(s.family, s.lport, s.rport, owner.map(|o| o.pid))
                .then_some(Seed {
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
    (seeds, unreadable)
}
