//! The crate's error type and the values it hands out: a resolved reference and an open rootfs.
//! Owns no I/O.

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

/// Why an OS image could not be resolved or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The reference does not exist at the registry (unknown repository, tag or digest). Terminal.
    #[error("image not found: {0}")]
    NotFound(String),
    /// The reference is not a valid image reference. Terminal.
    #[error("invalid image reference: {0}")]
    InvalidReference(String),
    /// An index has no manifest for the requested platform (or several and none was requested).
    #[error("no matching platform: {0}")]
    NoPlatformMatch(String),
    /// The image has no root filesystem layer. Terminal.
    #[error("image has no root fs: {0}")]
    NoRootfs(String),
    /// Downloaded bytes do not match their digest. Retryable (the next download may be intact).
    #[error("digest mismatch: {0}")]
    DigestMismatch(String),
    /// Manifest, index or config is malformed or of an unsupported media type. Terminal.
    #[error("malformed image: {0}")]
    Malformed(String),
    /// The registry could not be reached or answered with a server error. Retryable.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
}

impl Error {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::DigestMismatch(_))
    }
}

/// A reference resolved to one platform manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// `registry/repository` of the reference (no tag, no digest).
    pub locator: String,
    /// Digest of the chosen platform manifest, `sha256:<64 hex>`.
    pub digest: String,
}

impl ResolvedImage {
    /// The digest-pinned reference `<locator>@<digest>`.
    pub fn pinned(&self) -> String {
        format!("{}@{}", self.locator, self.digest)
    }
}

/// The bytes of a blob as the HTTP body delivers them.
pub type BlobStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// An open root filesystem layer.
pub struct Rootfs {
    /// Layer size in bytes (from its descriptor).
    pub size: u64,
    /// Offset in the layer of the first byte of [`Rootfs::data`]: 0 for the whole layer, the
    /// resume offset when [`crate::OciClient::open_rootfs_from`] got only the rest.
    pub start: u64,
    /// Layer digest `sha256:<hex>`.
    pub layer_digest: String,
    /// Digest of the manifest the layer belongs to.
    pub manifest_digest: String,
    /// The raw layer bytes from [`Rootfs::start`] on. The stream verifies the digest of the whole
    /// layer at its end and yields an `std::io::Error` (kind `InvalidData`) on mismatch, so a
    /// corrupt layer never completes.
    pub data: BlobStream,
}
