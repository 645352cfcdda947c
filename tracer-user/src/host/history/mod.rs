//! The daemon's history on disk: one SQLite file in the state directory (each group's minutes, the findings' lives, connections kept whole), written by its own thread, bounded in days and bytes, moved aside when corrupt; read by `report --since` and `history` while the daemon writes, as root or as anyone the file is readable by.
//!
//! Crash safety comes from SQLite's write-ahead log with a sync at each
//! commit: one commit a minute, so SIGKILL or a power cut loses at most
//! the minute being gathered. Readers never block the writer (WAL).

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{Connection, ErrorCode, OptionalExtension as _};

use crate::model::{
    aggregate::GroupKey,
    history::{Slice, StoredLife},
};

mod read;
mod store;
mod writer;

pub use read::{History, Span};
pub use store::Store;
pub use writer::HistoryWriter;

/// The file in the state directory.
pub const FILE: &str = "history.db";
/// The layout of the tables; a store of a later one is not written to.
const SCHEMA: i64 = 1;
/// Batches waiting for the writer; beyond, a batch is dropped and counted
/// (the store is stuck: a full or very slow disk).
const QUEUE: usize = 8;
/// How long a reader or the writer waits on the other's lock.
const BUSY: Duration = Duration::from_secs(5);
/// Pruned to this share of --history-max-bytes, so each batch does not
/// prune again.
const PRUNE_TO: f64 = 0.9;
/// Pruning by size drops this share of the stored span at a time, and at
/// least a minute.
const PRUNE_SHARE: i64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{0}")]
    Io(String),
    /// The file is not a store this version can use: damaged, or written
    /// by a later version.
    #[error("{0}")]
    Unusable(String),
    #[error("{path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
}

/// How much history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: u64,
    pub days: u32,
}

/// A connection kept whole: its `watch` JSON record and why it was kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    pub end_ms: i64,
    pub reason: String,
    pub key: GroupKey,
    pub record: String,
}

/// The tracer's counters over a minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinuteCounts {
    pub start_ms: i64,
    pub events: u64,
    pub dropped: u64,
    pub missed: u64,
    pub connections: u64,
    /// Connections worth keeping whole beyond the minute's share.
    pub kept_skipped: u64,
}

/// What the daemon hands the writer once a minute (and at its stop).
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Settled minutes: their counters and their groups' slices.
    pub minutes: Vec<(MinuteCounts, Vec<Slice>)>,
    pub lives: Vec<StoredLife>,
    pub kept: Vec<Kept>,
    /// Now (unix ms): what is older than --history-days goes.
    pub now_ms: i64,
}

fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn u64_of(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// True for errors that say the file itself is bad.
fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

/// The bytes the store takes on disk: the file and its log.
fn disk_bytes(path: &Path) -> u64 {
    let len = |p: PathBuf| fs::metadata(p).map_or(0, |m| m.len());
    len(path.to_path_buf()) + len(sibling(path, "-wal")) + len(sibling(path, "-shm"))
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

const TABLES: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- The tracer's counters, one row a minute (start of the minute, unix ms).
CREATE TABLE IF NOT EXISTS minutes (
    start_ms INTEGER PRIMARY KEY,
    events INTEGER NOT NULL,
    dropped INTEGER NOT NULL,
    missed INTEGER NOT NULL,
    connections INTEGER NOT NULL,
    kept_skipped INTEGER NOT NULL
);
-- One group's minute: the main figures as columns, everything in data
-- (JSON, zstd-compressed).
CREATE TABLE IF NOT EXISTS slices (
    start_ms INTEGER NOT NULL,
    comm TEXT,
    role TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    opened INTEGER NOT NULL,
    closed INTEGER NOT NULL,
    closed_local INTEGER NOT NULL,
    closed_remote INTEGER NOT NULL,
    resets INTEGER NOT NULL,
    established_now INTEGER NOT NULL,
    close_wait_now INTEGER NOT NULL,
    fin_wait2_now INTEGER NOT NULL,
    time_wait_now INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS slices_start ON slices (start_ms);
-- A finding from first to last seen, at its worst (peak: JSON, zstd-compressed).
CREATE TABLE IF NOT EXISTS findings (
    run_ms INTEGER NOT NULL,
    life INTEGER NOT NULL,
    pathology TEXT NOT NULL,
    severity TEXT NOT NULL,
    comm TEXT,
    role TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    end_ms INTEGER,
    peak TEXT NOT NULL,
    PRIMARY KEY (run_ms, life)
);
CREATE INDEX IF NOT EXISTS findings_start ON findings (start_ms);
-- Connections kept whole: reset, or stuck in a closing state (record: the watch JSON).
CREATE TABLE IF NOT EXISTS connections (
    end_ms INTEGER NOT NULL,
    reason TEXT NOT NULL,
    comm TEXT,
    role TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS connections_end ON connections (end_ms);
";

/// A slice or a finding as stored: JSON, zstd-compressed (a group's
/// minute is mostly distributions, a finding mostly words: both compress
/// several times over).
fn pack<T: serde::Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    let json = serde_json::to_vec(value)?;
    zstd::bulk::compress(&json, 3)
}

/// A value back: compressed JSON, or plain JSON text (what `sqlite3`
/// users may insert by hand).
fn unpack<T: serde::de::DeserializeOwned>(data: &[u8]) -> Option<T> {
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    if data.starts_with(&ZSTD_MAGIC) {
        // A minute of one group is far below this; more is not a slice.
        let json = zstd::bulk::decompress(data, 64 << 20).ok()?;
        serde_json::from_slice(&json).ok()
    } else {
        serde_json::from_slice(data).ok()
    }
}

fn comm_of(key: &GroupKey) -> Option<String> {
    key.comm.map(|c| c.to_string())
}

/// The schema version a store says it has (0: none yet).
fn schema_of(conn: &Connection) -> rusqlite::Result<i64> {
    let exists: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(0);
    }
    let v: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
}

#[cfg(test)]
mod tests;
