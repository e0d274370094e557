//! Property test: random runner configurations (slots, queue bounds, one to three operation
//! classes with shares and class queue bounds, aging bound) and random sequences of submissions
//! (into a named class, class-less, or into an unknown class), completions, failures, panics,
//! cancellations, shutdowns and clock advances, run against the runner and against a small
//! reference model of the class rule.
//!
//! Every operation is controlled by the test: it logs its start, then waits for a command
//! (complete, fail, panic) on its own channel; "obedient" operations also stop as soon as their
//! token is cancelled, the others ignore it. Each case runs on its own current-thread runtime with
//! the clock paused, so scheduling and time are deterministic.
//!
//! Checked after every step, first the properties, each on its own (from what the operations
//! observe, the answers and completions the runner gives and its metrics, not from the model):
//! * a cancelled waiting operation never runs;
//! * never more than `max_running` run at once, never two runs of one key at once;
//! * FIFO within a class: an operation starts only when no operation of its class accepted
//!   before it still waits;
//! * each accepted operation completes exactly once;
//! * no starvation: once an operation has waited the aging bound, it starts within `n + 1`
//!   completions of its own class (of any class, with fewer slots than classes), `n` being the
//!   operations accepted before it still waiting then;
//! * no lending of the last slot of an idle class: when every class reserves a slot, free slots
//!   ≥ classes with nothing running (so such a class has nothing waiting); and no waiting
//!   operation's class may take a free slot.
//!
//! Then (unless `MODEL_PROPERTIES_ONLY=1`, which shows a property failing on its own on a
//! deliberately broken scheduler) that the runner is the model: the answers of `try_submit*`,
//! `submit*`, `cancel`; the operations that started in the step, in order; the completions;
//! `snapshot`, `state` and `metrics` (per class too); shutdown has returned iff nothing is left.
//! Cases found in the past and the aging case are written out as plain tests below.

mod harness;
mod reference;

use std::sync::Once;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use harness::Harness;

const KEYS: usize = 5;
const CLASS_NAMES: [&str; 3] = ["c0", "c1", "c2"];

#[derive(Debug, Clone)]
struct Config {
    max_running: usize,
    max_waiting: usize,
    /// Per class: share and own waiting bound.
    classes: Vec<(usize, Option<usize>)>,
    aging_secs: u64,
}

fn config() -> impl Strategy<Value = Config> {
    (
        1..5usize,
        0..5usize,
        proptest::collection::vec((1..4usize, proptest::option::of(0..3usize)), 1..=3),
        1..4u64,
    )
        .prop_map(|(max_running, max_waiting, classes, aging_secs)| Config {
            max_running,
            max_waiting,
            classes,
            aging_secs,
        })
}

/// `class` selects: 0..3 a configured class (modulo their number), 3 the class-less methods,
/// 4 an unknown class name (both mean the first class).
#[derive(Debug, Clone)]
enum Action {
    TrySubmit {
        key: usize,
        class: usize,
        obeys: bool,
    },
    Submit {
        key: usize,
        class: usize,
        obeys: bool,
    },
    Complete(usize),
    Fail(usize),
    Panic(usize),
    Cancel(usize),
    Shutdown {
        cancel: bool,
        secs: u64,
    },
    Advance(u64),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (0..KEYS, 0..5usize, any::<bool>())
            .prop_map(|(key, class, obeys)| Action::TrySubmit { key, class, obeys }),
        3 => (0..KEYS, 0..5usize, any::<bool>())
            .prop_map(|(key, class, obeys)| Action::Submit { key, class, obeys }),
        4 => (0..8usize).prop_map(Action::Complete),
        2 => (0..8usize).prop_map(Action::Fail),
        1 => (0..8usize).prop_map(Action::Panic),
        3 => (0..KEYS).prop_map(Action::Cancel),
        1 => (any::<bool>(), 1..4u64).prop_map(|(cancel, secs)| Action::Shutdown { cancel, secs }),
        2 => (1..3u64).prop_map(Action::Advance),
    ]
}

#[derive(Debug, Clone, Copy)]
enum Cmd {
    Complete,
    Fail,
    Panic,
}

/// Deliberate panics of operations are expected: keep them out of the test output.
fn quiet_deliberate_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .unwrap_or_default();
            if !text.starts_with("deliberate panic") {
                default(info);
            }
        }));
    });
}

/// Runs one case on its own paused-clock runtime.
fn run_case(cfg: &Config, actions: &[Action]) -> Result<(), TestCaseError> {
    quiet_deliberate_panics();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let mut harness = Harness::new(cfg);
        for action in actions {
            harness.step(action).await?;
        }
        harness.finish().await
    })
}

proptest! {
    // Failing cases are saved next to this file (`main.proptest-regressions`).
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_runner_behaves_like_the_reference_model(
        cfg in config(),
        actions in proptest::collection::vec(action(), 1..40),
    ) {
        run_case(&cfg, &actions)?;
    }
}

fn one_class(max_running: usize, max_waiting: usize) -> Config {
    Config {
        max_running,
        max_waiting,
        classes: vec![(1, None)],
        aging_secs: 1,
    }
}

fn try_submit(key: usize, class: usize) -> Action {
    Action::TrySubmit {
        key,
        class,
        obeys: false,
    }
}

fn submit(key: usize, obeys: bool) -> Action {
    Action::Submit {
        key,
        class: 0,
        obeys,
    }
}

/// Cases the property test once found (before classes), written out so they keep running.
#[test]
fn the_cases_that_once_failed_still_pass() {
    use Action::{Cancel, Complete};
    let cases = [
        (
            one_class(1, 2),
            vec![
                try_submit(1, 0),
                try_submit(0, 0),
                try_submit(2, 0),
                Complete(0),
            ],
        ),
        (
            one_class(1, 0),
            vec![try_submit(0, 0), submit(1, false), Complete(0)],
        ),
        (
            one_class(2, 0),
            vec![
                try_submit(1, 0),
                try_submit(2, 0),
                submit(0, true),
                Complete(0),
            ],
        ),
        (
            one_class(1, 1),
            vec![
                try_submit(1, 0),
                try_submit(0, 0),
                Complete(0),
                try_submit(3, 0),
                submit(1, false),
                Cancel(3),
            ],
        ),
    ];
    for (cfg, actions) in &cases {
        run_case(cfg, actions).unwrap_or_else(|e| panic!("{cfg:?} {actions:?}: {e}"));
    }
}

/// An aged operation of a class above its share goes before a younger one of a class below
/// its share: the starvation property's own case (3 slots, shares 1 and 2: the first class
/// borrows a slot, its third operation waits one aging bound, the second class fills the last
/// slot and queues one more; the next completion of the first class must start the aged one).
#[test]
fn an_aged_operation_goes_before_a_class_below_its_share() {
    let cfg = Config {
        max_running: 3,
        max_waiting: 4,
        classes: vec![(1, None), (2, None)],
        aging_secs: 1,
    };
    let actions = [
        try_submit(0, 0),
        try_submit(1, 0),
        try_submit(2, 0),
        Action::Advance(1),
        try_submit(3, 1),
        try_submit(4, 1),
        Action::Complete(0),
    ];
    run_case(&cfg, &actions).unwrap_or_else(|e| panic!("{e}"));
}
