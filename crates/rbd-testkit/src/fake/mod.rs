//! `MemoryBackend`: an in-memory pool with librbd's rules, and fault and latency injection.
//!
//! Owns the fake used by every test above this crate. It is meant to be exactly as strict as
//! librbd (Ceph Pacific, clone format v1) so that tests passing against it mean something.
//!
//! # What it models
//! * **Data** is real bytes, sparse and chunked: each image keeps a map of fixed-size chunks (the
//!   "objects", 4 MiB by default, configurable with [`MemoryBackendBuilder::chunk_size`]). Unwritten
//!   chunks read as zeroes and take no memory.
//! * **Snapshots** share chunks with their image copy-on-write, so taking one is cheap; they are
//!   immutable.
//! * **Clones** (v1): [`BlockBackend::clone_image`] needs a protected snapshot (`InvalidArgument`
//!   otherwise). A clone reads every chunk it has not written through to the parent snapshot, up to
//!   the *overlap* (the parent snapshot's size, reduced for good when the clone is shrunk, as in
//!   librbd). The first write to a chunk copies the parent's chunk up first. Like librbd's clone,
//!   the new image gets a copy of the parent image's metadata.
//! * **Flatten** copies the parent's chunks one object at a time (progress `(objects done, total)`,
//!   cancellation checked before each object → [`RbdError::Cancelled`] with the clone left intact:
//!   still a clone, the chunks copied so far hold the parent's data) and then detaches the clone.
//!   Snapshots the clone took while it was a clone are flattened with it (their bytes are kept and
//!   they stop reading through), so the clone stops being a child at once — as measured on Ceph
//!   Pacific 16.2.15 (older librbd kept such a clone registered until those snapshots were gone).
//! * **Children**: a clone is a child of `parent@snap` while it (or one of its snapshots) reads
//!   through to it. A snapshot with children cannot be unprotected (`Busy`), a protected snapshot
//!   cannot be removed (`Busy`), and an image with snapshots cannot be removed (`Busy`).
//! * **Encryption** (modelled, nothing is encrypted): [`BlockBackend::encryption_format`] on an image
//!   with a parent is `Unsupported` (Pacific); otherwise it writes a recognisable 16 MiB "LUKS2 header"
//!   region (only a marker at offset 0 is non-zero) and records the passphrase. Data written by
//!   [`BlockBackend::write_stream`] with [`WriteOptions::passphrase`] is stored **in plaintext**
//!   after the header (payload offset 16 MiB, as LUKS2 lays it out), so the writable size through
//!   the layer is `size - 16 MiB`. A wrong passphrase, or a passphrase for an unformatted image, is
//!   `InvalidArgument`. Writing without a passphrase writes raw bytes, as librbd would. Reads are
//!   always raw. Snapshots and clones inherit the format record.
//! * **Pool usage**: `stored` = allocated chunks (distinct, shared ones once) × chunk size;
//!   `max_avail` = configured capacity − stored. A full pool does not refuse writes.
//! * **Client keys** are derived deterministically from the client name unless configured.
//!
//! # Where it differs from librbd
//! * Protecting a protected snapshot and unprotecting an unprotected one succeed (the trait's
//!   idempotent contract); librbd returns EBUSY/EINVAL.
//! * `write_at`/`write_stream` beyond the image size fail with `InvalidArgument` and write nothing
//!   for that request (librbd clips or fails per request).
//! * No watchers, locks, features, clone v2/trash or namespaces. Other pools exist only to hold
//!   clones of this pool's snapshots (see below).
//!
//! # Other pools and interrupted removals
//! [`MemoryBackend::add_pool`] and [`MemoryBackend::clone_to_pool`] put a clone of one of this
//! pool's protected snapshots into another pool: `list_children` lists it with its pool,
//! `flatten_child` flattens it there, and it holds its parent snapshot like any clone
//! ([`MemoryBackend::stat_in_pool`], [`MemoryBackend::pool_images`] and
//! [`MemoryBackend::remove_in_pool`] inspect and remove it). `flatten_child` of a child in a pool
//! that does not exist is `NotFound`. [`MemoryBackend::interrupt_removal`] leaves an image
//! half-removed as a crash during librbd's removal does: still listed (`image_exists` is true),
//! `stat` fails with `Busy`, other calls by name with `NotFound`, `remove_image` finishes it; a
//! half-removed clone still holds its parent snapshot but is no longer listed as a child.
//!
//! # Faults and latency
//! Per [`Op`]: fail the next N calls ([`MemoryBackend::fail_next`]), fail with a probability from a
//! seeded RNG ([`MemoryBackend::fail_randomly`]), wait before each call ([`MemoryBackend::set_delay`],
//! `tokio::time::sleep`, so paused test time works) and before each chunk of a `write_stream` or
//! `flatten` ([`MemoryBackend::set_chunk_delay`]). Injected failures happen after the delay and
//! **before any state change**. [`MemoryBackend::fail_after_chunks`] models a call that fails
//! half-way: a flatten that fails after k objects (the clone stays a valid clone) or a write that
//! fails after k requests.

mod data;
mod faults;
mod pools;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use data::{not_found_image, to_usize, Chunk, Content, Link, Snap, State};
use faults::Faults;
pub use faults::Op;
use pools::half_removed;
use rbd::pipeline::pipelined_write;
use rbd::{
    BlockBackend, ByteStream, CancellationToken, ChildRef, ImageInfo, Passphrase, PoolUsage,
    ProgressFn, RbdError, Result, SnapshotInfo, WriteOptions,
};

/// Size of the LUKS2 header region that [`BlockBackend::encryption_format`] reserves (the one
/// definition is in the `rbd` crate; re-exported here for the fake's users).
pub use rbd::LUKS2_HEADER_SIZE;

/// Default object (chunk) size: librbd's default 4 MiB objects.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 * 1024 * 1024;

/// Default pool capacity of the fake: 1 TiB.
pub const DEFAULT_CAPACITY: u64 = 1 << 40;

/// The bytes at offset 0 of an image formatted by the fake.
pub const FAKE_LUKS2_MAGIC: &[u8] = b"FAKE-LUKS2 (cephvol MemoryBackend, not encrypted)\n";

/// Configures a [`MemoryBackend`].
#[derive(Debug, Clone)]
pub struct MemoryBackendBuilder {
    pool: String,
    chunk_size: u64,
    capacity: u64,
    seed: u64,
    keys: BTreeMap<String, String>,
}

impl MemoryBackendBuilder {
    /// Object size of all images (default 4 MiB). Small values make property tests fast.
    pub fn chunk_size(mut self, bytes: u64) -> Self {
        self.chunk_size = bytes.max(1);
        self
    }

    /// Pool capacity reported by `pool_usage` (default 1 TiB).
    pub fn capacity(mut self, bytes: u64) -> Self {
        self.capacity = bytes;
        self
    }

    /// Seed of the RNG behind [`MemoryBackend::fail_randomly`] (default 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The key `client_key(client)` returns (others get a derived key).
    pub fn client_key(mut self, client: &str, key: &str) -> Self {
        self.keys.insert(client.to_string(), key.to_string());
        self
    }

    /// Builds an empty pool.
    pub fn build(self) -> MemoryBackend {
        MemoryBackend {
            inner: Arc::new(Inner {
                state: Mutex::new(State::new(self.pool.clone(), self.chunk_size)),
                faults: Mutex::new(Faults::new(self.seed)),
                writes: Mutex::new(WriteStats::default()),
                capacity: Mutex::new(self.capacity),
                keys: Mutex::new(self.keys),
                pool: self.pool,
                chunk_size: self.chunk_size,
            }),
        }
    }
}

#[derive(Debug, Default)]
struct WriteStats {
    current: usize,
    max: usize,
}

struct Inner {
    pool: String,
    chunk_size: u64,
    state: Mutex<State>,
    faults: Mutex<Faults>,
    writes: Mutex<WriteStats>,
    capacity: Mutex<u64>,
    keys: Mutex<BTreeMap<String, String>>,
}

/// An in-memory RBD pool with librbd's rules (see the [module docs](self)).
///
/// Cloning is cheap and shares the pool, so a test can keep the "cluster" while the code under
/// test is dropped and restarted.
#[derive(Clone)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the data (huge) nor passphrases (secret).
        f.debug_struct("MemoryBackend")
            .field("pool", &self.inner.pool)
            .field("chunk_size", &self.inner.chunk_size)
            .field(
                "images",
                &self.inner.state.try_lock().map(|s| s.images.len()).ok(),
            )
            .finish()
    }
}

/// Counts a write request in flight for as long as it lives.
struct InFlight(Arc<Inner>);

impl InFlight {
    fn enter(inner: &Arc<Inner>) -> Self {
        let mut w = lock(&inner.writes);
        w.current += 1;
        w.max = w.max.max(w.current);
        InFlight(inner.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.0.writes).current -= 1;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock can only come from a bug in this module; the state itself
    // stays consistent between statements, so keep going with it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryBackend {
    /// An empty pool named `pool` with default settings.
    pub fn new(pool: &str) -> Self {
        Self::builder(pool).build()
    }

    /// Configures a pool named `pool`.
    pub fn builder(pool: &str) -> MemoryBackendBuilder {
        MemoryBackendBuilder {
            pool: pool.to_string(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            capacity: DEFAULT_CAPACITY,
            seed: 0,
            keys: BTreeMap::new(),
        }
    }

    /// Object (chunk) size of this pool.
    pub fn chunk_size(&self) -> u64 {
        self.inner.chunk_size
    }

    /// Changes the capacity reported by `pool_usage`.
    pub fn set_capacity(&self, bytes: u64) {
        *lock(&self.inner.capacity) = bytes;
    }

    /// Sets the key returned by `client_key(client)`.
    pub fn set_client_key(&self, client: &str, key: &str) {
        lock(&self.inner.keys).insert(client.to_string(), key.to_string());
    }

    /// Makes the next `count` calls of `op` fail with `error` (after their delay, before any effect).
    pub fn fail_next(&self, op: Op, count: usize, error: RbdError) {
        lock(&self.inner.faults).fail_next(op, count, error);
    }

    /// Makes each call of `op` fail with `error` with `probability` (seeded RNG, deterministic for a
    /// given seed and call order). Queued [`fail_next`](Self::fail_next) failures come first.
    pub fn fail_randomly(&self, op: Op, probability: f64, error: RbdError) {
        lock(&self.inner.faults).fail_randomly(op, probability, error);
    }

    /// Waits `delay` at the start of every call of `op` (`tokio::time::sleep`).
    pub fn set_delay(&self, op: Op, delay: Duration) {
        lock(&self.inner.faults).set_delay(op, delay);
    }

    /// Waits `delay` before each chunk of [`Op::Write`] (per write request, concurrent requests wait
    /// concurrently) or [`Op::Flatten`] (per object). Other ops ignore it.
    pub fn set_chunk_delay(&self, op: Op, delay: Duration) {
        lock(&self.inner.faults).set_chunk_delay(op, delay);
    }

    /// Makes the next [`Op::Flatten`] fail with `error` after copying `chunks` objects (the clone
    /// stays a clone; the copied chunks hold the parent's data), or the next [`Op::Write`]
    /// (`write_stream`) fail once `chunks` requests have been issued. One-shot: consumed by the
    /// next such call even if it has fewer chunks.
    pub fn fail_after_chunks(&self, op: Op, chunks: u64, error: RbdError) {
        lock(&self.inner.faults).fail_after_chunks(op, chunks, error);
    }

    /// Disarms all faults and delays (call counters are kept).
    pub fn clear_faults(&self) {
        lock(&self.inner.faults).clear();
    }

    /// How many calls of `op` were made (including failed ones).
    pub fn calls(&self, op: Op) -> u64 {
        lock(&self.inner.faults).calls(op)
    }

    /// The most `write_stream` requests that were in flight at the same time so far.
    pub fn max_writes_in_flight(&self) -> usize {
        lock(&self.inner.writes).max
    }

    /// Whether `image` carries a (modelled) LUKS2 format.
    pub fn is_encrypted(&self, image: &str) -> Result<bool> {
        Ok(lock(&self.inner.state).image(image)?.encryption.is_some())
    }

    /// SHA-256 (lowercase hex) of the full content of the image head or snapshot `snap`.
    pub fn checksum(&self, image: &str, snap: Option<&str>) -> Result<String> {
        let (chunks, size) = self.resolved(image, snap)?;
        Ok(self.digest(&chunks, 0, size))
    }

    /// SHA-256 (lowercase hex) of the payload behind the LUKS2 header of an encrypted image, i.e.
    /// what a reader with `passphrase` would see. `InvalidArgument` if the image is not formatted
    /// or the passphrase is wrong.
    pub fn checksum_decrypted(&self, image: &str, passphrase: &Passphrase) -> Result<String> {
        {
            let st = lock(&self.inner.state);
            check_passphrase(image, st.image(image)?.encryption.as_ref(), passphrase)?;
        }
        let (chunks, size) = self.resolved(image, None)?;
        Ok(self.digest(&chunks, LUKS2_HEADER_SIZE.min(size), size))
    }

    fn resolved(&self, image: &str, snap: Option<&str>) -> Result<(BTreeMap<u64, Chunk>, u64)> {
        let st = lock(&self.inner.state);
        let content = st.content(image, snap)?;
        Ok((st.resolve_all(content), content.size))
    }

    fn digest(&self, chunks: &BTreeMap<u64, Chunk>, from: u64, to: u64) -> String {
        let cs = self.inner.chunk_size;
        let zeroes = vec![0u8; to_usize(cs)];
        let mut hasher = Sha256::new();
        let mut pos = from;
        while pos < to {
            let idx = pos / cs;
            let start = to_usize(pos % cs);
            let n = (cs - pos % cs).min(to - pos);
            let chunk = chunks.get(&idx).map_or(zeroes.as_slice(), |c| c.as_slice());
            hasher.update(&chunk[start..start + to_usize(n)]);
            pos += n;
        }
        hex::encode(hasher.finalize())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    /// Start of every call: count it, wait its delay, then maybe fail (before any effect).
    async fn enter(&self, op: Op) -> Result<()> {
        let delay = lock(&self.inner.faults).begin(op);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let res = lock(&self.inner.faults).decide(op);
        if let Err(e) = &res {
            tracing::debug!(?op, error = %e, "fake rbd: injected failure");
        }
        res
    }

    /// Applies one write request of `write_stream` to the image with the given id.
    fn apply_write(&self, image: &str, id: u64, offset: u64, data: &[u8]) -> Result<()> {
        let mut st = self.state();
        if st.image(image)?.id != id {
            return Err(not_found_image(image));
        }
        st.write_head(image, offset, data)
    }
}

fn check_passphrase(image: &str, recorded: Option<&Passphrase>, given: &Passphrase) -> Result<()> {
    match recorded {
        None => Err(RbdError::InvalidArgument(format!(
            "image {image} is not formatted for encryption"
        ))),
        Some(p) if p != given => Err(RbdError::InvalidArgument(format!(
            "wrong passphrase for image {image}"
        ))),
        Some(_) => Ok(()),
    }
}

/// Flatten step for object `idx`: copies the parent's `chunk` into the head and every snapshot that
/// still reads through to the parent and has not got the object itself (bytes beyond each one's
/// overlap zeroed). Copies with the same visible range share one allocation, like one RADOS object
/// serving the head and its snapshots.
fn copy_up(img: &mut data::Image, idx: u64, cs: u64, chunk: &Chunk) {
    let start = idx * cs;
    let mut copies: Vec<(u64, Chunk)> = Vec::new();
    let contents =
        std::iter::once(&mut img.head).chain(img.snapshots.iter_mut().map(|s| &mut s.content));
    for content in contents {
        let Some(link) = &content.parent else {
            continue;
        };
        if start >= link.overlap || content.chunks.contains_key(&idx) {
            continue;
        }
        let keep = (link.overlap - start).min(cs);
        let copy = match copies.iter().find(|(k, _)| *k == keep) {
            Some((_, c)) => c.clone(),
            None => {
                let mut bytes = chunk.as_ref().clone();
                bytes[to_usize(keep)..].fill(0);
                let c = Arc::new(bytes);
                copies.push((keep, c.clone()));
                c
            }
        };
        content.chunks.insert(idx, copy);
    }
}

/// Derived key of a client nobody configured: stable, looks like nothing real.
fn derived_key(pool: &str, client: &str) -> String {
    let digest = Sha256::digest(format!("cephvol-fake-key/{pool}/{client}"));
    format!("fake-{}", hex::encode(&digest[..20]))
}

#[async_trait]
impl BlockBackend for MemoryBackend {
    fn pool(&self) -> &str {
        &self.inner.pool
    }

    async fn create_image(&self, name: &str, size: u64) -> Result<()> {
        self.enter(Op::CreateImage).await?;
        let mut st = self.state();
        if st.images.contains_key(name) {
            return Err(RbdError::Exists(format!("image {name}")));
        }
        let head = Content {
            size,
            ..Content::default()
        };
        st.insert_image(name, head, BTreeMap::new());
        Ok(())
    }

    async fn stat(&self, name: &str) -> Result<ImageInfo> {
        self.enter(Op::Stat).await?;
        let st = self.state();
        if st.images.get(name).is_some_and(|i| i.removing) {
            return Err(half_removed(name));
        }
        st.info(name)
    }

    async fn image_exists(&self, name: &str) -> Result<bool> {
        self.enter(Op::Stat).await?;
        Ok(self.state().images.contains_key(name))
    }

    async fn list_images(&self) -> Result<Vec<String>> {
        self.enter(Op::ListImages).await?;
        Ok(self.state().images.keys().cloned().collect())
    }

    async fn resize(&self, name: &str, size: u64) -> Result<()> {
        self.enter(Op::Resize).await?;
        self.state().resize_head(name, size)
    }

    async fn remove_image(&self, name: &str) -> Result<()> {
        self.enter(Op::Remove).await?;
        let mut st = self.state();
        if st.images.get(name).is_some_and(|i| i.removing) {
            // Finishes the interrupted removal.
            st.images.remove(name);
            return Ok(());
        }
        let img = st.image(name)?;
        if !img.snapshots.is_empty() {
            return Err(RbdError::Busy(format!(
                "image {name} has {} snapshot(s)",
                img.snapshots.len()
            )));
        }
        st.images.remove(name);
        Ok(())
    }

    async fn create_snapshot(&self, image: &str, snap: &str) -> Result<()> {
        self.enter(Op::CreateSnapshot).await?;
        let mut st = self.state();
        let img = st.image_mut(image)?;
        if img.snapshots.iter().any(|s| s.name == snap) {
            return Err(RbdError::Exists(format!("snapshot {image}@{snap}")));
        }
        let snapshot = Snap {
            name: snap.to_string(),
            protected: false,
            content: img.head.clone(),
            encryption: img.encryption.clone(),
        };
        img.snapshots.push(snapshot);
        Ok(())
    }

    async fn protect_snapshot(&self, image: &str, snap: &str) -> Result<()> {
        self.enter(Op::Protect).await?;
        let mut st = self.state();
        let s = st
            .image_mut(image)?
            .snapshots
            .iter_mut()
            .find(|s| s.name == snap)
            .ok_or_else(|| data::not_found_snap(image, snap))?;
        s.protected = true;
        Ok(())
    }

    async fn unprotect_snapshot(&self, image: &str, snap: &str) -> Result<()> {
        self.enter(Op::Unprotect).await?;
        let mut st = self.state();
        st.snap(image, snap)?;
        if st.has_children(image, Some(snap)) {
            // Half-removed clones count (librbd still has them registered) but are not listed.
            let listed = st.children(image, Some(snap)).len();
            return Err(RbdError::Busy(format!(
                "snapshot {image}@{snap} has {listed} child(ren){}",
                if listed == 0 {
                    " listed, and half-removed ones"
                } else {
                    ""
                }
            )));
        }
        if let Some(s) = st
            .image_mut(image)?
            .snapshots
            .iter_mut()
            .find(|s| s.name == snap)
        {
            s.protected = false;
        }
        Ok(())
    }

    async fn is_snapshot_protected(&self, image: &str, snap: &str) -> Result<bool> {
        self.enter(Op::IsProtected).await?;
        Ok(self.state().snap(image, snap)?.protected)
    }

    async fn remove_snapshot(&self, image: &str, snap: &str) -> Result<()> {
        self.enter(Op::RemoveSnapshot).await?;
        let mut st = self.state();
        if st.snap(image, snap)?.protected {
            return Err(RbdError::Busy(format!(
                "snapshot {image}@{snap} is protected"
            )));
        }
        if st.has_children(image, Some(snap)) {
            return Err(RbdError::Busy(format!(
                "snapshot {image}@{snap} has children"
            )));
        }
        st.image_mut(image)?.snapshots.retain(|s| s.name != snap);
        Ok(())
    }

    async fn list_snapshots(&self, image: &str) -> Result<Vec<SnapshotInfo>> {
        self.enter(Op::ListSnapshots).await?;
        Ok(self.state().info(image)?.snapshots)
    }

    async fn clone_image(&self, parent: &str, snap: &str, child: &str) -> Result<()> {
        self.enter(Op::Clone).await?;
        let mut st = self.state();
        let parent_img = st.image(parent)?;
        let s = st.snap(parent, snap)?;
        if !s.protected {
            return Err(RbdError::InvalidArgument(format!(
                "snapshot {parent}@{snap} is not protected (clone format v1 needs a protected snapshot)"
            )));
        }
        if st.images.contains_key(child) {
            return Err(RbdError::Exists(format!("image {child}")));
        }
        let head = Content {
            size: s.content.size,
            chunks: BTreeMap::new(),
            parent: Some(Link {
                image: parent.to_string(),
                snap: snap.to_string(),
                overlap: s.content.size,
            }),
        };
        let metadata = parent_img.metadata.clone();
        let encryption = s.encryption.clone();
        st.insert_image(child, head, metadata);
        st.image_mut(child)?.encryption = encryption;
        Ok(())
    }

    async fn list_children(&self, image: &str, snap: Option<&str>) -> Result<Vec<ChildRef>> {
        self.enter(Op::ListChildren).await?;
        let st = self.state();
        match snap {
            Some(s) => {
                st.snap(image, s)?;
            }
            None => {
                st.image(image)?;
            }
        }
        Ok(st.children(image, snap))
    }

    async fn flatten(
        &self,
        image: &str,
        progress: ProgressFn,
        cancel: CancellationToken,
    ) -> Result<()> {
        self.enter(Op::Flatten).await?;
        let pool = self.inner.pool.clone();
        self.flatten_in(&pool, image, progress, cancel).await
    }

    async fn flatten_child(
        &self,
        child: &ChildRef,
        progress: ProgressFn,
        cancel: CancellationToken,
    ) -> Result<()> {
        self.enter(Op::Flatten).await?;
        self.flatten_in(&child.pool, &child.image, progress, cancel)
            .await
    }

    async fn read(&self, image: &str, snap: Option<&str>, offset: u64, len: u64) -> Result<Bytes> {
        self.enter(Op::Read).await?;
        let st = self.state();
        let content = st.content(image, snap)?;
        Ok(Bytes::from(st.read(content, offset, len)))
    }

    async fn read_stream(
        &self,
        image: &str,
        snap: Option<&str>,
        chunk_size: usize,
    ) -> Result<ByteStream> {
        self.enter(Op::ReadStream).await?;
        if chunk_size == 0 {
            return Err(RbdError::InvalidArgument(
                "chunk_size must be positive".into(),
            ));
        }
        let (chunks, size) = self.resolved(image, snap)?;
        let cs = self.inner.chunk_size;
        let step = chunk_size as u64;
        let stream = futures::stream::unfold(0u64, move |pos| {
            let out = (pos < size).then(|| {
                let end = pos.saturating_add(step).min(size);
                let mut buf = vec![0u8; to_usize(end - pos)];
                let mut p = pos;
                while p < end {
                    let idx = p / cs;
                    let n = (cs - p % cs).min(end - p);
                    if let Some(chunk) = chunks.get(&idx) {
                        let src = to_usize(p % cs);
                        let dst = to_usize(p - pos);
                        buf[dst..dst + to_usize(n)].copy_from_slice(&chunk[src..src + to_usize(n)]);
                    }
                    p += n;
                }
                (Ok(Bytes::from(buf)), end)
            });
            futures::future::ready(out)
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
        self.enter(Op::Write).await?;
        let (id, base, limit) = {
            let st = self.state();
            let img = st.image(image)?;
            match &opts.passphrase {
                Some(p) => {
                    check_passphrase(image, img.encryption.as_ref(), p)?;
                    let base = LUKS2_HEADER_SIZE;
                    (img.id, base, img.head.size.saturating_sub(base))
                }
                None => (img.id, 0, img.head.size),
            }
        };
        let faults = lock(&self.inner.faults).chunk_faults(Op::Write);
        let issued = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let write = |offset: u64, bytes: Bytes| {
            let this = self.clone();
            let image = image.to_string();
            let faults = faults.clone();
            let issued = issued.clone();
            async move {
                let _in_flight = InFlight::enter(&this.inner);
                let n = issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if let Some((after, err)) = &faults.fail_after {
                    if n >= *after {
                        return Err(err.clone());
                    }
                }
                if !faults.delay.is_zero() {
                    tokio::time::sleep(faults.delay).await;
                }
                this.apply_write(&image, id, base + offset, &bytes)?;
                Ok(bytes.len() as u64)
            }
        };
        pipelined_write(data, &opts, limit, &progress, &cancel, write).await
    }

    async fn write_at(&self, image: &str, offset: u64, data: &[u8]) -> Result<()> {
        self.enter(Op::WriteAt).await?;
        self.state().write_head(image, offset, data)
    }

    async fn encryption_format(&self, image: &str, passphrase: &Passphrase) -> Result<()> {
        self.enter(Op::EncryptionFormat).await?;
        let mut st = self.state();
        let img = st.image(image)?;
        if img.head.parent.is_some() {
            return Err(RbdError::Unsupported(format!(
                "encryption format of cloned image {image} (Ceph Pacific cannot format a clone)"
            )));
        }
        if img.head.size < LUKS2_HEADER_SIZE {
            return Err(RbdError::InvalidArgument(format!(
                "image {image} is smaller than the {LUKS2_HEADER_SIZE}-byte LUKS2 header"
            )));
        }
        // The header region: the marker in the first chunk, then zeroes up to the payload (the
        // image has no parent, so dropping chunks makes them read as zeroes).
        let cs = self.inner.chunk_size;
        let whole_chunks = LUKS2_HEADER_SIZE / cs;
        st.image_mut(image)?
            .head
            .chunks
            .retain(|&idx, _| idx >= whole_chunks);
        let tail = whole_chunks * cs;
        if tail < LUKS2_HEADER_SIZE && tail > 0 {
            st.write_head(image, tail, &vec![0u8; to_usize(LUKS2_HEADER_SIZE - tail)])?;
        }
        let mut header = vec![0u8; to_usize(cs.min(LUKS2_HEADER_SIZE))];
        let n = FAKE_LUKS2_MAGIC.len().min(header.len());
        header[..n].copy_from_slice(&FAKE_LUKS2_MAGIC[..n]);
        st.write_head(image, 0, &header)?;
        st.image_mut(image)?.encryption = Some(passphrase.clone());
        Ok(())
    }

    async fn metadata_get(&self, image: &str, key: &str) -> Result<Option<String>> {
        self.enter(Op::MetadataGet).await?;
        Ok(self.state().image(image)?.metadata.get(key).cloned())
    }

    async fn metadata_set(&self, image: &str, key: &str, value: &str) -> Result<()> {
        self.enter(Op::MetadataSet).await?;
        self.state()
            .image_mut(image)?
            .metadata
            .insert(key.to_string(), value.to_string());
        Ok(())
    }

    async fn metadata_list(&self, image: &str) -> Result<BTreeMap<String, String>> {
        self.enter(Op::MetadataList).await?;
        Ok(self.state().image(image)?.metadata.clone())
    }

    async fn pool_usage(&self) -> Result<PoolUsage> {
        self.enter(Op::PoolUsage).await?;
        let stored = self.state().allocated_bytes();
        let capacity = *lock(&self.inner.capacity);
        Ok(PoolUsage {
            max_avail: capacity.saturating_sub(stored),
            stored,
        })
    }

    async fn client_key(&self, client: &str) -> Result<String> {
        self.enter(Op::ClientKey).await?;
        let key = lock(&self.inner.keys).get(client).cloned();
        Ok(key.unwrap_or_else(|| derived_key(&self.inner.pool, client)))
    }
}
