//! `cargo xtask ceph|integration|codegen`: the real-Ceph tooling.
//!
//! * `ceph up|down|status|env|destroy`: a single-node cluster under `target/ceph` ([`cluster`]).
//! * `integration`: brings the cluster up if needed, runs every suite of [`SUITES`] against it, and
//!   brings it down again if it started it.
//! * `codegen`: regenerates the committed librbd/librados bindings ([`codegen`]).

use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::testlog::{run_counted, TestCounts};
use crate::util;

mod cluster;
mod codegen;

pub use cluster::{ensure_packages, Cluster, UpOutcome};

/// Every test suite that needs the real cluster, as `cargo` arguments. They run in this order with the
/// cluster's environment (`CEPH_CONF`, `CEPH_POOL`, ... see `cargo xtask ceph env`) and
/// `CEPHVOL_INTEGRATION=1` (under which they must fail rather than skip). Add new ones here.
pub const SUITES: &[&[&str]] = &[
    // librbd/librados layer, omap store backend and the shared BlockBackend conformance rules.
    &["test", "-p", "ceph", "--", "--ignored"],
    // The daemon end to end on the cluster (`tests/tests/e2e_ceph.rs`).
    &[
        "test",
        "-p",
        "tests",
        "--features",
        "ceph",
        "--test",
        "e2e_ceph",
        "--",
        "--ignored",
    ],
    // SIGKILL of the daemon during a populate and a flatten (`tests/tests/e2e_ceph_crash.rs`).
    &[
        "test",
        "-p",
        "tests",
        "--features",
        "ceph",
        "--test",
        "e2e_ceph_crash",
        "--",
        "--ignored",
    ],
    // SIGKILL at 70 % of a 1 GiB populate; the restart fetches the rest with an HTTP Range
    // request (`tests/tests/e2e_ceph_resume.rs`).
    &[
        "test",
        "-p",
        "tests",
        "--features",
        "ceph",
        "--test",
        "e2e_ceph_resume",
        "--",
        "--ignored",
    ],
    // Two daemons on one pool: one writer, failover, fencing (`tests/tests/e2e_ceph_ha.rs`).
    &[
        "test",
        "-p",
        "tests",
        "--features",
        "ceph",
        "--test",
        "e2e_ceph_ha",
        "--",
        "--ignored",
        "--test-threads=1",
    ],
    // A clone of a volume snapshot in another pool is flattened there (`tests/tests/e2e_ceph_xpool.rs`).
    &[
        "test",
        "-p",
        "tests",
        "--features",
        "ceph",
        "--test",
        "e2e_ceph_xpool",
        "--",
        "--ignored",
    ],
    // Deleting a parent with restores under both deletion policies, with kills
    // (`tests/tests/e2e_ceph_delete.rs`).
    &[
        "test",
        "-p",
        "tests",
        "--features",
        "ceph",
        "--test",
        "e2e_ceph_delete",
        "--",
        "--ignored",
    ],
    // SIGKILL of the daemon at random moments of a mixed workload, 5 kills
    // (`tests/tests/e2e_ceph_chaos.rs`; `cargo xtask chaos --kills N` for long runs).
    &[
        "test",
        "-p",
        "tests",
        "--features",
        "ceph",
        "--test",
        "e2e_ceph_chaos",
        "--",
        "--ignored",
    ],
    // The OSD frozen with SIGSTOP for a few seconds: RPCs answer, SIGTERM ends the daemon
    // (`tests/tests/e2e_ceph_outage.rs`). Last: it stalls every client of the cluster meanwhile.
    &[
        "test",
        "-p",
        "tests",
        "--features",
        "ceph",
        "--test",
        "e2e_ceph_outage",
        "--",
        "--ignored",
    ],
];

/// The suite of [`SUITES`] that runs integration test file `test` (`tests/tests/<test>.rs`).
pub fn suite(test: &str) -> Option<&'static [&'static str]> {
    SUITES
        .iter()
        .copied()
        .find(|s| s.windows(2).any(|w| w == ["--test", test]))
}

/// `cargo ARGV` of a suite against `cluster`: its environment, and `CEPHVOL_INTEGRATION=1`, under
/// which the suites fail instead of skipping when the cluster environment is missing.
pub fn suite_command(cluster: &Cluster, argv: &[&str]) -> std::process::Command {
    let mut cmd = util::cargo_command();
    cmd.args(argv)
        .envs(cluster.env_vars())
        .env("CEPHVOL_INTEGRATION", "1")
        .current_dir(util::root());
    cmd
}

/// Checks of the `ceph` feature that `cargo xtask test` (default features) does not cover; they run
/// before the cluster comes up.
pub const CHECKS: &[&[&str]] = &[&[
    "clippy",
    "--workspace",
    "--all-targets",
    "--features",
    "volumeprovider/ceph,tests/ceph,bench/ceph",
    "--",
    "-D",
    "warnings",
]];

/// Packages the integration suites need besides the cluster's.
const SUITE_PACKAGES: &[&str] = &["docker-registry"];

/// Installs the packages of the cluster and of the suites that are missing.
pub fn ensure_suite_packages() -> Result<()> {
    ensure_packages(&[cluster::CLUSTER_PACKAGES, SUITE_PACKAGES].concat())
}

/// `cargo xtask ceph up|down|status|env|destroy`.
pub fn run(args: &[String]) -> Result<()> {
    let cluster = Cluster::from_env()?;
    match args.first().map(String::as_str) {
        Some("up") => {
            let t0 = Instant::now();
            let outcome = cluster.up()?;
            let how = match outcome {
                UpOutcome::AlreadyUp => "already up",
                UpOutcome::Restarted => "restarted",
                UpOutcome::Created => "created",
            };
            eprintln!(
                "ceph: {how} in {:.1}s; `eval $(cargo xtask ceph env)` for clients",
                t0.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Some("down") => {
            let t0 = Instant::now();
            if cluster.down()? {
                eprintln!("ceph: stopped in {:.1}s", t0.elapsed().as_secs_f64());
            } else {
                eprintln!("ceph: nothing of ours was running");
            }
            Ok(())
        }
        Some("status") => {
            if cluster.print_status()? {
                Ok(())
            } else {
                std::process::exit(3)
            }
        }
        Some("env") => {
            for (k, v) in cluster.env_vars() {
                println!("export {k}='{v}'");
            }
            Ok(())
        }
        Some("destroy") => cluster.destroy(),
        _ => bail!("usage: cargo xtask ceph up|down|status|env|destroy"),
    }
}

/// `cargo xtask integration [--skip-checks] [-- extra test args]`: [`CHECKS`], cluster up (if
/// needed), every suite, cluster down (if this run started it).
pub fn integration(args: &[String]) -> Result<()> {
    let t0 = Instant::now();
    let (flags, extra) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &args[args.len()..]),
    };
    let mut skip_checks = false;
    for flag in flags {
        match flag.as_str() {
            "--skip-checks" => skip_checks = true,
            other => bail!(
                "cargo xtask integration: unknown flag {other:?} (test arguments go after --)"
            ),
        }
    }
    ensure_suite_packages()?;
    if !skip_checks {
        for check in CHECKS {
            util::run(util::cargo_command().args(*check).current_dir(util::root()))?;
        }
    }
    let checks_time = t0.elapsed();
    let cluster = Cluster::from_env()?;
    let t_up = Instant::now();
    let outcome = cluster.up()?;
    let up_time = t_up.elapsed();
    eprintln!(
        "integration: cluster {outcome:?} in {:.1}s",
        up_time.as_secs_f64()
    );

    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut failed = Vec::new();
    let mut timings = Vec::new();
    let mut counts = TestCounts::default();
    for suite in SUITES {
        let t = Instant::now();
        let mut argv: Vec<&str> = suite.to_vec();
        argv.extend(&extra);
        let result = run_counted(&mut suite_command(&cluster, &argv), &mut counts);
        timings.push((argv.join(" "), t.elapsed()));
        if let Err(e) = result {
            failed.push(format!("{e:#}"));
        }
    }

    let t_down = Instant::now();
    if outcome != UpOutcome::AlreadyUp {
        cluster
            .down()
            .context("stopping the cluster this run started")?;
        eprintln!(
            "integration: cluster down in {:.1}s",
            t_down.elapsed().as_secs_f64()
        );
    } else {
        eprintln!("integration: leaving the cluster up (it was up before)");
    }
    eprintln!("integration: checks {:.1}s", checks_time.as_secs_f64());
    eprintln!("integration: cluster up {:.1}s", up_time.as_secs_f64());
    for (suite, d) in &timings {
        eprintln!("integration: cargo {suite}: {:.1}s", d.as_secs_f64());
    }
    eprintln!(
        "integration: {} tests passed, {} failed, {} ignored; total {:.1}s",
        counts.passed,
        counts.failed,
        counts.ignored,
        t0.elapsed().as_secs_f64()
    );
    for name in &counts.failed_tests {
        eprintln!("integration: failed: {name}");
    }
    if !failed.is_empty() {
        bail!("integration suites failed:\n{}", failed.join("\n"));
    }
    Ok(())
}

/// `cargo xtask codegen`.
pub fn codegen(args: &[String]) -> Result<()> {
    codegen::run(args)
}
