//! Dumps TCP sockets through NETLINK_SOCK_DIAG (inet_diag), the source for sockets the tracepoints cannot see: timewait sockets and those opened before the tracer.

use std::{io, net::IpAddr};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, Timer, nlas::Nla},
};
use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};
use tracer_common::TcpState;

use crate::{
    host::{
        clock,
        netns::{self, NetnsPaths},
    },
    model::{
        event::Family,
        tracker::{Sightings, TimewaitSighting, Wanted},
    },
};

/// What the tracer uses of TCP_INFO: times in ms ago, and whether data
/// ever moved (the times alone cannot say: "never" reads as long ago, or
/// as the handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpTimes {
    pub last_data_sent_ms: u32,
    pub last_data_recv_ms: u32,
    pub last_ack_recv_ms: u32,
    pub data_segs_in: u32,
    pub data_segs_out: u32,
    /// Segments sent and not yet acknowledged, segments retransmitted over
    /// the life, and the smoothed RTT (µs).
    pub unacked: u32,
    pub total_retrans: u32,
    pub rtt_us: u32,
}

/// Everything the tracer uses about one socket from a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagSocket {
    pub family: Family,
    /// For a timewait socket, its substate: FIN_WAIT2 or TIME_WAIT.
    pub state: TcpState,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
    pub cookie: u64,
    /// 0 for sockets no file refers to (orphans, timewait sockets).
    pub inode: u32,
    /// Milliseconds left on a timewait socket's timer; `None` for full sockets.
    pub timewait_expires_ms: Option<u32>,
    /// From TCP_INFO, when asked for: ms since data was last sent and
    /// received, and since any segment (ACK) last arrived.
    pub tcp_info: Option<TcpTimes>,
    /// Boot-clock ns when the kernel reported this entry (when its batch
    /// of the dump was read), the reference for `timewait_expires_ms`.
    pub seen_ns: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("sock_diag socket: {0}")]
    Io(#[from] io::Error),
    #[error("sock_diag reply could not be parsed: {0}")]
    Parse(String),
    #[error("sock_diag request refused by the kernel: errno {0}")]
    Kernel(i32),
}

/// Where `idiag_expires` sits in a reply: after the 16-byte netlink header,
/// the 4 one-byte fields and the 48-byte socket id of `struct inet_diag_msg`.
/// Read from the raw bytes because the crate drops it for timewait sockets,
/// which is the one case the follower needs it for.
const EXPIRES_OFFSET: usize = 16 + 4 + 48;

fn cookie_of(id: &SocketId) -> u64 {
    // The kernel writes the cookie as two native-endian u32 halves, low first.
    let low = u32::from_ne_bytes(id.cookie[0..4].try_into().expect("4 bytes"));
    let high = u32::from_ne_bytes(id.cookie[4..8].try_into().expect("4 bytes"));
    u64::from(low) | (u64::from(high) << 32)
}

/// A cookie as the socket id carries it (see [`cookie_of`]).
fn cookie_words(cookie: u64) -> [u8; 8] {
    let mut words = [0; 8];
    #[expect(clippy::cast_possible_truncation, reason = "the low half, on purpose")]
    let low = cookie as u32;
    words[0..4].copy_from_slice(&low.to_ne_bytes());
    words[4..8].copy_from_slice(&u32::try_from(cookie >> 32).unwrap_or(0).to_ne_bytes());
    words
}

fn to_diag_socket(response: &InetResponse, raw: &[u8], seen_ns: u64) -> Option<DiagSocket> {
    let header = &response.header;
    let family = match header.family {
        AF_INET => Family::Ipv4,
        AF_INET6 => Family::Ipv6,
        _ => return None,
    };
    let state = TcpState::from_u8(header.state)?;
    let timewait_expires_ms = match header.timer {
        Some(Timer::TimeWait) => raw
            .get(EXPIRES_OFFSET..EXPIRES_OFFSET + 4)
            .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes"))),
        _ => None,
    };
    let tcp_info = response.nlas.iter().find_map(|nla| match nla {
        Nla::TcpInfo(info) => Some(TcpTimes {
            last_data_sent_ms: info.last_data_sent,
            last_data_recv_ms: info.last_data_recv,
            last_ack_recv_ms: info.last_ack_recv,
            data_segs_in: info.data_segs_in,
            data_segs_out: info.data_segs_out,
            unacked: info.unacked,
            total_retrans: info.total_retrans,
            rtt_us: info.rtt,
        }),
        _ => None,
    });
    let id = &header.socket_id;
    Some(DiagSocket {
        family,
        state,
        laddr: id.source_address,
        lport: id.source_port,
        raddr: id.destination_address,
        rport: id.destination_port,
        cookie: cookie_of(id),
        inode: header.inode,
        timewait_expires_ms,
        tcp_info,
        seen_ns,
    })
}

/// One netlink message of a reply.
#[derive(Debug)]
enum Message {
    Socket(DiagSocket),
    Done,
    /// The kernel's answer to a request it refused (a negative errno).
    Error(i32),
    /// Anything else (a reply for another family, a noop).
    Other,
}

/// The messages of one `recv`, parsed one by one. Malformed input is an
/// error, never a panic; iteration stops after it.
struct Messages<'a> {
    bytes: &'a [u8],
    seen_ns: u64,
}

impl Iterator for Messages<'_> {
    type Item = Result<Message, DiagError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.bytes.is_empty() {
            return None;
        }
        let bytes = self.bytes;
        let parsed = <NetlinkMessage<SockDiagMessage>>::deserialize(bytes)
            .map_err(|e| DiagError::Parse(e.to_string()))
            .and_then(|message| {
                let len = message.header.length as usize;
                if len < 16 || len > bytes.len() {
                    return Err(DiagError::Parse(format!(
                        "message length {len} with {} bytes left",
                        bytes.len()
                    )));
                }
                Ok((message.payload, len))
            });
        let (payload, len) = match parsed {
            Ok(p) => p,
            Err(e) => {
                self.bytes = &[];
                return Some(Err(e));
            }
        };
        // Netlink messages are 4-byte aligned.
        self.bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
        Some(Ok(match payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                to_diag_socket(&response, &bytes[..len], self.seen_ns)
                    .map_or(Message::Other, Message::Socket)
            }
            NetlinkPayload::Done(_) => Message::Done,
            NetlinkPayload::Error(err) => {
                Message::Error(err.code.map_or(0, std::num::NonZero::get))
            }
            _ => Message::Other,
        }))
    }
}

/// Parses one batch of dump replies into `out`; returns true once the dump
/// is complete.
pub fn parse_batch(
    bytes: &[u8],
    seen_ns: u64,
    out: &mut Vec<DiagSocket>,
) -> Result<bool, DiagError> {
    for message in (Messages { bytes, seen_ns }) {
        match message? {
            Message::Socket(socket) => out.push(socket),
            Message::Done => return Ok(true),
            Message::Error(code) => return Err(DiagError::Kernel(code)),
            Message::Other => {}
        }
    }
    Ok(false)
}

/// Parses one batch of replies to exact lookups into `out`; returns how
/// many lookups it answers. "No such socket" answers count; any other
/// refusal is an error.
fn parse_lookups(
    bytes: &[u8],
    seen_ns: u64,
    out: &mut Vec<DiagSocket>,
) -> Result<usize, DiagError> {
    let mut answered = 0;
    for message in (Messages { bytes, seen_ns }) {
        match message? {
            Message::Socket(socket) => {
                answered += 1;
                out.push(socket);
            }
            // Gone, or the 4-tuple now belongs to another socket.
            Message::Error(code) if code == -libc::ENOENT || code == -libc::ESTALE => answered += 1,
            Message::Error(code) => return Err(DiagError::Kernel(code)),
            Message::Done | Message::Other => {}
        }
    }
    Ok(answered)
}

/// Exact lookups sent per `send`: their replies (about 100 bytes each)
/// must fit the socket's receive buffer, or the kernel drops some.
const LOOKUP_BATCH: usize = 256;

/// Waits longer than this for a reply mean one was lost: the caller is
/// told, rather than blocked for good.
#[expect(clippy::cast_possible_truncation, reason = "a timeval is 16 bytes")]
const TIMEVAL_LEN: libc::socklen_t = size_of::<libc::timeval>() as libc::socklen_t;
const REPLY_TIMEOUT: libc::timeval = libc::timeval {
    tv_sec: 5,
    tv_usec: 0,
};

/// A sock_diag socket bound to one network namespace.
pub struct Diag {
    socket: Socket,
    sequence: u32,
    buf: Vec<u8>,
}

impl Diag {
    /// A sock_diag socket in the tracer's own network namespace.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        let timeout = REPLY_TIMEOUT;
        // SAFETY: a valid socket and a `timeval` of the size passed.
        let set = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                TIMEVAL_LEN,
            )
        };
        if set != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            socket,
            sequence: 0,
            // Large enough for the kernel's dump batches (up to ~32 KiB).
            buf: vec![0; 64 * 1024],
        })
    }

    /// A sock_diag socket in the network namespace `ns` (an open `ns/net`
    /// file): a netlink socket answers for the namespace it was created in.
    pub fn open_in(ns: &std::fs::File) -> io::Result<Self> {
        netns::run_in(ns, Self::open)
    }

    /// A sock_diag socket in the namespace with inode `inum` (0 or the
    /// tracer's own: here); `None` if that namespace is found nowhere
    /// (gone, or held only by something no path leads to): the caller
    /// cannot tell which, so it must not conclude the sockets are gone.
    pub fn open_for(inum: u32, paths: &mut NetnsPaths) -> io::Result<Option<Self>> {
        if inum == 0 || inum == paths.own() {
            return Self::open().map(Some);
        }
        paths.open(inum).map(|ns| Self::open_in(&ns)).transpose()
    }

    fn next_sequence(&mut self) -> u32 {
        self.sequence = self.sequence.wrapping_add(1);
        self.sequence
    }

    /// Every TCP socket of `family` in one of `states`; with `info`, also
    /// each full socket's TCP_INFO times (idle, last segment).
    pub fn dump(
        &mut self,
        family: Family,
        states: StateFlags,
        info: bool,
    ) -> Result<Vec<DiagSocket>, DiagError> {
        let socket_id = match family {
            Family::Ipv4 => SocketId::new_v4(),
            Family::Ipv6 => SocketId::new_v6(),
        };
        let extensions = if info {
            ExtensionFlags::INFO
        } else {
            ExtensionFlags::empty()
        };
        let mut bytes = Vec::new();
        let sequence = self.next_sequence();
        request(
            NLM_F_REQUEST | NLM_F_DUMP,
            sequence,
            family,
            states,
            extensions,
            socket_id,
            &mut bytes,
        );
        self.socket.send(&bytes, 0)?;

        let mut sockets = Vec::new();
        loop {
            let n = self.recv()?;
            if parse_batch(&self.buf[..n], clock::boot_ns(), &mut sockets)? {
                return Ok(sockets);
            }
        }
    }

    /// The sockets among `wanted` (all of `family`) that still exist, full
    /// or timewait, each looked up by its 4-tuple and cookie: far cheaper
    /// than a dump when the table is large and few are wanted. A socket
    /// whose 4-tuple now belongs to another is not returned. With `info`,
    /// each full socket's TCP_INFO times too (the kernel sizes each reply
    /// for them either way, so the batch fits as well).
    pub fn lookup(
        &mut self,
        family: Family,
        wanted: &[Wanted],
        info: bool,
    ) -> Result<Vec<DiagSocket>, DiagError> {
        let extensions = if info {
            ExtensionFlags::INFO
        } else {
            ExtensionFlags::empty()
        };
        let mut found = Vec::new();
        let mut bytes = Vec::new();
        for chunk in wanted.chunks(LOOKUP_BATCH) {
            bytes.clear();
            for w in chunk {
                let mut id = match family {
                    Family::Ipv4 => SocketId::new_v4(),
                    Family::Ipv6 => SocketId::new_v6(),
                };
                // The socket id is the socket's own view: source = local.
                id.source_address = w.laddr;
                id.source_port = w.lport;
                id.destination_address = w.raddr;
                id.destination_port = w.rport;
                id.cookie = cookie_words(w.cookie);
                let sequence = self.next_sequence();
                request(
                    NLM_F_REQUEST,
                    sequence,
                    family,
                    StateFlags::all(),
                    extensions.clone(),
                    id,
                    &mut bytes,
                );
            }
            self.socket.send(&bytes, 0)?;
            let mut answered = 0;
            while answered < chunk.len() {
                let n = self.recv()?;
                answered += parse_lookups(&self.buf[..n], clock::boot_ns(), &mut found)?;
            }
        }
        Ok(found)
    }

    fn recv(&mut self) -> Result<usize, DiagError> {
        let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
        if n == 0 {
            return Err(DiagError::Parse("sock_diag closed mid-reply".into()));
        }
        Ok(n)
    }
}

/// Appends one inet_diag request to `out`.
fn request(
    flags: u16,
    sequence: u32,
    family: Family,
    states: StateFlags,
    extensions: ExtensionFlags,
    socket_id: SocketId,
    out: &mut Vec<u8>,
) {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = sequence;
    let mut message = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family: match family {
                Family::Ipv4 => AF_INET,
                Family::Ipv6 => AF_INET6,
            },
            protocol: IPPROTO_TCP,
            extensions,
            states,
            socket_id,
        })
        .into(),
    );
    message.finalize();
    let start = out.len();
    out.resize(start + message.buffer_len().next_multiple_of(4), 0);
    message.serialize(&mut out[start..]);
}

/// States as the dump filter wants them.
pub fn states(list: &[TcpState]) -> StateFlags {
    StateFlags::from_bits_truncate(list.iter().fold(0, |bits, s| bits | 1 << *s as u32))
}

/// Adds the timewait sockets among `sockets` to `out`.
pub fn add_timewait(sockets: &[DiagSocket], out: &mut Sightings) {
    out.extend(sockets.iter().filter_map(|s| {
        s.timewait_expires_ms.map(|expires_ms| {
            (
                s.cookie,
                TimewaitSighting {
                    state: s.state,
                    seen_ns: s.seen_ns,
                    expires_ms,
                },
            )
        })
    }));
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::DoneMessage;
    use netlink_packet_sock_diag::inet::InetResponseHeader;
    use smallvec::SmallVec;

    use super::*;

    fn response(state: u8, timer: Option<Timer>, cookie: u64) -> Vec<u8> {
        let mut id = SocketId::new_v4();
        id.source_address = "10.0.0.1".parse().unwrap();
        id.destination_address = "10.0.0.2".parse().unwrap();
        id.source_port = 40000;
        id.destination_port = 8080;
        id.cookie = cookie_words(cookie);
        let mut message = NetlinkMessage::new(
            NetlinkHeader::default(),
            SockDiagMessage::InetResponse(Box::new(InetResponse {
                header: InetResponseHeader {
                    family: AF_INET,
                    state,
                    timer,
                    socket_id: id,
                    recv_queue: 0,
                    send_queue: 0,
                    uid: 0,
                    inode: 77,
                },
                nlas: SmallVec::new(),
            }))
            .into(),
        );
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        bytes
    }

    fn done() -> Vec<u8> {
        let mut message: NetlinkMessage<SockDiagMessage> = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::Done(DoneMessage::default()),
        );
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        bytes
    }

    #[test]
    fn timewait_expiry_and_cookie_come_through() {
        let mut tw = response(
            TcpState::FinWait2 as u8,
            Some(Timer::TimeWait),
            0x1_0000_0002,
        );
        // The crate writes 0 for a timewait timer; put the kernel's value in.
        tw[EXPIRES_OFFSET..EXPIRES_OFFSET + 4].copy_from_slice(&2345u32.to_ne_bytes());
        let mut batch = tw;
        batch.extend(response(TcpState::Established as u8, None, 9));
        batch.extend(done());
        let mut out = Vec::new();
        assert!(parse_batch(&batch, 42, &mut out).unwrap());
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].cookie, 0x1_0000_0002);
        assert_eq!(out[0].state, TcpState::FinWait2);
        assert_eq!(out[0].timewait_expires_ms, Some(2345));
        assert_eq!(out[0].seen_ns, 42);
        assert_eq!(out[0].lport, 40000);
        assert_eq!(out[1].timewait_expires_ms, None);
        assert_eq!(out[1].inode, 77);
        let mut by_cookie = Sightings::default();
        add_timewait(&out, &mut by_cookie);
        assert_eq!(by_cookie.len(), 1);
        assert_eq!(
            by_cookie[&0x1_0000_0002],
            TimewaitSighting {
                state: TcpState::FinWait2,
                seen_ns: 42,
                expires_ms: 2345
            }
        );
    }

    #[test]
    fn a_batch_without_done_asks_for_more() {
        let mut out = Vec::new();
        assert!(!parse_batch(&response(1, None, 1), 0, &mut out).unwrap());
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn truncated_and_garbage_batches_are_errors() {
        let full = response(1, None, 1);
        for cut in [1, 8, 15, 16, 40, full.len() - 1] {
            let mut out = Vec::new();
            assert!(
                parse_batch(&full[..cut], 0, &mut out).is_err(),
                "cut at {cut}"
            );
        }
        let mut lying = full.clone();
        lying[0..4].copy_from_slice(&10_000u32.to_ne_bytes());
        assert!(parse_batch(&lying, 0, &mut Vec::new()).is_err());
        let mut zero = full;
        zero[0..4].copy_from_slice(&0u32.to_ne_bytes());
        assert!(parse_batch(&zero, 0, &mut Vec::new()).is_err());
    }

    fn error(code: i32) -> Vec<u8> {
        let mut message: NetlinkMessage<SockDiagMessage> = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::Error({
                let mut e = netlink_packet_core::ErrorMessage::default();
                e.code = std::num::NonZeroI32::new(code);
                // The echoed request header.
                e.header = vec![0; 16];
                e
            }),
        );
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        bytes
    }

    #[test]
    fn lookups_count_found_and_vanished_sockets_and_fail_on_other_errors() {
        let mut batch = response(TcpState::TimeWait as u8, Some(Timer::TimeWait), 5);
        batch.extend(error(-libc::ENOENT));
        batch.extend(error(-libc::ESTALE));
        let mut out = Vec::new();
        assert_eq!(parse_lookups(&batch, 7, &mut out).unwrap(), 3);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].cookie, 5);
        batch.extend(error(-libc::EPERM));
        assert!(matches!(
            parse_lookups(&batch, 7, &mut Vec::new()),
            Err(DiagError::Kernel(code)) if code == -libc::EPERM
        ));
        // A dump refused outright is an error too.
        assert!(parse_batch(&error(-libc::EINVAL), 0, &mut Vec::new()).is_err());
    }

    #[test]
    fn state_masks() {
        let mask = states(&[TcpState::FinWait2, TcpState::TimeWait]);
        assert_eq!(mask, StateFlags::FIN_WAIT2 | StateFlags::TIME_WAIT);
    }

    fn arbitrary_bytes() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)
    }

    proptest::proptest! {
        /// Any reply from netlink is parsed or refused, never a panic.
        #[test]
        fn arbitrary_replies_never_panic(bytes in arbitrary_bytes()) {
            let mut out = Vec::new();
            let _ = parse_batch(&bytes, 1, &mut out);
            let _ = parse_lookups(&bytes, 1, &mut out);
            let mut sightings = Sightings::default();
            add_timewait(&out, &mut sightings);
        }

        /// Real replies with bytes overwritten, cut short or padded with
        /// junk: still parsed or refused, and never more sockets than
        /// messages could hold.
        #[test]
        fn damaged_real_replies_never_panic(
            state in 0u8..16,
            cookie in proptest::prelude::any::<u64>(),
            damage in proptest::collection::vec((0usize..400, proptest::prelude::any::<u8>()), 0..12),
            cut in 0usize..400,
            junk in arbitrary_bytes(),
        ) {
            let mut bytes = response(state, Some(Timer::TimeWait), cookie);
            bytes.extend(response(TcpState::Established as u8, None, cookie ^ 1));
            bytes.extend(done());
            for (at, value) in damage {
                if let Some(b) = bytes.get_mut(at) {
                    *b = value;
                }
            }
            bytes.truncate(cut.max(1));
            bytes.extend(junk);
            let mut out = Vec::new();
            let _ = parse_batch(&bytes, 1, &mut out);
            proptest::prop_assert!(out.len() <= bytes.len() / 16);
            let mut out = Vec::new();
            let _ = parse_lookups(&bytes, 1, &mut out);
            proptest::prop_assert!(out.len() <= bytes.len() / 16);
        }
    }
}
