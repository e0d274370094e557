//! Deleting a volume whose snapshot has restores, on a real Ceph cluster, under both deletion
//! policies of the real daemon (`--delete-policy deferred|flatten`), with a SIGKILL in the middle
//! of each phase.
//!
//! For each policy: a volume V gets 64 MiB of pseudo-random data, a snapshot S is taken and two
//! volumes R1, R2 are restored from it (clones of `img_V@S`). Then:
//!
//! 1. V is deleted and the daemon gets SIGKILL at once (the deletion half-way), then restarts;
//!    V must be gone from ListVolumes. `deferred`: `img_V` is kept (its record `Retained`), R1 and
//!    R2 stay clones without a byte of their own (`rbd du`). `flatten`: R1 and R2 end without a
//!    parent, each a full copy, and `img_V` is removed.
//! 2. R1, R2 and S (read where it lives now) read exactly what S held (`rbd export` checksums);
//!    a new restore R3 from S gets the same bytes.
//! 3. S is deleted: `deferred` keeps it hidden (`Retained`, its rbd snapshot kept) while R1–R3
//!    are clones of it.
//! 4. R1, R2 and R3 are deleted and the daemon is killed again right after; after the restart
//!    everything goes: no image, rbd snapshot, record or trash entry of the test is left, and the
//!    pool and the store agree ([`Ceph::inconsistencies`]).
//!
//! Ignored by default. With a cluster from `cargo xtask ceph up`:
//! `eval $(cargo xtask ceph env); cargo test -p tests --features ceph --test e2e_ceph_delete -- --ignored --nocapture`.
//! `cargo xtask integration` runs it with `CEPHVOL_INTEGRATION=1`, under which a missing cluster
//! environment fails the test instead of skipping it.

use std::time::{Duration, Instant};

use cli::client::Clients;
use tests::cephvol_bin;
use tests::cluster::{daemon_flags, step, Ceph, KeepLogOnPanic, Leftovers, SNAPSHOTS, VOLUMES};
use tests::daemon::{eventually, id_of, ops, restore_req, snapshot_req, volume_req, Daemon};

const MIB: u64 = 1 << 20;
/// Size of V and of its restores.
const SIZE: u64 = 64 * MIB;
/// A class without QoS limits, so that the test's own `rbd` reads and writes are not throttled.
const CLASS: &str = "delete-unthrottled";
/// Bound of every wait.
const WAIT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Ceph cluster (cargo xtask ceph up); run by cargo xtask integration"]
async fn deleting_a_parent_with_restores_is_safe_and_leak_free_under_both_policies_across_kills() {
    for policy in ["deferred", "flatten"] {
        if !run(policy).await {
            return;
        }
    }
}

/// One policy's scenario; false if the cluster environment is missing (the test skips).
async fn run(policy: &str) -> bool {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((mut flags, pool)) = daemon_flags(dir.path()) else {
        return false;
    };
    let ceph = Ceph { pool };
    ceph.assert_consistent("before the test (left over by an earlier run or suite?)");
    let images_before = ceph.images();
    let classes = dir.path().join("classes.json");
    std::fs::write(
        &classes,
        format!(r#"[{{"name":"{CLASS}","capabilities":{{"tps":0,"iops":0}}}}]"#),
    )
    .expect("classes");
    flags.extend([
        format!("--supported-volume-classes={}", classes.display()),
        format!("--delete-policy={policy}"),
    ]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let leftovers = Leftovers::new(&ceph);
    let mut d = Daemon::start_in(cephvol_bin!(), dir, &flags).await;
    let _keep_log = KeepLogOnPanic(d.dir.path().join("daemon.log"), "e2e_ceph_delete");
    let mut c = d.clients().await;
    step(t0, &format!("{policy}: daemon up"));

    // V with data, S, R1 and R2.
    let v = ops::create(&mut c, volume_req(CLASS, SIZE as i64, &[])).await;
    leftovers.volume(&v);
    ops::wait_available(&mut c, &v).await;
    let v_image = format!("img_{v}");
    let data_sha = ceph.write_pattern(&v_image, 0, SIZE, 17);
    let s = snapshot(&mut c, &v).await;
    leftovers.snapshot(&s);
    ops::wait_ready(&mut c, &s).await;
    let s_sha = ceph.export_sha(&format!("{v_image}@{s}"));
    assert_eq!(s_sha, data_sha, "S holds V's data");
    let mut restores = Vec::new();
    for _ in 0..2 {
        let r = ops::create(&mut c, restore_req(CLASS, SIZE as i64, &s, &[])).await;
        leftovers.volume(&r);
        ops::wait_available(&mut c, &r).await;
        assert_eq!(
            ceph.parent(&format!("img_{r}")),
            Some(format!("{v_image}@{s}"))
        );
        restores.push(r);
    }
    step(t0, &format!("{policy}: V={v}, S={s}, R1, R2 ready"));

    // 1. Delete V; SIGKILL at once; restart.
    let asked = Instant::now();
    ops::delete(&mut c, &v).await;
    drop(c);
    d.stop_with(rustix::process::Signal::KILL, Duration::from_secs(30))
        .await;
    let dir = d.into_dir_after_exit();
    let mut d = Daemon::start_in(cephvol_bin!(), dir, &flags).await;
    let mut c = d.clients().await;
    ops::wait_volume_gone(&mut c, &v).await;
    let hidden = asked.elapsed();
    match policy {
        "deferred" => {
            eventually(WAIT, "V to be retained", || {
                let ok = ceph.state(VOLUMES, &v).as_deref() == Some("Retained");
                async move { ok.then_some(()) }
            })
            .await;
            assert!(ceph.images().contains(&v_image), "img_V is kept");
            for r in &restores {
                assert_eq!(
                    ceph.parent(&format!("img_{r}")),
                    Some(format!("{v_image}@{s}")),
                    "the restores stay clones"
                );
            }
            for r in &restores {
                assert_eq!(ceph.used(&format!("img_{r}")), 0, "nothing copied into {r}");
            }
            step(
                t0,
                &format!(
                    "{policy}: V gone from ListVolumes after {hidden:.1?} (a kill included), \
                     nothing copied"
                ),
            );
        }
        _ => {
            eventually(WAIT, "V's image to be removed", || {
                let ok = !ceph.images().contains(&v_image) && ceph.state(VOLUMES, &v).is_none();
                async move { ok.then_some(()) }
            })
            .await;
            for r in &restores {
                let image = format!("img_{r}");
                assert_eq!(ceph.parent(&image), None, "flattened");
                assert_eq!(ceph.used(&image), SIZE, "{r} holds a full copy");
            }
            step(
                t0,
                &format!("{policy}: V gone after {hidden:.1?} (a kill included), R1 and R2 copied"),
            );
        }
    }

    // 2. Every reader still reads S's bytes; S is restorable.
    for r in &restores {
        assert_eq!(ceph.export_sha(&format!("img_{r}")), s_sha, "restore {r}");
    }
    let s_home = match policy {
        "deferred" => v_image.clone(),
        _ => format!("img_{s}"),
    };
    assert_eq!(ceph.export_sha(&format!("{s_home}@{s}")), s_sha, "S itself");
    let r3 = ops::create(&mut c, restore_req(CLASS, SIZE as i64, &s, &[])).await;
    leftovers.volume(&r3);
    ops::wait_available(&mut c, &r3).await;
    assert_eq!(
        ceph.export_sha(&format!("img_{r3}")),
        s_sha,
        "a late restore"
    );
    restores.push(r3);

    // 3. Delete S.
    ops::delete_snapshot(&mut c, &s).await;
    ops::wait_snapshot_gone(&mut c, &s).await;
    if policy == "deferred" {
        eventually(WAIT, "S to be retained", || {
            let ok = ceph.state(SNAPSHOTS, &s).as_deref() == Some("Retained");
            async move { ok.then_some(()) }
        })
        .await;
        assert!(
            ceph.snaps(&v_image).iter().any(|(name, _, _)| *name == s),
            "S's rbd snapshot is kept for its clones"
        );
    }
    for r in &restores {
        assert_eq!(ceph.export_sha(&format!("img_{r}")), s_sha, "restore {r}");
    }

    // 4. Delete the restores; SIGKILL right after; everything must go.
    for r in &restores {
        ops::delete(&mut c, r).await;
    }
    drop(c);
    d.stop_with(rustix::process::Signal::KILL, Duration::from_secs(30))
        .await;
    let dir = d.into_dir_after_exit();
    let mut d = Daemon::start_in(cephvol_bin!(), dir, &flags).await;
    let started = Instant::now();
    eventually(WAIT, "every image and record of the test to go", || {
        let left: Vec<String> = ceph.images().difference(&images_before).cloned().collect();
        let records = [&v, &s]
            .into_iter()
            .chain(&restores)
            .filter(|id| ceph.state(VOLUMES, id).is_some() || ceph.state(SNAPSHOTS, id).is_some())
            .count();
        async move { (left.is_empty() && records == 0).then_some(()) }
    })
    .await;
    step(
        t0,
        &format!(
            "{policy}: everything gone {:.1?} after the second restart",
            started.elapsed()
        ),
    );
    ceph.assert_consistent(&format!("after the {policy} run"));
    assert!(ceph.trash().is_empty(), "nothing in the trash");
    leftovers.done();
    assert!(d.terminate().await.success(), "{}", d.logs());
    true
}

async fn snapshot(c: &mut Clients, volume: &str) -> String {
    let snap = c
        .runtime
        .create_volume_snapshot(snapshot_req(volume, &[]))
        .await
        .expect("CreateVolumeSnapshot");
    id_of(
        &snap
            .into_inner()
            .volume_snapshot
            .expect("snapshot")
            .metadata,
    )
}
