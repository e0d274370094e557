//! The rules as libtest-mimic trials against one backend, for test targets with `harness = false`.
//!
//! Owns how a rule runs in a test: a fresh fixture from the backend's setup, on a tokio runtime of
//! the trial's own (as `#[tokio::test]` would give it), with an optional time bound; a panic fails
//! the trial (libtest-mimic catches it). It knows nothing of any backend.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::LocalBoxFuture;
use libtest_mimic::{Failed, Trial};

use super::{rules, Fixture, Rule};

/// Makes a fresh fixture.
type Setup = Arc<dyn Fn() -> LocalBoxFuture<'static, Box<dyn Fixture>> + Send + Sync>;

/// The conformance rules against one backend, as libtest-mimic trials named
/// `<backend>::<rule>`.
#[derive(Clone)]
pub struct Suite {
    backend: String,
    setup: Setup,
    ignored: bool,
    timeout: Option<Duration>,
    worker_threads: Option<usize>,
}

/// What one trial checks.
#[derive(Clone, Copy)]
enum Job {
    /// One rule, under its own name as prefix.
    One(Rule),
    /// Every rule in turn on one fixture, then nothing may be left.
    Sequence,
}

impl Suite {
    /// The rules against the fixtures `setup` makes, one per trial.
    pub fn new<S, F, X>(backend: impl Into<String>, setup: S) -> Suite
    where
        S: Fn() -> F + Send + Sync + 'static,
        F: Future<Output = X> + 'static,
        X: Fixture + 'static,
    {
        let setup: Setup = Arc::new(move || {
            let fixture = setup();
            Box::pin(async move { Box::new(fixture.await) as Box<dyn Fixture> })
        });
        Suite {
            backend: backend.into(),
            setup,
            ignored: false,
            timeout: None,
            worker_threads: None,
        }
    }

    /// Marks every trial ignored: it runs only with `--ignored` (or `--include-ignored`).
    pub fn ignored(mut self, ignored: bool) -> Suite {
        self.ignored = ignored;
        self
    }

    /// Fails a trial that takes longer than `limit` (a hung cluster fails the test, not CI).
    pub fn timeout(mut self, limit: Duration) -> Suite {
        self.timeout = Some(limit);
        self
    }

    /// Runs each trial on a multi-thread runtime with `worker_threads` workers (the default is a
    /// current-thread runtime).
    pub fn multi_thread(mut self, worker_threads: usize) -> Suite {
        self.worker_threads = Some(worker_threads);
        self
    }

    /// One trial per rule, named `<backend>::<rule>`, each on a fresh fixture.
    pub fn trials(&self) -> Vec<Trial> {
        rules()
            .into_iter()
            .map(|rule| self.trial(rule.name, Job::One(rule)))
            .collect()
    }

    /// One trial, named `<backend>::<name>`, that runs every rule in turn on one fixture (each
    /// under the prefix `shared-<rule>`) and then checks that no image is left: the rules share a
    /// pool and clean up after themselves.
    pub fn in_sequence(&self, name: &str) -> Trial {
        self.trial(name, Job::Sequence)
    }

    fn trial(&self, name: &str, job: Job) -> Trial {
        let suite = self.clone();
        Trial::test(format!("{}::{name}", self.backend), move || suite.run(job))
            .with_ignored_flag(self.ignored)
    }

    fn run(self, job: Job) -> Result<(), Failed> {
        let runtime = match self.worker_threads {
            None => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            Some(workers) => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build(),
        }
        .map_err(|e| format!("tokio runtime: {e}"))?;
        let setup = self.setup;
        let check = async move {
            let fixture = setup().await;
            let b = fixture.backend();
            match job {
                Job::One(rule) => (rule.run)(b, rule.name).await,
                Job::Sequence => {
                    for rule in rules() {
                        (rule.run)(b, &format!("shared-{}", rule.name)).await;
                    }
                    let left = b.list_images().await.expect("list_images");
                    assert!(left.is_empty(), "rules clean up after themselves: {left:?}");
                }
            }
        };
        let Some(limit) = self.timeout else {
            runtime.block_on(check);
            return Ok(());
        };
        match runtime.block_on(async { tokio::time::timeout(limit, check).await }) {
            Ok(()) => Ok(()),
            Err(_) => {
                // Blocking calls of the timed-out rule may still hang: do not wait for them.
                runtime.shutdown_background();
                Err(format!("timed out after {limit:?}").into())
            }
        }
    }
}
