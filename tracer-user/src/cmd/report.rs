//! `tcplinger report`: trace for a while (30 s by default, or until Ctrl-C), looking at the live sockets every second, then print the findings and the groups behind them.

use std::{
    io::{BufWriter, IsTerminal as _, Write},
    time::Duration,
};

use super::{Driver, Output, Wake, output_result};
use crate::{
    model::timeline::Timeline,
    output::{
        ReportFormat,
        html::Pictures,
        report::{Report, other, rank},
    },
    session::{
        Host, Progress,
        analysis::{Analysis, Fed, Judging},
    },
    settings,
};

/// How often the sockets alive are looked at during the run: a report
/// covers what happened in it, not only what is left at its end.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The line a live report keeps on stderr while it traces: how far it is,
/// what it has seen so far, what it waits for. Written over itself, and
/// gone before the report is printed.
struct ProgressLine {
    on: bool,
    shown: bool,
}

impl ProgressLine {
    fn new(on: bool) -> Self {
        Self { on, shown: false }
    }

    /// `12s of 30s (18s left): 4512 events, 230 connections, 1 finding so far`.
    fn show<H: Host>(&mut self, analysis: &mut Analysis<H>, duration: Duration) {
        if !self.on {
            return;
        }
        let elapsed = Duration::try_from_secs_f64(analysis.window_s())
            .unwrap_or_default()
            .as_secs();
        let left = duration.as_secs().saturating_sub(elapsed);
        let findings = analysis.findings().len();
        let count = |n: u64, what| {
            crate::output::report::plural(usize::try_from(n).unwrap_or(usize::MAX), what)
        };
        let line = format!(
            "{elapsed}s of {} ({left}s left): {}, {}, {} so far",
            humantime::format_duration(duration),
            count(analysis.session.counts.events, "event"),
            count(analysis.connections, "connection"),
            count(findings as u64, "finding"),
        );
        self.say(&line);
    }

    /// One line over the last, cut to the terminal's width: a line that
    /// wrapped could not be written over.
    fn say(&mut self, what: &str) {
        if self.on {
            let line = format!("tcplinger: {what}");
            let width = stderr_columns().unwrap_or(80).saturating_sub(1);
            let cut: String = line.chars().take(width).collect();
            eprint!("\r\x1b[K{cut}");
            self.shown = true;
            super::PROGRESS_SHOWN.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The line goes, so what follows starts clean.
    fn clear(&mut self) {
        if self.shown {
            if super::PROGRESS_SHOWN.swap(false, std::sync::atomic::Ordering::Relaxed) {
                eprint!("\r\x1b[K");
            }
            self.shown = false;
        }
    }
}

/// The width of the terminal stderr is on, if it is one.
fn stderr_columns() -> Option<usize> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills the winsize it is given, nothing more.
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &raw mut size) } == 0;
    (ok && size.ws_col > 0).then_some(usize::from(size.ws_col))
}

pub async fn run(s: settings::Report) -> anyhow::Result<()> {
    if let Some(dir) = &s.history_dir {
        return super::history::report(&s, dir);
    }
    let output = Output::open(s.output.as_deref(), s.replace_output)?;
    if let Some(path) = &s.from {
        let (host, since) = super::replay(path, s.window)?;
        let driver = Driver::new(None, LOOK_EVERY)?;
        let trace = super::as_recorded(&s.trace, &host);
        let analysis = Analysis::on(host, &trace, s.max_groups, Judging::whole_run());
        return report(&s, output, driver, analysis, since).await;
    }
    let driver = Driver::new(Some(s.duration), LOOK_EVERY)?;
    let analysis = Analysis::start(&s.trace, s.max_groups, Judging::whole_run())?;
    report(&s, output, driver, analysis, None).await
}

/// Closes over time are counted per second to begin with (buckets widen as
/// the window grows).
const TIMELINE_BUCKET_NS: u64 = 1_000_000_000;

/// The records fed since the last call, onto the timeline.
fn tap<H: Host>(analysis: &mut Analysis<H>, timeline: &mut Timeline) {
    if let Some(fed) = analysis.tap.as_mut().map(std::mem::take) {
        for r in &fed.records {
            timeline.on_record(r);
        }
    }
}

/// The report of what `analysis` sees (from `since`, boot ns, if given:
/// a replay's `--since`).
async fn report<H: Host>(
    s: &settings::Report,
    output: Output,
    mut driver: Driver,
    mut analysis: Analysis<H>,
    mut since: Option<u64>,
) -> anyhow::Result<()> {
    let name = output.name();
    // Records read before a replay's window opened are not the window's.
    let mut events_before = 0;
    // An HTML page draws closes over time: the records fed are tapped.
    let html = s.format == ReportFormat::Html;
    if html {
        analysis.tap = Some(Fed::default());
    }
    let mut timeline = Timeline::new(analysis.started_ns(), TIMELINE_BUCKET_NS);
    // A live run says how far it is, on a terminal, over one line.
    let mut progress =
        ProgressLine::new(s.from.is_none() && !s.quiet && std::io::stderr().is_terminal());
    loop {
        // The window opens before the first step past it: what the tracker
        // follows stays (connections open then count as already open),
        // what was counted goes.
        if let Some(at) = since
            && analysis
                .session
                .host
                .next_at()
                .is_none_or(|next| next >= at)
        {
            analysis.restart(at);
            events_before = analysis.session.counts.events;
            since = None;
            timeline = Timeline::new(at, TIMELINE_BUCKET_NS);
            analysis.tap.as_mut().map(std::mem::take);
        }
        let wake = driver.next(&mut analysis).await;
        if wake.is_err() {
            progress.clear();
        }
        let wake = wake?;
        tap(&mut analysis, &mut timeline);
        match wake {
            Wake::Stop => break,
            Wake::Tick => {
                analysis.look();
                progress.show(&mut analysis, s.duration);
            }
            Wake::Step(Progress::Seeded { open, .. }) if s.from.is_none() => {
                eprintln!(
                    "tcplinger: tracing TCP connections ({open} already open) {}",
                    super::how_to_stop(Some(s.duration))
                );
            }
            Wake::Step(_) => {}
        }
    }
    progress.say("stopping: reading the last records and what is still open…");
    let stopped = analysis.stop().await;
    progress.clear();
    stopped?;
    tap(&mut analysis, &mut timeline);
    if let Some(at) = since {
        // The recording ended before the window opened: an empty window.
        analysis.restart(at);
        events_before = analysis.session.counts.events;
        timeline = Timeline::new(at, TIMELINE_BUCKET_NS);
    }
    let findings = analysis.findings();
    let pods = analysis.pods();
    let now = analysis.now_ns();
    timeline.reach(now);
    let seen: Vec<Option<(u64, u64)>> = findings.iter().map(|f| analysis.seen_span(f)).collect();
    let host = &mut analysis.session.host;
    let spans = seen
        .into_iter()
        .map(|span| span.map(|(first, last)| (host.wall(first), host.wall(last))))
        .collect();
    let started = host.wall(timeline.start_ns());
    let pictures = Pictures {
        from: Some(started),
        to: Some(host.wall(now)),
        spans,
        timeline: Some((&timeline, started)),
    };
    let report = Report {
        window_s: analysis.window_s(),
        events: analysis.session.counts.events - events_before,
        dropped: analysis.session.host.dropped(),
        findings: &findings,
        groups: rank(&analysis.agg, &findings),
        other: other(&analysis.agg),
        folded: analysis.agg.folded(),
        top: s.top,
        pods,
    };
    // A file being replaced is emptied only now, with the report ready: a
    // run that fails on the way leaves the previous one in place.
    let written = output.begin().map(|writer| {
        let mut out = BufWriter::new(writer);
        crate::output::write_report(&report, s.format, &mut out, &pictures)
            .and_then(|()| out.flush())
    });
    eprintln!("{}", analysis.session.summary(s.trace.max_sockets.get()));
    output_result(&name, written?)
}
