//! Real programs for the scenario suite: the Go net/http programs of `tests/real/go` (built once with Debian's `golang-go`), nginx with a configuration of its own, Python scripts and curl, each started inside a test namespace with its pid known.

use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{OnceLock, mpsc},
    time::{Duration, Instant},
};

use super::{scene::Scene, wait_until};

/// Bounds every wait on a real program: a stuck scenario fails instead of
/// hanging.
pub const LIMIT: Duration = Duration::from_mins(1);

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where the scenario programs' sources live.
pub fn sources() -> PathBuf {
    manifest_dir().join("tests/real")
}

/// A Go program of `tests/real/go` (`goserver`, `goclient`), built once per
/// test run into the target directory.
pub fn go_program(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let target = manifest_dir().join("../target/real-go");
        fs::create_dir_all(&target).expect("creating target/real-go");
        // Standard library only: no module download, no network.
        let out = Command::new("go")
            .args(["build", "-o"])
            .arg(&target)
            .arg("./...")
            .current_dir(sources().join("go"))
            .env("GOCACHE", target.join("cache"))
            .env("GOPATH", target.join("gopath"))
            .env("GOFLAGS", "-mod=mod")
            .env("GOTOOLCHAIN", "local")
            .output()
            .expect("running go (Debian's golang-go: cargo xtask test installs it)");
        assert!(
            out.status.success(),
            "go build of tests/real/go: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        target
    });
    dir.join(name)
}

/// The Go programs on a scene: methods of the shared `Scene` kept here,
/// beside the build of the programs they run.
impl Scene {
    /// The Go server in the server namespace on the scene's port, once it
    /// listens.
    pub fn goserver(&self, flags: &[&str]) -> Proc {
        let listen = self.target().to_string();
        let mut args = vec!["-listen", &listen];
        args.extend_from_slice(flags);
        let server = Proc::spawn(&self.net.server_ns, go_program("goserver"), &args);
        server.expect_line("listening");
        server
    }

    /// The Go client of the scene's server, in the client namespace.
    pub fn goclient(&self, flags: &[&str]) -> Proc {
        let url = self.url();
        let mut args = vec!["-url", &url];
        args.extend_from_slice(flags);
        Proc::spawn(&self.net.client_ns, go_program("goclient"), &args)
    }
}

/// A program running in a test namespace, its stdout read line by line.
pub struct Proc {
    child: Child,
    pub pid: u32,
    lines: mpsc::Receiver<String>,
    what: String,
}

impl Proc {
    /// Runs `program ARGS` inside namespace `ns` (`ip netns exec` execs
    /// it, so the pid is the program's own), in a process group of its
    /// own so that everything it starts is stopped with it.
    pub fn spawn(ns: &str, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Proc {
        let program = program.as_ref();
        let what = format!("{} {}", program.to_string_lossy(), args.join(" "));
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let pid = child.id();
        Proc {
            child,
            pid,
            lines,
            what,
        }
    }

    /// Its process name once `ip netns exec` has become the program
    /// (before its exec the child still bears this test binary's name).
    pub fn comm(&self) -> String {
        let ours = fs::read_to_string("/proc/self/comm").unwrap_or_default();
        let mut comm = String::new();
        let exec = wait_until(LIMIT, || {
            comm = comm_of_opt(self.pid).unwrap_or_default();
            !comm.is_empty() && comm != "ip" && comm != ours.trim_end()
        });
        assert!(exec, "{} never started", self.what);
        comm
    }

    /// The next line it prints that starts with `prefix`.
    pub fn expect_line(&self, prefix: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(e) => panic!("{} never printed {prefix:?} ({e})", self.what),
            }
        }
    }

    /// Every line it printed so far, and until it exits.
    pub fn lines_until_exit(&mut self) -> (ExitStatus, Vec<String>) {
        let status = self.wait();
        let mut lines = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
            lines.push(line);
        }
        (status, lines)
    }

    /// Waits for it to exit.
    pub fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting") {
                return status;
            }
            assert!(
                start.elapsed() < LIMIT,
                "{} did not finish within {LIMIT:?}",
                self.what
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for it to exit successfully.
    pub fn finish(&mut self) {
        let status = self.wait();
        assert!(status.success(), "{} failed: {status}", self.what);
    }

    /// Stops it and everything it started.
    pub fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's process group.
        unsafe { libc::kill(-self.pid.cast_signed(), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The process name the kernel keeps for `pid`, as `ps -o comm` shows it.
pub fn comm_of(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/comm: {e}"))
        .trim_end()
        .to_string()
}

/// The children of `pid`, from every process's parent.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: the comm may hold spaces, not ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            found.push(child);
        }
    }
    found.sort_unstable();
    found
}

/// True when something in namespace `ns` listens on TCP `port`.
pub fn listening(ns: &str, port: u16) -> bool {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ss", "-Hltn"])
        .arg(format!("sport = :{port}"))
        .output()
        .expect("running ss (iproute2)");
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

/// nginx (Debian's `nginx-light`): a master and two workers, serving a
/// fixed answer on one address, with `keepalive_timeout` as given.
pub struct Nginx {
    proc: Proc,
    pub master: u32,
    pub workers: Vec<u32>,
    _dir: TempDir,
}

impl Nginx {
    pub fn start(ns: &str, addr: std::net::SocketAddr, keepalive_timeout: &str) -> Nginx {
        let dir = TempDir::new("nginx");
        let conf = format!(
            "worker_processes 2;\n\
             pid {dir}/nginx.pid;\n\
             error_log {dir}/error.log;\n\
             daemon off;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
               access_log off;\n\
               keepalive_timeout {keepalive_timeout};\n\
               client_body_temp_path {dir};\n\
               server {{ listen {addr}; location / {{ return 200 \"ok\\n\"; }} }}\n\
             }}\n",
            dir = dir.path.display()
        );
        let conf_path = dir.path.join("nginx.conf");
        fs::write(&conf_path, conf).expect("writing nginx.conf");
        let prefix = dir.path.to_string_lossy().to_string();
        let error_log = dir.path.join("error.log");
        let proc = Proc::spawn(
            ns,
            "nginx",
            &[
                "-p",
                &prefix,
                "-e",
                &error_log.to_string_lossy(),
                "-c",
                &conf_path.to_string_lossy(),
            ],
        );
        let master = proc.pid;
        let mut workers = Vec::new();
        let ready = wait_until(LIMIT, || {
            workers = children_of(master)
                .into_iter()
                .filter(|&p| comm_of_opt(p).as_deref() == Some("nginx"))
                .collect();
            workers.len() == 2 && listening(ns, addr.port())
        });
        assert!(
            ready,
            "nginx did not start two workers listening on {addr}: {}",
            fs::read_to_string(dir.path.join("error.log")).unwrap_or_default()
        );
        Nginx {
            proc,
            master,
            workers,
            _dir: dir,
        }
    }

    pub fn stop(&mut self) {
        self.proc.stop();
    }
}

fn comm_of_opt(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_string())
}

/// A directory removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("tcplinger-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("creating a temporary directory");
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// `curl` run `count` times in namespace `ns`, one process per request
/// (as a shell loop does), with `extra` flags; returns their pids.
pub fn curl_loop(ns: &str, url: &str, count: u32, extra: &str) -> Vec<u32> {
    // Each curl in the background so its pid can be printed, then waited
    // for: still one at a time.
    // A curl that gives up (`-m`) exits 28: the loop goes on, as a
    // shell script's would.
    let script = format!(
        "command -v curl >/dev/null || exit 127; for i in $(seq {count}); do curl -s -o /dev/null {extra} {url} & echo $!; wait $!; done; exit 0"
    );
    let mut shell = Proc::spawn(ns, "sh", &["-c", &script]);
    let (status, lines) = shell.lines_until_exit();
    assert!(status.success(), "curl loop (is curl installed?): {status}");
    let pids: Vec<u32> = lines.iter().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(pids.len(), count as usize, "curl pids: {lines:?}");
    pids
}

/// The Python interpreter the scenarios run: Debian's, run directly (a
/// wrapper on PATH, such as pyenv's shell shim, would be the process
/// first).
pub fn python() -> &'static str {
    "/usr/bin/python3"
}

/// The forking Python server of `tests/real/python/forkserver.py` in the
/// scene's server namespace (the parent listens, a child accepts and never
/// reads or closes): the server, and the child's pid.
pub fn forkserver(scene: &Scene) -> (Proc, u32) {
    let script = sources().join("python/forkserver.py");
    let server = Proc::spawn(
        &scene.net.server_ns,
        python(),
        &[
            &script.to_string_lossy(),
            &scene.server_ip().to_string(),
            &scene.port_arg(),
        ],
    );
    let line = server.expect_line("listening");
    let child: u32 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("child="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no child pid in {line:?}"));
    (server, child)
}
