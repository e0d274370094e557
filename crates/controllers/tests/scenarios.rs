//! Scenario tests of both reconcilers on the fake cluster, with paused tokio time.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use controllers::{image_key, os_image_name, snapshot_key, volume_image_name};
use rbd::{BlockBackend, RbdError};
use rbd_testkit::fake::{Op, LUKS2_HEADER_SIZE};
use runner::RunnerConfig;
use store::{ImageState, ListOptions, SnapshotState, ENCRYPTION_HEADER_SET};
use testdata::pattern;

const BUDGET: Duration = Duration::from_secs(3600);

async fn world() -> World {
    world_with(test_config()).await
}

async fn world_with(cfg: controllers::ControllerConfig) -> World {
    let mut w = World::new(cfg, RunnerConfig::default());
    w.start().await;
    w
}

async fn read(w: &World, image: &str, snap: Option<&str>, offset: u64, len: u64) -> Vec<u8> {
    w.cluster
        .read(image, snap, offset, len)
        .await
        .unwrap()
        .to_vec()
}

#[tokio::test(start_paused = true)]
async fn an_empty_volume_becomes_available_with_access_wwn_and_limits() {
    let w = world().await;
    let mut vol = new_volume(3 * MIB + 5);
    vol.spec.limits = controllers::limits_for_class(100, 1000, 10, 15);
    let vol = w.images().create(vol).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let got = w.images().get(&vol.metadata.id).await.unwrap();
    assert_eq!(got.status.state, ImageState::Available);
    assert_eq!(got.status.size, 4 * MIB);
    let access = got.status.access.unwrap();
    assert_eq!(access.handle, format!("{POOL}/img_{}", vol.metadata.id));
    assert_eq!(access.user, "volumes");
    assert_eq!(access.monitors, "10.0.0.1:6789");
    assert!(!access.user_key.is_empty());
    let name = volume_image_name(&vol.metadata.id);
    assert_eq!(w.cluster.stat(&name).await.unwrap().size, 4 * MIB);
    let md = w.cluster.metadata_list(&name).await.unwrap();
    assert_eq!(md["wwn"], got.spec.wwn);
    assert_eq!(md["conf_rbd_qos_iops_limit"], "100");
    assert_eq!(md.keys().filter(|k| k.starts_with("conf_")).count(), 14);
    assert_eq!(
        w.events
            .with_reason(
                &vol.metadata.id,
                controllers::events::reason::SET_IMAGE_LIMITS_SUCCEEDED
            )
            .len(),
        1
    );
    assert!(got.metadata.has_finalizer("image"));
}

#[tokio::test(start_paused = true)]
async fn a_volume_from_an_os_image_is_populated_once_and_cloned() {
    let w = world().await;
    let data = pattern((MIB + 4096) as usize, 7);
    let reference = w.source.add("ubuntu", data.clone());
    let digest = digest_of("ubuntu");
    let mut a = new_volume(4 * MIB);
    a.spec.image = reference.clone();
    let mut b = new_volume(3 * MIB);
    b.spec.image = reference;
    let a = w.images().create(a).await.unwrap();
    let b = w.images().create(b).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let snap = w.snapshots().get(&digest).await.unwrap();
    assert_eq!(snap.status.state, SnapshotState::Ready);
    assert_eq!(snap.status.digest, digest);
    assert_eq!(snap.status.size, (2 * MIB) as i64);
    assert!(!snap
        .metadata
        .labels
        .contains_key(store::keys::MANAGER_LABEL));
    assert_eq!(snap.metadata.labels["image-digest"], digest);
    assert_eq!(w.source.opens(), 1, "populated exactly once");
    for v in [&a, &b] {
        let got = w.images().get(&v.metadata.id).await.unwrap();
        assert_eq!(got.status.state, ImageState::Available);
        assert_eq!(got.spec.snapshot_ref.as_deref(), Some(digest.as_str()));
        let name = volume_image_name(&v.metadata.id);
        assert_eq!(read(&w, &name, None, 0, data.len() as u64).await, data);
        let info = w.cluster.stat(&name).await.unwrap();
        assert_eq!(info.parent.unwrap().image, os_image_name(&digest));
    }
    assert!(w
        .cluster
        .is_snapshot_protected(&os_image_name(&digest), "v1")
        .await
        .unwrap());
}

#[tokio::test(start_paused = true)]
async fn populate_progress_is_recorded_in_the_snapshot_status() {
    let mut cfg = test_config();
    cfg.populator_buffer_size = 64 * 1024;
    let mut w = World::new(cfg, RunnerConfig::default());
    w.start().await;
    w.cluster
        .set_chunk_delay(Op::Write, Duration::from_millis(300));
    let reference = w.source.add("slow", pattern((2 * MIB) as usize, 3));
    let mut v = new_volume(2 * MIB);
    v.spec.image = reference;
    w.images().create(v).await.unwrap();
    let digest = digest_of("slow");
    let mut seen = None;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Ok(s) = w.snapshots().get(&digest).await {
            if let Some(p) = s.status.progress {
                if p.done > 0 && p.done < p.total {
                    seen = Some(p);
                    break;
                }
            }
        }
    }
    let p = seen.expect("progress seen while populating");
    assert_eq!(p.total, 2 * MIB);
    w.cluster.set_chunk_delay(Op::Write, Duration::ZERO);
    assert!(w.settle(BUDGET).await);
    let s = w.snapshots().get(&digest).await.unwrap();
    assert_eq!(s.status.state, SnapshotState::Ready);
    assert!(s.status.progress.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_waiting_volume_hears_the_populate_progress_at_each_quarter_and_its_throughput_at_the_end(
) {
    use controllers::events::reason::{POPULATE_COMPLETED, POPULATE_PROGRESS};
    let mut cfg = test_config();
    cfg.populator_buffer_size = 64 * 1024;
    let mut w = World::new(cfg, RunnerConfig::default());
    w.start().await;
    w.cluster
        .set_chunk_delay(Op::Write, Duration::from_millis(300));
    let reference = w.source.add("slow", pattern((2 * MIB) as usize, 3));
    let mut v = new_volume(2 * MIB);
    v.spec.image = reference;
    let v = w.images().create(v).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let id = &v.metadata.id;
    let progress: Vec<String> = w
        .events
        .with_reason(id, POPULATE_PROGRESS)
        .into_iter()
        .map(|e| e.message)
        .collect();
    // About 5 s of copying: one event per quarter crossed, none from the 30 s interval.
    assert_eq!(progress.len(), 3, "{progress:?}");
    let percents: Vec<u64> = progress
        .iter()
        .map(|m| {
            assert!(m.starts_with("populating OS image: "), "{m}");
            assert!(m.ends_with(" of 2 MiB"), "{m}");
            let p = m["populating OS image: ".len()..]
                .split('%')
                .next()
                .unwrap();
            p.parse().unwrap()
        })
        .collect();
    for (quarter, p) in percents.iter().enumerate() {
        let floor = 25 * (quarter as u64 + 1);
        assert!((floor..floor + 25).contains(p), "{percents:?}");
    }
    let done = w.events.with_reason(id, POPULATE_COMPLETED);
    assert_eq!(done.len(), 1);
    let m = &done[0].message;
    assert!(m.starts_with("populated OS image: 2 MiB in "), "{m}");
    assert!(m.ends_with("/s"), "{m}");
    assert!(done[0].event_type == controllers::events::EventType::Normal);
}

#[tokio::test(start_paused = true)]
async fn a_slow_populate_also_reports_when_the_event_interval_passes() {
    use controllers::events::reason::POPULATE_PROGRESS;
    let mut cfg = test_config();
    cfg.populator_buffer_size = 64 * 1024;
    cfg.progress_event_interval = Duration::from_secs(2);
    let mut w = World::new(cfg, RunnerConfig::default());
    w.start().await;
    w.cluster.set_chunk_delay(Op::Write, Duration::from_secs(1));
    let reference = w.source.add("slow", pattern((2 * MIB) as usize, 5));
    let mut v = new_volume(2 * MIB);
    v.spec.image = reference;
    let v = w.images().create(v).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let n = w
        .events
        .with_reason(&v.metadata.id, POPULATE_PROGRESS)
        .len();
    // About 16 s of copying with an event at least every 2 s: more than the three quarters.
    assert!(n > 3, "{n} progress events");
}

#[tokio::test(start_paused = true)]
async fn deleting_a_volume_rehomes_its_snapshots_and_keeps_restores_intact() {
    let w = world_with(flatten_config()).await;
    let vol = w.images().create(new_volume(2 * MIB)).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let name = volume_image_name(&vol.metadata.id);
    let data = pattern(300_000, 9);
    w.cluster.write_at(&name, 4096, &data).await.unwrap();
    let snap = w
        .snapshots()
        .create(new_volume_snapshot(&vol.metadata.id))
        .await
        .unwrap();
    assert!(w.settle(BUDGET).await);
    let mut restore = new_volume(3 * MIB);
    restore.spec.snapshot_ref = Some(snap.metadata.id.clone());
    let restore = w.images().create(restore).await.unwrap();
    assert!(w.settle(BUDGET).await);
    // Change the volume after the snapshot: neither the snapshot nor the restore may see it.
    w.cluster.write_at(&name, 0, &[0xEE; 8192]).await.unwrap();

    w.images().delete(&vol.metadata.id).await.unwrap();
    assert!(w.settle(BUDGET).await);

    assert!(
        w.images().get(&vol.metadata.id).await.is_err(),
        "volume gone"
    );
    assert!(!w.cluster.image_exists(&name).await.unwrap());
    let sid = snap.metadata.id.clone();
    let s = w.snapshots().get(&sid).await.unwrap();
    assert_eq!(s.status.state, SnapshotState::Ready);
    assert_eq!(
        s.source.volume_image_id, sid,
        "repointed to its re-homed image"
    );
    let rehomed = w.images().get(&sid).await.unwrap();
    assert_eq!(
        rehomed.metadata.labels[store::keys::INTERNAL_LABEL],
        "rehome"
    );
    assert!(!rehomed
        .metadata
        .labels
        .contains_key(store::keys::MANAGER_LABEL));
    let managed = w
        .images()
        .list(&ListOptions::default().label(store::keys::MANAGER_LABEL, store::keys::MANAGER))
        .await
        .unwrap();
    assert_eq!(
        managed.len(),
        1,
        "the internal image is not a managed volume"
    );
    let mut expected = vec![0u8; 4096];
    expected.extend_from_slice(&data);
    let len = expected.len() as u64;
    assert_eq!(
        read(&w, &volume_image_name(&sid), Some(&sid), 0, len).await,
        expected
    );
    let rname = volume_image_name(&restore.metadata.id);
    assert_eq!(read(&w, &rname, None, 0, len).await, expected);
    assert!(
        w.cluster.stat(&rname).await.unwrap().parent.is_none(),
        "restore was flattened"
    );
    assert!(!w
        .events
        .with_reason(
            &vol.metadata.id,
            controllers::events::reason::IMAGE_DELETION_SUCCEEDED
        )
        .is_empty());

    // Deleting the snapshot removes its internal image as well.
    w.snapshots().delete(&sid).await.unwrap();
    assert!(w.settle(BUDGET).await);
    assert!(w.snapshots().get(&sid).await.is_err());
    assert!(w.images().get(&sid).await.is_err());
    let left = w.cluster.list_images().await.unwrap();
    assert_eq!(left, vec![rname]);
}

#[tokio::test(start_paused = true)]
async fn deleting_a_volume_with_restores_copies_nothing_and_keeps_it_hidden_until_its_last_dependant_goes(
) {
    let w = world().await;
    let vol = w.images().create(new_volume(2 * MIB)).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let vid = vol.metadata.id.clone();
    let name = volume_image_name(&vid);
    let data = pattern(300_000, 21);
    w.cluster.write_at(&name, 4096, &data).await.unwrap();
    let snap = w
        .snapshots()
        .create(new_volume_snapshot(&vid))
        .await
        .unwrap();
    assert!(w.settle(BUDGET).await);
    let sid = snap.metadata.id.clone();
    let mut restores = Vec::new();
    for _ in 0..2 {
        let mut r = new_volume(2 * MIB);
        r.spec.snapshot_ref = Some(sid.clone());
        restores.push(w.images().create(r).await.unwrap().metadata.id);
    }
    assert!(w.settle(BUDGET).await);
    let sums: Vec<String> = restores
        .iter()
        .map(|r| w.cluster.checksum(&volume_image_name(r), None).unwrap())
        .collect();
    let snap_sum = w.cluster.checksum(&name, Some(&sid)).unwrap();

    // The volume goes first: kept hidden for its snapshot, nothing copied.
    w.images().delete(&vid).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let kept = w.images().get(&vid).await.unwrap();
    assert_eq!(kept.status.state, ImageState::Retained);
    assert!(
        kept.status.message.contains(&sid),
        "{}",
        kept.status.message
    );
    assert_eq!(w.cluster.calls(rbd_testkit::fake::Op::Flatten), 0);
    assert!(w.cluster.image_exists(&name).await.unwrap());
    assert!(
        w.images().get(&sid).await.is_err(),
        "no re-home image is made"
    );
    for (r, sum) in restores.iter().zip(&sums) {
        let rname = volume_image_name(r);
        assert_eq!(&w.cluster.checksum(&rname, None).unwrap(), sum);
        assert!(
            w.cluster.stat(&rname).await.unwrap().parent.is_some(),
            "still a clone"
        );
    }
    // Its snapshot stays restorable where it is.
    let s = w.snapshots().get(&sid).await.unwrap();
    assert_eq!(
        (s.status.state.clone(), s.source.volume_image_id.as_str()),
        (SnapshotState::Ready, vid.as_str())
    );
    let mut late = new_volume(2 * MIB);
    late.spec.snapshot_ref = Some(sid.clone());
    let late = w.images().create(late).await.unwrap().metadata.id;
    assert!(w.settle(BUDGET).await);
    let lname = volume_image_name(&late);
    assert_eq!(w.cluster.checksum(&lname, None).unwrap(), sums[0]);
    restores.push(late);

    // Then the snapshot: kept hidden while restores are clones of it.
    w.snapshots().delete(&sid).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let s = w.snapshots().get(&sid).await.unwrap();
    assert_eq!(s.status.state, SnapshotState::Retained);
    assert_eq!(w.cluster.checksum(&name, Some(&sid)).unwrap(), snap_sum);

    // Each restore that goes releases a little; the last one releases everything.
    let last = restores.pop().unwrap();
    for r in &restores {
        w.images().delete(r).await.unwrap();
    }
    assert!(w.settle(BUDGET).await);
    assert!(w.snapshots().get(&sid).await.is_ok(), "one clone is left");
    assert_eq!(w.cluster.checksum(&lname, None).unwrap(), sums[0]);
    w.images().delete(&last).await.unwrap();
    assert!(w.settle(BUDGET).await);
    assert!(w.snapshots().get(&sid).await.is_err(), "snapshot gone");
    assert!(w.images().get(&vid).await.is_err(), "volume gone");
    assert!(
        w.cluster.list_images().await.unwrap().is_empty(),
        "nothing leaked"
    );
    assert_eq!(
        w.cluster.calls(rbd_testkit::fake::Op::Flatten),
        0,
        "nothing copied"
    );
}

#[tokio::test(start_paused = true)]
async fn an_encrypted_volume_gets_its_luks_header_once() {
    let w = world().await;
    let mut v = new_volume(20 * MIB);
    v.spec.encryption = Some(encryption(&w.kek(), b"secret"));
    let v = w.images().create(v).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let got = w.images().get(&v.metadata.id).await.unwrap();
    assert_eq!(got.status.state, ImageState::Available);
    assert_eq!(got.status.encryption, ENCRYPTION_HEADER_SET);
    assert!(w
        .cluster
        .is_encrypted(&volume_image_name(&v.metadata.id))
        .unwrap());
    assert_eq!(w.cluster.calls(Op::EncryptionFormat), 1);
}

#[tokio::test(start_paused = true)]
async fn an_encrypted_restore_of_plain_data_is_filled_through_the_encryption_layer() {
    let w = world().await;
    let data = pattern((MIB + 100) as usize, 5);
    let reference = w.source.add("plain", data.clone());
    let mut v = new_volume(20 * MIB);
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
    assert_eq!(got.status.encryption, ENCRYPTION_HEADER_SET);
    let name = volume_image_name(&v.metadata.id);
    let info = w.cluster.stat(&name).await.unwrap();
    assert!(info.parent.is_none(), "not a clone");
    assert_eq!(
        read(&w, &name, None, LUKS2_HEADER_SIZE, data.len() as u64).await,
        data
    );
    assert!(w
        .cluster
        .checksum_decrypted(&name, &rbd::Passphrase::new(b"pw".to_vec()))
        .is_ok());
}

#[tokio::test(start_paused = true)]
async fn an_encrypted_restore_too_small_for_its_data_is_an_error_until_expanded() {
    let w = world().await;
    let reference = w.source.add("big", pattern((2 * MIB) as usize, 1));
    // The LUKS2 header goes on top of the volume's size: only the data must fit.
    let mut v = new_volume(MIB);
    v.spec.image = reference;
    v.spec.encryption = Some(encryption(&w.kek(), b"pw"));
    let v = w.images().create(v).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let got = w.images().get(&v.metadata.id).await.unwrap();
    assert_eq!(got.status.state, ImageState::Error);
    assert!(!w
        .cluster
        .image_exists(&volume_image_name(&v.metadata.id))
        .await
        .unwrap());
    let mut got = got;
    got.spec.size = 2 * MIB;
    w.images().update(&got).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let got = w.images().get(&v.metadata.id).await.unwrap();
    assert_eq!(
        got.status.state,
        ImageState::Available,
        "{}",
        got.status.message
    );
}

#[tokio::test(start_paused = true)]
async fn a_shrink_request_keeps_the_volume_available_with_one_warning() {
    let w = world().await;
    let v = w.images().create(new_volume(4 * MIB)).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let mut got = w.images().get(&v.metadata.id).await.unwrap();
    got.spec.size = 2 * MIB;
    w.images().update(&got).await.unwrap();
    assert!(w.settle(BUDGET).await);
    // Resync passes must not repeat the warning.
    tokio::time::sleep(Duration::from_secs(1300)).await;
    let got = w.images().get(&v.metadata.id).await.unwrap();
    assert_eq!(got.status.state, ImageState::Available);
    assert!(
        got.status.message.contains("shrinking"),
        "{}",
        got.status.message
    );
    assert_eq!(
        w.events
            .with_reason(
                &v.metadata.id,
                controllers::events::reason::UPDATE_IMAGE_SIZE_FAILED
            )
            .len(),
        1
    );
    assert_eq!(
        w.cluster
            .stat(&volume_image_name(&v.metadata.id))
            .await
            .unwrap()
            .size,
        4 * MIB
    );
    // Growing works and clears the message.
    let mut got = got;
    got.spec.size = 8 * MIB;
    w.images().update(&got).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let got = w.images().get(&v.metadata.id).await.unwrap();
    assert_eq!(got.status.size, 8 * MIB);
    assert!(got.status.message.is_empty());
}

#[tokio::test(start_paused = true)]
async fn deleting_a_snapshot_while_it_populates_cancels_the_copy_and_leaves_nothing() {
    let w = world().await;
    w.source.hold();
    let reference = w.source.add("held", pattern((2 * MIB) as usize, 2));
    let digest = digest_of("held");
    let mut v = new_volume(2 * MIB);
    v.spec.image = reference;
    let v = w.images().create(v).await.unwrap();
    let key = snapshot_key(&digest);
    assert!(
        w.wait_for(BUDGET, |r, _, _| r.runner.state(&key)
            == Some(runner::OpState::Running))
            .await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        w.r().runner.state(&snapshot_key(&digest)).is_some(),
        "populate running"
    );
    // The snapshot first: deleting its only volume first would delete it already.
    w.snapshots().delete(&digest).await.unwrap();
    w.images().delete(&v.metadata.id).await.unwrap();
    assert!(w.settle(BUDGET).await);
    assert!(w.snapshots().get(&digest).await.is_err());
    assert!(w.cluster.list_images().await.unwrap().is_empty());
    w.source.release();
}

#[tokio::test(start_paused = true)]
async fn a_restart_during_populate_removes_the_partial_image_and_populates_again() {
    let mut w = world().await;
    w.cluster
        .set_chunk_delay(Op::Write, Duration::from_millis(100));
    let data = pattern((2 * MIB) as usize, 4);
    let reference = w.source.add("restart", data.clone());
    let digest = digest_of("restart");
    let mut v = new_volume(2 * MIB);
    v.spec.image = reference;
    let v = w.images().create(v).await.unwrap();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if w.cluster
            .image_exists(&os_image_name(&digest))
            .await
            .unwrap()
        {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    w.crash().await;
    assert!(
        w.cluster
            .image_exists(&os_image_name(&digest))
            .await
            .unwrap(),
        "partial image left"
    );
    w.cluster.set_chunk_delay(Op::Write, Duration::ZERO);
    w.start().await;
    assert!(w.settle(BUDGET).await);
    let got = w.images().get(&v.metadata.id).await.unwrap();
    assert_eq!(got.status.state, ImageState::Available);
    let name = volume_image_name(&v.metadata.id);
    assert_eq!(read(&w, &name, None, 0, data.len() as u64).await, data);
    assert_eq!(w.source.opens(), 2);
}

#[tokio::test(start_paused = true)]
async fn retryable_populate_failures_are_retried_and_terminal_ones_fail_the_snapshot() {
    let w = world().await;
    w.source
        .fail_open(controllers::SourceError::Unavailable("503".into()));
    w.source.corrupt_next(1);
    let ok = w.source.add("flaky", pattern(MIB as usize, 8));
    let mut a = new_volume(MIB);
    a.spec.image = ok;
    let a = w.images().create(a).await.unwrap();
    assert!(w.settle(BUDGET).await);
    assert_eq!(
        w.images().get(&a.metadata.id).await.unwrap().status.state,
        ImageState::Available
    );
    assert_eq!(w.source.opens(), 3);

    let bad = w.source.add("broken", pattern(MIB as usize, 9));
    w.source
        .fail_open(controllers::SourceError::NoRootfs("no layer".into()));
    let mut b = new_volume(MIB);
    b.spec.image = bad;
    let b = w.images().create(b).await.unwrap();
    // Failed until `os_image_retry` has passed (then populated again: see `faults.rs`).
    assert!(
        w.wait_for(BUDGET, |_, images, _| images.iter().any(|i| i.metadata.id
            == b.metadata.id
            && i.status.state == ImageState::Error))
            .await
    );
    let s = w.snapshots().get(&digest_of("broken")).await.unwrap();
    assert_eq!(s.status.state, SnapshotState::Failed);
    assert!(
        s.status.message.contains("no root fs"),
        "{}",
        s.status.message
    );
    let got = w.images().get(&b.metadata.id).await.unwrap();
    assert_eq!(got.status.state, ImageState::Error);
    assert!(!w
        .cluster
        .image_exists(&os_image_name(&digest_of("broken")))
        .await
        .unwrap());
}

#[tokio::test(start_paused = true)]
async fn an_unknown_os_image_puts_the_volume_in_error() {
    let w = world().await;
    let mut v = new_volume(MIB);
    v.spec.image = "reg/missing:latest".into();
    let v = w.images().create(v).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let got = w.images().get(&v.metadata.id).await.unwrap();
    assert_eq!(got.status.state, ImageState::Error);
    assert_eq!(
        w.events
            .with_reason(
                &v.metadata.id,
                controllers::events::reason::RESOLVE_IMAGE_FAILED
            )
            .len(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_restore_smaller_than_its_snapshot_is_an_error() {
    let w = world().await;
    let vol = w.images().create(new_volume(4 * MIB)).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let snap = w
        .snapshots()
        .create(new_volume_snapshot(&vol.metadata.id))
        .await
        .unwrap();
    assert!(w.settle(BUDGET).await);
    let mut r = new_volume(2 * MIB);
    r.spec.snapshot_ref = Some(snap.metadata.id.clone());
    let r = w.images().create(r).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let got = w.images().get(&r.metadata.id).await.unwrap();
    assert_eq!(got.status.state, ImageState::Error);
    assert_eq!(
        w.events
            .with_reason(
                &r.metadata.id,
                controllers::events::reason::IMAGE_SIZE_IS_SMALLER_THAN_SNAPSHOT_SIZE
            )
            .len(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_flatten_that_fails_half_way_is_retried_until_the_volume_is_gone() {
    let w = world_with(flatten_config()).await;
    let vol = w.images().create(new_volume(2 * MIB)).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let snap = w
        .snapshots()
        .create(new_volume_snapshot(&vol.metadata.id))
        .await
        .unwrap();
    assert!(w.settle(BUDGET).await);
    let mut r = new_volume(2 * MIB);
    r.spec.snapshot_ref = Some(snap.metadata.id.clone());
    w.images().create(r).await.unwrap();
    assert!(w.settle(BUDGET).await);
    w.cluster
        .fail_after_chunks(Op::Flatten, 2, RbdError::Transient("osd down".into()));
    w.images().delete(&vol.metadata.id).await.unwrap();
    assert!(w.settle(BUDGET).await);
    assert!(w.images().get(&vol.metadata.id).await.is_err());
    assert!(w.r().runner.state(&image_key(&vol.metadata.id)).is_none());
}

#[tokio::test(start_paused = true)]
async fn deleting_a_volume_with_restores_reports_the_flatten_of_each_restore_about_the_volume() {
    use controllers::events::reason::FLATTEN_COMPLETED;
    let w = world_with(flatten_config()).await;
    let vol = w.images().create(new_volume(2 * MIB)).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let snap = w
        .snapshots()
        .create(new_volume_snapshot(&vol.metadata.id))
        .await
        .unwrap();
    assert!(w.settle(BUDGET).await);
    for _ in 0..2 {
        let mut r = new_volume(2 * MIB);
        r.spec.snapshot_ref = Some(snap.metadata.id.clone());
        w.images().create(r).await.unwrap();
    }
    assert!(w.settle(BUDGET).await);
    w.images().delete(&vol.metadata.id).await.unwrap();
    assert!(w.settle(BUDGET).await);
    assert!(w.images().get(&vol.metadata.id).await.is_err());
    let done: Vec<String> = w
        .events
        .with_reason(&vol.metadata.id, FLATTEN_COMPLETED)
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert_eq!(done.len(), 1, "{done:?}");
    // The two restores and the copy that keeps the snapshot alive after its volume is gone.
    assert!(done[0].starts_with("flattened clones: 3 in "), "{done:?}");
}

#[tokio::test(start_paused = true)]
async fn the_sync_baseline_mode_reaches_the_same_states() {
    let mut cfg = flatten_config();
    cfg.baseline = controllers::Baseline::GoInline;
    let mut w = World::new(cfg, RunnerConfig::default());
    w.start().await;
    let reference = w.source.add("sync", pattern(MIB as usize, 6));
    let mut a = new_volume(2 * MIB);
    a.spec.image = reference;
    let a = w.images().create(a).await.unwrap();
    assert!(w.settle(BUDGET).await);
    assert_eq!(
        w.images().get(&a.metadata.id).await.unwrap().status.state,
        ImageState::Available
    );
    let snap = w
        .snapshots()
        .create(new_volume_snapshot(&a.metadata.id))
        .await
        .unwrap();
    assert!(w.settle(BUDGET).await);
    w.images().delete(&a.metadata.id).await.unwrap();
    assert!(w.settle(BUDGET).await);
    assert_eq!(
        w.snapshots()
            .get(&snap.metadata.id)
            .await
            .unwrap()
            .status
            .state,
        SnapshotState::Ready
    );
    assert_eq!(
        w.r().runner.metrics().completed,
        0,
        "nothing ran on the runner"
    );
}
