//! `cargo xtask bench [NAME...] [--quick] [--json PATH]`: every benchmark of the project, one line
//! per figure (`name ours reference ratio`), then a summary table with the units.
//!
//! Two programs hold the figures:
//! * the runner's own bench (`cargo bench -p runner --bench runner`): figure `runner`;
//! * `cephvol-bench` (crates/bench): `populate`, `responsiveness`, `fairness`, `store`,
//!   `ceph`, `rss`. It is built in release mode with the other binaries of the crate (the `rss`
//!   figure starts the real `cephvol` daemon next to it), with `--features ceph` when
//!   `cargo xtask ceph status` says a cluster is up and that feature builds; the cluster's
//!   `cargo xtask ceph env` variables are passed on. Otherwise the Ceph figures print one
//!   "skipped" line saying why.
//!
//! Without NAME everything runs. `--quick` shrinks every figure (CI runs it so the bench code
//! never rots; nothing about timing is asserted). `--json PATH` writes every figure as
//! `{"figures":[{"name","ours","reference","ratio","unit","note"}]}`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::util;

/// Figures of `cephvol-bench` (kept in sync with its `FIGURES`).
const BIN_FIGURES: &[&str] = &[
    "populate",
    "responsiveness",
    "fairness",
    "store",
    "ceph",
    "rss",
];
/// Figures that need the Ceph cluster, or (`rss`) are measured on the Ceph build: when they run
/// and a cluster is up, the build gets `--features ceph`.
const CEPH_FIGURES: &[&str] = &["store", "ceph", "rss"];

const NO_CLUSTER: &str = "no Ceph cluster up (cargo xtask ceph up)";

struct Args {
    names: Vec<String>,
    quick: bool,
    json: Option<PathBuf>,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut out = Args {
        names: Vec::new(),
        quick: false,
        json: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--" => {}
            "--quick" => out.quick = true,
            "--json" => out.json = Some(PathBuf::from(it.next().context("--json needs a path")?)),
            s if s.starts_with('-') => bail!("unknown option {s}\n{}", usage()),
            s if s == "runner" || BIN_FIGURES.contains(&s) => out.names.push(s.to_string()),
            s => bail!("unknown figure {s:?}\n{}", usage()),
        }
    }
    Ok(out)
}

fn usage() -> String {
    format!(
        "usage: cargo xtask bench [NAME...] [--quick] [--json PATH]\nfigures: runner {}",
        BIN_FIGURES.join(" ")
    )
}

/// `cargo xtask bench ...`.
pub fn run(args: &[String]) -> Result<()> {
    let t0 = Instant::now();
    let args = parse(args)?;
    let wanted = |n: &str| args.names.is_empty() || args.names.iter().any(|x| x == n);
    let bin_names: Vec<&str> = BIN_FIGURES.iter().copied().filter(|n| wanted(n)).collect();
    let mut figures: Vec<Value> = Vec::new();
    let mut failures = Vec::new();
    let mut timings: Vec<(String, Duration)> = Vec::new();

    if wanted("runner") {
        let t = Instant::now();
        match runner_bench(args.quick) {
            Ok(mut f) => figures.append(&mut f),
            Err(e) => failures.push(format!("runner bench: {e:#}")),
        }
        timings.push(("runner bench (build + run)".into(), t.elapsed()));
    }

    if !bin_names.is_empty() {
        let t = Instant::now();
        let ceph = if bin_names.iter().any(|n| CEPH_FIGURES.contains(n)) {
            ceph_setup()?
        } else {
            CephSetup::Skip("not requested".into())
        };
        let ceph = build(ceph)?;
        timings.push((
            "build cephvol + cephvol-bench (release)".into(),
            t.elapsed(),
        ));
        let t = Instant::now();
        match bin_bench(&bin_names, &args, &ceph) {
            Ok(mut f) => figures.append(&mut f),
            Err(e) => failures.push(format!("cephvol-bench: {e:#}")),
        }
        timings.push(("cephvol-bench run".into(), t.elapsed()));
    }

    summary(&figures);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&json!({ "figures": figures }))?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    for (what, d) in &timings {
        eprintln!("bench: {what}: {:.1} s", d.as_secs_f64());
    }
    eprintln!("bench: total {:.1} s", t0.elapsed().as_secs_f64());
    if !failures.is_empty() {
        bail!("benchmarks failed:\n{}", failures.join("\n"));
    }
    Ok(())
}

/// Whether the Ceph figures can run.
enum CephSetup {
    /// Cluster up: build with `--features ceph` and pass these variables.
    Use(Vec<(String, String)>),
    /// Skipped, with the reason.
    Skip(String),
}

/// `cargo xtask ceph status` (this executable) exiting 0 means a cluster is up.
fn ceph_setup() -> Result<CephSetup> {
    let me = std::env::current_exe().context("locating xtask")?;
    let up = Command::new(me)
        .args(["ceph", "status"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !up {
        return Ok(CephSetup::Skip(NO_CLUSTER.into()));
    }
    let cluster = crate::ceph::Cluster::from_env()?;
    Ok(CephSetup::Use(cluster.env_vars()))
}

/// Builds the crate's binaries in release mode (with `ceph` when usable); falls back to a build
/// without it when that feature does not compile here.
fn build(ceph: CephSetup) -> Result<CephSetup> {
    let base = [
        "build",
        "--release",
        "-p",
        "volumeprovider",
        "-p",
        "bench",
        "--bins",
    ];
    if let CephSetup::Use(env) = ceph {
        let mut argv = base.to_vec();
        argv.extend(["--features", "volumeprovider/ceph,bench/ceph"]);
        match util::cargo(&argv) {
            Ok(()) => return Ok(CephSetup::Use(env)),
            Err(e) => {
                eprintln!("bench: building with --features ceph failed ({e:#}); building without");
                util::cargo(&base)?;
                return Ok(CephSetup::Skip(
                    "the `ceph` feature does not build here (see the build error above)".into(),
                ));
            }
        }
    }
    util::cargo(&base)?;
    Ok(ceph)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| util::root().join("target"))
}

/// Runs `cephvol-bench` and returns its figures (read back from its `--json`).
fn bin_bench(names: &[&str], args: &Args, ceph: &CephSetup) -> Result<Vec<Value>> {
    let release = target_dir().join("release");
    let json_path = release.join(format!("cephvol-bench-{}.json", std::process::id()));
    let mut cmd = Command::new(release.join("cephvol-bench"));
    cmd.args(names).arg("--json").arg(&json_path);
    if args.quick {
        cmd.arg("--quick");
    }
    cmd.env("CEPHVOL_BIN", release.join("cephvol"));
    match ceph {
        CephSetup::Use(env) => {
            cmd.envs(env.iter().map(|(k, v)| (k, v)));
        }
        CephSetup::Skip(reason) => {
            for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("CEPH_")) {
                cmd.env_remove(k);
            }
            cmd.env("CEPHVOL_BENCH_CEPH_SKIP", reason);
        }
    }
    cmd.current_dir(util::root());
    let run = util::run(&mut cmd);
    let figures = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v.get("figures").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    let _ = std::fs::remove_file(&json_path);
    run?;
    Ok(figures)
}

/// Runs the runner's bench, echoing its output, and parses its `name ours reference ratio` lines.
fn runner_bench(quick: bool) -> Result<Vec<Value>> {
    let mut cmd = crate::util::cargo_command();
    cmd.args(["bench", "-p", "runner", "--bench", "runner", "--"]);
    if quick {
        cmd.arg("--quick");
    }
    cmd.current_dir(util::root()).stdout(Stdio::piped());
    eprintln!("xtask: {cmd:?}");
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let stdout = child.stdout.take().context("runner bench stdout")?;
    let mut figures = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading the runner bench output")?;
        println!("{line}");
        if let Some(f) = parse_line(&line) {
            figures.push(f);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    if figures.is_empty() {
        bail!("the runner bench printed no figure lines");
    }
    Ok(figures)
}

/// `name ours reference ratio` → a figure (unit from the runner bench's naming).
fn parse_line(line: &str) -> Option<Value> {
    let parts: Vec<&str> = line.split_whitespace().collect();
    let [name, ours, reference, ratio] = parts.as_slice() else {
        return None;
    };
    let (ours, reference, ratio): (f64, f64, f64) = (
        ours.parse().ok()?,
        reference.parse().ok()?,
        ratio.parse().ok()?,
    );
    let (unit, note) = if name.ends_with("_ns") {
        (
            "ns per op; target ratio <= 3",
            "runner submit→complete vs bare tokio::spawn + await",
        )
    } else if name.contains("bytes_per") {
        (
            "bytes per key; target < 1024",
            "live heap per waiting runner key vs a parked spawned task holding the same key",
        )
    } else {
        ("", "runner bench")
    };
    Some(json!({
        "name": name, "ours": ours, "reference": reference, "ratio": ratio,
        "unit": unit, "note": note,
    }))
}

fn summary(figures: &[Value]) {
    if figures.is_empty() {
        return;
    }
    let width = figures
        .iter()
        .filter_map(|f| f["name"].as_str().map(str::len))
        .max()
        .unwrap_or(10);
    println!();
    println!(
        "{:<width$} {:>12} {:>12} {:>8}  unit",
        "figure", "ours", "reference", "ratio"
    );
    for f in figures {
        println!(
            "{:<width$} {:>12.1} {:>12.1} {:>8.2}  {}",
            f["name"].as_str().unwrap_or("?"),
            f["ours"].as_f64().unwrap_or(f64::NAN),
            f["reference"].as_f64().unwrap_or(f64::NAN),
            f["ratio"].as_f64().unwrap_or(f64::NAN),
            f["unit"].as_str().unwrap_or(""),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figure_lines_of_the_runner_bench_are_parsed_with_their_unit() {
        let f = parse_line("submit_complete_1_key_ns 812.3 402.1 2.02").expect("a figure");
        assert_eq!(f["name"], "submit_complete_1_key_ns");
        assert_eq!(f["ours"], 812.3);
        assert!(f["unit"].as_str().expect("unit").starts_with("ns per op"));
        let f = parse_line("bytes_per_waiting_key 300.0 500.0 0.60").expect("a figure");
        assert!(f["unit"].as_str().expect("unit").starts_with("bytes"));
    }

    #[test]
    fn other_lines_of_the_runner_bench_are_ignored() {
        assert!(parse_line("running 3 benchmarks").is_none());
        assert!(parse_line("a b c d").is_none());
        assert!(parse_line("").is_none());
    }

    #[test]
    fn unknown_figures_and_options_are_refused() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(parse(&args(&["nope"])).is_err());
        assert!(parse(&args(&["--fast"])).is_err());
        let a = parse(&args(&["runner", "rss", "--quick", "--json", "x.json"])).expect("valid");
        assert_eq!(a.names, ["runner", "rss"]);
        assert!(a.quick);
        assert_eq!(a.json, Some(PathBuf::from("x.json")));
    }
}
