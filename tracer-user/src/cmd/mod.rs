//! The commands, one module each, and what they share: when to stop, where output goes, how a run ends, and the loop that steps an analysis.

pub mod daemon;
pub mod history;
pub mod record;
pub mod report;
pub mod sockets;
pub mod top;
pub mod watch;

mod output_file;
mod replay;
mod run;

pub use output_file::{Output, ReaderGone, output_result, reader_gone_error};
pub use replay::{as_recorded, replay};
pub use run::{Driver, Wake, how_to_stop, stop_signal};

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
