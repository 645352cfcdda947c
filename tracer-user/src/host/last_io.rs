//! When each open connection last sent and received data, from the kernel's own TCP_INFO (over sock_diag), for telling idle sockets from ones awaiting an answer.

use std::collections::{HashMap, HashSet};

use tracer_common::TcpState;

use crate::{
    host::{
        netns::NetnsPaths,
        sock_diag::{self, Diag, DiagSocket},
    },
    model::{
        aggregate::{LastIo, LiveNet},
        event::Family,
        tracker::Wanted,
    },
};

/// When a dumped socket last moved data, from its TCP_INFO ("ms ago" as of
/// the dump). The data segment counts say whether data ever moved: a
/// socket that never received has its handshake as "last receive", one
/// that never sent the time since boot.
pub fn last_io(s: &DiagSocket) -> Option<LastIo> {
    let info = s.tcp_info?;
    let at = |moved: u32, ms_ago: u32| {
        (moved > 0)
            .then(|| s.seen_ns.checked_sub(u64::from(ms_ago) * 1_000_000))
            .flatten()
    };
    Some(LastIo {
        send_ns: at(info.data_segs_out, info.last_data_sent_ms),
        recv_ns: at(info.data_segs_in, info.last_data_recv_ms),
        net: Some(LiveNet {
            unacked: info.unacked,
            retrans: info.total_retrans,
            rtt_us: info.rtt_us,
        }),
    })
}

/// What a dump says of one open socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Seen {
    /// Its last I/O (ESTABLISHED sockets).
    pub io: Option<LastIo>,
    /// Its inode: which process holds it can be found from it (0 if no
    /// file refers to it).
    pub inode: u32,
}

/// What the dump says by cookie.
pub type ByCookie = foldhash::HashMap<u64, Seen>;

/// The states an observation looks up: open connections (their last I/O)
/// and CLOSE_WAIT ones (their inode, for sockets a process accepted and
/// never touched).
const STATES: [TcpState; 2] = [TcpState::Established, TcpState::CloseWait];

/// Up to this many sockets of a namespace are looked up one by one (one
/// batch of exact lookups); more, and the namespace is dumped. A dump
/// walks every bucket of the kernel's socket table and every TIME_WAIT
/// socket in it: on this 2-CPU, 24 GB VM (262,144 buckets) a look a
/// second at 120 to 240 open sockets cost the tracer 4 to 5.5 ms of CPU a
/// second as dumps, 1 to 2 ms as lookups (under 10 µs a socket, so a
/// batch stays within a dump's cost; BENCHMARKS.md, "Looks").
const LOOKUPS_AT_MOST: usize = 256;

/// An open socket whose last I/O and inode are wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asked {
    pub netns: u32,
    pub family: Family,
    pub socket: Wanted,
}

/// Reads last I/O and inodes of open sockets, keeping one sock_diag socket
/// per namespace asked about.
#[derive(Default)]
pub struct IoReader {
    paths: NetnsPaths,
    sockets: HashMap<u32, Diag>,
    /// Dumps or batches of lookups that failed or could not be made
    /// (namespace found nowhere), in all: those sockets' last I/O is
    /// unknown at that look.
    pub failed: u64,
}

impl IoReader {
    /// Namespaces asked about and found nowhere, in all.
    pub fn netns_not_found(&self) -> u64 {
        self.paths.not_found
    }

    /// Last I/O (and inode) of the sockets `asked` that are ESTABLISHED or
    /// CLOSE_WAIT now. A namespace that cannot be read is skipped: its
    /// sockets then have no I/O known, as before their first look.
    pub fn read(&mut self, asked: &[Asked]) -> ByCookie {
        let mut by_namespace: HashMap<(u32, Family), Vec<Wanted>> = HashMap::new();
        for a in asked {
            by_namespace
                .entry((a.netns, a.family))
                .or_default()
                .push(a.socket);
        }
        let states = sock_diag::states(&STATES);
        let mut out = ByCookie::default();
        for (&(netns, family), wanted) in &by_namespace {
            if !self.sockets.contains_key(&netns) {
                let Ok(Some(diag)) = Diag::open_for(netns, &mut self.paths) else {
                    self.failed += 1;
                    continue;
                };
                self.sockets.insert(netns, diag);
            }
            let Some(diag) = self.sockets.get_mut(&netns) else {
                continue;
            };
            let found = if wanted.len() <= LOOKUPS_AT_MOST {
                diag.lookup(family, wanted, true)
            } else {
                diag.dump(family, states.clone(), true)
            };
            let Ok(found) = found else {
                // Broken or gone: a fresh socket next time.
                self.failed += 1;
                self.sockets.remove(&netns);
                continue;
            };
            let cookies: HashSet<u64> = wanted.iter().map(|w| w.cookie).collect();
            out.extend(
                found
                    .iter()
                    .filter(|s| STATES.contains(&s.state) && cookies.contains(&s.cookie))
                    .map(|s| {
                        let io = (s.state == TcpState::Established)
                            .then(|| last_io(s))
                            .flatten();
                        (s.cookie, Seen { io, inode: s.inode })
                    }),
            );
        }
        self.sockets
            .retain(|netns, _| by_namespace.keys().any(|&(n, _)| n == *netns));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::sock_diag::TcpTimes;

    #[test]
    fn tcp_info_ages_become_boot_clock_times() {
        let mut s = DiagSocket {
            family: Family::Ipv4,
            state: TcpState::Established,
            laddr: "10.0.0.1".parse().unwrap(),
            lport: 1,
            raddr: "10.0.0.2".parse().unwrap(),
            rport: 2,
            cookie: 9,
            inode: 1,
            timewait_expires_ms: None,
            tcp_info: Some(TcpTimes {
                last_data_sent_ms: 5_000,
                last_data_recv_ms: 250,
                last_ack_recv_ms: 250,
                data_segs_in: 1,
                data_segs_out: 3,
                unacked: 1,
                total_retrans: 2,
                rtt_us: 41,
            }),
            seen_ns: 60_000_000_000,
        };
        assert_eq!(
            last_io(&s),
            Some(LastIo {
                send_ns: Some(55_000_000_000),
                recv_ns: Some(59_750_000_000),
                net: Some(LiveNet {
                    unacked: 1,
                    retrans: 2,
                    rtt_us: 41,
                }),
            })
        );
        // Older than boot cannot be.
        s.tcp_info.as_mut().unwrap().last_data_sent_ms = u32::MAX;
        assert_eq!(last_io(&s).unwrap().send_ns, None);
        // Never received data: the last "receive" is the handshake's.
        s.tcp_info.as_mut().unwrap().data_segs_in = 0;
        assert_eq!(last_io(&s).unwrap().recv_ns, None);
        s.tcp_info = None;
        assert_eq!(last_io(&s), None);
    }
}
