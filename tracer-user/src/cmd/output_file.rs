//! Where a command writes: stdout or a file opened as a root tool must (no symbolic link, a new file 0600, replaced only with --force), noticing a reader that has gone, and how a write error ends a run.

use std::{
    fs::{File, Metadata, OpenOptions},
    io::{self, ErrorKind, Write},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

use crate::error::UsageError;

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
