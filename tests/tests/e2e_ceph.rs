//! The real daemon on a real Ceph cluster (`--backend ceph`): plain and encrypted volumes,
//! snapshot, restore, expand and delete, with the key taken from the `[client.<user>]` section of
//! a multi-section keyring, and no secret in the logs.
//!
//! Ignored by default. Run with a cluster from `cargo xtask ceph up`:
//! `eval $(cargo xtask ceph env); cargo test -p tests --features ceph --test e2e_ceph -- --ignored`
//! (`cargo xtask integration` runs it). Without `CEPH_MONITORS`/`CEPH_POOL` the test skips, except
//! under `CEPHVOL_INTEGRATION=1` (set by `cargo xtask integration`), where it fails.

use std::collections::BTreeMap;

use iri::volume_v1 as pb;
use tests::cephvol_bin;
use tests::daemon::{id_of, ops, restore_req, snapshot_req, volume_req, Daemon};

const MIB: i64 = 1 << 20;
const PASSPHRASE: &str = "ceph-e2e-passphrase-7b1f";

fn var(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// Skips the test, unless `cargo xtask integration` runs it (`CEPHVOL_INTEGRATION=1`): there a
/// missing prerequisite fails it.
fn skip(reason: &str) {
    assert!(
        var("CEPHVOL_INTEGRATION").as_deref() != Some("1"),
        "CEPHVOL_INTEGRATION=1 but {reason}: the real-Ceph suite must not skip"
    );
    eprintln!("skipped: {reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Ceph cluster: cargo xtask integration"]
async fn the_daemon_provisions_volumes_on_a_real_ceph_cluster() {
    if !cfg!(feature = "ceph") && std::env::var_os("CEPHVOL_BIN").is_none() {
        return skip("build with --features ceph (or set CEPHVOL_BIN)");
    }
    let (Some(monitors), Some(pool)) = (var("CEPH_MONITORS"), var("CEPH_POOL")) else {
        return skip("CEPH_MONITORS/CEPH_POOL not set (eval $(cargo xtask ceph env))");
    };
    let user = var("CEPH_USER").unwrap_or_else(|| "admin".into());
    let client = var("CEPH_CLIENT").unwrap_or_else(|| format!("client.{user}"));
    let keyring = var("CEPH_KEYRING")
        .or_else(|| var("CEPH_USER_KEYRING"))
        .expect("CEPH_KEYRING");
    let user_key = var("CEPH_KEY_FILE")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|k| k.trim().to_string());

    let dir = tempfile::tempdir().expect("tempdir");
    let kek = dir.path().join("kek");
    std::fs::write(&kek, [0x5au8; 32]).expect("kek");
    let flags = [
        "--backend=ceph".to_string(),
        format!("--ceph-monitors={monitors}"),
        format!("--ceph-pool={pool}"),
        format!("--ceph-user={user}"),
        format!("--ceph-client={client}"),
        format!("--ceph-keyring-file={keyring}"),
        format!("--ceph-kek-path={}", kek.display()),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut d = Daemon::start_in(cephvol_bin!(), dir, &flags).await;
    let mut c = d.clients().await;

    let st = c
        .runtime
        .status(pb::StatusRequest {})
        .await
        .expect("Status")
        .into_inner();
    assert!(
        st.volume_class_status[0].quantity > 0,
        "pool capacity from ceph df"
    );

    let id = ops::create(&mut c, volume_req("standard", 8 * MIB, &[])).await;
    let v = ops::wait_available(&mut c, &id).await;
    let access = v.status.expect("status").access.expect("access");
    assert_eq!(access.attributes["monitors"], monitors);
    assert_eq!(access.attributes["image"], format!("{pool}/img_{id}"));
    assert_eq!(
        access.secret_data["userID"],
        user.trim_start_matches("client.").as_bytes()
    );
    assert!(!access.secret_data["userKey"].is_empty());

    let mut enc = volume_req("standard", 32 * MIB, &[]);
    enc.volume
        .as_mut()
        .and_then(|v| v.spec.as_mut())
        .expect("spec")
        .encryption = Some(pb::EncryptionSpec {
        secret_data: BTreeMap::from([(
            "encryptionKey".to_string(),
            PASSPHRASE.as_bytes().to_vec(),
        )]),
    });
    let eid = ops::create(&mut c, enc).await;
    ops::wait_available(&mut c, &eid).await;

    c.runtime
        .expand_volume(pb::ExpandVolumeRequest {
            volume_id: id.clone(),
            resources: Some(pb::VolumeResources {
                storage_bytes: 16 * MIB,
            }),
        })
        .await
        .expect("ExpandVolume");
    let snap = c
        .runtime
        .create_volume_snapshot(snapshot_req(&id, &[]))
        .await
        .expect("snapshot");
    let sid = id_of(&snap.into_inner().volume_snapshot.expect("s").metadata);
    ops::wait_ready(&mut c, &sid).await;
    let rid = ops::create(&mut c, restore_req("standard", 16 * MIB, &sid, &[])).await;
    ops::wait_available(&mut c, &rid).await;

    for v in [&rid, &eid, &id] {
        ops::delete(&mut c, v).await;
    }
    ops::delete_snapshot(&mut c, &sid).await;
    for v in [&rid, &eid, &id] {
        ops::wait_volume_gone(&mut c, v).await;
    }
    ops::wait_snapshot_gone(&mut c, &sid).await;
    drop(c);
    assert!(d.terminate().await.success(), "{}", d.logs());

    let logs = d.logs();
    assert!(logs.contains("with the ceph backend"), "{logs}");
    assert!(!logs.contains(PASSPHRASE), "passphrase in the logs");
    if let Some(k) = user_key {
        assert!(!logs.contains(&k), "cephx key in the logs");
    }
}
