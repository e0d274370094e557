//! OS images from OCI registries: [`OciClient`] resolves ironcore image references and streams
//! their root filesystem layer.
//!
//! Owns: reference parsing ([`Reference`], containerd rules: explicit host, no normalisation), the
//! distribution HTTP client (hand-rolled over `reqwest`: token/basic auth from the Docker config,
//! plain HTTP for loopback or listed hosts, timeouts), document detection, the platform pick, layer
//! classification and the digest-verifying rootfs stream. It does not write block devices and knows
//! nothing of volumes: a caller pipes [`Rootfs::data`] wherever it wants.
//!
//! # Resolution (IRI.md §2.3)
//! 1. The reference's digest (if any, else its tag) is fetched from the manifest endpoint. Its type
//!    is the body's `mediaType`, else the `Content-Type` header, else the shape (ironcore's builder
//!    writes manifests without `mediaType`). Only OCI manifests and indexes are accepted; Docker
//!    manifests, manifest lists and schema 1 are `Malformed("unsupported media type …")`.
//! 2. An index is reduced to one entry: with an architecture, the first entry whose platform is
//!    exactly `linux/<arch>` (variant ignored); without one, the only entry of a one-entry index.
//!    Otherwise `NoPlatformMatch`. A direct manifest reference is taken as is.
//! 3. The snapshot id is the chosen **platform manifest** digest (never the index digest). Every
//!    fetched document is hashed; a reference digest or `Docker-Content-Digest` that differs is
//!    `DigestMismatch`.
//!
//! # Layers
//! The current media type of a slot always wins; a legacy one fills the slot only while it is empty.
//! **Unknown layer media types are ignored** (debug log), unlike the Go library, which fails the
//! whole image with "unknown layer type": an image that carries an extra artifact (for example a
//! `…disk.img` layer) still has a perfectly usable rootfs, and the volume provider only ever reads
//! that one layer. No rootfs layer is `NoRootfs`. The config blob is fetched, verified and must be
//! a JSON object (its media type is not checked, as in Go).
//!
//! # Streaming
//! The rootfs blob is passed on chunk by chunk as the HTTP body delivers it; it is never buffered
//! whole. The stream counts and hashes the bytes and, instead of ending cleanly, yields an
//! `io::Error` of kind `InvalidData` wrapping [`Error::DigestMismatch`] when the size or digest
//! differs from the layer descriptor. A body that stalls longer than
//! [`OciOptions::read_timeout`] yields `TimedOut` (wrapping `Unavailable`).
//!
//! # Error classes
//! Unknown repository/tag/digest → `NotFound`; bad reference → `InvalidReference`; no platform →
//! `NoPlatformMatch`; no rootfs → `NoRootfs`; corrupt bytes → `DigestMismatch` (retryable);
//! unreachable registry, timeouts, `408`/`429`/`5xx`, refused credentials, unusable Docker config →
//! `Unavailable` (retryable); bad JSON or unsupported media types → `Malformed`.

mod auth;
mod error;
mod manifest;
mod reference;
mod registry;
mod stream;

use std::path::PathBuf;
use std::time::Duration;

use tracing::{debug, info_span, Instrument};

pub use auth::Credentials;
pub use error::{BlobStream, Error, ResolvedImage, Rootfs};
pub use manifest::{
    media_types, Descriptor, Document, ImageConfig, Index, LayerKind, Layers, Manifest, Platform,
};
pub use reference::Reference;
pub use stream::digest_mismatch;

use manifest::{parse_document, pick_platform};
use reference::is_sha256_digest;
use registry::RegistryClient;

/// How [`OciClient`] talks to registries.
#[derive(Debug, Clone)]
pub struct OciOptions {
    /// Hosts (`host[:port]`, as written in references) reached over plain HTTP.
    pub plain_http: Vec<String>,
    /// Reach `localhost` and loopback addresses over plain HTTP (containerd's default). Default true.
    pub plain_http_localhost: bool,
    /// Accept any TLS certificate (test registries only).
    pub insecure_skip_tls_verify: bool,
    /// Extra PEM CA certificates to trust.
    pub ca_certificates: Vec<PathBuf>,
    /// The Docker config file; `None`: `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
    /// TCP/TLS connect timeout. Default 10 s.
    pub connect_timeout: Duration,
    /// Whole-request timeout for manifests, configs and tokens. Default 60 s.
    pub request_timeout: Duration,
    /// Longest wait for the next chunk of a blob body (and for its response head). Default 60 s.
    pub read_timeout: Duration,
    /// `User-Agent` header.
    pub user_agent: String,
}

impl Default for OciOptions {
    fn default() -> Self {
        OciOptions {
            plain_http: Vec::new(),
            plain_http_localhost: true,
            insecure_skip_tls_verify: false,
            ca_certificates: Vec::new(),
            docker_config: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(60),
            user_agent: concat!("cephvol/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// A reference resolved to its platform manifest, with the manifest itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedManifest {
    /// The repository pinned to the platform manifest (`host/repo@sha256:…`).
    pub reference: Reference,
    /// Digest of the platform manifest (the snapshot id).
    pub digest: String,
    /// The platform manifest.
    pub manifest: Manifest,
}

/// [`ImageSource`] over OCI registries (see the module docs for the rules).
pub struct OciClient {
    client: RegistryClient,
}

impl OciClient {
    /// Builds a source. Fails only if a CA file cannot be read or the HTTP client cannot be built.
    pub fn new(opts: OciOptions) -> Result<OciClient, Error> {
        Ok(OciClient {
            client: RegistryClient::new(opts)?,
        })
    }

    /// Resolves `reference` for `architecture` to its platform manifest (IRI.md §2.3).
    pub async fn resolve_manifest(
        &self,
        reference: &str,
        architecture: Option<&str>,
    ) -> Result<ResolvedManifest, Error> {
        let r = Reference::parse(reference)?;
        let architecture = architecture.filter(|a| !a.is_empty());
        let top = self.fetch_document(&r, r.object()).await?;
        let (digest, manifest) = match top.1 {
            Document::Manifest(m) => (top.0, m),
            Document::Index(index) => {
                let entry = pick_platform(&index, architecture)?;
                debug!(digest = %entry.digest, platform = ?entry.platform, "picked index entry");
                if !entry.media_type.is_empty() && entry.media_type != media_types::OCI_MANIFEST {
                    return Err(Error::Malformed(format!(
                        "unsupported media type {:?} of index entry {}",
                        entry.media_type, entry.digest
                    )));
                }
                if !is_sha256_digest(&entry.digest) {
                    return Err(Error::Malformed(format!(
                        "index entry digest {:?} is not sha256:<hex>",
                        entry.digest
                    )));
                }
                let (digest, doc) = self.fetch_document(&r, &entry.digest).await?;
                match doc {
                    Document::Manifest(m) => (digest, m),
                    Document::Index(_) => {
                        return Err(Error::Malformed(format!(
                            "unsupported media type: index entry {} is an index",
                            entry.digest
                        )))
                    }
                }
            }
        };
        Ok(ResolvedManifest {
            reference: r.with_digest(&digest),
            digest,
            manifest,
        })
    }

    /// Fetches and parses one manifest-endpoint document; checks its digest when asked by digest.
    async fn fetch_document(
        &self,
        r: &Reference,
        object: &str,
    ) -> Result<(String, Document), Error> {
        let fetched = self.client.get_manifest(r, object).await?;
        if object.starts_with("sha256:") && fetched.digest != object {
            return Err(Error::DigestMismatch(format!(
                "manifest {}@{object}: content hashes to {}",
                r.locator(),
                fetched.digest
            )));
        }
        let doc =
            parse_document(fetched.content_type.as_deref(), &fetched.body).map_err(
                |e| match e {
                    Error::Malformed(m) => {
                        Error::Malformed(format!("{}@{object}: {m}", r.locator()))
                    }
                    other => other,
                },
            )?;
        Ok((fetched.digest, doc))
    }

    /// Fetches and parses the config blob of a resolved manifest.
    pub async fn config(&self, resolved: &ResolvedManifest) -> Result<ImageConfig, Error> {
        let c = &resolved.manifest.config;
        if !is_sha256_digest(&c.digest) {
            return Err(Error::Malformed(format!(
                "config digest {:?} is not sha256:<hex>",
                c.digest
            )));
        }
        let body = self
            .client
            .get_small_blob(&resolved.reference, &c.digest, c.size)
            .await?;
        ImageConfig::parse(&body)
    }

    async fn open(&self, reference: &str, architecture: Option<&str>) -> Result<Rootfs, Error> {
        let resolved = self.resolve_manifest(reference, architecture).await?;
        let layers = Layers::classify(&resolved.manifest.layers);
        let rootfs = layers
            .rootfs()
            .ok_or_else(|| Error::NoRootfs(resolved.reference.to_string()))?
            .clone();
        if !is_sha256_digest(&rootfs.digest) {
            return Err(Error::Malformed(format!(
                "rootfs digest {:?} is not sha256:<hex>",
                rootfs.digest
            )));
        }
        self.config(&resolved).await?;
        let resp = self
            .client
            .get_blob(&resolved.reference, &rootfs.digest)
            .await?;
        if let Some(len) = resp.content_length() {
            if len != rootfs.size {
                return Err(Error::DigestMismatch(format!(
                    "blob {}: registry sends {len} bytes, the descriptor says {}",
                    rootfs.digest, rootfs.size
                )));
            }
        }
        debug!(digest = %rootfs.digest, size = rootfs.size, "streaming rootfs");
        let data = stream::verifying(
            resp.bytes_stream(),
            &rootfs.digest,
            rootfs.size,
            self.client_read_timeout(),
        );
        Ok(Rootfs {
            size: rootfs.size,
            layer_digest: rootfs.digest,
            manifest_digest: resolved.digest,
            data,
        })
    }

    fn client_read_timeout(&self) -> Duration {
        self.client.read_timeout()
    }
}

impl OciClient {
    /// Resolves `reference` (tag or digest) for `architecture` (`None`: an index must have
    /// exactly one entry) to the platform manifest digest.
    pub async fn resolve(
        &self,
        reference: &str,
        architecture: Option<&str>,
    ) -> Result<ResolvedImage, Error> {
        let span = info_span!("oci_resolve", reference, architecture);
        async {
            let r = self.resolve_manifest(reference, architecture).await?;
            Ok(ResolvedImage {
                locator: r.reference.locator(),
                digest: r.digest,
            })
        }
        .instrument(span)
        .await
    }

    /// Opens the rootfs layer of `reference` (normally the pinned `<locator>@<digest>`).
    pub async fn open_rootfs(
        &self,
        reference: &str,
        architecture: Option<&str>,
    ) -> Result<Rootfs, Error> {
        let span = info_span!("oci_open_rootfs", reference, architecture);
        self.open(reference, architecture).instrument(span).await
    }
}
