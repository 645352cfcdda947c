//! The commands, one module each, and what they share: when to stop, where output goes, how a run ends, and the loop that steps an analysis.

pub mod daemon;
pub mod history;
pub mod record;
pub mod report;
pub mod sockets;
pub mod top;
pub mod watch;

use std::{
    fs::{File, Metadata, OpenOptions},
    future::{self, Future},
    io::{self, ErrorKind, Write},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    pin::Pin,
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Interval, MissedTickBehavior, interval},
};

use crate::{
    error::UsageError,
    session::{Host, Progress, analysis::Analysis},
};

/// Resolves when the run should end: SIGINT, SIGTERM or `--duration`.
/// Handlers are installed before it is returned, so a signal that arrives
/// right after attaching is not lost.
pub fn stop_signal(duration: Option<Duration>) -> anyhow::Result<impl Future<Output = ()>> {
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        let deadline = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => future::pending().await,
            }
        };
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
            () = deadline => {}
        }
    })
}

/// Where records go: stdout, or the `--output` file, opened before anything
/// is loaded (a bad path is a usage error, not a late surprise, and the
/// file is opened while the capabilities to create it are still held) but
/// written, and an existing file truncated, only once `begin` says the
/// run is under way.
///
/// tcplinger runs as root, so the path is treated as hostile: the file
/// named must be the file written. A symbolic link as its last component
/// is refused (`O_NOFOLLOW`: `ln -s /etc/passwd /tmp/o` must not destroy
/// /etc/passwd); a new file is created with `O_EXCL` and mode 0600 (the
/// records name processes and their peers); an existing one is refused
/// unless `--force`, and then only if it is a regular file of our own with
/// no other name (a hard link would lead elsewhere just as a symbolic link
/// does). Each check is made on the opened descriptor (fstat), not on the
/// path, so nothing can be swapped in between.
pub struct Output {
    /// The open file; `None` for stdout.
    file: Option<File>,
    path: PathBuf,
    /// This run created the file: if it never begins, the file goes.
    created: bool,
}

/// Mode of a file `--output` creates: the owner's only.
const NEW_FILE_MODE: u32 = 0o600;

impl Output {
    /// Opens `--output PATH` (or stdout), without writing to it. `replace`
    /// (`--force`) lets an existing file be truncated by `begin`.
    pub fn open(path: Option<&Path>, replace: bool) -> Result<Self, UsageError> {
        let Some(path) = path else {
            return Ok(Self {
                file: None,
                path: PathBuf::new(),
                created: false,
            });
        };
        let usage = |reason: String| UsageError(format!("--output {}: {reason}", path.display()));
        let new = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(NEW_FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY)
            .open(path);
        let (file, created) = match new {
            Ok(file) => (file, true),
            // O_EXCL also fails on a link, dangling or not. What is there
            // is asked of the path only to say what it is, and so as not
            // to open a device or a FIFO at all (opening has effects of
            // its own); the check that counts is on the descriptor below.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                match std::fs::symlink_metadata(path) {
                    Ok(m) if m.file_type().is_symlink() => return Err(usage(SYMLINK.into())),
                    Ok(m) if m.is_dir() => return Err(usage(IS_DIR.into())),
                    Ok(m) if !m.is_file() => return Err(usage(NOT_REGULAR.into())),
                    _ if !replace => return Err(usage(EXISTS.into())),
                    _ => {}
                }
                let file = OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK)
                    .open(path)
                    .map_err(|e| usage(open_reason(&e, path)))?;
                (file, false)
            }
            Err(e) => return Err(usage(open_reason(&e, path))),
        };
        if !created {
            let meta = file.metadata().map_err(|e| usage(e.to_string()))?;
            replaceable(&meta, effective_uid()).map_err(|reason| usage(reason.into()))?;
        }
        Ok(Self {
            file: Some(file),
            path: path.to_path_buf(),
            created,
        })
    }

    /// The output's name in messages: the path, or "stdout".
    pub fn name(&self) -> String {
        if self.file.is_some() {
            self.path.display().to_string()
        } else {
            "stdout".into()
        }
    }

    /// The run is under way (the programs are attached, or the report is
    /// ready): empties a file being replaced, through the descriptor opened
    /// at the start, and hands out the writer.
    pub fn begin(mut self) -> anyhow::Result<Box<dyn Write>> {
        let Some(file) = self.file.take() else {
            return Ok(Box::new(io::stdout().lock()));
        };
        if !self.created {
            file.set_len(0)
                .with_context(|| format!("emptying {} to replace it", self.path.display()))?;
        }
        Ok(Box::new(file))
    }
}

impl Drop for Output {
    /// A file this run created but never began writing is removed, so a
    /// run that failed to start leaves nothing behind (and the next one
    /// needs no --force). Only if the name still leads to our file: in a
    /// directory others can write, it may have been replaced meanwhile.
    /// Best effort: after the capability drop the directory may not be
    /// writable to us any more, and the empty file then stays.
    fn drop(&mut self) {
        let Some(file) = &self.file else { return };
        if !self.created {
            return;
        }
        let ours = file.metadata().ok();
        let named = std::fs::symlink_metadata(&self.path).ok();
        if let (Some(ours), Some(named)) = (ours, named)
            && (ours.dev(), ours.ino()) == (named.dev(), named.ino())
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Notices that the reader of stdout has gone (`watch | head -1` once it
/// has its line) without a write to find out: a quiet host may have
/// nothing to write for minutes. The write end of a pipe polls as
/// `POLLERR` once no reader is left (`POLLHUP` for a hung-up terminal); a
/// file never does.
pub struct ReaderGone {
    stdout: bool,
    checked: std::time::Instant,
}

/// How often the descriptor is asked (the tracing loops turn at least
/// every 200 ms).
const READER_CHECK: Duration = Duration::from_millis(200);

impl ReaderGone {
    pub fn new(output: &Output) -> Self {
        Self {
            stdout: output.file.is_none(),
            checked: std::time::Instant::now(),
        }
    }

    /// True once stdout's reader is gone (asked at most every 200 ms).
    pub fn gone(&mut self) -> bool {
        if !self.stdout || self.checked.elapsed() < READER_CHECK {
            return false;
        }
        self.checked = std::time::Instant::now();
        let mut fd = libc::pollfd {
            fd: libc::STDOUT_FILENO,
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the length given; no wait.
        let ready = unsafe { libc::poll(&raw mut fd, 1, 0) };
        ready > 0 && fd.revents & (libc::POLLERR | libc::POLLHUP) != 0
    }
}

/// What ends a run whose reader has gone: a broken pipe, as a write would
/// have said (not an error: `output_result` takes it as the end).
pub fn reader_gone_error() -> io::Error {
    ErrorKind::BrokenPipe.into()
}

const SYMLINK: &str = "is a symbolic link; name the file itself (links are not followed, since tcplinger runs as root)";
const IS_DIR: &str = "is a directory";
const NOT_REGULAR: &str = "is not a regular file (for a pipe or a device, redirect stdout instead)";
const EXISTS: &str = "already exists (add --force to replace it)";

/// Whether an existing file may be replaced: its fstat must show a regular
/// file, owned by whoever runs tcplinger, under no other name.
fn replaceable(meta: &Metadata, euid: u32) -> Result<(), &'static str> {
    if !meta.is_file() {
        return Err(NOT_REGULAR);
    }
    if meta.nlink() > 1 {
        return Err(
            "has other hard links; refusing to write to a file reachable under other names",
        );
    }
    if meta.uid() != euid {
        return Err("is owned by another user; remove it or name a new file");
    }
    Ok(())
}

/// Why a path could not be opened, in words for the usage line.
fn open_reason(e: &io::Error, path: &Path) -> String {
    match e.raw_os_error() {
        Some(libc::ELOOP) => SYMLINK.into(),
        Some(libc::EISDIR) => IS_DIR.into(),
        Some(libc::ENXIO) => NOT_REGULAR.into(),
        Some(libc::EACCES | libc::EPERM) => "not writable (permission denied)".into(),
        Some(libc::EROFS) => "not writable (read-only file system)".into(),
        Some(libc::ENOTDIR) => "a component of the path is not a directory".into(),
        Some(libc::ENOENT) => match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) if !dir.is_dir() => format!("no such directory {}", dir.display()),
            _ => "no such file or directory".into(),
        },
        _ => e.to_string(),
    }
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid takes nothing and cannot fail.
    unsafe { libc::geteuid() }
}

/// Ends a run: the reader of stdout going away (`watch | head`) is not a
/// failure; anything else (a full disk) is, named with the output.
pub fn output_result(name: &str, result: io::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(anyhow::anyhow!("writing {name}: {e}; tracing stopped")),
        Ok(()) => Ok(()),
    }
}

/// Ready at every poll: what the stop signal becomes once it has fired.
struct Fired;

impl Future for Fired {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        std::task::Poll::Ready(())
    }
}

/// What woke the loop of a command that analyses.
#[derive(Debug, Clone)]
pub enum Wake {
    /// A step of the session ran.
    Step(Progress),
    /// The command's period came round (once the open sockets are known).
    Tick,
    /// SIGINT, SIGTERM or `--duration`.
    Stop,
}

/// The loop `report`, `top` and `daemon` share: step the analysis until
/// told to stop, with a periodic tick once the start-up snapshot is in.
pub struct Driver {
    stop: Pin<Box<dyn Future<Output = ()>>>,
    tick: Interval,
    period_ns: u64,
    /// On a replay, the recorded time of the next tick.
    next_tick_ns: u64,
    /// On a replay shown at recorded speed (`top --from`): how many
    /// recorded seconds pass per second, the moment and recorded time the
    /// pace is counted from, and a tick waiting for its moment.
    speed: Option<f64>,
    paced_from: Option<(std::time::Instant, u64)>,
    /// Recorded time before which a paced replay is not paced (`--since`).
    pace_after_ns: u64,
    tick_at: Option<tokio::time::Instant>,
}

impl Driver {
    pub fn new(duration: Option<Duration>, period: Duration) -> anyhow::Result<Self> {
        let mut tick = interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Self {
            stop: Box::pin(stop_signal(duration)?),
            tick,
            period_ns: u64::try_from(period.as_nanos()).unwrap_or(u64::MAX),
            next_tick_ns: 0,
            speed: None,
            paced_from: None,
            pace_after_ns: 0,
            tick_at: None,
        })
    }

    /// A replay's ticks come at `speed` times the recorded pace (rather
    /// than as fast as the recording is read).
    #[must_use]
    pub fn paced(mut self, speed: f64) -> Self {
        self.speed = Some(speed);
        self
    }

    /// Resolves on SIGINT, SIGTERM or `--duration`, for a loop that is
    /// not stepping (a replay paused or over).
    pub async fn stopped(&mut self) {
        (&mut self.stop).await;
        self.stop = Box::pin(Fired);
    }

    /// A paced replay runs at once up to `ns` (recorded time), at its pace
    /// after.
    #[must_use]
    pub fn paced_after(mut self, ns: u64) -> Self {
        self.pace_after_ns = ns;
        self
    }

    /// The stop signal fired: from now on it is ready at once (a replay
    /// that ended waits on it again, and a future must not be polled
    /// after it completed).
    fn fired(&mut self) -> Wake {
        self.stop = Box::pin(Fired);
        Wake::Stop
    }

    /// The pace is counted afresh from now (after a pause).
    pub fn repace(&mut self) {
        self.paced_from = None;
    }

    /// Waits for the next thing to do. Cancel-safe, so a command can select
    /// on it with its own inputs (`top`'s keys). On a replay, ticks follow
    /// the recorded time, and the recording's end stops it.
    pub async fn next<H: Host>(&mut self, analysis: &mut Analysis<H>) -> io::Result<Wake> {
        let seeded = analysis.seeded;
        if analysis.session.host.replayed() {
            let now = analysis.now_ns();
            let wake = if let Some(at) = self.tick_at {
                // Cancel-safe: a tick interrupted while it waits for its
                // moment waits again next time.
                tokio::select! {
                    biased;
                    () = &mut self.stop => Ok(self.fired()),
                    () = tokio::time::sleep_until(at) => {
                        self.tick_at = None;
                        Ok(Wake::Tick)
                    }
                }
            } else if analysis.session.host.exhausted() {
                // At its pace, the end shows when its time comes, after a
                // last refresh.
                match (self.speed, self.paced_from) {
                    (Some(speed), Some((wall, recorded))) if now >= self.pace_after_ns => {
                        let ahead = now.saturating_sub(recorded) as f64 / 1e9 / speed;
                        let at = wall + Duration::from_secs_f64(ahead);
                        if at > std::time::Instant::now() {
                            self.tick_at = Some(tokio::time::Instant::from_std(at));
                            Ok(Wake::Step(Progress::Drained))
                        } else {
                            Ok(Wake::Stop)
                        }
                    }
                    _ => Ok(Wake::Stop),
                }
            } else if seeded && now >= self.next_tick_ns {
                self.next_tick_ns = now.saturating_add(self.period_ns);
                match self.speed {
                    Some(_) if now < self.pace_after_ns => Ok(Wake::Tick),
                    Some(speed) => {
                        let (wall, recorded) = *self
                            .paced_from
                            .get_or_insert((std::time::Instant::now(), now));
                        let ahead = now.saturating_sub(recorded) as f64 / 1e9 / speed;
                        let at = wall + Duration::from_secs_f64(ahead);
                        self.tick_at = Some(tokio::time::Instant::from_std(at));
                        Ok(Wake::Step(Progress::Drained))
                    }
                    None => Ok(Wake::Tick),
                }
            } else {
                tokio::select! {
                    biased;
                    () = &mut self.stop => Ok(self.fired()),
                    progress = analysis.step() => progress.map(Wake::Step),
                }
            };
            warn(analysis.session.take_warnings());
            return wake;
        }
        let wake = tokio::select! {
            biased;
            () = &mut self.stop => Ok(self.fired()),
            progress = analysis.step() => progress.map(Wake::Step),
            _ = self.tick.tick(), if seeded => Ok(Wake::Tick),
        };
        warn(analysis.session.take_warnings());
        if let Ok(Wake::Step(Progress::Seeded { unreadable, .. })) = wake {
            warn_unreadable(unreadable);
        }
        wake
    }
}

/// Opens a recording for a replay of `window`: the host ends at
/// `--until`; returned with it, the boot-clock time of `--since`.
pub fn replay(
    path: &Path,
    window: crate::settings::Window,
) -> anyhow::Result<(crate::session::journal::ReplayHost, Option<u64>)> {
    let mut host = crate::session::journal::open(path)?;
    let header = host.header();
    let (boot, unix) = (header.started_boot_ns, header.started_unix_ns);
    let since = window.since.map(|since| since.boot_ns(boot, unix));
    let until = window.until.map(|until| until.boot_ns(boot, unix));
    if let (Some(since), Some(until)) = (since, until)
        && until <= since
    {
        return Err(UsageError("--until: must come after --since".into()).into());
    }
    if let Some(until) = until {
        host.until(until);
    }
    Ok((host, since))
}

/// The tracing options of a replay: `record --cgroup` holds for it, and
/// `record --comm`/`--remote` unless the replay selects for itself (every
/// record was kept, so it may look wider).
pub fn as_recorded(
    trace: &crate::session::TraceOptions,
    host: &crate::session::journal::ReplayHost,
) -> crate::session::TraceOptions {
    use crate::model::select::{Selection, parse_remote};
    let header = host.header();
    let selection = if trace.selection == Selection::default() {
        let remote: Vec<_> = header
            .remote
            .iter()
            .filter_map(|r| parse_remote(r).ok())
            .collect();
        Selection::new(&header.comm, &remote)
    } else {
        trace.selection.clone()
    };
    crate::session::TraceOptions {
        cgroup: header.cgroup.clone(),
        selection,
        ..trace.clone()
    }
}

/// How a run ends, as the line that starts it says: `for 20s; Ctrl-C to
/// stop early`, or `until Ctrl-C`.
pub fn how_to_stop(duration: Option<Duration>) -> String {
    match duration {
        Some(d) => format!(
            "for {}; Ctrl-C to stop early",
            humantime::format_duration(d)
        ),
        None => "until Ctrl-C".into(),
    }
}

/// A line written over itself is on stderr (`report`'s progress): what
/// else is written there must start on a line of its own.
pub static PROGRESS_SHOWN: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Shows warnings on stderr, one line each (a progress line under way is
/// cleared first; it is drawn again at its next turn).
pub fn warn(warnings: impl IntoIterator<Item = String>) {
    for w in warnings {
        if PROGRESS_SHOWN.swap(false, std::sync::atomic::Ordering::Relaxed) {
            eprint!("\r\x1b[K");
        }
        eprintln!("tcplinger: warning: {w}");
    }
}

/// Says that the start-up snapshot could not read some namespaces, if so.
pub fn warn_unreadable(unreadable: usize) {
    if unreadable > 0 {
        warn([format!(
            "{unreadable} sock_diag dumps of network namespaces failed; their sockets already open are not known"
        )]);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::fs::{PermissionsExt as _, symlink},
        sync::atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    /// A directory of its own for each test, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "tcplinger-unit-output-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        /// A file holding "precious".
        fn precious(&self, name: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, "precious").unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn refused(path: &Path, replace: bool) -> String {
        match Output::open(Some(path), replace) {
            Err(UsageError(line)) => {
                let prefix = format!("--output {}: ", path.display());
                assert!(line.starts_with(&prefix), "{line}");
                assert!(!line.contains('\n'), "{line}");
                line[prefix.len()..].to_string()
            }
            Ok(_) => panic!("{} was accepted", path.display()),
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_new_file_is_created_for_its_owner_only() {
        let dir = Scratch::new();
        let path = dir.0.join("out");
        let output = Output::open(Some(&path), false).unwrap();
        assert_eq!(output.name(), path.display().to_string());
        // Whatever the umask: never readable by group or others.
        assert_eq!(mode(&path) & 0o077, 0, "{:o}", mode(&path));
        let mut out = output.begin().unwrap();
        out.write_all(b"record\n").unwrap();
        drop(out);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "record\n");
    }

    #[test]
    fn a_symbolic_link_is_refused_and_its_target_untouched() {
        let dir = Scratch::new();
        let target = dir.precious("target");
        let link = dir.0.join("link");
        symlink(&target, &link).unwrap();
        for replace in [false, true] {
            assert!(refused(&link, replace).contains("symbolic link"));
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        // Dangling: nothing is created where it points.
        let nowhere = dir.0.join("nowhere");
        let dangling = dir.0.join("dangling");
        symlink(&nowhere, &dangling).unwrap();
        for replace in [false, true] {
            assert!(refused(&dangling, replace).contains("symbolic link"));
        }
        assert!(!nowhere.exists());
    }

    #[test]
    fn an_existing_file_is_replaced_only_when_asked_and_only_at_begin() {
        let dir = Scratch::new();
        let path = dir.precious("out");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(refused(&path, false).contains("--force"));
        let output = Output::open(Some(&path), true).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "precious",
            "emptied before the run began"
        );
        // Never begun (the programs did not load): left as it was.
        drop(output);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
        let mut out = Output::open(Some(&path), true).unwrap().begin().unwrap();
        out.write_all(b"new").unwrap();
        drop(out);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(mode(&path), 0o644, "an existing file keeps its mode");
    }

    #[test]
    fn a_file_created_by_a_run_that_never_began_is_removed() {
        let dir = Scratch::new();
        let path = dir.0.join("out");
        drop(Output::open(Some(&path), false).unwrap());
        assert!(!path.exists());
        // Begun: it stays, even empty.
        drop(Output::open(Some(&path), false).unwrap().begin().unwrap());
        assert!(path.exists());
        // Replaced by someone else meanwhile: not ours to remove.
        let other = dir.0.join("other");
        let output = Output::open(Some(&other), false).unwrap();
        std::fs::remove_file(&other).unwrap();
        std::fs::write(&other, "theirs").unwrap();
        drop(output);
        assert_eq!(std::fs::read_to_string(&other).unwrap(), "theirs");
    }

    #[test]
    fn what_is_not_a_file_of_ours_says_what_it_is() {
        let dir = Scratch::new();
        for replace in [false, true] {
            assert_eq!(refused(&dir.0, replace), IS_DIR);
        }
        let missing = dir.0.join("no/such/out");
        assert_eq!(
            refused(&missing, false),
            format!("no such directory {}", dir.0.join("no/such").display())
        );
        let fifo = dir.0.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path and a mode.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for replace in [false, true] {
            assert_eq!(refused(&fifo, replace), NOT_REGULAR);
        }
        // Another name for the same file leads elsewhere, as a link would.
        let file = dir.precious("file");
        std::fs::hard_link(&file, dir.0.join("alias")).unwrap();
        assert!(refused(&file, true).contains("hard links"));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
    }

    #[test]
    fn only_the_owners_regular_file_may_be_replaced() {
        let dir = Scratch::new();
        let file = File::open(dir.precious("file")).unwrap();
        let meta = file.metadata().unwrap();
        assert_eq!(replaceable(&meta, meta.uid()), Ok(()));
        assert!(
            replaceable(&meta, meta.uid().wrapping_add(1))
                .unwrap_err()
                .contains("another user")
        );
        let dir_meta = File::open(&dir.0).unwrap().metadata().unwrap();
        assert_eq!(replaceable(&dir_meta, dir_meta.uid()), Err(NOT_REGULAR));
    }

    #[test]
    fn stdout_needs_no_file() {
        let output = Output::open(None, false).unwrap();
        assert_eq!(output.name(), "stdout");
    }
}
