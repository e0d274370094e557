//! The `Formatting` state and its op "format" (`image:<id>`, class `fill`, on the runner): an
//! encrypted volume created empty gets its LUKS2 header (seconds of key derivation on Ceph
//! Pacific, bounded by `format_timeout`), `status.encryption = EncryptionHeaderSet`, and is
//! `Pending` again; provisioning goes on in `provision.rs`. The pass checks what is cheap and
//! may be fixed outside the volume (a KEK configured, the passphrase decryptable, the image not
//! a clone) and sets `Error` itself, re-evaluated every pass; otherwise it writes `Formatting`
//! and submits. A format the backend refuses for good → `Error`, marked with the volume size so
//! it is not retried until the volume is resized; any other failure (deadline passed included)
//! fails the op, which is retried with backoff.

use std::sync::Arc;

use rbd::{ImageInfo, Passphrase, RbdError};
use store::{Image, ImageState, ENCRYPTION_HEADER_SET};
use tracing::debug;

use super::encryption::{passphrase, size_marker};
use crate::ctx::{get_opt, modify, Action, Ctx, OpEnv};
use crate::events::{action, reason, EventType};
use crate::status::set_image_error;
use crate::{image_key, round_size, volume_image_name, OpClass, Result};

/// Start of `status.message` when the backend refused the LUKS2 format for good.
const FORMAT_FAILED: &str = "LUKS2 format failed";

/// Whether the volume still needs its LUKS2 header.
pub(super) fn needs_format(img: &Image) -> bool {
    super::encryption::wants_encryption(img) && img.status.encryption != ENCRYPTION_HEADER_SET
}

/// Why the volume cannot be formatted now (fixable outside it: KEK, passphrase), or the
/// passphrase. `info` is the volume's rbd image.
fn check(ctx: &Ctx, img: &Image, info: &ImageInfo) -> std::result::Result<Passphrase, String> {
    let pass = passphrase(ctx, img)?;
    // Never format a clone: it would hide (Reef+) or be refused (Pacific). Only images this
    // reconciler created empty get here with the header unset.
    if info.parent.is_some() {
        return Err(format!(
            "{} is a clone and cannot be LUKS-formatted",
            info.name
        ));
    }
    Ok(pass)
}

/// The pass of a volume that needs its header: checks, then `Formatting` and the op.
pub(super) async fn format(ctx: &Arc<Ctx>, mut img: Image, info: &ImageInfo) -> Result<Action> {
    if let Err(msg) = check(ctx, &img, info) {
        return set_image_error(
            ctx,
            img,
            reason::CONFIGURE_ENCRYPTION_FAILED,
            action::CONFIGURE_ENCRYPTION,
            msg,
        )
        .await;
    }
    if img.status.state == ImageState::Error
        && img.status.message.starts_with(FORMAT_FAILED)
        && img
            .status
            .message
            .ends_with(&size_marker(round_size(img.spec.size)))
    {
        // Refused for good at this size; only a new size tries again.
        return Ok(Action::Done);
    }
    if img.status.state != ImageState::Formatting {
        img.status.state = ImageState::Formatting;
        img.status.message = String::new();
        img.status.progress = None;
        img = ctx.images.update(&img).await?;
    }
    start_format(ctx, &img.metadata.id).await
}

/// Submits the format operation.
pub(super) async fn start_format(ctx: &Arc<Ctx>, id: &str) -> Result<Action> {
    let owned = id.to_string();
    ctx.start_pass_op(OpClass::Fill, image_key(id), move |ctx, env| async move {
        format_op(ctx, owned, env).await
    })
    .await
}

/// Re-reads the image and tells whether the format still applies to it.
async fn format_applies(ctx: &Ctx, id: &str) -> Result<Option<Image>> {
    Ok(get_opt(&ctx.images, id)
        .await?
        .filter(|i| !i.metadata.is_deleted() && i.status.state == ImageState::Formatting))
}

/// Op "format" (`image:<id>`): writes the LUKS2 header of an empty encrypted volume.
async fn format_op(ctx: Arc<Ctx>, id: String, env: OpEnv) -> Result<()> {
    let Some(img) = format_applies(&ctx, &id).await? else {
        return Ok(());
    };
    let name = volume_image_name(&id);
    if needs_format(&img) {
        let info = match ctx.backend.stat(&name).await {
            Ok(info) => info,
            Err(RbdError::NotFound(_)) => {
                // Gone meanwhile: `Pending` lets the pass create it again.
                back_to_pending(&ctx, &id, false).await?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let pass = match check(&ctx, &img, &info) {
            Ok(p) => p,
            Err(msg) => {
                return fail(&ctx, &id, msg).await;
            }
        };
        match ctx.format_luks2(&name, &pass, &env.token).await {
            Ok(()) => {}
            Err(RbdError::Cancelled) => return Err(RbdError::Cancelled.into()),
            Err(e) if e.is_retryable() => {
                let msg = format!("formatting {name}: {e}");
                if note_retry(&ctx, &id, &msg).await {
                    ctx.record(
                        &img.metadata,
                        EventType::Warning,
                        reason::CONFIGURE_ENCRYPTION_FAILED,
                        action::CONFIGURE_ENCRYPTION,
                        msg,
                    );
                }
                return Err(e.into());
            }
            Err(e) => {
                let size = round_size(img.spec.size);
                let msg = format!(
                    "{FORMAT_FAILED}: formatting {name}: {e} {}",
                    size_marker(size)
                );
                return fail(&ctx, &id, msg).await;
            }
        }
    }
    back_to_pending(&ctx, &id, true).await
}

/// `Formatting` → `Pending`, with the header recorded when `formatted`.
async fn back_to_pending(ctx: &Ctx, id: &str, formatted: bool) -> Result<()> {
    let done = modify(&ctx.images, id, |i: &mut Image| {
        if i.metadata.is_deleted() || i.status.state != ImageState::Formatting {
            return false;
        }
        i.status.state = ImageState::Pending;
        if formatted {
            i.status.encryption = ENCRYPTION_HEADER_SET.to_string();
        }
        i.status.message = String::new();
        i.status.progress = None;
        true
    })
    .await?;
    if let Some(img) = done.filter(|_| formatted) {
        ctx.record(
            &img.metadata,
            EventType::Normal,
            reason::CONFIGURE_ENCRYPTION_SUCCEEDED,
            action::CONFIGURE_ENCRYPTION,
            "LUKS2 header written",
        );
    }
    Ok(())
}

/// `Error` with `msg` (if the format still applies).
async fn fail(ctx: &Ctx, id: &str, msg: String) -> Result<()> {
    if let Some(img) = format_applies(ctx, id).await? {
        set_image_error(
            ctx,
            img,
            reason::CONFIGURE_ENCRYPTION_FAILED,
            action::CONFIGURE_ENCRYPTION,
            msg,
        )
        .await?;
    }
    Ok(())
}

/// Records why the last attempt failed (retryable failures; the state stays `Formatting`).
/// True when the note changed (a new reason is worth an event; the same one again is not).
async fn note_retry(ctx: &Ctx, id: &str, message: &str) -> bool {
    let note = format!("retrying: {message}");
    let res = modify(&ctx.images, id, |i: &mut Image| {
        let applies = !i.metadata.is_deleted() && i.status.state == ImageState::Formatting;
        if !applies || i.status.message == note {
            return false;
        }
        i.status.message = note.clone();
        true
    })
    .await;
    match res {
        Ok(changed) => changed.is_some(),
        Err(e) => {
            debug!(image = id, error = %e, "retry note not recorded");
            true
        }
    }
}
