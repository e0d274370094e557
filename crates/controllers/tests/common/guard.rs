//! The guard of the rule "nothing that can take more than milliseconds runs in a reconcile pass":
//! decorators of the fake backend and the fake image source that record every call of a slow
//! kind (LUKS2 format, flatten, stream reads and writes, registry resolve and rootfs open) made
//! while [`controllers::on_reconcile_worker`] is true. Every other call is forwarded unrecorded.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use controllers::{ImageSource, ResolvedImage, Rootfs, SourceError};
use rbd::{
    BlockBackend, ByteStream, CancellationToken, ChildRef, ImageInfo, Passphrase, PoolUsage,
    ProgressFn, Result, SnapshotInfo, WriteOptions,
};

/// A test's interception of `is_snapshot_protected(image, snap)`: runs before the call and may
/// answer instead of the backend (a race staged at an exact point of a pass).
pub type ProtectedHook = Box<dyn FnMut(&str, &str) -> Option<Result<bool>> + Send>;

/// The slow calls seen, and those made on a reconcile worker (the violations). Also carries the
/// test's [`ProtectedHook`], if any.
#[derive(Default)]
pub struct SlowCalls {
    seen: Mutex<u64>,
    violations: Mutex<Vec<String>>,
    hook: Mutex<Option<ProtectedHook>>,
}

impl SlowCalls {
    /// Notes a call of slow `kind` on `what`; a violation when it runs in a reconcile pass.
    pub fn note(&self, kind: &str, what: &str) {
        *self.seen.lock().unwrap() += 1;
        if controllers::on_reconcile_worker() {
            self.violations
                .lock()
                .unwrap()
                .push(format!("{kind}({what})"));
        }
    }

    /// Installs the hook of `is_snapshot_protected`.
    pub fn on_is_protected(&self, hook: ProtectedHook) {
        *self.hook.lock().unwrap() = Some(hook);
    }

    fn intercept(&self, image: &str, snap: &str) -> Option<Result<bool>> {
        self.hook
            .lock()
            .unwrap()
            .as_mut()
            .and_then(|h| h(image, snap))
    }

    /// How many slow calls were made at all.
    pub fn seen(&self) -> u64 {
        *self.seen.lock().unwrap()
    }

    /// The slow calls made on a reconcile worker, in order.
    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    /// The kinds of the violations (`"encryption_format"`, `"resolve"`, …).
    pub fn violating_kinds(&self) -> BTreeSet<String> {
        self.violations()
            .iter()
            .filter_map(|v| v.split('(').next().map(str::to_string))
            .collect()
    }
}

/// A block backend that records its slow calls in [`SlowCalls`].
pub struct GuardedBackend<B> {
    pub inner: B,
    pub slow: Arc<SlowCalls>,
}

#[async_trait]
impl<B: BlockBackend> BlockBackend for GuardedBackend<B> {
    fn pool(&self) -> &str {
        self.inner.pool()
    }
    async fn create_image(&self, name: &str, size: u64) -> Result<()> {
        self.inner.create_image(name, size).await
    }
    async fn stat(&self, name: &str) -> Result<ImageInfo> {
        self.inner.stat(name).await
    }
    async fn image_exists(&self, name: &str) -> Result<bool> {
        self.inner.image_exists(name).await
    }
    async fn list_images(&self) -> Result<Vec<String>> {
        self.inner.list_images().await
    }
    async fn resize(&self, name: &str, size: u64) -> Result<()> {
        self.inner.resize(name, size).await
    }
    async fn remove_image(&self, name: &str) -> Result<()> {
        self.inner.remove_image(name).await
    }
    async fn create_snapshot(&self, image: &str, snap: &str) -> Result<()> {
        self.inner.create_snapshot(image, snap).await
    }
    async fn protect_snapshot(&self, image: &str, snap: &str) -> Result<()> {
        self.inner.protect_snapshot(image, snap).await
    }
    async fn unprotect_snapshot(&self, image: &str, snap: &str) -> Result<()> {
        self.inner.unprotect_snapshot(image, snap).await
    }
    async fn is_snapshot_protected(&self, image: &str, snap: &str) -> Result<bool> {
        if let Some(answer) = self.slow.intercept(image, snap) {
            return answer;
        }
        self.inner.is_snapshot_protected(image, snap).await
    }
    async fn remove_snapshot(&self, image: &str, snap: &str) -> Result<()> {
        self.inner.remove_snapshot(image, snap).await
    }
    async fn list_snapshots(&self, image: &str) -> Result<Vec<SnapshotInfo>> {
        self.inner.list_snapshots(image).await
    }
    async fn clone_image(&self, parent: &str, snap: &str, child: &str) -> Result<()> {
        self.inner.clone_image(parent, snap, child).await
    }
    async fn list_children(&self, image: &str, snap: Option<&str>) -> Result<Vec<ChildRef>> {
        self.inner.list_children(image, snap).await
    }
    async fn flatten(
        &self,
        image: &str,
        progress: ProgressFn,
        cancel: CancellationToken,
    ) -> Result<()> {
        self.slow.note("flatten", image);
        self.inner.flatten(image, progress, cancel).await
    }
    async fn read(&self, image: &str, snap: Option<&str>, offset: u64, len: u64) -> Result<Bytes> {
        self.inner.read(image, snap, offset, len).await
    }
    async fn read_stream(
        &self,
        image: &str,
        snap: Option<&str>,
        chunk_size: usize,
    ) -> Result<ByteStream> {
        self.slow.note("read_stream", image);
        self.inner.read_stream(image, snap, chunk_size).await
    }
    async fn write_stream(
        &self,
        image: &str,
        data: ByteStream,
        opts: WriteOptions,
        progress: ProgressFn,
        cancel: CancellationToken,
    ) -> Result<u64> {
        self.slow.note("write_stream", image);
        self.inner
            .write_stream(image, data, opts, progress, cancel)
            .await
    }
    async fn write_at(&self, image: &str, offset: u64, data: &[u8]) -> Result<()> {
        self.inner.write_at(image, offset, data).await
    }
    async fn encryption_format(&self, image: &str, passphrase: &Passphrase) -> Result<()> {
        self.slow.note("encryption_format", image);
        self.inner.encryption_format(image, passphrase).await
    }
    async fn metadata_get(&self, image: &str, key: &str) -> Result<Option<String>> {
        self.inner.metadata_get(image, key).await
    }
    async fn metadata_set(&self, image: &str, key: &str, value: &str) -> Result<()> {
        self.inner.metadata_set(image, key, value).await
    }
    async fn metadata_list(&self, image: &str) -> Result<BTreeMap<String, String>> {
        self.inner.metadata_list(image).await
    }
    async fn pool_usage(&self) -> Result<PoolUsage> {
        self.inner.pool_usage().await
    }
    async fn client_key(&self, client: &str) -> Result<String> {
        self.inner.client_key(client).await
    }
}

/// An image source that records its calls (all slow: registry round trips) in [`SlowCalls`].
pub struct GuardedSource<S> {
    pub inner: S,
    pub slow: Arc<SlowCalls>,
}

#[async_trait]
impl<S: ImageSource> ImageSource for GuardedSource<S> {
    async fn resolve(
        &self,
        reference: &str,
        architecture: Option<&str>,
    ) -> std::result::Result<ResolvedImage, SourceError> {
        self.slow.note("resolve", reference);
        self.inner.resolve(reference, architecture).await
    }

    async fn open_rootfs(
        &self,
        reference: &str,
        architecture: Option<&str>,
    ) -> std::result::Result<Rootfs, SourceError> {
        self.slow.note("open_rootfs", reference);
        self.inner.open_rootfs(reference, architecture).await
    }

    async fn open_rootfs_from(
        &self,
        reference: &str,
        architecture: Option<&str>,
        offset: u64,
        prefix: rbd::ByteStream,
    ) -> std::result::Result<Rootfs, SourceError> {
        self.slow.note("open_rootfs_from", reference);
        self.inner
            .open_rootfs_from(reference, architecture, offset, prefix)
            .await
    }
}
