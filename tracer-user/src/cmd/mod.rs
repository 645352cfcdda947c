//! The commands, one module each, and what they share: when to stop, where output goes, how a run ends.

pub mod daemon;
pub mod report;
pub mod sockets;
pub mod top;
pub mod watch;
