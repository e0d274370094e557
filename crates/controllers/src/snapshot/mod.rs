//! The snapshot reconciler: one stored [`Snapshot`] ↔ one protected rbd snapshot. OS-image
//! snapshots (id = manifest digest) live on `snap_<id>@v1`, volume snapshots on
//! `img_<volumeImageId>@<id>` (see `locate.rs`). The long steps (populate, flatten) run on the
//! runner under the key `snapshot:<id>`. It never changes an Image's state except deleting the
//! image `<id>` that held a re-homed snapshot, and does not depend on the image reconciler.
//!
//! # Files
//! * `mod.rs` (this file): the pass dispatcher, `Ready` checks, volume snapshots, the state tables.
//! * `populate.rs`: the op "populate" of an OS-image snapshot.
//! * `os.rs`: the life of OS-image snapshots after their populate: retrying a `Failed` one that
//!   volumes wait for, and removing one that no volume references any more.
//! * `delete.rs`: the deletion path and its op "flatten".
//!
//! # States (`status.state`) and transitions
//!
//! | From | Condition | To / effect |
//! |---|---|---|
//! | any | `deletedAt` set | deletion path (table below) |
//! | any | finalizer `snapshot` missing | finalizer added, pass continues |
//! | `Pending` | OS source | `Populating`, op "populate" (class `populate`) submitted |
//! | `Pending` | volume source whose image is still a clone of another volume's snapshot | op "flatten source" (`snapshot:<id>`, class `flatten`, on the runner, stall watchdog) flattens it first; stays `Pending` |
//! | `Pending` | volume source, rbd snapshot created (or already there from an interrupted earlier pass) and protected | `Ready` (`status.size` = the rbd snapshot's size minus the source volume's `headerSize`: the size a guest of the volume saw) |
//! | `Pending` | volume source missing, deleted without the rbd snapshot, not `Available`, or its rbd image definitely gone | `Failed` + message |
//! | `Pending` | no source | `Failed` ("snapshot source is not present") |
//! | `Populating` | (pass) | op "populate" (re)submitted: a restart resumes here; the runner deduplicates |
//! | `Populating` | (op "populate", on the runner) `snap_<id>@v1` already exists (an earlier run finished) | `Ready` |
//! | `Populating` | (op) otherwise | with a checkpoint (`status.checkpoint`) and its partial `snap_<id>`: the rest of the rootfs opened from `done` (HTTP `Range`; the image's first `done` bytes re-hashed, so the digest covers the whole layer; a source that sends the whole layer gets it written from 0 over the same image); else the partial `snap_<id>` removed, the rootfs opened (within `resolve_timeout`) and `snap_<id>` of `round(size)` created; stream written (`queue_depth`, `chunk_size` = populator buffer, zero chunks skipped except below the checkpoint's `reach`, a checkpoint saved per chunk of progress before the stream runs past its `reach`, `status.progress` ≈ 1/s, stall watchdog; the registry client bounds the wait for each chunk); `v1` created + protected → `Ready` with `status.digest`, `status.size`, checkpoint cleared |
//! | `Populating` | (op) retryable error (registry unavailable or too slow, broken download, transient rbd error, stalled copy, cancellation) | partial image and checkpoint kept (the next run continues there), `status.message` set, op fails → retried with backoff (the runner slot is released meanwhile); a digest or size mismatch also retries, but removes the partial image and the checkpoint first |
//! | `Populating` | (op) terminal error (not found, no rootfs, malformed, data larger than declared, pool full …) | partial image and checkpoint removed, `Failed` + message + Warning `SnapshotFailed` |
//! | `Populated` | legacy | `Ready` |
//! | `Ready` | rbd snapshot present | protected if needed; stays `Ready` |
//! | `Ready` | rbd snapshot definitely gone (its image's snapshot list or the pool's image list says so; a `NotFound` still listed is retried) | `Failed` + message, unless the snapshot moved meanwhile (re-homed: the failure is written only while the snapshot still points where the pass looked) |
//! | `Ready` (OS) | no image references it (`spec.snapshotRef`, deleted images included) for `os_image_gc_grace` (default 24 h; 0: never) | deleted (the deletion path below removes `snap_<id>`); requeued at the end of the grace period meanwhile |
//! | `Failed` (OS) | images reference it | after `os_image_retry` (default 10 min) since it was seen failed: `Pending` (populated again; the waiting volumes follow it) |
//! | `Failed` (OS) | no image references it | as `Ready` (OS): deleted after the grace period |
//! | `Failed` (volume snapshot) | — | terminal (only deletion) |
//! | `Flattening`, `Flattened`, `Retained`, unknown | without `deletedAt` (cannot happen through this reconciler) | `Failed` + message |
//!
//! An OS snapshot still `Pending`/`Populating` whose last waiting volume is deleted is deleted by
//! that volume's deletion path (its populate is cancelled below).
//!
//! # Deletion path (`deletedAt` set)
//!
//! The first three rows hold under both deletion policies (see the crate docs, *Deletion
//! policies*); then a volume snapshot under the `deferred` policy takes the `deferred` rows, every
//! other snapshot (any under `flatten`, OS-image snapshots under both) the rows after them.
//!
//! | From | Condition | To / effect |
//! |---|---|---|
//! | any | finalizer missing | nothing |
//! | not `Flattening`/`Flattened` | an operation (populate) is queued or running | it is cancelled (a populate keeps its partial image, which the deletion removes with the OS image); the pass waits for the completion |
//! | `Ready` or `Retained` (not yet `Flattening`) | a restore (not internal, not an OS volume, not deleted) that references it has not got its data yet (`Pending` without its rbd image, or `Filling`) | kept: `status.message` names the restores; the restores' changes requeue it (a `Retained` snapshot's rbd snapshot is intact and protected, so such a restore clones or copies it like a `Ready` one) |
//! | any (`deferred`) | an internal re-home image `<id>` (made by a flatten-policy deletion of its volume) exists and the snapshot was not moved onto it | that image is deleted (its own reconciler removes `img_<id>`, which wakes the snapshot) |
//! | any (`deferred`) | the rbd snapshot has clones (listed within `list_children_timeout`) | `Retained` (hidden: never listed, NOT_FOUND through IRI; `status.message` names the clones); nothing is copied. A clone that goes, or a clone flattened before it is snapshotted, wakes it |
//! | any (`deferred`) | no clone | cleanup at once: rbd snapshot unprotected (refused: the pass fails and is retried with the key's failure backoff) and removed, then as the last cleanup row (re-home image, finalizer); the record going wakes the source volume (a `Retained` one may go now) |
//! | not `Flattened` | — | `Flattening` (also from `Retained`: a policy switch), op "flatten" (class `flatten`) submitted: lists the children of the rbd snapshot (within `list_children_timeout`) and flattens them (`status.progress` = children done/total, stall watchdog) → `Flattened` |
//! | `Flattened` | unprotect refused (`Busy`: a child appeared meanwhile, or children the flatten cannot reach, e.g. in the rbd trash) | `Flattening` again, `status.message` says why, and the pass fails: retried with the key's failure backoff (up to `max_backoff`), never in a tight loop |
//! | `Flattened` | — | cleanup: rbd snapshot unprotected and removed; OS snapshot → `snap_<id>` removed; the image `<id>` that held it after its volume was deleted (by the parent-name rule: the snapshot lives on `img_<id>`; or labelled internal) is deleted — its record if there is one, else the rbd image `img_<id>` itself (re-homed by the Go provider, no record); **then** the finalizer is dropped (the object vanishes) |

use std::sync::Arc;

use rbd::RbdError;
use store::keys::SNAPSHOT_FINALIZER;
use store::{Snapshot, SnapshotState};
use tracing::info;

use crate::ctx::{get_opt, ignore_exists, Action, Ctx, OpEnv};
use crate::events::{action, reason};
use crate::report::{Audience, ProgressEvents, Unit};
use crate::status::{mark_snapshot_failed, persist_progress};
use crate::{snapshot_key, source_details, volume_image_name, ControllerError, OpClass, Result};

mod checkpoint;
mod delete;
mod os;
pub(crate) mod populate;

use populate::start_populate;

fn is_os(snap: &Snapshot) -> bool {
    !snap.source.ironcore_image.is_empty()
}

/// One reconcile pass of snapshot `id`.
pub(crate) async fn reconcile(ctx: &Arc<Ctx>, id: &str) -> Result<Action> {
    let Some(mut snap) = get_opt(&ctx.snapshots, id).await? else {
        ctx.forget(id);
        return Ok(Action::Done);
    };
    if snap.metadata.is_deleted() {
        return delete::delete(ctx, snap).await;
    }
    if snap.metadata.add_finalizer(SNAPSHOT_FINALIZER) {
        snap = ctx.snapshots.update(&snap).await?;
    }
    match snap.status.state.clone() {
        SnapshotState::Failed if is_os(&snap) => os::failed(ctx, &snap).await,
        SnapshotState::Failed => Ok(Action::Done),
        SnapshotState::Populated => {
            snap.status.state = SnapshotState::Ready;
            ctx.snapshots.update(&snap).await?;
            Ok(Action::Done)
        }
        SnapshotState::Ready => match verify_ready(ctx, &snap).await? {
            Action::Done if is_os(&snap) => os::collect(ctx, &snap).await,
            other => Ok(other),
        },
        SnapshotState::Populating if is_os(&snap) => start_populate(ctx, id).await,
        SnapshotState::Pending if is_os(&snap) => {
            snap.status.state = SnapshotState::Populating;
            snap.status.message = String::new();
            snap.status.progress = None;
            ctx.snapshots.update(&snap).await?;
            start_populate(ctx, id).await
        }
        SnapshotState::Pending if !snap.source.volume_image_id.is_empty() => {
            volume_snapshot(ctx, snap).await
        }
        SnapshotState::Pending => {
            mark_snapshot_failed(ctx, id, None, "snapshot source is not present").await?;
            Ok(Action::Done)
        }
        other => {
            mark_snapshot_failed(
                ctx,
                id,
                None,
                &format!("unexpected state {other} of a live snapshot"),
            )
            .await?;
            Ok(Action::Done)
        }
    }
}

/// A `Ready` snapshot: its rbd snapshot must still exist and be protected. "Gone" is concluded
/// only from a definite answer (see [`Ctx::snapshot_gone`]).
async fn verify_ready(ctx: &Ctx, snap: &Snapshot) -> Result<Action> {
    let id = &snap.metadata.id;
    let Some((parent, psnap)) = source_details(snap) else {
        mark_snapshot_failed(ctx, id, None, "snapshot source is not present").await?;
        return Ok(Action::Done);
    };
    match ctx.backend.is_snapshot_protected(&parent, &psnap).await {
        Ok(true) => {}
        Ok(false) => ctx.backend.protect_snapshot(&parent, &psnap).await?,
        Err(RbdError::NotFound(m)) => {
            if !ctx.snapshot_gone(&parent, &psnap).await? {
                return Err(RbdError::Transient(format!(
                    "{parent}@{psnap} answered not found ({m}) but is still listed"
                ))
                .into());
            }
            let msg = format!("rbd snapshot {parent}@{psnap} vanished");
            if !mark_snapshot_failed(ctx, id, Some((&parent, &psnap)), &msg).await? {
                return Ok(Action::Again);
            }
            return Ok(Action::Wait);
        }
        Err(e) => return Err(e.into()),
    }
    Ok(Action::Done)
}

/// A snapshot of a volume: creates and protects `img_<volumeImageId>@<id>` → `Ready`. Idempotent:
/// an rbd snapshot left by an interrupted earlier pass is taken over.
async fn volume_snapshot(ctx: &Arc<Ctx>, mut snap: Snapshot) -> Result<Action> {
    let id = snap.metadata.id.clone();
    let vid = snap.source.volume_image_id.clone();
    let image = volume_image_name(&vid);
    let exists = match ctx.backend.is_snapshot_protected(&image, &id).await {
        Ok(_) => true,
        Err(RbdError::NotFound(_)) => false,
        Err(e) => return Err(e.into()),
    };
    if !exists {
        let source = get_opt(&ctx.images, &vid).await?;
        let refuse = match &source {
            None => Some(format!("source volume {vid} not found")),
            Some(s) if s.metadata.is_deleted() => {
                Some(format!("source volume {vid} is being deleted"))
            }
            Some(s) if s.status.state != store::ImageState::Available => Some(format!(
                "source volume {vid} is not available ({})",
                s.status.state
            )),
            Some(_) => None,
        };
        let here = Some((image.as_str(), id.as_str()));
        if let Some(msg) = refuse {
            mark_snapshot_failed(ctx, &id, here, &msg).await?;
            return Ok(Action::Done);
        }
        let parent = match ctx.backend.stat(&image).await {
            Ok(info) => info.parent,
            Err(RbdError::NotFound(_)) => return image_vanished(ctx, &id, &image).await,
            Err(e) => return Err(e.into()),
        };
        if parent.is_some_and(|p| p.image.starts_with("img_")) {
            // A snapshot of an unflattened restore would tie the restore's source volume to
            // this snapshot for good (a flatten never detaches snapshots): flatten it first.
            return start_flatten_source(ctx, &id).await;
        }
        match ignore_exists(ctx.backend.create_snapshot(&image, &id).await) {
            Ok(()) => {}
            Err(RbdError::NotFound(_)) => return image_vanished(ctx, &id, &image).await,
            Err(e) => return Err(e.into()),
        }
    }
    ctx.backend.protect_snapshot(&image, &id).await?;
    let size = ctx
        .backend
        .list_snapshots(&image)
        .await?
        .into_iter()
        .find(|s| s.name == id)
        .map(|s| s.size)
        .unwrap_or(0);
    // The size the volume's guest saw: an encrypted volume's header on top is not part of it.
    let header = get_opt(&ctx.images, &vid)
        .await?
        .map_or(0, |v| v.status.header_size);
    snap.status.state = SnapshotState::Ready;
    snap.status.size = i64::try_from(size.saturating_sub(header)).unwrap_or(i64::MAX);
    snap.status.message = String::new();
    ctx.snapshots.update(&snap).await?;
    info!(snapshot = %id, volume = %vid, "volume snapshot ready");
    Ok(Action::Done)
}

/// The source volume's rbd image answered `NotFound` while snapshotting it: `Failed` once the
/// pool's image list confirms it is gone, else the pass is retried.
async fn image_vanished(ctx: &Ctx, id: &str, image: &str) -> Result<Action> {
    if !ctx.image_gone(image).await? {
        return Err(RbdError::Transient(format!(
            "{image} answered not found but the pool still lists it"
        ))
        .into());
    }
    let msg = format!("rbd image {image} vanished");
    mark_snapshot_failed(ctx, id, Some((image, id)), &msg).await?;
    Ok(Action::Done)
}

async fn start_flatten_source(ctx: &Arc<Ctx>, id: &str) -> Result<Action> {
    let owned = id.to_string();
    ctx.start_op(
        OpClass::Flatten,
        snapshot_key(id),
        move |ctx, env| async move { flatten_source(ctx, owned, env).await },
    )
    .await
}

/// Op "flatten source" (`snapshot:<id>`): flattens the volume a pending snapshot is taken of.
async fn flatten_source(ctx: Arc<Ctx>, id: String, env: OpEnv) -> Result<()> {
    let Some(snap) = get_opt(&ctx.snapshots, &id).await? else {
        return Ok(());
    };
    if snap.metadata.is_deleted() || snap.status.state != SnapshotState::Pending {
        return Ok(());
    }
    let image = volume_image_name(&snap.source.volume_image_id);
    let (cell, progress) = env.tracker();
    let token = env.token.child_token();
    let work = ctx.backend.flatten(&image, progress, token.clone());
    let mut report = ProgressEvents::new(
        Audience::Object(snap.metadata.clone()),
        (reason::FLATTEN_PROGRESS, reason::FLATTEN_COMPLETED),
        action::CREATE_SNAPSHOT,
        (
            "flattening the volume before taking the snapshot",
            "flattened the volume",
        ),
        Unit::Objects,
    );
    let out = ctx
        .drive(
            work,
            &cell,
            &token,
            |d, t| {
                let ctx = ctx.clone();
                let id = id.clone();
                async move { persist_progress(&ctx.snapshots, &id, d, t).await }
            },
            Some(&mut report),
        )
        .await;
    match out {
        Ok(Ok(())) => {
            report.finish(&ctx, cell.get().0).await;
            Ok(())
        }
        Ok(Err(RbdError::NotFound(_))) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ControllerError::Op {
            key: snapshot_key(&id),
            reason: "flatten made no progress and was cancelled".into(),
        }),
    }
}
