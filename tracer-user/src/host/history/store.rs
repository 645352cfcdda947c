//! The store as the daemon writes it: opened (or made, or moved aside when damaged or of a later layout), written a minute at a time, pruned to its days and bytes.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use rusqlite::{Connection, params};

use super::{
    BUSY, Batch, FILE, HistoryError, Limits, PRUNE_SHARE, PRUNE_TO, SCHEMA, TABLES, comm_of,
    disk_bytes, i64_of, is_damage, pack, schema_of, sibling,
};
use tracer_common::TcpState;

use crate::model::{diagnose::Pathology, tracker::ClosedBy};
/// The store as the daemon writes it.
pub struct Store {
    pub(super) conn: Connection,
    pub(super) path: PathBuf,
    pub(super) limits: Limits,
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

    pub(super) fn open_at(path: &Path, limits: Limits) -> Result<Self, HistoryError> {
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
    pub(super) fn prune(&mut self, now_ms: i64) -> rusqlite::Result<()> {
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

    pub(super) fn delete_before(&mut self, cutoff_ms: i64) -> rusqlite::Result<usize> {
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
pub(super) fn move_aside(path: &Path) -> Result<PathBuf, HistoryError> {
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
