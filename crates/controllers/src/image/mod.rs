//! The image reconciler: one stored [`store::Image`] ↔ one RBD image `img_<id>`. Owns
//! provisioning, resizing, access data and the deletion of volumes under both deletion policies
//! (keeping a deleted volume's image hidden while its snapshots need it, or re-homing its
//! snapshots); the long steps run on the runner under the key `image:<id>`. It touches Snapshot
//! objects only to create an OS image's snapshot, to mark one `Failed` whose rbd snapshot vanished
//! (the shared write in `status.rs`), to repoint re-homed ones and to delete an OS image's
//! snapshot whose populate no volume waits for any more; it does not depend on the
//! snapshot reconciler.
//!
//! # Phases (one file each)
//! * `mod.rs` (this file): the pass dispatcher and the state table below.
//! * `resolve.rs`: the `Resolving` state's op "resolve", an OS image reference → its snapshot.
//! * `provision.rs`: create the rbd image (empty or from a snapshot), the provisioning steps that
//!   end in `Available`, and the `Available` checks (resize, access data).
//! * `format.rs`: the `Formatting` state's op "format", the LUKS2 header of an empty volume.
//! * `fill.rs`: the `Filling` state's op "fill", the encrypted copy of a restore of plain data.
//! * `delete.rs`: the deletion path under both policies, `Retained` and the re-homing of
//!   snapshots (its step tables are there).
//! * `encryption.rs`: what the phases ask about encryption (wanted? source encrypted? passphrase).
//!
//! # States (`status.state`) and transitions
//!
//! A pass only reads, decides, makes metadata calls and submits; every row marked *(op)* runs
//! on the runner (class in brackets), bounded by the deadlines in the crate docs.
//!
//! | From | Condition (checked in this order each pass) | To / effect |
//! |---|---|---|
//! | any | `deletedAt` set | deletion path (step table in `delete.rs`) |
//! | any | finalizer `image` missing | finalizer added, pass continues |
//! | `Available`, or `Error` with access data (*provisioned*) | rbd image answers not found and the pool's image list confirms it is gone | `Error` "volume data lost: … vanished" + one Warning `ImageVanished`; never provisioned again (only deletion); a not-found the list contradicts fails the pass (retried with backoff) |
//! | provisioned | rbd image exists | the `Available` rows below; an `Error` one (image back after a transient error, a refused resize asked again at a new size) → `Available` |
//! | not provisioned | rbd image half-removed (`stat` answers `Busy`: a crash interrupted the removal of a partial image) | its removal finished, the pass goes on without an image |
//! | `Pending` (any state but `Error`, `Available`, `Resolving`) | `spec.image` set, no `spec.snapshotRef` | `Resolving`, op "resolve" submitted |
//! | `Resolving` | (pass) | op "resolve" (re)submitted: a restart resumes here; the runner deduplicates |
//! | `Error` | `spec.image` set, no `spec.snapshotRef`; no terminal resolve failure within `resync_period` (in memory) | op "resolve" submitted, state stays `Error` |
//! | `Error` | same, terminal resolve failure within `resync_period` | unchanged (the next resync after it tries again) |
//! | `Resolving`, `Error` | *(op "resolve" (class populate))* resolved within `resolve_timeout` | OS snapshot object `<digest>` created if missing, `spec.snapshotRef = <digest>`, → `Pending` |
//! | `Resolving`, `Error` | *(op)* the snapshot `<digest>` is being deleted (unused, garbage-collected) | retryable failure: resolved again once it is gone (a new one is populated) |
//! | `Resolving`, `Error` | *(op)* terminal failure (not found, no platform, malformed …) | `Error` + Warning (`NoPlatformMatch` / `ResolveImageFailed`, once per message) |
//! | `Resolving` | *(op)* retryable failure (registry unavailable, `resolve_timeout` passed) | `status.message` = `retrying: …`; op fails → retried with backoff |
//! | `Pending`, `Error` | no rbd image, no snapshot ref | encrypted: `status.headerSize = 16 MiB` written first; create empty `img_<id>` of `round(size) + headerSize` → provisioning steps → `Available` |
//! | `Pending`, `Error` | the backend refuses the create for good (`InvalidArgument`, `Unsupported`) | `Error` + one Warning `EmptyImageCreationFailed`, marked with the size: not retried until the size changes |
//! | `Pending`, `Error` | no rbd image, snapshot ref: snapshot not `Ready` yet, or being deleted and no longer `Ready` | unchanged; the snapshot's events requeue the image |
//! | `Pending`, `Error` | snapshot being deleted but still `Ready`, a user restore | restored from it (the snapshot's deletion waits for this restore) |
//! | `Pending`, `Error` | OS volume whose snapshot is being deleted | `spec.snapshotRef` cleared (resolved again once it is gone) |
//! | `Pending`, `Error` | internal re-home image whose snapshot is gone | deleted |
//! | `Pending`, `Error` | snapshot missing (user restore) / `Failed` / larger than `round(size)` (sizes are the guest's) / rbd snapshot definitely gone / encrypted snapshot restored without encryption | `Error` + Warning, message says why (re-checked every pass: expanding the volume clears "too small"); a rbd snapshot gone because the snapshot was re-homed meanwhile is looked up again instead |
//! | `Pending`, `Error` | OS volume whose snapshot object vanished | `spec.snapshotRef` cleared (re-resolve) |
//! | `Pending`, `Error` | source and volume both unencrypted, or both encrypted | clone `parent@snap` (an encrypted source's LUKS header is inherited: `status.encryption` and `headerSize` are set **before** the clone) → provisioning steps (grown to `round(size) + headerSize`) → `Available` |
//! | `Pending`, `Error` | unencrypted source, encrypted volume; no KEK configured | `Error` |
//! | `Pending`, `Error` | unencrypted source, encrypted volume | `Filling` with `headerSize = 16 MiB`, op "fill" submitted (Pacific cannot LUKS-format a clone) |
//! | `Filling` | (pass) | op "fill" (re)submitted |
//! | `Filling` | *(op "fill" (class fill))* | removes a partial `img_<id>`, creates it empty (`round(size) + headerSize`; an older `Filling` record without `headerSize` gets it first), LUKS2-formats it (`format_timeout`), copies `parent@snap` through the encryption layer (`status.progress` ≈ 1/s, stall watchdog); success → `Pending` with `status.encryption` set; terminal failure (data does not fit, format unsupported, snapshot vanished) → `Error`, not retried at the same size; other failures remove the partial image and retry with backoff |
//! | `Pending`, `Error` | rbd image exists (resume) | provisioning steps: image grown to `round(size) + headerSize` (a refusal for good: `Error` + one Warning `UpdateImageSizeFailed`, not retried at that size); if the volume is encrypted and its header not set: the row below; then the `wwn` and `conf_<limit>` metadata in one `metadata_set_all` (one event for the limits), access data → `Available`. The pass that creates the image, or found it with its `stat`, does not `stat` it again |
//! | `Pending`, `Error` | header needed; no KEK, passphrase undecryptable, or the image is a clone | `Error` + Warning (re-checked every pass: configuring the KEK lets it continue) |
//! | `Error` | header needed; the format was refused for good at this `round(size)` | unchanged (a new size tries again) |
//! | `Pending`, `Error` | header needed | `Formatting`, op "format" submitted |
//! | `Formatting` | rbd image exists | op "format" (re)submitted: a restart resumes here |
//! | `Formatting` | rbd image missing | created empty again, then as above |
//! | `Formatting` | *(op "format" (class fill))* formatted within `format_timeout` | `status.encryption = EncryptionHeaderSet`, → `Pending`, Normal `ConfigureEncryptionSucceeded` |
//! | `Formatting` | *(op)* no KEK / passphrase undecryptable / a clone | `Error` + Warning |
//! | `Formatting` | *(op)* the backend refuses the format (unsupported, invalid) | `Error` + Warning, marked with the size |
//! | `Formatting` | *(op)* retryable failure, `format_timeout` passed, or an earlier format of the image still running in the background | Warning, `status.message` = `retrying: …`; op fails → retried with backoff |
//! | `Available` | rbd image exists, `round(size)` > rbd size − `headerSize` | resize to `round(size) + headerSize`, `status.size` updated, Normal `UpdatedImageSizeSucceeded`; a transient failure: Warning `UpdateImageSizeFailed` (once while it repeats), retried with backoff |
//! | `Available` | the backend refuses the resize for good (`InvalidArgument`, `Unsupported`) | `Error` + one Warning `UpdateImageSizeFailed`, data and size kept, marked with the size: not retried until the size changes |
//! | `Available` | resize answers not found | as a vanished image (first rows) |
//! | `Available` | `round(size)` < rbd size − `headerSize` | stays `Available` (data intact), `status.message` = shrink refused, Warning `UpdateImageSizeFailed` once |
//! | `Available` | monitors/user/key differ from the configuration | access data refreshed |
//!
//! Events repeat only when something changed: an event identical to the last one recorded about
//! the same object is not recorded again (`Ctx::record`).
//!
//! Provisioning failures that are retryable leave the state alone and retry with backoff; terminal
//! ones (no KEK, undecryptable passphrase, encryption unsupported by the backend) set `Error`.
//! `Error` is re-evaluated on every pass (events and the periodic resync), so fixing the cause
//! (expanding the volume, configuring the KEK) lets provisioning continue. Two causes are not
//! re-tried at every pass, because re-trying means another long operation: a terminal resolve
//! failure (tried again once `resync_period` has passed) and an encrypted copy or format refused
//! for good (tried again at a new size).

use std::sync::Arc;

use rbd::RbdError;
use store::keys::IMAGE_FINALIZER;
use store::{Image, ImageState};

use crate::ctx::{get_opt, ignore_not_found, Action, Ctx};
use crate::events::{action, reason};
use crate::status::set_image_error;
use crate::{volume_image_name, Result};

mod delete;
mod encryption;
mod fill;
mod format;
mod provision;
mod resolve;

use delete::delete;
use fill::start_fill;
use format::start_format;
use provision::{available, create, finish, Step};
pub use provision::{LIMIT_METADATA_PREFIX, WWN_METADATA_KEY};
use resolve::{needs_resolve, resolve};

/// One reconcile pass of image `id`.
pub(crate) async fn reconcile(ctx: &Arc<Ctx>, id: &str) -> Result<Action> {
    let Some(mut img) = get_opt(&ctx.images, id).await? else {
        ctx.forget(id);
        return Ok(Action::Done);
    };
    if img.metadata.is_deleted() {
        return delete(ctx, img).await;
    }
    if img.metadata.add_finalizer(IMAGE_FINALIZER) {
        img = ctx.images.update(&img).await?;
    }
    // A provisioned volume is never resolved again: a missing reference (Go records) changes
    // nothing.
    if needs_resolve(&img) && !provisioned(&img) {
        return resolve(ctx, img).await;
    }
    let name = volume_image_name(id);
    let info = match ctx.backend.stat(&name).await {
        Ok(info) => Some(info),
        Err(RbdError::NotFound(_)) => None,
        // Half-removed (listed, cannot be opened): a crash interrupted the removal of a partial
        // image (a fill or format starting again). Before the volume is provisioned nothing
        // else removes its image, so the removal is finished and the pass goes on without one;
        // else the volume would wait for ever (every pass failing on the same answer).
        Err(RbdError::Busy(_)) if !provisioned(&img) => {
            ignore_not_found(ctx.backend.remove_image(&name).await)?;
            None
        }
        Err(e) => return Err(e.into()),
    };
    if provisioned(&img) {
        // Never provisioned again: its image holds the guest's data, and an empty one in its
        // place would hide the loss.
        return match info {
            Some(info) => available(ctx, img, info).await,
            None => lost(ctx, img, &name).await,
        };
    }
    let known = match (&img.status.state, info) {
        (ImageState::Filling, _) => return start_fill(ctx, &img.metadata.id).await,
        (ImageState::Formatting, Some(_)) => return start_format(ctx, &img.metadata.id).await,
        (_, None) => match create(ctx, img).await? {
            Step::Go(i, known) => {
                img = *i;
                known
            }
            Step::Stop(a) => return Ok(a),
        },
        (_, Some(info)) => Some(info),
    };
    finish(ctx, img, known).await
}

/// Whether the volume has been provisioned: it is `Available`, or in `Error` with access data
/// (only the step to `Available` writes access data and nothing removes it, so an `Error` volume
/// with access data was `Available` before: its image vanished or a resize was refused).
pub(crate) fn provisioned(img: &Image) -> bool {
    match img.status.state {
        ImageState::Available => true,
        ImageState::Error => img.status.access.is_some(),
        _ => false,
    }
}

/// Start of `status.message` of a provisioned volume whose rbd image is gone for good.
pub(crate) const IMAGE_LOST: &str = "volume data lost";

/// A provisioned volume whose rbd image answered `NotFound`: `Error` for good once the pool's
/// image list confirms the image is gone (one Warning `ImageVanished`); a transient answer (the
/// image is still listed) fails the pass, which is retried with backoff.
pub(super) async fn lost(ctx: &Arc<Ctx>, img: Image, name: &str) -> Result<Action> {
    if img.status.state == ImageState::Error && img.status.message.starts_with(IMAGE_LOST) {
        return Ok(Action::Done);
    }
    if !ctx.image_gone(name).await? {
        return Err(RbdError::Transient(format!(
            "{name} answered not found but the pool still lists it"
        ))
        .into());
    }
    let msg = format!(
        "{IMAGE_LOST}: rbd image {name} vanished; it is not re-created (an empty image would \
         hide the loss); delete the volume"
    );
    set_image_error(
        ctx,
        img,
        reason::IMAGE_VANISHED,
        action::PROVISION_IMAGE,
        msg,
    )
    .await
}
