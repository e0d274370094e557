//! `LocalBackend`: images as sparse files in a directory — the daemon's embedded default when no
//! Ceph cluster is configured.
//!
//! Owns the on-disk layout below its directory and nothing else:
//! ```text
//! <dir>/images/<escaped image name>/data             sparse file, exactly the image size
//! <dir>/images/<escaped image name>/meta.json        size, parent, snapshots, image metadata
//! <dir>/images/<escaped image name>/snaps/<escaped>  one full (sparse) copy per snapshot
//! <dir>/tmp/, <dir>/trash/                           staging and removal areas, emptied on open
//! ```
//! Names are escaped for the file system: bytes other than ASCII letters, digits, `_`, `-` and a
//! non-leading `.` become `%XX`, so `snap_sha256:ab…` and names with `/` are fine. The real name is
//! kept in `meta.json`.
//!
//! # What it models
//! The same rules as librbd clone format v1 (and as [`crate::fake::MemoryBackend`]): a protected
//! snapshot cannot be removed, unprotect fails while clones exist, an image with snapshots cannot be
//! removed, clone needs a protected snapshot, and a clone is a child of its parent snapshot until it
//! is flattened or removed (flatten detaches the clone's snapshots too, as on Ceph Pacific).
//!
//! # Where it differs from librbd
//! * A snapshot is a full (sparse-aware) copy of the data file, and a clone is a copy of the parent
//!   snapshot's file taken at clone time, with the parent recorded. Reading a clone therefore gives
//!   the same bytes as librbd's read-through, but [`BlockBackend::flatten`] only drops the parent
//!   link (the data is already there) and reports one progress step of all objects at once; it is
//!   cancellable only before it starts.
//! * [`BlockBackend::encryption_format`] and writes with a passphrase are
//!   [`RbdError::Unsupported`] ("encryption needs the ceph backend").
//! * [`BlockBackend::pool_usage`]: `stored` is the space the data and snapshot files really occupy
//!   (allocated blocks), `max_avail` is a configured capacity (default 1 TiB,
//!   [`LocalBackend::with_capacity`]) minus `stored`; the file system's free space is not consulted.
//! * [`BlockBackend::client_key`] returns the constant [`LOCAL_CLIENT_KEY`]: there is no cephx.
//! * One pool: every clone lives in this directory, so [`BlockBackend::flatten_child`] of a child
//!   in another pool is `Unsupported` (the trait's default, which never touches a same-named
//!   image here). Removals cannot be left half-done (the image directory is renamed into `trash/`
//!   in one step), so `stat` fails `NotFound` exactly when the image is not listed.
//! * Protect/unprotect are idempotent (the trait's contract); writes beyond the image size are
//!   `InvalidArgument`.
//!
//! # Durability
//! Metadata changes are written to a temporary file, synced and renamed over `meta.json`. New
//! images and clones are assembled under `tmp/` and renamed into `images/` in one step; removed
//! images are renamed into `trash/` first. `write_stream` syncs the data file when it finishes;
//! `write_at` does not. [`LocalBackend::with_sync`]`(false)` turns every sync off (tests). All file I/O runs on tokio's blocking pool; metadata operations are
//! serialised by one lock, data reads and streamed writes run outside it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

mod metadata;
use metadata::Metadata;

use crate::pipeline::{is_zero, pipelined_write};
use crate::{
    BlockBackend, ByteStream, CancellationToken, ChildRef, ImageInfo, ParentSpec, Passphrase,
    PoolUsage, ProgressFn, RbdError, Result, SnapshotInfo, WriteOptions,
};

/// The key [`LocalBackend::client_key`](BlockBackend::client_key) returns for every client.
pub const LOCAL_CLIENT_KEY: &str = "local-no-key";

/// Default capacity reported by `pool_usage`: 1 TiB.
pub const DEFAULT_CAPACITY: u64 = 1 << 40;

/// Object size used to express flatten progress (librbd's default 4 MiB objects).
const OBJECT_SIZE: u64 = 4 * 1024 * 1024;

/// Granularity of zero detection when copying files sparsely.
const SPARSE_BLOCK: usize = 64 * 1024;

/// Longest escaped name we put in a path component (file systems allow 255 bytes).
const MAX_ESCAPED_LEN: usize = 240;

const UNSUPPORTED_ENCRYPTION: &str = "encryption needs the ceph backend";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LinkMeta {
    image: String,
    snap: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapMeta {
    name: String,
    size: u64,
    protected: bool,
    /// The image's parent when the snapshot was taken (cleared by flatten).
    parent: Option<LinkMeta>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageMeta {
    name: String,
    size: u64,
    parent: Option<LinkMeta>,
    snapshots: Vec<SnapMeta>,
    metadata: Metadata,
}

impl ImageMeta {
    fn snap(&self, snap: &str) -> Result<&SnapMeta> {
        self.snapshots
            .iter()
            .find(|s| s.name == snap)
            .ok_or_else(|| not_found_snap(&self.name, snap))
    }

    fn snap_mut(&mut self, snap: &str) -> Result<&mut SnapMeta> {
        let image = self.name.clone();
        self.snapshots
            .iter_mut()
            .find(|s| s.name == snap)
            .ok_or_else(|| not_found_snap(&image, snap))
    }
}

type Catalog = BTreeMap<String, ImageMeta>;

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    pool: String,
    capacity: AtomicU64,
    sync: AtomicBool,
    unique: AtomicU64,
    catalog: tokio::sync::Mutex<Catalog>,
}

/// Images as sparse files in a directory (see the [module docs](self)).
///
/// Cloning is cheap and shares the directory state. Only one `LocalBackend` (and its clones) should
/// use a directory at a time.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

fn not_found_image(name: &str) -> RbdError {
    RbdError::NotFound(format!("image {name}"))
}

fn not_found_snap(image: &str, snap: &str) -> RbdError {
    RbdError::NotFound(format!("snapshot {image}@{snap}"))
}

fn io_err(context: impl std::fmt::Display, e: io::Error) -> RbdError {
    if e.kind() == io::ErrorKind::NotFound {
        RbdError::NotFound(format!("{context}: {e}"))
    } else {
        RbdError::Other(format!("{context}: {e}"))
    }
}

/// Escapes a name into one safe path component (see the module docs).
fn escape(name: &str) -> Result<String> {
    if name.is_empty() {
        return Err(RbdError::InvalidArgument("empty name".into()));
    }
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() > MAX_ESCAPED_LEN {
        return Err(RbdError::InvalidArgument(format!(
            "name too long for the local backend: {name}"
        )));
    }
    Ok(out)
}

/// Runs blocking file I/O on tokio's blocking pool.
async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RbdError::Other(format!("blocking file task failed: {e}")))?
}

/// Children of `image@snap` (any snapshot when `None`): images whose head or a snapshot links there.
fn children(catalog: &Catalog, pool: &str, image: &str, snap: Option<&str>) -> Vec<ChildRef> {
    let matches = |link: &Option<LinkMeta>| {
        link.as_ref()
            .is_some_and(|l| l.image == image && snap.is_none_or(|s| l.snap == s))
    };
    catalog
        .values()
        .filter(|m| matches(&m.parent) || m.snapshots.iter().any(|s| matches(&s.parent)))
        .map(|m| ChildRef {
            pool: pool.to_string(),
            image: m.name.clone(),
        })
        .collect()
}

/// Copies the first `len` bytes of `src` into a new file `dst` (holes stay holes: zero blocks are
/// skipped) and sets its length to exactly `len`.
fn sparse_copy(src: &Path, dst: &Path, len: u64, sync: bool) -> io::Result<()> {
    let input = File::open(src)?;
    let output = File::create(dst)?;
    let to_copy = input.metadata()?.len().min(len);
    let mut buf = vec![0u8; 16 * SPARSE_BLOCK];
    let mut pos = 0u64;
    while pos < to_copy {
        let n = usize::try_from((to_copy - pos).min(buf.len() as u64))
            .expect("bounded by the buffer length");
        input.read_exact_at(&mut buf[..n], pos)?;
        let mut off = 0;
        while off < n {
            let end = (off + SPARSE_BLOCK).min(n);
            if !is_zero(&buf[off..end]) {
                output.write_all_at(&buf[off..end], pos + off as u64)?;
            }
            off = end;
        }
        pos += n as u64;
    }
    output.set_len(len)?;
    if sync {
        output.sync_all()?;
    }
    Ok(())
}

fn write_meta(dir: &Path, meta: &ImageMeta, sync: bool) -> Result<()> {
    let json = serde_json::to_vec_pretty(meta)
        .map_err(|e| RbdError::Other(format!("encoding metadata of {}: {e}", meta.name)))?;
    let tmp = dir.join("meta.json.tmp");
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&json)?;
        if sync {
            f.sync_all()?;
        }
        fs::rename(&tmp, dir.join("meta.json"))
    };
    write().map_err(|e| io_err(format_args!("writing metadata of {}", meta.name), e))
}

fn allocated(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

impl LocalBackend {
    /// Opens (creating if needed) the backend directory `dir` for pool `pool` and loads every image
    /// recorded there. Blocking: call it at start-up, not from a busy reactor.
    pub fn open(dir: impl AsRef<Path>, pool: &str) -> Result<LocalBackend> {
        let root = dir.as_ref().to_path_buf();
        let ctx = |what: &str| format!("opening local backend {}: {what}", root.display());
        for sub in ["images", "tmp", "trash"] {
            fs::create_dir_all(root.join(sub)).map_err(|e| io_err(ctx(sub), e))?;
        }
        for sub in ["tmp", "trash"] {
            let entries = fs::read_dir(root.join(sub)).map_err(|e| io_err(ctx(sub), e))?;
            for entry in entries {
                let path = entry.map_err(|e| io_err(ctx(sub), e))?.path();
                let res = if path.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                res.map_err(|e| io_err(ctx("cleaning up"), e))?;
            }
        }
        let mut catalog = Catalog::new();
        let entries = fs::read_dir(root.join("images")).map_err(|e| io_err(ctx("images"), e))?;
        for entry in entries {
            let dir = entry.map_err(|e| io_err(ctx("images"), e))?.path();
            let raw = fs::read(dir.join("meta.json"))
                .map_err(|e| io_err(ctx(&dir.display().to_string()), e))?;
            let meta: ImageMeta = serde_json::from_slice(&raw).map_err(|e| {
                RbdError::Other(format!("{}: {e}", ctx(&dir.display().to_string())))
            })?;
            Self::repair(&dir, &meta).map_err(|e| io_err(ctx(&meta.name), e))?;
            catalog.insert(meta.name.clone(), meta);
        }
        tracing::debug!(dir = %root.display(), images = catalog.len(), "local backend opened");
        Ok(LocalBackend {
            inner: Arc::new(Inner {
                root,
                pool: pool.to_string(),
                capacity: AtomicU64::new(DEFAULT_CAPACITY),
                sync: AtomicBool::new(true),
                unique: AtomicU64::new(0),
                catalog: tokio::sync::Mutex::new(catalog),
            }),
        })
    }

    /// Brings an image directory in line with its `meta.json` after a crash: the data file has the
    /// recorded size, and snapshot files not recorded (half-done create or remove) are deleted.
    fn repair(dir: &Path, meta: &ImageMeta) -> io::Result<()> {
        let data = OpenOptions::new().write(true).open(dir.join("data"))?;
        if data.metadata()?.len() != meta.size {
            data.set_len(meta.size)?;
        }
        let keep: Vec<String> = meta
            .snapshots
            .iter()
            .filter_map(|s| escape(&s.name).ok())
            .collect();
        fs::create_dir_all(dir.join("snaps"))?;
        for entry in fs::read_dir(dir.join("snaps"))? {
            let entry = entry?;
            if !keep.iter().any(|k| entry.file_name() == k.as_str()) {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// Sets the capacity reported by `pool_usage` (`max_avail = capacity - stored`).
    pub fn with_capacity(self, bytes: u64) -> Self {
        self.inner.capacity.store(bytes, Ordering::Relaxed);
        self
    }

    /// Whether files are synced to disk (`fsync`) as described in the module docs (default
    /// `true`). Turn it off only for throw-away directories, e.g. in tests.
    pub fn with_sync(self, sync: bool) -> Self {
        self.inner.sync.store(sync, Ordering::Relaxed);
        self
    }

    fn sync(&self) -> bool {
        self.inner.sync.load(Ordering::Relaxed)
    }

    /// The directory this backend works in.
    pub fn dir(&self) -> &Path {
        &self.inner.root
    }

    fn image_dir(&self, name: &str) -> Result<PathBuf> {
        Ok(self.inner.root.join("images").join(escape(name)?))
    }

    fn data_path(&self, name: &str) -> Result<PathBuf> {
        Ok(self.image_dir(name)?.join("data"))
    }

    fn snap_path(&self, image: &str, snap: &str) -> Result<PathBuf> {
        Ok(self.image_dir(image)?.join("snaps").join(escape(snap)?))
    }

    /// A fresh path under `tmp/`.
    fn tmp_path(&self, hint: &str) -> PathBuf {
        let n = self.inner.unique.fetch_add(1, Ordering::Relaxed);
        self.inner
            .root
            .join("tmp")
            .join(format!("{hint}.{}.{n}", std::process::id()))
    }

    /// Persists `meta` (blocking pool) and then commits it to the catalog.
    async fn store_meta(&self, catalog: &mut Catalog, meta: ImageMeta) -> Result<()> {
        let dir = self.image_dir(&meta.name)?;
        let to_write = meta.clone();
        let sync = self.sync();
        blocking(move || write_meta(&dir, &to_write, sync)).await?;
        catalog.insert(meta.name.clone(), meta);
        Ok(())
    }

    /// Creates a new image directory with `data` produced by `fill` (in the staging area, then one
    /// rename), and records it.
    async fn create_with<F>(&self, catalog: &mut Catalog, meta: ImageMeta, fill: F) -> Result<()>
    where
        F: FnOnce(&Path) -> io::Result<()> + Send + 'static,
    {
        if catalog.contains_key(&meta.name) {
            return Err(RbdError::Exists(format!("image {}", meta.name)));
        }
        let target = self.image_dir(&meta.name)?;
        let staging = self.tmp_path("image");
        let to_write = meta.clone();
        let sync = self.sync();
        blocking(move || {
            let ctx = format!("creating image {}", to_write.name);
            let build = || -> io::Result<()> {
                fs::create_dir_all(staging.join("snaps"))?;
                fill(&staging.join("data"))?;
                Ok(())
            };
            build().map_err(|e| io_err(&ctx, e))?;
            write_meta(&staging, &to_write, sync)?;
            fs::rename(&staging, &target).map_err(|e| io_err(&ctx, e))
        })
        .await?;
        catalog.insert(meta.name.clone(), meta);
        Ok(())
    }
}

#[async_trait]
impl BlockBackend for LocalBackend {
    fn pool(&self) -> &str {
        &self.inner.pool
    }

    async fn create_image(&self, name: &str, size: u64) -> Result<()> {
        let mut catalog = self.inner.catalog.lock().await;
        let meta = ImageMeta {
            name: name.to_string(),
            size,
            parent: None,
            snapshots: Vec::new(),
            metadata: Metadata::default(),
        };
        let sync = self.sync();
        self.create_with(&mut catalog, meta, move |data| {
            let f = File::create(data)?;
            f.set_len(size)?;
            if sync {
                f.sync_all()?;
            }
            Ok(())
        })
        .await
    }

    async fn stat(&self, name: &str) -> Result<ImageInfo> {
        let catalog = self.inner.catalog.lock().await;
        let meta = catalog.get(name).ok_or_else(|| not_found_image(name))?;
        Ok(ImageInfo {
            name: name.to_string(),
            size: meta.size,
            parent: meta.parent.as_ref().map(|l| ParentSpec {
                pool: self.inner.pool.clone(),
                image: l.image.clone(),
                snapshot: l.snap.clone(),
            }),
            snapshots: meta.snapshots.iter().map(snapshot_info).collect(),
        })
    }

    async fn list_images(&self) -> Result<Vec<String>> {
        Ok(self.inner.catalog.lock().await.keys().cloned().collect())
    }

    async fn resize(&self, name: &str, size: u64) -> Result<()> {
        let mut catalog = self.inner.catalog.lock().await;
        let mut meta = catalog
            .get(name)
            .ok_or_else(|| not_found_image(name))?
            .clone();
        let data = self.data_path(name)?;
        let ctx = format!("resizing image {name}");
        blocking(move || {
            let f = OpenOptions::new()
                .write(true)
                .open(&data)
                .map_err(|e| io_err(&ctx, e))?;
            f.set_len(size).map_err(|e| io_err(&ctx, e))
        })
        .await?;
        meta.size = size;
        self.store_meta(&mut catalog, meta).await
    }

    async fn remove_image(&self, name: &str) -> Result<()> {
        let mut catalog = self.inner.catalog.lock().await;
        let meta = catalog.get(name).ok_or_else(|| not_found_image(name))?;
        if !meta.snapshots.is_empty() {
            return Err(RbdError::Busy(format!(
                "image {name} has {} snapshot(s)",
                meta.snapshots.len()
            )));
        }
        let dir = self.image_dir(name)?;
        let trash = self.inner.root.join("trash").join(format!(
            "{}.{}",
            escape(name)?,
            self.inner.unique.fetch_add(1, Ordering::Relaxed)
        ));
        let ctx = format!("removing image {name}");
        blocking(move || {
            fs::rename(&dir, &trash).map_err(|e| io_err(&ctx, e))?;
            fs::remove_dir_all(&trash).map_err(|e| io_err(&ctx, e))
        })
        .await?;
        catalog.remove(name);
        Ok(())
    }

    async fn create_snapshot(&self, image: &str, snap: &str) -> Result<()> {
        let mut catalog = self.inner.catalog.lock().await;
        let mut meta = catalog
            .get(image)
            .ok_or_else(|| not_found_image(image))?
            .clone();
        if meta.snapshots.iter().any(|s| s.name == snap) {
            return Err(RbdError::Exists(format!("snapshot {image}@{snap}")));
        }
        let (data, target, staging) = (
            self.data_path(image)?,
            self.snap_path(image, snap)?,
            self.tmp_path("snap"),
        );
        let size = meta.size;
        let ctx = format!("creating snapshot {image}@{snap}");
        let sync = self.sync();
        blocking(move || {
            sparse_copy(&data, &staging, size, sync).map_err(|e| io_err(&ctx, e))?;
            fs::rename(&staging, &target).map_err(|e| io_err(&ctx, e))
        })
        .await?;
        meta.snapshots.push(SnapMeta {
            name: snap.to_string(),
            size,
            protected: false,
            parent: meta.parent.clone(),
        });
        self.store_meta(&mut catalog, meta).await
    }

    async fn protect_snapshot(&self, image: &str, snap: &str) -> Result<()> {
        let mut catalog = self.inner.catalog.lock().await;
        let mut meta = catalog
            .get(image)
            .ok_or_else(|| not_found_image(image))?
            .clone();
        let s = meta.snap_mut(snap)?;
        if s.protected {
            return Ok(());
        }
        s.protected = true;
        self.store_meta(&mut catalog, meta).await
    }

    async fn unprotect_snapshot(&self, image: &str, snap: &str) -> Result<()> {
        let mut catalog = self.inner.catalog.lock().await;
        let mut meta = catalog
            .get(image)
            .ok_or_else(|| not_found_image(image))?
            .clone();
        meta.snap(snap)?;
        let kids = children(&catalog, &self.inner.pool, image, Some(snap));
        if !kids.is_empty() {
            return Err(RbdError::Busy(format!(
                "snapshot {image}@{snap} has {} child(ren)",
                kids.len()
            )));
        }
        let s = meta.snap_mut(snap)?;
        if !s.protected {
            return Ok(());
        }
        s.protected = false;
        self.store_meta(&mut catalog, meta).await
    }

    async fn is_snapshot_protected(&self, image: &str, snap: &str) -> Result<bool> {
        let catalog = self.inner.catalog.lock().await;
        let meta = catalog.get(image).ok_or_else(|| not_found_image(image))?;
        Ok(meta.snap(snap)?.protected)
    }

    async fn remove_snapshot(&self, image: &str, snap: &str) -> Result<()> {
        let mut catalog = self.inner.catalog.lock().await;
        let mut meta = catalog
            .get(image)
            .ok_or_else(|| not_found_image(image))?
            .clone();
        if meta.snap(snap)?.protected {
            return Err(RbdError::Busy(format!(
                "snapshot {image}@{snap} is protected"
            )));
        }
        if !children(&catalog, &self.inner.pool, image, Some(snap)).is_empty() {
            return Err(RbdError::Busy(format!(
                "snapshot {image}@{snap} has children"
            )));
        }
        meta.snapshots.retain(|s| s.name != snap);
        self.store_meta(&mut catalog, meta).await?;
        // Recorded first, file second: a crash in between leaves an orphan file that open() removes.
        let path = self.snap_path(image, snap)?;
        let ctx = format!("removing snapshot {image}@{snap}");
        blocking(move || fs::remove_file(&path).map_err(|e| io_err(&ctx, e))).await
    }

    async fn list_snapshots(&self, image: &str) -> Result<Vec<SnapshotInfo>> {
        let catalog = self.inner.catalog.lock().await;
        let meta = catalog.get(image).ok_or_else(|| not_found_image(image))?;
        Ok(meta.snapshots.iter().map(snapshot_info).collect())
    }

    async fn clone_image(&self, parent: &str, snap: &str, child: &str) -> Result<()> {
        let mut catalog = self.inner.catalog.lock().await;
        let parent_meta = catalog.get(parent).ok_or_else(|| not_found_image(parent))?;
        let s = parent_meta.snap(snap)?;
        if !s.protected {
            return Err(RbdError::InvalidArgument(format!(
                "snapshot {parent}@{snap} is not protected (clone format v1 needs a protected snapshot)"
            )));
        }
        let meta = ImageMeta {
            name: child.to_string(),
            size: s.size,
            parent: Some(LinkMeta {
                image: parent.to_string(),
                snap: snap.to_string(),
            }),
            snapshots: Vec::new(),
            // librbd copies the parent image's metadata into a new clone.
            metadata: parent_meta.metadata.clone(),
        };
        let source = self.snap_path(parent, snap)?;
        let size = s.size;
        let sync = self.sync();
        self.create_with(&mut catalog, meta, move |data| {
            sparse_copy(&source, data, size, sync)
        })
        .await
    }

    async fn list_children(&self, image: &str, snap: Option<&str>) -> Result<Vec<ChildRef>> {
        let catalog = self.inner.catalog.lock().await;
        let meta = catalog.get(image).ok_or_else(|| not_found_image(image))?;
        if let Some(s) = snap {
            meta.snap(s)?;
        }
        Ok(children(&catalog, &self.inner.pool, image, snap))
    }

    async fn flatten(
        &self,
        image: &str,
        progress: ProgressFn,
        cancel: CancellationToken,
    ) -> Result<()> {
        let mut catalog = self.inner.catalog.lock().await;
        let mut meta = catalog
            .get(image)
            .ok_or_else(|| not_found_image(image))?
            .clone();
        if meta.parent.is_none() {
            return Ok(());
        }
        if cancel.is_cancelled() {
            return Err(RbdError::Cancelled);
        }
        let objects = meta.size.div_ceil(OBJECT_SIZE).max(1);
        meta.parent = None;
        // The clone's snapshots are full copies already; they are detached with it.
        for s in &mut meta.snapshots {
            s.parent = None;
        }
        self.store_meta(&mut catalog, meta).await?;
        progress(objects, objects);
        Ok(())
    }

    async fn read(&self, image: &str, snap: Option<&str>, offset: u64, len: u64) -> Result<Bytes> {
        let (path, size) = self.source(image, snap).await?;
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let n = usize::try_from(end - offset)
            .map_err(|_| RbdError::InvalidArgument(format!("read of {len} bytes is too large")))?;
        let ctx = format!("reading image {image}");
        blocking(move || {
            let f = File::open(&path).map_err(|e| io_err(&ctx, e))?;
            let mut buf = vec![0u8; n];
            f.read_exact_at(&mut buf, offset)
                .map_err(|e| io_err(&ctx, e))?;
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
        let (path, size) = self.source(image, snap).await?;
        let ctx = format!("reading image {image}");
        let file = {
            let ctx = ctx.clone();
            blocking(move || File::open(&path).map_err(|e| io_err(&ctx, e))).await?
        };
        let file = Arc::new(file);
        let step = chunk_size as u64;
        let stream = futures::stream::unfold(0u64, move |pos| {
            let file = file.clone();
            let ctx = ctx.clone();
            async move {
                if pos >= size {
                    return None;
                }
                let end = pos.saturating_add(step).min(size);
                let n = usize::try_from(end - pos).expect("bounded by chunk_size");
                let res = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; n];
                    file.read_exact_at(&mut buf, pos).map(|_| Bytes::from(buf))
                })
                .await
                .map_err(io::Error::other)
                .and_then(|r| r)
                .map_err(|e| io::Error::new(e.kind(), format!("{ctx}: {e}")));
                // After an error the stream ends.
                let next = if res.is_ok() { end } else { size };
                Some((res, next))
            }
        });
        Ok(Box::pin(stream))
    }

    async fn write_stream(
        &self,
        image: &str,
        data: ByteStream,
        opts: WriteOptions,
        progress: ProgressFn,
        cancel: CancellationToken,
    ) -> Result<u64> {
        if opts.passphrase.is_some() {
            return Err(RbdError::Unsupported(UNSUPPORTED_ENCRYPTION.into()));
        }
        let (path, size) = self.source(image, None).await?;
        let ctx = format!("writing image {image}");
        let file = {
            let ctx = ctx.clone();
            blocking(move || {
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io_err(&ctx, e))
            })
            .await?
        };
        let file = Arc::new(file);
        let write = |offset: u64, bytes: Bytes| {
            let file = file.clone();
            let ctx = ctx.clone();
            async move {
                blocking(move || {
                    file.write_all_at(&bytes, offset)
                        .map_err(|e| io_err(&ctx, e))?;
                    Ok(bytes.len() as u64)
                })
                .await
            }
        };
        let written = pipelined_write(data, &opts, size, &progress, &cancel, write).await?;
        if self.sync() {
            let ctx = format!("syncing image {image}");
            blocking(move || file.sync_data().map_err(|e| io_err(&ctx, e))).await?;
        }
        Ok(written)
    }

    async fn write_at(&self, image: &str, offset: u64, data: &[u8]) -> Result<()> {
        // Held for the write so that a concurrent snapshot sees all of it or none.
        let catalog = self.inner.catalog.lock().await;
        let meta = catalog.get(image).ok_or_else(|| not_found_image(image))?;
        let len = data.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > meta.size) {
            return Err(RbdError::InvalidArgument(format!(
                "write of {len} bytes at {offset} reaches beyond the image size {}",
                meta.size
            )));
        }
        let path = self.data_path(image)?;
        let data = data.to_vec();
        let ctx = format!("writing image {image}");
        blocking(move || {
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io_err(&ctx, e))?;
            f.write_all_at(&data, offset).map_err(|e| io_err(&ctx, e))
        })
        .await
    }

    async fn encryption_format(&self, image: &str, _passphrase: &Passphrase) -> Result<()> {
        let catalog = self.inner.catalog.lock().await;
        catalog.get(image).ok_or_else(|| not_found_image(image))?;
        Err(RbdError::Unsupported(UNSUPPORTED_ENCRYPTION.into()))
    }

    async fn metadata_get(&self, image: &str, key: &str) -> Result<Option<String>> {
        let catalog = self.inner.catalog.lock().await;
        let meta = catalog.get(image).ok_or_else(|| not_found_image(image))?;
        Ok(meta.metadata.get(key))
    }

    async fn metadata_set(&self, image: &str, key: &str, value: &str) -> Result<()> {
        self.metadata_set_all(image, &[(key.to_string(), value.to_string())])
            .await
    }

    /// One `meta.json` write for all pairs (the trait's default writes it once per pair).
    async fn metadata_set_all(&self, image: &str, pairs: &[(String, String)]) -> Result<()> {
        let mut catalog = self.inner.catalog.lock().await;
        let mut meta = catalog
            .get(image)
            .ok_or_else(|| not_found_image(image))?
            .clone();
        meta.metadata
            .set_all(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.store_meta(&mut catalog, meta).await
    }

    async fn metadata_list(&self, image: &str) -> Result<BTreeMap<String, String>> {
        let catalog = self.inner.catalog.lock().await;
        let meta = catalog.get(image).ok_or_else(|| not_found_image(image))?;
        Ok(meta.metadata.to_map())
    }

    async fn pool_usage(&self) -> Result<PoolUsage> {
        let files: Vec<PathBuf> = {
            let catalog = self.inner.catalog.lock().await;
            let mut files = Vec::new();
            for meta in catalog.values() {
                files.push(self.data_path(&meta.name)?);
                for s in &meta.snapshots {
                    files.push(self.snap_path(&meta.name, &s.name)?);
                }
            }
            files
        };
        let stored = blocking(move || Ok(files.iter().map(|p| allocated(p)).sum::<u64>())).await?;
        let capacity = self.inner.capacity.load(Ordering::Relaxed);
        Ok(PoolUsage {
            max_avail: capacity.saturating_sub(stored),
            stored,
        })
    }

    async fn client_key(&self, _client: &str) -> Result<String> {
        Ok(LOCAL_CLIENT_KEY.to_string())
    }
}

impl LocalBackend {
    /// The file to read for the head (`snap == None`) or a snapshot, and its size.
    async fn source(&self, image: &str, snap: Option<&str>) -> Result<(PathBuf, u64)> {
        let catalog = self.inner.catalog.lock().await;
        let meta = catalog.get(image).ok_or_else(|| not_found_image(image))?;
        match snap {
            None => Ok((self.data_path(image)?, meta.size)),
            Some(s) => Ok((self.snap_path(image, s)?, meta.snap(s)?.size)),
        }
    }
}

fn snapshot_info(s: &SnapMeta) -> SnapshotInfo {
    SnapshotInfo {
        name: s.name.clone(),
        size: s.size,
        protected: s.protected,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::escape;

    #[test]
    fn escaped_names_are_single_safe_path_components() {
        assert_eq!(escape("img_1").unwrap(), "img_1");
        assert_eq!(escape("snap_sha256:ab").unwrap(), "snap_sha256%3Aab");
        assert_eq!(escape("a/b").unwrap(), "a%2Fb");
        assert_eq!(escape("..").unwrap(), "%2E.");
        assert_eq!(escape("a%b").unwrap(), "a%25b");
        assert!(escape("").is_err());
        assert!(escape(&"x".repeat(300)).is_err());
    }
}
