//! Registry credentials from the Docker config file, and the one token flow `oci-client` lacks.
//!
//! Credentials are read with the `docker_credential` crate, which follows Docker's rules:
//! `credHelpers[host]`, then the inline `auths[host]` entry (`identitytoken`, else `auth` = base64
//! `user:password`, else `username`/`password`; keys like `https://host/v1/` match `host`), then
//! `credsStore`. An entry with an `identitytoken` (its username empty) is an OAuth2 refresh token.
//! The config file is [`super::OciOptions::docker_config`], else `$DOCKER_CONFIG/config.json`, else
//! `$HOME/.docker/config.json`; a missing file, or no entry for the host, means anonymous access.
//! Docker's rarely used `registrytoken` field is not read (`docker_credential` does not know it and
//! `docker login` never writes it). Secrets never appear in `Debug` output or logs.
//!
//! Hand-written here, because `oci-client` cannot do it (its `RegistryAuth` has no variant for it,
//! and its token request is always a GET): exchanging an identity token for a bearer token with the
//! OAuth2 `refresh_token` grant (a form POST to the challenge's realm). The challenge itself is
//! parsed with the `http-auth` crate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Error;
use docker_credential::{CredentialRetrievalError, DockerCredential};
use serde::Deserialize;
use std::fmt;
use tracing::debug;

/// Credentials for one registry host.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Username and password (sent as HTTP Basic, or to the token endpoint).
    Basic {
        /// User name.
        username: String,
        /// Password or access token.
        password: String,
    },
    /// An OAuth2 refresh token (Docker's `identitytoken`), exchanged at the token endpoint.
    IdentityToken(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"***")
                .finish(),
            Credentials::IdentityToken(_) => f.write_str("IdentityToken(***)"),
        }
    }
}

/// Where the Docker config file is: `explicit`, else `$DOCKER_CONFIG/config.json`, else
/// `$HOME/.docker/config.json`. `None` if no home is known.
pub fn docker_config_path(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

/// Looks up credentials for `host` in the Docker config at `path` (missing file: `Ok(None)`).
/// An unreadable or invalid config, or a failing credential helper, is
/// [`Error::Unavailable`]: the operator can fix the host and a retry then succeeds. Runs on a
/// blocking thread (a credential helper is a process).
pub async fn lookup(path: Option<&Path>, host: &str) -> Result<Option<Credentials>, Error> {
    let Some(path) = path else { return Ok(None) };
    let text = match tokio::fs::read(path).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Unavailable(format!(
                "cannot read docker config {}: {e}",
                path.display()
            )))
        }
    };
    let (h, shown) = (host.to_string(), path.display().to_string());
    let found = tokio::task::spawn_blocking(move || {
        docker_credential::get_credential_from_reader(text.as_slice(), &h)
    })
    .await
    .map_err(|e| Error::Unavailable(format!("docker config {shown}: {e}")))?;
    match found {
        Ok(DockerCredential::IdentityToken(t)) if !t.is_empty() => {
            Ok(Some(Credentials::IdentityToken(t)))
        }
        Ok(DockerCredential::IdentityToken(_)) => Ok(None),
        Ok(DockerCredential::UsernamePassword(username, password)) => {
            Ok(Some(Credentials::Basic { username, password }))
        }
        Err(CredentialRetrievalError::NoCredentialConfigured) => Ok(None),
        // A helper that has nothing for this host says so on stdout and exits non-zero.
        Err(CredentialRetrievalError::HelperFailure { stdout, stderr, .. })
            if (stdout.clone() + &stderr).contains("credentials not found") =>
        {
            Ok(None)
        }
        Err(CredentialRetrievalError::ConfigReadError) => {
            Err(Error::Unavailable(format!("invalid docker config {shown}")))
        }
        Err(e) => Err(Error::Unavailable(format!(
            "docker config {shown}, credentials for {host}: {e}"
        ))),
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// HTTP Basic.
    Basic,
    /// OAuth2 bearer token: fetch one at `realm`.
    Bearer {
        /// Token endpoint URL.
        realm: String,
        /// `service` parameter, if given.
        service: Option<String>,
        /// `scope` parameter, if given.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value (`Bearer realm="…",service="…"` or `Basic realm="…"`)
/// with `http-auth`; the first Basic or Bearer challenge wins.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let challenges = http_auth::parse_challenges(header).ok()?;
    challenges.iter().find_map(|c| {
        let param = |name: &str| {
            c.params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.to_unescaped())
        };
        if c.scheme.eq_ignore_ascii_case("basic") {
            Some(Challenge::Basic)
        } else if c.scheme.eq_ignore_ascii_case("bearer") {
            Some(Challenge::Bearer {
                realm: param("realm")?,
                service: param("service"),
                scope: param("scope"),
            })
        } else {
            None
        }
    })
}

/// Lifetime of a token whose response names none (Docker's default).
const DEFAULT_TOKEN_SECS: u64 = 60;

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Exchanges the identity token `refresh` for a bearer token for `scope` at `realm`: a form POST
/// with `grant_type=refresh_token`, as Docker does. Returns the token and its lifetime.
pub async fn exchange_identity_token(
    http: &reqwest::Client,
    realm: &str,
    service: Option<&str>,
    scope: &str,
    refresh: &str,
    timeout: Duration,
) -> Result<(String, Duration), Error> {
    let what = format!("token from {realm}");
    let url = reqwest::Url::parse(realm)
        .map_err(|e| Error::Unavailable(format!("{what}: invalid realm: {e}")))?;
    // Built in a block: the serializer is not `Send` and must not live across an await.
    let body = {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "refresh_token")
            .append_pair("refresh_token", refresh)
            .append_pair("client_id", "cephvol")
            .append_pair("scope", scope);
        if let Some(s) = service {
            form.append_pair("service", s);
        }
        form.finish()
    };
    debug!(%realm, %scope, "exchanging identity token");
    let resp = http
        .post(url)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| Error::Unavailable(format!("{what}: {e}")))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| Error::Unavailable(format!("{what}: {e}")))?;
    if !status.is_success() {
        let detail: String = String::from_utf8_lossy(&body).chars().take(200).collect();
        return Err(Error::Unavailable(format!(
            "access denied (check registry credentials): {what}: HTTP {status}: {detail}"
        )));
    }
    let t: TokenResponse = serde_json::from_slice(&body)
        .map_err(|e| Error::Unavailable(format!("{what}: invalid token response: {e}")))?;
    let token = t
        .access_token
        .filter(|t| !t.is_empty())
        .or(t.token.filter(|t| !t.is_empty()))
        .ok_or_else(|| Error::Unavailable(format!("{what}: no token in response")))?;
    Ok((
        token,
        Duration::from_secs(t.expires_in.unwrap_or(DEFAULT_TOKEN_SECS)),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn bearer_challenges_yield_realm_service_and_scope() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:os/img:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into()),
                scope: Some("repository:os/img:pull,push".into()),
            }
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None);
    }

    fn write_config(dir: &Path, json: &str) -> PathBuf {
        let p = dir.join("config.json");
        std::fs::write(&p, json).unwrap();
        p
    }

    #[tokio::test]
    async fn inline_auths_give_basic_credentials_or_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3:cret");
        let p = write_config(
            dir.path(),
            &format!(
                r#"{{"auths":{{
                    "registry.example.com":{{"auth":"{auth}"}},
                    "https://other.example.com/v1/":{{"username":"bob","password":"pw"}},
                    "token.example.com":{{"auth":"","identitytoken":"refresh-me"}}
                }}}}"#
            ),
        );
        assert_eq!(
            lookup(Some(&p), "registry.example.com").await.unwrap(),
            Some(Credentials::Basic {
                username: "alice".into(),
                password: "s3:cret".into()
            })
        );
        assert_eq!(
            lookup(Some(&p), "other.example.com").await.unwrap(),
            Some(Credentials::Basic {
                username: "bob".into(),
                password: "pw".into()
            })
        );
        assert_eq!(
            lookup(Some(&p), "token.example.com").await.unwrap(),
            Some(Credentials::IdentityToken("refresh-me".into()))
        );
        assert_eq!(lookup(Some(&p), "unknown.example.com").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_missing_config_is_anonymous_and_a_broken_one_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        assert_eq!(lookup(Some(&missing), "h").await.unwrap(), None);
        let broken = write_config(dir.path(), "{not json");
        assert!(matches!(
            lookup(Some(&broken), "h").await,
            Err(Error::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn a_missing_credential_helper_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_config(
            dir.path(),
            r#"{"credHelpers":{"h.example.com":"cephvol-test-no-such-helper"}}"#,
        );
        assert!(matches!(
            lookup(Some(&p), "h.example.com").await,
            Err(Error::Unavailable(_))
        ));
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let c = Credentials::Basic {
            username: "alice".into(),
            password: "topsecret".into(),
        };
        assert!(!format!("{c:?}").contains("topsecret"));
        assert!(!format!("{:?}", Credentials::IdentityToken("tok123".into())).contains("tok123"));
    }
}
