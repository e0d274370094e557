//! Test fixtures around OCI registries, for tests and benchmarks:
//! * [`TestRegistry`] (module `registry`): a real OCI registry on loopback, Debian's
//!   `docker-registry`, with its own config and storage, optionally demanding HTTP Basic;
//! * [`Pusher`] (module `pusher`): builds ironcore images from bytes and pushes them;
//! * [`FakeHttp`], [`TokenGate`] and [`RangeFake`] (module `fake`): wiremock servers playing a
//!   broken registry, a registry behind bearer tokens and registries that cannot serve byte ranges;
//! * [`CountingProxy`] (module `proxy`): a TCP forwarder counting the bytes a server sends, as
//!   they flow;
//! * Docker config files, a closed port, and the workspace's test data ([`pattern`], [`sha256`]
//!   from `testdata`).
//!
//! Tests must not install packages: without the binary, [`TestRegistry::start`] panics with
//! "docker-registry not installed: run .ci/run or apt-get install docker-registry".

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

mod fake;
mod proxy;
mod pusher;
mod registry;

pub use crate::fake::{FakeHttp, GateLog, RangeAnswer, RangeFake, TokenGate, TokenPolicy};
pub use crate::proxy::CountingProxy;
pub use crate::pusher::{IronImage, Pushed, PushedImage, PushedIndex, Pusher};
pub use crate::registry::{
    registry_binary, Error, TestRegistry, DEFAULT_REGISTRY_BIN, TEST_PASSWORD, TEST_USER,
};
pub use testdata::{pattern, sha256};

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

/// A `127.0.0.1:<port>` where nothing listens (bound, then released).
pub fn closed_port_host() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("local_addr");
    drop(l);
    addr.to_string()
}
