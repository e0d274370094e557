//! Resumable populate on a real Ceph cluster: the real daemon (`--backend ceph`, default populate
//! flags) is killed with SIGKILL once 70 % of a 1 GiB rootfs went through a byte-counting proxy in
//! front of a real registry, restarted with the same flags, and must fetch at most 35 % of the
//! blob again and still produce exactly the rootfs.
//!
//! Set-up: a loopback `docker-registry` serves an ironcore image whose rootfs is 1 GiB of
//! deterministic pseudo-random bytes (no zero stretch the populate could skip);
//! `registry_fixture::CountingProxy` sits between it and the daemon (the image reference names the
//! proxy), counting every byte the registry sends. Then:
//!
//! 1. a volume O is created from the image; its OS snapshot goes `Populating`;
//! 2. once the proxy has served 70 % of the blob, the daemon gets SIGKILL; the test reads the
//!    checkpoint the OS snapshot's record holds (`status.checkpoint.done`) and checks that the
//!    populate was really interrupted (no `@v1`);
//! 3. the proxy's counter is reset and the daemon restarted with the same flags and directory;
//! 4. O becomes AVAILABLE; the proxy served at most 35 % of the blob after the restart (the
//!    daemon asked for the rest with an HTTP `Range` request from the checkpoint on), and
//!    `ListEvents` shows O a `PopulateProgress` event saying where it resumed. The bound
//!    holds by construction with the default flags: the checkpoint trails the bytes served by at
//!    most the gate's window (6 writes of 5 MiB + 5 MiB, see `controllers` `snapshot/checkpoint.rs`)
//!    and the socket buffers, about 4 % of the blob;
//! 5. `rbd export` of O: its first 1 GiB hash to the rootfs's sha256 (which the daemon also
//!    verified, re-hashing the part written before the kill), zeroes behind; the OS snapshot's
//!    record is `Ready` without a checkpoint;
//! 6. clean-up through the daemon and the CLIs; the pool ends exactly as it started.
//!
//! Ignored by default. With a cluster from `cargo xtask ceph up`:
//! `eval $(cargo xtask ceph env); cargo test -p tests --features ceph --test e2e_ceph_resume -- --ignored --nocapture`.
//! `cargo xtask integration` runs it with `CEPHVOL_INTEGRATION=1`, under which a missing cluster
//! environment fails the test instead of skipping it.

use std::net::ToSocketAddrs;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use iri::volume_v1 as pb;
use registry_fixture::{pattern, CountingProxy, IronImage, TestRegistry};
use sha2::{Digest as _, Sha256};
use tests::cephvol_bin;
use tests::cluster::{
    daemon_flags, image_req, step, volume_state, Ceph, KeepLogOnPanic, Leftovers, SNAPSHOTS,
    VOLUMES,
};
use tests::daemon::{eventually, ops, Daemon};

const MIB: u64 = 1 << 20;
/// The rootfs: 1 GiB.
const ROOTFS_LEN: u64 = 1024 * MIB;
const ROOTFS_SEED: u64 = 0x2e5_0e4d;
/// O: room for the rootfs (sizes are whole GiB).
const VOLUME_SIZE: u64 = 2 * ROOTFS_LEN;
/// When the daemon is killed: this share of the blob went through the proxy.
const KILL_AT: f64 = 0.70;
/// The most the restarted daemon may fetch again, as a share of the blob.
const REFETCH_BOUND: f64 = 0.35;
/// A class without QoS limits (0 = unlimited), so that the `rbd` CLI's reads are not throttled.
const CLASS: &str = "resume-unthrottled";
const STEP: Duration = Duration::from_secs(300);
/// Bound of the wait after the restart: a killed client's watches stay until the OSD times them
/// out (`osd_client_watch_timeout`, 30 s).
const SETTLE: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph: cargo xtask integration"]
async fn a_populate_killed_at_70_percent_fetches_at_most_35_percent_again_after_the_restart() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    // Skips (or, under `CEPHVOL_INTEGRATION=1`, fails) without a cluster environment.
    let Some((mut flags, pool)) = daemon_flags(dir.path()) else {
        return;
    };
    let ceph = Ceph { pool: pool.clone() };
    ceph.assert_consistent("before the test (left over by an earlier run or suite?)");
    let images_before = ceph.images();
    let vol_keys_before = ceph.omap_keys(VOLUMES);
    let snap_keys_before = ceph.omap_keys(SNAPSHOTS);

    // Registry with the OS image, behind the counting proxy.
    let rootfs = pattern(ROOTFS_LEN as usize, ROOTFS_SEED);
    let rootfs_sha = hex::encode(Sha256::digest(&rootfs));
    let reg = TestRegistry::start();
    let pushed = reg
        .pusher()
        .push_image("os/resume", "1", &IronImage::rootfs(rootfs))
        .await;
    let upstream = reg
        .host()
        .to_socket_addrs()
        .expect("registry address")
        .next()
        .expect("one registry address");
    let proxy = CountingProxy::start(upstream).expect("proxy");
    let reference = format!("{}/os/resume:1", proxy.host());
    let digest = pushed.manifest_digest.clone();
    let os_image = format!("snap_{digest}");
    step(t0, &format!("registry up, pushed {reference} ({digest})"));

    let classes = dir.path().join("classes.json");
    std::fs::write(
        &classes,
        format!(r#"[{{"name":"{CLASS}","capabilities":{{"tps":0,"iops":0}}}}]"#),
    )
    .expect("classes");
    // The default populate flags (buffer, queue depth): what users run.
    flags.push(format!("--supported-volume-classes={}", classes.display()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let leftovers = Leftovers {
        ceph: ceph.clone(),
        volumes: Mutex::default(),
        snapshots: Mutex::default(),
    };
    let mut d = Daemon::start_in(cephvol_bin!(), dir, &flags).await;
    let keep_log = KeepLogOnPanic(d.dir.path().join("daemon.log"), "e2e_ceph_resume");
    let mut c = d.clients().await;
    step(t0, "daemon up");

    // 1. The populate.
    proxy.reset();
    let o = ops::create(&mut c, image_req(CLASS, &reference, VOLUME_SIZE)).await;
    leftovers.volume(&o);
    leftovers.snapshot(&digest);

    // 2. SIGKILL at 70 % of the blob.
    let kill_at = (ROOTFS_LEN as f64 * KILL_AT) as u64;
    tokio::time::timeout(STEP, proxy.wait_served(kill_at))
        .await
        .expect("the proxy to serve 70 % of the blob");
    let status = d
        .stop_with(rustix::process::Signal::KILL, Duration::from_secs(30))
        .await;
    assert!(!status.success());
    drop(c);
    let served_at_kill = proxy.served();
    assert!(
        ceph.images().contains(&os_image) && ceph.snaps(&os_image).is_empty(),
        "the populate was interrupted: {os_image} without @v1 (the populate finished before the \
         kill?)"
    );
    let rec = ceph.record(SNAPSHOTS, &digest).expect("OS snapshot record");
    assert_eq!(rec["status"]["state"], "Populating", "{rec}");
    let checkpoint = rec["status"]["checkpoint"]["done"].as_u64().unwrap_or(0);
    let pct = |b: u64| 100.0 * b as f64 / ROOTFS_LEN as f64;
    step(
        t0,
        &format!(
            "daemon killed ({status}) after the proxy served {:.1} % of the blob; checkpoint at \
             {:.1} % ({checkpoint} bytes)",
            pct(served_at_kill),
            pct(checkpoint)
        ),
    );

    // 3. Restart with the same flags and directory; count from here.
    proxy.reset();
    let dir = d.into_dir_after_exit();
    drop(keep_log);
    let mut d = Daemon::start_in(cephvol_bin!(), dir, &flags).await;
    let _keep_log = KeepLogOnPanic(d.dir.path().join("daemon.log"), "e2e_ceph_resume");
    let mut c = d.clients().await;
    let t_restart = Instant::now();

    // 4. O becomes available.
    let o_vol = eventually(SETTLE, "O to become AVAILABLE after the restart", || {
        let mut c = c.clone();
        let o = o.clone();
        async move {
            let vol = ops::get(&mut c, &o).await.expect("O is listed");
            let state = volume_state(&vol);
            assert_ne!(
                state,
                pb::VolumeState::VolumeError as i32,
                "O failed: {vol:?}"
            );
            (state == pb::VolumeState::VolumeAvailable as i32).then_some(vol)
        }
    })
    .await;
    let refetched = proxy.served();
    step(
        t0,
        &format!(
            "O available {:.1}s after the restart; the proxy served {:.1} % of the blob again \
             ({refetched} bytes)",
            t_restart.elapsed().as_secs_f64(),
            pct(refetched)
        ),
    );
    assert!(
        refetched as f64 <= REFETCH_BOUND * ROOTFS_LEN as f64,
        "fetched {:.1} % of the blob again after a kill at {:.1} % (checkpoint {:.1} %); at most \
         {:.0} % allowed\n{}",
        pct(refetched),
        pct(served_at_kill),
        pct(checkpoint),
        REFETCH_BOUND * 100.0,
        d.logs()
    );

    // What the people who watch O see (ListEvents, as the volumepoollet does): that the
    // populate resumed, and where, then its end.
    let events = ops::events(&mut c, &o).await;
    assert!(
        events
            .iter()
            .any(|(r, m)| r == "PopulateProgress" && m.contains("resumed at")),
        "no event says the populate resumed: {events:?}"
    );
    assert!(
        events
            .iter()
            .any(|(r, m)| r == "PopulateCompleted" && m.contains(", resumed at ")),
        "{events:?}"
    );
    step(
        t0,
        &format!(
            "events of O: {}",
            events
                .iter()
                .map(|(r, m)| format!("{r} \"{m}\""))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    );

    // 5. The data.
    let o_image = format!("img_{o}");
    assert_eq!(
        ceph.parent(&o_image),
        Some(format!("{os_image}@v1")),
        "O is a clone of the OS image"
    );
    let rec = ceph.record(SNAPSHOTS, &digest).expect("OS snapshot record");
    assert_eq!(rec["status"]["state"], "Ready", "{rec}");
    assert!(
        rec["status"].get("checkpoint").is_none(),
        "no checkpoint once populated: {rec}"
    );
    let o_export = ceph.export(&o_image, ROOTFS_LEN);
    assert_eq!(o_export.len, VOLUME_SIZE);
    assert_eq!(
        o_export.head, rootfs_sha,
        "O starts with exactly the rootfs"
    );
    assert!(o_export.tail_zero, "O is zero behind the rootfs");
    assert!(
        o_vol.status.and_then(|s| s.access).is_some(),
        "O has access data"
    );

    // 6. Clean-up.
    ops::delete(&mut c, &o).await;
    eventually(SETTLE, "O to be deleted", || {
        let mut c = c.clone();
        let o = o.clone();
        let gone = ceph.info(&o_image).is_none();
        async move { (ops::get(&mut c, &o).await.is_none() && gone).then_some(()) }
    })
    .await;
    drop(c);
    let status = d.terminate().await;
    assert!(status.success(), "daemon exit {status}:\n{}", d.logs());
    ceph.remove_os_image(&digest);
    ceph.assert_consistent("after the clean-up");
    assert_eq!(
        ceph.images(),
        images_before,
        "rbd images as before the test"
    );
    assert_eq!(
        ceph.omap_keys(VOLUMES),
        vol_keys_before,
        "Image records as before"
    );
    assert_eq!(
        ceph.omap_keys(SNAPSHOTS),
        snap_keys_before,
        "Snapshot records as before"
    );
    leftovers.volumes.lock().expect("lock").clear();
    leftovers.snapshots.lock().expect("lock").clear();
    step(t0, "cleaned up");
}
