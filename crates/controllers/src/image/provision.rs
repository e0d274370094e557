//! Provisioning of a volume: create `img_<id>` (empty, or a clone of the snapshot it is restored
//! from), the provisioning steps that end in `Available`, and the `Available` checks (grow-only
//! resize, access data refresh). The rows `Pending`/`Error` and `Available` of the state table in
//! `mod.rs` are implemented here; an OS image reference is resolved first by `resolve.rs`, a
//! restore that needs an encrypted copy is handed to `fill.rs`, and the LUKS2 header of an empty
//! encrypted volume to `format.rs`. Only metadata calls here: nothing that takes more than
//! milliseconds.

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

/// Prefix of the image metadata keys that carry QoS limits (librbd per-image config overrides).
pub const LIMIT_METADATA_PREFIX: &str = "conf_";
/// Image metadata key of the WWN.
pub const WWN_METADATA_KEY: &str = "wwn";

/// What a step decided.
pub(super) enum Step {
    /// Continue with this (stored) image.
    Go(Box<Image>),
    /// Stop the pass with this action.
    Stop(Action),
}

/// No `img_<id>` yet: create it empty or from the snapshot.
pub(super) async fn create(ctx: &Arc<Ctx>, img: Image) -> Result<Step> {
    if let Some(sid) = img.spec.snapshot_ref.clone() {
        return create_from_snapshot(ctx, img, &sid).await;
    }
    let name = volume_image_name(&img.metadata.id);
    let size = round_size(img.spec.size);
    if let Err(e) = ignore_exists(ctx.backend.create_image(&name, size).await) {
        ctx.record(
            &img.metadata,
            EventType::Warning,
            reason::EMPTY_IMAGE_CREATION_FAILED,
            action::CREATE_IMAGE,
            format!("creating {name}: {e}"),
        );
        return Err(e.into());
    }
    ctx.record(
        &img.metadata,
        EventType::Normal,
        reason::EMPTY_IMAGE_CREATION_SUCCEEDED,
        action::CREATE_IMAGE,
        format!("created empty image of {} bytes", img.spec.size),
    );
    Ok(Step::Go(Box::new(img)))
}

/// Restore from snapshot `sid`: a clone of its rbd snapshot grown to the volume size. A missing
/// or failed snapshot, or one larger than the volume → `Error`; an encrypted volume from
/// unencrypted data → `Filling` (the copy is the op in `fill.rs`).
async fn create_from_snapshot(ctx: &Arc<Ctx>, img: Image, sid: &str) -> Result<Step> {
    let stop = |a| Ok(Step::Stop(a));
    let Some(snap) = get_opt(&ctx.snapshots, sid).await? else {
        if !img.spec.image.is_empty() {
            // The OS snapshot was removed: resolve the reference again.
            let mut img = img;
            img.spec.snapshot_ref = None;
            ctx.images.update(&img).await?;
            return stop(Action::Again);
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
        // Its final removal (or a Failed state) requeues this image.
        debug!(image = %img.metadata.id, snapshot = sid, "snapshot is being deleted");
        return stop(Action::Wait);
    }
    match &snap.status.state {
        SnapshotState::Ready | SnapshotState::Populated => {}
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
        Err(RbdError::NotFound(_)) => {
            let msg = format!("rbd snapshot {parent}@{psnap} vanished");
            mark_snapshot_failed(ctx, sid, &msg).await?;
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
            let needed = snap_size.saturating_add(LUKS2_HEADER_SIZE);
            if size < needed {
                let msg = format!(
                    "encrypted volume of {size} bytes cannot hold snapshot {sid} ({snap_size} bytes) \
                     behind the {LUKS2_HEADER_SIZE}-byte LUKS2 header: it needs {needed} bytes"
                );
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
            if img.status.state == ImageState::Error
                && img.status.message.starts_with(FILL_FAILED)
                && img.status.message.ends_with(&size_marker(size))
            {
                // The copy failed for good at this size; only a new size tries again.
                return stop(Action::Done);
            }
            img.status.state = ImageState::Filling;
            img.status.message = String::new();
            img.status.progress = None;
            let img = ctx.images.update(&img).await?;
            return start_fill(ctx, &img.metadata.id).await.map(Step::Stop);
        }
        (true, true) => {
            // The clone carries the source's LUKS header: record that before the clone exists,
            // so no later pass can format it.
            if img.status.encryption != ENCRYPTION_HEADER_SET {
                img.status.encryption = ENCRYPTION_HEADER_SET.to_string();
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
    let current = ctx.backend.stat(&name).await?.size;
    if size > current {
        ctx.backend.resize(&name, size).await?;
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
    Ok(Step::Go(Box::new(img)))
}

/// The provisioning steps after the rbd image exists: `wwn` metadata, the LUKS2 header once (on
/// the runner: `format.rs`; this pass ends there), the QoS limits as `conf_<limit>` metadata,
/// access data → `Available`.
pub(super) async fn finish(ctx: &Arc<Ctx>, mut img: Image) -> Result<Action> {
    let id = img.metadata.id.clone();
    let name = volume_image_name(&id);
    ctx.backend
        .metadata_set(&name, WWN_METADATA_KEY, &img.spec.wwn)
        .await?;
    if needs_format(&img) {
        let info = ctx.backend.stat(&name).await?;
        return format(ctx, img, &info).await;
    }
    if !img.spec.limits.is_empty() {
        for (key, value) in &img.spec.limits {
            let mkey = format!("{LIMIT_METADATA_PREFIX}{key}");
            if let Err(e) = ctx
                .backend
                .metadata_set(&name, &mkey, &value.to_string())
                .await
            {
                ctx.record(
                    &img.metadata,
                    EventType::Warning,
                    reason::SET_IMAGE_LIMIT_FAILED,
                    action::SET_IMAGE_LIMITS,
                    format!("setting {key}: {e}"),
                );
                return Err(e.into());
            }
        }
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

/// An `Available` image: grow-only resize and access refresh.
pub(super) async fn available(ctx: &Arc<Ctx>, mut img: Image, info: ImageInfo) -> Result<Action> {
    let name = info.name.clone();
    let requested = round_size(img.spec.size);
    let mut changed = false;
    if requested > info.size {
        if let Err(e) = ctx.backend.resize(&name, requested).await {
            ctx.record(
                &img.metadata,
                EventType::Warning,
                reason::UPDATE_IMAGE_SIZE_FAILED,
                action::RESIZE_IMAGE,
                format!("resizing {name} to {requested}: {e}"),
            );
            return Err(e.into());
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
    } else if requested < info.size {
        let msg = format!(
            "shrinking from {} to {requested} bytes is not supported; keeping {} bytes",
            info.size, info.size
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
