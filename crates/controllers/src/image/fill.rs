//! The `Filling` state's op "fill" (`image:<id>`, class `fill`, on the runner): an encrypted
//! restore of plain data (an OS image, or a snapshot of an unencrypted volume) cannot be a clone,
//! because Ceph Pacific cannot LUKS-format a clone. The op removes a partial `img_<id>`, creates
//! it empty with the header on top (`round(size) + headerSize`, so the snapshot's data fits
//! whenever the volume is as large as the snapshot), LUKS2-formats it (within `format_timeout`) and copies the snapshot's data through
//! the encryption layer (watched by the stall watchdog); success → `Pending` with
//! `status.encryption` set (provisioning continues in `provision.rs`); a failure that cannot
//! change at the same size → `Error`, marked so it is not retried until the volume is resized.

use std::sync::Arc;

use rbd::{Passphrase, RbdError, WriteOptions, LUKS2_HEADER_SIZE};
use store::{Image, ImageState, Snapshot, ENCRYPTION_HEADER_SET};
use tracing::debug;

use super::encryption::{passphrase, size_marker};
use super::provision::rbd_size;
use crate::ctx::{get_opt, ignore_not_found, modify, Action, Ctx, OpEnv};
use crate::events::{action, reason, EventType};
use crate::report::{Audience, ProgressEvents, Unit};
use crate::status::{persist_progress, set_image_error};
use crate::{
    image_key, round_size, source_details, volume_image_name, ControllerError, OpClass, Result,
};

/// Start of `status.message` when the encrypted copy of a restore failed for good.
pub(super) const FILL_FAILED: &str = "encrypted copy failed";

/// Submits the fill operation of an encrypted restore.
pub(super) async fn start_fill(ctx: &Arc<Ctx>, id: &str) -> Result<Action> {
    let owned = id.to_string();
    ctx.start_op(OpClass::Fill, image_key(id), move |ctx, env| async move {
        fill(ctx, owned, env).await
    })
    .await
}

/// Op "fill" (`image:<id>`): builds an encrypted `img_<id>` holding the snapshot's data.
async fn fill(ctx: Arc<Ctx>, id: String, env: OpEnv) -> Result<()> {
    let Some(mut img) = get_opt(&ctx.images, &id).await? else {
        return Ok(());
    };
    if img.metadata.is_deleted() || img.status.state != ImageState::Filling {
        return Ok(());
    }
    if img.status.header_size == 0 {
        // Started by an older version (header inside the size): the image is made again
        // below, so it gets the header on top like every new encrypted volume.
        match modify(&ctx.images, &id, |i: &mut Image| {
            let applies = !i.metadata.is_deleted() && i.status.state == ImageState::Filling;
            if !applies || i.status.header_size != 0 {
                return false;
            }
            i.status.header_size = LUKS2_HEADER_SIZE;
            true
        })
        .await?
        {
            Some(i) => img = i,
            None => return Ok(()),
        }
    }
    let marker = size_marker(round_size(img.spec.size));
    let fail = |msg: String| {
        let ctx = ctx.clone();
        let id = id.clone();
        let msg = format!("{FILL_FAILED}: {msg} {marker}");
        async move {
            let img = get_opt(&ctx.images, &id).await?;
            if let Some(img) = img.filter(|i| !i.metadata.is_deleted()) {
                set_image_error(
                    &ctx,
                    img,
                    reason::CREATE_IMAGE_FROM_SNAPSHOT_FAILED,
                    action::CREATE_IMAGE_FROM_SNAPSHOT,
                    msg,
                )
                .await?;
            }
            Ok::<(), ControllerError>(())
        }
    };
    let sid = img.spec.snapshot_ref.clone().unwrap_or_default();
    let snap = get_opt(&ctx.snapshots, &sid).await?;
    let Some((snap, (parent, psnap))) = snap.and_then(|s| source_details(&s).map(|d| (s, d)))
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
    ctx.backend.create_image(&name, rbd_size(&img)).await?;
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
            reason::CREATE_IMAGE_FROM_SNAPSHOT_SUCCEEDED,
            action::CREATE_IMAGE_FROM_SNAPSHOT,
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
    ctx.format_luks2(&name, pass, &env.token).await?;
    let chunk = ctx.cfg.chunk_size();
    let data = ctx.backend.read_stream(parent, Some(psnap), chunk).await?;
    let total_hint = u64::try_from(snap.status.size).unwrap_or(0);
    let opts = WriteOptions {
        chunk_size: chunk,
        queue_depth: ctx.cfg.populate_queue_depth.max(1),
        skip_zeroes: true,
        start: 0,
        dirty_until: 0,
        total_hint,
        passphrase: Some(pass.clone()),
    };
    let (cell, progress) = env.tracker();
    let token = env.token.child_token();
    let write = ctx
        .backend
        .write_stream(&name, data, opts, progress, token.clone());
    let id = img.metadata.id.clone();
    let mut report = ProgressEvents::new(
        Audience::Object(img.metadata.clone()),
        (reason::FILL_PROGRESS, reason::FILL_COMPLETED),
        action::CREATE_IMAGE_FROM_SNAPSHOT,
        ("copying the snapshot into the encrypted volume", "copied"),
        Unit::Bytes,
    );
    let out = ctx
        .drive(
            write,
            &cell,
            &token,
            |d, t| {
                let ctx = ctx.clone();
                let id = id.clone();
                async move { persist_progress(&ctx.images, &id, d, t).await }
            },
            Some(&mut report),
        )
        .await;
    match out {
        Ok(Ok(_)) => {
            report.finish(ctx, cell.get().0).await;
            Ok(())
        }
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ControllerError::Op {
            key: image_key(&id),
            reason: "copy made no progress and was cancelled".into(),
        }),
    }
}
