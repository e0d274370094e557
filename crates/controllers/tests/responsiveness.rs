//! Responsiveness: long operations occupy the runner, never the reconcile workers. These tests
//! assert structure (what is still running when something else finished), not wall time.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use controllers::{image_key, snapshot_key};
use rbd_testkit::fake::Op;
use runner::{OpState, RunnerConfig};
use store::{ImageState, SnapshotState};

const BUDGET: Duration = Duration::from_secs(600);

fn data(seed: u8) -> Vec<u8> {
    vec![seed | 1; (MIB / 2) as usize]
}

#[tokio::test(start_paused = true)]
async fn a_new_empty_volume_is_available_while_every_runner_slot_is_busy() {
    let mut w = World::new(
        test_config(),
        RunnerConfig {
            max_running: 2,
            max_waiting: 8,
            ..RunnerConfig::default()
        },
    );
    w.start().await;
    // Four OS images whose downloads hang after their first chunk: two populates run, the
    // other two volumes wait for a slot (for their resolve or their populate: one class).
    w.source.hold();
    let mut os_volumes = Vec::new();
    for i in 0..4u8 {
        let reference = w.source.add(&format!("os{i}"), data(i));
        let mut v = new_volume(MIB);
        v.spec.image = reference;
        os_volumes.push(w.images().create(v).await.unwrap());
    }
    let busy = w
        .wait_for(BUDGET, |r, _, _| {
            let ops = r.runner.snapshot();
            let running: Vec<_> = ops.iter().filter(|o| o.state == OpState::Running).collect();
            running.len() == 2
                && running.iter().all(|o| o.key.starts_with("snapshot:"))
                && ops.iter().filter(|o| o.state == OpState::Waiting).count() == 2
        })
        .await;
    assert!(busy, "every slot is taken by a hanging populate");

    let vol = w.images().create(new_volume(2 * MIB)).await.unwrap();
    let id = vol.metadata.id.clone();
    let available = w
        .wait_for(BUDGET, |_, images, _| {
            images
                .iter()
                .any(|i| i.metadata.id == id && i.status.state == ImageState::Available)
        })
        .await;
    assert!(available);
    let got = w.images().get(&id).await.unwrap();
    assert_eq!(
        got.status.state,
        ImageState::Available,
        "the empty volume did not wait"
    );

    // A snapshot of it and its deletion do not need the runner either.
    let snap = w
        .snapshots()
        .create(new_volume_snapshot(&id))
        .await
        .unwrap();
    let sid = snap.metadata.id.clone();
    let ready = w
        .wait_for(BUDGET, |_, _, snaps| {
            snaps
                .iter()
                .any(|s| s.metadata.id == sid && s.status.state == SnapshotState::Ready)
        })
        .await;
    assert!(ready);
    assert_eq!(
        w.snapshots()
            .get(&snap.metadata.id)
            .await
            .unwrap()
            .status
            .state,
        SnapshotState::Ready
    );

    // The structure that proves it: the four OS volumes' operations are all still pending.
    let ops = w.r().runner.snapshot();
    assert_eq!(ops.len(), 4);
    let mut populating = 0;
    for (i, v) in os_volumes.iter().enumerate() {
        let digest = digest_of(&format!("os{i}"));
        let state = w.images().get(&v.metadata.id).await.unwrap().status.state;
        if w.r().runner.state(&snapshot_key(&digest)).is_some() {
            populating += 1;
            let s = w.snapshots().get(&digest).await.unwrap();
            assert_eq!(s.status.state, SnapshotState::Populating);
            assert_eq!(state, ImageState::Pending);
        } else {
            assert!(w.r().runner.state(&image_key(&v.metadata.id)).is_some());
            assert_eq!(state, ImageState::Resolving);
        }
    }
    assert!(populating >= 2, "{populating} populates pending");

    w.source.release();
    assert!(w.settle(BUDGET).await);
    for v in &os_volumes {
        assert_eq!(
            w.images().get(&v.metadata.id).await.unwrap().status.state,
            ImageState::Available
        );
    }
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_full_runner_is_retried_with_backoff_not_in_a_storm() {
    let mut w = World::new(
        test_config(),
        RunnerConfig {
            max_running: 1,
            max_waiting: 0,
            ..RunnerConfig::default()
        },
    );
    w.start().await;
    w.source.hold();
    let mut ids = Vec::new();
    for i in 0..3u8 {
        let reference = w.source.add(&format!("busy{i}"), data(i));
        let mut v = new_volume(MIB);
        v.spec.image = reference;
        ids.push(w.images().create(v).await.unwrap().metadata.id);
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    let ops = w.r().runner.snapshot();
    assert_eq!(ops.len(), 1, "one populate runs, nothing waits");
    // The two rejected volumes are retried at most every `busy_backoff` (500 ms here): a
    // storm would have thousands of passes in a virtual minute. What is rejected is the
    // volume's resolve or, once resolved, its snapshot's populate: both need the one slot.
    let mut rejected = 0;
    for (i, id) in ids.iter().enumerate() {
        let digest = digest_of(&format!("busy{i}"));
        if w.r().runner.state(&snapshot_key(&digest)).is_none() {
            rejected += 1;
            let failures = w.r().probe.snapshot_queue().failures(&digest)
                + w.r().probe.image_queue().failures(id);
            assert!(
                (5..=200).contains(&failures),
                "{failures} retries in a minute"
            );
        }
    }
    assert_eq!(rejected, 2);
    w.source.release();
    assert!(w.settle(BUDGET).await);
    for id in &ids {
        assert_eq!(
            w.images().get(id).await.unwrap().status.state,
            ImageState::Available
        );
    }
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn plain_creates_do_not_wait_for_encrypted_creates_being_formatted() {
    // As measured on a real cluster: 15 encrypted empty creates at once (seconds of key
    // derivation each), then 20 plain empty creates one by one.
    let mut w = World::new(
        test_config(),
        RunnerConfig {
            max_running: 2,
            ..RunnerConfig::default()
        },
    );
    w.start().await;
    w.cluster
        .set_delay(Op::EncryptionFormat, Duration::from_secs(5));
    let mut encrypted = Vec::new();
    for i in 0..15 {
        let mut v = new_volume(20 * MIB);
        v.spec.encryption = Some(encryption(&w.kek(), format!("pw{i}").as_bytes()));
        encrypted.push(w.images().create(v).await.unwrap().metadata.id);
    }
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let t0 = tokio::time::Instant::now();
        let id = w
            .images()
            .create(new_volume(MIB))
            .await
            .unwrap()
            .metadata
            .id;
        let available = w
            .wait_for(BUDGET, |_, images, _| {
                images
                    .iter()
                    .any(|i| i.metadata.id == id && i.status.state == ImageState::Available)
            })
            .await;
        assert!(available);
        slowest = slowest.max(t0.elapsed());
    }
    // Inline formats (three workers, 5 s each) would hold plain creates for tens of seconds.
    assert!(slowest < Duration::from_millis(500), "{slowest:?}");
    let pending = {
        let mut n = 0;
        for id in &encrypted {
            if w.images().get(id).await.unwrap().status.state != ImageState::Available {
                n += 1;
            }
        }
        n
    };
    assert!(pending > 0, "the formats were still running meanwhile");

    assert!(w.settle(BUDGET).await);
    for id in &encrypted {
        let got = w.images().get(id).await.unwrap();
        assert_eq!(got.status.state, ImageState::Available);
        assert_eq!(got.status.encryption, store::ENCRYPTION_HEADER_SET);
    }
    assert_eq!(w.cluster.calls(Op::EncryptionFormat), 15);
    w.stop().await;
}
