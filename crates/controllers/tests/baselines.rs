//! The benchmark baselines of `ControllerConfig::baseline`: the pool design of the Go provider
//! (`Baseline::GoPool`) runs the registry resolve and the LUKS2 format in the pass and everything
//! else on a runner without a queue, polling while the pool is full; both baselines reach the
//! same states as the provider's own design. (`Baseline::GoInline` is covered in
//! `long_ops.rs` and `scenarios.rs`.)

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use controllers::{snapshot_key, Baseline};
use runner::RunnerConfig;
use store::{ImageState, SnapshotState};
use testdata::pattern;

const BUDGET: Duration = Duration::from_secs(600);

/// The pool the proposal configures: one class, `max_running` slots, no queue.
fn pool(max_running: usize) -> RunnerConfig {
    RunnerConfig {
        max_running,
        max_waiting: 0,
        ..RunnerConfig::default()
    }
}

fn pool_config() -> controllers::ControllerConfig {
    // The Go provider's design, its deletion policy included.
    let mut cfg = flatten_config();
    cfg.baseline = Baseline::GoPool;
    cfg
}

#[tokio::test(start_paused = true)]
async fn the_pool_baseline_resolves_and_formats_in_the_pass_and_runs_the_rest_on_the_runner() {
    let mut w = World::new(pool_config(), pool(10));
    w.start().await;
    // In this design resolve and format run in the pass; open_rootfs and write_stream of the
    // populate, the fill's format and copies and the flatten on the runner.
    let os = every_slow_call(&w, "pooled", 21, BUDGET).await;

    assert!(
        w.images().get(&os).await.is_err(),
        "the deleted volume is gone"
    );
    let images = w
        .images()
        .list(&store::ListOptions::default())
        .await
        .unwrap();
    assert!(images
        .iter()
        .all(|i| i.status.state == ImageState::Available));
    let kinds = w.slow.violating_kinds();
    let expected: BTreeSet<String> = ["encryption_format", "resolve"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(kinds, expected, "only resolve and format run in the pass");
    let m = w.r().runner.metrics();
    assert!(
        m.succeeded >= 3,
        "populate, fill and the deletion's flatten ran on the runner: {m:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_pool_makes_the_pool_baseline_poll_with_its_backoff_reset_each_time() {
    let mut w = World::new(pool_config(), pool(1));
    w.start().await;
    // Two OS images whose downloads hang after their first chunk: the first populate holds the
    // only slot, the second one is refused and polls.
    w.source.hold();
    let mut ids = Vec::new();
    for i in 0..2u64 {
        let reference = w
            .source
            .add(&format!("os{i}"), pattern(MIB as usize, 30 + i));
        let mut v = new_volume(2 * MIB);
        v.spec.image = reference;
        ids.push(w.images().create(v).await.unwrap().metadata.id);
    }
    let refused = w
        .wait_for(BUDGET, |r, _, _| r.runner.metrics().rejected_busy >= 3)
        .await;
    assert!(refused, "the second populate is refused again and again");
    let polling = w
        .images()
        .list(&store::ListOptions::default())
        .await
        .unwrap();
    assert!(polling.iter().all(|i| i.spec.snapshot_ref.is_some()));
    let waiting: Vec<String> = w
        .snapshots()
        .list(&store::ListOptions::default())
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.metadata.id)
        .filter(|id| w.r().runner.state(&snapshot_key(id)).is_none())
        .collect();
    assert_eq!(
        waiting.len(),
        1,
        "one populate runs, the other is not queued"
    );
    let before = w.r().runner.metrics().rejected_busy;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = w.r().runner.metrics().rejected_busy;
    // Polling at the base delay, as fast as the global token bucket (10/s after its burst)
    // allows: several refusals per second, and the failure count never grows.
    assert!(
        after - before >= 5,
        "polled {} times in 1 s",
        after - before
    );
    assert_eq!(w.r().probe.snapshot_queue().failures(&waiting[0]), 0);

    w.source.release();
    assert!(w.settle(BUDGET).await);
    for s in w
        .snapshots()
        .list(&store::ListOptions::default())
        .await
        .unwrap()
    {
        assert_eq!(s.status.state, SnapshotState::Ready);
    }
    for id in &ids {
        assert_eq!(
            w.images().get(id).await.unwrap().status.state,
            ImageState::Available
        );
    }
}

#[tokio::test(start_paused = true)]
async fn without_a_baseline_a_full_runner_backs_off_instead_of_polling() {
    // The provider's own design keeps the failure backoff of a refused submission (capped at
    // `busy_backoff`), unlike the pool baseline above.
    let mut w = World::new(test_config(), pool(1));
    w.start().await;
    w.source.hold();
    for i in 0..2u64 {
        let reference = w
            .source
            .add(&format!("os{i}"), pattern(MIB as usize, 40 + i));
        let mut v = new_volume(2 * MIB);
        v.spec.image = reference;
        w.images().create(v).await.unwrap();
    }
    let refused = w
        .wait_for(BUDGET, |r, _, _| r.runner.metrics().rejected_busy >= 3)
        .await;
    assert!(refused);
    let r = w.r();
    let mut failures = Vec::new();
    for s in w
        .snapshots()
        .list(&store::ListOptions::default())
        .await
        .unwrap()
    {
        failures.push(r.probe.snapshot_queue().failures(&s.metadata.id));
    }
    for i in w
        .images()
        .list(&store::ListOptions::default())
        .await
        .unwrap()
    {
        failures.push(r.probe.image_queue().failures(&i.metadata.id));
    }
    assert!(
        failures.iter().any(|n| *n >= 2),
        "the refused key's failure count grows: {failures:?}"
    );
    w.source.release();
    assert!(w.settle(BUDGET).await);
}
