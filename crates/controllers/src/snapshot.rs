//! The snapshot reconciler: one stored [`Snapshot`] ↔ one protected rbd snapshot. OS-image
//! snapshots (id = manifest digest) live on `snap_<id>@v1`, volume snapshots on
//! `img_<volumeImageId>@<id>` (see `locate.rs`). The long steps (populate, flatten) run on the
//! runner under the key `snapshot:<id>`. It never changes an Image's state except deleting the
//! internal re-homed image of a deleted snapshot, and does not depend on the image reconciler.
//!
//! # States (`status.state`) and transitions
//!
//! | From | Condition | To / effect |
//! |---|---|---|
//! | any | `deletedAt` set | deletion path (table below) |
//! | any | finalizer `snapshot` missing | finalizer added, pass continues |
//! | `Pending` | OS source | `Populating`, op "populate" (class `populate`) submitted |
//! | `Pending` | volume source whose image is still a clone of another volume's snapshot | op "flatten source" (`snapshot:<id>`, class `flatten`, on the runner, stall watchdog) flattens it first; stays `Pending` |
//! | `Pending` | volume source, rbd snapshot created (or already there from an interrupted earlier pass) and protected | `Ready` (`status.size` = the rbd snapshot's size) |
//! | `Pending` | volume source missing, deleted without the rbd snapshot, not `Available`, or its rbd image vanished | `Failed` + message |
//! | `Pending` | no source | `Failed` ("snapshot source is not present") |
//! | `Populating` | (pass) | op "populate" (re)submitted: a restart resumes here; the runner deduplicates |
//! | `Populating` | (op "populate", on the runner) `snap_<id>@v1` already exists (an earlier run finished) | `Ready` |
//! | `Populating` | (op) otherwise | partial `snap_<id>` removed; rootfs opened (within `resolve_timeout`); `snap_<id>` of `round(size)` created; stream written (`queue_depth`, `chunk_size` = populator buffer, zero chunks skipped, `status.progress` ≈ 1/s, stall watchdog; the registry client bounds the wait for each chunk); `v1` created + protected → `Ready` with `status.digest`, `status.size` |
//! | `Populating` | (op) retryable error (registry unavailable or too slow, digest mismatch, transient rbd error, stalled copy) | partial image removed, `status.message` set, op fails → retried with backoff (the runner slot is released meanwhile) |
//! | `Populating` | (op) terminal error (not found, no rootfs, malformed, data larger than declared …) | partial image removed, `Failed` + message |
//! | `Populated` | legacy | `Ready` |
//! | `Ready` | rbd snapshot present | protected if needed; stays `Ready` |
//! | `Ready` | rbd snapshot vanished | `Failed` + message |
//! | `Failed` | — | terminal (only deletion) |
//! | `Flattening`, `Flattened`, unknown | without `deletedAt` (cannot happen through this reconciler) | `Failed` + message |
//!
//! # Deletion path (`deletedAt` set)
//!
//! | From | Condition | To / effect |
//! |---|---|---|
//! | any | finalizer missing | nothing |
//! | not `Flattening`/`Flattened` | an operation (populate) is queued or running | it is cancelled (the populate removes its partial image); the pass waits for the completion |
//! | not `Flattened` | — | `Flattening`, op "flatten" (class `flatten`) submitted: lists the children of the rbd snapshot (within `list_children_timeout`) and flattens them (`status.progress` = children done/total, stall watchdog) → `Flattened` |
//! | `Flattened` | a new child appeared meanwhile (unprotect refused) | `Flattening` again |
//! | `Flattened` | — | cleanup: rbd snapshot unprotected and removed; OS snapshot → `snap_<id>` removed; an internal re-homed image `<id>` is deleted; **then** the finalizer is dropped (the object vanishes) |

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use rbd::{ByteStream, RbdError, WriteOptions};
use store::keys::{ARCHITECTURE_LABEL, INTERNAL_LABEL, SNAPSHOT_FINALIZER};
use store::{Snapshot, SnapshotState};
use tracing::{debug, info, warn};

use crate::ctx::{get_opt, ignore_exists, ignore_not_found, modify, Action, Ctx, OpEnv};
use crate::flatten::flatten_all;
use crate::status::{mark_snapshot_failed, persist_progress};
use crate::{
    os_image_name, round_size, snapshot_key, source_details, volume_image_name, ControllerError,
    OpClass, Result, OS_SNAPSHOT_NAME,
};

fn is_os(snap: &Snapshot) -> bool {
    !snap.source.ironcore_image.is_empty()
}

/// One reconcile pass of snapshot `id`.
pub(crate) async fn reconcile(ctx: &Arc<Ctx>, id: &str) -> Result<Action> {
    let Some(mut snap) = get_opt(&ctx.snapshots, id).await? else {
        return Ok(Action::Done);
    };
    if snap.metadata.is_deleted() {
        return delete(ctx, snap).await;
    }
    if snap.metadata.add_finalizer(SNAPSHOT_FINALIZER) {
        snap = ctx.snapshots.update(&snap).await?;
    }
    match snap.status.state.clone() {
        SnapshotState::Failed => Ok(Action::Done),
        SnapshotState::Populated => {
            snap.status.state = SnapshotState::Ready;
            ctx.snapshots.update(&snap).await?;
            Ok(Action::Done)
        }
        SnapshotState::Ready => verify_ready(ctx, snap).await,
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
            mark_snapshot_failed(ctx, id, "snapshot source is not present").await?;
            Ok(Action::Done)
        }
        other => {
            mark_snapshot_failed(
                ctx,
                id,
                &format!("unexpected state {other} of a live snapshot"),
            )
            .await?;
            Ok(Action::Done)
        }
    }
}

/// A `Ready` snapshot: its rbd snapshot must still exist and be protected.
async fn verify_ready(ctx: &Ctx, snap: Snapshot) -> Result<Action> {
    let Some((parent, psnap)) = source_details(&snap) else {
        mark_snapshot_failed(ctx, &snap.metadata.id, "snapshot source is not present").await?;
        return Ok(Action::Done);
    };
    match ctx.backend.is_snapshot_protected(&parent, &psnap).await {
        Ok(true) => {}
        Ok(false) => ctx.backend.protect_snapshot(&parent, &psnap).await?,
        Err(RbdError::NotFound(_)) => {
            let msg = format!("rbd snapshot {parent}@{psnap} vanished");
            mark_snapshot_failed(ctx, &snap.metadata.id, &msg).await?;
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
        if let Some(msg) = refuse {
            mark_snapshot_failed(ctx, &id, &msg).await?;
            return Ok(Action::Done);
        }
        let parent = match ctx.backend.stat(&image).await {
            Ok(info) => info.parent,
            Err(RbdError::NotFound(_)) => {
                mark_snapshot_failed(ctx, &id, &format!("rbd image {image} vanished")).await?;
                return Ok(Action::Done);
            }
            Err(e) => return Err(e.into()),
        };
        if parent.is_some_and(|p| p.image.starts_with("img_")) {
            // A snapshot of an unflattened restore would tie the restore's source volume to
            // this snapshot for good (a flatten never detaches snapshots): flatten it first.
            return start_flatten_source(ctx, &id).await;
        }
        match ignore_exists(ctx.backend.create_snapshot(&image, &id).await) {
            Ok(()) => {}
            Err(RbdError::NotFound(_)) => {
                mark_snapshot_failed(ctx, &id, &format!("rbd image {image} vanished")).await?;
                return Ok(Action::Done);
            }
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
    snap.status.state = SnapshotState::Ready;
    snap.status.size = i64::try_from(size).unwrap_or(i64::MAX);
    snap.status.message = String::new();
    ctx.snapshots.update(&snap).await?;
    info!(snapshot = %id, volume = %vid, "volume snapshot ready");
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
    let out = ctx
        .drive(work, &cell, &token, |d, t| {
            let ctx = ctx.clone();
            let id = id.clone();
            async move { persist_progress(&ctx.snapshots, &id, d, t).await }
        })
        .await;
    match out {
        Ok(Ok(())) | Ok(Err(RbdError::NotFound(_))) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ControllerError::Op {
            key: snapshot_key(&id),
            reason: "flatten made no progress and was cancelled".into(),
        }),
    }
}

async fn start_populate(ctx: &Arc<Ctx>, id: &str) -> Result<Action> {
    let owned = id.to_string();
    ctx.start_op(
        OpClass::Populate,
        snapshot_key(id),
        move |ctx, env| async move { populate(ctx, owned, env).await },
    )
    .await
}

/// Re-reads the snapshot and tells whether the populate still applies to it.
async fn populate_applies(ctx: &Ctx, id: &str) -> Result<Option<Snapshot>> {
    Ok(get_opt(&ctx.snapshots, id).await?.filter(|s| {
        !s.metadata.is_deleted() && s.status.state == SnapshotState::Populating && is_os(s)
    }))
}

/// Sets `Ready` with digest and size if the populate still applies.
async fn mark_populated(ctx: &Ctx, id: &str, size: u64) -> Result<()> {
    modify(&ctx.snapshots, id, |s: &mut Snapshot| {
        if s.metadata.is_deleted() || s.status.state != SnapshotState::Populating {
            return false;
        }
        s.status.state = SnapshotState::Ready;
        s.status.digest = s.metadata.id.clone();
        s.status.size = i64::try_from(size).unwrap_or(i64::MAX);
        s.status.progress = None;
        s.status.message = String::new();
        true
    })
    .await?;
    info!(snapshot = id, size, "OS image populated");
    Ok(())
}

/// Records why the last attempt failed (retryable failures; the state stays `Populating`).
async fn note_retry(ctx: &Ctx, id: &str, message: &str) {
    let res = modify(&ctx.snapshots, id, |s: &mut Snapshot| {
        if s.metadata.is_deleted() || s.status.state != SnapshotState::Populating {
            return false;
        }
        s.status.message = format!("retrying: {message}");
        true
    })
    .await;
    if let Err(e) = res {
        debug!(snapshot = id, error = %e, "retry note not recorded");
    }
}

/// Op "populate" (`snapshot:<id>`): writes the OS image's rootfs into `snap_<id>` and snapshots it
/// as `v1`. A retryable failure fails the op (the runner completion retries it with backoff)
/// instead of retrying inside the runner slot.
pub(crate) async fn populate(ctx: Arc<Ctx>, id: String, env: OpEnv) -> Result<()> {
    let Some(snap) = populate_applies(&ctx, &id).await? else {
        return Ok(());
    };
    let name = os_image_name(&id);
    // A finished earlier run (v1 exists only after a complete, verified copy).
    match ctx
        .backend
        .is_snapshot_protected(&name, OS_SNAPSHOT_NAME)
        .await
    {
        Ok(protected) => {
            if !protected {
                ctx.backend
                    .protect_snapshot(&name, OS_SNAPSHOT_NAME)
                    .await?;
            }
            let size = ctx.backend.stat(&name).await?.size;
            return mark_populated(&ctx, &id, size).await;
        }
        Err(RbdError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    // Whatever is left of an interrupted run goes first.
    remove_os_image(&ctx, &name).await?;
    let arch = snap.metadata.labels.get(ARCHITECTURE_LABEL).cloned();
    let rootfs = match ctx
        .open_rootfs(&snap.source.ironcore_image, arch.as_deref(), &env.token)
        .await?
    {
        Ok(r) => r,
        Err(e) if e.is_retryable() => {
            note_retry(&ctx, &id, &e.to_string()).await;
            return Err(e.into());
        }
        Err(e) => {
            mark_snapshot_failed(
                &ctx,
                &id,
                &format!("opening {}: {e}", snap.source.ironcore_image),
            )
            .await?;
            return Ok(());
        }
    };
    if rootfs.manifest_digest != id {
        let msg = format!(
            "registry served manifest {} for {id}",
            rootfs.manifest_digest
        );
        mark_snapshot_failed(&ctx, &id, &msg).await?;
        return Ok(());
    }
    let size = round_size(rootfs.size);
    ctx.backend.create_image(&name, size).await?;
    // Remember a stream error (e.g. the digest check at its end) to classify the write failure.
    let stream_error: Arc<Mutex<Option<std::io::Error>>> = Arc::default();
    let slot = stream_error.clone();
    let data: ByteStream = Box::pin(rootfs.data.map(move |item| {
        if let Err(e) = &item {
            if let Ok(mut s) = slot.lock() {
                *s = Some(std::io::Error::new(e.kind(), e.to_string()));
            }
        }
        item
    }));
    let opts = WriteOptions {
        chunk_size: ctx.cfg.chunk_size(),
        queue_depth: ctx.cfg.populate_queue_depth.max(1),
        skip_zeroes: true,
        total_hint: rootfs.size,
        passphrase: None,
    };
    let (cell, progress) = env.tracker();
    let token = env.token.child_token();
    let write = ctx
        .backend
        .write_stream(&name, data, opts, progress, token.clone());
    let written = ctx
        .drive(write, &cell, &token, |d, t| {
            let ctx = ctx.clone();
            let id = id.clone();
            async move { persist_progress(&ctx.snapshots, &id, d, t).await }
        })
        .await;
    let failure = match written {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some(RbdError::Transient(
            "no progress; copy cancelled by the watchdog".into(),
        )),
    };
    if let Some(e) = failure {
        // Never leave a half-written base image behind.
        if let Err(re) = remove_os_image(&ctx, &name).await {
            warn!(snapshot = %id, error = %re, "removing the partial image failed");
        }
        let stream_err = stream_error.lock().ok().and_then(|mut s| s.take());
        return match (e, stream_err) {
            (RbdError::Cancelled, _) => Err(RbdError::Cancelled.into()),
            (_, Some(se)) => {
                // Download or digest failure: the next download may be intact.
                let msg = format!("reading {}: {se}", snap.source.ironcore_image);
                note_retry(&ctx, &id, &msg).await;
                Err(ControllerError::Op {
                    key: snapshot_key(&id),
                    reason: msg,
                })
            }
            (e, None) if e.is_retryable() => {
                note_retry(&ctx, &id, &e.to_string()).await;
                Err(e.into())
            }
            (e, None) => {
                mark_snapshot_failed(&ctx, &id, &format!("writing {name}: {e}")).await?;
                Ok(())
            }
        };
    }
    ignore_exists(ctx.backend.create_snapshot(&name, OS_SNAPSHOT_NAME).await)?;
    ctx.backend
        .protect_snapshot(&name, OS_SNAPSHOT_NAME)
        .await?;
    mark_populated(&ctx, &id, size).await
}

/// Removes `snap_<id>` and its `v1` (not-found ignored).
async fn remove_os_image(ctx: &Ctx, name: &str) -> Result<()> {
    match ctx.backend.list_snapshots(name).await {
        Ok(snaps) => {
            for s in snaps {
                ignore_not_found(ctx.backend.unprotect_snapshot(name, &s.name).await)?;
                ignore_not_found(ctx.backend.remove_snapshot(name, &s.name).await)?;
            }
        }
        Err(RbdError::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    ignore_not_found(ctx.backend.remove_image(name).await)?;
    Ok(())
}

/// Deletion path (see the module docs).
async fn delete(ctx: &Arc<Ctx>, mut snap: Snapshot) -> Result<Action> {
    if !snap.metadata.has_finalizer(SNAPSHOT_FINALIZER) {
        return Ok(Action::Done);
    }
    let id = snap.metadata.id.clone();
    let key = snapshot_key(&id);
    let flattening = matches!(
        snap.status.state,
        SnapshotState::Flattening | SnapshotState::Flattened
    );
    if !flattening && ctx.op_active(&key) {
        ctx.cancel_op(&key);
        return Ok(Action::Wait);
    }
    if snap.status.state != SnapshotState::Flattened {
        if snap.status.state != SnapshotState::Flattening {
            snap.status.state = SnapshotState::Flattening;
            snap.status.progress = None;
            ctx.snapshots.update(&snap).await?;
        }
        let owned = id.clone();
        return ctx
            .start_op(OpClass::Flatten, key, move |ctx, env| async move {
                flatten(ctx, owned, env).await
            })
            .await;
    }
    // Cleanup.
    if let Some((parent, psnap)) = source_details(&snap) {
        match ctx.backend.unprotect_snapshot(&parent, &psnap).await {
            Ok(()) | Err(RbdError::NotFound(_)) => {}
            Err(RbdError::Busy(reason)) => {
                // A clone appeared after the flatten: flatten again.
                debug!(snapshot = %id, reason, "new children, flattening again");
                snap.status.state = SnapshotState::Flattening;
                ctx.snapshots.update(&snap).await?;
                return Ok(Action::Again);
            }
            Err(e) => return Err(e.into()),
        }
        ignore_not_found(ctx.backend.remove_snapshot(&parent, &psnap).await)?;
        if is_os(&snap) {
            remove_os_image(ctx, &parent).await?;
        }
    }
    // The internal image that held this snapshot after its volume was deleted.
    if let Some(img) = get_opt(&ctx.images, &id).await? {
        if img.metadata.labels.contains_key(INTERNAL_LABEL) && !img.metadata.is_deleted() {
            match ctx.images.delete(&id).await {
                Ok(()) | Err(store::StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    if snap.metadata.remove_finalizer(SNAPSHOT_FINALIZER) {
        match ctx.snapshots.update(&snap).await {
            Ok(_) | Err(store::StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    info!(snapshot = %id, "deleted");
    Ok(Action::Done)
}

/// Op "flatten" (`snapshot:<id>`, deletion path): flattens the children of the rbd snapshot →
/// `Flattened`.
async fn flatten(ctx: Arc<Ctx>, id: String, env: OpEnv) -> Result<()> {
    let Some(snap) = get_opt(&ctx.snapshots, &id).await? else {
        return Ok(());
    };
    if !snap.metadata.is_deleted() || snap.status.state != SnapshotState::Flattening {
        return Ok(());
    }
    if let Some((parent, psnap)) = source_details(&snap) {
        flatten_all(
            &ctx,
            &snapshot_key(&id),
            &parent,
            Some(&psnap),
            &env,
            |d, t| {
                let ctx = ctx.clone();
                let id = id.clone();
                async move { persist_progress(&ctx.snapshots, &id, d, t).await }
            },
        )
        .await?;
    }
    modify(&ctx.snapshots, &id, |s: &mut Snapshot| {
        if s.status.state != SnapshotState::Flattening {
            return false;
        }
        s.status.state = SnapshotState::Flattened;
        s.status.progress = None;
        true
    })
    .await?;
    Ok(())
}
