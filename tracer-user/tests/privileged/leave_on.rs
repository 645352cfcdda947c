//! What a tracer left on for weeks must hold: memory bounded by its flags whatever the run length.

use std::time::{Duration, Instant};

use crate::support::{churn::Churn, require_root, scene::fresh_port, tracer::Tcplinger, vm_kib};

/// Connections before memory is first measured: the tracer's tables,
/// buffers and allocator have reached their working size by then.
const WARM_UP: u64 = 300_000;
/// Growth allowed after warm-up. A leak of the size once found (about 170
/// bytes a connection) would be 290 MiB over this run.
const GROWTH_KIB: u64 = 16 * 1024;

fn watch_memory_stays_flat_over_two_million_connections() {
    require_root();
    let port = fresh_port();
    let total = 2_000_000;
    let watch =
        Tcplinger::start_discarding(&["watch", "--format", "json", "--port", &port.to_string()]);
    let pid = watch.pid();
    let start = Instant::now();
    let churn = Churn::start(port, 4, total, Duration::from_mins(15));
    let mut warm = None;
    let mut peak = 0;
    while churn.running() {
        // The sampling period: RSS is read once a second while churn runs.
        std::thread::sleep(Duration::from_secs(1));
        let rss = vm_kib(pid, "VmRSS:");
        if warm.is_none() && churn.made() >= WARM_UP {
            warm = Some(rss);
        }
        if warm.is_some() {
            peak = peak.max(rss);
        }
    }
    let (made, failed) = churn.finish();
    let elapsed = start.elapsed();
    let end = vm_kib(pid, "VmRSS:");
    let run = watch.stop();
    let warm = warm.expect("warm-up reached");
    eprintln!(
        "{made} connections ({failed} failed) in {elapsed:?}: watch RSS {warm} KiB after {WARM_UP}, peak {peak}, end {end}"
    );
    assert!(made >= total, "only {made} connections in {elapsed:?}");
    assert!(
        peak <= warm + GROWTH_KIB,
        "RSS grew from {warm} to {peak} KiB over {made} connections"
    );
    assert!(run.status.success(), "{:?}", run.stderr);
    // One record a socket, two sockets a connection.
    assert!(
        run.events >= 2 * total,
        "{} events for {total} connections",
        run.events
    );
}
privileged!(watch_memory_stays_flat_over_two_million_connections);

/// Where the pids controller is: its own cgroup v1 hierarchy (a hybrid
/// layout, as on this machine), or the cgroup v2 root if enabled there.
fn pids_hierarchy() -> std::path::PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in mountinfo.lines() {
        let Some((fields, fs)) = line.split_once(" - ") else {
            continue;
        };
        let point = std::path::PathBuf::from(fields.split(' ').nth(4).unwrap_or_default());
        let mut fs = fs.split(' ');
        let (kind, options) = (fs.next(), fs.nth(1).unwrap_or_default());
        if kind == Some("cgroup") && options.split(',').any(|o| o == "pids") {
            return point;
        }
        if kind == Some("cgroup2")
            && std::fs::read_to_string(point.join("cgroup.subtree_control"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "pids"))
        {
            return point;
        }
    }
    panic!("no pids cgroup controller mounted (v1) or enabled at the v2 root");
}

/// A cgroup of its own for one process, removed when dropped.
struct PidsCgroup(std::path::PathBuf);

impl PidsCgroup {
    /// Moves `pid` (all its threads) into a new cgroup that lets it have
    /// no more tasks than it has now.
    fn freeze_task_count(pid: u32) -> PidsCgroup {
        let root = pids_hierarchy();
        let dir = root.join(format!("tcplinger-test-pids-{}", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
        let current = std::fs::read_to_string(dir.join("pids.current")).unwrap();
        std::fs::write(dir.join("pids.max"), current.trim()).unwrap();
        PidsCgroup(dir)
    }

    /// Times a task could not be created for the limit.
    fn refused(&self) -> u64 {
        let events = std::fs::read_to_string(self.0.join("pids.events")).unwrap();
        events
            .lines()
            .find_map(|l| l.strip_prefix("max "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A host out of pids (pids.max reached: an incident condition itself)
/// must not make the tracer fail: after start-up it creates no thread,
/// and its lookups in other namespaces (setns) run on the threads it has.
/// Once it used a thread per namespace lookup and tokio's on-demand
/// blocking threads, and panicked here.
fn tracing_goes_on_with_no_thread_to_spare() {
    require_root();
    let scene = crate::support::scene::Scene::new();
    let watch = Tcplinger::start(&["watch", "--format", "json", "--port", &scene.port_arg()]);
    let cgroup = PidsCgroup::freeze_task_count(watch.pid());
    // The clients close first and the server answers with its FIN 300 ms
    // later: the clients' sockets are orphans in FIN_WAIT2 meanwhile, and
    // how that ended is known only from sock_diag lookups inside the
    // client's namespace, made after the tracer can create no thread.
    let server = scene.server(&["--keep-ms", "300", "--close", "after-eof", "--count", "20"]);
    scene
        .client(&["--close", "first", "--count", "20"])
        .finish();
    server.finish();
    let port = scene.port;
    let closer = |l: &serde_json::Value| l["rport"] == port;
    let all_in = watch.wait_for(Duration::from_secs(20), |lines| {
        lines.iter().filter(|l| closer(l)).count() >= 20
    });
    let run = watch.stop();
    let stderr = run.stderr.join("\n");
    assert!(run.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let clients: Vec<_> = run.lines.iter().filter(|l| closer(l)).collect();
    assert!(all_in, "{} client records", clients.len());
    let judged = clients
        .iter()
        .filter(|l| l["complete"] == true && l["fin_wait2_end"] == "peer_fin")
        .count();
    assert_eq!(
        judged,
        clients.len(),
        "client records with their FIN_WAIT2 judged; the first: {}; stderr: {stderr}",
        clients[0]
    );
    eprintln!(
        "task creations refused during the run: {}",
        cgroup.refused()
    );
}
privileged!(tracing_goes_on_with_no_thread_to_spare);
