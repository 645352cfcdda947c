//! The store written and read as the daemon and `report --since` do: minutes, lives, kept connections, pruning, damage and later layouts, the writer thread.

use std::sync::atomic::Ordering;

use rusqlite::params;

use super::*;
use crate::model::{aggregate::Stats, tracker::Role};

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tcplinger-history-{name}-{}", std::process::id()));
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
        warnings[0].contains("no such table: slices") && warnings[0].contains("the minute is lost"),
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
