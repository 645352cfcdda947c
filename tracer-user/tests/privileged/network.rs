//! The network figures read at each connection's end, between two namespaces: bytes of a 1 MiB transfer on both sides, retransmissions under loss and none without, RTT on a shaped link against an unshaped one, and failed connects with their reason (refused, timed out after the SYN retries, unreachable).

use std::time::Duration;

use serde_json::Value;

use crate::support::{
    real::curl_loop,
    scene::{Scene, fresh_port},
    tracer::{Finished, Tcplinger},
};

/// Records arrive within a dump interval of the end they report; failed
/// connects that time out take `tcp_syn_retries` backoffs first.
const SETTLE: Duration = Duration::from_secs(20);

const MIB: u64 = 1 << 20;

fn watch(port: u16) -> Tcplinger {
    Tcplinger::start(&["watch", "--format", "json", "--port", &port.to_string()])
}

/// Waits for `n` records on `port` that `want` accepts, then stops the
/// tracer.
fn records(tracer: Tcplinger, n: usize, want: impl Fn(&Value) -> bool) -> (Vec<Value>, Finished) {
    let seen = tracer.wait_for(SETTLE, |lines| {
        lines.iter().filter(|r| want(r)).count() >= n
    });
    let run = tracer.stop();
    assert!(
        seen,
        "fewer than {n} records: {:#?} {:?}",
        run.lines, run.stderr
    );
    assert!(run.status.success(), "{:?}", run.stderr);
    assert_eq!(run.dropped, 0, "{:?}", run.stderr);
    let found = run.lines.iter().filter(|r| want(r)).cloned().collect();
    (found, run)
}

fn u64_of(r: &Value, path: &[&str]) -> u64 {
    let mut v = r;
    for key in path {
        v = &v[*key];
    }
    v.as_u64().unwrap_or_else(|| panic!("no {path:?} in {r}"))
}

fn rtt_ms(r: &Value) -> f64 {
    r["net"]["rtt_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("no RTT in {r}"))
}

/// One answer of `bytes` from the server, read to its end by the client:
/// the client's and the server's records.
fn transfer(scene: &Scene, bytes: u64) -> (Value, Value) {
    let port = scene.port;
    let tracer = watch(port);
    let server = scene.server(&["--reply-bytes", &bytes.to_string(), "--close", "first"]);
    let client = scene.client(&["--close", "after-eof"]);
    client.finish();
    server.finish();
    let (found, _) = records(tracer, 2, |r| r["rport"] == port || r["lport"] == port);
    let client = found.iter().find(|r| r["rport"] == port).unwrap().clone();
    let server = found.iter().find(|r| r["lport"] == port).unwrap().clone();
    (client, server)
}

fn network_a_1mib_transfer_counts_its_bytes_on_both_sides() {
    let scene = Scene::new();
    let (client, server) = transfer(&scene, MIB);
    // The server sent it and the client acknowledged it; the client
    // received it. (The SYN and the FINs count one each.)
    let sent = u64_of(&server, &["net", "bytes_acked"]);
    let received = u64_of(&client, &["net", "bytes_received"]);
    assert!((MIB..MIB + 4).contains(&sent), "{server}");
    assert!((MIB..MIB + 4).contains(&received), "{client}");
    // The request went the other way: 4 bytes and the controls.
    assert!(u64_of(&client, &["net", "bytes_acked"]) < 16, "{client}");
    // No loss on the link: nothing retransmitted, either side.
    assert_eq!(u64_of(&server, &["net", "retrans"]), 0, "{server}");
    assert_eq!(u64_of(&client, &["net", "retrans"]), 0, "{client}");
    assert!(rtt_ms(&server) > 0.0 && rtt_ms(&client) > 0.0);
    assert_eq!(server["net"]["error"], Value::Null, "{server}");
    assert!(client.get("connect_failed").is_none(), "{client}");
}
privileged!(network_a_1mib_transfer_counts_its_bytes_on_both_sides);

fn network_loss_shows_retransmissions_on_the_sender() {
    let scene = Scene::new();
    // Every tenth full-size data packet from the server is lost on its
    // way in to the client (statistic in nth mode: a random drop could
    // spare a short transfer). Not on the server's way out: a packet its
    // own host drops is sent again as new, not retransmitted.
    let sport = scene.port.to_string();
    scene.net.iptables(
        &scene.net.client_ns,
        &[
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--sport",
            &sport,
            "-m",
            "length",
            "--length",
            "1000:65535",
            "-m",
            "statistic",
            "--mode",
            "nth",
            "--every",
            "10",
            "--packet",
            "0",
            "-j",
            "DROP",
        ],
    );
    let (client, server) = transfer(&scene, MIB);
    assert!(u64_of(&server, &["net", "retrans"]) > 0, "{server}");
    assert!(u64_of(&server, &["net", "bytes_acked"]) >= MIB, "{server}");
    assert!(
        u64_of(&client, &["net", "bytes_received"]) >= MIB,
        "{client}"
    );
    // The client's own segments all went through.
    assert_eq!(u64_of(&client, &["net", "retrans"]), 0, "{client}");
}
privileged!(network_loss_shows_retransmissions_on_the_sender);

fn network_rtt_on_a_shaped_link_exceeds_the_unshaped_one() {
    let scene = Scene::new();
    let (_, plain) = transfer(&scene, 256 << 10);
    let plain_rtt = rtt_ms(&plain);
    // 2 Mbit/s both ways: 256 KiB takes about a second, and the queue in
    // front of the limiter is in every round trip.
    scene.net.rate_limit("2mbit");
    let (_, shaped) = transfer(&scene, 256 << 10);
    let shaped_rtt = rtt_ms(&shaped);
    assert!(
        shaped_rtt > plain_rtt * 5.0 && shaped_rtt > 1.0,
        "RTT {shaped_rtt} ms shaped, {plain_rtt} ms not: {shaped} {plain}"
    );
}
privileged!(network_rtt_on_a_shaped_link_exceeds_the_unshaped_one);

/// `count` connect attempts to `port` of the server's address, nothing
/// listening there; returns the tracer's failed-connect records and the
/// report's JSON.
fn failed_attempts(scene: &Scene, port: u16, count: usize) -> (Vec<Value>, Value) {
    let tracer = watch(port);
    let report = Tcplinger::report_until_stopped(port);
    let client = scene.client_of(port, &["--count", &count.to_string(), "--connect-may-fail"]);
    client.finish();
    let (found, _) = records(tracer, count, |r| r.get("connect_failed").is_some());
    let run = report.stop();
    assert!(run.status.success(), "{:?}", run.stderr);
    (found, run.lines.into_iter().next().expect("the report"))
}

/// SYNs to `port` vanish on their way into the server's namespace.
fn drop_syns(scene: &Scene, port: u16) {
    let port = port.to_string();
    scene.net.iptables(
        &scene.net.server_ns,
        &[
            "-A", "INPUT", "-p", "tcp", "--syn", "--dport", &port, "-j", "DROP",
        ],
    );
}

/// The report's `connect_failures` finding.
fn connect_failures(report: &Value) -> &Value {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["pathology"] == "connect_failures")
        .unwrap_or_else(|| panic!("no connect_failures: {report:#}"))
}

fn network_a_closed_port_is_refused_and_a_finding() {
    let scene = Scene::new();
    let port = fresh_port();
    let (found, report) = failed_attempts(&scene, port, 6);
    for r in &found {
        assert_eq!(r["connect_failed"], "refused", "{r}");
        assert_eq!(r["net"]["error"], "ECONNREFUSED", "{r}");
        assert_eq!(r["role"], "client", "{r}");
    }
    let finding = connect_failures(&report);
    assert_eq!(finding["evidence"]["failed_refused"], 6, "{finding}");
    assert_eq!(finding["remote"], scene.at(port).to_string(), "{finding}");
    let group = &report["groups"][0];
    assert_eq!(group["failed_connects"]["refused"], 6, "{group}");
    assert_eq!(group["closed"], 0, "attempts are not closes: {group}");
}
privileged!(network_a_closed_port_is_refused_and_a_finding);

fn network_a_blackholed_address_times_out_after_the_syn_retries() {
    let scene = Scene::new();
    let port = fresh_port();
    // SYNs vanish on the way in; the client retries once (1 s, then 2 s).
    drop_syns(&scene, port);
    scene
        .net
        .sysctl(&scene.net.client_ns, "net.ipv4.tcp_syn_retries", "1");
    let (found, _) = failed_attempts(&scene, port, 1);
    let r = &found[0];
    assert_eq!(r["connect_failed"], "timeout", "{r}");
    assert_eq!(r["net"]["error"], "ETIMEDOUT", "{r}");
    // The SYN is retransmitted after 1 s, and once more as the 3 s
    // deadline falls due (measured here: 2).
    let syns = u64_of(r, &["net", "retrans"]);
    assert!(
        (1..=2).contains(&syns),
        "one or two SYNs retransmitted: {r}"
    );
    let waited = r["states_ms"]["SYN_SENT"].as_f64().unwrap();
    assert!((2_500.0..4_500.0).contains(&waited), "{r}");
}
privileged!(network_a_blackholed_address_times_out_after_the_syn_retries);

fn network_an_address_nobody_answers_arp_for_is_unreachable() {
    let scene = Scene::new();
    let port = fresh_port();
    // An address on the link's subnet that no host has: neighbour
    // resolution fails, and the kernel reports the host unreachable.
    let std::net::IpAddr::V4(server) = scene.net.server_v4 else {
        unreachable!("the pair's IPv4 address")
    };
    let octets = server.octets();
    let absent = std::net::Ipv4Addr::new(octets[0], octets[1], octets[2], 99);
    let tracer = watch(port);
    let client = crate::support::peer::Peer::client(
        &scene.net.client_ns,
        std::net::SocketAddr::new(absent.into(), port),
        &["--connect-may-fail"],
    );
    client.finish();
    let (found, _) = records(tracer, 1, |r| r.get("connect_failed").is_some());
    let r = &found[0];
    assert_eq!(r["connect_failed"], "unreachable", "{r}");
    assert_eq!(r["net"]["error"], "EHOSTUNREACH", "{r}");
}
privileged!(network_an_address_nobody_answers_arp_for_is_unreachable);

/// Real curl, a process per attempt: against a closed port (refused), and
/// with `--connect-timeout 1.5` against SYNs dropped on the way (curl
/// gives up first: abandoned, after the kernel retried each SYN once).
fn network_real_curl_failing_to_connect_is_a_finding_with_its_reason() {
    let scene = Scene::new();
    let (closed, dropped) = (fresh_port(), fresh_port());
    drop_syns(&scene, dropped);
    for (port, extra, reason, count) in [
        (closed, "", "refused", 6),
        (dropped, "--connect-timeout 1.5", "abandoned", 5),
    ] {
        let report = Tcplinger::report_until_stopped(port);
        let url = format!("http://{}/", scene.at(port));
        let pids = curl_loop(&scene.net.client_ns, &url, count, extra);
        let run = report.stop();
        assert!(run.status.success(), "{:?}", run.stderr);
        let report = &run.lines[0];
        let f = connect_failures(report);
        assert_eq!(f["comm"], "curl", "{f}");
        assert!(
            pids.contains(&u32::try_from(f["pid"].as_u64().unwrap()).unwrap()),
            "{f}"
        );
        assert_eq!(f["processes"], count, "{f}");
        assert_eq!(f["evidence"][format!("failed_{reason}")], count, "{f}");
        assert_eq!(f["endpoint"], scene.at(port).to_string(), "{f}");
        if reason == "abandoned" {
            // Measured: one SYN retransmission per attempt (at 1 s).
            assert_eq!(f["evidence"]["syn_retransmits"], count, "{f}");
        }
    }
}
privileged!(network_real_curl_failing_to_connect_is_a_finding_with_its_reason);
