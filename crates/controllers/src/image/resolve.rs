//! The `Resolving` state and its op "resolve" (`image:<id>`, class `populate`, on the runner): an
//! OS-image volume (`spec.image` set, no `spec.snapshotRef`) gets its reference resolved at the
//! registry to a platform manifest digest, the OS snapshot object `<digest>` (created if
//! missing) and `spec.snapshotRef = <digest>`; then it is `Pending` again and provisioning goes
//! on in `provision.rs`. The pass only writes `Resolving` and submits. Terminal failures →
//! `Error` + Warning; retryable ones (registry unavailable, deadline passed) fail the op, which
//! is retried with backoff. An `Error` volume is resolved again (staying `Error` meanwhile) once
//! `resync_period` has passed since its last terminal failure, so a reference pushed later is
//! picked up without resolving at every pass.

use std::sync::Arc;

use store::keys::{ARCHITECTURE_LABEL, IMAGE_DIGEST_LABEL};
use store::{Image, ImageState, Snapshot, SnapshotSource, StoreError};
use tracing::{debug, info};

use crate::ctx::{get_opt, modify, Action, Ctx, OpEnv};
use crate::events::{action, reason, EventType};
use crate::status::set_image_error;
use crate::{image_key, OpClass, Result, SourceError};

/// Whether the pass must resolve the volume's OS image reference first.
pub(super) fn needs_resolve(img: &Image) -> bool {
    !img.spec.image.is_empty() && img.spec.snapshot_ref.is_none()
}

/// The pass of an OS-image volume without a snapshot ref: `Resolving` written, op submitted.
pub(super) async fn resolve(ctx: &Arc<Ctx>, mut img: Image) -> Result<Action> {
    let id = img.metadata.id.clone();
    match img.status.state {
        ImageState::Resolving => {}
        ImageState::Error => {
            if ctx.resolve_held(&id) {
                debug!(image = %id, "resolve failed for good recently; next try after a resync");
                return Ok(Action::Done);
            }
        }
        _ => {
            img.status.state = ImageState::Resolving;
            img.status.message = String::new();
            img.status.progress = None;
            ctx.images.update(&img).await?;
        }
    }
    start_resolve(ctx, &id).await
}

async fn start_resolve(ctx: &Arc<Ctx>, id: &str) -> Result<Action> {
    let owned = id.to_string();
    ctx.start_pass_op(
        OpClass::Populate,
        image_key(id),
        move |ctx, env| async move { resolve_op(ctx, owned, env).await },
    )
    .await
}

/// Re-reads the image and tells whether the resolve still applies to it.
async fn resolve_applies(ctx: &Ctx, id: &str) -> Result<Option<Image>> {
    Ok(get_opt(&ctx.images, id).await?.filter(|i| {
        !i.metadata.is_deleted()
            && needs_resolve(i)
            && matches!(i.status.state, ImageState::Resolving | ImageState::Error)
    }))
}

/// Op "resolve" (`image:<id>`): reference → OS snapshot object and `spec.snapshotRef`.
async fn resolve_op(ctx: Arc<Ctx>, id: String, env: OpEnv) -> Result<()> {
    let Some(img) = resolve_applies(&ctx, &id).await? else {
        return Ok(());
    };
    let arch = img
        .spec
        .image_architecture
        .clone()
        .filter(|a| !a.is_empty());
    let resolved = match ctx
        .resolve_image(&img.spec.image, arch.as_deref(), &env.token)
        .await?
    {
        Ok(r) => r,
        Err(e) if e.is_retryable() => {
            note_retry(&ctx, &id, &e.to_string()).await;
            return Err(e.into());
        }
        Err(e) => {
            ctx.hold_resolve(&id);
            let why = match e {
                SourceError::NoPlatformMatch(_) => reason::NO_PLATFORM_MATCH,
                _ => reason::RESOLVE_IMAGE_FAILED,
            };
            let msg = format!("resolving {}: {e}", img.spec.image);
            if let Some(img) = resolve_applies(&ctx, &id).await? {
                set_image_error(&ctx, img, why, action::RESOLVE_IMAGE, msg).await?;
            }
            return Ok(());
        }
    };
    let digest = resolved.digest.clone();
    let existing = get_opt(&ctx.snapshots, &digest).await?;
    if existing.as_ref().is_some_and(|s| s.metadata.is_deleted()) {
        // Removed as unused a moment ago: resolve again once it is gone (a new one is made).
        let msg = format!("OS image snapshot {digest} is being removed");
        note_retry(&ctx, &id, &msg).await;
        return Err(crate::ControllerError::Op {
            key: image_key(&id),
            reason: msg,
        });
    }
    if existing.is_none() {
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
                reason::CREATE_IMAGE_SNAPSHOT_SUCCEEDED,
                action::CREATE_IMAGE_SNAPSHOT,
                format!("image snapshot {digest} for {}", img.spec.image),
            ),
            Err(e) => {
                ctx.record(
                    &img.metadata,
                    EventType::Warning,
                    reason::CREATE_IMAGE_SNAPSHOT_FAILED,
                    action::CREATE_IMAGE_SNAPSHOT,
                    format!("image snapshot {digest}: {e}"),
                );
                return Err(e.into());
            }
        }
    }
    let reference = img.spec.image.clone();
    let done = modify(&ctx.images, &id, |i: &mut Image| {
        if i.metadata.is_deleted() || !needs_resolve(i) || i.spec.image != reference {
            return false;
        }
        i.spec.snapshot_ref = Some(digest.clone());
        i.status.state = ImageState::Pending;
        i.status.message = String::new();
        i.status.progress = None;
        true
    })
    .await?;
    ctx.release_resolve(&id);
    if done.is_some() {
        info!(image = %id, %digest, "OS image resolved");
    }
    Ok(())
}

/// Records why the last attempt failed (retryable failures; the state stays `Resolving`).
async fn note_retry(ctx: &Ctx, id: &str, message: &str) {
    let note = format!("retrying: {message}");
    let res = modify(&ctx.images, id, |i: &mut Image| {
        let applies = !i.metadata.is_deleted() && i.status.state == ImageState::Resolving;
        if !applies || i.status.message == note {
            return false;
        }
        i.status.message = note.clone();
        true
    })
    .await;
    if let Err(e) = res {
        debug!(image = id, error = %e, "retry note not recorded");
    }
}
