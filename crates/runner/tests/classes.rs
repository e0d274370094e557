//! Operation classes, through the runner's public API with paused (deterministic) time: reserved
//! shares, the slot kept free for a class with nothing running, the order in which waiting
//! operations get a freed slot (below share, oldest head, aging), keys unique across classes,
//! per-class bounds and metrics, and the other behaviours (cancel, snapshot, shutdown, panics)
//! in every class.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use runner::{
    ClassConfig, OpState, Outcome, Runner, RunnerConfig, ShutdownMode, SubmitError, Submitted,
    DEFAULT_CLASS,
};

const AGING: Duration = Duration::from_secs(60);

fn classes_runner(max_running: usize, classes: &[(&str, usize)]) -> Runner {
    Runner::new(RunnerConfig {
        max_running,
        max_waiting: 100,
        classes: classes
            .iter()
            .map(|&(name, share)| ClassConfig::new(name, share))
            .collect(),
        aging: AGING,
        ..RunnerConfig::default()
    })
}

/// The daemon's three classes with the proposed shares.
fn daemon_runner() -> Runner {
    classes_runner(10, &[("populate", 5), ("fill", 3), ("flatten", 2)])
}

/// Submits gated operations: `(class, key)` each; returns the gates by key.
fn submit_all(runner: &Runner, started: &Started, ops: &[(&str, &str)]) -> HashMap<String, Gate> {
    let mut gates = HashMap::new();
    for &(class, key) in ops {
        let (op, gate) = gated(started);
        assert_eq!(
            runner.try_submit_in(class, key, op),
            Ok(Submitted::Accepted),
            "{key}"
        );
        gates.insert(key.to_owned(), gate);
    }
    gates
}

/// `(running, waiting)` of the class named `name`.
fn load(runner: &Runner, name: &str) -> (usize, usize) {
    let m = runner.metrics();
    let c = m
        .classes
        .iter()
        .find(|c| c.name == name)
        .expect("a configured class");
    (c.running, c.waiting)
}

fn finish(gates: &mut HashMap<String, Gate>, key: &str) {
    open(gates.remove(key).expect("a gate for this key"));
}

#[tokio::test(start_paused = true)]
async fn with_no_classes_configured_one_default_class_holds_every_slot() {
    let runner = runner(3, 5);
    let m = runner.metrics();
    assert_eq!(m.classes.len(), 1);
    assert_eq!(m.classes[0].name, DEFAULT_CLASS);
    assert_eq!((m.classes[0].share, m.classes[0].reserved), (1, 3));
    assert!(runner.has_class(DEFAULT_CLASS));
}

#[tokio::test(start_paused = true)]
async fn shares_become_reserved_slots_that_add_up_to_max_running() {
    let runner = daemon_runner();
    let reserved: Vec<_> = runner
        .metrics()
        .classes
        .iter()
        .map(|c| (c.name.clone(), c.reserved))
        .collect();
    assert_eq!(
        reserved,
        [
            ("populate".to_owned(), 5),
            ("fill".to_owned(), 3),
            ("flatten".to_owned(), 2)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_flatten_submitted_behind_fifty_waiting_populates_starts_at_once() {
    let runner = daemon_runner();
    let started = Started::default();
    let populates: Vec<String> = (0..50).map(|i| format!("populate:{i}")).collect();
    let ops: Vec<_> = populates.iter().map(|k| ("populate", k.as_str())).collect();
    let mut gates = submit_all(&runner, &started, &ops);
    until_idle().await;
    // Two slots stay free: one for fill, one for flatten, which have nothing running.
    assert_eq!(load(&runner, "populate"), (8, 42));

    gates.extend(submit_all(&runner, &started, &[("flatten", "flatten:1")]));
    assert_eq!(runner.state("flatten:1"), Some(OpState::Running));
    gates.extend(submit_all(&runner, &started, &[("fill", "fill:1")]));
    assert_eq!(runner.state("fill:1"), Some(OpState::Running));
    until_idle().await;
    assert_eq!(started.keys().last().map(String::as_str), Some("fill:1"));
    assert_eq!(runner.metrics().running, 10);

    // A second flatten waits now: no slot is free.
    gates.extend(submit_all(&runner, &started, &[("flatten", "flatten:2")]));
    assert_eq!(runner.state("flatten:2"), Some(OpState::Waiting));
    // The next freed slot goes to it: flatten is below its share (1 of 2), populate is above.
    finish(&mut gates, "populate:0");
    until_idle().await;
    assert_eq!(runner.state("flatten:2"), Some(OpState::Running));
    assert_eq!(load(&runner, "populate"), (7, 42));
}

#[tokio::test(start_paused = true)]
async fn lending_keeps_the_last_free_slot_for_a_class_with_nothing_running() {
    let runner = classes_runner(4, &[("a", 2), ("b", 2)]);
    let started = Started::default();
    let mut gates = submit_all(
        &runner,
        &started,
        &[("a", "a1"), ("a", "a2"), ("a", "a3"), ("a", "a4")],
    );
    until_idle().await;
    // a borrows one of b's slots but not the last one.
    assert_eq!(load(&runner, "a"), (3, 1));
    assert_eq!(runner.metrics().running, 3);
    // When a slot frees, a (still running some) takes it back, leaving the free one for b.
    finish(&mut gates, "a1");
    until_idle().await;
    assert_eq!(load(&runner, "a"), (3, 0));
    assert_eq!(started.keys(), ["a1", "a2", "a3", "a4"]);
    gates.extend(submit_all(&runner, &started, &[("b", "b1")]));
    assert_eq!(runner.state("b1"), Some(OpState::Running));
}

#[tokio::test(start_paused = true)]
async fn a_class_below_its_share_goes_before_an_older_head() {
    let runner = classes_runner(4, &[("a", 2), ("b", 2)]);
    let started = Started::default();
    let mut gates = submit_all(
        &runner,
        &started,
        &[
            ("a", "a1"),
            ("a", "a2"),
            ("a", "a3"),
            ("a", "a4"),
            ("b", "b1"),
            ("b", "b2"),
        ],
    );
    until_idle().await;
    assert_eq!((load(&runner, "a"), load(&runner, "b")), ((3, 1), (1, 1)));
    // a4 is older, but a still runs its share (2) while b runs 1 of 2.
    finish(&mut gates, "a1");
    until_idle().await;
    assert_eq!(runner.state("b2"), Some(OpState::Running));
    assert_eq!(runner.state("a4"), Some(OpState::Waiting));
    finish(&mut gates, "a2");
    until_idle().await;
    assert_eq!(runner.state("a4"), Some(OpState::Running));
    assert_eq!(started.keys(), ["a1", "a2", "a3", "b1", "b2", "a4"]);
}

#[tokio::test(start_paused = true)]
async fn among_classes_at_their_share_the_oldest_head_goes_first() {
    let runner = classes_runner(6, &[("a", 2), ("b", 2), ("c", 2)]);
    let started = Started::default();
    let mut gates = submit_all(
        &runner,
        &started,
        &[
            ("a", "a1"),
            ("b", "b1"),
            ("c", "c1"),
            ("a", "a2"),
            ("b", "b2"),
            ("c", "c2"),
            // Both wait; b3 is older.
            ("b", "b3"),
            ("a", "a3"),
        ],
    );
    until_idle().await;
    assert_eq!(runner.metrics().waiting, 2);
    // c frees a slot and has nothing waiting: a and b are at their share, b3 is the oldest head.
    finish(&mut gates, "c1");
    until_idle().await;
    assert_eq!(runner.state("b3"), Some(OpState::Running));
    assert_eq!(runner.state("a3"), Some(OpState::Waiting));
}

#[tokio::test(start_paused = true)]
async fn a_head_that_waited_past_the_aging_bound_goes_before_a_class_below_its_share() {
    let runner = classes_runner(4, &[("a", 2), ("b", 2)]);
    let started = Started::default();
    let mut gates = submit_all(
        &runner,
        &started,
        &[("a", "a1"), ("a", "a2"), ("a", "a3"), ("a", "a4")],
    );
    until_idle().await;
    // a4 waits one aging bound, then b arrives; b2 waits (no slot free).
    tokio::time::sleep(AGING).await;
    gates.extend(submit_all(&runner, &started, &[("b", "b1"), ("b", "b2")]));
    assert_eq!(runner.state("b2"), Some(OpState::Waiting));
    // Without aging b2 would win (see the test above); a4 has waited long enough.
    finish(&mut gates, "a1");
    until_idle().await;
    assert_eq!(runner.state("a4"), Some(OpState::Running));
    assert_eq!(runner.state("b2"), Some(OpState::Waiting));
    // One tick short of the bound is not enough.
    let runner = classes_runner(4, &[("a", 2), ("b", 2)]);
    let mut gates = submit_all(
        &runner,
        &started,
        &[("a", "x1"), ("a", "x2"), ("a", "x3"), ("a", "x4")],
    );
    until_idle().await;
    tokio::time::sleep(AGING - Duration::from_millis(10)).await;
    gates.extend(submit_all(&runner, &started, &[("b", "y1"), ("b", "y2")]));
    finish(&mut gates, "x1");
    until_idle().await;
    assert_eq!(runner.state("y2"), Some(OpState::Running));
    assert_eq!(runner.state("x4"), Some(OpState::Waiting));
}

#[tokio::test(start_paused = true)]
async fn with_fewer_slots_than_classes_no_slot_is_kept_and_an_idle_class_goes_first() {
    // Shares 5/3/2 of 2 slots: populate and fill reserve one each, flatten none.
    let runner = classes_runner(2, &[("populate", 5), ("fill", 3), ("flatten", 2)]);
    let reserved: Vec<_> = runner
        .metrics()
        .classes
        .iter()
        .map(|c| c.reserved)
        .collect();
    assert_eq!(reserved, [1, 1, 0]);
    let started = Started::default();
    let mut gates = submit_all(
        &runner,
        &started,
        &[
            ("populate", "populate:1"),
            ("populate", "populate:2"),
            ("populate", "populate:3"),
            ("flatten", "flatten:1"),
        ],
    );
    until_idle().await;
    // No slot was kept for fill or flatten.
    assert_eq!(started.keys(), ["populate:1", "populate:2"]);
    // flatten has nothing running: it goes before the older populate:3 (populate is at its share).
    finish(&mut gates, "populate:1");
    until_idle().await;
    assert_eq!(runner.state("flatten:1"), Some(OpState::Running));
    assert_eq!(runner.state("populate:3"), Some(OpState::Waiting));
}

#[tokio::test(start_paused = true)]
async fn keys_are_unique_across_classes() {
    let runner = classes_runner(2, &[("a", 1), ("b", 1)]);
    let started = Started::default();
    let _gates = submit_all(
        &runner,
        &started,
        &[("a", "k1"), ("a", "k2"), ("b", "k3"), ("b", "k4")],
    );
    assert_eq!(runner.state("k2"), Some(OpState::Waiting));
    assert_eq!(
        runner.try_submit_in("b", "k1", |_| async { Ok(()) }),
        Ok(Submitted::AlreadyRunning)
    );
    assert_eq!(
        runner.try_submit_blocking_in("b", "k2", |_| Ok(())),
        Ok(Submitted::AlreadyWaiting)
    );
    assert_eq!(
        runner.submit_in("a", "k4", |_| async { Ok(()) }).await,
        Ok(Submitted::AlreadyWaiting)
    );
    let m = runner.metrics();
    // A deduplicated submission counts in the class it named.
    assert_eq!(
        (m.classes[0].deduplicated, m.classes[1].deduplicated),
        (1, 2)
    );
    assert_eq!(m.deduplicated, 3);
    until_idle().await;
    assert_eq!(started.keys(), ["k1", "k3"]);
}

#[tokio::test(start_paused = true)]
async fn class_less_submissions_and_unknown_classes_go_to_the_first_class() {
    let runner = classes_runner(4, &[("a", 1), ("b", 1)]);
    assert!(!runner.has_class("nope"));
    let _ = runner.try_submit("k1", |_| async { Ok(()) });
    let _ = runner.try_submit_in("nope", "k2", |_| async { Ok(()) });
    let _ = runner.submit_blocking("k3", |_| Ok(())).await;
    let _ = runner.submit_in("b", "k4", |_| async { Ok(()) }).await;
    let m = runner.metrics();
    assert_eq!((m.classes[0].accepted, m.classes[1].accepted), (3, 1));
}

#[tokio::test(start_paused = true)]
async fn a_class_waiting_bound_answers_busy_while_other_classes_still_get_in() {
    let runner = Runner::new(RunnerConfig {
        max_running: 2,
        max_waiting: 10,
        classes: vec![
            ClassConfig::new("populate", 1).with_max_waiting(1),
            ClassConfig::new("flatten", 1),
        ],
        ..RunnerConfig::default()
    });
    let started = Started::default();
    let mut gates = submit_all(
        &runner,
        &started,
        &[
            ("populate", "p1"),
            ("flatten", "f1"),
            ("populate", "p2"),
            ("flatten", "f2"),
        ],
    );
    assert_eq!(
        runner.try_submit_in("populate", "p3", |_| async { Ok(()) }),
        Err(SubmitError::Busy)
    );
    gates.extend(submit_all(&runner, &started, &[("flatten", "f3")]));
    let m = runner.metrics();
    assert_eq!((m.classes[0].rejected_busy, m.rejected_busy), (1, 1));
    assert_eq!((m.classes[0].waiting, m.classes[1].waiting), (1, 2));

    // A blocked submitter of populate gets in once populate's queue has room.
    let submitter = {
        let runner = runner.clone();
        tokio::spawn(async move {
            runner
                .submit_in("populate", "p3", |_| async { Ok(()) })
                .await
        })
    };
    until_idle().await;
    assert!(!submitter.is_finished());
    // A flatten ending does not make room in populate's queue.
    finish(&mut gates, "f1");
    until_idle().await;
    assert!(!submitter.is_finished());
    assert!(runner.cancel("p2"));
    assert_eq!(submitter.await.expect("task"), Ok(Submitted::Accepted));
    assert_eq!(runner.state("p3"), Some(OpState::Waiting));
}

#[tokio::test(start_paused = true)]
async fn submit_in_with_no_queue_waits_until_its_class_may_take_a_slot() {
    let runner = Runner::new(RunnerConfig {
        max_running: 3,
        max_waiting: 0,
        classes: vec![ClassConfig::new("a", 2), ClassConfig::new("b", 1)],
        ..RunnerConfig::default()
    });
    let started = Started::default();
    let mut gates = submit_all(&runner, &started, &[("a", "a1"), ("a", "a2")]);
    // The third slot is kept for b: a third a is refused, then waits in submit_in.
    assert_eq!(
        runner.try_submit_in("a", "a3", |_| async { Ok(()) }),
        Err(SubmitError::Busy)
    );
    let (a3, _gate_a3) = gated(&started);
    let submitter = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.submit_in("a", "a3", a3).await })
    };
    until_idle().await;
    assert!(!submitter.is_finished());
    // b takes its slot and ends: a still may not take the last free slot.
    gates.extend(submit_all(&runner, &started, &[("b", "b1")]));
    finish(&mut gates, "b1");
    until_idle().await;
    assert!(!submitter.is_finished());
    // a1 ends: a may start again (its slot, not b's).
    finish(&mut gates, "a1");
    assert_eq!(submitter.await.expect("task"), Ok(Submitted::Accepted));
    until_idle().await;
    assert_eq!(started.keys(), ["a1", "a2", "b1", "a3"]);
}

#[tokio::test(start_paused = true)]
async fn metrics_count_per_class_and_the_totals_are_their_sums() {
    let runner = classes_runner(4, &[("a", 1), ("b", 1)]);
    let mut completions = runner.subscribe();
    let _ = runner.try_submit_in("a", "a-ok", |_| async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(())
    });
    let _ = runner.try_submit_in("a", "a-fail", |_| async { Err("no".into()) });
    let _ = runner.try_submit_in("b", "b-panic", |_| async { panic!("deliberate panic") });
    let (op, _gate) = gated(&Started::default());
    let _ = runner.try_submit_in("b", "b-cancel", op);
    for _ in 0..3 {
        let _ = next(&mut completions).await;
    }
    assert!(runner.cancel("b-cancel"));
    let _ = next(&mut completions).await;
    let m = runner.metrics();
    let (a, b) = (&m.classes[0], &m.classes[1]);
    assert_eq!(
        (a.accepted, a.completed, a.succeeded, a.failed),
        (2, 2, 1, 1)
    );
    assert_eq!(
        (b.accepted, b.completed, b.failed, b.panicked, b.cancelled),
        (2, 2, 1, 1, 1)
    );
    assert_eq!(
        (a.duration_sum, a.duration_count),
        (Duration::from_secs(2), 2)
    );
    assert_eq!(a.duration_buckets[0], 1, "a-fail took no time");
    assert_eq!(a.duration_buckets[3], 2);
    assert_eq!((b.duration_count, b.running, b.waiting), (2, 0, 0));
    assert_eq!((m.accepted, m.completed, m.duration_count), (4, 4, 4));
    assert_eq!(
        (m.succeeded, m.failed, m.panicked, m.cancelled),
        (1, 2, 1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn snapshot_names_the_class_and_lists_waiting_ops_in_acceptance_order() {
    let runner = classes_runner(2, &[("a", 1), ("b", 1)]);
    let started = Started::default();
    let _gates = submit_all(
        &runner,
        &started,
        &[
            ("a", "a1"),
            ("b", "b1"),
            ("b", "b2"),
            ("a", "a2"),
            ("b", "b3"),
        ],
    );
    let _ = runner.try_submit_blocking_in("a", "a3", |_| Ok(()));
    let snapshot: Vec<_> = runner
        .snapshot()
        .into_iter()
        .map(|i| (i.key, i.class, i.state, i.blocking))
        .collect();
    let row = |k: &str, c: &str, s, b| (k.to_owned(), c.to_owned(), s, b);
    assert_eq!(
        snapshot,
        [
            row("a1", "a", OpState::Running, false),
            row("b1", "b", OpState::Running, false),
            row("b2", "b", OpState::Waiting, false),
            row("a2", "a", OpState::Waiting, false),
            row("b3", "b", OpState::Waiting, false),
            row("a3", "a", OpState::Waiting, true),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiting_op_of_a_class_never_runs_and_its_class_moves_on() {
    let runner = classes_runner(2, &[("a", 1), ("b", 1)]);
    let mut completions = runner.subscribe();
    let started = Started::default();
    let mut gates = submit_all(
        &runner,
        &started,
        &[("a", "a1"), ("b", "b1"), ("a", "a2"), ("a", "a3")],
    );
    assert!(runner.cancel("a2"));
    assert_eq!(key_outcome(next(&mut completions).await), cancelled("a2"));
    until_idle().await;
    finish(&mut gates, "a1");
    until_idle().await;
    assert_eq!(started.keys(), ["a1", "b1", "a3"]);
    let m = runner.metrics();
    assert_eq!(
        (m.classes[0].cancelled, m.classes[0].duration_count),
        (1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_shutdown_completes_the_waiting_ops_of_every_class_in_acceptance_order() {
    let runner = classes_runner(2, &[("a", 1), ("b", 1)]);
    let mut completions = runner.subscribe();
    let started = Started::default();
    let _gates = submit_all(
        &runner,
        &started,
        &[
            ("a", "a1"),
            ("b", "b1"),
            ("b", "b2"),
            ("a", "a2"),
            ("b", "b3"),
        ],
    );
    until_idle().await;
    runner
        .shutdown(ShutdownMode::Cancel {
            deadline: Duration::from_secs(1),
        })
        .await;
    let mut got = Vec::new();
    while let Some(c) = completions.recv().await {
        got.push(key_outcome(c));
    }
    assert_eq!(
        got[..3],
        [cancelled("b2"), cancelled("a2"), cancelled("b3")]
    );
    assert_eq!(got.len(), 5, "each op completed once");
    let mut running = got[3..].to_vec();
    running.sort();
    assert_eq!(running, [cancelled("a1"), cancelled("b1")]);
    assert_eq!(started.keys(), ["a1", "b1"]);
}

#[tokio::test(start_paused = true)]
async fn drain_shutdown_still_starts_the_waiting_ops_of_every_class() {
    let runner = classes_runner(2, &[("a", 1), ("b", 1)]);
    let started = Started::default();
    let mut gates = submit_all(
        &runner,
        &started,
        &[("a", "a1"), ("b", "b1"), ("b", "b2"), ("a", "a2")],
    );
    let shutdown = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.shutdown(drain()).await })
    };
    for key in ["a1", "b1", "b2", "a2"] {
        until_idle().await;
        finish(&mut gates, key);
    }
    shutdown.await.expect("shutdown task");
    // a1 ending leaves a with nothing running: a2 takes the slot (b2 may not: it is b's second).
    assert_eq!(started.keys(), ["a1", "b1", "a2", "b2"]);
    assert_eq!(runner.metrics().succeeded, 4);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_op_frees_its_class_slot() {
    let runner = classes_runner(2, &[("a", 1), ("b", 1)]);
    let mut completions = runner.subscribe();
    let _ = runner.try_submit_in("a", "a1", |_| async { panic!("deliberate panic") });
    let _ = runner.try_submit_in("a", "a2", |_| async { Ok(()) });
    assert_eq!(
        next(&mut completions).await.outcome,
        Outcome::Failed("panicked: deliberate panic".into())
    );
    assert_eq!(key_outcome(next(&mut completions).await).0, "a2");
    assert_eq!(load(&runner, "a"), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn blocking_ops_count_in_their_class() {
    let runner = classes_runner(2, &[("a", 1), ("b", 1)]);
    let mut completions = runner.subscribe();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let _ =
        runner.try_submit_blocking_in("b", "b1", move |_| release_rx.recv().map_err(|e| e.into()));
    let answer = runner.submit_blocking_in("b", "b2", |_| Ok(())).await;
    assert_eq!(answer, Ok(Submitted::Accepted));
    // b may not borrow the last free slot: a has nothing running.
    assert_eq!(load(&runner, "b"), (1, 1));
    release_tx.send(()).expect("op waiting");
    assert_eq!(next(&mut completions).await.key, "b1");
    assert_eq!(next(&mut completions).await.key, "b2");
    assert_eq!(runner.metrics().classes[1].succeeded, 2);
}
