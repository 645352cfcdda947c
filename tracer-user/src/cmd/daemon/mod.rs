//! `tcplinger daemon`: trace until SIGTERM, serve Prometheus metrics, log each finding once (again only if it worsens), and keep a history of it all.

pub mod history;
pub mod http;
pub mod metrics;

use std::{
    collections::HashMap,
    io::{self, Write},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use crate::{
    cmd::daemon::history::{History, Totals},
    cmd::daemon::http::Shared,
    cmd::daemon::metrics::{Health, HistoryLosses, Metrics},
    cmd::{Driver, Wake},
    host::clock,
    host::history::{HistoryWriter, Limits},
    model::aggregate::GroupKey,
    model::diagnose::{Finding, Pathology},
    output::{
        report::{JsonFinding, json_finding},
        rfc3339_millis,
    },
    session::Host as _,
    session::Progress,
    session::analysis::{Analysis, Fed, Judging},
    settings::{self, LogFormat},
};
use anyhow::Context as _;
use serde::Serialize;

/// How often the socket gauges and the tracer's health are refreshed.
const REFRESH: Duration = Duration::from_secs(1);

/// How often the picture of what is alive is redrawn with each open
/// socket's last I/O (a map lookup per socket), and findings drawn from it.
const ANALYSIS_EVERY: u32 = 5;

/// A finding is logged again only when its magnitude has grown this much.
pub const WORSENED_FACTOR: f64 = 1.5;

/// A finding is over once it has been missing from this many analyses in a
/// row (15 s): one miss can be a pattern at the edge of its threshold.
pub const RESOLVED_AFTER: u32 = 3;

/// What happened to a finding since the last analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// New.
    Raised,
    /// Its main figure grew by [`WORSENED_FACTOR`] since it was last logged.
    Worsened,
    /// Its evidence is gone.
    Resolved,
}

impl Change {
    const fn event(self) -> &'static str {
        match self {
            Self::Raised => "finding",
            Self::Worsened => "finding_worsened",
            Self::Resolved => "finding_resolved",
        }
    }
}

/// A finding standing now, as last logged.
#[derive(Debug)]
struct Standing {
    logged_magnitude: f64,
    last: Finding,
    /// Analyses in a row it was missing from.
    missing: u32,
}

/// Remembers the findings standing, so each is logged when it appears,
/// again only if it gets worse, and once more when it is over.
#[derive(Debug, Default)]
pub struct FindingLog {
    standing: HashMap<(Pathology, GroupKey), Standing>,
}

impl FindingLog {
    /// The findings to log after an analysis that found `findings`.
    pub fn update(&mut self, findings: &[Finding]) -> Vec<(Finding, Change)> {
        let mut changes = Vec::new();
        for f in findings {
            let magnitude = f.magnitude();
            match self.standing.get_mut(&(f.pathology, f.key)) {
                None => {
                    self.standing.insert(
                        (f.pathology, f.key),
                        Standing {
                            logged_magnitude: magnitude,
                            last: f.clone(),
                            missing: 0,
                        },
                    );
                    changes.push((f.clone(), Change::Raised));
                }
                Some(s) => {
                    s.missing = 0;
                    s.last = f.clone();
                    if magnitude >= s.logged_magnitude * WORSENED_FACTOR
                        && magnitude > s.logged_magnitude
                    {
                        s.logged_magnitude = magnitude;
                        changes.push((f.clone(), Change::Worsened));
                    }
                }
            }
        }
        let present: Vec<(Pathology, GroupKey)> =
            findings.iter().map(|f| (f.pathology, f.key)).collect();
        let mut over = Vec::new();
        for (key, s) in &mut self.standing {
            if !present.contains(key) {
                s.missing += 1;
                if s.missing >= RESOLVED_AFTER {
                    over.push(*key);
                }
            }
        }
        for key in over {
            if let Some(s) = self.standing.remove(&key) {
                changes.push((s.last, Change::Resolved));
            }
        }
        changes
    }

    /// The findings standing now (a finding missing fewer than
    /// [`RESOLVED_AFTER`] times still stands).
    pub fn standing(&self) -> impl Iterator<Item = &Finding> {
        self.standing.values().map(|s| &s.last)
    }

    pub fn is_standing(&self, key: &(Pathology, GroupKey)) -> bool {
        self.standing.contains_key(key)
    }
}

#[derive(Serialize)]
struct LogLine<'a> {
    ts: String,
    level: &'static str,
    event: &'static str,
    #[serde(flatten)]
    finding: JsonFinding<'a>,
}

/// One finding as a log line, JSON or text.
pub fn log_line(
    f: &Finding,
    change: Change,
    format: LogFormat,
    now: std::time::SystemTime,
) -> String {
    let event = change.event();
    match format {
        LogFormat::Json => serde_json::to_string(&LogLine {
            ts: rfc3339_millis(now),
            level: if change == Change::Resolved {
                "info"
            } else {
                "warning"
            },
            event,
            finding: json_finding(f),
        })
        .unwrap_or_default(),
        LogFormat::Text => format!(
            "{} {event} {} {} {} {} {}: {} [{}]",
            rfc3339_millis(now),
            f.severity().name(),
            f.pathology.id(),
            f.process_short(),
            f.key.role.name(),
            f.key.endpoint(),
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
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0
            && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
        }
    }
}

pub async fn run(s: settings::Daemon) -> anyhow::Result<()> {
    if s.check_config {
        print!("{}", s.file.to_toml());
        eprintln!("tcplinger: configuration OK");
        return Ok(());
    }
    if !s.listen.ip().is_loopback() {
        eprintln!(
            "tcplinger: serving metrics on {} (--allow-non-loopback): they name processes and the addresses of their peers; keep that port from untrusted networks",
            s.listen
        );
    }
    let listener = http::listen(s.listen).with_context(|| {
        format!(
            "cannot serve metrics on {} (another tcplinger daemon? choose one with --listen)",
            s.listen
        )
    })?;
    raise_fd_limit();
    let mut driver = Driver::new(s.duration, REFRESH)?;
    let mut analysis = Analysis::start(&s.trace, s.max_groups, Judging::recent())?;
    // Once attached, so what tracing needs is said first, and the store's
    // thread starts with the capabilities already dropped (they are per
    // thread): it writes as the file's owner, and needs none.
    let mut history = s.history.as_ref().map(open_history).transpose()?;
    analysis.tap = Some(Fed::default());
    let shared = Arc::new(Shared::new(Metrics::new(
        s.max_endpoints,
        analysis.now_ns(),
    )));
    let (stop_server, server) = http::start(listener, shared.clone())
        .context("cannot start the thread serving metrics (is the pids limit reached?)")?;
    let mut findings_log = FindingLog::default();
    let mut refreshes: u32 = 0;
    let mut recent = Recent::default();
    let stdout = io::stdout();
    let result: anyhow::Result<()> = async {
        loop {
            match driver.next(&mut analysis).await? {
                Wake::Stop => break,
                Wake::Step(Progress::Seeded { open, .. }) => {
                    eprintln!(
                        "tcplinger: daemon tracing TCP connections ({open} already open); metrics on http://{}/metrics",
                        s.listen
                    );
                    feed_metrics(&mut analysis, &shared, history.as_mut());
                }
                // A look is in: findings are drawn from it.
                Wake::Step(Progress::Looked) => {
                    feed_metrics(&mut analysis, &shared, history.as_mut());
                    let findings = log_findings(
                        &mut analysis,
                        &shared,
                        &mut findings_log,
                        &stdout,
                        s.log_format,
                    )?;
                    if let Some(h) = history.as_mut() {
                        judged(h, &mut analysis, &findings, &findings_log);
                    }
                }
                Wake::Step(_) => feed_metrics(&mut analysis, &shared, history.as_mut()),
                Wake::Tick => {
                    if let Some(h) = history.as_mut() {
                        let (totals, now, clock) = totals(&mut analysis);
                        let host = &mut analysis.session.host;
                        h.tick(&analysis.agg, totals, now, &clock, &mut |c| host.pod(c));
                    }
                    refresh_metrics(&mut analysis, &shared, &mut recent, history.as_ref());
                    refreshes += 1;
                    // The first tick comes at once: the first look.
                    if refreshes % ANALYSIS_EVERY == 1 {
                        analysis.look();
                    }
                }
            }
            shared.last_loop_ns.store(clock::boot_ns(), Ordering::Relaxed);
        }
        Ok(())
    }
    .await;
    let _ = stop_server.send(());
    let _ = server.join();
    analysis.stop().await.context("stopping")?;
    if let Some(h) = history {
        close_history(h, &mut analysis, &findings_log);
    }
    eprintln!("{}", analysis.session.summary(s.trace.max_sockets.get()));
    result
}

/// The daemon stops: what the last drain brought, a last judgement on all
/// that was drained (the findings' lives hold the evidence of the seconds
/// since the last analysis too), then every minute so far.
fn close_history(mut h: History, analysis: &mut Analysis, findings_log: &FindingLog) {
    if let Some(fed) = analysis.tap.as_mut().map(std::mem::take) {
        let host = &mut analysis.session.host;
        let clock = host.wall_clock();
        h.on_records(&fed.records, &clock, &mut |c| host.pod(c));
    }
    let findings = analysis.findings();
    judged(&mut h, analysis, &findings, findings_log);
    let (totals, now, clock) = totals(analysis);
    let host = &mut analysis.session.host;
    h.finish(&analysis.agg, totals, now, &clock, &mut |c| host.pod(c));
}

/// An analysis found `findings`: the history follows their lives and keeps
/// the connections still open behind them.
fn judged(h: &mut History, analysis: &mut Analysis, findings: &[Finding], log: &FindingLog) {
    let now = analysis.now_ns();
    h.on_analysis(&analysis.agg, findings, |k| log.is_standing(k), now);
    keep_open(h, analysis, now);
}

/// The connections still open behind the findings standing, kept whole
/// in the history when due.
fn keep_open(h: &mut History, analysis: &mut Analysis, now: u64) {
    let wanted = h.open_wanted(now);
    if wanted.is_empty() {
        return;
    }
    let live = analysis.live_resolved();
    let session = &mut analysis.session;
    let clock = session.host.wall_clock();
    let tracker = &session.tracker;
    let host = &mut session.host;
    h.keep_open(
        &wanted,
        &live,
        |cookie| tracker.open_record(cookie, now),
        now,
        &clock,
        &mut |c| host.pod(c),
    );
}

/// The store and its thread, opened before tracing starts.
fn open_history(keep: &settings::HistoryKeep) -> anyhow::Result<History> {
    let limits = Limits {
        max_bytes: keep.max_bytes,
        days: keep.days,
    };
    let (writer, warning) = HistoryWriter::start(&keep.dir, limits).with_context(|| {
        format!(
            "cannot keep a history in {} (--history-dir elsewhere, or --no-history)",
            keep.dir.display()
        )
    })?;
    if let Some(warning) = warning {
        eprintln!("tcplinger: history: {warning}");
    }
    eprintln!(
        "tcplinger: keeping a history in {} ({} days, at most {} MiB)",
        writer.path.display(),
        keep.days,
        keep.max_bytes >> 20
    );
    Ok(History::new(writer, clock::boot_ns()))
}

/// The tracer's totals now, the boot clock and the wall clock.
fn totals(analysis: &mut Analysis) -> (Totals, u64, clock::WallClock) {
    let host = &mut analysis.session.host;
    let totals = Totals {
        events: analysis.session.counts.events,
        dropped: host.dropped(),
        missed: host.missed(),
        connections: analysis.connections,
    };
    (totals, host.now_ns(), host.wall_clock())
}

/// The findings of the look just applied, into the metrics and the log;
/// returns them.
fn log_findings(
    analysis: &mut Analysis,
    shared: &Shared,
    findings_log: &mut FindingLog,
    stdout: &io::Stdout,
    format: LogFormat,
) -> anyhow::Result<Vec<Finding>> {
    let findings = analysis.findings();
    let changes = findings_log.update(&findings);
    if let Ok(mut m) = shared.metrics.lock() {
        let raised: Vec<Finding> = changes
            .iter()
            .filter(|(_, c)| *c != Change::Resolved)
            .map(|(f, _)| f.clone())
            .collect();
        let standing: Vec<Finding> = findings_log.standing().cloned().collect();
        m.on_findings(&raised, &standing);
    }
    // Formatted first: the lock on stdout is held only to write.
    let now = std::time::SystemTime::now();
    let lines: Vec<String> = changes
        .iter()
        .map(|(f, change)| log_line(f, *change, format, now))
        .collect();
    let mut out = stdout.lock();
    for line in lines {
        writeln!(out, "{line}").context("writing the log")?;
    }
    out.flush().context("writing the log")?;
    Ok(findings)
}

/// Tracker output since the last call into the counters and histograms,
/// and the history.
fn feed_metrics(analysis: &mut Analysis, shared: &Shared, history: Option<&mut History>) {
    let Some(fed) = analysis.tap.as_mut().map(std::mem::take) else {
        return;
    };
    if let Some(h) = history {
        let host = &mut analysis.session.host;
        let clock = host.wall_clock();
        h.on_records(&fed.records, &clock, &mut |c| host.pod(c));
        h.say_warnings();
    }
    let now = analysis.now_ns();
    let Ok(mut m) = shared.metrics.lock() else {
        return;
    };
    // Steps come before the once-a-second refresh when both are ready:
    // what is fed now is used now.
    m.at(now);
    let host = &mut analysis.session.host;
    let mut container = |cgroup_id: u64| host.container(cgroup_id);
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

/// Loss counters as they stood at each of the last 60 refreshes (one a
/// second): what /healthz calls "the last minute".
#[derive(Default)]
struct Recent {
    samples: std::collections::VecDeque<(u64, u64, u64)>,
}

impl Recent {
    const KEPT: usize = 60;

    /// Adds the totals now; returns how much each grew over the minute.
    fn push(&mut self, dropped: u64, missed: u64, lookups_failed: u64) -> (u64, u64, u64) {
        if self.samples.len() >= Self::KEPT {
            self.samples.pop_front();
        }
        self.samples.push_back((dropped, missed, lookups_failed));
        let first = self.samples.front().copied().unwrap_or_default();
        (
            dropped.saturating_sub(first.0),
            missed.saturating_sub(first.1),
            lookups_failed.saturating_sub(first.2),
        )
    }
}

/// Once a second: the sockets alive now, and the tracer's own health.
fn refresh_metrics(
    analysis: &mut Analysis,
    shared: &Shared,
    recent: &mut Recent,
    history: Option<&History>,
) {
    let live = analysis.live_resolved();
    let ring_peak = analysis.session.host.ring_peak_and_reset();
    let (dropped, missed, losses) = (
        analysis.session.host.dropped(),
        analysis.session.host.missed(),
        analysis.session.host.losses(),
    );
    let (dropped_last_minute, missed_last_minute, lookups_failed_last_minute) =
        recent.push(dropped, missed, losses.lookups_failed);
    if let Ok(mut status) = shared.status.lock() {
        status.dropped_last_minute = dropped_last_minute;
        status.missed_last_minute = missed_last_minute;
        status.lookups_failed_last_minute = lookups_failed_last_minute;
        status.follower_busy_ns = analysis.session.host.follower_busy_ns();
        status.degraded = analysis.session.host.degraded();
    }
    let now = analysis.now_ns();
    let Ok(mut m) = shared.metrics.lock() else {
        return;
    };
    m.at(now);
    m.release_stale();
    let host = &mut analysis.session.host;
    m.set_sockets(live.iter().map(|l| (l.id, l.state)), |cgroup_id| {
        host.container(cgroup_id)
    });
    let session = &analysis.session;
    m.set_health(Health {
        events: session.counts.events,
        dropped,
        missed,
        malformed: session.counts.malformed,
        evicted: session.evicted(),
        tracked: session.tracker.tracked() as u64,
        ring_bytes: u64::from(session.host.ring_bytes()),
        ring_peak,
        groups: analysis.agg.groups().count() as u64,
        folded: analysis.agg.folded(),
    });
    m.set_losses(
        &losses,
        session.tracker.timewait_unfollowed(),
        session.logs_out_of_step(),
        [
            shared.shed.load(Ordering::Relaxed),
            shared.accept_failed.load(Ordering::Relaxed),
        ],
        &history.map_or_else(HistoryLosses::default, History::losses),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::aggregate::Aggregator,
        model::diagnose::diagnose,
        model::tracker::{ClosedBy, Role},
        testutil::{figures, id, record},
    };

    /// Findings of a server group with `closes` closes right after answering.
    fn findings(closes: u64) -> Vec<Finding> {
        let mut a = Aggregator::new(10, 0, crate::model::aggregate::Windowing::WHOLE_RUN);
        let c = id(1, Role::Server, 80);
        for _ in 0..closes {
            let mut r = record(c, ClosedBy::Local, 5, None);
            r.tcp = Some(figures(0, 0, 1, 1));
            a.on_record(&r);
        }
        diagnose(&a, &[u64::MAX], 10_000_000_000)
    }

    #[test]
    fn a_finding_is_logged_once_again_only_when_worse_and_when_over() {
        let mut log = FindingLog::default();
        let changes = log.update(&findings(12));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].1, Change::Raised);
        assert_eq!(log.update(&findings(12)).len(), 0, "same again: quiet");
        assert_eq!(log.update(&findings(15)).len(), 0, "a little worse: quiet");
        let worse = log.update(&findings(18));
        assert_eq!(worse.len(), 1);
        assert_eq!(worse[0].1, Change::Worsened);
        assert_eq!(log.update(&findings(20)).len(), 0);
        // Gone: it stands a while, then is logged as over, once.
        for _ in 1..RESOLVED_AFTER {
            assert_eq!(log.update(&[]).len(), 0);
            assert_eq!(log.standing().count(), 1);
        }
        let over = log.update(&[]);
        assert_eq!(over.len(), 1);
        assert_eq!(over[0].1, Change::Resolved);
        assert_eq!(log.standing().count(), 0);
        assert_eq!(log.update(&[]).len(), 0);
        // Back again: raised anew.
        assert_eq!(log.update(&findings(12))[0].1, Change::Raised);
    }

    #[test]
    fn a_finding_missing_once_does_not_flap() {
        let mut log = FindingLog::default();
        log.update(&findings(12));
        assert_eq!(log.update(&[]).len(), 0);
        assert_eq!(log.update(&findings(12)).len(), 0, "still the same finding");
        for _ in 1..RESOLVED_AFTER {
            assert_eq!(log.update(&[]).len(), 0, "the count of misses started over");
        }
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
        let unit = include_str!("../../../../deploy/tcplinger.service");
        let daemonset = include_str!("../../../../deploy/kubernetes/daemonset.yaml");
        let readme = include_str!("../../../../README.md");
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
        for (cap, _) in crate::bpf::privilege::KEPT {
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
            serde_json::from_str(&log_line(f, Change::Raised, LogFormat::Json, now)).unwrap();
        assert_eq!(json["event"], "finding");
        assert_eq!(json["level"], "warning");
        assert_eq!(json["pathology"], "server_closes");
        assert_eq!(json["severity"], "notice");
        assert_eq!(json["pid"], 1);
        assert_eq!(json["endpoint"], ":8080");
        assert_eq!(json["local_port"], 8080);
        assert_eq!(json["remote"], "10.0.0.2:*");
        assert_eq!(json["evidence"]["closed"], 12);
        let text = log_line(f, Change::Worsened, LogFormat::Text, now);
        assert!(
            text.starts_with(
                "1970-01-01T00:00:00.000Z finding_worsened notice server_closes 1/app server :8080:"
            ),
            "{text}"
        );
        assert!(!text.contains('\n'));
        let over: serde_json::Value =
            serde_json::from_str(&log_line(f, Change::Resolved, LogFormat::Json, now)).unwrap();
        assert_eq!(over["event"], "finding_resolved");
        assert_eq!(over["level"], "info");
    }
}
