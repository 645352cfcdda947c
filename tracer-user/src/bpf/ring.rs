//! Consumes the kernel ring buffer: waits for a forced wakeup or the drain tick, then hands over every waiting record.

use std::{io, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::{Interval, MissedTickBehavior, interval},
};

/// How long a record may wait in the ring. The kernel writes records
/// without waking us (a wakeup per record costs more than the tracing
/// itself) and only forces one when the ring fills up; this tick bounds the
/// latency of everything else.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

/// Records handed over per drain before the caller gets to check for a stop.
pub const MAX_BATCH: usize = 1 << 16;

pub struct EventSource {
    ring: AsyncFd<RingBuf<MapData>>,
    tick: Interval,
}

impl EventSource {
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        let mut tick = interval(DRAIN_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // SAFETY: the `RingBuf` owns its map fd and keeps it open, unchanged,
        // until it is dropped together with the `AsyncFd`.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { ring, tick })
    }

    /// Returns when records may be waiting.
    pub async fn ready(&mut self) {
        tokio::select! {
            guard = self.ring.readable_mut() => {
                // Clear before draining: a wakeup that races the drain then
                // re-arms readiness instead of being lost.
                if let Ok(mut guard) = guard {
                    guard.clear_ready();
                }
            }
            _ = self.tick.tick() => {}
        }
    }

    /// Passes the records waiting in the ring to `each`, at most
    /// [`MAX_BATCH`] so a flood cannot starve signal handling; returns how
    /// many. A full batch means more may be waiting.
    pub fn drain<E>(&mut self, mut each: impl FnMut(&[u8]) -> Result<(), E>) -> Result<usize, E> {
        let ring = self.ring.get_mut();
        let mut count = 0;
        while count < MAX_BATCH {
            let Some(item) = ring.next() else { break };
            count += 1;
            each(&item)?;
        }
        Ok(count)
    }
}
