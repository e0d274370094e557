//! OS images from OCI registries: [`OciClient`] resolves ironcore image references and streams
//! their root filesystem layer.
//!
//! Owns: reference parsing ([`Reference`]), the ironcore document rules (type detection, platform
//! pick, layer classification), credentials from the Docker config, and the guarded rootfs stream.
//! The HTTP side of the distribution protocol is the maintained `oci-client` crate (manifest and
//! blob GETs, bearer-token and Basic auth, digest checks); Docker config entries are read with
//! `docker_credential`. It does not write block devices and knows nothing of volumes: a caller
//! pipes [`Rootfs::data`] wherever it wants.
//!
//! # The ironcore image format
//! An ironcore OS image is an OCI image manifest whose config blob is a small JSON object
//! (`commandLine`) and whose layers are raw files (root filesystem, kernel, initramfs, …) told
//! apart by media type ([`media_types`]). ironcore's builder writes each per-architecture manifest
//! **without a top-level `mediaType`** (only `schemaVersion`, `config`, `layers`), pushes it under
//! `<tag>-<arch>`, and joins them in an OCI index (which does carry `mediaType`) with `linux/<arch>`
//! platforms under `<tag>`. Layer blobs are sha256-addressed like any blob.
//!
//! # Resolution
//! 1. References need an explicit registry host (`host[:port]/repository:tag`, `…@sha256:<hex>` or
//!    both, the digest winning) and get no `docker.io`/`library/` normalisation, as containerd
//!    parses them.
//! 2. The reference's digest (if any, else its tag) is fetched from the manifest endpoint. Its type
//!    is the body's `mediaType`, else its shape (`manifests` → index, `config`/`layers` →
//!    manifest). Only OCI manifests and indexes are accepted; Docker manifests, manifest lists and
//!    schema 1 are `Malformed("unsupported media type …")`.
//! 3. An index is reduced to one entry: with an architecture, the first entry whose platform `os`
//!    is `linux` and whose `architecture` equals it exactly (the variant is ignored); without one,
//!    the only entry of a one-entry index. Otherwise `NoPlatformMatch`. A direct manifest reference
//!    is taken as is, whatever the architecture asked for.
//! 4. The snapshot id is the digest of the chosen **platform manifest** (never the index digest).
//!    Every fetched document is hashed; a reference digest or `Docker-Content-Digest` that differs
//!    is `DigestMismatch`.
//!
//! # Credentials
//! Looked up in the Docker config for the reference's host on every resolve and open, so a fixed
//! config heals without a restart: `auths[host].auth` (base64 `user:password`) is sent as HTTP
//! Basic or to the token endpoint; an entry with an empty username and an `identitytoken` is an
//! OAuth2 refresh token, exchanged with the `refresh_token` grant. A missing config or entry means
//! anonymous access (anonymous bearer tokens included).
//!
//! # Layers
//! The current media type of a slot always wins; a legacy one fills the slot only while it is empty.
//! **Unknown layer media types are ignored** (debug log), unlike ironcore's Go library, which fails
//! the whole image with "unknown layer type": an image that carries an extra artifact (for example
//! a `…disk.img` layer) still has a perfectly usable rootfs, and the volume provider only ever reads
//! that one layer. No rootfs layer is `NoRootfs`. The config blob is fetched, verified and must be
//! a JSON object (its media type is not checked, as in Go).
//!
//! # Streaming
//! The rootfs blob is passed on chunk by chunk as the HTTP body delivers it; it is never buffered
//! whole. `oci-client` hashes it; the stream also counts it and, instead of ending cleanly, yields
//! an `io::Error` of kind `InvalidData` wrapping [`Error::DigestMismatch`] when the size or digest
//! differs from the layer descriptor. A body that stalls longer than [`OciOptions::read_timeout`]
//! yields `TimedOut` (wrapping `Unavailable`).
//!
//! # Resuming
//! [`OciClient::open_rootfs_from`] continues a rootfs download that stopped at byte `offset`; the
//! caller hands in the layer's first `offset` bytes as it wrote them (a stream, read back from
//! the device). Resolution, layer choice and the config check are those of
//! [`OciClient::open_rootfs`]; then:
//! - `offset` 0 or at least the layer size: the whole layer, as `open_rootfs` gives it
//!   ([`Rootfs::start`] 0); the prefix is dropped unread.
//! - otherwise the blob is requested with `Range: bytes=<offset>-`:
//!   - `206` with a content length of `size - offset` (or none): [`Rootfs::start`] is `offset`
//!     and [`Rootfs::data`] yields the bytes from `offset` on. Before its first byte, the prefix
//!     is read to its end and hashed; every byte of the rest is hashed as it passes, and the
//!     stream ends cleanly only if the sha256 of prefix and rest together is the layer digest.
//!     Neither part is buffered whole. A prefix of more or fewer than `offset` bytes, or a
//!     whole that hashes to another digest, ends the stream with the `InvalidData` /
//!     [`Error::DigestMismatch`] error of a corrupt whole layer; an error reading the prefix ends
//!     it with an `io::Error` (kind `Other`) wrapping [`Error::Unavailable`]. The rest is guarded
//!     like a whole layer (idle timeout, counted against `size - offset`); the time spent
//!     reading the prefix back is not limited.
//!   - `206` with another content length: the registry is taken as one that cannot serve ranges;
//!     that answer is dropped and the whole layer is downloaded (start 0).
//!   - `200` (the range ignored): that answer is the whole layer, digest-verified as by
//!     `open_rootfs` (start 0); the prefix is dropped unread.
//!   - `416` (the range refused): the whole layer is downloaded (start 0).
//!   - any other failure of the request: the error classes of `open_rootfs`.
//!
//! # Error classes
//! Unknown repository/tag/digest → `NotFound`; bad reference → `InvalidReference`; no platform →
//! `NoPlatformMatch`; no rootfs → `NoRootfs`; corrupt bytes → `DigestMismatch` (retryable);
//! unreachable registry, timeouts, `408`/`429`/`5xx`, refused credentials, unusable Docker config →
//! `Unavailable` (retryable); bad JSON or unsupported media types → `Malformed`.
//!
//! # Why hand-written
//! `oci-client` 0.18 (with `oci-spec` 0.10 and `docker_credential` 1.4) does the transport. These
//! pieces stay ours because the maintained crates get them wrong for ironcore images; each gap is
//! shown against a real registry in `tests/maintained_client_gaps.rs`, next to our handling:
//! - **References** ([`Reference`]): `oci-spec`'s parser, which `oci-client` uses, normalises
//!   `ubuntu:22.04` to `docker.io/library/ubuntu:22.04`, adds `latest` to a reference without tag,
//!   and rejects a bracketed IPv6 host such as `[::1]:5000`. ironcore references need an explicit
//!   host and no normalisation, so we parse them and hand `oci-client` the parts.
//! - **Platform pick** (`manifest::pick_platform`): `oci-client`'s `platform_resolver` is fixed
//!   per client and by default picks the platform of the machine the code runs on, so a two-entry index resolves without any architecture asked for, where ironcore
//!   needs `NoPlatformMatch`. Its index entries also read architectures through `oci-spec`'s `Arch`,
//!   which turns `armbe` into `arm64be`, while the rule compares the strings exactly. We fetch raw
//!   documents and apply the rule to our string-typed structs.
//! - **Document types**: `oci-client` accepts Docker manifests and manifest lists as if they were
//!   OCI documents; ironcore accepts only OCI manifests and indexes. (It ignores the HTTP
//!   `Content-Type` too, which is harmless: the shape decides every document without `mediaType`,
//!   like the builder's per-arch manifests, and the registry refuses a Docker manifest without one.)
//! - **Identity tokens**: `oci-client`'s `RegistryAuth` is anonymous, Basic or a ready bearer
//!   token, and its token request is always a GET, so a Docker `identitytoken` cannot be used. We
//!   do the OAuth2 `refresh_token` grant (a form POST to the challenge's realm) and hand
//!   `oci-client` the resulting bearer token.
//! - **Changed credentials**: an `oci-client` client keeps the first credentials it is given for a
//!   registry and ignores later ones, so fixed credentials would never take effect in a long-running
//!   daemon. We keep one client per (host, credentials).
//! - **Plain HTTP for loopback**: `oci-client` reaches a fixed list of hosts over HTTP and
//!   everything else over HTTPS; containerd's rule also reaches `localhost` and loopback addresses
//!   over HTTP. We choose the protocol per host.
//! - **The rootfs stream guard** (`stream`): `oci-client`'s blob stream checks the digest only:
//!   a wrong descriptor size with the right digest passes, more bytes than described are read to
//!   the end before anything fails, and a mismatch is an `io::Error` of kind `Other`. We count
//!   the bytes against the descriptor and give the error kinds above.
//! - **Time limits**: `oci-client` has only connect and per-read timeouts (none by default: it
//!   waits forever for a registry that accepts and never answers); we bound each manifest, config
//!   and token request as a whole and the wait for each body chunk.
//!
//! # TLS
//! `oci-client` is built on `rustls` without a crypto provider of its own (the `ring` one is
//! already in the workspace, through the other HTTP client); [`OciClient::new`] installs `ring` as
//! the process default unless the process chose one before.

mod auth;
mod error;
mod manifest;
mod reference;
mod registry;
mod resume;
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
use oci_client::client::SizedStream;
use reference::is_sha256_digest;
use registry::{RangedBlob, RegistryClient, Session};

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
struct ResolvedManifest {
    /// The repository pinned to the platform manifest (`host/repo@sha256:…`).
    reference: Reference,
    /// Digest of the platform manifest (the snapshot id).
    digest: String,
    /// The platform manifest.
    manifest: Manifest,
}

/// Resolves ironcore image references and opens their rootfs (see the crate docs for the rules).
pub struct OciClient {
    client: RegistryClient,
}

impl OciClient {
    /// Builds a client. Fails only if a CA file cannot be read or the HTTP client cannot be built.
    pub fn new(opts: OciOptions) -> Result<OciClient, Error> {
        Ok(OciClient {
            client: RegistryClient::new(opts)?,
        })
    }

    /// Resolves `reference` for `architecture` to its platform manifest (crate docs, "Resolution").
    async fn resolve_manifest(
        &self,
        session: &Session<'_>,
        r: &Reference,
        architecture: Option<&str>,
    ) -> Result<ResolvedManifest, Error> {
        let architecture = architecture.filter(|a| !a.is_empty());
        let top = self.fetch_document(session, r, r.object()).await?;
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
                let (digest, doc) = self.fetch_document(session, r, &entry.digest).await?;
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
        session: &Session<'_>,
        r: &Reference,
        object: &str,
    ) -> Result<(String, Document), Error> {
        let (digest, body) = self.client.get_manifest(session, object).await?;
        if object.starts_with("sha256:") && digest != object {
            return Err(Error::DigestMismatch(format!(
                "manifest {}@{object}: content hashes to {digest}",
                r.locator()
            )));
        }
        let doc = parse_document(&body).map_err(|e| match e {
            Error::Malformed(m) => Error::Malformed(format!("{}@{object}: {m}", r.locator())),
            other => other,
        })?;
        Ok((digest, doc))
    }

    /// Fetches and parses the config blob of a resolved manifest.
    async fn config(
        &self,
        session: &Session<'_>,
        resolved: &ResolvedManifest,
    ) -> Result<ImageConfig, Error> {
        let c = &resolved.manifest.config;
        if !is_sha256_digest(&c.digest) {
            return Err(Error::Malformed(format!(
                "config digest {:?} is not sha256:<hex>",
                c.digest
            )));
        }
        let body = self
            .client
            .get_small_blob(session, &c.digest, c.size)
            .await?;
        ImageConfig::parse(&body)
    }

    /// Opens the rootfs layer of `reference`: the whole layer, or with `resume` =
    /// `Some((offset, prefix))` and `0 < offset < size` only its bytes from `offset` on, verified
    /// together with `prefix` (crate docs, "Resuming"). One path for both up to the blob GET.
    async fn open(
        &self,
        reference: &str,
        architecture: Option<&str>,
        resume: Option<(u64, BlobStream)>,
    ) -> Result<Rootfs, Error> {
        let r = Reference::parse(reference)?;
        let session = self.client.session(&r).await?;
        let resolved = self.resolve_manifest(&session, &r, architecture).await?;
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
        self.config(&session, &resolved).await?;
        let manifest_digest = resolved.digest;
        match resume {
            Some((offset, prefix)) if offset > 0 && offset < rootfs.size => {
                let digest = &rootfs.digest;
                match self.client.get_blob_from(&session, digest, offset).await? {
                    RangedBlob::Partial(body) => {
                        let rest = rootfs.size - offset;
                        match body.content_length {
                            Some(len) if len != rest => debug!(
                                digest = %digest, offset, len, rest,
                                "the registry answered 206 with the wrong length: \
                                 downloading the whole layer"
                            ),
                            _ => {
                                debug!(digest = %digest, offset, rest, "resuming rootfs (206)");
                                let idle = self.client.read_timeout();
                                let rest = stream::guard(body.stream, digest, rest, idle);
                                let data = resume::verify_resumed(prefix, rest, digest, offset);
                                return Ok(Rootfs {
                                    size: rootfs.size,
                                    start: offset,
                                    layer_digest: rootfs.digest,
                                    manifest_digest,
                                    data,
                                });
                            }
                        }
                    }
                    RangedBlob::Full(body) => {
                        debug!(
                            digest = %digest, offset,
                            "the registry ignored the range (200): streaming the whole layer"
                        );
                        return self.whole_layer(body, rootfs, manifest_digest);
                    }
                    RangedBlob::NotSatisfiable => debug!(
                        digest = %digest, offset,
                        "the registry refused the range (416): downloading the whole layer"
                    ),
                }
            }
            Some((offset, _)) => debug!(
                digest = %rootfs.digest, offset, size = rootfs.size,
                "nothing to resume at this offset: downloading the whole layer"
            ),
            None => {}
        }
        let blob = self.client.get_blob(&session, &rootfs.digest).await?;
        self.whole_layer(blob, rootfs, manifest_digest)
    }

    /// The whole rootfs layer `rootfs` from its digest-verifying body `blob`, guarded.
    fn whole_layer(
        &self,
        blob: SizedStream,
        rootfs: Descriptor,
        manifest_digest: String,
    ) -> Result<Rootfs, Error> {
        if let Some(len) = blob.content_length {
            if len != rootfs.size {
                return Err(Error::DigestMismatch(format!(
                    "blob {}: registry sends {len} bytes, the descriptor says {}",
                    rootfs.digest, rootfs.size
                )));
            }
        }
        debug!(digest = %rootfs.digest, size = rootfs.size, "streaming rootfs");
        let data = stream::guard(
            blob.stream,
            &rootfs.digest,
            rootfs.size,
            self.client.read_timeout(),
        );
        Ok(Rootfs {
            size: rootfs.size,
            start: 0,
            layer_digest: rootfs.digest,
            manifest_digest,
            data,
        })
    }

    /// Resolves `reference` (tag or digest) for `architecture` (`None`: an index must have
    /// exactly one entry) to the platform manifest digest.
    pub async fn resolve(
        &self,
        reference: &str,
        architecture: Option<&str>,
    ) -> Result<ResolvedImage, Error> {
        let span = info_span!("oci_resolve", reference, architecture);
        async {
            let r = Reference::parse(reference)?;
            let session = self.client.session(&r).await?;
            let resolved = self.resolve_manifest(&session, &r, architecture).await?;
            Ok(ResolvedImage {
                locator: resolved.reference.locator(),
                digest: resolved.digest,
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
        self.open(reference, architecture, None)
            .instrument(span)
            .await
    }

    /// Opens the rootfs layer of `reference` from byte `offset` on, after a download that stopped
    /// there (crate docs, "Resuming"). `prefix` must yield the layer's first `offset` bytes as
    /// they were written (read back from wherever the earlier download went); they are hashed
    /// with the rest, so the whole layer is verified. [`Rootfs::start`] says where
    /// [`Rootfs::data`] begins: `offset` when the registry served the range, else 0 (the whole
    /// layer, `prefix` dropped unread).
    pub async fn open_rootfs_from(
        &self,
        reference: &str,
        architecture: Option<&str>,
        offset: u64,
        prefix: BlobStream,
    ) -> Result<Rootfs, Error> {
        let span = info_span!("oci_open_rootfs_from", reference, architecture, offset);
        self.open(reference, architecture, Some((offset, prefix)))
            .instrument(span)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn the_client_futures_can_move_between_threads() {
        // The volume provider runs them on a multi-threaded runtime behind `async_trait`.
        let client = OciClient::new(OciOptions::default()).expect("client");
        assert_send(&client.resolve("h/r:t", None));
        assert_send(&client.open_rootfs("h/r:t", None));
        let prefix: BlobStream = Box::pin(futures::stream::empty());
        assert_send(&client.open_rootfs_from("h/r:t", None, 1, prefix));
    }
}
