//! Empty library target so the workspace can resolve this crate; the programs live in `main.rs`.
#![no_std]
