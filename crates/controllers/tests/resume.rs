//! Resumable populate on the fake cluster with paused tokio time: an OS-image populate cut off
//! by a crash, a broken download or a source that ignores ranges continues from its checkpoint
//! (or starts over where it must), and the volumes always get exactly the layer's bytes.
//! The real-cluster version (SIGKILL of the daemon, bytes counted at a proxy in front of a real
//! registry) is `tests/tests/e2e_ceph_resume.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use controllers::events::reason;
use controllers::{os_image_name, snapshot_key, volume_image_name};
use rbd::BlockBackend;
use rbd_testkit::fake::Op;
use runner::RunnerConfig;
use store::{ImageState, SnapshotState};
use testdata::pattern;

const BUDGET: Duration = Duration::from_secs(3600);
/// The layer: 8 MiB, a zero stretch in the middle (skipped chunks count as written too).
const LAYER: usize = 8 * MIB as usize;

fn layer() -> Vec<u8> {
    let mut data = pattern(LAYER, 19);
    data[3 * MIB as usize..4 * MIB as usize].fill(0);
    data
}

/// A world whose writes take 10 ms per 256 KiB request, so that a populate runs for a while.
async fn slow_world() -> World {
    let mut w = World::new(test_config(), RunnerConfig::default());
    w.cluster
        .set_chunk_delay(Op::Write, Duration::from_millis(10));
    w.start().await;
    w
}

/// Creates a volume from `reference`; returns its id.
async fn os_volume(w: &World, reference: &str) -> String {
    let mut v = new_volume(16 * MIB);
    v.spec.image = reference.to_string();
    w.images().create(v).await.unwrap().metadata.id
}

/// Waits until the populate of `digest` has a checkpoint at or past `fraction` of the layer;
/// returns it.
async fn checkpoint_past(w: &World, digest: &str, fraction: f64) -> store::Checkpoint {
    let at = (LAYER as f64 * fraction) as u64;
    let mut found = None;
    assert!(
        w.wait_for(BUDGET, |_, _, snaps| {
            found = snaps
                .iter()
                .find(|s| s.metadata.id == digest)
                .and_then(|s| s.status.checkpoint)
                .filter(|c| c.done >= at);
            found.is_some()
        })
        .await,
        "no checkpoint past {at}"
    );
    found.unwrap()
}

/// The volume is available and reads exactly the layer.
async fn assert_volume_holds_the_layer(w: &World, id: &str, data: &[u8]) {
    assert_eq!(
        w.images().get(id).await.unwrap().status.state,
        ImageState::Available
    );
    let got = w
        .cluster
        .read(&volume_image_name(id), None, 0, data.len() as u64)
        .await
        .unwrap();
    assert!(got.to_vec() == data, "the volume does not hold the layer");
}

#[tokio::test(start_paused = true)]
async fn a_populate_cut_off_by_a_crash_continues_at_its_checkpoint_and_downloads_only_the_rest() {
    let mut w = slow_world().await;
    let data = layer();
    let reference = w.source.add("resumed", data.clone());
    let digest = digest_of("resumed");
    let id = os_volume(&w, &reference).await;
    checkpoint_past(&w, &digest, 0.6).await;
    w.crash().await;
    // The checkpoint the restart finds (saves may have followed the one seen above).
    let records =
        store::Store::<store::Snapshot>::open(std::sync::Arc::new(w.store_backend.clone()))
            .await
            .unwrap();
    let cp = records
        .get(&digest)
        .await
        .unwrap()
        .status
        .checkpoint
        .unwrap();
    let served_before = w.source.served();
    assert!(cp.done < LAYER as u64 && cp.done <= cp.reach, "{cp:?}");
    assert!(
        w.cluster
            .image_exists(&os_image_name(&digest))
            .await
            .unwrap(),
        "the partial image is kept for the next run"
    );

    w.start().await;
    assert!(w.settle(BUDGET).await);
    let after = w.source.served() - served_before;
    assert!(
        after <= LAYER as u64 - cp.done,
        "served {after} bytes after the restart; the rest from the checkpoint is {}",
        LAYER as u64 - cp.done
    );
    assert_volume_holds_the_layer(&w, &id, &data).await;
    let snap = w.snapshots().get(&digest).await.unwrap();
    assert_eq!(snap.status.state, SnapshotState::Ready);
    assert_eq!(snap.status.checkpoint, None, "cleared once populated");
    // The people who watch the volume hear that it resumed, and where.
    let progress = w.events.with_reason(&id, reason::POPULATE_PROGRESS);
    let pct = cp.done * 100 / LAYER as u64;
    assert!(
        progress
            .iter()
            .any(|e| e.message.contains(&format!("resumed at {pct}%"))),
        "{progress:?}"
    );
    let done = w.events.with_reason(&id, reason::POPULATE_COMPLETED);
    assert_eq!(done.len(), 1, "{done:?}");
    assert!(done[0].message.contains(", resumed at "), "{done:?}");
}

#[tokio::test(start_paused = true)]
async fn a_broken_download_is_retried_from_its_checkpoint() {
    let w = slow_world().await;
    let data = layer();
    w.source.break_next_after(5 * MIB);
    let reference = w.source.add("broken", data.clone());
    let id = os_volume(&w, &reference).await;
    assert!(w.settle(BUDGET).await);
    assert_volume_holds_the_layer(&w, &id, &data).await;
    assert_eq!(w.source.opens(), 2, "one retry");
    // The retry fetched the rest from the last checkpoint, which lags the break by at most
    // a save interval and the writes in flight (every + window of `Spacing::for_writes`).
    let served = w.source.served();
    assert!(
        served < LAYER as u64 + 4 * MIB,
        "served {served} bytes for an {LAYER}-byte layer"
    );
}

#[tokio::test(start_paused = true)]
async fn a_source_that_ignores_ranges_gets_the_whole_layer_written_again_over_the_partial_image() {
    let mut w = slow_world().await;
    let data = layer();
    let reference = w.source.add("no-ranges", data.clone());
    let digest = digest_of("no-ranges");
    let id = os_volume(&w, &reference).await;
    checkpoint_past(&w, &digest, 0.5).await;
    w.crash().await;
    w.source.ignore_ranges();
    let served_before = w.source.served();
    w.start().await;
    assert!(w.settle(BUDGET).await);
    assert_eq!(w.source.served() - served_before, LAYER as u64);
    assert_volume_holds_the_layer(&w, &id, &data).await;
}

#[tokio::test(start_paused = true)]
async fn a_resumed_populate_whose_written_prefix_was_damaged_starts_over_and_gets_it_right() {
    let mut w = slow_world().await;
    let data = layer();
    let reference = w.source.add("damaged", data.clone());
    let digest = digest_of("damaged");
    let id = os_volume(&w, &reference).await;
    checkpoint_past(&w, &digest, 0.5).await;
    w.crash().await;
    // Something (a bug, a bad disk) changed a byte the first run wrote.
    w.cluster
        .write_at(&os_image_name(&digest), 12345, &[0xAA])
        .await
        .unwrap();
    w.start().await;
    assert!(w.settle(BUDGET).await);
    assert_volume_holds_the_layer(&w, &id, &data).await;
    let snap = w.snapshots().get(&digest).await.unwrap();
    assert_eq!(snap.status.state, SnapshotState::Ready);
    assert!(w.r().runner.state(&snapshot_key(&digest)).is_none());
    // The first run, the resumed one (its digest check over prefix and rest fails), and one
    // from the start.
    assert_eq!(w.source.opens(), 3);
}
