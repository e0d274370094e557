//! The long operations that used to run inside a reconcile pass — resolving an OS image reference
//! (state `Resolving`) and the LUKS2 format of an empty encrypted volume (state `Formatting`) —
//! on the runner: resumed after a crash, bounded by their deadlines, and never in a pass (the
//! guard of `common/guard.rs` notices the benchmark-only baseline that does run them there).
//! Paused tokio time throughout.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use controllers::events::reason::CONFIGURE_ENCRYPTION_FAILED;
use controllers::{image_key, volume_image_name};
use rbd::BlockBackend;
use rbd_testkit::fake::Op;
use runner::RunnerConfig;
use store::{Image, ImageState, ListOptions, Store, ENCRYPTION_HEADER_SET};
use testdata::pattern;
use tokio::time::Instant;

const BUDGET: Duration = Duration::from_secs(3600);

/// The stored image `id` read straight from the store backend (no provider needs to run).
async fn stored(w: &World, id: &str) -> Image {
    let sb: Arc<dyn store::Backend> = Arc::new(w.store_backend.clone());
    Store::<Image>::open(sb)
        .await
        .unwrap()
        .get(id)
        .await
        .unwrap()
}

async fn state_of(w: &World, id: &str) -> Option<(ImageState, String)> {
    w.images()
        .get(id)
        .await
        .ok()
        .map(|i| (i.status.state, i.status.message))
}

#[tokio::test(start_paused = true)]
async fn a_crash_while_resolving_resumes_the_resolve_after_the_restart() {
    let mut w = World::new(test_config(), RunnerConfig::default());
    w.start().await;
    let data = pattern(MIB as usize, 11);
    let reference = w.source.add("slowreg", data.clone());
    w.source.mute();
    let mut v = new_volume(2 * MIB);
    v.spec.image = reference;
    let id = w.images().create(v).await.unwrap().metadata.id;
    let key = image_key(&id);
    let resolving = w
        .wait_for(BUDGET, |r, images, _| {
            r.runner.state(&key).is_some()
                && images
                    .iter()
                    .any(|i| i.metadata.id == id && i.status.state == ImageState::Resolving)
        })
        .await;
    assert!(resolving, "the resolve runs on the runner");
    assert_eq!(w.source.resolves(), 1);

    w.crash().await;
    let img = stored(&w, &id).await;
    assert_eq!(img.status.state, ImageState::Resolving, "persisted");
    assert_eq!(img.spec.snapshot_ref, None);

    w.source.unmute();
    w.start().await;
    assert!(w.settle(BUDGET).await);
    let got = w.images().get(&id).await.unwrap();
    assert_eq!(
        got.status.state,
        ImageState::Available,
        "{}",
        got.status.message
    );
    assert_eq!(
        got.spec.snapshot_ref.as_deref(),
        Some(digest_of("slowreg").as_str())
    );
    assert_eq!(w.source.resolves(), 2, "resolved again after the restart");
    let name = volume_image_name(&id);
    let read = w.cluster.read(&name, None, 0, data.len() as u64).await;
    assert_eq!(read.unwrap().to_vec(), data);
}

#[tokio::test(start_paused = true)]
async fn a_crash_while_formatting_resumes_the_format_after_the_restart() {
    let mut w = World::new(test_config(), RunnerConfig::default());
    w.start().await;
    w.cluster
        .set_delay(Op::EncryptionFormat, Duration::from_secs(30));
    let mut v = new_volume(20 * MIB);
    v.spec.encryption = Some(encryption(&w.kek(), b"secret"));
    let id = w.images().create(v).await.unwrap().metadata.id;
    let key = image_key(&id);
    let formatting = w
        .wait_for(BUDGET, |r, images, _| {
            r.runner.state(&key).is_some()
                && images
                    .iter()
                    .any(|i| i.metadata.id == id && i.status.state == ImageState::Formatting)
        })
        .await;
    assert!(formatting, "the format runs on the runner");
    assert_eq!(w.cluster.calls(Op::EncryptionFormat), 1);

    w.crash().await;
    let img = stored(&w, &id).await;
    assert_eq!(img.status.state, ImageState::Formatting, "persisted");
    assert_eq!(img.status.encryption, "", "the header is not recorded yet");

    w.cluster.set_delay(Op::EncryptionFormat, Duration::ZERO);
    w.start().await;
    assert!(w.settle(BUDGET).await);
    let got = w.images().get(&id).await.unwrap();
    assert_eq!(
        got.status.state,
        ImageState::Available,
        "{}",
        got.status.message
    );
    assert_eq!(got.status.encryption, ENCRYPTION_HEADER_SET);
    assert!(w.cluster.is_encrypted(&volume_image_name(&id)).unwrap());
    assert_eq!(
        w.cluster.calls(Op::EncryptionFormat),
        2,
        "formatted again after the restart"
    );
}

#[tokio::test(start_paused = true)]
async fn a_format_past_its_deadline_frees_the_slot_and_succeeds_on_a_retry() {
    let mut cfg = test_config();
    cfg.format_timeout = Duration::from_secs(10);
    let mut w = World::new(
        cfg,
        RunnerConfig {
            max_running: 1,
            max_waiting: 0,
            ..RunnerConfig::default()
        },
    );
    w.start().await;
    w.cluster
        .set_delay(Op::EncryptionFormat, Duration::from_secs(60));
    let t0 = Instant::now();
    let mut v = new_volume(20 * MIB);
    v.spec.encryption = Some(encryption(&w.kek(), b"pw"));
    let enc = w.images().create(v).await.unwrap().metadata.id;
    let timed_out = w
        .wait_for(BUDGET, |_, _, _| {
            w.events
                .with_reason(&enc, CONFIGURE_ENCRYPTION_FAILED)
                .iter()
                .any(|e| e.message.contains("did not finish within 10s"))
        })
        .await;
    assert!(timed_out, "{:?}", state_of(&w, &enc).await);
    assert_eq!(
        w.images().get(&enc).await.unwrap().status.state,
        ImageState::Formatting,
        "a retryable failure"
    );
    let elapsed = t0.elapsed();
    assert!(
        (Duration::from_secs(10)..Duration::from_secs(11)).contains(&elapsed),
        "{elapsed:?}"
    );
    assert!(w.r().runner.metrics().completed > 0);
    // The first format still runs in the background; the next one will be quick.
    w.cluster.set_delay(Op::EncryptionFormat, Duration::ZERO);

    // The slot is free: an OS volume needs it twice (resolve, populate) and gets it.
    let reference = w.source.add("meanwhile", pattern(MIB as usize, 12));
    let mut os = new_volume(2 * MIB);
    os.spec.image = reference;
    let os = w.images().create(os).await.unwrap().metadata.id;
    let available = w
        .wait_for(BUDGET, |_, images, _| {
            images
                .iter()
                .any(|i| i.metadata.id == os && i.status.state == ImageState::Available)
        })
        .await;
    assert!(available);
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "the OS volume did not wait for the format: {:?}",
        t0.elapsed()
    );
    assert_eq!(
        w.images().get(&enc).await.unwrap().status.state,
        ImageState::Formatting
    );
    assert_eq!(
        w.cluster.calls(Op::EncryptionFormat),
        1,
        "no second format while the first one still runs"
    );

    assert!(w.settle(BUDGET).await);
    let got = w.images().get(&enc).await.unwrap();
    assert_eq!(
        got.status.state,
        ImageState::Available,
        "{}",
        got.status.message
    );
    assert_eq!(got.status.encryption, ENCRYPTION_HEADER_SET);
    assert!(w.cluster.is_encrypted(&volume_image_name(&enc)).unwrap());
    assert_eq!(w.cluster.calls(Op::EncryptionFormat), 2);
}

#[tokio::test(start_paused = true)]
async fn a_resolve_that_never_answers_times_out_and_retries_without_blocking_plain_creates() {
    let mut cfg = test_config();
    cfg.resolve_timeout = Duration::from_secs(30);
    let mut w = World::new(cfg, RunnerConfig::default());
    w.start().await;
    w.source.mute();
    // More OS volumes than reconcile workers (3): inline resolves would take every worker.
    let mut os_ids = Vec::new();
    for i in 0..5u8 {
        let reference = w
            .source
            .add(&format!("mute{i}"), pattern(MIB as usize, u64::from(i)));
        let mut v = new_volume(2 * MIB);
        v.spec.image = reference;
        os_ids.push(w.images().create(v).await.unwrap().metadata.id);
    }
    assert!(
        w.wait_for(BUDGET, |_, _, _| w.source.resolves() == 5).await,
        "every resolve started"
    );

    for _ in 0..5 {
        let t0 = Instant::now();
        let id = w
            .images()
            .create(new_volume(MIB))
            .await
            .unwrap()
            .metadata
            .id;
        let available = w
            .wait_for(Duration::from_secs(5), |_, images, _| {
                images
                    .iter()
                    .any(|i| i.metadata.id == id && i.status.state == ImageState::Available)
            })
            .await;
        assert!(available, "a plain create waited for the registry");
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    }

    // The resolves time out after 30 s and are tried again (with backoff), never answered.
    let retried = w
        .wait_for(BUDGET, |_, images, _| {
            w.source.resolves() >= 10
                && os_ids.iter().all(|id| {
                    images.iter().any(|i| {
                        i.metadata.id == *id
                            && i.status.state == ImageState::Resolving
                            && i.status.message.contains("no answer within 30s")
                    })
                })
        })
        .await;
    assert!(retried, "{:?}", state_of(&w, &os_ids[0]).await);

    w.source.unmute();
    assert!(w.settle(BUDGET).await);
    let all = w.images().list(&ListOptions::default()).await.unwrap();
    assert_eq!(all.len(), 10);
    for i in all {
        assert_eq!(
            i.status.state,
            ImageState::Available,
            "{}: {}",
            i.metadata.id,
            i.status.message
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_guard_flags_every_slow_call_the_sync_baseline_makes_on_a_worker() {
    let mut cfg = flatten_config();
    cfg.baseline = controllers::Baseline::GoInline;
    let mut w = World::new(cfg, RunnerConfig::default());
    w.start().await;
    every_slow_call(&w, "inline", 13, BUDGET).await;

    let kinds = w.slow.violating_kinds();
    for kind in [
        "resolve",
        "open_rootfs",
        "write_stream",
        "read_stream",
        "encryption_format",
        "flatten",
    ] {
        assert!(kinds.contains(kind), "{kind} not flagged: {kinds:?}");
    }
    assert!(w.no_slow_calls_on_workers().is_err());
    assert_eq!(w.r().runner.metrics().completed, 0, "nothing on the runner");
}

#[tokio::test(start_paused = true)]
async fn the_same_work_on_the_runner_makes_every_slow_call_off_the_workers() {
    let w = {
        let mut w = World::new(flatten_config(), RunnerConfig::default());
        w.start().await;
        w
    };
    every_slow_call(&w, "offpass", 14, BUDGET).await;

    // Resolves ×2, opens, writes ×2, read, formats ×2, flattens: all of them seen, none on a
    // worker.
    assert!(w.slow.seen() >= 9, "{}", w.slow.seen());
    w.no_slow_calls_on_workers().unwrap();
}
