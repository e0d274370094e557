//! The [`ImageSource`] seam: where OS images come from (an OCI registry in the daemon, a fake in
//! tests). Owns only the trait and its types; the OCI implementation lives in `volumeprovider`.

use async_trait::async_trait;
use rbd::ByteStream;

/// Why an OS image could not be resolved or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
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

impl SourceError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SourceError::Unavailable(_) | SourceError::DigestMismatch(_)
        )
    }
}

/// A reference resolved to one platform manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// `registry/repository` of the reference (no tag, no digest).
    pub locator: String,
    /// Digest of the chosen platform manifest, `sha256:<64 hex>`: the OS snapshot id.
    pub digest: String,
}

impl ResolvedImage {
    /// The digest-pinned reference `<locator>@<digest>` stored as the snapshot's source.
    pub fn pinned(&self) -> String {
        format!("{}@{}", self.locator, self.digest)
    }
}

/// An open root filesystem layer.
pub struct Rootfs {
    /// Layer size in bytes (from its descriptor).
    pub size: u64,
    /// Layer digest `sha256:<hex>`.
    pub layer_digest: String,
    /// Digest of the manifest the layer belongs to.
    pub manifest_digest: String,
    /// Offset in the layer of the first byte of `data` (0: the whole layer).
    pub start: u64,
    /// The raw layer bytes from `start` on. The stream verifies the digest of the whole layer at
    /// its end and yields an `std::io::Error` (kind `InvalidData`) on mismatch (or when the
    /// re-read prefix of a resumed layer has the wrong length), so a corrupt layer never completes.
    pub data: ByteStream,
}

/// Resolves OS image references and opens their root filesystem layer.
#[async_trait]
pub trait ImageSource: Send + Sync + 'static {
    /// Resolves `reference` (tag or digest) for `architecture` (`None`: the index must have exactly one
    /// entry) to the platform manifest digest.
    async fn resolve(
        &self,
        reference: &str,
        architecture: Option<&str>,
    ) -> Result<ResolvedImage, SourceError>;

    /// Opens the rootfs layer of `reference` (normally the pinned `<locator>@<digest>`).
    async fn open_rootfs(
        &self,
        reference: &str,
        architecture: Option<&str>,
    ) -> Result<Rootfs, SourceError>;

    /// Opens the rootfs layer from byte `offset` on, to continue an interrupted populate.
    /// `prefix` yields the layer's first `offset` bytes as they were written (read back from the
    /// image): the source hashes them before the rest, so the digest is still verified over the
    /// whole layer. A source that cannot serve a part of the layer (a registry that ignores HTTP
    /// `Range`) returns the whole layer, `start` 0; so does this default.
    async fn open_rootfs_from(
        &self,
        reference: &str,
        architecture: Option<&str>,
        offset: u64,
        prefix: ByteStream,
    ) -> Result<Rootfs, SourceError> {
        let _ = (offset, prefix);
        self.open_rootfs(reference, architecture).await
    }
}
