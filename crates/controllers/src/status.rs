//! Status writes that more than one part of the reconcilers makes: the progress of a running long
//! operation (for images and snapshots alike), an image's `Error` state and a snapshot's `Failed`
//! state, each with its event. Shared by both reconcilers, depends on neither; owns no other
//! state transition.

use chrono::Utc;
use store::{Image, ImageState, Object, Progress, Snapshot, SnapshotState, Store};
use tracing::{debug, info, warn};

use crate::ctx::{modify, Action, Ctx};
use crate::events::{action, reason, EventType};
use crate::{source_details, Result};

/// A stored object whose status carries the progress of a running long operation.
pub(crate) trait WithProgress: Object {
    /// The object's `status.progress`.
    fn progress_mut(&mut self) -> &mut Option<Progress>;
}

impl WithProgress for Image {
    fn progress_mut(&mut self) -> &mut Option<Progress> {
        &mut self.status.progress
    }
}

impl WithProgress for Snapshot {
    fn progress_mut(&mut self) -> &mut Option<Progress> {
        &mut self.status.progress
    }
}

/// Writes `done`/`total` into the `status.progress` of object `id` in `store`. A failed write is
/// only logged: progress is informative, and the next report writes it again.
pub(crate) async fn persist_progress<T: WithProgress>(
    store: &Store<T>,
    id: &str,
    done: u64,
    total: u64,
) {
    let res = modify(store, id, |obj: &mut T| {
        *obj.progress_mut() = Some(Progress {
            done,
            total,
            updated_at: Utc::now(),
        });
        true
    })
    .await;
    if let Err(e) = res {
        debug!(id, error = %e, "progress not recorded");
    }
}

/// Sets image `img` to `Error` with `message` (Warning event `reason`/`action` only when the
/// message changes). Ends the pass: `Error` is re-evaluated by later passes (events, resync).
pub(crate) async fn set_image_error(
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

/// Marks snapshot `id` `Failed` with `message` unless it is being deleted or already failed,
/// and — when `seen` names the rbd location `(image, snapshot)` the caller found missing or
/// wrong — only while the snapshot still lives there: the check and the write are one
/// compare-and-set update, so a snapshot re-homed meanwhile (its volume being deleted) is never
/// failed for the vanished old location.
///
/// `Ok(true)`: the snapshot is `Failed` (now or already); `Ok(false)`: it moved, is being
/// deleted or is gone — the caller looks again instead of concluding anything.
pub(crate) async fn mark_snapshot_failed(
    ctx: &Ctx,
    id: &str,
    seen: Option<(&str, &str)>,
    message: &str,
) -> Result<bool> {
    let mut failed = false;
    let updated = modify(&ctx.snapshots, id, |s: &mut Snapshot| {
        if s.metadata.is_deleted() {
            return false;
        }
        if let Some((image, snap)) = seen {
            let here = source_details(s);
            if here.as_ref().map(|(i, n)| (i.as_str(), n.as_str())) != Some((image, snap)) {
                return false;
            }
        }
        if s.status.state == SnapshotState::Failed {
            failed = true;
            return false;
        }
        s.status.state = SnapshotState::Failed;
        s.status.message = message.to_string();
        s.status.progress = None;
        true
    })
    .await?;
    if let Some(s) = updated {
        warn!(snapshot = id, message, "snapshot failed");
        ctx.record(
            &s.metadata,
            EventType::Warning,
            reason::SNAPSHOT_FAILED,
            action::CREATE_SNAPSHOT,
            message,
        );
        return Ok(true);
    }
    if !failed {
        info!(
            snapshot = id,
            message, "not failed: the snapshot moved, is being deleted or is gone"
        );
    }
    Ok(failed)
}
