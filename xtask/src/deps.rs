//! What the test suite needs from the distribution, installed once (as root, with apt) and said out loud: the README's test command must work on a fresh machine.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// Debian packages the tests run, and why.
pub const TEST_PACKAGES: [(&str, &str); 10] = [
    ("iproute2", "ip netns, veth and tc: the test hosts"),
    (
        "iptables",
        "packet loss and a blackhole inside a test namespace (the network figures' tests)",
    ),
    ("util-linux", "setpriv: the unprivileged-run test"),
    ("tmux", "the pseudo-terminal test of top"),
    (
        "prometheus",
        "prometheus and promtool: the daemon's metrics tests",
    ),
    (
        "nginx-light",
        "real nginx (master and workers) in the scenario suite",
    ),
    (
        "golang-go",
        "builds the Go net/http programs of tests/real/go",
    ),
    ("curl", "a process per request in the scenario suite"),
    (
        "python3",
        "Python's http.server and the prefork and threaded scenarios",
    ),
    (
        "chromium",
        "renders the HTML report headless, to check its charts draw",
    ),
];

pub fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs the packages of `wanted` that are missing; says which and why.
pub fn ensure(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&(&str, &str)> = wanted.iter().filter(|(p, _)| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    for (package, why) in &missing {
        eprintln!("xtask: installing {package} ({why})");
    }
    let apt = |args: &[&str]| -> Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context(
                "running apt-get (a Debian or Ubuntu machine is needed to install the test tools)",
            )?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq"];
    install.extend(missing.iter().map(|(p, _)| *p));
    apt(&install)
}
