//! A clone of a volume snapshot living in another pool, on a real Ceph cluster: deleting the
//! snapshot flattens the clone where it lives and then completes.
//!
//! Before, the daemon flattened every child of the snapshot by name in its own pool; the clone in
//! the other pool "did not exist" there (NotFound, taken as already flattened), stayed a child,
//! and the deletion retried for ever with "… still depend on img_… through their own snapshots".
//!
//! Set-up: a scratch pool is created (and removed at the end, also on failure) with the `ceph`
//! CLI; the daemon runs as `client.admin`, because the rbd-profile test user has caps on the test
//! pool only (a daemon whose snapshots have children in other pools needs caps on those pools).
//! A volume V gets data, a snapshot S of it is taken, and `img_V@S` is cloned into the scratch
//! pool with the `rbd` CLI (clone format 1, as the daemon's own clones). Then S is deleted
//! through the daemon: S must vanish, the clone must be flat and hold S's data, and V is deleted.
//!
//! Ignored by default. With a cluster from `cargo xtask ceph up`:
//! `eval $(cargo xtask ceph env); cargo test -p tests --features ceph --test e2e_ceph_xpool -- --ignored --nocapture`.
//! `cargo xtask integration` runs it with `CEPHVOL_INTEGRATION=1`, under which a missing cluster
//! environment fails the test instead of skipping it.

use std::time::Instant;

use tests::cephvol_bin;
use tests::cluster::{integration, step, var, Ceph, KeepLogOnPanic, Leftovers};
use tests::daemon::{id_of, ops, snapshot_req, volume_req, Daemon};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 16 * MIB;

/// A pool this test created; removed with everything in it when the test ends (also on panic).
struct ScratchPool(Ceph);

impl ScratchPool {
    fn create(ceph: &Ceph, name: &str) -> ScratchPool {
        ceph.run("ceph", &["osd", "pool", "create", name, "8"]);
        let pool = ScratchPool(Ceph { pool: name.into() });
        ceph.run("rbd", &["pool", "init", name]);
        pool
    }
}

impl Drop for ScratchPool {
    fn drop(&mut self) {
        let p = &self.0.pool;
        if let Err(e) = self.0.try_run(
            "ceph",
            &["osd", "pool", "rm", p, p, "--yes-i-really-really-mean-it"],
        ) {
            eprintln!("removing scratch pool {p}: {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Ceph cluster: cargo xtask integration"]
async fn deleting_a_snapshot_flattens_its_clone_in_another_pool_and_completes() {
    let needs = |what: &str| {
        assert!(
            !integration(),
            "CEPHVOL_INTEGRATION=1 but {what}: the real-Ceph suite must not skip"
        );
        eprintln!("skipped: {what}");
    };
    if !cfg!(feature = "ceph") && std::env::var_os("CEPHVOL_BIN").is_none() {
        return needs("build with --features ceph (or set CEPHVOL_BIN)");
    }
    let (Some(monitors), Some(pool), Some(admin_keyring)) = (
        var("CEPH_MONITORS"),
        var("CEPH_POOL"),
        var("CEPH_ADMIN_KEYRING"),
    ) else {
        return needs(
            "CEPH_MONITORS/CEPH_POOL/CEPH_ADMIN_KEYRING not set (eval $(cargo xtask ceph env))",
        );
    };
    let client = var("CEPH_CLIENT").unwrap_or_else(|| "client.admin".into());
    let t0 = Instant::now();
    let ceph = Ceph { pool: pool.clone() };
    let other_name = format!("cephvol-xpool-{:08x}", std::process::id());
    let other = ScratchPool::create(&ceph, &other_name);

    let dir = tempfile::tempdir().expect("tempdir");
    let kek = dir.path().join("kek");
    std::fs::write(&kek, [0x29u8; 32]).expect("kek");
    let flags = [
        "--backend=ceph".to_string(),
        format!("--ceph-monitors={monitors}"),
        format!("--ceph-pool={pool}"),
        "--ceph-user=admin".to_string(),
        format!("--ceph-client={client}"),
        format!("--ceph-keyring-file={admin_keyring}"),
        format!("--ceph-kek-path={}", kek.display()),
        // Deleting S must flatten the clone: the Go provider's deletion policy.
        "--delete-policy=flatten".to_string(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let leftovers = Leftovers {
        ceph: ceph.clone(),
        volumes: Default::default(),
        snapshots: Default::default(),
    };
    let d = Daemon::start_in(cephvol_bin!(), dir, &flags).await;
    let _keep_log = KeepLogOnPanic(d.dir.path().join("daemon.log"), "e2e_ceph_xpool");
    let mut c = d.clients().await;

    let v = ops::create(&mut c, volume_req("standard", SIZE as i64, &[])).await;
    leftovers.volume(&v);
    ops::wait_available(&mut c, &v).await;
    let v_image = format!("img_{v}");
    let data = ceph.write_pattern(&v_image, 0, SIZE, 0x5eed);
    let snap = c
        .runtime
        .create_volume_snapshot(snapshot_req(&v, &[]))
        .await
        .expect("CreateVolumeSnapshot")
        .into_inner();
    let s = id_of(&snap.volume_snapshot.expect("snapshot").metadata);
    leftovers.snapshot(&s);
    ops::wait_ready(&mut c, &s).await;
    // V moves on; the clone must keep S's data.
    ceph.write_pattern(&v_image, 0, 4 * MIB, 0xfeed);
    let child = "xpool-child";
    ceph.run(
        "rbd",
        &[
            "clone",
            "--rbd-default-clone-format",
            "1",
            &format!("{pool}/{v_image}@{s}"),
            &format!("{other_name}/{child}"),
        ],
    );
    assert_eq!(
        other.0.parent(child),
        Some(format!("{v_image}@{s}")),
        "the clone in the other pool is a child of S"
    );
    step(t0, "snapshot S has a clone in another pool; deleting S");

    ops::delete_snapshot(&mut c, &s).await;
    ops::wait_snapshot_gone(&mut c, &s).await;
    step(t0, "S is gone");
    assert_eq!(other.0.parent(child), None, "the clone was flattened");
    let export = other.0.export(child, SIZE);
    assert_eq!(export.len, SIZE);
    assert_eq!(export.whole, data, "the flattened clone holds S's data");
    assert!(
        ceph.snaps(&v_image).is_empty(),
        "the rbd snapshot is removed"
    );

    ops::delete(&mut c, &v).await;
    ops::wait_volume_gone(&mut c, &v).await;
    assert!(!ceph.images().contains(&v_image));
    drop(c);
    let mut d = d;
    assert!(d.terminate().await.success(), "{}", d.logs());
    step(t0, "done");
}
