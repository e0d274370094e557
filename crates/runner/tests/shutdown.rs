//! Shutdown (drain, cancel, deadlines, repeated calls), a runtime that goes away, and a
//! multi-thread runtime, through the runner's public API.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use runner::{Outcome, ShutdownMode, Submitted};
use tokio::sync::oneshot;

#[tokio::test(start_paused = true)]
async fn drain_shutdown_lets_running_and_waiting_ops_finish() {
    let runner = runner(1, 2);
    let mut completions = runner.subscribe();
    let started = Started::default();
    let (a, gate_a) = gated(&started);
    let (b, gate_b) = gated(&started);
    let _ = runner.try_submit("a", a);
    let _ = runner.try_submit("b", b);
    let shutdown = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.shutdown(drain()).await })
    };
    until_idle().await;
    assert!(!shutdown.is_finished());
    open(gate_a);
    until_idle().await;
    assert_eq!(
        started.keys(),
        ["a", "b"],
        "waiting ops still start while draining"
    );
    open(gate_b);
    shutdown.await.expect("shutdown task");
    assert_eq!(next(&mut completions).await.outcome, Outcome::Ok);
    assert_eq!(next(&mut completions).await.outcome, Outcome::Ok);
    assert!(completions.recv().await.is_none(), "closed after shutdown");
}

#[tokio::test(start_paused = true)]
async fn drain_shutdown_cancels_what_is_left_at_the_deadline() {
    let runner = runner(1, 2);
    let mut completions = runner.subscribe();
    let started = Started::default();
    let (a, _gate_a) = stubborn();
    let (b, _gate_b) = gated(&started);
    let _ = runner.try_submit("a", a);
    let _ = runner.try_submit("b", b);
    let t0 = tokio::time::Instant::now();
    runner
        .shutdown(ShutdownMode::Drain {
            deadline: Duration::from_secs(10),
        })
        .await;
    assert_eq!(tokio::time::Instant::now() - t0, Duration::from_secs(10));
    let mut got = vec![
        key_outcome(next(&mut completions).await),
        key_outcome(next(&mut completions).await),
    ];
    got.sort();
    assert_eq!(got, [cancelled("a"), cancelled("b")]);
    assert!(started.keys().is_empty(), "b never ran");
}

#[tokio::test(start_paused = true)]
async fn cancel_shutdown_completes_waiting_ops_unrun_and_cancels_running_ones() {
    let runner = runner(1, 2);
    let mut completions = runner.subscribe();
    let started = Started::default();
    let (a, _gate_a) = gated(&started);
    let (b, _gate_b) = gated(&started);
    let _ = runner.try_submit("a", a);
    let _ = runner.try_submit("b", b);
    until_idle().await;
    let t0 = tokio::time::Instant::now();
    runner
        .shutdown(ShutdownMode::Cancel {
            deadline: Duration::from_secs(10),
        })
        .await;
    assert_eq!(tokio::time::Instant::now(), t0, "the op stopped at once");
    assert_eq!(key_outcome(next(&mut completions).await), cancelled("b"));
    assert_eq!(key_outcome(next(&mut completions).await), cancelled("a"));
    assert_eq!(started.keys(), ["a"]);
}

#[tokio::test(start_paused = true)]
async fn cancel_shutdown_aborts_async_ops_that_ignore_their_token_at_the_deadline() {
    let runner = runner(1, 1);
    let mut completions = runner.subscribe();
    let (a, _gate) = stubborn();
    let _ = runner.try_submit("a", a);
    until_idle().await;
    let t0 = tokio::time::Instant::now();
    runner
        .shutdown(ShutdownMode::Cancel {
            deadline: Duration::from_secs(3),
        })
        .await;
    assert_eq!(tokio::time::Instant::now() - t0, Duration::from_secs(3));
    assert_eq!(key_outcome(next(&mut completions).await), cancelled("a"));
    assert_eq!(runner.metrics().running, 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_a_blocking_op_that_ignores_its_token() {
    let runner = runner(1, 1);
    let mut completions = runner.subscribe();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let _ = runner.try_submit_blocking("a", move |_| {
        started_tx.send(()).expect("test waiting");
        release_rx.recv().map_err(|e| e.into())
    });
    started_rx.await.expect("the op started");
    let shutdown = {
        let runner = runner.clone();
        tokio::spawn(async move {
            runner
                .shutdown(ShutdownMode::Cancel {
                    deadline: Duration::ZERO,
                })
                .await
        })
    };
    tokio::task::yield_now().await;
    assert!(!shutdown.is_finished());
    release_tx.send(()).expect("op waiting");
    shutdown.await.expect("shutdown task");
    // It ignored its token and finished its work.
    assert_eq!(next(&mut completions).await.outcome, Outcome::Ok);
}

#[tokio::test(start_paused = true)]
async fn shutdown_may_be_called_again_to_cut_a_drain_short() {
    let runner = runner(1, 1);
    let (a, _gate) = gated(&Started::default());
    let _ = runner.try_submit("a", a);
    let first = tokio::time::timeout(
        Duration::from_secs(1),
        runner.shutdown(ShutdownMode::Drain {
            deadline: Duration::MAX,
        }),
    )
    .await;
    assert!(first.is_err(), "the drain would never end");
    runner
        .shutdown(ShutdownMode::Cancel {
            deadline: Duration::from_secs(1),
        })
        .await;
    assert_eq!(runner.metrics().cancelled, 1);
}

#[tokio::test(start_paused = true)]
async fn subscribing_after_shutdown_yields_a_closed_subscription() {
    let runner = runner(1, 1);
    runner.shutdown(drain()).await;
    assert!(runner.subscribe().recv().await.is_none());
}

#[test]
fn dropping_the_runtime_completes_running_and_waiting_ops_as_cancelled() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let (runner, mut completions) = rt.block_on(async {
        let runner = runner(1, 1);
        let completions = runner.subscribe();
        let (a, gate) = stubborn();
        let _ = runner.try_submit("a", a);
        let _ = runner.try_submit("b", |_| async { Ok(()) });
        tokio::task::yield_now().await;
        std::mem::forget(gate);
        (runner, completions)
    });
    drop(rt);
    let mut got = vec![
        completions.try_recv().map(key_outcome),
        completions.try_recv().map(key_outcome),
    ];
    got.sort();
    assert_eq!(got, [Some(cancelled("a")), Some(cancelled("b"))]);
    assert!(runner.is_shutting_down());
    assert_eq!(runner.metrics().running, 0);
}

#[test]
fn on_a_multi_thread_runtime_the_bound_holds_and_every_op_completes_once() {
    const OPS: usize = 2_000;
    const MAX: usize = 3;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let runner = runner(MAX, 8);
        let mut completions = runner.subscribe();
        let live = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let submitters: Vec<_> = (0..4)
            .map(|s| {
                let runner = runner.clone();
                let (live, peak) = (Arc::clone(&live), Arc::clone(&peak));
                tokio::spawn(async move {
                    for i in 0..OPS / 4 {
                        let (live, peak) = (Arc::clone(&live), Arc::clone(&peak));
                        let answer = runner
                            .submit(format!("{s}-{i}"), move |_| async move {
                                let now = live.fetch_add(1, Ordering::SeqCst) + 1;
                                peak.fetch_max(now, Ordering::SeqCst);
                                tokio::task::yield_now().await;
                                live.fetch_sub(1, Ordering::SeqCst);
                                Ok(())
                            })
                            .await;
                        assert_eq!(answer, Ok(Submitted::Accepted));
                    }
                })
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..OPS {
            let c = next(&mut completions).await;
            assert_eq!(c.outcome, Outcome::Ok);
            assert!(seen.insert(c.key), "completed once");
        }
        for s in submitters {
            s.await.expect("submitter");
        }
        assert!(peak.load(Ordering::SeqCst) <= MAX);
        runner.shutdown(drain()).await;
        assert!(completions.recv().await.is_none());
        let m = runner.metrics();
        assert_eq!((m.accepted, m.succeeded), (OPS as u64, OPS as u64));
    });
}
