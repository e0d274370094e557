//! Owns what a [`Runner`](crate::Runner) is created and shut down with: [`RunnerConfig`] (bounds,
//! classes, aging) and [`ShutdownMode`]. Plain data; the runner reads it once.

use std::time::Duration;

use crate::ClassConfig;

/// Limits and classes of a [`Runner`](crate::Runner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerConfig {
    /// Operations running at once, all classes together (default 10; 0 is treated as 1).
    pub max_running: usize,
    /// Accepted operations waiting for a running slot, all classes together (default 1024; 0 =
    /// no queue: `Busy` as soon as an operation cannot start at once).
    pub max_waiting: usize,
    /// The minimum time between two results of
    /// [`ProgressUpdates::next`](crate::ProgressUpdates::next) (default 1 s; clamped to at least
    /// 1 ms).
    pub progress_interval: Duration,
    /// The operation classes, in order (default: none, which means one class named
    /// [`DEFAULT_CLASS`](crate::DEFAULT_CLASS) holding every slot). Class-less submissions go to
    /// the first class. A name given twice: the first one counts.
    pub classes: Vec<ClassConfig>,
    /// The aging bound: an operation that has waited at least this long goes before every
    /// younger one that is not as old, whatever the shares (default 5 minutes).
    pub aging: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            max_running: 10,
            max_waiting: 1024,
            progress_interval: Duration::from_secs(1),
            classes: Vec::new(),
            aging: Duration::from_secs(300),
        }
    }
}

/// How [`Runner::shutdown`](crate::Runner::shutdown) treats the work it finds. Each `deadline` is measured from the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Let running and waiting operations finish. At the deadline, whatever is left is cancelled:
    /// waiting operations complete as cancelled without running, running ones get their token
    /// cancelled and running async ones are aborted.
    Drain {
        /// How long to let the work drain.
        deadline: Duration,
    },
    /// Cancel everything at once: waiting operations complete as cancelled without running and
    /// running ones get their token cancelled. At the deadline, async operations that are still
    /// running are aborted.
    Cancel {
        /// How long running operations get to observe their token.
        deadline: Duration,
    },
}
