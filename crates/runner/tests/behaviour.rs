//! One test per behaviour of the runner, through its public API, with paused (deterministic) time.
//! Shutdown and runtime tests are in `shutdown.rs`, operation classes in `classes.rs`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use runner::{OpContext, OpState, Outcome, Progress, Runner, RunnerConfig, SubmitError, Submitted};
use tokio::sync::oneshot;

#[tokio::test(start_paused = true)]
async fn an_accepted_op_runs_and_its_completion_reaches_every_subscriber() {
    let runner = runner(2, 2);
    let mut first = runner.subscribe();
    let mut second = runner.subscribe();
    let answer = runner.try_submit("a", |_ctx| async { Ok(()) });
    assert_eq!(answer, Ok(Submitted::Accepted));
    for subscription in [&mut first, &mut second] {
        let c = next(subscription).await;
        assert_eq!((c.key.as_str(), &c.outcome), ("a", &Outcome::Ok));
    }
    assert_eq!(runner.state("a"), None);
}

#[tokio::test(start_paused = true)]
async fn a_key_already_running_is_deduplicated_and_the_new_op_is_dropped() {
    let runner = runner(2, 2);
    let started = Started::default();
    let (op, gate) = gated(&started);
    assert_eq!(runner.try_submit("a", op), Ok(Submitted::Accepted));
    let second_ran = Arc::new(AtomicUsize::new(0));
    let flag = Arc::clone(&second_ran);
    let again = runner.try_submit("a", move |_ctx| async move {
        flag.fetch_add(1, Ordering::SeqCst);
        Ok(())
    });
    assert_eq!(again, Ok(Submitted::AlreadyRunning));
    let again = runner.submit("a", |_ctx| async { Ok(()) }).await;
    assert_eq!(again, Ok(Submitted::AlreadyRunning));
    open(gate);
    until_idle().await;
    assert_eq!(second_ran.load(Ordering::SeqCst), 0);
    assert_eq!(started.keys(), ["a"]);
    assert_eq!(runner.metrics().deduplicated, 2);
}

#[tokio::test(start_paused = true)]
async fn a_key_already_waiting_is_deduplicated() {
    let runner = runner(1, 2);
    let started = Started::default();
    let (op, _gate) = gated(&started);
    assert_eq!(runner.try_submit("a", op), Ok(Submitted::Accepted));
    assert_eq!(
        runner.try_submit("b", |_| async { Ok(()) }),
        Ok(Submitted::Accepted)
    );
    let again = runner.try_submit_blocking("b", |_| Ok(()));
    assert_eq!(again, Ok(Submitted::AlreadyWaiting));
    assert_eq!(runner.state("b"), Some(OpState::Waiting));
}

#[tokio::test(start_paused = true)]
async fn no_more_than_max_running_ops_run_and_the_others_start_in_fifo_order() {
    let runner = runner(2, 10);
    let started = Started::default();
    let mut gates = Vec::new();
    for key in ["a", "b", "c", "d", "e"] {
        let (op, gate) = gated(&started);
        assert_eq!(runner.try_submit(key, op), Ok(Submitted::Accepted));
        gates.push(gate);
    }
    until_idle().await;
    assert_eq!(started.keys(), ["a", "b"]);
    let m = runner.metrics();
    assert_eq!((m.running, m.waiting), (2, 3));
    let mut gates = gates.into_iter();
    for expected in [
        &["a", "b", "c"][..],
        &["a", "b", "c", "d"],
        &["a", "b", "c", "d", "e"],
    ] {
        open(gates.next().expect("a gate"));
        until_idle().await;
        assert_eq!(started.keys(), expected);
        assert!(runner.metrics().running <= 2);
    }
}

#[tokio::test(start_paused = true)]
async fn try_submit_answers_busy_when_the_waiting_queue_is_full() {
    let runner = runner(1, 1);
    let started = Started::default();
    let (a, _ga) = gated(&started);
    let (b, _gb) = gated(&started);
    assert_eq!(runner.try_submit("a", a), Ok(Submitted::Accepted));
    assert_eq!(runner.try_submit("b", b), Ok(Submitted::Accepted));
    let busy = runner.try_submit("c", |_| async { Ok(()) });
    assert_eq!(busy, Err(SubmitError::Busy));
    assert_eq!(
        runner.try_submit_blocking("c", |_| Ok(())),
        Err(SubmitError::Busy)
    );
    // A key already there is still deduplicated when full.
    assert_eq!(
        runner.try_submit("b", |_| async { Ok(()) }),
        Ok(Submitted::AlreadyWaiting)
    );
    assert_eq!(runner.metrics().rejected_busy, 2);
}

#[tokio::test(start_paused = true)]
async fn submit_waits_for_room_instead_of_answering_busy() {
    let runner = runner(1, 1);
    let started = Started::default();
    let (a, gate_a) = gated(&started);
    let (b, _gate_b) = gated(&started);
    assert_eq!(runner.try_submit("a", a), Ok(Submitted::Accepted));
    assert_eq!(runner.try_submit("b", b), Ok(Submitted::Accepted));
    let submitter = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.submit("c", |_| async { Ok(()) }).await })
    };
    until_idle().await;
    assert!(
        !submitter.is_finished(),
        "the submitter waits while the runner is full"
    );
    open(gate_a);
    let answer = submitter.await.expect("the submitter task");
    assert_eq!(answer, Ok(Submitted::Accepted));
    assert_eq!(runner.state("c"), Some(OpState::Waiting));
    assert_eq!(runner.state("b"), Some(OpState::Running));
}

#[tokio::test(start_paused = true)]
async fn submit_with_no_queue_waits_for_a_free_running_slot() {
    let runner = runner(1, 0);
    let started = Started::default();
    let (a, gate_a) = gated(&started);
    assert_eq!(runner.try_submit("a", a), Ok(Submitted::Accepted));
    assert_eq!(
        runner.try_submit("b", |_| async { Ok(()) }),
        Err(SubmitError::Busy)
    );
    let (b, _gate_b) = gated(&started);
    let submitter = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.submit("b", b).await })
    };
    until_idle().await;
    assert!(!submitter.is_finished());
    open(gate_a);
    assert_eq!(submitter.await.expect("task"), Ok(Submitted::Accepted));
    until_idle().await;
    assert_eq!(started.keys(), ["a", "b"]);
}

#[tokio::test(start_paused = true)]
async fn a_submitter_waiting_for_room_learns_of_a_shutdown() {
    let runner = runner(1, 0);
    let (a, gate_a) = stubborn();
    assert_eq!(runner.try_submit("a", a), Ok(Submitted::Accepted));
    let submitter = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.submit("b", |_| async { Ok(()) }).await })
    };
    until_idle().await;
    let shutdown = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.shutdown(drain()).await })
    };
    let answer = submitter.await.expect("task");
    assert_eq!(answer, Err(SubmitError::ShuttingDown));
    open(gate_a);
    shutdown.await.expect("shutdown task");
}

#[tokio::test(start_paused = true)]
async fn submissions_after_shutdown_started_are_refused() {
    let runner = runner(1, 1);
    runner.shutdown(drain()).await;
    assert!(runner.is_shutting_down());
    assert_eq!(
        runner.try_submit("a", |_| async { Ok(()) }),
        Err(SubmitError::ShuttingDown)
    );
    assert_eq!(
        runner.submit("a", |_| async { Ok(()) }).await,
        Err(SubmitError::ShuttingDown)
    );
    assert_eq!(
        runner.try_submit_blocking("a", |_| Ok(())),
        Err(SubmitError::ShuttingDown)
    );
    let answer = runner.submit_blocking("a", |_| Ok(())).await;
    assert_eq!(answer, Err(SubmitError::ShuttingDown));
}

/// A two-level error, to check that the source chain is reported.
#[derive(Debug)]
struct Outer;

impl std::fmt::Display for Outer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("flatten failed")
    }
}

impl std::error::Error for Outer {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&Inner)
    }
}

#[derive(Debug)]
struct Inner;

impl std::fmt::Display for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("image busy")
    }
}

impl std::error::Error for Inner {}

#[tokio::test(start_paused = true)]
async fn a_failing_op_completes_as_failed_with_its_error_and_source_chain() {
    let runner = runner(1, 1);
    let mut completions = runner.subscribe();
    let _ = runner.try_submit("a", |_| async { Err(Outer.into()) });
    let c = next(&mut completions).await;
    assert_eq!(
        c.outcome,
        Outcome::Failed("flatten failed: image busy".into())
    );
    assert_eq!(runner.metrics().failed, 1);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_op_completes_as_failed_and_frees_its_slot() {
    let runner = runner(1, 1);
    let mut completions = runner.subscribe();
    let _ = runner.try_submit("a", |_| async { panic!("deliberate panic") });
    let _ = runner.try_submit("b", |_| async { Ok(()) });
    let c = next(&mut completions).await;
    assert_eq!(
        c.outcome,
        Outcome::Failed("panicked: deliberate panic".into())
    );
    let c = next(&mut completions).await;
    assert_eq!((c.key.as_str(), c.outcome), ("b", Outcome::Ok));
    let m = runner.metrics();
    assert_eq!((m.failed, m.panicked, m.succeeded, m.running), (1, 1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_the_op_closure_itself_is_caught_too() {
    let runner = runner(1, 1);
    let mut completions = runner.subscribe();
    let _ = runner.try_submit("a", |_ctx| -> BoxFut { panic!("closure panic {}", 42) });
    let c = next(&mut completions).await;
    assert_eq!(
        c.outcome,
        Outcome::Failed("panicked: closure panic 42".into())
    );
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_waiting_op_completes_it_as_cancelled_without_running_it() {
    let runner = runner(1, 2);
    let mut completions = runner.subscribe();
    let started = Started::default();
    let (a, gate_a) = gated(&started);
    let (b, _gate_b) = gated(&started);
    let _ = runner.try_submit("a", a);
    let _ = runner.try_submit("b", b);
    assert!(runner.cancel("b"));
    assert_eq!(key_outcome(next(&mut completions).await), cancelled("b"));
    assert_eq!(runner.state("b"), None);
    open(gate_a);
    assert_eq!(next(&mut completions).await.key, "a");
    until_idle().await;
    assert_eq!(started.keys(), ["a"]);
    assert_eq!(runner.metrics().cancelled, 1);
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_running_op_cancels_its_token_and_its_error_counts_as_cancelled() {
    let runner = runner(1, 1);
    let mut completions = runner.subscribe();
    let started = Started::default();
    let (a, _gate) = gated(&started);
    let _ = runner.try_submit("a", a);
    until_idle().await;
    assert!(runner.cancel("a"));
    let c = next(&mut completions).await;
    assert_eq!(key_outcome(c), cancelled("a"));
}

#[tokio::test(start_paused = true)]
async fn an_op_that_succeeds_after_cancellation_counts_as_succeeded() {
    let runner = runner(1, 1);
    let mut completions = runner.subscribe();
    let (a, gate) = stubborn();
    let _ = runner.try_submit("a", a);
    until_idle().await;
    assert!(runner.cancel("a"));
    until_idle().await;
    let info = runner.snapshot();
    assert!(info[0].cancel_requested);
    open(gate);
    assert_eq!(next(&mut completions).await.outcome, Outcome::Ok);
}

#[tokio::test(start_paused = true)]
async fn the_token_handed_to_an_op_is_cancelled_by_cancel() {
    let runner = runner(1, 1);
    let mut completions = runner.subscribe();
    let _ = runner.try_submit("a", |ctx| async move {
        let token = ctx.token();
        token.cancelled().await;
        assert!(ctx.is_cancelled());
        Err("cancelled".into())
    });
    until_idle().await;
    runner.cancel("a");
    assert_eq!(key_outcome(next(&mut completions).await), cancelled("a"));
}

#[tokio::test(start_paused = true)]
async fn cancel_of_an_unknown_key_returns_false() {
    let runner = runner(1, 1);
    assert!(!runner.cancel("nope"));
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_that_resubmits_the_key_on_completion_is_accepted() {
    let runner = runner(1, 1);
    let mut completions = runner.subscribe();
    let _ = runner.try_submit("a", |_| async { Ok(()) });
    let c = next(&mut completions).await;
    assert_eq!(c.key, "a");
    let again = runner.try_submit("a", |_| async { Ok(()) });
    assert_eq!(again, Ok(Submitted::Accepted));
    assert_eq!(next(&mut completions).await.key, "a");
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_that_never_reads_loses_no_completion() {
    let runner = runner(4, 10_000);
    let mut completions = runner.subscribe();
    for i in 0..5_000 {
        let _ = runner.try_submit(format!("k{i}"), |_| async { Ok(()) });
    }
    until_idle().await;
    let mut count = 0;
    while completions.try_recv().is_some() {
        count += 1;
    }
    assert_eq!(count, 5_000);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_subscription_does_not_disturb_the_others() {
    let runner = runner(1, 1);
    let dropped = runner.subscribe();
    let mut kept = runner.subscribe();
    drop(dropped);
    let _ = runner.try_submit("a", |_| async { Ok(()) });
    assert_eq!(next(&mut kept).await.key, "a");
}

#[tokio::test(start_paused = true)]
async fn progress_reports_are_visible_through_progress_and_snapshot() {
    let runner = runner(1, 1);
    let (tx, rx) = oneshot::channel::<()>();
    let _ = runner.try_submit("a", |ctx| async move {
        ctx.report(1, 10);
        let from_a_thread = ctx.progress_fn();
        std::thread::spawn(move || from_a_thread(5, 10))
            .join()
            .expect("reporter thread");
        rx.await.map_err(|e| e.into())
    });
    until_idle().await;
    assert_eq!(runner.progress("a"), Some(Progress { done: 5, total: 10 }));
    let snap = runner.snapshot();
    assert_eq!(snap.len(), 1);
    assert_eq!(snap[0].progress, Some(Progress { done: 5, total: 10 }));
    assert_eq!(runner.progress("missing"), None);
    tx.send(()).expect("op waiting");
}

#[tokio::test(start_paused = true)]
async fn snapshot_lists_running_ops_by_start_then_waiting_ops_in_queue_order() {
    let runner = runner(2, 5);
    let started = Started::default();
    let mut gates = Vec::new();
    let t0 = tokio::time::Instant::now();
    for key in ["b", "a"] {
        let (op, gate) = gated(&started);
        let _ = runner.try_submit(key, op);
        gates.push(gate);
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    for key in ["z", "y", "x"] {
        let (op, gate) = gated(&started);
        let _ = runner.try_submit(key, op);
        gates.push(gate);
    }
    let snap = runner.snapshot();
    let keys: Vec<_> = snap.iter().map(|i| (i.key.as_str(), i.state)).collect();
    use OpState::{Running, Waiting};
    assert_eq!(
        keys,
        [
            ("b", Running),
            ("a", Running),
            ("z", Waiting),
            ("y", Waiting),
            ("x", Waiting)
        ]
    );
    assert_eq!(snap[0].started_at, Some(t0));
    assert_eq!(snap[1].started_at, Some(t0 + Duration::from_secs(1)));
    assert_eq!(snap[2].started_at, None);
    assert_eq!(snap[2].submitted_at, t0 + Duration::from_secs(2));
    assert!(!snap[0].blocking);
}

#[tokio::test(start_paused = true)]
async fn progress_updates_come_at_most_once_per_interval_and_only_after_reports() {
    let runner = Runner::new(RunnerConfig {
        max_running: 1,
        max_waiting: 1,
        progress_interval: Duration::from_secs(5),
        ..RunnerConfig::default()
    });
    let (ctx_tx, ctx_rx) = oneshot::channel::<OpContext>();
    let (end_tx, end_rx) = oneshot::channel::<()>();
    let _ = runner.try_submit("a", |ctx| async move {
        ctx_tx.send(ctx).expect("test waiting");
        end_rx.await.map_err(|e| e.into())
    });
    let ctx = ctx_rx.await.expect("the op started");
    let mut updates = runner.progress_updates();
    let t0 = tokio::time::Instant::now();
    ctx.report(1, 4);
    ctx.report(2, 4);
    let first = updates.next().await.expect("an update");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].progress, Some(Progress { done: 2, total: 4 }));
    ctx.report(3, 4);
    let second = updates.next().await.expect("an update");
    assert_eq!(second[0].progress, Some(Progress { done: 3, total: 4 }));
    assert_eq!(tokio::time::Instant::now() - t0, Duration::from_secs(5));
    // Nothing reported for a while: no update until the next report.
    let quiet = tokio::time::timeout(Duration::from_secs(60), updates.next()).await;
    assert!(quiet.is_err(), "no update without a report");
    ctx.report(4, 4);
    assert!(updates.next().await.is_some());
    end_tx.send(()).expect("op waiting");
    drop(ctx);
    runner.shutdown(drain()).await;
    assert_eq!(updates.next().await, None);
}

#[tokio::test(start_paused = true)]
async fn blocking_ops_run_off_the_reactor_with_progress_and_cancellation() {
    let runner = runner(1, 1);
    let mut completions = runner.subscribe();
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let reactor_thread = std::thread::current().id();
    let _ = runner.try_submit_blocking("a", move |ctx| {
        assert_ne!(
            std::thread::current().id(),
            reactor_thread,
            "runs on the blocking pool"
        );
        ctx.report(1, 2);
        started_tx.send(()).expect("test waiting");
        // A blocking checkpoint loop: wait for the token from this thread.
        let token = ctx.token();
        futures::executor::block_on(token.cancelled());
        Err("stopped at a checkpoint".into())
    });
    started_rx.await.expect("the op started");
    assert_eq!(runner.progress("a"), Some(Progress { done: 1, total: 2 }));
    assert!(runner.snapshot()[0].blocking);
    assert!(runner.cancel("a"));
    assert_eq!(key_outcome(next(&mut completions).await), cancelled("a"));
}

#[tokio::test(start_paused = true)]
async fn blocking_and_async_ops_share_the_running_bound() {
    let runner = runner(1, 2);
    let mut completions = runner.subscribe();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let _ =
        runner.try_submit_blocking("blocking", move |_| release_rx.recv().map_err(|e| e.into()));
    let _ = runner.try_submit("async", |_| async { Ok(()) });
    assert_eq!(runner.state("async"), Some(OpState::Waiting));
    release_tx.send(()).expect("op waiting");
    assert_eq!(next(&mut completions).await.key, "blocking");
    assert_eq!(next(&mut completions).await.key, "async");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_blocking_op_completes_as_failed() {
    let runner = runner(1, 1);
    let mut completions = runner.subscribe();
    let _ = runner.try_submit_blocking("a", |_| panic!("blocking panic"));
    let c = next(&mut completions).await;
    assert_eq!(
        c.outcome,
        Outcome::Failed("panicked: blocking panic".into())
    );
    assert_eq!(runner.metrics().running, 0);
}

#[tokio::test(start_paused = true)]
async fn submit_blocking_waits_for_room() {
    let runner = runner(1, 0);
    let (a, gate) = stubborn();
    let _ = runner.try_submit("a", a);
    let submitter = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.submit_blocking("b", |_| Ok(())).await })
    };
    until_idle().await;
    assert!(!submitter.is_finished());
    open(gate);
    assert_eq!(submitter.await.expect("task"), Ok(Submitted::Accepted));
}

#[tokio::test(start_paused = true)]
async fn metrics_count_every_outcome_and_run_duration() {
    let runner = runner(2, 2);
    let mut completions = runner.subscribe();
    let _ = runner.try_submit("ok", |_| async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(())
    });
    let _ = runner.try_submit("fail", |_| async { Err("no".into()) });
    let (c, _gate) = gated(&Started::default());
    let _ = runner.try_submit("cancel-running", c);
    let _ = runner.try_submit("cancel-waiting", |_| async { Ok(()) });
    let _ = runner.try_submit("ok", |_| async { Ok(()) });
    assert_eq!(next(&mut completions).await.key, "fail");
    runner.cancel("cancel-waiting");
    runner.cancel("cancel-running");
    for _ in 0..3 {
        next(&mut completions).await;
    }
    let m = runner.metrics();
    assert_eq!((m.accepted, m.deduplicated, m.completed), (4, 1, 4));
    assert_eq!((m.succeeded, m.failed, m.cancelled), (1, 1, 2));
    assert_eq!((m.waiting, m.running), (0, 0));
    assert_eq!(
        m.duration_count, 3,
        "the waiting op that was cancelled never ran"
    );
    assert_eq!(m.duration_sum, Duration::from_secs(2));
    assert_eq!(m.duration_buckets[0], 2, "two ops took no time");
    assert_eq!(m.duration_buckets[3], 3, "all three took at most 10 s");
}

#[tokio::test(start_paused = true)]
async fn a_completion_carries_the_run_duration() {
    let runner = runner(1, 1);
    let mut completions = runner.subscribe();
    let _ = runner.try_submit("a", |_| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Ok(())
    });
    assert_eq!(
        next(&mut completions).await.duration,
        Duration::from_millis(1500)
    );
}

#[tokio::test(start_paused = true)]
async fn a_zero_max_running_is_treated_as_one() {
    let runner = runner(0, 0);
    let mut completions = runner.subscribe();
    assert_eq!(
        runner.try_submit("a", |_| async { Ok(()) }),
        Ok(Submitted::Accepted)
    );
    assert_eq!(next(&mut completions).await.key, "a");
}

/// An error whose `Display` panics.
#[derive(Debug)]
struct Unprintable;

impl std::fmt::Display for Unprintable {
    fn fmt(&self, _f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        panic!("deliberate panic in Display")
    }
}

impl std::error::Error for Unprintable {}

#[tokio::test(start_paused = true)]
async fn an_error_whose_message_panics_still_completes_as_failed() {
    let runner = runner(1, 1);
    let mut completions = runner.subscribe();
    let _ = runner.try_submit("a", |_| async { Err(Unprintable.into()) });
    let c = next(&mut completions).await;
    assert!(matches!(c.outcome, Outcome::Failed(_)), "{c:?}");
    let _ = runner.try_submit("b", |_| async { Ok(()) });
    assert_eq!(next(&mut completions).await.outcome, Outcome::Ok);
}

#[test]
fn the_runner_and_its_submit_futures_can_cross_threads() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let runner = Runner::with_handle(RunnerConfig::default(), rt.handle().clone());
    send_sync(&runner);
    send(&runner.submit("a", |_| async { Ok(()) }));
    send(&runner.submit_blocking("a", |_| Ok(())));
    send(&runner.shutdown(drain()));
    send(&runner.subscribe());
    send(&runner.progress_updates());
}
