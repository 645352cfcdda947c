//! The daemon's HTTP endpoint (hyper): GET /metrics and /healthz, with limits on header size, header time, connection time and connection count.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Bytes, header, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use crate::{cmd::daemon::metrics::Metrics, host::clock};

/// A request's headers must arrive within this: slow clients cannot hold
/// a connection open by trickling bytes.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Headers larger than this are answered 431 (hyper's minimum buffer).
pub const MAX_HEADER_BYTES: usize = 8192;
/// A connection, keep-alive included, lasts at most this.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_mins(1);
/// Connections served at once; beyond it new ones are closed at once.
pub const MAX_CONNECTIONS: usize = 4096;
/// /healthz fails when the tracing loop has not turned for this long.
pub const STALL_NS: u64 = 10_000_000_000;

/// What the endpoint reads: the metrics, and when the tracing loop last ran.
pub struct Shared {
    pub metrics: Mutex<Metrics>,
    pub last_loop_ns: AtomicU64,
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
    let known = matches!(path, "/metrics" | "/healthz");
    if !known {
        return text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics or /healthz\n",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if path == "/healthz" {
        let stalled =
            clock::boot_ns().saturating_sub(shared.last_loop_ns.load(Ordering::Relaxed)) > STALL_NS;
        return if stalled {
            text(StatusCode::SERVICE_UNAVAILABLE, "tracing loop stalled\n")
        } else {
            text(StatusCode::OK, "ok\n")
        };
    }
    let body = shared
        .metrics
        .lock()
        .map(|m| m.encode())
        .unwrap_or_default();
    let mut r = text(StatusCode::OK, body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// Accepts and serves connections until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of fds or similar: back off rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
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
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    fn shared(last_loop_ns: u64) -> Shared {
        Shared {
            metrics: Mutex::new(Metrics::new(10)),
            last_loop_ns: AtomicU64::new(last_loop_ns),
        }
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
        assert_eq!(
            respond(&Method::GET, "/healthz", &s).status(),
            StatusCode::OK
        );
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

    #[tokio::test(flavor = "current_thread")]
    async fn healthz_fails_when_the_loop_stalls() {
        let s = shared(clock::boot_ns().saturating_sub(STALL_NS + 1_000_000_000));
        assert_eq!(
            respond(&Method::GET, "/healthz", &s).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
