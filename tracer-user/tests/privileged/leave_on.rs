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
    assert!(
        run.events >= 5 * total,
        "{} events for {total} connections",
        run.events
    );
}
privileged!(watch_memory_stays_flat_over_two_million_connections);
