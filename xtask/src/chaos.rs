//! `cargo xtask chaos [--kills N] [--seed S]`: the SIGKILL chaos test
//! (`tests/tests/e2e_ceph_chaos.rs`) alone, for long runs. Like `cargo xtask integration` it
//! brings the real cluster up if needed (and down again if it started it); it runs the test with
//! `CEPHVOL_CHAOS_KILLS=N` (default 20) and `CEPHVOL_INTEGRATION=1`, shows its output as it comes
//! and repeats the test's figures (its `chaos:` lines: seed, kills, objects, time to converge
//! after each restart, maximum) at the end.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::ceph::{ensure_suite_packages, suite, suite_command, Cluster, UpOutcome};

/// Kills of a run without `--kills`.
const DEFAULT_KILLS: u32 = 20;

/// `cargo xtask chaos [--kills N] [--seed S]`.
pub fn run(args: &[String]) -> Result<()> {
    let t0 = Instant::now();
    let mut kills = DEFAULT_KILLS;
    let mut seed: Option<u64> = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .with_context(|| format!("cargo xtask chaos: {name} needs a value"))
        };
        match flag.as_str() {
            "--kills" => kills = value("--kills")?.parse().context("--kills: a number")?,
            "--seed" => seed = Some(value("--seed")?.parse().context("--seed: a number")?),
            other => bail!("cargo xtask chaos: unknown flag {other:?} (--kills N, --seed S)"),
        }
    }
    ensure_suite_packages()?;
    let cluster = Cluster::from_env()?;
    let outcome = cluster.up()?;
    eprintln!("chaos: cluster {outcome:?}");

    let mut argv = suite("e2e_ceph_chaos")
        .context("the chaos test is one of the integration suites")?
        .to_vec();
    argv.push("--nocapture");
    let mut cmd = suite_command(&cluster, &argv);
    cmd.env("CEPHVOL_CHAOS_KILLS", kills.to_string())
        .stderr(Stdio::piped());
    if let Some(seed) = seed {
        cmd.env("CEPHVOL_CHAOS_SEED", seed.to_string());
    }
    eprintln!("xtask: {cmd:?}");
    let mut child = cmd.spawn().context("starting the chaos test")?;
    let mut figures = Vec::new();
    for line in BufReader::new(child.stderr.take().context("stderr")?).lines() {
        let line = line.context("reading the test's output")?;
        eprintln!("{line}");
        if line.starts_with("chaos:") {
            figures.push(line);
        }
    }
    let status = child.wait().context("waiting for the chaos test")?;

    if outcome != UpOutcome::AlreadyUp {
        cluster
            .down()
            .context("stopping the cluster this run started")?;
    }
    eprintln!("---- chaos figures ({kills} kills requested)");
    for line in &figures {
        eprintln!("{line}");
    }
    eprintln!("chaos: xtask total {:.1}s", t0.elapsed().as_secs_f64());
    if !status.success() {
        bail!("the chaos test failed ({status}); the seed above replays it (--seed)");
    }
    Ok(())
}
