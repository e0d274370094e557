//! The faults a real cluster and a real guest expose, on the fake cluster with paused tokio time:
//! a vanished image, a transient "not found", a snapshot re-homed under a restore's feet, a
//! re-home image the Go provider left, an undecodable record, an unprotect that keeps failing,
//! a backend that refuses a size, and a half-removed partial image of a restore being filled. Each test names what the fault must produce (state, event);
//! the OS-image, restore and encryption faults are in `faults_os.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use controllers::events::reason;
use controllers::volume_image_name;
use rbd::{BlockBackend, RbdError};
use rbd_testkit::fake::Op;
use runner::RunnerConfig;
use store::{Image, ImageState, Precondition, Snapshot, SnapshotState};
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

async fn available(w: &World, size: u64) -> Image {
    let v = w.images().create(new_volume(size)).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let v = w.images().get(&v.metadata.id).await.unwrap();
    assert_eq!(v.status.state, ImageState::Available);
    v
}

async fn ready_snapshot(w: &World, volume: &str) -> Snapshot {
    let s = w
        .snapshots()
        .create(new_volume_snapshot(volume))
        .await
        .unwrap();
    assert!(w.settle(BUDGET).await);
    let s = w.snapshots().get(&s.metadata.id).await.unwrap();
    assert_eq!(s.status.state, SnapshotState::Ready);
    s
}

async fn grow(w: &World, id: &str, by: u64) {
    let mut img = w.images().get(id).await.unwrap();
    img.spec.size += by;
    w.images().update(&img).await.unwrap();
}

/// Changes nothing that matters but makes the image reconciler look at `id` again.
async fn touch(w: &World, id: &str, n: u32) {
    let mut img = w.images().get(id).await.unwrap();
    img.metadata
        .annotations
        .insert("test/touch".into(), n.to_string());
    w.images().update(&img).await.unwrap();
}

fn count(w: &World, id: &str, why: &str) -> usize {
    w.events.with_reason(id, why).len()
}

#[tokio::test(start_paused = true)]
async fn a_vanished_image_puts_its_volume_in_error_for_good_with_one_event_and_never_recreates_it()
{
    let w = world().await;
    let v = available(&w, 4 * MIB).await;
    let id = v.metadata.id.clone();
    let name = volume_image_name(&id);
    w.cluster.remove_image(&name).await.unwrap();
    // The guest's data is gone: no pass may put an empty image in its place, whatever happens.
    grow(&w, &id, MIB).await;
    assert!(w.settle(BUDGET).await);
    for n in 0..5 {
        touch(&w, &id, n).await;
        grow(&w, &id, MIB).await;
        tokio::time::sleep(Duration::from_secs(700)).await;
    }
    assert!(w.settle(BUDGET).await);
    let got = w.images().get(&id).await.unwrap();
    assert_eq!(got.status.state, ImageState::Error);
    assert!(
        got.status.message.contains(&format!("{name} vanished")),
        "{}",
        got.status.message
    );
    assert!(
        !w.cluster.image_exists(&name).await.unwrap(),
        "never re-created"
    );
    assert_eq!(count(&w, &id, reason::IMAGE_VANISHED), 1);
    assert_eq!(count(&w, &id, reason::UPDATE_IMAGE_SIZE_FAILED), 0);
    assert_eq!(count(&w, &id, reason::EMPTY_IMAGE_CREATION_SUCCEEDED), 1);
    // Deleting it still works.
    w.images().delete(&id).await.unwrap();
    assert!(w.settle(BUDGET).await);
    assert!(w.images().get(&id).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_vanished_restore_is_never_cloned_again() {
    let w = world().await;
    let src = available(&w, 2 * MIB).await;
    let snap = ready_snapshot(&w, &src.metadata.id).await;
    let mut r = new_volume(2 * MIB);
    r.spec.snapshot_ref = Some(snap.metadata.id.clone());
    let r = w.images().create(r).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let name = volume_image_name(&r.metadata.id);
    w.cluster.remove_image(&name).await.unwrap();
    touch(&w, &r.metadata.id, 0).await;
    tokio::time::sleep(Duration::from_secs(1300)).await;
    assert!(w.settle(BUDGET).await);
    let got = w.images().get(&r.metadata.id).await.unwrap();
    assert_eq!(got.status.state, ImageState::Error);
    assert!(!w.cluster.image_exists(&name).await.unwrap());
    assert_eq!(count(&w, &r.metadata.id, reason::IMAGE_VANISHED), 1);
}

#[tokio::test(start_paused = true)]
async fn a_transient_not_found_never_makes_a_live_volume_vanish() {
    let w = world().await;
    let v = available(&w, 4 * MIB).await;
    let id = v.metadata.id.clone();
    for n in 0..3 {
        w.cluster
            .fail_next(Op::Stat, 2, RbdError::NotFound(volume_image_name(&id)));
        touch(&w, &id, n).await;
        assert!(w.settle(BUDGET).await);
    }
    let got = w.images().get(&id).await.unwrap();
    assert_eq!(got.status.state, ImageState::Available);
    assert_eq!(count(&w, &id, reason::IMAGE_VANISHED), 0);
    assert!(
        w.cluster.calls(Op::ListImages) >= 3,
        "each not-found was checked"
    );
}

/// Rewrites snapshot `id` in the store backend directly (a writer the controllers do not see).
fn repoint(backend: &store::MemoryBackend, id: &str, volume: &str) {
    use store::Backend as _;
    let col = "ironcore.csi.snapshots";
    let bytes = futures::executor::block_on(backend.get(col, id))
        .unwrap()
        .unwrap();
    let mut s: Snapshot = serde_json::from_slice(&bytes).unwrap();
    s.source.volume_image_id = volume.to_string();
    s.metadata.resource_version += 1;
    let bytes = serde_json::to_vec(&s).unwrap();
    futures::executor::block_on(backend.put(col, id, bytes, Precondition::None)).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_rehomed_while_a_restore_looks_at_it_is_not_failed() {
    let w = world().await;
    let vol = available(&w, 2 * MIB).await;
    let vname = volume_image_name(&vol.metadata.id);
    let data = pattern(100_000, 3);
    w.cluster.write_at(&vname, 0, &data).await.unwrap();
    let snap = ready_snapshot(&w, &vol.metadata.id).await;
    let sid = snap.metadata.id.clone();
    // The volume's deletion re-homes the snapshot exactly between the restore's read of the
    // snapshot and its look at the rbd snapshot.
    let (cluster, objects) = (w.cluster.clone(), w.store_backend.clone());
    let (hook_sid, hook_vname) = (sid.clone(), vname.clone());
    let mut fired = false;
    w.slow.on_is_protected(Box::new(move |image, s| {
        if fired || image != hook_vname || s != hook_sid {
            return None;
        }
        fired = true;
        let target = volume_image_name(&hook_sid);
        let run = futures::executor::block_on;
        run(cluster.clone_image(&hook_vname, &hook_sid, &target)).unwrap();
        run(cluster.flatten(&target, rbd::no_progress(), Default::default())).unwrap();
        run(cluster.create_snapshot(&target, &hook_sid)).unwrap();
        run(cluster.protect_snapshot(&target, &hook_sid)).unwrap();
        repoint(&objects, &hook_sid, &hook_sid);
        run(cluster.unprotect_snapshot(&hook_vname, &hook_sid)).unwrap();
        run(cluster.remove_snapshot(&hook_vname, &hook_sid)).unwrap();
        Some(Err(RbdError::NotFound(format!("{hook_vname}@{hook_sid}"))))
    }));
    let mut r = new_volume(2 * MIB);
    r.spec.snapshot_ref = Some(sid.clone());
    let r = w.images().create(r).await.unwrap();
    assert!(w.settle(BUDGET).await);
    let s = w.snapshots().get(&sid).await.unwrap();
    assert_eq!(s.status.state, SnapshotState::Ready, "{}", s.status.message);
    assert_eq!(count(&w, &sid, reason::SNAPSHOT_FAILED), 0);
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
}

/// A snapshot whose rbd snapshot lives on `img_<id>` (re-homed), Ready, with its finalizer.
async fn rehomed_snapshot(w: &World, data: &[u8]) -> String {
    let id = store::new_id();
    let name = volume_image_name(&id);
    w.cluster.create_image(&name, 2 * MIB).await.unwrap();
    w.cluster.write_at(&name, 0, data).await.unwrap();
    w.cluster.create_snapshot(&name, &id).await.unwrap();
    w.cluster.protect_snapshot(&name, &id).await.unwrap();
    let mut s = new_volume_snapshot(&id);
    s.metadata.id = id.clone();
    let s = w.snapshots().create(s).await.unwrap();
    assert!(w.settle(BUDGET).await);
    assert_eq!(
        w.snapshots()
            .get(&s.metadata.id)
            .await
            .unwrap()
            .status
            .state,
        SnapshotState::Ready
    );
    id
}

#[tokio::test(start_paused = true)]
async fn deleting_a_snapshot_rehomed_by_the_go_provider_removes_its_image_by_name() {
    let w = world().await;
    // Without any image record.
    let a = rehomed_snapshot(&w, &pattern(4096, 1)).await;
    // With a record that lacks our internal label (and our finalizer).
    let b = rehomed_snapshot(&w, &pattern(4096, 2)).await;
    let mut rec = Image::new(
        b.clone(),
        store::ImageSpec {
            size: 2 * MIB,
            ..Default::default()
        },
    );
    rec.status.state = ImageState::Available;
    // Created straight in the backend: the controllers never reconciled it.
    let bytes = serde_json::to_vec(&rec).unwrap();
    store::Backend::put(
        &w.store_backend,
        "ironcore.csi.volumes",
        &b,
        bytes,
        Precondition::Absent,
    )
    .await
    .unwrap();
    for id in [&a, &b] {
        w.snapshots().delete(id).await.unwrap();
    }
    assert!(w.settle(BUDGET).await);
    for id in [&a, &b] {
        assert!(w.snapshots().get(id).await.is_err());
        assert!(w.images().get(id).await.is_err(), "record {id} removed");
        assert!(
            !w.cluster
                .image_exists(&volume_image_name(id))
                .await
                .unwrap(),
            "img_{id} removed"
        );
    }
    assert!(w.cluster.list_images().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn one_undecodable_record_does_not_stop_the_reconcilers() {
    let mut w = World::new(test_config(), RunnerConfig::default());
    store::Backend::put(
        &w.store_backend,
        "ironcore.csi.volumes",
        "0000bad",
        b"{\"metadata\":".to_vec(),
        Precondition::None,
    )
    .await
    .unwrap();
    w.start().await;
    let v = w.images().create(new_volume(MIB)).await.unwrap();
    assert!(w.settle(BUDGET).await);
    assert_eq!(
        w.images().get(&v.metadata.id).await.unwrap().status.state,
        ImageState::Available
    );
    assert!(w.images().skipped_records() >= 1);
}

#[tokio::test(start_paused = true)]
async fn an_unprotect_that_keeps_failing_backs_off_and_says_why() {
    let w = world_with(flatten_config()).await;
    let vol = available(&w, MIB).await;
    let snap = ready_snapshot(&w, &vol.metadata.id).await;
    let sid = snap.metadata.id.clone();
    // Children in the rbd trash: unprotect answers Busy, yet there is nothing to flatten.
    w.cluster.fail_randomly(
        Op::Unprotect,
        1.0,
        RbdError::Busy("snapshot has children in the trash".into()),
    );
    w.snapshots().delete(&sid).await.unwrap();
    for _ in 0..20_000 {
        tokio::task::yield_now().await;
    }
    let early = w.cluster.calls(Op::Unprotect);
    assert!(
        early < 10,
        "{early} unprotects without time passing: a spin"
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    let later = w.cluster.calls(Op::Unprotect);
    assert!(later < 40, "{later} unprotects in a minute");
    let s = w.snapshots().get(&sid).await.unwrap();
    assert!(
        s.status.message.contains("cannot be unprotected"),
        "{}",
        s.status.message
    );
    w.cluster.clear_faults();
    assert!(w.settle(BUDGET).await);
    assert!(w.snapshots().get(&sid).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_size_the_backend_refuses_for_good_is_one_error_and_no_retry_loop() {
    let w = world().await;
    w.cluster.fail_randomly(
        Op::CreateImage,
        1.0,
        RbdError::InvalidArgument("image size not compatible with object map".into()),
    );
    let v = w.images().create(new_volume(3 * MIB)).await.unwrap();
    let id = v.metadata.id.clone();
    assert!(w.settle(BUDGET).await);
    tokio::time::sleep(Duration::from_secs(1300)).await;
    assert!(w.settle(BUDGET).await);
    let got = w.images().get(&id).await.unwrap();
    assert_eq!(got.status.state, ImageState::Error);
    assert!(
        got.status.message.contains("object map"),
        "{}",
        got.status.message
    );
    assert_eq!(w.cluster.calls(Op::CreateImage), 1, "not retried");
    assert_eq!(count(&w, &id, reason::EMPTY_IMAGE_CREATION_FAILED), 1);
    // A new size is a new request.
    w.cluster.clear_faults();
    grow(&w, &id, MIB).await;
    assert!(w.settle(BUDGET).await);
    assert_eq!(
        w.images().get(&id).await.unwrap().status.state,
        ImageState::Available
    );

    // The same for an expand of an available volume.
    w.cluster.fail_randomly(
        Op::Resize,
        1.0,
        RbdError::InvalidArgument("image size not compatible with object map".into()),
    );
    let resizes = w.cluster.calls(Op::Resize);
    grow(&w, &id, 4 * MIB).await;
    assert!(w.settle(BUDGET).await);
    tokio::time::sleep(Duration::from_secs(1300)).await;
    assert!(w.settle(BUDGET).await);
    let got = w.images().get(&id).await.unwrap();
    assert_eq!(got.status.state, ImageState::Error);
    assert_eq!(w.cluster.calls(Op::Resize), resizes + 1, "not retried");
    assert_eq!(count(&w, &id, reason::UPDATE_IMAGE_SIZE_FAILED), 1);
    assert_eq!(
        w.cluster.stat(&volume_image_name(&id)).await.unwrap().size,
        4 * MIB,
        "data and size kept"
    );
    w.cluster.clear_faults();
    grow(&w, &id, MIB).await;
    assert!(w.settle(BUDGET).await);
    let got = w.images().get(&id).await.unwrap();
    assert_eq!(got.status.state, ImageState::Available);
    assert_eq!(got.status.size, 9 * MIB);
}

#[tokio::test(start_paused = true)]
async fn a_retry_loop_records_its_warning_once() {
    let w = world().await;
    let v = available(&w, MIB).await;
    let id = v.metadata.id.clone();
    w.cluster
        .fail_next(Op::Resize, 8, RbdError::Transient("osd down".into()));
    grow(&w, &id, MIB).await;
    assert!(w.settle(BUDGET).await);
    assert_eq!(
        w.images().get(&id).await.unwrap().status.size,
        2 * MIB,
        "grown in the end"
    );
    assert!(w.cluster.calls(Op::Resize) >= 9);
    assert_eq!(count(&w, &id, reason::UPDATE_IMAGE_SIZE_FAILED), 1);
}

#[tokio::test(start_paused = true)]
async fn a_half_removed_partial_image_of_a_filling_restore_is_removed_and_the_fill_finishes() {
    let mut w = world().await;
    let src = available(&w, 2 * MIB).await;
    let data = pattern(MIB as usize, 11);
    w.cluster
        .write_at(&volume_image_name(&src.metadata.id), 0, &data)
        .await
        .unwrap();
    let snap = ready_snapshot(&w, &src.metadata.id).await;
    w.crash().await;
    // An encrypted restore of plain data, killed while its fill removed a partial image: the
    // record says `Filling`, the image is listed but cannot be opened.
    let sb: std::sync::Arc<dyn store::Backend> = std::sync::Arc::new(w.store_backend.clone());
    let images = store::Store::<Image>::open(sb).await.unwrap();
    let mut r = new_volume(2 * MIB);
    r.spec.snapshot_ref = Some(snap.metadata.id.clone());
    r.spec.encryption = Some(encryption(&w.kek(), b"chaos"));
    r.status.state = ImageState::Filling;
    let r = images.create(r).await.unwrap();
    let name = volume_image_name(&r.metadata.id);
    w.cluster.create_image(&name, 2 * MIB).await.unwrap();
    w.cluster.interrupt_removal(&name).unwrap();
    assert!(matches!(
        w.cluster.stat(&name).await,
        Err(RbdError::Busy(_))
    ));
    w.start().await;
    assert!(w.settle(BUDGET).await);
    let got = w.images().get(&r.metadata.id).await.unwrap();
    assert_eq!(got.status.state, ImageState::Available, "{got:?}");
    assert!(w.cluster.stat(&name).await.is_ok(), "filled again");
}
