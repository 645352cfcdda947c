//! `tcplinger watch`: trace until stopped, printing connection records (or raw transitions) as they complete, then report what was seen and lost.

use std::{
    future::{self, Future},
    io::{self, BufWriter, ErrorKind, Write},
    path::Path,
    time::Duration,
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{TraceArgs, UsageError, WatchArgs},
    clock::{self, WallClock},
    load::{self, LoadOptions},
    output::{connections::ConnectionWriter, transitions::TransitionWriter},
    ring::{EventSource, MAX_BATCH},
    session::{self, Counts, Progress, Session},
    tracker::Tracker,
};

/// Resolves when the run should end: SIGINT, SIGTERM or `--duration`.
/// Handlers are installed before it is returned, so a signal that arrives
/// right after attaching is not lost.
pub fn stop_signal(duration: Option<Duration>) -> anyhow::Result<impl Future<Output = ()>> {
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        let deadline = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => future::pending().await,
            }
        };
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
            _ = deadline => {}
        }
    })
}

/// Load options from the shared tracing flags, refusing pids that do not exist.
/// Options for a connection-tracing session (records per connection).
pub fn load_options(trace: &TraceArgs) -> Result<LoadOptions, UsageError> {
    let filters = trace.filters()?;
    if let Some(pid) = filters
        .pids
        .iter()
        .find(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    {
        return Err(UsageError(format!("--pid: no process {pid}")));
    }
    Ok(LoadOptions {
        filters,
        ring_bytes: trace.ring_bytes,
        every_transition: false,
    })
}

/// The reader of stdout went away (`watch | head`): that ends the run, it
/// is not a failure.
pub fn output_result(result: io::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing output"),
    }
}

pub async fn run(args: WatchArgs) -> anyhow::Result<()> {
    let options = LoadOptions {
        every_transition: args.transitions,
        ..load_options(&args.trace)?
    };
    let stop = stop_signal(args.trace.duration)?;
    let out = BufWriter::new(io::stdout().lock());
    if args.transitions {
        transitions(&options, stop, TransitionWriter::new(out, args.format)).await
    } else {
        connections(
            &options,
            stop,
            ConnectionWriter::new(out, args.format),
            args.trace.max_sockets.get(),
        )
        .await
    }
}

/// `--transitions`: every record straight to the output.
async fn transitions<W: Write>(
    options: &LoadOptions,
    stop: impl Future<Output = ()>,
    mut out: TransitionWriter<W>,
) -> anyhow::Result<()> {
    let mut tracer = load::load(options)?;
    let mut source = EventSource::new(tracer.take_ring().context("ring buffer already taken")?)
        .context("watching the ring buffer")?;
    eprintln!("tcplinger: tracing TCP state changes; Ctrl-C to stop");
    let mut clock = WallClock::new();
    let mut counts = Counts::default();
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
            backlog =
                session::drain(&mut source, &mut counts, |r| out.write(r, &clock))? == MAX_BATCH;
            out.flush()?;
        }
        tracer.detach();
        // Records written before the programs went away are still in the ring.
        session::drain(&mut source, &mut counts, |r| out.write(r, &clock))?;
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
    output_result(result)
}

/// Default mode: one record per completed connection lifecycle, and the
/// sockets still lingering at exit.
async fn connections<W: Write>(
    options: &LoadOptions,
    stop: impl Future<Output = ()>,
    mut out: ConnectionWriter<W>,
    max_sockets: usize,
) -> anyhow::Result<()> {
    let tracker = Tracker::new(max_sockets.try_into().context("--max-sockets")?);
    let mut session = Session::start(options, tracker, false)?;
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
                out.write(&record, &session.clock)?;
            }
            out.flush()?;
        }
        session.stop().await?;
        for record in session.tracker.finish(clock::boot_ns()) {
            out.write(&record, &session.clock)?;
        }
        out.flush()
    }
    .await;
    session.tracer.detach();
    eprintln!("{}", session.summary(max_sockets));
    output_result(result)
}

/// The line that says tracing has started, once the open sockets are known.
pub fn announce(open: usize, unreadable: usize) {
    if unreadable > 0 {
        eprintln!(
            "tcplinger: warning: {unreadable} sock_diag dumps of network namespaces failed; their open sockets are not seeded"
        );
    }
    eprintln!("tcplinger: tracing TCP connections ({open} already open); Ctrl-C to stop");
}
