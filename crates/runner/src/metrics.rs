//! Owns the runner's counters: [`RunnerMetrics`] (a copy handed to callers, with one
//! [`ClassMetrics`] per operation class) and the internal per-class accumulator updated under the
//! runner's state lock (the runner-wide totals are the sums of the classes' figures). No metrics library is used here; the daemon
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
/// Every figure is the sum of the same figure in [`classes`](Self::classes).
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
    /// The same figures per operation class, in configuration order (one class, named
    /// [`DEFAULT_CLASS`](crate::DEFAULT_CLASS), when none is configured).
    pub classes: Vec<ClassMetrics>,
}

/// The figures of one operation class, in [`RunnerMetrics::classes`]. Same meaning as the
/// runner-wide figures, restricted to the class: a submission counts in the class it named
/// (`deduplicated` included, even when the operation already there is of another class); an
/// operation counts in the class it was accepted in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClassMetrics {
    /// The class's name.
    pub name: String,
    /// Its share as configured (0 counted as 1).
    pub share: usize,
    /// The running slots it reserves (see [`reserved_slots`](crate::reserved_slots)).
    pub reserved: usize,
    /// Operations of the class waiting for a running slot now.
    pub waiting: usize,
    /// Operations of the class holding a running slot now.
    pub running: usize,
    /// Submissions into the class accepted.
    pub accepted: u64,
    /// Submissions into the class answered `AlreadyRunning` or `AlreadyWaiting`.
    pub deduplicated: u64,
    /// Submissions into the class answered `SubmitError::Busy`.
    pub rejected_busy: u64,
    /// Operations of the class that completed, whatever the outcome.
    pub completed: u64,
    /// Of those, completed with [`Outcome::Ok`].
    pub succeeded: u64,
    /// Of those, completed with [`Outcome::Failed`] (panics included).
    pub failed: u64,
    /// Of `failed`, those that panicked.
    pub panicked: u64,
    /// Of those, completed with [`Outcome::Cancelled`].
    pub cancelled: u64,
    /// Sum of the run durations of the class's operations that ran.
    pub duration_sum: Duration,
    /// Number of operations counted in `duration_sum`.
    pub duration_count: u64,
    /// Cumulative histogram of run durations, as [`RunnerMetrics::duration_buckets`].
    pub duration_buckets: [u64; DURATION_BUCKETS.len()],
}

/// The accumulator of one class, kept under the state lock (the gauges are read when copied).
#[derive(Debug, Default, Clone)]
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

    /// The class's figures, given its current gauges.
    pub(crate) fn class_metrics(
        &self,
        name: &str,
        share: usize,
        reserved: usize,
        waiting: usize,
        running: usize,
    ) -> ClassMetrics {
        let mut duration_buckets = [0; DURATION_BUCKETS.len()];
        let mut cumulative = 0;
        for (out, count) in duration_buckets.iter_mut().zip(self.buckets) {
            cumulative += count;
            *out = cumulative;
        }
        ClassMetrics {
            name: name.to_owned(),
            share,
            reserved,
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

impl RunnerMetrics {
    /// The runner-wide figures: the sums of the classes' figures.
    pub(crate) fn from_classes(classes: Vec<ClassMetrics>) -> RunnerMetrics {
        let mut m = RunnerMetrics::default();
        for c in &classes {
            m.waiting += c.waiting;
            m.running += c.running;
            m.accepted += c.accepted;
            m.deduplicated += c.deduplicated;
            m.rejected_busy += c.rejected_busy;
            m.completed += c.completed;
            m.succeeded += c.succeeded;
            m.failed += c.failed;
            m.panicked += c.panicked;
            m.cancelled += c.cancelled;
            m.duration_sum += c.duration_sum;
            m.duration_count += c.duration_count;
            for (total, n) in m.duration_buckets.iter_mut().zip(c.duration_buckets) {
                *total += n;
            }
        }
        m.classes = classes;
        m
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
        let m = c.class_metrics("c", 1, 1, 0, 0);
        assert_eq!(m.duration_buckets[0], 1);
        assert_eq!(m.duration_buckets[1], 2);
        assert_eq!(m.duration_buckets[DURATION_BUCKETS.len() - 1], 2);
        assert_eq!(m.duration_count, 3);
        assert_eq!(m.completed, 4);
        assert_eq!(m.cancelled, 1);
    }

    #[test]
    fn the_runner_wide_figures_are_the_sums_of_the_classes() {
        let mut a = Counters {
            accepted: 2,
            ..Counters::default()
        };
        a.record(&Outcome::Ok, false, Some(Duration::from_secs(2)));
        let mut b = Counters {
            accepted: 3,
            rejected_busy: 1,
            ..Counters::default()
        };
        b.record(
            &Outcome::Failed("x".into()),
            true,
            Some(Duration::from_millis(5)),
        );
        let m = RunnerMetrics::from_classes(vec![
            a.class_metrics("a", 1, 1, 1, 0),
            b.class_metrics("b", 1, 1, 0, 2),
        ]);
        assert_eq!(
            (m.waiting, m.running, m.accepted, m.rejected_busy),
            (1, 2, 5, 1)
        );
        assert_eq!(
            (m.completed, m.succeeded, m.failed, m.panicked),
            (2, 1, 1, 1)
        );
        assert_eq!(m.duration_sum, Duration::from_millis(2005));
        assert_eq!(m.duration_buckets[0], 1);
        assert_eq!(m.duration_buckets[3], 2);
        assert_eq!(m.classes.len(), 2);
    }
}
