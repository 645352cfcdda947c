//! The sockets of a group alive now, and what the kernel says of each one's last I/O and network.

use tracer_common::TcpState;

use super::PIDS_KEPT;
use crate::model::{dist::Dist, tracker::ConnId};

/// The sockets of one process of a group alive at the last observation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PidNow {
    pub established: u64,
    pub close_wait: u64,
    pub awaiting: u64,
    pub idle: u64,
}

/// Sockets of a group alive at the last observation.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Now {
    /// When it was taken (boot-clock ns); 0 before the first.
    pub at_ns: u64,
    /// Count per state, indexed by the kernel's state number.
    pub by_state: [u64; 16],
    /// ESTABLISHED and silent for [`IDLE_AFTER_NS`] or more, last activity
    /// not an unanswered send.
    pub idle: u64,
    /// ESTABLISHED whose last activity is a send with no receive since,
    /// [`UNANSWERED_AFTER_NS`] or more ago.
    pub awaiting: u64,
    pub oldest_awaiting_ns: u64,
    /// Of the awaiting sockets, those whose network figures are known;
    /// among them the ones whose request the peer's TCP has not even
    /// acknowledged, their retransmissions, and their RTTs.
    #[serde(default)]
    pub awaiting_with_net: u64,
    #[serde(default)]
    pub awaiting_unacked: u64,
    #[serde(default)]
    pub awaiting_retrans: u64,
    #[serde(default)]
    pub awaiting_rtt: Dist,
    /// How long each ESTABLISHED socket has been silent (since its last
    /// send or receive, or since it was first seen).
    pub idle_time: Dist,
    pub oldest_close_wait_ns: u64,
    /// (netns, cookie) of some CLOSE_WAIT sockets, to find their fds.
    pub close_wait_sample: Vec<(u32, u64)>,
    /// TIME_WAIT sockets the tracker follows, counted as they start and
    /// end rather than walked at each observation: there can be hundreds
    /// of thousands, and each changes once.
    pub time_wait_followed: u64,
    /// Per process (the first [`PIDS_KEPT`]).
    pub pids: Vec<(u32, PidNow)>,
}

impl Now {
    pub fn count(&self, state: TcpState) -> u64 {
        let followed = if state == TcpState::TimeWait {
            self.time_wait_followed
        } else {
            0
        };
        self.by_state[state as usize] + followed
    }

    /// Every socket alive.
    pub fn total(&self) -> u64 {
        self.by_state.iter().sum::<u64>() + self.time_wait_followed
    }

    /// The process with the most of what `of` counts.
    pub fn main_pid(&self, of: impl Fn(&PidNow) -> u64) -> Option<u32> {
        self.pids
            .iter()
            .filter(|(_, p)| of(p) > 0)
            .max_by_key(|(pid, p)| (of(p), std::cmp::Reverse(*pid)))
            .map(|(pid, _)| *pid)
    }

    pub(super) fn pid(&mut self, pid: u32) -> Option<&mut PidNow> {
        if let Some(i) = self.pids.iter().position(|(p, _)| *p == pid) {
            return Some(&mut self.pids[i].1);
        }
        if self.pids.len() >= PIDS_KEPT {
            return None;
        }
        self.pids.push((pid, PidNow::default()));
        self.pids.last_mut().map(|(_, p)| p)
    }
}

/// When a socket last moved data (boot-clock ns), as the kernel tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct LastIo {
    /// The last data sent; `None` if none was.
    pub send_ns: Option<u64>,
    /// The last data received; `None` if none was.
    pub recv_ns: Option<u64>,
    /// What the socket says of the network now; `None` from a recording
    /// older than these figures.
    #[serde(default)]
    pub net: Option<LiveNet>,
}

/// An open socket's network figures, from TCP_INFO at a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct LiveNet {
    /// Segments sent that the peer has not acknowledged yet.
    pub unacked: u32,
    /// Segments retransmitted over the socket's life.
    pub retrans: u32,
    /// Smoothed RTT, µs.
    pub rtt_us: u32,
}

/// A socket alive now, with what the kernel knows of its last I/O.
#[derive(Debug, Clone, Copy)]
pub struct LiveSocket {
    pub id: ConnId,
    /// False while the owner is only inherited from the listener: the
    /// socket is counted in its group, but names no process.
    pub owner_known: bool,
    pub cookie: u64,
    pub state: TcpState,
    pub since_ns: Option<u64>,
    pub io: Option<LastIo>,
}
