//! The daemon's HTTP endpoint (hyper), on a thread of its own: GET /metrics, /healthz (is the tracer seeing everything?) and /livez (is it turning at all?), with limits on header size, header time, connection time and connection count.

use std::{
    collections::VecDeque,
    convert::Infallible,
    fmt::Write as _,
    io,
    sync::{
        Arc, Mutex, TryLockError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Bytes, header, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use crate::{cmd::daemon::metrics::Metrics, host::clock};

/// A request's headers must arrive within this: slow clients cannot hold
/// a connection open by trickling bytes.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Headers larger than this are answered 431 (hyper's minimum buffer).
pub const MAX_HEADER_BYTES: usize = 8192;
/// A connection, keep-alive included, lasts at most this.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_mins(1);
/// Connections served at once; a new one beyond it closes the oldest, so
/// clients holding connections open cannot lock Prometheus or the probe
/// out.
pub const MAX_CONNECTIONS: usize = 4096;
/// /healthz and /livez fail when the tracing loop has not turned for this
/// long. It turns at least once a second when idle; an analysis of a large
/// host takes well under a second of it.
pub const STALL_NS: u64 = 10_000_000_000;
/// The lookups of followed sockets are stuck when one has been out longer
/// than this (they take milliseconds, a huge TIME_WAIT table a second).
pub const FOLLOWER_STUCK_NS: u64 = 30_000_000_000;
/// /metrics is encoded at most this often, whatever the number of
/// scrapers: each encoding holds the metrics the tracing loop writes.
pub const ENCODE_EVERY: Duration = Duration::from_secs(1);

/// What the tracing loop tells the endpoint about the tracer's health,
/// refreshed every second; judged by [`judge`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Records the kernel dropped (ring full) in the last minute.
    pub dropped_last_minute: u64,
    /// Program runs skipped (a hook busy) in the last minute.
    pub missed_last_minute: u64,
    /// Lookups of followed sockets that failed in the last minute.
    pub lookups_failed_last_minute: u64,
    /// How long the lookup now out has been (0: none out).
    pub follower_busy_ns: u64,
    /// Optional hooks this run goes without (it traces, with less).
    pub degraded: Vec<String>,
}

/// What the endpoint reads: the metrics, when the tracing loop last
/// turned (stamped by that loop, read by this thread: a stalled loop
/// cannot vouch for itself), and its last health report.
pub struct Shared {
    pub metrics: Mutex<Metrics>,
    pub last_loop_ns: AtomicU64,
    pub status: Mutex<Status>,
    /// Connections closed to make room for newer ones, in all.
    pub shed: AtomicU64,
    /// Connections that could not be accepted (out of fds), in all.
    pub accept_failed: AtomicU64,
    /// The last encoding of /metrics and when it was made.
    encoded: Mutex<Option<(Instant, Bytes)>>,
}

impl Shared {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics: Mutex::new(metrics),
            last_loop_ns: AtomicU64::new(clock::boot_ns()),
            status: Mutex::new(Status::default()),
            shed: AtomicU64::new(0),
            accept_failed: AtomicU64::new(0),
            encoded: Mutex::new(None),
        }
    }

    /// The metrics, encoded again only if the last encoding is older than
    /// [`ENCODE_EVERY`]. The tracing loop holds them for a moment each
    /// second to write them: a scrape waits for that, up to
    /// [`LOOP_WAIT`]. Serving the last encoding at once instead would hand
    /// a scraper figures as old as its previous scrape (30 s flat, then a
    /// jump); the last encoding is served only when the loop holds them
    /// longer (a stuck loop, which /healthz reports), since this thread
    /// answers /healthz too.
    fn metrics_text(&self) -> Bytes {
        let Ok(mut cached) = self.encoded.lock() else {
            return Bytes::new();
        };
        let last = match cached.as_ref() {
            Some((at, text)) if at.elapsed() < ENCODE_EVERY => return text.clone(),
            last => last.map(|(_, text)| text.clone()),
        };
        let started = Instant::now();
        let metrics = loop {
            match (self.metrics.try_lock(), &last) {
                (Ok(m), _) => break m,
                (Err(TryLockError::WouldBlock), Some(last)) if started.elapsed() >= LOOP_WAIT => {
                    return last.clone();
                }
                (Err(TryLockError::WouldBlock), _) => std::thread::sleep(LOOP_POLL),
                (Err(TryLockError::Poisoned(_)), _) => return Bytes::new(),
            }
        };
        let text = Bytes::from(metrics.encode());
        drop(metrics);
        *cached = Some((Instant::now(), text.clone()));
        text
    }
}

/// How long a scrape waits for the tracing loop to finish writing the
/// metrics before it is served the last encoding.
const LOOP_WAIT: Duration = Duration::from_secs(1);
/// How often it looks meanwhile.
const LOOP_POLL: Duration = Duration::from_millis(2);

/// The verdict of /healthz: healthy or not, and why, as one JSON line.
pub fn judge(now_ns: u64, last_loop_ns: u64, status: &Status) -> (StatusCode, String) {
    let mut reasons: Vec<String> = Vec::new();
    let idle_ns = now_ns.saturating_sub(last_loop_ns);
    if idle_ns > STALL_NS {
        reasons.push(format!(
            "the tracing loop has not turned for {:.1} s",
            idle_ns as f64 / 1e9
        ));
    }
    if status.dropped_last_minute > 0 {
        reasons.push(format!(
            "{} events dropped in the last minute (ring full: raise --ring-bytes)",
            status.dropped_last_minute
        ));
    }
    if status.missed_last_minute > 0 {
        reasons.push(format!(
            "{} hook runs missed in the last minute",
            status.missed_last_minute
        ));
    }
    if status.lookups_failed_last_minute > 0 {
        reasons.push(format!(
            "{} lookups of FIN_WAIT2/TIME_WAIT sockets failed in the last minute",
            status.lookups_failed_last_minute
        ));
    }
    if status.follower_busy_ns > FOLLOWER_STUCK_NS {
        reasons.push(format!(
            "the FIN_WAIT2/TIME_WAIT lookup has been stuck for {:.0} s",
            status.follower_busy_ns as f64 / 1e9
        ));
    }
    let code = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if reasons.is_empty() { "ok" } else { "unhealthy" },
        "reasons": reasons,
        "degraded": status.degraded,
        "loop_idle_ms": idle_ns / 1_000_000,
    });
    let mut line = body.to_string();
    line.push('\n');
    (code, line)
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The routing, apart from the socket handling, so it can be tested alone.
pub fn respond(method: &Method, path: &str, shared: &Shared) -> Response<Full<Bytes>> {
    let known = matches!(path, "/metrics" | "/healthz" | "/livez");
    if !known {
        return text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /livez\n",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let now = clock::boot_ns();
    let last_loop = shared.last_loop_ns.load(Ordering::Relaxed);
    match path {
        "/healthz" => {
            let status = shared.status.lock().map(|s| s.clone()).unwrap_or_default();
            let (code, body) = judge(now, last_loop, &status);
            let mut r = text(code, body);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        // Only what a restart can mend: a loop that no longer turns.
        "/livez" => {
            let idle_ns = now.saturating_sub(last_loop);
            if idle_ns > STALL_NS {
                let mut body = String::new();
                let _ = writeln!(
                    body,
                    "tracing loop stalled for {:.1} s",
                    idle_ns as f64 / 1e9
                );
                text(StatusCode::SERVICE_UNAVAILABLE, body)
            } else {
                text(StatusCode::OK, "ok\n")
            }
        }
        _ => {
            let mut r = text(StatusCode::OK, shared.metrics_text());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
    }
}

/// Connections waiting to be accepted: as many as are served at once, so
/// a burst of clients is queued rather than made to retry their SYN
/// (seconds apart) while the endpoint has room. The kernel caps it at
/// `net.core.somaxconn` (4096 by default).
const BACKLOG: u32 = 4096;

/// The listening socket, bound now (so a port in use is an error at start).
pub fn listen(addr: std::net::SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)?.into_std()
}

/// Serves on a thread of its own, with its own runtime, so that no number
/// of clients can delay the thread that drains the ring, and so that
/// /healthz answers while that thread is stuck. Returns what stops it.
pub fn start(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
) -> io::Result<(oneshot::Sender<()>, std::thread::JoinHandle<()>)> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("tcplinger-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else {
                    return;
                };
                tokio::select! {
                    () = serve(listener, shared) => {}
                    _ = stopped => {}
                }
            });
        })?;
    Ok((stop, thread))
}

/// Accepts and serves connections until the task is dropped.
async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut open: VecDeque<JoinHandle<()>> = VecDeque::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of fds or similar: counted, and a back-off rather than
            // a spin (the client waits in the backlog meanwhile).
            shared.accept_failed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if open.len() >= MAX_CONNECTIONS {
            open.retain(|c| !c.is_finished());
        }
        if open.len() >= MAX_CONNECTIONS
            && let Some(oldest) = open.pop_front()
        {
            oldest.abort();
            shared.shed.fetch_add(1, Ordering::Relaxed);
        }
        let shared = shared.clone();
        open.push_back(tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = respond(req.method(), req.uri().path(), &shared);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
        }));
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    fn shared(last_loop_ns: u64) -> Shared {
        let s = Shared::new(Metrics::new(10, 0));
        s.last_loop_ns.store(last_loop_ns, Ordering::Relaxed);
        s
    }

    async fn body(r: Response<Full<Bytes>>) -> String {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn routes() {
        let s = shared(clock::boot_ns());
        let r = respond(&Method::GET, "/metrics", &s);
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .contains("0.0.4")
        );
        assert!(body(r).await.contains("tcplinger_events_total"));
        let r = respond(&Method::GET, "/healthz", &s);
        assert_eq!(r.status(), StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&body(r).await).unwrap();
        assert_eq!(json["status"], "ok");
        assert_eq!(respond(&Method::GET, "/livez", &s).status(), StatusCode::OK);
        assert_eq!(
            respond(&Method::GET, "/", &s).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(&Method::GET, "/metrics/x", &s).status(),
            StatusCode::NOT_FOUND
        );
        let r = respond(&Method::POST, "/metrics", &s);
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET, HEAD");
        assert_eq!(
            respond(&Method::DELETE, "/healthz", &s).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn health_names_each_reason_in_one_json_line() {
        let now = 100_000_000_000;
        let healthy = Status {
            degraded: vec!["tracepoint sock_send_length unavailable".into()],
            ..Status::default()
        };
        let (code, line) = judge(now, now - 1_000_000_000, &healthy);
        assert_eq!(code, StatusCode::OK, "a degraded hook still traces");
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            json["degraded"][0],
            "tracepoint sock_send_length unavailable"
        );
        assert_eq!(json["reasons"].as_array().unwrap().len(), 0);

        let sick = Status {
            dropped_last_minute: 12,
            missed_last_minute: 3,
            lookups_failed_last_minute: 2,
            follower_busy_ns: FOLLOWER_STUCK_NS + 1,
            degraded: Vec::new(),
        };
        let (code, line) = judge(now, now - STALL_NS - 1, &sick);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n'));
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["status"], "unhealthy");
        let reasons: Vec<&str> = json["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        assert_eq!(reasons.len(), 5, "{reasons:?}");
        assert!(reasons[0].starts_with("the tracing loop has not turned"));
        assert!(reasons[1].starts_with("12 events dropped"));
        assert!(reasons[2].starts_with("3 hook runs missed"));
        assert!(reasons[3].starts_with("2 lookups"));
        assert!(reasons[4].contains("stuck"));
    }

    #[test]
    fn metrics_are_encoded_once_for_many_scrapers() {
        let s = shared(clock::boot_ns());
        let first = s.metrics_text();
        // Held by the tracing loop: a scrape within the second is served
        // from the last encoding, without waiting for it.
        let guard = s.metrics.lock().unwrap();
        let again = s.metrics_text();
        drop(guard);
        assert_eq!(first, again);
        assert!(first.starts_with(b"# HELP"));
    }

    #[test]
    fn a_stale_encoding_is_served_only_when_the_loop_holds_on() {
        let s = shared(clock::boot_ns());
        let first = s.metrics_text();
        let old = Instant::now().checked_sub(ENCODE_EVERY * 2).unwrap();
        *s.encoded.lock().unwrap() = Some((old, Bytes::from_static(b"stale")));
        // The loop holds the metrics and never lets go: the last
        // encoding, once the wait is over.
        let guard = s.metrics.lock().unwrap();
        let asked = Instant::now();
        assert_eq!(s.metrics_text(), Bytes::from_static(b"stale"));
        assert!(asked.elapsed() >= LOOP_WAIT);
        drop(guard);
        // Free again: encoded anew.
        assert_eq!(s.metrics_text(), first);
    }
}
