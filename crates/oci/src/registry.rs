//! The distribution transport: `oci-client` does the HTTP (manifest and blob GETs, anonymous and
//! Basic bearer-token auth, HTTP Basic, digest checks of manifests and blobs); this module picks
//! the `oci-client` [`Client`] for a host and its current credentials, adds the identity-token
//! exchange `oci-client` lacks, bounds every request in time, and maps `oci-client`'s errors onto
//! [`Error`] classes.
//!
//! | outcome | class |
//! |---|---|
//! | connect error, timeout, broken body, `408`, `429`, `5xx` | `Unavailable` (retryable) |
//! | `401`/`403`, `UNAUTHORIZED`/`DENIED`, refused token request | `Unavailable` ("access denied": fix the credentials, it heals) |
//! | `404`, `MANIFEST_UNKNOWN`/`NAME_UNKNOWN`/`BLOB_UNKNOWN` | `NotFound` |
//! | `NAME_INVALID`/`TAG_INVALID` | `InvalidReference` |
//! | `416` to a blob GET with a `Range` header | no error: the caller falls back to the whole blob |
//! | body or header digest differs from the content | `DigestMismatch` (retryable) |
//! | any other status or unparsable answer | `Malformed` |
//!
//! One [`Client`] per (host, credentials): `oci-client` keeps the first credentials it is given for
//! a registry for the life of a client and never replaces them, so a client is reused only while
//! the Docker config still yields the same credentials (see the crate docs, "Why hand-written").

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use oci_client::client::{
    BlobResponse, Certificate, CertificateEncoding, ClientConfig, ClientProtocol, SizedStream,
};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;
use sha2::{Digest as _, Sha256};
use tracing::debug;

use crate::auth::{self, Challenge, Credentials};
use crate::manifest::media_types;
use crate::{Error, OciOptions, Reference};

/// Manifests larger than this are refused (registries themselves refuse more than 4 MiB).
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Config blobs larger than this are refused.
pub(crate) const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// At most this many `oci-client` clients are kept (one per host and credentials).
const MAX_CLIENTS: usize = 32;

/// What the manifest requests accept. Docker types are accepted on the wire only to reject them
/// with a clear error instead of a 404 from content negotiation.
const MANIFEST_ACCEPT: &[&str] = &[
    media_types::OCI_INDEX,
    media_types::OCI_MANIFEST,
    media_types::DOCKER_MANIFEST_LIST,
    media_types::DOCKER_MANIFEST,
];

/// The registry side of [`crate::OciClient`].
pub(crate) struct RegistryClient {
    opts: OciOptions,
    certificates: Vec<Certificate>,
    user_agent: &'static str,
    /// For the identity-token exchange only (challenge probe and refresh grant).
    http: reqwest::Client,
    clients: Mutex<Vec<(String, RegistryAuth, Client)>>,
    /// Bearer tokens from identity-token exchanges, by `host/repository`.
    exchanged: Mutex<HashMap<String, (String, Instant)>>,
}

/// A [`Client`] and the credentials to send, for one reference's repository.
pub(crate) struct Session<'a> {
    client: Client,
    auth: RegistryAuth,
    reference: &'a Reference,
}

impl RegistryClient {
    /// Reads the CA files and builds the HTTP client of the token exchange.
    pub(crate) fn new(opts: OciOptions) -> Result<RegistryClient, Error> {
        // oci-client's reqwest is built without a TLS crypto provider of its own: install ring as
        // the process default (a no-op if the process already chose one).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut certificates = Vec::new();
        let mut b = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .user_agent(opts.user_agent.clone())
            .danger_accept_invalid_certs(opts.insecure_skip_tls_verify);
        for path in &opts.ca_certificates {
            let pem = std::fs::read(path).map_err(|e| {
                Error::Unavailable(format!("cannot read CA file {}: {e}", path.display()))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                Error::Unavailable(format!("CA certificate {}: {e}", path.display()))
            })?;
            b = b.add_root_certificate(cert);
            certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem,
            });
        }
        let http = b
            .build()
            .map_err(|e| Error::Unavailable(format!("cannot build HTTP client: {e}")))?;
        // oci-client wants a 'static User-Agent: leak the one string once per OciClient.
        let user_agent: &'static str = Box::leak(opts.user_agent.clone().into_boxed_str());
        Ok(RegistryClient {
            opts,
            certificates,
            user_agent,
            http,
            clients: Mutex::new(Vec::new()),
            exchanged: Mutex::new(HashMap::new()),
        })
    }

    /// Longest wait for the next chunk of a blob body.
    pub(crate) fn read_timeout(&self) -> Duration {
        self.opts.read_timeout
    }

    /// Whether `host` is reached over plain HTTP: the configured list, and loopback hosts when
    /// allowed (containerd's rule). `oci-client` only knows a fixed list.
    fn plain_http(&self, host: &str) -> bool {
        self.opts.plain_http.iter().any(|h| h == host)
            || (self.opts.plain_http_localhost && is_loopback_host(host))
    }

    /// The credentials of `r`'s host as they are now, and the client that sends them.
    pub(crate) async fn session<'a>(&self, r: &'a Reference) -> Result<Session<'a>, Error> {
        let config = auth::docker_config_path(self.opts.docker_config.as_deref());
        let creds = auth::lookup(config.as_deref(), r.host()).await?;
        debug!(
            host = r.host(),
            has_credentials = creds.is_some(),
            "registry credentials"
        );
        let auth = match creds {
            None => RegistryAuth::Anonymous,
            Some(Credentials::Basic { username, password }) => {
                RegistryAuth::Basic(username, password)
            }
            Some(Credentials::IdentityToken(refresh)) => self.identity_auth(r, &refresh).await?,
        };
        let client = self.client_for(r.host(), &auth)?;
        Ok(Session {
            client,
            auth,
            reference: r,
        })
    }

    /// The client for `host` sending `auth`, reused while both are the same.
    fn client_for(&self, host: &str, auth: &RegistryAuth) -> Result<Client, Error> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, c)) = clients.iter().find(|(h, a, _)| h == host && a == auth) {
            return Ok(c.clone());
        }
        let config = ClientConfig {
            protocol: if self.plain_http(host) {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: self.opts.insecure_skip_tls_verify,
            extra_root_certificates: self.certificates.clone(),
            // Index resolution is ironcore's rule, done by the caller.
            platform_resolver: None,
            connect_timeout: Some(self.opts.connect_timeout),
            // The guards of this crate time requests and body chunks (deterministic error kinds).
            read_timeout: None,
            user_agent: self.user_agent,
            ..ClientConfig::default()
        };
        let client = Client::try_from(config)
            .map_err(|e| Error::Unavailable(format!("cannot build registry client: {e}")))?;
        if clients.len() >= MAX_CLIENTS {
            clients.remove(0);
        }
        clients.push((host.to_string(), auth.clone(), client.clone()));
        Ok(client)
    }

    /// Exchanges an identity token for a bearer token for `r`'s repository (cached until shortly
    /// before it expires). A registry that offers no bearer tokens gets anonymous requests.
    async fn identity_auth(&self, r: &Reference, refresh: &str) -> Result<RegistryAuth, Error> {
        let key = r.locator();
        if let Some((token, until)) = self
            .exchanged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            if *until > Instant::now() {
                return Ok(RegistryAuth::Bearer(token.clone()));
            }
        }
        let scheme = if self.plain_http(r.host()) {
            "http"
        } else {
            "https"
        };
        let probe = format!("{scheme}://{}/v2/", r.host());
        let resp = self
            .http
            .get(&probe)
            .timeout(self.opts.request_timeout)
            .send()
            .await
            .map_err(|e| Error::Unavailable(format!("GET {probe}: {e}")))?;
        let challenge = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(auth::parse_challenge);
        let Some(Challenge::Bearer { realm, service, .. }) = challenge else {
            debug!(
                host = r.host(),
                "no bearer challenge: identity token unused"
            );
            return Ok(RegistryAuth::Anonymous);
        };
        let scope = format!("repository:{}:pull", r.repository());
        let (token, life) = auth::exchange_identity_token(
            &self.http,
            &realm,
            service.as_deref(),
            &scope,
            refresh,
            self.opts.request_timeout,
        )
        .await?;
        // Renew a little early.
        let life = life.max(Duration::from_secs(10)) - Duration::from_secs(5);
        let mut exchanged = self.exchanged.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        exchanged.retain(|_, (_, until)| *until > now);
        exchanged.insert(key, (token.clone(), now + life));
        Ok(RegistryAuth::Bearer(token))
    }

    /// GETs the manifest or index `object` (tag or digest); returns its sha256 digest and body.
    /// `oci-client` checks the body against a digest `object` and against `Docker-Content-Digest`.
    pub(crate) async fn get_manifest(
        &self,
        s: &Session<'_>,
        object: &str,
    ) -> Result<(String, Bytes), Error> {
        let what = format!("manifest {}@{object}", s.reference.locator());
        let image = oci_reference(s.reference, object);
        let fetch = s.client.pull_manifest_raw(&image, &s.auth, MANIFEST_ACCEPT);
        let (body, _) = tokio::time::timeout(self.opts.request_timeout, fetch)
            .await
            .map_err(|_| {
                Error::Unavailable(format!(
                    "{what}: no answer within {:?}",
                    self.opts.request_timeout
                ))
            })?
            .map_err(|e| classify(&what, e))?;
        if body.len() > MAX_MANIFEST_BYTES {
            return Err(Error::Malformed(format!(
                "{what}: larger than {MAX_MANIFEST_BYTES} bytes"
            )));
        }
        Ok((sha256_digest(&body), body))
    }

    /// GETs a small blob (the config) completely, checking size and digest.
    pub(crate) async fn get_small_blob(
        &self,
        s: &Session<'_>,
        digest: &str,
        size: u64,
    ) -> Result<Bytes, Error> {
        let what = format!("blob {}@{digest}", s.reference.locator());
        if size > MAX_CONFIG_BYTES {
            return Err(Error::Malformed(format!(
                "{what}: {size} bytes is too large for a config"
            )));
        }
        let blob = self.get_blob(s, digest).await?;
        let mut data = crate::stream::guard(blob.stream, digest, size, self.opts.read_timeout);
        let mut body = BytesMut::new();
        let read = async {
            while let Some(chunk) = data.next().await {
                body.extend_from_slice(&chunk?);
            }
            Ok::<_, std::io::Error>(())
        };
        match tokio::time::timeout(self.opts.request_timeout, read).await {
            Err(_) => Err(Error::Unavailable(format!(
                "{what}: not read within {:?}",
                self.opts.request_timeout
            ))),
            Ok(Err(e)) => Err(e
                .get_ref()
                .and_then(|i| i.downcast_ref::<Error>())
                .cloned()
                .unwrap_or_else(|| Error::Unavailable(format!("{what}: {e}")))),
            Ok(Ok(())) => Ok(body.freeze()),
        }
    }

    /// GETs a blob: its digest-verifying body stream, once the registry answered 200.
    pub(crate) async fn get_blob(
        &self,
        s: &Session<'_>,
        digest: &str,
    ) -> Result<SizedStream, Error> {
        let what = format!("blob {}@{digest}", s.reference.locator());
        let image = oci_reference(s.reference, digest);
        // Make sure the client holds the session's credentials (blob pulls take none).
        s.client
            .store_auth_if_needed(image.resolve_registry(), &s.auth)
            .await;
        // No total timeout: a rootfs can take minutes. The body is guarded by the idle timeout.
        let timeout = self.opts.connect_timeout + self.opts.read_timeout;
        tokio::time::timeout(timeout, s.client.pull_blob_stream(&image, digest))
            .await
            .map_err(|_| Error::Unavailable(format!("{what}: no response within {timeout:?}")))?
            .map_err(|e| classify(&what, e))
    }

    /// GETs a blob from byte `offset` on (`Range: bytes=<offset>-`), with the time bound and error
    /// classes of [`RegistryClient::get_blob`]. A `416` is an answer ([`RangedBlob::NotSatisfiable`]),
    /// not an error.
    pub(crate) async fn get_blob_from(
        &self,
        s: &Session<'_>,
        digest: &str,
        offset: u64,
    ) -> Result<RangedBlob, Error> {
        let what = format!("blob {}@{digest} from byte {offset}", s.reference.locator());
        let image = oci_reference(s.reference, digest);
        s.client
            .store_auth_if_needed(image.resolve_registry(), &s.auth)
            .await;
        let timeout = self.opts.connect_timeout + self.opts.read_timeout;
        let answer = s
            .client
            .pull_blob_stream_partial(&image, digest, offset, None);
        match tokio::time::timeout(timeout, answer)
            .await
            .map_err(|_| Error::Unavailable(format!("{what}: no response within {timeout:?}")))?
        {
            Ok(BlobResponse::Partial(body)) => Ok(RangedBlob::Partial(body)),
            Ok(BlobResponse::Full(body)) => Ok(RangedBlob::Full(body)),
            Err(OciDistributionError::ServerError { code: 416, .. }) => {
                Ok(RangedBlob::NotSatisfiable)
            }
            Err(e) => Err(classify(&what, e)),
        }
    }
}

/// The registry's answer to a blob GET with a `Range` header.
pub(crate) enum RangedBlob {
    /// `206`: the bytes from the offset on. `oci-client` does not verify them.
    Partial(SizedStream),
    /// `200`: the registry ignored the range; the whole blob, digest-verifying.
    Full(SizedStream),
    /// `416`: the registry refused the range.
    NotSatisfiable,
}

/// `r`'s repository at `object` (tag or digest) as an `oci-client` reference, built from the parts
/// so that `oci-spec`'s normalisation never applies.
fn oci_reference(r: &Reference, object: &str) -> oci_client::Reference {
    let (host, repo) = (r.host().to_string(), r.repository().to_string());
    if object.starts_with("sha256:") {
        oci_client::Reference::with_digest(host, repo, object.to_string())
    } else {
        oci_client::Reference::with_tag(host, repo, object.to_string())
    }
}

/// Maps an `oci-client` error onto an error class (see the module docs).
fn classify(what: &str, e: OciDistributionError) -> Error {
    use OciDistributionError as E;
    let denied =
        |m: String| Error::Unavailable(format!("access denied (check registry credentials): {m}"));
    let msg = format!("{what}: {e}");
    match e {
        E::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|x| &x.code).collect();
            let any = |want: &[OciErrorCode]| codes.iter().any(|c| want.contains(c));
            if any(&[
                OciErrorCode::ManifestUnknown,
                OciErrorCode::NameUnknown,
                OciErrorCode::BlobUnknown,
                OciErrorCode::NotFound,
            ]) {
                Error::NotFound(msg)
            } else if any(&[OciErrorCode::NameInvalid, OciErrorCode::TagInvalid]) {
                Error::InvalidReference(msg)
            } else if any(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]) {
                denied(msg)
            } else if any(&[OciErrorCode::Toomanyrequests]) {
                Error::Unavailable(msg)
            } else {
                Error::Malformed(msg)
            }
        }
        E::ServerError { code, .. } => match code {
            404 => Error::NotFound(msg),
            401 | 403 => denied(msg),
            408 | 429 | 500..=599 => Error::Unavailable(msg),
            _ => Error::Malformed(msg),
        },
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => denied(msg),
        E::DigestError(DigestError::VerificationError { .. }) => Error::DigestMismatch(msg),
        E::RequestError(_)
        | E::IoError(_)
        | E::RegistryTokenDecodeError(_)
        | E::GenericError(_) => Error::Unavailable(msg),
        E::UnsupportedMediaTypeError(_) => {
            Error::Malformed(format!("{what}: unsupported media type: {e}"))
        }
        E::UnsupportedSchemaVersionError(1) => Error::Malformed(format!(
            "{what}: unsupported media type (Docker schema 1 manifest)"
        )),
        E::DigestError(_)
        | E::ConfigConversionError(_)
        | E::HeaderValueError(_)
        | E::ImageManifestNotFoundError(_)
        | E::ImageIndexParsingNoPlatformResolverError
        | E::IncompatibleLayerMediaTypeError(_)
        | E::JsonError(_)
        | E::ManifestEncodingError(_)
        | E::ManifestParsingError(_)
        | E::PushNoDataError
        | E::PushLayerNoDataError
        | E::PullNoLayersError
        | E::RegistryNoDigestError
        | E::RegistryNoLocationError
        | E::SpecViolationError(_)
        | E::UrlParseError(_)
        | E::UnsupportedSchemaVersionError(_)
        | E::VersionedParsingError(_) => Error::Malformed(msg),
    }
}

/// `sha256:<hex>` of `data`.
pub(crate) fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Whether `host` (with optional port) is `localhost` or a loopback address (containerd's
/// `MatchLocalhost`).
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(n, _)| n)
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_recognised_with_and_without_ports() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "[::1]",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "ghcr.io",
            "10.0.0.1:5000",
            "[fe80::1]:5000",
            "localhost.example.com",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
