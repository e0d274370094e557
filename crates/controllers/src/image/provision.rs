//! Provisioning of a volume: create `img_<id>` (empty, or a clone of the snapshot it is restored
//! from), the provisioning steps that end in `Available`, and the `Available` checks (grow-only
//! resize, access data refresh). The rows `Pending`/`Error` and `Available` of the state table in
//! `mod.rs` are implemented here; an OS image reference is resolved first by `resolve.rs`, a
//! restore that needs an encrypted copy is handed to `fill.rs`, and the LUKS2 header of an empty
//! encrypted volume to `format.rs`. Only metadata calls here: nothing that takes more than
//! milliseconds.
//!
//! **Sizes.** A volume's rbd image is `round(size) + status.headerSize`: an encrypted volume
//! provisioned by this version gets its 16 MiB LUKS2 header on top (`headerSize` is written
//! before its image exists), so the guest sees exactly `round(size)`; plain volumes and older
//! encrypted ones have `headerSize = 0` and keep their layout (an old encrypted volume shows the
//! guest 16 MiB less than its size, before and after an expand).
//!
//! **Refusals.** A backend that refuses a create or resize for good (`InvalidArgument`,
//! `Unsupported`: a size it cannot hold) → `Error` + one Warning, marked with the size; not
//! retried until the size changes.

use std::sync::Arc;

use rbd::{ImageInfo, RbdError, LUKS2_HEADER_SIZE};
use store::{Image, ImageAccess, ImageState, SnapshotState, ENCRYPTION_HEADER_SET};
use tracing::{debug, info};

use super::encryption::{size_marker, snapshot_encrypted, wants_encryption};
use super::fill::{start_fill, FILL_FAILED};
use super::format::{format, needs_format};
use crate::ctx::{get_opt, ignore_exists, Action, Ctx};
use crate::events::{action, reason, EventType};
use crate::status::{mark_snapshot_failed, set_image_error};
use crate::{round_size, source_details, volume_image_name, Result};
use store::keys::INTERNAL_LABEL;

/// Prefix of the image metadata keys that carry QoS limits (librbd per-image config overrides).
pub const LIMIT_METADATA_PREFIX: &str = "conf_";
/// Image metadata key of the WWN.
pub const WWN_METADATA_KEY: &str = "wwn";

/// What a step decided.
pub(super) enum Step {
    /// Continue with this (stored) image, and its rbd image when the pass knows it (it has just
    /// created it).
    Go(Box<Image>, Option<ImageInfo>),
    /// Stop the pass with this action.
    Stop(Action),
}

/// Start of `status.message` when the backend refused to create the volume's image for good.
const CREATE_REFUSED: &str = "creating the image was refused";
/// Start of `status.message` when the backend refused to resize the volume's image for good.
const RESIZE_REFUSED: &str = "resizing the image was refused";

/// Whether the backend's answer can never change for the same request.
fn permanent(e: &RbdError) -> bool {
    matches!(e, RbdError::InvalidArgument(_) | RbdError::Unsupported(_))
}

/// Whether the volume is in `Error` because the backend refused `what` (a `*_REFUSED` prefix) at
/// the volume's current size: only a new size tries again.
fn refused(img: &Image, what: &str) -> bool {
    img.status.state == ImageState::Error
        && img.status.message.starts_with(what)
        && img
            .status
            .message
            .ends_with(&size_marker(round_size(img.spec.size)))
}

/// The rbd image size of a volume: `round(size)` plus the header on top (see the module docs).
pub(super) fn rbd_size(img: &Image) -> u64 {
    round_size(img.spec.size).saturating_add(img.status.header_size)
}

/// An encrypted volume whose image does not exist yet gets its header on top: `headerSize` is
/// recorded before the image is created, so every later pass knows the layout.
async fn header_on_top(ctx: &Ctx, mut img: Image) -> Result<Image> {
    if wants_encryption(&img) && img.status.header_size == 0 {
        img.status.header_size = LUKS2_HEADER_SIZE;
        img = ctx.images.update(&img).await?;
    }
    Ok(img)
}

/// No `img_<id>` yet: create it empty or from the snapshot.
pub(super) async fn create(ctx: &Arc<Ctx>, img: Image) -> Result<Step> {
    if let Some(sid) = img.spec.snapshot_ref.clone() {
        return create_from_snapshot(ctx, img, &sid).await;
    }
    if refused(&img, CREATE_REFUSED) {
        return Ok(Step::Stop(Action::Done));
    }
    let img = header_on_top(ctx, img).await?;
    let name = volume_image_name(&img.metadata.id);
    let size = rbd_size(&img);
    let made = match ctx.backend.create_image(&name, size).await {
        Ok(()) => Ok(Some(ImageInfo {
            name: name.clone(),
            size,
            parent: None,
            snapshots: Vec::new(),
        })),
        Err(RbdError::Exists(_)) => Ok(None),
        Err(e) => Err(e),
    };
    let known = match made {
        Ok(known) => known,
        Err(e) if permanent(&e) => {
            let msg = format!(
                "{CREATE_REFUSED}: creating {name} of {size} bytes: {e} {}",
                size_marker(round_size(img.spec.size))
            );
            return set_image_error(
                ctx,
                img,
                reason::EMPTY_IMAGE_CREATION_FAILED,
                action::CREATE_IMAGE,
                msg,
            )
            .await
            .map(Step::Stop);
        }
        Err(e) => {
            ctx.record(
                &img.metadata,
                EventType::Warning,
                reason::EMPTY_IMAGE_CREATION_FAILED,
                action::CREATE_IMAGE,
                format!("creating {name}: {e}"),
            );
            return Err(e.into());
        }
    };
    ctx.record(
        &img.metadata,
        EventType::Normal,
        reason::EMPTY_IMAGE_CREATION_SUCCEEDED,
        action::CREATE_IMAGE,
        format!("created empty image of {} bytes", img.spec.size),
    );
    Ok(Step::Go(Box::new(img), known))
}

/// Restore from snapshot `sid`: a clone of its rbd snapshot (grown to the volume size by
/// [`finish`]). A missing or failed snapshot, or one larger than the volume → `Error`; an
/// encrypted volume from unencrypted data → `Filling` (the copy is the op in `fill.rs`).
///
/// A snapshot being deleted that is still `Ready` is restored from: its deletion waits until
/// every restore that has not got its data yet has it (see `snapshot.rs`), so a restore
/// accepted before the deletion never fails because of it. OS volumes and internal re-home
/// images do not hold a deletion: an OS volume resolves its reference again (a new snapshot is
/// populated once the old one is gone), a re-home image is removed with its snapshot.
async fn create_from_snapshot(ctx: &Arc<Ctx>, img: Image, sid: &str) -> Result<Step> {
    let stop = |a| Ok(Step::Stop(a));
    let os_volume = !img.spec.image.is_empty();
    let Some(snap) = get_opt(&ctx.snapshots, sid).await? else {
        if os_volume {
            // The OS snapshot was removed: resolve the reference again.
            let mut img = img;
            img.spec.snapshot_ref = None;
            ctx.images.update(&img).await?;
            return stop(Action::Again);
        }
        if img.metadata.labels.contains_key(INTERNAL_LABEL) {
            // A re-home image made for a snapshot that was removed meanwhile holds nothing.
            info!(image = %img.metadata.id, snapshot = sid, "re-home image without its snapshot: deleting it");
            match ctx.images.delete(&img.metadata.id).await {
                Ok(()) | Err(store::StoreError::NotFound(_)) => return stop(Action::Done),
                Err(e) => return Err(e.into()),
            }
        }
        let msg = format!("snapshot {sid} does not exist");
        return set_image_error(
            ctx,
            img,
            reason::SNAPSHOT_NOT_FOUND,
            action::CREATE_IMAGE_FROM_SNAPSHOT,
            msg,
        )
        .await
        .map(Step::Stop);
    };
    if snap.metadata.is_deleted() {
        // A retained snapshot (deferred deletion) keeps its rbd snapshot, protected, and waits
        // for restores accepted before its deletion: they clone or copy it as a ready one.
        let restorable = matches!(
            snap.status.state,
            SnapshotState::Ready | SnapshotState::Populated | SnapshotState::Retained
        );
        if os_volume {
            // Never clone an OS snapshot on its way out: resolve again once it is gone.
            let mut img = img;
            img.spec.snapshot_ref = None;
            ctx.images.update(&img).await?;
            return stop(Action::Again);
        }
        if !restorable || img.metadata.labels.contains_key(INTERNAL_LABEL) {
            // Its final removal (or a Failed state) requeues this image.
            debug!(image = %img.metadata.id, snapshot = sid, "snapshot is being deleted");
            return stop(Action::Wait);
        }
        debug!(image = %img.metadata.id, snapshot = sid, "restoring from a snapshot being deleted");
    }
    match &snap.status.state {
        SnapshotState::Ready | SnapshotState::Populated => {}
        SnapshotState::Retained if snap.metadata.is_deleted() => {}
        SnapshotState::Failed => {
            let msg = format!("snapshot {sid} failed: {}", snap.status.message);
            return set_image_error(
                ctx,
                img,
                reason::SNAPSHOT_FAILED,
                action::CREATE_IMAGE_FROM_SNAPSHOT,
                msg,
            )
            .await
            .map(Step::Stop);
        }
        _ => return stop(Action::Wait),
    }
    let snap_size = u64::try_from(snap.status.size).unwrap_or(0);
    let size = round_size(img.spec.size);
    if size < snap_size {
        let msg = format!("volume size {size} is smaller than snapshot {sid} size {snap_size}");
        return set_image_error(
            ctx,
            img,
            reason::IMAGE_SIZE_IS_SMALLER_THAN_SNAPSHOT_SIZE,
            action::CREATE_IMAGE_FROM_SNAPSHOT,
            msg,
        )
        .await
        .map(Step::Stop);
    }
    let Some((parent, psnap)) = source_details(&snap) else {
        let msg = format!("snapshot {sid} has no source");
        return set_image_error(
            ctx,
            img,
            reason::SNAPSHOT_FAILED,
            action::CREATE_IMAGE_FROM_SNAPSHOT,
            msg,
        )
        .await
        .map(Step::Stop);
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
            if !mark_snapshot_failed(ctx, sid, Some((&parent, &psnap)), &msg).await? {
                let now = get_opt(&ctx.snapshots, sid).await?;
                let here = Some((parent.clone(), psnap.clone()));
                if now.as_ref().is_some_and(|s| source_details(s) != here) {
                    // Re-homed while its volume is deleted: look again where it lives now.
                    return stop(Action::Again);
                }
                // Being deleted (or gone) without its data: this restore cannot be made, and
                // must not hold the deletion.
            }
            return set_image_error(
                ctx,
                img,
                reason::SNAPSHOT_FAILED,
                action::CREATE_IMAGE_FROM_SNAPSHOT,
                msg,
            )
            .await
            .map(Step::Stop);
        }
        Err(e) => return Err(e.into()),
    }
    let src_encrypted = snapshot_encrypted(ctx, &snap).await?;
    let mut img = img;
    match (src_encrypted, wants_encryption(&img)) {
        (true, false) => {
            let msg = format!(
                "snapshot {sid} is of an encrypted volume: the restore needs its encryption"
            );
            return set_image_error(
                ctx,
                img,
                reason::CREATE_IMAGE_FROM_SNAPSHOT_FAILED,
                action::CREATE_IMAGE_FROM_SNAPSHOT,
                msg,
            )
            .await
            .map(Step::Stop);
        }
        (false, true) => {
            // Pacific cannot LUKS-format a clone: build an encrypted image and copy the data.
            if ctx.cfg.kek.is_none() {
                let msg = "encrypted volume but no key-encryption key configured".to_string();
                return set_image_error(
                    ctx,
                    img,
                    reason::CONFIGURE_ENCRYPTION_FAILED,
                    action::CONFIGURE_ENCRYPTION,
                    msg,
                )
                .await
                .map(Step::Stop);
            }
            if img.status.state == ImageState::Error
                && img.status.message.starts_with(FILL_FAILED)
                && img.status.message.ends_with(&size_marker(size))
            {
                // The copy failed for good at this size; only a new size tries again.
                return stop(Action::Done);
            }
            // The header goes on top of the data (`headerSize`), so the data fits whenever the
            // volume is at least as large as the snapshot.
            img.status.state = ImageState::Filling;
            img.status.header_size = LUKS2_HEADER_SIZE;
            img.status.message = String::new();
            img.status.progress = None;
            let img = ctx.images.update(&img).await?;
            return start_fill(ctx, &img.metadata.id).await.map(Step::Stop);
        }
        (true, true) => {
            // The clone carries the source's LUKS header: record that before the clone exists,
            // so no later pass can format it; and the size it is grown to holds the header on
            // top of the volume's size.
            if img.status.encryption != ENCRYPTION_HEADER_SET || img.status.header_size == 0 {
                img.status.encryption = ENCRYPTION_HEADER_SET.to_string();
                img.status.header_size = LUKS2_HEADER_SIZE;
                img = ctx.images.update(&img).await?;
            }
        }
        (false, false) => {}
    }
    let name = volume_image_name(&img.metadata.id);
    if let Err(e) = ignore_exists(ctx.backend.clone_image(&parent, &psnap, &name).await) {
        ctx.record(
            &img.metadata,
            EventType::Warning,
            reason::CREATE_IMAGE_FROM_SNAPSHOT_FAILED,
            action::CREATE_IMAGE_FROM_SNAPSHOT,
            format!("cloning {parent}@{psnap}: {e}"),
        );
        return Err(e.into());
    }
    if !snap.source.ironcore_image.is_empty() {
        ctx.record(
            &img.metadata,
            EventType::Normal,
            reason::IMAGE_PULL_SUCCEEDED,
            action::PULL_IMAGE,
            format!("Pulled image {}", snap.source.ironcore_image),
        );
    }
    ctx.record(
        &img.metadata,
        EventType::Normal,
        reason::CREATE_IMAGE_FROM_SNAPSHOT_SUCCEEDED,
        action::CREATE_IMAGE_FROM_SNAPSHOT,
        format!("cloned from snapshot {sid}"),
    );
    Ok(Step::Go(Box::new(img), None))
}

/// The provisioning steps after the rbd image exists: the image grown to [`rbd_size`] (a clone
/// starts at its snapshot's size), the LUKS2 header once (on the runner: `format.rs`; this pass
/// ends there), then the `wwn` and the QoS limits as `conf_<limit>` metadata in one call (one
/// image open), access data → `Available`. `known` is the rbd image when the pass already knows
/// it (it has just created or stat'ed it); else it is read.
pub(super) async fn finish(
    ctx: &Arc<Ctx>,
    mut img: Image,
    known: Option<ImageInfo>,
) -> Result<Action> {
    let id = img.metadata.id.clone();
    let name = volume_image_name(&id);
    let info = match known {
        Some(info) => info,
        None => ctx.backend.stat(&name).await?,
    };
    let target = rbd_size(&img);
    if info.size < target {
        if refused(&img, RESIZE_REFUSED) {
            return Ok(Action::Done);
        }
        match ctx.backend.resize(&name, target).await {
            Ok(()) => {}
            Err(e) if permanent(&e) => {
                let msg = format!(
                    "{RESIZE_REFUSED}: growing {name} to {target} bytes: {e} {}",
                    size_marker(round_size(img.spec.size))
                );
                return set_image_error(
                    ctx,
                    img,
                    reason::UPDATE_IMAGE_SIZE_FAILED,
                    action::RESIZE_IMAGE,
                    msg,
                )
                .await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if needs_format(&img) {
        return format(ctx, img, &info).await;
    }
    let mut metadata = vec![(WWN_METADATA_KEY.to_string(), img.spec.wwn.clone())];
    metadata.extend(
        img.spec
            .limits
            .iter()
            .map(|(key, value)| (format!("{LIMIT_METADATA_PREFIX}{key}"), value.to_string())),
    );
    if let Err(e) = ctx.backend.metadata_set_all(&name, &metadata).await {
        if !img.spec.limits.is_empty() {
            ctx.record(
                &img.metadata,
                EventType::Warning,
                reason::SET_IMAGE_LIMIT_FAILED,
                action::SET_IMAGE_LIMITS,
                format!(
                    "setting the wwn and {} QoS limits: {e}",
                    img.spec.limits.len()
                ),
            );
        }
        return Err(e.into());
    }
    if !img.spec.limits.is_empty() {
        ctx.record(
            &img.metadata,
            EventType::Normal,
            reason::SET_IMAGE_LIMITS_SUCCEEDED,
            action::SET_IMAGE_LIMITS,
            format!("set {} QoS limits", img.spec.limits.len()),
        );
    }
    let access = access(ctx, &id).await?;
    img.status.access = Some(access);
    img.status.state = ImageState::Available;
    img.status.size = round_size(img.spec.size);
    img.status.message = String::new();
    img.status.progress = None;
    ctx.images.update(&img).await?;
    info!(image = %id, "available");
    Ok(Action::Done)
}

async fn access(ctx: &Ctx, id: &str) -> Result<ImageAccess> {
    Ok(ImageAccess {
        monitors: ctx.cfg.monitors.clone(),
        handle: format!("{}/{}", ctx.backend.pool(), volume_image_name(id)),
        user: ctx.client_user(),
        user_key: ctx.client_key().await?,
    })
}

/// A provisioned volume (`Available`, or `Error` after its image vanished or a resize was
/// refused) whose image exists: grow-only resize and access refresh; back to `Available` when
/// nothing is wrong (an image that answered again after a transient error, a new size after a
/// refused one). Sizes compared are the guest's: the rbd size minus `headerSize`.
pub(super) async fn available(ctx: &Arc<Ctx>, mut img: Image, info: ImageInfo) -> Result<Action> {
    let name = info.name.clone();
    let requested = round_size(img.spec.size);
    let header = img.status.header_size;
    let current = info.size.saturating_sub(header);
    let mut changed = false;
    if requested > current {
        if refused(&img, RESIZE_REFUSED) {
            return Ok(Action::Done);
        }
        let target = rbd_size(&img);
        match ctx.backend.resize(&name, target).await {
            Ok(()) => {}
            Err(RbdError::NotFound(_)) => return super::lost(ctx, img, &name).await,
            Err(e) if permanent(&e) => {
                let msg = format!(
                    "{RESIZE_REFUSED}: resizing {name} to {target} bytes: {e}; the volume keeps \
                     its data and {current} bytes {}",
                    size_marker(requested)
                );
                return set_image_error(
                    ctx,
                    img,
                    reason::UPDATE_IMAGE_SIZE_FAILED,
                    action::RESIZE_IMAGE,
                    msg,
                )
                .await;
            }
            Err(e) => {
                ctx.record(
                    &img.metadata,
                    EventType::Warning,
                    reason::UPDATE_IMAGE_SIZE_FAILED,
                    action::RESIZE_IMAGE,
                    format!("resizing {name} to {requested}: {e}"),
                );
                return Err(e.into());
            }
        }
        ctx.record(
            &img.metadata,
            EventType::Normal,
            reason::UPDATED_IMAGE_SIZE_SUCCEEDED,
            action::RESIZE_IMAGE,
            format!("resized to {requested} bytes"),
        );
        img.status.size = requested;
        img.status.message = String::new();
        changed = true;
    } else if requested < current {
        let msg = format!(
            "shrinking from {current} to {requested} bytes is not supported; keeping {current} bytes"
        );
        if img.status.message != msg {
            ctx.record(
                &img.metadata,
                EventType::Warning,
                reason::UPDATE_IMAGE_SIZE_FAILED,
                action::RESIZE_IMAGE,
                msg.clone(),
            );
            img.status.message = msg;
            changed = true;
        }
    } else {
        if img.status.size != requested {
            img.status.size = requested;
            changed = true;
        }
        if !img.status.message.is_empty() {
            img.status.message = String::new();
            changed = true;
        }
    }
    if img.status.state != ImageState::Available {
        info!(image = %img.metadata.id, "available again");
        img.status.state = ImageState::Available;
        if img.status.message.starts_with(RESIZE_REFUSED)
            || img.status.message.starts_with(super::IMAGE_LOST)
        {
            img.status.message = String::new();
        }
        changed = true;
    }
    let fresh = access(ctx, &img.metadata.id).await?;
    if img.status.access.as_ref() != Some(&fresh) {
        img.status.access = Some(fresh);
        changed = true;
    }
    if changed {
        ctx.images.update(&img).await?;
    }
    Ok(Action::Done)
}
