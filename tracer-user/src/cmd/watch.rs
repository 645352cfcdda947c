//! `tcplinger watch`: trace until stopped, printing connection records (or raw transitions) as they complete, then report what was seen and lost.

use std::{
    future::Future,
    io::{self, BufWriter, Write},
};

use anyhow::Context as _;

use super::{open_output, output_result, stop_signal};
use crate::{
    bpf::{
        load::{self, LoadOptions},
        ring::{EventSource, MAX_BATCH},
    },
    host::clock::{self, WallClock},
    model::{event::Record, select::Selection, tracker::ConnRecord, tracker::Tracker},
    output::{connections::ConnectionWriter, transitions::TransitionWriter},
    session::{self, Counts, Progress, Session, TraceOptions},
    settings::Watch,
};

pub async fn run(settings: Watch) -> anyhow::Result<()> {
    let (writer, name) = open_output(settings.output.as_deref())?;
    let stop = stop_signal(settings.duration)?;
    let out = BufWriter::new(writer);
    let result = if settings.transitions {
        transitions(
            &settings.trace.load,
            &settings.trace.selection,
            stop,
            TransitionWriter::new(out, settings.format),
        )
        .await
    } else {
        connections(
            &settings.trace,
            stop,
            ConnectionWriter::new(out, settings.format),
        )
        .await
    };
    output_result(&name, result?)
}

/// `--transitions`: every record straight to the output.
/// Returns the output's own outcome apart, for `output_result` to judge.
async fn transitions<W: Write>(
    options: &LoadOptions,
    selection: &Selection,
    stop: impl Future<Output = ()>,
    mut out: TransitionWriter<W>,
) -> anyhow::Result<io::Result<()>> {
    let mut tracer = load::load(options)?;
    session::attached(&tracer);
    let mut source = EventSource::new(tracer.take_ring().context("ring buffer already taken")?)
        .context("watching the ring buffer")?;
    eprintln!("tcplinger: tracing TCP state changes; Ctrl-C to stop");
    let mut clock = WallClock::new();
    let mut counts = Counts::default();
    let write = |out: &mut TransitionWriter<W>, r: &Record, clock: &WallClock| {
        if selection.admits(r.owner.as_ref().map(|o| &o.comm), r.raddr) {
            out.write(r, clock.wall(r.ts_ns))
        } else {
            Ok(())
        }
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
                () = source.ready(), if !backlog => {}
                () = tokio::task::yield_now(), if backlog => {}
            }
            clock.resync();
            backlog = session::drain(&mut source, &mut counts, |r| write(&mut out, r, &clock))?
                == MAX_BATCH;
            out.flush()?;
        }
        tracer.detach();
        // Records written before the programs went away are still in the ring.
        session::drain(&mut source, &mut counts, |r| write(&mut out, r, &clock))?;
        out.flush()
    }
    .await;
    tracer.detach();
    eprintln!(
        "tcplinger: {} events, {} dropped (ring full), {} missed (hook busy), {} malformed",
        counts.events,
        tracer.dropped().unwrap_or(0),
        tracer.missed_runs(),
        counts.malformed
    );
    Ok(result)
}

/// Default mode: one record per completed connection lifecycle, and the
/// sockets still lingering at exit.
async fn connections<W: Write>(
    trace: &TraceOptions,
    stop: impl Future<Output = ()>,
    mut out: ConnectionWriter<W>,
) -> anyhow::Result<io::Result<()>> {
    let tracker = Tracker::new(trace.max_sockets);
    let mut session = Session::start(&trace.load, tracker, false)?;
    let selection = &trace.selection;
    let wanted = |r: &ConnRecord| selection.admits(r.owner.as_ref().map(|o| &o.comm), r.raddr);
    let result = async {
        tokio::pin!(stop);
        out.header()?;
        out.flush()?;
        loop {
            tokio::select! {
                biased;
                () = &mut stop => break,
                progress = session.step() => {
                    if let Progress::Seeded { open, unreadable } = progress? {
                        announce(open, unreadable);
                    }
                }
            }
            for record in session.tracker.take_ready() {
                if wanted(&record) {
                    out.write(&record, session.clock.wall(record.end_ns))?;
                }
            }
            out.flush()?;
        }
        session.stop().await?;
        for record in session.tracker.finish(clock::boot_ns()) {
            if wanted(&record) {
                out.write(&record, session.clock.wall(record.end_ns))?;
            }
        }
        out.flush()
    }
    .await;
    session.tracer.detach();
    eprintln!("{}", session.summary(trace.max_sockets.get()));
    Ok(result)
}

/// The line that says tracing has started, once the open sockets are known.
pub fn announce(open: usize, unreadable: usize) {
    session::warn_unreadable(unreadable);
    eprintln!("tcplinger: tracing TCP connections ({open} already open); Ctrl-C to stop");
}
