//! A small OCI distribution client over `reqwest`: manifest and blob GETs with token/basic auth,
//! and the mapping of HTTP outcomes onto [`Error`] classes.
//!
//! | outcome | class |
//! |---|---|
//! | connect error, timeout, broken body, `408`, `429`, `5xx` | `Unavailable` (retryable) |
//! | `401`/`403` after authenticating | `Unavailable` ("access denied": fix the credentials, it heals) |
//! | `404` | `NotFound` |
//! | `400` with `NAME_INVALID`/`TAG_INVALID` | `InvalidReference` |
//! | any other status | `Malformed` |

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::Error;
use bytes::{Bytes, BytesMut};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use reqwest::{Response, StatusCode};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tracing::debug;

use super::auth::{self, Challenge, Credentials};
use super::manifest::media_types;
use super::reference::Reference;
use super::OciOptions;

/// Largest manifest or index accepted (the distribution spec suggests 4 MiB).
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Largest config blob accepted.
pub(crate) const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// Token lifetime when the token endpoint does not say.
const DEFAULT_TOKEN_SECS: u64 = 60;

/// A fetched manifest-endpoint document.
pub(crate) struct FetchedManifest {
    /// `Content-Type` of the response.
    pub content_type: Option<String>,
    /// The raw body.
    pub body: Bytes,
    /// `sha256:<hex>` of the body.
    pub digest: String,
}

#[derive(Clone)]
struct CachedAuth {
    header: HeaderValue,
    expires: Option<Instant>,
}

/// The HTTP side of [`super::OciImageSource`].
pub(crate) struct RegistryClient {
    http: reqwest::Client,
    opts: OciOptions,
    /// Authorization per `host/repository`.
    auth_cache: Mutex<HashMap<String, CachedAuth>>,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Classifies a transport-level failure.
pub(crate) fn transport_error(what: &str, e: &reqwest::Error) -> Error {
    if e.is_builder() {
        return Error::InvalidReference(format!("{what}: {e}"));
    }
    let mut msg = format!("{what}: {e}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    Error::Unavailable(msg)
}

impl RegistryClient {
    pub(crate) fn new(opts: OciOptions) -> Result<RegistryClient, Error> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .user_agent(opts.user_agent.clone())
            .danger_accept_invalid_certs(opts.insecure_skip_tls_verify);
        for path in &opts.ca_certificates {
            let pem = std::fs::read(path).map_err(|e| {
                Error::Unavailable(format!("CA certificate {}: {e}", path.display()))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                Error::Unavailable(format!("CA certificate {}: {e}", path.display()))
            })?;
            b = b.add_root_certificate(cert);
        }
        let http = b
            .build()
            .map_err(|e| Error::Unavailable(format!("cannot build HTTP client: {e}")))?;
        Ok(RegistryClient {
            http,
            opts,
            auth_cache: Mutex::new(HashMap::new()),
        })
    }

    /// Longest wait for the next chunk of a blob body.
    pub(crate) fn read_timeout(&self) -> Duration {
        self.opts.read_timeout
    }

    /// `http` for plain-HTTP hosts (the configured list, and loopback hosts when allowed), else
    /// `https`.
    fn scheme(&self, host: &str) -> &'static str {
        if self.opts.plain_http.iter().any(|h| h == host)
            || (self.opts.plain_http_localhost && is_loopback_host(host))
        {
            "http"
        } else {
            "https"
        }
    }

    fn url(&self, r: &Reference, kind: &str, object: &str) -> String {
        format!(
            "{}://{}/v2/{}/{}/{}",
            self.scheme(r.host()),
            r.host(),
            r.repository(),
            kind,
            object
        )
    }

    /// GETs the manifest or index `object` (tag or digest) of `r`'s repository.
    pub(crate) async fn get_manifest(
        &self,
        r: &Reference,
        object: &str,
    ) -> Result<FetchedManifest, Error> {
        let url = self.url(r, "manifests", object);
        let what = format!("manifest {}@{object}", r.locator());
        let resp = self
            .get(
                r,
                &url,
                Some(media_types::MANIFEST_ACCEPT),
                Some(self.opts.request_timeout),
                &what,
            )
            .await?;
        let content_type = header_str(resp.headers(), CONTENT_TYPE.as_str());
        let header_digest = header_str(resp.headers(), "docker-content-digest");
        let body = read_limited(resp, MAX_MANIFEST_BYTES, &what).await?;
        let digest = sha256_digest(&body);
        if let Some(h) = header_digest.filter(|h| h.starts_with("sha256:")) {
            if h != digest {
                return Err(Error::DigestMismatch(format!(
                    "{what}: body hashes to {digest} but the registry says {h}"
                )));
            }
        }
        Ok(FetchedManifest {
            content_type,
            body,
            digest,
        })
    }

    /// GETs a small blob (the config) completely, checking size and digest.
    pub(crate) async fn get_small_blob(
        &self,
        r: &Reference,
        digest: &str,
        size: u64,
    ) -> Result<Bytes, Error> {
        let what = format!("blob {}@{digest}", r.locator());
        if size > MAX_CONFIG_BYTES {
            return Err(Error::Malformed(format!(
                "{what}: {size} bytes is too large for a config"
            )));
        }
        let resp = self.get_blob(r, digest).await?;
        let body = read_limited(resp, MAX_CONFIG_BYTES as usize, &what).await?;
        let actual = sha256_digest(&body);
        if actual != digest || body.len() as u64 != size {
            return Err(Error::DigestMismatch(format!(
                "{what}: got {} bytes hashing to {actual}, expected {size} bytes",
                body.len()
            )));
        }
        Ok(body)
    }

    /// GETs a blob and returns the response once its status is 200 (body not read yet).
    pub(crate) async fn get_blob(&self, r: &Reference, digest: &str) -> Result<Response, Error> {
        let url = self.url(r, "blobs", digest);
        let what = format!("blob {}@{digest}", r.locator());
        // No total timeout: a rootfs can take minutes. The body is guarded by the idle timeout.
        let timeout = self.opts.connect_timeout + self.opts.read_timeout;
        let fut = self.get(r, &url, None, None, &what);
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| Error::Unavailable(format!("{what}: no response within {timeout:?}")))?
    }

    /// One authenticated GET: uses the cached authorization, answers one challenge, maps statuses.
    async fn get(
        &self,
        r: &Reference,
        url: &str,
        accept: Option<&str>,
        timeout: Option<Duration>,
        what: &str,
    ) -> Result<Response, Error> {
        let key = r.locator();
        let mut authorization = self.cached_auth(&key);
        let mut challenged = false;
        loop {
            let mut req = self.http.get(url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            if let Some(h) = &authorization {
                req = req.header(AUTHORIZATION, h.clone());
            }
            debug!(%url, "GET");
            let resp = req.send().await.map_err(|e| transport_error(what, &e))?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                let challenge = header_str(resp.headers(), WWW_AUTHENTICATE.as_str())
                    .and_then(|h| auth::parse_challenge(&h));
                if let Some(challenge) = challenge {
                    if let Some(h) = self.authorize(r, &challenge, what).await? {
                        authorization = Some(h);
                        continue;
                    }
                }
            }
            if status.is_success() {
                return Ok(resp);
            }
            return Err(status_error(what, resp).await);
        }
    }

    fn cached_auth(&self, key: &str) -> Option<HeaderValue> {
        let mut cache = self.auth_cache.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(key) {
            Some(c) if c.expires.is_none_or(|e| e > Instant::now()) => Some(c.header.clone()),
            Some(_) => {
                cache.remove(key);
                None
            }
            None => None,
        }
    }

    /// Answers a challenge: returns the `Authorization` value to retry with (cached), or `None`
    /// when there is nothing to try (no credentials for a Basic challenge).
    async fn authorize(
        &self,
        r: &Reference,
        challenge: &Challenge,
        what: &str,
    ) -> Result<Option<HeaderValue>, Error> {
        let config = auth::docker_config_path(self.opts.docker_config.as_deref());
        let creds = auth::lookup(config.as_deref(), r.host()).await?;
        debug!(
            host = r.host(),
            has_credentials = creds.is_some(),
            ?challenge,
            "registry asks to authenticate"
        );
        let (header, expires) = match (challenge, &creds) {
            (_, Some(Credentials::RegistryToken(t))) => (bearer(t)?, None),
            (Challenge::Basic, Some(Credentials::Basic { username, password })) => {
                (basic(username, password)?, None)
            }
            (Challenge::Basic, _) => return Ok(None),
            (Challenge::Bearer { realm, service, .. }, creds) => {
                let scope = format!("repository:{}:pull", r.repository());
                let (token, secs) = self
                    .fetch_token(realm, service.as_deref(), &scope, creds.as_ref(), what)
                    .await?;
                // Renew a little early.
                let life = Duration::from_secs(secs.max(10)) - Duration::from_secs(5);
                (bearer(&token)?, Some(Instant::now() + life))
            }
        };
        let mut cache = self.auth_cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(
            r.locator(),
            CachedAuth {
                header: header.clone(),
                expires,
            },
        );
        Ok(Some(header))
    }

    /// Gets a bearer token at `realm` (GET with optional Basic credentials, or the OAuth2 refresh
    /// token grant for identity tokens).
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        creds: Option<&Credentials>,
        what: &str,
    ) -> Result<(String, u64), Error> {
        let what = format!("{what}: token from {realm}");
        let mut url = reqwest::Url::parse(realm)
            .map_err(|e| Error::Unavailable(format!("{what}: invalid realm: {e}")))?;
        let req = match creds {
            Some(Credentials::IdentityToken(refresh)) => {
                let mut form = reqwest::Url::parse("http://form.invalid/")
                    .map_err(|e| Error::Unavailable(format!("{what}: {e}")))?;
                {
                    let mut q = form.query_pairs_mut();
                    q.append_pair("grant_type", "refresh_token");
                    q.append_pair("refresh_token", refresh);
                    q.append_pair("client_id", "cephvol");
                    q.append_pair("scope", scope);
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                }
                let body = form.query().unwrap_or("").to_string();
                self.http
                    .post(url)
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(body)
            }
            other => {
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair("scope", scope);
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                }
                let req = self.http.get(url);
                match other {
                    Some(Credentials::Basic { username, password }) => {
                        req.basic_auth(username, Some(password))
                    }
                    _ => req,
                }
            }
        };
        let resp = req
            .timeout(self.opts.request_timeout)
            .send()
            .await
            .map_err(|e| transport_error(&what, &e))?;
        if !resp.status().is_success() {
            return Err(status_error(&what, resp).await);
        }
        let body = read_limited(resp, 1024 * 1024, &what).await?;
        let t: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| Error::Unavailable(format!("{what}: invalid token response: {e}")))?;
        let token = t
            .access_token
            .filter(|t| !t.is_empty())
            .or(t.token.filter(|t| !t.is_empty()))
            .ok_or_else(|| Error::Unavailable(format!("{what}: no token in response")))?;
        Ok((token, t.expires_in.unwrap_or(DEFAULT_TOKEN_SECS)))
    }
}

fn bearer(token: &str) -> Result<HeaderValue, Error> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| Error::Unavailable("token is not a valid header value".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

fn basic(user: &str, pass: &str) -> Result<HeaderValue, Error> {
    use base64::Engine as _;
    let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let mut v = HeaderValue::from_str(&format!("Basic {enc}"))
        .map_err(|_| Error::Unavailable("credentials are not a valid header value".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
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

/// Reads a whole body, failing if it is larger than `limit`.
async fn read_limited(mut resp: Response, limit: usize, what: &str) -> Result<Bytes, Error> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(Error::Malformed(format!(
            "{what}: larger than {limit} bytes"
        )));
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(what, &e))? {
        if buf.len() + chunk.len() > limit {
            return Err(Error::Malformed(format!(
                "{what}: larger than {limit} bytes"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Maps an unsuccessful response onto an error class (see the module docs).
async fn status_error(what: &str, resp: Response) -> Error {
    let status = resp.status();
    let body = read_limited(resp, 64 * 1024, what)
        .await
        .unwrap_or_default();
    let envelope: Option<ErrorEnvelope> = serde_json::from_slice(&body).ok();
    let codes: Vec<String> = envelope
        .as_ref()
        .map(|e| e.errors.iter().map(|x| x.code.clone()).collect())
        .unwrap_or_default();
    let detail = match &envelope {
        Some(e) if !e.errors.is_empty() => e
            .errors
            .iter()
            .map(|x| format!("{}: {}", x.code, x.message))
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::from_utf8_lossy(&body).chars().take(200).collect(),
    };
    let msg = format!("{what}: HTTP {status}: {detail}");
    match status {
        StatusCode::NOT_FOUND => Error::NotFound(msg),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            Error::Unavailable(format!("access denied (check registry credentials): {msg}"))
        }
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => Error::Unavailable(msg),
        s if s.is_server_error() => Error::Unavailable(msg),
        StatusCode::BAD_REQUEST
            if codes
                .iter()
                .any(|c| c == "NAME_INVALID" || c == "TAG_INVALID") =>
        {
            Error::InvalidReference(msg)
        }
        _ => Error::Malformed(msg),
    }
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
