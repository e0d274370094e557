//! A bounded, key-deduplicating executor for long operations (flattening clones, populating
//! images: minutes each), so that they never block the workers that submit them.
//!
//! # Semantics
//! * **Bounds.** At most `max_running` operations run at once (default 10), all classes
//!   together; accepted operations that cannot start wait, at most `max_waiting` of them
//!   (default 1024) in all and at most [`ClassConfig::max_waiting`] of one class. An operation's
//!   code runs only while it holds a running slot.
//! * **Classes.** Every operation belongs to one class ([`RunnerConfig::classes`]), named at
//!   submission ([`Runner::try_submit_in`] and the other `*_in` methods); the class-less methods
//!   submit into the default class, the first one configured (with no classes configured, one
//!   class named [`DEFAULT_CLASS`] holds every slot, and the runner is one FIFO queue). An unknown
//!   name also means the default class. Each class reserves running slots in proportion to its
//!   share, adding up to `max_running` ([`reserved_slots`]; shares 5/3/2 of 10 reserve 5, 3
//!   and 2). Operations of one class start in acceptance order (FIFO within a class).
//! * **Which operation may take a free slot.** Let `free` be `max_running` minus the running
//!   operations and `idle` the number of classes with no running operation. When there are at
//!   least as many slots as classes (so every class reserves one), an operation of class `c`
//!   may start only if, after it starts, one slot is still free for every *other* class with
//!   nothing running: `free - 1 >= idle - (1 if c has nothing running else 0)`. Idle slots are
//!   thus lent to busy classes, but never the last slot a class with nothing running could use:
//!   at all times `free >= idle`, and an operation submitted into a class with nothing running
//!   starts at once (one deletion's flatten is not queued behind 50 waiting populates). With
//!   fewer slots than classes no slot is kept: any free slot may be taken.
//! * **Which waiting operation gets it.** An operation starts at submission if its class may
//!   take a free slot and none of its class waits. When a slot is freed, the heads (oldest
//!   waiting operation) of the classes that may take it are ranked, and the first one starts:
//!   1. a head that has waited at least `aging` ([`RunnerConfig::aging`], default 5 minutes);
//!   2. a head whose class is below its share: fewer running operations than it reserves, or
//!      none at all;
//!   3. any other head;
//!
//!   within a rank, the oldest first (acceptance order). Freeing one slot starts at most one
//!   operation, and no slot stays free while a waiting operation may take it.
//! * **No starvation.** A class never waits for a slot while it has nothing running (when every
//!   class reserves one). And once an operation has waited `aging`, with `n` operations accepted
//!   before it still waiting, it starts at the latest at the `n + 1`-th completion of an
//!   operation of its own class (of any class, with fewer slots than classes), unless cancelled
//!   first: each such completion frees a slot its class may take, and only older, hence also
//!   aged, operations rank before it.
//! * **Deduplication by key.** Keys are unique across classes. Submitting a key that is already
//!   running or waiting, in any class, does not queue a second operation: the new closure is
//!   dropped and the answer is [`Submitted::AlreadyRunning`] or [`Submitted::AlreadyWaiting`].
//!   The caller waits for the completion of the existing one.
//! * **Backpressure.** When an operation cannot start and the queue (the runner's or its
//!   class's) is full, [`Runner::try_submit`] answers [`SubmitError::Busy`] and
//!   [`Runner::submit`] waits (without polling) until it can get in. After [`Runner::shutdown`]
//!   started, both answer [`SubmitError::ShuttingDown`].
//! * **Completions.** Every accepted operation completes exactly once, with an [`Outcome`]:
//!   `Ok`, `Failed(message)` (an error, or a panic, which is caught and never kills the runner
//!   or leaks a slot), or `Cancelled`. Each [`Completion`] is delivered to every subscriber
//!   ([`Runner::subscribe`]) through an unbounded channel, so none is ever dropped, **after** the
//!   key has left the runner: a subscriber that resubmits the key on completion is accepted.
//! * **Cancellation by key.** [`Runner::cancel`] removes a waiting operation without running it
//!   (it completes as `Cancelled`), or cancels a running operation's token
//!   ([`OpContext::token`], [`OpContext::is_cancelled`]); the operation is expected to stop at its
//!   next checkpoint, and an error it returns after that is reported as `Cancelled`.
//! * **Progress.** An operation reports `(done, total)` with [`OpContext::report`] or, from any
//!   thread, through [`OpContext::progress_fn`]; only the latest value is stored, so reporting
//!   is cheap. Read it with [`Runner::progress`], [`Runner::snapshot`] (every running and waiting
//!   key with its state, progress and times) or, throttled to at most once per
//!   `progress_interval`, with [`Runner::progress_updates`].
//! * **Blocking work.** [`Runner::try_submit_blocking`] and [`Runner::submit_blocking`] run a
//!   closure on Tokio's blocking pool with the same context, bounds and accounting.
//! * **Shutdown.** [`Runner::shutdown`] stops accepting, then drains
//!   ([`ShutdownMode::Drain`]) or cancels ([`ShutdownMode::Cancel`]) the work; past the deadline
//!   what is left is cancelled and async operations are aborted. It returns only when every
//!   operation has ended: no task is ever left behind (a blocking operation that ignores its
//!   token delays it). Dropping every `Runner` handle does not stop running operations.
//! * **Metrics.** [`Runner::metrics`] returns the gauges (waiting, running), totals (accepted,
//!   deduplicated, busy, completed by outcome) and run durations (sum, count, histogram), for
//!   the runner and, in [`RunnerMetrics::classes`], for each class.
//!
//! Cancellation, progress, snapshots, shutdown, panics and exactly-once completions work the
//! same in every class.
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use runner::{Outcome, Runner, RunnerConfig, ShutdownMode, Submitted};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let runner = Runner::new(RunnerConfig { max_running: 2, ..RunnerConfig::default() });
//! let mut completions = runner.subscribe();
//!
//! let answer = runner
//!     .submit("snapshot:1", |ctx| async move {
//!         for chunk in 0..4 {
//!             if ctx.is_cancelled() {
//!                 return Err("stopped at a checkpoint".into());
//!             }
//!             ctx.report(chunk + 1, 4); // e.g. bytes copied
//!             tokio::task::yield_now().await;
//!         }
//!         Ok(())
//!     })
//!     .await;
//! assert_eq!(answer, Ok(Submitted::Accepted));
//!
//! // The same key again while it is still there: deduplicated, the new closure is dropped.
//! let again = runner.try_submit("snapshot:1", |_ctx| async { Ok(()) });
//! assert_eq!(again, Ok(Submitted::AlreadyRunning));
//!
//! let done = completions.recv().await.expect("the runner is alive");
//! assert_eq!((done.key.as_str(), done.outcome), ("snapshot:1", Outcome::Ok));
//!
//! // Blocking code runs on the blocking pool, with the same context.
//! let report = runner.try_submit_blocking("image:7", |ctx| {
//!     let progress = ctx.progress_fn(); // callable from any thread
//!     progress(1, 1);
//!     Ok(())
//! });
//! assert_eq!(report, Ok(Submitted::Accepted));
//!
//! runner.shutdown(ShutdownMode::Drain { deadline: Duration::from_secs(30) }).await;
//! assert_eq!(completions.recv().await.map(|c| c.outcome), Some(Outcome::Ok));
//! assert_eq!(completions.recv().await, None); // closed by shutdown
//! assert_eq!(runner.metrics().succeeded, 2);
//! # }
//! ```
//!
//! With classes: a burst of image pulls does not hold up a deletion's flatten.
//! ```
//! use std::time::Duration;
//! use runner::{ClassConfig, OpState, Runner, RunnerConfig, ShutdownMode, Submitted};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let runner = Runner::new(RunnerConfig {
//!     max_running: 10,
//!     classes: vec![
//!         ClassConfig::new("populate", 5),
//!         ClassConfig::new("fill", 3),
//!         ClassConfig::new("flatten", 2),
//!     ],
//!     ..RunnerConfig::default()
//! });
//! for i in 0..50 {
//!     let pull = |ctx: runner::OpContext| async move {
//!         ctx.cancelled().await; // a long pull, until cancelled
//!         Err("stopped".into())
//!     };
//!     let _ = runner.try_submit_in("populate", format!("image:{i}"), pull);
//! }
//! // 8 pulls run: one slot each stays free for fill and flatten, which have nothing running.
//! let m = runner.metrics();
//! assert_eq!((m.classes[0].running, m.classes[0].waiting), (8, 42));
//!
//! let answer = runner.try_submit_in("flatten", "flatten:child", |_ctx| async { Ok(()) });
//! assert_eq!(answer, Ok(Submitted::Accepted));
//! assert_eq!(runner.state("flatten:child"), Some(OpState::Running));
//! runner.shutdown(ShutdownMode::Cancel { deadline: Duration::from_secs(1) }).await;
//! # }
//! ```

mod class;
mod completion;
mod config;
mod error;
mod lane;
mod metrics;
mod op;
mod progress;
mod runner;

pub use class::{reserved_slots, ClassConfig, DEFAULT_CLASS};
pub use completion::{Completion, Completions, Outcome};
pub use config::{RunnerConfig, ShutdownMode};
pub use error::{OpError, SubmitError};
pub use metrics::{ClassMetrics, RunnerMetrics, DURATION_BUCKETS};
pub use op::{OpContext, OpInfo, OpState, Progress};
pub use progress::ProgressUpdates;
pub use runner::{Runner, Submitted};
pub use tokio_util::sync::CancellationToken;
