//! [`CephBackend`]: [`BlockBackend`] on librbd. Each call opens the image it needs, works on it on
//! tokio's blocking pool (never on a reactor thread) and closes it.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::image::{Image, ImageOptions, PendingWrite};
use crate::rados::{ConnectOptions, IoCtx, Rados};
use crate::sys;
use rbd::{
    BlockBackend, ByteStream, CancellationToken, ChildRef, ImageInfo, Passphrase, PoolUsage,
    ProgressFn, RbdError, Result, SnapshotInfo, WriteOptions,
};

/// Clone format used by [`BlockBackend::clone_image`]: v1, as the contract specifies (the parent
/// snapshot must be protected).
const CLONE_FORMAT: u64 = 1;

/// librbd feature bits cleared on clones: `RBD_FEATURE_OBJECT_MAP` (1 << 3) and
/// `RBD_FEATURE_FAST_DIFF` (1 << 4), see [`BlockBackend::clone_image`] in this file.
const CLONE_FEATURES_CLEARED: u64 = (1 << 3) | (1 << 4);

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
    /// Bound of the connect and of mon commands.
    pub connect_timeout: Duration,
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
        })
    }
}

/// Block backend on a real Ceph pool through librbd. Cheap to clone (shares the connection).
#[derive(Clone, Debug)]
pub struct CephBackend {
    rados: Rados,
    io: IoCtx,
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
            })?;
            let io = rados.ioctx(&cfg.pool)?;
            Ok(CephBackend { rados, io })
        })
        .await
    }

    /// A backend on an existing connection and I/O context.
    pub fn from_parts(rados: Rados, io: IoCtx) -> CephBackend {
        CephBackend { rados, io }
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

    fn options(&self) -> Result<ImageOptions> {
        let mut opts = ImageOptions::new();
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

/// Whether every byte is zero.
fn is_zero(buf: &[u8]) -> bool {
    let mut words = buf.chunks_exact(16);
    words
        .by_ref()
        .all(|w| w.iter().fold(0u8, |acc, b| acc | b) == 0)
        && words.remainder().iter().all(|b| *b == 0)
}

/// Cuts the input stream into `chunk_size` pieces and feeds them to the writer thread.
async fn feed(
    mut data: ByteStream,
    chunk_size: usize,
    tx: mpsc::Sender<Result<Bytes>>,
    cancel: CancellationToken,
) {
    let mut buf = BytesMut::new();
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return,
            next = data.next() => next,
        };
        match next {
            Some(Ok(bytes)) => {
                buf.extend_from_slice(&bytes);
                while buf.len() >= chunk_size {
                    let chunk = buf.split_to(chunk_size).freeze();
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
            }
            Some(Err(e)) => {
                let _ = tx
                    .send(Err(RbdError::Other(format!("reading input stream: {e}"))))
                    .await;
                return;
            }
            None => {
                if !buf.is_empty() {
                    let _ = tx.send(Ok(buf.split().freeze())).await;
                }
                return;
            }
        }
    }
}

/// The writer side of `write_stream`: `depth` aio writes in flight, FIFO completion.
fn write_chunks(
    image: &Image,
    mut rx: mpsc::Receiver<Result<Bytes>>,
    opts: &WriteOptions,
    progress: &ProgressFn,
    cancel: &CancellationToken,
) -> Result<u64> {
    if let Some(p) = &opts.passphrase {
        image.encryption_load_luks2(p)?;
    }
    // Through LUKS, unwritten blocks do not read back as zeroes: never skip there.
    let skip_zeroes = opts.skip_zeroes && opts.passphrase.is_none();
    let limit = image.size()?;
    let depth = opts.queue_depth.max(1);
    let mut in_flight: VecDeque<PendingWrite> = VecDeque::with_capacity(depth);
    let mut offset: u64 = 0;
    let mut done: u64 = 0;
    let finish = |w: PendingWrite, done: &mut u64| -> Result<()> {
        let end = w.offset + w.len as u64;
        w.finish(image.name())?;
        *done = (*done).max(end);
        progress(*done, opts.total_hint);
        Ok(())
    };
    loop {
        if cancel.is_cancelled() {
            // Dropping the pending writes waits for them (their buffers must outlive them).
            drop(in_flight);
            return Err(RbdError::Cancelled);
        }
        let chunk = match rx.blocking_recv() {
            None if cancel.is_cancelled() => continue,
            None => break,
            Some(Err(e)) => return Err(e),
            Some(Ok(chunk)) => chunk,
        };
        let len = chunk.len() as u64;
        if offset + len > limit {
            return Err(RbdError::InvalidArgument(format!(
                "write of {len} bytes at {offset} goes beyond the size {limit} of {}",
                image.name()
            )));
        }
        if skip_zeroes && is_zero(&chunk) {
            offset += len;
            if in_flight.is_empty() {
                done = offset;
                progress(done, opts.total_hint);
            }
            continue;
        }
        if in_flight.len() >= depth {
            let oldest = in_flight
                .pop_front()
                .ok_or_else(|| RbdError::Other("empty queue".into()))?;
            finish(oldest, &mut done)?;
        }
        in_flight.push_back(image.aio_write(offset, chunk)?);
        offset += len;
    }
    while let Some(w) = in_flight.pop_front() {
        finish(w, &mut done)?;
    }
    image.flush()?;
    if done != offset {
        progress(offset, opts.total_hint);
    }
    Ok(offset)
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
        let n = name.to_string();
        self.with_image(name, None, true, move |img| {
            Ok(ImageInfo {
                name: n,
                size: img.size()?,
                parent: img.parent()?,
                snapshots: img.snapshots()?,
            })
        })
        .await
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
        let io = self.io.clone();
        let name = name.to_string();
        blocking(move || io.remove_image(&name)).await
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

    async fn remove_snapshot(&self, image: &str, snap: &str) -> Result<()> {
        let snap = snap.to_string();
        self.with_image(image, None, false, move |img| {
            if !img.snap_exists(&snap)? {
                return Err(RbdError::NotFound(format!(
                    "snapshot {}@{snap}",
                    img.name()
                )));
            }
            img.snap_remove(&snap)
        })
        .await
    }

    async fn list_snapshots(&self, image: &str) -> Result<Vec<SnapshotInfo>> {
        self.with_image(image, None, true, |img| img.snapshots())
            .await
    }

    async fn clone_image(&self, parent: &str, snap: &str, child: &str) -> Result<()> {
        let io = self.io.clone();
        let (parent, snap, child) = (parent.to_string(), snap.to_string(), child.to_string());
        let mut opts = self.options()?;
        opts.set_u64(sys::RBD_IMAGE_OPTION_CLONE_FORMAT, CLONE_FORMAT)?;
        // Clones are made without object-map/fast-diff: Pacific's flatten trusts the clone's object
        // map, which marks an object before its copy-up finishes; a flatten interrupted by a crash
        // and resumed then skips those objects and the detached clone reads zeroes there (fixed
        // upstream after Pacific, ceph/ceph#61129; found by tests/tests/e2e_ceph_crash.rs).
        opts.set_u64(sys::RBD_IMAGE_OPTION_FEATURES_CLEAR, CLONE_FEATURES_CLEARED)?;
        blocking(move || io.clone_image(&parent, &snap, &io, &child, &opts)).await
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
            if img.parent()?.is_none() {
                return Ok(());
            }
            if cancel.is_cancelled() {
                return Err(RbdError::Cancelled);
            }
            // librbd reports each object as it starts it, never the end: report completion
            // ourselves so that the last report of a finished flatten is (total, total).
            let last = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
            let seen = last.clone();
            let report = progress.clone();
            img.flatten(&move |done, total| {
                seen.0.store(done, Ordering::Relaxed);
                seen.1.store(total, Ordering::Relaxed);
                report(done, total);
                !cancel.is_cancelled()
            })?;
            let (done, total) = (
                last.0.load(Ordering::Relaxed),
                last.1.load(Ordering::Relaxed),
            );
            if total > 0 && done != total {
                progress(total, total);
            }
            Ok(())
        })
        .instrument(span)
        .await
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
        let passphrase = passphrase.clone();
        self.with_image(image, None, false, move |img| {
            // Pacific cannot format a clone (EOPNOTSUPP after a long key derivation): refuse up front.
            if let Some(parent) = img.parent()? {
                return Err(RbdError::Unsupported(format!(
                    "LUKS2 format of {}: it is a clone of {}@{} (Ceph Pacific cannot encrypt clones)",
                    img.name(),
                    parent.image,
                    parent.snapshot
                )));
            }
            img.encryption_format_luks2(&passphrase)
        })
        .await
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection_handles_unaligned_edges() {
        let mut buf = vec![0u8; 4099];
        assert!(is_zero(&buf));
        assert!(is_zero(&buf[1..4098]));
        buf[4098] = 1;
        assert!(!is_zero(&buf));
        assert!(is_zero(&buf[..4098]));
        buf[0] = 1;
        assert!(!is_zero(&buf[..3]));
        assert!(is_zero(&[]));
    }
}
