//! Helpers shared by the runner's behaviour tests: operations the test controls (gated,
//! stubborn), a start log, and small shorthands. Each test binary uses a part of them.
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runner::{
    Completion, Completions, OpContext, OpError, Outcome, Runner, RunnerConfig, ShutdownMode,
};
use tokio::sync::oneshot;

pub type BoxFut = Pin<Box<dyn Future<Output = Result<(), OpError>> + Send>>;
pub type Gate = oneshot::Sender<Result<(), OpError>>;

/// Keys of the operations that started, in start order.
#[derive(Clone, Default)]
pub struct Started(pub Arc<Mutex<Vec<String>>>);

impl Started {
    pub fn push(&self, key: &str) {
        self.0.lock().expect("log lock").push(key.to_owned());
    }
    pub fn keys(&self) -> Vec<String> {
        self.0.lock().expect("log lock").clone()
    }
}

/// An operation that logs its start, then ends with what the test sends through the gate, or
/// with an error as soon as it is cancelled.
pub fn gated(started: &Started) -> (impl FnOnce(OpContext) -> BoxFut + Send + 'static, Gate) {
    let (tx, rx) = oneshot::channel::<Result<(), OpError>>();
    let started = started.clone();
    let op = move |ctx: OpContext| -> BoxFut {
        Box::pin(async move {
            started.push(ctx.key());
            tokio::select! {
                result = rx => result.unwrap_or_else(|_| Err("gate dropped".into())),
                () = ctx.cancelled() => Err("stopped at a checkpoint".into()),
            }
        })
    };
    (op, tx)
}

/// An operation that ignores cancellation: it ends only with what the test sends.
pub fn stubborn() -> (impl FnOnce(OpContext) -> BoxFut + Send + 'static, Gate) {
    let (tx, rx) = oneshot::channel::<Result<(), OpError>>();
    let op = move |_ctx: OpContext| -> BoxFut {
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err("gate dropped".into())) })
    };
    (op, tx)
}

pub fn open(gate: Gate) {
    gate.send(Ok(()))
        .expect("the operation is waiting on its gate");
}

pub fn runner(max_running: usize, max_waiting: usize) -> Runner {
    Runner::new(RunnerConfig {
        max_running,
        max_waiting,
        ..RunnerConfig::default()
    })
}

/// Lets every other task run until all are blocked: with the clock paused, the runtime advances
/// time (ending this 1 ms timer) only once it has nothing else to do.
pub async fn until_idle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

pub async fn next(completions: &mut Completions) -> Completion {
    completions.recv().await.expect("a completion")
}

pub fn cancelled(key: &str) -> (String, Outcome) {
    (key.to_owned(), Outcome::Cancelled)
}

pub fn key_outcome(c: Completion) -> (String, Outcome) {
    (c.key, c.outcome)
}

pub fn drain() -> ShutdownMode {
    ShutdownMode::Drain {
        deadline: Duration::from_secs(60),
    }
}
