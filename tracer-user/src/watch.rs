//! `tcplinger watch`: trace until stopped, printing events as they arrive, then report what was seen and lost.

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
    clock::WallClock,
    decode::decode,
    load::{self, LoadOptions},
    output::transitions::TransitionWriter,
    ring::{EventSource, MAX_BATCH},
};

/// What one run saw and lost, printed on exit.
#[derive(Debug, Default)]
struct Counts {
    events: u64,
    malformed: u64,
}

/// Resolves when the run should end: SIGINT, SIGTERM or `--duration`.
/// Handlers are installed before it is returned, so a signal that arrives
/// right after attaching is not lost.
fn stop_signal(duration: Option<Duration>) -> anyhow::Result<impl Future<Output = ()>> {
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
    })
}

pub async fn run(args: WatchArgs) -> anyhow::Result<()> {
    if !args.transitions {
        return Err(UsageError(
            "watch: per-connection records are not available yet; use `watch --transitions`".into(),
        )
        .into());
    }
    let options = load_options(&args.trace)?;
    let stop = stop_signal(args.trace.duration)?;
    let mut tracer = load::load(&options)?;
    let mut source = EventSource::new(tracer.take_ring().context("ring buffer already taken")?)
        .context("watching the ring buffer")?;
    eprintln!("tcplinger: tracing TCP state changes; Ctrl-C to stop");

    let mut out = TransitionWriter::new(BufWriter::new(io::stdout().lock()), args.format);
    let mut clock = WallClock::new();
    let mut counts = Counts::default();
    let result = trace_until(stop, &mut source, &mut out, &mut clock, &mut counts).await;

    // Read before detaching: the counters live with the programs.
    let missed = tracer.missed_runs();
    tracer.detach();
    // Records written before the programs went away are still in the ring.
    let result = result.and_then(|()| drain(&mut source, &mut out, &clock, &mut counts).map(drop));
    let flushed = result.and_then(|()| out.flush());
    let dropped = tracer.dropped().unwrap_or(0);
    eprintln!(
        "tcplinger: {} events, {dropped} dropped (ring full), {missed} missed (hook busy), {} malformed",
        counts.events, counts.malformed
    );
    match flushed {
        // The reader went away (`watch | head`): that ends the run, it is not a failure.
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing output"),
    }
}

async fn trace_until<W: Write>(
    stop: impl Future<Output = ()>,
    source: &mut EventSource,
    out: &mut TransitionWriter<W>,
    clock: &mut WallClock,
    counts: &mut Counts,
) -> io::Result<()> {
    tokio::pin!(stop);
    out.header()?;
    out.flush()?;
    let mut backlog = false;
    loop {
        tokio::select! {
            biased;
            () = &mut stop => return Ok(()),
            () = source.ready(), if !backlog => {}
            () = tokio::task::yield_now(), if backlog => {}
        }
        clock.resync();
        backlog = drain(source, out, clock, counts)? == MAX_BATCH;
        out.flush()?;
    }
}

fn drain<W: Write>(
    source: &mut EventSource,
    out: &mut TransitionWriter<W>,
    clock: &WallClock,
    counts: &mut Counts,
) -> io::Result<usize> {
    source.drain(|bytes| {
        counts.events += 1;
        match decode(bytes) {
            Ok(record) => out.write(&record, clock),
            Err(err) => {
                if counts.malformed == 0 {
                    eprintln!("tcplinger: skipping malformed record: {err}");
                }
                counts.malformed += 1;
                Ok(())
            }
        }
    })
}
