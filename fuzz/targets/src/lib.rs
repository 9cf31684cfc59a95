//! The fuzz targets: everything an untrusted factory or client can send, run through
//! the same parsing and validation the coordinators, the auth callout and the bridge
//! run on it (the functions those crates expose; no copies of their logic), with the
//! invariants that must hold on what they accept.
//!
//! Each target is `run(&[u8])`: total, it must never panic, hang or allocate without
//! bound, whatever the bytes. `fuzz/` (cargo-fuzz, nightly) feeds them with libFuzzer;
//! this crate's tests replay every file of `fuzz/corpus/<target>/` on stable, so the
//! normal suite keeps checking what fuzzing found (docs/security.md, "Fuzzing").

pub mod callout;
pub mod client_rpc;
pub mod enroll_token;
pub mod factory_rpc;
pub mod log_line;
pub mod subjects;
pub mod webhook;

mod check;

/// A target: any bytes in, a panic when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target by name: the name of its binary in `fuzz/` and of its corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("callout", callout::run),
    ("client_rpc", client_rpc::run),
    ("enroll_token", enroll_token::run),
    ("factory_rpc", factory_rpc::run),
    ("log_line", log_line::run),
    ("subjects", subjects::run),
    ("webhook", webhook::run),
];
