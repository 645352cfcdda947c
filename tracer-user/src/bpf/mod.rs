//! The kernel side, from userspace: loading and attaching the committed eBPF object with this kernel's layout, draining and decoding its ring, reading its per-socket entries, and giving up privileges once attached.

pub mod decode;
pub mod entries;
pub mod hz;
pub mod load;
pub mod offsets;
pub mod privilege;
pub mod ring;
