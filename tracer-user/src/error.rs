//! The errors that end the program as a usage mistake, and the exit code each failure maps to.

/// The command line or the configuration asks for something that cannot
/// be: one line naming the flag (or file, line and key). Exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Exit codes: 0 success, 1 environment or runtime failure (privileges,
/// kernel features, a port taken, an output that cannot be written: each
/// message says what and how to fix it), 2 bad usage.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<UsageError>().is_some() {
        2
    } else {
        1
    }
}
