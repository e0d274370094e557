//! Owns the per-operation record shared between the runner and the running operation
//! ([`OpShared`]: key, cancellation, abort request, latest progress) and the handle an operation
//! receives, [`OpContext`]. Also the read-only views of an operation: [`Progress`], [`OpState`],
//! [`OpInfo`].

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Context;

use futures::task::AtomicWaker;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The latest progress an operation reported: `done` out of `total` units (bytes, children, ...).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Progress {
    /// Units done so far.
    pub done: u64,
    /// Units in total, as known when reported (0 if unknown).
    pub total: u64,
}

/// Where an operation is in the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpState {
    /// Accepted, waiting in its class's FIFO queue for a running slot.
    Waiting,
    /// Holding a running slot.
    Running,
}

/// One entry of [`Runner::snapshot`](crate::Runner::snapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpInfo {
    /// The operation's key.
    pub key: String,
    /// Waiting or running.
    pub state: OpState,
    /// The latest progress reported, `None` if none yet.
    pub progress: Option<Progress>,
    /// When it was accepted (Tokio's clock, so tests with paused time see exact values).
    pub submitted_at: Instant,
    /// When it got its running slot, `None` while waiting.
    pub started_at: Option<Instant>,
    /// Whether cancellation was requested (by [`Runner::cancel`](crate::Runner::cancel) or a
    /// shutdown) and the operation has not ended yet.
    pub cancel_requested: bool,
    /// Whether it runs on Tokio's blocking pool.
    pub blocking: bool,
    /// The name of its class (see [`ClassConfig`](crate::ClassConfig)).
    pub class: String,
}

/// A counter bumped after every progress report of every operation of one runner; consumers
/// compare it to learn whether anything changed (see [`ProgressUpdates`](crate::ProgressUpdates)).
pub(crate) type ProgressClock = Arc<AtomicU64>;

/// The record of one accepted operation, shared by the runner's index, its waiting-queue entry,
/// its task and every [`OpContext`] / progress callback handed to the operation.
pub(crate) struct OpShared {
    pub(crate) key: String,
    /// When it was accepted.
    pub(crate) submitted_at: Instant,
    /// Its acceptance number: runner-wide, increasing (the order of "oldest first").
    pub(crate) seq: u64,
    pub(crate) blocking: bool,
    /// Index of its class in the runner's classes.
    class: u32,
    cancelled: AtomicBool,
    /// Set by a shutdown past its deadline: the lane drops the (async) operation's future.
    aborted: AtomicBool,
    abort_waker: AtomicWaker,
    clock: ProgressClock,
    inner: Mutex<OpMut>,
}

/// The small mutable part of [`OpShared`], behind a lock held only for a few instructions.
#[derive(Default)]
struct OpMut {
    progress: Option<Progress>,
    /// Created on first use: most operations never ask for it.
    token: Option<CancellationToken>,
}

impl OpShared {
    pub(crate) fn new(
        key: String,
        class: usize,
        seq: u64,
        submitted_at: Instant,
        blocking: bool,
        clock: ProgressClock,
    ) -> Arc<Self> {
        Arc::new(OpShared {
            key,
            submitted_at,
            seq,
            blocking,
            class: u32::try_from(class).expect("a runner has fewer than 2^32 classes"),
            cancelled: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
            abort_waker: AtomicWaker::new(),
            clock,
            inner: Mutex::new(OpMut::default()),
        })
    }

    /// Index of its class in the runner's classes.
    pub(crate) fn class(&self) -> usize {
        self.class as usize
    }

    fn lock(&self) -> MutexGuard<'_, OpMut> {
        // The critical sections below cannot panic half-way; recover from poisoning anyway.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Marks the operation cancelled and cancels its token if one was handed out.
    pub(crate) fn cancel(&self) {
        let token = {
            let m = self.lock();
            self.cancelled.store(true, Ordering::Release);
            m.token.clone()
        };
        if let Some(token) = token {
            token.cancel();
        }
    }

    pub(crate) fn token(&self) -> CancellationToken {
        let mut m = self.lock();
        if let Some(token) = &m.token {
            return token.clone();
        }
        let token = CancellationToken::new();
        if self.is_cancelled() {
            token.cancel();
        }
        m.token = Some(token.clone());
        token
    }

    pub(crate) fn report(&self, done: u64, total: u64) {
        self.lock().progress = Some(Progress { done, total });
        self.clock.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn progress(&self) -> Option<Progress> {
        self.lock().progress
    }

    /// Asks the lane running this operation to drop its future at its next await point.
    pub(crate) fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
        self.abort_waker.wake();
    }

    /// Whether an abort was requested; if not, the task polling is woken by a later request.
    pub(crate) fn poll_aborted(&self, cx: &mut Context<'_>) -> bool {
        if self.aborted.load(Ordering::Acquire) {
            return true;
        }
        self.abort_waker.register(cx.waker());
        // Checked again: a request may have come before the waker was registered.
        self.aborted.load(Ordering::Acquire)
    }
}

/// The handle an operation receives: its key, its cancellation token and its progress reporter.
///
/// Cheap to clone (one reference count). An operation is expected to check
/// [`is_cancelled`](Self::is_cancelled) or await [`cancelled`](Self::cancelled) at its
/// checkpoints and then return an error: an error returned after cancellation is reported as
/// [`Outcome::Cancelled`](crate::Outcome::Cancelled).
#[derive(Clone)]
pub struct OpContext {
    op: Arc<OpShared>,
}

impl fmt::Debug for OpContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpContext")
            .field("key", &self.op.key)
            .field("cancelled", &self.op.is_cancelled())
            .finish()
    }
}

impl OpContext {
    pub(crate) fn new(op: Arc<OpShared>) -> Self {
        OpContext { op }
    }

    /// The key the operation was submitted under.
    pub fn key(&self) -> &str {
        &self.op.key
    }

    /// The operation's cancellation token (the same token on every call), for APIs that take one
    /// (e.g. `rbd::BlockBackend::flatten`). Cancelled by [`Runner::cancel`](crate::Runner::cancel)
    /// and by shutdown.
    pub fn token(&self) -> CancellationToken {
        self.op.token()
    }

    /// Whether cancellation was requested. Cheap (one atomic load): check it at every checkpoint.
    pub fn is_cancelled(&self) -> bool {
        self.op.is_cancelled()
    }

    /// Resolves when cancellation is requested (at once if it already was).
    pub async fn cancelled(&self) {
        if self.is_cancelled() {
            return;
        }
        self.op.token().cancelled_owned().await;
    }

    /// Records progress: `done` units out of `total`. Only the latest value is kept, so this is
    /// cheap enough to call per chunk; readers are throttled instead (see
    /// [`Runner::progress_updates`](crate::Runner::progress_updates)).
    pub fn report(&self, done: u64, total: u64) {
        self.op.report(done, total);
    }

    /// A progress callback usable from any thread (e.g. a librbd progress callback on a foreign
    /// thread); same effect as [`report`](Self::report). Its type matches `rbd::ProgressFn`.
    pub fn progress_fn(&self) -> Arc<dyn Fn(u64, u64) + Send + Sync> {
        let op = Arc::clone(&self.op);
        Arc::new(move |done, total| op.report(done, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op() -> Arc<OpShared> {
        OpShared::new(
            "k".into(),
            0,
            0,
            Instant::now(),
            false,
            ProgressClock::default(),
        )
    }

    #[test]
    fn a_token_handed_out_after_cancellation_is_already_cancelled() {
        let op = op();
        op.cancel();
        assert!(op.token().is_cancelled());
    }

    #[test]
    fn a_token_handed_out_before_cancellation_gets_cancelled() {
        let op = op();
        let token = op.token();
        assert!(!token.is_cancelled());
        op.cancel();
        assert!(token.is_cancelled());
    }

    #[test]
    fn progress_keeps_the_latest_report_and_ticks_the_clock() {
        let op = op();
        assert_eq!(op.progress(), None);
        let ctx = OpContext::new(Arc::clone(&op));
        ctx.report(1, 10);
        (ctx.progress_fn())(7, 10);
        assert_eq!(op.progress(), Some(Progress { done: 7, total: 10 }));
        assert_eq!(op.clock.load(Ordering::Acquire), 2);
    }
}
