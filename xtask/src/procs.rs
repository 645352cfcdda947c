//! Process and cgroup churn for the soak: short-lived processes, each in a scratch cgroup of its own (named like a Kubernetes container) and with a process name from a pool, opening a few loopback connections over a few seconds and exiting; bounded in count and time, every scratch cgroup removed at the end, error or not.

use std::{
    collections::VecDeque,
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// A child's sockets wait this long at most for their peer (the other end
/// is in the same process, so only a stuck kernel would make it wait).
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A child still alive this long after it started is killed by the kernel
/// (`alarm`), so the soak never waits on it for longer.
const CHILD_SECONDS: u32 = 30;

/// Processes running at once at most; at the cap the oldest is waited for
/// before the next starts.
const MAX_RUNNING: usize = 256;

#[derive(Debug, Clone, Copy)]
pub struct ProcChurn {
    pub duration: Duration,
    /// Processes started per second.
    pub per_second: u32,
    /// Connections each process opens and closes.
    pub connections: u32,
    /// How long each process spreads its connections over: longer than
    /// the daemon's cgroup rescan (1 s), as a container's life is, so its
    /// connections are labelled with it.
    pub lifetime: Duration,
    /// Process names to cycle through (more than the daemon's budget of
    /// 200 makes it fold names).
    pub names: u32,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ProcOutcome {
    /// Processes started, each in a cgroup made for it.
    pub processes: u64,
    /// Of those, the ones that did not open all their connections.
    pub failed: u64,
    /// Connections the processes that succeeded opened.
    pub connections: u64,
}

/// Where cgroup v2 is mounted (a hybrid host has it at
/// /sys/fs/cgroup/unified), from /proc/self/mountinfo.
fn cgroup2_root() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        // "... mount_point ... - cgroup2 cgroup2 rw"
        let (fields, fstype) = line.split_once(" - ")?;
        fstype
            .starts_with("cgroup2 ")
            .then(|| fields.split(' ').nth(4).map(PathBuf::from))?
    })
}

/// The soak's own cgroup directory; on drop, every cgroup left below it
/// (an error cut a batch short) is removed, deepest first, then itself.
struct Scratch(PathBuf);

impl Scratch {
    fn create() -> Result<Self> {
        let root =
            cgroup2_root().context("cgroup v2 is not mounted: the soak's cgroup churn needs it")?;
        let dir = root.join(format!("tcplinger-soak-{}", std::process::id()));
        fs::create_dir(&dir).with_context(|| format!("creating the cgroup {}", dir.display()))?;
        Ok(Self(dir))
    }
}

/// Every directory below `dir`, parents before their children.
fn dirs_below(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
                found.push(e.path());
            }
        }
    }
    found
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Children are reaped before their cgroup goes (see `Reaped`), so
        // every directory here is empty of processes and removable.
        for dir in dirs_below(&self.0).iter().rev() {
            let _ = fs::remove_dir(dir);
        }
        if let Err(e) = fs::remove_dir(&self.0) {
            eprintln!("soak: could not remove {}: {e}", self.0.display());
        }
    }
}

/// A batch's cgroups, `pod<uid>/<container id>` as the kubelet's cgroupfs
/// driver lays them out, so the daemon labels both; removed on drop.
struct BatchCgroup {
    pod: PathBuf,
    container: PathBuf,
}

impl BatchCgroup {
    fn create(scratch: &Scratch, n: u64) -> Result<Self> {
        let pod = scratch.0.join(format!(
            "pod{:08x}-50a4-4000-8000-{:012x}",
            n >> 48,
            n & 0xffff_ffff_ffff
        ));
        let container = pod.join(format!("50a4{n:060x}"));
        fs::create_dir_all(&container)
            .with_context(|| format!("creating the cgroup {}", container.display()))?;
        Ok(Self { pod, container })
    }
}

impl Drop for BatchCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.container);
        let _ = fs::remove_dir(&self.pod);
    }
}

/// A child killed (if still running) and reaped on drop, before the
/// cgroup it runs in is removed.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// A process of the churn and the cgroups it runs in; dropped in that
/// order (the process reaped, then its cgroups removed).
type Running = (Reaped, BatchCgroup);

/// Waits for the oldest process if `block_from` or more are running, else
/// only sees whether it ended; counts it and removes its cgroups once it
/// has. Whether it had.
fn reap_oldest(
    running: &mut VecDeque<Running>,
    out: &mut ProcOutcome,
    c: &ProcChurn,
    block_from: usize,
) -> Result<bool> {
    let block = running.len() >= block_from;
    let Some((child, _)) = running.front_mut() else {
        return Ok(false);
    };
    // Bounded even when blocking: the child's alarm ends it within
    // CHILD_SECONDS.
    let status = if block {
        Some(child.0.wait().context("waiting for a soak process")?)
    } else {
        child.0.try_wait().context("waiting for a soak process")?
    };
    let Some(status) = status else {
        return Ok(false);
    };
    if status.success() {
        out.connections += u64::from(c.connections);
    } else {
        out.failed += 1;
    }
    running.pop_front();
    Ok(true)
}

/// Runs the churn until `c.duration` is over, then waits for the last
/// processes; they are children of `exe`'s hidden `soak-child` command.
pub fn run(c: ProcChurn, exe: &Path) -> Result<ProcOutcome> {
    if c.per_second == 0 || c.names == 0 || c.connections == 0 {
        bail!("the process churn needs a rate, names and connections");
    }
    let scratch = Scratch::create()?;
    let mut out = ProcOutcome::default();
    let mut running: VecDeque<Running> = VecDeque::new();
    let start = Instant::now();
    let mut n: u64 = 0;
    let pause = c.lifetime / c.connections;
    while start.elapsed() < c.duration {
        // The rate: the n-th process starts n / per_second after the start.
        let due = Duration::from_secs_f64(n as f64 / f64::from(c.per_second));
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait.min(c.duration.saturating_sub(start.elapsed())));
        }
        if start.elapsed() >= c.duration {
            break;
        }
        while reap_oldest(&mut running, &mut out, &c, MAX_RUNNING)? {}
        let cgroup = BatchCgroup::create(&scratch, n)?;
        // 127.2.0.1 onwards, a loopback address per process: the
        // daemon sees new endpoints for each.
        let addr = Ipv4Addr::new(
            127,
            2,
            u8::try_from((n / 254) % 250).unwrap_or(0),
            u8::try_from(n % 254 + 1).unwrap_or(1),
        );
        let child = Command::new(exe)
            .arg("soak-child")
            .arg("--cgroup")
            .arg(cgroup.container.join("cgroup.procs"))
            .args(["--name", &format!("soakproc-{}", n % u64::from(c.names))])
            .args(["--addr", &addr.to_string()])
            .args(["--connections", &c.connections.to_string()])
            .args(["--pause-ms", &pause.as_millis().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a soak process")?;
        running.push_back((Reaped(child), cgroup));
        out.processes += 1;
        n += 1;
    }
    while reap_oldest(&mut running, &mut out, &c, 0)? {}
    drop(scratch);
    Ok(out)
}

/// The work of one short-lived process: join the cgroup, take the name,
/// then open and close `connections` connections to itself on `addr`,
/// half closed by the client first, half by the server, `pause` apart.
pub fn child(
    cgroup_procs: &Path,
    name: &str,
    addr: Ipv4Addr,
    connections: u32,
    pause: Duration,
) -> Result<()> {
    // SAFETY: alarm only arms a timer; its default action ends the process.
    unsafe { libc::alarm(CHILD_SECONDS) };
    fs::write(cgroup_procs, std::process::id().to_string())
        .with_context(|| format!("joining {}", cgroup_procs.display()))?;
    let mut comm = [0u8; 16];
    let n = name.len().min(15);
    comm[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated name of at most 16 bytes.
    // The main thread is the thread-group leader, whose name is the one the
    // tracer reports.
    if unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("naming the process");
    }
    let listener = TcpListener::bind(SocketAddr::from((addr, 0))).context("listening")?;
    let target = listener.local_addr()?;
    for i in 0..connections {
        if i > 0 {
            // The shape of the workload: a process alive for a while.
            std::thread::sleep(pause);
        }
        let mut client = TcpStream::connect_timeout(&target, IO_TIMEOUT).context("connecting")?;
        // Loopback completes the handshake before accept is called.
        let (mut server, _) = listener.accept().context("accepting")?;
        for s in [&client, &server] {
            s.set_read_timeout(Some(IO_TIMEOUT))?;
        }
        let mut b = [0u8; 1];
        client.write_all(b"?")?;
        server.read_exact(&mut b)?;
        server.write_all(&b)?;
        client.read_exact(&mut b)?;
        let (first, mut second) = if i % 2 == 0 {
            (client, server)
        } else {
            (server, client)
        };
        drop(first);
        // The peer's FIN arrives: end of stream, then the second close.
        let _ = second.read(&mut b)?;
        drop(second);
    }
    Ok(())
}
