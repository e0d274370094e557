//! Block devices for cephvol: the [`BlockBackend`] trait and its value types, the write pipeline
//! every backend shares, and the local-directory backend (the daemon's embedded default).
//!
//! The controllers see RBD images only through [`BlockBackend`]. This crate owns:
//! * the trait and its value types ([`backend`](self)) — the contract every backend honours;
//! * [`pipeline`]: re-chunking a byte stream into write requests, zero skipping, queue depth;
//! * [`local`]: sparse files in a directory.
//!
//! Elsewhere: the in-memory fake, the conformance rules and the mock live in `rbd-testkit`
//! (a dev-dependency); the librbd backend lives in `ceph`. This crate must not know about stores,
//! reconcilers, gRPC, the runner or Ceph's libraries.

mod backend;
pub mod local;
pub mod pipeline;

pub use backend::*;
