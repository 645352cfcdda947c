//! The loop `report`, `top` and `daemon` share (step the analysis, tick, stop), and when a run ends: SIGINT, SIGTERM or `--duration`.

use std::{
    future::{self, Future},
    io,
    pin::Pin,
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Interval, MissedTickBehavior, interval},
};

use super::{warn, warn_unreadable};
use crate::session::{Host, Progress, analysis::Analysis};

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
            () = deadline => {}
        }
    })
}

/// Ready at every poll: what the stop signal becomes once it has fired.
struct Fired;

impl Future for Fired {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        std::task::Poll::Ready(())
    }
}

/// What woke the loop of a command that analyses.
#[derive(Debug, Clone)]
pub enum Wake {
    /// A step of the session ran.
    Step(Progress),
    /// The command's period came round (once the open sockets are known).
    Tick,
    /// SIGINT, SIGTERM or `--duration`.
    Stop,
}

/// The loop `report`, `top` and `daemon` share: step the analysis until
/// told to stop, with a periodic tick once the start-up snapshot is in.
pub struct Driver {
    stop: Pin<Box<dyn Future<Output = ()>>>,
    tick: Interval,
    period_ns: u64,
    /// On a replay, the recorded time of the next tick.
    next_tick_ns: u64,
    /// On a replay shown at recorded speed (`top --from`): how many
    /// recorded seconds pass per second, the moment and recorded time the
    /// pace is counted from, and a tick waiting for its moment.
    speed: Option<f64>,
    paced_from: Option<(std::time::Instant, u64)>,
    /// Recorded time before which a paced replay is not paced (`--since`).
    pace_after_ns: u64,
    tick_at: Option<tokio::time::Instant>,
}

impl Driver {
    pub fn new(duration: Option<Duration>, period: Duration) -> anyhow::Result<Self> {
        let mut tick = interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Self {
            stop: Box::pin(stop_signal(duration)?),
            tick,
            period_ns: u64::try_from(period.as_nanos()).unwrap_or(u64::MAX),
            next_tick_ns: 0,
            speed: None,
            paced_from: None,
            pace_after_ns: 0,
            tick_at: None,
        })
    }

    /// A replay's ticks come at `speed` times the recorded pace (rather
    /// than as fast as the recording is read).
    #[must_use]
    pub fn paced(mut self, speed: f64) -> Self {
        self.speed = Some(speed);
        self
    }

    /// Resolves on SIGINT, SIGTERM or `--duration`, for a loop that is
    /// not stepping (a replay paused or over).
    pub async fn stopped(&mut self) {
        (&mut self.stop).await;
        self.stop = Box::pin(Fired);
    }

    /// A paced replay runs at once up to `ns` (recorded time), at its pace
    /// after.
    #[must_use]
    pub fn paced_after(mut self, ns: u64) -> Self {
        self.pace_after_ns = ns;
        self
    }

    /// The stop signal fired: from now on it is ready at once (a replay
    /// that ended waits on it again, and a future must not be polled
    /// after it completed).
    fn fired(&mut self) -> Wake {
        self.stop = Box::pin(Fired);
        Wake::Stop
    }

    /// The pace is counted afresh from now (after a pause).
    pub fn repace(&mut self) {
        self.paced_from = None;
    }

    /// Waits for the next thing to do. Cancel-safe, so a command can select
    /// on it with its own inputs (`top`'s keys). On a replay, ticks follow
    /// the recorded time, and the recording's end stops it.
    pub async fn next<H: Host>(&mut self, analysis: &mut Analysis<H>) -> io::Result<Wake> {
        let seeded = analysis.seeded;
        if analysis.session.host.replayed() {
            let now = analysis.now_ns();
            let wake = if let Some(at) = self.tick_at {
                // Cancel-safe: a tick interrupted while it waits for its
                // moment waits again next time.
                tokio::select! {
                    biased;
                    () = &mut self.stop => Ok(self.fired()),
                    () = tokio::time::sleep_until(at) => {
                        self.tick_at = None;
                        Ok(Wake::Tick)
                    }
                }
            } else if analysis.session.host.exhausted() {
                // At its pace, the end shows when its time comes, after a
                // last refresh.
                match (self.speed, self.paced_from) {
                    (Some(speed), Some((wall, recorded))) if now >= self.pace_after_ns => {
                        let ahead = now.saturating_sub(recorded) as f64 / 1e9 / speed;
                        let at = wall + Duration::from_secs_f64(ahead);
                        if at > std::time::Instant::now() {
                            self.tick_at = Some(tokio::time::Instant::from_std(at));
                            Ok(Wake::Step(Progress::Drained))
                        } else {
                            Ok(Wake::Stop)
                        }
                    }
                    _ => Ok(Wake::Stop),
                }
            } else if seeded && now >= self.next_tick_ns {
                self.next_tick_ns = now.saturating_add(self.period_ns);
                match self.speed {
                    Some(_) if now < self.pace_after_ns => Ok(Wake::Tick),
                    Some(speed) => {
                        let (wall, recorded) = *self
                            .paced_from
                            .get_or_insert((std::time::Instant::now(), now));
                        let ahead = now.saturating_sub(recorded) as f64 / 1e9 / speed;
                        let at = wall + Duration::from_secs_f64(ahead);
                        self.tick_at = Some(tokio::time::Instant::from_std(at));
                        Ok(Wake::Step(Progress::Drained))
                    }
                    None => Ok(Wake::Tick),
                }
            } else {
                tokio::select! {
                    biased;
                    () = &mut self.stop => Ok(self.fired()),
                    progress = analysis.step() => progress.map(Wake::Step),
                }
            };
            warn(analysis.session.take_warnings());
            return wake;
        }
        let wake = tokio::select! {
            biased;
            () = &mut self.stop => Ok(self.fired()),
            progress = analysis.step() => progress.map(Wake::Step),
            _ = self.tick.tick(), if seeded => Ok(Wake::Tick),
        };
        warn(analysis.session.take_warnings());
        if let Ok(Wake::Step(Progress::Seeded { unreadable, .. })) = wake {
            warn_unreadable(unreadable);
        }
        wake
    }
}

/// How a run ends, as the line that starts it says: `for 20s; Ctrl-C to
/// stop early`, or `until Ctrl-C`.
pub fn how_to_stop(duration: Option<Duration>) -> String {
    match duration {
        Some(d) => format!(
            "for {}; Ctrl-C to stop early",
            humantime::format_duration(d)
        ),
        None => "until Ctrl-C".into(),
    }
}
