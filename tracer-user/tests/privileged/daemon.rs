//! `daemon` on real TCP: its metrics against known traffic, promtool and a real Prometheus scraping it, abuse of its HTTP endpoint, SIGTERM under load, config files, bounded series.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::support::{
    daemon::{get, scrape, start_daemon, value},
    peer::Peer,
    require_root,
    scene::{Closer, Pace, Scene, fresh_port, loopback_addr},
    tmux::Tmux,
    tracer::{Tcplinger, our_programs_loaded, replayed},
    wait_until,
};

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server on loopback scraping `target` every second; killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Self {
        let dir = std::env::temp_dir().join(format!("tcplinger-prom-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: tcplinger\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = loopback_addr();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus (Debian package prometheus)");
        Self { child, addr, dir }
    }

    /// Runs a PromQL instant query; the `data.result` array.
    fn query(&self, promql: &str) -> Option<Vec<Value>> {
        let request = format!(
            "GET /api/v1/query?query={} HTTP/1.0\r\nHost: p\r\n\r\n",
            percent_encode(promql)
        );
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(request.as_bytes()).ok()?;
        let mut response = String::new();
        s.read_to_string(&mut response).ok()?;
        let (_, body) = response.split_once("\r\n\r\n")?;
        let v: Value = serde_json::from_str(body).ok()?;
        v["data"]["result"].as_array().cloned()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one scenario, checked metric by metric"
)]
fn daemon_metrics_match_traffic_and_prometheus_scrapes_them() {
    let scene = Scene::new();
    let listen = loopback_addr();
    let daemon = start_daemon(listen, &["--port", &scene.port_arg()]);
    // Five connections, each closed by the client first.
    scene.converse(Closer::Client, 5, Pace::OneAtATime);
    let client = ["comm=\"tl-client\""];
    // Closes are counted as they complete; the socket gauges at the next
    // once-a-second refresh.
    let complete = wait_until(Duration::from_secs(10), || {
        let text = scrape(listen);
        value(&text, "tcplinger_connections_closed_total", &client) == 5.0
            && value(
                &text,
                "tcplinger_sockets",
                &["comm=\"tl-client\"", "state=\"TIME_WAIT\""],
            ) == 5.0
    });
    let text = scrape(listen);
    assert!(complete, "{text}");
    assert_eq!(
        value(
            &text,
            "tcplinger_connections_closed_total",
            &["comm=\"tl-client\"", "closed_by=\"local\""]
        ),
        5.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "tcplinger_connections_closed_total",
            &["comm=\"tl-server\"", "closed_by=\"remote\""]
        ),
        5.0,
        "{text}"
    );
    assert_eq!(
        value(&text, "tcplinger_connections_opened_total", &client),
        5.0,
        "{text}"
    );
    assert_eq!(
        value(&text, "tcplinger_fin_wait2_seconds_count", &client),
        5.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "tcplinger_close_wait_seconds_count",
            &["comm=\"tl-server\""]
        ),
        5.0,
        "{text}"
    );
    assert_eq!(
        value(&text, "tcplinger_connection_lifetime_seconds_count", &[]),
        10.0,
        "{text}"
    );
    // The client's timewait sockets now, attributed to it.
    assert_eq!(
        value(
            &text,
            "tcplinger_sockets",
            &["comm=\"tl-client\"", "state=\"TIME_WAIT\""]
        ),
        5.0,
        "{text}"
    );
    // One record a socket: the kernel folds each socket's steps and writes
    // them when its life ends; the listener's steps are written as they
    // happen (its LISTEN, and its CLOSE if it has closed).
    let events = value(&text, "tcplinger_events_total", &[]);
    assert!((11.0..=12.0).contains(&events), "{text}");
    assert_eq!(
        value(&text, "tcplinger_events_dropped_total", &[]),
        0.0,
        "{text}"
    );
    assert!(
        text.contains(&format!("remote_addr=\"{}\"", scene.server_ip())),
        "{text}"
    );

    // promtool's linter accepts the exposition.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool (Debian package prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // A real Prometheus scrapes it and answers PromQL about it.
    let prometheus = Prometheus::start(listen);
    let query = "sum by (closed_by) (tcplinger_connections_closed_total{comm=\"tl-client\"})";
    let mut answer = None;
    let found = wait_until(Duration::from_secs(30), || {
        answer = prometheus.query(query);
        answer.as_ref().is_some_and(|r| !r.is_empty())
    });
    assert!(found, "no answer to {query}: {answer:?}");
    let result = answer.unwrap();
    assert_eq!(result.len(), 1, "{result:?}");
    assert_eq!(result[0]["metric"]["closed_by"], "local");
    assert_eq!(result[0]["value"][1], "5");
    drop(prometheus);

    let run = daemon.stop();
    assert!(run.status.success(), "{:?}", run.stderr);
}
privileged!(daemon_metrics_match_traffic_and_prometheus_scrapes_them);

fn daemon_survives_abuse() {
    let scene = Scene::new();
    let listen = loopback_addr();
    let daemon = start_daemon(listen, &["--port", &scene.port_arg()]);

    // Garbage, oversized headers, wrong paths and methods.
    let (status, _) = get(listen, "NOT HTTP AT ALL\r\n\r\n");
    assert!(status == 400 || status == 0, "garbage answered {status}");
    // Over the 8 KiB limit, all of it read by the daemon before it answers
    // (more, left unread, would turn its close into a reset, and the
    // client would see no answer at all).
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9_000)
    );
    assert_eq!(get(listen, &huge).0, 431, "oversized headers");
    assert_eq!(get(listen, "GET /nope HTTP/1.0\r\n\r\n").0, 404);
    assert_eq!(
        get(
            listen,
            "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n"
        )
        .0,
        405
    );
    assert_eq!(get(listen, "DELETE /healthz HTTP/1.0\r\n\r\n").0, 405);

    // A thousand clients that start a request and never finish it.
    raise_fd_limit();
    let slow: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut s = TcpStream::connect_timeout(&listen, Duration::from_secs(5))
                .expect("slow connection");
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n")
                .unwrap();
            s
        })
        .collect();
    let start = Instant::now();
    assert_eq!(get(listen, "GET /healthz HTTP/1.0\r\n\r\n").0, 200);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "healthz took {:?}",
        start.elapsed()
    );
    // Tracing goes on meanwhile.
    scene.converse(Closer::Client, 3, Pace::OneAtATime);
    let traced = wait_until(Duration::from_secs(10), || {
        value(
            &scrape(listen),
            "tcplinger_connections_closed_total",
            &["comm=\"tl-client\""],
        ) == 3.0
    });
    assert!(traced, "{}", scrape(listen));
    drop(slow);
    assert_eq!(get(listen, "GET /healthz HTTP/1.0\r\n\r\n").0, 200);
    let run = daemon.stop();
    assert!(run.status.success(), "{:?}", run.stderr);
}
privileged!(daemon_survives_abuse);

fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with valid pointers.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit);
        limit.rlim_cur = limit.rlim_max.min(65536);
        libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
    }
}

fn daemon_sigterm_under_load_exits_fast_and_detaches() {
    let scene = Scene::new();
    let listen = loopback_addr();
    let daemon = start_daemon(listen, &["--port", &scene.port_arg()]);
    assert!(
        !our_programs_loaded().is_empty(),
        "the daemon's programs are loaded"
    );
    let _server = scene.server(&["--count", "100000", "--close", "after-eof"]);
    let _client = scene.client(&["--count", "100000", "--close", "first"]);
    // Under way: connections are being traced.
    assert!(wait_until(Duration::from_secs(10), || {
        value(&scrape(listen), "tcplinger_connections_closed_total", &[]) > 100.0
    }));
    let start = Instant::now();
    daemon.signal(libc::SIGTERM);
    let run = daemon.stop_after_signal();
    let took = start.elapsed();
    assert_eq!(run.status.code(), Some(0), "{:?}", run.stderr);
    assert!(
        took < Duration::from_secs(2),
        "SIGTERM to exit took {took:?}"
    );
    // The kernel frees a released program after an RCU grace period (for
    // tracing programs, an RCU-tasks one: up to a second or so), so they
    // may still be listed for a moment after the exit.
    let gone = wait_until(Duration::from_secs(5), || our_programs_loaded().is_empty());
    assert!(gone, "programs left behind: {:?}", our_programs_loaded());
}
privileged!(daemon_sigterm_under_load_exits_fast_and_detaches);

fn daemon_bounds_endpoint_series() {
    let scene = Scene::new();
    let listen = loopback_addr();
    let daemon = start_daemon(listen, &["--max-endpoints", "3"]);
    // Ten endpoints (one server port each), one connection to each.
    let ports: Vec<u16> = (0..10).map(|_| fresh_port()).collect();
    let servers: Vec<Peer> = ports
        .iter()
        .map(|&port| scene.server_on(port, &["--close", "after-eof"]))
        .collect();
    for &port in &ports {
        scene.client_of(port, &["--close", "first"]).finish();
    }
    servers.into_iter().for_each(Peer::finish);
    let client = ["comm=\"tl-client\""];
    let all = wait_until(Duration::from_secs(10), || {
        value(
            &scrape(listen),
            "tcplinger_connections_closed_total",
            &client,
        ) == 10.0
    });
    let text = scrape(listen);
    assert!(all, "{text}");
    let series = text
        .lines()
        .filter(|l| {
            l.starts_with("tcplinger_connections_closed_total{") && l.contains("comm=\"tl-client\"")
        })
        .count();
    assert!(
        series <= 4,
        "{series} series for --max-endpoints 3:\n{text}"
    );
    assert!(text.contains("remote_addr=\"other\""), "{text}");
    // Nothing folded silently: every close under the endpoint "other" is
    // counted as folded (both move together, under one lock).
    let folded = value(
        &text,
        "tcplinger_connections_folded_total",
        &["label=\"endpoint\""],
    );
    assert!(folded >= 7.0, "{text}");
    assert_eq!(
        folded,
        value(
            &text,
            "tcplinger_connections_closed_total",
            &["remote_addr=\"other\""]
        ),
        "{text}"
    );
    let run = daemon.stop();
    assert!(run.status.success(), "{:?}", run.stderr);
}
privileged!(daemon_bounds_endpoint_series);

fn daemon_config_file_is_checked() {
    require_root();
    let dir = std::env::temp_dir().join(format!("tcplinger-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "listen = \"127.0.0.1:19999\"\nport = [80, 443]\nmax-endpoints = 10\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tcplinger"))
        .args(["daemon", "--check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("listen = \"127.0.0.1:19999\"") && printed.contains("port = [80, 443]"),
        "{printed}"
    );
    // A flag wins over the file.
    let out = Command::new(env!("CARGO_BIN_EXE_tcplinger"))
        .args([
            "daemon",
            "--check-config",
            "--max-endpoints",
            "5",
            "--config",
        ])
        .arg(&good)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("max-endpoints = 5"));
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:19999\"\n\nmax-sockets = -3\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tcplinger"))
        .args(["daemon", "--check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("bad.toml:3: max-sockets"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
privileged!(daemon_config_file_is_checked);

/// Where cgroup v2 is mounted (a hybrid host has it at /sys/fs/cgroup/unified).
fn cgroup2_root() -> std::path::PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .find_map(|l| {
            let (fields, fstype) = l.split_once(" - ")?;
            fstype
                .starts_with("cgroup2 ")
                .then(|| fields.split(' ').nth(4).map(std::path::PathBuf::from))?
        })
        .expect("cgroup v2 mounted")
}

/// A cgroup made for the test, removed (with its children) on drop.
struct TestCgroup {
    dirs: Vec<std::path::PathBuf>,
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for dir in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Two connections to a server moved into `cgroup` (on port `inside`) and
/// two to one outside it; returns the pid of the one inside.
fn contained_and_free(scene: &Scene, inside: u16, outside: u16, cgroup: &std::path::Path) -> u32 {
    let contained = scene.server_on(inside, &["--count", "2", "--close", "after-eof"]);
    std::fs::write(cgroup.join("cgroup.procs"), contained.pid.to_string())
        .expect("moving the server into the cgroup");
    let free = scene.server_on(outside, &["--count", "2", "--close", "after-eof"]);
    for port in [inside, outside] {
        scene
            .client_of(port, &["--count", "2", "--close", "first"])
            .finish();
    }
    let pid = contained.pid;
    contained.finish();
    free.finish();
    pid
}

fn daemon_labels_containers_and_filters_by_cgroup() {
    let scene = Scene::new();
    let (inside, outside) = (scene.port, fresh_port());
    let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let name = format!("tltest-{}", std::process::id());
    let root = cgroup2_root();
    let parent = root.join(&name);
    let scope = parent.join(format!("docker-{id}.scope"));
    std::fs::create_dir_all(&scope).expect("creating a cgroup");
    let cgroups = TestCgroup {
        dirs: vec![parent, scope.clone()],
    };
    let listen = loopback_addr();
    let ports = format!("{inside},{outside}");
    let daemon = start_daemon(listen, &["--port", &ports, "--cgroup", &format!("/{name}")]);
    contained_and_free(&scene, inside, outside, &scope);
    let seen = wait_until(Duration::from_secs(10), || {
        value(
            &scrape(listen),
            "tcplinger_connections_closed_total",
            &["comm=\"tl-server\""],
        ) == 2.0
    });
    let text = scrape(listen);
    assert!(seen, "{text}");
    let closed: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("tcplinger_connections_closed_total{"))
        .collect();
    assert_eq!(
        closed.len(),
        1,
        "only the contained server's connections: {closed:#?}"
    );
    assert!(
        closed[0].contains(&format!("container_id=\"{id}\"")),
        "{closed:?}"
    );
    assert!(
        closed[0].contains(&format!("port=\"{inside}\"")),
        "{closed:?}"
    );
    let run = daemon.stop();
    assert!(run.status.success(), "{:?}", run.stderr);
    drop(cgroups);
}
privileged!(daemon_labels_containers_and_filters_by_cgroup);

/// `record --cgroup`: the recording keeps the cgroups of the owners it
/// saw, and its replays (`report`, `watch --from`, no root) count only the
/// sockets of processes under the path, as the daemon's `--cgroup` does.
fn record_cgroup_holds_for_its_replays() {
    let scene = Scene::new();
    let (inside, outside) = (scene.port, fresh_port());
    let name = format!("tlrec-{}", std::process::id());
    let parent = cgroup2_root().join(&name);
    std::fs::create_dir_all(&parent).expect("creating a cgroup");
    let cgroups = TestCgroup {
        dirs: vec![parent.clone()],
    };
    let dir = crate::support::real::TempDir::new("record-cgroup");
    let path = dir.path.join("cgroup.tlrec");
    let ports = format!("{inside},{outside}");
    let prefix = format!("/{name}");
    let record = Tcplinger::start(&[
        "record",
        "-o",
        path.to_str().unwrap(),
        "--port",
        &ports,
        "--cgroup",
        &prefix,
    ]);
    let contained_pid = contained_and_free(&scene, inside, outside, &parent);
    let replay = |args: &[&str]| replayed(args, &path);
    // Stopped at once: owners looked up only as the recording ended still
    // count in its replays.
    let run = record.stop();
    assert!(run.status.success(), "{:?}", run.stderr);
    let report: Value = serde_json::from_str(&replay(&["report", "--format", "json"])).unwrap();
    let groups = report["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "only the contained server: {report:#}");
    assert_eq!(groups[0]["pid"], contained_pid, "{report:#}");
    assert_eq!(groups[0]["closed"], 2, "{report:#}");
    let records: Vec<Value> = replay(&["watch", "--format", "json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{records:#?}");
    assert!(
        records.iter().all(|r| r["pid"] == contained_pid),
        "{records:#?}"
    );
    drop(cgroups);
}
privileged!(record_cgroup_holds_for_its_replays);

/// A node's files as containerd leaves them for a running container of
/// pod `shop/web-7d9f8-x2x4q`, container `nginx`.
fn containerd_node(id: &str) -> crate::support::real::TempDir {
    let node = crate::support::real::TempDir::new("node");
    let bundle = node.path.join(format!(
        "run/containerd/io.containerd.runtime.v2.task/k8s.io/{id}"
    ));
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(
        bundle.join("config.json"),
        r#"{"ociVersion":"1.1.0","annotations":{
            "io.kubernetes.cri.container-type":"container",
            "io.kubernetes.cri.sandbox-namespace":"shop",
            "io.kubernetes.cri.sandbox-name":"web-7d9f8-x2x4q",
            "io.kubernetes.cri.container-name":"nginx"}}"#,
    )
    .unwrap();
    node
}

/// The report's group of the contained server names its pod; the free
/// one's names none.
fn report_names_the_pod(report: &crate::support::tracer::Finished, inside: u16, outside: u16) {
    // The report names the pod of the group's process.
    let groups = report.lines[0]["groups"].as_array().unwrap().clone();
    let server = groups
        .iter()
        .find(|g| g["comm"] == "tl-server" && g["local_port"] == inside)
        .unwrap_or_else(|| panic!("no contained server group: {groups:?}"));
    assert_eq!(server["namespace"], "shop", "{server}");
    assert_eq!(server["pod"], "web-7d9f8-x2x4q", "{server}");
    assert_eq!(server["container"], "nginx", "{server}");
    let free = groups
        .iter()
        .find(|g| g["comm"] == "tl-server" && g["local_port"] == outside)
        .unwrap_or_else(|| panic!("no free server group: {groups:?}"));
    assert!(free.get("pod").is_none(), "not in a pod: {free}");
}

/// `top` on a wide terminal, started before the traffic.
fn top_on_the_node(ports: &str, node_root: &str) -> Tmux {
    let tmux = Tmux::sized(120, 30);
    let command = format!(
        "{} top --port {ports} --node-root {node_root}",
        env!("CARGO_BIN_EXE_tcplinger"),
    );
    tmux.run(&["send-keys", "-t", "top", &command, "Enter"]);
    tmux.wait_for("the table", |s| s.contains("PROCESS"));
    tmux
}

/// The contained server's row names its pod in the POD column; the free
/// server's row has none.
fn top_names_the_pod(tmux: &Tmux) {
    let screen = tmux.wait_for("the pod's row", |s| {
        s.lines()
            .any(|l| l.contains("tl-server") && l.contains("shop/web-7d9f8-x2x4q"))
    });
    let header = screen.lines().find(|l| l.contains("PROCESS")).unwrap();
    assert!(header.contains("POD"), "{screen}");
    tmux.wait_for("the free server's row", |s| {
        s.lines()
            .filter(|l| l.contains("tl-server"))
            .any(|l| !l.contains("shop/"))
    });
    tmux.run(&["send-keys", "-t", "top", "q"]);
}

/// A pod's container as a Kubernetes node has it: a real cgroup under the
/// kubelet's systemd layout and containerd's bundle with its annotations
/// (in a directory given as the node's root): the daemon labels its series
/// with the namespace, pod and container, `watch` prints them in its
/// records, and `--pod` selects by them.
fn kubernetes_names_come_from_the_nodes_files() {
    let scene = Scene::new();
    let (inside, outside) = (scene.port, fresh_port());
    let id = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    let uid = "1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901";
    let name = format!("tlkube-{}", std::process::id());
    let parent = cgroup2_root().join(&name);
    let pod_slice = parent.join(format!("kubepods-besteffort-pod{uid}.slice"));
    let scope = pod_slice.join(format!("cri-containerd-{id}.scope"));
    std::fs::create_dir_all(&scope).expect("creating a cgroup");
    let cgroups = TestCgroup {
        dirs: vec![parent, pod_slice, scope.clone()],
    };
    let node = containerd_node(id);
    let node_root = node.path.to_string_lossy().to_string();
    let ports = format!("{inside},{outside}");
    let listen = loopback_addr();
    let daemon = start_daemon(listen, &["--port", &ports, "--node-root", &node_root]);
    // `command` in JSON on the node's files, `extra` after.
    let start = |command: &str, extra: &[&str]| {
        let mut a = vec![
            command,
            "--format",
            "json",
            "--port",
            &ports,
            "--node-root",
            &node_root,
        ];
        a.extend_from_slice(extra);
        Tcplinger::start(&a)
    };
    let all = start("watch", &[]);
    let one_pod = start("watch", &["--pod", "shop/web-7d9f8-x2x4q"]);
    let report = start("report", &[]);
    let top = top_on_the_node(&ports, &node_root);
    contained_and_free(&scene, inside, outside, &scope);
    top_names_the_pod(&top);
    let labelled = wait_until(Duration::from_secs(10), || {
        value(
            &scrape(listen),
            "tcplinger_connections_closed_total",
            &[
                "namespace=\"shop\"",
                "pod=\"web-7d9f8-x2x4q\"",
                "container=\"nginx\"",
            ],
        ) == 2.0
    });
    assert!(labelled, "{}", scrape(listen));
    let server_records =
        |lines: &[Value]| lines.iter().filter(|l| l["comm"] == "tl-server").count();
    assert!(all.wait_for(Duration::from_secs(10), |l| server_records(l) == 4));
    assert!(one_pod.wait_for(Duration::from_secs(10), |l| server_records(l) == 2));
    let all = all.stop();
    let one_pod = one_pod.stop();
    report_names_the_pod(&report.stop(), inside, outside);
    let in_pod = |l: &&Value| l["pod"] == "web-7d9f8-x2x4q";
    let named: Vec<&Value> = all.lines.iter().filter(in_pod).collect();
    assert_eq!(
        named.len(),
        2,
        "the contained server's two: {:?}",
        all.lines
    );
    for l in &named {
        assert_eq!(l["namespace"], "shop", "{l}");
        assert_eq!(l["container"], "nginx", "{l}");
        assert_eq!(l["lport"], inside, "{l}");
    }
    assert!(
        one_pod.lines.iter().all(|l| l["pod"] == "web-7d9f8-x2x4q"),
        "--pod keeps only the pod's: {:?}",
        one_pod.lines
    );
    let run = daemon.stop();
    assert!(run.status.success(), "{:?}", run.stderr);
    drop(cgroups);
}
privileged!(kubernetes_names_come_from_the_nodes_files);

/// The daemon's own sockets (the scrapes of its metrics) are left out by
/// default, and judged with `--include-self`: traced on its own port
/// only, a scraper's connections are its whole traffic. With the flag
/// first, which shows the scrapes are counted well within the wait the
/// default run is then given to count none.
fn the_daemons_own_scrapes_are_left_out_unless_asked() {
    for include in [true, false] {
        let listen = loopback_addr();
        let port = listen.port().to_string();
        let mut args = vec!["--port", port.as_str()];
        if include {
            args.push("--include-self");
        }
        let daemon = start_daemon(listen, &args);
        // Each scrape is a connection of its own (HTTP/1.0, closed).
        let ours = |text: &str| {
            value(
                text,
                "tcplinger_connections_closed_total",
                &["comm=\"tcplinger\""],
            )
        };
        let seen = wait_until(Duration::from_secs(15), || ours(&scrape(listen)) >= 3.0);
        let last = scrape(listen);
        let run = daemon.stop();
        assert!(run.status.success(), "{:?}", run.stderr);
        if include {
            assert!(seen, "its scrapes counted with --include-self: {last}");
        } else {
            assert!(!seen, "its own scrapes counted: {last}");
            assert_eq!(ours(&last), 0.0, "{last}");
            assert!(
                !last.contains("comm=\"tcplinger\""),
                "a series of its own: {last}"
            );
        }
    }
}
privileged!(the_daemons_own_scrapes_are_left_out_unless_asked);
