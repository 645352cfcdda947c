//! Runs the real `tcplinger` binary, waits until its programs are attached, and collects its JSON lines and exit summary; or runs it to its end and reads its one-line error; and lists what of it is loaded in the kernel.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::wait_until;

const START_LIMIT: Duration = Duration::from_secs(30);

/// A daemon started by a test keeps its history in a directory of its own
/// (never the host's /var/lib/tcplinger), unless the test says where; the
/// directory, when one was made up here, is returned to be removed once
/// the daemon has exited.
fn with_own_history(args: &[&str]) -> (Vec<String>, Option<PathBuf>) {
    let mut out: Vec<String> = args.iter().map(ToString::to_string).collect();
    let chooses = [
        "--history-dir",
        "--no-history",
        "--check-config",
        "--config",
    ];
    if args.first() == Some(&"daemon") && !args.iter().any(|a| chooses.contains(a)) {
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "tcplinger-tests/history-{}-{n}",
            std::process::id()
        ));
        out.push("--history-dir".into());
        out.push(dir.display().to_string());
        return (out, Some(dir));
    }
    (out, None)
}

/// Removes a history directory [`with_own_history`] made up, with what
/// the daemon wrote in it.
fn remove_history(dir: Option<&Path>) {
    if let Some(dir) = dir {
        let _ = std::fs::remove_dir_all(dir);
    }
}
const STOP_LIMIT: Duration = Duration::from_secs(15);

pub struct Tcplinger {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    history: Option<PathBuf>,
}

/// What a finished run printed.
#[derive(Debug)]
pub struct Finished {
    pub lines: Vec<Value>,
    pub stderr: Vec<String>,
    pub status: ExitStatus,
    /// From the exit summary: records the kernel delivered.
    pub events: u64,
    pub dropped: u64,
}

impl Tcplinger {
    /// Starts `tcplinger ARGS` and returns once it says it is tracing.
    pub fn start(args: &[&str]) -> Tcplinger {
        Self::start_with(args, Stdio::piped())
    }

    /// As [`Self::start`], its output thrown away unread (a run printing
    /// millions of records); its summary on stderr is still collected.
    /// A JSON report of `port` that ends when the test stops it (SIGINT),
    /// not by its clock.
    pub fn report_until_stopped(port: u16) -> Tcplinger {
        Self::start(&[
            "report",
            "--format",
            "json",
            "--duration",
            "5m",
            "--port",
            &port.to_string(),
        ])
    }

    pub fn start_discarding(args: &[&str]) -> Tcplinger {
        Self::start_with(args, Stdio::null())
    }

    fn start_with(args: &[&str], stdout: Stdio) -> Tcplinger {
        let (args, history) = with_own_history(args);
        let mut child = Command::new(env!("CARGO_BIN_EXE_tcplinger"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning tcplinger");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let out = child.stdout.take();
        let err = child.stderr.take().unwrap();
        let out_lines = lines.clone();
        let err_lines = stderr.clone();
        let mut readers = Vec::new();
        if let Some(out) = out {
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                        panic!("tcplinger printed a non-JSON line {line:?}: {e}")
                    });
                    out_lines.lock().unwrap().push(value);
                }
            }));
        }
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                // Kept before the start is announced: a caller reading
                // the lines at once must find the one that announced it.
                let tracing = line.contains("tracing");
                err_lines.lock().unwrap().push(line);
                if tracing {
                    let _ = ready_tx.send(());
                }
            }
        }));
        let mut tracer = Tcplinger {
            child,
            lines,
            stderr,
            readers,
            history,
        };
        if ready_rx.recv_timeout(START_LIMIT).is_err() {
            let _ = tracer.child.kill();
            let status = tracer.child.wait().unwrap();
            // Its last words, to say why: read to the end of its pipes.
            wait_until(Duration::from_secs(5), || {
                tracer
                    .readers
                    .iter()
                    .all(std::thread::JoinHandle::is_finished)
            });
            panic!(
                "tcplinger did not start tracing ({status}): {:?}",
                tracer.stderr.lock().unwrap()
            );
        }
        tracer
    }

    /// Waits until the lines printed so far satisfy `done`.
    pub fn wait_for(&self, limit: Duration, done: impl Fn(&[Value]) -> bool) -> bool {
        wait_until(limit, || done(&self.lines.lock().unwrap()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id().cast_signed(), signal) };
    }

    /// SIGKILL: no summary, nothing flushed; what it printed so far.
    pub fn kill(mut self) -> (ExitStatus, Vec<String>) {
        self.signal(libc::SIGKILL);
        let status = self.child.wait().expect("waiting for tcplinger");
        for reader in self.readers.drain(..) {
            reader.join().expect("output reader");
        }
        let stderr = self.stderr.lock().unwrap().clone();
        (status, stderr)
    }

    /// Sends SIGINT, as Ctrl-C would, and collects everything.
    pub fn stop(self) -> Finished {
        self.signal(libc::SIGINT);
        self.stop_after_signal()
    }

    /// Collects everything once a signal sent earlier has ended the run.
    pub fn stop_after_signal(mut self) -> Finished {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > STOP_LIMIT {
                let _ = self.child.kill();
                panic!("tcplinger did not exit within {STOP_LIMIT:?} of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        for reader in self.readers.drain(..) {
            reader.join().expect("output reader");
        }
        let stderr = self.stderr.lock().unwrap().clone();
        let summary = stderr
            .iter()
            .find(|l| l.contains(" events, "))
            .unwrap_or_else(|| panic!("no exit summary in {stderr:?}"))
            .clone();
        let number_before = |word: &str| -> u64 {
            let words: Vec<&str> = summary.split_whitespace().collect();
            let i = words
                .iter()
                .position(|w| w.trim_end_matches(',') == word)
                .unwrap_or_else(|| panic!("no '{word}' in summary {summary:?}"));
            words[i - 1].parse().unwrap()
        };
        Finished {
            lines: std::mem::take(&mut self.lines.lock().unwrap()),
            events: number_before("events"),
            dropped: number_before("dropped"),
            stderr,
            status,
        }
    }
}

impl Drop for Tcplinger {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        remove_history(self.history.as_deref());
    }
}

/// Runs `tcplinger ARGS` to its end.
pub fn tcplinger(args: &[&str]) -> Output {
    let (args, history) = with_own_history(args);
    let out = Command::new(env!("CARGO_BIN_EXE_tcplinger"))
        .args(args)
        .output()
        .expect("running tcplinger");
    remove_history(history.as_deref());
    out
}

/// Runs `tcplinger ARGS` to its end, which must succeed; what it printed.
pub fn tcplinger_ok(args: &[&str]) -> String {
    let out = tcplinger(args);
    assert!(
        out.status.success(),
        "tcplinger {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `tcplinger ARGS --from RECORDING`, as anyone could run it later.
pub fn replayed(args: &[&str], recording: &Path) -> String {
    let mut args = args.to_vec();
    args.extend(["--from", recording.to_str().expect("a UTF-8 path")]);
    tcplinger_ok(&args)
}

/// The one line a failed run printed, which starts with `tcplinger: `.
pub fn one_line_error(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected one line, got {stderr:?}"
    );
    assert!(stderr.starts_with("tcplinger: "), "{stderr:?}");
    stderr
}

/// A usage error as printed: a first line starting with `tcplinger: ` (what
/// is wrong), then at most five indented lines of clap's (the values
/// allowed, a suggestion, the usage line, where to read more). Its first
/// line.
pub fn usage_error(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        !lines.is_empty() && lines.len() <= 6,
        "expected a short block, got {stderr:?}"
    );
    assert!(lines[0].starts_with("tcplinger: "), "{stderr:?}");
    assert!(lines[1..].iter().all(|l| l.starts_with("  ")), "{stderr:?}");
    lines[0].to_string()
}

/// Names of our programs as the kernel lists them (truncated to 15 bytes).
const OUR_PROGRAMS: [&str; 6] = [
    "inet_sock_set_s",
    "tcp_destroy_soc",
    "tcp_send_reset",
    "tcp_receive_res",
    "sock_send_lengt",
    "sock_recv_lengt",
];

/// Our programs loaded in the kernel now, by whichever process.
pub fn our_programs_loaded() -> Vec<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| p.name_as_str().map(str::to_string))
        .filter(|name| OUR_PROGRAMS.iter().any(|ours| name.starts_with(ours)))
        .collect()
}
