//! What the tool guarantees on a host in trouble: floods counted and never misjudged, bounded memory, nothing left behind by a SIGKILL, least privilege, degraded hooks, bad input, broken pipes and full disks.

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::support::{
    daemon::{scrape, start_daemon, value},
    peer::{CLIENT_COMM, Peer, SERVER_COMM},
    real::{Proc, python},
    require_root,
    scene::{Closer, Pace, Scene, fresh_port, loopback_addr, loopback_port},
    tracer::{
        Finished, Tcplinger, one_line_error, our_programs_loaded, replayed, tcplinger,
        tcplinger_ok, usage_error,
    },
    vm_kib, wait_until,
};

const SETTLE: Duration = Duration::from_secs(10);

fn str_of<'a>(r: &'a Value, key: &str) -> &'a str {
    r[key].as_str().unwrap_or_default()
}

/// The expected verdict of a side of a connection the client closes first.
fn right_verdict(r: &Value) -> bool {
    match str_of(r, "comm") {
        CLIENT_COMM => str_of(r, "closed_by") == "local",
        SERVER_COMM => str_of(r, "closed_by") == "remote",
        _ => false,
    }
}

// ---- 1. floods ----

fn flood_with_a_tiny_ring_counts_drops_and_keeps_verdicts_right() {
    let scene = Scene::new();
    let (flood_port, after_port) = (scene.port, fresh_port());
    let ports = format!("{flood_port},{after_port}");
    let tracer = Tcplinger::start(&[
        "watch",
        "--format",
        "json",
        "--ring-bytes",
        "4096",
        "--port",
        &ports,
    ]);
    // The consumer stalls through a burst of 200 connections: the 4 KiB ring
    // holds 17 of the 400 records the burst writes (one a socket, 232
    // bytes with the ring's header).
    tracer.signal(libc::SIGSTOP);
    scene.converse(Closer::Client, 200, Pace::AllAtOnce);
    tracer.signal(libc::SIGCONT);
    // Afterwards, connections whose every event is seen: one at a time,
    // each open for 30 ms, so their records come in small bursts that a
    // 4 KiB ring holds.
    let after = 20u32;
    let count = after.to_string();
    let server = scene.server_on(after_port, &["--close", "after-eof", "--count", &count]);
    scene
        .client_of(
            after_port,
            &["--close", "first", "--count", &count, "--keep-ms", "30"],
        )
        .finish();
    server.finish();
    let after_seen = tracer.wait_for(SETTLE, |lines| {
        lines.iter().filter(|r| r["rport"] == after_port).count() == after as usize
            && lines.iter().filter(|r| r["lport"] == after_port).count() == after as usize
    });
    let run = tracer.stop();
    assert!(run.status.success(), "{:?}", run.stderr);
    assert!(after_seen, "{:?}", run.stderr);
    eprintln!(
        "flood: {} records out, {} events, {} dropped",
        run.lines.len(),
        run.events,
        run.dropped
    );
    assert!(
        run.dropped > 300,
        "the burst overflowed the ring: {:?}",
        run.stderr
    );
    let summary = run.stderr.iter().find(|l| l.contains(" events, ")).unwrap();
    assert!(
        summary.contains(&format!("{} dropped", run.dropped)),
        "{summary}"
    );
    // Nothing complete is misjudged; the sockets caught in the flood say
    // they are incomplete.
    for r in &run.lines {
        if r["complete"] == true {
            assert!(
                right_verdict(r),
                "a complete record with a wrong verdict: {r}"
            );
        }
    }
    let flood: Vec<&Value> = run
        .lines
        .iter()
        .filter(|r| r["rport"] == flood_port || r["lport"] == flood_port)
        .collect();
    assert!(
        flood.iter().any(|r| r["complete"] == false),
        "some flooded sockets were partly seen: {flood:?}"
    );
    // Everything after the flood is complete and right.
    let after_records: Vec<&Value> = run
        .lines
        .iter()
        .filter(|r| r["rport"] == after_port || r["lport"] == after_port)
        .collect();
    assert_eq!(after_records.len(), 2 * after as usize);
    for r in after_records {
        assert_eq!(r["complete"], true, "{r}");
        assert!(right_verdict(r), "{r}");
    }
}
privileged!(flood_with_a_tiny_ring_counts_drops_and_keeps_verdicts_right);

fn flood_drops_show_in_report_and_metrics() {
    let scene = Scene::new();
    // report: the JSON says how much was lost.
    let report = Tcplinger::start(&[
        "report",
        "--format",
        "json",
        "--ring-bytes",
        "4096",
        "--duration",
        "60s",
        "--port",
        &scene.port_arg(),
    ]);
    report.signal(libc::SIGSTOP);
    scene.converse(Closer::Client, 100, Pace::AllAtOnce);
    report.signal(libc::SIGCONT);
    let run = report.stop();
    assert!(run.status.success(), "{:?}", run.stderr);
    let json = &run.lines[0];
    let dropped = json["dropped"]
        .as_u64()
        .unwrap_or_else(|| panic!("no dropped count in the report: {json}"));
    assert!(dropped > 0, "{json}");
    assert_eq!(dropped, run.dropped);
    // daemon: the counter.
    let listen = loopback_addr();
    let daemon = start_daemon(
        listen,
        &["--ring-bytes", "4096", "--port", &scene.port_arg()],
    );
    daemon.signal(libc::SIGSTOP);
    scene.converse(Closer::Client, 100, Pace::AllAtOnce);
    daemon.signal(libc::SIGCONT);
    assert!(
        wait_until(SETTLE, || value(
            &scrape(listen),
            "tcplinger_events_dropped_total",
            &[]
        ) > 0.0),
        "{}",
        scrape(listen)
    );
    let run = daemon.stop();
    assert!(run.status.success(), "{:?}", run.stderr);
    assert!(run.dropped > 0);
}
privileged!(flood_drops_show_in_report_and_metrics);

// ---- 2. memory bounds ----

/// A helper process holding `n` loopback connections (2n sockets) until dropped.
struct Holder(std::process::Child);

impl Holder {
    fn start(n: usize) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["__hold", &n.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "held", "holder failed");
        Self(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

fn socket_cap_evicts_and_bounds_memory() {
    require_root();
    let listen = loopback_addr();
    let daemon = start_daemon(listen, &["--max-sockets", "1000"]);
    let pid = daemon.pid();
    let rss_before = vm_kib(pid, "VmRSS:");
    let start = Instant::now();
    // Two processes: the fd limit (20,000 here, and raising it needs
    // CAP_SYS_RESOURCE) bounds what one can hold.
    let holders = [Holder::start(5_000), Holder::start(5_000)];
    eprintln!("20,000 sockets open in {:?}", start.elapsed());
    let evicted = |text: &str| value(text, "tcplinger_sockets_evicted_total", &[]);
    let seen = wait_until(Duration::from_secs(20), || {
        evicted(&scrape(listen)) >= 19_000.0
    });
    let text = scrape(listen);
    assert!(seen, "evicted {}", evicted(&text));
    let tracked = value(&text, "tcplinger_tracked_sockets", &[]);
    assert!(tracked <= 1000.0, "tracked {tracked} over the cap");
    let rss_loaded = vm_kib(pid, "VmRSS:");
    eprintln!(
        "cap 1000, 20,000 sockets: evicted {}, tracked {tracked}, RSS {rss_before} -> {rss_loaded} KiB",
        evicted(&text)
    );
    assert!(
        rss_loaded < rss_before + 16 * 1024,
        "RSS grew from {rss_before} to {rss_loaded} KiB under a cap of 1000"
    );
    assert!(rss_loaded < 64 * 1024, "RSS {rss_loaded} KiB");
    drop(holders);
    let run = daemon.stop();
    assert!(run.status.success(), "{:?}", run.stderr);
    let summary = run.stderr.iter().find(|l| l.contains(" events, ")).unwrap();
    assert!(
        summary.contains("evicted (over --max-sockets 1000)"),
        "{summary}"
    );
}
privileged!(socket_cap_evicts_and_bounds_memory);

// ---- 3. crash and restart ----

/// Names of our maps as the kernel lists them.
const OUR_MAPS: [&str; 7] = [
    "EVENTS",
    "DROPS",
    "OWNERS",
    "FAILED",
    "RING_PEAK",
    "ENTRY_COUNTS",
    "SCRATCH",
];

fn our_maps_loaded() -> Vec<String> {
    aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .filter_map(|m| m.name_as_str().map(str::to_string))
        .filter(|name| OUR_MAPS.contains(&name.as_str()))
        .collect()
}

fn raw_tracepoint_links() -> usize {
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter(|l| {
            matches!(
                l.link_type(),
                Ok(aya::programs::links::LinkType::RawTracePoint)
            )
        })
        .count()
}

fn sigkill_leaves_nothing_behind_and_a_restart_classifies_open_connections() {
    let scene = Scene::new();
    let (held_port, churn_port) = (scene.port, fresh_port());
    let links_before = raw_tracepoint_links();
    let listen = loopback_addr();
    let ports = format!("{held_port},{churn_port}");
    let first = start_daemon(listen, &["--port", &ports]);
    assert!(!our_programs_loaded().is_empty());
    assert!(raw_tracepoint_links() > links_before);
    // Three connections that stay open across the crash.
    // The server takes all three before answering any.
    let server = scene.server_on(
        held_port,
        &["--close", "after-eof", "--count", "3", "--parallel"],
    );
    let mut clients: Vec<Peer> = (0..3)
        .map(|_| scene.client_of(held_port, &["--close", "on-stdin"]))
        .collect();
    for c in &clients {
        c.expect_line("connected");
    }
    // And traffic under way when the daemon dies.
    let churn_server = scene.server_on(churn_port, &["--count", "100000", "--close", "after-eof"]);
    let churn_client = scene.client_of(churn_port, &["--count", "100000", "--close", "first"]);
    assert!(wait_until(SETTLE, || value(
        &scrape(listen),
        "tcplinger_connections_closed_total",
        &[]
    ) > 100.0));
    first.signal(libc::SIGKILL);
    drop(first);
    drop(churn_client);
    drop(churn_server);
    // The kernel frees what the killed process held once its fds are gone
    // (programs after an RCU grace period).
    let clean = wait_until(Duration::from_secs(5), || {
        our_programs_loaded().is_empty()
            && our_maps_loaded().is_empty()
            && raw_tracepoint_links() == links_before
    });
    assert!(
        clean,
        "left behind: programs {:?}, maps {:?}, raw tracepoint links {} (before {links_before})",
        our_programs_loaded(),
        our_maps_loaded(),
        raw_tracepoint_links()
    );
    // A new daemon seeds the open connections and classifies their close.
    let second = start_daemon(listen, &["--port", &held_port.to_string()]);
    let started = second
        .stderr_lines()
        .into_iter()
        .find(|l| l.contains("already open"))
        .unwrap();
    assert!(started.contains("(6 already open)"), "{started}");
    for c in &mut clients {
        c.tell("close");
    }
    for c in clients {
        c.finish();
    }
    server.finish();
    let counted = wait_until(SETTLE, || {
        let text = scrape(listen);
        let closed = |comm: &str, by: &str| {
            value(
                &text,
                "tcplinger_connections_closed_total",
                &[&format!("comm=\"{comm}\""), &format!("closed_by=\"{by}\"")],
            )
        };
        closed(CLIENT_COMM, "local") == 3.0 && closed(SERVER_COMM, "remote") == 3.0
    });
    let text = scrape(listen);
    let run = second.stop();
    assert!(run.status.success(), "{:?}", run.stderr);
    assert!(
        counted,
        "{}",
        text.lines()
            .filter(|l| l.starts_with("tcplinger_connections_closed_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
privileged!(sigkill_leaves_nothing_behind_and_a_restart_classifies_open_connections);

// ---- 6. least privilege ----

/// The capability lines of every thread of `pid`.
fn thread_caps(pid: u32) -> Vec<(String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
        let fields = status
            .lines()
            .filter(|l| l.starts_with("Cap") || l.starts_with("NoNewPrivs"))
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect();
        out.push((task.display().to_string(), fields));
    }
    out
}

fn daemon_keeps_only_the_capabilities_it_needs() {
    let scene = Scene::new();
    // Open before the daemon: seeding it needs sock_diag inside both
    // namespaces and the peers' /proc fds, after the drop.
    let server = scene.server(&["--close", "after-eof"]);
    let mut client = scene.client(&["--close", "on-stdin"]);
    client.expect_line("connected");
    let listen = loopback_addr();
    let daemon = start_daemon(listen, &["--port", &scene.port_arg()]);
    // CAP_DAC_READ_SEARCH 2, CAP_SYS_PTRACE 19, CAP_SYS_ADMIN 21.
    let kept = format!("{:016x}", (1u64 << 2) | (1 << 19) | (1 << 21));
    let threads = thread_caps(daemon.pid());
    assert!(!threads.is_empty());
    for (task, fields) in &threads {
        let get = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| key == k)
                .map_or_else(|| panic!("{task}: no {k}"), |(_, v)| v.as_str())
        };
        assert_eq!(get("CapEff"), kept, "{task}: {fields:?}");
        assert_eq!(get("CapPrm"), kept, "{task}: {fields:?}");
        assert_eq!(get("CapBnd"), kept, "{task}: {fields:?}");
        assert_eq!(get("CapInh"), "0000000000000000", "{task}");
        assert_eq!(get("CapAmb"), "0000000000000000", "{task}");
        assert_eq!(get("NoNewPrivs"), "1", "{task}");
    }
    eprintln!("daemon threads: {}, CapEff {kept}", threads.len());
    // Still able to do its work: the seeded sockets were found in both
    // namespaces with their owners ...
    let seeded = wait_until(SETTLE, || {
        let text = scrape(listen);
        value(
            &text,
            "tcplinger_sockets",
            &[&format!("comm=\"{CLIENT_COMM}\""), "state=\"ESTABLISHED\""],
        ) == 1.0
            && value(
                &text,
                "tcplinger_sockets",
                &[&format!("comm=\"{SERVER_COMM}\""), "state=\"ESTABLISHED\""],
            ) == 1.0
    });
    assert!(seeded, "{}", scrape(listen));
    // ... their close is classified, and the ring and maps still work.
    client.tell("close");
    client.finish();
    server.finish();
    let closed = wait_until(SETTLE, || {
        value(
            &scrape(listen),
            "tcplinger_connections_closed_total",
            &[&format!("comm=\"{CLIENT_COMM}\""), "closed_by=\"local\""],
        ) == 1.0
    });
    let run = daemon.stop();
    assert!(run.status.success(), "{:?}", run.stderr);
    assert!(closed);
    assert!(
        !run.stderr
            .iter()
            .any(|l| l.contains("could not drop") || l.contains("no_new_privs")),
        "{:?}",
        run.stderr
    );
}
privileged!(daemon_keeps_only_the_capabilities_it_needs);

/// The owners `tcplinger sockets` names for the listening sockets of
/// `port` when it holds only `caps`, as uid 0: setpriv narrows the
/// bounding set, so the exec of a root process gets nothing else. One entry
/// per group of sockets it saw: the owner's pid, or `None` if unnamed.
fn owners_named_with(caps: &[&str], port: u16) -> Vec<Option<u64>> {
    let bounding: Vec<String> = caps.iter().map(|c| format!(",+{c}")).collect();
    let out = Command::new("setpriv")
        .args([
            "--inh-caps=-all",
            "--ambient-caps=-all",
            &format!("--bounding-set=-all{}", bounding.concat()),
        ])
        .arg(env!("CARGO_BIN_EXE_tcplinger"))
        .args(["sockets", "--format", "json", "--state", "listen"])
        .args(["--port", &port.to_string()])
        .output()
        .expect("running setpriv (util-linux)");
    assert!(
        out.status.success(),
        "{caps:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["pid"].as_u64())
        .collect()
}

/// What the tracer keeps after attaching is what a root process needs to
/// name the owner of a socket held by another user in another network
/// namespace, and none of it is redundant: without CAP_SYS_ADMIN the
/// namespace is not entered, without CAP_SYS_PTRACE the fd links cannot
/// be read, and without CAP_DAC_READ_SEARCH the /proc/PID/fd directory of
/// another user cannot even be opened (CAP_SYS_PTRACE does not stand in
/// for it).
fn each_kept_capability_is_needed_to_name_another_users_socket() {
    let scene = Scene::new();
    // Python, not a test peer: the nobody user may not reach the test binary.
    let listener = Proc::spawn(
        &scene.net.server_ns,
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            python(),
            "-c",
            "import socket, sys, time\n\
             s = socket.socket()\n\
             s.bind((sys.argv[1], int(sys.argv[2])))\n\
             s.listen()\n\
             print('listening', flush=True)\n\
             time.sleep(60)\n",
            &scene.server_ip().to_string(),
            &scene.port_arg(),
        ],
    );
    listener.expect_line("listening");
    let owner = Some(u64::from(listener.pid));
    let kept = ["sys_admin", "sys_ptrace", "dac_read_search"];
    assert_eq!(owners_named_with(&kept, scene.port), [owner], "all kept");
    assert_eq!(
        owners_named_with(&["sys_ptrace", "dac_read_search"], scene.port),
        [],
        "without CAP_SYS_ADMIN the namespace is not entered"
    );
    assert_eq!(
        owners_named_with(&["sys_admin", "dac_read_search"], scene.port),
        [None],
        "without CAP_SYS_PTRACE the fd links are unreadable"
    );
    assert_eq!(
        owners_named_with(&["sys_admin", "sys_ptrace"], scene.port),
        [None],
        "without CAP_DAC_READ_SEARCH another user's /proc/PID/fd is closed"
    );
}
privileged!(each_kept_capability_is_needed_to_name_another_users_socket);

fn metrics_refuse_non_loopback_without_the_explicit_flag() {
    require_root();
    let port = loopback_port();
    let anywhere = format!("0.0.0.0:{port}");
    let out = tcplinger(&["daemon", "--listen", &anywhere, "--duration", "1s"]);
    assert_eq!(out.status.code(), Some(2));
    let line = one_line_error(&out);
    assert!(
        line.contains("--listen") && line.contains("--allow-non-loopback"),
        "{line}"
    );
    // The same from a config file.
    let dir = std::env::temp_dir().join(format!("tcplinger-listen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("t.toml");
    std::fs::write(&file, format!("listen = \"{anywhere}\"\n")).unwrap();
    let out = tcplinger(&[
        "daemon",
        "--config",
        file.to_str().unwrap(),
        "--duration",
        "1s",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line_error(&out).contains("--allow-non-loopback"));
    std::fs::remove_dir_all(&dir).unwrap();
    // With the flag it serves, and says what that means.
    let daemon = Tcplinger::start(&["daemon", "--listen", &anywhere, "--allow-non-loopback"]);
    let loopback: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(scrape(loopback).contains("tcplinger_events_total"));
    let run = daemon.stop();
    assert!(run.status.success(), "{:?}", run.stderr);
    assert!(
        run.stderr
            .iter()
            .any(|l| l.contains(&format!("serving metrics on {anywhere}"))),
        "{:?}",
        run.stderr
    );
}
privileged!(metrics_refuse_non_loopback_without_the_explicit_flag);

// ---- 7. kernel feature probing ----

fn a_missing_optional_hook_degrades_with_a_warning() {
    let scene = Scene::new();
    let port = scene.port;
    let tracer = Tcplinger::start(&[
        "watch",
        "--format",
        "json",
        "--port",
        &scene.port_arg(),
        "--disable-hook",
        "tcp_send_reset,tcp_receive_reset",
    ]);
    let pids = scene.converse(Closer::Client, 1, Pace::OneAtATime);
    let seen = tracer.wait_for(SETTLE, |lines| lines.len() == 2);
    let run = tracer.stop();
    assert!(run.status.success(), "{:?}", run.stderr);
    assert!(seen, "{:?} {:?}", run.lines, run.stderr);
    for hook in ["tcp_send_reset", "tcp_receive_reset"] {
        assert!(
            run.stderr
                .iter()
                .any(|l| l.starts_with("tcplinger: warning: tracepoint ")
                    && l.contains(hook)
                    && l.contains("closed_by \"unknown\"")),
            "no warning for {hook}: {:?}",
            run.stderr
        );
    }
    // Still right (these connections end without a reset), and the
    // accepted socket named by its owner without the I/O hooks, which
    // only --pid and --transitions attach.
    for r in &run.lines {
        assert!(right_verdict(r), "{r}");
        assert_eq!(r["complete"], true, "{r}");
    }
    let server_record = run.lines.iter().find(|r| r["lport"] == port).unwrap();
    assert_eq!(server_record["pid"], pids.server, "{server_record}");
    // Without the one hook nothing works without, it stops and says why.
    let out = tcplinger(&[
        "watch",
        "--duration",
        "1s",
        "--disable-hook",
        "inet_sock_set_state",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let line = one_line_error(&out);
    assert!(
        line.contains("no tracepoint inet_sock_set_state") && line.contains("Linux 6.3"),
        "{line}"
    );
}
privileged!(a_missing_optional_hook_degrades_with_a_warning);

/// Nothing runs on a send or a receive unless a step must name its owner
/// as it happens (`--pid` in the kernel, `--transitions` on screen): the
/// I/O hooks are the whole kernel cost of a keep-alive request.
/// The I/O hooks, and the destroy hook that frees the entries kept past
/// CLOSE in that mode (kernel names are cut to 15 characters).
fn io_hooks_run_only_where_a_step_needs_its_owner() {
    require_root();
    let io_hooks = || -> Vec<String> {
        our_programs_loaded()
            .into_iter()
            .filter(|p| {
                p.starts_with("sock_send_len")
                    || p.starts_with("sock_recv_len")
                    || p.starts_with("tcp_destroy_so")
            })
            .collect()
    };
    assert!(io_hooks().is_empty(), "before: {:?}", our_programs_loaded());
    for (args, attached) in [
        (&["watch", "--format", "json"][..], false),
        (&["watch", "--format", "json", "--pid", "1"][..], true),
        (&["watch", "--format", "json", "--transitions"][..], true),
        (
            &["report", "--format", "json", "--duration", "1m"][..],
            false,
        ),
    ] {
        let tracer = Tcplinger::start(args);
        let loaded = our_programs_loaded();
        let io = io_hooks();
        let run = tracer.stop();
        assert!(run.status.success(), "{args:?}: {:?}", run.stderr);
        assert!(
            loaded.iter().any(|p| p.starts_with("inet_sock_set")),
            "{args:?}: {loaded:?}"
        );
        assert_eq!(
            io.len(),
            if attached { 3 } else { 0 },
            "{args:?}: {loaded:?}"
        );
        assert!(
            wait_until(Duration::from_secs(5), || our_programs_loaded().is_empty()),
            "{args:?} left {:?}",
            our_programs_loaded()
        );
    }
}
privileged!(io_hooks_run_only_where_a_step_needs_its_owner);

// ---- 5. bad input and environment problems ----

fn bad_input_exits_2_with_a_short_block_naming_the_flag() {
    require_root();
    let dir = std::env::temp_dir().join(format!("tcplinger-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir_str = dir.to_str().unwrap().to_string();
    let missing_dir_file = format!("{dir_str}/no/such/dir/out.json");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["watch", "--duration", "-3s"], "--duration"),
        (vec!["watch", "--duration", "0s"], "--duration"),
        (vec!["watch", "--duration", "soon"], "--duration"),
        (vec!["watch", "--format", "yaml"], "--format"),
        (vec!["watch", "--port", "70000"], "--port"),
        (vec!["watch", "--port", "0"], "--port"),
        (vec!["watch", "--port", "1,2,3,4,5,6,7,8,9"], "--port"),
        (vec!["watch", "--pid", "0"], "--pid"),
        (vec!["watch", "--pid", "abc"], "--pid"),
        (vec!["watch", "--pid", "999999999"], "--pid"),
        (vec!["watch", "--ring-bytes", "5000"], "--ring-bytes"),
        (vec!["watch", "--ring-bytes", "64GiB"], "--ring-bytes"),
        (vec!["watch", "--ring-bytes", "4XB"], "--ring-bytes"),
        (vec!["watch", "--ring-bytes", "-4096"], "--ring-bytes"),
        (vec!["watch", "--max-sockets", "0"], "--max-sockets"),
        (vec!["watch", "--max-sockets", "-1"], "--max-sockets"),
        (vec!["watch", "--remote", "10.0.0.0/33"], "--remote"),
        (vec!["watch", "--remote", "example.com"], "--remote"),
        (vec!["watch", "--remote", "300.1.1.1"], "--remote"),
        (vec!["watch", "--comm", ""], "--comm"),
        (vec!["watch", "--output", &missing_dir_file], "--output"),
        (vec!["watch", "--output", &dir_str], "--output"),
        (vec!["watch", "--output", &dir_str, "--force"], "--output"),
        (vec!["watch", "--force"], "--force"),
        (vec!["report", "--force"], "--force"),
        (vec!["watch", "--transitions=yes"], "--transitions"),
        (vec!["watch", "--disable-hook", "kprobe"], "--disable-hook"),
        (vec!["watch", "--bogus"], "--bogus"),
        (vec!["watch", "-4", "-6"], "--ipv"),
        (vec!["report", "--format", "yaml"], "--format"),
        (vec!["report", "--top", "many"], "--top"),
        (vec!["report", "--top", "-1"], "--top"),
        (vec!["report", "--max-groups", "-5"], "--max-groups"),
        (vec!["report", "--max-groups", "0"], "--max-groups"),
        (vec!["report", "--duration", "-1s"], "--duration"),
        (vec!["report", "--output", &missing_dir_file], "--output"),
        (vec!["top", "--sort", "bogus"], "--sort"),
        (vec!["sockets", "--state", "bogus"], "--state"),
        (vec!["sockets", "--port", "70000"], "--port"),
        (vec!["sockets", "--format", "xml"], "--format"),
        (vec!["sockets", "--remote", "1.2.3.4/40"], "--remote"),
        (vec!["daemon", "--listen", "nonsense"], "--listen"),
        (vec!["daemon", "--listen", "10.0.0.1:9917"], "--listen"),
        (vec!["daemon", "--log-format", "xml"], "--log-format"),
        (
            vec!["daemon", "--max-endpoints", "99999999"],
            "--max-endpoints",
        ),
        (vec!["daemon", "--max-sockets", "0"], "--max-sockets"),
        (vec!["daemon", "--max-groups", "0"], "--max-groups"),
        (vec!["daemon", "--ring-bytes", "3"], "--ring-bytes"),
        (vec!["daemon", "--cgroup", "relative/path"], "--cgroup"),
        (vec!["daemon", "--remote", "fd00::/200"], "--remote"),
        (
            vec!["daemon", "--config", "/nonexistent/tcplinger.toml"],
            "--config",
        ),
        (vec!["daemon", "--config", &dir_str], "--config"),
        (vec!["daemon", "--duration", "-5m"], "--duration"),
    ];
    for (args, flag) in &cases {
        let out = tcplinger(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = usage_error(&out);
        assert!(line.contains(flag), "{args:?}: {line}");
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    }
    // A config file that is not TOML names the file and line.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "listen = \n").unwrap();
    let out = tcplinger(&["daemon", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line_error(&out).contains("bad.toml:1"));
    std::fs::remove_dir_all(&dir).unwrap();
    eprintln!(
        "{} bad inputs: exit 2, one short block each",
        cases.len() + 1
    );
}
privileged!(bad_input_exits_2_with_a_short_block_naming_the_flag);

fn environment_problems_exit_1_with_the_fix() {
    require_root();
    // Not root: for every command that loads programs.
    for args in [
        &["watch", "--duration", "1s"][..],
        &["watch", "--transitions", "--duration", "1s"],
        &["report", "--duration", "1s"],
        &["daemon", "--duration", "1s", "--listen", "127.0.0.1:0"],
    ] {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(env!("CARGO_BIN_EXE_tcplinger"))
            .args(args)
            .output()
            .expect("running setpriv (util-linux)");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let line = one_line_error(&out);
        assert!(
            line.contains("CAP_BPF") && line.contains("root"),
            "{args:?}: {line}"
        );
    }
    // No kernel BTF: hidden by an empty tmpfs in a private mount namespace.
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs none /sys/kernel/btf && exec {} watch --duration 1s",
            env!("CARGO_BIN_EXE_tcplinger")
        ))
        .output()
        .expect("running unshare (util-linux)");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = one_line_error(&out);
    assert!(
        line.contains("BTF") && line.contains("CONFIG_DEBUG_INFO_BTF"),
        "{line}"
    );
    // The tracepoint everything needs is absent.
    let out = tcplinger(&[
        "watch",
        "--duration",
        "1s",
        "--disable-hook",
        "inet_sock_set_state",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line_error(&out).contains("Linux 6.3"));
    // The metrics port is taken.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = tcplinger(&["daemon", "--listen", &addr, "--duration", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    let line = one_line_error(&out);
    assert!(line.contains(&addr) && line.contains("--listen"), "{line}");
}
privileged!(environment_problems_exit_1_with_the_fix);

// ---- 8. output ----

fn a_closed_pipe_ends_watch_cleanly() {
    let scene = Scene::new();
    // `watch | head -1`, by hand: read the header line, then close the pipe.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tcplinger"))
        .args(["watch", "--port", &scene.port_arg()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains("CLOSED_BY"), "{first:?}");
    drop(stdout);
    // Records to write into the closed pipe.
    scene.converse(Closer::Client, 5, Pace::OneAtATime);
    let deadline = Instant::now() + SETTLE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "watch kept running after its reader left"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(" events, "), "{stderr}");
    assert!(
        !stderr.to_lowercase().contains("error") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );
}
privileged!(a_closed_pipe_ends_watch_cleanly);

fn a_full_disk_on_output_stops_cleanly() {
    let scene = Scene::new();
    let disk = Tmpfs::mount("full", "8k");
    let file = disk.0.join("records.json");
    let tracer = Tcplinger::start(&[
        "watch",
        "--format",
        "json",
        "--port",
        &scene.port_arg(),
        "--output",
        file.to_str().unwrap(),
    ]);
    // About 500 bytes a record: 40 connections write ~40 KB into 8 KB.
    scene.converse(Closer::Client, 40, Pace::OneAtATime);
    let run = tracer.stop_after_signal();
    drop(disk);
    stopped_by_a_full_disk(&run, &file, "tracing stopped");
    assert!(
        run.lines.is_empty(),
        "nothing goes to stdout: {:?}",
        run.lines
    );
}

/// A run ended by writing `file` on a full disk: exit 1, the error with
/// the file and what stopped (`stopped`) as its last line, and nothing of
/// it left in the kernel.
fn stopped_by_a_full_disk(run: &Finished, file: &std::path::Path, stopped: &str) {
    assert_eq!(run.status.code(), Some(1), "{:?}", run.stderr);
    let error = run.stderr.last().unwrap();
    assert!(
        error.contains(&format!("writing {}", file.display()))
            && error.contains("No space left on device")
            && error.contains(stopped),
        "{:?}",
        run.stderr
    );
    let gone = wait_until(Duration::from_secs(5), || our_programs_loaded().is_empty());
    assert!(gone, "programs left behind: {:?}", our_programs_loaded());
}
privileged!(a_full_disk_on_output_stops_cleanly);

/// A tmpfs of `size` mounted on a scratch directory: a disk that fills up.
/// Unmounted and removed on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(name: &str, size: &str) -> Self {
        let dir = scratch(name);
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "none"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(mounted.success());
        Self(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A scratch directory of this test process, emptied first.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tcplinger-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// `ln -s /etc/passwd /tmp/o; tcplinger watch --output /tmp/o` as root must
/// not touch /etc/passwd: a link as the file named is refused, before
/// anything is opened through it, whether or not --force is given.
fn output_refuses_a_symlink_and_leaves_its_target_intact() {
    require_root();
    let dir = scratch("output-link");
    let target = dir.join("precious");
    std::fs::write(&target, "precious\n").unwrap();
    let link = dir.join("o");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let link_arg = link.to_str().unwrap();
    for args in [
        &["watch", "--output", link_arg, "--duration", "1s"][..],
        &["watch", "--output", link_arg, "--force", "--duration", "1s"],
        &[
            "report",
            "--output",
            link_arg,
            "--force",
            "--duration",
            "1s",
        ],
    ] {
        let out = tcplinger(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = one_line_error(&out);
        assert!(
            line.contains(&format!("--output {link_arg}")) && line.contains("symbolic link"),
            "{args:?}: {line}"
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
    }
    // A dangling link does not create its target either.
    let nowhere = dir.join("nowhere");
    let dangling = dir.join("dangling");
    std::os::unix::fs::symlink(&nowhere, &dangling).unwrap();
    let out = tcplinger(&[
        "watch",
        "--output",
        dangling.to_str().unwrap(),
        "--duration",
        "1s",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line_error(&out).contains("--output"));
    assert!(!nowhere.exists(), "created the link's target");
    std::fs::remove_dir_all(&dir).unwrap();
}
privileged!(output_refuses_a_symlink_and_leaves_its_target_intact);

/// An existing file is replaced only with --force, and only once tracing
/// has started: a run that fails to start leaves it as it was.
fn output_replaces_an_existing_file_only_when_forced_and_tracing() {
    use std::os::unix::fs::PermissionsExt as _;
    require_root();
    let dir = scratch("output-existing");
    let file = dir.join("records.txt");
    std::fs::write(&file, "precious\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let path = file.to_str().unwrap();
    let port = loopback_port().to_string();
    // Without --force: refused, saying how.
    for command in ["watch", "report"] {
        let out = tcplinger(&[command, "--output", path, "--duration", "1s"]);
        assert_eq!(out.status.code(), Some(2), "{command}");
        let line = one_line_error(&out);
        assert!(
            line.contains(&format!("--output {path}")) && line.contains("--force"),
            "{command}: {line}"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious\n");
    }
    // With --force, but the programs cannot be attached: untouched.
    for command in ["watch", "report"] {
        let out = tcplinger(&[
            command,
            "--output",
            path,
            "--force",
            "--duration",
            "1s",
            "--disable-hook",
            "inet_sock_set_state",
        ]);
        assert_eq!(out.status.code(), Some(1), "{command}");
        assert!(one_line_error(&out).contains("inet_sock_set_state"));
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "precious\n",
            "{command} truncated the file before tracing"
        );
    }
    // With --force and a run that traces: replaced, its mode left alone.
    let out = tcplinger(&[
        "watch",
        "--output",
        path,
        "--force",
        "--port",
        &port,
        "--duration",
        "1s",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(written.starts_with("TIME(UTC)"), "{written:?}");
    assert!(!written.contains("precious"), "{written:?}");
    assert_eq!(mode_of(&file), 0o640);
    // Someone else's file, or one with another name (a hard link), is
    // refused even with --force.
    let other = dir.join("other");
    std::fs::hard_link(&file, &other).unwrap();
    let out = tcplinger(&["watch", "--output", path, "--force", "--duration", "1s"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line_error(&out).contains("hard link"));
    std::fs::remove_file(&other).unwrap();
    std::os::unix::fs::chown(&file, Some(65534), Some(65534)).unwrap();
    let out = tcplinger(&["watch", "--output", path, "--force", "--duration", "1s"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line_error(&out).contains("owned by"));
    std::fs::remove_dir_all(&dir).unwrap();
}
privileged!(output_replaces_an_existing_file_only_when_forced_and_tracing);

/// A new output file is readable by its owner only, whatever the umask
/// lets through (the records name processes and their peers); a run that
/// fails to start does not leave it behind.
fn output_creates_a_new_file_readable_by_root_only() {
    require_root();
    let dir = scratch("output-new");
    let file = dir.join("records.json");
    let path = file.to_str().unwrap();
    let port = loopback_port().to_string();
    let run = |extra: &[&str]| {
        // The usual umask 022, which File::create would turn into 0644.
        Command::new("sh")
            .args(["-c", "umask 022 && exec \"$@\"", "sh"])
            .arg(env!("CARGO_BIN_EXE_tcplinger"))
            .args(["watch", "--output", path, "--duration", "1s"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&["--disable-hook", "inet_sock_set_state"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!file.exists(), "a run that did not start left its file");
    let out = run(&["--port", &port, "--format", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode_of(&file), 0o600);
    std::fs::remove_dir_all(&dir).unwrap();
}
privileged!(output_creates_a_new_file_readable_by_root_only);

// ---- selection ----

fn comm_and_remote_select_connections() {
    let scene = Scene::new();
    let p = scene.port_arg();
    let server_net = format!("{}/32", scene.server_ip());
    let by_comm = Tcplinger::start(&[
        "watch",
        "--format",
        "json",
        "--port",
        &p,
        "--comm",
        CLIENT_COMM,
    ]);
    let by_remote = Tcplinger::start(&[
        "watch",
        "--format",
        "json",
        "--port",
        &p,
        "--remote",
        &server_net,
    ]);
    let nobody = Tcplinger::start(&[
        "watch",
        "--format",
        "json",
        "--port",
        &p,
        "--remote",
        "192.0.2.0/24",
    ]);
    scene.converse(Closer::Client, 3, Pace::OneAtATime);
    let comm_seen = by_comm.wait_for(SETTLE, |l| l.len() >= 3);
    let remote_seen = by_remote.wait_for(SETTLE, |l| l.len() >= 3);
    // Until every close is over: the records anything unwanted would come
    // from are then in the rings, and each tracer reads its ring before it
    // ends.
    scene.wait_settled(&[scene.port]);
    let (by_comm, by_remote, nobody) = (by_comm.stop(), by_remote.stop(), nobody.stop());
    assert!(comm_seen && remote_seen);
    for run in [&by_comm, &by_remote] {
        assert_eq!(run.lines.len(), 3, "{:?}", run.lines);
        for r in &run.lines {
            assert_eq!(str_of(r, "comm"), CLIENT_COMM, "{r}");
            assert_eq!(str_of(r, "raddr"), scene.server_ip().to_string(), "{r}");
        }
    }
    assert!(nobody.lines.is_empty(), "{:?}", nobody.lines);
    assert!(
        nobody.events > 0,
        "the kernel still delivered: {:?}",
        nobody.stderr
    );
}
privileged!(comm_and_remote_select_connections);

/// `record --max-bytes` under churn: the recording stops itself at the
/// limit (one line, exit 0), the file stays within it, and it replays.
fn record_stops_at_max_bytes_and_the_file_replays() {
    use crate::support::{churn::Churn, real::TempDir, scene::fresh_port};
    const MAX: u64 = 64 * 1024;
    let port = fresh_port();
    let dir = TempDir::new("record-max");
    let path = dir.path.join("churn.tlrec");
    let tracer = Tcplinger::start(&[
        "record",
        "-o",
        path.to_str().unwrap(),
        "--port",
        &port.to_string(),
        "--max-bytes",
        "64K",
    ]);
    let churn = Churn::start(port, 2, 20_000, Duration::from_mins(1));
    // It ends by itself once the file is full.
    let run = tracer.stop_after_signal();
    churn.finish();
    assert!(run.status.success(), "{:?}", run.stderr);
    assert!(
        run.stderr.iter().any(|l| l.contains("reached --max-bytes")),
        "{:?}",
        run.stderr
    );
    // Within the limit; how close to it depends on the size of the chunk
    // that did not fit (tens of KB compressed under churn).
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size <= MAX, "{size} bytes");
    let info = tcplinger_ok(&[
        "record",
        "--info",
        path.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let info: Value = serde_json::from_str(&info).unwrap();
    assert!(info["records"].as_u64().unwrap() > 100, "{info:#}");
    // The namespaces noted at the start, this one among them.
    assert!(
        info["tcp_fin_timeout_s"]
            .as_object()
            .is_some_and(|by_netns| !by_netns.is_empty()),
        "{info:#}"
    );
    let records = replayed(&["watch", "--format", "json"], &path);
    assert!(records.len() > 1000, "records come back");
}
privileged!(record_stops_at_max_bytes_and_the_file_replays);

/// `record` onto a full disk: it stops by itself with the error (exit 1),
/// detaches, and what reached the disk replays up to its last whole chunk.
fn record_on_a_full_disk_stops_and_what_was_written_replays() {
    use crate::support::churn::Churn;
    let disk = Tmpfs::mount("record-full", "64k");
    let port = fresh_port();
    let file = disk.0.join("full.tlrec");
    let tracer = Tcplinger::start(&[
        "record",
        "-o",
        file.to_str().unwrap(),
        "--port",
        &port.to_string(),
    ]);
    let churn = Churn::start(port, 2, 20_000, Duration::from_mins(1));
    // It ends by itself once a chunk does not fit.
    let run = tracer.stop_after_signal();
    churn.finish();
    let kept = std::env::temp_dir().join(format!("tcplinger-full-{}.tlrec", std::process::id()));
    std::fs::copy(&file, &kept).unwrap();
    drop(disk);
    stopped_by_a_full_disk(&run, &file, "recording stopped");
    let records = replayed(&["watch", "--format", "json"], &kept);
    let info = tcplinger_ok(&["record", "--info", kept.to_str().unwrap()]);
    let _ = std::fs::remove_file(&kept);
    assert!(records.len() > 1000, "records come back");
    assert!(info.contains("cut short"), "{info}");
}
privileged!(record_on_a_full_disk_stops_and_what_was_written_replays);

/// `record --comm`: every record is kept, and the recorded selection is
/// what replays show unless they select for themselves.
fn record_selection_is_the_default_of_its_replays() {
    let scene = Scene::new();
    let dir = scratch("record-comm");
    let path = dir.join("comm.tlrec");
    let tracer = Tcplinger::start(&[
        "record",
        "-o",
        path.to_str().unwrap(),
        "--port",
        &scene.port_arg(),
        "--comm",
        CLIENT_COMM,
    ]);
    scene.converse(Closer::Client, 3, Pace::OneAtATime);
    let run = tracer.stop();
    assert!(run.status.success(), "{:?}", run.stderr);
    let comms = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["watch", "--format", "json"];
        args.extend(extra);
        let mut comms: Vec<String> = replayed(&args, &path)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["comm"].to_string())
            .collect();
        comms.sort();
        comms.dedup();
        comms
    };
    assert_eq!(comms(&[]), [format!("\"{CLIENT_COMM}\"")]);
    assert_eq!(
        comms(&["--comm", SERVER_COMM]),
        [format!("\"{SERVER_COMM}\"")]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
privileged!(record_selection_is_the_default_of_its_replays);

/// `watch | head -1` on a quiet host: the header is read, the reader goes,
/// and watch ends within a second or so although no record comes to
/// write (it asks its stdout, it does not wait for a write to fail), in
/// both modes; exit 0, as for any reader that has what it wanted.
fn watch_ends_when_its_reader_goes_with_nothing_to_write() {
    require_root();
    // A port nobody uses: nothing to write, ever.
    let port = fresh_port().to_string();
    for extra in [&[][..], &["--transitions"][..]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tcplinger"))
            .args(["watch", "--port", &port])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning tcplinger");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut header = String::new();
        stdout.read_line(&mut header).unwrap();
        assert!(header.contains("TIME"), "{extra:?}: {header:?}");
        // Its start-up line comes once attached: then the reader goes.
        // Kept open to the end: the summary is written to it at exit.
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("tracing TCP") {
            line.clear();
            let read = stderr.read_line(&mut line).unwrap();
            assert!(read > 0, "{extra:?}: never said it started");
        }
        drop(stdout);
        let gone = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if gone.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("{extra:?}: watch still running 10 s after its reader went");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = gone.elapsed();
        assert!(status.success(), "{extra:?}: {status:?}");
        // It looks every 200 ms; the margin is for a loaded machine.
        assert!(
            took < Duration::from_secs(3),
            "{extra:?}: took {took:?} to notice"
        );
    }
}
privileged!(watch_ends_when_its_reader_goes_with_nothing_to_write);
