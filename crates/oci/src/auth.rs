//! Registry credentials from the Docker config file and the HTTP authentication challenge.
//!
//! Credentials are looked up only when a registry asks for them (a `401` with `WWW-Authenticate`),
//! in the order Docker uses: `credHelpers[host]`, then `credsStore`, then the inline `auths[host]`
//! entry (`auth` = base64 `user:password`, or `username`/`password`, or `identitytoken`, or
//! `registrytoken`). The config file is `$DOCKER_CONFIG/config.json`, else
//! `$HOME/.docker/config.json`, unless [`super::OciOptions::docker_config`] names one. A missing
//! file means anonymous access. Secrets never appear in `Debug` output or logs.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::Error;
use base64::Engine as _;
use serde::Deserialize;
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
    /// A bearer token sent as is (Docker's `registrytoken`).
    RegistryToken(String),
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
            Credentials::RegistryToken(_) => f.write_str("RegistryToken(***)"),
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
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

/// Normalises an `auths` key (`https://host/v1/`, `host`) to a bare host.
fn auth_key_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// Looks up credentials for `host` in the Docker config at `path` (missing file: `Ok(None)`).
/// An unreadable or invalid config, or a failing credential helper, is
/// [`Error::Unavailable`]: the operator can fix the host and a retry then succeeds.
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
    let cfg: DockerConfig = serde_json::from_slice(&text).map_err(|e| {
        Error::Unavailable(format!("invalid docker config {}: {e}", path.display()))
    })?;
    if let Some(helper) = cfg.cred_helpers.get(host) {
        return run_helper(helper, host).await;
    }
    if let Some(store) = cfg.creds_store.as_deref().filter(|s| !s.is_empty()) {
        if let Some(c) = run_helper(store, host).await? {
            return Ok(Some(c));
        }
    }
    let entry = cfg.auths.get(host).or_else(|| {
        cfg.auths
            .iter()
            .find(|(k, _)| auth_key_host(k) == host)
            .map(|(_, v)| v)
    });
    let Some(entry) = entry else { return Ok(None) };
    entry_credentials(entry, host)
}

fn entry_credentials(entry: &AuthEntry, host: &str) -> Result<Option<Credentials>, Error> {
    if let Some(t) = entry.identitytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials::IdentityToken(t.to_string())));
    }
    if let Some(t) = entry.registrytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials::RegistryToken(t.to_string())));
    }
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| {
                Error::Unavailable(format!("docker config: invalid base64 auth for {host}"))
            })?;
        let text = String::from_utf8(raw).map_err(|_| {
            Error::Unavailable(format!("docker config: auth for {host} is not UTF-8"))
        })?;
        let Some((user, pass)) = text.split_once(':') else {
            return Err(Error::Unavailable(format!(
                "docker config: auth for {host} is not user:password"
            )));
        };
        return Ok(Some(Credentials::Basic {
            username: user.to_string(),
            password: pass.to_string(),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Credentials::Basic {
            username: u.clone(),
            password: p.clone(),
        })),
        _ => Ok(None),
    }
}

#[derive(Deserialize)]
struct HelperOutput {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Runs `docker-credential-<helper> get` with `host` on stdin (on a blocking thread).
async fn run_helper(helper: &str, host: &str) -> Result<Option<Credentials>, Error> {
    let program = format!("docker-credential-{helper}");
    debug!(%program, %host, "asking credential helper");
    let (prog, h) = (program.clone(), host.to_string());
    let out = tokio::task::spawn_blocking(move || -> std::io::Result<std::process::Output> {
        let mut child = std::process::Command::new(&prog)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(h.as_bytes())?;
        }
        child.wait_with_output()
    })
    .await
    .map_err(|e| Error::Unavailable(format!("credential helper {program}: {e}")))?
    .map_err(|e| Error::Unavailable(format!("credential helper {program}: {e}")))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if msg.contains("credentials not found") {
            return Ok(None);
        }
        return Err(Error::Unavailable(format!(
            "credential helper {program} failed: {}",
            msg.trim()
        )));
    }
    let parsed: HelperOutput = serde_json::from_slice(&out.stdout).map_err(|e| {
        Error::Unavailable(format!("credential helper {program}: invalid output: {e}"))
    })?;
    if parsed.secret.is_empty() {
        return Ok(None);
    }
    if parsed.username == "<token>" {
        return Ok(Some(Credentials::IdentityToken(parsed.secret)));
    }
    Ok(Some(Credentials::Basic {
        username: parsed.username,
        password: parsed.secret,
    }))
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

/// Parses a `WWW-Authenticate` header value (`Bearer realm="…",service="…"` or `Basic realm="…"`).
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => {
            let params = parse_params(rest);
            let realm = params.get("realm")?.clone();
            Some(Challenge::Bearer {
                realm,
                service: params.get("service").cloned(),
                scope: params.get("scope").cloned(),
            })
        }
        _ => None,
    }
}

/// Parses `k="v", k2=v2` auth parameters (quoted strings may contain commas and `\"`).
fn parse_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
