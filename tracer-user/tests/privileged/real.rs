//! The incident stories on real software, between two namespaces: nginx (master and workers), Go net/http programs, curl (a process per request) and Python. Each scenario checks the finding, the process holding the sockets (as /proc names it), the endpoint and the key figures; the healthy controls check that nothing names their processes.

use serde_json::Value;
use tracer_user::model::{aggregate::IDLE_AFTER_NS, diagnose::CLOSE_WAIT_LEAK_AGE_MS};

use crate::support::{
    daemon::with_history,
    real::{self, Nginx, Proc, TempDir, comm_of, curl_loop, forkserver, python, sources},
    scene::{Scene, loopback_addr},
    tracer::{Tcplinger, replayed},
    verdict::{figure, not_the_network, peer_acknowledged, time_wait_refused},
    wait_until,
};

/// A report of the scene's port, ended by the test (SIGINT), and beside it
/// a recording of the same traffic (`record`), replayed at the end.
struct Traced {
    report: Tcplinger,
    record: Tcplinger,
    file: TempDir,
    name: &'static str,
    /// A daemon keeping a history of the same traffic, in its own store.
    daemon: Tcplinger,
    history: TempDir,
}

/// The recording's file in its directory.
const RECORDING: &str = "scene.tlrec";

fn start_report(scene: &Scene, name: &'static str) -> Traced {
    let port = scene.port_arg();
    let file = TempDir::new("recording");
    let path = file.path.join(RECORDING);
    let record = Tcplinger::start(&[
        "record",
        "-o",
        path.to_str().unwrap(),
        "--duration",
        "10m",
        "--port",
        &port,
    ]);
    let report = Tcplinger::start(&[
        "report",
        "--format",
        "json",
        "--duration",
        "10m",
        "--port",
        &port,
    ]);
    let history = TempDir::new("history");
    let daemon = with_history(&port, &history.path);
    Traced {
        report,
        record,
        file,
        name,
        daemon,
        history,
    }
}

/// Ends the report and returns its JSON. The recording made beside it is
/// replayed (`report --from`, no kernel involved) and must give the same
/// findings, naming the same processes and endpoints; with
/// `TCPLINGER_RERECORD=1`, it is kept as the scenario's committed
/// recording (tests/recordings/, replayed by `tests/replay.rs` without
/// root).
fn finish(traced: Traced) -> Value {
    let Traced {
        report: tracer,
        record,
        file,
        name,
        daemon,
        history,
    } = traced;
    let run = tracer.stop();
    let recorded = record.stop();
    assert!(run.status.success(), "{:?}", run.stderr);
    assert!(recorded.status.success(), "{:?}", recorded.stderr);
    assert_eq!(run.lines.len(), 1, "one JSON report: {:#?}", run.lines);
    let report = run.lines.into_iter().next().unwrap();
    eprintln!("{}", summary(&report));
    let path = file.path.join(RECORDING);
    let replayed = replay(&path);
    assert_eq!(
        verdicts(&replayed),
        verdicts(&report),
        "the recording's report names what the live one did:\nreplayed {replayed:#}\nlive {report:#}"
    );
    from_history(daemon, &history, &report);
    if std::env::var_os("TCPLINGER_RERECORD").is_some() {
        let kept = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/recordings")
            .join(format!("{name}.tlrec"));
        std::fs::copy(&path, &kept).unwrap();
        eprintln!("  recording kept as {}", kept.display());
    }
    report
}

/// The daemon that watched the same traffic is stopped once it has judged
/// it (it logs each finding as it first sees it; a healthy scene's has
/// nothing to wait for), and `report --since` of its history names what
/// the live report named: the same findings, processes and endpoints.
fn from_history(daemon: Tcplinger, history: &TempDir, live: &Value) {
    let wanted: Vec<(Value, Value)> = live["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["pathology"].clone(), f["comm"].clone()))
        .collect();
    let judged = daemon.wait_for(std::time::Duration::from_mins(1), |lines| {
        wanted.iter().all(|(pathology, comm)| {
            lines.iter().any(|l| {
                l["event"] == "finding" && l["pathology"] == *pathology && l["comm"] == *comm
            })
        })
    });
    let run = daemon.stop();
    assert!(run.status.success(), "{:?}", run.stderr);
    assert!(
        judged,
        "the daemon did not log {wanted:?}: {:#?}",
        run.lines
    );
    let out = crate::support::tracer::tcplinger_ok(&[
        "report",
        "--since",
        "1h",
        "--format",
        "json",
        "--history-dir",
        &history.path.to_string_lossy(),
    ]);
    let past: Value = serde_json::from_str(&out).unwrap();
    eprintln!("  history:\n{}", summary(&past));
    let (live_verdicts, past_verdicts) = (verdicts(live), verdicts(&past));
    let missing: Vec<&String> = live_verdicts
        .iter()
        .filter(|v| !past_verdicts.contains(v))
        .collect();
    assert!(
        missing.is_empty(),
        "the history misses {missing:?}:\nhistory {past_verdicts:#?}\nlive {live_verdicts:#?}"
    );
    // Each with the same kinds of figures (their values are the worst
    // the daemon saw, judged on its recent window: close, not equal).
    for f in live["findings"].as_array().unwrap() {
        let stored = finding(
            &past,
            f["pathology"].as_str().unwrap(),
            f["comm"].as_str().unwrap(),
        );
        let names = |f: &Value| {
            let mut n: Vec<String> = f["evidence"]
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            n.sort();
            n
        };
        assert_eq!(names(stored), names(f), "history {stored}\nlive {f}");
    }
    // The minutes stored add up to what the live report counted.
    let counts = |report: &Value| {
        let mut c: Vec<String> = report["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                format!(
                    "{} {} {} opened {} closed {}",
                    g["comm"], g["role"], g["endpoint"], g["opened"], g["closed"]
                )
            })
            .collect();
        c.sort();
        c
    };
    assert_eq!(counts(&past), counts(live), "groups: history, then live");
}

/// `report --from PATH --format json`, as an unprivileged user would run it.
fn replay(path: &std::path::Path) -> Value {
    serde_json::from_str(&replayed(&["report", "--format", "json"], path)).unwrap()
}

/// What a report concludes: each finding's pathology, process, pid and
/// endpoint (figures differ by the microseconds between two tracers'
/// stamps).
fn verdicts(report: &Value) -> Vec<String> {
    let mut v: Vec<String> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            format!(
                "{} {} {} {} {}",
                f["pathology"], f["comm"], f["pid"], f["role"], f["endpoint"]
            )
        })
        .collect();
    v.sort();
    v
}

/// One line per finding, for the test log (the figures the README cites).
fn summary(report: &Value) -> String {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            format!(
                "  {} {} pid {} x{} {} {}",
                f["pathology"].as_str().unwrap_or("?"),
                f["comm"].as_str().unwrap_or("-"),
                f["pid"],
                f["processes"],
                f["endpoint"].as_str().unwrap_or("?"),
                f["evidence"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The one finding of `pathology` about processes named `comm`.
fn finding<'a>(report: &'a Value, pathology: &str, comm: &str) -> &'a Value {
    let found: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["pathology"] == pathology && f["comm"] == comm)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {pathology} finding for {comm}: {report:#}"
    );
    found[0]
}

/// No finding names processes called `comm`.
fn no_finding_names(report: &Value, comm: &str) {
    let named: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["comm"] == comm)
        .collect();
    assert!(named.is_empty(), "findings name {comm}: {named:#?}");
}

/// `got` is `want` within 10% + 50 ms.
fn about_ms(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= want * 0.1 + 50.0,
        "{what}: {got} ms, expected {want} ms (10% + 50 ms)"
    );
}

fn pids(f: &Value) -> Vec<u32> {
    f["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| u32::try_from(p.as_u64().unwrap()).unwrap())
        .collect()
}

/// The group of `comm` in `role`.
fn group<'a>(report: &'a Value, comm: &str, role: &str) -> &'a Value {
    report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["comm"] == comm && g["role"] == role)
        .unwrap_or_else(|| panic!("no {role} group for {comm}: {report:#}"))
}

/// nginx with `keepalive_timeout 0` and 200 curl runs: the server ends
/// every connection right after answering, whoever's FIN wins the race;
/// the workers hold them, not the master; 200 curls are one row.
fn real_nginx_keepalive_off_with_curl() {
    let scene = Scene::new();
    let mut nginx = Nginx::start(&scene.net.server_ns, scene.target(), "0");
    let tracer = start_report(&scene, "nginx_keepalive_off_with_curl");
    let curls = curl_loop(&scene.net.client_ns, &scene.url(), 200, "");
    let report = finish(tracer);
    nginx.stop();

    let f = finding(&report, "server_closes", "nginx");
    assert_eq!(f["endpoint"], format!(":{}", scene.port), "{f}");
    assert_eq!(f["local_port"], scene.port);
    assert_eq!(f["role"], "server");
    let holders = pids(f);
    assert!(
        !holders.is_empty() && holders.iter().all(|p| nginx.workers.contains(p)),
        "workers {:?} hold them, not the master {}: {f}",
        nginx.workers,
        nginx.master
    );
    assert!(
        nginx
            .workers
            .contains(&u32::try_from(f["pid"].as_u64().unwrap()).unwrap()),
        "{f}"
    );
    assert_eq!(figure(f, "closed"), 200.0, "{f}");
    assert!(figure(f, "prompt_close_pct") >= 80.0, "{f}");

    let f = finding(&report, "no_reuse", "curl");
    assert_eq!(f["processes"], 200, "{f}");
    assert!(pids(f).iter().all(|p| curls.contains(p)), "{f}");
    assert_eq!(f["endpoint"], scene.server_endpoint());
    assert_eq!(figure(f, "opened"), 200.0, "{f}");
    let g = group(&report, "nginx", "server");
    assert_eq!(
        g["opened"], 200,
        "the workers' opens and closes in one group: {g}"
    );
    assert_eq!(g["closed"], 200, "{g}");
    assert_eq!(
        report["groups"].as_array().unwrap().len(),
        2,
        "curl ×200 is one row: {report:#}"
    );
}
privileged!(real_nginx_keepalive_off_with_curl);

/// nginx closing first (`keepalive_timeout 0`) on a server whose
/// TIME_WAIT table holds 10 sockets (`net.ipv4.tcp_max_tw_buckets`): past
/// the tenth, the kernel frees each closing socket at once instead of
/// keeping it in TIME_WAIT. The report says how many closes got none, and
/// that is the kernel's own count (`TCPTimeWaitOverflow`); none of them
/// is counted or timed as a TIME_WAIT.
fn real_nginx_with_a_full_time_wait_table() {
    let scene = Scene::new();
    let table = 10;
    scene.net.sysctl(
        &scene.net.server_ns,
        "net.ipv4.tcp_max_tw_buckets",
        &table.to_string(),
    );
    let overflows = || {
        scene
            .net
            .tcp_ext(&scene.net.server_ns, "TCPTimeWaitOverflow")
    };
    let before = overflows();
    let mut nginx = Nginx::start(&scene.net.server_ns, scene.target(), "0");
    let tracer = start_report(&scene, "nginx_with_a_full_time_wait_table");
    curl_loop(&scene.net.client_ns, &scene.url(), 100, "");
    let report = finish(tracer);
    nginx.stop();
    let refused_by_kernel = overflows() - before;

    let refused = time_wait_refused(&report, "nginx", table);
    assert_eq!(
        refused, refused_by_kernel,
        "each close the kernel gave no TIME_WAIT, and only those"
    );
    let kept = &group(&report, "nginx", "server")["time_wait_closes"];
    eprintln!(
        "  TIME_WAIT: {kept} kept, {refused} refused (the kernel counted {refused_by_kernel})"
    );
}
privileged!(real_nginx_with_a_full_time_wait_table);

/// nginx timing out idle keep-alive clients after 1 s, and a Go client
/// that pauses 1.5 s between requests: the server closes first, on every
/// connection, as designed. Nothing names either.
fn real_nginx_idle_timeout_is_healthy() {
    let scene = Scene::new();
    let mut nginx = Nginx::start(&scene.net.server_ns, scene.target(), "1s");
    let tracer = start_report(&scene, "nginx_idle_timeout_is_healthy");
    scene
        .goclient(&[
            "-mode",
            "keepalive",
            "-n",
            "14",
            "-interval",
            "1500ms",
            "-workers",
            "2",
        ])
        .finish();
    let report = finish(tracer);
    nginx.stop();
    let g = group(&report, "nginx", "server");
    // 14 requests 1.5 s apart on 2 workers, each on a connection nginx
    // closed after 1 s idle: 11 to 13 connections in runs here (the
    // client sometimes beats the timeout), all closed by the server but
    // each worker's last, which the client's exit may close first.
    let closed = g["closed"].as_u64().unwrap();
    let local = g["closed_by"]["local"].as_u64().unwrap_or(0);
    assert!(closed >= 8, "too few connections to judge: {g}");
    assert!(local + 2 >= closed, "the server closed them: {g}");
    no_finding_names(&report, "nginx");
    no_finding_names(&report, "goclient");
}
privileged!(real_nginx_idle_timeout_is_healthy);

/// A Go client that makes a new Transport per request and never closes it,
/// against nginx with keep-alive: the idle connections pile up on the
/// client; nginx's workers hold the other ends (not the master).
fn real_go_transport_per_request_leaks_idle_connections() {
    let scene = Scene::new();
    let mut nginx = Nginx::start(&scene.net.server_ns, scene.target(), "60s");
    let tracer = start_report(&scene, "go_transport_per_request_leaks_idle_connections");
    let client = scene.goclient(&[
        "-mode",
        "transport",
        "-n",
        "12",
        "-interval",
        "100ms",
        "-duration",
        "60s",
    ]);
    // Idle for longer than the 2 s that make a connection idle.
    let established = wait_until(std::time::Duration::from_secs(20), || {
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &scene.net.client_ns,
                "ss",
                "-Htn",
                "state",
                "established",
            ])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().count() == 12)
    });
    assert!(established, "12 connections open");
    let idle_ms = IDLE_AFTER_NS / 1_000_000;
    scene.wait_silent(&scene.net.client_ns, 12, idle_ms, idle_ms);
    let report = finish(tracer);
    drop(client);
    nginx.stop();

    let f = finding(&report, "leaked_idle", "goclient");
    assert_eq!(figure(f, "established_now"), 12.0, "{f}");
    assert_eq!(f["endpoint"], scene.server_endpoint());
    no_finding_names(&report, "nginx");
    let g = group(&report, "nginx", "server");
    assert_eq!(g["now"]["ESTABLISHED"], 12, "{g}");
    assert_eq!(g["opened"], 12, "{g}");
    let holders: Vec<u32> = g["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| u32::try_from(p.as_u64().unwrap()).unwrap())
        .collect();
    assert!(
        !holders.is_empty() && holders.iter().all(|p| nginx.workers.contains(p)),
        "workers {:?} hold them, not the master {}: {g}",
        nginx.workers,
        nginx.master
    );
}
privileged!(real_go_transport_per_request_leaks_idle_connections);

/// Go `Client.Timeout` of 1 s against a handler stuck for 3 s: the client
/// gives up and waits in FIN_WAIT2 for the server, which keeps CLOSE_WAIT
/// until its handler returns: about 2 s each.
fn real_go_client_timeout_against_a_stuck_handler() {
    let scene = Scene::new();
    let server = scene.goserver(&["-delay", "3s"]);
    let tracer = start_report(&scene, "go_client_timeout_against_a_stuck_handler");
    let mut client = scene.goclient(&[
        "-mode",
        "timeout",
        "-timeout",
        "1s",
        "-n",
        "6",
        "-interval",
        "100ms",
    ]);
    let client_pid = client.pid;
    client.finish();
    // The last handler returns 2 s after its client gave up: until then
    // its connection is in CLOSE_WAIT.
    scene.wait_sockets(&scene.net.server_ns, "every handler returned", |s| {
        !s.iter().any(|s| s.state == "CLOSE-WAIT")
    });
    scene.wait_settled(&[scene.port]);
    let report = finish(tracer);

    let f = finding(&report, "client_timeout_stuck_server", "goclient");
    assert_eq!(f["pid"], client_pid, "{f}");
    assert_eq!(f["endpoint"], scene.server_endpoint());
    about_ms(
        figure(f, "fin_wait2_p50_ms"),
        2000.0,
        "client FIN_WAIT2 p50",
    );
    not_the_network(f);
    let f = finding(&report, "client_timeout_stuck_server", "goserver");
    assert_eq!(f["pid"], server.pid, "{f}");
    assert_eq!(f["local_port"], scene.port);
    assert_eq!(f["remote"], scene.client_endpoint());
    about_ms(
        figure(f, "close_wait_p50_ms"),
        2000.0,
        "server CLOSE_WAIT p50",
    );
    not_the_network(f);
    assert_eq!(comm_of(server.pid), "goserver");
}
privileged!(real_go_client_timeout_against_a_stuck_handler);

/// A Go handler that sets `Connection: close`, and a Go client with a
/// shared pool: the server ends every connection after its answer.
fn real_go_handler_forcing_connection_close() {
    let scene = Scene::new();
    let mut server = scene.goserver(&["-mode", "close"]);
    let tracer = start_report(&scene, "go_handler_forcing_connection_close");
    scene
        .goclient(&["-mode", "keepalive", "-n", "300", "-interval", "20ms"])
        .finish();
    let report = finish(tracer);
    let f = finding(&report, "server_closes", "goserver");
    assert_eq!(f["pid"], server.pid, "{f}");
    assert_eq!(f["endpoint"], format!(":{}", scene.port));
    assert_eq!(figure(f, "closed"), 300.0, "{f}");
    assert!(figure(f, "prompt_close_pct") >= 80.0, "{f}");
    // The client does not reuse connections either: true, and it says the
    // server closed them first.
    let f = finding(&report, "no_reuse", "goclient");
    assert!(
        f["summary"].as_str().unwrap().contains("the server closed"),
        "{f}"
    );
    let server_time_wait = group(&report, "goserver", "server")["now"]["TIME_WAIT"]
        .as_u64()
        .unwrap();
    assert!(
        server_time_wait >= 150,
        "TIME_WAIT lands on the server: {report:#}"
    );

    // Once the server has exited, its TIME_WAIT is still its port's: one
    // row, not one per client port.
    server.stop();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tcplinger"))
        .args(["sockets", "--format", "json", "--port", &scene.port_arg()])
        .output()
        .expect("running tcplinger sockets");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let now: Value = serde_json::from_slice(&out.stdout).expect("sockets JSON");
    let servers: Vec<&Value> = now["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["role"] == "server")
        .collect();
    assert_eq!(servers.len(), 1, "{now:#}");
    assert_eq!(
        servers[0]["endpoint"],
        format!(":{}", scene.port),
        "{now:#}"
    );
    // What the kernel holds on the server's side, by ss: nothing new comes
    // in, and TIME_WAIT lasts 60 s, so both looks see the same sockets.
    let ss = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &scene.net.server_ns,
            "ss",
            "-Htn",
            "state",
            "time-wait",
        ])
        .arg(format!("sport = :{}", scene.port))
        .output()
        .expect("running ss");
    let held = String::from_utf8_lossy(&ss.stdout).lines().count() as u64;
    assert!(held >= 150, "{held} TIME_WAIT on the server side");
    assert_eq!(servers[0]["states"]["TIME_WAIT"], held, "{now:#}");
    assert!(
        servers[0]["comm"].is_null(),
        "no process holds them: {now:#}"
    );
}
privileged!(real_go_handler_forcing_connection_close);

/// A deadline set once in a custom Dial (3 s) on pooled connections, a
/// 100 ms handler: connections die at 3 s of age while in use, and Go's
/// transport retries, so only the lifetimes tell. The last connection is
/// cut short when the test ends it.
fn real_go_deadline_on_pooled_connections() {
    let scene = Scene::new();
    let mut server = scene.goserver(&["-delay", "100ms"]);
    let tracer = start_report(&scene, "go_deadline_on_pooled_connections");
    let mut client = scene.goclient(&[
        "-mode",
        "deadline",
        "-deadline",
        "3s",
        "-duration",
        "20s",
        "-interval",
        "0",
    ]);
    let client_pid = client.pid;
    client.finish();
    server.stop();
    let report = finish(tracer);
    let f = finding(&report, "deadline_pooled", "goclient");
    assert_eq!(f["pid"], client_pid, "{f}");
    assert_eq!(f["endpoint"], scene.server_endpoint());
    about_ms(figure(f, "lifetime_p50_ms"), 3000.0, "lifetime p50");
    assert!(figure(f, "closed") >= 6.0, "{f}");
    not_the_network(f);
    no_finding_names(&report, "goserver");
}
privileged!(real_go_deadline_on_pooled_connections);

/// A pool of 16 (`MaxConnsPerHost`) filled by requests a server reads and
/// never answers; the client gives up after 6 s, before the report ends:
/// a report covers its whole run, not only its last moment.
fn real_go_pool_filled_by_unanswered_requests() {
    let scene = Scene::new();
    let _server = scene.goserver(&["-mode", "noanswer"]);
    let tracer = start_report(&scene, "go_pool_filled_by_unanswered_requests");
    let mut client = scene.goclient(&[
        "-mode",
        "pool",
        "-n",
        "64",
        "-conns",
        "16",
        "-duration",
        "6s",
    ]);
    let client_pid = client.pid;
    client.finish();
    // The client's connections closed with it: traced to their end, the
    // report can tell the wait is over.
    scene.wait_settled(&[scene.port]);
    let report = finish(tracer);
    let f = finding(&report, "unanswered_requests", "goclient");
    assert_eq!(f["pid"], client_pid, "{f}");
    assert_eq!(f["endpoint"], scene.server_endpoint());
    assert_eq!(figure(f, "awaiting_reply"), 16.0, "{f}");
    assert!(figure(f, "oldest_wait_ms") >= 1000.0, "{f}");
    peer_acknowledged(f);
    assert!(
        f["summary"].as_str().unwrap().contains("over by its end"),
        "{f}"
    );
    no_finding_names(&report, "goserver");
}
privileged!(real_go_pool_filled_by_unanswered_requests);

/// `DisableKeepAlives`: a connection per request; the server closes most
/// of them first, because the client asked it to.
fn real_go_disable_keepalives() {
    let scene = Scene::new();
    let _server = scene.goserver(&[]);
    let tracer = start_report(&scene, "go_disable_keepalives");
    let mut client = scene.goclient(&["-mode", "nokeepalive", "-n", "300", "-interval", "20ms"]);
    let client_pid = client.pid;
    client.finish();
    let report = finish(tracer);
    let f = finding(&report, "no_reuse", "goclient");
    assert_eq!(f["pid"], client_pid, "{f}");
    assert_eq!(figure(f, "opened"), 300.0, "{f}");
    assert!(figure(f, "one_exchange_pct") >= 80.0, "{f}");
}
privileged!(real_go_disable_keepalives);

/// Go keep-alive traffic with a shared pool: nothing to report.
fn real_go_keepalive_is_healthy() {
    let scene = Scene::new();
    let _server = scene.goserver(&["-delay", "5ms"]);
    let tracer = start_report(&scene, "go_keepalive_is_healthy");
    scene
        .goclient(&[
            "-mode",
            "keepalive",
            "-n",
            "600",
            "-interval",
            "10ms",
            "-workers",
            "2",
        ])
        .finish();
    let report = finish(tracer);
    no_finding_names(&report, "goserver");
    no_finding_names(&report, "goclient");
    assert!(
        group(&report, "goclient", "client")["opened"]
            .as_u64()
            .unwrap()
            <= 2,
        "{report:#}"
    );
}
privileged!(real_go_keepalive_is_healthy);

/// Python's `http.server` (HTTP/1.0: it closes after every answer) and 100
/// curl runs.
fn real_python_http_server_with_curl() {
    let scene = Scene::new();
    let dir = TempDir::new("www");
    let server = Proc::spawn(
        &scene.net.server_ns,
        "sh",
        &[
            "-c",
            &format!(
                "cd {} && exec {} -u -m http.server --bind {} {}",
                dir.path.display(),
                python(),
                scene.server_ip(),
                scene.port
            ),
        ],
    );
    assert!(wait_until(real::LIMIT, || {
        real::listening(&scene.net.server_ns, scene.port)
    }));
    let tracer = start_report(&scene, "python_http_server_with_curl");
    curl_loop(&scene.net.client_ns, &scene.url(), 100, "");
    let report = finish(tracer);
    let comm = comm_of(server.pid);
    let f = finding(&report, "server_closes", &comm);
    assert_eq!(f["pid"], server.pid, "{f}");
    assert_eq!(figure(f, "closed"), 100.0, "{f}");
}
privileged!(real_python_http_server_with_curl);

/// A prefork server: the parent listens and forks a child that accepts
/// and never reads or closes. The leak is the child's, with its fds.
fn real_python_prefork_close_wait_leak() {
    let scene = Scene::new();
    let (server, child) = forkserver(&scene);
    let tracer = start_report(&scene, "python_prefork_close_wait_leak");
    // curl gives up after 0.5 s and closes: the server side is left in
    // CLOSE_WAIT, in the child.
    curl_loop(&scene.net.client_ns, &scene.url(), 10, "-m 0.5");
    let seen = scene.wait_sockets(&scene.net.server_ns, "10 in CLOSE_WAIT", |s| {
        s.iter().filter(|s| s.state == "CLOSE-WAIT").count() == 10
    });
    // The scenario itself: old enough to be a leak. Timed from when they
    // were seen in CLOSE_WAIT, after the kernel put them there.
    let leak_age = std::time::Duration::from_secs_f64(CLOSE_WAIT_LEAK_AGE_MS / 1000.0);
    std::thread::sleep(leak_age.saturating_sub(seen.elapsed()));
    let report = finish(tracer);
    let f = finding(&report, "close_wait_leak", &comm_of(child));
    assert_eq!(
        f["pid"], child,
        "the child holds them, not the parent {}: {f}",
        server.pid
    );
    assert_eq!(figure(f, "close_wait_now"), 10.0, "{f}");
    assert_eq!(
        f["evidence"]["fds"].as_array().map(Vec::len),
        Some(10),
        "{f}"
    );
    assert_eq!(f["processes"], 1, "{f}");
}
privileged!(real_python_prefork_close_wait_leak);

/// A client whose requests run on threads it names (as a JVM, Go or tokio
/// program's are): it is named by its process, not its threads.
fn real_python_threaded_client_is_named_by_its_process() {
    let scene = Scene::new();
    let _server = scene.goserver(&[]);
    let tracer = start_report(&scene, "python_threaded_client_is_named_by_its_process");
    let script = sources().join("python/threadclient.py");
    let mut client = Proc::spawn(
        &scene.net.client_ns,
        python(),
        &[
            &script.to_string_lossy(),
            &scene.server_ip().to_string(),
            &scene.port_arg(),
            "4",
            "40",
            "0.02",
        ],
    );
    let comm = client.comm();
    client.finish();
    let report = finish(tracer);
    let f = finding(&report, "no_reuse", &comm);
    assert_eq!(f["pid"], client.pid, "{f}");
    assert_eq!(f["processes"], 1, "{f}");
    let threads: Vec<&Value> = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| {
            g["comm"]
                .as_str()
                .is_some_and(|c| c.starts_with("req-worker"))
        })
        .collect();
    assert!(
        threads.is_empty(),
        "groups named after threads: {threads:#?}"
    );
}
privileged!(real_python_threaded_client_is_named_by_its_process);

/// Eight idle connections opened before the report starts, closed when
/// their process exits 8 s later: their lifetime is unknown, so no
/// lifetime finding; they are a client's.
fn real_connections_older_than_the_tracer_prove_no_deadline() {
    let scene = Scene::new();
    let _server = scene.goserver(&[]);
    let mut client = scene.goclient(&[
        "-mode",
        "transport",
        "-n",
        "8",
        "-interval",
        "10ms",
        "-duration",
        "8s",
    ]);
    let open = wait_until(std::time::Duration::from_secs(20), || {
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &scene.net.client_ns,
                "ss",
                "-Htn",
                "state",
                "established",
            ])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().count() == 8)
    });
    assert!(open, "8 connections open before the report");
    let tracer = start_report(
        &scene,
        "connections_older_than_the_tracer_prove_no_deadline",
    );
    client.finish();
    // Their closes traced to the end, so all eight count as closed.
    scene.wait_settled(&[scene.port]);
    let report = finish(tracer);
    no_finding_names(&report, "goclient");
    let g = group(&report, "goclient", "client");
    assert_eq!(g["closed"], 8, "{g}");
    assert_eq!(g["incomplete"], 8, "{g}");
    assert!(g["lifetime_ms"].is_null(), "no lifetime known: {g}");
}
privileged!(real_connections_older_than_the_tracer_prove_no_deadline);

/// A daemon whose group table is full of programs that came and went
/// still reports a CLOSE_WAIT leak that starts later, naming the process
/// holding the sockets; and says when it is over.
fn real_daemon_reports_a_late_leak_among_many_programs() {
    let scene = Scene::new();
    let listen = loopback_addr().to_string();
    let tracer = Tcplinger::start(&[
        "daemon",
        "--listen",
        &listen,
        "--log-format",
        "json",
        "--max-groups",
        "4",
        "--port",
        &scene.port_arg(),
    ]);
    // Twelve short-lived programs of different names, each a group.
    let bin = TempDir::new("progs");
    let go_server = scene.goserver(&[]);
    for i in 0..12 {
        let name = bin.path.join(format!("prog{i}"));
        std::fs::copy("/usr/bin/curl", &name).expect("copying curl");
        let mut p = Proc::spawn(
            &scene.net.client_ns,
            &name,
            &["-s", "-o", "/dev/null", &scene.url()],
        );
        p.finish();
    }
    drop(go_server);
    let (mut server, child) = forkserver(&scene);
    let child_comm = comm_of(child);
    curl_loop(&scene.net.client_ns, &scene.url(), 6, "-m 0.5");
    let leak = |lines: &[Value]| {
        lines
            .iter()
            .any(|l| l["event"] == "finding" && l["pathology"] == "close_wait_leak")
    };
    assert!(
        tracer.wait_for(std::time::Duration::from_secs(30), leak),
        "no leak finding: {:?}",
        tracer.stderr_lines()
    );
    // The leak ends with the server.
    server.stop();
    let over = |lines: &[Value]| {
        lines
            .iter()
            .any(|l| l["event"] == "finding_resolved" && l["pathology"] == "close_wait_leak")
    };
    assert!(
        tracer.wait_for(std::time::Duration::from_secs(40), over),
        "no finding_resolved"
    );
    let run = tracer.stop();
    let f = run
        .lines
        .iter()
        .find(|l| l["event"] == "finding" && l["pathology"] == "close_wait_leak")
        .unwrap();
    assert_eq!(f["pid"], child, "{f}");
    assert_eq!(f["comm"], child_comm.as_str(), "{f}");
}
privileged!(real_daemon_reports_a_late_leak_among_many_programs);

/// `report --format html` of real traffic (Python's http.server, a `curl`
/// per request), loaded in a real browser (Debian's Chromium, headless):
/// every chart draws something, and the page fetches nothing.
fn real_html_report_renders_in_chromium() {
    let scene = Scene::new();
    let _server = Proc::spawn(
        &scene.net.server_ns,
        python(),
        &[
            "-m",
            "http.server",
            "--bind",
            &scene.server_ip().to_string(),
            &scene.port_arg(),
        ],
    );
    assert!(wait_until(real::LIMIT, || {
        real::listening(&scene.net.server_ns, scene.port)
    }));
    let dir = TempDir::new("html");
    let page = dir.path.join("report.html");
    let tracer = Tcplinger::start(&[
        "report",
        "--format",
        "html",
        "--output",
        &page.to_string_lossy(),
        "--port",
        &scene.port_arg(),
        "--duration",
        "30s",
    ]);
    curl_loop(&scene.net.client_ns, &scene.url(), 60, "");
    let run = tracer.stop();
    assert!(run.status.success(), "{:?}", run.stderr);
    let html = std::fs::read_to_string(&page).expect("the page");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing fetched"
    );
    // A page that loads the report and says what drew: each chart's box
    // as laid out, and its marks.
    let probe = dir.path.join("probe.html");
    std::fs::write(
        &probe,
        r#"<!doctype html><html><body><iframe id="r" src="report.html" width="1200" height="3000"></iframe><pre id="result">pending</pre><script>
document.getElementById('r').addEventListener('load', () => {
  const d = document.getElementById('r').contentDocument;
  const charts = [...d.querySelectorAll('svg.chart')];
  const drawn = charts.filter(s => { const b = s.getBBox(); const marks = [...s.querySelectorAll('rect')].filter(r => r.getBBox().height > 0.5); return b.width > 0 && b.height > 0 && marks.length > 0; });
  document.getElementById('result').textContent = JSON.stringify({charts: charts.length, drawn: drawn.length, findings: d.querySelectorAll('.finding').length, groups: d.querySelectorAll('.group').length});
});
</script></body></html>"#,
    )
    .unwrap();
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--allow-file-access-from-files",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!("file://{}", probe.display()))
        .output()
        .expect("running chromium (Debian package chromium)");
    let dom = String::from_utf8_lossy(&out.stdout);
    let result = dom
        .split("<pre id=\"result\">")
        .nth(1)
        .and_then(|r| r.split("</pre>").next())
        .unwrap_or_else(|| {
            panic!(
                "no result in {dom}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let counts: Value = serde_json::from_str(result)
        .unwrap_or_else(|e| panic!("{e}: {result}: {}", String::from_utf8_lossy(&out.stderr)));
    // The findings' timeline, and the server's and curl's closes over time
    // and lifetimes at least.
    assert!(counts["charts"].as_u64() >= Some(5), "{counts}");
    assert_eq!(
        counts["drawn"], counts["charts"],
        "every chart draws: {counts}"
    );
    assert!(counts["findings"].as_u64() >= Some(1), "{counts}");
    assert!(counts["groups"].as_u64() >= Some(2), "{counts}");
    // A picture for whoever reads the run.
    let shot = std::env::temp_dir().join("tcplinger-report.png");
    let _ = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1200,2000",
        ])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output();
}
privileged!(real_html_report_renders_in_chromium);
