//! `tcplinger daemon`: trace until SIGTERM, serve Prometheus metrics, and log each finding once (again only if it worsens).

use std::{
    collections::HashMap,
    io::{self, Write},
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use anyhow::Context as _;
use serde::Serialize;
use tokio::{net::TcpListener, time::interval};

use crate::{
    aggregate::GroupKey,
    analysis::{Analysis, Fed},
    cgroups::Cgroups,
    cli::{AnalysisArgs, DaemonArgs, FamilyFilter, LogFormat, TraceArgs},
    clock,
    config::{self, Settings},
    diagnose::{Finding, Pathology},
    error::EnvError,
    http::{self, Shared},
    metrics::{Health, Metrics},
    output::rfc3339_millis,
    session::Progress,
    watch::stop_signal,
};

/// How often the socket gauges and the tracer's health are refreshed.
const REFRESH: Duration = Duration::from_secs(1);

/// How often the picture of what is alive is redrawn with each open
/// socket's last I/O (a map lookup per socket), and findings drawn from it.
const ANALYSIS_EVERY: u32 = 5;

/// A finding is logged again only when its magnitude has grown this much.
pub const WORSENED_FACTOR: f64 = 1.5;

/// Remembers what was logged, so each finding is logged once, and again
/// only if it gets worse.
#[derive(Debug, Default)]
pub struct FindingLog {
    logged: HashMap<(Pathology, GroupKey), f64>,
}

impl FindingLog {
    /// The findings to log now: new ones, and ones that worsened by
    /// [`WORSENED_FACTOR`]; each with `true` if it is a worsening.
    pub fn raise<'a>(&mut self, findings: &'a [Finding]) -> Vec<(&'a Finding, bool)> {
        let mut raised = Vec::new();
        for f in findings {
            let magnitude = f.magnitude();
            match self.logged.get_mut(&(f.pathology, f.key)) {
                None => {
                    self.logged.insert((f.pathology, f.key), magnitude);
                    raised.push((f, false));
                }
                Some(last) if magnitude >= *last * WORSENED_FACTOR && magnitude > *last => {
                    *last = magnitude;
                    raised.push((f, true));
                }
                Some(_) => {}
            }
        }
        raised
    }
}

#[derive(Serialize)]
struct LogLine<'a> {
    ts: String,
    level: &'static str,
    event: &'static str,
    pathology: &'static str,
    pid: Option<u32>,
    comm: Option<String>,
    role: &'static str,
    remote: String,
    evidence: std::collections::BTreeMap<&'static str, &'a crate::diagnose::Figure>,
    summary: &'a str,
}

/// One finding as a log line, JSON or text.
pub fn log_line(
    f: &Finding,
    worsened: bool,
    format: LogFormat,
    now: std::time::SystemTime,
) -> String {
    let event = if worsened {
        "finding_worsened"
    } else {
        "finding"
    };
    match format {
        LogFormat::Json => serde_json::to_string(&LogLine {
            ts: rfc3339_millis(now),
            level: "warning",
            event,
            pathology: f.pathology.id(),
            pid: f.key.pid,
            comm: f.key.comm.map(|c| c.to_string()),
            role: f.key.role.name(),
            remote: f.key.remote(),
            evidence: f.evidence.iter().map(|(n, v)| (*n, v)).collect(),
            summary: &f.summary,
        })
        .unwrap_or_default(),
        LogFormat::Text => format!(
            "{} {event} {} {} {} -> {}: {} [{}]",
            rfc3339_millis(now),
            f.pathology.id(),
            f.key.process(),
            f.key.role.name(),
            f.key.remote(),
            f.summary,
            f.brief()
        ),
    }
}

/// Lets the daemon hold many client connections (its limit is far below
/// the usual hard limit of fds, not the default soft one of 1024).
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with valid pointers.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn trace_args(s: &Settings) -> TraceArgs {
    TraceArgs {
        duration: None,
        pid: s.filters.pids.clone(),
        port: s.filters.ports.clone(),
        ipv4: s.filters.family == FamilyFilter::Ipv4,
        ipv6: s.filters.family == FamilyFilter::Ipv6,
        max_sockets: s.max_sockets,
        ring_bytes: s.ring_bytes,
        select: s.select.clone(),
        disable_hook: s.disabled_hooks.clone(),
    }
}

pub async fn run(args: DaemonArgs) -> anyhow::Result<()> {
    let settings = config::resolve(&args)?;
    if args.check_config {
        print!("{}", settings.to_toml());
        eprintln!("tcplinger: configuration OK");
        return Ok(());
    }
    if !settings.listen.ip().is_loopback() {
        eprintln!(
            "tcplinger: serving metrics on {} (--allow-non-loopback): they name processes and the addresses of their peers; keep that port from untrusted networks",
            settings.listen
        );
    }
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|e| EnvError::Listen {
            addr: settings.listen,
            reason: e.to_string(),
        })?;
    raise_fd_limit();
    let stop = stop_signal(args.duration)?;
    let mut analysis = Analysis::start(
        &trace_args(&settings),
        &AnalysisArgs {
            max_groups: settings.max_groups,
        },
    )?;
    analysis.tap = Some(Fed::default());
    if let Some(prefix) = &settings.cgroup {
        analysis.only_cgroup(prefix.clone());
    }
    let shared = Arc::new(Shared {
        metrics: Mutex::new(Metrics::new(settings.max_endpoints)),
        last_loop_ns: clock::boot_ns().into(),
    });
    let server = tokio::spawn(http::serve(listener, shared.clone()));
    let mut cgroups = Cgroups::new();
    let mut findings_log = FindingLog::default();
    let mut refresh = interval(REFRESH);
    let mut refreshes: u32 = 0;
    let stdout = io::stdout();
    tokio::pin!(stop);
    let result: anyhow::Result<()> = async {
        loop {
            tokio::select! {
                biased;
                () = &mut stop => break,
                progress = analysis.step() => {
                    if let Progress::Seeded { open, unreadable } = progress? {
                        crate::session::warn_unreadable(unreadable);
                        eprintln!(
                            "tcplinger: daemon tracing TCP connections ({open} already open); metrics on http://{}/metrics",
                            settings.listen
                        );
                    }
                    feed_metrics(&mut analysis, &shared, &mut cgroups);
                }
                _ = refresh.tick() => {
                    refresh_metrics(&mut analysis, &shared, &mut cgroups);
                    refreshes += 1;
                    // The first tick comes at once: findings of the first look.
                    if refreshes % ANALYSIS_EVERY == 1 {
                        analysis.observe();
                        let findings = analysis.findings();
                        let raised = findings_log.raise(&findings);
                        if let Ok(mut m) = shared.metrics.lock() {
                            let raised: Vec<Finding> = raised.iter().map(|(f, _)| (*f).clone()).collect();
                            m.on_findings(&raised, &findings);
                        }
                        let mut out = stdout.lock();
                        for (f, worsened) in raised {
                            writeln!(out, "{}", log_line(f, worsened, settings.log_format, std::time::SystemTime::now()))
                                .context("writing the log")?;
                        }
                        out.flush().context("writing the log")?;
                    }
                }
            }
            shared.last_loop_ns.store(clock::boot_ns(), Ordering::Relaxed);
        }
        Ok(())
    }
    .await;
    server.abort();
    analysis.stop().await.context("stopping")?;
    eprintln!("{}", analysis.session.summary(settings.max_sockets.get()));
    result
}

/// Tracker output since the last call into the counters and histograms.
fn feed_metrics(analysis: &mut Analysis, shared: &Shared, cgroups: &mut Cgroups) {
    let Some(fed) = analysis.tap.as_mut().map(std::mem::take) else {
        return;
    };
    let Ok(mut m) = shared.metrics.lock() else {
        return;
    };
    let mut container = |cgroup_id: u64| cgroups.lookup(cgroup_id).cloned();
    for id in &fed.opened {
        m.on_opened(id, &mut container);
    }
    for r in &fed.records {
        m.on_record(r, &mut container);
    }
    for id in &fed.timewait_starts {
        m.on_timewait_start(id);
    }
    for e in &fed.timewait_ends {
        m.on_timewait_end(e);
    }
}

/// Once a second: the sockets alive now, and the tracer's own health.
fn refresh_metrics(analysis: &mut Analysis, shared: &Shared, cgroups: &mut Cgroups) {
    let live = analysis.live();
    let ring_peak = analysis.session.tracer.ring_peak_and_reset();
    let Ok(mut m) = shared.metrics.lock() else {
        return;
    };
    m.set_sockets(live.iter().map(|l| (l.id, l.state)), |cgroup_id| {
        cgroups.lookup(cgroup_id).cloned()
    });
    let session = &analysis.session;
    m.set_health(Health {
        events: session.counts.events,
        dropped: session.tracer.dropped().unwrap_or(0),
        missed: session.tracer.missed_runs(),
        malformed: session.counts.malformed,
        evicted: session.tracker.evicted(),
        tracked: session.tracker.tracked() as u64,
        ring_bytes: u64::from(session.tracer.ring_bytes()),
        ring_peak,
        groups: analysis.agg.groups().count() as u64,
        folded: analysis.agg.folded(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        aggregate::{
            Aggregator,
            tests::{id, record},
        },
        diagnose::diagnose,
        tracker::{ClosedBy, Role},
    };

    fn findings(closes: u64) -> Vec<Finding> {
        let mut a = Aggregator::new(10, 0);
        let c = id(1, Role::Client, 80);
        for _ in 0..closes {
            a.on_record(&record(c, ClosedBy::Remote, 5, None));
        }
        diagnose(a.groups(), 10.0)
    }

    #[test]
    fn a_finding_is_logged_once_and_again_only_when_worse() {
        let mut log = FindingLog::default();
        assert_eq!(log.raise(&findings(12)).len(), 1);
        assert_eq!(log.raise(&findings(12)).len(), 0, "same again: quiet");
        assert_eq!(log.raise(&findings(15)).len(), 0, "a little worse: quiet");
        let worse = findings(18);
        let raised = log.raise(&worse);
        assert_eq!(raised.len(), 1);
        assert!(raised[0].1, "marked as worsened");
        assert_eq!(log.raise(&findings(20)).len(), 0);
    }

    /// The capabilities granted by the systemd unit and the DaemonSet.
    fn granted(text: &str, marker: &str) -> Vec<String> {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(marker))
            .expect(marker);
        line.trim_start()[marker.len()..]
            .split([' ', ',', '[', ']', '"'])
            .filter(|w| !w.is_empty())
            .map(|w| w.trim_start_matches("CAP_").to_string())
            .collect()
    }

    #[test]
    fn the_unit_and_the_daemonset_grant_the_same_documented_capabilities() {
        let unit = include_str!("../../deploy/tcplinger.service");
        let daemonset = include_str!("../../deploy/kubernetes/daemonset.yaml");
        let readme = include_str!("../../README.md");
        let bounding = granted(unit, "CapabilityBoundingSet=");
        assert_eq!(bounding, granted(unit, "AmbientCapabilities="));
        assert_eq!(bounding, granted(daemonset, "add:"));
        for cap in &bounding {
            assert!(
                unit.contains(&format!("#   CAP_{cap}")),
                "the unit explains CAP_{cap}"
            );
            assert!(
                readme.contains(&format!("CAP_{cap}")),
                "the README explains CAP_{cap}"
            );
        }
        assert!(unit.contains(
            "ExecStart=/usr/local/bin/tcplinger daemon --config /etc/tcplinger/tcplinger.toml"
        ));
        // What the daemon keeps once attached is among what it is granted.
        for (cap, _) in crate::privilege::KEPT {
            let name = cap.to_string();
            let name = name.trim_start_matches("CAP_");
            assert!(
                bounding.iter().any(|b| b == name),
                "{name} kept but not granted"
            );
        }
    }

    #[test]
    fn log_lines_in_both_formats() {
        let f = &findings(12)[0];
        let now = std::time::SystemTime::UNIX_EPOCH;
        let json: serde_json::Value =
            serde_json::from_str(&log_line(f, false, LogFormat::Json, now)).unwrap();
        assert_eq!(json["event"], "finding");
        assert_eq!(json["pathology"], "server_closes");
        assert_eq!(json["pid"], 1);
        assert_eq!(json["evidence"]["closed"], 12);
        let text = log_line(f, true, LogFormat::Text, now);
        assert!(text.starts_with("1970-01-01T00:00:00.000Z finding_worsened server_closes 1/app client -> 10.0.0.2:80:"), "{text}");
        assert!(!text.contains('\n'));
    }
}
