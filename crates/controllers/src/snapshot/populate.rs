//! The `Populating` state's op "populate" (`snapshot:<id>`, class `populate`, on the runner): an
//! OS image's rootfs written into `snap_<id>` and snapshotted as `v1` (rows `Populating` of the
//! state table in `mod.rs`). Also owns the removal of an OS base image (`snap_<id>` and its
//! `v1`), which the deletion path uses.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use rbd::{ByteStream, RbdError, WriteOptions};
use store::keys::ARCHITECTURE_LABEL;
use store::{Checkpoint, Snapshot, SnapshotState};
use tracing::{debug, info, warn};

use super::{checkpoint, is_os};
use crate::ctx::{get_opt, ignore_exists, ignore_not_found, modify, Action, Ctx, OpEnv};
use crate::events::{action, reason};
use crate::report::{Audience, ProgressEvents, Unit};
use crate::status::{mark_snapshot_failed, persist_progress};
use crate::{
    os_image_name, round_size, snapshot_key, ControllerError, OpClass, Result, OS_SNAPSHOT_NAME,
};

pub(super) async fn start_populate(ctx: &Arc<Ctx>, id: &str) -> Result<Action> {
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
        s.status.checkpoint = None;
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

/// Records (or, with `None`, clears) the checkpoint of a populate that still applies.
async fn set_checkpoint(ctx: &Ctx, id: &str, cp: Option<Checkpoint>) -> Result<()> {
    modify(&ctx.snapshots, id, |s: &mut Snapshot| {
        if s.metadata.is_deleted()
            || s.status.state != SnapshotState::Populating
            || s.status.checkpoint == cp
        {
            return false;
        }
        s.status.checkpoint = cp;
        true
    })
    .await?;
    Ok(())
}

/// The checkpoint of an interrupted run whose image is still there to continue, with the image
/// size. `None`: start from the beginning.
async fn resumable(ctx: &Ctx, snap: &Snapshot, name: &str) -> Result<Option<(Checkpoint, u64)>> {
    let Some(cp) = snap.status.checkpoint.filter(|c| c.done > 0) else {
        return Ok(None);
    };
    match ctx.backend.stat(name).await {
        Ok(info) if info.snapshots.is_empty() && info.parent.is_none() => Ok(Some((cp, info.size))),
        // Not there, not ours to continue, or half-removed (`Busy`: the removal below finishes it).
        Ok(_) | Err(RbdError::NotFound(_) | RbdError::Busy(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Op "populate" (`snapshot:<id>`): writes the OS image's rootfs into `snap_<id>` and snapshots it
/// as `v1`. A retryable failure fails the op (the runner completion retries it with backoff)
/// instead of retrying inside the runner slot.
///
/// **Resuming.** While it writes, the op keeps a checkpoint in the snapshot's status
/// (`checkpoint.rs`). An interrupted run (crash, stall, cancellation, broken download, cluster
/// hiccup) keeps its partial image, and the next run continues at the checkpoint: it asks the
/// source for the rest of the layer (an HTTP `Range` request) and hands it the image's first
/// `done` bytes to re-hash, so the digest is verified over the whole layer. A source that answers
/// with the whole layer gets it written from the start over the same image. A corrupt download
/// (wrong digest or size) or an image that does not match the checkpoint starts over from an
/// empty image.
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
    let resume = resumable(&ctx, &snap, &name).await?;
    if resume.is_none() {
        // Whatever is left of an interrupted run goes first.
        set_checkpoint(&ctx, &id, None).await?;
        remove_os_image(&ctx, &name).await?;
    }
    let arch = snap.metadata.labels.get(ARCHITECTURE_LABEL).cloned();
    let reference = &snap.source.ironcore_image;
    let opened = match resume {
        Some((cp, _)) => {
            let image = ctx
                .backend
                .read_stream(&name, None, ctx.cfg.chunk_size())
                .await?;
            let prefix = checkpoint::first_bytes(image, cp.done);
            ctx.open_rootfs_from(reference, arch.as_deref(), cp.done, prefix, &env.token)
                .await?
        }
        None => {
            ctx.open_rootfs(reference, arch.as_deref(), &env.token)
                .await?
        }
    };
    let rootfs = match opened {
        Ok(r) => r,
        Err(e) if e.is_retryable() => {
            note_retry(&ctx, &id, &e.to_string()).await;
            return Err(e.into());
        }
        Err(e) => {
            mark_snapshot_failed(&ctx, &id, None, &format!("opening {reference}: {e}")).await?;
            return Ok(());
        }
    };
    if rootfs.manifest_digest != id {
        let msg = format!(
            "registry served manifest {} for {id}",
            rootfs.manifest_digest
        );
        mark_snapshot_failed(&ctx, &id, None, &msg).await?;
        return Ok(());
    }
    let size = round_size(rootfs.size);
    // Where the stream starts, what the store already promises, and below which offset the
    // image may hold bytes of the interrupted run.
    let (saved, dirty_until) = match resume {
        Some((cp, image_size)) if image_size == size && cp.done < rootfs.size => {
            if rootfs.start == 0 {
                info!(snapshot = %id, done = cp.done, "the source sent the whole layer again: writing it from the start");
            } else {
                info!(snapshot = %id, done = cp.done, size = rootfs.size, "resuming the populate at its checkpoint");
            }
            let saved = Checkpoint {
                done: rootfs.start,
                reach: cp.reach,
            };
            (saved, cp.reach)
        }
        Some(_) => {
            drop(rootfs);
            set_checkpoint(&ctx, &id, None).await?;
            remove_os_image(&ctx, &name).await?;
            let msg = format!("the image {name} does not match the checkpoint of the interrupted populate; starting over");
            note_retry(&ctx, &id, &msg).await;
            return Err(ControllerError::Op {
                key: snapshot_key(&id),
                reason: msg,
            });
        }
        None => {
            ctx.backend.create_image(&name, size).await?;
            (Checkpoint { done: 0, reach: 0 }, 0)
        }
    };
    let (cell, progress) = env.tracker();
    let token = env.token.child_token();
    let watermark = {
        let cell = cell.clone();
        move || cell.get().0
    };
    let save: checkpoint::SaveFn = {
        let (ctx, id) = (ctx.clone(), id.clone());
        Box::new(move |cp| {
            let (ctx, id) = (ctx.clone(), id.clone());
            Box::pin(async move { set_checkpoint(&ctx, &id, Some(cp)).await })
        })
    };
    let spacing =
        checkpoint::Spacing::for_writes(ctx.cfg.chunk_size(), ctx.cfg.populate_queue_depth);
    let gated = checkpoint::gate(rootfs.data, saved, watermark, spacing, save);
    // Remember a stream error (e.g. the digest check at its end) to classify the write failure.
    let stream_error: Arc<Mutex<Option<std::io::Error>>> = Arc::default();
    let slot = stream_error.clone();
    let data: ByteStream = Box::pin(gated.map(move |item| {
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
        start: rootfs.start,
        dirty_until,
        total_hint: rootfs.size,
        passphrase: None,
    };
    let write = ctx
        .backend
        .write_stream(&name, data, opts, progress, token.clone());
    let mut report = ProgressEvents::new(
        Audience::VolumesOf(id.clone()),
        (reason::POPULATE_PROGRESS, reason::POPULATE_COMPLETED),
        action::PULL_IMAGE,
        ("populating OS image", "populated OS image:"),
        Unit::Bytes,
    );
    if rootfs.start > 0 {
        report.resumed(&ctx, rootfs.start, rootfs.size).await;
    }
    let written = ctx
        .drive(
            write,
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
    let failure = match written {
        Ok(Ok(_)) => {
            report.finish(&ctx, cell.get().1.max(rootfs.size)).await;
            None
        }
        Ok(Err(e)) => Some(e),
        Err(_) => Some(RbdError::Transient(
            "no progress; copy cancelled by the watchdog".into(),
        )),
    };
    if let Some(e) = failure {
        let stream_err = stream_error.lock().ok().and_then(|mut s| s.take());
        return populate_failed(&ctx, &id, &name, reference, e, stream_err).await;
    }
    ignore_exists(ctx.backend.create_snapshot(&name, OS_SNAPSHOT_NAME).await)?;
    ctx.backend
        .protect_snapshot(&name, OS_SNAPSHOT_NAME)
        .await?;
    mark_populated(&ctx, &id, size).await
}

/// After a failed write: keeps the partial image and its checkpoint when the next run can
/// continue from them, removes them when it must start over (corrupt download) or give up.
async fn populate_failed(
    ctx: &Ctx,
    id: &str,
    name: &str,
    reference: &str,
    e: RbdError,
    stream_err: Option<std::io::Error>,
) -> Result<()> {
    let start_over = || async {
        if let Err(e) = set_checkpoint(ctx, id, None).await {
            warn!(snapshot = %id, error = %e, "clearing the checkpoint failed");
        }
        if let Err(re) = remove_os_image(ctx, name).await {
            warn!(snapshot = %id, error = %re, "removing the partial image failed");
        }
    };
    match (e, stream_err) {
        // Shutdown or cancellation: the next run continues at the checkpoint.
        (RbdError::Cancelled, _) => Err(RbdError::Cancelled.into()),
        (_, Some(se)) => {
            let msg = format!("reading {reference}: {se}");
            if se.kind() == std::io::ErrorKind::InvalidData {
                // Wrong digest or size: nothing written can be trusted.
                start_over().await;
            }
            note_retry(ctx, id, &msg).await;
            Err(ControllerError::Op {
                key: snapshot_key(id),
                reason: msg,
            })
        }
        (e, None) if e.is_retryable() => {
            note_retry(ctx, id, &e.to_string()).await;
            Err(e.into())
        }
        (e, None) => {
            start_over().await;
            mark_snapshot_failed(ctx, id, None, &format!("writing {name}: {e}")).await?;
            Ok(())
        }
    }
}

/// Removes `snap_<id>` and its `v1` (not-found ignored).
pub(super) async fn remove_os_image(ctx: &Ctx, name: &str) -> Result<()> {
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
