//! A real OCI registry on loopback for tests: Debian's `docker-registry` (distribution 2.8) started
//! with its own config file (never the shipped `/etc` one), a free port on 127.0.0.1 and a temporary
//! storage directory; killed and reaped on drop. Plus a tiny plain-HTTP pusher that builds ironcore
//! images from bytes (single-arch manifests without top-level `mediaType` like the Go builder,
//! multi-arch indexes, legacy media types, images without rootfs, Docker manifests) and helpers to
//! corrupt stored blobs.
//!
//! Tests must not install packages: without the binary, [`TestRegistry::start`] panics with
//! "docker-registry not installed: run .ci/run or apt-get install docker-registry".

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// The media types the pusher writes (facts of the OCI and ironcore image formats). Kept here rather
/// than imported from the client under test, so that a wrong constant there cannot hide itself.
pub mod mt {
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// Docker image manifest v2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// ironcore image config.
    pub const CONFIG: &str = "application/vnd.ironcore.image.config.v1+json";
    /// ironcore image config, legacy type.
    pub const CONFIG_LEGACY: &str = "application/vnd.ironcore.image.config.v1alpha1+json";
    /// ironcore root filesystem layer.
    pub const ROOTFS: &str = "application/vnd.ironcore.image.rootfs";
    /// ironcore root filesystem layer, legacy type.
    pub const ROOTFS_LEGACY: &str = "application/vnd.ironcore.image.rootfs.v1alpha1.rootfs";
    /// ironcore kernel layer.
    pub const KERNEL: &str = "application/vnd.ironcore.image.kernel";
    /// ironcore kernel layer, legacy type.
    pub const KERNEL_LEGACY: &str = "application/vnd.ironcore.image.vmlinuz.v1alpha1.vmlinuz";
    /// `Accept` header for manifest requests.
    pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
         application/vnd.oci.image.manifest.v1+json, \
         application/vnd.docker.distribution.manifest.list.v2+json, \
         application/vnd.docker.distribution.manifest.v2+json";
}

/// User name accepted by [`TestRegistry::start_with_basic_auth`].
pub const TEST_USER: &str = "cephvol";
/// Password of [`TEST_USER`].
pub const TEST_PASSWORD: &str = "cephvol-test-secret";
/// bcrypt hash (cost 4) of [`TEST_PASSWORD`], precomputed for the htpasswd file.
const TEST_BCRYPT: &str = "$2b$04$xvkfl16GvxyjO5bxstWGV.GtY3xoRU3N.Xrkeosm7AxOJnTELBmsm";

/// Writes a Docker `config.json` into `dir` with one `auths` entry for `host` (base64
/// `user:password`) and returns its path.
pub fn write_docker_config(dir: &Path, host: &str, user: &str, password: &str) -> PathBuf {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    write_docker_config_json(dir, &json!({ "auths": { host: { "auth": auth } } }))
}

/// Writes `config` as `dir/config.json` and returns its path.
pub fn write_docker_config_json(dir: &Path, config: &Value) -> PathBuf {
    let path = dir.join("config.json");
    fs::write(
        &path,
        serde_json::to_vec_pretty(config).expect("config JSON"),
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// Where Debian installs the registry binary.
pub const DEFAULT_REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// Path of the registry binary: `$DOCKER_REGISTRY_BIN`, else [`DEFAULT_REGISTRY_BIN`], if it exists.
pub fn registry_binary() -> Option<PathBuf> {
    let p = std::env::var_os("DOCKER_REGISTRY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_REGISTRY_BIN));
    p.is_file().then_some(p)
}

/// A running `docker-registry` on 127.0.0.1. Dropping it kills the process and removes its storage.
pub struct TestRegistry {
    child: Child,
    host: String,
    dir: tempfile::TempDir,
}

impl TestRegistry {
    /// Starts a registry and waits until `GET /v2/` answers (at most 15 s). Panics with a clear
    /// message when the binary is missing or the registry does not come up.
    pub fn start() -> TestRegistry {
        Self::start_with(None)
    }

    /// Starts a registry that demands HTTP Basic credentials ([`TEST_USER`] / [`TEST_PASSWORD`],
    /// htpasswd with a bcrypt hash).
    pub fn start_with_basic_auth() -> TestRegistry {
        Self::start_with(Some(format!("{TEST_USER}:{TEST_BCRYPT}\n")))
    }

    fn start_with(htpasswd: Option<String>) -> TestRegistry {
        let bin = registry_binary().unwrap_or_else(|| {
            panic!("docker-registry not installed: run .ci/run or apt-get install docker-registry")
        });
        let mut last_err = String::new();
        // A port picked free can be taken before the registry binds it: try a few times.
        for _ in 0..5 {
            match Self::try_start(&bin, htpasswd.as_deref()) {
                Ok(r) => return r,
                Err(e) => last_err = e,
            }
        }
        panic!("docker-registry did not start: {last_err}");
    }

    fn try_start(bin: &Path, htpasswd: Option<&str>) -> Result<TestRegistry, String> {
        let dir = tempfile::Builder::new()
            .prefix("cephvol-registry-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
            l.local_addr()
                .map_err(|e| format!("local_addr: {e}"))?
                .port()
        };
        let host = format!("127.0.0.1:{port}");
        let data = dir.path().join("data");
        fs::create_dir_all(&data).map_err(|e| format!("mkdir: {e}"))?;
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {host}\n  secret: cephvol-test-registry\n",
            data.display()
        );
        if let Some(entries) = htpasswd {
            let path = dir.path().join("htpasswd");
            fs::write(&path, entries).map_err(|e| format!("write htpasswd: {e}"))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: cephvol-test\n    path: {}\n",
                path.display()
            ));
        }
        let cfg_path = dir.path().join("config.yml");
        fs::write(&cfg_path, config).map_err(|e| format!("write config: {e}"))?;
        let log = fs::File::create(dir.path().join("registry.log"))
            .map_err(|e| format!("log file: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("log file: {e}"))?;
        let child = Command::new(bin)
            .arg("serve")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Keep the registry's own env-based config overrides out.
            .env_remove("REGISTRY_HTTP_ADDR")
            .env_remove("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY")
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let mut reg = TestRegistry { child, host, dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = reg.child.try_wait() {
                return Err(format!("exited with {status}: {}", reg.log_tail()));
            }
            if reg.answers() {
                return Ok(reg);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no answer on {} within 15 s: {}",
                    reg.host,
                    reg.log_tail()
                ));
            }
            // Readiness polling of an external process, not test timing.
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Whether `GET /v2/` answers 200 (plain HTTP/1.0 over a std socket).
    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(&self.host) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.host);
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        // 200, or 401 when the registry demands credentials: either way it serves.
        // (Go answers an HTTP/1.0 request with HTTP/1.0.)
        let head = String::from_utf8_lossy(&buf[..n]);
        let status = head.split(' ').nth(1).unwrap_or("");
        head.starts_with("HTTP/1.") && (status == "200" || status == "401")
    }

    /// The last lines of the registry's log (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `127.0.0.1:<port>`: the host part of references to this registry.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Process id of the registry.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `127.0.0.1:<port>/<repo>:<tag>`.
    pub fn reference(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.host)
    }

    /// `127.0.0.1:<port>/<repo>@<digest>`.
    pub fn pinned(&self, repo: &str, digest: &str) -> String {
        format!("{}/{repo}@{digest}", self.host)
    }

    /// Filesystem path where the registry keeps the blob `sha256:<hex>`.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Flips the last byte of a stored blob (same size, different digest): the registry keeps
    /// serving it under its old digest.
    pub fn corrupt_blob(&self, digest: &str) {
        let p = self.blob_path(digest);
        let mut data = fs::read(&p).unwrap_or_else(|e| panic!("read blob {}: {e}", p.display()));
        let last = data.last_mut().expect("blob is not empty");
        *last ^= 0xff;
        fs::write(&p, data).unwrap_or_else(|e| panic!("write blob {}: {e}", p.display()));
    }

    /// A pusher for this registry (sends [`TEST_USER`] credentials, which an open registry ignores).
    pub fn pusher(&self) -> Pusher {
        Pusher::new(&self.host).with_basic_auth(TEST_USER, TEST_PASSWORD)
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A content descriptor as pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// Media type used in the referencing document.
    pub media_type: String,
    /// Digest of the content.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

impl Pushed {
    fn json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// An ironcore image to build: raw layers, a config, current or legacy media types.
#[derive(Debug, Clone, Default)]
pub struct IronImage {
    /// Root file system bytes (`None`: an image without rootfs).
    pub rootfs: Option<Vec<u8>>,
    /// Kernel bytes, if any.
    pub kernel: Option<Vec<u8>>,
    /// `commandLine` of the config.
    pub command_line: Option<String>,
    /// Use the legacy (`v1alpha1`) media types for config and layers.
    pub legacy: bool,
    /// Extra layers `(media type, bytes)` appended after the known ones.
    pub extra_layers: Vec<(String, Vec<u8>)>,
    /// Override the rootfs descriptor's size (the blob is pushed intact).
    pub rootfs_size_override: Option<u64>,
}

impl IronImage {
    /// An image with just a rootfs (current media types).
    pub fn rootfs(bytes: impl Into<Vec<u8>>) -> IronImage {
        IronImage {
            rootfs: Some(bytes.into()),
            ..IronImage::default()
        }
    }
}

/// The result of pushing one ironcore manifest.
#[derive(Debug, Clone)]
pub struct PushedImage {
    /// Digest of the manifest (the snapshot id).
    pub manifest_digest: String,
    /// Size of the manifest in bytes.
    pub manifest_size: u64,
    /// The rootfs layer, if the image has one.
    pub rootfs: Option<Pushed>,
    /// The config blob.
    pub config: Pushed,
}

/// The result of pushing an index.
#[derive(Debug, Clone)]
pub struct PushedIndex {
    /// Digest of the index.
    pub index_digest: String,
    /// `(architecture, manifest)` in index order.
    pub manifests: Vec<(String, PushedImage)>,
}

impl PushedIndex {
    /// The manifest pushed for `arch`.
    pub fn arch(&self, arch: &str) -> &PushedImage {
        &self
            .manifests
            .iter()
            .find(|(a, _)| a == arch)
            .unwrap_or_else(|| panic!("no {arch} in the index"))
            .1
    }
}

/// Pushes blobs and manifests over plain HTTP (monolithic upload: POST then PUT).
#[derive(Clone)]
pub struct Pusher {
    http: reqwest::Client,
    host: String,
    basic: Option<(String, String)>,
}

impl Pusher {
    /// A pusher for `http://<host>`.
    pub fn new(host: &str) -> Pusher {
        Pusher {
            http: reqwest::Client::new(),
            host: host.to_string(),
            basic: None,
        }
    }

    /// Sends HTTP Basic credentials with every request.
    pub fn with_basic_auth(mut self, user: &str, password: &str) -> Pusher {
        self.basic = Some((user.to_string(), password.to_string()));
        self
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.basic {
            Some((u, p)) => req.basic_auth(u, Some(p)),
            None => req,
        }
    }

    /// Uploads a blob; returns its digest and size (media type left empty).
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> Pushed {
        let digest = sha256(data);
        let url = format!("http://{}/v2/{repo}/blobs/uploads/", self.host);
        let resp = self
            .auth(self.http.post(&url))
            .send()
            .await
            .expect("POST blob upload");
        assert_eq!(resp.status().as_u16(), 202, "POST {url}: {}", resp.status());
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .expect("upload Location header")
            .to_string();
        let location = if location.starts_with("http") {
            location
        } else {
            format!("http://{}{location}", self.host)
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={digest}");
        let resp = self
            .auth(self.http.put(&put))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .expect("PUT blob");
        assert_eq!(
            resp.status().as_u16(),
            201,
            "PUT blob {digest}: {}",
            resp.status()
        );
        Pushed {
            media_type: String::new(),
            digest,
            size: data.len() as u64,
        }
    }

    /// PUTs a manifest body under `reference` (tag or digest) with `content_type`; returns its digest.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        content_type: &str,
        body: &[u8],
    ) -> String {
        let url = format!("http://{}/v2/{repo}/manifests/{reference}", self.host);
        let resp = self
            .auth(self.http.put(&url))
            .header("content-type", content_type)
            .body(body.to_vec())
            .send()
            .await
            .expect("PUT manifest");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(status.as_u16(), 201, "PUT {url}: {status} {text}");
        sha256(body)
    }

    /// Builds and pushes one ironcore manifest (no top-level `mediaType`, like the Go builder) under
    /// `tag`.
    pub async fn push_image(&self, repo: &str, tag: &str, img: &IronImage) -> PushedImage {
        let (config_type, rootfs_type, kernel_type) = if img.legacy {
            (mt::CONFIG_LEGACY, mt::ROOTFS_LEGACY, mt::KERNEL_LEGACY)
        } else {
            (mt::CONFIG, mt::ROOTFS, mt::KERNEL)
        };
        let config_json = match &img.command_line {
            Some(c) => json!({ "commandLine": c }),
            None => json!({}),
        };
        let config_bytes = serde_json::to_vec(&config_json).expect("config JSON");
        let mut config = self.push_blob(repo, &config_bytes).await;
        config.media_type = config_type.to_string();
        let mut layers = Vec::new();
        let mut rootfs = None;
        if let Some(bytes) = &img.rootfs {
            let mut l = self.push_blob(repo, bytes).await;
            l.media_type = rootfs_type.to_string();
            let mut described = l.clone();
            if let Some(size) = img.rootfs_size_override {
                described.size = size;
            }
            layers.push(described.json());
            rootfs = Some(l);
        }
        if let Some(bytes) = &img.kernel {
            let mut l = self.push_blob(repo, bytes).await;
            l.media_type = kernel_type.to_string();
            layers.push(l.json());
        }
        for (media_type, bytes) in &img.extra_layers {
            let mut l = self.push_blob(repo, bytes).await;
            l.media_type = media_type.clone();
            layers.push(l.json());
        }
        let manifest = json!({
            "schemaVersion": 2,
            "config": config.json(),
            "layers": layers,
        });
        let body = serde_json::to_vec(&manifest).expect("manifest JSON");
        let manifest_digest = self.push_manifest(repo, tag, mt::OCI_MANIFEST, &body).await;
        PushedImage {
            manifest_digest,
            manifest_size: body.len() as u64,
            rootfs,
            config,
        }
    }

    /// Builds and pushes a multi-arch image like `ironcore-image push`: every arch manifest under
    /// `<tag>-<arch>`, then an OCI index with `linux/<arch>` platforms under `tag`.
    pub async fn push_index(
        &self,
        repo: &str,
        tag: &str,
        images: &[(&str, IronImage)],
    ) -> PushedIndex {
        let mut manifests = Vec::new();
        let mut entries = Vec::new();
        for (arch, img) in images {
            let pushed = self.push_image(repo, &format!("{tag}-{arch}"), img).await;
            entries.push(json!({
                "mediaType": mt::OCI_MANIFEST,
                "digest": pushed.manifest_digest,
                "size": pushed.manifest_size,
                "platform": { "architecture": arch, "os": "linux" },
            }));
            manifests.push((arch.to_string(), pushed));
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": mt::OCI_INDEX,
            "manifests": entries,
        });
        let body = serde_json::to_vec(&index).expect("index JSON");
        let index_digest = self.push_manifest(repo, tag, mt::OCI_INDEX, &body).await;
        PushedIndex {
            index_digest,
            manifests,
        }
    }

    /// Pushes a raw OCI index body (entries as given) under `tag`; returns its digest.
    pub async fn push_raw_index(&self, repo: &str, tag: &str, entries: Vec<Value>) -> String {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": mt::OCI_INDEX,
            "manifests": entries,
        });
        let body = serde_json::to_vec(&index).expect("index JSON");
        self.push_manifest(repo, tag, mt::OCI_INDEX, &body).await
    }

    /// Pushes a Docker image manifest v2 schema 2 (with a rootfs-like layer) under `tag`.
    pub async fn push_docker_manifest(&self, repo: &str, tag: &str, layer: &[u8]) -> String {
        let mut config = self
            .push_blob(repo, br#"{"architecture":"amd64","os":"linux"}"#)
            .await;
        config.media_type = "application/vnd.docker.container.image.v1+json".into();
        let mut l = self.push_blob(repo, layer).await;
        l.media_type = "application/vnd.docker.image.rootfs.diff.tar.gzip".into();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": mt::DOCKER_MANIFEST,
            "config": config.json(),
            "layers": [l.json()],
        });
        let body = serde_json::to_vec(&manifest).expect("manifest JSON");
        self.push_manifest(repo, tag, mt::DOCKER_MANIFEST, &body)
            .await
    }

    /// Pushes a Docker manifest list with one amd64 Docker manifest under `tag`.
    pub async fn push_docker_list(&self, repo: &str, tag: &str, layer: &[u8]) -> String {
        let inner_tag = format!("{tag}-inner");
        let digest = self.push_docker_manifest(repo, &inner_tag, layer).await;
        let size = self.manifest_size(repo, &digest).await;
        let list = json!({
            "schemaVersion": 2,
            "mediaType": mt::DOCKER_MANIFEST_LIST,
            "manifests": [{
                "mediaType": mt::DOCKER_MANIFEST,
                "digest": digest,
                "size": size,
                "platform": { "architecture": "amd64", "os": "linux" },
            }],
        });
        let body = serde_json::to_vec(&list).expect("list JSON");
        self.push_manifest(repo, tag, mt::DOCKER_MANIFEST_LIST, &body)
            .await
    }

    async fn manifest_size(&self, repo: &str, digest: &str) -> u64 {
        let url = format!("http://{}/v2/{repo}/manifests/{digest}", self.host);
        let resp = self
            .auth(self.http.get(&url))
            .header("accept", mt::MANIFEST_ACCEPT)
            .send()
            .await
            .expect("GET manifest");
        resp.bytes().await.expect("manifest body").len() as u64
    }
}

/// A one-trick HTTP server on 127.0.0.1: answers every request with the same status, content type
/// and body (to play a broken registry: `503`, garbage JSON). Stops on drop.
pub struct FakeHttp {
    host: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeHttp {
    /// Starts serving `status` with `content_type` and `body`.
    pub fn start(status: u16, content_type: &str, body: &[u8]) -> FakeHttp {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake HTTP server");
        let host = listener.local_addr().expect("local_addr").to_string();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let head = format!(
            "HTTP/1.1 {status} Fake\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        );
        let mut response = head.into_bytes();
        response.extend_from_slice(body);
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut s) = conn else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                // Read the request head (up to the blank line), then answer.
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(&response);
            }
        });
        FakeHttp {
            host,
            stop,
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> &str {
        &self.host
    }
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(&self.host);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A `127.0.0.1:<port>` where nothing listens (bound, then released).
pub fn closed_port_host() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("local_addr");
    drop(l);
    addr.to_string()
}

/// Deterministic pseudo-random bytes (xorshift), `len` long, seeded by `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
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
    /// Registry requests forwarded with a valid token.
    pub forwarded: usize,
}

/// A bearer-token gate in front of a [`TestRegistry`]: requests without a valid
/// `Authorization: Bearer` get `401` with `WWW-Authenticate: Bearer realm=…/token`, the token
/// endpoint hands out tokens according to its [`TokenPolicy`], and authorised requests are
/// forwarded to the registry (one request per connection). Stops on drop.
pub struct TokenGate {
    host: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    log: std::sync::Arc<std::sync::Mutex<GateLog>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const GATE_TOKEN: &str = "cephvol-gate-token";

impl TokenGate {
    /// Starts a gate for the registry at `upstream` (`127.0.0.1:<port>`).
    pub fn start(upstream: &str, policy: TokenPolicy) -> TokenGate {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token gate");
        let host = listener.local_addr().expect("local_addr").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(GateLog::default()));
        let (stop2, log2, host2, upstream) = (
            stop.clone(),
            log.clone(),
            host.clone(),
            upstream.to_string(),
        );
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(s) = conn else { continue };
                let (log, policy, host, upstream) = (
                    log2.clone(),
                    policy.clone(),
                    host2.clone(),
                    upstream.clone(),
                );
                std::thread::spawn(move || {
                    let _ = gate_serve(s, &host, &upstream, &policy, &log);
                });
            }
        });
        TokenGate {
            host,
            stop,
            log,
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:<port>` of the gate: use it as the reference host.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// What the gate saw so far.
    pub fn log(&self) -> GateLog {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for TokenGate {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = TcpStream::connect(&self.host);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request: head lines and the body (by `Content-Length`).
fn read_request(s: &mut TcpStream) -> std::io::Result<(Vec<String>, Vec<u8>)> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let lines: Vec<String> = head.split("\r\n").map(str::to_string).collect();
    let len = lines
        .iter()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = data[head_end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    Ok((lines, body))
}

fn header<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
    lines.iter().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

fn respond(s: &mut TcpStream, status: &str, extra: &str, body: &str) -> std::io::Result<()> {
    let msg = format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(msg.as_bytes())
}

fn gate_serve(
    mut s: TcpStream,
    host: &str,
    upstream: &str,
    policy: &TokenPolicy,
    log: &std::sync::Mutex<GateLog>,
) -> std::io::Result<()> {
    use base64::Engine as _;
    let (lines, body) = read_request(&mut s)?;
    let request_line = lines.first().cloned().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let lock = || log.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(query) = target.strip_prefix("/token") {
        let query = query.trim_start_matches('?').to_string();
        let form = String::from_utf8_lossy(&body).to_string();
        lock().token_requests.push((
            method.clone(),
            if method == "POST" {
                form.clone()
            } else {
                query
            },
        ));
        let ok = match policy {
            TokenPolicy::Anonymous => method == "GET",
            TokenPolicy::Basic(u, p) => {
                let want = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                );
                method == "GET" && header(&lines, "authorization") == Some(want.as_str())
            }
            TokenPolicy::RefreshToken(t) => {
                method == "POST"
                    && form.contains("grant_type=refresh_token")
                    && form.contains(&format!("refresh_token={t}"))
            }
        };
        return if ok {
            let key = if method == "POST" {
                "access_token"
            } else {
                "token"
            };
            respond(
                &mut s,
                "200 OK",
                "",
                &format!(r#"{{"{key}":"{GATE_TOKEN}","expires_in":300}}"#),
            )
        } else {
            respond(
                &mut s,
                "401 Unauthorized",
                "",
                r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
            )
        };
    }
    if header(&lines, "authorization") != Some(&format!("Bearer {GATE_TOKEN}")) {
        lock().challenged += 1;
        let repo = target
            .strip_prefix("/v2/")
            .and_then(|r| r.split("/manifests/").next())
            .and_then(|r| r.split("/blobs/").next())
            .unwrap_or("");
        let challenge = format!(
            "WWW-Authenticate: Bearer realm=\"http://{host}/token\",service=\"cephvol-gate\",\
             scope=\"repository:{repo}:pull\"\r\n"
        );
        return respond(
            &mut s,
            "401 Unauthorized",
            &challenge,
            r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
        );
    }
    lock().forwarded += 1;
    let mut up = TcpStream::connect(upstream)?;
    let mut head = format!("{request_line}\r\n");
    for l in lines.iter().skip(1) {
        let name = l
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if name == "connection" || name == "host" || name == "authorization" {
            continue;
        }
        head.push_str(l);
        head.push_str("\r\n");
    }
    head.push_str(&format!("Host: {upstream}\r\nConnection: close\r\n\r\n"));
    up.write_all(head.as_bytes())?;
    up.write_all(&body)?;
    std::io::copy(&mut up, &mut s)?;
    Ok(())
}
