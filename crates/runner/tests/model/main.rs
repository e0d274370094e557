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
//! observe, the completions delivered and the runner's metrics, not from the model's choices):
//! * never more than `max_running` run at once, never two runs of one key at once;
//! * a cancelled waiting operation never runs; each accepted operation completes exactly once;
//! * FIFO within a class: the operations of a class start in acceptance order;
//! * no lending of the last slot of an idle class: when every class reserves a slot, free slots
//!   ≥ classes with nothing running, and such a class has nothing waiting; and no waiting
//!   operation could take a free slot;
//! * no starvation: once an operation has waited the aging bound, it starts within `n + 1`
//!   completions of its own class (of any class, with fewer slots than classes), `n` being the
//!   operations accepted before it still waiting then.
//!
//! Then that the runner is the model: the answers of `try_submit*`, `submit*`, `cancel`; the
//! operations that started in the step, in order; the completions; `snapshot`, `state` and
//! `metrics` (per class too); shutdown has returned iff nothing is left.

mod harness;
mod reference;

use std::sync::Once;

use proptest::prelude::*;

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

proptest! {
    #[test]
    fn the_runner_behaves_like_the_reference_model(
        cfg in config(),
        actions in proptest::collection::vec(action(), 1..40),
    ) {
        quiet_deliberate_panics();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let mut harness = Harness::new(&cfg);
            for action in &actions {
                harness.step(action).await?;
            }
            harness.finish().await
        })?;
    }
}
