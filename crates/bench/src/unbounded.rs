//! The reference of the `ceph` figure's loaded lines: [`UnboundedFormat`] is `CephBackend` with
//! its LUKS2 format run as this provider ran it before `CephConfig::format_concurrency`: on the
//! blocking pool, at normal CPU priority, as many at once as the runner submits (the fill class
//! and the slots it borrows: up to 8 of the 15 here). Every other call is forwarded unchanged.

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;
use ceph::CephBackend;
use rbd::{
    BlockBackend, ByteStream, CancellationToken, ChildRef, ImageInfo, Passphrase, PoolUsage,
    ProgressFn, RbdError, Result, SnapshotInfo, WriteOptions,
};

/// `CephBackend` whose `encryption_format` runs unbounded at normal priority (see the module docs).
pub struct UnboundedFormat(pub CephBackend);

#[async_trait]
impl BlockBackend for UnboundedFormat {
    fn pool(&self) -> &str {
        self.0.pool()
    }
    async fn create_image(&self, name: &str, size: u64) -> Result<()> {
        self.0.create_image(name, size).await
    }
    async fn stat(&self, name: &str) -> Result<ImageInfo> {
        self.0.stat(name).await
    }
    async fn image_exists(&self, name: &str) -> Result<bool> {
        self.0.image_exists(name).await
    }
    async fn list_images(&self) -> Result<Vec<String>> {
        self.0.list_images().await
    }
    async fn resize(&self, name: &str, size: u64) -> Result<()> {
        self.0.resize(name, size).await
    }
    async fn remove_image(&self, name: &str) -> Result<()> {
        self.0.remove_image(name).await
    }
    async fn create_snapshot(&self, image: &str, snap: &str) -> Result<()> {
        self.0.create_snapshot(image, snap).await
    }
    async fn protect_snapshot(&self, image: &str, snap: &str) -> Result<()> {
        self.0.protect_snapshot(image, snap).await
    }
    async fn unprotect_snapshot(&self, image: &str, snap: &str) -> Result<()> {
        self.0.unprotect_snapshot(image, snap).await
    }
    async fn is_snapshot_protected(&self, image: &str, snap: &str) -> Result<bool> {
        self.0.is_snapshot_protected(image, snap).await
    }
    async fn remove_snapshot(&self, image: &str, snap: &str) -> Result<()> {
        self.0.remove_snapshot(image, snap).await
    }
    async fn list_snapshots(&self, image: &str) -> Result<Vec<SnapshotInfo>> {
        self.0.list_snapshots(image).await
    }
    async fn clone_image(&self, parent: &str, snap: &str, child: &str) -> Result<()> {
        self.0.clone_image(parent, snap, child).await
    }
    async fn list_children(&self, image: &str, snap: Option<&str>) -> Result<Vec<ChildRef>> {
        self.0.list_children(image, snap).await
    }
    async fn flatten(
        &self,
        image: &str,
        progress: ProgressFn,
        cancel: CancellationToken,
    ) -> Result<()> {
        self.0.flatten(image, progress, cancel).await
    }
    async fn flatten_child(
        &self,
        child: &ChildRef,
        progress: ProgressFn,
        cancel: CancellationToken,
    ) -> Result<()> {
        self.0.flatten_child(child, progress, cancel).await
    }
    async fn read(&self, image: &str, snap: Option<&str>, offset: u64, len: u64) -> Result<Bytes> {
        self.0.read(image, snap, offset, len).await
    }
    async fn read_stream(
        &self,
        image: &str,
        snap: Option<&str>,
        chunk_size: usize,
    ) -> Result<ByteStream> {
        self.0.read_stream(image, snap, chunk_size).await
    }
    async fn write_stream(
        &self,
        image: &str,
        data: ByteStream,
        opts: WriteOptions,
        progress: ProgressFn,
        cancel: CancellationToken,
    ) -> Result<u64> {
        self.0
            .write_stream(image, data, opts, progress, cancel)
            .await
    }
    async fn write_at(&self, image: &str, offset: u64, data: &[u8]) -> Result<()> {
        self.0.write_at(image, offset, data).await
    }
    async fn encryption_format(&self, image: &str, passphrase: &Passphrase) -> Result<()> {
        let io = self.0.ioctx().clone();
        let (name, passphrase) = (image.to_string(), passphrase.clone());
        tokio::task::spawn_blocking(move || {
            let img = io.open_image(&name, None, false)?;
            if img.parent()?.is_some() {
                return Err(RbdError::Unsupported(format!("{name} is a clone")));
            }
            img.encryption_format_luks2(&passphrase)?;
            img.close()
        })
        .await
        .map_err(|e| RbdError::Other(format!("format task: {e}")))?
    }
    async fn metadata_get(&self, image: &str, key: &str) -> Result<Option<String>> {
        self.0.metadata_get(image, key).await
    }
    async fn metadata_set(&self, image: &str, key: &str, value: &str) -> Result<()> {
        self.0.metadata_set(image, key, value).await
    }
    async fn metadata_list(&self, image: &str) -> Result<BTreeMap<String, String>> {
        self.0.metadata_list(image).await
    }
    async fn pool_usage(&self) -> Result<PoolUsage> {
        self.0.pool_usage().await
    }
    async fn client_key(&self, client: &str) -> Result<String> {
        self.0.client_key(client).await
    }
}
