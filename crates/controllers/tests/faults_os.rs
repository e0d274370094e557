//! Faults around shared sources, on the fake cluster with paused tokio time: an OS image that
//! cannot be populated (and is fixed later), OS images nobody uses any more, a snapshot deleted
//! right after a restore from it was accepted, and the guest-visible size of encrypted volumes.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use controllers::events::reason;
use controllers::{os_image_name, snapshot_key, volume_image_name, SourceError};
use rbd::{BlockBackend, Passphrase, RbdError, LUKS2_HEADER_SIZE};
use rbd_testkit::fake::Op;
use runner::RunnerConfig;
use store::{ImageState, SnapshotState, ENCRYPTION_HEADER_SET};
use testdata::pattern;

const BUDGET: Duration = Duration::from_secs(3600);

async fn world_with(cfg: controllers::ControllerConfig) -> World {
    let mut w = World::new(cfg, RunnerConfig::default());
    w.start().await;
    w
}

async fn world() -> World {
    world_with(test_config()).await
}

async fn state_of(w: &World, id: &str) -> ImageState {
    w.images().get(id).await.unwrap().status.state
}

#[tokio::test(start_paused = true)]
async fn an_os_image_that_failed_to_populate_is_retried_and_heals_every_waiting_volume() {
    let w = world().await;
    let data = pattern((MIB + 77) as usize, 4);
    let reference = w.source.add("flaky-registry", data.clone());
    let digest = digest_of("flaky-registry");
    // The pinned digest answers 404 once (a registry being fixed), then the pool is full once.
    w.source.fail_open(SourceError::NotFound(format!(
        "reg/flaky-registry@{digest}"
    )));
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut v = new_volume(2 * MIB);
        v.spec.image = reference.clone();
        ids.push(w.images().create(v).await.unwrap().metadata.id);
    }
    assert!(
        w.wait_for(BUDGET, |_, images, _| images
            .iter()
            .all(|i| i.status.state == ImageState::Error))
            .await
    );
    let s = w.snapshots().get(&digest).await.unwrap();
    assert_eq!(s.status.state, SnapshotState::Failed);
    for id in &ids {
        let events = w.events.with_reason(id, reason::SNAPSHOT_FAILED);
        assert_eq!(events.len(), 1, "the reason is in one event");
        assert!(events[0].message.contains("image not found"), "{events:?}");
    }
    w.cluster.fail_next(
        Op::Write,
        1,
        RbdError::Other("No space left on device".into()),
    );
    // Nobody intervenes: after the retry period the populate runs again, fails on the full
    // pool, and after the next period succeeds.
    assert!(w.settle(BUDGET).await);
    for id in &ids {
        assert_eq!(state_of(&w, id).await, ImageState::Available);
        let name = volume_image_name(id);
        let got = w.cluster.read(&name, None, 0, data.len() as u64).await;
        assert_eq!(got.unwrap().to_vec(), data);
    }
    assert_eq!(w.source.opens(), 3);
    assert_eq!(
        w.snapshots().get(&digest).await.unwrap().status.state,
        SnapshotState::Ready
    );
}

fn gc_config(grace: Duration) -> controllers::ControllerConfig {
    controllers::ControllerConfig {
        os_image_gc_grace: grace,
        ..test_config()
    }
}

#[tokio::test(start_paused = true)]
async fn an_os_image_no_volume_uses_is_removed_after_the_grace_period_and_not_before() {
    let w = world_with(gc_config(Duration::from_secs(3600))).await;
    let reference = w.source.add("ubuntu", pattern(MIB as usize, 2));
    let digest = digest_of("ubuntu");
    let mut vols = Vec::new();
    for _ in 0..2 {
        let mut v = new_volume(MIB);
        v.spec.image = reference.clone();
        vols.push(w.images().create(v).await.unwrap().metadata.id);
    }
    assert!(
        w.wait_for(BUDGET, |_, images, _| images
            .iter()
            .all(|i| i.status.state == ImageState::Available))
            .await
    );
    // One volume left: the snapshot is in use for as long as it exists.
    w.images().delete(&vols[0]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3 * 3600)).await;
    assert_eq!(
        w.snapshots().get(&digest).await.unwrap().status.state,
        SnapshotState::Ready
    );
    w.images().delete(&vols[1]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1800)).await;
    assert!(
        w.snapshots().get(&digest).await.is_ok(),
        "kept within the grace period"
    );
    assert!(w.settle(BUDGET).await);
    assert!(
        w.snapshots().get(&digest).await.is_err(),
        "removed after it"
    );
    assert!(w.cluster.list_images().await.unwrap().is_empty());
    // The next volume of that image populates it again.
    let mut v = new_volume(MIB);
    v.spec.image = reference;
    let v = w.images().create(v).await.unwrap();
    assert!(
        w.wait_for(BUDGET, |_, images, _| images.iter().any(|i| i.metadata.id
            == v.metadata.id
            && i.status.state == ImageState::Available))
            .await
    );
    assert_eq!(w.source.opens(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_zero_grace_period_keeps_os_images_for_ever() {
    let w = world_with(gc_config(Duration::ZERO)).await;
    let reference = w.source.add("keep", pattern(MIB as usize, 5));
    let mut v = new_volume(MIB);
    v.spec.image = reference;
    let v = w.images().create(v).await.unwrap();
    assert!(w.settle(BUDGET).await);
    w.images().delete(&v.metadata.id).await.unwrap();
    assert!(w.settle(BUDGET).await);
    tokio::time::sleep(Duration::from_secs(30 * 24 * 3600)).await;
    assert!(w.settle(BUDGET).await);
    assert!(w.snapshots().get(&digest_of("keep")).await.is_ok());
    assert!(w
        .cluster
        .image_exists(&os_image_name(&digest_of("keep")))
        .await
        .unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_populate_whose_last_waiting_volume_is_deleted_is_cancelled() {
    let w = world().await;
    w.source.hold();
    let reference = w.source.add("big-and-slow", pattern((2 * MIB) as usize, 6));
    let digest = digest_of("big-and-slow");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut v = new_volume(2 * MIB);
        v.spec.image = reference.clone();
        ids.push(w.images().create(v).await.unwrap().metadata.id);
    }
    let key = snapshot_key(&digest);
    assert!(
        w.wait_for(BUDGET, |r, _, _| r.runner.state(&key)
            == Some(runner::OpState::Running))
            .await
    );
    // One volume still waits: the populate goes on.
    w.images().delete(&ids[0]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(w.r().runner.state(&key).is_some(), "still populating");
    // Nobody waits any more: cancelled, nothing left, although the registry never answered.
    w.images().delete(&ids[1]).await.unwrap();
    assert!(w.settle(BUDGET).await);
    assert!(w.r().runner.state(&key).is_none());
    assert!(w.snapshots().get(&digest).await.is_err());
    assert!(w.cluster.list_images().await.unwrap().is_empty());
    w.source.release();
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_deleted_right_after_a_restore_was_accepted_is_kept_until_the_restore_has_it() {
    let w = world_with(flatten_config()).await;
    let vol = w.images().create(new_volume(2 * MIB)).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let vname = volume_image_name(&vol.metadata.id);
    let data = pattern(200_000, 8);
    w.cluster.write_at(&vname, 0, &data).await.unwrap();
    let snap = w
        .snapshots()
        .create(new_volume_snapshot(&vol.metadata.id))
        .await
        .unwrap();
    assert!(w.settle(BUDGET).await);
    let sid = snap.metadata.id.clone();
    // Hold restores at their first step (a busy cluster): the deletion must wait for them.
    w.cluster.set_delay(Op::Clone, Duration::from_secs(30));
    w.cluster.set_delay(Op::ReadStream, Duration::from_secs(30));
    let mut r = new_volume(2 * MIB);
    r.spec.snapshot_ref = Some(sid.clone());
    let r = w.images().create(r).await.unwrap();
    // An encrypted restore of the plain snapshot: a copy, not a clone.
    let mut e = new_volume(2 * MIB);
    e.spec.snapshot_ref = Some(sid.clone());
    e.spec.encryption = Some(encryption(&w.kek(), b"pw"));
    let e = w.images().create(e).await.unwrap();
    w.snapshots().delete(&sid).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s = w.snapshots().get(&sid).await.unwrap();
    assert!(s.metadata.is_deleted(), "shows deleted_at");
    assert_eq!(s.status.state, SnapshotState::Ready, "kept meanwhile");
    w.cluster.set_delay(Op::Clone, Duration::ZERO);
    w.cluster.set_delay(Op::ReadStream, Duration::ZERO);
    assert!(w.settle(BUDGET).await);
    assert!(w.snapshots().get(&sid).await.is_err(), "removed afterwards");
    let got = w.images().get(&r.metadata.id).await.unwrap();
    assert_eq!(
        got.status.state,
        ImageState::Available,
        "{}",
        got.status.message
    );
    let rname = volume_image_name(&r.metadata.id);
    let read = w.cluster.read(&rname, None, 0, data.len() as u64).await;
    assert_eq!(read.unwrap().to_vec(), data);
    assert_eq!(
        state_of(&w, &e.metadata.id).await,
        ImageState::Available,
        "the encrypted copy finished too"
    );
    let ename = volume_image_name(&e.metadata.id);
    let read = w
        .cluster
        .read(&ename, None, LUKS2_HEADER_SIZE, data.len() as u64)
        .await;
    assert_eq!(read.unwrap().to_vec(), data);
    assert!(w.cluster.list_snapshots(&vname).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_restore_that_first_sees_its_snapshot_already_deleted_still_gets_its_data() {
    let mut w = world_with(flatten_config()).await;
    let vol = w.images().create(new_volume(2 * MIB)).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let vname = volume_image_name(&vol.metadata.id);
    let data = pattern(150_000, 11);
    w.cluster.write_at(&vname, 4096, &data).await.unwrap();
    let snap = w
        .snapshots()
        .create(new_volume_snapshot(&vol.metadata.id))
        .await
        .unwrap();
    assert!(w.settle(BUDGET).await);
    let sid = snap.metadata.id.clone();
    // The restore is accepted and the snapshot's deletion asked for while the provider is down:
    // the restore's first pass finds the snapshot already being deleted (and still Ready).
    w.stop().await;
    let sb: std::sync::Arc<dyn store::Backend> = std::sync::Arc::new(w.store_backend.clone());
    let images = store::Store::<store::Image>::open(sb.clone())
        .await
        .unwrap();
    let snapshots = store::Store::<store::Snapshot>::open(sb).await.unwrap();
    let mut r = new_volume(2 * MIB);
    r.spec.snapshot_ref = Some(sid.clone());
    let r = images.create(r).await.unwrap();
    snapshots.delete(&sid).await.unwrap();
    w.start().await;
    assert!(w.settle(BUDGET).await);
    assert!(w.snapshots().get(&sid).await.is_err());
    assert_eq!(state_of(&w, &r.metadata.id).await, ImageState::Available);
    let rname = volume_image_name(&r.metadata.id);
    let read = w.cluster.read(&rname, None, 4096, data.len() as u64).await;
    assert_eq!(read.unwrap().to_vec(), data);
}

#[tokio::test(start_paused = true)]
async fn a_restore_accepted_after_the_snapshot_deletion_began_fails_instead_of_hanging() {
    let w = world_with(flatten_config()).await;
    let vol = w.images().create(new_volume(MIB)).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let snap = w
        .snapshots()
        .create(new_volume_snapshot(&vol.metadata.id))
        .await
        .unwrap();
    assert!(w.settle(BUDGET).await);
    let sid = snap.metadata.id.clone();
    w.cluster
        .set_delay(Op::ListChildren, Duration::from_secs(30));
    w.snapshots().delete(&sid).await.unwrap();
    assert!(
        w.wait_for(BUDGET, |_, _, snaps| snaps.iter().any(|s| s.metadata.id
            == sid
            && s.status.state == SnapshotState::Flattening))
            .await
    );
    let mut r = new_volume(MIB);
    r.spec.snapshot_ref = Some(sid.clone());
    let r = w.images().create(r).await.unwrap();
    w.cluster.set_delay(Op::ListChildren, Duration::ZERO);
    assert!(w.settle(BUDGET).await);
    assert!(w.snapshots().get(&sid).await.is_err());
    assert_eq!(state_of(&w, &r.metadata.id).await, ImageState::Error);
}

#[tokio::test(start_paused = true)]
async fn a_new_encrypted_volume_shows_the_guest_exactly_its_size_before_and_after_an_expand() {
    let w = world().await;
    let mut v = new_volume(20 * MIB);
    v.spec.encryption = Some(encryption(&w.kek(), b"secret"));
    let v = w.images().create(v).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let id = v.metadata.id.clone();
    let name = volume_image_name(&id);
    let got = w.images().get(&id).await.unwrap();
    assert_eq!(got.status.state, ImageState::Available);
    assert_eq!(got.status.header_size, LUKS2_HEADER_SIZE);
    assert_eq!(got.status.size, 20 * MIB);
    // The fake's encrypted view starts behind the header: the guest sees rbd size − 16 MiB.
    let rbd = w.cluster.stat(&name).await.unwrap().size;
    assert_eq!(rbd - LUKS2_HEADER_SIZE, 20 * MIB);
    let mut got = got;
    got.spec.size = 30 * MIB;
    w.images().update(&got).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let rbd = w.cluster.stat(&name).await.unwrap().size;
    assert_eq!(rbd - LUKS2_HEADER_SIZE, 30 * MIB);
    assert_eq!(w.images().get(&id).await.unwrap().status.size, 30 * MIB);
    // A snapshot reports the guest's size, and a restore of that size holds it.
    let snap = w
        .snapshots()
        .create(new_volume_snapshot(&id))
        .await
        .unwrap();
    assert!(w.settle(BUDGET).await);
    let snap = w.snapshots().get(&snap.metadata.id).await.unwrap();
    assert_eq!(snap.status.size, (30 * MIB) as i64);
    let mut r = new_volume(30 * MIB);
    r.spec.snapshot_ref = Some(snap.metadata.id.clone());
    r.spec.encryption = got.spec.encryption.clone();
    let r = w.images().create(r).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let rgot = w.images().get(&r.metadata.id).await.unwrap();
    assert_eq!(rgot.status.state, ImageState::Available);
    assert_eq!(rgot.status.encryption, ENCRYPTION_HEADER_SET);
    let rbd = w
        .cluster
        .stat(&volume_image_name(&r.metadata.id))
        .await
        .unwrap()
        .size;
    assert_eq!(rbd - LUKS2_HEADER_SIZE, 30 * MIB);
}

#[tokio::test(start_paused = true)]
async fn an_encrypted_volume_as_large_as_its_os_image_is_filled() {
    let w = world().await;
    let data = pattern((2 * MIB) as usize, 9);
    let reference = w.source.add("exact", data.clone());
    let mut v = new_volume(2 * MIB);
    v.spec.image = reference;
    v.spec.encryption = Some(encryption(&w.kek(), b"pw"));
    let v = w.images().create(v).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let got = w.images().get(&v.metadata.id).await.unwrap();
    assert_eq!(
        got.status.state,
        ImageState::Available,
        "{}",
        got.status.message
    );
    let name = volume_image_name(&v.metadata.id);
    assert_eq!(
        w.cluster.stat(&name).await.unwrap().size,
        2 * MIB + LUKS2_HEADER_SIZE
    );
    let read = w
        .cluster
        .read(&name, None, LUKS2_HEADER_SIZE, 2 * MIB)
        .await;
    assert_eq!(read.unwrap().to_vec(), data);
    assert!(w
        .cluster
        .checksum_decrypted(&name, &Passphrase::new(b"pw".to_vec()))
        .is_ok());
}

#[tokio::test(start_paused = true)]
async fn an_encrypted_volume_of_the_old_layout_keeps_its_size() {
    let w = world().await;
    // Provisioned before the header went on top: image = size, header inside.
    let mut v = new_volume(20 * MIB);
    v.spec.encryption = Some(encryption(&w.kek(), b"old"));
    let v = w.images().create(v).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let id = v.metadata.id.clone();
    let name = volume_image_name(&id);
    w.cluster.resize(&name, 20 * MIB).await.unwrap();
    let mut old = w.images().get(&id).await.unwrap();
    old.status.header_size = 0;
    w.images().update(&old).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1300)).await;
    assert!(w.settle(BUDGET).await);
    assert_eq!(
        w.cluster.stat(&name).await.unwrap().size,
        20 * MIB,
        "not grown by itself"
    );
    let mut old = w.images().get(&id).await.unwrap();
    assert_eq!(old.status.state, ImageState::Available);
    old.spec.size = 24 * MIB;
    w.images().update(&old).await.unwrap();
    assert!(w.settle(BUDGET).await);
    assert_eq!(w.cluster.stat(&name).await.unwrap().size, 24 * MIB);
    assert_eq!(w.images().get(&id).await.unwrap().status.header_size, 0);
    assert_eq!(
        w.events
            .with_reason(&id, reason::UPDATE_IMAGE_SIZE_FAILED)
            .len(),
        0
    );
}
