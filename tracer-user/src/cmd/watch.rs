//! `tcplinger watch`: trace until stopped, printing connection records (or raw transitions) as they complete, then report what was seen and lost.

use std::{
    future::Future,
    io::{self, BufWriter},
};

use super::{Output, ReaderGone, output_result, stop_signal};
use crate::{
    bpf::{load::LoadOptions, ring::MAX_BATCH},
    model::{
        fold::Unfolder,
        select::Selection,
        tracker::{ConnRecord, Tracker},
    },
    output::{Format, connections::ConnectionWriter, transitions::TransitionWriter},
    session::{self, Counts, Host, LiveHost, Progress, Session, TraceOptions},
    settings::Watch,
};

pub async fn run(settings: Watch) -> anyhow::Result<()> {
    let output = Output::open(settings.output.as_deref(), settings.replace_output)?;
    let name = output.name();
    let stop = stop_signal(settings.duration)?;
    let until = super::how_to_stop(settings.duration);
    let result = if settings.transitions {
        transitions(
            &settings.trace.load,
            &settings.trace.node_root,
            &settings.trace.selection,
            (stop, &until),
            output,
            settings.format,
        )
        .await
    } else {
        let tracker = Tracker::new(settings.trace.max_sockets);
        if let Some(path) = &settings.from {
            let (host, since) = super::replay(path, settings.window)?;
            let trace = super::as_recorded(&settings.trace, &host);
            let session = Session::new(host, tracker, false);
            let since = since.unwrap_or(0);
            connections(
                session,
                &trace,
                since,
                (stop, &until),
                output,
                settings.format,
            )
            .await
        } else {
            let session = Session::start(&settings.trace, tracker, false)?;
            let stop = (stop, until.as_str());
            connections(session, &settings.trace, 0, stop, output, settings.format).await
        }
    };
    output_result(&name, result?)
}

/// `--transitions`: every record straight to the output, until `stop`
/// (`until` says when, to the user).
/// Returns the output's own outcome apart, for `output_result` to judge.
async fn transitions(
    options: &LoadOptions,
    node_root: &std::path::Path,
    selection: &Selection,
    (stop, until): (impl Future<Output = ()>, &str),
    output: Output,
    format: Format,
) -> anyhow::Result<io::Result<()>> {
    let mut host = LiveHost::start(options, node_root, false)?;
    let mut reader = ReaderGone::new(&output);
    // Attached: only now may a file being replaced be emptied.
    let mut out = TransitionWriter::new(BufWriter::new(output.begin()?), format);
    super::warn(host.take_warnings());
    eprintln!("tcplinger: tracing TCP state changes {until}");
    let mut counts = Counts::default();
    // Every transition is written as it happens: no step is logged in the
    // kernel, so this takes no logs (and would unfold one in full).
    let mut unfolder = Unfolder::default();
    // Passes the waiting records to the output; the first write error ends it.
    let mut drain = |host: &mut LiveHost, out: &mut TransitionWriter<_>, counts: &mut Counts| {
        let clock = host.wall_clock();
        let mut written = Ok(());
        let n = session::drain(host, counts, &mut unfolder, |r| {
            if written.is_ok() && selection.admits(r.owner.as_ref().map(|o| &o.comm), r.raddr) {
                written = out.write(r, clock.wall(r.ts_ns));
            }
        });
        written.map(|()| n)
    };
    let result = async {
        tokio::pin!(stop);
        out.header()?;
        out.flush()?;
        let mut backlog = false;
        loop {
            tokio::select! {
                biased;
                () = &mut stop => break,
                _ = host.next(backlog) => {}
            }
            if reader.gone() {
                return Err(super::reader_gone_error());
            }
            let malformed = counts.malformed;
            backlog = drain(&mut host, &mut out, &mut counts)? == MAX_BATCH;
            if malformed == 0
                && let Some(first) = &counts.first_malformed
            {
                super::warn([format!("skipping malformed records: {first}")]);
            }
            out.flush()?;
        }
        host.detach();
        // Records written before the programs went away are still in the ring.
        drain(&mut host, &mut out, &mut counts)?;
        out.flush()
    }
    .await;
    host.detach();
    eprintln!(
        "tcplinger: {} events, {} dropped (ring full), {} missed (hook busy), {} malformed",
        counts.events,
        host.dropped(),
        host.missed(),
        counts.malformed
    );
    Ok(result)
}

/// Default mode: one record per completed connection lifecycle, and the
/// sockets still lingering at exit.
/// Records of connections that ended before `since` (boot ns; a replay's
/// `--since`) are not printed.
async fn connections<H: Host>(
    mut session: Session<H>,
    trace: &TraceOptions,
    since: u64,
    (stop, until): (impl Future<Output = ()>, &str),
    output: Output,
    format: Format,
) -> anyhow::Result<io::Result<()>> {
    let replayed = session.host.replayed();
    // A recording made with `--cgroup`: only owners under it.
    let cgroup = trace.cgroup.clone();
    let selection = &trace.selection;
    let contained = |host: &mut H, r: &ConnRecord| {
        cgroup
            .as_deref()
            .is_none_or(|prefix| session::analysis::in_cgroup(host, prefix, &r.id()))
            && (!selection.wants_pods() || session::analysis::in_pods(host, selection, &r.id()))
    };
    let pod = |host: &mut H, r: &ConnRecord| {
        r.owner
            .and_then(|o| session::analysis::pod_of(host, o.cgroup_id))
    };
    let mut reader = ReaderGone::new(&output);
    // Attached: only now may a file being replaced be emptied.
    let mut out = ConnectionWriter::new(BufWriter::new(output.begin()?), format);
    let wanted = |r: &ConnRecord| {
        r.end_ns >= since && selection.admits(r.owner.as_ref().map(|o| &o.comm), r.raddr)
    };
    let result = async {
        tokio::pin!(stop);
        out.header()?;
        out.flush()?;
        loop {
            if session.host.exhausted() {
                break;
            }
            tokio::select! {
                biased;
                () = &mut stop => break,
                progress = session.step() => {
                    if let Progress::Seeded { open, unreadable } = progress?
                        && !replayed
                    {
                        announce(open, unreadable, until);
                    }
                }
            }
            if reader.gone() {
                return Err(super::reader_gone_error());
            }
            super::warn(session.take_warnings());
            for record in session.tracker.take_ready() {
                if wanted(&record) && contained(&mut session.host, &record) {
                    let pod = pod(&mut session.host, &record);
                    out.write(&record, session.host.wall(record.end_ns), pod.as_ref())?;
                }
            }
            out.flush()?;
        }
        session.stop().await?;
        super::warn(session.take_warnings());
        let now = session.host.now_ns();
        for record in session.tracker.finish(now) {
            if wanted(&record) && contained(&mut session.host, &record) {
                let pod = pod(&mut session.host, &record);
                out.write(&record, session.host.wall(record.end_ns), pod.as_ref())?;
            }
        }
        out.flush()
    }
    .await;
    session.host.detach();
    eprintln!("{}", session.summary(trace.max_sockets.get()));
    Ok(result)
}

/// The line that says tracing has started, once the open sockets are known.
pub fn announce(open: usize, unreadable: usize, until: &str) {
    super::warn_unreadable(unreadable);
    eprintln!("tcplinger: tracing TCP connections ({open} already open) {until}");
}
