//! What the kernel side reports, typed: one record per state change or RST, with the socket's endpoints, namespace and owner.

use std::{
    fmt::{self, Write as _},
    net::IpAddr,
};

use tracer_common::{COMM_LEN, TcpFigures, TcpState};

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
