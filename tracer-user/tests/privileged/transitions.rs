//! `watch --transitions` on real TCP: transition order for each closing pattern, softirq attribution, kernel-side filters, IPv6, losses and exits.

use std::{net::IpAddr, time::Duration};

use serde_json::Value;

use crate::support::{
    peer::{CLIENT_COMM, Peer, SERVER_COMM},
    require_root,
    scene::{Closer, Pace, Scene, fresh_port},
    tracer::{Finished, Tcplinger, tcplinger},
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
    port: u16,
    client_pid: u32,
    server_pid: u32,
    /// Cookies of the client's and the server's (accepted) socket.
    client: u64,
    server: u64,
    client_addr: IpAddr,
    server_addr: IpAddr,
}

/// One request/response between the two namespaces of `scene`, closed by
/// `first` first, traced with `--port` so nothing else on the machine
/// interferes.
fn traced_conversation(scene: &Scene, first: Closer) -> Conversation {
    let port = scene.port;
    let tracer = Tcplinger::start(&[
        "watch",
        "--transitions",
        "--format",
        "json",
        "--port",
        &scene.port_arg(),
    ]);
    let pids = scene.converse(first, 1, Pace::OneAtATime);
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
        port,
        client_pid: pids.client,
        server_pid: pids.server,
        client,
        server,
        client_addr: scene.client_ip(),
        server_addr: scene.server_ip(),
    }
}

fn client_closes_first() {
    let c = traced_conversation(&Scene::new(), Closer::Client);
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
privileged!(client_closes_first);

fn server_closes_first() {
    let c = traced_conversation(&Scene::new(), Closer::Server);
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
privileged!(server_closes_first);

fn softirq_close_wait_is_attributed_to_server() {
    let c = traced_conversation(&Scene::new(), Closer::Client);
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
privileged!(softirq_close_wait_is_attributed_to_server);

fn ipv6_connection_has_correct_addresses() {
    let c = traced_conversation(&Scene::ipv6(), Closer::Client);
    let connect = line_of(&c.run.lines, c.client, "SYN_SENT", "ESTABLISHED");
    assert_eq!(connect["family"], "ipv6");
    assert_eq!(connect["laddr"], c.client_addr.to_string(), "{connect}");
    assert_eq!(connect["raddr"], c.server_addr.to_string(), "{connect}");
    assert_eq!(connect["rport"], c.port);
    let accept = line_of(&c.run.lines, c.server, "SYN_RECV", "ESTABLISHED");
    assert_eq!(accept["family"], "ipv6");
    assert_eq!(accept["laddr"], c.server_addr.to_string(), "{accept}");
    assert_eq!(accept["raddr"], c.client_addr.to_string(), "{accept}");
    assert_eq!(accept["lport"], c.port);
    assert_steps(
        &path_of(&c.run.lines, c.client),
        &["ESTABLISHED->FIN_WAIT1", "FIN_WAIT1->FIN_WAIT2"],
    );
}
privileged!(ipv6_connection_has_correct_addresses);

// ---- filters ----

fn mentions_port(line: &Value, port: u16) -> bool {
    line["lport"] == port || line["rport"] == port
}

fn port_filter_drops_other_ports_in_kernel() {
    let scene = Scene::new();
    let (wanted, other) = (scene.port, fresh_port());
    let tracer = Tcplinger::start(&[
        "watch",
        "--transitions",
        "--format",
        "json",
        "--port",
        &wanted.to_string(),
    ]);
    let servers = [wanted, other].map(|p| scene.server_on(p, &["--close", "after-eof"]));
    for p in [wanted, other] {
        scene.client_of(p, &["--close", "first"]).finish();
    }
    servers.into_iter().for_each(Peer::finish);
    let seen = tracer.wait_for(SETTLE, |lines| {
        lines.iter().any(|l| is_transition(l, "LAST_ACK", "CLOSE"))
    });
    // Until the unwanted port's closes are over too: its records, were
    // they not filtered, would then be in the ring, read before the end.
    scene.wait_settled(&[wanted, other]);
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
privileged!(port_filter_drops_other_ports_in_kernel);

fn pid_filter_drops_other_processes_in_kernel() {
    let scene = Scene::new();
    let (wanted, other) = (scene.port, fresh_port());
    let chosen = scene.server_on(wanted, &["--close", "after-eof"]);
    let unchosen = scene.server_on(other, &["--close", "after-eof"]);
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
        scene.client_of(p, &["--close", "first"]).finish();
    }
    chosen.finish();
    unchosen.finish();
    let seen = tracer.wait_for(SETTLE, |lines| {
        lines.iter().any(|l| is_transition(l, "LAST_ACK", "CLOSE"))
    });
    // As above: the unchosen server's closes over, their records read.
    scene.wait_settled(&[wanted, other]);
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
privileged!(pid_filter_drops_other_processes_in_kernel);

// ---- losses and exits ----

/// Records one smallest ring holds: 4096 bytes of 8-byte headers + records.
const SMALLEST_RING_RECORDS: u64 = 4096 / (8 + size_of::<tracer_common::Event>() as u64);

fn full_ring_drops_are_counted() {
    let scene = Scene::new();
    let tracer = Tcplinger::start(&[
        "watch",
        "--transitions",
        "--format",
        "json",
        "--ring-bytes",
        "4096",
        "--port",
        &scene.port_arg(),
    ]);
    // A consumer that cannot run: the ring fills and the kernel must count
    // every record it cannot write.
    tracer.signal(libc::SIGSTOP);
    let connections = 10;
    scene.converse(Closer::Client, connections, Pace::OneAtATime);
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
privileged!(full_ring_drops_are_counted);

fn sigterm_ends_the_run_cleanly() {
    require_root();
    // A port nothing in this run uses: the run sees no traffic.
    let quiet = fresh_port().to_string();
    let tracer = Tcplinger::start(&[
        "watch",
        "--transitions",
        "--format",
        "json",
        "--port",
        &quiet,
    ]);
    tracer.signal(libc::SIGTERM);
    let run = tracer.stop_after_signal();
    assert_eq!(run.status.code(), Some(0), "{:?}", run.stderr);
}
privileged!(sigterm_ends_the_run_cleanly);

// ---- exits ----

/// Bad flags and a missing environment are covered for every command in
/// `safety.rs`; here, the plain end of a run.
fn duration_ends_a_transitions_run_with_its_summary() {
    require_root();
    let quiet = fresh_port().to_string();
    // A run that ends by --duration exits 0 with its summary.
    let out = tcplinger(&[
        "watch",
        "--transitions",
        "--duration",
        "300ms",
        "--port",
        &quiet,
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
privileged!(duration_ends_a_transitions_run_with_its_summary);
