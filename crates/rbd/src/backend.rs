//! The [`BlockBackend`] contract: what every backend (fake, local directory, librbd) promises.
//!
//! Owns the trait, its value types and the error classification. Must not hold any implementation.
//!
//! # Model (librbd semantics, clone format v1)
//! * A pool holds **images** by name. An image has a size in bytes, ordered **snapshots**, a string
//!   key/value **metadata** map and optionally a **parent** (`image@snap`) when it is a clone.
//! * A snapshot is a read-only point-in-time view of its image, with a **protected** flag.
//! * [`BlockBackend::clone_image`] needs a *protected* parent snapshot (`InvalidArgument` otherwise, as
//!   librbd's EINVAL for v1 clones). A clone reads through to its parent snapshot for every byte it has
//!   not written itself, up to the parent snapshot's size (bytes beyond it read as zeroes).
//! * [`BlockBackend::flatten`] copies the parent's data into the clone and detaches it; afterwards the
//!   clone has no parent and the parent snapshot has one child fewer. Snapshots the clone took while
//!   it was a clone are detached with it and keep their bytes (measured on Ceph Pacific 16.2.15).
//! * The executable form of these rules is `rbd_testkit::conformance::rules` (in the `rbd-testkit` crate); every backend passes it.
//! * Rules the backends enforce (each maps to [`RbdError::Busy`] unless stated):
//!   - removing a **protected** snapshot fails;
//!   - unprotecting a snapshot fails while it has **children** (clones);
//!   - removing an image fails while it has **snapshots**;
//!   - creating an image or snapshot that exists fails with [`RbdError::Exists`];
//!   - anything named that does not exist fails with [`RbdError::NotFound`];
//!   - shrinking with [`BlockBackend::resize`] is *allowed* (as librbd does); refusing shrink is the
//!     controllers' job;
//!   - [`BlockBackend::encryption_format`] of an image that has a parent fails with
//!     [`RbdError::Unsupported`] (Ceph Pacific cannot format a clone: EOPNOTSUPP). Backends without
//!     encryption support return `Unsupported` for every image.
//! * **Children in other pools**: a snapshot's clones may live in another pool of the cluster
//!   ([`ChildRef::pool`]). [`BlockBackend::flatten_child`] flattens a child where it lives; a
//!   backend that has no other pools answers [`RbdError::Unsupported`] for a child of another pool
//!   and never touches a same-named image of its own pool.
//! * **Existence is decided on definite answers only**: [`BlockBackend::stat`] and
//!   [`BlockBackend::image_exists`] report an image as missing ([`RbdError::NotFound`] / `false`)
//!   only when the backend definitely knows it is not there. A failure to reach the cluster
//!   (timeouts, lost connections, a client being blocklisted) is [`RbdError::Transient`], never
//!   `NotFound`; a snapshot removed while the image is being read is simply not listed.
//! * **Half-removed images**: a removal interrupted by a crash (librbd moves the image to the trash
//!   first and deletes its objects afterwards) leaves an image that [`BlockBackend::list_images`]
//!   still lists but that cannot be opened. For such an image `image_exists` is `true`, `stat`
//!   fails with [`RbdError::Busy`] (never `NotFound`), and [`BlockBackend::remove_image`] finishes
//!   the removal (it may answer `Busy` for a while: librbd waits until the crashed client's watch
//!   has timed out, 30 s by default). Other calls on it fail with `NotFound`.
//! * Long calls ([`BlockBackend::flatten`], [`BlockBackend::write_stream`]) report progress through a
//!   [`ProgressFn`] and stop at their next checkpoint when the [`CancellationToken`] is cancelled, returning
//!   [`RbdError::Cancelled`]. A cancelled flatten leaves the clone intact (still a clone, or flattened);
//!   a cancelled write leaves a partially written image that the caller must remove or rewrite.
//! * All methods are async; backends that call blocking C code run it off the reactor threads.

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
pub use tokio_util::sync::CancellationToken;

/// Bytes the LUKS2 header takes at the start of an image formatted by
/// [`BlockBackend::encryption_format`]: librbd's LUKS2 format reserves the first 16 MiB of the
/// image, and the encrypted data starts behind it (an encrypted image holds 16 MiB less data than
/// its size).
pub const LUKS2_HEADER_SIZE: u64 = 16 * 1024 * 1024;

/// Errors of block backends, classified so that callers can decide what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RbdError {
    /// The named image, snapshot or key does not exist (ENOENT).
    #[error("not found: {0}")]
    NotFound(String),
    /// The image or snapshot to create already exists (EEXIST).
    #[error("already exists: {0}")]
    Exists(String),
    /// The object is in use: has children, is protected, has snapshots, has watchers (EBUSY, ENOTEMPTY).
    #[error("busy: {0}")]
    Busy(String),
    /// The operation was cancelled through its token before it finished.
    #[error("cancelled")]
    Cancelled,
    /// A temporary failure (timeouts, connection loss, injected faults); retrying may succeed.
    #[error("transient failure: {0}")]
    Transient(String),
    /// The backend cannot do this at all (e.g. LUKS2 format of a clone on Pacific, EOPNOTSUPP).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The request itself is wrong (e.g. clone of an unprotected snapshot, EINVAL).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl RbdError {
    /// Whether retrying the same call later may succeed (transient failures and busy objects).
    pub fn is_retryable(&self) -> bool {
        matches!(self, RbdError::Transient(_) | RbdError::Busy(_))
    }
}

/// Result alias of this crate.
pub type Result<T, E = RbdError> = std::result::Result<T, E>;

/// A snapshot of an image as listed by [`BlockBackend::list_snapshots`] and [`BlockBackend::stat`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Snapshot name.
    pub name: String,
    /// Image size at the time the snapshot was taken, in bytes.
    pub size: u64,
    /// Whether the snapshot is protected (a protected snapshot can be cloned and cannot be removed).
    pub protected: bool,
}

/// The parent of a clone: `image@snapshot` in the same pool.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ParentSpec {
    /// Pool of the parent image.
    pub pool: String,
    /// Parent image name.
    pub image: String,
    /// Parent snapshot name.
    pub snapshot: String,
}

/// A child (clone) of an image or snapshot, as listed by [`BlockBackend::list_children`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChildRef {
    /// Pool of the child image.
    pub pool: String,
    /// Child image name.
    pub image: String,
}

/// What [`BlockBackend::stat`] reports about one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Image name.
    pub name: String,
    /// Current size in bytes.
    pub size: u64,
    /// The parent snapshot when the image is an unflattened clone.
    pub parent: Option<ParentSpec>,
    /// Snapshots, in creation order.
    pub snapshots: Vec<SnapshotInfo>,
}

/// Pool capacity figures (as `ceph df` reports them per pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolUsage {
    /// Bytes that can still be written to the pool.
    pub max_avail: u64,
    /// Bytes stored in the pool.
    pub stored: u64,
}

impl PoolUsage {
    /// Capacity reported to IRI `Status`: `max_avail + stored`.
    pub fn capacity(&self) -> u64 {
        self.max_avail.saturating_add(self.stored)
    }
}

/// A secret passphrase. Its `Debug` output never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Passphrase(Vec<u8>);

impl Passphrase {
    /// Wraps raw passphrase bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Passphrase(bytes.into())
    }
    /// The raw bytes (hand them only to the encryption layer).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(***)")
    }
}

/// Progress callback of long calls: `(done, total)` in the call's own unit (bytes for writes, objects
/// for flatten). Called from backend threads: it must be cheap and must not block. For
/// [`BlockBackend::write_stream`], `done` is a watermark: every byte of the image below `done`
/// (from [`WriteOptions::start`] on) has been written (skipped zero chunks count as written), so a
/// caller may record it as a checkpoint to resume from.
pub type ProgressFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// A progress callback that ignores every report.
pub fn no_progress() -> ProgressFn {
    Arc::new(|_, _| {})
}

/// A stream of data chunks, e.g. an OCI blob being downloaded or an image being read.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// How [`BlockBackend::write_stream`] writes.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Bytes per write request (`--populator-buffer-size`, default 5 MiB).
    pub chunk_size: usize,
    /// Write requests in flight at once (≥ 1).
    pub queue_depth: usize,
    /// Skip chunks that are all zeroes (the image must be fresh, so they already read as zeroes).
    pub skip_zeroes: bool,
    /// Image offset of the stream's first byte (0: the start of the image; a resumed write
    /// continues at its checkpoint).
    pub start: u64,
    /// Bytes below this offset may hold data of an earlier, interrupted write: zero chunks there
    /// are written even with `skip_zeroes` (0: the image is fresh everywhere).
    pub dirty_until: u64,
    /// Expected total bytes, for progress reports (0 when unknown).
    pub total_hint: u64,
    /// Write through the LUKS2 layer of an image formatted with this passphrase.
    pub passphrase: Option<Passphrase>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            chunk_size: 5 * 1024 * 1024,
            queue_depth: 4,
            skip_zeroes: true,
            start: 0,
            dirty_until: 0,
            total_hint: 0,
            passphrase: None,
        }
    }
}

/// Block storage as the controllers need it: one pool of RBD-like images.
///
/// Names are image names within the backend's pool (e.g. `img_<id>`, `snap_sha256:<hex>`).
#[async_trait]
pub trait BlockBackend: Send + Sync + 'static {
    /// Name of the pool this backend works in (used in access handles `<pool>/<image>`).
    fn pool(&self) -> &str;

    /// Creates an empty image of `size` bytes (data pool = this pool). `Exists` if the name is taken.
    async fn create_image(&self, name: &str, size: u64) -> Result<()>;

    /// Reports size, parent and snapshots of an image. `NotFound` only if it definitely does not
    /// exist; `Busy` for a half-removed image (listed, cannot be opened: see the module docs);
    /// `Transient` when the backend cannot tell (cluster unreachable).
    async fn stat(&self, name: &str) -> Result<ImageInfo>;

    /// Whether an image of that name exists: the definite existence check. `false` only on a
    /// definite answer that the image is not there; a half-removed image (still listed) exists; a
    /// backend that cannot tell fails (`Transient`) instead of answering. The default asks
    /// [`BlockBackend::stat`] (for backends whose `stat` fails `NotFound` exactly when the image is
    /// not listed).
    async fn image_exists(&self, name: &str) -> Result<bool> {
        match self.stat(name).await {
            Ok(_) => Ok(true),
            Err(RbdError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Names of all images in the pool, sorted.
    async fn list_images(&self) -> Result<Vec<String>>;

    /// Sets the image size (grow or shrink; data beyond a shrunk size is discarded).
    async fn resize(&self, name: &str, size: u64) -> Result<()>;

    /// Removes an image. `Busy` while it has snapshots (or watchers); `NotFound` if missing.
    /// Finishes the removal of a half-removed image (one that is listed but cannot be opened).
    async fn remove_image(&self, name: &str) -> Result<()>;

    /// Creates snapshot `snap` of `image` (unprotected). `Exists` if it already exists.
    async fn create_snapshot(&self, image: &str, snap: &str) -> Result<()>;

    /// Protects a snapshot. Protecting an already protected snapshot is `Busy` in librbd; the
    /// backends here make it a no-op success so that callers can be idempotent.
    async fn protect_snapshot(&self, image: &str, snap: &str) -> Result<()>;

    /// Unprotects a snapshot. `Busy` while the snapshot has children. Unprotecting an unprotected
    /// snapshot succeeds.
    async fn unprotect_snapshot(&self, image: &str, snap: &str) -> Result<()>;

    /// Whether the snapshot is protected. `NotFound` if the image or snapshot is missing.
    async fn is_snapshot_protected(&self, image: &str, snap: &str) -> Result<bool>;

    /// Removes a snapshot. `Busy` while it is protected; `NotFound` if missing.
    async fn remove_snapshot(&self, image: &str, snap: &str) -> Result<()>;

    /// Snapshots of an image in creation order.
    async fn list_snapshots(&self, image: &str) -> Result<Vec<SnapshotInfo>>;

    /// Clones `parent@snap` into a new image `child` (clone format v1: the snapshot must be
    /// protected, else `InvalidArgument`). The child starts with the snapshot's size and, as with
    /// librbd, a copy of the parent image's metadata.
    async fn clone_image(&self, parent: &str, snap: &str, child: &str) -> Result<()>;

    /// Children of one snapshot (`Some(snap)`) or of every snapshot of the image (`None`), sorted.
    async fn list_children(&self, image: &str, snap: Option<&str>) -> Result<Vec<ChildRef>>;

    /// Copies the parent's data into the clone `image` and detaches it from its parent. Flattening an
    /// image without a parent succeeds at once. Progress is reported in objects (librbd) or chunks.
    async fn flatten(
        &self,
        image: &str,
        progress: ProgressFn,
        cancel: CancellationToken,
    ) -> Result<()>;

    /// Flattens the clone `child` (as listed by [`BlockBackend::list_children`]) in its own pool:
    /// [`BlockBackend::flatten`] for a child of this backend's pool, the same on the child's pool
    /// otherwise. `NotFound` when the child (or its pool) no longer exists. The default handles
    /// children of this pool and answers `Unsupported` for any other pool (backends without other
    /// pools); it never flattens a same-named image of this pool instead.
    async fn flatten_child(
        &self,
        child: &ChildRef,
        progress: ProgressFn,
        cancel: CancellationToken,
    ) -> Result<()> {
        if child.pool != self.pool() {
            return Err(RbdError::Unsupported(format!(
                "flatten of {}/{}: child in another pool than {} (this backend has one pool)",
                child.pool,
                child.image,
                self.pool()
            )));
        }
        self.flatten(&child.image, progress, cancel).await
    }

    /// Reads `len` bytes at `offset` of the image head (or of snapshot `snap`). Reads past the end are
    /// truncated at the image size.
    async fn read(&self, image: &str, snap: Option<&str>, offset: u64, len: u64) -> Result<Bytes>;

    /// Streams the whole image head (or snapshot `snap`) from offset 0 in chunks of `chunk_size`.
    async fn read_stream(
        &self,
        image: &str,
        snap: Option<&str>,
        chunk_size: usize,
    ) -> Result<ByteStream>;

    /// Writes `data` from offset `opts.start` of an existing image, with `opts.queue_depth` writes
    /// in flight. Returns the offset behind the last byte consumed from the stream (`opts.start` +
    /// the bytes consumed). Data beyond the image size is an `InvalidArgument` error. Progress is
    /// reported in bytes as a watermark (see [`ProgressFn`]; `total` = `opts.total_hint`).
    async fn write_stream(
        &self,
        image: &str,
        data: ByteStream,
        opts: WriteOptions,
        progress: ProgressFn,
        cancel: CancellationToken,
    ) -> Result<u64>;

    /// Writes `data` at `offset` of the image head (tests and small writes). A range reaching
    /// beyond the image size is `InvalidArgument` and writes nothing.
    async fn write_at(&self, image: &str, offset: u64, data: &[u8]) -> Result<()>;

    /// Formats the image with LUKS2 (AES-256) using `passphrase`. `Unsupported` for clones (Pacific)
    /// and on backends without encryption.
    async fn encryption_format(&self, image: &str, passphrase: &Passphrase) -> Result<()>;

    /// One image metadata value; `Ok(None)` if the key is not set. `NotFound` if the image is missing.
    async fn metadata_get(&self, image: &str, key: &str) -> Result<Option<String>>;

    /// Sets one image metadata value.
    async fn metadata_set(&self, image: &str, key: &str, value: &str) -> Result<()>;

    /// Sets several metadata values (a later one for a key wins), for an image **no client has
    /// open** (one being provisioned): a backend may write them without telling clients that have
    /// the image open (the Ceph backend makes one class call on the image header instead of an
    /// image open and a notification per key). Not necessarily atomic: after a failure some may be
    /// set (setting them again is harmless). The default sets them one by one.
    async fn metadata_set_all(&self, image: &str, entries: &[(String, String)]) -> Result<()> {
        for (key, value) in entries {
            self.metadata_set(image, key, value).await?;
        }
        Ok(())
    }

    /// All metadata of an image.
    async fn metadata_list(&self, image: &str) -> Result<BTreeMap<String, String>>;

    /// Capacity figures of the pool.
    async fn pool_usage(&self) -> Result<PoolUsage>;

    /// The cephx key of `client` (e.g. `client.volumes`) that consumers use to map images.
    async fn client_key(&self, client: &str) -> Result<String>;
}
