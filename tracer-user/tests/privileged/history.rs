//! The daemon's history on real software: a CLOSE_WAIT leak of a forking Python server with curl clients, a daemon SIGKILLed after its first minute and one restarted on the same store; `report --since` and `history` read it back (also as an unprivileged user while the daemon writes); a damaged store is moved aside; a directory that cannot hold one is an error at start-up.

use std::{os::unix::process::CommandExt as _, process::Command, time::Duration};

use serde_json::Value;
use tracer_user::model::{
    diagnose::CLOSE_WAIT_LEAK_AGE_MS,
    history::{MINUTE_NS, SETTLE_NS},
};

use crate::support::{
    daemon::with_history,
    real::{TempDir, comm_of, curl_loop, forkserver},
    scene::{Scene, loopback_addr},
    tracer::{Tcplinger, tcplinger},
    wait_until,
};

/// The first minute is written once it has ended and settled.
const FIRST_MINUTE: Duration = Duration::from_nanos(MINUTE_NS + SETTLE_NS + 10_000_000_000);

fn daemon(dir: &TempDir, scene: &Scene) -> Tcplinger {
    with_history(&scene.port_arg(), &dir.path)
}

/// `tcplinger ARGS --history-dir DIR` as `uid`; its JSON lines.
fn read_as(uid: Option<u32>, args: &[&str], dir: &TempDir) -> Vec<Value> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tcplinger"));
    command
        .args(args)
        .args(["--history-dir", &dir.path.to_string_lossy()]);
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    let out = command.output().expect("running tcplinger");
    assert!(
        out.status.success(),
        "tcplinger {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn leaks(lives: &[Value]) -> Vec<&Value> {
    lives
        .iter()
        .filter(|l| l["pathology"] == "close_wait_leak")
        .collect()
}

/// Waits for the daemon to log `event` for a finding of `pathology`.
fn wait_logged(tracer: &Tcplinger, event: &str, pathology: &str) {
    let limit = Duration::from_secs_f64(CLOSE_WAIT_LEAK_AGE_MS / 1000.0 + 30.0);
    assert!(
        tracer.wait_for(limit, |lines| {
            lines
                .iter()
                .any(|l| l["event"] == event && l["pathology"] == pathology)
        }),
        "no {event} {pathology}: {:?}",
        tracer.stderr_lines()
    );
}

fn lives(dir: &TempDir, uid: Option<u32>) -> Vec<Value> {
    read_as(uid, &["history", "--since", "1h", "--format", "json"], dir)
}

fn daemon_history_keeps_a_real_leak_through_sigkill_and_restart() {
    let scene = Scene::new();
    let dir = TempDir::new("history");
    let first = daemon(&dir, &scene);
    let (mut server, child) = forkserver(&scene);
    let child_comm = comm_of(child);
    // curl gives up after 0.5 s: 6 sockets left in CLOSE_WAIT in the child.
    curl_loop(&scene.net.client_ns, &scene.url(), 6, "-m 0.5");
    wait_logged(&first, "finding", "close_wait_leak");
    // The minute of the curl connections reaches the store (the leak's
    // life with it, or with a later one); then the daemon dies hard.
    assert!(
        wait_until(FIRST_MINUTE, || {
            clients_opened(&dir) == 6 && !leaks(&lives(&dir, None)).is_empty()
        }),
        "the traffic's minute not in the history: {:?}",
        first.stderr_lines()
    );
    let (status, _) = first.kill();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    // A new daemon on the same store: it opens it, closes the life the
    // killed one left standing, and sees the leak again.
    let second = daemon(&dir, &scene);
    assert!(
        !second.stderr_lines().iter().any(|l| l.contains("moved")),
        "{:?}",
        second.stderr_lines()
    );
    wait_logged(&second, "finding", "close_wait_leak");
    // Readable by anyone the files are readable by, while it is written.
    for entry in std::fs::read_dir(&dir.path).unwrap() {
        let path = entry.unwrap().path();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
    }
    let nobody = 65534;
    let read = lives(&dir, Some(nobody));
    let killed = leaks(&read);
    assert_eq!(killed.len(), 1, "the killed run's leak: {read:?}");
    assert_eq!(killed[0]["pid"], child, "{}", killed[0]);
    assert_eq!(
        killed[0]["standing"], false,
        "closed by the restart: {}",
        killed[0]
    );
    assert_eq!(killed[0]["end"], killed[0]["last_seen"], "{}", killed[0]);
    // The leak ends with the server; the daemon stops cleanly.
    server.stop();
    wait_logged(&second, "finding_resolved", "close_wait_leak");
    second.signal(libc::SIGTERM);
    second.stop_after_signal();
    let read = lives(&dir, None);
    let both = leaks(&read);
    assert_eq!(both.len(), 2, "one life per run: {read:?}");
    assert!(both.iter().all(|l| l["standing"] == false), "{read:?}");
    open_behind_the_leak(&dir, child);
    window_report(&dir, child, &child_comm);
}
privileged!(daemon_history_keeps_a_real_leak_through_sigkill_and_restart);

/// The sockets the leak held, kept whole while still open: all six, in
/// CLOSE_WAIT, held by the child (each run keeps its own).
fn open_behind_the_leak(dir: &TempDir, child: u32) {
    let kept = read_as(
        None,
        &[
            "history",
            "--connections",
            "--since",
            "1h",
            "--format",
            "json",
        ],
        dir,
    );
    let open: Vec<&Value> = kept
        .iter()
        .filter(|k| k["reason"] == "open_at_close_wait_leak")
        .collect();
    assert!(
        open.iter()
            .all(|k| k["pid"] == child && k["open_state"] == "CLOSE_WAIT" && k["role"] == "server"),
        "{open:?}"
    );
    let cookies: std::collections::HashSet<u64> =
        open.iter().filter_map(|k| k["cookie"].as_u64()).collect();
    assert_eq!(cookies.len(), 6, "{kept:?}");
}

/// The connections curl opened, as a report counts them.
fn opened_by_curl(report: &Value) -> u64 {
    report["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["comm"] == "curl")
        .map(|g| g["opened"].as_u64().unwrap_or(0))
        .sum()
}

/// The connections curl opened in the last minutes, as stored so far.
fn clients_opened(dir: &TempDir) -> u64 {
    let out = read_as(None, &["report", "--since", "10m", "--format", "json"], dir);
    out.first().map_or(0, opened_by_curl)
}

/// The report of the last minutes: the leak, its process, its figures;
/// `--comm` selects after the fact.
fn window_report(dir: &TempDir, child: u32, child_comm: &str) {
    let out = read_as(None, &["report", "--since", "10m", "--format", "json"], dir);
    let report = &out[0];
    let f = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["pathology"] == "close_wait_leak")
        .unwrap_or_else(|| panic!("no leak in {report}"));
    assert_eq!(f["pid"], child, "{f}");
    assert_eq!(f["comm"], child_comm, "{f}");
    assert_eq!(f["evidence"]["close_wait_now"], 6, "{f}");
    assert_eq!(
        f["evidence"]["fds"].as_array().map(Vec::len),
        Some(6),
        "{f}"
    );
    assert_eq!(opened_by_curl(report), 6, "the curl connections: {report}");
    let args = [
        "report",
        "--since",
        "10m",
        "--format",
        "json",
        "--comm",
        "nosuchprog",
    ];
    let none = read_as(None, &args, dir);
    assert_eq!(none[0]["findings"].as_array().map(Vec::len), Some(0));
}

fn daemon_history_moves_a_damaged_store_aside() {
    let scene = Scene::new();
    let dir = TempDir::new("history-damaged");
    let garbage = vec![0x5a_u8; 16384];
    std::fs::write(dir.path.join("history.db"), &garbage).unwrap();
    let tracer = daemon(&dir, &scene);
    let stderr = tracer.stderr_lines();
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("damaged") && l.contains("moved it to")),
        "{stderr:?}"
    );
    tracer.signal(libc::SIGTERM);
    let run = tracer.stop_after_signal();
    assert!(run.status.success(), "{:?}", run.stderr);
    let aside: Vec<_> = std::fs::read_dir(&dir.path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("history.db.unusable-"))
        .filter(|p| {
            !p.to_string_lossy().ends_with("-wal") && !p.to_string_lossy().ends_with("-shm")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), garbage);
    // The new store is whole: it reads.
    let out = tcplinger(&[
        "history",
        "--history-dir",
        &dir.path.to_string_lossy(),
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
privileged!(daemon_history_moves_a_damaged_store_aside);

fn daemon_history_in_a_directory_it_cannot_use_is_an_error_at_start() {
    let out = tcplinger(&[
        "daemon",
        "--listen",
        &loopback_addr().to_string(),
        "--history-dir",
        "/proc/tcplinger-history",
        "--duration",
        "5s",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot keep a history in /proc/tcplinger-history")
            && stderr.contains("--no-history"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
privileged!(daemon_history_in_a_directory_it_cannot_use_is_an_error_at_start);
