//! What both reconcilers share: stores, backend, runner, queues, configuration, the long-operation
//! submission protocol and small store helpers (status writes are in `status.rs`).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rbd::{BlockBackend, CancellationToken, ProgressFn, RbdError};
use runner::{OpContext, OpError, Runner, SubmitError, Submitted};
use store::{Image, Object, Snapshot, Store, StoreError};
use tokio::time::Instant;
use tracing::debug;

use crate::events::{event, EventRecorder, EventType};
use crate::queue::WorkQueue;
use crate::report::ProgressEvents;
use crate::{Baseline, ControllerConfig, ControllerError, ImageSource, OpClass, Result};

/// How a reconcile pass wants its key to be treated afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// The object reached a steady state: reset its failure backoff.
    Done,
    /// Waiting for something that announces itself (runner completion, another object's event):
    /// no requeue, the failure backoff is neither reset nor advanced.
    Wait,
    /// Run again at once (a step changed something the next pass continues from); backoff kept.
    Again,
    /// Run again after this delay (an operation is backing off after a failure); backoff kept.
    After(Duration),
    /// The runner is full: retry with the failure backoff, capped at `busy_backoff`.
    Busy,
}

/// Environment of one long operation: its cancellation token and progress callback.
pub(crate) struct OpEnv {
    pub token: CancellationToken,
    pub progress: ProgressFn,
}

/// Progress counters of a running operation, written by backend callbacks.
#[derive(Default)]
pub(crate) struct ProgressCell {
    done: AtomicU64,
    total: AtomicU64,
    /// Bumped by every report, even one that repeats the numbers (drives the stall watchdog).
    activity: AtomicU64,
}

impl ProgressCell {
    pub fn set(&self, done: u64, total: u64) {
        self.done.store(done, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
        self.activity.fetch_add(1, Ordering::Relaxed);
    }

    fn activity(&self) -> u64 {
        self.activity.load(Ordering::Relaxed)
    }

    pub fn get(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }
}

impl OpEnv {
    /// A progress cell plus a callback that fills it and forwards to the runner's progress.
    pub fn tracker(&self) -> (Arc<ProgressCell>, ProgressFn) {
        let cell = Arc::new(ProgressCell::default());
        let c = cell.clone();
        let forward = self.progress.clone();
        let f: ProgressFn = Arc::new(move |done, total| {
            c.set(done, total);
            forward(done, total);
        });
        (cell, f)
    }
}

/// The operation made no progress for `stall_timeout` and was cancelled.
pub(crate) struct Stalled;

pub(crate) struct Ctx {
    pub images: Store<Image>,
    pub snapshots: Store<Snapshot>,
    pub backend: Arc<dyn BlockBackend>,
    pub source: Arc<dyn ImageSource>,
    pub runner: Runner,
    pub events: Arc<dyn EventRecorder>,
    pub cfg: ControllerConfig,
    pub image_queue: WorkQueue,
    pub snapshot_queue: WorkQueue,
    pub client_key: tokio::sync::Mutex<Option<String>>,
    /// Runner key → earliest time a failed operation may be submitted again.
    pub gates: Mutex<HashMap<String, Instant>>,
    /// Image id → when its OS image reference last failed to resolve for good (an `Error`
    /// volume is resolved again only once `resync_period` has passed; in memory only).
    pub resolve_holds: Mutex<HashMap<String, Instant>>,
    /// Full lists of the stores not finished yet: the initial one (counted from the start) and
    /// those after a watch `Resync`. While one is owed, empty queues do not mean idle.
    pub lists_owed: std::sync::atomic::AtomicUsize,
    /// RBD images with a LUKS2 format still running (possibly past its deadline, in the
    /// background): never two formats of one image at once.
    pub formats: Arc<Mutex<HashSet<String>>>,
    /// Object id → the last event recorded about it (type, reason, action, message): an
    /// identical event right after it is not recorded again (see [`Ctx::record`]).
    pub last_events: Mutex<HashMap<String, EventKey>>,
    /// OS snapshot id → since when no volume references it (garbage collection after
    /// `os_image_gc_grace`; in memory: a restart starts the grace period again).
    pub unreferenced: Mutex<HashMap<String, Instant>>,
    /// OS snapshot id → when it was seen `Failed` first (retried `os_image_retry` later; in
    /// memory: a restart starts the period again).
    pub failed_os: Mutex<HashMap<String, Instant>>,
}

/// What makes two events of one object the same: type, reason, action and message.
pub(crate) type EventKey = (EventType, String, String, String);

/// A table of in-memory timers keyed by object id (`unreferenced`, `failed_os`).
pub(crate) fn since(table: &Mutex<HashMap<String, Instant>>, id: &str) -> Instant {
    match table.lock() {
        Ok(mut t) => *t.entry(id.to_string()).or_insert_with(Instant::now),
        Err(_) => Instant::now(),
    }
}

/// Forgets the timer of `id` in `table`.
pub(crate) fn clear(table: &Mutex<HashMap<String, Instant>>, id: &str) {
    if let Ok(mut t) = table.lock() {
        t.remove(id);
    }
}

impl Ctx {
    /// Records an event about the object of `md`, unless it repeats the last event recorded
    /// about that object (same type, reason, action and message): a pass that retries the same
    /// failure, or runs again without a change, says nothing new. Any other event in between
    /// makes the next occurrence count again.
    pub fn record(
        &self,
        md: &store::Metadata,
        ty: EventType,
        reason: &str,
        action: &str,
        message: impl Into<String>,
    ) {
        let message = message.into();
        let key: EventKey = (ty, reason.to_string(), action.to_string(), message.clone());
        if let Ok(mut last) = self.last_events.lock() {
            if last.get(&md.id) == Some(&key) {
                debug!(id = %md.id, reason, "repeated event not recorded again");
                return;
            }
            last.insert(md.id.clone(), key);
        }
        self.events.record(event(md, ty, reason, action, message));
    }

    /// Forgets what is kept in memory about object `id` (it is gone from the store).
    pub fn forget(&self, id: &str) {
        if let Ok(mut last) = self.last_events.lock() {
            last.remove(id);
        }
        clear(&self.unreferenced, id);
        clear(&self.failed_os, id);
    }

    /// Whether rbd image `name`, which a call has just answered `NotFound` for, is **definitely**
    /// gone: the pool's image list does not name it. A listed image that cannot be opened (a
    /// half-finished removal, a transient error after a restart) is not gone. Errors of the
    /// listing are returned: "gone" is never concluded from a failure.
    pub async fn image_gone(&self, name: &str) -> Result<bool> {
        let listed = self.backend.list_images().await?;
        Ok(!listed.iter().any(|n| n == name))
    }

    /// Whether rbd snapshot `image@snap`, which a call has just answered `NotFound` for, is
    /// definitely gone: its image's snapshot list does not name it, or the image itself is gone
    /// ([`Ctx::image_gone`]). Errors are returned, never taken for absence.
    pub async fn snapshot_gone(&self, image: &str, snap: &str) -> Result<bool> {
        match self.backend.list_snapshots(image).await {
            Ok(list) => Ok(!list.iter().any(|s| s.name == snap)),
            Err(RbdError::NotFound(_)) => self.image_gone(image).await,
            Err(e) => Err(e.into()),
        }
    }

    /// Closes the gate of `key` until `delay` has passed (after a failed operation).
    pub fn close_gate(&self, key: &str, delay: Duration) {
        if let Ok(mut g) = self.gates.lock() {
            g.insert(key.to_string(), Instant::now() + delay);
        }
    }

    /// How long a resubmission of `key` must still wait for its backoff.
    fn gated(&self, key: &str) -> Option<Duration> {
        let mut g = self.gates.lock().ok()?;
        let now = Instant::now();
        match g.get(key) {
            Some(at) if *at > now => Some(*at - now),
            Some(_) => {
                g.remove(key);
                None
            }
            None => None,
        }
    }

    /// Records a terminal resolve failure of image `id` (see `resolve_holds`).
    pub fn hold_resolve(&self, id: &str) {
        if let Ok(mut h) = self.resolve_holds.lock() {
            h.insert(id.to_string(), Instant::now());
        }
    }

    /// Whether image `id` failed to resolve for good less than `resync_period` ago. Forgets an
    /// expired hold.
    pub fn resolve_held(&self, id: &str) -> bool {
        let Ok(mut h) = self.resolve_holds.lock() else {
            return false;
        };
        match h.get(id) {
            Some(at) if at.elapsed() < self.cfg.resync_period => true,
            Some(_) => {
                h.remove(id);
                false
            }
            None => false,
        }
    }

    /// Forgets the resolve hold of image `id` (resolved, or deleted).
    pub fn release_resolve(&self, id: &str) {
        if let Ok(mut h) = self.resolve_holds.lock() {
            h.remove(id);
        }
    }

    /// Starts a long operation of `class` under `key` (see the crate docs): on the runner
    /// normally, inline in the [`Baseline::GoInline`] baseline. Accepted or already
    /// queued/running → [`Action::Wait`] (the completion requeues the object); runner full →
    /// [`Action::Busy`]; inline success → [`Action::Again`]; still backing off after a failed
    /// run → [`Action::After`].
    pub async fn start_op<F, Fut>(
        self: &Arc<Self>,
        class: OpClass,
        key: String,
        op: F,
    ) -> Result<Action>
    where
        F: FnOnce(Arc<Ctx>, OpEnv) -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.start(class, key, op, false).await
    }

    /// [`Ctx::start_op`] for an operation that both Go designs ran inside the reconcile pass
    /// (registry resolve, LUKS2 format of an empty volume): the [`Baseline::GoPool`] baseline
    /// runs it inline too. Without a baseline it is exactly `start_op`.
    pub async fn start_pass_op<F, Fut>(
        self: &Arc<Self>,
        class: OpClass,
        key: String,
        op: F,
    ) -> Result<Action>
    where
        F: FnOnce(Arc<Ctx>, OpEnv) -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.start(class, key, op, true).await
    }

    async fn start<F, Fut>(
        self: &Arc<Self>,
        class: OpClass,
        key: String,
        op: F,
        pass_op: bool,
    ) -> Result<Action>
    where
        F: FnOnce(Arc<Ctx>, OpEnv) -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        if let Some(wait) = self.gated(&key) {
            // Requeue at the end of the backoff ourselves: an earlier delayed add of the key
            // may be what brought us here, and nothing else is due later.
            debug!(key, ?wait, "operation backing off after a failure");
            return Ok(Action::After(wait));
        }
        let inline = match self.cfg.baseline {
            Baseline::None => false,
            Baseline::GoInline => true,
            Baseline::GoPool => pass_op,
        };
        if inline {
            let env = OpEnv {
                token: CancellationToken::new(),
                progress: rbd::no_progress(),
            };
            op(self.clone(), env)
                .await
                .map_err(|e| ControllerError::Op {
                    key: key.clone(),
                    reason: e.to_string(),
                })?;
            return Ok(Action::Again);
        }
        let ctx = self.clone();
        let run = move |octx: OpContext| {
            let env = OpEnv {
                token: octx.token(),
                progress: octx.progress_fn(),
            };
            async move { op(ctx, env).await.map_err(|e| -> OpError { Box::new(e) }) }
        };
        // The one place where operations reach the runner, each in its class.
        let submitted = self.runner.try_submit_in(class.as_str(), key.clone(), run);
        match submitted {
            Ok(Submitted::Accepted) => {
                debug!(key, class = class.as_str(), "operation submitted");
                Ok(Action::Wait)
            }
            Ok(_) => Ok(Action::Wait),
            Err(SubmitError::Busy) if self.cfg.baseline == Baseline::GoPool => {
                self.poll_for_slot(&key);
                Ok(Action::Wait)
            }
            Err(SubmitError::Busy) => {
                debug!(key, "runner full, retrying later");
                Ok(Action::Busy)
            }
            Err(SubmitError::ShuttingDown) => Ok(Action::Wait),
        }
    }

    /// [`Baseline::GoPool`]: the pool refused the operation under `key`; its object is requeued
    /// through the rate-limited queue and its failure count reset at once, so the next refusal
    /// waits `base_backoff` again (or what the global token bucket imposes).
    fn poll_for_slot(&self, key: &str) {
        let (queue, id) = if let Some(id) = key.strip_prefix("image:") {
            (&self.image_queue, id)
        } else if let Some(id) = key.strip_prefix("snapshot:") {
            (&self.snapshot_queue, id)
        } else {
            return;
        };
        let delay = queue.add_rate_limited(id.to_string());
        queue.forget(id);
        debug!(key, ?delay, "pool full, polling again");
    }

    /// Cancels a queued or running operation under `key`. True if there was one (its completion
    /// will requeue the object).
    pub fn cancel_op(&self, key: &str) -> bool {
        if self.cfg.baseline == Baseline::GoInline {
            return false;
        }
        self.runner.state(key).is_some() && self.runner.cancel(key)
    }

    /// Whether an operation under `key` is queued or running.
    pub fn op_active(&self, key: &str) -> bool {
        self.cfg.baseline != Baseline::GoInline && self.runner.state(key).is_some()
    }

    /// Runs `fut` while persisting its progress every `progress_interval` through `persist`
    /// (only when it changed), recording progress events through `report` (see `report.rs`; the
    /// caller records the last one, as only it knows whether the operation succeeded) and watching
    /// for stalls (`stall_timeout`: `cancel` is cancelled and `Err(Stalled)` returned once `fut`
    /// has ended).
    pub async fn drive<T, F, P, PF>(
        &self,
        fut: F,
        cell: &ProgressCell,
        cancel: &CancellationToken,
        mut persist: P,
        mut report: Option<&mut ProgressEvents>,
    ) -> std::result::Result<T, Stalled>
    where
        F: Future<Output = T>,
        P: FnMut(u64, u64) -> PF,
        PF: Future<Output = ()>,
    {
        tokio::pin!(fut);
        let period = self.cfg.progress_interval.max(Duration::from_millis(10));
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut persisted = (0u64, 0u64);
        let mut last_move = (cell.activity(), Instant::now());
        let mut stalled = false;
        loop {
            tokio::select! {
                out = &mut fut => {
                    return if stalled { Err(Stalled) } else { Ok(out) };
                }
                _ = ticker.tick(), if !stalled => {
                    let now = cell.get();
                    if now != persisted {
                        persisted = now;
                        persist(now.0, now.1).await;
                        if let Some(r) = report.as_deref_mut() {
                            r.tick(self, now.0, now.1).await;
                        }
                    }
                    let activity = cell.activity();
                    if activity != last_move.0 {
                        last_move = (activity, Instant::now());
                    } else if let Some(limit) = self.cfg.stall_timeout {
                        if last_move.1.elapsed() >= limit {
                            stalled = true;
                            cancel.cancel();
                        }
                    }
                }
            }
        }
    }

    /// The cephx key of the configured client, fetched once and cached.
    pub async fn client_key(&self) -> Result<String> {
        let mut cached = self.client_key.lock().await;
        if let Some(k) = cached.as_ref() {
            return Ok(k.clone());
        }
        let key = self.backend.client_key(&self.cfg.client).await?;
        *cached = Some(key.clone());
        Ok(key)
    }

    /// The user name consumers get: the client without its `client.` prefix.
    pub fn client_user(&self) -> String {
        self.cfg
            .client
            .strip_prefix("client.")
            .unwrap_or(&self.cfg.client)
            .to_string()
    }
}

/// Read-modify-write of one object, retried on version conflicts. `f` returns false to leave the
/// object alone. `Ok(None)`: missing or declined; `Ok(Some(obj))`: the stored result.
pub(crate) async fn modify<T: Object>(
    store: &Store<T>,
    id: &str,
    mut f: impl FnMut(&mut T) -> bool,
) -> Result<Option<T>> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut obj = match store.get(id).await {
            Ok(o) => o,
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if !f(&mut obj) {
            return Ok(None);
        }
        match store.update(&obj).await {
            Ok(o) => return Ok(Some(o)),
            Err(StoreError::Conflict { .. }) if attempts < 8 => continue,
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// `Ok(None)` for a missing object.
pub(crate) async fn get_opt<T: Object>(store: &Store<T>, id: &str) -> Result<Option<T>> {
    match store.get(id).await {
        Ok(o) => Ok(Some(o)),
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Treats `NotFound` as success.
pub(crate) fn ignore_not_found(r: rbd::Result<()>) -> rbd::Result<()> {
    match r {
        Err(RbdError::NotFound(_)) => Ok(()),
        other => other,
    }
}

/// Treats `Exists` as success.
pub(crate) fn ignore_exists(r: rbd::Result<()>) -> rbd::Result<()> {
    match r {
        Err(RbdError::Exists(_)) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
impl Ctx {
    /// A context over in-memory stores (on `store_backend`) for unit tests; the queues and the
    /// runner exist but nothing runs them.
    pub(crate) async fn for_tests(
        backend: Arc<dyn BlockBackend>,
        source: Arc<dyn ImageSource>,
        store_backend: Arc<dyn store::Backend>,
    ) -> Arc<Ctx> {
        let cfg = ControllerConfig {
            monitors: "mon:6789".into(),
            client: "client.volumes".into(),
            ..ControllerConfig::default()
        };
        let q = crate::QueueConfig::default();
        Arc::new(Ctx {
            images: Store::open(store_backend.clone())
                .await
                .expect("memory store"),
            snapshots: Store::open(store_backend).await.expect("memory store"),
            backend,
            source,
            runner: Runner::new(runner::RunnerConfig::default()),
            events: Arc::new(crate::events::MemoryEvents::new()),
            cfg,
            image_queue: WorkQueue::new(q.clone()),
            snapshot_queue: WorkQueue::new(q),
            client_key: tokio::sync::Mutex::new(None),
            gates: Mutex::new(HashMap::new()),
            resolve_holds: Mutex::new(HashMap::new()),
            lists_owed: std::sync::atomic::AtomicUsize::new(1),
            formats: Arc::default(),
            last_events: Mutex::default(),
            unreferenced: Mutex::default(),
            failed_os: Mutex::default(),
        })
    }
}
