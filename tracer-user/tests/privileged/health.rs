//! The daemon under load and in trouble: scrapers and held connections cannot starve its ring drain, /healthz tells a stalled loop and dropped events, and the HTTP cap sheds the oldest connection rather than locking probes out.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::support::{
    churn::Churn,
    daemon::{get, scrape, start_daemon, value},
    require_root,
    scene::{fresh_port, loopback_addr},
    wait_until,
};

/// The daemon's connection cap (`http::MAX_CONNECTIONS`).
const CAP: usize = 4096;

/// Lets this process hold the connections of these tests.
fn raise_fd_limit(at_least: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with valid pointers.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit);
        assert!(
            limit.rlim_max >= at_least,
            "these tests hold {at_least} connections: raise the hard fd limit (ulimit -Hn)"
        );
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
    }
}

/// `n` connections to `addr` that send half a request and wait.
fn hold(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .expect("holding a connection");
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n")
                .unwrap();
            s
        })
        .collect()
}

/// The status of `GET path`, asked with a deadline.
fn status_of(addr: SocketAddr, path: &str) -> u16 {
    get(addr, &format!("GET {path} HTTP/1.0\r\nHost: t\r\n\r\n")).0
}

/// `/healthz`'s status and its JSON.
fn health(addr: SocketAddr) -> (u16, serde_json::Value) {
    let (status, body) = get(addr, "GET /healthz HTTP/1.0\r\nHost: t\r\n\r\n");
    let json = serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// 64 clients scraping /metrics without pause and the HTTP cap held full,
/// during churn at full speed: the ring drain is on a thread no client
/// can hold up, so nothing is dropped; Prometheus (a fresh connection)
/// still scrapes and /healthz still answers.
fn daemon_drain_keeps_up_with_scrapers_and_a_full_connection_cap() {
    require_root();
    raise_fd_limit(2 * CAP as u64 + 1024);
    let listen = loopback_addr();
    let port = fresh_port();
    let daemon = start_daemon(listen, &["--port", &port.to_string()]);
    let stop = Arc::new(AtomicBool::new(false));
    // The cap held full the whole time: the daemon drops a half-sent
    // request after 5 s, so connections are opened anew as fast as they
    // go, the newest CAP kept.
    let holder = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut held = std::collections::VecDeque::from(hold(listen, CAP));
            let deadline = Instant::now() + Duration::from_mins(2);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                held.extend(hold(listen, 64));
                while held.len() > CAP {
                    held.pop_front();
                }
                thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let scrapes = Arc::new(AtomicU64::new(0));
    let scrapers: Vec<_> = (0..64)
        .map(|_| {
            let (stop, scrapes) = (stop.clone(), scrapes.clone());
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_mins(2);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if get(listen, "GET /metrics HTTP/1.0\r\nHost: t\r\n\r\n").0 == 200 {
                        scrapes.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let churn = Churn::start(port, 4, 300_000, Duration::from_secs(30));
    let mut probes = 0;
    let mut slowest = Duration::ZERO;
    while churn.running() {
        let start = Instant::now();
        // It answers; hook runs the kernel skips at full churn (a softirq
        // preempting a program, counted as missed) may make it 503, but
        // never a stalled loop or dropped events.
        let (status, json) = health(listen);
        assert!(
            matches!(status, 200 | 503),
            "health during churn: {status} after {:?}",
            start.elapsed()
        );
        let reasons = json["reasons"].to_string();
        assert!(
            !reasons.contains("not turned") && !reasons.contains("dropped"),
            "health during churn: {json}"
        );
        assert!(
            scrape(listen).contains("tcplinger_events_total"),
            "a fresh scrape during churn"
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "probe and scrape took {:?}",
            start.elapsed()
        );
        slowest = slowest.max(start.elapsed());
        probes += 1;
    }
    let (made, _) = churn.finish();
    stop.store(true, Ordering::Relaxed);
    for s in scrapers {
        s.join().unwrap();
    }
    holder.join().unwrap();
    let metrics = scrape(listen);
    let dropped = value(&metrics, "tcplinger_events_dropped_total", &[]);
    let events = value(&metrics, "tcplinger_events_total", &[]);
    let shed = value(
        &metrics,
        "tcplinger_losses_total",
        &["kind=\"http_connection_shed\""],
    );
    eprintln!(
        "{made} connections, {events} events, {dropped} dropped, {} scrapes, {probes} probes (slowest {slowest:?}), {shed} connections shed",
        scrapes.load(Ordering::Relaxed)
    );
    assert!(made >= 50_000, "only {made} connections");
    assert!(probes >= 3, "only {probes} probes during churn");
    assert!(
        events >= 5.0 * 50_000.0,
        "{events} events for {made} connections"
    );
    assert_eq!(dropped, 0.0, "events dropped under scrapers");
    assert!(shed > 0.0, "the cap was never reached");
    let run = daemon.stop();
    assert!(run.status.success(), "{:?}", run.stderr);
}
privileged!(daemon_drain_keeps_up_with_scrapers_and_a_full_connection_cap);

/// Past the connection cap the oldest connection goes, not the newest:
/// holders cannot lock the probe out. Oversized headers are answered 431,
/// as the README says.
fn daemon_sheds_the_oldest_connection_at_the_cap_and_answers_431() {
    require_root();
    raise_fd_limit(2 * CAP as u64 + 1024);
    let listen = loopback_addr();
    let port = fresh_port();
    let daemon = start_daemon(listen, &["--port", &port.to_string()]);
    // Headers over the 8 KiB limit, but all read by the daemon before it
    // answers (more, left unread, would make its close a reset).
    let big = format!(
        "GET /metrics HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    assert_eq!(get(listen, &big).0, 431);
    let held = hold(listen, CAP);
    // Every slot is taken: a new client gets in all the same.
    assert_eq!(status_of(listen, "/healthz"), 200);
    assert_eq!(status_of(listen, "/livez"), 200);
    // The oldest were closed to make room, and counted (the counter is
    // fed once a second).
    let shed = || {
        value(
            &scrape(listen),
            "tcplinger_losses_total",
            &["kind=\"http_connection_shed\""],
        )
    };
    assert!(
        wait_until(Duration::from_secs(5), || shed() >= 1.0),
        "{} connections shed: {}",
        shed(),
        scrape(listen)
            .lines()
            .filter(|l| l.contains("losses") || l.contains("events_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(held);
    let run = daemon.stop();
    assert!(run.status.success(), "{:?}", run.stderr);
}
privileged!(daemon_sheds_the_oldest_connection_at_the_cap_and_answers_431);

/// The tracing loop stopped (its thread held by ptrace, as a hung syscall
/// or a livelock would hold it): /healthz and /livez, served by another
/// thread, say so with a reason; once it runs again, they recover.
fn healthz_reports_a_stalled_loop_and_its_recovery() {
    require_root();
    let listen = loopback_addr();
    let port = fresh_port();
    let daemon = start_daemon(listen, &["--port", &port.to_string()]);
    let (status, json) = health(listen);
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["status"], "ok");
    // The main thread runs the tracing loop; the thread id is the pid.
    let tid = i32::try_from(daemon.pid()).unwrap();
    // SAFETY: ptrace of our own child's main thread; every call is checked.
    unsafe {
        assert_eq!(
            libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0),
            0,
            "PTRACE_SEIZE: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0), 0);
        let mut wstatus = 0;
        assert_eq!(libc::waitpid(tid, &raw mut wstatus, libc::__WALL), tid);
        assert!(libc::WIFSTOPPED(wstatus), "not stopped: {wstatus:#x}");
    }
    let stalled = wait_until(Duration::from_secs(30), || health(listen).0 == 503);
    let (status, json) = health(listen);
    let livez = status_of(listen, "/livez");
    // SAFETY: as above; the thread is in a ptrace stop.
    let detached = unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0) };
    assert_eq!(detached, 0, "{}", std::io::Error::last_os_error());
    assert!(stalled, "/healthz never failed: {status} {json}");
    assert_eq!(json["status"], "unhealthy", "{json}");
    assert!(
        json["reasons"][0]
            .as_str()
            .unwrap_or_default()
            .contains("has not turned"),
        "{json}"
    );
    assert_eq!(livez, 503);
    let recovered = wait_until(Duration::from_secs(10), || health(listen).0 == 200);
    assert!(recovered, "{:?}", health(listen));
    assert_eq!(status_of(listen, "/livez"), 200);
    let run = daemon.stop();
    assert!(run.status.success(), "{:?}", run.stderr);
}
privileged!(healthz_reports_a_stalled_loop_and_its_recovery);

/// A ring too small for the churn drops events: /healthz says so, with the
/// count, while /livez (what a restart would mend) stays up.
fn healthz_reports_dropped_events() {
    require_root();
    let listen = loopback_addr();
    let port = fresh_port();
    let daemon = start_daemon(
        listen,
        &["--port", &port.to_string(), "--ring-bytes", "4KiB"],
    );
    let churn = Churn::start(port, 4, 200_000, Duration::from_secs(30));
    let unhealthy = wait_until(Duration::from_secs(30), || health(listen).0 == 503);
    let (_, json) = health(listen);
    let livez = status_of(listen, "/livez");
    churn.finish();
    assert!(unhealthy, "no drops reported: {json}");
    let reasons = json["reasons"].to_string();
    assert!(
        reasons.contains("events dropped in the last minute"),
        "{json}"
    );
    assert_eq!(livez, 200);
    let run = daemon.stop();
    assert!(run.dropped > 0, "{:?}", run.stderr);
}
privileged!(healthz_reports_dropped_events);
