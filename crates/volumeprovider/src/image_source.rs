//! OS images for the controllers: [`OciImageSource`] implements [`controllers::ImageSource`] on the
//! registry client of the `oci` crate. Owns only the translation of values and errors.

use async_trait::async_trait;
use controllers::{ImageSource, ResolvedImage, Rootfs, SourceError};
pub use oci::OciOptions;

/// The daemon's image source: ironcore images from OCI registries.
pub struct OciImageSource {
    client: oci::OciClient,
}

impl OciImageSource {
    /// A source with these client options.
    pub fn new(opts: OciOptions) -> Result<OciImageSource, SourceError> {
        Ok(OciImageSource {
            client: oci::OciClient::new(opts).map_err(source_error)?,
        })
    }
}

/// The controllers' classification of a registry error (variant for variant).
pub fn source_error(e: oci::Error) -> SourceError {
    match e {
        oci::Error::NotFound(m) => SourceError::NotFound(m),
        oci::Error::InvalidReference(m) => SourceError::InvalidReference(m),
        oci::Error::NoPlatformMatch(m) => SourceError::NoPlatformMatch(m),
        oci::Error::NoRootfs(m) => SourceError::NoRootfs(m),
        oci::Error::DigestMismatch(m) => SourceError::DigestMismatch(m),
        oci::Error::Malformed(m) => SourceError::Malformed(m),
        oci::Error::Unavailable(m) => SourceError::Unavailable(m),
    }
}

#[async_trait]
impl ImageSource for OciImageSource {
    async fn resolve(
        &self,
        reference: &str,
        architecture: Option<&str>,
    ) -> Result<ResolvedImage, SourceError> {
        let r = self
            .client
            .resolve(reference, architecture)
            .await
            .map_err(source_error)?;
        Ok(ResolvedImage {
            locator: r.locator,
            digest: r.digest,
        })
    }

    async fn open_rootfs(
        &self,
        reference: &str,
        architecture: Option<&str>,
    ) -> Result<Rootfs, SourceError> {
        let r = self
            .client
            .open_rootfs(reference, architecture)
            .await
            .map_err(source_error)?;
        Ok(rootfs(r))
    }

    async fn open_rootfs_from(
        &self,
        reference: &str,
        architecture: Option<&str>,
        offset: u64,
        prefix: rbd::ByteStream,
    ) -> Result<Rootfs, SourceError> {
        let r = self
            .client
            .open_rootfs_from(reference, architecture, offset, prefix)
            .await
            .map_err(source_error)?;
        Ok(rootfs(r))
    }
}

fn rootfs(r: oci::Rootfs) -> Rootfs {
    Rootfs {
        size: r.size,
        layer_digest: r.layer_digest,
        manifest_digest: r.manifest_digest,
        start: r.start,
        data: r.data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_errors_keep_their_class() {
        let cases = [
            (oci::Error::NotFound("a".into()), false),
            (oci::Error::InvalidReference("a".into()), false),
            (oci::Error::NoPlatformMatch("a".into()), false),
            (oci::Error::NoRootfs("a".into()), false),
            (oci::Error::DigestMismatch("a".into()), true),
            (oci::Error::Malformed("a".into()), false),
            (oci::Error::Unavailable("a".into()), true),
        ];
        for (e, retryable) in cases {
            let msg = e.to_string();
            let mapped = source_error(e);
            assert_eq!(mapped.is_retryable(), retryable, "{mapped:?}");
            assert_eq!(mapped.to_string(), msg, "same message");
        }
    }
}
