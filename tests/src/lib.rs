//! End-to-end tests over the public surfaces of cephvol (see `tests/tests/`): [`daemon`] starts the
//! real binary on a temporary socket and data directory. The OCI registry fixture is the
//! `registry-fixture` crate.
pub mod cluster;
pub mod daemon;
