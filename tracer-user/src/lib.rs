//! The pure core of tcplinger as a library, for the benchmarks: the model (tracker, aggregate, diagnosis) and the decoder of ring records. The binary (`main.rs`) declares every layer itself; ARCHITECTURE.md describes them.

pub mod model;

/// Only the decoder of the kernel side: the rest of `bpf` loads programs,
/// which a benchmark of the userspace path does without.
pub mod bpf {
    #[path = "decode.rs"]
    pub mod decode;
}

#[cfg(test)]
mod testutil;
