//! Property test: random sequences of submissions, completions, failures, panics, cancellations,
//! shutdowns and clock advances, run against the runner and against a small reference model.
//!
//! Every operation is controlled by the test: it logs its start, then waits for a command
//! (complete, fail, panic) on its own channel; "obedient" operations also stop as soon as their
//! token is cancelled, the others ignore it. Each case runs on its own current-thread runtime with
//! the clock paused, so scheduling and time are deterministic.
//!
//! Checked after every step:
//! * the answers of `try_submit`, `submit`, `cancel` are the model's;
//! * the operations that started in the step, in order (this checks the FIFO order of waiting
//!   operations, and that a cancelled waiting operation never runs);
//! * the completions delivered in the step (each accepted operation completes and notifies
//!   exactly once, with the right outcome);
//! * `snapshot`, `state` and `metrics` agree with the model; shutdown has returned iff nothing is
//!   left;
//! * observed by the operations themselves: never more than `max_running` run at once and never
//!   two runs of one key at once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use proptest::prelude::*;
use runner::{
    Completions, OpContext, OpError, OpState, Outcome, Runner, RunnerConfig, ShutdownMode,
    SubmitError, Submitted,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const KEYS: usize = 5;

#[derive(Debug, Clone)]
enum Action {
    TrySubmit { key: usize, obeys: bool },
    Submit { key: usize, obeys: bool },
    Complete(usize),
    Fail(usize),
    Panic(usize),
    Cancel(usize),
    Shutdown { cancel: bool, secs: u64 },
    Advance(u64),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (0..KEYS, any::<bool>()).prop_map(|(key, obeys)| Action::TrySubmit { key, obeys }),
        3 => (0..KEYS, any::<bool>()).prop_map(|(key, obeys)| Action::Submit { key, obeys }),
        4 => (0..8usize).prop_map(Action::Complete),
        2 => (0..8usize).prop_map(Action::Fail),
        1 => (0..8usize).prop_map(Action::Panic),
        3 => (0..KEYS).prop_map(Action::Cancel),
        1 => (any::<bool>(), 1..4u64).prop_map(|(cancel, secs)| Action::Shutdown { cancel, secs }),
        1 => (1..3u64).prop_map(Action::Advance),
    ]
}

#[derive(Debug, Clone, Copy)]
enum Cmd {
    Complete,
    Fail,
    Panic,
}

type BoxFut = Pin<Box<dyn Future<Output = Result<(), OpError>> + Send>>;

/// What the operations observe about themselves.
#[derive(Default)]
struct Observed {
    live: HashSet<String>,
    started: Vec<usize>,
    violations: Vec<String>,
}

/// Held by a running operation; leaves the live set when dropped (return, panic or abort).
struct Live {
    observed: Arc<Mutex<Observed>>,
    key: String,
}

impl Drop for Live {
    fn drop(&mut self) {
        let mut o = self.observed.lock().expect("observed lock");
        o.live.remove(&self.key);
    }
}

fn key_name(key: usize) -> String {
    format!("k{key}")
}

fn panic_text(id: usize) -> String {
    format!("deliberate panic of op {id}")
}

fn make_op(
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
                        .push(format!("op {id} started with {live} live"));
                }
                if !o.live.insert(ctx.key().to_owned()) {
                    o.violations
                        .push(format!("two runs of {} at once", ctx.key()));
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

#[derive(Debug, Clone)]
struct ModelOp {
    id: usize,
    key: String,
    obeys: bool,
    cancelled: bool,
}

/// The reference model: plain lists, no concurrency.
struct Model {
    max_running: usize,
    max_waiting: usize,
    running: Vec<ModelOp>,
    waiting: VecDeque<ModelOp>,
    blocked: Option<ModelOp>,
    closed: bool,
    deadline: Option<Instant>,
    accepted: u64,
    completed: u64,
    // Expectations of the current step.
    starts: Vec<usize>,
    completions: Vec<(String, Outcome)>,
    blocked_answer: Option<Result<Submitted, SubmitError>>,
}

impl Model {
    fn has(&self, key: &str) -> Option<Submitted> {
        if self.running.iter().any(|op| op.key == key) {
            Some(Submitted::AlreadyRunning)
        } else if self.waiting.iter().any(|op| op.key == key) {
            Some(Submitted::AlreadyWaiting)
        } else {
            None
        }
    }

    /// The answer to a submission; `None` means "no room" (Busy, or wait in `submit`).
    fn admit(&mut self, op: ModelOp) -> Option<Result<Submitted, SubmitError>> {
        if self.closed {
            return Some(Err(SubmitError::ShuttingDown));
        }
        if let Some(dup) = self.has(&op.key) {
            return Some(Ok(dup));
        }
        if self.running.len() < self.max_running {
            self.starts.push(op.id);
            self.running.push(op);
        } else if self.waiting.len() < self.max_waiting {
            self.waiting.push_back(op);
        } else {
            return None;
        }
        self.accepted += 1;
        Some(Ok(Submitted::Accepted))
    }

    fn complete(&mut self, key: String, outcome: Outcome) {
        self.completed += 1;
        self.completions.push((key, outcome));
    }

    /// A running operation ended: its slot goes to the head of the queue, then a blocked
    /// submitter may get in.
    fn end_running(&mut self, index: usize, outcome: Outcome) {
        let op = self.running.remove(index);
        self.complete(op.key, outcome);
        if let Some(next) = self.waiting.pop_front() {
            self.starts.push(next.id);
            self.running.push(next);
        }
        self.unblock();
    }

    fn unblock(&mut self) {
        if let Some(op) = self.blocked.take() {
            match self.admit(op.clone()) {
                Some(answer) => self.blocked_answer = Some(answer),
                None => self.blocked = Some(op),
            }
        }
    }

    fn cancel_waiting(&mut self) {
        while let Some(op) = self.waiting.pop_front() {
            self.complete(op.key, Outcome::Cancelled);
        }
    }

    /// Cancels every running operation's token; the obedient ones end.
    fn cancel_running(&mut self) {
        for op in &mut self.running {
            op.cancelled = true;
        }
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].obeys {
                let op = self.running.remove(i);
                self.complete(op.key, Outcome::Cancelled);
            } else {
                i += 1;
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }
}

struct Harness {
    runner: Runner,
    completions: Completions,
    observed: Arc<Mutex<Observed>>,
    gates: HashMap<usize, oneshot::Sender<Cmd>>,
    blocked_task: Option<JoinHandle<Result<Submitted, SubmitError>>>,
    shutdown_task: Option<JoinHandle<()>>,
    next_id: usize,
    model: Model,
}

/// Lets every task run until all are blocked (the paused clock only moves when idle).
async fn until_idle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

impl Harness {
    fn new(max_running: usize, max_waiting: usize) -> Self {
        let runner = Runner::new(RunnerConfig {
            max_running,
            max_waiting,
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
            model: Model {
                max_running,
                max_waiting,
                running: Vec::new(),
                waiting: VecDeque::new(),
                blocked: None,
                closed: false,
                deadline: None,
                accepted: 0,
                completed: 0,
                starts: Vec::new(),
                completions: Vec::new(),
                blocked_answer: None,
            },
        }
    }

    async fn step(&mut self, action: &Action) -> Result<(), TestCaseError> {
        match *action {
            Action::TrySubmit { key, obeys } => self.submit(key, obeys, false).await?,
            Action::Submit { key, obeys } => self.submit(key, obeys, true).await?,
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
        self.check().await
    }

    async fn submit(&mut self, key: usize, obeys: bool, wait: bool) -> Result<(), TestCaseError> {
        let id = self.next_id;
        self.next_id += 1;
        let model_op = ModelOp {
            id,
            key: key_name(key),
            obeys,
            cancelled: false,
        };
        let (op, gate) = make_op(&self.observed, self.model.max_running, id, obeys);
        let wait = wait && self.model.blocked.is_none();
        let expected = self.model.admit(model_op.clone());
        if matches!(expected, Some(Ok(Submitted::Accepted)) | None) {
            // Kept for when the op runs (a blocked submission may be accepted later).
            self.gates.insert(id, gate);
        }
        match (expected, wait) {
            (Some(expected), false) => {
                let answer = self.runner.try_submit(key_name(key), op);
                prop_assert_eq!(answer, expected);
            }
            (Some(expected), true) => {
                let answer = self.runner.submit(key_name(key), op).await;
                prop_assert_eq!(answer, expected);
            }
            (None, false) => {
                let answer = self.runner.try_submit(key_name(key), op);
                prop_assert_eq!(answer, Err(SubmitError::Busy));
            }
            (None, true) => {
                // Blocks until there is room: run it as a task.
                self.model.blocked = Some(model_op);
                let runner = self.runner.clone();
                let name = key_name(key);
                self.blocked_task =
                    Some(tokio::spawn(async move { runner.submit(name, op).await }));
            }
        }
        Ok(())
    }

    fn command(&mut self, index: usize, cmd: Cmd) {
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
        gate.send(cmd).expect("the op waits on its gate");
        self.model.end_running(index, outcome);
    }

    fn cancel(&mut self, key: usize) -> Result<(), TestCaseError> {
        let key = key_name(key);
        let m = &mut self.model;
        let expected = if let Some(pos) = m.waiting.iter().position(|op| op.key == key) {
            let op = m.waiting.remove(pos).expect("position is valid");
            m.complete(op.key, Outcome::Cancelled);
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
        prop_assert_eq!(self.runner.cancel(&key), expected);
        Ok(())
    }

    fn shutdown(&mut self, cancel: bool, secs: u64) {
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
    fn deadline_check(&mut self) {
        let m = &mut self.model;
        if m.deadline.is_some_and(|d| Instant::now() >= d) && !m.is_empty() {
            m.cancel_waiting();
            while !m.running.is_empty() {
                let op = m.running.remove(0);
                m.complete(op.key, Outcome::Cancelled);
            }
        }
    }

    async fn check(&mut self) -> Result<(), TestCaseError> {
        let m = &mut self.model;
        // Starts and completions of this step.
        let (started, violations) = {
            let mut o = self.observed.lock().expect("observed lock");
            (
                std::mem::take(&mut o.started),
                std::mem::take(&mut o.violations),
            )
        };
        prop_assert!(violations.is_empty(), "violations: {:?}", violations);
        prop_assert_eq!(&started, &m.starts, "starts");
        m.starts.clear();
        let mut got = Vec::new();
        while let Some(c) = self.completions.try_recv() {
            got.push((c.key, c.outcome));
        }
        let mut expected = std::mem::take(&mut m.completions);
        got.sort();
        expected.sort();
        prop_assert_eq!(got, expected, "completions");

        // The blocked submitter.
        if let Some(answer) = m.blocked_answer.take() {
            let task = self.blocked_task.take().expect("a blocked submitter");
            prop_assert!(task.is_finished(), "the blocked submitter got its answer");
            prop_assert_eq!(task.await.expect("submitter task"), answer);
        } else if let Some(task) = &self.blocked_task {
            prop_assert!(!task.is_finished(), "the submitter is still blocked");
        }

        // Views.
        let snapshot = self.runner.snapshot();
        let mut running: Vec<_> = snapshot
            .iter()
            .filter(|i| i.state == OpState::Running)
            .map(|i| i.key.clone())
            .collect();
        running.sort();
        let mut model_running: Vec<_> = m.running.iter().map(|op| op.key.clone()).collect();
        model_running.sort();
        prop_assert_eq!(running, model_running, "running keys");
        let waiting: Vec<_> = snapshot
            .iter()
            .filter(|i| i.state == OpState::Waiting)
            .map(|i| i.key.as_str())
            .collect();
        let model_waiting: Vec<_> = m.waiting.iter().map(|op| op.key.as_str()).collect();
        prop_assert_eq!(waiting, model_waiting, "waiting keys in FIFO order");
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
        prop_assert_eq!(metrics.waiting, m.waiting.len());
        prop_assert_eq!(metrics.accepted, m.accepted);
        prop_assert_eq!(metrics.completed, m.completed);

        // Shutdown returns exactly when nothing is left.
        if let Some(task) = &self.shutdown_task {
            prop_assert_eq!(task.is_finished(), m.is_empty(), "shutdown finished");
        }
        Ok(())
    }

    /// Ends the case: a cancelling shutdown (if none yet), then past every deadline.
    async fn finish(&mut self) -> Result<(), TestCaseError> {
        self.step(&Action::Shutdown {
            cancel: true,
            secs: 1,
        })
        .await?;
        self.step(&Action::Advance(4)).await?;
        prop_assert!(self.model.is_empty());
        prop_assert_eq!(self.model.accepted, self.model.completed);
        let task = self.shutdown_task.take().expect("shutdown started");
        task.await.expect("shutdown task");
        prop_assert!(
            self.completions.recv().await.is_none(),
            "subscription closed"
        );
        Ok(())
    }
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
        max_running in 1..4usize,
        max_waiting in 0..4usize,
        actions in proptest::collection::vec(action(), 1..40),
    ) {
        quiet_deliberate_panics();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let mut harness = Harness::new(max_running, max_waiting);
            for action in &actions {
                harness.step(action).await?;
            }
            harness.finish().await
        })?;
    }
}
