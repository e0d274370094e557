//! The real daemon on a real Ceph cluster (`--backend ceph`): plain and encrypted volumes,
//! snapshot, restore, expand and delete, with the key taken from the `[client.<user>]` section of
//! a multi-section keyring, and no secret in the logs. A second test stages the faults that need
//! librbd: an image removed behind the daemon's back, a snapshot re-homed by the Go provider, and
//! the size an encrypted volume's guest sees (read through librbd's LUKS2 layer; QEMU's rbd
//! driver, when installed, must agree).
//!
//! Ignored by default. Run with a cluster from `cargo xtask ceph up`:
//! `eval $(cargo xtask ceph env); cargo test -p tests --features ceph --test e2e_ceph -- --ignored`
//! (`cargo xtask integration` runs it). Without `CEPH_MONITORS`/`CEPH_POOL` the test skips, except
//! under `CEPHVOL_INTEGRATION=1` (set by `cargo xtask integration`), where it fails.

use std::collections::BTreeMap;
use std::time::Duration;

use iri::volume_v1 as pb;
use tests::cephvol_bin;
use tests::cluster::{daemon_flags, skip, var, Ceph, Leftovers, SNAPSHOTS, VOLUMES};
use tests::daemon::{eventually, id_of, ops, restore_req, snapshot_req, volume_req, Daemon};

const MIB: i64 = 1 << 20;

/// The tests of this file run one at a time: two daemons on one pool share its records and its
/// leader lease, so one daemon's controllers would work on the other's volumes (and record the
/// events there).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const PASSPHRASE: &str = "ceph-e2e-passphrase-7b1f";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Ceph cluster: cargo xtask integration"]
async fn the_daemon_provisions_volumes_on_a_real_ceph_cluster() {
    let _serial = SERIAL.lock().await;
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
    // The WWN and the class's QoS limits are image metadata (written in one class call on the
    // header, without opening the image), and librbd applies the limits as the image's own
    // configuration when a client opens it.
    let ceph = Ceph { pool: pool.clone() };
    let spec = ceph.spec(&format!("img_{id}"));
    let meta = ceph.json("rbd", &["image-meta", "list", &spec]);
    assert_eq!(meta["wwn"], access.handle.as_str(), "{meta}");
    let limits: Vec<(&String, &serde_json::Value)> = meta
        .as_object()
        .expect("metadata object")
        .iter()
        .filter(|(k, _)| k.starts_with("conf_rbd_qos_"))
        .collect();
    assert!(!limits.is_empty(), "QoS limits as metadata: {meta}");
    for (key, value) in limits {
        let option = key.trim_start_matches("conf_");
        let applied = ceph.run("rbd", &["config", "image", "get", &spec, option]);
        assert_eq!(Some(applied.trim()), value.as_str(), "{option} of {spec}");
    }

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
    // Gone for clients is not gone from the pool: under the deferred deletion policy the volume
    // is retained until its snapshot and the snapshot's restore are removed. The next suites
    // start from a consistent pool.
    let ceph = Ceph { pool: pool.clone() };
    eventually(
        WAIT,
        "every deletion to finish in the pool and the store",
        || {
            let images = ceph.images();
            let ok = [&rid, &eid, &id]
                .into_iter()
                .all(|v| ceph.state(VOLUMES, v).is_none() && !images.contains(&format!("img_{v}")))
                && ceph.state(SNAPSHOTS, &sid).is_none();
            async move { ok.then_some(()) }
        },
    )
    .await;
    ceph.assert_consistent("after the deletions");
    drop(c);
    assert!(d.terminate().await.success(), "{}", d.logs());

    let logs = d.logs();
    assert!(logs.contains("with the ceph backend"), "{logs}");
    assert!(!logs.contains(PASSPHRASE), "passphrase in the logs");
    if let Some(k) = user_key {
        assert!(!logs.contains(&k), "cephx key in the logs");
    }
}

/// The size the guest of an encrypted image sees: librbd's size through its LUKS2 layer.
#[cfg(feature = "ceph")]
async fn decrypted_size(image: &str, passphrase: &[u8]) -> u64 {
    let cfg = ceph::CephConfig::from_env().expect("CEPH_CONF/CEPH_POOL");
    let pool = cfg.pool.clone();
    let backend = ceph::CephBackend::connect(cfg).await.expect("connect");
    let io = backend.rados().ioctx(&pool).expect("ioctx");
    let (image, pass) = (image.to_string(), rbd::Passphrase::new(passphrase.to_vec()));
    tokio::task::spawn_blocking(move || {
        let img = io.open_image(&image, None, true).expect("open");
        img.encryption_load_luks2(&pass).expect("LUKS2 load");
        img.size().expect("size")
    })
    .await
    .expect("librbd thread")
}

#[cfg(not(feature = "ceph"))]
async fn decrypted_size(_image: &str, _passphrase: &[u8]) -> u64 {
    panic!("the decrypted size needs librbd: build the tests with --features ceph")
}

/// QEMU's view of an encrypted rbd image (`qemu-img info` with the luks2 driver), when this
/// qemu-img has its rbd driver (Debian ships it in `qemu-block-extra`); `None` otherwise.
fn qemu_size(ceph: &Ceph, image: &str, passphrase: &[u8], dir: &std::path::Path) -> Option<u64> {
    let secret = dir.join("luks-secret");
    std::fs::write(&secret, passphrase).expect("secret file");
    let conf = var("CEPH_CONF")?;
    let opts = format!(
        "driver=rbd,pool={},image={image},conf={conf},encrypt.format=luks2,encrypt.key-secret=sec0",
        ceph.pool
    );
    let object = format!("secret,id=sec0,file={}", secret.display());
    let args = [
        "info",
        "--output=json",
        "--object",
        &object,
        "--image-opts",
        &opts,
    ];
    match ceph.try_run("qemu-img", &args) {
        Ok(out) => {
            let v: serde_json::Value = serde_json::from_str(&out).expect("qemu-img JSON");
            v["virtual-size"].as_u64()
        }
        Err(e) if e.contains("Unknown driver 'rbd'") || e.contains("No such file") => {
            eprintln!("qemu-img without its rbd driver: checked through librbd only ({e})");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Ceph cluster: cargo xtask integration"]
async fn lost_images_go_rehomes_and_encrypted_sizes_on_a_real_ceph_cluster() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((flags, pool)) = daemon_flags(dir.path()) else {
        return;
    };
    let ceph = Ceph { pool: pool.clone() };
    // Removes what the test made if it fails half-way (dropped after the daemon).
    let leftovers = Leftovers {
        ceph: ceph.clone(),
        volumes: Default::default(),
        snapshots: Default::default(),
    };

    // A snapshot the Go provider re-homed: its data on `img_<id>@<id>`, no image record.
    let sid = store::new_id();
    leftovers.snapshot(&sid);
    let rehome = format!("img_{sid}");
    let spec = ceph.spec(&rehome);
    ceph.run("rbd", &["create", "--size", "8M", &spec]);
    ceph.run("rbd", &["snap", "create", &format!("{spec}@{sid}")]);
    ceph.run("rbd", &["snap", "protect", &format!("{spec}@{sid}")]);
    let record = serde_json::json!({
        "metadata": {
            "id": sid, "annotations": null,
            "labels": {"ceph-provider.ironcore.dev/manager": "ceph-volume-provider"},
            "createdAt": "2024-05-01T10:11:12Z", "generation": 0, "resourceVersion": 3,
            "finalizers": ["snapshot"]
        },
        "source": {"ironcoreImage": "", "volumeImageId": sid},
        "status": {"state": "Ready", "digest": "", "size": 8 << 20}
    });
    ceph.run(
        "rados",
        &[
            "-p",
            &pool,
            "setomapval",
            SNAPSHOTS,
            &sid,
            &record.to_string(),
        ],
    );

    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut d = Daemon::start_in(cephvol_bin!(), dir, &flags).await;
    let mut c = d.clients().await;

    // Item 5: deleting it removes `img_<id>` by the parent-name rule.
    ops::delete_snapshot(&mut c, &sid).await;
    ops::wait_snapshot_gone(&mut c, &sid).await;
    eventually(WAIT, &format!("{rehome} removed"), || {
        let ceph = ceph.clone();
        let rehome = rehome.clone();
        async move { (!ceph.images().contains(&rehome)).then_some(()) }
    })
    .await;

    // Item 1: an image removed behind the daemon's back is an error for good, with one event.
    let id = ops::create(&mut c, volume_req("standard", 8 * MIB, &[])).await;
    leftovers.volume(&id);
    ops::wait_available(&mut c, &id).await;
    let image = format!("img_{id}");
    ceph.run("rbd", &["rm", "--no-progress", &ceph.spec(&image)]);
    for size in [16 * MIB, 24 * MIB] {
        c.runtime
            .expand_volume(pb::ExpandVolumeRequest {
                volume_id: id.clone(),
                resources: Some(pb::VolumeResources {
                    storage_bytes: size,
                }),
            })
            .await
            .expect("ExpandVolume");
    }
    eventually(WAIT, &format!("volume {id} in error"), || {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            let v = ops::get(&mut c, &id).await?;
            let st = v.status.as_ref().map(|s| s.state).unwrap_or(-1);
            (st == pb::VolumeState::VolumeError as i32).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let v = ops::get(&mut c, &id).await.expect("listed");
    assert_eq!(
        v.status.as_ref().map(|s| s.state),
        Some(pb::VolumeState::VolumeError as i32)
    );
    assert!(!ceph.images().contains(&image), "{image} was created again");
    let events = ops::events(&mut c, &id).await;
    let vanished: Vec<_> = events
        .iter()
        .filter(|(r, _)| r == "ImageVanished")
        .collect();
    assert_eq!(vanished.len(), 1, "{events:?}");
    assert!(
        !events.iter().any(|(r, _)| r == "UpdateImageSizeFailed"),
        "{events:?}"
    );
    ops::delete(&mut c, &id).await;
    ops::wait_volume_gone(&mut c, &id).await;

    // Item 13: the guest of a new encrypted volume sees exactly the size asked for.
    const GIB: i64 = 1 << 30;
    let mut enc = volume_req("standard", GIB, &[]);
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
    leftovers.volume(&eid);
    ops::wait_available(&mut c, &eid).await;
    let eimage = format!("img_{eid}");
    let seen = decrypted_size(&eimage, PASSPHRASE.as_bytes()).await;
    assert_eq!(
        seen, GIB as u64,
        "the guest of a 1 GiB encrypted volume sees {seen} bytes"
    );
    if let Some(q) = qemu_size(&ceph, &eimage, PASSPHRASE.as_bytes(), d.dir.path()) {
        assert_eq!(q, GIB as u64, "QEMU's luks2 view");
    }
    c.runtime
        .expand_volume(pb::ExpandVolumeRequest {
            volume_id: eid.clone(),
            resources: Some(pb::VolumeResources {
                storage_bytes: 2 * GIB,
            }),
        })
        .await
        .expect("ExpandVolume");
    eventually(WAIT, "the encrypted volume to grow", || {
        let mut c = c.clone();
        let eid = eid.clone();
        async move {
            let v = ops::get(&mut c, &eid).await?;
            let size = v.status?.resources?.storage_bytes;
            (size == 2 * GIB).then_some(())
        }
    })
    .await;
    assert_eq!(
        decrypted_size(&eimage, PASSPHRASE.as_bytes()).await,
        2 * GIB as u64
    );
    ops::delete(&mut c, &eid).await;
    ops::wait_volume_gone(&mut c, &eid).await;

    drop(c);
    assert!(d.terminate().await.success(), "{}", d.logs());
    let left = ceph.images();
    for name in [&rehome, &image, &eimage] {
        assert!(!left.contains(name), "{name} left behind");
    }
}

/// Bound of the waits of the fault test.
const WAIT: Duration = Duration::from_secs(120);
