//! The crate's error type.

/// Errors of the store and of its backends. Every message names the object id (or field) concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No object (or backend key) with this id.
    #[error("object {0:?} not found")]
    NotFound(String),
    /// Create of an id that exists (or a backend put with `Precondition::Absent` on an existing key).
    #[error("object {0:?} already exists")]
    AlreadyExists(String),
    /// Stale resource version: the caller's `expected` version is not the stored `actual` one.
    ///
    /// Backends report a failed `Precondition::Equals` as `Conflict { id: key, expected: 0, actual: 0 }`;
    /// the store re-reads and fills in the real versions.
    #[error("object {id:?}: resource version {expected} is not the latest ({actual})")]
    Conflict {
        /// Object id.
        id: String,
        /// The version the caller sent.
        expected: u64,
        /// The version currently stored.
        actual: u64,
    },
    /// Invalid request: empty id, field selector without an indexer, undecodable or unencodable record, …
    #[error("invalid: {0}")]
    Invalid(String),
    /// The backend failed (I/O, rados, …).
    #[error("backend: {0}")]
    Backend(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, StoreError>;
