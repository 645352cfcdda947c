//! The daemon's history read back: `tcplinger history` (the findings' lives, or the connections kept whole) and `report --since` (the report of a window, in the shape of a live one).

use std::{
    fmt::Write as _,
    io::{self, BufWriter, Write as _},
    path::Path,
    time::{Duration, SystemTime},
};

use super::{Output, output_result};
use crate::{
    host::history::{History, Span},
    model::{
        aggregate::GroupKey,
        diagnose::{self, Finding},
        history::{StoredLife, restore},
        select::Selection,
        timeline::Timeline,
        tracker::ClosedBy,
    },
    output::{
        Format,
        history::{KeptView, LifeView, write_kept, write_lives},
        html::Pictures,
        report::{Report, other, rank},
    },
    settings,
};

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn at_ms(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// `2026-12-01T03:00:00Z`.
fn when(ms: i64) -> String {
    humantime::format_rfc3339_seconds(at_ms(ms)).to_string()
}

/// The window asked for, in unix ms.
fn span(since: settings::When, until: Option<settings::When>) -> Span {
    let now = SystemTime::now();
    Span {
        from_ms: unix_ms(since.ago(now)),
        to_ms: unix_ms(until.map_or(now, |u| u.ago(now))),
    }
}

/// A group the selection keeps: by process name, and by the remote
/// address of a client group (of a server group's only client).
fn admits(selection: &Selection, key: &GroupKey, client: Option<std::net::IpAddr>) -> bool {
    let remote = key
        .peer
        .or(client)
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    selection.admits(key.comm.as_ref(), remote)
}

/// What the history holds, said when the window finds nothing there.
fn say_span(history: &History, asked: Span) -> anyhow::Result<()> {
    match history.span()? {
        Some(held) if held.to_ms <= asked.from_ms || held.from_ms >= asked.to_ms => eprintln!(
            "tcplinger: {} holds nothing from {} to {}; it holds {} to {}",
            history.path.display(),
            when(asked.from_ms),
            when(asked.to_ms),
            when(held.from_ms),
            when(held.to_ms)
        ),
        Some(_) => {}
        None => eprintln!(
            "tcplinger: {} holds no minute yet (the daemon writes one about 15 s after each minute ends)",
            history.path.display()
        ),
    }
    Ok(())
}

/// Stored findings that this version can read; the others are counted.
fn findings_of(lives: &[StoredLife]) -> (Vec<(&StoredLife, Finding)>, usize) {
    let mut out = Vec::new();
    let mut unknown = 0;
    for l in lives {
        match l.peak.finding() {
            Some(f) => out.push((l, f)),
            None => unknown += 1,
        }
    }
    (out, unknown)
}

fn warn_unreadable(n: u64, what: &str) {
    if n > 0 {
        eprintln!(
            "tcplinger: {n} {what} of the history could not be read (written by another version?)"
        );
    }
}

/// `tcplinger history`.
pub fn run(s: &settings::History) -> anyhow::Result<()> {
    let history = History::open(&s.dir)?;
    let span = span(s.since, s.until);
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    if s.connections {
        let kept = history.kept(span)?;
        let views: Vec<KeptView> = kept
            .iter()
            .filter(|(_, _, record)| {
                s.selection.is_empty() || {
                    let v: serde_json::Value = serde_json::from_str(record).unwrap_or_default();
                    v["comm"]
                        .as_str()
                        .is_some_and(|c| s.selection.admits_name(c))
                }
            })
            .map(|(_, reason, record)| KeptView { reason, record })
            .collect();
        if kept.is_empty() {
            say_span(&history, span)?;
        }
        write_kept(&mut out, s.format, &views)?;
        out.flush()?;
        return Ok(());
    }
    let (lives, unreadable) = history.lives(span)?;
    warn_unreadable(unreadable, "findings");
    let (readable, unknown) = findings_of(&lives);
    warn_unreadable(unknown as u64, "findings of unknown kinds");
    let views: Vec<LifeView> = readable
        .into_iter()
        .filter(|(_, f)| s.pathologies.is_empty() || s.pathologies.contains(&f.pathology))
        .filter(|(_, f)| admits(&s.selection, &f.key, f.client))
        .map(|(l, f)| LifeView {
            start: at_ms(l.start_ms),
            last: at_ms(l.last_ms),
            end: l.end_ms.map(at_ms),
            finding: f,
        })
        .collect();
    if lives.is_empty() {
        say_span(&history, span)?;
    }
    write_lives(&mut out, s.format, &views)?;
    out.flush()?;
    if s.format == Format::Text {
        eprintln!(
            "tcplinger: {} from {} to {} ({})",
            history.path.display(),
            when(span.from_ms),
            when(span.to_ms),
            crate::output::report::plural(views.len(), "finding")
        );
    }
    Ok(())
}

/// `report --since` without `--from`: the report of the history's window.
pub fn report(s: &settings::Report, dir: &Path) -> anyhow::Result<()> {
    let output = Output::open(s.output.as_deref(), s.replace_output)?;
    let name = output.name();
    let history = History::open(dir)?;
    let since = s.window.since.expect("history mode has --since");
    let span = span(since, s.window.until);
    let selection = &s.trace.selection;
    let (slices, unreadable) = history.slices(span)?;
    warn_unreadable(unreadable, "minutes");
    let kept: Vec<&(i64, crate::model::history::Slice)> = slices
        .iter()
        .filter(|(_, slice)| admits(selection, &slice.key, slice.peers.single()))
        .collect();
    // Each group's pod as its last minute in the window said, and its
    // closes minute by minute (unix ns on the timeline).
    let ns = |ms: i64| u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000);
    let mut pods = std::collections::HashMap::new();
    let mut timeline = Timeline::new(ns(span.from_ms), 60_000_000_000);
    for (minute, slice) in &kept {
        if let Some(pod) = &slice.pod {
            pods.insert(slice.key, pod.clone());
        }
        let st = &slice.stats;
        let local = st.closed_by(ClosedBy::Local);
        let remote = st.closed_by(ClosedBy::Remote);
        timeline.add(slice.key, ns(*minute), ClosedBy::Local, local);
        timeline.add(slice.key, ns(*minute), ClosedBy::Remote, remote);
        let rest = st.closed.saturating_sub(local + remote);
        timeline.add(slice.key, ns(*minute), ClosedBy::Unknown, rest);
    }
    timeline.reach(ns(span.to_ms));
    let agg = restore(kept, s.max_groups);
    let (lives, unreadable) = history.lives(span)?;
    warn_unreadable(unreadable, "findings");
    let (readable, unknown) = findings_of(&lives);
    warn_unreadable(unknown as u64, "findings of unknown kinds");
    let mut lived: Vec<(Finding, (SystemTime, SystemTime))> = readable
        .into_iter()
        .filter(|(_, f)| admits(selection, &f.key, f.client))
        .map(|(l, mut f)| {
            let stood = (at_ms(l.start_ms), at_ms(l.end_ms.unwrap_or(l.last_ms)));
            let _ = match l.end_ms {
                Some(end) => write!(
                    f.summary,
                    " (Stood from {} to {}; figures at its worst.)",
                    when(l.start_ms),
                    when(end)
                ),
                None => write!(
                    f.summary,
                    " (Standing since {}, last seen {}; figures at its worst.)",
                    when(l.start_ms),
                    when(l.last_ms)
                ),
            };
            (f, stood)
        })
        .collect();
    // Most urgent first, as a live report; each keeps its span.
    lived.sort_by(|a, b| diagnose::order(&a.0, &b.0));
    let (findings, spans): (Vec<Finding>, Vec<_>) =
        lived.into_iter().map(|(f, s)| (f, Some(s))).unzip();
    let (minutes, counts) = history.counts(span)?;
    if minutes == 0 {
        say_span(&history, span)?;
    }
    let covered_ms = match history.span()? {
        Some(held) => (span.to_ms.min(held.to_ms) - span.from_ms.max(held.from_ms)).max(0),
        None => 0,
    };
    let report = Report {
        window_s: covered_ms as f64 / 1e3,
        events: counts.events,
        dropped: counts.dropped,
        findings: &findings,
        groups: rank(&agg, &findings),
        other: other(&agg),
        folded: agg.folded(),
        top: s.top,
        pods,
    };
    let pictures = Pictures {
        from: Some(at_ms(span.from_ms)),
        to: Some(at_ms(span.to_ms)),
        spans,
        timeline: Some((&timeline, at_ms(span.from_ms))),
    };
    let written = output.begin().map(|writer| {
        let mut out = BufWriter::new(writer);
        crate::output::write_report(&report, s.format, &mut out, &pictures)
            .and_then(|()| out.flush())
    });
    eprintln!(
        "tcplinger: history of {} from {} to {}: {} stored, {} events, {} dropped",
        history.path.display(),
        when(span.from_ms),
        when(span.to_ms),
        crate::output::report::plural(usize::try_from(minutes).unwrap_or(usize::MAX), "minute"),
        counts.events,
        counts.dropped,
    );
    output_result(&name, written?)
}
