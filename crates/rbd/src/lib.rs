//! Block devices for cephvol: the [`BlockBackend`] trait and its implementations.
//!
//! The controllers see RBD images only through [`BlockBackend`]. This crate owns:
//! * the trait and its value types (this file) — the contract every backend honours;
//! * `fake`: an in-memory backend with librbd's rules, plus fault and latency injection (tests);
//! * `local`: sparse files in a directory (the embedded default of the daemon);
//! * `ceph` (cargo feature `ceph`): librbd/librados through FFI, and the rados-omap store backend.
//!   It is the only place in the workspace that links Ceph or uses `unsafe`.
//!
//! It must not know about stores, reconcilers, gRPC or the runner.

mod backend;
#[cfg(feature = "ceph")]
pub mod ceph;
pub mod conformance;
pub mod fake;
pub mod local;
#[cfg(feature = "mock")]
pub mod mock;
mod pipeline;

pub use backend::*;
