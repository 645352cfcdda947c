//! The tools the benchmark measures tcplinger against, from the distribution: bpftrace and Debian's `libbpf-tools` (`tcplife`, `tcpstates`), installed if missing and found where the package put them.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::deps;

/// `apt-get install` of one package, the package lists refreshed once if
/// the first try fails (they may be stale on a fresh machine).
fn apt_install(package: &str) -> bool {
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let install = ["install", "-y", "-qq", "--no-install-recommends", package];
    apt(&install) || (apt(&["update", "-qq"]) && apt(&install))
}

/// bpftrace, installed from the distribution's package if missing (the
/// peer is part of the benchmark, not of the tool).
pub fn have_bpftrace() -> bool {
    let present = || Command::new("bpftrace").arg("--version").output().is_ok();
    if present() {
        return true;
    }
    eprintln!("bench: installing bpftrace (apt-get install bpftrace)");
    apt_install("bpftrace") && present()
}

/// Where Debian's `libbpf-tools` put `tcplife` and `tcpstates`.
#[derive(Debug, Clone, Default)]
pub struct LibbpfTools {
    pub tcplife: Option<PathBuf>,
    pub tcpstates: Option<PathBuf>,
}

const LIBBPF_TOOLS: &str = "libbpf-tools";

/// Installs `libbpf-tools` if dpkg does not have it, then finds the two
/// tools among the package's files (bookworm puts them in /usr/sbin; the
/// list is asked rather than the path assumed).
pub fn libbpf_tools() -> LibbpfTools {
    if !deps::installed(LIBBPF_TOOLS) {
        eprintln!("bench: installing {LIBBPF_TOOLS} (apt-get install {LIBBPF_TOOLS})");
        if !apt_install(LIBBPF_TOOLS) {
            return LibbpfTools::default();
        }
    }
    let files = Command::new("dpkg")
        .args(["-L", LIBBPF_TOOLS])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    LibbpfTools {
        tcplife: find_tool(&files, "tcplife"),
        tcpstates: find_tool(&files, "tcpstates"),
    }
}

fn executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The executable named `name` in a package's file list; failing that, one
/// whose name holds it (a distribution may prefix or suffix its tools).
fn find_tool(files: &str, name: &str) -> Option<PathBuf> {
    let paths: Vec<&Path> = files.lines().map(Path::new).collect();
    let base = |p: &&Path| p.file_name().map(|f| f.to_string_lossy().into_owned());
    let exact = paths
        .iter()
        .find(|p| base(p).is_some_and(|b| b == name) && executable(p));
    let loose = || {
        paths
            .iter()
            .find(|p| base(p).is_some_and(|b| b.contains(name)) && executable(p))
    };
    exact.or_else(loose).map(|p| p.to_path_buf())
}

/// Classic tracepoints (bpftrace's, and the libbpf tools') need tracefs,
/// not mounted on every machine.
pub fn ensure_tracefs() {
    if !Path::new("/sys/kernel/tracing/events").exists() {
        let _ = Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_tool_by_exact_name_first() {
        // /bin/true and /bin/false exist and are executable everywhere the
        // tests run; /nonexistent/tcplife does not.
        let files = "/usr/sbin\n/nonexistent/tcplife\n/bin/false\n/bin/true\n";
        assert_eq!(find_tool(files, "true"), Some(PathBuf::from("/bin/true")));
        assert_eq!(find_tool(files, "tcplife"), None);
        assert_eq!(find_tool(files, "ru"), Some(PathBuf::from("/bin/true")));
    }
}
