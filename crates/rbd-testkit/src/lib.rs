//! Test support for [`rbd::BlockBackend`], used as a dev-dependency (and by the benchmarks):
//! * [`fake`]: an in-memory backend with librbd's rules, plus fault and latency injection;
//! * [`conformance`]: the executable form of the contract — rules every backend must pass;
//! * [`mock`]: a mockall mock of the trait for tests that pin down exact call sequences.
//!
//! Nothing here is used by the daemon itself.

pub mod conformance;
pub mod fake;
pub mod mock;
