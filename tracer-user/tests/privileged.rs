//! Privileged end-to-end tests: the real programs loaded into this kernel, real TCP between two network namespaces. Run as root; they fail, never skip, without it.

#![expect(
    clippy::float_cmp,
    reason = "metric values compared are whole counts, exact in an f64"
)]

use libtest_mimic::{Arguments, Trial};

/// One test: a plain fn that panics on failure, run under its own name.
struct Test {
    name: &'static str,
    run: fn(),
}

inventory::collect!(Test);

/// Registers the test fn written just above it, under its own name:
/// `privileged!(client_closes_first);`. Registration sits next to the test,
/// so adding one means writing it in one place; the fns are private, so
/// one written but not registered is never used, and the compiler says so.
/// Defined before the `mod` items so that every test file sees it.
macro_rules! privileged {
    ($test:ident) => {
        inventory::submit! {
            crate::Test {
                name: stringify!($test),
                run: $test,
            }
        }
    };
}

#[path = "privileged/analysis.rs"]
mod analysis;
#[path = "privileged/daemon.rs"]
mod daemon;
#[path = "privileged/health.rs"]
mod health;
#[path = "privileged/history.rs"]
mod history;
#[path = "privileged/leave_on.rs"]
mod leave_on;
#[path = "privileged/lifecycle.rs"]
mod lifecycle;
#[path = "privileged/network.rs"]
mod network;
#[path = "privileged/real.rs"]
mod real;
#[path = "privileged/safety.rs"]
mod safety;
mod support;
#[path = "privileged/transitions.rs"]
mod transitions;

/// Every registered test, sorted by name: the link order of the
/// registrations is no order to rely on.
fn trials() -> Vec<Trial> {
    let mut tests: Vec<&Test> = inventory::iter::<Test>.into_iter().collect();
    tests.sort_by_key(|t| t.name);
    // A name registered twice would run twice and filter ambiguously.
    for pair in tests.windows(2) {
        assert_ne!(pair[0].name, pair[1].name, "registered twice");
    }
    tests
        .into_iter()
        .map(|t| {
            let run = t.run;
            Trial::test(t.name, move || {
                run();
                Ok(())
            })
        })
        .collect()
}

fn main() {
    let command_line: Vec<String> = std::env::args().collect();
    if command_line.get(1).map(String::as_str) == Some("__peer") {
        support::peer::run(&command_line[2..]);
    }
    if command_line.get(1).map(String::as_str) == Some("__hold") {
        support::peer::hold(&command_line[2..]);
    }
    let mut args = Arguments::from_args();
    // One tracer at a time: each sees every namespace, and two cores are
    // better spent on one scenario than on contention.
    args.test_threads = Some(1);
    libtest_mimic::run(&args, trials()).exit();
}
