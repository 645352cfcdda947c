//! When each open connection last sent and received data, from the kernel's own TCP_INFO (over sock_diag), for telling idle sockets from ones awaiting an answer.

use std::collections::HashMap;

use tracer_common::TcpState;

use crate::{
    host::{
        netns::NetnsPaths,
        sock_diag::{self, Diag, DiagSocket},
    },
    model::{
        aggregate::{LastIo, LiveNet},
        event::Family,
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

/// Reads last I/O and inodes of open sockets, keeping one sock_diag socket
/// per namespace asked about.
#[derive(Default)]
pub struct IoReader {
    paths: NetnsPaths,
    sockets: HashMap<u32, Diag>,
    /// Dumps that failed or could not be made (namespace found nowhere),
    /// in all: those sockets' last I/O is unknown at that look.
    pub failed: u64,
}

impl IoReader {
    /// Namespaces asked about and found nowhere, in all.
    pub fn netns_not_found(&self) -> u64 {
        self.paths.not_found
    }

    /// Last I/O (and inode) of every ESTABLISHED or CLOSE_WAIT socket in
    /// the namespaces and families listed. A namespace that cannot be read
    /// is skipped: its sockets then have no I/O known, as before their
    /// first look.
    pub fn read(&mut self, wanted: impl IntoIterator<Item = (u32, Family)>) -> ByCookie {
        let mut out = ByCookie::default();
        let mut asked: Vec<(u32, Family)> = wanted.into_iter().collect();
        asked.sort_unstable_by_key(|&(netns, family)| (netns, family == Family::Ipv6));
        asked.dedup();
        let states = sock_diag::states(&STATES);
        for &(netns, family) in &asked {
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
            if let Ok(sockets) = diag.dump(family, states.clone(), true) {
                out.extend(sockets.iter().map(|s| {
                    let io = (s.state == TcpState::Established)
                        .then(|| last_io(s))
                        .flatten();
                    (s.cookie, Seen { io, inode: s.inode })
                }));
            } else {
                // Broken or gone: a fresh socket next time.
                self.failed += 1;
                self.sockets.remove(&netns);
            }
        }
        self.sockets
            .retain(|netns, _| asked.iter().any(|(n, _)| n == netns));
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
