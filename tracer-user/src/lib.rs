//! tcplinger as a library, for `main.rs` and the benchmarks: each folder is a layer and imports flow one way, `cmd` → `session` → `bpf`/`host` → `model`; `output` formats the model. See ARCHITECTURE.md.

pub mod bpf;
pub mod cli;
pub mod cmd;
pub mod error;
pub mod host;
pub mod model;
pub mod output;
pub mod session;
pub mod settings;
