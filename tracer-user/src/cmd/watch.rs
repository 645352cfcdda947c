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
    bpf::decode::Record,
    bpf::load::{self, LoadOptions},
    bpf::ring::{EventSource, MAX_BATCH},
    cli::{TraceArgs, UsageError, WatchArgs},
    host::clock::{self, WallClock},
    model::select::Selection,
    model::tracker::{ConnRecord, Tracker},
    output::{connections::ConnectionWriter, transitions::TransitionWriter},
    session::{self, Counts, Progress, Session},
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
        disabled_hooks: trace.disable_hook.clone(),
    })
}

/// Where records go: stdout, or the `--output` file, with its name for
/// errors. The file is created before anything is loaded, so a bad path is
/// a usage error and not a late surprise.
pub fn open_output(path: Option<&Path>) -> Result<(Box<dyn Write>, String), UsageError> {
    match path {
        None => Ok((Box::new(io::stdout().lock()), "stdout".into())),
        Some(path) => {
            let file = std::fs::File::create(path)
                .map_err(|e| UsageError(format!("--output {}: {e}", path.display())))?;
            Ok((Box::new(file), path.display().to_string()))
        }
    }
}

/// Ends a run: the reader of stdout going away (`watch | head`) is not a
/// failure; anything else (a full disk) is, named with the output.
pub fn output_result(name: &str, result: io::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(anyhow::anyhow!("writing {name}: {e}; tracing stopped")),
        Ok(()) => Ok(()),
    }
}

pub async fn run(args: WatchArgs) -> anyhow::Result<()> {
    let options = LoadOptions {
        every_transition: args.transitions,
        ..load_options(&args.trace)?
    };
    let (writer, name) = open_output(args.output.as_deref())?;
    let stop = stop_signal(args.trace.duration)?;
    let out = BufWriter::new(writer);
    let selection = args.trace.select.selection();
    let result = if args.transitions {
        transitions(
            &options,
            &selection,
            stop,
            TransitionWriter::new(out, args.format),
        )
        .await
    } else {
        connections(
            &options,
            &selection,
            stop,
            ConnectionWriter::new(out, args.format),
            args.trace.max_sockets.get(),
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
            out.write(r, clock)
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
    options: &LoadOptions,
    selection: &Selection,
    stop: impl Future<Output = ()>,
    mut out: ConnectionWriter<W>,
    max_sockets: usize,
) -> anyhow::Result<io::Result<()>> {
    let tracker = Tracker::new(max_sockets.try_into().context("--max-sockets")?);
    let mut session = Session::start(options, tracker, false)?;
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
                    out.write(&record, &session.clock)?;
                }
            }
            out.flush()?;
        }
        session.stop().await?;
        for record in session.tracker.finish(clock::boot_ns()) {
            if wanted(&record) {
                out.write(&record, &session.clock)?;
            }
        }
        out.flush()
    }
    .await;
    session.tracer.detach();
    eprintln!("{}", session.summary(max_sockets));
    Ok(result)
}

/// The line that says tracing has started, once the open sockets are known.
pub fn announce(open: usize, unreadable: usize) {
    session::warn_unreadable(unreadable);
    eprintln!("tcplinger: tracing TCP connections ({open} already open); Ctrl-C to stop");
}
