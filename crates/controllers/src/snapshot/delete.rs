//! The deletion path of a snapshot (`deletedAt` set; its table is in `mod.rs`), under both
//! deletion policies: `deferred` keeps a volume snapshot with clones `Retained` (hidden, rbd
//! snapshot kept) until its last clone is gone; `flatten` flattens the clones with the op
//! "flatten" (`snapshot:<id>`, class `flatten`, on the runner). OS-image snapshots always take
//! the flatten path.

use std::sync::Arc;

use rbd::{CancellationToken, RbdError};
use store::keys::{IMAGE_FINALIZER, INTERNAL_LABEL, SNAPSHOT_FINALIZER};
use store::{ImageState, ListOptions, Snapshot, SnapshotState, FIELD_SNAPSHOT_REF};
use tracing::{debug, info, warn};

use super::is_os;
use super::populate::remove_os_image;
use crate::ctx::{get_opt, ignore_not_found, modify, Action, Ctx, OpEnv};
use crate::events::{action, reason};
use crate::flatten::flatten_all;
use crate::report::{Audience, ProgressEvents, Unit};
use crate::status::persist_progress;
use crate::{snapshot_key, source_details, volume_image_name, DeletePolicy, OpClass, Result};

/// Deletion path (see the module docs).
pub(super) async fn delete(ctx: &Arc<Ctx>, mut snap: Snapshot) -> Result<Action> {
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
    // A retained snapshot still holds its data: restores accepted before its deletion (and not
    // cloned yet) get it from there, so it waits for them like a `Ready` one.
    if !flattening
        && matches!(
            snap.status.state,
            SnapshotState::Ready | SnapshotState::Populated | SnapshotState::Retained
        )
    {
        let waiting = pending_restores(ctx, &id).await?;
        if !waiting.is_empty() {
            let note = format!(
                "deletion waits until restore(s) {} have their data",
                waiting.join(", ")
            );
            if snap.status.message != note {
                snap.status.message = note;
                ctx.snapshots.update(&snap).await?;
            }
            debug!(snapshot = %id, ?waiting, "deletion waits for restores");
            return Ok(Action::Wait);
        }
    }
    if ctx.cfg.delete_policy == DeletePolicy::Deferred && !is_os(&snap) {
        return deferred(ctx, snap).await;
    }
    if snap.status.state != SnapshotState::Flattened {
        if snap.status.state != SnapshotState::Flattening {
            snap.status.state = SnapshotState::Flattening;
            snap.status.progress = None;
            snap.status.message = String::new();
            ctx.snapshots.update(&snap).await?;
        }
        let owned = id.clone();
        return ctx
            .start_op(OpClass::Flatten, key, move |ctx, env| async move {
                flatten(ctx, owned, env).await
            })
            .await;
    }
    cleanup(ctx, snap).await
}

/// Policy `deferred` for a volume snapshot: kept `Retained` while its rbd snapshot has clones
/// (other than an internal re-home image that was made for it and is deleted here), else cleaned
/// up at once. An unprotect refused after the listing showed no clone (a clone that appeared
/// meanwhile, or clones the listing cannot see, e.g. in the rbd trash) fails the pass: retried
/// with the key's failure backoff, never in a tight loop.
async fn deferred(ctx: &Arc<Ctx>, mut snap: Snapshot) -> Result<Action> {
    let id = snap.metadata.id.clone();
    let Some((parent, psnap)) = source_details(&snap) else {
        return finish(ctx, snap).await;
    };
    drop_unmoved_rehome_image(ctx, &snap).await?;
    let children = ctx
        .children_of(&parent, Some(&psnap), &CancellationToken::new())
        .await?;
    if !children.is_empty() {
        let names: Vec<&str> = children.iter().map(|c| c.image.as_str()).collect();
        let note = format!(
            "kept hidden until its clones are gone: {}",
            names.join(", ")
        );
        if snap.status.state != SnapshotState::Retained || snap.status.message != note {
            if snap.status.state != SnapshotState::Retained {
                info!(snapshot = %id, clones = ?names, "snapshot retained: hidden until its clones are gone");
            }
            snap.status.state = SnapshotState::Retained;
            snap.status.message = note;
            snap.status.progress = None;
            ctx.snapshots.update(&snap).await?;
        }
        return Ok(Action::Done);
    }
    match ctx.backend.unprotect_snapshot(&parent, &psnap).await {
        Ok(()) | Err(RbdError::NotFound(_)) => {}
        Err(RbdError::Busy(reason)) => {
            return Err(RbdError::Busy(format!(
                "{parent}@{psnap} cannot be unprotected although no clone is listed ({reason}): \
                 clones in the rbd trash?"
            ))
            .into())
        }
        Err(e) => return Err(e.into()),
    }
    ignore_not_found(ctx.backend.remove_snapshot(&parent, &psnap).await)?;
    finish(ctx, snap).await
}

/// The internal re-home image `<id>` that a flatten-policy deletion of the snapshot's volume made
/// for it, while the snapshot was not moved onto it yet (it still points at its volume): not
/// needed any more, and as a clone of this snapshot it would keep the snapshot for ever. Deleted
/// (its own reconciler removes `img_<id>`, which wakes this snapshot).
async fn drop_unmoved_rehome_image(ctx: &Ctx, snap: &Snapshot) -> Result<()> {
    let id = &snap.metadata.id;
    if snap.source.volume_image_id == *id {
        return Ok(());
    }
    let Some(r) = get_opt(&ctx.images, id).await? else {
        return Ok(());
    };
    if !r.metadata.labels.contains_key(INTERNAL_LABEL) || r.metadata.is_deleted() {
        return Ok(());
    }
    info!(snapshot = %id, "deferred deletion: the unmoved re-home image is not needed");
    match ctx.images.delete(id).await {
        Ok(()) | Err(store::StoreError::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Policy `flatten`, state `Flattened`: unprotect (a refusal flattens again after the key's
/// backoff), remove the rbd snapshot, then [`finish`].
async fn cleanup(ctx: &Arc<Ctx>, mut snap: Snapshot) -> Result<Action> {
    let id = snap.metadata.id.clone();
    let key = snapshot_key(&id);
    if let Some((parent, psnap)) = source_details(&snap) {
        match ctx.backend.unprotect_snapshot(&parent, &psnap).await {
            Ok(()) | Err(RbdError::NotFound(_)) => {}
            Err(RbdError::Busy(reason)) => {
                // Children appeared after the flatten, or children no flatten reaches (in the
                // rbd trash): flatten again, but after the key's failure backoff (the flatten is
                // gated like a failed operation, so the write below cannot start a loop).
                let delay = ctx.snapshot_queue.add_rate_limited(id.clone());
                ctx.close_gate(&key, delay);
                let msg = format!(
                    "{parent}@{psnap} cannot be unprotected after its children were flattened \
                     ({reason}): a new clone, or clones in the rbd trash; flattening again in \
                     {delay:?}"
                );
                debug!(snapshot = %id, reason, ?delay, "unprotect refused, flattening again");
                snap.status.state = SnapshotState::Flattening;
                snap.status.message = msg;
                ctx.snapshots.update(&snap).await?;
                return Ok(Action::Wait);
            }
            Err(e) => return Err(e.into()),
        }
        ignore_not_found(ctx.backend.remove_snapshot(&parent, &psnap).await)?;
        if is_os(&snap) {
            remove_os_image(ctx, &parent).await?;
        }
    }
    finish(ctx, snap).await
}

/// The end of both policies, once the rbd snapshot is gone: the image that held a re-homed
/// snapshot is deleted, **then** the finalizer is dropped (the object vanishes; that wakes the
/// snapshot's source volume, which a retained volume waits for).
async fn finish(ctx: &Ctx, mut snap: Snapshot) -> Result<Action> {
    let id = snap.metadata.id.clone();
    remove_rehome_image(ctx, &snap).await?;
    if snap.metadata.remove_finalizer(SNAPSHOT_FINALIZER) {
        match ctx.snapshots.update(&snap).await {
            Ok(_) | Err(store::StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    info!(snapshot = %id, "deleted");
    Ok(Action::Done)
}

/// The restores of snapshot `id` that have not got its data yet: images that reference it, are
/// not deleted, not internal re-home images and not OS volumes, and are `Filling` (copying from
/// it) or `Pending` without their rbd image (the clone is still to be made).
async fn pending_restores(ctx: &Ctx, id: &str) -> Result<Vec<String>> {
    let opts = ListOptions::default().field(FIELD_SNAPSHOT_REF, id);
    let mut waiting = Vec::new();
    for img in ctx.images.list(&opts).await? {
        if img.metadata.is_deleted()
            || img.metadata.labels.contains_key(INTERNAL_LABEL)
            || !img.spec.image.is_empty()
        {
            continue;
        }
        let needs = match img.status.state {
            ImageState::Filling => true,
            ImageState::Pending => {
                !ctx.backend
                    .image_exists(&volume_image_name(&img.metadata.id))
                    .await?
            }
            _ => false,
        };
        if needs {
            waiting.push(img.metadata.id);
        }
    }
    Ok(waiting)
}

/// Removes the image `<id>` that held snapshot `id` after its volume was deleted: the one the
/// snapshot lives on by the parent-name rule (`img_<id>`, a volume snapshot whose source is
/// itself), or a record labelled internal (re-homing not finished). A record with our finalizer
/// is deleted and its own reconciler removes `img_<id>`; without one (the Go provider re-homed
/// onto `img_<id>` without a record, or with a record we do not finalize) the rbd image is
/// removed here, unless it still holds other snapshots.
async fn remove_rehome_image(ctx: &Ctx, snap: &Snapshot) -> Result<()> {
    let id = &snap.metadata.id;
    let rehomed_here = !is_os(snap) && snap.source.volume_image_id == *id;
    let record = get_opt(&ctx.images, id).await?;
    let internal = record
        .as_ref()
        .is_some_and(|r| r.metadata.labels.contains_key(INTERNAL_LABEL));
    if !rehomed_here && !internal {
        return Ok(());
    }
    let mut finalized = false;
    if let Some(r) = &record {
        finalized = r.metadata.has_finalizer(IMAGE_FINALIZER);
        if !r.metadata.is_deleted() {
            match ctx.images.delete(id).await {
                Ok(()) | Err(store::StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    if finalized || !rehomed_here {
        return Ok(());
    }
    let name = volume_image_name(id);
    match ctx.backend.list_snapshots(&name).await {
        Ok(others) if !others.is_empty() => {
            let names: Vec<&str> = others.iter().map(|s| s.name.as_str()).collect();
            warn!(snapshot = %id, image = %name, ?names, "re-home image still holds snapshots; kept");
        }
        Ok(_) => {
            ignore_not_found(ctx.backend.remove_image(&name).await)?;
            info!(snapshot = %id, image = %name, "re-home image removed");
        }
        Err(RbdError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
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
            ProgressEvents::new(
                Audience::Object(snap.metadata.clone()),
                (reason::FLATTEN_PROGRESS, reason::FLATTEN_COMPLETED),
                action::DELETE_SNAPSHOT,
                (
                    "flattening the clones of this snapshot",
                    "flattened clones:",
                ),
                Unit::Clones,
            ),
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
