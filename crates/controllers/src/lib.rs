//! Image and snapshot reconcilers: they turn stored [`store::Image`] and
//! [`store::Snapshot`] objects into RBD images through [`rbd::BlockBackend`], running the long
//! steps (OS-image populate, encrypted restore copy, child flattening) on the [`runner::Runner`].
//!
//! Controllers depend only on `store`, `rbd::BlockBackend`, `runner` and the [`ImageSource`] seam;
//! they never name librbd.
//!
//! # Wiring
//! ```text
//! let controllers = Controllers::new(images, snapshots, backend, source, runner, events, cfg);
//! controllers.run(shutdown_token).await?;
//! ```
//! [`Controllers::run`] first subscribes to runner completions and opens both store watches, then
//! lists both stores and enqueues every object (no startup event can be lost), then
//! starts `worker_size` workers per reconciler, the watch feeders, the completion router and the
//! periodic resync. It returns when `shutdown` is cancelled and every worker has finished its
//! current pass. It does not shut the runner down: the caller owns the runner and decides whether
//! running operations drain or are cancelled (a cancelled operation leaves a state that the next
//! start resumes).
//!
//! # Design
//! * **Work queues** ([`queue`]): one per reconciler, keyed by object id, client-go semantics.
//!   A pass ends in one of: *done* (steady state: the key's failure backoff is reset), *wait*
//!   (something that announces itself is pending — a runner completion, another object's event:
//!   no requeue, backoff untouched), *again* (requeue now), *after(d)* (requeue after `d`,
//!   backoff untouched), *busy* (runner full: failure backoff capped at `busy_backoff`) or an
//!   error (failure backoff `base_backoff·2ⁿ` up to `max_backoff`, and the global token bucket).
//! * **Feeding**: store watches (opened before the initial list; a watch `Resync` re-lists),
//!   the periodic resync (`resync_period`), runner completions and cross-object wake-ups: a
//!   snapshot that becomes `Ready`/`Failed` or is deleted wakes the images whose
//!   `spec.snapshotRef` names it; an image that becomes `Available`/`Error` or is deleted wakes
//!   the snapshot it names (a deletion waiting for it, an OS image losing its last user); a
//!   re-homed snapshot image wakes the volume being deleted; a snapshot that goes wakes its source
//!   volume (a retained volume may go with it); a snapshot that becomes `Ready` or `Failed`, or goes,
//!   wakes the snapshot its source volume was restored from (that restore may have been flattened
//!   before it was snapshotted: a retained snapshot may have lost its last clone). A watch
//!   `Resync` is answered by a full list, retried until it succeeds.
//! * **Nothing slow in a pass.** A reconcile pass only reads, decides, makes metadata calls
//!   (milliseconds) and submits. Every call that can take longer — resolving an OS image at its
//!   registry, opening and copying a rootfs, LUKS2 format (seconds of key derivation), encrypted
//!   copies, flattens — runs in a long operation on the runner. [`on_reconcile_worker`] tells
//!   whether the caller runs inside a pass; the tests wrap the fake backend and image source to
//!   fail when a slow call happens there.
//! * **Long operations** run on the runner under `image:<id>` / `snapshot:<id>`: resolve of an
//!   OS image reference, LUKS2 format of an empty encrypted volume, populate, encrypted fill,
//!   flatten of children, flatten of a restore before it is snapshotted. Each names its
//!   [`OpClass`]. The state that says "an operation belongs here" (`Resolving`, `Formatting`,
//!   `Populating`, `Filling`, `FlatteningChildren`, `Flattening`) is written **before**
//!   submitting, so a restart resumes it: the next pass resubmits, the runner deduplicates, and
//!   every operation re-reads the object and treats "no longer applicable" as success. A
//!   completion requeues exactly its object: success or cancellation at once; failure with the
//!   key's backoff, and until the backoff has passed the object's passes do not resubmit (the
//!   runner slot is free meanwhile: no sleeping in a slot). Operations record their progress in
//!   the object's `status.progress` about once per `progress_interval`. Deleting an object
//!   cancels its resolve, format, populate or fill and waits for the completion before cleaning
//!   up; the operation removes its partial image itself.
//! * **Deadlines.** Every phase of a long operation is bounded; a phase that overruns fails the
//!   operation as retryable, which frees its runner slot and retries it with the key's backoff:
//!
//!   | Phase | Bound (`ControllerConfig`, default) |
//!   |---|---|
//!   | resolving a reference; opening a rootfs layer up to its response | `resolve_timeout` (3 min) overall; within it the registry client's own connect (10 s) and per-request (60 s) timeouts |
//!   | reading a rootfs body | the registry client's wait for the next chunk (60 s), then `stall_timeout` |
//!   | LUKS2 format (empty volume, and before an encrypted fill) | `format_timeout` (5 min) |
//!   | listing the children to flatten (deletion, snapshot deletion; also in the deletion pass) | `list_children_timeout` (1 min) |
//!   | stream copies (populate, encrypted fill) and flattens | `stall_timeout` (15 min without progress) |
//!
//!   A timed-out format cannot be stopped: the backend runs it on a blocking thread (librbd),
//!   which finishes in the background. Until it has, a new format of the same image fails as
//!   retryable (never two formats of one image at once). The registry client's timeouts are its
//!   own options (`oci::OciOptions`, set by the daemon).
//! * **Benchmark baselines** ([`Baseline`], `ControllerConfig::baseline`): the designs of the Go
//!   provider, imitated on the same code so that the benchmarks can measure ours against them.
//!   `GoInline` runs every long operation inline on the reconcile worker; `GoPool` runs the
//!   registry resolve and the LUKS2 format inline and the rest on a runner without a queue,
//!   polling through the rate-limited work queue while it is full. Reference for benchmarks only
//!   (they break the rule above on purpose, and the tests check that their guard notices).
//! * **Encryption**: an encrypted volume created empty gets a LUKS2 header once (state
//!   `Formatting`, on the runner). A restore of a
//!   snapshot of an encrypted volume is a clone that inherits the header (marked in
//!   `status.encryption` before the clone exists, so it is never formatted again). An
//!   encrypted restore of plain data (an OS image or a plain volume's snapshot) cannot be a
//!   clone on Ceph Pacific: the image is created empty, LUKS2-formatted and filled with the
//!   snapshot's data through the encryption layer (state `Filling`); it must be at least as
//!   large as the snapshot, else `Error` until the volume is expanded.
//! * **Encrypted sizes**: the 16 MiB LUKS2 header of an encrypted volume sits **on top** of its
//!   size (`rbd size = round(size) + status.headerSize`), so the guest sees exactly the size asked
//!   for, before and after an expand. Encrypted volumes provisioned before (`headerSize` 0, the
//!   header inside the size) keep their layout: their guest sees 16 MiB less, also after an
//!   expand. Sizes reported for snapshots are the guest's.
//! * **Snapshots of restores**: a restore that is still a clone of a volume snapshot is flattened
//!   before it is snapshotted, because a clone's own snapshots keep its parent snapshot busy for
//!   good (no flatten detaches them) and the parent volume could never be deleted.
//! * **Orphan rbd snapshots**: when a volume is deleted, rbd snapshots on it that no Snapshot
//!   object will ever remove (no record; under the flatten policy also a deleted or `Failed`
//!   record, under the deferred policy a `Failed` one) cannot be referenced by anyone; their
//!   children are flattened and they are removed, so deletion never blocks on them.
//! * **OS-image snapshots** are kept after their volumes are gone, as a cache for the next volume
//!   of the same digest, for `os_image_gc_grace` (default 24 h; 0 keeps them for ever), then
//!   removed; never while an image references them. A `Failed` one that volumes wait for is
//!   populated again after `os_image_retry` (default 10 min). A populate whose last waiting
//!   volume is deleted is cancelled.
//!
//! # Deletion policies
//! What deleting a volume or a volume snapshot does with the data that others still need
//! ([`DeletePolicy`], `ControllerConfig::delete_policy`, the daemon's `--delete-policy`):
//!
//! * **`deferred`** (the default): zero-copy. A deleted volume whose rbd image still holds
//!   snapshots with a Snapshot object becomes `Retained`: hidden (the volume server never lists
//!   it and answers NOT_FOUND for it), its record kept with `deletedAt` and its finalizer, and
//!   `img_<id>` kept in place, under its name, untouched (nothing writes it: the record is never
//!   provisioned again). Its snapshots stay `Ready` and restorable where they are
//!   (`img_<id>@<snapshot>`, so `locate.rs`, Go records and restarts see nothing move); their
//!   restores stay clones. A deleted volume snapshot whose rbd snapshot still has clones becomes
//!   `Retained` the same way (hidden, rbd snapshot kept) until its last clone is deleted (or
//!   flattened for another reason, e.g. before it is snapshotted); then the rbd snapshot is
//!   unprotected and removed and the record goes. When a retained volume's last snapshot is gone,
//!   `img_<id>` is removed and the record goes. Nothing is copied at any point. Wake-ups: a
//!   restore that goes (or is flattened before its snapshot) wakes the snapshot it was restored
//!   from; a snapshot that goes wakes its source volume.
//! * **`flatten`**: the Go provider's. Deleting a volume re-homes each live snapshot onto an
//!   internal clone `img_<snapshot>`, flattens every child of the volume (re-home clones and
//!   restores: full copies), moves the snapshots and removes the volume's image; deleting a
//!   snapshot flattens its restores before removing the rbd snapshot.
//!
//! OS-image snapshots are deleted the `flatten` way under both policies (they are removed only
//! once no volume references them, so they have no clones left to flatten).
//!
//! Both are restart-safe: every state is written before the work it announces, and every pass
//! starts again from what the store and the pool say. Switching the policy between restarts
//! converges too: under `flatten` a `Retained` volume or snapshot is taken up by the flatten
//! path (its dependants are flattened, then it is removed); under `deferred` a volume or snapshot
//! left `FlatteningChildren` / `Flattening` by a flatten-policy run is retained instead (the
//! internal re-home images made for snapshots that were not moved yet are deleted: their
//! snapshots stay where they are). The step tables are in `image/delete.rs` and `snapshot/mod.rs`.
//!
//! # Faults and what they produce
//! What each fault that a real cluster and a real guest expose now produces (state, event,
//! metric); the tests named are in `tests/faults.rs` and `tests/faults_os.rs` unless said.
//!
//! 1. **The rbd image of a provisioned volume vanishes** (`Available`, or `Error` with access
//!    data): once the pool's image list confirms it is gone, `Error` "volume data lost: rbd image
//!    img_… vanished" and one Warning `ImageVanished`; it is **never** created again (an empty
//!    image would hide the loss), an expand of it records nothing more, DeleteVolume works.
//!    Every event is recorded once while it repeats: the reconcilers do not record an event
//!    identical (type, reason, action, message) to the last one of the same object, and the
//!    provider's event store keeps one entry per repeated event (see `volumeprovider::events`;
//!    the repeats are counted in the metric `cephvol_events_repeated_total`).
//! 2. **A snapshot re-homed while a restore looks at it**: `Failed` is written only in the same
//!    compare-and-set update that checks the snapshot still lives where the pass looked; a moved
//!    snapshot is looked up again and the restore proceeds from its new home. No event.
//! 3. **An OS image that cannot be populated** (404 of the pinned digest, a full pool): the OS
//!    snapshot is `Failed` (Warning `SnapshotFailed`), every volume waiting for it `Error` with
//!    the reason (one Warning `SnapshotFailed` each); after `os_image_retry` it is populated
//!    again, and the volumes follow it to `Available` once it is `Ready`.
//! 4. **Unused OS images**: removed `os_image_gc_grace` after the last image referencing them is
//!    gone; a populate nobody waits for any more is cancelled (its snapshot is deleted).
//! 5. **Snapshots re-homed by the Go provider** (onto `img_<snapshot id>`, no internal label):
//!    their deletion removes `img_<snapshot id>` by that name rule — the record if there is one,
//!    else the rbd image.
//! 6. **An undecodable record**: lists skip it with a warning and count it
//!    (`store::Store::skipped_records`, exported as
//!    `cephvol_store_skipped_records_total{collection}`); the reconcilers start and ListVolumes
//!    answers; a pass that cannot read its own record is not retried in a loop.
//! 7. **Unprotect refused after the children were flattened** (children in the rbd trash): the
//!    snapshot is `Flattening` again with `status.message` saying why, and the next flatten waits
//!    for the key's failure backoff (growing up to `max_backoff`); no tight loop.
//! 8. **Sizes**: the provider refuses sizes beyond `--max-volume-size` (INVALID_ARGUMENT naming
//!    the field; default the largest image librbd creates); a create or resize the backend
//!    refuses for good (`InvalidArgument`, `Unsupported`) → `Error` + one Warning
//!    (`EmptyImageCreationFailed` / `UpdateImageSizeFailed`), not retried until the size
//!    changes; the volume keeps its data and size.
//! 9. **Cross-pool children** and 10. **librados timeouts**: handled by the Ceph backend (the
//!    controllers see ordinary `BlockBackend` errors: retried with backoff).
//! 11. **After a SIGKILL**: (a) a deletion whose image answers "not found" or `Busy` (a
//!     half-removed image: listed, not openable) removes it again, which finishes the removal
//!     (the backend side is in `rbd::BlockBackend`'s contract); so does the pass of a volume
//!     not provisioned yet, whose partial image a fill or format was removing (it would stay
//!     `Pending` for ever otherwise); (b) "vanished" is concluded only
//!     when a "not found" is confirmed by the pool's image list (the image's snapshot list for
//!     snapshots), never from one answer: an unconfirmed one fails the pass, which is retried
//!     with backoff; (c) a kill inside librbd's two-step clone never leaves a parentless image
//!     (a blank disk) under the volume's name: the Ceph backend clones under a temporary name
//!     and renames the whole clone (`ceph::CephBackend::clone_image`; test
//!     `crates/ceph/tests/ceph_faults.rs`), so the pass sees either no image (and clones) or a
//!     whole clone. All found and checked by `tests/tests/e2e_ceph_chaos.rs`.
//! 12. **A snapshot deleted right after a restore from it was accepted**: the snapshot shows
//!     `deletedAt` but is kept (`status.message` names the restores) until every restore that
//!     has not got its data yet has it, then removed. A restore accepted after the deletion
//!     began (`Flattening`) ends in `Error`.
//! 13. **Encrypted volumes smaller than asked**: new ones get the header on top (see
//!     *Encrypted sizes*); an encrypted volume as large as its OS image or plain snapshot is
//!     filled.
//!
//! # Modules
//! Each reconciler depends only on the shared modules, never on the other reconciler.
//! * [`queue`]: the client-go style work queue (dedup, one worker per key, backoff, rate limit).
//! * [`image`]: the image reconciler, one file per phase (its state table is in the module docs).
//! * [`snapshot`]: the snapshot reconciler (its state table is in the module docs).
//! * [`events`]: the events recorded about objects, with the one set of reasons and actions.
//! * Shared by both reconcilers: `ctx` (stores, backend, runner, the long-operation protocol),
//!   `locate` (rbd names, runner keys, where a snapshot's data lives), `status` (progress,
//!   image `Error`, snapshot `Failed`), `flatten` (flattening clones on the runner).
//! * `deadline`: the bounds of the slow calls long operations make (see *Deadlines*).
//! * `report`: the Normal progress events of long operations (every 25% or
//!   `progress_event_interval`, then one with duration and throughput).
//! * `wiring`: feeding and running the reconcilers; marks the passes for [`on_reconcile_worker`].
//! * `source`, `kek`, `sizing`: the image-source seam, the key-encryption key of passphrases,
//!   size rounding and QoS limits.
//!
//! # Store labels used by the controllers
//! The keys are defined in [`store::keys`].
//! * [`store::keys::INTERNAL_LABEL`] `= "rehome"` marks the internal images made when a volume
//!   with snapshots is deleted under the flatten policy (each of its snapshots is re-homed onto a
//!   standalone image whose id is the snapshot id). They carry no manager label, and the volume server lists only objects
//!   with the manager label, so it never lists them; [`store::keys::REHOME_OF_LABEL`] names the
//!   volume they were made for.

use std::sync::Arc;
use std::time::Duration;

use rbd::BlockBackend;
use runner::Runner;
use store::{Image, Snapshot, Store};
use tokio_util::sync::CancellationToken;

mod ctx;
mod deadline;
pub mod events;
mod flatten;
pub mod image;
mod kek;
mod locate;
pub mod queue;
mod report;
mod sizing;
pub mod snapshot;
mod source;
mod status;
mod wiring;

#[cfg(test)]
mod tests;

pub use events::{Event, EventRecorder, EventType};
pub use kek::{Kek, KekError};
pub use locate::{
    image_key, os_image_name, snapshot_key, source_details, volume_image_name, OS_SNAPSHOT_NAME,
};
pub use queue::{QueueConfig, WorkQueue};
pub use sizing::{limits_for_class, round_size};
pub use source::*;
pub use wiring::on_reconcile_worker;

/// The class of a long operation, named at every submission: the runner's lane it belongs to,
/// so that operations compete for slots with their own kind only (network-bound populates do not
/// wait for CPU-bound formats). `Ctx::start_op` is the one place that hands it to the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpClass {
    /// Network-bound: resolving an OS image reference, populating an OS image's snapshot.
    Populate,
    /// CPU-bound: LUKS2 format of an empty encrypted volume, encrypted fill of a restore.
    Fill,
    /// Flattens: children of a deleted volume, children of a deleted snapshot, the source of a
    /// snapshot that is still a clone.
    Flatten,
}

impl OpClass {
    /// Every class, in the order the runner is configured with them.
    pub const ALL: [OpClass; 3] = [OpClass::Populate, OpClass::Fill, OpClass::Flatten];

    /// The runner's name of the class: `"populate"`, `"fill"` or `"flatten"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            OpClass::Populate => "populate",
            OpClass::Fill => "fill",
            OpClass::Flatten => "flatten",
        }
    }
}

/// Errors of the controllers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControllerError {
    /// A store call failed.
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    /// A block backend call failed.
    #[error("rbd: {0}")]
    Rbd(#[from] rbd::RbdError),
    /// The image source failed.
    #[error("image source: {0}")]
    Source(#[from] SourceError),
    /// The key-encryption key failed.
    #[error(transparent)]
    Kek(#[from] KekError),
    /// A long operation run inline (a [`Baseline`] other than `None`) failed.
    #[error("operation {key}: {reason}")]
    Op {
        /// Runner key of the operation.
        key: String,
        /// Why it failed.
        reason: String,
    },
    /// A reconcile pass panicked (caught; the key is retried with backoff).
    #[error("reconcile of {0} panicked")]
    Panic(String),
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
}

/// Result alias of this crate.
pub type Result<T, E = ControllerError> = std::result::Result<T, E>;

/// What deleting a volume or a volume snapshot does with data that others still need (see the
/// crate docs, *Deletion policies*). `--delete-policy` of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeletePolicy {
    /// Zero-copy: the deleted volume's image (the deleted snapshot's rbd snapshot) is kept hidden
    /// until the last snapshot and clone that need it are gone. The default.
    #[default]
    Deferred,
    /// The Go provider's: the dependants are flattened (full copies) and the volume's snapshots
    /// re-homed, then the image (rbd snapshot) is removed at once.
    Flatten,
}

impl DeletePolicy {
    /// Every policy, the default first.
    pub const ALL: [DeletePolicy; 2] = [DeletePolicy::Deferred, DeletePolicy::Flatten];

    /// The flag's name of the policy: `"deferred"` or `"flatten"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            DeletePolicy::Deferred => "deferred",
            DeletePolicy::Flatten => "flatten",
        }
    }
}

impl std::fmt::Display for DeletePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DeletePolicy {
    type Err = ControllerError;

    fn from_str(s: &str) -> Result<Self> {
        DeletePolicy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                ControllerError::Config(format!(
                    "unknown delete policy {s:?} (use deferred or flatten)"
                ))
            })
    }
}

/// Settings of the reconcilers (CLI flags of the provider).
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Workers per reconciler (`--worker-size`, default 15).
    pub worker_size: usize,
    /// Ceph monitors exported in access data verbatim (`--ceph-monitors`).
    pub monitors: String,
    /// Ceph client whose key consumers get (`--ceph-client`, e.g. `client.volumes`).
    pub client: String,
    /// Key-encryption key of volume passphrases (`--ceph-kek-path`); needed for encrypted volumes.
    pub kek: Option<Kek>,
    /// Bytes per write request when populating OS images and filling encrypted restores
    /// (`--populator-buffer-size`, default 5 MiB; 0 means the default).
    pub populator_buffer_size: usize,
    /// Write requests in flight while populating (default 4).
    pub populate_queue_depth: usize,
    /// Period of the full re-list of both stores (default 10 min).
    pub resync_period: Duration,
    /// First per-key failure backoff (default 5 ms, client-go).
    pub base_backoff: Duration,
    /// Cap of the per-key failure backoff (default 5 min).
    pub max_backoff: Duration,
    /// Cap of the retry delay when the runner is full (`Busy`; default 5 s).
    pub busy_backoff: Duration,
    /// Global rate limit of failure requeues, per second (default 10, client-go).
    pub rate_limit: f64,
    /// Burst of the global rate limit (default 100, client-go).
    pub rate_burst: u32,
    /// How often a running operation writes its progress into the object's status (default 1 s).
    pub progress_interval: Duration,
    /// A long operation (populate, encrypted fill, flatten) records a Normal progress event about
    /// its volume at every 25% and, between those, when this much time has passed since its last
    /// one (default 30 s); a last event gives its duration and average throughput.
    pub progress_event_interval: Duration,
    /// A long operation whose progress has not moved for this long is cancelled and retried
    /// (default 15 min; `None` disables the watchdog). It watches every stream copy (populate,
    /// encrypted fill: each chunk written moves it) and every flatten.
    pub stall_timeout: Option<Duration>,
    /// Overall deadline of one registry resolution: resolving an OS image reference, and opening
    /// a rootfs layer up to its response (default 3 min). The registry client's own connect and
    /// per-request timeouts apply within it. Overrunning is a retryable failure.
    pub resolve_timeout: Duration,
    /// Deadline of one LUKS2 format (default 5 min; Ceph Pacific needs seconds of key
    /// derivation). Overrunning is a retryable failure; the backend's blocking thread finishes
    /// in the background, and the image is not formatted again before it has.
    pub format_timeout: Duration,
    /// Deadline of listing the children of an image or snapshot before flattening them
    /// (default 1 min). Overrunning is a retryable failure.
    pub list_children_timeout: Duration,
    /// How long a `Failed` OS-image snapshot that volumes still wait for stays failed before it
    /// is populated again (default 10 min): a registry that comes back or a pool with space again
    /// heals every waiting volume without intervention.
    pub os_image_retry: Duration,
    /// How long an OS-image snapshot that no volume references any more is kept (a cache for the
    /// next volume of the same digest) before it is removed (`--os-image-gc-grace`, default
    /// 24 h). Zero keeps them for ever.
    pub os_image_gc_grace: Duration,
    /// What deleting a volume or snapshot does with data others still need
    /// (`--delete-policy`, default [`DeletePolicy::Deferred`]; see the crate docs).
    pub delete_policy: DeletePolicy,
    /// **Reference baseline for benchmarks only**: imitate one of the Go provider's designs
    /// instead of running every long operation on the runner (see [`Baseline`]). Default
    /// [`Baseline::None`].
    pub baseline: Baseline,
}

/// **Reference baseline for benchmarks only**: a design of the Go provider that the controllers
/// imitate so that the benchmarks can measure this provider against it in the same harness.
/// Every variant but `None` makes slow calls on reconcile workers on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Baseline {
    /// This provider's design: every long operation on the runner, in its class.
    #[default]
    None,
    /// The Go provider as released: every long operation (resolve, format, populate, encrypted
    /// fill, flatten) runs inline in the reconcile pass, on the reconcile worker.
    GoInline,
    /// The worker pool proposed for the Go provider: the registry resolve and the LUKS2 format of
    /// an empty volume stay inline in the pass; every other long operation goes to the runner,
    /// which the caller configures as one pool without a queue (`max_running` 10, no classes,
    /// `max_waiting` 0). A submission the full pool refuses requeues the object through the
    /// rate-limited work queue, whose failure count is then reset (the proposal forgets the key
    /// on every pass): the per-key delay stays at `base_backoff` (5 ms), so the object polls for
    /// a slot as fast as the global token bucket (`rate_limit` 10/s, `rate_burst` 100) allows.
    GoPool,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            worker_size: 15,
            monitors: String::new(),
            client: String::new(),
            kek: None,
            populator_buffer_size: DEFAULT_POPULATOR_BUFFER_SIZE,
            populate_queue_depth: 4,
            resync_period: Duration::from_secs(600),
            base_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_secs(300),
            busy_backoff: Duration::from_secs(5),
            rate_limit: 10.0,
            rate_burst: 100,
            progress_interval: Duration::from_secs(1),
            progress_event_interval: Duration::from_secs(30),
            stall_timeout: Some(Duration::from_secs(15 * 60)),
            resolve_timeout: Duration::from_secs(3 * 60),
            format_timeout: Duration::from_secs(5 * 60),
            list_children_timeout: Duration::from_secs(60),
            os_image_retry: Duration::from_secs(10 * 60),
            os_image_gc_grace: DEFAULT_OS_IMAGE_GC_GRACE,
            delete_policy: DeletePolicy::Deferred,
            baseline: Baseline::None,
        }
    }
}

/// Default `--os-image-gc-grace`: 24 h.
pub const DEFAULT_OS_IMAGE_GC_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Default `--populator-buffer-size`: 5 MiB.
pub const DEFAULT_POPULATOR_BUFFER_SIZE: usize = 5 * 1024 * 1024;

impl ControllerConfig {
    fn queue_config(&self) -> QueueConfig {
        QueueConfig {
            base_delay: self.base_backoff,
            max_delay: self.max_backoff,
            rate_per_sec: self.rate_limit,
            burst: self.rate_burst,
        }
    }

    pub(crate) fn chunk_size(&self) -> usize {
        if self.populator_buffer_size == 0 {
            DEFAULT_POPULATOR_BUFFER_SIZE
        } else {
            self.populator_buffer_size
        }
    }
}

/// Both reconcilers, ready to run. See the crate docs for the wiring.
pub struct Controllers {
    ctx: Arc<ctx::Ctx>,
}

impl Controllers {
    /// Assembles the reconcilers. Must be called inside a tokio runtime (the work queues start
    /// their timer tasks here).
    pub fn new(
        images: Store<Image>,
        snapshots: Store<Snapshot>,
        backend: Arc<dyn BlockBackend>,
        source: Arc<dyn ImageSource>,
        runner: Runner,
        events: Arc<dyn EventRecorder>,
        cfg: ControllerConfig,
    ) -> Self {
        let qcfg = cfg.queue_config();
        let ctx = ctx::Ctx {
            images,
            snapshots,
            backend,
            source,
            runner,
            events,
            image_queue: WorkQueue::new(qcfg.clone()),
            snapshot_queue: WorkQueue::new(qcfg),
            cfg,
            client_key: tokio::sync::Mutex::new(None),
            gates: std::sync::Mutex::new(Default::default()),
            resolve_holds: std::sync::Mutex::new(Default::default()),
            lists_owed: std::sync::atomic::AtomicUsize::new(1),
            formats: Default::default(),
            last_events: Default::default(),
            unreferenced: Default::default(),
            failed_os: Default::default(),
        };
        Controllers { ctx: Arc::new(ctx) }
    }

    /// A handle that tells whether the reconcilers have nothing left to do (tests, health).
    pub fn probe(&self) -> Probe {
        Probe {
            ctx: self.ctx.clone(),
        }
    }

    /// Runs both reconcilers until `shutdown` is cancelled (see the crate docs).
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        wiring::run(self.ctx, shutdown).await
    }
}

/// Observes the reconcilers' queues (see [`Controllers::probe`]).
#[derive(Clone)]
pub struct Probe {
    ctx: Arc<ctx::Ctx>,
}

impl Probe {
    /// True when the controllers have listed the stores (the initial list, and any after a
    /// watch `Resync`) and no key is queued, delayed or being processed by either reconciler.
    pub fn is_idle(&self) -> bool {
        self.ctx
            .lists_owed
            .load(std::sync::atomic::Ordering::SeqCst)
            == 0
            && self.ctx.image_queue.is_idle()
            && self.ctx.snapshot_queue.is_idle()
    }

    /// The image reconciler's queue.
    pub fn image_queue(&self) -> &WorkQueue {
        &self.ctx.image_queue
    }

    /// The snapshot reconciler's queue.
    pub fn snapshot_queue(&self) -> &WorkQueue {
        &self.ctx.snapshot_queue
    }
}
