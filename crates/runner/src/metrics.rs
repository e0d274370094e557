//! Owns the runner's counters: [`RunnerMetrics`] (a copy handed to callers) and the internal
//! accumulator updated under the runner's state lock. No metrics library is used here; the daemon
//! maps these figures onto its own registry.

use std::time::Duration;

use crate::Outcome;

/// Upper bounds of the duration histogram buckets of [`RunnerMetrics::duration_buckets`].
pub const DURATION_BUCKETS: [Duration; 8] = [
    Duration::from_millis(10),
    Duration::from_millis(100),
    Duration::from_secs(1),
    Duration::from_secs(10),
    Duration::from_secs(60),
    Duration::from_secs(300),
    Duration::from_secs(1800),
    Duration::from_secs(3600),
];

/// A consistent copy of the runner's counters, returned by [`Runner::metrics`](crate::Runner::metrics).
///
/// Totals only grow. `completed == succeeded + failed + cancelled`, and every accepted operation
/// is eventually counted once in `completed`, so `accepted - completed == waiting + running`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunnerMetrics {
    /// Operations accepted and waiting for a running slot now.
    pub waiting: usize,
    /// Operations holding a running slot now.
    pub running: usize,
    /// Submissions accepted (`Submitted::Accepted`).
    pub accepted: u64,
    /// Submissions answered `AlreadyRunning` or `AlreadyWaiting`.
    pub deduplicated: u64,
    /// Submissions answered `SubmitError::Busy`.
    pub rejected_busy: u64,
    /// Operations that completed, whatever the outcome.
    pub completed: u64,
    /// Operations that completed with [`Outcome::Ok`].
    pub succeeded: u64,
    /// Operations that completed with [`Outcome::Failed`] (panics included).
    pub failed: u64,
    /// Of `failed`, those that panicked.
    pub panicked: u64,
    /// Operations that completed with [`Outcome::Cancelled`] (whether or not they ran).
    pub cancelled: u64,
    /// Sum of the run durations of the operations that ran (start to end).
    pub duration_sum: Duration,
    /// Number of operations counted in `duration_sum`.
    pub duration_count: u64,
    /// Cumulative histogram of run durations: `duration_buckets[i]` counts the runs that took at
    /// most [`DURATION_BUCKETS`]`[i]` (Prometheus `le` semantics; `+Inf` is `duration_count`).
    pub duration_buckets: [u64; DURATION_BUCKETS.len()],
}

/// The accumulator kept under the state lock (the gauges are computed when copied).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: u64,
    pub(crate) deduplicated: u64,
    pub(crate) rejected_busy: u64,
    succeeded: u64,
    failed: u64,
    panicked: u64,
    cancelled: u64,
    duration_sum: Duration,
    duration_count: u64,
    /// Non-cumulative counts per bucket; the last slot counts runs above the last bound.
    buckets: [u64; DURATION_BUCKETS.len() + 1],
}

impl Counters {
    /// Records one completion; `ran` is the run duration if the operation ran at all.
    pub(crate) fn record(&mut self, outcome: &Outcome, panicked: bool, ran: Option<Duration>) {
        match outcome {
            Outcome::Ok => self.succeeded += 1,
            Outcome::Failed(_) => self.failed += 1,
            Outcome::Cancelled => self.cancelled += 1,
        }
        if panicked {
            self.panicked += 1;
        }
        if let Some(d) = ran {
            self.duration_sum += d;
            self.duration_count += 1;
            let bucket = DURATION_BUCKETS.partition_point(|bound| *bound < d);
            self.buckets[bucket] += 1;
        }
    }

    pub(crate) fn snapshot(&self, waiting: usize, running: usize) -> RunnerMetrics {
        let mut duration_buckets = [0; DURATION_BUCKETS.len()];
        let mut cumulative = 0;
        for (out, count) in duration_buckets.iter_mut().zip(self.buckets) {
            cumulative += count;
            *out = cumulative;
        }
        RunnerMetrics {
            waiting,
            running,
            accepted: self.accepted,
            deduplicated: self.deduplicated,
            rejected_busy: self.rejected_busy,
            completed: self.succeeded + self.failed + self.cancelled,
            succeeded: self.succeeded,
            failed: self.failed,
            panicked: self.panicked,
            cancelled: self.cancelled,
            duration_sum: self.duration_sum,
            duration_count: self.duration_count,
            duration_buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_cumulative_buckets_with_le_semantics() {
        let mut c = Counters::default();
        c.record(&Outcome::Ok, false, Some(Duration::from_millis(10)));
        c.record(&Outcome::Ok, false, Some(Duration::from_millis(11)));
        c.record(&Outcome::Ok, false, Some(Duration::from_secs(7200)));
        c.record(&Outcome::Cancelled, false, None);
        let m = c.snapshot(0, 0);
        assert_eq!(m.duration_buckets[0], 1);
        assert_eq!(m.duration_buckets[1], 2);
        assert_eq!(m.duration_buckets[DURATION_BUCKETS.len() - 1], 2);
        assert_eq!(m.duration_count, 3);
        assert_eq!(m.completed, 4);
        assert_eq!(m.cancelled, 1);
    }
}
