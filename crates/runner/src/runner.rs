//! Owns the [`Runner`] itself: admission (deduplication, the bounds, backpressure), the state lock
//! and its invariants, starting, finishing and promoting operations, cancellation, views (state,
//! progress, snapshot, metrics) and shutdown. The class rule it applies lives in `class.rs`; the
//! tasks that run operations in `lane.rs`.
//!
//! # Invariants (all guarded by the one `State` lock)
//! * `ops` indexes every accepted operation that has not completed: `None` = waiting,
//!   `Some(started_at)` = holding a running slot. A key is in `ops` at most once, whatever its
//!   class.
//! * Per class, `running` = its `Some` entries, and its `waiting` queue holds exactly its `None`
//!   entries, in acceptance order, at most the class's `max_waiting`. The runner-wide `running`,
//!   `waiting` and `idle` (classes with nothing running) are the sums; `running` ≤ `max_running`,
//!   `waiting` ≤ `max_waiting`.
//! * Between critical sections, no waiting operation may start (`Classes::may_start` is false
//!   for the class of every head). When every class reserves a slot (guards), free slots ≥
//!   `idle`, so a class with nothing running has nothing waiting.
//! * Freeing a slot enables at most one start, so the critical section that frees a slot hands
//!   it, with the chosen operation, back to the same lane, or to nobody. Without guards: one
//!   slot, one start. With guards, a busy class may start iff `free > idle`, an idle one iff
//!   `free >= idle`; before the finish, no head may start. If the finishing class still runs
//!   something, `free` grows by one and `idle` stays: busy classes may start, and one start
//!   restores the counts. If it becomes idle, both grow by one: busy classes still may not
//!   start, only the finishing class may (its own head), and one start restores the counts.
//!   Admissions and cancellations of waiting operations never make another head startable.
//! * An operation's code runs only while its slot is held: the slot is taken before the
//!   operation is handed to a lane (the task behind a slot) and released by that lane after the
//!   operation's future or closure has returned.
//! * Every accepted operation leaves `ops` exactly once, in the same critical section that sends
//!   its completion, so completions of one key are delivered in order and after the key is free.
//! * No user code (operation closures, futures, errors, drops of those) runs under the lock.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::class::{Classes, Head, Load};
use crate::lane::{AsyncOp, BlockingOp, Job, Submission, Waiting};
use crate::metrics::Counters;
use crate::op::{OpShared, ProgressClock};
use crate::{
    Completion, Completions, OpContext, OpError, OpInfo, OpState, Outcome, Progress,
    ProgressUpdates, RunnerConfig, RunnerMetrics, ShutdownMode, SubmitError,
};

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

pub(crate) struct Inner {
    max_running: usize,
    max_waiting: usize,
    progress_interval: Duration,
    classes: Classes,
    pub(crate) handle: Handle,
    state: Mutex<State>,
    /// Woken (all waiters) when something changed that may let a blocked [`Runner::submit`] in
    /// while one is blocked, and when shutdown starts.
    room: Notify,
    /// Tracks every task that runs an operation; closed by shutdown, which waits on it.
    tracker: TaskTracker,
    clock: ProgressClock,
    shut_down: AtomicBool,
    /// Whether a submission into an unknown class was already logged.
    warned_unknown_class: AtomicBool,
}

struct State {
    ops: HashMap<OpKey, Option<Instant>>,
    classes: Vec<ClassState>,
    running: usize,
    waiting: usize,
    /// Classes with no running operation.
    idle: usize,
    /// The acceptance number of the next accepted operation.
    next_seq: u64,
    closed: bool,
    /// Submitters blocked in `submit` waiting for room (registered; see `admit_waiting`).
    blocked: usize,
    subscribers: Vec<mpsc::UnboundedSender<Completion>>,
}

#[derive(Default)]
struct ClassState {
    waiting: VecDeque<Waiting>,
    running: usize,
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

/// The key string of a finished operation: moved out if the record is no longer shared (the
/// common case), copied otherwise (e.g. a progress callback still held by a foreign thread).
fn take_key(op: Arc<OpShared>) -> String {
    match Arc::try_unwrap(op) {
        Ok(op) => op.key,
        Err(op) => op.key.clone(),
    }
}

impl State {
    fn new(classes: usize) -> Self {
        State {
            ops: HashMap::new(),
            classes: (0..classes).map(|_| ClassState::default()).collect(),
            running: 0,
            waiting: 0,
            idle: classes,
            next_seq: 0,
            closed: false,
            blocked: 0,
            subscribers: Vec::new(),
        }
    }

    fn load(&self) -> Load {
        Load {
            running: self.running,
            idle: self.idle,
        }
    }

    /// Counts a started operation of `class`.
    fn take_slot(&mut self, class: usize) {
        let c = &mut self.classes[class];
        c.running += 1;
        if c.running == 1 {
            self.idle -= 1;
        }
        self.running += 1;
    }

    /// Counts a finished operation of `class`.
    fn free_slot(&mut self, class: usize) {
        let c = &mut self.classes[class];
        c.running -= 1;
        if c.running == 0 {
            self.idle += 1;
        }
        self.running -= 1;
    }

    /// The class whose head may take a free slot now, if any (the class rule).
    fn choose(&self, classes: &Classes, now: Instant) -> Option<usize> {
        if self.waiting == 0 {
            return None;
        }
        let heads = self.classes.iter().enumerate().map(|(i, c)| {
            let head = c.waiting.front().map(|w| Head {
                running: c.running,
                accepted_at: w.op.submitted_at,
                seq: w.op.seq,
            });
            (i, head)
        });
        classes.choose(self.load(), now, heads)
    }

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

    /// Completes every waiting operation as cancelled, in acceptance order. Returns their jobs,
    /// to be dropped once the lock is released.
    fn cancel_waiting(&mut self) -> Vec<Job> {
        let mut all = Vec::with_capacity(self.waiting);
        for c in &mut self.classes {
            all.extend(c.waiting.drain(..));
        }
        all.sort_by_key(|w| w.op.seq);
        self.waiting = 0;
        let mut jobs = Vec::with_capacity(all.len());
        for w in all {
            self.ops.remove(w.op.key.as_str());
            self.classes[w.op.class()]
                .counters
                .record(&Outcome::Cancelled, false, None);
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

/// A submitter blocked in [`Runner::submit`]: registered in `State::blocked` while it waits, so
/// that the runner wakes it; unregistered when it gets an answer or its future is dropped.
struct Blocked<'a> {
    inner: &'a Inner,
    registered: bool,
}

impl Blocked<'_> {
    fn register(&mut self) {
        self.inner.lock().blocked += 1;
        self.registered = true;
    }
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        if self.registered {
            self.inner.lock().blocked -= 1;
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No critical section can panic half-way (no user code runs under the lock).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The index of the class named `name`; an unknown name means the default class (logged
    /// once per runner).
    fn class_index(&self, name: &str) -> usize {
        if let Some(i) = self.classes.find(name) {
            return i;
        }
        if !self.warned_unknown_class.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                class = name,
                default = self.classes.specs[0].name,
                "submission into an unknown operation class: using the default class"
            );
        }
        0
    }

    /// Takes a decision on a submission under the lock; starts or queues it if accepted.
    fn admit<O: Submission>(
        self: &Arc<Self>,
        class: usize,
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
            st.classes[class].counters.deduplicated += 1;
            drop(st);
            return Admission::Done(Ok(answer));
        }
        let now = Instant::now();
        let seq = st.next_seq;
        let c = &st.classes[class];
        // FIFO within a class: a new operation starts at once only if none of its class waits.
        if c.waiting.is_empty() && self.classes.may_start(st.load(), c.running) {
            let shared = OpShared::new(key, class, seq, now, O::BLOCKING, Arc::clone(&self.clock));
            st.next_seq += 1;
            st.ops.insert(OpKey(Arc::clone(&shared)), Some(now));
            st.take_slot(class);
            st.classes[class].counters.accepted += 1;
            // Taken under the lock so that a concurrent shutdown cannot miss this task.
            let token = self.tracker.token();
            drop(st);
            op.launch(self, shared, token);
            return Admission::Done(Ok(Submitted::Accepted));
        }
        if st.waiting < self.max_waiting && c.waiting.len() < self.classes.specs[class].max_waiting
        {
            let shared = OpShared::new(key, class, seq, now, O::BLOCKING, Arc::clone(&self.clock));
            let job = op.into_job(&shared);
            st.next_seq += 1;
            st.ops.insert(OpKey(Arc::clone(&shared)), None);
            st.waiting += 1;
            let c = &mut st.classes[class];
            c.waiting.push_back(Waiting { op: shared, job });
            c.counters.accepted += 1;
            return Admission::Done(Ok(Submitted::Accepted));
        }
        if count_busy {
            st.classes[class].counters.rejected_busy += 1;
        }
        drop(st);
        Admission::Full(key, op)
    }

    /// Waits for room instead of answering `Busy`.
    async fn admit_waiting<O: Submission>(
        self: &Arc<Self>,
        class: usize,
        mut key: String,
        mut op: O,
    ) -> Result<Submitted, SubmitError> {
        let mut blocked = Blocked {
            inner: self,
            registered: false,
        };
        let mut room = pin!(self.room.notified());
        loop {
            // Enabled before the state is checked, so a wake-up in between is not lost.
            room.as_mut().enable();
            match self.admit(class, key, op, false) {
                Admission::Done(answer) => return answer,
                Admission::Full(k, o) => (key, op) = (k, o),
            }
            if !blocked.registered {
                // The runner wakes blocked submitters only once they are registered: check again.
                blocked.register();
                continue;
            }
            room.as_mut().await;
            room.set(self.room.notified());
        }
    }

    fn try_admit<O: Submission>(
        self: &Arc<Self>,
        class: usize,
        key: String,
        op: O,
    ) -> Result<Submitted, SubmitError> {
        match self.admit(class, key, op, true) {
            Admission::Done(answer) => answer,
            Admission::Full(..) => Err(SubmitError::Busy),
        }
    }

    /// Ends an operation: frees its key and slot, hands the slot to the waiting operation the
    /// class rule chooses, if any, and delivers the completion, all in one critical section.
    /// `normal` is false when the task was dropped before finishing (aborted after a shutdown
    /// deadline, or its runtime is going away): no operation is started then, and any waiting
    /// ones complete as cancelled.
    pub(crate) fn finish(
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
        let class = op.class();
        st.free_slot(class);
        let duration = now.saturating_duration_since(started_at);
        st.classes[class]
            .counters
            .record(&outcome, panicked, Some(duration));

        let mut next = None;
        let mut orphans = Vec::new();
        if normal {
            if let Some(chosen) = st.choose(&self.classes, now) {
                let waiting = st.classes[chosen]
                    .waiting
                    .pop_front()
                    .expect("a chosen class has a head");
                st.waiting -= 1;
                *st.ops
                    .get_mut(waiting.op.key.as_str())
                    .expect("a waiting operation is indexed") = Some(now);
                st.take_slot(chosen);
                debug_assert!(
                    st.choose(&self.classes, now).is_none(),
                    "a freed slot enables at most one start"
                );
                next = Some(waiting);
            }
        } else if st.waiting > 0 {
            // Nothing can run any more: stop accepting and complete the queue.
            st.closed = true;
            orphans = st.cancel_waiting();
        }
        let notify = st.blocked > 0 || !orphans.is_empty();
        st.deliver(Completion {
            key: take_key(op),
            outcome,
            duration,
        });
        drop(st);

        if notify {
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
            .field("classes", &self.inner.classes.len())
            .field("running", &st.running)
            .field("waiting", &st.waiting)
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
        let max_running = cfg.max_running.max(1);
        let classes = Classes::new(max_running, cfg.max_waiting, &cfg.classes, cfg.aging);
        Runner {
            inner: Arc::new(Inner {
                max_running,
                max_waiting: cfg.max_waiting,
                progress_interval: cfg.progress_interval.max(Duration::from_millis(1)),
                state: Mutex::new(State::new(classes.len())),
                classes,
                handle,
                room: Notify::new(),
                tracker: TaskTracker::new(),
                clock: ProgressClock::default(),
                shut_down: AtomicBool::new(false),
                warned_unknown_class: AtomicBool::new(false),
            }),
        }
    }

    /// Submits an async operation under `key` into the default class (the first configured
    /// class), or answers at once. Same as [`try_submit_in`](Self::try_submit_in) with that
    /// class.
    pub fn try_submit<F, Fut>(
        &self,
        key: impl Into<String>,
        op: F,
    ) -> Result<Submitted, SubmitError>
    where
        F: FnOnce(OpContext) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), OpError>> + Send + 'static,
    {
        self.inner.try_admit(0, key.into(), AsyncOp(op))
    }

    /// Submits an async operation under `key` into `class`, or answers at once.
    ///
    /// `op` is called once, inside the operation's task, when it gets a running slot: at once if
    /// the class may take a free slot and none of its operations waits, else when the class rule
    /// gives it one (FIFO within the class; see the crate docs). If the key is already running
    /// or waiting, in any class, `op` is dropped and the answer says so. A full queue (the
    /// runner's or the class's) answers [`SubmitError::Busy`]; after shutdown started,
    /// [`SubmitError::ShuttingDown`]. An unknown `class` means the default class.
    pub fn try_submit_in<F, Fut>(
        &self,
        class: &str,
        key: impl Into<String>,
        op: F,
    ) -> Result<Submitted, SubmitError>
    where
        F: FnOnce(OpContext) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), OpError>> + Send + 'static,
    {
        let class = self.inner.class_index(class);
        self.inner.try_admit(class, key.into(), AsyncOp(op))
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
        self.inner.admit_waiting(0, key.into(), AsyncOp(op)).await
    }

    /// [`try_submit_in`](Self::try_submit_in) that waits for room like [`submit`](Self::submit).
    pub async fn submit_in<F, Fut>(
        &self,
        class: &str,
        key: impl Into<String>,
        op: F,
    ) -> Result<Submitted, SubmitError>
    where
        F: FnOnce(OpContext) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), OpError>> + Send + 'static,
    {
        let class = self.inner.class_index(class);
        self.inner
            .admit_waiting(class, key.into(), AsyncOp(op))
            .await
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
        self.inner.try_admit(0, key.into(), BlockingOp(op))
    }

    /// [`try_submit_blocking`](Self::try_submit_blocking) into `class` (see
    /// [`try_submit_in`](Self::try_submit_in)).
    pub fn try_submit_blocking_in<F>(
        &self,
        class: &str,
        key: impl Into<String>,
        op: F,
    ) -> Result<Submitted, SubmitError>
    where
        F: FnOnce(OpContext) -> Result<(), OpError> + Send + 'static,
    {
        let class = self.inner.class_index(class);
        self.inner.try_admit(class, key.into(), BlockingOp(op))
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
        self.inner
            .admit_waiting(0, key.into(), BlockingOp(op))
            .await
    }

    /// [`submit_blocking`](Self::submit_blocking) into `class` (see
    /// [`try_submit_in`](Self::try_submit_in)).
    pub async fn submit_blocking_in<F>(
        &self,
        class: &str,
        key: impl Into<String>,
        op: F,
    ) -> Result<Submitted, SubmitError>
    where
        F: FnOnce(OpContext) -> Result<(), OpError> + Send + 'static,
    {
        let class = self.inner.class_index(class);
        self.inner
            .admit_waiting(class, key.into(), BlockingOp(op))
            .await
    }

    /// Whether a class named `name` is configured (submissions into any other name go to the
    /// default class).
    pub fn has_class(&self, name: &str) -> bool {
        self.inner.classes.find(name).is_some()
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
        let class = &mut st.classes[op.class()];
        let position = class
            .waiting
            .iter()
            .position(|w| Arc::ptr_eq(&w.op, &op))
            .expect("an indexed waiting operation is queued");
        let waiting = class.waiting.remove(position);
        class.counters.record(&Outcome::Cancelled, false, None);
        st.waiting -= 1;
        st.ops.remove(key);
        st.deliver(Completion {
            key: key.to_owned(),
            outcome: Outcome::Cancelled,
            duration: Duration::ZERO,
        });
        let notify = st.blocked > 0;
        drop(st);
        tracing::debug!(key, "cancelled a waiting operation");
        if notify {
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

    /// Every running operation (oldest start first) then every waiting one (acceptance order,
    /// all classes merged).
    pub fn snapshot(&self) -> Vec<OpInfo> {
        let (mut running, mut waiting) = {
            let st = self.inner.lock();
            let running: Vec<_> = st
                .ops
                .iter()
                .filter_map(|(key, started)| started.map(|at| (Arc::clone(&key.0), at)))
                .collect();
            let waiting: Vec<_> = st
                .classes
                .iter()
                .flat_map(|c| c.waiting.iter().map(|w| Arc::clone(&w.op)))
                .collect();
            (running, waiting)
        };
        running.sort_by(|(a, at_a), (b, at_b)| at_a.cmp(at_b).then_with(|| a.key.cmp(&b.key)));
        waiting.sort_by_key(|op| op.seq);
        let specs = &self.inner.classes.specs;
        let info = |op: &OpShared, state, started_at| OpInfo {
            key: op.key.clone(),
            state,
            progress: op.progress(),
            submitted_at: op.submitted_at,
            started_at,
            cancel_requested: op.is_cancelled(),
            blocking: op.blocking,
            class: specs[op.class()].name.clone(),
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

    /// A consistent copy of the counters: runner-wide and per class.
    pub fn metrics(&self) -> RunnerMetrics {
        let copied: Vec<_> = {
            let st = self.inner.lock();
            st.classes
                .iter()
                .map(|c| (c.counters.clone(), c.waiting.len(), c.running))
                .collect()
        };
        let classes = copied
            .iter()
            .zip(&self.inner.classes.specs)
            .map(|((counters, waiting, running), spec)| {
                counters.class_metrics(&spec.name, spec.share, spec.reserved, *waiting, *running)
            })
            .collect();
        RunnerMetrics::from_classes(classes)
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
            (st.running, st.waiting)
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
