//! The deletion path of a volume (`deletedAt` set), under both deletion policies (see the crate
//! docs, *Deletion policies*): `deferred` keeps the volume's image hidden while its snapshots need
//! it; `flatten` re-homes its snapshots onto internal images so that deleting a volume never
//! deletes or blocks its live snapshots. The flatten of children runs as op "flatten children" in
//! `flatten.rs`.
//!
//! # Steps shared by both policies
//!
//! | Step | What happens |
//! |---|---|
//! | 0 | An OS volume whose OS snapshot is still `Pending`/`Populating` and waited for by no other live volume deletes that snapshot (its populate is cancelled). An operation of this image that is not a flatten (resolve, format, `Filling` copy) is cancelled; the pass waits for its completion. |
//! | 1 | No `img_<id>` to work on (stat answers not found, or `Busy`: half-removed) → its removal is repeated (not-found ignored: it finishes a removal interrupted half-way, whose image is still listed) → last step. |
//! | last | Finalizer dropped (the object vanishes), Normal `ImageDeletionSucceeded`. |
//!
//! # Policy `deferred` (zero-copy)
//!
//! | Step | What happens |
//! |---|---|
//! | D1 | Internal re-home images that a flatten-policy run made for this volume (label [`REHOME_OF_LABEL`]`=<id>`) and whose snapshot was not moved onto them yet are deleted: the snapshot stays where it is (their own reconciler removes `img_<snapshot>`). |
//! | D2 | Each rbd snapshot `s` of `img_<id>` is a *dependant* when a Snapshot object `s` with the snapshot finalizer points at this volume and is not a live `Failed` one (a deleted one removes its rbd snapshot itself, see the snapshot reconciler), else an *orphan*. |
//! | D3 | Orphans with children (listed within `list_children_timeout`) → `Retained` written first, op `image:<id>` "flatten children" (class `flatten`) flattens the children of those orphans only; the pass re-runs on completion. |
//! | D4 | Orphans are unprotected and removed. |
//! | D5 | Dependants left → `Retained` (hidden: never listed, NOT_FOUND through IRI), `status.message` names them, and nothing more: `img_<id>` and its snapshots stay as they are, restores from them keep working. A snapshot that goes wakes this volume. |
//! | D6 | No dependant left → `img_<id>` removed (not-found ignored) → last step. |
//!
//! # Policy `flatten` (the Go provider's)
//!
//! | Step | What happens |
//! |---|---|
//! | F2 | Each rbd snapshot `s` of `img_<id>` whose Snapshot object is live (not `Failed`, and not deleted — or deleted but still `Ready`: its deletion may be waiting for restores that have not cloned it yet) and still points at this volume is **re-homed**: an internal Image `s` (labels [`INTERNAL_LABEL`]`=rehome`, [`REHOME_OF_LABEL`]`=<id>`, no manager label, so it never appears in ListVolumes) with `snapshotRef = s`, size = the snapshot's size as the volume's guest saw it (without a header on top), limits and encryption of the volume; its own reconciler clones it. The pass waits until every `img_<s>` exists. Other rbd snapshots (a `Retained` snapshot's included) are *orphans*: they are flattened away and removed instead of blocking deletion forever. |
//! | F3 | Children of `img_<id>` (re-home clones and restored volumes; listed within `list_children_timeout`) → `FlatteningChildren` (also from `Retained`: a policy switch), op `image:<id>` "flatten children" (class `flatten`) on the runner (`status.progress` = children done/total ≈ 1/s, stall watchdog). The pass re-runs on completion and repeats until no child is left. |
//! | F4 | For each re-homed `s`: snapshot `s` (+protect) on `img_<s>`, Snapshot `s` repointed (`source.volumeImageId = s`) **before** the rbd snapshot is removed from the volume (a crash in between cannot lose the pointer). Orphans are removed. |
//! | F5 | `img_<id>` removed (not-found ignored) → last step. |

use std::sync::Arc;

use rbd::{CancellationToken, ImageInfo, RbdError};
use store::keys::{
    CLASS_LABEL, IMAGE_FINALIZER, INTERNAL_LABEL, INTERNAL_REHOME, REHOME_OF_LABEL,
    SNAPSHOT_FINALIZER,
};
use store::{
    Image, ImageSpec, ImageState, ListOptions, Snapshot, SnapshotState, StoreError,
    FIELD_SNAPSHOT_REF,
};
use tracing::{debug, info};

use crate::ctx::{get_opt, ignore_exists, ignore_not_found, modify, Action, Ctx};
use crate::events::{action, reason, EventType};
use crate::flatten::flatten_children;
use crate::{image_key, volume_image_name, DeletePolicy, OpClass, Result};

/// Deletion path (see the module docs).
pub(super) async fn delete(ctx: &Arc<Ctx>, img: Image) -> Result<Action> {
    if !img.metadata.has_finalizer(IMAGE_FINALIZER) {
        return Ok(Action::Done);
    }
    let id = img.metadata.id.clone();
    ctx.release_resolve(&id);
    release_os_snapshot(ctx, &img).await?;
    let key = image_key(&id);
    let flattening = matches!(
        img.status.state,
        ImageState::FlatteningChildren | ImageState::Retained
    );
    if !flattening && ctx.op_active(&key) {
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
        let kept = match ctx.cfg.delete_policy {
            DeletePolicy::Deferred => deferred(ctx, img.clone(), &info).await?,
            DeletePolicy::Flatten => flatten(ctx, img.clone(), &info).await?,
        };
        if let Some(action) = kept {
            return Ok(action);
        }
        ignore_not_found(ctx.backend.remove_image(&name).await)?;
    }
    // Last step.
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

/// Policy `deferred`, steps D1–D5: `Some(action)` while the image is kept, `None` once it may be
/// removed.
async fn deferred(ctx: &Arc<Ctx>, img: Image, info: &ImageInfo) -> Result<Option<Action>> {
    let id = img.metadata.id.clone();
    let name = volume_image_name(&id);
    // D1.
    drop_unmoved_rehome_images(ctx, &id).await?;
    // D2.
    let mut dependants = Vec::new();
    let mut orphans = Vec::new();
    for s in &info.snapshots {
        let rec = get_opt(&ctx.snapshots, &s.name).await?;
        let dependant = rec.as_ref().is_some_and(|r| {
            r.source.volume_image_id == id
                && r.source.ironcore_image.is_empty()
                && r.metadata.has_finalizer(SNAPSHOT_FINALIZER)
                && (r.metadata.is_deleted() || r.status.state != SnapshotState::Failed)
        });
        if dependant {
            dependants.push(s.name.clone());
        } else {
            orphans.push(s.name.clone());
        }
    }
    // D3.
    let mut with_children = Vec::new();
    for o in &orphans {
        let children = ctx
            .children_of(&name, Some(o), &CancellationToken::new())
            .await?;
        if !children.is_empty() {
            with_children.push(o.clone());
        }
    }
    if !with_children.is_empty() {
        let note = format!(
            "kept hidden: flattening the clones of rbd snapshots without a snapshot ({})",
            with_children.join(", ")
        );
        retain(ctx, img, note).await?;
        let owned = id.clone();
        let action = ctx
            .start_op(
                OpClass::Flatten,
                image_key(&id),
                move |ctx, env| async move {
                    flatten_children(ctx, owned, Some(with_children), env).await
                },
            )
            .await?;
        return Ok(Some(action));
    }
    // D4.
    for o in &orphans {
        info!(image = %id, snapshot = %o, "removing rbd snapshot without a snapshot that needs it");
        ignore_not_found(ctx.backend.unprotect_snapshot(&name, o).await)?;
        ignore_not_found(ctx.backend.remove_snapshot(&name, o).await)?;
    }
    // D5.
    if dependants.is_empty() {
        return Ok(None);
    }
    let note = format!(
        "kept hidden: snapshot(s) {} still need its data",
        dependants.join(", ")
    );
    retain(ctx, img, note).await?;
    debug!(image = %id, ?dependants, "volume retained for its snapshots");
    Ok(Some(Action::Done))
}

/// Writes `Retained` with `note` unless the image already says so.
async fn retain(ctx: &Ctx, mut img: Image, note: String) -> Result<()> {
    if img.status.state == ImageState::Retained && img.status.message == note {
        return Ok(());
    }
    if img.status.state != ImageState::Retained {
        info!(image = %img.metadata.id, "volume retained: hidden until its snapshots are gone");
    }
    img.status.state = ImageState::Retained;
    img.status.message = note;
    img.status.progress = None;
    ctx.images.update(&img).await?;
    Ok(())
}

/// D1: deletes the internal re-home images of volume `id` whose snapshot has not been moved onto
/// them (the snapshot still points at the volume, or is gone). One that holds its moved snapshot
/// (`source.volumeImageId` = its own id) stays: it is that snapshot's home now.
async fn drop_unmoved_rehome_images(ctx: &Ctx, id: &str) -> Result<()> {
    let opts = ListOptions::default().label(REHOME_OF_LABEL, id);
    for r in ctx.images.list(&opts).await? {
        let rid = &r.metadata.id;
        if r.metadata.is_deleted() {
            continue;
        }
        let moved = get_opt(&ctx.snapshots, rid)
            .await?
            .is_some_and(|s| s.source.volume_image_id == *rid);
        if moved {
            continue;
        }
        info!(image = %id, rehome = %rid, "deferred deletion: the unmoved re-home image is not needed");
        match ctx.images.delete(rid).await {
            Ok(()) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Policy `flatten`, steps F2–F4: `Some(action)` while the pass waits, `None` once the image may
/// be removed.
async fn flatten(ctx: &Arc<Ctx>, img: Image, info: &ImageInfo) -> Result<Option<Action>> {
    let id = img.metadata.id.clone();
    let name = volume_image_name(&id);
    // F2: classify the rbd snapshots and make sure every live one has its new home.
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
        return Ok(Some(Action::Wait));
    }
    // F3: flatten every child of the volume on the runner.
    let children = ctx
        .list_children(&name, None, &CancellationToken::new())
        .await?;
    if !children.is_empty() {
        let mut img = img;
        if img.status.state != ImageState::FlatteningChildren {
            img.status.state = ImageState::FlatteningChildren;
            img.status.progress = None;
            img.status.message = String::new();
            ctx.images.update(&img).await?;
        }
        let owned = id.clone();
        let action = ctx
            .start_op(
                OpClass::Flatten,
                image_key(&id),
                move |ctx, env| async move { flatten_children(ctx, owned, None, env).await },
            )
            .await?;
        return Ok(Some(action));
    }
    // F4: move the live snapshots, drop the others.
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
    Ok(None)
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
