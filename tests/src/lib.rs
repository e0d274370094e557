//! End-to-end tests over the public surfaces of cephvol (see `tests/tests/`).
pub mod daemon;
pub mod registry;
