//! The store as `report --since` and `history` read it, while the daemon writes: minutes, findings' lives and kept connections over a span.

use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
};

use rusqlite::{Connection, OpenFlags, params};

use super::{BUSY, FILE, HistoryError, MinuteCounts, SCHEMA, schema_of, u64_of, unpack};
use crate::model::history::{Slice, StoredFinding, StoredLife};

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

    pub(super) fn err(&self, source: rusqlite::Error) -> HistoryError {
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
