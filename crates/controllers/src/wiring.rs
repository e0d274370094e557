//! Feeding and running the reconcilers: store watches, initial list, periodic resync, runner
//! completions and the worker pools. Owns no reconcile logic. Each pass runs inside a task-local
//! scope, so that [`on_reconcile_worker`] can tell a pass from a long operation.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::FutureExt;
use runner::{Completion, Outcome};
use store::keys::REHOME_OF_LABEL;
use store::{
    Image, ImageState, ListOptions, Snapshot, SnapshotState, WatchEvent, FIELD_SNAPSHOT_REF,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::ctx::{Action, Ctx};
use crate::queue::WorkQueue;
use crate::{image, snapshot, ControllerError, Result};

tokio::task_local! {
    /// Set while a reconcile pass runs (the value carries nothing).
    static RECONCILE_PASS: ();
}

/// Whether the caller runs inside a reconcile pass on a reconcile worker (also inside a task a
/// pass spawned through the controllers, and inside a long operation that a benchmark baseline
/// runs inline). Long operations on the runner answer false. Nothing that can take more than
/// milliseconds may run while this is true; the tests assert it.
pub fn on_reconcile_worker() -> bool {
    RECONCILE_PASS.try_with(|_| ()).is_ok()
}

/// Spawns `fut`, inside the reconcile-pass scope when the caller is inside one (the spawned
/// task works for the pass: [`on_reconcile_worker`] must still see it).
pub(crate) fn spawn_in_pass_scope<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    if on_reconcile_worker() {
        tokio::spawn(RECONCILE_PASS.scope((), fut))
    } else {
        tokio::spawn(fut)
    }
}

pub(crate) async fn run(ctx: Arc<Ctx>, shutdown: CancellationToken) -> Result<()> {
    // Order matters: completions and watches first, then the initial list, so that no change
    // between the list and the start of the watches is lost.
    let mut completions = ctx.runner.subscribe();
    let mut image_watch = ctx.images.watch(ListOptions::default())?;
    let mut snapshot_watch = ctx.snapshots.watch(ListOptions::default())?;
    // The initial list is retried (a store hiccup at start must not stop the provider).
    let initial = until_listed(&ctx, "initial list", || async {
        enqueue_all_images(&ctx).await?;
        enqueue_all_snapshots(&ctx).await
    });
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        _ = initial => {}
    }
    ctx.lists_owed.fetch_sub(1, Ordering::SeqCst);
    info!(workers = ctx.cfg.worker_size, "controllers started");

    let mut feeders = JoinSet::new();
    let c = ctx.clone();
    feeders.spawn(async move {
        while let Some(ev) = image_watch.recv().await {
            on_image_event(&c, ev).await;
        }
    });
    let c = ctx.clone();
    feeders.spawn(async move {
        while let Some(ev) = snapshot_watch.recv().await {
            on_snapshot_event(&c, ev).await;
        }
    });
    let c = ctx.clone();
    feeders.spawn(async move {
        while let Some(done) = completions.recv().await {
            on_completion(&c, done);
        }
    });
    let c = ctx.clone();
    feeders.spawn(async move {
        let period = c.cfg.resync_period.max(std::time::Duration::from_secs(1));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            ticker.tick().await;
            debug!("periodic resync");
            if let Err(e) = enqueue_all_images(&c).await {
                warn!(error = %e, "resync of images failed");
            }
            if let Err(e) = enqueue_all_snapshots(&c).await {
                warn!(error = %e, "resync of snapshots failed");
            }
        }
    });

    let mut workers = JoinSet::new();
    for _ in 0..ctx.cfg.worker_size.max(1) {
        workers.spawn(worker(ctx.clone(), ctx.image_queue.clone(), Kind::Image));
        workers.spawn(worker(
            ctx.clone(),
            ctx.snapshot_queue.clone(),
            Kind::Snapshot,
        ));
    }

    shutdown.cancelled().await;
    info!("controllers stopping");
    feeders.abort_all();
    ctx.image_queue.shutdown();
    ctx.snapshot_queue.shutdown();
    while workers.join_next().await.is_some() {}
    while feeders.join_next().await.is_some() {}
    Ok(())
}

#[derive(Clone, Copy)]
enum Kind {
    Image,
    Snapshot,
}

async fn worker(ctx: Arc<Ctx>, queue: WorkQueue, kind: Kind) {
    while let Some(key) = queue.get().await {
        let span = match kind {
            Kind::Image => tracing::debug_span!("reconcile", image = %key),
            Kind::Snapshot => tracing::debug_span!("reconcile", snapshot = %key),
        };
        let pass = async {
            match kind {
                Kind::Image => image::reconcile(&ctx, &key).await,
                Kind::Snapshot => snapshot::reconcile(&ctx, &key).await,
            }
        };
        let result = AssertUnwindSafe(RECONCILE_PASS.scope((), pass.instrument(span)))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(ControllerError::Panic(key.clone())));
        match result {
            Ok(Action::Done) => queue.forget(&key),
            Ok(Action::Wait) => {}
            Ok(Action::Again) => queue.add(key.clone()),
            Ok(Action::After(delay)) => queue.add_after(key.clone(), delay),
            Ok(Action::Busy) => {
                queue.add_rate_limited_capped(key.clone(), ctx.cfg.busy_backoff);
            }
            Err(ControllerError::Store(store::StoreError::Invalid(e))) => {
                // An undecodable record: reading it again gives the same answer. Lists skip it;
                // the periodic resync brings the key back once the record is readable.
                warn!(key, error = %e, "record cannot be read; not retried");
                queue.forget(&key);
            }
            Err(e) => {
                let delay = queue.add_rate_limited(key.clone());
                match &e {
                    ControllerError::Store(store::StoreError::Conflict { .. }) => {
                        debug!(key, error = %e, "reconcile conflict, retrying")
                    }
                    _ => warn!(key, error = %e, retry_in = ?delay, "reconcile failed"),
                }
            }
        }
        queue.done(&key);
    }
}

/// Runs `list` until it succeeds, waiting `base_backoff` (at least 100 ms), doubled after each
/// failure up to `max_backoff`. A list after a `Resync` must not give up either: the events
/// coalesced into the `Resync` exist nowhere else (only the periodic resync, minutes later,
/// would find the objects they changed).
async fn until_listed<F, Fut>(ctx: &Ctx, what: &str, mut list: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut delay = ctx
        .cfg
        .base_backoff
        .max(std::time::Duration::from_millis(100));
    while let Err(e) = list().await {
        warn!(error = %e, retry_in = ?delay, "{what} failed");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(ctx.cfg.max_backoff.max(delay));
    }
}

async fn enqueue_all_images(ctx: &Ctx) -> Result<()> {
    for img in ctx.images.list(&ListOptions::default()).await? {
        ctx.image_queue.add(img.metadata.id);
    }
    Ok(())
}

async fn enqueue_all_snapshots(ctx: &Ctx) -> Result<()> {
    for s in ctx.snapshots.list(&ListOptions::default()).await? {
        ctx.snapshot_queue.add(s.metadata.id);
    }
    Ok(())
}

pub(crate) async fn on_image_event(ctx: &Ctx, ev: WatchEvent<Image>) {
    let (img, gone) = match ev {
        WatchEvent::Resync => {
            ctx.lists_owed.fetch_add(1, Ordering::SeqCst);
            until_listed(ctx, "re-list of images", || enqueue_all_images(ctx)).await;
            ctx.lists_owed.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        WatchEvent::Created(i) | WatchEvent::Updated(i) => (i, false),
        WatchEvent::Deleted(i) => (i, true),
    };
    // A re-homed snapshot image makes progress: the deletion of its volume may continue.
    if let Some(parent) = img.metadata.labels.get(REHOME_OF_LABEL) {
        ctx.image_queue.add(parent.clone());
    }
    // The snapshot it is restored from, when this image stops needing it (got its data, failed
    // or goes away): a deletion waiting for this restore may continue, and an OS snapshot may
    // have lost its last user. Progress writes of a running copy wake nobody.
    if let Some(sid) = &img.spec.snapshot_ref {
        let settled = matches!(img.status.state, ImageState::Available | ImageState::Error);
        if gone || settled || img.metadata.is_deleted() {
            ctx.snapshot_queue.add(sid.clone());
        }
    }
    ctx.image_queue.add(img.metadata.id);
}

async fn on_snapshot_event(ctx: &Ctx, ev: WatchEvent<Snapshot>) {
    let (snap, gone) = match ev {
        WatchEvent::Resync => {
            ctx.lists_owed.fetch_add(1, Ordering::SeqCst);
            until_listed(ctx, "re-list of snapshots", || enqueue_all_snapshots(ctx)).await;
            ctx.lists_owed.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        WatchEvent::Created(s) | WatchEvent::Updated(s) => (s, false),
        WatchEvent::Deleted(s) => (s, true),
    };
    let settled = matches!(
        snap.status.state,
        SnapshotState::Ready | SnapshotState::Populated | SnapshotState::Failed
    );
    if gone || settled || snap.metadata.is_deleted() {
        wake_dependents(ctx, &snap.metadata.id).await;
    }
    let volume = &snap.source.volume_image_id;
    if gone && !volume.is_empty() {
        // A retained volume waits for its last snapshot to go.
        ctx.image_queue.add(volume.clone());
    }
    if !volume.is_empty() && (gone || settled) {
        // A restore is flattened before it is snapshotted: the snapshot it was restored from
        // may have lost its last clone (a retained snapshot waits for that), whether the new
        // snapshot then became ready, failed or was deleted before either.
        wake_restored_from(ctx, volume).await;
    }
    if !gone {
        ctx.snapshot_queue.add(snap.metadata.id);
    }
}

/// Enqueues the images cloned (or waiting to be cloned) from snapshot `id`.
async fn wake_dependents(ctx: &Ctx, id: &str) {
    let opts = ListOptions::default().field(FIELD_SNAPSHOT_REF, id);
    for attempt in 1..=3 {
        match ctx.images.list(&opts).await {
            Ok(images) => {
                for img in images {
                    ctx.image_queue.add(img.metadata.id);
                }
                return;
            }
            // The periodic resync catches up if every attempt fails.
            Err(e) => warn!(snapshot = id, attempt, error = %e, "listing dependent images failed"),
        }
    }
}

/// Enqueues the snapshot that volume `id` was restored from, if any.
async fn wake_restored_from(ctx: &Ctx, id: &str) {
    match ctx.images.get(id).await {
        Ok(img) => {
            if let Some(sid) = img.spec.snapshot_ref {
                ctx.snapshot_queue.add(sid);
            }
        }
        Err(store::StoreError::NotFound(_)) => {}
        // The periodic resync catches up.
        Err(e) => warn!(image = id, error = %e, "reading a snapshot's source volume failed"),
    }
}

fn on_completion(ctx: &Ctx, done: Completion) {
    let (queue, id) = if let Some(id) = done.key.strip_prefix("image:") {
        (&ctx.image_queue, id)
    } else if let Some(id) = done.key.strip_prefix("snapshot:") {
        (&ctx.snapshot_queue, id)
    } else {
        return;
    };
    match &done.outcome {
        Outcome::Ok | Outcome::Cancelled => {
            debug!(key = %done.key, outcome = ?done.outcome, "operation ended");
            queue.add(id.to_string());
        }
        Outcome::Failed(reason) => {
            let delay = queue.add_rate_limited(id.to_string());
            ctx.close_gate(&done.key, delay);
            warn!(key = %done.key, reason, retry_in = ?delay, "operation failed");
        }
    }
}
