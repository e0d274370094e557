//! `cargo xtask`: the project's own tasks.
//!
//! * `test [--long]`: fmt check, unused dependencies (`cargo machete`), clippy with warnings denied
//!   (default features, then every `ceph` feature), all workspace tests (property tests at 1,000
//!   cases; `--long` raises that), then the number of tests that ran. The house checks are tests of
//!   this crate (`checks`).
//! * `ceph up|down|status|env`: a real single-node Ceph cluster under `target/ceph`.
//! * `integration`: the scenario suite against that cluster.
//! * `chaos [--kills N] [--seed S]`: only the SIGKILL chaos test against that cluster (default 20
//!   kills), with its figures (kills, objects, time to converge after each restart, maximum).
//! * `bench [NAME] [--quick] [--json PATH]`: benchmarks printing ours vs reference ratios.
//! * `codegen`: regenerate committed generated code (librbd bindings, gRPC stubs).

use std::process::ExitCode;

use anyhow::{bail, Result};

mod bench;
mod ceph;
mod chaos;
#[cfg(test)]
mod checks;
mod test;
mod testlog;
mod util;
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "the house checks (tests only) read more of the workspace than the commands"
    )
)]
mod workspace;

/// Runs the command; an error is printed as its chain of causes, without a backtrace (even when
/// `RUST_BACKTRACE` is set for the tests), so the last lines of a log say what failed.
fn main() -> ExitCode {
    match dispatch() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        bail!("usage: cargo xtask <test|ceph|integration|chaos|bench|codegen> [args]");
    };
    match cmd.as_str() {
        "test" => test::run(rest),
        "ceph" => ceph::run(rest),
        "integration" => ceph::integration(rest),
        "chaos" => chaos::run(rest),
        "bench" => bench_run(rest),
        "codegen" => ceph::codegen(rest),
        other => bail!("unknown xtask command {other:?}"),
    }
}

fn bench_run(rest: &[String]) -> Result<()> {
    bench::run(rest)
}
