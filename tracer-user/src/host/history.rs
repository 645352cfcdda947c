//! The daemon's history on disk: one SQLite file in the state directory (each group's minutes, the findings' lives, connections kept whole), written by its own thread, bounded in days and bytes, moved aside when corrupt; read by `report --since` and `history` while the daemon writes, as root or as anyone the file is readable by.
//!
//! Crash safety comes from SQLite's write-ahead log with a sync at each
//! commit: one commit a minute, so SIGKILL or a power cut loses at most
//! the minute being gathered. Readers never block the writer (WAL).

use std::{
    fs,
    io::ErrorKind,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    thread::JoinHandle,
    time::Duration,
};

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension as _, params};
use tracer_common::TcpState;

use crate::model::{
    aggregate::GroupKey,
    diagnose::Pathology,
    history::{Slice, StoredFinding, StoredLife},
    tracker::ClosedBy,
};

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

/// The store as the daemon writes it.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    limits: Limits,
}

impl Store {
    /// Opens (or creates) the store in `dir`. A damaged store, or one of a
    /// later version, is moved aside (`history.db.unusable-<time>`) and a
    /// new one begun; the returned warning says so.
    pub fn open(dir: &Path, limits: Limits) -> Result<(Self, Option<String>), HistoryError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(|e| HistoryError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(FILE);
        match Self::open_at(&path, limits) {
            Ok(store) => Ok((store, None)),
            Err(HistoryError::Unusable(why)) => {
                let aside = move_aside(&path)?;
                let store = Self::open_at(&path, limits)?;
                Ok((
                    store,
                    Some(format!(
                        "{why}; moved it to {} and began a new history",
                        aside.display()
                    )),
                ))
            }
            Err(e) => Err(e),
        }
    }

    fn open_at(path: &Path, limits: Limits) -> Result<Self, HistoryError> {
        let name = path.display().to_string();
        let sql = |source| HistoryError::Sqlite {
            path: name.clone(),
            source,
        };
        // Made here, so the mode is ours (SQLite gives its log files the
        // same): readable by the owner and the group.
        if let Err(e) = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)
        {
            return Err(HistoryError::Io(format!("cannot create {name}: {e}")));
        }
        let conn = Connection::open(path).map_err(sql)?;
        conn.busy_timeout(BUSY).map_err(sql)?;
        let damaged = |e: rusqlite::Error| {
            if is_damage(&e) {
                HistoryError::Unusable(format!("{name} is damaged ({e})"))
            } else {
                sql(e)
            }
        };
        // Before the first table, or it has no effect (then harmless).
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")
            .map_err(damaged)?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(damaged)?;
        if check != "ok" {
            return Err(HistoryError::Unusable(format!(
                "{name} is damaged (quick_check: {check})"
            )));
        }
        let schema = schema_of(&conn).map_err(damaged)?;
        if schema > SCHEMA {
            return Err(HistoryError::Unusable(format!(
                "{name} was written by a later tcplinger (history version {schema}; this one writes {SCHEMA})"
            )));
        }
        conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
            .map_err(damaged)?;
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA journal_size_limit = 4194304;")
            .map_err(damaged)?;
        conn.execute_batch(TABLES).map_err(damaged)?;
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?1)",
            params![SCHEMA.to_string()],
        )
        .map_err(damaged)?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
            limits,
        })
    }

    /// A new run of the daemon: findings a previous run left standing (it
    /// was killed) end when they were last seen.
    pub fn begin_run(&mut self) -> rusqlite::Result<usize> {
        self.conn.execute(
            "UPDATE findings SET end_ms = last_ms WHERE end_ms IS NULL",
            [],
        )
    }

    /// Bytes on disk (the file and its log).
    pub fn bytes(&self) -> u64 {
        disk_bytes(&self.path)
    }

    /// Writes a batch in one transaction, then prunes.
    pub fn write(&mut self, batch: &Batch) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut minute = tx.prepare(
                "INSERT OR REPLACE INTO minutes (start_ms, events, dropped, missed, connections, kept_skipped)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut slice = tx.prepare(
                "INSERT INTO slices (start_ms, comm, role, endpoint, opened, closed, closed_local,
                 closed_remote, resets, established_now, close_wait_now, fin_wait2_now, time_wait_now, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )?;
            for (counts, slices) in &batch.minutes {
                minute.execute(params![
                    counts.start_ms,
                    i64_of(counts.events),
                    i64_of(counts.dropped),
                    i64_of(counts.missed),
                    i64_of(counts.connections),
                    i64_of(counts.kept_skipped),
                ])?;
                for s in slices {
                    let data = pack(s)
                        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                    let st = &s.stats;
                    slice.execute(params![
                        counts.start_ms,
                        comm_of(&s.key),
                        s.key.role.name(),
                        s.key.endpoint(),
                        i64_of(st.opened),
                        i64_of(st.closed),
                        i64_of(st.closed_by(ClosedBy::Local)),
                        i64_of(st.closed_by(ClosedBy::Remote)),
                        i64_of(
                            st.closed_by(ClosedBy::ResetLocal)
                                + st.closed_by(ClosedBy::ResetRemote)
                        ),
                        i64_of(s.now.count(TcpState::Established)),
                        i64_of(s.now.count(TcpState::CloseWait)),
                        i64_of(s.now.count(TcpState::FinWait2)),
                        i64_of(s.now.count(TcpState::TimeWait)),
                        data,
                    ])?;
                }
            }
            let mut life = tx.prepare(
                "INSERT INTO findings (run_ms, life, pathology, severity, comm, role, endpoint,
                 start_ms, last_ms, end_ms, peak) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (run_ms, life) DO UPDATE SET last_ms = excluded.last_ms,
                 end_ms = excluded.end_ms, peak = excluded.peak",
            )?;
            for l in &batch.lives {
                let peak = pack(&l.peak)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                let severity = Pathology::from_id(&l.peak.pathology)
                    .map_or("unknown", |p| p.severity().name());
                life.execute(params![
                    l.run_ms,
                    i64_of(l.life),
                    l.peak.pathology,
                    severity,
                    comm_of(&l.peak.key),
                    l.peak.key.role.name(),
                    l.peak.key.endpoint(),
                    l.start_ms,
                    l.last_ms,
                    l.end_ms,
                    peak,
                ])?;
            }
            let mut kept = tx.prepare(
                "INSERT INTO connections (end_ms, reason, comm, role, endpoint, record)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for k in &batch.kept {
                kept.execute(params![
                    k.end_ms,
                    k.reason,
                    comm_of(&k.key),
                    k.key.role.name(),
                    k.key.endpoint(),
                    k.record,
                ])?;
            }
        }
        tx.commit()?;
        self.prune(batch.now_ms)
    }

    /// Drops what is older than the days kept, then the oldest hours while
    /// the store is over its size.
    fn prune(&mut self, now_ms: i64) -> rusqlite::Result<()> {
        let cutoff = now_ms - i64::from(self.limits.days) * 86_400_000;
        let deleted = self.delete_before(cutoff)?;
        let mut vacuumed = deleted > 0;
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a positive size below 2^63"
        )]
        let target = (self.limits.max_bytes as f64 * PRUNE_TO) as u64;
        // Bounded: each round drops a tenth of the span (a minute at
        // least) or stops.
        for _ in 0..100_000 {
            if self.bytes() <= target && !vacuumed {
                break;
            }
            if vacuumed {
                // Each step of the pragma frees pages: stepped to its end.
                let mut stmt = self.conn.prepare("PRAGMA incremental_vacuum")?;
                let mut rows = stmt.query([])?;
                while rows.next()?.is_some() {}
                drop(rows);
                drop(stmt);
                self.conn
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
                vacuumed = false;
                continue;
            }
            let (oldest, newest): (Option<i64>, Option<i64>) = self.conn.query_row(
                "SELECT min(t), max(t) FROM (SELECT start_ms AS t FROM minutes
                 UNION ALL SELECT start_ms FROM slices
                 UNION ALL SELECT end_ms FROM connections
                 UNION ALL SELECT coalesce(end_ms, last_ms) FROM findings)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let (Some(oldest), Some(newest)) = (oldest, newest) else {
                break;
            };
            let step = ((newest - oldest) / PRUNE_SHARE).max(60_000);
            if self.delete_before(oldest + step)? == 0 {
                break;
            }
            vacuumed = true;
        }
        Ok(())
    }

    fn delete_before(&mut self, cutoff_ms: i64) -> rusqlite::Result<usize> {
        let tx = self.conn.transaction()?;
        let mut n = tx.execute("DELETE FROM minutes WHERE start_ms < ?1", [cutoff_ms])?;
        n += tx.execute("DELETE FROM slices WHERE start_ms < ?1", [cutoff_ms])?;
        n += tx.execute("DELETE FROM connections WHERE end_ms < ?1", [cutoff_ms])?;
        n += tx.execute(
            "DELETE FROM findings WHERE coalesce(end_ms, last_ms) < ?1",
            [cutoff_ms],
        )?;
        tx.commit()?;
        Ok(n)
    }
}

/// Moves a store and its log files aside; returns where the store went.
fn move_aside(path: &Path) -> Result<PathBuf, HistoryError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = sibling(path, &format!(".unusable-{stamp}"));
    fs::rename(path, &aside).map_err(|e| {
        HistoryError::Io(format!(
            "cannot move {} aside to {}: {e}",
            path.display(),
            aside.display()
        ))
    })?;
    for suffix in ["-wal", "-shm"] {
        let log = sibling(path, suffix);
        if log.exists() {
            let _ = fs::rename(&log, sibling(&aside, suffix));
        }
    }
    Ok(aside)
}

/// The writer thread's counters, for the daemon's metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub bytes: AtomicU64,
    pub batches: AtomicU64,
    /// Batches that could not be written (the error was logged).
    pub failures: AtomicU64,
    /// Batches dropped because the writer was behind.
    pub dropped: AtomicU64,
    /// Stores moved aside while running.
    pub moved_aside: AtomicU64,
    /// What the writer has to say (an error, a store moved aside), not
    /// yet taken by [`HistoryWriter::take_warnings`]: the thread does not
    /// print, its owner does.
    warnings: Mutex<Vec<String>>,
}

impl WriterStats {
    fn warn(&self, message: String) {
        if let Ok(mut w) = self.warnings.lock() {
            // A writer failing on every minute for hours says so once per
            // distinct message already; the bound is for safety.
            if w.len() < MAX_WARNINGS {
                w.push(message);
            }
        }
    }
}

/// Most warnings queued for the owner to print between two looks.
const MAX_WARNINGS: usize = 16;

/// The store on its own thread: the daemon's loop only queues batches.
pub struct HistoryWriter {
    tx: Option<SyncSender<Batch>>,
    thread: Option<JoinHandle<()>>,
    pub stats: Arc<WriterStats>,
    pub path: PathBuf,
}

impl HistoryWriter {
    /// Opens the store now (so a bad directory is an error at start-up)
    /// and starts the thread. The warning, if any, says a store was moved
    /// aside.
    pub fn start(dir: &Path, limits: Limits) -> anyhow::Result<(Self, Option<String>)> {
        let (mut store, warning) = Store::open(dir, limits)?;
        store.begin_run().map_err(|source| HistoryError::Sqlite {
            path: store.path.display().to_string(),
            source,
        })?;
        let stats = Arc::new(WriterStats::default());
        stats.bytes.store(store.bytes(), Ordering::Relaxed);
        let (tx, rx) = sync_channel(QUEUE);
        let path = store.path.clone();
        let thread = std::thread::Builder::new().name("history".into()).spawn({
            let stats = stats.clone();
            let dir = dir.to_path_buf();
            move || write_loop(store, &rx, &stats, &dir)
        })?;
        Ok((
            Self {
                tx: Some(tx),
                thread: Some(thread),
                stats,
                path,
            },
            warning,
        ))
    }

    /// Queues a batch; a full queue drops it (counted).
    pub fn send(&self, batch: Batch) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// What the writer thread had to say since the last call.
    pub fn take_warnings(&self) -> Vec<String> {
        self.stats
            .warnings
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default()
    }

    /// Writes what is queued and stops the thread; what it had to say.
    pub fn finish(mut self) -> Vec<String> {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.take_warnings()
    }
}

fn write_loop(mut store: Store, rx: &Receiver<Batch>, stats: &WriterStats, dir: &Path) {
    let limits = store.limits;
    let mut last_error: Option<String> = None;
    while let Ok(batch) = rx.recv() {
        match store.write(&batch) {
            Ok(()) => {
                stats.batches.fetch_add(1, Ordering::Relaxed);
                last_error = None;
            }
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                let damaged = is_damage(&e);
                let message = e.to_string();
                // Each new error once, not once a minute.
                if last_error.as_deref() != Some(&message) {
                    stats.warn(format!(
                        "cannot write {}: {message}{}",
                        store.path.display(),
                        if damaged {
                            ""
                        } else {
                            " (the minute is lost; the next is tried)"
                        }
                    ));
                    last_error = Some(message);
                }
                if damaged {
                    drop(store);
                    match move_aside(&dir.join(FILE))
                        .and_then(|aside| Store::open(dir, limits).map(|s| (aside, s)))
                    {
                        Ok((aside, (new, _))) => {
                            stats.moved_aside.fetch_add(1, Ordering::Relaxed);
                            stats.warn(format!(
                                "moved the damaged store to {} and began a new one",
                                aside.display()
                            ));
                            store = new;
                        }
                        Err(e) => {
                            stats.warn(format!("stopped: {e}"));
                            return;
                        }
                    }
                }
            }
        }
        stats.bytes.store(store.bytes(), Ordering::Relaxed);
    }
}

/// The store as `report --since` and `history` read it.
pub struct History {
    conn: Connection,
    pub path: PathBuf,
}

/// A time span of the store, unix ms: `from..to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub from_ms: i64,
    pub to_ms: i64,
}

impl History {
    pub fn open(dir: &Path) -> Result<Self, HistoryError> {
        let path = dir.join(FILE);
        let name = path.display().to_string();
        match fs::File::open(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(HistoryError::Io(format!(
                    "no history at {name}: the daemon keeps it there when it runs with history on (tcplinger daemon; --history-dir to look elsewhere)"
                )));
            }
            Err(e) => {
                return Err(HistoryError::Io(format!(
                    "cannot read {name}: {e} (run as root, or as a member of the file's group)"
                )));
            }
        }
        let sql = |source| HistoryError::Sqlite {
            path: name.clone(),
            source,
        };
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql)?;
        conn.busy_timeout(BUSY).map_err(sql)?;
        let schema = schema_of(&conn).map_err(sql)?;
        if schema > SCHEMA {
            return Err(HistoryError::Unusable(format!(
                "{name} was written by a later tcplinger (history version {schema}; this one reads {SCHEMA})"
            )));
        }
        if schema == 0 {
            return Err(HistoryError::Unusable(format!(
                "{name} is not a tcplinger history"
            )));
        }
        Ok(Self { conn, path })
    }

    fn err(&self, source: rusqlite::Error) -> HistoryError {
        HistoryError::Sqlite {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// The minutes stored: the first one's start, the last one's end.
    pub fn span(&self) -> Result<Option<Span>, HistoryError> {
        let (from, to): (Option<i64>, Option<i64>) = self
            .conn
            .query_row(
                "SELECT min(start_ms), max(start_ms) FROM minutes",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.err(e))?;
        Ok(from.zip(to).map(|(from_ms, to_ms)| Span {
            from_ms,
            to_ms: to_ms + 60_000,
        }))
    }

    /// The minutes that start in `span`, summed: (minutes, events, dropped,
    /// missed, connections, connections not kept).
    pub fn counts(&self, span: Span) -> Result<(u64, MinuteCounts), HistoryError> {
        self.conn
            .query_row(
                "SELECT count(*), coalesce(min(start_ms), 0), coalesce(sum(events), 0),
                 coalesce(sum(dropped), 0), coalesce(sum(missed), 0),
                 coalesce(sum(connections), 0), coalesce(sum(kept_skipped), 0)
                 FROM minutes WHERE start_ms >= ?1 AND start_ms < ?2",
                params![span.from_ms, span.to_ms],
                |r| {
                    Ok((
                        u64_of(r.get(0)?),
                        MinuteCounts {
                            start_ms: r.get(1)?,
                            events: u64_of(r.get(2)?),
                            dropped: u64_of(r.get(3)?),
                            missed: u64_of(r.get(4)?),
                            connections: u64_of(r.get(5)?),
                            kept_skipped: u64_of(r.get(6)?),
                        },
                    ))
                },
            )
            .map_err(|e| self.err(e))
    }

    /// The slices of the minutes that start in `span`: (minute start, slice).
    /// A row this version cannot read is counted, not fatal.
    pub fn slices(&self, span: Span) -> Result<(Vec<(i64, Slice)>, u64), HistoryError> {
        let mut stmt = self
            .conn
            .prepare("SELECT start_ms, data FROM slices WHERE start_ms >= ?1 AND start_ms < ?2")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![span.from_ms, span.to_ms], |r| {
                Ok((r.get::<_, i64>(0)?, r.get_ref(1)?.as_bytes()?.to_vec()))
            })
            .map_err(|e| self.err(e))?;
        let (mut out, mut unreadable) = (Vec::new(), 0);
        for row in rows {
            let (start, data) = row.map_err(|e| self.err(e))?;
            match unpack(&data) {
                Some(s) => out.push((start, s)),
                None => unreadable += 1,
            }
        }
        Ok((out, unreadable))
    }

    /// The findings alive at some point of `span`, by start.
    pub fn lives(&self, span: Span) -> Result<(Vec<StoredLife>, u64), HistoryError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT run_ms, life, start_ms, last_ms, end_ms, peak FROM findings
                 WHERE start_ms < ?2 AND coalesce(end_ms, last_ms) >= ?1
                 ORDER BY start_ms, run_ms, life",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![span.from_ms, span.to_ms], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get_ref(5)?.as_bytes()?.to_vec(),
                ))
            })
            .map_err(|e| self.err(e))?;
        let (mut out, mut unreadable) = (Vec::new(), 0);
        for row in rows {
            let (run_ms, life, start_ms, last_ms, end_ms, peak) = row.map_err(|e| self.err(e))?;
            match unpack::<StoredFinding>(&peak) {
                Some(peak) => out.push(StoredLife {
                    run_ms,
                    life: u64_of(life),
                    start_ms,
                    last_ms,
                    end_ms,
                    peak,
                }),
                None => unreadable += 1,
            }
        }
        Ok((out, unreadable))
    }

    /// The connections kept whole that ended in `span`, oldest first.
    pub fn kept(&self, span: Span) -> Result<Vec<(i64, String, String)>, HistoryError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT end_ms, reason, record FROM connections
                 WHERE end_ms >= ?1 AND end_ms < ?2 ORDER BY end_ms, rowid",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![span.from_ms, span.to_ms], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{aggregate::Stats, tracker::Role};

    fn tempdir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tcplinger-history-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    const LIMITS: Limits = Limits {
        max_bytes: 64 << 20,
        days: 14,
    };

    fn slice(port: u16, closed: u64) -> Slice {
        let mut stats = Stats::default();
        stats.closed = closed;
        stats.opened = closed;
        Slice {
            key: GroupKey {
                comm: None,
                role: Role::Client,
                peer: Some("10.0.0.2".parse().unwrap()),
                port,
            },
            stats,
            now: crate::model::aggregate::Now::default(),
            pids: vec![(42, closed)],
            processes: 1,
            peers: crate::model::aggregate::Peers::default(),
            pod: None,
        }
    }

    fn minute(start_ms: i64, slices: Vec<Slice>) -> Batch {
        Batch {
            minutes: vec![(
                MinuteCounts {
                    start_ms,
                    events: 10,
                    ..MinuteCounts::default()
                },
                slices,
            )],
            now_ms: start_ms + 75_000,
            ..Batch::default()
        }
    }

    #[test]
    fn what_is_written_is_read_back_by_span() {
        let dir = tempdir("roundtrip");
        let (mut store, warning) = Store::open(&dir, LIMITS).unwrap();
        assert_eq!(warning, None);
        let t0 = 1_800_000_000_000;
        store
            .write(&minute(t0, vec![slice(80, 3), slice(443, 1)]))
            .unwrap();
        store
            .write(&minute(t0 + 60_000, vec![slice(80, 5)]))
            .unwrap();
        let history = History::open(&dir).unwrap();
        let all = Span {
            from_ms: t0,
            to_ms: t0 + 120_000,
        };
        assert_eq!(history.span().unwrap(), Some(all));
        let (slices, unreadable) = history.slices(all).unwrap();
        assert_eq!((slices.len(), unreadable), (3, 0));
        let (minutes, counts) = history.counts(all).unwrap();
        assert_eq!((minutes, counts.events), (2, 20));
        let second = Span {
            from_ms: t0 + 60_000,
            to_ms: t0 + 120_000,
        };
        let (slices, _) = history.slices(second).unwrap();
        assert_eq!(slices, vec![(t0 + 60_000, slice(80, 5))]);
        // Stored compressed; a row of plain JSON (put there by hand) reads
        // too, and one that is neither is counted, not fatal.
        let plain = serde_json::to_string(&slice(443, 9)).unwrap();
        for data in [
            rusqlite::types::Value::Text(plain),
            rusqlite::types::Value::Blob(vec![0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3]),
        ] {
            store
                .conn
                .execute(
                    "INSERT INTO slices VALUES (?1, NULL, 'client', 'x', 0, 0, 0, 0, 0, 0, 0, 0, 0, ?2)",
                    params![t0 + 60_000, data],
                )
                .unwrap();
        }
        let (slices, unreadable) = history.slices(second).unwrap();
        assert_eq!((slices.len(), unreadable), (2, 1));
        assert_eq!(slices[1].1, slice(443, 9));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_store_is_moved_aside_and_a_new_one_begun() {
        let dir = tempdir("damaged");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(FILE), vec![0x5a; 8192]).unwrap();
        let (mut store, warning) = Store::open(&dir, LIMITS).unwrap();
        let warning = warning.expect("a warning");
        assert!(warning.contains("damaged"), "{warning}");
        store
            .write(&minute(1_800_000_000_000, vec![slice(80, 1)]))
            .unwrap();
        let aside: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(".unusable-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(fs::read(aside[0].path()).unwrap(), vec![0x5a; 8192]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_writer_thread_says_each_new_error_once_through_its_owner() {
        let dir = tempdir("warnings");
        let (writer, _) = HistoryWriter::start(&dir, LIMITS).unwrap();
        assert!(writer.take_warnings().is_empty());
        // Another connection takes the table away under the writer: every
        // minute written from now on fails the same way.
        Connection::open(dir.join(FILE))
            .unwrap()
            .execute("DROP TABLE slices", [])
            .unwrap();
        for k in 0..3 {
            writer.send(minute(1_800_000_000_000 + k * 60_000, vec![slice(80, 1)]));
        }
        let stats = writer.stats.clone();
        let warnings = writer.finish();
        assert_eq!(stats.failures.load(Ordering::Relaxed), 3);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("no such table: slices")
                && warnings[0].contains("the minute is lost"),
            "{warnings:?}"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_of_a_later_version_is_refused_by_readers_and_set_aside_by_the_writer() {
        let dir = tempdir("later");
        let (store, _) = Store::open(&dir, LIMITS).unwrap();
        store
            .conn
            .execute("UPDATE meta SET value = '99' WHERE key = 'schema'", [])
            .unwrap();
        drop(store);
        let Err(e) = History::open(&dir) else {
            panic!("opened")
        };
        assert!(
            e.to_string()
                .contains("history version 99; this one reads 1"),
            "{e}"
        );
        let (_, warning) = Store::open(&dir, LIMITS).unwrap();
        assert!(warning.unwrap().contains("later tcplinger"));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn old_days_go_and_the_size_stays_bounded() {
        let dir = tempdir("bounded");
        let limits = Limits {
            max_bytes: 2 << 20,
            days: 1,
        };
        let (mut store, _) = Store::open(&dir, limits).unwrap();
        let t0 = 1_800_000_000_000;
        // Two days of minutes with 20 groups each: far over 2 MiB.
        for m in 0..(2 * 24 * 60) {
            let slices = (0..20).map(|p| slice(1000 + p, 3)).collect();
            store.write(&minute(t0 + m * 60_000, slices)).unwrap();
            assert!(store.bytes() <= limits.max_bytes, "{}", store.bytes());
        }
        let history = History::open(&dir).unwrap();
        let span = history.span().unwrap().unwrap();
        let newest = t0 + (2 * 24 * 60 - 1) * 60_000;
        assert_eq!(span.to_ms, newest + 60_000);
        // The oldest went first: what is left is the most recent stretch.
        assert!(span.from_ms > t0 + 24 * 3_600_000, "{span:?}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_store_says_where_it_was_looked_for() {
        let dir = tempdir("missing");
        let Err(e) = History::open(&dir) else {
            panic!("opened")
        };
        assert!(e.to_string().contains("no history at"), "{e}");
    }
}
