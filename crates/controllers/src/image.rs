//! The image reconciler: one stored [`Image`] ↔ one RBD image `img_<id>` (SPEC §4 and PR #876,
//! with the §9 gaps fixed as noted). Owns provisioning, resizing, access data and the deletion of
//! volumes, including re-homing their snapshots; the long steps run on the runner under the key
//! `image:<id>`.
//!
//! # States (`status.state`) and transitions
//!
//! | From | Condition (checked in this order each pass) | To / effect |
//! |---|---|---|
//! | any | `deletedAt` set | deletion path (table below) |
//! | any | finalizer `image` missing | finalizer added, pass continues |
//! | `Pending`, `Error` | `spec.image` set, no `spec.snapshotRef`; resolve OK | OS snapshot object `<digest>` created if missing, `spec.snapshotRef = <digest>`, pass continues |
//! | `Pending`, `Error` | resolve fails terminally (not found, no platform, malformed …) | `Error` + Warning (`NoPlatformMatch` / `ResolveImageFailed`) |
//! | `Pending`, `Error` | resolve fails retryably | unchanged, retried with backoff |
//! | `Pending`, `Error` | no rbd image, no snapshot ref | create empty `img_<id>` of `round(size)` → provisioning steps → `Available` |
//! | `Pending`, `Error` | no rbd image, snapshot ref: snapshot not `Ready` yet / being deleted | unchanged; the snapshot's events requeue the image |
//! | `Pending`, `Error` | snapshot missing (user restore) / `Failed` / larger than `round(size)` / rbd snapshot vanished / encrypted snapshot restored without encryption | `Error` + Warning, message says why (re-checked every pass: expanding the volume clears "too small") |
//! | `Pending`, `Error` | OS volume whose snapshot object vanished | `spec.snapshotRef` cleared (re-resolve) |
//! | `Pending`, `Error` | source and volume both unencrypted, or both encrypted | clone `parent@snap` (an encrypted source's LUKS header is inherited: `status.encryption` is set **before** the clone), grow to `round(size)` → provisioning steps → `Available` |
//! | `Pending`, `Error` | unencrypted source, encrypted volume smaller than snapshot + LUKS2 header (16 MiB) | `Error` (expanding the volume lets it continue) |
//! | `Pending`, `Error` | unencrypted source, encrypted volume; no KEK configured | `Error` |
//! | `Pending`, `Error` | unencrypted source, encrypted volume | `Filling` (Pacific cannot LUKS-format a clone) |
//! | `Filling` | (op `image:<id>` "fill", on the runner) | removes a partial `img_<id>`, creates it empty, LUKS2-formats it, copies `parent@snap` through the encryption layer (`status.progress` ≈ 1/s); success → `Pending` with `status.encryption` set; terminal failure (data does not fit, format unsupported, snapshot vanished) → `Error`, not retried at the same size; other failures remove the partial image and retry with backoff |
//! | `Pending`, `Error` | rbd image exists (resume) | provisioning steps: `wwn` metadata, LUKS2 header once (never on a clone), `conf_<limit>` metadata (one event), access data → `Available` |
//! | `Available` | rbd image exists, `round(size)` > rbd size | resize, `status.size` updated, Normal `UpdatedImageSizeSucceeded` |
//! | `Available` | `round(size)` < rbd size | stays `Available` (data intact), `status.message` = shrink refused, Warning `UpdateImageSizeFailed` once |
//! | `Available` | monitors/user/key differ from the configuration | access data refreshed |
//! | `Available` | rbd image vanished | `Error` (never silently re-created, §9.16) |
//!
//! Provisioning failures that are retryable leave the state alone and retry with backoff; terminal
//! ones (no KEK, undecryptable passphrase, encryption unsupported by the backend) set `Error`.
//! `Error` is re-evaluated on every pass (events and the periodic resync), so fixing the cause
//! (expanding the volume, configuring the KEK) lets provisioning continue.
//!
//! # Deletion path (`deletedAt` set)
//!
//! | Step | What happens |
//! |---|---|
//! | 0 | An operation of this image that is not a flatten (a `Filling` copy) is cancelled; the pass waits for its completion. |
//! | 1 | No `img_<id>` → step 6. |
//! | 2 | Each rbd snapshot `s` of `img_<id>` whose Snapshot object is live (not deleted, not `Failed`) and still points at this volume is **re-homed**: an internal Image `s` (labels [`INTERNAL_LABEL`]`=rehome`, [`REHOME_OF_LABEL`]`=<id>`, no manager label, so it never appears in ListVolumes) with `snapshotRef = s`, size = the snapshot's size, limits and encryption of the volume; its own reconciler clones it. The pass waits until every `img_<s>` exists. Other rbd snapshots are *orphans* (no record, record deleted or `Failed`, §9.21): nobody can reference them, so they are flattened away and removed instead of blocking deletion forever. |
//! | 3 | Children of `img_<id>` (re-home clones and restored volumes) → `FlatteningChildren`, op `image:<id>` "flatten children" on the runner (`status.progress` = children done/total ≈ 1/s). The pass re-runs on completion and repeats until no child is left. |
//! | 4 | For each re-homed `s`: snapshot `s` (+protect) on `img_<s>`, Snapshot `s` repointed (`source.volumeImageId = s`) **before** the rbd snapshot is removed from the volume (a crash in between cannot lose the pointer). Orphans are removed. |
//! | 5 | `img_<id>` removed (not-found ignored). |
//! | 6 | Finalizer dropped (the object vanishes), Normal `ImageDeletionSucceeded`. |

use std::sync::Arc;

use rbd::{ImageInfo, Passphrase, RbdError, WriteOptions};
use store::keys::{ARCHITECTURE_LABEL, CLASS_LABEL, IMAGE_DIGEST_LABEL, IMAGE_FINALIZER};
use store::{
    EncryptionType, Image, ImageAccess, ImageSpec, ImageState, Snapshot, SnapshotSource,
    SnapshotState, StoreError, ENCRYPTION_HEADER_SET,
};
use tracing::{debug, info};

use crate::ctx::{get_opt, ignore_exists, ignore_not_found, modify, Action, Ctx, OpEnv};
use crate::events::EventType;
use crate::{
    image_key, round_size, snapshot, volume_image_name, ControllerError, Result, SourceError,
    INTERNAL_LABEL, INTERNAL_REHOME, REHOME_OF_LABEL,
};

/// Prefix of the image metadata keys that carry QoS limits (librbd per-image config overrides).
pub const LIMIT_METADATA_PREFIX: &str = "conf_";
/// Image metadata key of the WWN.
pub const WWN_METADATA_KEY: &str = "wwn";
/// Bytes the LUKS2 header takes at the start of an encrypted image (Ceph's librbd format; see
/// CEPH-LAB.md). The data of an encrypted volume starts behind it.
pub const LUKS2_HEADER_SIZE: u64 = 16 * 1024 * 1024;
/// Start of `status.message` when the encrypted copy of a restore failed for good.
const FILL_FAILED: &str = "encrypted copy failed";

/// What a step decided.
enum Step {
    /// Continue with this (stored) image.
    Go(Box<Image>),
    /// Stop the pass with this action.
    Stop(Action),
}

/// One reconcile pass of image `id`.
pub(crate) async fn reconcile(ctx: &Arc<Ctx>, id: &str) -> Result<Action> {
    let Some(mut img) = get_opt(&ctx.images, id).await? else {
        return Ok(Action::Done);
    };
    if img.metadata.is_deleted() {
        return delete(ctx, img).await;
    }
    if img.metadata.add_finalizer(IMAGE_FINALIZER) {
        img = ctx.images.update(&img).await?;
    }
    if !img.spec.image.is_empty() && img.spec.snapshot_ref.is_none() {
        match resolve_os_image(ctx, img).await? {
            Step::Go(i) => img = *i,
            Step::Stop(a) => return Ok(a),
        }
    }
    let name = volume_image_name(id);
    let info = match ctx.backend.stat(&name).await {
        Ok(info) => Some(info),
        Err(RbdError::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    match (&img.status.state, info) {
        (ImageState::Available, Some(info)) => return available(ctx, img, info).await,
        (ImageState::Available, None) => {
            let msg = format!("rbd image {name} vanished");
            return set_error(ctx, img, "ImageVanished", "ProvisionImage", msg).await;
        }
        (ImageState::Filling, _) => return start_fill(ctx, &img.metadata.id).await,
        (_, None) => match create(ctx, img).await? {
            Step::Go(i) => img = *i,
            Step::Stop(a) => return Ok(a),
        },
        (_, Some(_)) => {}
    }
    finish(ctx, img).await
}

fn wants_encryption(img: &Image) -> bool {
    matches!(&img.spec.encryption, Some(e) if e.encryption_type == EncryptionType::Encrypted)
}

/// Sets `Error` with `message` (Warning event only when the message changes). Ends the pass:
/// `Error` is re-evaluated by later passes (events, resync).
async fn set_error(
    ctx: &Ctx,
    img: Image,
    reason: &str,
    action: &str,
    message: String,
) -> Result<Action> {
    if img.status.state == ImageState::Error && img.status.message == message {
        return Ok(Action::Done);
    }
    info!(image = %img.metadata.id, %message, "image in error");
    ctx.record(
        &img.metadata,
        EventType::Warning,
        reason,
        action,
        message.clone(),
    );
    let mut img = img;
    img.status.state = ImageState::Error;
    img.status.message = message;
    img.status.progress = None;
    ctx.images.update(&img).await?;
    Ok(Action::Done)
}

/// OS image reference → Snapshot object `<digest>` and `spec.snapshotRef` (SPEC §4.2 step 4).
async fn resolve_os_image(ctx: &Ctx, img: Image) -> Result<Step> {
    let arch = img
        .spec
        .image_architecture
        .clone()
        .filter(|a| !a.is_empty());
    let resolved = match ctx.source.resolve(&img.spec.image, arch.as_deref()).await {
        Ok(r) => r,
        Err(e) if e.is_retryable() => return Err(e.into()),
        Err(e) => {
            let reason = match e {
                SourceError::NoPlatformMatch(_) => "NoPlatformMatch",
                _ => "ResolveImageFailed",
            };
            let msg = format!("resolving {}: {e}", img.spec.image);
            return set_error(ctx, img, reason, "ResolveImage", msg)
                .await
                .map(Step::Stop);
        }
    };
    let digest = resolved.digest.clone();
    if get_opt(&ctx.snapshots, &digest).await?.is_none() {
        let mut snap = Snapshot::new(
            digest.clone(),
            SnapshotSource {
                ironcore_image: resolved.pinned(),
                volume_image_id: String::new(),
            },
        );
        snap.metadata
            .labels
            .insert(IMAGE_DIGEST_LABEL.to_string(), digest.clone());
        if let Some(a) = &arch {
            snap.metadata
                .labels
                .insert(ARCHITECTURE_LABEL.to_string(), a.clone());
        }
        match ctx.snapshots.create(snap).await {
            Ok(_) | Err(StoreError::AlreadyExists(_)) => ctx.record(
                &img.metadata,
                EventType::Normal,
                "CreateImageSnapshotSucceeded",
                "CreateImageSnapshot",
                format!("image snapshot {digest} for {}", img.spec.image),
            ),
            Err(e) => {
                ctx.record(
                    &img.metadata,
                    EventType::Warning,
                    "CreateImageSnapshotFailed",
                    "CreateImageSnapshot",
                    format!("image snapshot {digest}: {e}"),
                );
                return Err(e.into());
            }
        }
    }
    let mut img = img;
    img.spec.snapshot_ref = Some(digest);
    Ok(Step::Go(Box::new(ctx.images.update(&img).await?)))
}

/// No `img_<id>` yet: create it empty or from the snapshot.
async fn create(ctx: &Arc<Ctx>, img: Image) -> Result<Step> {
    if let Some(sid) = img.spec.snapshot_ref.clone() {
        return create_from_snapshot(ctx, img, &sid).await;
    }
    let name = volume_image_name(&img.metadata.id);
    let size = round_size(img.spec.size);
    if let Err(e) = ignore_exists(ctx.backend.create_image(&name, size).await) {
        ctx.record(
            &img.metadata,
            EventType::Warning,
            "EmptyImageCreationFailed",
            "CreateImage",
            format!("creating {name}: {e}"),
        );
        return Err(e.into());
    }
    ctx.record(
        &img.metadata,
        EventType::Normal,
        "EmptyImageCreationSucceeded",
        "CreateImage",
        format!("created empty image of {} bytes", img.spec.size),
    );
    Ok(Step::Go(Box::new(img)))
}

/// Whether the data of `snap` is LUKS-encrypted (a snapshot of an encrypted volume).
async fn snapshot_encrypted(ctx: &Ctx, snap: &Snapshot) -> Result<bool> {
    if snap.source.volume_image_id.is_empty() {
        return Ok(false);
    }
    Ok(get_opt(&ctx.images, &snap.source.volume_image_id)
        .await?
        .is_some_and(|src| {
            src.status.encryption == ENCRYPTION_HEADER_SET || wants_encryption(&src)
        }))
}

/// SPEC §4.2.1, with the §9 fixes: missing/failed/too-small → `Error`; encrypted volumes from
/// unencrypted data → `Filling`.
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
        return set_error(ctx, img, "SnapshotNotFound", "CreateImageFromSnapshot", msg)
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
            return set_error(ctx, img, "SnapshotFailed", "CreateImageFromSnapshot", msg)
                .await
                .map(Step::Stop);
        }
        _ => return stop(Action::Wait),
    }
    let snap_size = u64::try_from(snap.status.size).unwrap_or(0);
    let size = round_size(img.spec.size);
    if size < snap_size {
        let msg = format!("volume size {size} is smaller than snapshot {sid} size {snap_size}");
        return set_error(
            ctx,
            img,
            "ImageSizeIsSmallerThanSnapshotSize",
            "CreateImageFromSnapshot",
            msg,
        )
        .await
        .map(Step::Stop);
    }
    let Some((parent, psnap)) = snapshot::source_details(&snap) else {
        let msg = format!("snapshot {sid} has no source");
        return set_error(ctx, img, "SnapshotFailed", "CreateImageFromSnapshot", msg)
            .await
            .map(Step::Stop);
    };
    match ctx.backend.is_snapshot_protected(&parent, &psnap).await {
        Ok(true) => {}
        Ok(false) => ctx.backend.protect_snapshot(&parent, &psnap).await?,
        Err(RbdError::NotFound(_)) => {
            let msg = format!("rbd snapshot {parent}@{psnap} vanished");
            snapshot::mark_failed(ctx, sid, &msg).await?;
            return set_error(ctx, img, "SnapshotFailed", "CreateImageFromSnapshot", msg)
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
            return set_error(
                ctx,
                img,
                "CreateImageFromSnapshotFailed",
                "CreateImageFromSnapshot",
                msg,
            )
            .await
            .map(Step::Stop);
        }
        (false, true) => {
            // Pacific cannot LUKS-format a clone: build an encrypted image and copy the data.
            if ctx.cfg.kek.is_none() {
                let msg = "encrypted volume but no key-encryption key configured".to_string();
                return set_error(
                    ctx,
                    img,
                    "ConfigureEncryptionFailed",
                    "ConfigureEncryption",
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
                return set_error(
                    ctx,
                    img,
                    "ImageSizeIsSmallerThanSnapshotSize",
                    "CreateImageFromSnapshot",
                    msg,
                )
                .await
                .map(Step::Stop);
            }
            if img.status.state == ImageState::Error
                && img.status.message.starts_with(FILL_FAILED)
                && img.status.message.ends_with(&fill_marker(size))
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
            "CreateImageFromSnapshotFailed",
            "CreateImageFromSnapshot",
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
            "ImagePullSucceeded",
            "PullImage",
            format!("Pulled image {}", snap.source.ironcore_image),
        );
    }
    ctx.record(
        &img.metadata,
        EventType::Normal,
        "CreateImageFromSnapshotSucceeded",
        "CreateImageFromSnapshot",
        format!("cloned from snapshot {sid}"),
    );
    Ok(Step::Go(Box::new(img)))
}

/// The provisioning steps after the rbd image exists (SPEC §4.2 steps 9–13).
async fn finish(ctx: &Arc<Ctx>, mut img: Image) -> Result<Action> {
    let id = img.metadata.id.clone();
    let name = volume_image_name(&id);
    ctx.backend
        .metadata_set(&name, WWN_METADATA_KEY, &img.spec.wwn)
        .await?;
    if wants_encryption(&img) && img.status.encryption != ENCRYPTION_HEADER_SET {
        let pass = match passphrase(ctx, &img) {
            Ok(p) => p,
            Err(msg) => {
                return set_error(
                    ctx,
                    img,
                    "ConfigureEncryptionFailed",
                    "ConfigureEncryption",
                    msg,
                )
                .await
            }
        };
        // Never format a clone: it would hide (Reef+) or be refused (Pacific). Only images this
        // reconciler created empty reach this point with the header unset.
        if ctx.backend.stat(&name).await?.parent.is_some() {
            let msg = format!("{name} is a clone and cannot be LUKS-formatted");
            return set_error(
                ctx,
                img,
                "ConfigureEncryptionFailed",
                "ConfigureEncryption",
                msg,
            )
            .await;
        }
        match ctx.backend.encryption_format(&name, &pass).await {
            Ok(()) => {}
            Err(e) if e.is_retryable() => {
                ctx.record(
                    &img.metadata,
                    EventType::Warning,
                    "ConfigureEncryptionFailed",
                    "ConfigureEncryption",
                    format!("formatting {name}: {e}"),
                );
                return Err(e.into());
            }
            Err(e) => {
                let msg = format!("formatting {name}: {e}");
                return set_error(
                    ctx,
                    img,
                    "ConfigureEncryptionFailed",
                    "ConfigureEncryption",
                    msg,
                )
                .await;
            }
        }
        img.status.encryption = ENCRYPTION_HEADER_SET.to_string();
        img = ctx.images.update(&img).await?;
        ctx.record(
            &img.metadata,
            EventType::Normal,
            "ConfigureEncryptionSucceeded",
            "ConfigureEncryption",
            "LUKS2 header written",
        );
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
                    "SetImageLimitFailed",
                    "SetImageLimits",
                    format!("setting {key}: {e}"),
                );
                return Err(e.into());
            }
        }
        ctx.record(
            &img.metadata,
            EventType::Normal,
            "SetImageLimitsSucceeded",
            "SetImageLimits",
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

/// The passphrase of an encrypted volume, or why it cannot be had.
fn passphrase(ctx: &Ctx, img: &Image) -> std::result::Result<Passphrase, String> {
    let Some(kek) = &ctx.cfg.kek else {
        return Err("encrypted volume but no key-encryption key configured".into());
    };
    let stored = img
        .spec
        .encryption
        .as_ref()
        .map(|e| e.encrypted_passphrase.as_slice());
    kek.decrypt(stored.unwrap_or_default())
        .map(Passphrase::new)
        .map_err(|e| e.to_string())
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
async fn available(ctx: &Arc<Ctx>, mut img: Image, info: ImageInfo) -> Result<Action> {
    let name = info.name.clone();
    let requested = round_size(img.spec.size);
    let mut changed = false;
    if requested > info.size {
        if let Err(e) = ctx.backend.resize(&name, requested).await {
            ctx.record(
                &img.metadata,
                EventType::Warning,
                "UpdateImageSizeFailed",
                "ResizeImage",
                format!("resizing {name} to {requested}: {e}"),
            );
            return Err(e.into());
        }
        ctx.record(
            &img.metadata,
            EventType::Normal,
            "UpdatedImageSizeSucceeded",
            "ResizeImage",
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
                "UpdateImageSizeFailed",
                "ResizeImage",
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

/// Submits the fill operation of an encrypted restore.
async fn start_fill(ctx: &Arc<Ctx>, id: &str) -> Result<Action> {
    let owned = id.to_string();
    ctx.start_op(image_key(id), move |ctx, env| async move {
        fill(ctx, owned, env).await
    })
    .await
}

fn fill_marker(size: u64) -> String {
    format!("(volume size {size})")
}

/// Op "fill" (`image:<id>`): builds an encrypted `img_<id>` holding the snapshot's data.
async fn fill(ctx: Arc<Ctx>, id: String, env: OpEnv) -> Result<()> {
    let Some(img) = get_opt(&ctx.images, &id).await? else {
        return Ok(());
    };
    if img.metadata.is_deleted() || img.status.state != ImageState::Filling {
        return Ok(());
    }
    let marker = fill_marker(round_size(img.spec.size));
    let fail = |msg: String| {
        let ctx = ctx.clone();
        let id = id.clone();
        let msg = format!("{FILL_FAILED}: {msg} {marker}");
        async move {
            let img = get_opt(&ctx.images, &id).await?;
            if let Some(img) = img.filter(|i| !i.metadata.is_deleted()) {
                set_error(
                    &ctx,
                    img,
                    "CreateImageFromSnapshotFailed",
                    "CreateImageFromSnapshot",
                    msg,
                )
                .await?;
            }
            Ok::<(), ControllerError>(())
        }
    };
    let sid = img.spec.snapshot_ref.clone().unwrap_or_default();
    let snap = get_opt(&ctx.snapshots, &sid).await?;
    let Some((snap, (parent, psnap))) =
        snap.and_then(|s| snapshot::source_details(&s).map(|d| (s, d)))
    else {
        return fail(format!("snapshot {sid} vanished")).await;
    };
    let pass = match passphrase(&ctx, &img) {
        Ok(p) => p,
        Err(msg) => return fail(msg).await,
    };
    let name = volume_image_name(&id);
    // A partial image of an interrupted run (or of this run, on failure) is never kept.
    ignore_not_found(ctx.backend.remove_image(&name).await)?;
    ctx.backend
        .create_image(&name, round_size(img.spec.size))
        .await?;
    let result = copy_encrypted(&ctx, &img, &snap, &parent, &psnap, &pass, &env).await;
    match result {
        Ok(()) => {}
        Err(e) => {
            if let Err(re) = ignore_not_found(ctx.backend.remove_image(&name).await) {
                debug!(image = %id, error = %re, "removing the partial image failed");
            }
            return match e {
                ControllerError::Rbd(RbdError::InvalidArgument(m))
                | ControllerError::Rbd(RbdError::Unsupported(m)) => {
                    fail(format!(
                        "copying snapshot {sid} into the encrypted volume: {m}"
                    ))
                    .await
                }
                other => Err(other),
            };
        }
    }
    let done = modify(&ctx.images, &id, |i: &mut Image| {
        if i.metadata.is_deleted() || i.status.state != ImageState::Filling {
            return false;
        }
        i.status.state = ImageState::Pending;
        i.status.encryption = ENCRYPTION_HEADER_SET.to_string();
        i.status.progress = None;
        i.status.message = String::new();
        true
    })
    .await?;
    if let Some(img) = done {
        ctx.record(
            &img.metadata,
            EventType::Normal,
            "CreateImageFromSnapshotSucceeded",
            "CreateImageFromSnapshot",
            format!("encrypted copy of snapshot {sid}"),
        );
    }
    Ok(())
}

async fn copy_encrypted(
    ctx: &Arc<Ctx>,
    img: &Image,
    snap: &Snapshot,
    parent: &str,
    psnap: &str,
    pass: &Passphrase,
    env: &OpEnv,
) -> Result<()> {
    let name = volume_image_name(&img.metadata.id);
    ctx.backend.encryption_format(&name, pass).await?;
    let chunk = ctx.cfg.chunk_size();
    let data = ctx.backend.read_stream(parent, Some(psnap), chunk).await?;
    let total_hint = u64::try_from(snap.status.size).unwrap_or(0);
    let opts = WriteOptions {
        chunk_size: chunk,
        queue_depth: ctx.cfg.populate_queue_depth.max(1),
        skip_zeroes: true,
        total_hint,
        passphrase: Some(pass.clone()),
    };
    let (cell, progress) = env.tracker();
    let token = env.token.child_token();
    let write = ctx
        .backend
        .write_stream(&name, data, opts, progress, token.clone());
    let id = img.metadata.id.clone();
    let out = ctx
        .drive(write, &cell, &token, |d, t| {
            let ctx = ctx.clone();
            let id = id.clone();
            async move { ctx.persist_image_progress(&id, d, t).await }
        })
        .await;
    match out {
        Ok(r) => r.map(|_| ()).map_err(Into::into),
        Err(_) => Err(ControllerError::Op {
            key: image_key(&id),
            reason: "copy made no progress and was cancelled".into(),
        }),
    }
}

/// Deletion path (see the module docs).
async fn delete(ctx: &Arc<Ctx>, img: Image) -> Result<Action> {
    if !img.metadata.has_finalizer(IMAGE_FINALIZER) {
        return Ok(Action::Done);
    }
    let id = img.metadata.id.clone();
    let key = image_key(&id);
    if img.status.state != ImageState::FlatteningChildren && ctx.op_active(&key) {
        ctx.cancel_op(&key);
        return Ok(Action::Wait);
    }
    let name = volume_image_name(&id);
    let info = match ctx.backend.stat(&name).await {
        Ok(i) => Some(i),
        Err(RbdError::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(info) = info {
        // Step 2: classify the rbd snapshots and make sure every live one has its new home.
        let mut rehome = Vec::new();
        let mut waiting = false;
        for s in &info.snapshots {
            let rec = get_opt(&ctx.snapshots, &s.name).await?;
            let live = rec.as_ref().is_some_and(|r| {
                !r.metadata.is_deleted()
                    && r.status.state != SnapshotState::Failed
                    && r.source.volume_image_id == id
            });
            if !live {
                continue;
            }
            if !ensure_rehome_image(ctx, &img, &s.name, s.size).await? {
                waiting = true;
            }
            rehome.push(s.name.clone());
        }
        if waiting {
            debug!(image = %id, "waiting for re-homed snapshot images");
            return Ok(Action::Wait);
        }
        // Step 3: flatten every child of the volume on the runner.
        let children = ctx.backend.list_children(&name, None).await?;
        if !children.is_empty() {
            let mut img = img;
            if img.status.state != ImageState::FlatteningChildren {
                img.status.state = ImageState::FlatteningChildren;
                img.status.progress = None;
                ctx.images.update(&img).await?;
            }
            let owned = id.clone();
            return ctx
                .start_op(key, move |ctx, env| async move {
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
            "ImageDeletionSucceeded",
            "DeleteImage",
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

/// Op "flatten children" (`image:<id>`, SPEC §4.5.1): flattens every child of `img_<id>`.
pub(crate) async fn flatten_children(ctx: Arc<Ctx>, id: String, env: OpEnv) -> Result<()> {
    let Some(img) = get_opt(&ctx.images, &id).await? else {
        return Ok(());
    };
    if !img.metadata.is_deleted() || img.status.state != ImageState::FlatteningChildren {
        return Ok(());
    }
    let name = volume_image_name(&id);
    let result = flatten_all(&ctx, &image_key(&id), &name, None, &env, |d, t| {
        let ctx = ctx.clone();
        let id = id.clone();
        async move { ctx.persist_image_progress(&id, d, t).await }
    })
    .await;
    if let Err(e) = &result {
        let msg = e.to_string();
        let _ = modify(&ctx.images, &id, |i: &mut Image| {
            i.status.message = format!("flattening children: {msg}");
            true
        })
        .await;
    }
    result
}

/// Flattens the children of `image` (of its snapshot `snap`, or of all its snapshots), one by
/// one, reporting children done/total. Fails if a flattened child is still listed afterwards:
/// it then depends on `image` through snapshots of its own, which no flatten can change, and
/// retrying at once would only spin.
pub(crate) async fn flatten_all<P, PF>(
    ctx: &Arc<Ctx>,
    key: &str,
    image: &str,
    snap: Option<&str>,
    env: &OpEnv,
    persist: P,
) -> Result<()>
where
    P: FnMut(u64, u64) -> PF,
    PF: std::future::Future<Output = ()>,
{
    let children = match ctx.backend.list_children(image, snap).await {
        Ok(c) => c,
        Err(RbdError::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if children.is_empty() {
        return Ok(());
    }
    let total = children.len() as u64;
    let (cell, progress) = env.tracker();
    let token = env.token.child_token();
    let backend = ctx.backend.clone();
    let names: Vec<String> = children.iter().map(|c| c.image.clone()).collect();
    let child_token = token.clone();
    let work = async move {
        for (i, child) in names.iter().enumerate() {
            let done = i as u64;
            progress(done, total);
            // Children are counted whole; the backend's object-level reports only keep the
            // stall watchdog quiet.
            let p = progress.clone();
            let inner: rbd::ProgressFn = Arc::new(move |_, _| p(done, total));
            match backend.flatten(child, inner, child_token.clone()).await {
                Ok(()) | Err(RbdError::NotFound(_)) => {}
                Err(e) => return Err(ControllerError::Rbd(e)),
            }
        }
        progress(total, total);
        Ok(())
    };
    match ctx.drive(work, &cell, &token, persist).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(ControllerError::Op {
                key: key.to_string(),
                reason: "flatten made no progress and was cancelled".into(),
            })
        }
    }
    let left = match ctx.backend.list_children(image, snap).await {
        Ok(c) => c,
        Err(RbdError::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let stuck: Vec<String> = left
        .into_iter()
        .filter(|c| children.contains(c))
        .map(|c| c.image)
        .collect();
    if stuck.is_empty() {
        Ok(())
    } else {
        Err(ControllerError::Op {
            key: key.to_string(),
            reason: format!(
                "{} still depend on {image} through their own snapshots",
                stuck.join(", ")
            ),
        })
    }
}
