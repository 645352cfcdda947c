//! `watch --transitions` on real TCP: transition order for each closing pattern, softirq attribution, kernel-side filters, IPv6, losses and exits.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde_json::Value;

use crate::support::{
    netns::NetPair,
    peer::{CLIENT_COMM, Peer, SERVER_COMM},
    require_root,
    tracer::{Finished, Tcplinger},
};

const SETTLE: Duration = Duration::from_secs(10);

// ---- reading the JSON lines ----

fn str_of<'a>(line: &'a Value, key: &str) -> &'a str {
    line[key].as_str().unwrap_or("")
}

fn is_transition(line: &Value, old: &str, new: &str) -> bool {
    str_of(line, "old") == old && str_of(line, "new") == new
}

/// The cookie of the first transition `old -> new` matching `pred`.
fn cookie_of(lines: &[Value], old: &str, new: &str, pred: impl Fn(&Value) -> bool) -> Option<u64> {
    lines
        .iter()
        .find(|l| is_transition(l, old, new) && pred(l))
        .and_then(|l| l["cookie"].as_u64())
}

/// The transitions of one socket, in order, as "OLD->NEW".
fn path_of(lines: &[Value], cookie: u64) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l["cookie"].as_u64() == Some(cookie) && l["event"] == "transition")
        .map(|l| format!("{}->{}", str_of(l, "old"), str_of(l, "new")))
        .collect()
}

fn line_of<'a>(lines: &'a [Value], cookie: u64, old: &str, new: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["cookie"].as_u64() == Some(cookie) && is_transition(l, old, new))
        .unwrap_or_else(|| panic!("no {old}->{new} for cookie {cookie}"))
}

/// `expected` appears in `path` in this order, each step right after the
/// previous one.
fn assert_steps(path: &[String], expected: &[&str]) {
    let start = path.iter().position(|p| p == expected[0]);
    let window = start.and_then(|s| path.get(s..s + expected.len()));
    assert!(
        window.is_some_and(|w| w.iter().zip(expected).all(|(a, b)| a == b)),
        "expected consecutive steps {expected:?} in {path:?}"
    );
}

fn assert_clean_exit(run: &Finished) {
    assert!(
        run.status.success(),
        "tcplinger exited with {}: {:?}",
        run.status,
        run.stderr
    );
    assert_eq!(run.dropped, 0, "drops in a tiny test: {:?}", run.stderr);
}

// ---- one connection, one closing pattern ----

struct Conversation {
    run: Finished,
    client_pid: u32,
    server_pid: u32,
    /// Cookies of the client's and the server's (accepted) socket.
    client: u64,
    server: u64,
    client_addr: IpAddr,
    server_addr: IpAddr,
}

/// One request/response between the two namespaces, closed by `first_closer`,
/// traced with `--port` so nothing else on the machine interferes.
fn converse(port: u16, ipv6: bool, server_closes: bool) -> Conversation {
    require_root();
    let net = NetPair::new();
    let (client_addr, server_addr) = if ipv6 {
        (net.client_v6, net.server_v6)
    } else {
        (net.client_v4, net.server_v4)
    };
    let target = SocketAddr::new(server_addr, port);
    let tracer = Tcplinger::start(&[
        "watch",
        "--transitions",
        "--format",
        "json",
        "--port",
        &port.to_string(),
    ]);
    let (server_close, client_close) = if server_closes {
        ("first", "after-eof")
    } else {
        ("after-eof", "first")
    };
    let server = Peer::server(&net.server_ns, target, &["--close", server_close]);
    let client = Peer::client(&net.client_ns, target, &["--close", client_close]);
    let (server_pid, client_pid) = (server.pid, client.pid);
    client.finish();
    server.finish();
    // Both sockets end in CLOSE (the FIN_WAIT2 side via its timewait
    // replacement); wait for both before stopping.
    let closed = tracer.wait_for(SETTLE, |lines| {
        lines
            .iter()
            .filter(|l| str_of(l, "new") == "CLOSE" && str_of(l, "old") != "LISTEN")
            .count()
            >= 2
    });
    let run = tracer.stop();
    assert!(closed, "both sockets never reached CLOSE: {:#?}", run.lines);
    assert_clean_exit(&run);
    let client = cookie_of(&run.lines, "SYN_SENT", "ESTABLISHED", |l| {
        l["rport"] == port
    })
    .unwrap_or_else(|| panic!("no client connect in {:#?}", run.lines));
    let server = cookie_of(&run.lines, "SYN_RECV", "ESTABLISHED", |l| {
        l["lport"] == port
    })
    .unwrap_or_else(|| panic!("no server accept in {:#?}", run.lines));
    Conversation {
        run,
        client_pid,
        server_pid,
        client,
        server,
        client_addr,
        server_addr,
    }
}

pub fn client_closes_first() {
    let c = converse(18101, false, false);
    let client = path_of(&c.run.lines, c.client);
    let server = path_of(&c.run.lines, c.server);
    assert_steps(&client, &["ESTABLISHED->FIN_WAIT1", "FIN_WAIT1->FIN_WAIT2"]);
    assert_steps(
        &server,
        &[
            "ESTABLISHED->CLOSE_WAIT",
            "CLOSE_WAIT->LAST_ACK",
            "LAST_ACK->CLOSE",
        ],
    );
    // The client's socket became a timewait socket: the tracepoint shows it leave as CLOSE.
    assert_eq!(
        client.last().map(String::as_str),
        Some("FIN_WAIT2->CLOSE"),
        "{client:?}"
    );
    assert!(!server.iter().any(|s| s.contains("FIN_WAIT")), "{server:?}");
}

pub fn server_closes_first() {
    let c = converse(18102, false, true);
    let client = path_of(&c.run.lines, c.client);
    let server = path_of(&c.run.lines, c.server);
    assert_steps(&server, &["ESTABLISHED->FIN_WAIT1", "FIN_WAIT1->FIN_WAIT2"]);
    assert_steps(
        &client,
        &[
            "ESTABLISHED->CLOSE_WAIT",
            "CLOSE_WAIT->LAST_ACK",
            "LAST_ACK->CLOSE",
        ],
    );
    assert_eq!(
        server.last().map(String::as_str),
        Some("FIN_WAIT2->CLOSE"),
        "{server:?}"
    );
    assert!(!client.iter().any(|s| s.contains("FIN_WAIT")), "{client:?}");
}

pub fn softirq_close_wait_is_attributed_to_server() {
    let c = converse(18103, false, false);
    assert_ne!(c.client_pid, c.server_pid);
    // The peer's FIN is processed in softirq, usually on the client's own
    // syscall path over veth: the current task is the client, not the owner.
    let close_wait = line_of(&c.run.lines, c.server, "ESTABLISHED", "CLOSE_WAIT");
    assert_eq!(close_wait["pid"], c.server_pid, "{close_wait}");
    assert_eq!(close_wait["comm"], SERVER_COMM, "{close_wait}");
    // The same holds on the other side for the ACK of the client's FIN.
    let fin_wait2 = line_of(&c.run.lines, c.client, "FIN_WAIT1", "FIN_WAIT2");
    assert_eq!(fin_wait2["pid"], c.client_pid, "{fin_wait2}");
    assert_eq!(fin_wait2["comm"], CLIENT_COMM, "{fin_wait2}");
    // Every attributed line of the server socket names the server.
    for line in c
        .run
        .lines
        .iter()
        .filter(|l| l["cookie"] == c.server && !l["pid"].is_null())
    {
        assert_eq!(line["pid"], c.server_pid, "{line}");
    }
}

pub fn ipv6_connection_has_correct_addresses() {
    let c = converse(18104, true, false);
    let connect = line_of(&c.run.lines, c.client, "SYN_SENT", "ESTABLISHED");
    assert_eq!(connect["family"], "ipv6");
    assert_eq!(connect["laddr"], c.client_addr.to_string(), "{connect}");
    assert_eq!(connect["raddr"], c.server_addr.to_string(), "{connect}");
    assert_eq!(connect["rport"], 18104);
    let accept = line_of(&c.run.lines, c.server, "SYN_RECV", "ESTABLISHED");
    assert_eq!(accept["family"], "ipv6");
    assert_eq!(accept["laddr"], c.server_addr.to_string(), "{accept}");
    assert_eq!(accept["raddr"], c.client_addr.to_string(), "{accept}");
    assert_eq!(accept["lport"], 18104);
    assert_steps(
        &path_of(&c.run.lines, c.client),
        &["ESTABLISHED->FIN_WAIT1", "FIN_WAIT1->FIN_WAIT2"],
    );
}

// ---- filters ----

fn mentions_port(line: &Value, port: u16) -> bool {
    line["lport"] == port || line["rport"] == port
}

pub fn port_filter_drops_other_ports_in_kernel() {
    require_root();
    let net = NetPair::new();
    let (wanted, other) = (18111u16, 18112u16);
    let tracer = Tcplinger::start(&[
        "watch",
        "--transitions",
        "--format",
        "json",
        "--port",
        &wanted.to_string(),
    ]);
    let servers = [wanted, other].map(|p| {
        Peer::server(
            &net.server_ns,
            SocketAddr::new(net.server_v4, p),
            &["--close", "after-eof"],
        )
    });
    for p in [wanted, other] {
        Peer::client(
            &net.client_ns,
            SocketAddr::new(net.server_v4, p),
            &["--close", "first"],
        )
        .finish();
    }
    servers.into_iter().for_each(Peer::finish);
    let seen = tracer.wait_for(SETTLE, |lines| {
        lines.iter().any(|l| is_transition(l, "LAST_ACK", "CLOSE"))
    });
    // Give the unwanted port's events time to show up, were they not filtered.
    std::thread::sleep(Duration::from_millis(300));
    let run = tracer.stop();
    assert!(seen, "wanted port never closed: {:#?}", run.lines);
    assert_clean_exit(&run);
    assert!(
        run.lines.iter().all(|l| mentions_port(l, wanted)),
        "{:#?}",
        run.lines
    );
    assert!(!run.lines.iter().any(|l| mentions_port(l, other)));
    // Userspace filters nothing: every record the kernel delivered is a
    // printed line.
    assert_eq!(run.events, run.lines.len() as u64, "{:#?}", run.lines);
}

pub fn pid_filter_drops_other_processes_in_kernel() {
    require_root();
    let net = NetPair::new();
    let (wanted, other) = (18121u16, 18122u16);
    let chosen = Peer::server(
        &net.server_ns,
        SocketAddr::new(net.server_v4, wanted),
        &["--close", "after-eof"],
    );
    let unchosen = Peer::server(
        &net.server_ns,
        SocketAddr::new(net.server_v4, other),
        &["--close", "after-eof"],
    );
    let chosen_pid = chosen.pid;
    // The port filter keeps the machine's other traffic out; only the pid
    // filter can keep the second server's port out.
    let ports = format!("{wanted},{other}");
    let tracer = Tcplinger::start(&[
        "watch",
        "--transitions",
        "--format",
        "json",
        "--pid",
        &chosen_pid.to_string(),
        "--port",
        &ports,
    ]);
    for p in [wanted, other] {
        Peer::client(
            &net.client_ns,
            SocketAddr::new(net.server_v4, p),
            &["--close", "first"],
        )
        .finish();
    }
    chosen.finish();
    unchosen.finish();
    let seen = tracer.wait_for(SETTLE, |lines| {
        lines.iter().any(|l| is_transition(l, "LAST_ACK", "CLOSE"))
    });
    std::thread::sleep(Duration::from_millis(300));
    let run = tracer.stop();
    assert!(
        seen,
        "chosen server's socket never closed: {:#?}",
        run.lines
    );
    assert_clean_exit(&run);
    assert!(
        run.lines
            .iter()
            .any(|l| is_transition(l, "ESTABLISHED", "CLOSE_WAIT"))
    );
    for line in &run.lines {
        assert_eq!(line["pid"], chosen_pid, "{line}");
        assert!(!mentions_port(line, other), "{line}");
    }
}

// ---- losses and exits ----

/// Records one smallest ring holds: 4096 bytes of 8-byte headers + records.
const SMALLEST_RING_RECORDS: u64 = 4096 / (8 + size_of::<tracer_common::Event>() as u64);

pub fn full_ring_drops_are_counted() {
    require_root();
    let net = NetPair::new();
    let port = 18131u16;
    let target = SocketAddr::new(net.server_v4, port);
    let tracer = Tcplinger::start(&[
        "watch",
        "--transitions",
        "--format",
        "json",
        "--ring-bytes",
        "4096",
        "--port",
        &port.to_string(),
    ]);
    // A consumer that cannot run: the ring fills and the kernel must count
    // every record it cannot write.
    tracer.signal(libc::SIGSTOP);
    let connections = 10;
    let count = connections.to_string();
    let server = Peer::server(
        &net.server_ns,
        target,
        &["--close", "after-eof", "--count", &count],
    );
    Peer::client(
        &net.client_ns,
        target,
        &["--close", "first", "--count", &count],
    )
    .finish();
    server.finish();
    tracer.signal(libc::SIGCONT);
    let run = tracer.stop();
    assert!(run.status.success(), "{:?}", run.stderr);
    eprintln!(
        "full ring: {} delivered, {} dropped",
        run.events, run.dropped
    );
    assert!(
        run.events <= SMALLEST_RING_RECORDS,
        "{} events in a 4KiB ring",
        run.events
    );
    assert!(run.dropped > 0, "{:?}", run.stderr);
    // Each connection writes at least 5 transitions per side.
    assert!(
        run.events + run.dropped >= 10 * connections as u64,
        "{} delivered + {} dropped for {connections} connections",
        run.events,
        run.dropped
    );
}

pub fn sigterm_ends_the_run_cleanly() {
    require_root();
    let tracer = Tcplinger::start(&["watch", "--transitions", "--format", "json", "--port", "9"]);
    tracer.signal(libc::SIGTERM);
    let run = tracer.stop_after_signal();
    assert_eq!(run.status.code(), Some(0), "{:?}", run.stderr);
}

// ---- exits ----

pub(crate) fn tcplinger(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tcplinger"))
        .args(args)
        .output()
        .expect("running tcplinger")
}

pub(crate) fn one_line_error(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected one line, got {stderr:?}"
    );
    assert!(stderr.starts_with("tcplinger: "), "{stderr:?}");
    stderr
}

/// Bad flags and a missing environment are covered for every command in
/// `safety.rs`; here, the plain end of a run.
pub fn duration_ends_a_transitions_run_with_its_summary() {
    require_root();
    // A run that ends by --duration exits 0 with its summary.
    let out = tcplinger(&[
        "watch",
        "--transitions",
        "--duration",
        "300ms",
        "--port",
        "9",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(" events, ") && stderr.contains("dropped"),
        "{stderr}"
    );
}
