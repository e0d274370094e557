//! Owns throttled progress delivery: [`ProgressUpdates`], a per-consumer stream of snapshots
//! produced at most once per `progress_interval`, and only when some operation reported progress.
//!
//! Operations report as often as they like (each report only overwrites the latest value and bumps
//! a runner-wide counter); consumers that turn progress into status writes, events or metrics read
//! it at their own pace here, or poll [`Runner::snapshot`](crate::Runner::snapshot) themselves.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};

use crate::{OpInfo, Runner};

/// Throttled progress snapshots, created by [`Runner::progress_updates`](crate::Runner::progress_updates).
///
/// [`next`](Self::next) resolves at most once per interval, and only if at least one operation
/// reported progress since the previous result; it then returns every waiting or running
/// operation that has reported progress (latest values). No report is missed: a report racing
/// with a snapshot is seen by the next one.
#[derive(Debug)]
pub struct ProgressUpdates {
    runner: Runner,
    period: Duration,
    /// Created by the first `next` (so this value can be created outside a runtime).
    interval: Option<Interval>,
    seen: u64,
}

impl ProgressUpdates {
    pub(crate) fn new(runner: Runner, period: Duration) -> Self {
        ProgressUpdates {
            runner,
            period,
            interval: None,
            seen: 0,
        }
    }

    /// Waits for the next throttled snapshot (the first one comes at once if anything was
    /// reported). Returns `None` once the runner has finished shutting down. Must be awaited
    /// within a Tokio runtime with time enabled.
    pub async fn next(&mut self) -> Option<Vec<OpInfo>> {
        let period = self.period;
        let interval = self.interval.get_or_insert_with(|| {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            interval
        });
        loop {
            interval.tick().await;
            if self.runner.has_shut_down() {
                return None;
            }
            let now = self.runner.progress_clock().load(Ordering::Acquire);
            if now != self.seen {
                self.seen = now;
                let mut ops = self.runner.snapshot();
                ops.retain(|op| op.progress.is_some());
                return Some(ops);
            }
        }
    }
}
