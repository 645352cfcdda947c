//! Project chores: rebuild or check the committed eBPF object, run the whole test suite as root, run the benchmark.

mod bench;
mod bench_report;
mod bpf_stats;
mod churn;
mod deps;
mod hold;
mod keepalive;
mod lint;
mod nested;
mod peers;
mod procs;
mod ratios;
mod soak;

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

/// Where the committed object lives, relative to the workspace root.
const OBJECT_PATH: &str = "tracer-user/ebpf/tcplinger.bpf.o";
const EBPF_TARGET: &str = "bpfel-unknown-none";
const TOOLCHAIN: &str = "nightly";

#[derive(Parser)]
#[command(about = "tcplinger project chores")]
struct Cli {
    #[command(subcommand)]
    command: Chore,
}

#[derive(Subcommand)]
enum Chore {
    /// Rebuild the eBPF object (nightly + rust-src + bpf-linker) and store it
    /// at tracer-user/ebpf/tcplinger.bpf.o.
    BuildEbpf {
        /// Rebuild, but only compare with the committed object; fail if they differ.
        #[arg(long)]
        check: bool,
    },
    /// Check formatting, clippy (warnings are errors; the eBPF crate with
    /// the nightly toolchain) and the layering of tracer-user/src.
    Lint,
    /// Run every test, privileged and real-software ones included (needs
    /// root; installs the Debian packages the tests use when missing).
    Test {
        /// Extra arguments for `cargo test`, e.g. `-- --nocapture`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Measure tracing overhead and scale (needs root; see BENCHMARKS.md).
    Bench(bench::BenchArgs),
    /// The daemon under maximum churn for minutes, its memory sampled
    /// (needs root; see BENCHMARKS.md).
    Soak(soak::SoakArgs),
    /// Count the state-change runs the kernel skips as nested (a softirq
    /// interrupting the program on its CPU) under orphans finished by
    /// delayed ACKs beside loopback churn, for each tcplinger given.
    NestedMisses(nested::NestedArgs),
    /// Helper of the benchmark: hold loopback connections open.
    #[command(hide = true)]
    Hold { index: u8, pairs: u64 },
    /// Helper of the soak: one short-lived process of the process churn.
    #[command(hide = true)]
    SoakChild {
        /// The `cgroup.procs` file of the cgroup to run in.
        #[arg(long)]
        cgroup: PathBuf,
        /// The process name to take.
        #[arg(long)]
        name: String,
        /// The loopback address to listen on.
        #[arg(long)]
        addr: std::net::Ipv4Addr,
        #[arg(long)]
        connections: u32,
        /// Milliseconds between two connections.
        #[arg(long)]
        pause_ms: u64,
    },
    /// Helper of the benchmark: churn connections on loopback (for profiling).
    #[command(hide = true)]
    Churn {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Chore::BuildEbpf { check } => build_ebpf(check),
        Chore::Lint => lint::run(&workspace_root(), TOOLCHAIN, &|c| {
            ebpf_cargo_args(c, &workspace_root());
        }),
        Chore::Test { args } => test(&args),
        Chore::Bench(args) => bench::run(&args, &workspace_root()),
        Chore::Soak(args) => soak::run(&args, &workspace_root()),
        Chore::NestedMisses(args) => nested::run(&args),
        Chore::Hold { index, pairs } => hold::hold(index, pairs),
        Chore::SoakChild {
            cgroup,
            name,
            addr,
            connections,
            pause_ms,
        } => procs::child(
            &cgroup,
            &name,
            addr,
            connections,
            std::time::Duration::from_millis(pause_ms),
        ),
        Chore::Churn { seconds, threads } => churn::run(churn::Churn {
            port: 18999,
            threads,
            duration: std::time::Duration::from_secs(seconds),
            max_connections: u64::MAX,
            rate: None,
        })
        .map(|o| {
            println!(
                "{} connections in {:?} ({:.0}/s), {} failed",
                o.connections,
                o.elapsed,
                o.per_second(),
                o.failures
            );
        })
        .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits one level below the workspace root")
        .to_path_buf()
}

/// Says what is missing and how to get it; installs nothing.
fn check_toolchain() -> Result<()> {
    let sysroot = Command::new("rustup")
        .args(["run", TOOLCHAIN, "rustc", "--print", "sysroot"])
        .output();
    let sysroot = match sysroot {
        Ok(out) if out.status.success() => PathBuf::from(String::from_utf8(out.stdout)?.trim()),
        Ok(_) => bail!(
            "the {TOOLCHAIN} toolchain is not installed: rustup toolchain install {TOOLCHAIN} --component rust-src"
        ),
        Err(err) => bail!(
            "rustup not found ({err}): the eBPF build needs rustup with a {TOOLCHAIN} toolchain"
        ),
    };
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        bail!(
            "rust-src is missing from {TOOLCHAIN}: rustup component add rust-src --toolchain {TOOLCHAIN}"
        );
    }
    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!(
            "bpf-linker not found in PATH: apt-get install llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev && \
             LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version 0.13.0 --no-default-features --features llvm-22"
        );
    }
    Ok(())
}

/// Flags as aya-build passes them, plus path remapping: debug info feeds the
/// object's BTF, and absolute paths would make the bytes depend on where the
/// clone and the toolchains live.
fn ebpf_rustflags(root: &Path) -> OsString {
    let mut flags: Vec<OsString> = vec![
        format!("--cfg=bpf_target_arch=\"{}\"", env::consts::ARCH).into(),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
    ];
    let mut remap = |from: &Path, to: &str| {
        let mut flag = OsString::from("--remap-path-prefix=");
        flag.push(from);
        flag.push("=");
        flag.push(to);
        flags.push(flag);
    };
    remap(root, "/tcplinger");
    let home = env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let cargo_home = env::var_os("CARGO_HOME").map_or_else(|| home.join(".cargo"), PathBuf::from);
    let rustup_home =
        env::var_os("RUSTUP_HOME").map_or_else(|| home.join(".rustup"), PathBuf::from);
    remap(&cargo_home, "/cargo");
    remap(&rustup_home, "/rustup");
    flags.join(&OsString::from("\x1f"))
}

/// What building (or linting) the eBPF crate takes after `cargo <verb>
/// --package tracer-ebpf`: its target, core built from source, and the
/// flags of [`ebpf_rustflags`], in a target directory of its own.
fn ebpf_cargo_args(command: &mut Command, root: &Path) {
    command
        .args([
            "--bins",
            "--release",
            "--target",
            EBPF_TARGET,
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(root.join("target/ebpf"))
        .env("CARGO_ENCODED_RUSTFLAGS", ebpf_rustflags(root))
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS");
}

fn build_ebpf(check: bool) -> Result<()> {
    check_toolchain()?;
    let root = workspace_root();
    let target_dir = root.join("target/ebpf");
    let mut cargo = Command::new("rustup");
    cargo.args([
        "run",
        TOOLCHAIN,
        "cargo",
        "build",
        "--package",
        "tracer-ebpf",
    ]);
    ebpf_cargo_args(&mut cargo, &root);
    let status = cargo
        .current_dir(&root)
        .status()
        .context("running cargo for the eBPF crate")?;
    if !status.success() {
        bail!("building tracer-ebpf failed ({status})");
    }
    let built = target_dir.join(EBPF_TARGET).join("release/tracer-ebpf");
    let fresh = fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    let committed_path = root.join(OBJECT_PATH);
    if check {
        let committed = fs::read(&committed_path)
            .with_context(|| format!("reading {}", committed_path.display()))?;
        if committed != fresh {
            let first = committed.iter().zip(&fresh).position(|(a, b)| a != b);
            bail!(
                "{OBJECT_PATH} is stale: rebuilt {} bytes vs committed {} (first difference at {}); \
                 run `cargo xtask build-ebpf` and commit the result (fresh build: {})",
                fresh.len(),
                committed.len(),
                first.map_or_else(
                    || "the end of the shorter".to_string(),
                    |i| format!("byte {i}")
                ),
                built.display()
            );
        }
        println!(
            "{OBJECT_PATH} matches a fresh build ({} bytes)",
            fresh.len()
        );
    } else {
        fs::create_dir_all(committed_path.parent().expect("object path has a parent"))?;
        fs::write(&committed_path, &fresh)?;
        println!("wrote {OBJECT_PATH} ({} bytes)", fresh.len());
    }
    Ok(())
}

fn test(args: &[OsString]) -> Result<()> {
    // The privileged tests fail loudly without root; say so before compiling.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the test suite loads eBPF programs and creates network namespaces: run it as root, e.g. sudo -E env \"PATH=$PATH\" cargo xtask test"
        );
    }
    deps::ensure(&deps::TEST_PACKAGES)?;
    // Arguments (a filter, `-p`...) go to one run, as given, in the
    // release profile unless they name one.
    if !args.is_empty() {
        let named = args.iter().any(|a| {
            let a = a.to_string_lossy();
            a == "--release" || a == "-r" || a.starts_with("--profile")
        });
        return cargo_test(if named { &[] } else { &["--release"] }, args);
    }
    // The unit tests first, in the dev profile: overflow checks and debug
    // assertions on, a quick build. Then everything in the release
    // profile: the privileged tests drive the tracer at full churn and
    // judge its drain, its memory and its answers under load, which only
    // means something of the binary that ships (an unoptimised daemon
    // falls behind where the real one does not).
    cargo_test(&[], &["--lib".into(), "--bins".into()])?;
    cargo_test(&["--release"], &[])
}

/// `cargo test` over every host crate (unless the caller names packages)
/// with `profile` flags and `args`.
fn cargo_test(profile: &[&str], args: &[OsString]) -> Result<()> {
    let mut cargo = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo.arg("test").args(profile);
    // Every crate that runs on the host (xtask's own checks included)
    // unless the caller names packages.
    if !args
        .iter()
        .any(|a| a == "-p" || a == "--package" || a.to_string_lossy().starts_with("--package="))
    {
        cargo.args(["--workspace", "--exclude", "tracer-ebpf"]);
    }
    let status = cargo
        .args(args)
        .current_dir(workspace_root())
        .env("RUST_BACKTRACE", "1")
        .status()
        .context("running cargo test")?;
    if !status.success() {
        bail!("tests failed ({status})");
    }
    Ok(())
}
