//! Shared helpers of the real-Ceph tests (`crates/ceph/tests/ceph_*.rs`). They read the cluster from
//! the environment that `cargo xtask integration` (or `eval $(cargo xtask ceph env)`) sets.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ceph::{CephBackend, CephConfig};
use rbd::BlockBackend;

/// Upper bound of one test against the cluster.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The cluster configuration from the environment.
pub fn config() -> CephConfig {
    CephConfig::from_env()
        .expect("CEPH_CONF and CEPH_POOL are unset: run through `cargo xtask integration`")
}

/// The cluster configuration as `client.admin` (`CEPH_ADMIN_KEYRING`): for what the rbd-profile
/// test user may not do (other pools, other clients' keys).
pub fn admin_config() -> CephConfig {
    let mut cfg = config();
    cfg.user = "admin".into();
    cfg.keyring = Some(PathBuf::from(
        std::env::var("CEPH_ADMIN_KEYRING")
            .expect("CEPH_ADMIN_KEYRING: run through `cargo xtask integration`"),
    ));
    cfg.key_file = None;
    cfg
}

/// A connected backend on the test pool as `client.admin`.
pub async fn admin_backend() -> CephBackend {
    CephBackend::connect(admin_config())
        .await
        .expect("connect to the test cluster as client.admin")
}

/// Runs a Ceph CLI as `client.admin` (no default pool); returns stdout.
pub fn admin_cli(program: &str, args: &[&str]) -> String {
    let cfg = admin_config();
    let out = Command::new(program)
        .arg("-c")
        .arg(cfg.conf_file.as_ref().expect("conf file"))
        .args(["--id", "admin", "--keyring"])
        .arg(cfg.keyring.as_ref().expect("admin keyring"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A connected backend on the test pool.
pub async fn backend() -> CephBackend {
    CephBackend::connect(config())
        .await
        .expect("connect to the test cluster")
}

/// A name no other test (or run) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{:016x}", rand::random::<u64>())
}

/// Runs a test body with a time bound, so that a hung cluster fails the test instead of CI.
pub async fn bounded<F: Future<Output = ()>>(body: F) {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .expect("test timed out against the cluster");
}

/// Best-effort removal of an image: flatten its children, drop its snapshots, remove it.
pub async fn cleanup(b: &CephBackend, image: &str) {
    if let Ok(children) = b.list_children(image, None).await {
        for c in children {
            let _ = b
                .flatten(&c.image, rbd::no_progress(), rbd::CancellationToken::new())
                .await;
        }
    }
    if let Ok(snaps) = b.list_snapshots(image).await {
        for s in snaps {
            let _ = b.unprotect_snapshot(image, &s.name).await;
            let _ = b.remove_snapshot(image, &s.name).await;
        }
    }
    let _ = b.remove_image(image).await;
}

/// Runs a Ceph CLI (`rbd`, `rados`, `ceph`) as the test client against the test cluster; returns stdout.
pub fn cli(program: &str, args: &[&str]) -> String {
    let cfg = config();
    let mut cmd = Command::new(program);
    cmd.arg("-c")
        .arg(cfg.conf_file.as_ref().expect("conf file"));
    cmd.arg("--id").arg(cfg.user.trim_start_matches("client."));
    if let Some(k) = &cfg.keyring {
        cmd.arg("--keyring").arg(k);
    }
    cmd.args(["-p", &cfg.pool]).args(args);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
