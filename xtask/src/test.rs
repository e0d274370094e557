//! `cargo xtask test [--long]`: the project's whole test command (what CI runs).
//!
//! It installs what it needs on a fresh machine (Debian packages, `cargo-machete`, the Python gRPC
//! client's virtualenv in `target/venv`), then runs the
//! fmt check, the unused-dependency check, clippy with warnings denied (default features, then with
//! every member's `ceph` feature, read from `cargo metadata`), and every workspace test. cargo
//! test's output is streamed as it comes and read on the way to add up the `test result:` lines of
//! all test binaries, so the command ends by saying how many tests ran.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::testlog::{cargo_test_counted, TestCounts};
use crate::util::{cargo, cargo_command, ensure_debian_packages, root, run as run_cmd};
use crate::workspace::Workspace;

/// Debian packages the test suites need: a real OCI registry for the populate tests, and the
/// librbd/librados runtime libraries that the `ceph` crate's tests load (building needs neither).
/// `make` builds jemalloc, the daemon binary's allocator (`tikv-jemalloc-sys`).
const TEST_PACKAGES: &[&str] = &["docker-registry", "librbd1", "librados2", "make"];

/// Installs what the tests need, then runs fmt check, `cargo machete`, clippy (warnings denied) and
/// every workspace test, property tests at 1,000 cases (`--long`: 10,000) unless `PROPTEST_CASES`
/// is set, and prints how many tests passed and were ignored.
pub fn run(args: &[String]) -> Result<()> {
    let long = args.iter().any(|a| a == "--long");
    let cases = if long { "10000" } else { "1000" };
    let cases = std::env::var("PROPTEST_CASES").unwrap_or_else(|_| cases.to_string());
    std::env::set_var("PROPTEST_CASES", &cases);
    ensure_debian_packages(TEST_PACKAGES)?;
    ensure_cargo_machete()?;
    // The Python gRPC client of tests/tests/e2e_python_client.rs must run here, not be skipped.
    let python = ensure_python_venv()?;
    std::env::set_var("CEPHVOL_PYTHON", &python);
    std::env::set_var("CEPHVOL_PYTHON_REQUIRED", "1");
    cargo(&["fmt", "--all", "--check"])?;
    // Declared dependencies that no source file of their crate uses.
    cargo(&["machete"])?;
    let clippy = ["clippy", "--workspace", "--all-targets"];
    cargo(&[&clippy[..], &["--", "-D", "warnings"]].concat())?;
    let ceph_features = Workspace::load(&root())?.ceph_features().join(",");
    if !ceph_features.is_empty() {
        cargo(
            &[
                &clippy[..],
                &["--features", &ceph_features, "--", "-D", "warnings"],
            ]
            .concat(),
        )?;
    }
    // Benches are compiled by clippy above and run by `cargo xtask bench --quick`; not here.
    let mut total = TestCounts::default();
    let unit = [
        "test",
        "--workspace",
        "--lib",
        "--bins",
        "--tests",
        "--examples",
    ];
    let result = cargo_test_counted(&unit, &mut total)
        .and_then(|()| cargo_test_counted(&["test", "--workspace", "--doc"], &mut total));
    eprintln!(
        "xtask: {} tests passed, {} failed, {} ignored, in {} test binaries (PROPTEST_CASES={cases})",
        total.passed, total.failed, total.ignored, total.binaries
    );
    for name in &total.failed_tests {
        eprintln!("xtask: failed: {name}");
    }
    result?;
    eprintln!("xtask: all tests passed");
    Ok(())
}

/// Installs `cargo-machete` (`cargo install --locked`) unless `cargo machete` already runs.
fn ensure_cargo_machete() -> Result<()> {
    let present = cargo_command()
        .args(["machete", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    cargo(&["install", "cargo-machete", "--locked"])
}

/// The Python client's packages, every one pinned.
const PYTHON_REQUIREMENTS: &str = "tests/python/requirements.txt";
/// The virtualenv they are installed into (under the workspace root).
const VENV: &str = "target/venv";
/// The copy of the requirements a virtualenv was made from, kept inside it.
const VENV_STAMP: &str = "cephvol-requirements.txt";

/// Makes `target/venv` hold exactly the packages of `tests/python/requirements.txt` and returns its
/// Python. Nothing is done when the copy of the requirements inside the virtualenv matches the
/// file. The virtualenv is made without pip and filled by the machine's pip (`pip --python`, pip
/// 22.3 and later): bootstrapping pip into it would take longer than installing the packages.
/// Where the machine's pip cannot do that, the virtualenv gets its own pip. pip's environment
/// (`PIP_FIND_LINKS`, a wheel cache, ...) applies as usual.
fn ensure_python_venv() -> Result<PathBuf> {
    let root = root();
    let venv = root.join(VENV);
    let python = venv.join("bin/python");
    let requirements_file = root.join(PYTHON_REQUIREMENTS);
    let requirements = std::fs::read_to_string(&requirements_file)
        .with_context(|| format!("reading {}", requirements_file.display()))?;
    let stamp = venv.join(VENV_STAMP);
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&requirements) {
        return Ok(python);
    }
    let started = Instant::now();
    let _ = std::fs::remove_file(&stamp);
    let pip_install = ["install", "--disable-pip-version-check", "--no-input", "-r"];
    let without_pip = run_cmd(
        Command::new("python3")
            .args(["-m", "venv", "--clear", "--without-pip"])
            .arg(&venv),
    )
    .and_then(|()| {
        run_cmd(
            Command::new("python3")
                .args(["-m", "pip", "--python"])
                .arg(&python)
                .args(pip_install)
                .arg(&requirements_file),
        )
    });
    if let Err(e) = without_pip {
        eprintln!("xtask: {e:#}; making the virtualenv with its own pip instead");
        run_cmd(
            Command::new("python3")
                .args(["-m", "venv", "--clear"])
                .arg(&venv),
        )?;
        run_cmd(
            Command::new(&python)
                .args(["-m", "pip"])
                .args(pip_install)
                .arg(&requirements_file),
        )?;
    }
    std::fs::write(&stamp, &requirements)
        .with_context(|| format!("writing {}", stamp.display()))?;
    eprintln!(
        "xtask: Python client virtualenv {} ready in {:.1}s",
        venv.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(python)
}
