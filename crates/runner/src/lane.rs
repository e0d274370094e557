//! Owns what runs behind a running slot: type-erased operations ([`Job`], [`Waiting`]), the two
//! kinds of submissions ([`Submission`]), the lane (the task behind a slot, which runs operation
//! after operation while finishing one hands it the next), panic catching and outcome
//! classification, and [`Current`], which guarantees that a started operation is finished (its
//! slot released, its completion sent) exactly once. Scheduling decisions are the runner's
//! (`Inner::finish`); this module only carries them out.

use std::any::Any;
use std::future::poll_fn;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;

use futures::FutureExt;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::op::OpShared;
use crate::runner::Inner;
use crate::{OpContext, OpError, Outcome};

pub(crate) type BoxedFuture = Pin<Box<dyn Future<Output = Result<(), OpError>> + Send>>;
pub(crate) type BoxedBlocking = Box<dyn FnOnce(OpContext) -> Result<(), OpError> + Send>;

/// A waiting operation's code, type-erased (one allocation: the closure and, for async
/// operations, its future share one box).
pub(crate) enum Job {
    Async(BoxedFuture),
    Blocking(BoxedBlocking),
}

pub(crate) struct Waiting {
    pub(crate) op: Arc<OpShared>,
    pub(crate) job: Job,
}

/// The two kinds of submissions, so admission is written once.
pub(crate) trait Submission: Send + Sized + 'static {
    const BLOCKING: bool;
    /// Starts the operation in a new lane (called after the state lock was released).
    fn launch(self, inner: &Arc<Inner>, op: Arc<OpShared>, token: TaskTrackerToken);
    /// Erases the operation's type so it can wait in the queue. Runs no user code.
    fn into_job(self, op: &Arc<OpShared>) -> Job;
}

pub(crate) struct AsyncOp<F>(pub(crate) F);

impl<F, Fut> Submission for AsyncOp<F>
where
    F: FnOnce(OpContext) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), OpError>> + Send + 'static,
{
    const BLOCKING: bool = false;

    fn launch(self, inner: &Arc<Inner>, op: Arc<OpShared>, token: TaskTrackerToken) {
        let ctx = OpContext::new(Arc::clone(&op));
        let f = self.0;
        // The closure is called inside the task, so a panic in it is caught like any other.
        let first = run_async(Current::new(inner, op), async move { f(ctx).await });
        drop(inner.handle.spawn(lane(Arc::clone(inner), first, token)));
    }

    fn into_job(self, op: &Arc<OpShared>) -> Job {
        let ctx = OpContext::new(Arc::clone(op));
        let f = self.0;
        Job::Async(Box::pin(async move { f(ctx).await }))
    }
}

pub(crate) struct BlockingOp<F>(pub(crate) F);

impl<F> Submission for BlockingOp<F>
where
    F: FnOnce(OpContext) -> Result<(), OpError> + Send + 'static,
{
    const BLOCKING: bool = true;

    fn launch(self, inner: &Arc<Inner>, op: Arc<OpShared>, token: TaskTrackerToken) {
        let first = run_blocking(Current::new(inner, op), self.0);
        drop(inner.handle.spawn(lane(Arc::clone(inner), first, token)));
    }

    fn into_job(self, _op: &Arc<OpShared>) -> Job {
        Job::Blocking(Box::new(self.0))
    }
}

/// The task behind one running slot: runs its first operation, then, as long as finishing an
/// operation hands it a waiting one (chosen by the class rule), that one, and so on; it ends
/// when finishing hands it nothing. Operations started from the queue thus cost no task spawn. Holds a task-tracker token,
/// so shutdown waits for it. (The JoinHandle is not needed: completions are reported through
/// the runner, and the tracker accounts for the task.)
async fn lane<First>(inner: Arc<Inner>, first: First, _tracked: TaskTrackerToken)
where
    First: Future<Output = Option<Waiting>>,
{
    let mut next = first.await;
    while let Some(waiting) = next {
        let current = Current::new(&inner, waiting.op);
        next = match waiting.job {
            Job::Async(fut) => run_async(current, fut).await,
            Job::Blocking(f) => run_blocking(current, f).await,
        };
    }
}

/// Runs an async operation on the lane's task, catching panics and honouring an abort request
/// (a shutdown past its deadline drops the future at its next await point).
async fn run_async<Fut>(current: Current, fut: Fut) -> Option<Waiting>
where
    Fut: Future<Output = Result<(), OpError>>,
{
    // Lets other tasks run between operations that complete without ever waiting.
    tokio::task::coop::consume_budget().await;
    let op = current.op();
    let (outcome, panicked) = {
        let mut fut = pin!(AssertUnwindSafe(fut).catch_unwind());
        let result = poll_fn(|cx| {
            if op.poll_aborted(cx) {
                return Poll::Ready(None);
            }
            fut.as_mut().poll(cx).map(Some)
        })
        .await;
        match result {
            Some(result) => classify(op, result),
            None => (Outcome::Cancelled, false),
        }
        // The operation's future (aborted or not) is dropped here, before its key is freed.
    };
    current.complete(outcome, panicked)
}

/// Runs a blocking operation on Tokio's blocking pool while the lane waits for it. A blocking
/// operation is never aborted: the lane (and so shutdown) waits until it returns.
async fn run_blocking<F>(current: Current, f: F) -> Option<Waiting>
where
    F: FnOnce(OpContext) -> Result<(), OpError> + Send + 'static,
{
    let ctx = OpContext::new(Arc::clone(current.op()));
    let task = current
        .inner
        .handle
        .spawn_blocking(move || panic::catch_unwind(AssertUnwindSafe(move || f(ctx))));
    let (outcome, panicked) = match task.await {
        Ok(result) => classify(current.op(), result),
        // The runtime is shutting down and did not run it.
        Err(_) => (Outcome::Cancelled, false),
    };
    current.complete(outcome, panicked)
}

/// The outcome of an operation that returned (or panicked).
fn classify(op: &OpShared, result: std::thread::Result<Result<(), OpError>>) -> (Outcome, bool) {
    match result {
        Ok(Ok(())) => (Outcome::Ok, false),
        Ok(Err(_)) if op.is_cancelled() => (Outcome::Cancelled, false),
        Ok(Err(err)) => {
            // `Display` is the operation's code too: a panic there must not lose the outcome.
            let message = panic::catch_unwind(AssertUnwindSafe(|| describe(&*err)))
                .unwrap_or_else(|_| "failed (and its error message panicked)".to_owned());
            (Outcome::Failed(message), false)
        }
        Err(payload) => {
            let message = panic_message(&*payload);
            tracing::warn!(key = %op.key, panic = message, "operation panicked");
            (Outcome::Failed(format!("panicked: {message}")), true)
        }
    }
}

/// The operation a lane is running: completes it exactly once, normally through
/// [`Current::complete`], or, if the lane's task is dropped first (with its runtime), as
/// cancelled from `Drop`.
struct Current {
    inner: Arc<Inner>,
    op: Option<Arc<OpShared>>,
}

impl Current {
    fn new(inner: &Arc<Inner>, op: Arc<OpShared>) -> Self {
        Current {
            inner: Arc::clone(inner),
            op: Some(op),
        }
    }

    fn op(&self) -> &Arc<OpShared> {
        self.op.as_ref().expect("an operation completes once")
    }

    /// Completes the operation; returns the next one for this lane, if any.
    fn complete(mut self, outcome: Outcome, panicked: bool) -> Option<Waiting> {
        let op = self.op.take().expect("an operation completes once");
        self.inner.finish(op, outcome, panicked, true)
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        if let Some(op) = self.op.take() {
            // Nothing can run any more: no next operation.
            let _ = self.inner.finish(op, Outcome::Cancelled, false, false);
        }
    }
}

/// The error's message followed by its `source()` chain.
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}
