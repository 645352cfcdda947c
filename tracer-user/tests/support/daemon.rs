//! The daemon as the tests drive it: started on a loopback address, its HTTP endpoint asked by hand, and its Prometheus exposition read series by series.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use super::tracer::Tcplinger;

/// `tcplinger daemon` serving metrics on `listen`, logging JSON, with
/// `extra` flags; returns once it traces.
pub fn start_daemon(listen: SocketAddr, extra: &[&str]) -> Tcplinger {
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

/// A daemon on a loopback address of its own, JSON log lines, tracing
/// `ports`, keeping its history in `history_dir`.
pub fn with_history(ports: &str, history_dir: &std::path::Path) -> Tcplinger {
    start_daemon(
        crate::support::scene::loopback_addr(),
        &[
            "--port",
            ports,
            "--history-dir",
            &history_dir.to_string_lossy(),
        ],
    )
}

/// One HTTP/1.0 request; the status code and the body.
pub fn get(addr: SocketAddr, request: &str) -> (u16, String) {
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

/// The metrics text the daemon on `addr` serves now.
pub fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "GET /metrics HTTP/1.0\r\nHost: t\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the series whose line starts with `series`, e.g.
/// `tcplinger_events_total` or `...{labels}`, summed over label sets that
/// contain every one of `labels`.
pub fn value(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(metric)
                && l[metric.len()..].starts_with(['{', ' '])
                && labels.iter().all(|want| l.contains(want))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
