//! A test's stage: the two namespaces of a `NetPair`, ports handed out so that no two tests of a run share one, and the peers, addresses and endpoint strings the tests repeat.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener},
    process::Command,
    sync::atomic::{AtomicU16, Ordering},
    time::{Duration, Instant},
};

use super::{netns::NetPair, peer::Peer, require_root, wait_until};

/// The first port handed out. Below the ephemeral range (32768 and up by
/// default) so that no client's source port, in a test namespace or on
/// the host, is ever one of them: a tracer filtering by `--port` sees
/// only the connections its test made.
const FIRST_PORT: u16 = 20000;
const EPHEMERAL_START: u16 = 32768;
/// Ports a run may use: a run takes about 60, and two runs at once (two
/// checkouts on one machine) start at different places by process id.
const PORTS_PER_RUN: u16 = 400;

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A port no other test of this run uses: for servers in the test
/// namespaces and for `--port` filters. Tracers see every namespace, so it
/// is the port, not the namespace, that keeps one test's traffic out of
/// another's tracer.
pub fn fresh_port() -> u16 {
    let runs = (EPHEMERAL_START - FIRST_PORT) / PORTS_PER_RUN;
    let slot = u16::try_from(std::process::id() % u32::from(runs)).expect("below runs");
    let n = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
    assert!(n < PORTS_PER_RUN, "out of test ports: {n} taken");
    FIRST_PORT + slot * PORTS_PER_RUN + n
}

/// A loopback port nobody listens on now, as the kernel picks it: for a
/// listener in the host's own namespace (the daemon's metrics, Prometheus),
/// where other programs may hold any fixed port.
pub fn loopback_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("binding on loopback")
        .local_addr()
        .expect("local address")
        .port()
}

/// `127.0.0.1` with a port from `loopback_port`.
pub fn loopback_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), loopback_port())
}

/// Who sends the first FIN in `Scene::converse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closer {
    Client,
    Server,
}

/// How `Scene::converse` runs its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// One after the other.
    OneAtATime,
    /// All at once, a thread each on both sides (`--parallel`).
    AllAtOnce,
}

/// The processes of a finished `Scene::converse`.
#[derive(Debug, Clone, Copy)]
pub struct Pids {
    pub client: u32,
    pub server: u32,
}

/// Each test gets its own link and port; the server address is the server
/// namespace's IPv4 one unless the scene is made with `ipv6`.
pub struct Scene {
    pub net: NetPair,
    /// The port the scene's server listens on and its tracer filters by.
    pub port: u16,
    ipv6: bool,
}

impl Scene {
    /// Checks for root first, so that without it the test fails saying
    /// why rather than on `ip netns add`.
    pub fn new() -> Scene {
        Self::with_family(false)
    }

    /// A scene whose addresses are the namespaces' IPv6 ones.
    pub fn ipv6() -> Scene {
        Self::with_family(true)
    }

    fn with_family(ipv6: bool) -> Scene {
        require_root();
        Scene {
            net: NetPair::new(),
            port: fresh_port(),
            ipv6,
        }
    }

    pub fn server_ip(&self) -> IpAddr {
        if self.ipv6 {
            self.net.server_v6
        } else {
            self.net.server_v4
        }
    }

    pub fn client_ip(&self) -> IpAddr {
        if self.ipv6 {
            self.net.client_v6
        } else {
            self.net.client_v4
        }
    }

    /// The server's address on the scene's port.
    pub fn target(&self) -> SocketAddr {
        self.at(self.port)
    }

    /// The server's address on another port (from `fresh_port`).
    pub fn at(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.server_ip(), port)
    }

    /// The scene's port as a flag value (`--port`).
    pub fn port_arg(&self) -> String {
        self.port.to_string()
    }

    /// An HTTP URL of the server on the scene's port.
    pub fn url(&self) -> String {
        format!("http://{}/", self.target())
    }

    /// A finding's endpoint for the server, as the client side names it.
    pub fn server_endpoint(&self) -> String {
        self.target().to_string()
    }

    /// A finding's endpoint for the clients, as the server side names it:
    /// their address, any port.
    pub fn client_endpoint(&self) -> String {
        format!("{}:*", self.client_ip())
    }

    /// A peer server on the scene's port, in the server namespace; returns
    /// once it listens.
    pub fn server(&self, flags: &[&str]) -> Peer {
        self.server_on(self.port, flags)
    }

    /// A peer client of the scene's port, in the client namespace.
    pub fn client(&self, flags: &[&str]) -> Peer {
        self.client_of(self.port, flags)
    }

    pub fn server_on(&self, port: u16, flags: &[&str]) -> Peer {
        Peer::server(&self.net.server_ns, self.at(port), flags)
    }

    pub fn client_of(&self, port: u16, flags: &[&str]) -> Peer {
        Peer::client(&self.net.client_ns, self.at(port), flags)
    }

    /// `count` connections to the scene's port, each one request and its
    /// answer, closed by `closer` first and by the other side on its FIN;
    /// returns once both peers have finished.
    pub fn converse(&self, closer: Closer, count: usize, pace: Pace) -> Pids {
        let (server_close, client_close) = match closer {
            Closer::Client => ("after-eof", "first"),
            Closer::Server => ("first", "after-eof"),
        };
        let count = count.to_string();
        let mut server_flags = vec!["--close", server_close, "--count", &count];
        let mut client_flags = vec!["--close", client_close, "--count", &count];
        if pace == Pace::AllAtOnce {
            server_flags.push("--parallel");
            client_flags.push("--parallel");
        }
        let server = self.server(&server_flags);
        let client = self.client(&client_flags);
        let pids = Pids {
            client: client.pid,
            server: server.pid,
        };
        client.finish();
        server.finish();
        pids
    }
}

/// Bounds every wait on the scene's sockets: their closes take a round
/// trip on a veth pair, so this is only ever reached when something broke.
const SOCKETS_LIMIT: Duration = Duration::from_secs(10);

/// States the kernel leaves by itself within a round trip once neither
/// side has anything more to do. While a socket is in one of them, the
/// records of its close are still to come; once none is, every record the
/// close makes is in the tracers' rings (or counted as dropped), and a
/// tracer stopped now reads them all before it ends.
const PASSING: [&str; 5] = ["SYN-SENT", "SYN-RECV", "FIN-WAIT-1", "CLOSING", "LAST-ACK"];

/// One TCP socket as `ss -tin` shows it.
#[derive(Debug, Clone)]
pub struct SockView {
    /// `ss`'s name: `ESTAB`, `CLOSE-WAIT`, `LAST-ACK`...
    pub state: String,
    /// Milliseconds since data was last sent and received (`lastsnd`,
    /// `lastrcv`: the `TCP_INFO` figures tcplinger reads too); 0 when
    /// `ss` leaves them out, as it does for 0.
    pub last_send_ms: u64,
    pub last_recv_ms: u64,
}

/// The TCP sockets of namespace `ns` with `port` at either end.
pub fn sockets_in(ns: &str, port: u16) -> Vec<SockView> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ss", "-Htain"])
        .arg(format!("( sport = :{port} or dport = :{port} )"))
        .output()
        .expect("running ss (iproute2)");
    assert!(
        out.status.success(),
        "ss: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut sockets: Vec<SockView> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // A socket's line, then its details indented on the next.
        if !line.starts_with(char::is_whitespace) {
            let state = line.split_whitespace().next().unwrap_or_default();
            sockets.push(SockView {
                state: state.to_string(),
                last_send_ms: 0,
                last_recv_ms: 0,
            });
        } else if let Some(socket) = sockets.last_mut() {
            for word in line.split_whitespace() {
                let figure = |name: &str| word.strip_prefix(name).and_then(|v| v.parse().ok());
                if let Some(ms) = figure("lastsnd:") {
                    socket.last_send_ms = ms;
                }
                if let Some(ms) = figure("lastrcv:") {
                    socket.last_recv_ms = ms;
                }
            }
        }
    }
    sockets
}

impl Scene {
    /// The scene's sockets on `port`, in both namespaces.
    pub fn sockets_on(&self, port: u16) -> Vec<SockView> {
        let mut all = sockets_in(&self.net.client_ns, port);
        all.extend(sockets_in(&self.net.server_ns, port));
        all
    }

    /// Waits until no socket on `ports` is in a state the kernel leaves by
    /// itself ([`PASSING`]): the closes under way have been traced.
    pub fn wait_settled(&self, ports: &[u16]) {
        let mut last = Vec::new();
        let settled = wait_until(SOCKETS_LIMIT, || {
            last = ports.iter().flat_map(|&p| self.sockets_on(p)).collect();
            !last.iter().any(|s| PASSING.contains(&s.state.as_str()))
        });
        assert!(settled, "closes still under way: {last:?}");
    }

    /// Waits until the sockets of namespace `ns` on the scene's port
    /// satisfy `done`; returns when they did.
    pub fn wait_sockets(
        &self,
        ns: &str,
        what: &str,
        done: impl Fn(&[SockView]) -> bool,
    ) -> Instant {
        let mut last = Vec::new();
        let seen = wait_until(SOCKETS_LIMIT, || {
            last = sockets_in(ns, self.port);
            done(&last)
        });
        assert!(seen, "never {what}: {last:?}");
        Instant::now()
    }

    /// Waits until the `count` ESTABLISHED sockets of namespace `ns` on the
    /// scene's port have sent nothing for `send_ms`, and, with `recv_ms`,
    /// received nothing for that long: the kernel's own figures, which
    /// only grow, so a tracer that looks later sees at least as much.
    pub fn wait_silent(&self, ns: &str, count: usize, send_ms: u64, recv_ms: u64) {
        let limit = SOCKETS_LIMIT + Duration::from_millis(send_ms.max(recv_ms));
        let mut last = Vec::new();
        let silent = wait_until(limit, || {
            last = sockets_in(ns, self.port);
            let established: Vec<&SockView> = last.iter().filter(|s| s.state == "ESTAB").collect();
            established.len() == count
                && established
                    .iter()
                    .all(|s| s.last_send_ms >= send_ms && s.last_recv_ms >= recv_ms)
        });
        assert!(
            silent,
            "{count} sockets never silent for {send_ms}/{recv_ms} ms: {last:?}"
        );
    }
}
