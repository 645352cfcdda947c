//! The commands, one module each, and what they share: when to stop, where output goes, how a run ends, and the loop that steps an analysis.

pub mod daemon;
pub mod report;
pub mod sockets;
pub mod top;
pub mod watch;

use std::{
    future::{self, Future},
    io::{self, ErrorKind, Write},
    path::Path,
    pin::Pin,
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Interval, MissedTickBehavior, interval},
};

use crate::{
    error::UsageError,
    session::{Progress, analysis::Analysis},
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
            () = deadline => {}
        }
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

/// What woke the loop of a command that analyses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

impl Driver {
    pub fn new(duration: Option<Duration>, period: Duration) -> anyhow::Result<Self> {
        let mut tick = interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Self {
            stop: Box::pin(stop_signal(duration)?),
            tick,
        })
    }

    /// Waits for the next thing to do. Cancel-safe, so a command can select
    /// on it with its own inputs (`top`'s keys).
    pub async fn next(&mut self, analysis: &mut Analysis) -> io::Result<Wake> {
        let seeded = analysis.seeded;
        let wake = tokio::select! {
            biased;
            () = &mut self.stop => Ok(Wake::Stop),
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

/// Shows warnings on stderr, one line each.
pub fn warn(warnings: impl IntoIterator<Item = String>) {
    for w in warnings {
        eprintln!("tcplinger: warning: {w}");
    }
}

/// Says that the start-up snapshot could not read some namespaces, if so.
pub fn warn_unreadable(unreadable: usize) {
    if unreadable > 0 {
        warn([format!(
            "{unreadable} sock_diag dumps of network namespaces failed; their sockets already open are not known"
        )]);
    }
}
