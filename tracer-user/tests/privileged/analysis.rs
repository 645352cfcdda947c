//! `report`, `top` and `sockets` on real TCP: each of the seven pathologies reproduced between two namespaces, its finding checked for the right process and endpoint.

use std::{process::Command, time::Duration};

use serde_json::Value;
use tracer_user::model::{
    aggregate::{IDLE_AFTER_NS, UNANSWERED_AFTER_NS},
    diagnose::CLOSE_WAIT_LEAK_AGE_MS,
};

use crate::support::{
    require_root,
    scene::{Closer, Pace, Scene},
    tmux::Tmux,
    tracer::Tcplinger,
    wait_until,
};

/// Stops the report and returns its JSON, once the scene's closes under
/// way have been traced (the report reads what its ring holds before it
/// ends).
fn finish_report(scene: &Scene, tracer: Tcplinger) -> Value {
    scene.wait_settled(&[scene.port]);
    let run = tracer.stop();
    assert!(run.status.success(), "{:?}", run.stderr);
    assert_eq!(run.lines.len(), 1, "one JSON report: {:#?}", run.lines);
    run.lines.into_iter().next().unwrap()
}

/// The age at which CLOSE_WAIT sockets are a leak.
fn close_wait_leak_age() -> Duration {
    Duration::from_secs_f64(CLOSE_WAIT_LEAK_AGE_MS / 1000.0)
}

fn finding<'a>(report: &'a Value, pathology: &str, pid: u32) -> &'a Value {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["pathology"] == pathology && f["pid"] == pid)
        .unwrap_or_else(|| panic!("no {pathology} finding for pid {pid}: {report:#}"))
}

fn has_pathology(report: &Value, pathology: &str) -> bool {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["pathology"] == pathology)
}

fn report_client_timeout_stuck_server() {
    let scene = Scene::new();
    let tracer = Tcplinger::report_until_stopped(scene.port);
    let server = scene.server(&[
        "--count",
        "3",
        "--hold-ms",
        "2500",
        "--no-reply",
        "--close",
        "first",
    ]);
    let client = scene.client(&["--count", "3", "--timeout-ms", "1000", "--close", "first"]);
    let (client_pid, server_pid) = (client.pid, server.pid);
    client.finish();
    server.finish();
    let report = finish_report(&scene, tracer);
    let f = finding(&report, "client_timeout_stuck_server", client_pid);
    assert_eq!(f["remote"], scene.server_endpoint(), "{f}");
    assert_eq!(f["role"], "client");
    assert!(
        f["evidence"]["fin_wait2_p50_ms"].as_f64().unwrap() >= 1000.0,
        "{f}"
    );
    let f = finding(&report, "client_timeout_stuck_server", server_pid);
    assert_eq!(f["remote"], scene.client_endpoint(), "{f}");
    assert!(
        f["evidence"]["close_wait_p50_ms"].as_f64().unwrap() >= 1000.0,
        "{f}"
    );
}
privileged!(report_client_timeout_stuck_server);

fn report_server_closes() {
    let scene = Scene::new();
    let tracer = Tcplinger::report_until_stopped(scene.port);
    let pids = scene.converse(Closer::Server, 12, Pace::OneAtATime);
    let report = finish_report(&scene, tracer);
    let f = finding(&report, "server_closes", pids.server);
    assert_eq!(f["role"], "server");
    assert_eq!(f["endpoint"], format!(":{}", scene.port));
    assert_eq!(f["local_port"], scene.port);
    assert_eq!(f["evidence"]["closed_by_local_pct"], 100.0);
    assert_eq!(f["evidence"]["time_wait_now"], 12, "{f}");
    // Twelve connections are too few to say the client does not reuse
    // them; the server side is the one at fault.
    assert_eq!(
        report["findings"].as_array().unwrap().len(),
        1,
        "{report:#}"
    );
    assert!(
        report["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["pid"] == pids.client && g["closed_by"]["remote"] == 12),
        "{report:#}"
    );
}
privileged!(report_server_closes);

fn report_no_reuse() {
    let scene = Scene::new();
    let tracer = Tcplinger::report_until_stopped(scene.port);
    let pids = scene.converse(Closer::Client, 40, Pace::OneAtATime);
    let report = finish_report(&scene, tracer);
    let f = finding(&report, "no_reuse", pids.client);
    assert_eq!(f["remote"], scene.server_endpoint(), "{f}");
    assert_eq!(f["evidence"]["opened"], 40, "{f}");
    assert_eq!(
        report["findings"].as_array().unwrap().len(),
        1,
        "only no_reuse: {report:#}"
    );
}
privileged!(report_no_reuse);

fn report_leaked_idle() {
    let scene = Scene::new();
    let tracer = Tcplinger::report_until_stopped(scene.port);
    let _server = scene.server(&["--count", "15", "--close", "never"]);
    let client = scene.client(&["--count", "15", "--close", "never"]);
    client.expect_line("done");
    // Until all of them count as idle, by the kernel's own figures.
    let idle_ms = IDLE_AFTER_NS / 1_000_000;
    scene.wait_silent(&scene.net.client_ns, 15, idle_ms, idle_ms);
    let report = finish_report(&scene, tracer);
    let f = finding(&report, "leaked_idle", client.pid);
    assert_eq!(f["remote"], scene.server_endpoint(), "{f}");
    assert_eq!(f["evidence"]["established_now"], 15, "{f}");
    assert_eq!(f["evidence"]["established_first"], 0, "{f}");
    assert_eq!(
        report["findings"].as_array().unwrap().len(),
        1,
        "the server is not blamed: {report:#}"
    );
}
privileged!(report_leaked_idle);

/// A pool of `count`: each connection (all at once) sends a request, gives
/// up waiting after 100 ms and stays open, as a pooled client's would. Seen as
/// awaiting an answer from the last I/O the looks read of each socket.
fn unanswered_requests(count: usize) {
    let scene = Scene::new();
    let tracer = Tcplinger::report_until_stopped(scene.port);
    let n = count.to_string();
    let _server = scene.server(&[
        "--count",
        &n,
        "--parallel",
        "--close",
        "never",
        "--no-reply",
    ]);
    let client = scene.client(&[
        "--count",
        &n,
        "--parallel",
        "--timeout-ms",
        "100",
        "--close",
        "never",
    ]);
    client.expect_line("done");
    // Until every request has waited long enough to count as unanswered.
    scene.wait_silent(
        &scene.net.client_ns,
        count,
        UNANSWERED_AFTER_NS / 1_000_000,
        0,
    );
    let report = finish_report(&scene, tracer);
    let f = finding(&report, "unanswered_requests", client.pid);
    assert_eq!(f["remote"], scene.server_endpoint(), "{f}");
    assert_eq!(f["evidence"]["awaiting_reply"], count, "{f}");
    assert!(
        !has_pathology(&report, "leaked_idle"),
        "awaiting is not idle: {report:#}"
    );
}

/// A few: each socket looked up by itself at every look.
fn report_unanswered_requests() {
    unanswered_requests(10);
}
privileged!(report_unanswered_requests);

/// More than one batch of lookups in a namespace (the tracer's
/// `LOOKUPS_AT_MOST`, 256): its open sockets are dumped instead, with the
/// same answer.
fn report_unanswered_requests_past_a_batch_of_lookups() {
    unanswered_requests(300);
}
privileged!(report_unanswered_requests_past_a_batch_of_lookups);

/// Connections closed by their client at a fixed age after one exchange
/// and idle since (an idle timeout, or a maximum age that only ever meets
/// idle connections) are not a deadline cutting requests short.
fn report_idle_closes_at_a_fixed_age_are_no_deadline() {
    let scene = Scene::new();
    let tracer = Tcplinger::report_until_stopped(scene.port);
    let server = scene.server(&["--count", "6", "--parallel", "--close", "after-eof"]);
    let client = scene.client(&[
        "--count",
        "6",
        "--parallel",
        "--keep-ms",
        "3000",
        "--close",
        "first",
    ]);
    let client_pid = client.pid;
    client.finish();
    server.finish();
    let report = finish_report(&scene, tracer);
    assert!(!has_pathology(&report, "deadline_pooled"), "{report:#}");
    let g = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["pid"] == client_pid)
        .unwrap_or_else(|| panic!("no group for the client: {report:#}"));
    let p50 = g["lifetime_ms"]["p50"].as_f64().unwrap();
    assert!((p50 - 3000.0).abs() <= 350.0, "lifetime p50 {p50}: {g}");
    assert_eq!(g["closed_by"]["local"], 6, "{g}");
}
privileged!(report_idle_closes_at_a_fixed_age_are_no_deadline);

fn report_close_wait_leak() {
    let scene = Scene::new();
    let tracer = Tcplinger::report_until_stopped(scene.port);
    let server = scene.server(&["--count", "5", "--close", "never"]);
    scene.client(&["--count", "5", "--close", "first"]).finish();
    let seen = scene.wait_sockets(&scene.net.server_ns, "5 in CLOSE_WAIT", |s| {
        s.iter().filter(|s| s.state == "CLOSE-WAIT").count() == 5
    });
    // The scenario itself: the sockets must be old enough to be a leak,
    // not sockets about to be closed. Timed from when they were seen in
    // CLOSE_WAIT, after the kernel put them there, so no margin is needed.
    std::thread::sleep(close_wait_leak_age().saturating_sub(seen.elapsed()));
    let report = finish_report(&scene, tracer);
    let f = finding(&report, "close_wait_leak", server.pid);
    assert_eq!(f["remote"], scene.client_endpoint(), "{f}");
    assert_eq!(f["evidence"]["close_wait_now"], 5, "{f}");
    let fds = f["evidence"]["fds"]
        .as_array()
        .unwrap_or_else(|| panic!("no fds: {f}"));
    assert_eq!(fds.len(), 5, "{f}");
    for fd in fds {
        let link = std::fs::read_link(format!("/proc/{}/fd/{fd}", server.pid)).unwrap();
        assert!(
            link.to_string_lossy().starts_with("socket:["),
            "fd {fd} is {}",
            link.display()
        );
    }
    assert!(f["summary"].as_str().unwrap().contains("fds"), "{f}");
}
privileged!(report_close_wait_leak);

/// `sockets` sees the same leak without any tracing.
fn sockets_shows_what_lingers_now() {
    let scene = Scene::new();
    let server = scene.server(&["--count", "4", "--close", "never"]);
    scene.client(&["--count", "4", "--close", "first"]).finish();
    scene.wait_sockets(&scene.net.server_ns, "4 in CLOSE_WAIT", |s| {
        s.iter().filter(|s| s.state == "CLOSE-WAIT").count() == 4
    });
    scene.wait_settled(&[scene.port]);
    let out = Command::new(env!("CARGO_BIN_EXE_tcplinger"))
        .args(["sockets", "--format", "json", "--port", &scene.port_arg()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let groups = v["groups"].as_array().unwrap();
    let server_group = groups
        .iter()
        .find(|g| g["pid"] == server.pid)
        .unwrap_or_else(|| panic!("no group for the server: {v:#}"));
    assert_eq!(server_group["states"]["CLOSE_WAIT"], 4, "{v:#}");
    assert_eq!(server_group["role"], "server");
    assert!(server_group["oldest_ms"]["CLOSE_WAIT"].as_f64().unwrap() >= 0.0);
    // The client's closed sockets linger as timewait FIN_WAIT2 with no owner left.
    let orphans = groups
        .iter()
        .find(|g| g["pid"].is_null())
        .unwrap_or_else(|| panic!("{v:#}"));
    assert_eq!(orphans["states"]["FIN_WAIT2"], 4, "{v:#}");
    assert!(
        orphans["oldest_ms"]["FIN_WAIT2"].as_f64().unwrap() < 60_000.0,
        "{v:#}"
    );
    // --state narrows it.
    let out = Command::new(env!("CARGO_BIN_EXE_tcplinger"))
        .args([
            "sockets",
            "--format",
            "json",
            "--state",
            "fin-wait2",
            "--port",
            &scene.port_arg(),
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sockets"], 4, "{v:#}");
}
privileged!(sockets_shows_what_lingers_now);

fn top_in_a_pty_draws_updates_and_quits() {
    let scene = Scene::new();
    let tmux = Tmux::new();
    let stty = std::env::temp_dir().join(format!("tcplinger-stty-{}", std::process::id()));
    let command = format!(
        // The marker is computed so that the typed command line, which
        // shows once top leaves the alternate screen, cannot match it.
        "{} top --port {}; stty -a > {}; echo TOP-EXITED-$((40+2))",
        env!("CARGO_BIN_EXE_tcplinger"),
        scene.port,
        stty.display()
    );
    tmux.run(&["send-keys", "-t", "top", &command, "Enter"]);
    let first = tmux.wait_for("the table", |s| {
        s.contains("PROCESS") && s.contains("findings")
    });
    assert!(first.lines().count() <= 24, "{first}");
    // Traffic appears as rows on a later refresh.
    let server = scene.server(&["--count", "3", "--close", "never"]);
    scene.client(&["--count", "3", "--close", "first"]).finish();
    // The server's row comes with the next read of live sockets' entries;
    // the client's once its closed sockets' timewait lookup is answered:
    // either may show first.
    tmux.wait_for("the server's and the client's rows", |s| {
        s.contains(&format!("{}/tl-server", server.pid)) && s.contains("tl-client")
    });
    keys_in_a_pty(&tmux, server.pid);
    tmux.run(&["send-keys", "-t", "top", "q"]);
    let after = tmux.wait_for("the shell again", |s| s.contains("TOP-EXITED-42"));
    assert!(
        !after.contains("PROCESS"),
        "the alternate screen was left:\n{after}"
    );
    assert!(wait_until(Duration::from_secs(5), || stty.exists()));
    let modes = std::fs::read_to_string(&stty).unwrap();
    let _ = std::fs::remove_file(&stty);
    let flags: Vec<&str> = modes.split_whitespace().collect();
    for sane in ["icanon", "echo", "isig"] {
        assert!(
            flags.contains(&sane),
            "terminal left raw ({sane} missing): {modes}"
        );
    }
}
privileged!(top_in_a_pty_draws_updates_and_quits);

/// Help, a filter, a group in full and back, as keys typed on a terminal.
fn keys_in_a_pty(tmux: &Tmux, server: u32) {
    let keys = |k: &str| tmux.run(&["send-keys", "-t", "top", k]);
    keys("?");
    tmux.wait_for("the help", |s| s.contains("reverse the sort"));
    keys("x");
    tmux.wait_for("the table again", |s| {
        !s.contains("reverse the sort") && s.contains("PROCESS")
    });
    keys("/");
    tmux.run(&["send-keys", "-t", "top", "-l", "tl-server"]);
    keys("Enter");
    let filtered = tmux.wait_for("the filter applied", |s| s.contains("filter \"tl-server\""));
    assert!(!table_row(&filtered, "tl-client"), "{filtered}");
    keys("Enter");
    // Its three connections are still open (it never closes them).
    let detail = tmux.wait_for("the server's group in full", |s| {
        s.contains("sockets open now (3)") && s.contains("Esc back")
    });
    assert!(detail.contains(&format!("{server}/tl-server")), "{detail}");
    assert!(detail.contains("CLOSE_WAIT"), "{detail}");
    keys("Escape");
    tmux.wait_for("the table again", |s| s.contains("PROCESS"));
    keys("/");
    keys("Escape");
    tmux.wait_for("the filter gone", |s| table_row(s, "tl-client"));
}

/// A row of `top`'s table (they start at the first column; the findings
/// pane's lines are indented) shows `text`.
fn table_row(screen: &str, text: &str) -> bool {
    screen
        .lines()
        .any(|l| !l.starts_with(' ') && l.contains(text))
}

/// The seconds `top`'s status line shows.
fn top_elapsed(screen: &str) -> Option<u64> {
    let status = screen.lines().next()?;
    let after = status.split("tcplinger top").nth(1)?.trim_start();
    after.split('s').next()?.trim().parse().ok()
}

/// `top --from` a committed recording (no tracing, no root needed): it
/// pauses, steps one second at a time while paused, resumes, and keeps
/// the last picture (the leak found) once the recording is over.
fn top_replays_a_recording_with_pause_and_step() {
    let tmux = Tmux::new();
    let recording = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/recordings/python_prefork_close_wait_leak.tlrec"
    );
    let command = format!(
        "{} top --from {recording}; echo TOP-EXITED-$((40+2))",
        env!("CARGO_BIN_EXE_tcplinger"),
    );
    tmux.run(&["send-keys", "-t", "top", &command, "Enter"]);
    tmux.wait_for("the replay", |s| {
        s.contains("replay ×1") && s.contains("PROCESS")
    });
    tmux.run(&["send-keys", "-t", "top", " "]);
    let paused = tmux.wait_for("the pause", |s| s.contains("paused"));
    let at = top_elapsed(&paused).unwrap_or_else(|| panic!("no time shown:\n{paused}"));
    tmux.run(&["send-keys", "-t", "top", "n"]);
    let stepped = tmux.wait_for("one step", |s| top_elapsed(s) == Some(at + 1));
    assert!(
        stepped.contains("paused"),
        "still paused after a step:\n{stepped}"
    );
    // Faster than the recording: resumed, it ends in a few seconds.
    tmux.run(&["send-keys", "-t", "top", " "]);
    let ended = tmux.wait_for("the end of the recording", |s| {
        s.contains("end of recording")
    });
    assert!(ended.contains("close_wait_leak"), "{ended}");
    assert!(ended.contains("python3"), "{ended}");
    tmux.run(&["send-keys", "-t", "top", "q"]);
    tmux.wait_for("the shell again", |s| s.contains("TOP-EXITED-42"));
}
privileged!(top_replays_a_recording_with_pause_and_step);

/// `top --from --since --until`: what came before `--since` is read at
/// once (at a tenth of the recorded pace, the six seconds before it would
/// take a minute, beyond the screen wait's limit), and the replay ends at
/// `--until`.
fn top_replays_a_window_of_a_recording() {
    let recording = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/recordings/python_prefork_close_wait_leak.tlrec"
    );
    let top = |flags: &str| {
        let tmux = Tmux::new();
        let command = format!(
            "{} top --from {recording} {flags}; echo TOP-EXITED-$((40+2))",
            env!("CARGO_BIN_EXE_tcplinger"),
        );
        tmux.run(&["send-keys", "-t", "top", &command, "Enter"]);
        tmux
    };
    let slow = top("--since 6s --speed 0.1");
    slow.wait_for("the replay from --since", |s| {
        s.contains("replay ×0.1") && top_elapsed(s).is_some_and(|at| at >= 6)
    });
    slow.run(&["send-keys", "-t", "top", "q"]);
    slow.wait_for("the shell again", |s| s.contains("TOP-EXITED-42"));
    drop(slow);

    let window = top("--since 6s --until 8s");
    let ended = window.wait_for("the end of the window", |s| s.contains("end of recording"));
    let end = top_elapsed(&ended).unwrap_or_else(|| panic!("no time shown:\n{ended}"));
    assert!((6..=9).contains(&end), "ended at --until:\n{ended}");
    window.run(&["send-keys", "-t", "top", "q"]);
    window.wait_for("the shell again", |s| s.contains("TOP-EXITED-42"));
}
privileged!(top_replays_a_window_of_a_recording);

fn top_refuses_without_a_terminal() {
    require_root();
    let out = Command::new(env!("CARGO_BIN_EXE_tcplinger"))
        .args(["top"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("report"), "{stderr}");
}
privileged!(top_refuses_without_a_terminal);

/// `report` on a terminal says how far it is while it traces (elapsed, what
/// is left, running counts), then clears that line before the report; `-q`
/// keeps quiet; with stderr not a terminal there is no such line (every
/// other test reads that stderr).
fn report_shows_its_progress_on_a_terminal() {
    let scene = Scene::new();
    let tmux = Tmux::new();
    let out = std::env::temp_dir().join(format!("tcplinger-progress-{}", std::process::id()));
    let command = format!(
        "{bin} report --duration 6s --port {port} --format json > {out}; echo QUIET-$((40+2)); \
         {bin} report -q --duration 3s --port {port} --format json > {out}.q; echo DONE-$((40+2))",
        bin = env!("CARGO_BIN_EXE_tcplinger"),
        port = scene.port,
        out = out.display()
    );
    tmux.run(&["send-keys", "-t", "top", &command, "Enter"]);
    let during = tmux.wait_for("the progress line", |s| {
        s.contains("s of 6s (") && s.contains("s left)") && s.contains("so far")
    });
    assert!(during.contains("events"), "{during}");
    // Once the first report is over: gone, then no line at all from -q,
    // looked for on every screen until the second ends.
    let quiet = tmux.wait_for("the first report over", |s| s.contains("QUIET-42"));
    assert!(!quiet.contains("s left)"), "the line was left:\n{quiet}");
    let shown = std::cell::Cell::new(false);
    let after = tmux.wait_for("the quiet report over", |s| {
        shown.set(shown.get() || s.contains("s of 3s"));
        s.contains("DONE-42")
    });
    assert!(!shown.get(), "-q showed progress:\n{after}");
    for file in [out.clone(), out.with_extension("q")] {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let _ = std::fs::remove_file(&file);
        let report: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(report["findings"].is_array(), "{report}");
    }
}
privileged!(report_shows_its_progress_on_a_terminal);
