//! `tcplinger report`: trace for a while (30 s by default, or until Ctrl-C), then print the findings and the groups behind them.

use std::{
    io::{BufWriter, Write},
    time::Duration,
};

use tokio::time::{MissedTickBehavior, interval};

use crate::{
    cli::ReportArgs,
    cmd::watch::{open_output, output_result, stop_signal},
    output::report::{Report, other, rank},
    session::Progress,
    session::analysis::{Analysis, Judging},
};

const DEFAULT_DURATION: Duration = Duration::from_secs(30);

/// How often the sockets alive are looked at during the run: a report
/// covers what happened in it, not only what is left at its end.
const LOOK_EVERY: Duration = Duration::from_secs(1);

pub async fn run(args: ReportArgs) -> anyhow::Result<()> {
    let duration = args.trace.duration.unwrap_or(DEFAULT_DURATION);
    let (writer, name) = open_output(args.output.as_deref())?;
    let stop = stop_signal(Some(duration))?;
    let mut analysis = Analysis::start(&args.trace, &args.analysis, Judging::whole_run())?;
    let mut look = interval(LOOK_EVERY);
    look.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            () = &mut stop => break,
            _ = look.tick(), if analysis.seeded => analysis.observe(),
            progress = analysis.step() => {
                if let Progress::Seeded { open, unreadable } = progress? {
                    crate::session::warn_unreadable(unreadable);
                    eprintln!(
                        "tcplinger: tracing TCP connections for {} ({open} already open); Ctrl-C to stop early",
                        humantime::format_duration(duration)
                    );
                }
            }
        }
    }
    analysis.stop().await?;
    let findings = analysis.findings();
    let report = Report {
        window_s: analysis.window_s(),
        events: analysis.session.counts.events,
        dropped: analysis.session.tracer.dropped().unwrap_or(0),
        findings: &findings,
        groups: rank(&analysis.agg, &findings),
        other: other(&analysis.agg),
        folded: analysis.agg.folded(),
        top: args.top,
    };
    let mut out = BufWriter::new(writer);
    let written = report
        .write(args.format, &mut out)
        .and_then(|()| out.flush());
    eprintln!("{}", analysis.session.summary(args.trace.max_sockets.get()));
    output_result(&name, written)
}
