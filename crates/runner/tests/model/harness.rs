//! The harness: operations the test controls, the property checks (from what is observed) and
//! the comparison of the runner with the reference model, step by step.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use proptest::prelude::*;
use runner::{
    ClassConfig, Completions, OpContext, OpError, OpState, Outcome, Runner, RunnerConfig,
    ShutdownMode, SubmitError, Submitted,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::reference::{Model, ModelOp};
use crate::{Action, Cmd, Config, CLASS_NAMES, KEYS};

pub(crate) type BoxFut = Pin<Box<dyn Future<Output = Result<(), OpError>> + Send>>;

/// What the operations observe about themselves.
#[derive(Default)]
pub(crate) struct Observed {
    pub(crate) live: HashSet<String>,
    pub(crate) started: Vec<usize>,
    pub(crate) violations: Vec<String>,
}

/// Held by a running operation; leaves the live set when dropped (return, panic or abort).
pub(crate) struct Live {
    pub(crate) observed: Arc<Mutex<Observed>>,
    pub(crate) key: String,
}

impl Drop for Live {
    fn drop(&mut self) {
        let mut o = self.observed.lock().expect("observed lock");
        o.live.remove(&self.key);
    }
}

pub(crate) fn key_name(key: usize) -> String {
    format!("k{key}")
}

pub(crate) fn panic_text(id: usize) -> String {
    format!("deliberate panic of op {id}")
}

pub(crate) fn make_op(
    observed: &Arc<Mutex<Observed>>,
    max_running: usize,
    id: usize,
    obeys: bool,
) -> (
    impl FnOnce(OpContext) -> BoxFut + Send + 'static,
    oneshot::Sender<Cmd>,
) {
    let (tx, rx) = oneshot::channel::<Cmd>();
    let observed = Arc::clone(observed);
    let op = move |ctx: OpContext| -> BoxFut {
        Box::pin(async move {
            let _live = {
                let mut o = observed.lock().expect("observed lock");
                let live = o.live.len();
                if live >= max_running {
                    o.violations
                        .push(format!("bound: op {id} started with {live} live"));
                }
                if !o.live.insert(ctx.key().to_owned()) {
                    o.violations
                        .push(format!("one run per key: two runs of {}", ctx.key()));
                }
                o.started.push(id);
                Live {
                    observed: Arc::clone(&observed),
                    key: ctx.key().to_owned(),
                }
            };
            let cmd = if obeys {
                tokio::select! {
                    cmd = rx => cmd.ok(),
                    () = ctx.cancelled() => None,
                }
            } else {
                rx.await.ok()
            };
            match cmd {
                Some(Cmd::Complete) => Ok(()),
                Some(Cmd::Fail) => Err("boom".into()),
                Some(Cmd::Panic) => panic!("{}", panic_text(id)),
                None => Err("stopped".into()),
            }
        })
    };
    (op, tx)
}

/// The starts (operation ids, in order) and completions observed in one step.
pub(crate) type StepEvents = (Vec<usize>, Vec<(String, Outcome)>);

/// An accepted operation not yet observed to start, for the starvation check.
pub(crate) struct Waiter {
    pub(crate) id: usize,
    pub(crate) class: usize,
    pub(crate) accepted_at: Instant,
    /// Once aged: the operations accepted before it still waiting then, and the completions
    /// counted since.
    pub(crate) aged: Option<(usize, usize)>,
}

/// What the property checks remember, built from answers, observed starts and completions.
#[derive(Default)]
pub(crate) struct Track {
    /// By acceptance number.
    pub(crate) waiters: BTreeMap<u64, Waiter>,
    /// Accepted, not completed: key -> (id, class, acceptance number, started).
    pub(crate) active: HashMap<String, (usize, usize, u64, bool)>,
    /// Operations that completed (cancelled) before they started.
    pub(crate) cancelled_waiting: HashSet<usize>,
    /// The acceptance number of the next accepted operation.
    pub(crate) next_seq: u64,
}

pub(crate) struct Harness {
    pub(crate) runner: Runner,
    pub(crate) completions: Completions,
    pub(crate) observed: Arc<Mutex<Observed>>,
    pub(crate) gates: HashMap<usize, oneshot::Sender<Cmd>>,
    pub(crate) blocked_task: Option<JoinHandle<Result<Submitted, SubmitError>>>,
    pub(crate) shutdown_task: Option<JoinHandle<()>>,
    pub(crate) next_id: usize,
    /// The blocked submission (id, key, class), until it gets an answer.
    pub(crate) blocked_op: Option<(usize, String, usize)>,
    /// Its answer, once it got one in the current step.
    pub(crate) blocked_result: Option<Result<Submitted, SubmitError>>,
    /// When the current step started.
    pub(crate) step_at: Instant,
    /// Answers that differed from the model's in the current step.
    pub(crate) mismatches: Vec<String>,
    pub(crate) model: Model,
    pub(crate) track: Track,
}

/// Longer than any wait the runner may impose in a case (deadlines are a few seconds).
const STUCK: Duration = Duration::from_secs(3600);

/// Whether only the properties are checked, not the comparison with the model
/// (`MODEL_PROPERTIES_ONLY=1`): to see a property fail on its own on a deliberately broken
/// scheduler, which the comparison would usually report first.
fn properties_only() -> bool {
    std::env::var_os("MODEL_PROPERTIES_ONLY").is_some_and(|v| v == "1")
}

/// Lets every task run until all are blocked (the paused clock only moves when idle).
pub(crate) async fn until_idle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

impl Harness {
    pub(crate) fn new(cfg: &Config) -> Self {
        let runner = Runner::new(RunnerConfig {
            max_running: cfg.max_running,
            max_waiting: cfg.max_waiting,
            classes: cfg
                .classes
                .iter()
                .zip(CLASS_NAMES)
                .map(|(&(share, max_waiting), name)| ClassConfig {
                    name: name.to_owned(),
                    share,
                    max_waiting,
                })
                .collect(),
            aging: Duration::from_secs(cfg.aging_secs),
            ..RunnerConfig::default()
        });
        Harness {
            completions: runner.subscribe(),
            runner,
            observed: Arc::default(),
            gates: HashMap::new(),
            blocked_task: None,
            shutdown_task: None,
            next_id: 0,
            blocked_op: None,
            blocked_result: None,
            step_at: Instant::now(),
            mismatches: Vec::new(),
            model: Model::new(cfg),
            track: Track::default(),
        }
    }

    pub(crate) async fn step(&mut self, action: &Action) -> Result<(), TestCaseError> {
        self.step_at = Instant::now();
        self.mark_aged();
        match *action {
            Action::TrySubmit { key, class, obeys } => {
                self.submit(key, class, obeys, false).await?;
            }
            Action::Submit { key, class, obeys } => self.submit(key, class, obeys, true).await?,
            Action::Complete(i) => self.command(i, Cmd::Complete),
            Action::Fail(i) => self.command(i, Cmd::Fail),
            Action::Panic(i) => self.command(i, Cmd::Panic),
            Action::Cancel(key) => self.cancel(key)?,
            Action::Shutdown { cancel, secs } => self.shutdown(cancel, secs),
            Action::Advance(secs) => {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                self.deadline_check();
            }
        }
        until_idle().await;
        let (started, got) = self.check_properties()?;
        if properties_only() {
            self.model.starts.clear();
            self.model.completions.clear();
            self.model.blocked_answer = None;
            self.mismatches.clear();
            return Ok(());
        }
        self.check_model(started, got).await
    }

    /// The name passed to the runner (`None`: a class-less method) and the class it means.
    pub(crate) fn resolve(&self, class: usize) -> (Option<&'static str>, usize) {
        match class {
            3 => (None, 0),
            4 => (Some("unknown"), 0),
            c => {
                let c = c % self.model.classes();
                (Some(CLASS_NAMES[c]), c)
            }
        }
    }

    /// Records an operation the runner accepted, for the property checks: its acceptance
    /// number is the order in which the harness saw the answers.
    pub(crate) fn accepted(&mut self, id: usize, key: String, class: usize, at: Instant) {
        let t = &mut self.track;
        let seq = t.next_seq;
        t.next_seq += 1;
        t.active.insert(key, (id, class, seq, false));
        t.waiters.insert(
            seq,
            Waiter {
                id,
                class,
                accepted_at: at,
                aged: None,
            },
        );
    }

    pub(crate) async fn submit(
        &mut self,
        key: usize,
        class: usize,
        obeys: bool,
        wait: bool,
    ) -> Result<(), TestCaseError> {
        let id = self.next_id;
        self.next_id += 1;
        let (name, class) = self.resolve(class);
        let model_op = ModelOp {
            id,
            key: key_name(key),
            class,
            obeys,
            cancelled: false,
            seq: 0,
            accepted_at: None,
        };
        let (op, gate) = make_op(&self.observed, self.model.max_running, id, obeys);
        let wait = wait && self.model.blocked.is_none();
        let expected = self.model.admit(model_op.clone());
        // Kept for when the op runs (a blocked submission may be accepted later; a runner that
        // differs from the model may run an op the model refused).
        self.gates.insert(id, gate);
        let k = key_name(key);
        let runner = self.runner.clone();
        let answer = match (expected, wait) {
            (Some(expected), false) => {
                let answer = match name {
                    None => runner.try_submit(k.clone(), op),
                    Some(name) => runner.try_submit_in(name, k.clone(), op),
                };
                self.compare("try_submit", answer, expected);
                answer
            }
            (Some(expected), true) => {
                // The model answers at once; a runner that blocks instead is reported, not awaited
                // forever (the paused clock jumps to the timeout once everything is idle).
                let submit = async {
                    match name {
                        None => runner.submit(k.clone(), op).await,
                        Some(name) => runner.submit_in(name, k.clone(), op).await,
                    }
                };
                let Ok(answer) = tokio::time::timeout(STUCK, submit).await else {
                    self.mismatches
                        .push(format!("submit: runner blocked, model {expected:?}"));
                    return Ok(());
                };
                self.compare("submit", answer, expected);
                answer
            }
            (None, false) => {
                let answer = match name {
                    None => runner.try_submit(k.clone(), op),
                    Some(name) => runner.try_submit_in(name, k.clone(), op),
                };
                self.compare("try_submit", answer, Err(SubmitError::Busy));
                answer
            }
            (None, true) => {
                // Blocks until there is room: run it as a task.
                self.model.blocked = Some(model_op);
                self.blocked_op = Some((id, k.clone(), class));
                self.blocked_task = Some(tokio::spawn(async move {
                    match name {
                        None => runner.submit(k, op).await,
                        Some(name) => runner.submit_in(name, k, op).await,
                    }
                }));
                return Ok(());
            }
        };
        if answer == Ok(Submitted::Accepted) {
            self.accepted(id, k, class, Instant::now());
        }
        Ok(())
    }

    pub(crate) fn command(&mut self, index: usize, cmd: Cmd) {
        if self.model.running.is_empty() {
            return;
        }
        let index = index % self.model.running.len();
        let op = &self.model.running[index];
        let outcome = match cmd {
            Cmd::Complete => Outcome::Ok,
            Cmd::Fail if op.cancelled => Outcome::Cancelled,
            Cmd::Fail => Outcome::Failed("boom".into()),
            Cmd::Panic => Outcome::Failed(format!("panicked: {}", panic_text(op.id))),
        };
        let gate = self.gates.remove(&op.id).expect("a running op has a gate");
        // Fails only if the runner dropped the op, which the checks report.
        let _ = gate.send(cmd);
        self.model.end_running(index, outcome);
    }

    pub(crate) fn cancel(&mut self, key: usize) -> Result<(), TestCaseError> {
        let key = key_name(key);
        let m = &mut self.model;
        let waiting = m
            .waiting
            .iter()
            .enumerate()
            .find_map(|(c, q)| Some((c, q.iter().position(|op| op.key == key)?)));
        let expected = if let Some((class, pos)) = waiting {
            let op = m.waiting[class].remove(pos).expect("position is valid");
            m.complete(&op, Outcome::Cancelled);
            m.unblock();
            true
        } else if let Some(pos) = m.running.iter().position(|op| op.key == key) {
            m.running[pos].cancelled = true;
            if m.running[pos].obeys {
                m.end_running(pos, Outcome::Cancelled);
            }
            true
        } else {
            false
        };
        let answer = self.runner.cancel(&key);
        self.compare("cancel", answer, expected);
        Ok(())
    }

    pub(crate) fn shutdown(&mut self, cancel: bool, secs: u64) {
        if self.shutdown_task.is_some() {
            return;
        }
        let deadline = Duration::from_secs(secs);
        let mode = if cancel {
            ShutdownMode::Cancel { deadline }
        } else {
            ShutdownMode::Drain { deadline }
        };
        let m = &mut self.model;
        m.closed = true;
        m.deadline = Some(Instant::now() + deadline);
        m.unblock();
        if cancel {
            m.cancel_waiting();
            m.cancel_running();
        }
        let runner = self.runner.clone();
        self.shutdown_task = Some(tokio::spawn(async move { runner.shutdown(mode).await }));
    }

    /// Past the deadline, whatever is left is cancelled (and async operations aborted).
    pub(crate) fn deadline_check(&mut self) {
        let m = &mut self.model;
        if m.deadline.is_some_and(|d| Instant::now() >= d) && !m.is_empty() {
            m.cancel_waiting();
            while !m.running.is_empty() {
                let op = m.running.remove(0);
                m.complete(&op, Outcome::Cancelled);
            }
        }
    }

    /// Before a step: the waiting operations that have waited the aging bound by now (the time
    /// of the step's completions) start being watched.
    pub(crate) fn mark_aged(&mut self) {
        let now = Instant::now();
        let aging = self.model.aging;
        let seqs: Vec<u64> = self.track.waiters.keys().copied().collect();
        for (older, seq) in seqs.iter().enumerate() {
            let w = self.track.waiters.get_mut(seq).expect("listed");
            if w.aged.is_none() && now - w.accepted_at >= aging {
                w.aged = Some((older, 0));
            }
        }
    }

    /// The properties, each checked on its own from what was observed (see the module docs).
    /// Returns the starts and completions of the step, for the comparison with the model.
    pub(crate) fn check_properties(&mut self) -> Result<StepEvents, TestCaseError> {
        let (started, violations) = {
            let mut o = self.observed.lock().expect("observed lock");
            (
                std::mem::take(&mut o.started),
                std::mem::take(&mut o.violations),
            )
        };
        let mut got = Vec::new();
        while let Some(c) = self.completions.try_recv() {
            got.push((c.key, c.outcome));
        }
        if self
            .blocked_task
            .as_ref()
            .is_some_and(JoinHandle::is_finished)
        {
            let task = self.blocked_task.take().expect("checked above");
            let answer = task
                .now_or_never()
                .expect("a finished task")
                .expect("submitter task");
            let (id, key, class) = self.blocked_op.take().expect("a blocked submission");
            if answer == Ok(Submitted::Accepted) {
                // Accepted during the step, at its start time (the clock moves only when idle).
                self.accepted(id, key, class, self.step_at);
            }
            self.blocked_result = Some(answer);
        }
        // A cancelled waiting operation never runs (in this harness, no operation starts and
        // completes in one step: a completion of an operation not started before the step is a
        // cancellation while waiting).
        let t = &mut self.track;
        let cancelled_now: HashSet<usize> = got
            .iter()
            .filter_map(|(key, _)| t.active.get(key).filter(|a| !a.3).map(|a| a.0))
            .collect();
        let ran = started
            .iter()
            .find(|id| t.cancelled_waiting.contains(id) || cancelled_now.contains(id));
        prop_assert!(ran.is_none(), "cancelled waiting op {:?} ran", ran);

        // Bound and one run per key, as observed by the operations.
        prop_assert!(violations.is_empty(), "violations: {:?}", violations);

        // Starts: FIFO within a class.
        for &id in &started {
            let (key, &(_, class, seq, _)) = t
                .active
                .iter()
                .find(|(_, a)| a.0 == id)
                .ok_or_else(|| TestCaseError::fail(format!("op {id} ran unaccepted")))?;
            let key = key.clone();
            let older = t.waiters.range(..seq).find(|(_, w)| w.class == class);
            prop_assert!(
                older.is_none(),
                "FIFO within class {}: op {} started while op {:?} accepted before it waits",
                class,
                id,
                older.map(|(_, w)| w.id)
            );
            t.waiters.remove(&seq);
            t.active.get_mut(&key).expect("found above").3 = true;
        }

        // Completions: exactly once per accepted operation; which ones freed a slot.
        let mut freed = Vec::new();
        for (key, _) in &got {
            let (id, class, seq, ran) = t.active.remove(key).ok_or_else(|| {
                TestCaseError::fail(format!("exactly once: {key} completed but is not active"))
            })?;
            if ran {
                freed.push(class);
            } else {
                t.cancelled_waiting.insert(id);
                t.waiters.remove(&seq);
            }
        }

        // No starvation: an aged operation starts within `n + 1` counted completions.
        let guards = self.model.guards();
        for w in t.waiters.values_mut() {
            if let Some((older, count)) = &mut w.aged {
                *count += freed.iter().filter(|&&c| !guards || c == w.class).count();
                prop_assert!(
                    *count <= *older,
                    "starvation: op {} of class {} still waits after {} completions with {} older",
                    w.id,
                    w.class,
                    count,
                    older
                );
            }
        }

        // No lending of the last slot of an idle class; no waiting op that could start.
        let m = self.runner.metrics();
        let free = self.model.max_running - m.running;
        let idle = m.classes.iter().filter(|c| c.running == 0).count();
        for c in &m.classes {
            if c.waiting == 0 {
                continue;
            }
            let may_start = free > 0 && (!guards || free > idle - usize::from(c.running == 0));
            prop_assert!(!may_start, "class {} waits with a slot it may take", c.name);
        }
        if guards {
            prop_assert!(
                free >= idle,
                "lending took the last slot of an idle class: {} free, {} idle",
                free,
                idle
            );
        }
        Ok((started, got))
    }

    /// Records an answer of the runner that differs from the model's (reported after the
    /// properties, by `check_model`).
    fn compare<T: std::fmt::Debug + PartialEq>(&mut self, what: &str, answer: T, expected: T) {
        if answer != expected {
            self.mismatches
                .push(format!("{what}: runner {answer:?}, model {expected:?}"));
        }
    }

    /// That the runner is the model.
    pub(crate) async fn check_model(
        &mut self,
        started: Vec<usize>,
        mut got: Vec<(String, Outcome)>,
    ) -> Result<(), TestCaseError> {
        let mismatches = std::mem::take(&mut self.mismatches);
        prop_assert!(mismatches.is_empty(), "answers: {:?}", mismatches);
        let m = &mut self.model;
        prop_assert_eq!(&started, &m.starts, "starts");
        m.starts.clear();
        let mut expected = std::mem::take(&mut m.completions);
        got.sort();
        expected.sort();
        prop_assert_eq!(got, expected, "completions");

        // The blocked submitter.
        match (m.blocked_answer.take(), self.blocked_result.take()) {
            (Some(expected), Some(answer)) => {
                prop_assert_eq!(answer, expected, "blocked submitter")
            }
            (Some(expected), None) => {
                prop_assert!(
                    false,
                    "the blocked submitter should have got {:?}",
                    expected
                );
            }
            (None, Some(answer)) => {
                prop_assert!(
                    false,
                    "the submitter got {:?} but should still wait",
                    answer
                );
            }
            (None, None) => {}
        }

        // Views.
        let snapshot = self.runner.snapshot();
        let mut running: Vec<_> = snapshot
            .iter()
            .filter(|i| i.state == OpState::Running)
            .map(|i| (i.key.clone(), i.class.clone()))
            .collect();
        running.sort();
        let mut model_running: Vec<_> = m
            .running
            .iter()
            .map(|op| (op.key.clone(), CLASS_NAMES[op.class].to_owned()))
            .collect();
        model_running.sort();
        prop_assert_eq!(running, model_running, "running keys");
        let waiting: Vec<_> = snapshot
            .iter()
            .filter(|i| i.state == OpState::Waiting)
            .map(|i| (i.key.clone(), i.class.clone()))
            .collect();
        let mut model_waiting: Vec<_> = m.waiting.iter().flatten().collect();
        model_waiting.sort_by_key(|op| op.seq);
        let model_waiting: Vec<_> = model_waiting
            .iter()
            .map(|op| (op.key.clone(), CLASS_NAMES[op.class].to_owned()))
            .collect();
        prop_assert_eq!(waiting, model_waiting, "waiting keys in acceptance order");
        for key in (0..KEYS).map(key_name) {
            let expected = match m.has(&key) {
                Some(Submitted::AlreadyRunning) => Some(OpState::Running),
                Some(_) => Some(OpState::Waiting),
                None => None,
            };
            prop_assert_eq!(self.runner.state(&key), expected, "state of {}", key);
        }
        let metrics = self.runner.metrics();
        prop_assert_eq!(metrics.running, m.running.len());
        prop_assert_eq!(metrics.waiting, m.waiting_total());
        prop_assert_eq!(metrics.accepted, m.accepted.iter().sum::<u64>());
        prop_assert_eq!(metrics.completed, m.completed.iter().sum::<u64>());
        for (i, c) in metrics.classes.iter().enumerate() {
            prop_assert_eq!(&c.name, CLASS_NAMES[i]);
            prop_assert_eq!(c.reserved, m.reserved[i]);
            prop_assert_eq!(c.running, m.running_in(i), "running in {}", c.name);
            prop_assert_eq!(c.waiting, m.waiting[i].len(), "waiting in {}", c.name);
            prop_assert_eq!(c.accepted, m.accepted[i], "accepted in {}", c.name);
            prop_assert_eq!(
                c.deduplicated,
                m.deduplicated[i],
                "deduplicated in {}",
                c.name
            );
            prop_assert_eq!(c.completed, m.completed[i], "completed in {}", c.name);
        }

        // Shutdown returns exactly when nothing is left.
        if let Some(task) = &self.shutdown_task {
            prop_assert_eq!(task.is_finished(), m.is_empty(), "shutdown finished");
        }
        Ok(())
    }

    /// Ends the case: a cancelling shutdown (if none yet), then past every deadline.
    pub(crate) async fn finish(&mut self) -> Result<(), TestCaseError> {
        self.step(&Action::Shutdown {
            cancel: true,
            secs: 1,
        })
        .await?;
        self.step(&Action::Advance(4)).await?;
        prop_assert!(self.model.is_empty());
        prop_assert!(self.track.active.is_empty(), "every accepted op completed");
        let accepted: u64 = self.model.accepted.iter().sum();
        let completed: u64 = self.model.completed.iter().sum();
        prop_assert_eq!(accepted, completed);
        let task = self.shutdown_task.take().expect("shutdown started");
        let ended = tokio::time::timeout(STUCK, task).await;
        prop_assert!(ended.is_ok(), "shutdown returned");
        prop_assert!(
            self.completions.recv().await.is_none(),
            "subscription closed"
        );
        Ok(())
    }
}
