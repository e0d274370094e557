//! The deletion path of a volume (`deletedAt` set), including the re-homing of its snapshots onto
//! internal images so that deleting a volume never deletes or blocks its live snapshots. The
//! flatten of the children runs as op "flatten children" in `flatten.rs`.
//!
//! # Steps
//!
//! | Step | What happens |
//! |---|---|
//! | 0 | An OS volume whose OS snapshot is still `Pending`/`Populating` and waited for by no other live volume deletes that snapshot (its populate is cancelled). An operation of this image that is not a flatten (resolve, format, `Filling` copy) is cancelled; the pass waits for its completion. |
//! | 1 | No `img_<id>` to work on (stat answers not found, or `Busy`: half-removed) → its removal is repeated (not-found ignored: it finishes a removal interrupted half-way, whose image is still listed) → step 6. |
//! | 2 | Each rbd snapshot `s` of `img_<id>` whose Snapshot object is live (not `Failed`, and not deleted — or deleted but still `Ready`: its deletion may be waiting for restores that have not cloned it yet) and still points at this volume is **re-homed**: an internal Image `s` (labels [`INTERNAL_LABEL`]`=rehome`, [`REHOME_OF_LABEL`]`=<id>`, no manager label, so it never appears in ListVolumes) with `snapshotRef = s`, size = the snapshot's size as the volume's guest saw it (without a header on top), limits and encryption of the volume; its own reconciler clones it. The pass waits until every `img_<s>` exists. Other rbd snapshots are *orphans* (no record, record deleted or `Failed`): nobody can reference them, so they are flattened away and removed instead of blocking deletion forever. |
//! | 3 | Children of `img_<id>` (re-home clones and restored volumes; listed within `list_children_timeout`) → `FlatteningChildren`, op `image:<id>` "flatten children" (class `flatten`) on the runner (`status.progress` = children done/total ≈ 1/s, stall watchdog). The pass re-runs on completion and repeats until no child is left. |
//! | 4 | For each re-homed `s`: snapshot `s` (+protect) on `img_<s>`, Snapshot `s` repointed (`source.volumeImageId = s`) **before** the rbd snapshot is removed from the volume (a crash in between cannot lose the pointer). Orphans are removed. |
//! | 5 | `img_<id>` removed (not-found ignored). |
//! | 6 | Finalizer dropped (the object vanishes), Normal `ImageDeletionSucceeded`. |

use std::sync::Arc;

use rbd::{CancellationToken, RbdError};
use store::keys::{CLASS_LABEL, IMAGE_FINALIZER, INTERNAL_LABEL, INTERNAL_REHOME, REHOME_OF_LABEL};
use store::{
    Image, ImageSpec, ImageState, ListOptions, Snapshot, SnapshotState, StoreError,
    FIELD_SNAPSHOT_REF,
};
use tracing::{debug, info};

use crate::ctx::{get_opt, ignore_exists, ignore_not_found, modify, Action, Ctx};
use crate::events::{action, reason, EventType};
use crate::flatten::flatten_children;
use crate::{image_key, volume_image_name, OpClass, Result};

/// Deletion path (see the module docs).
pub(super) async fn delete(ctx: &Arc<Ctx>, img: Image) -> Result<Action> {
    if !img.metadata.has_finalizer(IMAGE_FINALIZER) {
        return Ok(Action::Done);
    }
    let id = img.metadata.id.clone();
    ctx.release_resolve(&id);
    release_os_snapshot(ctx, &img).await?;
    let key = image_key(&id);
    if img.status.state != ImageState::FlatteningChildren && ctx.op_active(&key) {
        ctx.cancel_op(&key);
        return Ok(Action::Wait);
    }
    let name = volume_image_name(&id);
    let info = match ctx.backend.stat(&name).await {
        Ok(i) => Some(i),
        // A removal interrupted half-way leaves an image that is still listed but cannot be
        // opened (`stat` answers `Busy`; an older backend `NotFound`): removing it again finishes
        // that removal (not-found ignored; `Busy` while the crashed client's watch times out is
        // retried with backoff), so nothing is left behind.
        Err(RbdError::NotFound(_)) | Err(RbdError::Busy(_)) => {
            ignore_not_found(ctx.backend.remove_image(&name).await)?;
            None
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(info) = info {
        // Step 2: classify the rbd snapshots and make sure every live one has its new home.
        let mut rehome = Vec::new();
        let mut waiting = false;
        for s in &info.snapshots {
            let rec = get_opt(&ctx.snapshots, &s.name).await?;
            // A snapshot being deleted that is still `Ready` may be kept for restores that
            // have not cloned it yet (its own deletion path waits for them): it is re-homed like
            // a live one, never removed under them.
            let live = rec.as_ref().is_some_and(|r| {
                let restorable = matches!(
                    r.status.state,
                    SnapshotState::Ready | SnapshotState::Populated
                );
                (!r.metadata.is_deleted() || restorable)
                    && r.status.state != SnapshotState::Failed
                    && r.source.volume_image_id == id
            });
            if !live {
                continue;
            }
            // The size the volume's guest saw: the re-home image gets its own header on top.
            let size = s.size.saturating_sub(img.status.header_size);
            if !ensure_rehome_image(ctx, &img, &s.name, size).await? {
                waiting = true;
            }
            rehome.push(s.name.clone());
        }
        if waiting {
            debug!(image = %id, "waiting for re-homed snapshot images");
            return Ok(Action::Wait);
        }
        // Step 3: flatten every child of the volume on the runner.
        let children = ctx
            .list_children(&name, None, &CancellationToken::new())
            .await?;
        if !children.is_empty() {
            let mut img = img;
            if img.status.state != ImageState::FlatteningChildren {
                img.status.state = ImageState::FlatteningChildren;
                img.status.progress = None;
                ctx.images.update(&img).await?;
            }
            let owned = id.clone();
            return ctx
                .start_op(OpClass::Flatten, key, move |ctx, env| async move {
                    flatten_children(ctx, owned, env).await
                })
                .await;
        }
        // Step 4: move the live snapshots, drop the others.
        for s in &info.snapshots {
            if rehome.contains(&s.name) {
                let target = volume_image_name(&s.name);
                ignore_exists(ctx.backend.create_snapshot(&target, &s.name).await)?;
                ctx.backend.protect_snapshot(&target, &s.name).await?;
                let sname = s.name.clone();
                modify(&ctx.snapshots, &s.name, |r: &mut Snapshot| {
                    if r.source.volume_image_id == sname {
                        return false;
                    }
                    r.source.volume_image_id = sname.clone();
                    true
                })
                .await?;
                info!(image = %id, snapshot = %s.name, "snapshot re-homed");
            } else {
                info!(image = %id, snapshot = %s.name, "removing rbd snapshot without a live record");
            }
            ignore_not_found(ctx.backend.unprotect_snapshot(&name, &s.name).await)?;
            ignore_not_found(ctx.backend.remove_snapshot(&name, &s.name).await)?;
        }
        // Step 5.
        ignore_not_found(ctx.backend.remove_image(&name).await)?;
    }
    // Step 6.
    let mut img = get_opt(&ctx.images, &id).await?.unwrap_or(img);
    if img.metadata.remove_finalizer(IMAGE_FINALIZER) {
        ctx.record(
            &img.metadata,
            EventType::Normal,
            reason::IMAGE_DELETION_SUCCEEDED,
            action::DELETE_IMAGE,
            "image deleted",
        );
        match ctx.images.update(&img).await {
            Ok(_) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    info!(image = %id, "deleted");
    Ok(Action::Done)
}

/// Deleting an OS volume whose OS snapshot is still `Pending`/`Populating` and that no other
/// live volume waits for: the snapshot is deleted, which cancels its populate (nobody would use
/// the copy; the next volume of that image resolves and populates again).
async fn release_os_snapshot(ctx: &Ctx, img: &Image) -> Result<()> {
    let (false, Some(sid)) = (img.spec.image.is_empty(), img.spec.snapshot_ref.as_deref()) else {
        return Ok(());
    };
    let Some(snap) = get_opt(&ctx.snapshots, sid).await? else {
        return Ok(());
    };
    let populating = matches!(
        snap.status.state,
        SnapshotState::Pending | SnapshotState::Populating
    );
    if snap.metadata.is_deleted() || snap.source.ironcore_image.is_empty() || !populating {
        return Ok(());
    }
    let opts = ListOptions::default().field(FIELD_SNAPSHOT_REF, sid);
    let others = ctx
        .images
        .list(&opts)
        .await?
        .into_iter()
        .any(|i| i.metadata.id != img.metadata.id && !i.metadata.is_deleted());
    if others {
        return Ok(());
    }
    info!(image = %img.metadata.id, snapshot = sid, "no volume waits for the populate any more: cancelling it");
    match ctx.snapshots.delete(sid).await {
        Ok(()) | Err(StoreError::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Makes sure the internal image for re-homing snapshot `sid` of `parent` exists in the store and
/// as `img_<sid>`. True when `img_<sid>` exists (cloned by that image's own reconciler).
async fn ensure_rehome_image(ctx: &Ctx, parent: &Image, sid: &str, size: u64) -> Result<bool> {
    match get_opt(&ctx.images, sid).await? {
        Some(existing) => {
            if existing.metadata.is_deleted() {
                return Ok(false);
            }
        }
        None => {
            let spec = ImageSpec {
                size,
                wwn: String::new(),
                limits: parent.spec.limits.clone(),
                image: String::new(),
                image_architecture: None,
                snapshot_ref: Some(sid.to_string()),
                encryption: parent.spec.encryption.clone(),
            };
            let mut rehomed = Image::new(sid, spec);
            let labels = &mut rehomed.metadata.labels;
            labels.insert(INTERNAL_LABEL.to_string(), INTERNAL_REHOME.to_string());
            labels.insert(REHOME_OF_LABEL.to_string(), parent.metadata.id.clone());
            if let Some(class) = parent.metadata.labels.get(CLASS_LABEL) {
                labels.insert(CLASS_LABEL.to_string(), class.clone());
            }
            rehomed.metadata.add_finalizer(IMAGE_FINALIZER);
            match ctx.images.create(rehomed).await {
                Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
            info!(image = %parent.metadata.id, snapshot = sid, "re-home image created");
            return Ok(false);
        }
    }
    Ok(ctx.backend.image_exists(&volume_image_name(sid)).await?)
}
