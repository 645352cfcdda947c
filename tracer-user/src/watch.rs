//! `tcplinger watch`: trace until stopped, printing connection records (or raw transitions) as they complete, then report what was seen and lost.

use std::{
    future::{self, Future},
    io::{self, BufWriter, ErrorKind, Write},
    path::Path,
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    task::JoinHandle,
    time::{MissedTickBehavior, interval},
};

use crate::{
    cli::{Filters, TraceArgs, UsageError, WatchArgs},
    clock::{self, WallClock},
    decode::{Record, decode},
    follow::{DIAG_INTERVAL, DiagAnswer, Follower},
    load::{self, LoadOptions, Tracer},
    output::{connections::ConnectionWriter, transitions::TransitionWriter},
    ring::{EventSource, MAX_BATCH},
    snapshot,
    tracker::{CLOSE_GRACE_NS, Seed, Tracker},
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
    let options = load_options(&args.trace)?;
    let stop = stop_signal(args.trace.duration)?;
    let mut tracer = load::load(&options)?;
    let source = EventSource::new(tracer.take_ring().context("ring buffer already taken")?)
        .context("watching the ring buffer")?;
    let out = BufWriter::new(io::stdout().lock());
    let mut session = Session {
        source,
        clock: WallClock::new(),
        counts: Counts::default(),
    };
    let (result, evicted) = if args.transitions {
        eprintln!("tcplinger: tracing TCP state changes; Ctrl-C to stop");
        let mut out = TransitionWriter::new(out, args.format);
        let result = session.transitions(stop, &mut tracer, &mut out).await;
        (result.and_then(|()| out.flush()), None)
    } else {
        let mut out = ConnectionWriter::new(out, args.format);
        let mut tracker = Tracker::new(args.max_sockets);
        let result = session
            .connections(
                stop,
                &mut tracer,
                &mut out,
                &mut tracker,
                options.filters.clone(),
            )
            .await;
        (result.and_then(|()| out.flush()), Some(tracker.evicted()))
    };
    let dropped = tracer.dropped().unwrap_or(0);
    let evicted = evicted.map_or_else(String::new, |n| {
        format!(", {n} evicted (over --max-sockets {})", args.max_sockets)
    });
    eprintln!(
        "tcplinger: {} events, {dropped} dropped (ring full), {} missed (hook busy), {} malformed{evicted}",
        session.counts.events,
        tracer.missed_runs(),
        session.counts.malformed
    );
    match result {
        // The reader went away (`watch | head`): that ends the run, it is not a failure.
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing output"),
    }
}

struct Session {
    source: EventSource,
    clock: WallClock,
    counts: Counts,
}

impl Session {
    /// Decodes every waiting record into `each`; returns how many were read.
    fn drain(&mut self, mut each: impl FnMut(&Record) -> io::Result<()>) -> io::Result<usize> {
        let counts = &mut self.counts;
        self.source.drain(|bytes| {
            counts.events += 1;
            match decode(bytes) {
                Ok(record) => each(&record),
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

    /// `--transitions`: every record straight to the output.
    async fn transitions<W: Write>(
        &mut self,
        stop: impl Future<Output = ()>,
        tracer: &mut Tracer,
        out: &mut TransitionWriter<W>,
    ) -> io::Result<()> {
        tokio::pin!(stop);
        out.header()?;
        out.flush()?;
        let mut backlog = false;
        loop {
            tokio::select! {
                biased;
                () = &mut stop => break,
                () = self.source.ready(), if !backlog => {}
                () = tokio::task::yield_now(), if backlog => {}
            }
            self.clock.resync();
            let clock = self.clock;
            backlog = self.drain(|r| out.write(r, &clock))? == MAX_BATCH;
            out.flush()?;
        }
        tracer.detach();
        // Records written before the programs went away are still in the ring.
        let clock = self.clock;
        self.drain(|r| out.write(r, &clock))?;
        Ok(())
    }

    /// Default mode: events and timewait sightings through the tracker,
    /// one record per completed lifecycle.
    async fn connections<W: Write>(
        &mut self,
        stop: impl Future<Output = ()>,
        tracer: &mut Tracer,
        out: &mut ConnectionWriter<W>,
        tracker: &mut Tracker,
        filters: Filters,
    ) -> io::Result<()> {
        tokio::pin!(stop);
        out.header()?;
        out.flush()?;
        // The snapshot of what is already open runs while events flow, so a
        // slow /proc scan cannot overflow the ring.
        let mut seeding: Option<JoinHandle<(Vec<Seed>, usize)>> =
            Some(tokio::task::spawn_blocking(move || {
                snapshot::take(&filters)
            }));
        let mut follower = Some(Follower::default());
        let mut diag: Option<JoinHandle<(Follower, Vec<DiagAnswer>)>> = None;
        let mut diag_tick = interval(DIAG_INTERVAL);
        diag_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut losses = Losses::default();
        let mut backlog = false;
        loop {
            tokio::select! {
                biased;
                () = &mut stop => break,
                seeds = async { seeding.as_mut().expect("guarded").await }, if seeding.is_some() => {
                    seeding = None;
                    let (seeds, unreadable) = seeds.unwrap_or_default();
                    tracker.seed(&seeds, clock::boot_ns());
                    if unreadable > 0 {
                        eprintln!("tcplinger: warning: {unreadable} network namespace dumps failed; their open sockets are not seeded");
                    }
                    eprintln!(
                        "tcplinger: tracing TCP connections ({} already open); Ctrl-C to stop",
                        seeds.iter().filter(|s| s.state != tracer_common::TcpState::Listen).count()
                    );
                }
                answers = async { diag.as_mut().expect("guarded").await }, if diag.is_some() => {
                    diag = None;
                    if let Ok((back, answers)) = answers {
                        follower = Some(back);
                        apply(tracker, &answers);
                    }
                }
                _ = diag_tick.tick(), if follower.is_some() => {
                    let requests = tracker.diag_requests();
                    if !requests.is_empty() {
                        let mut f = follower.take().expect("guarded");
                        diag = Some(tokio::task::spawn_blocking(move || {
                            let answers = f.poll(requests);
                            (f, answers)
                        }));
                    }
                }
                () = self.source.ready(), if !backlog => {}
                () = tokio::task::yield_now(), if backlog => {}
            }
            self.clock.resync();
            backlog = self.drain(|r| {
                tracker.on_record(r);
                Ok(())
            })? == MAX_BATCH;
            // After the drain: a loss counted now may concern any record read so far.
            if losses.grew(tracer) {
                tracker.note_loss();
            }
            tracker.tick(clock::boot_ns());
            for record in tracker.take_ready() {
                out.write(&record, &self.clock)?;
            }
            out.flush()?;
        }

        tracer.detach();
        self.drain(|r| {
            tracker.on_record(r);
            Ok(())
        })?;
        if losses.grew(tracer) {
            tracker.note_loss();
        }
        // One last look for sockets that just closed or are still followed.
        if let Some(pending) = diag.take()
            && let Ok((back, answers)) = pending.await
        {
            follower = Some(back);
            apply(tracker, &answers);
        }
        let requests = tracker.diag_requests();
        if let Some(mut f) = follower.filter(|_| !requests.is_empty())
            && let Ok(answers) = tokio::task::spawn_blocking(move || f.poll(requests)).await
        {
            apply(tracker, &answers);
        }
        let now = clock::boot_ns();
        // Sockets closed moments ago have had all the grace they will get.
        tracker.tick(now.saturating_add(CLOSE_GRACE_NS));
        for record in tracker.finish(now) {
            out.write(&record, &self.clock)?;
        }
        Ok(())
    }
}

fn apply(tracker: &mut Tracker, answers: &[DiagAnswer]) {
    for a in answers {
        match &a.timewait {
            Some(timewait) => tracker.on_diag(&a.request, timewait, a.done_ns),
            None => tracker.on_diag_failed(&a.request),
        }
    }
}

/// Kernel-side loss counters as last seen.
#[derive(Default)]
struct Losses {
    dropped: u64,
    missed: u64,
}

impl Losses {
    /// True if records were dropped or hook runs missed since the last call.
    fn grew(&mut self, tracer: &Tracer) -> bool {
        let dropped = tracer.dropped().unwrap_or(self.dropped);
        let missed = tracer.missed_runs();
        let grew = dropped > self.dropped || missed > self.missed;
        self.dropped = dropped;
        self.missed = missed;
        grew
    }
}
