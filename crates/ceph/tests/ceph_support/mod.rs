//! Shared helpers of the real-Ceph tests (`crates/ceph/tests/ceph_*.rs`). They read the cluster from
//! the environment that `cargo xtask integration` (or `eval $(cargo xtask ceph env)`) sets.
#![allow(dead_code)]

use std::future::Future;
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
