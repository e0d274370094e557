//! The shared `rbd::conformance` suite (the same rules the fake and the local backend pass) against
//! `CephBackend` on a real cluster. Run through `cargo xtask integration` (ignored otherwise).
//!
//! The suite reads `client.admin`'s key, which only an admin may do, so it connects as
//! `client.admin` (`CEPH_ADMIN_KEYRING`); the other Ceph tests use the rbd-profile user.
#![allow(clippy::unwrap_used)]

mod ceph_support;

use std::path::PathBuf;

use ceph::CephBackend;

async fn admin_backend() -> CephBackend {
    let mut cfg = ceph_support::config();
    cfg.user = "admin".into();
    cfg.keyring = Some(PathBuf::from(
        std::env::var("CEPH_ADMIN_KEYRING")
            .expect("CEPH_ADMIN_KEYRING: run through `cargo xtask integration`"),
    ));
    cfg.key_file = None;
    CephBackend::connect(cfg)
        .await
        .expect("connect as client.admin")
}

/// Every rule, each under its own name prefix; all failures are reported together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn ceph_backend_passes_every_conformance_rule() {
    use futures::FutureExt as _;
    let backend = admin_backend().await;
    let mut failed = Vec::new();
    for rule in rbd_testkit::conformance::RULES {
        let started = std::time::Instant::now();
        let run = (rule.run)(&backend, rule.name);
        let outcome = tokio::time::timeout(
            ceph_support::TEST_TIMEOUT,
            std::panic::AssertUnwindSafe(run).catch_unwind(),
        )
        .await;
        let verdict = match outcome {
            Ok(Ok(())) => "ok",
            Ok(Err(_)) => {
                failed.push(rule.name);
                "FAILED"
            }
            Err(_) => {
                failed.push(rule.name);
                "TIMED OUT"
            }
        };
        eprintln!(
            "conformance {} ... {verdict} ({:.1}s)",
            rule.name,
            started.elapsed().as_secs_f64()
        );
    }
    assert!(
        failed.is_empty(),
        "conformance rules failed on ceph: {failed:?}"
    );
}
