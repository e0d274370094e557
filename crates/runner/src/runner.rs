//! Owns the [`Runner`] itself: admission (deduplication, the two bounds, backpressure), the state
//! lock and its invariants, starting, finishing and promoting operations, cancellation, views
//! (state, progress, snapshot, metrics) and shutdown.
//!
//! # Invariants (all guarded by the one `State` lock)
//! * `ops` indexes every accepted operation that has not completed: `None` = waiting,
//!   `Some(started_at)` = holding a running slot. A key is in `ops` at most once.
//! * `running` = number of `Some` entries ≤ `max_running`; `waiting` holds exactly the `None`
//!   entries, in FIFO order, and `waiting.len()` ≤ `max_waiting`.
//! * `waiting` is non-empty only while every running slot is taken: a slot is handed to the head
//!   of the queue in the same critical section that frees it.
//! * An operation's code runs only while its slot is held: the slot is taken before the
//!   operation is handed to a lane (the task behind a slot) and released by that lane after the
//!   operation's future or closure has returned; the same critical section may hand the slot,
//!   with the next waiting operation, back to the same lane.
//! * Every accepted operation leaves `ops` exactly once, in the same critical section that sends
//!   its completion, so completions of one key are delivered in order and after the key is free.
//! * No user code (operation closures, futures, errors, drops of those) runs under the lock.

use std::any::Any;
use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::poll_fn;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::panic::{self, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use futures::FutureExt;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Counters;
use crate::op::{OpShared, ProgressClock};
use crate::{
    Completion, Completions, OpContext, OpError, OpInfo, OpState, Outcome, Progress,
    ProgressUpdates, RunnerMetrics, SubmitError,
};

/// Limits of a [`Runner`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerConfig {
    /// Operations running at once (default 10; 0 is treated as 1).
    pub max_running: usize,
    /// Accepted operations waiting for a running slot (default 1024; 0 = no queue: `Busy` as
    /// soon as every slot is taken).
    pub max_waiting: usize,
    /// The minimum time between two results of [`ProgressUpdates::next`] (default 1 s; clamped
    /// to at least 1 ms).
    pub progress_interval: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            max_running: 10,
            max_waiting: 1024,
            progress_interval: Duration::from_secs(1),
        }
    }
}

/// How [`Runner::shutdown`] treats the work it finds. Each `deadline` is measured from the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Let running and waiting operations finish. At the deadline, whatever is left is cancelled:
    /// waiting operations complete as cancelled without running, running ones get their token
    /// cancelled and running async ones are aborted.
    Drain {
        /// How long to let the work drain.
        deadline: Duration,
    },
    /// Cancel everything at once: waiting operations complete as cancelled without running and
    /// running ones get their token cancelled. At the deadline, async operations that are still
    /// running are aborted.
    Cancel {
        /// How long running operations get to observe their token.
        deadline: Duration,
    },
}

/// The answer to an accepted submission.
#[must_use = "a deduplicated submission drops the new operation"]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Submitted {
    /// The operation was accepted: it is running or waiting, and it will complete exactly once.
    Accepted,
    /// An operation with this key is running; the new one was dropped. Wait for its completion.
    AlreadyRunning,
    /// An operation with this key is waiting; the new one was dropped. Wait for its completion.
    AlreadyWaiting,
}

/// A bounded, key-deduplicating executor for long operations. See the [crate docs](crate).
///
/// Cheap to clone: every clone is a handle to the same runner.
#[derive(Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

struct Inner {
    max_running: usize,
    max_waiting: usize,
    progress_interval: Duration,
    handle: Handle,
    state: Mutex<State>,
    /// Woken when the runner goes from full (running + waiting = capacity) to not full, and
    /// when shutdown starts.
    room: Notify,
    /// Tracks every task that runs an operation; closed by shutdown, which waits on it.
    tracker: TaskTracker,
    clock: ProgressClock,
    shut_down: AtomicBool,
}

#[derive(Default)]
struct State {
    ops: HashMap<OpKey, Option<Instant>>,
    waiting: VecDeque<Waiting>,
    running: usize,
    closed: bool,
    subscribers: Vec<mpsc::UnboundedSender<Completion>>,
    counters: Counters,
}

/// An index key: the operation record itself, hashed and compared by its key string, so the
/// index costs no second copy of the key and can be looked up with a `&str`.
struct OpKey(Arc<OpShared>);

impl Hash for OpKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.key.as_str().hash(state);
    }
}

impl PartialEq for OpKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for OpKey {}

impl Borrow<str> for OpKey {
    fn borrow(&self) -> &str {
        &self.0.key
    }
}

type BoxedFuture = Pin<Box<dyn Future<Output = Result<(), OpError>> + Send>>;
type BoxedBlocking = Box<dyn FnOnce(OpContext) -> Result<(), OpError> + Send>;

/// A waiting operation's code, type-erased (one allocation: the closure and, for async
/// operations, its future share one box).
enum Job {
    Async(BoxedFuture),
    Blocking(BoxedBlocking),
}

struct Waiting {
    op: Arc<OpShared>,
    job: Job,
}

/// The two kinds of submissions, so admission is written once.
trait Submission: Send + Sized + 'static {
    const BLOCKING: bool;
    /// Starts the operation in a new lane (called after the state lock was released).
    fn launch(self, inner: &Arc<Inner>, op: Arc<OpShared>, token: TaskTrackerToken);
    /// Erases the operation's type so it can wait in the queue. Runs no user code.
    fn into_job(self, op: &Arc<OpShared>) -> Job;
}

struct AsyncOp<F>(F);

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

struct BlockingOp<F>(F);

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
/// operation hands it the head of the queue, that one, and so on; it ends when the queue is
/// empty. Operations started from the queue thus cost no task spawn. Holds a task-tracker token,
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

/// The key string of a finished operation: moved out if the record is no longer shared (the
/// common case), copied otherwise (e.g. a progress callback still held by a foreign thread).
fn take_key(op: Arc<OpShared>) -> String {
    match Arc::try_unwrap(op) {
        Ok(op) => op.key,
        Err(op) => op.key.clone(),
    }
}

impl State {
    /// Sends a completion to every live subscriber (pruning the dead ones).
    fn deliver(&mut self, completion: Completion) {
        self.subscribers.retain(|tx| !tx.is_closed());
        if let Some((last, others)) = self.subscribers.split_last() {
            for tx in others {
                // A receiver dropped since the pruning above: nothing to deliver to.
                let _ = tx.send(completion.clone());
            }
            let _ = last.send(completion);
        }
    }

    /// Completes every waiting operation as cancelled. Returns their jobs, to be dropped once the
    /// lock is released.
    fn cancel_waiting(&mut self) -> Vec<Job> {
        let mut jobs = Vec::with_capacity(self.waiting.len());
        while let Some(w) = self.waiting.pop_front() {
            self.ops.remove(w.op.key.as_str());
            self.counters.record(&Outcome::Cancelled, false, None);
            self.deliver(Completion {
                key: w.op.key.clone(),
                outcome: Outcome::Cancelled,
                duration: Duration::ZERO,
            });
            jobs.push(w.job);
        }
        jobs
    }

    fn running_ops(&self) -> impl Iterator<Item = &Arc<OpShared>> {
        self.ops
            .iter()
            .filter(|(_, started)| started.is_some())
            .map(|(key, _)| &key.0)
    }
}

enum Admission<O> {
    Done(Result<Submitted, SubmitError>),
    Full(String, O),
}

impl Inner {
    /// Operations the runner holds at most (running + waiting). Submitters blocked in
    /// [`Runner::submit`] are woken whenever the count drops from this value.
    fn capacity(&self) -> usize {
        self.max_running + self.max_waiting
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No critical section can panic half-way (no user code runs under the lock).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a decision on a submission under the lock; starts or queues it if accepted.
    fn admit<O: Submission>(
        self: &Arc<Self>,
        key: String,
        op: O,
        count_busy: bool,
    ) -> Admission<O> {
        let mut st = self.lock();
        if st.closed {
            drop(st);
            return Admission::Done(Err(SubmitError::ShuttingDown));
        }
        if let Some(started) = st.ops.get(key.as_str()) {
            let answer = match started {
                Some(_) => Submitted::AlreadyRunning,
                None => Submitted::AlreadyWaiting,
            };
            st.counters.deduplicated += 1;
            drop(st);
            return Admission::Done(Ok(answer));
        }
        let now = Instant::now();
        if st.running < self.max_running {
            let shared = OpShared::new(key, now, O::BLOCKING, Arc::clone(&self.clock));
            st.ops.insert(OpKey(Arc::clone(&shared)), Some(now));
            st.running += 1;
            st.counters.accepted += 1;
            // Taken under the lock so that a concurrent shutdown cannot miss this task.
            let token = self.tracker.token();
            drop(st);
            op.launch(self, shared, token);
            return Admission::Done(Ok(Submitted::Accepted));
        }
        if st.waiting.len() < self.max_waiting {
            let shared = OpShared::new(key, now, O::BLOCKING, Arc::clone(&self.clock));
            let job = op.into_job(&shared);
            st.ops.insert(OpKey(Arc::clone(&shared)), None);
            st.waiting.push_back(Waiting { op: shared, job });
            st.counters.accepted += 1;
            return Admission::Done(Ok(Submitted::Accepted));
        }
        if count_busy {
            st.counters.rejected_busy += 1;
        }
        drop(st);
        Admission::Full(key, op)
    }

    /// Waits for room in the queue instead of answering `Busy`.
    async fn admit_waiting<O: Submission>(
        self: &Arc<Self>,
        mut key: String,
        mut op: O,
    ) -> Result<Submitted, SubmitError> {
        let mut room = pin!(self.room.notified());
        loop {
            // Registered before the state is checked, so a wake-up in between is not lost.
            room.as_mut().enable();
            match self.admit(key, op, false) {
                Admission::Done(answer) => return answer,
                Admission::Full(k, o) => (key, op) = (k, o),
            }
            room.as_mut().await;
            room.set(self.room.notified());
        }
    }

    fn try_admit<O: Submission>(
        self: &Arc<Self>,
        key: String,
        op: O,
    ) -> Result<Submitted, SubmitError> {
        match self.admit(key, op, true) {
            Admission::Done(answer) => answer,
            Admission::Full(..) => Err(SubmitError::Busy),
        }
    }

    /// Ends an operation: frees its key and slot, hands the slot to the head of the queue and
    /// delivers the completion, all in one critical section. `normal` is false when the task was
    /// dropped before finishing (aborted after a shutdown deadline, or its runtime is going
    /// away): no operation is started then, and any waiting ones complete as cancelled.
    fn finish(
        self: &Arc<Self>,
        op: Arc<OpShared>,
        outcome: Outcome,
        panicked: bool,
        normal: bool,
    ) -> Option<Waiting> {
        let now = Instant::now();
        let mut st = self.lock();
        let started = st
            .ops
            .remove(op.key.as_str())
            .expect("an operation stays indexed until it finishes");
        let started_at = started.expect("only a started operation finishes");
        st.running -= 1;
        let duration = now.saturating_duration_since(started_at);
        st.counters.record(&outcome, panicked, Some(duration));

        // Was the runner full before this operation left (`running` is already decremented)?
        let was_full = st.running + 1 + st.waiting.len() >= self.capacity();
        let mut next = None;
        let mut orphans = Vec::new();
        if normal {
            if let Some(waiting) = st.waiting.pop_front() {
                *st.ops
                    .get_mut(waiting.op.key.as_str())
                    .expect("a waiting operation is indexed") = Some(now);
                st.running += 1;
                next = Some(waiting);
            }
        } else if !st.waiting.is_empty() {
            // Nothing can run any more: stop accepting and complete the queue.
            st.closed = true;
            orphans = st.cancel_waiting();
        }
        st.deliver(Completion {
            key: take_key(op),
            outcome,
            duration,
        });
        drop(st);

        if was_full || !orphans.is_empty() {
            self.room.notify_waiters();
        }
        drop(orphans);
        next
    }

    /// Completes every waiting operation as cancelled and cancels every running one.
    fn cancel_everything(&self) {
        let mut st = self.lock();
        let jobs = st.cancel_waiting();
        let running: Vec<_> = st.running_ops().cloned().collect();
        drop(st);
        self.room.notify_waiters();
        for op in &running {
            op.cancel();
        }
        drop(jobs);
    }

    /// Aborts the running async operations: their futures are dropped at their next await
    /// point (blocking operations cannot be interrupted).
    fn abort_running(&self) {
        let st = self.lock();
        let running: Vec<_> = st
            .running_ops()
            .filter(|op| !op.blocking)
            .cloned()
            .collect();
        drop(st);
        for op in running {
            op.abort();
        }
    }
}

impl fmt::Debug for Runner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.lock();
        f.debug_struct("Runner")
            .field("max_running", &self.inner.max_running)
            .field("max_waiting", &self.inner.max_waiting)
            .field("running", &st.running)
            .field("waiting", &st.waiting.len())
            .field("closed", &st.closed)
            .finish()
    }
}

impl Runner {
    /// Creates a runner whose operations run on the current Tokio runtime.
    ///
    /// # Panics
    /// If called outside a Tokio runtime (use [`Runner::with_handle`] there).
    pub fn new(cfg: RunnerConfig) -> Runner {
        Runner::with_handle(cfg, Handle::current())
    }

    /// Creates a runner whose operations run on the runtime of `handle`.
    pub fn with_handle(cfg: RunnerConfig, handle: Handle) -> Runner {
        Runner {
            inner: Arc::new(Inner {
                max_running: cfg.max_running.max(1),
                max_waiting: cfg.max_waiting,
                progress_interval: cfg.progress_interval.max(Duration::from_millis(1)),
                handle,
                state: Mutex::new(State::default()),
                room: Notify::new(),
                tracker: TaskTracker::new(),
                clock: ProgressClock::default(),
                shut_down: AtomicBool::new(false),
            }),
        }
    }

    /// Submits an async operation under `key`, or answers at once.
    ///
    /// `op` is called once, inside the operation's task, when it gets a running slot (at once if
    /// one is free, else in FIFO order after the operations already waiting). If the key is
    /// already running or waiting, `op` is dropped and the answer says so. A full queue answers
    /// [`SubmitError::Busy`]; after shutdown started, [`SubmitError::ShuttingDown`].
    pub fn try_submit<F, Fut>(
        &self,
        key: impl Into<String>,
        op: F,
    ) -> Result<Submitted, SubmitError>
    where
        F: FnOnce(OpContext) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), OpError>> + Send + 'static,
    {
        self.inner.try_admit(key.into(), AsyncOp(op))
    }

    /// Like [`try_submit`](Self::try_submit), but when the queue is full it waits for room
    /// (without polling) instead of answering `Busy`. Waiters are woken together when room
    /// appears; the order in which they then get in is unspecified. Cancel-safe: dropping the
    /// future before it resolves submits nothing.
    pub async fn submit<F, Fut>(
        &self,
        key: impl Into<String>,
        op: F,
    ) -> Result<Submitted, SubmitError>
    where
        F: FnOnce(OpContext) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), OpError>> + Send + 'static,
    {
        self.inner.admit_waiting(key.into(), AsyncOp(op)).await
    }

    /// Like [`try_submit`](Self::try_submit) for blocking code (e.g. calls into a C library):
    /// `op` runs on Tokio's blocking pool, never on a reactor thread, and counts against the same
    /// bounds. It receives the same [`OpContext`]; use [`OpContext::is_cancelled`] at checkpoints
    /// and [`OpContext::progress_fn`] for callbacks.
    pub fn try_submit_blocking<F>(
        &self,
        key: impl Into<String>,
        op: F,
    ) -> Result<Submitted, SubmitError>
    where
        F: FnOnce(OpContext) -> Result<(), OpError> + Send + 'static,
    {
        self.inner.try_admit(key.into(), BlockingOp(op))
    }

    /// [`try_submit_blocking`](Self::try_submit_blocking) that waits for room like
    /// [`submit`](Self::submit).
    pub async fn submit_blocking<F>(
        &self,
        key: impl Into<String>,
        op: F,
    ) -> Result<Submitted, SubmitError>
    where
        F: FnOnce(OpContext) -> Result<(), OpError> + Send + 'static,
    {
        self.inner.admit_waiting(key.into(), BlockingOp(op)).await
    }

    /// Cancels the operation under `key`. A waiting operation is removed and completes as
    /// [`Outcome::Cancelled`] without running; a running one gets its token cancelled and is
    /// expected to stop at its next checkpoint. Returns whether the key was waiting or running.
    pub fn cancel(&self, key: &str) -> bool {
        let mut st = self.inner.lock();
        let Some((op_key, started)) = st.ops.get_key_value(key) else {
            return false;
        };
        let op = Arc::clone(&op_key.0);
        if started.is_some() {
            drop(st);
            tracing::debug!(key, "cancelling a running operation");
            op.cancel();
            return true;
        }
        let was_full = st.running + st.waiting.len() >= self.inner.capacity();
        let position = st
            .waiting
            .iter()
            .position(|w| Arc::ptr_eq(&w.op, &op))
            .expect("an indexed waiting operation is queued");
        let waiting = st.waiting.remove(position);
        st.ops.remove(key);
        st.counters.record(&Outcome::Cancelled, false, None);
        st.deliver(Completion {
            key: key.to_owned(),
            outcome: Outcome::Cancelled,
            duration: Duration::ZERO,
        });
        drop(st);
        tracing::debug!(key, "cancelled a waiting operation");
        if was_full {
            self.inner.room.notify_waiters();
        }
        drop(waiting);
        true
    }

    /// Whether `key` is waiting or running (`None`: unknown or completed).
    pub fn state(&self, key: &str) -> Option<OpState> {
        self.inner.lock().ops.get(key).map(|started| match started {
            Some(_) => OpState::Running,
            None => OpState::Waiting,
        })
    }

    /// The latest progress reported by the operation under `key` (`None`: unknown, completed, or
    /// nothing reported yet).
    pub fn progress(&self, key: &str) -> Option<Progress> {
        let op = {
            let st = self.inner.lock();
            Arc::clone(&st.ops.get_key_value(key)?.0 .0)
        };
        op.progress()
    }

    /// Every running operation (oldest start first) then every waiting one (queue order).
    pub fn snapshot(&self) -> Vec<OpInfo> {
        let (mut running, waiting) = {
            let st = self.inner.lock();
            let running: Vec<_> = st
                .ops
                .iter()
                .filter_map(|(key, started)| started.map(|at| (Arc::clone(&key.0), at)))
                .collect();
            let waiting: Vec<_> = st.waiting.iter().map(|w| Arc::clone(&w.op)).collect();
            (running, waiting)
        };
        running.sort_by(|(a, at_a), (b, at_b)| at_a.cmp(at_b).then_with(|| a.key.cmp(&b.key)));
        let info = |op: &OpShared, state, started_at| OpInfo {
            key: op.key.clone(),
            state,
            progress: op.progress(),
            submitted_at: op.submitted_at,
            started_at,
            cancel_requested: op.is_cancelled(),
            blocking: op.blocking,
        };
        running
            .iter()
            .map(|(op, at)| info(op, OpState::Running, Some(*at)))
            .chain(waiting.iter().map(|op| info(op, OpState::Waiting, None)))
            .collect()
    }

    /// Subscribes to completions: every operation completed after this call is delivered, in
    /// completion order, through an unbounded channel. After shutdown has finished the
    /// subscription is closed at once.
    pub fn subscribe(&self) -> Completions {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut st = self.inner.lock();
        if !self.inner.shut_down.load(Ordering::Acquire) {
            st.subscribers.push(tx);
        }
        Completions::new(rx)
    }

    /// Throttled progress snapshots for status writers and metrics (see [`ProgressUpdates`]).
    pub fn progress_updates(&self) -> ProgressUpdates {
        ProgressUpdates::new(self.clone(), self.inner.progress_interval)
    }

    /// A consistent copy of the counters.
    pub fn metrics(&self) -> RunnerMetrics {
        let st = self.inner.lock();
        st.counters.snapshot(st.waiting.len(), st.running)
    }

    /// Whether shutdown has started (submissions are refused).
    pub fn is_shutting_down(&self) -> bool {
        self.inner.lock().closed
    }

    /// Stops accepting work, then drains or cancels it (see [`ShutdownMode`]), and returns when
    /// every operation has ended and its completion has been delivered; subscriptions are closed
    /// then. Never returns early: a **blocking** operation that ignores its token delays shutdown
    /// until it returns (async ones are aborted at the deadline). May be called again or
    /// concurrently, e.g. `Cancel` after a `Drain` cut short by a timeout; each call returns when
    /// everything has ended.
    pub async fn shutdown(&self, mode: ShutdownMode) {
        let inner = &self.inner;
        let (grace, cancel_now) = match mode {
            ShutdownMode::Drain { deadline } => (deadline, false),
            ShutdownMode::Cancel { deadline } => (deadline, true),
        };
        let deadline = Instant::now().checked_add(grace);
        let (running, waiting) = {
            let mut st = inner.lock();
            st.closed = true;
            (st.running, st.waiting.len())
        };
        tracing::info!(?mode, running, waiting, "runner shutting down");
        inner.room.notify_waiters();
        inner.tracker.close();
        if cancel_now {
            inner.cancel_everything();
        }
        let ended = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, inner.tracker.wait())
                .await
                .is_ok(),
            None => {
                inner.tracker.wait().await;
                true
            }
        };
        if !ended {
            tracing::warn!(
                running = self.metrics().running,
                "shutdown deadline passed: cancelling and aborting what is left"
            );
            inner.cancel_everything();
            inner.abort_running();
            inner.tracker.wait().await;
        }
        let mut st = inner.lock();
        inner.shut_down.store(true, Ordering::Release);
        st.subscribers.clear();
        drop(st);
        tracing::info!("runner shut down");
    }

    pub(crate) fn has_shut_down(&self) -> bool {
        self.inner.shut_down.load(Ordering::Acquire)
    }

    pub(crate) fn progress_clock(&self) -> &ProgressClock {
        &self.inner.clock
    }
}
