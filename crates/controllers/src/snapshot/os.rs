//! The life of an OS-image snapshot after its populate (rows `Ready (OS)` and `Failed (OS)` of
//! the state table in `mod.rs`):
//! * a `Failed` one that volumes still reference is populated again `os_image_retry` after it
//!   was seen failed (a 404 of the pinned digest, a full pool: causes that get fixed outside), so
//!   every waiting volume heals without intervention;
//! * one that no volume references (`spec.snapshotRef`, deleted volumes included) for
//!   `os_image_gc_grace` is deleted; the deletion path removes `snap_<id>`.
//!
//! Both timers are in memory (`Ctx::failed_os`, `Ctx::unreferenced`): a restart starts them
//! again, which only ever delays a retry or a removal. The pass requeues itself for the end of
//! the period ([`Action::After`]); any change of a referencing image requeues it earlier.

use store::{ListOptions, Snapshot, SnapshotState, FIELD_SNAPSHOT_REF};
use tracing::info;

use crate::ctx::{clear, modify, since, Action, Ctx};
use crate::Result;

/// Whether any image (deleted ones included) references snapshot `id`.
async fn referenced(ctx: &Ctx, id: &str) -> Result<bool> {
    let opts = ListOptions::default().field(FIELD_SNAPSHOT_REF, id);
    Ok(!ctx.images.list(&opts).await?.is_empty())
}

/// A `Ready` (or unreferenced `Failed`) OS snapshot: deleted once no image has referenced it for
/// the grace period.
pub(super) async fn collect(ctx: &Ctx, snap: &Snapshot) -> Result<Action> {
    let id = &snap.metadata.id;
    let grace = ctx.cfg.os_image_gc_grace;
    if grace.is_zero() || referenced(ctx, id).await? {
        clear(&ctx.unreferenced, id);
        return Ok(Action::Done);
    }
    let elapsed = since(&ctx.unreferenced, id).elapsed();
    if elapsed < grace {
        return Ok(Action::After(grace - elapsed));
    }
    info!(snapshot = %id, ?grace, "removing an OS image snapshot no volume uses");
    clear(&ctx.unreferenced, id);
    match ctx.snapshots.delete(id).await {
        Ok(()) | Err(store::StoreError::NotFound(_)) => Ok(Action::Done),
        Err(e) => Err(e.into()),
    }
}

/// A `Failed` OS snapshot: populated again `os_image_retry` after it was seen failed while
/// images reference it; otherwise collected like a `Ready` one.
pub(super) async fn failed(ctx: &Ctx, snap: &Snapshot) -> Result<Action> {
    let id = &snap.metadata.id;
    if !referenced(ctx, id).await? {
        clear(&ctx.failed_os, id);
        return collect(ctx, snap).await;
    }
    clear(&ctx.unreferenced, id);
    let retry = ctx.cfg.os_image_retry;
    let elapsed = since(&ctx.failed_os, id).elapsed();
    if elapsed < retry {
        return Ok(Action::After(retry - elapsed));
    }
    clear(&ctx.failed_os, id);
    let retried = modify(&ctx.snapshots, id, |s: &mut Snapshot| {
        if s.metadata.is_deleted() || s.status.state != SnapshotState::Failed {
            return false;
        }
        s.status.state = SnapshotState::Pending;
        s.status.message = format!("populating again after: {}", s.status.message);
        s.status.progress = None;
        true
    })
    .await?;
    if retried.is_some() {
        info!(snapshot = %id, ?retry, "populating a failed OS image snapshot again");
    }
    Ok(Action::Done)
}
