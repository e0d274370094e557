//! [`CephBackend`]: [`BlockBackend`] on librbd. Each call opens the image it needs, works on it on
//! tokio's blocking pool (never on a reactor thread) and closes it.
//!
//! # What faults produce
//! * **Stuck placement group, unreachable OSD or mon**: every call is bounded by the handle's op
//!   timeouts ([`CephConfig::op_timeout`], [`CephConfig::mon_timeout`]) and then fails with
//!   [`RbdError::Transient`] (ETIMEDOUT), so a blocking thread is pinned at most that long and
//!   callers retry.
//! * **Existence** is decided on definite answers only: `stat` fails `NotFound` only when opening
//!   the image answers ENOENT *and* the pool's image listing (`rbd_list2`) does not name it;
//!   `image_exists` is true when the image opens or is listed. A listing that fails is an error,
//!   never "gone".
//! * **Half-removed image** (a removal killed after librbd moved the image to the trash, or an
//!   image whose header object is missing): listed, cannot be opened. `stat` fails with
//!   [`RbdError::Busy`], `image_exists` is true, `remove_image` (`rbd_remove`, which looks the
//!   name up in the trash too) finishes the removal — after a crash it answers `Busy` until the
//!   dead client's watch has timed out (`osd_client_watch_timeout`, 30 s).
//! * **Half-removed snapshot**: librbd removes a snapshot by first moving it into the trash
//!   namespace (renamed to a UUID, its original name kept), then releasing it; a removal killed in
//!   between leaves it there for good, holding its data. `remove_snapshot` of the same name
//!   removes such leftovers (found by `tests/tests/e2e_ceph_chaos.rs`); one that clone v2
//!   children keep in the trash stays, and librbd removes it with the last of them.
//! * **Children in other pools**: `flatten_child` opens the child's own pool; a pool that no longer
//!   exists is `NotFound`, one the user has no caps on fails with EPERM (`Other`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::image::{Image, ImageOptions};
use crate::rados::{ConnectOptions, IoCtx, Rados};
use crate::stream::{feed, write_chunks};
use crate::sys;
use rbd::{
    BlockBackend, ByteStream, CancellationToken, ChildRef, ImageInfo, Passphrase, PoolUsage,
    ProgressFn, RbdError, Result, SnapshotInfo, WriteOptions,
};

/// Clone format used by [`BlockBackend::clone_image`]: v1, as the contract specifies (the parent
/// snapshot must be protected).
const CLONE_FORMAT: u64 = 1;

/// Suffix of the temporary name a clone is made under before it is renamed to its own name
/// (see `CephBackend::clone_image`).
pub const CLONE_TEMP_SUFFIX: &str = ".cloning";

/// The temporary name of a clone into `child`.
fn clone_temp_name(child: &str) -> String {
    format!("{child}{CLONE_TEMP_SUFFIX}")
}

/// librbd feature bits cleared on clones: `RBD_FEATURE_OBJECT_MAP` (1 << 3) and
/// `RBD_FEATURE_FAST_DIFF` (1 << 4), see `CephBackend::clone_into`.
const CLONE_FEATURES_CLEARED: u64 = (1 << 3) | (1 << 4);

/// Default of [`CephConfig::op_timeout`]: longer than the OSD failure detection (heartbeat
/// grace 20 s + interval 6 s), so that an OSD fail-over is a delay, not an error.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(30);

/// Default of [`CephConfig::mon_timeout`].
pub const DEFAULT_MON_TIMEOUT: Duration = Duration::from_secs(10);

/// Default of [`CephConfig::format_concurrency`].
pub const DEFAULT_FORMAT_CONCURRENCY: usize = 1;

/// The nice value of the thread that runs a LUKS2 format where `SCHED_IDLE` is refused (the
/// lowest priority; see [`CephConfig::format_concurrency`]).
const FORMAT_NICE: i32 = 19;

/// How to connect.
#[derive(Debug, Clone)]
pub struct CephConfig {
    /// `ceph.conf` to read (optional).
    pub conf_file: Option<PathBuf>,
    /// Monitors, e.g. `127.0.0.1:6789` (optional when the conf file names them).
    pub monitors: Option<String>,
    /// User id, with or without `client.`.
    pub user: String,
    /// Keyring file (optional).
    pub keyring: Option<PathBuf>,
    /// File holding only the key (wins over the keyring).
    pub key_file: Option<PathBuf>,
    /// The pool to work in.
    pub pool: String,
    /// Bound of the connect and authentication (`client_mount_timeout`).
    pub connect_timeout: Duration,
    /// Bound of every OSD operation, librbd's included (`rados_osd_op_timeout`; zero: none).
    pub op_timeout: Duration,
    /// Bound of every mon command (`rados_mon_op_timeout`; zero: none).
    pub mon_timeout: Duration,
    /// LUKS2 formats at once (0 counts as 1). librbd derives the key with argon2 (seconds of CPU
    /// on several threads and about 1 GiB of memory each on Pacific), so formats run one by one
    /// by default, each on a thread of its own at the lowest CPU priority (`SCHED_IDLE`; the key
    /// derivation's threads inherit it): the I/O of every other volume, and the OSDs on the same
    /// host, keep the CPU. A format waiting for its turn holds its runner slot, not a reconcile
    /// worker, and counts against the controllers' format deadline.
    pub format_concurrency: usize,
}

impl CephConfig {
    /// Reads the variables `cargo xtask ceph env` exports: `CEPH_CONF`, `CEPH_POOL`, `CEPH_USER`,
    /// `CEPH_KEYRING` (optional `CEPH_KEY_FILE`, `CEPH_MONITORS`). `None` when `CEPH_CONF` or
    /// `CEPH_POOL` is unset.
    pub fn from_env() -> Option<CephConfig> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Some(CephConfig {
            conf_file: Some(PathBuf::from(var("CEPH_CONF")?)),
            monitors: var("CEPH_MONITORS"),
            user: var("CEPH_USER").unwrap_or_else(|| "admin".into()),
            keyring: var("CEPH_KEYRING").map(PathBuf::from),
            key_file: var("CEPH_KEY_FILE").map(PathBuf::from),
            pool: var("CEPH_POOL")?,
            connect_timeout: Duration::from_secs(10),
            op_timeout: DEFAULT_OP_TIMEOUT,
            mon_timeout: DEFAULT_MON_TIMEOUT,
            format_concurrency: DEFAULT_FORMAT_CONCURRENCY,
        })
    }
}

/// Block backend on a real Ceph pool through librbd. Cheap to clone (shares the connection).
#[derive(Clone, Debug)]
pub struct CephBackend {
    rados: Rados,
    io: IoCtx,
    /// Permits of the LUKS2 formats that may run at once (`CephConfig::format_concurrency`).
    formats: Arc<tokio::sync::Semaphore>,
}

/// Puts the calling thread, and every thread it starts from now on, at the lowest CPU priority:
/// the `SCHED_IDLE` policy, and nice 19 where that is refused. The policy matters: libcryptsetup
/// raises the priority of the thread that derives a key to nice -18 for the derivation when the
/// process may (root, `CAP_SYS_NICE`; measured on Pacific's librbd), and its argon2 threads,
/// created meanwhile, inherit that. A `SCHED_IDLE` thread stays one whatever its nice value says.
fn lowest_cpu_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0 is the calling thread
    // (Linux schedules threads individually), and SCHED_IDLE takes priority 0.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "SCHED_IDLE refused");
    }
    // Linux: the nice value belongs to this thread only (`None`: the calling one).
    if let Err(e) = rustix::process::setpriority_process(None, FORMAT_NICE) {
        tracing::debug!(error = %e, "could not lower the LUKS2 format's priority");
    }
}

/// Runs blocking librbd/librados work on tokio's blocking pool.
async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RbdError::Other(format!("blocking ceph task failed: {e}")))?
}

impl CephBackend {
    /// Connects and opens the pool (`NotFound` if the pool does not exist).
    pub async fn connect(cfg: CephConfig) -> Result<CephBackend> {
        blocking(move || {
            let rados = Rados::connect(&ConnectOptions {
                conf_file: cfg.conf_file.as_deref(),
                monitors: cfg.monitors.as_deref(),
                user: &cfg.user,
                keyring: cfg.keyring.as_deref(),
                key_file: cfg.key_file.as_deref(),
                timeout: cfg.connect_timeout,
                mon_op_timeout: cfg.mon_timeout,
                osd_op_timeout: cfg.op_timeout,
            })?;
            let io = rados.ioctx(&cfg.pool)?;
            Ok(CephBackend::with_formats(rados, io, cfg.format_concurrency))
        })
        .await
    }

    /// A backend on an existing connection and I/O context (LUKS2 formats one by one).
    pub fn from_parts(rados: Rados, io: IoCtx) -> CephBackend {
        CephBackend::with_formats(rados, io, DEFAULT_FORMAT_CONCURRENCY)
    }

    fn with_formats(rados: Rados, io: IoCtx, formats: usize) -> CephBackend {
        CephBackend {
            rados,
            io,
            formats: Arc::new(tokio::sync::Semaphore::new(formats.max(1))),
        }
    }

    /// The cluster connection.
    pub fn rados(&self) -> &Rados {
        &self.rados
    }

    /// The pool's I/O context.
    pub fn ioctx(&self) -> &IoCtx {
        &self.io
    }

    /// Runs `f` with an image opened at `snap` (head when `None`) on the blocking pool.
    async fn with_image<T, F>(
        &self,
        name: &str,
        snap: Option<&str>,
        read_only: bool,
        f: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Image) -> Result<T> + Send + 'static,
    {
        let io = self.io.clone();
        let name = name.to_string();
        let snap = snap.map(str::to_string);
        blocking(move || {
            let image = io.open_image(&name, snap.as_deref(), read_only)?;
            let out = f(&image)?;
            image.close()?;
            Ok(out)
        })
        .await
    }

    /// `rbd_clone3` of `parent@snap` into `name` in this pool, with this backend's clone options.
    async fn clone_into(&self, parent: &str, snap: &str, name: &str) -> Result<()> {
        let io = self.io.clone();
        let (parent, snap, name) = (parent.to_string(), snap.to_string(), name.to_string());
        let mut opts = self.options()?;
        opts.set_u64(sys::RBD_IMAGE_OPTION_CLONE_FORMAT, CLONE_FORMAT)?;
        // Clones are made without object-map/fast-diff: Pacific's flatten trusts the clone's object
        // map, which marks an object before its copy-up finishes; a flatten interrupted by a crash
        // and resumed then skips those objects and the detached clone reads zeroes there (fixed
        // upstream after Pacific, ceph/ceph#61129; found by tests/tests/e2e_ceph_crash.rs).
        opts.set_u64(sys::RBD_IMAGE_OPTION_FEATURES_CLEAR, CLONE_FEATURES_CLEARED)?;
        blocking(move || io.clone_image(&parent, &snap, &io, &name, &opts)).await
    }

    /// Removes image `name` (see `remove_image`), without its clone's temporary image.
    async fn remove_one(&self, name: &str) -> Result<()> {
        let io = self.io.clone();
        let n = name.to_string();
        // rbd_remove finishes a half-removed image too: it looks the name up in the trash when
        // the directory no longer has it.
        match blocking(move || io.remove_image(&n)).await {
            Err(e @ RbdError::NotFound(_)) => match self.listed(name).await? {
                false => Err(e),
                true => Err(RbdError::Busy(format!(
                    "image {name} is still listed after its removal answered ENOENT ({e}); retry"
                ))),
            },
            // librbd refuses while the image header has watchers. A killed client's watch
            // normally expires within 30 s; on Ceph Pacific a client killed while its watch
            // registration was in flight leaves one that never does.
            Err(RbdError::Busy(e)) => Err(RbdError::Busy(format!(
                "{e}: the image is open elsewhere or keeps a killed client's watch (`rbd status` \
                 shows it; one that stays longer than 30 s is cleared by marking its OSD down)"
            ))),
            other => other,
        }
    }

    /// Whether the pool's image listing (`rbd_list2`, which includes half-removed images) names
    /// `name`: the definite answer behind `stat`, `image_exists` and `remove_image`.
    async fn listed(&self, name: &str) -> Result<bool> {
        let io = self.io.clone();
        let name = name.to_string();
        blocking(move || Ok(io.list_images()?.contains(&name))).await
    }

    /// Classifies a `NotFound` that opening image `name` (or working on it) answered: `NotFound`
    /// only if the image is not listed either; a listed image that does not open is half-removed
    /// (`Busy`) when the open failed, and changed under our feet (`Transient`) when it opened.
    async fn confirm_absent(&self, name: &str, err: RbdError, opened: bool) -> RbdError {
        match self.listed(name).await {
            Ok(false) => err,
            Ok(true) if opened => RbdError::Transient(format!(
                "image {name} changed while it was read ({err}); it is still listed"
            )),
            Ok(true) => half_removed(name),
            Err(e) => e,
        }
    }

    /// The I/O context of `pool`: this backend's own, or a new one on the same connection.
    async fn pool_ioctx(&self, pool: &str) -> Result<IoCtx> {
        if pool == self.io.pool() {
            return Ok(self.io.clone());
        }
        let rados = self.rados.clone();
        let pool = pool.to_string();
        blocking(move || rados.ioctx(&pool)).await
    }

    fn options(&self) -> Result<ImageOptions> {
        let mut opts = ImageOptions::new()?;
        opts.set_str(sys::RBD_IMAGE_OPTION_DATA_POOL, self.io.pool())?;
        Ok(opts)
    }

    async fn mon_json(&self, cmd: serde_json::Value) -> Result<serde_json::Value> {
        let rados = self.rados.clone();
        let text = cmd.to_string();
        let out = blocking(move || rados.mon_command(&text)).await?;
        serde_json::from_slice(&out).map_err(|e| {
            RbdError::Other(format!(
                "mon command {:?}: bad JSON answer: {e}",
                cmd["prefix"]
            ))
        })
    }
}

/// What `stat` answers for an image that is listed but cannot be opened.
fn half_removed(name: &str) -> RbdError {
    RbdError::Busy(format!(
        "image {name} is half-removed (listed, cannot be opened: a removal was interrupted); \
         removing it again finishes the removal"
    ))
}

/// Flattens the open clone `img` (a no-op without parent), reporting `(done, total)` in objects and
/// stopping with `Cancelled` when `cancel` fires.
fn flatten_open(img: &Image, progress: &ProgressFn, cancel: &CancellationToken) -> Result<()> {
    if img.parent()?.is_none() {
        return Ok(());
    }
    if cancel.is_cancelled() {
        return Err(RbdError::Cancelled);
    }
    // librbd reports each object as it starts it, never the end: report completion ourselves so
    // that the last report of a finished flatten is (total, total).
    let last = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let seen = last.clone();
    let report = progress.clone();
    let token = cancel.clone();
    img.flatten(&move |done, total| {
        seen.0.store(done, Ordering::Relaxed);
        seen.1.store(total, Ordering::Relaxed);
        report(done, total);
        !token.is_cancelled()
    })?;
    let (done, total) = (
        last.0.load(Ordering::Relaxed),
        last.1.load(Ordering::Relaxed),
    );
    if total > 0 && done != total {
        progress(total, total);
    }
    Ok(())
}

#[async_trait]
impl BlockBackend for CephBackend {
    fn pool(&self) -> &str {
        self.io.pool()
    }

    async fn create_image(&self, name: &str, size: u64) -> Result<()> {
        let io = self.io.clone();
        let name = name.to_string();
        let opts = self.options()?;
        blocking(move || io.create_image(&name, size, &opts)).await
    }

    async fn stat(&self, name: &str) -> Result<ImageInfo> {
        let io = self.io.clone();
        let n = name.to_string();
        // A failure comes with whether the open succeeded, to classify a NotFound.
        let stat = move || -> std::result::Result<ImageInfo, (bool, RbdError)> {
            let image = io.open_image(&n, None, true).map_err(|e| (false, e))?;
            let read = || -> Result<ImageInfo> {
                Ok(ImageInfo {
                    name: n.clone(),
                    size: image.size()?,
                    parent: image.parent()?,
                    snapshots: image.snapshots()?,
                })
            };
            let info = read().map_err(|e| (true, e))?;
            image.close().map_err(|e| (true, e))?;
            Ok(info)
        };
        match blocking(move || Ok(stat())).await? {
            Ok(info) => Ok(info),
            Err((opened, e @ RbdError::NotFound(_))) => {
                Err(self.confirm_absent(name, e, opened).await)
            }
            Err((_, e)) => Err(e),
        }
    }

    async fn image_exists(&self, name: &str) -> Result<bool> {
        let io = self.io.clone();
        let n = name.to_string();
        match blocking(move || io.open_image(&n, None, true)?.close()).await {
            Ok(()) => Ok(true),
            Err(RbdError::NotFound(_)) => self.listed(name).await,
            Err(e) => Err(e),
        }
    }

    async fn list_images(&self) -> Result<Vec<String>> {
        let io = self.io.clone();
        blocking(move || io.list_images()).await
    }

    async fn resize(&self, name: &str, size: u64) -> Result<()> {
        self.with_image(name, None, false, move |img| img.resize(size))
            .await
    }

    async fn remove_image(&self, name: &str) -> Result<()> {
        let removed = self.remove_one(name).await;
        // A clone interrupted before its rename left its temporary image behind (see
        // `clone_image`): it goes with the image it was meant to become.
        if !name.ends_with(CLONE_TEMP_SUFFIX) {
            match self.remove_one(&clone_temp_name(name)).await {
                Ok(()) | Err(RbdError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        removed
    }

    async fn create_snapshot(&self, image: &str, snap: &str) -> Result<()> {
        let snap = snap.to_string();
        self.with_image(image, None, false, move |img| img.snap_create(&snap))
            .await
    }

    async fn protect_snapshot(&self, image: &str, snap: &str) -> Result<()> {
        let snap = snap.to_string();
        self.with_image(image, None, false, move |img| {
            if img.snap_is_protected(&snap)? {
                return Ok(());
            }
            match img.snap_protect(&snap) {
                // Lost a race with another protect: fine if it is protected now.
                Err(RbdError::Busy(_)) if img.snap_is_protected(&snap)? => Ok(()),
                other => other,
            }
        })
        .await
    }

    async fn unprotect_snapshot(&self, image: &str, snap: &str) -> Result<()> {
        let snap = snap.to_string();
        self.with_image(image, None, false, move |img| {
            if !img.snap_is_protected(&snap)? {
                return Ok(());
            }
            match img.snap_unprotect(&snap) {
                Err(RbdError::InvalidArgument(_)) if !img.snap_is_protected(&snap)? => Ok(()),
                other => other,
            }
        })
        .await
    }

    async fn is_snapshot_protected(&self, image: &str, snap: &str) -> Result<bool> {
        let snap = snap.to_string();
        self.with_image(image, None, true, move |img| img.snap_is_protected(&snap))
            .await
    }

    /// Also finishes an earlier removal of `snap` that was killed after librbd moved the snapshot
    /// into the trash namespace (module docs): `NotFound` only when neither is left.
    async fn remove_snapshot(&self, image: &str, snap: &str) -> Result<()> {
        let snap = snap.to_string();
        self.with_image(image, None, false, move |img| {
            let listed = img.snap_exists(&snap)?;
            if listed {
                img.snap_remove(&snap)?;
            }
            let trashed = img.trashed_snapshots_named(&snap)?;
            for &id in &trashed {
                match img.snap_remove_by_id(id) {
                    // `Busy`: clone v2 children (made by another client) keep it; librbd
                    // removes it with the last of them.
                    Ok(()) | Err(RbdError::NotFound(_)) | Err(RbdError::Busy(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            if !listed && trashed.is_empty() {
                return Err(RbdError::NotFound(format!(
                    "snapshot {}@{snap}",
                    img.name()
                )));
            }
            Ok(())
        })
        .await
    }

    async fn list_snapshots(&self, image: &str) -> Result<Vec<SnapshotInfo>> {
        self.with_image(image, None, true, |img| img.snapshots())
            .await
    }

    /// librbd makes a clone in steps: it creates the child image, then links it to its parent.
    /// A process killed in between leaves an image without a parent that reads zeroes, and
    /// under the child's own name it would pass for the finished clone (the guest would get a
    /// blank disk; found by `tests/tests/e2e_ceph_chaos.rs`). So the clone is made under
    /// `<child>.cloning` and renamed to `child` once complete: the child's name only ever
    /// names a whole clone. A leftover temporary image is removed before the next try and by
    /// `remove_image(child)`: whole or parentless (in the pool's directory), or half-removed by
    /// a removal of it that was killed in turn (only in the pool's trash: a new clone under the
    /// same name does not collide with it, so it stayed until the volume was deleted; found by
    /// the chaos test). Whether there is one costs two omap reads (`IoCtx::may_have_image`),
    /// never a pool listing.
    async fn clone_image(&self, parent: &str, snap: &str, child: &str) -> Result<()> {
        if self.image_exists(child).await? {
            return Err(RbdError::Exists(format!("image {child} exists")));
        }
        let temp = clone_temp_name(child);
        let io = self.io.clone();
        let t = temp.clone();
        if blocking(move || io.may_have_image(&t)).await? {
            match self.remove_one(&temp).await {
                Ok(()) | Err(RbdError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        match self.clone_into(parent, snap, &temp).await {
            Ok(()) => {}
            Err(RbdError::Exists(_)) => {
                // A leftover the removal above did not find. librbd creates an image's id object
                // (`rbd_id.<name>`, exclusively) before it names the image in the directory: a
                // kill in between leaves only that object, which no removal by name finds and
                // which fails every later creation under the name with EEXIST.
                let io = self.io.clone();
                let t = temp.clone();
                blocking(move || io.remove_orphan_id_object(&t)).await?;
                match self.clone_into(parent, snap, &temp).await {
                    // Never `Exists`: callers read that as "the child exists".
                    Err(RbdError::Exists(e)) => {
                        return Err(RbdError::Busy(format!(
                            "{e}: a leftover of an interrupted clone is in the way; retry"
                        )))
                    }
                    other => other?,
                }
            }
            Err(e) => return Err(e),
        }
        let io = self.io.clone();
        let (from, to) = (temp.clone(), child.to_string());
        match blocking(move || io.rename_image(&from, &to)).await {
            Err(e @ RbdError::Exists(_)) => {
                // Made meanwhile by someone else: ours is not needed.
                if let Err(re) = self.remove_one(&temp).await {
                    tracing::warn!(image = %temp, error = %re, "removing an unneeded clone failed");
                }
                Err(e)
            }
            other => other,
        }
    }

    async fn list_children(&self, image: &str, snap: Option<&str>) -> Result<Vec<ChildRef>> {
        self.with_image(image, snap, true, |img| img.children())
            .await
    }

    async fn flatten(
        &self,
        image: &str,
        progress: ProgressFn,
        cancel: CancellationToken,
    ) -> Result<()> {
        let span = tracing::debug_span!("flatten", image = %image);
        self.with_image(image, None, false, move |img| {
            flatten_open(img, &progress, &cancel)
        })
        .instrument(span)
        .await
    }

    async fn flatten_child(
        &self,
        child: &ChildRef,
        progress: ProgressFn,
        cancel: CancellationToken,
    ) -> Result<()> {
        let span = tracing::debug_span!("flatten", pool = %child.pool, image = %child.image);
        let work = async {
            let io = self.pool_ioctx(&child.pool).await?;
            let name = child.image.clone();
            blocking(move || {
                let img = io.open_image(&name, None, false)?;
                flatten_open(&img, &progress, &cancel)?;
                img.close()
            })
            .await
        };
        work.instrument(span).await
    }

    async fn read(&self, image: &str, snap: Option<&str>, offset: u64, len: u64) -> Result<Bytes> {
        self.with_image(image, snap, true, move |img| {
            let size = img.size()?;
            let len = len.min(size.saturating_sub(offset));
            let mut buf = vec![
                0u8;
                usize::try_from(len).map_err(|_| RbdError::InvalidArgument(
                    "read too large".into()
                ))?
            ];
            let n = img.read_at(offset, &mut buf)?;
            buf.truncate(n);
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn read_stream(
        &self,
        image: &str,
        snap: Option<&str>,
        chunk_size: usize,
    ) -> Result<ByteStream> {
        if chunk_size == 0 {
            return Err(RbdError::InvalidArgument(
                "chunk_size must be positive".into(),
            ));
        }
        let io = self.io.clone();
        let (name, snap) = (image.to_string(), snap.map(str::to_string));
        // Open first, so that a missing image is an error of this call rather than of the stream.
        let img = blocking(move || io.open_image(&name, snap.as_deref(), true)).await?;
        let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(2);
        tokio::task::spawn_blocking(move || {
            let size = match img.size() {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.blocking_send(Err(std::io::Error::other(e)));
                    return;
                }
            };
            let mut offset = 0u64;
            while offset < size {
                let len = (size - offset).min(chunk_size as u64) as usize;
                let mut buf = vec![0u8; len];
                let item = match img.read_at(offset, &mut buf) {
                    Ok(n) if n == len => Ok(Bytes::from(buf)),
                    Ok(n) => Err(std::io::Error::other(format!(
                        "short read of {} at {offset}: {n}",
                        img.name()
                    ))),
                    Err(e) => Err(std::io::Error::other(e)),
                };
                let failed = item.is_err();
                if tx.blocking_send(item).is_err() || failed {
                    return;
                }
                offset += len as u64;
            }
        });
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })))
    }

    async fn write_stream(
        &self,
        image: &str,
        data: ByteStream,
        opts: WriteOptions,
        progress: ProgressFn,
        cancel: CancellationToken,
    ) -> Result<u64> {
        if opts.chunk_size == 0 {
            return Err(RbdError::InvalidArgument(
                "chunk_size must be positive".into(),
            ));
        }
        let span = tracing::debug_span!("write_stream", image = %image);
        let (tx, rx) = mpsc::channel::<Result<Bytes>>(opts.queue_depth.max(1));
        let chunk_size = opts.chunk_size;
        let writer_cancel = cancel.clone();
        let writer = self.with_image(image, None, false, move |img| {
            write_chunks(img, rx, &opts, &progress, &writer_cancel)
        });
        let feeder = feed(data, chunk_size, tx, cancel);
        let (written, ()) = async { tokio::join!(writer, feeder) }
            .instrument(span)
            .await;
        written
    }

    async fn write_at(&self, image: &str, offset: u64, data: &[u8]) -> Result<()> {
        let data = data.to_vec();
        self.with_image(image, None, false, move |img| img.write_at(offset, &data))
            .await
    }

    async fn encryption_format(&self, image: &str, passphrase: &Passphrase) -> Result<()> {
        // One by one (by default), at the lowest CPU priority: see `CephConfig::format_concurrency`.
        let permit = self
            .formats
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| RbdError::Other("the LUKS2 format gate is closed".into()))?;
        let (io, name, passphrase) = (self.io.clone(), image.to_string(), passphrase.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        // One name per format (threads the key derivation starts inherit it): `luks2-fmt-<n>`.
        static FORMATS: AtomicU64 = AtomicU64::new(0);
        let n = FORMATS.fetch_add(1, Ordering::Relaxed) % 100_000;
        std::thread::Builder::new()
            .name(format!("luks2-fmt-{n}"))
            .spawn(move || {
                // The permit is released when the format is done, also when the caller gave up
                // waiting for it (its deadline): a format never overlaps the next one.
                let _permit = permit;
                lowest_cpu_priority();
                let out = (|| {
                    let img = io.open_image(&name, None, false)?;
                    // Pacific cannot format a clone (EOPNOTSUPP after a long key derivation):
                    // refuse up front.
                    if let Some(parent) = img.parent()? {
                        return Err(RbdError::Unsupported(format!(
                            "LUKS2 format of {}: it is a clone of {}@{} (Ceph Pacific cannot \
                             encrypt clones)",
                            img.name(),
                            parent.image,
                            parent.snapshot
                        )));
                    }
                    img.encryption_format_luks2(&passphrase)?;
                    img.close()
                })();
                let _ = tx.send(out);
            })
            .map_err(|e| RbdError::Other(format!("starting the LUKS2 format thread: {e}")))?;
        rx.await.map_err(|_| {
            RbdError::Other("the LUKS2 format thread ended without an answer".into())
        })?
    }

    async fn metadata_get(&self, image: &str, key: &str) -> Result<Option<String>> {
        let key = key.to_string();
        self.with_image(image, None, true, move |img| img.metadata_get(&key))
            .await
    }

    async fn metadata_set(&self, image: &str, key: &str, value: &str) -> Result<()> {
        let (key, value) = (key.to_string(), value.to_string());
        self.with_image(image, None, false, move |img| {
            img.metadata_set(&key, &value)
        })
        .await
    }

    async fn metadata_set_all(&self, image: &str, entries: &[(String, String)]) -> Result<()> {
        // One class call on the image header, no image open (see `header.rs` for why and when).
        let (io, name, entries) = (self.io.clone(), image.to_string(), entries.to_vec());
        blocking(move || io.set_image_metadata(&name, &entries)).await
    }

    async fn metadata_list(&self, image: &str) -> Result<BTreeMap<String, String>> {
        self.with_image(image, None, true, |img| img.metadata_list())
            .await
    }

    async fn pool_usage(&self) -> Result<PoolUsage> {
        let df = self
            .mon_json(serde_json::json!({"prefix": "df", "format": "json"}))
            .await?;
        let pool = self.io.pool();
        let stats = df["pools"]
            .as_array()
            .and_then(|pools| pools.iter().find(|p| p["name"] == pool))
            .map(|p| &p["stats"])
            .ok_or_else(|| RbdError::NotFound(format!("pool {pool} in `ceph df`")))?;
        Ok(PoolUsage {
            max_avail: stats["max_avail"].as_u64().unwrap_or(0),
            stored: stats["stored"].as_u64().unwrap_or(0),
        })
    }

    async fn client_key(&self, client: &str) -> Result<String> {
        let answer = self
            .mon_json(
                serde_json::json!({"prefix": "auth get-key", "entity": client, "format": "json"}),
            )
            .await?;
        answer["key"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| RbdError::Other(format!("auth get-key {client}: no key in the answer")))
    }
}
