//! What the kernel side reports, typed: one record per state change or RST, with the socket's endpoints, namespace and owner; and a socket's steps as the kernel logs them, which unfold into those records.

use std::{
    fmt::{self, Write as _},
    net::IpAddr,
};

use tracer_common::{COMM_LEN, LOG_STEPS, NetFigures, TcpFigures, TcpState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub const ALL: [Self; 2] = [Self::Ipv4, Self::Ipv6];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
        }
    }
}

/// A task name as the kernel stores it: up to 16 bytes, NUL padded, not
/// necessarily UTF-8. Kept inline so decoding never allocates.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Comm([u8; COMM_LEN]);

impl Comm {
    pub fn new(raw: [u8; COMM_LEN]) -> Self {
        Self(raw)
    }

    pub fn as_bytes(&self) -> &[u8] {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        &self.0[..len]
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Lossy: a comm is attacker-chosen bytes; never let it break a line.
        for chunk in self.as_bytes().utf8_chunks() {
            for c in chunk.valid().chars() {
                if c.is_control() {
                    write!(f, "{}", c.escape_default())?;
                } else {
                    f.write_char(c)?;
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// A container's names as Kubernetes gives them (read from the node's
/// own files by `host::kube`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct PodName {
    pub namespace: String,
    pub pod: String,
    /// `None` for a pod's sandbox, or a pod's own cgroup.
    pub container: Option<String>,
}

impl fmt::Display for PodName {
    /// `namespace/pod`, and `/container` when known.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.pod)?;
        if let Some(c) = &self.container {
            write!(f, "/{c}")?;
        }
        Ok(())
    }
}

/// The process a socket belongs to: as the kernel attributed it, as
/// `/proc` names the holder of a socket, as a connection keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// The process name (the thread-group leader's).
    pub comm: Comm,
    /// cgroup v2 id of the owner; 0 if unknown.
    pub cgroup_id: u64,
}

/// What a record reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A TCP state change.
    StateChange { old: TcpState, new: TcpState },
    /// This host sent a RST; `state` is the socket's then.
    SendReset { state: TcpState },
    /// The peer's RST arrived.
    ReceiveReset { state: TcpState },
}

/// One decoded ring record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Boot-clock nanoseconds (`CLOCK_BOOTTIME`).
    pub ts_ns: u64,
    pub cookie: u64,
    pub kind: Kind,
    pub family: Family,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
    /// `None` when no process had been seen using the socket yet.
    pub owner: Option<Owner>,
    /// Network namespace inode; 0 if unknown.
    pub netns: u32,
    /// For a state change: whether the peer's FIN had arrived; `None` for
    /// other kinds or when unreadable.
    pub peer_fin: Option<bool>,
    /// For a state change: when the socket entered the old state, if the
    /// kernel recorded it (it may have left that step's record out).
    pub since_ns: Option<u64>,
    /// For a state change leaving ESTABLISHED or SYN_RECV: the TCP
    /// socket's own figures at that moment.
    pub tcp: Option<TcpFigures>,
    /// For a state change to CLOSE: the socket's whole life (bytes, RTT,
    /// retransmissions, the error it ended with).
    pub net: Option<NetFigures>,
    /// For a state change from FIN_WAIT2 or CLOSING to CLOSE: the kernel
    /// looked for the timewait socket that takes the full socket's place
    /// and found none (its TIME_WAIT table was full, or a RST ended the
    /// socket). False when it found one, or could not tell.
    pub no_timewait: bool,
}

/// One step of a [`StepLog`]: what differs from step to step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoggedStep {
    pub ts_ns: u64,
    pub kind: Kind,
    /// As [`Record::peer_fin`].
    pub peer_fin: Option<bool>,
    /// The log's TCP figures were read at this step.
    pub tcp: bool,
    /// As [`Record::no_timewait`].
    pub no_timewait: bool,
}

impl LoggedStep {
    /// Fills the unused slots of a log.
    pub const UNUSED: Self = Self {
        ts_ns: 0,
        kind: Kind::StateChange {
            old: TcpState::Close,
            new: TcpState::Close,
        },
        peer_fin: None,
        tcp: false,
        no_timewait: false,
    };
}

/// A socket's steps as the kernel logged them in its map entry: read
/// from the entry while the socket lives, or written to the ring when its
/// full socket's life ends (or its log filled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepLog {
    /// What every step's record says of the socket: cookie, endpoints (as
    /// of the last step), owner, namespace. Its `kind`, `ts_ns`,
    /// `since_ns`, `peer_fin` and `tcp` are the last step's.
    pub socket: Record,
    /// Logs of this socket written to the ring before this one.
    pub generation: u32,
    /// When the socket entered the first step's old state, if known.
    pub prior_ns: Option<u64>,
    /// The TCP figures of the step marked `tcp`.
    pub tcp: Option<TcpFigures>,
    /// The socket's figures at its end, when the last step is its CLOSE.
    pub net: Option<NetFigures>,
    steps: [LoggedStep; LOG_STEPS],
    len: usize,
}

impl StepLog {
    /// A log of `steps` (at most [`LOG_STEPS`]; more are cut).
    pub fn new(
        socket: Record,
        generation: u32,
        prior_ns: Option<u64>,
        tcp: Option<TcpFigures>,
        steps: &[LoggedStep],
    ) -> Self {
        let len = steps.len().min(LOG_STEPS);
        let mut slots = [LoggedStep::UNUSED; LOG_STEPS];
        slots[..len].copy_from_slice(&steps[..len]);
        let mut log = Self {
            socket,
            generation,
            prior_ns,
            tcp,
            net: None,
            steps: slots,
            len,
        };
        if len > 0 {
            log.socket = log.record(len - 1);
        }
        log
    }

    /// The same log with the socket's figures at its end (kept only when
    /// its last step is the step to CLOSE, the one they were read at).
    #[must_use]
    pub fn with_net(mut self, net: Option<NetFigures>) -> Self {
        let ends = self.len > 0
            && matches!(
                self.steps[self.len - 1].kind,
                Kind::StateChange {
                    new: TcpState::Close,
                    ..
                }
            );
        self.net = net.filter(|_| ends);
        if ends {
            self.socket = self.record(self.len - 1);
        }
        self
    }

    pub fn cookie(&self) -> u64 {
        self.socket.cookie
    }

    pub fn steps(&self) -> &[LoggedStep] {
        &self.steps[..self.len]
    }

    /// Step `i` as the record the kernel would have written for it at
    /// once: the state it left was entered at the state change before it.
    pub fn record(&self, i: usize) -> Record {
        let i = i.min(LOG_STEPS - 1);
        let step = self.steps[i];
        let since_ns = self.steps[..i]
            .iter()
            .rev()
            .find(|s| matches!(s.kind, Kind::StateChange { .. }))
            .map_or(self.prior_ns, |s| Some(s.ts_ns));
        let state_change = matches!(step.kind, Kind::StateChange { .. });
        Record {
            ts_ns: step.ts_ns,
            kind: step.kind,
            since_ns: since_ns.filter(|_| state_change),
            peer_fin: step.peer_fin,
            tcp: self.tcp.filter(|_| step.tcp),
            net: self.net.filter(|_| i + 1 == self.len),
            no_timewait: step.no_timewait,
            ..self.socket
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{COMM_LEN, Comm};
    use crate::testutil::comm;

    #[test]
    fn comm_is_printable_whatever_the_bytes() {
        assert_eq!(Comm::new(comm("curl")).to_string(), "curl");
        let mut raw = [0; COMM_LEN];
        raw[..5].copy_from_slice(b"a\nb\xffc");
        assert_eq!(Comm::new(raw).to_string(), "a\\nb\\xffc");
        assert_eq!(Comm::new([b'x'; COMM_LEN]).to_string(), "x".repeat(16));
    }
}
