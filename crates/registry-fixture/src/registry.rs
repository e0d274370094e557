//! The registry process: Debian's `docker-registry` (distribution 2.8) started with its own config
//! file (never the shipped `/etc` one), a free port on 127.0.0.1 and a temporary storage directory;
//! killed and reaped on drop. Owns the process and its directory, nothing else.
//!
//! The readiness probe is a one-line HTTP/1.0 request over a std socket, written by hand: starting
//! is synchronous and happens inside async tests, where no async client can be driven to completion.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pusher::Pusher;

/// User name accepted by [`TestRegistry::start_with_basic_auth`].
pub const TEST_USER: &str = "cephvol";
/// Password of [`TEST_USER`].
pub const TEST_PASSWORD: &str = "cephvol-test-secret";
/// bcrypt hash (cost 4) of [`TEST_PASSWORD`], precomputed for the htpasswd file.
const TEST_BCRYPT: &str = "$2b$04$xvkfl16GvxyjO5bxstWGV.GtY3xoRU3N.Xrkeosm7AxOJnTELBmsm";

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

/// Why a registry could not be started ([`TestRegistry::try_start`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The binary is missing (tests must not install packages).
    #[error("docker-registry not installed: run .ci/run or apt-get install docker-registry")]
    NotInstalled,
    /// The process exited or did not answer in time.
    #[error("docker-registry did not start: {0}")]
    Start(String),
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

    /// [`TestRegistry::start`] without panicking (benchmarks skip a figure instead).
    pub fn try_start() -> Result<TestRegistry, Error> {
        Self::try_start_with(None)
    }

    fn start_with(htpasswd: Option<String>) -> TestRegistry {
        Self::try_start_with(htpasswd).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start_with(htpasswd: Option<String>) -> Result<TestRegistry, Error> {
        let bin = registry_binary().ok_or(Error::NotInstalled)?;
        let mut last_err = String::new();
        // A port picked free can be taken before the registry binds it: try a few times.
        for _ in 0..5 {
            match Self::start_once(&bin, htpasswd.as_deref()) {
                Ok(r) => return Ok(r),
                Err(e) => last_err = e,
            }
        }
        Err(Error::Start(last_err))
    }

    fn start_once(bin: &Path, htpasswd: Option<&str>) -> Result<TestRegistry, String> {
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
