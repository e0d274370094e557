//! Flattening the clones of an rbd image or snapshot, on the runner: [`flatten_all`] (used by the
//! snapshot deletion path and by the image deletion path) and the image deletion's op "flatten
//! children". Under the deferred deletion policy only the clones of orphan rbd snapshots (no
//! Snapshot object will remove them) are flattened here; nothing else is. Progress counts children, not bytes; listing the children is bounded by
//! `list_children_timeout`, the flattens by the stall watchdog. Shared by both reconcilers,
//! depends on neither.

use std::sync::Arc;

use rbd::RbdError;
use store::{Image, ImageState};

use crate::ctx::{get_opt, modify, Ctx, OpEnv};
use crate::events::{action, reason};
use crate::report::{Audience, ProgressEvents, Unit};
use crate::status::persist_progress;
use crate::{image_key, volume_image_name, ControllerError, Result};

/// Op "flatten children" (`image:<id>`, of the image deletion path): while the image is being
/// deleted and in `FlatteningChildren` (policy flatten) or `Retained` (policy deferred), flattens
/// the children of `img_<id>`: of every snapshot (`only` = `None`), or of the named snapshots
/// only (the deferred policy's orphans: rbd snapshots no Snapshot object will remove).
pub(crate) async fn flatten_children(
    ctx: Arc<Ctx>,
    id: String,
    only: Option<Vec<String>>,
    env: OpEnv,
) -> Result<()> {
    let Some(img) = get_opt(&ctx.images, &id).await? else {
        return Ok(());
    };
    let applies = matches!(
        img.status.state,
        ImageState::FlatteningChildren | ImageState::Retained
    );
    if !img.metadata.is_deleted() || !applies {
        return Ok(());
    }
    let name = volume_image_name(&id);
    let snaps: Vec<Option<&str>> = match &only {
        None => vec![None],
        Some(list) => list.iter().map(|s| Some(s.as_str())).collect(),
    };
    let mut result = Ok(());
    for snap in snaps {
        let report = ProgressEvents::new(
            Audience::Object(img.metadata.clone()),
            (reason::FLATTEN_PROGRESS, reason::FLATTEN_COMPLETED),
            action::DELETE_IMAGE,
            (
                "flattening the clones of this volume's snapshots",
                "flattened clones:",
            ),
            Unit::Clones,
        );
        result = flatten_all(
            &ctx,
            &image_key(&id),
            &name,
            snap,
            &env,
            |d, t| {
                let ctx = ctx.clone();
                let id = id.clone();
                async move { persist_progress(&ctx.images, &id, d, t).await }
            },
            report,
        )
        .await;
        if result.is_err() {
            break;
        }
    }
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
    mut report: ProgressEvents,
) -> Result<()>
where
    P: FnMut(u64, u64) -> PF,
    PF: std::future::Future<Output = ()>,
{
    let children = ctx.children_of(image, snap, &env.token).await?;
    if children.is_empty() {
        return Ok(());
    }
    let total = children.len() as u64;
    let (cell, progress) = env.tracker();
    let token = env.token.child_token();
    let backend = ctx.backend.clone();
    let todo = children.clone();
    let child_token = token.clone();
    let work = async move {
        for (i, child) in todo.iter().enumerate() {
            let done = i as u64;
            progress(done, total);
            // Children are counted whole; the backend's object-level reports only keep the
            // stall watchdog quiet.
            let p = progress.clone();
            let inner: rbd::ProgressFn = Arc::new(move |_, _| p(done, total));
            // Each child in its own pool: a clone may live in another pool than its parent.
            match backend
                .flatten_child(child, inner, child_token.clone())
                .await
            {
                Ok(()) | Err(RbdError::NotFound(_)) => {}
                Err(e) => return Err(ControllerError::Rbd(e)),
            }
        }
        progress(total, total);
        Ok(())
    };
    match ctx
        .drive(work, &cell, &token, persist, Some(&mut report))
        .await
    {
        Ok(r) => {
            r?;
            report.finish(ctx, total).await;
        }
        Err(_) => {
            return Err(ControllerError::Op {
                key: key.to_string(),
                reason: "flatten made no progress and was cancelled".into(),
            })
        }
    }
    let left = ctx.children_of(image, snap, &env.token).await?;
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
