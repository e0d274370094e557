//! Owns the crate's error type, [`SubmitError`], and the error type of operations, [`OpError`].

/// The error an operation returns. Its `Display` text (followed by its `source()` chain) becomes the
/// message of [`Outcome::Failed`](crate::Outcome::Failed).
pub type OpError = Box<dyn std::error::Error + Send + Sync>;

/// Why a submission was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// Every running slot is taken and the waiting queue is full. Returned by the `try_*` methods
    /// only; [`Runner::submit`](crate::Runner::submit) waits for room instead.
    #[error("the runner is busy: the waiting queue is full")]
    Busy,
    /// [`Runner::shutdown`](crate::Runner::shutdown) has been called; no new work is accepted.
    #[error("the runner is shutting down")]
    ShuttingDown,
}
