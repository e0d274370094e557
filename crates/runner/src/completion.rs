//! Owns what subscribers learn about finished operations: [`Completion`], [`Outcome`] and the
//! [`Completions`] receiver returned by [`Runner::subscribe`](crate::Runner::subscribe).

use std::time::Duration;

use tokio::sync::mpsc;

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// The operation returned `Ok(())`.
    Ok,
    /// The operation returned an error (its message, with its `source()` chain joined by `": "`),
    /// or panicked (`"panicked: <panic message>"`).
    Failed(String),
    /// The operation was cancelled: it was removed from the waiting queue before it ran, it
    /// returned an error after its token had been cancelled, or its task was aborted after a
    /// shutdown deadline.
    Cancelled,
}

impl Outcome {
    /// Whether the operation succeeded.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }
}

/// One finished operation, as delivered to every subscriber.
///
/// A completion is sent after the key has left the runner, so a subscriber that resubmits the key
/// when it receives the completion gets [`Submitted::Accepted`](crate::Submitted::Accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The key the operation was submitted under.
    pub key: String,
    /// How it ended.
    pub outcome: Outcome,
    /// How long it ran (from start to end); zero for an operation cancelled while waiting.
    pub duration: Duration,
}

/// A subscription to completions, created by [`Runner::subscribe`](crate::Runner::subscribe).
///
/// The channel is unbounded: a slow subscriber never makes the runner wait and never loses a
/// completion (each one is small). Dropping the receiver unsubscribes.
#[derive(Debug)]
pub struct Completions {
    rx: mpsc::UnboundedReceiver<Completion>,
}

impl Completions {
    pub(crate) fn new(rx: mpsc::UnboundedReceiver<Completion>) -> Self {
        Completions { rx }
    }

    /// Waits for the next completion. Returns `None` once the runner has finished shutting down
    /// (or has been dropped) and every completion sent before has been received.
    pub async fn recv(&mut self) -> Option<Completion> {
        self.rx.recv().await
    }

    /// Returns the next completion if one is already there.
    pub fn try_recv(&mut self) -> Option<Completion> {
        self.rx.try_recv().ok()
    }
}
