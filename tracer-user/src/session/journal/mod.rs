//! Sessions on record: [`Recorder`] stands between a session and its host and writes everything the host hands over (events, ring records, counters, clocks, answers at the stop) to a recording; [`ReplayHost`] hands the same back in the same order, with no kernel and no root. The blocks are listed in RECORDING.md.

use std::rc::Rc;

use serde::{Deserialize, Serialize};

use super::host::HostLosses;
use crate::bpf::decode::{Decoded, decode_any};

mod record;
mod replay;

pub use record::Recorder;
pub use replay::{ReplayHost, Summary, open, summarize};

/// Block tags. A reader skips tags it does not know (a later build of the
/// same format version may add some); changing what a tag holds is a new
/// format version.
mod tag {
    pub const EVENT: u8 = 1;
    pub const RING: u8 = 2;
    pub const COUNTERS: u8 = 3;
    pub const WALL: u8 = 4;
    pub const WARNINGS: u8 = 5;
    pub const CONTAINER: u8 = 6;
    pub const STOP: u8 = 7;
    pub const SETTLED: u8 = 8;
    pub const DIAG_NOW: u8 = 9;
    pub const ALIVE_NOW: u8 = 10;
    pub const LOOK_NOW: u8 = 11;
    pub const NAMESPACES: u8 = 12;
    pub const TURNOVER: u8 = 13;
    pub const ENTRIES: u8 = 14;
}

/// In an [`tag::ENTRIES`] block, the length that says an entry's bytes
/// are those of the socket's entry in the block before.
const SAME_ENTRY: u32 = u32::MAX;

/// A block's JSON payload: what the host handed over, and when (boot ns).
#[derive(Serialize)]
struct Timed<'a, T> {
    now_ns: u64,
    value: &'a T,
}

#[derive(Deserialize)]
struct TimedOwned<T> {
    now_ns: u64,
    value: T,
}

/// The loss counters, written whenever one of them moves.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Counters {
    dropped: u64,
    missed: u64,
    losses: HostLosses,
}

/// A socket's entry as read: its cookie and raw bytes (shared with the
/// reads that refer to it).
type EntryRead = (u64, Rc<[u8]>);

/// A ring record's socket and time (a log's: its last step's), if it
/// decodes.
fn cookie_and_time(bytes: &[u8]) -> Option<(u64, u64)> {
    match decode_any(bytes).ok()? {
        Decoded::Record(r) => Some((r.cookie, r.ts_ns)),
        Decoded::Log(log) => Some((log.cookie(), log.socket.ts_ns)),
    }
}

#[cfg(test)]
mod tests;
