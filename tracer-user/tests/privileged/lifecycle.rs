//! `watch` connection records on real TCP: who closed first, linger times measured through the timewait socket, pre-existing connections and a burst.

use std::{
    collections::HashSet,
    net::{TcpListener, TcpStream},
    time::Duration,
};

use serde_json::Value;

use crate::support::{
    peer::{CLIENT_COMM, SERVER_COMM},
    require_root,
    scene::{Closer, Pace, Scene, fresh_port},
    tracer::{Finished, Tcplinger},
    wait_until,
};

/// Records arrive within a dump interval of the end they report; this is
/// far beyond it.
const SETTLE: Duration = Duration::from_secs(15);

fn watch(port: u16) -> Tcplinger {
    Tcplinger::start(&["watch", "--format", "json", "--port", &port.to_string()])
}

fn is_client(r: &Value, port: u16) -> bool {
    r["rport"] == port
}

fn is_server(r: &Value, port: u16) -> bool {
    r["lport"] == port
}

/// Waits for one record of each side, then stops the tracer.
fn both_sides(tracer: Tcplinger, port: u16) -> (Value, Value, Finished) {
    let seen = tracer.wait_for(SETTLE, |lines| {
        lines.iter().any(|r| is_client(r, port)) && lines.iter().any(|r| is_server(r, port))
    });
    let run = tracer.stop();
    assert!(seen, "missing a side: {:#?} {:?}", run.lines, run.stderr);
    assert!(run.status.success(), "{:?}", run.stderr);
    assert_eq!(run.dropped, 0, "{:?}", run.stderr);
    let pick = |side: fn(&Value, u16) -> bool| {
        let mut found = run.lines.iter().filter(|r| side(r, port));
        let first = found.next().cloned().unwrap();
        assert!(
            found.next().is_none(),
            "one record per side: {:#?}",
            run.lines
        );
        first
    };
    let (client, server) = (pick(is_client), pick(is_server));
    (client, server, run)
}

fn state_ms(r: &Value, state: &str) -> f64 {
    r["states_ms"][state]
        .as_f64()
        .unwrap_or_else(|| panic!("no {state} in {r}"))
}

/// Within 10% + 50 ms of `expected_ms`.
fn assert_near(r: &Value, state: &str, expected_ms: f64) {
    let got = state_ms(r, state);
    let tolerance = expected_ms * 0.1 + 50.0;
    assert!(
        (got - expected_ms).abs() <= tolerance,
        "{state} lasted {got} ms, expected {expected_ms} ± {tolerance}: {r}"
    );
}

fn assert_owner(r: &Value, pid: u32, comm: &str) {
    assert_eq!(r["pid"], pid, "{r}");
    assert_eq!(r["comm"], comm, "{r}");
}

/// The client gives up after 1 s and closes; the server's handler is stuck
/// for 3 s, then closes: 2 s of FIN_WAIT2 on the client (in its timewait
/// socket) and of CLOSE_WAIT on the server.
fn client_timeout_with_stuck_server(ipv6: bool) {
    let scene = if ipv6 { Scene::ipv6() } else { Scene::new() };
    let port = scene.port;
    let server_addr = scene.server_ip();
    let tracer = watch(port);
    let server = scene.server(&["--hold-ms", "3000", "--no-reply", "--close", "first"]);
    let client = scene.client(&["--timeout-ms", "1000", "--close", "first"]);
    let (client_pid, server_pid) = (client.pid, server.pid);
    client.finish();
    server.finish();
    let (c, s, _) = both_sides(tracer, port);

    assert_eq!(c["role"], "client", "{c}");
    assert_eq!(c["closed_by"], "local", "{c}");
    assert_eq!(c["fin_wait2_end"], "peer_fin", "{c}");
    assert_eq!(c["time_wait"], true, "{c}");
    assert_eq!(c["complete"], true, "{c}");
    assert_near(&c, "FIN_WAIT2", 2000.0);
    assert_owner(&c, client_pid, CLIENT_COMM);
    assert_eq!(c["family"], if ipv6 { "ipv6" } else { "ipv4" });
    assert_eq!(c["raddr"], server_addr.to_string());

    assert_eq!(s["role"], "server", "{s}");
    assert_eq!(s["closed_by"], "remote", "{s}");
    assert_eq!(s["time_wait"], false, "{s}");
    assert_eq!(s["complete"], true, "{s}");
    assert_near(&s, "CLOSE_WAIT", 2000.0);
    assert_owner(&s, server_pid, SERVER_COMM);
}

fn lifecycle_client_timeout_with_stuck_server() {
    client_timeout_with_stuck_server(false);
}
privileged!(lifecycle_client_timeout_with_stuck_server);

fn lifecycle_client_timeout_ipv6() {
    client_timeout_with_stuck_server(true);
}
privileged!(lifecycle_client_timeout_ipv6);

fn lifecycle_server_closes_first() {
    let scene = Scene::new();
    let port = scene.port;
    let tracer = watch(port);
    scene.converse(Closer::Server, 1, Pace::OneAtATime);
    let (c, s, _) = both_sides(tracer, port);
    assert_eq!(s["closed_by"], "local", "{s}");
    assert_eq!(s["time_wait"], true, "TIME_WAIT lands on the server: {s}");
    assert_eq!(s["fin_wait2_end"], "peer_fin", "{s}");
    assert_eq!(c["closed_by"], "remote", "{c}");
    assert_eq!(c["time_wait"], false, "{c}");
    assert!(c["states_ms"]["CLOSE_WAIT"].is_number(), "{c}");
}
privileged!(lifecycle_server_closes_first);

/// The client half-closes and waits; the server closes 500 ms later. The
/// server's FIN reaches the client's full socket in FIN_WAIT2, which turns
/// TIME_WAIT at that instant (no orphan, nothing to look up).
fn lifecycle_half_close_then_peer_fin() {
    let scene = Scene::new();
    let port = scene.port;
    let tracer = watch(port);
    let server = scene.server(&["--keep-ms", "500", "--close", "after-eof"]);
    scene.client(&["--close", "shutdown-first"]).finish();
    server.finish();
    let (c, s, _) = both_sides(tracer, port);
    assert_eq!(c["closed_by"], "local", "{c}");
    assert_eq!(c["fin_wait2_end"], "peer_fin", "{c}");
    assert_eq!(c["time_wait"], true, "{c}");
    assert_eq!(c["complete"], true, "{c}");
    assert_near(&c, "FIN_WAIT2", 500.0);
    assert_eq!(s["closed_by"], "remote", "{s}");
    assert_near(&s, "CLOSE_WAIT", 500.0);
}
privileged!(lifecycle_half_close_then_peer_fin);

fn lifecycle_abortive_close() {
    let scene = Scene::new();
    let port = scene.port;
    let tracer = watch(port);
    let server = scene.server(&["--close", "after-eof"]);
    scene.client(&["--close", "first", "--linger0"]).finish();
    server.finish();
    let (c, s, _) = both_sides(tracer, port);
    assert_eq!(c["closed_by"], "reset_local", "{c}");
    assert_eq!(s["closed_by"], "reset_remote", "{s}");
    for r in [&c, &s] {
        assert_eq!(r["time_wait"], false, "{r}");
        assert_eq!(r["complete"], true, "{r}");
    }
}
privileged!(lifecycle_abortive_close);

fn lifecycle_simultaneous_close() {
    let scene = Scene::new();
    // A slow link: each side's FIN waits behind its own jam datagrams, so
    // both are sent before either arrives.
    scene.net.rate_limit("10kbit");
    let port = scene.port;
    let tracer = watch(port);
    let (client_addr, server_addr) = (
        scene.net.client_v4.to_string(),
        scene.net.server_v4.to_string(),
    );
    let server = scene.server(&["--close", "first", "--jam", &client_addr]);
    scene
        .client(&["--close", "first", "--jam", &server_addr])
        .finish();
    server.finish();
    let (c, s, run) = both_sides(tracer, port);
    for r in [&c, &s] {
        assert_eq!(r["closed_by"], "simultaneous", "{r} {:?}", run.stderr);
        assert_eq!(r["time_wait"], true, "{r}");
        assert!(r["states_ms"]["CLOSING"].is_number(), "{r}");
    }
}
privileged!(lifecycle_simultaneous_close);

fn lifecycle_peer_never_closes() {
    let scene = Scene::new();
    scene
        .net
        .sysctl(&scene.net.client_ns, "net.ipv4.tcp_fin_timeout", "3");
    let port = scene.port;
    let tracer = watch(port);
    let server = scene.server(&["--close", "never"]);
    let server_pid = server.pid;
    scene.client(&["--close", "first"]).finish();
    let seen = tracer.wait_for(SETTLE, |lines| lines.iter().any(|r| is_client(r, port)));
    let run = tracer.stop();
    drop(server);
    assert!(seen, "no client record: {:#?}", run.lines);
    let c = run.lines.iter().find(|r| is_client(r, port)).unwrap();
    assert_eq!(c["closed_by"], "local", "{c}");
    assert_eq!(c["fin_wait2_end"], "timeout", "{c}");
    assert_eq!(c["time_wait"], false, "{c}");
    assert_near(c, "FIN_WAIT2", 3000.0);
    // Printed at exit: the server still sits in CLOSE_WAIT.
    let s = run
        .lines
        .iter()
        .find(|r| is_server(r, port))
        .unwrap_or_else(|| panic!("{:#?}", run.lines));
    assert_eq!(s["open_state"], "CLOSE_WAIT", "{s}");
    assert_eq!(s["closed_by"], "remote", "{s}");
    assert_owner(s, server_pid, SERVER_COMM);
    assert!(state_ms(s, "CLOSE_WAIT") >= 3000.0, "{s}");
}
privileged!(lifecycle_peer_never_closes);

/// An accepted socket no process has touched (here: never accepted) is
/// named by its listener's owner, so the listener must reach the tracker
/// first. Both are only in the kernel's entries until a read, which hands
/// them over in the map's order; eight listeners, each with a connection
/// its client closes at once (the accepted side is then in CLOSE_WAIT, a
/// record at exit), would find that order wrong for some of them.
fn lifecycle_unaccepted_sockets_are_named_by_their_listener() {
    require_root();
    let ports: Vec<u16> = (0..8).map(|_| fresh_port()).collect();
    let list = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let tracer = Tcplinger::start(&["watch", "--format", "json", "--port", &list]);
    let listeners: Vec<TcpListener> = ports
        .iter()
        .map(|&port| {
            let listener = TcpListener::bind(("127.0.0.1", port)).expect("binding a test port");
            drop(TcpStream::connect(("127.0.0.1", port)).expect("connecting on loopback"));
            listener
        })
        .collect();
    let waiting = wait_until(SETTLE, || close_waits(&ports) == ports.len());
    // Stopped at once: the steps are delivered by the read at exit.
    let run = tracer.stop();
    drop(listeners);
    assert!(waiting, "the accepted sockets never reached CLOSE_WAIT");
    assert!(run.status.success(), "{:?}", run.stderr);
    let me = std::process::id();
    for port in ports {
        let server = run
            .lines
            .iter()
            .find(|r| is_server(r, port))
            .unwrap_or_else(|| panic!("no server side on {port}: {:#?}", run.lines));
        assert_eq!(server["open_state"], "CLOSE_WAIT", "{server}");
        assert_eq!(server["role"], "server", "{server}");
        assert_eq!(server["pid"], me, "the listener's owner: {server}");
    }
}

/// How many of `ports` have a local socket in CLOSE_WAIT
/// (`/proc/net/tcp`, state 08).
fn close_waits(ports: &[u16]) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    ports
        .iter()
        .filter(|port| {
            let local = format!(":{port:04X} ");
            table.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1].ends_with(local.trim_end()) && f[3] == "08"
            })
        })
        .count()
}
privileged!(lifecycle_unaccepted_sockets_are_named_by_their_listener);

fn lifecycle_preexisting_connection() {
    let scene = Scene::new();
    let port = scene.port;
    let server = scene.server(&["--close", "after-eof"]);
    let mut client = scene.client(&["--close", "on-stdin"]);
    client.expect_line("connected");
    let (client_pid, server_pid) = (client.pid, server.pid);
    // Established before the tracer exists; closed once it runs.
    let tracer = watch(port);
    client.tell("close");
    client.finish();
    server.finish();
    let (c, s, _) = both_sides(tracer, port);
    for r in [&c, &s] {
        assert_eq!(r["complete"], false, "predates the tracer: {r}");
    }
    assert_eq!(c["closed_by"], "local", "{c}");
    assert_owner(&c, client_pid, CLIENT_COMM);
    assert_eq!(s["closed_by"], "remote", "{s}");
    assert_eq!(s["role"], "server", "its port has a listener: {s}");
    assert_owner(&s, server_pid, SERVER_COMM);
}
privileged!(lifecycle_preexisting_connection);

fn lifecycle_burst_of_2000() {
    let scene = Scene::new();
    let port = scene.port;
    let count = 2000;
    let tracer = watch(port);
    scene.converse(Closer::Client, count, Pace::OneAtATime);
    let done = tracer.wait_for(Duration::from_secs(30), |lines| lines.len() >= 2 * count);
    let run = tracer.stop();
    assert!(
        done,
        "{} records of {}: {:?}",
        run.lines.len(),
        2 * count,
        run.stderr
    );
    assert_eq!(run.dropped, 0, "{:?}", run.stderr);
    for (side, name) in [
        (is_client as fn(&Value, u16) -> bool, "client"),
        (is_server, "server"),
    ] {
        let records: Vec<&Value> = run.lines.iter().filter(|r| side(r, port)).collect();
        let cookies: HashSet<u64> = records
            .iter()
            .map(|r| r["cookie"].as_u64().unwrap())
            .collect();
        assert_eq!(records.len(), count, "{name} records");
        assert_eq!(
            cookies.len(),
            count,
            "{name} records are all distinct sockets"
        );
        assert!(
            records.iter().all(|r| r["complete"] == true),
            "{name}: all complete"
        );
    }
    let clients_in_time_wait = run
        .lines
        .iter()
        .filter(|r| is_client(r, port) && r["time_wait"] == true)
        .count();
    assert_eq!(
        clients_in_time_wait, count,
        "every client closed first and kept TIME_WAIT"
    );
}
privileged!(lifecycle_burst_of_2000);
