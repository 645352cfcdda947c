//! Recordings of the real-software scenarios (tests/recordings/, made by the privileged `real_*` tests with `TCPLINGER_RERECORD=1`), replayed without root: the tracker, the aggregator and the rules on real inputs at every build. Also what a replay promises: the same output run to run, and one line for a file it cannot read.
#![expect(
    clippy::float_cmp,
    reason = "the figures compared are counts and whole percentages, exact in JSON"
)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

/// Shared with the live scenarios (tests/support is the privileged
/// tests'; this one module of it needs nothing privileged).
#[path = "support/verdict.rs"]
mod verdict;
use verdict::{figure, not_the_network, peer_acknowledged, time_wait_refused};

fn recording(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/recordings")
        .join(format!("{name}.tlrec"))
}

fn tcplinger(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tcplinger"))
        .args(args)
        .output()
        .expect("running tcplinger")
}

fn report(name: &str) -> Value {
    let path = recording(name);
    let out = tcplinger(&[
        "report",
        "--format",
        "json",
        "--from",
        path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON report")
}

fn findings(report: &Value) -> &Vec<Value> {
    report["findings"].as_array().unwrap()
}

/// The one finding of `pathology` about `comm`, as `role`.
fn finding<'a>(report: &'a Value, pathology: &str, comm: &str, role: &str) -> &'a Value {
    let found: Vec<&Value> = findings(report)
        .iter()
        .filter(|f| f["pathology"] == pathology && f["comm"] == comm && f["role"] == role)
        .collect();
    assert_eq!(found.len(), 1, "one {pathology} of {comm}: {report:#}");
    let f = found[0];
    let pids: Vec<&Value> = f["pids"].as_array().unwrap().iter().collect();
    assert!(pids.contains(&&f["pid"]), "{f}");
    f
}

#[test]
fn nginx_with_keepalive_off_closes_and_curl_does_not_reuse() {
    let r = report("nginx_keepalive_off_with_curl");
    let f = finding(&r, "server_closes", "nginx", "server");
    assert_eq!(figure(f, "closed"), 200.0, "{f}");
    assert!(figure(f, "prompt_close_pct") >= 80.0, "{f}");
    // The workers, not the master, hold the connections.
    assert_eq!(f["processes"], 2, "{f}");
    let f = finding(&r, "no_reuse", "curl", "client");
    assert_eq!(f["processes"], 200, "a process per request, one group: {f}");
    assert_eq!(figure(f, "opened"), 200.0, "{f}");
    assert_eq!(findings(&r).len(), 2, "{r:#}");
}

/// nginx closing first on a server whose TIME_WAIT table holds 10
/// sockets: the closes past the tenth got none (format 4 says so of each
/// step to CLOSE), and are neither counted nor timed as TIME_WAITs.
#[test]
fn nginx_with_a_full_time_wait_table_counts_the_closes_that_got_none() {
    let r = report("nginx_with_a_full_time_wait_table");
    let refused = time_wait_refused(&r, "nginx", 10);
    // Each connection says it too.
    let path = recording("nginx_with_a_full_time_wait_table");
    let refused_lines: Vec<Value> = watch_lines(&[
        "watch",
        "--format",
        "json",
        "--from",
        path.to_str().unwrap(),
    ])
    .into_iter()
    .filter(|c| c["time_wait_refused"] == true)
    .collect();
    assert_eq!(u64::try_from(refused_lines.len()).unwrap(), refused);
    assert!(
        refused_lines
            .iter()
            .all(|c| c["time_wait"] == false && c["comm"] == "nginx"),
        "{refused_lines:#?}"
    );
}

#[test]
fn go_handler_forcing_connection_close() {
    let r = report("go_handler_forcing_connection_close");
    let f = finding(&r, "server_closes", "goserver", "server");
    assert_eq!(figure(f, "closed"), 300.0, "{f}");
    assert!(figure(f, "closed_by_local_pct") >= 50.0, "{f}");
    let f = finding(&r, "no_reuse", "goclient", "client");
    assert_eq!(figure(f, "opened"), 300.0, "{f}");
}

#[test]
fn go_disable_keepalives() {
    let r = report("go_disable_keepalives");
    finding(&r, "server_closes", "goserver", "server");
    let f = finding(&r, "no_reuse", "goclient", "client");
    assert_eq!(figure(f, "one_exchange_pct"), 100.0, "{f}");
}

#[test]
fn go_client_timeout_against_a_stuck_handler() {
    let r = report("go_client_timeout_against_a_stuck_handler");
    let f = finding(&r, "client_timeout_stuck_server", "goserver", "server");
    assert!(figure(f, "close_wait_p50_ms") >= 1000.0, "{f}");
    not_the_network(f);
    let f = finding(&r, "client_timeout_stuck_server", "goclient", "client");
    assert!(figure(f, "fin_wait2_p50_ms") >= 1000.0, "{f}");
    assert_eq!(figure(f, "closed_by_local_pct"), 100.0, "{f}");
    not_the_network(f);
}

#[test]
fn go_deadline_on_pooled_connections() {
    let r = report("go_deadline_on_pooled_connections");
    let f = finding(&r, "deadline_pooled", "goclient", "client");
    assert!(figure(f, "closed_in_use_pct") >= 50.0, "{f}");
    assert_eq!(findings(&r).len(), 1, "{r:#}");
    not_the_network(f);
    // The records carry the figures: requests went out and answers came
    // back on every connection, none retransmitted.
    let lines = watch_lines(&[
        "watch",
        "--format",
        "json",
        "--from",
        recording("go_deadline_on_pooled_connections")
            .to_str()
            .unwrap(),
    ]);
    let clients: Vec<&Value> = lines.iter().filter(|l| l["comm"] == "goclient").collect();
    assert!(clients.len() >= 6, "{lines:#?}");
    for l in clients {
        assert!(l["net"]["bytes_acked"].as_u64().unwrap() > 0, "{l}");
        assert!(l["net"]["bytes_received"].as_u64().unwrap() > 0, "{l}");
        assert_eq!(l["net"]["retrans"], 0, "{l}");
    }
}

/// A recording of format version 2 (before the records carried network
/// figures) replays to the same verdict, and the finding makes no claim
/// about the network.
#[test]
fn a_version_2_recording_still_replays_without_network_figures() {
    let r = report("v2/go_deadline_on_pooled_connections");
    let f = finding(&r, "deadline_pooled", "goclient", "client");
    assert!(figure(f, "closed_in_use_pct") >= 50.0, "{f}");
    assert!(f["evidence"].get("retrans_pct").is_none(), "{f}");
    assert!(!f["summary"].as_str().unwrap().contains("network"), "{f}");
    let path = recording("v2/go_deadline_on_pooled_connections");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes[8..12], 2u32.to_le_bytes(), "still a version 2 file");
    let lines = watch_lines(&[
        "watch",
        "--format",
        "json",
        "--from",
        path.to_str().unwrap(),
    ]);
    assert!(!lines.is_empty());
    assert!(lines.iter().all(|l| l.get("net").is_none()), "{lines:#?}");
}

#[test]
fn go_pool_filled_by_unanswered_requests() {
    let r = report("go_pool_filled_by_unanswered_requests");
    let f = finding(&r, "unanswered_requests", "goclient", "client");
    assert_eq!(figure(f, "awaiting_reply"), 16.0, "{f}");
    peer_acknowledged(f);
}

#[test]
fn go_transport_per_request_leaks_idle_connections() {
    let r = report("go_transport_per_request_leaks_idle_connections");
    let f = finding(&r, "leaked_idle", "goclient", "client");
    assert_eq!(figure(f, "idle_now"), 12.0, "{f}");
}

/// The prefork server's leak: the child, its 10 CLOSE_WAIT sockets and
/// their fds.
fn assert_prefork_leak(name: &str) {
    let r = report(name);
    let f = finding(&r, "close_wait_leak", "python3", "server");
    assert_eq!(figure(f, "close_wait_now"), 10.0, "{f}");
    assert_eq!(f["evidence"]["fds"].as_array().unwrap().len(), 10, "{f}");
}

#[test]
fn python_prefork_close_wait_leak_names_the_child_and_its_fds() {
    assert_prefork_leak("python_prefork_close_wait_leak");
}

/// A recording of format version 1 (the kernel wrote a record per step,
/// before it folded each socket's steps) still replays to its verdict.
#[test]
fn a_version_1_recording_still_replays() {
    assert_prefork_leak("v1/python_prefork_close_wait_leak");
    let path = recording("v1/python_prefork_close_wait_leak");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes[8..12], 1u32.to_le_bytes(), "still a version 1 file");
}

#[test]
fn python_server_with_curl_and_a_threaded_client() {
    let r = report("python_http_server_with_curl");
    finding(&r, "server_closes", "python3", "server");
    finding(&r, "no_reuse", "curl", "client");
    let r = report("python_threaded_client_is_named_by_its_process");
    let f = finding(&r, "no_reuse", "python3", "client");
    assert_eq!(f["processes"], 1, "threads are one process: {f}");
    assert_eq!(figure(f, "opened"), 160.0, "{f}");
}

#[test]
fn healthy_scenarios_have_no_finding() {
    for name in [
        "go_keepalive_is_healthy",
        "nginx_idle_timeout_is_healthy",
        "connections_older_than_the_tracer_prove_no_deadline",
    ] {
        let r = report(name);
        assert!(findings(&r).is_empty(), "{name}: {r:#}");
        assert!(
            r["groups"].as_array().is_some_and(|g| !g.is_empty()),
            "{name} saw its connections: {r:#}"
        );
    }
}

/// Every committed recording is complete and read to its end.
#[test]
fn recordings_are_whole() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/recordings");
    let mut n = 0;
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .chain(std::fs::read_dir(dir.join("v1")).unwrap())
        .chain(std::fs::read_dir(dir.join("v2")).unwrap())
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file());
    for path in files {
        let out = tcplinger(&[
            "record",
            "--info",
            path.to_str().unwrap(),
            "--format",
            "json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let info: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(info["complete"], true, "{}: {info:#}", path.display());
        assert!(info["damage"].is_null(), "{info:#}");
        // A leak's sockets may live through the run: seen only in reads of
        // the kernel's entries, with no ring record.
        assert!(info["sockets"].as_u64().unwrap() > 0, "{info:#}");
        n += 1;
    }
    assert!(n >= 15, "{n} recordings");
}

#[test]
fn replays_are_identical_run_to_run() {
    let path = recording("nginx_keepalive_off_with_curl");
    let path = path.to_str().unwrap();
    for command in ["report", "watch"] {
        let runs: Vec<Vec<u8>> = (0..3)
            .map(|_| {
                let out = tcplinger(&[command, "--format", "json", "--from", path]);
                assert!(out.status.success());
                out.stdout
            })
            .collect();
        assert!(!runs[0].is_empty());
        assert!(runs.windows(2).all(|w| w[0] == w[1]), "{command} differs");
    }
    // watch prints one record per connection of the recording: 200 curl
    // connections seen from both ends.
    let out = tcplinger(&["watch", "--format", "json", "--from", path]);
    let records = String::from_utf8(out.stdout).unwrap();
    assert_eq!(records.lines().count(), 400, "{records}");
}

#[test]
fn selection_applies_after_the_fact() {
    let path = recording("nginx_keepalive_off_with_curl");
    let out = tcplinger(&[
        "watch",
        "--format",
        "json",
        "--comm",
        "curl",
        "--from",
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 200);
    assert!(lines.iter().all(|r| r["comm"] == "curl"));
}

/// A scratch copy of a recording, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn of(name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> Self {
        let mut bytes = std::fs::read(recording(name)).unwrap();
        edit(&mut bytes);
        let path = std::env::temp_dir().join(format!(
            "tcplinger-replay-{}-{name}-{}",
            std::process::id(),
            bytes.len()
        ));
        std::fs::write(&path, bytes).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn one_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

#[test]
fn a_recording_cut_short_is_replayed_up_to_where_it_stops() {
    let whole = report("nginx_keepalive_off_with_curl");
    let cut = Scratch::of("nginx_keepalive_off_with_curl", |b| {
        let keep = b.len() * 2 / 3;
        b.truncate(keep);
    });
    let out = tcplinger(&["report", "--format", "json", "--from", cut.path()]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ends inside a chunk") && stderr.contains("what came before is replayed"),
        "{stderr}"
    );
    let partial: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        partial["events"].as_u64().unwrap() < whole["events"].as_u64().unwrap(),
        "{partial:#}"
    );
    let info = tcplinger(&["record", "--info", cut.path()]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("cut short"), "{text}");
}

#[test]
fn a_damaged_chunk_is_named_and_the_rest_replayed() {
    let damaged = Scratch::of("nginx_keepalive_off_with_curl", |b| {
        let at = b.len() / 2;
        b[at] ^= 0x5a;
    });
    let out = tcplinger(&["watch", "--format", "json", "--from", damaged.path()]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("checksum") || stderr.contains("damaged"),
        "{stderr}"
    );
}

#[test]
fn a_newer_format_and_other_files_are_one_line_errors() {
    let newer = Scratch::of("go_keepalive_is_healthy", |b| {
        b[8..12].copy_from_slice(&7u32.to_le_bytes());
    });
    let out = tcplinger(&["report", "--from", newer.path()]);
    assert_eq!(out.status.code(), Some(1));
    let line = one_line(&out);
    assert!(
        line.contains("version 7") && line.contains("version 4"),
        "{line}"
    );

    let out = tcplinger(&["watch", "--from", env!("CARGO_MANIFEST_DIR")]);
    assert_eq!(out.status.code(), Some(1));
    one_line(&out);
    let out = tcplinger(&[
        "report",
        "--from",
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/replay.rs"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line(&out).contains("not a tcplinger recording"));
    let out = tcplinger(&["record", "--info", "/nonexistent/rec"]);
    assert_eq!(out.status.code(), Some(1));
    one_line(&out);
}

#[test]
fn kernel_filters_are_refused_with_from() {
    let path = recording("go_keepalive_is_healthy");
    for flag in [["--port", "80"], ["--pid", "1"], ["--duration", "5s"]] {
        let out = tcplinger(&["report", "--from", path.to_str().unwrap(), flag[0], flag[1]]);
        assert_eq!(out.status.code(), Some(2), "{flag:?}");
        let line = one_line(&out);
        assert!(line.contains(flag[0]) && line.contains("--from"), "{line}");
    }
    let out = tcplinger(&["watch", "--transitions", "--from", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
}

fn watch_lines(args: &[&str]) -> Vec<Value> {
    let out = tcplinger(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn since_and_until_cut_a_window_of_the_replay() {
    let path = recording("nginx_keepalive_off_with_curl");
    let path = path.to_str().unwrap();
    let all = watch_lines(&["watch", "--format", "json", "--from", path]);
    let early = watch_lines(&["watch", "--format", "json", "--from", path, "--until", "1s"]);
    let late = watch_lines(&["watch", "--format", "json", "--from", path, "--since", "1s"]);
    assert!(
        !early.is_empty() && early.len() < all.len(),
        "{} of {}",
        early.len(),
        all.len()
    );
    assert!(
        !late.is_empty() && late.len() < all.len(),
        "{} of {}",
        late.len(),
        all.len()
    );
    // A connection ending at the cut may be in both; none is lost.
    assert!(early.len() + late.len() >= all.len());
    let ts = |r: &Value| r["ts"].as_str().unwrap().to_string();
    let cut = early.iter().map(ts).max().unwrap();
    assert!(late.iter().all(|r| ts(r) >= cut), "later records only");
    // The same cut as a time of day: the recording's start plus 1 s.
    let info = tcplinger(&["record", "--info", path, "--format", "json"]);
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    let start_ns = info["header"]["started_unix_ns"].as_u64().unwrap();
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(start_ns + 1_000_000_000);
    let at = humantime::format_rfc3339_nanos(at).to_string();
    let late_at = watch_lines(&["watch", "--format", "json", "--from", path, "--since", &at]);
    assert_eq!(late_at, late);

    let whole = report("nginx_keepalive_off_with_curl");
    let out = tcplinger(&[
        "report", "--format", "json", "--from", path, "--since", "1s",
    ]);
    let windowed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        windowed["window_s"].as_f64().unwrap() < whole["window_s"].as_f64().unwrap(),
        "{windowed:#}"
    );
    // The records read in the window, not before it.
    assert!(
        windowed["events"].as_u64().unwrap() < whole["events"].as_u64().unwrap(),
        "{windowed:#}"
    );
    let opened = |r: &Value, comm: &str| {
        r["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["comm"] == comm)
            .map_or(0, |g| g["opened"].as_u64().unwrap())
    };
    assert!(
        opened(&windowed, "curl") < opened(&whole, "curl"),
        "{windowed:#}"
    );
}

#[test]
fn a_window_needs_a_recording_and_an_order() {
    let out = tcplinger(&["watch", "--since", "5s"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line(&out).contains("--from"));
    // `report --since` without a recording asks the daemon's history.
    let out = tcplinger(&[
        "report",
        "--since",
        "5s",
        "--history-dir",
        "/nonexistent/tcplinger",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line(&out).contains("no history at /nonexistent/tcplinger/history.db"));
    let path = recording("go_keepalive_is_healthy");
    // The second of the same kind, or of different kinds compared once the
    // recording's start is known.
    for (since, until) in [("3s", "2s"), ("2099-01-01T00:00:00Z", "2s")] {
        let out = tcplinger(&[
            "watch",
            "--from",
            path.to_str().unwrap(),
            "--since",
            since,
            "--until",
            until,
        ]);
        assert_eq!(out.status.code(), Some(2), "{since} {until}");
        assert!(one_line(&out).contains("--until"));
    }
    // A window opening after the recording ends is empty, not the whole.
    let out = tcplinger(&[
        "report",
        "--format",
        "json",
        "--from",
        path.to_str().unwrap(),
        "--since",
        "10m",
    ]);
    assert!(out.status.success());
    let empty: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        empty["groups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["opened"] == 0 && g["closed"] == 0),
        "{empty:#}"
    );
    let out = tcplinger(&[
        "watch",
        "--from",
        path.to_str().unwrap(),
        "--since",
        "yesterday",
    ]);
    assert_eq!(out.status.code(), Some(2));
    // A value clap refused: its short block, the reason on the first line.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("tcplinger: ")
            && first.contains("--since")
            && first.contains("yesterday"),
        "{stderr}"
    );
    assert!(stderr.lines().count() <= 6, "{stderr}");
}
