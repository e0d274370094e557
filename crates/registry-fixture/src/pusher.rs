//! The image pusher: builds ironcore images from bytes (single-arch manifests without top-level
//! `mediaType` like the Go builder, multi-arch indexes, legacy media types, images without rootfs,
//! Docker manifests) and uploads them over plain HTTP with reqwest. Owns no server.

use serde_json::{json, Value};

use crate::{mt, sha256};

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
