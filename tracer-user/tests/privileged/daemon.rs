//! `daemon` on real TCP: its metrics against known traffic, promtool and a real Prometheus scraping it, abuse of its HTTP endpoint, SIGTERM under load, config files, bounded series.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::support::{netns::NetPair, peer::Peer, require_root, tracer::Tcplinger, wait_until};

/// A loopback port nobody listens on now.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn start_daemon(listen: SocketAddr, extra: &[&str]) -> Tcplinger {
    let listen = listen.to_string();
    let mut args = vec![
        "daemon",
        "--listen",
        listen.as_str(),
        "--log-format",
        "json",
    ];
    args.extend_from_slice(extra);
    Tcplinger::start(&args)
}

/// One HTTP/1.0 request; the status code and the body.
fn get(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .expect("connecting to the daemon");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = s.read_to_string(&mut response);
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub(crate) fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "GET /metrics HTTP/1.0\r\nHost: t\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the series whose line starts with `series`, e.g.
/// `tcplinger_events_total` or `...{labels}`, summed over label sets that
/// contain every one of `labels`.
pub(crate) fn value(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(metric)
                && l[metric.len()..].starts_with(['{', ' '])
                && labels.iter().all(|want| l.contains(want))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

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
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
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

pub fn daemon_metrics_match_traffic_and_prometheus_scrapes_them() {
    require_root();
    let net = NetPair::new();
    let port = 18401u16;
    let target = SocketAddr::new(net.server_v4, port);
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let daemon = start_daemon(listen, &["--port", &port.to_string()]);
    // Five connections, each closed by the client first.
    let server = Peer::server(
        &net.server_ns,
        target,
        &["--count", "5", "--close", "after-eof"],
    );
    Peer::client(
        &net.client_ns,
        target,
        &["--count", "5", "--close", "first"],
    )
    .finish();
    server.finish();
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
    // At least 7 records a connection (the kernel leaves out the steps the
    // tracker rebuilds: connect, accept, the orphan's FIN_WAIT2).
    assert!(
        value(&text, "tcplinger_events_total", &[]) >= 35.0,
        "{text}"
    );
    assert_eq!(
        value(&text, "tcplinger_events_dropped_total", &[]),
        0.0,
        "{text}"
    );
    assert!(
        text.contains(&format!("remote_addr=\"{}\"", net.server_v4)),
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

pub fn daemon_survives_abuse() {
    require_root();
    let net = NetPair::new();
    let port = 18402u16;
    let target = SocketAddr::new(net.server_v4, port);
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let daemon = start_daemon(listen, &["--port", &port.to_string()]);

    // Garbage, oversized headers, wrong paths and methods.
    let (status, _) = get(listen, "NOT HTTP AT ALL\r\n\r\n");
    assert!(status == 400 || status == 0, "garbage answered {status}");
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let (status, _) = get(listen, &huge);
    assert!(
        status == 431 || status == 0,
        "oversized headers answered {status}"
    );
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
    let server = Peer::server(
        &net.server_ns,
        target,
        &["--count", "3", "--close", "after-eof"],
    );
    Peer::client(
        &net.client_ns,
        target,
        &["--count", "3", "--close", "first"],
    )
    .finish();
    server.finish();
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

pub(crate) fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with valid pointers.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max.min(65536);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

/// Names of our programs as the kernel lists them (truncated to 15 bytes).
const OUR_PROGRAMS: [&str; 6] = [
    "inet_sock_set_s",
    "tcp_destroy_soc",
    "tcp_send_reset",
    "tcp_receive_res",
    "sock_send_lengt",
    "sock_recv_lengt",
];

pub(crate) fn our_programs_loaded() -> Vec<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| p.name_as_str().map(str::to_string))
        .filter(|name| OUR_PROGRAMS.iter().any(|ours| name.starts_with(ours)))
        .collect()
}

pub fn daemon_sigterm_under_load_exits_fast_and_detaches() {
    require_root();
    let net = NetPair::new();
    let port = 18403u16;
    let target = SocketAddr::new(net.server_v4, port);
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let daemon = start_daemon(listen, &["--port", &port.to_string()]);
    assert!(
        !our_programs_loaded().is_empty(),
        "the daemon's programs are loaded"
    );
    let _server = Peer::server(
        &net.server_ns,
        target,
        &["--count", "100000", "--close", "after-eof"],
    );
    let _client = Peer::client(
        &net.client_ns,
        target,
        &["--count", "100000", "--close", "first"],
    );
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

pub fn daemon_bounds_endpoint_series() {
    require_root();
    let net = NetPair::new();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let daemon = start_daemon(listen, &["--max-endpoints", "3"]);
    // Ten endpoints (one server port each), one connection to each.
    let servers: Vec<Peer> = (0..10)
        .map(|i| {
            Peer::server(
                &net.server_ns,
                SocketAddr::new(net.server_v4, 18410 + i),
                &["--close", "after-eof"],
            )
        })
        .collect();
    for i in 0..10 {
        Peer::client(
            &net.client_ns,
            SocketAddr::new(net.server_v4, 18410 + i),
            &["--close", "first"],
        )
        .finish();
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
    let run = daemon.stop();
    assert!(run.status.success(), "{:?}", run.stderr);
}

pub fn daemon_config_file_is_checked() {
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

pub fn daemon_labels_containers_and_filters_by_cgroup() {
    require_root();
    let net = NetPair::new();
    let (inside, outside) = (18421u16, 18422u16);
    let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let name = format!("tltest-{}", std::process::id());
    let root = cgroup2_root();
    let parent = root.join(&name);
    let scope = parent.join(format!("docker-{id}.scope"));
    std::fs::create_dir_all(&scope).expect("creating a cgroup");
    let cgroups = TestCgroup {
        dirs: vec![parent, scope.clone()],
    };
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ports = format!("{inside},{outside}");
    let daemon = start_daemon(listen, &["--port", &ports, "--cgroup", &format!("/{name}")]);
    // One server in the "container", one outside it.
    let contained = Peer::server(
        &net.server_ns,
        SocketAddr::new(net.server_v4, inside),
        &["--count", "2", "--close", "after-eof"],
    );
    std::fs::write(scope.join("cgroup.procs"), contained.pid.to_string())
        .expect("moving the server into the cgroup");
    let free = Peer::server(
        &net.server_ns,
        SocketAddr::new(net.server_v4, outside),
        &["--count", "2", "--close", "after-eof"],
    );
    for port in [inside, outside] {
        Peer::client(
            &net.client_ns,
            SocketAddr::new(net.server_v4, port),
            &["--count", "2", "--close", "first"],
        )
        .finish();
    }
    contained.finish();
    free.finish();
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
