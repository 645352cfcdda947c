//! The store on its own thread: the daemon queues a batch a minute, the thread writes it, counts what failed or was dropped, and queues what it has to say for the daemon to print.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    thread::JoinHandle,
};

use super::{Batch, FILE, HistoryError, Limits, QUEUE, Store, is_damage, store::move_aside};

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
    pub(super) fn warn(&self, message: String) {
        // No bound needed: at most two messages per batch (a new error,
        // a store moved aside), and the loop that sends the batches takes
        // them at every turn.
        if let Ok(mut w) = self.warnings.lock() {
            w.push(message);
        }
    }
}

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

pub(super) fn write_loop(mut store: Store, rx: &Receiver<Batch>, stats: &WriterStats, dir: &Path) {
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
