//! Cost of the runner next to bare `tokio::spawn` + await of the same trivial futures, and memory
//! per waiting key. Prints one line per figure: `name ours reference ratio`.
//!
//! Run: `cargo bench -p runner --bench runner` (add `-- --quick` for a smoke run with small N;
//! add names or parts of names of figures to print only those).
//!
//! * `submit_complete_1_key_ns`: one key submitted, its completion received, again and again,
//!   versus spawning and awaiting one task at a time (ns per operation).
//! * `submit_complete_{10k,100k}_keys_ns`: N distinct keys submitted at once (default bounds:
//!   10 running, the rest queued) and all N completions received, versus spawning N tasks and
//!   awaiting them all (ns per operation).
//! * `submit_complete_10k_keys_3_classes_ns`: the same with three operation classes (shares
//!   5/3/2 of 10 slots, the daemon's), keys submitted into them in turn.
//! * `bytes_per_waiting_key`: N keys of realistic length (`snapshot:` + 63 hex digits) waiting
//!   while every running slot is held, versus N spawned tasks each parked on the same kind of
//!   future holding the same key (live heap bytes per key, counted by an instrumented global
//!   allocator; keys included).

use std::alloc::System;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runner::{ClassConfig, Completions, OpError, Runner, RunnerConfig, ShutdownMode, Submitted};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use tokio::sync::Notify;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn live_bytes() -> isize {
    let s = GLOBAL.stats();
    s.bytes_allocated as isize - s.bytes_deallocated as isize + s.bytes_reallocated
}

fn line(name: &str, ours: f64, reference: f64) {
    println!("{name} {ours:.1} {reference:.1} {:.2}", ours / reference);
}

fn key(i: usize) -> String {
    format!("snapshot:{i:063x}")
}

async fn trivial() -> Result<(), OpError> {
    Ok(())
}

async fn recv(completions: &mut Completions) {
    completions.recv().await.expect("a completion");
}

fn per_op(elapsed: Duration, ops: usize) -> f64 {
    elapsed.as_nanos() as f64 / ops as f64
}

/// Best (lowest) of `rounds` round trips of one key, in ns per operation.
async fn one_key(n: usize, rounds: usize) {
    let runner = Runner::new(RunnerConfig::default());
    let mut completions = runner.subscribe();
    let (mut ours, mut reference) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..n {
            let answer = runner.try_submit("image:1", |_ctx| trivial());
            assert_eq!(answer, Ok(Submitted::Accepted));
            recv(&mut completions).await;
        }
        ours = ours.min(per_op(start.elapsed(), n));

        let start = Instant::now();
        for _ in 0..n {
            let result = tokio::spawn(trivial()).await.expect("task");
            assert!(result.is_ok());
        }
        reference = reference.min(per_op(start.elapsed(), n));
    }
    runner
        .shutdown(ShutdownMode::Drain {
            deadline: Duration::from_secs(10),
        })
        .await;
    line("submit_complete_1_key_ns", ours, reference);
}

/// The daemon's three classes.
const CLASSES: [(&str, usize); 3] = [("populate", 5), ("fill", 3), ("flatten", 2)];

/// Best (lowest) of `rounds` batches of `n` distinct keys, in ns per operation; submitted into
/// the daemon's three classes in turn if `classes`, class-less otherwise.
async fn distinct_keys(name: &str, n: usize, rounds: usize, classes: bool) {
    let runner = Runner::new(RunnerConfig {
        max_waiting: n,
        classes: if classes {
            CLASSES
                .iter()
                .map(|&(name, share)| ClassConfig::new(name, share))
                .collect()
        } else {
            Vec::new()
        },
        ..RunnerConfig::default()
    });
    let mut completions = runner.subscribe();
    let (mut ours, mut reference) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..rounds {
        let keys: Vec<String> = (0..n).map(key).collect();
        let start = Instant::now();
        for (i, key) in keys.into_iter().enumerate() {
            let answer = if classes {
                runner.try_submit_in(CLASSES[i % CLASSES.len()].0, key, |_ctx| trivial())
            } else {
                runner.try_submit(key, |_ctx| trivial())
            };
            assert_eq!(answer, Ok(Submitted::Accepted));
        }
        for _ in 0..n {
            recv(&mut completions).await;
        }
        ours = ours.min(per_op(start.elapsed(), n));

        let start = Instant::now();
        let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(trivial())).collect();
        for task in tasks {
            assert!(task.await.expect("task").is_ok());
        }
        reference = reference.min(per_op(start.elapsed(), n));
    }
    runner
        .shutdown(ShutdownMode::Drain {
            deadline: Duration::from_secs(10),
        })
        .await;
    line(name, ours, reference);
}

async fn memory_per_waiting_key(n: usize) {
    let cfg = RunnerConfig {
        max_waiting: n,
        ..RunnerConfig::default()
    };
    let max_running = cfg.max_running;
    let runner = Runner::new(cfg);
    let release = Arc::new(Notify::new());
    for i in 0..max_running {
        let release = Arc::clone(&release);
        let _ = runner.try_submit(format!("blocker-{i}"), move |_ctx| async move {
            release.notified().await;
            Ok(())
        });
    }
    tokio::task::yield_now().await;

    let before = live_bytes();
    for i in 0..n {
        let answer = runner.try_submit(key(i), |_ctx| trivial());
        assert_eq!(answer, Ok(Submitted::Accepted));
    }
    let ours = (live_bytes() - before) as f64 / n as f64;
    assert_eq!(runner.metrics().waiting, n);

    // Reference: one parked task per key, holding its key and the same trivial future.
    let gate = Arc::new(Notify::new());
    let before = live_bytes();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let key = key(i);
            let gate = Arc::clone(&gate);
            tokio::spawn(async move {
                gate.notified().await;
                drop(key);
                trivial().await
            })
        })
        .collect();
    let reference = (live_bytes() - before) as f64 / n as f64;
    line("bytes_per_waiting_key", ours, reference);

    for task in tasks {
        task.abort();
    }
    runner
        .shutdown(ShutdownMode::Cancel {
            deadline: Duration::from_secs(1),
        })
        .await;
}

/// Whether the figure `name` was asked for: every figure, unless names (or parts of names) are
/// given as arguments.
fn selected(name: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (one, small, large, waiting, rounds) = if quick {
        (2_000, 1_000, 5_000, 1_000, 1)
    } else {
        (100_000, 10_000, 100_000, 100_000, 5)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    println!("# name ours reference ratio   (ns per op, or bytes per key; reference = bare tokio::spawn)");
    // Run on a worker thread, like the controllers that submit work and receive completions.
    let bench = async move {
        if selected("submit_complete_1_key_ns") {
            one_key(one, rounds).await;
        }
        for (name, n, classes) in [
            ("submit_complete_10k_keys_ns", small, false),
            ("submit_complete_100k_keys_ns", large, false),
            ("submit_complete_10k_keys_3_classes_ns", small, true),
        ] {
            if selected(name) {
                distinct_keys(name, n, rounds, classes).await;
            }
        }
        if selected("bytes_per_waiting_key") {
            memory_per_waiting_key(waiting).await;
        }
    };
    rt.block_on(async { tokio::spawn(bench).await })
        .expect("the benchmark task");
}
