//! Image and snapshot reconcilers (issue 4): they turn stored `Image` and `Snapshot` objects into
//! RBD images through `rbd::BlockBackend`, running long steps on the `runner`.
//!
//! Controllers depend only on `store`, `rbd::BlockBackend` and `runner`; they never name librbd.

mod source;

pub use source::*;
