//! Threads started once, on which every blocking read of the host runs (sock_diag dumps, /proc scans): none of it runs on the thread that drains the ring, and no thread is created while tracing, so a host out of pids (`pids.max`, itself an incident) cannot make tracing fail.

use std::{
    io,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads taking jobs from one queue.
pub struct Workers {
    jobs: Option<mpsc::Sender<Job>>,
    threads: Vec<thread::JoinHandle<()>>,
    failed: Arc<AtomicU64>,
}

impl Workers {
    /// Starts `n` threads; fails (with the system's reason) if any cannot
    /// be created.
    pub fn start(n: usize) -> io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let failed = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let queue = queue.clone();
            let thread = thread::Builder::new()
                .name(format!("tcplinger-io{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only to take the next job.
                        let job = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        // A job that panics loses its answer (the asker
                        // sees its channel closed); the thread lives on
                        // for the next one. `run` counts it.
                        job();
                    }
                })?;
            threads.push(thread);
        }
        Ok(Self {
            jobs: Some(jobs),
            threads,
            failed,
        })
    }

    /// Runs `f` on a worker; its result arrives on the receiver (closed if
    /// `f` panicked).
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        if let Some(jobs) = &self.jobs {
            let failed = self.failed.clone();
            // A send fails only once every worker is gone; the receiver
            // then reports the job as failed.
            let _ = jobs.send(Box::new(move || {
                // Counted before the answer's channel closes, so whoever
                // sees it closed also sees the count.
                if let Ok(answer) = catch_unwind(AssertUnwindSafe(f)) {
                    let _ = tx.send(answer);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    drop(tx);
                }
            }));
        }
        rx
    }

    /// Jobs that panicked so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Closing the queue ends each thread after its current job; they
        // are not waited for (a dump in progress must not hold up exit).
        self.jobs = None;
        self.threads.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_and_a_panic_is_counted_not_fatal() {
        let workers = Workers::start(2).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(workers.run(|| 6 * 7)), Ok(42));
        let failed = workers.run(|| -> u32 { panic!("a job that fails") });
        assert!(rt.block_on(failed).is_err(), "its answer never comes");
        assert_eq!(workers.failed(), 1);
        assert_eq!(rt.block_on(workers.run(|| "still here")), Ok("still here"));
    }
}
