//! `MockBlockBackend`: a [`mockall`] mock of [`BlockBackend`] for unit tests of exact call
//! sequences.
//!
//! Prefer [`crate::fake::MemoryBackend`] for behaviour; use the mock when a test must pin down
//! *which* calls happen in which order, or must script an answer the fake cannot produce.
//!
//! How it is built: mockall cannot mock `async fn`s taking `Option<&str>` through `#[async_trait]`,
//! so `mockall::mock!` generates **synchronous inherent methods** with the trait's names and
//! arguments (hence the usual `expect_<method>()` API, where `returning` closures return the
//! method's `Result` directly), and the [`BlockBackend`] impl below forwards every async trait
//! method to them. Use the mock through the trait (`Arc<dyn BlockBackend>`, generics, or
//! `BlockBackend::stat(&mock, ..).await`): calling `mock.stat(..)` on the concrete type picks the
//! synchronous inherent method. `image_exists` is not mocked: the trait's default calls `stat`.
//! `flatten_child` is not mocked either: it calls the mocked `flatten` with the child's image name,
//! whatever its pool (script children of other pools with the fake, which models pools).
//!
//! ```ignore
//! let mut mock = rbd::mock::MockBlockBackend::new();
//! mock.expect_pool().return_const("pool".to_string());
//! mock.expect_create_image().withf(|name, size| name == "img_1" && *size == 1 << 30)
//!     .times(1).returning(|_, _| Ok(()));
//! ```

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;

use rbd::{
    BlockBackend, ByteStream, CancellationToken, ChildRef, ImageInfo, Passphrase, PoolUsage,
    ProgressFn, Result, SnapshotInfo, WriteOptions,
};

mockall::mock! {
    /// A mock of [`BlockBackend`]: set expectations with `expect_<method>()`.
    pub BlockBackend {
        /// Mocked [`BlockBackend::pool`] (set it with `return_const(String)`).
        pub fn pool(&self) -> &str;
        /// Mocked [`BlockBackend::create_image`].
        pub fn create_image(&self, name: &str, size: u64) -> Result<()>;
        /// Mocked [`BlockBackend::stat`].
        pub fn stat(&self, name: &str) -> Result<ImageInfo>;
        /// Mocked [`BlockBackend::list_images`].
        pub fn list_images(&self) -> Result<Vec<String>>;
        /// Mocked [`BlockBackend::resize`].
        pub fn resize(&self, name: &str, size: u64) -> Result<()>;
        /// Mocked [`BlockBackend::remove_image`].
        pub fn remove_image(&self, name: &str) -> Result<()>;
        /// Mocked [`BlockBackend::create_snapshot`].
        pub fn create_snapshot(&self, image: &str, snap: &str) -> Result<()>;
        /// Mocked [`BlockBackend::protect_snapshot`].
        pub fn protect_snapshot(&self, image: &str, snap: &str) -> Result<()>;
        /// Mocked [`BlockBackend::unprotect_snapshot`].
        pub fn unprotect_snapshot(&self, image: &str, snap: &str) -> Result<()>;
        /// Mocked [`BlockBackend::is_snapshot_protected`].
        pub fn is_snapshot_protected(&self, image: &str, snap: &str) -> Result<bool>;
        /// Mocked [`BlockBackend::remove_snapshot`].
        pub fn remove_snapshot(&self, image: &str, snap: &str) -> Result<()>;
        /// Mocked [`BlockBackend::list_snapshots`].
        pub fn list_snapshots(&self, image: &str) -> Result<Vec<SnapshotInfo>>;
        /// Mocked [`BlockBackend::clone_image`].
        pub fn clone_image(&self, parent: &str, snap: &str, child: &str) -> Result<()>;
        /// Mocked [`BlockBackend::list_children`].
        pub fn list_children<'a>(&self, image: &str, snap: Option<&'a str>) -> Result<Vec<ChildRef>>;
        /// Mocked [`BlockBackend::flatten`].
        pub fn flatten(&self, image: &str, progress: ProgressFn, cancel: CancellationToken) -> Result<()>;
        /// Mocked [`BlockBackend::read`].
        pub fn read<'a>(&self, image: &str, snap: Option<&'a str>, offset: u64, len: u64) -> Result<Bytes>;
        /// Mocked [`BlockBackend::read_stream`].
        pub fn read_stream<'a>(&self, image: &str, snap: Option<&'a str>, chunk_size: usize) -> Result<ByteStream>;
        /// Mocked [`BlockBackend::write_stream`].
        pub fn write_stream(
            &self,
            image: &str,
            data: ByteStream,
            opts: WriteOptions,
            progress: ProgressFn,
            cancel: CancellationToken,
        ) -> Result<u64>;
        /// Mocked [`BlockBackend::write_at`].
        pub fn write_at(&self, image: &str, offset: u64, data: &[u8]) -> Result<()>;
        /// Mocked [`BlockBackend::encryption_format`].
        pub fn encryption_format(&self, image: &str, passphrase: &Passphrase) -> Result<()>;
        /// Mocked [`BlockBackend::metadata_get`].
        pub fn metadata_get(&self, image: &str, key: &str) -> Result<Option<String>>;
        /// Mocked [`BlockBackend::metadata_set`].
        pub fn metadata_set(&self, image: &str, key: &str, value: &str) -> Result<()>;
        /// Mocked [`BlockBackend::metadata_list`].
        pub fn metadata_list(&self, image: &str) -> Result<BTreeMap<String, String>>;
        /// Mocked [`BlockBackend::pool_usage`].
        pub fn pool_usage(&self) -> Result<PoolUsage>;
        /// Mocked [`BlockBackend::client_key`].
        pub fn client_key(&self, client: &str) -> Result<String>;
    }
}

#[async_trait]
impl BlockBackend for MockBlockBackend {
    fn pool(&self) -> &str {
        MockBlockBackend::pool(self)
    }
    async fn create_image(&self, name: &str, size: u64) -> Result<()> {
        MockBlockBackend::create_image(self, name, size)
    }
    async fn stat(&self, name: &str) -> Result<ImageInfo> {
        MockBlockBackend::stat(self, name)
    }
    async fn list_images(&self) -> Result<Vec<String>> {
        MockBlockBackend::list_images(self)
    }
    async fn resize(&self, name: &str, size: u64) -> Result<()> {
        MockBlockBackend::resize(self, name, size)
    }
    async fn remove_image(&self, name: &str) -> Result<()> {
        MockBlockBackend::remove_image(self, name)
    }
    async fn create_snapshot(&self, image: &str, snap: &str) -> Result<()> {
        MockBlockBackend::create_snapshot(self, image, snap)
    }
    async fn protect_snapshot(&self, image: &str, snap: &str) -> Result<()> {
        MockBlockBackend::protect_snapshot(self, image, snap)
    }
    async fn unprotect_snapshot(&self, image: &str, snap: &str) -> Result<()> {
        MockBlockBackend::unprotect_snapshot(self, image, snap)
    }
    async fn is_snapshot_protected(&self, image: &str, snap: &str) -> Result<bool> {
        MockBlockBackend::is_snapshot_protected(self, image, snap)
    }
    async fn remove_snapshot(&self, image: &str, snap: &str) -> Result<()> {
        MockBlockBackend::remove_snapshot(self, image, snap)
    }
    async fn list_snapshots(&self, image: &str) -> Result<Vec<SnapshotInfo>> {
        MockBlockBackend::list_snapshots(self, image)
    }
    async fn clone_image(&self, parent: &str, snap: &str, child: &str) -> Result<()> {
        MockBlockBackend::clone_image(self, parent, snap, child)
    }
    async fn list_children(&self, image: &str, snap: Option<&str>) -> Result<Vec<ChildRef>> {
        MockBlockBackend::list_children(self, image, snap)
    }
    async fn flatten(
        &self,
        image: &str,
        progress: ProgressFn,
        cancel: CancellationToken,
    ) -> Result<()> {
        MockBlockBackend::flatten(self, image, progress, cancel)
    }
    async fn flatten_child(
        &self,
        child: &ChildRef,
        progress: ProgressFn,
        cancel: CancellationToken,
    ) -> Result<()> {
        MockBlockBackend::flatten(self, &child.image, progress, cancel)
    }
    async fn read(&self, image: &str, snap: Option<&str>, offset: u64, len: u64) -> Result<Bytes> {
        MockBlockBackend::read(self, image, snap, offset, len)
    }
    async fn read_stream(
        &self,
        image: &str,
        snap: Option<&str>,
        chunk_size: usize,
    ) -> Result<ByteStream> {
        MockBlockBackend::read_stream(self, image, snap, chunk_size)
    }
    async fn write_stream(
        &self,
        image: &str,
        data: ByteStream,
        opts: WriteOptions,
        progress: ProgressFn,
        cancel: CancellationToken,
    ) -> Result<u64> {
        MockBlockBackend::write_stream(self, image, data, opts, progress, cancel)
    }
    async fn write_at(&self, image: &str, offset: u64, data: &[u8]) -> Result<()> {
        MockBlockBackend::write_at(self, image, offset, data)
    }
    async fn encryption_format(&self, image: &str, passphrase: &Passphrase) -> Result<()> {
        MockBlockBackend::encryption_format(self, image, passphrase)
    }
    async fn metadata_get(&self, image: &str, key: &str) -> Result<Option<String>> {
        MockBlockBackend::metadata_get(self, image, key)
    }
    async fn metadata_set(&self, image: &str, key: &str, value: &str) -> Result<()> {
        MockBlockBackend::metadata_set(self, image, key, value)
    }
    async fn metadata_list(&self, image: &str) -> Result<BTreeMap<String, String>> {
        MockBlockBackend::metadata_list(self, image)
    }
    async fn pool_usage(&self) -> Result<PoolUsage> {
        MockBlockBackend::pool_usage(self)
    }
    async fn client_key(&self, client: &str) -> Result<String> {
        MockBlockBackend::client_key(self, client)
    }
}
