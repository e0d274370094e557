//! Fake HTTP servers that play registries a real `docker-registry` cannot: [`FakeHttp`] (a broken
//! registry answering every request alike), [`TokenGate`] (a registry behind bearer-token
//! authentication) and [`RangeFake`] (a registry that cannot serve byte ranges of blobs). All are
//! `wiremock` servers on 127.0.0.1 that stop on drop; they own no process and no files. Every
//! answer they give is well-formed HTTP, so nothing here is written by hand.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use wiremock::matchers::{
    any, body_string_contains, header, header_exists, method, path, path_regex,
};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::{mt, sha256};

/// A one-trick HTTP server: answers every request with the same status, content type and body (to
/// play a broken registry: `503`, garbage JSON).
pub struct FakeHttp {
    _server: MockServer,
    host: String,
}

impl FakeHttp {
    /// Starts serving `status` with `content_type` and `body`.
    pub async fn start(status: u16, content_type: &str, body: &[u8]) -> FakeHttp {
        let server = MockServer::start().await;
        Mock::given(any())
            .respond_with(ResponseTemplate::new(status).set_body_raw(body.to_vec(), content_type))
            .mount(&server)
            .await;
        let host = server.address().to_string();
        FakeHttp {
            _server: server,
            host,
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> &str {
        &self.host
    }
}

/// How a [`TokenGate`]'s token endpoint authenticates clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenPolicy {
    /// Anyone gets a token (like anonymous pulls from public registries).
    Anonymous,
    /// `GET /token` needs HTTP Basic `user:password`.
    Basic(String, String),
    /// `POST /token` with `grant_type=refresh_token` and this `refresh_token` (Docker identity tokens).
    RefreshToken(String),
}

/// What a [`TokenGate`] saw.
#[derive(Debug, Default, Clone)]
pub struct GateLog {
    /// Token requests: `(method, query or form body)`.
    pub token_requests: Vec<(String, String)>,
    /// Registry requests answered with 401 (no or a wrong token).
    pub challenged: usize,
    /// Registry requests that carried the valid token (and were answered from the registry's
    /// content).
    pub authorized: usize,
}

/// The one token the gate hands out and accepts.
const GATE_TOKEN: &str = "cephvol-gate-token";
/// `service` of the gate's challenges.
const GATE_SERVICE: &str = "cephvol-gate";
/// Body of every 401.
const UNAUTHORIZED: &str = r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#;

/// A bearer-token gate serving a copy of a [`crate::TestRegistry`]'s content: requests without a
/// valid `Authorization: Bearer` get `401` with `WWW-Authenticate: Bearer realm=…/token`, the token
/// endpoint hands out tokens according to its [`TokenPolicy`], and authorised requests are answered
/// with the manifests and blobs the registry held when the gate started (every tag of every
/// repository, the manifests of indexes, configs and layers), byte for byte with their content
/// types and digests.
///
/// A copy rather than a proxy: a wiremock responder answers synchronously, so it cannot wait for
/// the registry; the tests push their images before they start the gate.
pub struct TokenGate {
    server: MockServer,
    host: String,
}

impl TokenGate {
    /// Copies the registry at `upstream` (`127.0.0.1:<port>`, no credentials) and starts a gate
    /// serving it.
    pub async fn start(upstream: &str, policy: TokenPolicy) -> TokenGate {
        let content = copy_registry(upstream).await;
        let server = MockServer::start().await;
        let host = server.address().to_string();
        let bearer = format!("Bearer {GATE_TOKEN}");

        // The token endpoint.
        let granted = match &policy {
            TokenPolicy::Anonymous => Mock::given(method("GET")),
            TokenPolicy::Basic(user, password) => {
                use base64::Engine as _;
                let basic =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                Mock::given(method("GET")).and(header("authorization", format!("Basic {basic}")))
            }
            TokenPolicy::RefreshToken(t) => Mock::given(method("POST"))
                .and(body_string_contains("grant_type=refresh_token"))
                .and(body_string_contains(format!("refresh_token={t}"))),
        };
        let key = match policy {
            TokenPolicy::RefreshToken(_) => "access_token",
            _ => "token",
        };
        granted
            .and(path("/token"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({ key: GATE_TOKEN, "expires_in": 300 })),
            )
            .with_priority(1)
            .mount(&server)
            .await;
        Mock::given(path("/token"))
            .respond_with(ResponseTemplate::new(401).set_body_raw(UNAUTHORIZED, "application/json"))
            .with_priority(2)
            .mount(&server)
            .await;

        // The registry's content, for the valid token only.
        for (p, c) in content {
            Mock::given(method("GET"))
                .and(path(p))
                .and(header("authorization", bearer.as_str()))
                .respond_with(
                    ResponseTemplate::new(200)
                        .set_body_raw(c.body, &c.content_type)
                        .insert_header("docker-content-digest", c.digest),
                )
                .with_priority(1)
                .mount(&server)
                .await;
        }
        Mock::given(path_regex("^/v2/"))
            .and(header("authorization", bearer.as_str()))
            .respond_with(ResponseTemplate::new(404).set_body_raw(
                r#"{"errors":[{"code":"NAME_UNKNOWN"}]}"#,
                "application/json",
            ))
            .with_priority(2)
            .mount(&server)
            .await;
        // Anything else: the challenge.
        Mock::given(any())
            .respond_with(Challenge {
                realm: format!("http://{host}/token"),
            })
            .with_priority(3)
            .mount(&server)
            .await;
        TokenGate { server, host }
    }

    /// `127.0.0.1:<port>` of the gate: use it as the reference host.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// What the gate saw so far.
    pub async fn log(&self) -> GateLog {
        let bearer = format!("Bearer {GATE_TOKEN}");
        let mut log = GateLog::default();
        for r in self.server.received_requests().await.unwrap_or_default() {
            if r.url.path() == "/token" {
                let method = r.method.to_string();
                let params = if method == "POST" {
                    String::from_utf8_lossy(&r.body).into_owned()
                } else {
                    r.url.query().unwrap_or("").to_string()
                };
                log.token_requests.push((method, params));
            } else if authorization(&r) == Some(bearer.as_str()) {
                log.authorized += 1;
            } else {
                log.challenged += 1;
            }
        }
        log
    }
}

/// How a [`RangeFake`] answers a blob GET that carries a `Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// `200` with the whole blob, as if there were no `Range` header.
    Ignored,
    /// `206` with the whole blob as its body, so its content length is not that of the range.
    WrongLength,
    /// `416 Range Not Satisfiable`.
    NotSatisfiable,
}

/// A registry that cannot serve byte ranges: a copy of a [`crate::TestRegistry`]'s content (as
/// [`TokenGate`] copies it, without authentication), where every GET without a `Range` header is
/// answered from the copy with `200`, and every blob GET with one as its [`RangeAnswer`] says.
/// Unknown paths get `404 NAME_UNKNOWN`.
pub struct RangeFake {
    server: MockServer,
    host: String,
}

impl RangeFake {
    /// Copies the registry at `upstream` (`127.0.0.1:<port>`, no credentials) and starts serving
    /// it; push the images before.
    pub async fn start(upstream: &str, answer: RangeAnswer) -> RangeFake {
        let content = copy_registry(upstream).await;
        let server = MockServer::start().await;
        let host = server.address().to_string();
        for (p, c) in content {
            let whole = ResponseTemplate::new(200)
                .set_body_raw(c.body.clone(), &c.content_type)
                .insert_header("docker-content-digest", c.digest.as_str());
            let ranged = match answer {
                RangeAnswer::Ignored => None,
                RangeAnswer::WrongLength => Some(
                    ResponseTemplate::new(206)
                        .set_body_raw(c.body, &c.content_type)
                        .insert_header("docker-content-digest", c.digest.as_str()),
                ),
                RangeAnswer::NotSatisfiable => Some(
                    ResponseTemplate::new(416)
                        .set_body_raw("requested range not satisfiable", "text/plain"),
                ),
            };
            if let (Some(ranged), true) = (ranged, p.contains("/blobs/")) {
                Mock::given(method("GET"))
                    .and(path(p.as_str()))
                    .and(header_exists("range"))
                    .respond_with(ranged)
                    .with_priority(1)
                    .mount(&server)
                    .await;
            }
            Mock::given(method("GET"))
                .and(path(p))
                .respond_with(whole)
                .with_priority(2)
                .mount(&server)
                .await;
        }
        Mock::given(any())
            .respond_with(ResponseTemplate::new(404).set_body_raw(
                r#"{"errors":[{"code":"NAME_UNKNOWN"}]}"#,
                "application/json",
            ))
            .with_priority(3)
            .mount(&server)
            .await;
        RangeFake { server, host }
    }

    /// `127.0.0.1:<port>` of the fake: use it as the reference host.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The `Range` headers of the requests received so far, in order.
    pub async fn ranges(&self) -> Vec<String> {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r.headers.get("range"))
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
}

fn authorization(r: &Request) -> Option<&str> {
    r.headers.get("authorization").and_then(|v| v.to_str().ok())
}

/// `401` with a bearer challenge scoped to the repository of the requested path.
struct Challenge {
    realm: String,
}

impl Respond for Challenge {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let target = request.url.path();
        let repo = target
            .strip_prefix("/v2/")
            .and_then(|r| r.split("/manifests/").next())
            .and_then(|r| r.split("/blobs/").next())
            .unwrap_or("");
        let challenge = format!(
            "Bearer realm=\"{}\",service=\"{GATE_SERVICE}\",scope=\"repository:{repo}:pull\"",
            self.realm
        );
        ResponseTemplate::new(401)
            .insert_header("www-authenticate", challenge.as_str())
            .set_body_raw(UNAUTHORIZED, "application/json")
    }
}

/// One copied response.
struct Content {
    content_type: String,
    digest: String,
    body: Vec<u8>,
}

/// Everything a client can GET from the registry at `upstream`, by request path: `/v2/`, every
/// tag of every repository and every manifest, config and layer reachable from them.
async fn copy_registry(upstream: &str) -> BTreeMap<String, Content> {
    let http = reqwest::Client::new();
    let base = format!("http://{upstream}/v2");
    let get = |url: String, accept: Option<&'static str>| {
        let mut req = http.get(&url);
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        async move {
            let resp = req
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"));
            assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
            let content_type = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/octet-stream")
                .to_string();
            let body = resp.bytes().await.expect("body").to_vec();
            (content_type, body)
        }
    };
    let json = |body: &[u8]| -> Value { serde_json::from_slice(body).expect("registry JSON") };
    let digests = |v: &Value, key: &str| -> Vec<String> {
        let list = match &v[key] {
            Value::Array(a) => a.iter().collect(),
            Value::Object(_) => vec![&v[key]],
            _ => Vec::new(),
        };
        list.iter()
            .filter_map(|d| d["digest"].as_str().map(str::to_string))
            .collect()
    };

    let mut out = BTreeMap::new();
    let (content_type, body) = get(format!("{base}/"), None).await;
    out.insert(
        "/v2/".to_string(),
        Content {
            content_type,
            digest: sha256(&body),
            body,
        },
    );
    let (_, catalog) = get(format!("{base}/_catalog"), None).await;
    for repo in json(&catalog)["repositories"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let (_, tags) = get(format!("{base}/{repo}/tags/list"), None).await;
        let mut manifests: Vec<String> = json(&tags)["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        let mut blobs = BTreeSet::new();
        let mut seen = BTreeSet::new();
        while let Some(reference) = manifests.pop() {
            if !seen.insert(reference.clone()) {
                continue;
            }
            let url = format!("{base}/{repo}/manifests/{reference}");
            let (content_type, body) = get(url, Some(mt::MANIFEST_ACCEPT)).await;
            let digest = sha256(&body);
            let doc = json(&body);
            manifests.extend(digests(&doc, "manifests"));
            blobs.extend(digests(&doc, "config"));
            blobs.extend(digests(&doc, "layers"));
            for name in [reference, digest.clone()] {
                out.insert(
                    format!("/v2/{repo}/manifests/{name}"),
                    Content {
                        content_type: content_type.clone(),
                        digest: digest.clone(),
                        body: body.clone(),
                    },
                );
            }
        }
        for digest in blobs {
            let (content_type, body) = get(format!("{base}/{repo}/blobs/{digest}"), None).await;
            out.insert(
                format!("/v2/{repo}/blobs/{digest}"),
                Content {
                    content_type,
                    digest,
                    body,
                },
            );
        }
    }
    out
}
