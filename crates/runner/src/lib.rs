//! A bounded, key-deduplicating executor for long operations (flattening clones, populating
//! images: minutes each), so that they never block the workers that submit them.
//!
//! # Semantics
//! * **Bounds.** At most `max_running` operations run at once (default 10); accepted operations
//!   beyond that wait in a FIFO queue of at most `max_waiting` (default 1024). An operation's code
//!   runs only while it holds a running slot.
//! * **Deduplication by key.** Submitting a key that is already running or waiting does not
//!   queue a second operation: the new closure is dropped and the answer is
//!   [`Submitted::AlreadyRunning`] or [`Submitted::AlreadyWaiting`]. The caller waits for the
//!   completion of the existing one.
//! * **Backpressure.** When the queue is full, [`Runner::try_submit`] answers
//!   [`SubmitError::Busy`] and [`Runner::submit`] waits (without polling) until there is room.
//!   After [`Runner::shutdown`] started, both answer [`SubmitError::ShuttingDown`].
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
//!   deduplicated, busy, completed by outcome) and run durations (sum, count, histogram).
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

mod completion;
mod error;
mod metrics;
mod op;
mod progress;
mod runner;

pub use completion::{Completion, Completions, Outcome};
pub use error::{OpError, SubmitError};
pub use metrics::{RunnerMetrics, DURATION_BUCKETS};
pub use op::{OpContext, OpInfo, OpState, Progress};
pub use progress::ProgressUpdates;
pub use runner::{Runner, RunnerConfig, ShutdownMode, Submitted};
pub use tokio_util::sync::CancellationToken;
