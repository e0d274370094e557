//! `cargo xtask test [--long]`: the project's whole test command (what CI runs).
//!
//! It installs what it needs on a fresh machine (Debian packages, `cargo-machete`, the Python gRPC
//! client's virtualenv in `target/venv`), then runs the
//! fmt check, the unused-dependency check, clippy with warnings denied (default features, then with
//! every member's `ceph` feature, read from `cargo metadata`), and every workspace test. cargo
//! test's output is streamed as it comes and read on the way to add up the `test result:` lines of
//! all test binaries, so the command ends by saying how many tests ran.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::util::{cargo, cargo_command, ensure_debian_packages, root, run as run_cmd};
use crate::workspace::Workspace;

/// Debian packages the test suites need: a real OCI registry for the populate tests, and the
/// librbd/librados development files that the `ceph` crate's test binaries link against.
/// `make` builds jemalloc, the daemon binary's allocator (`tikv-jemalloc-sys`).
const TEST_PACKAGES: &[&str] = &["docker-registry", "librbd-dev", "librados-dev", "make"];

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

/// What the `test result:` lines of cargo test's binaries add up to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct TestCounts {
    passed: u64,
    failed: u64,
    ignored: u64,
    binaries: u64,
}

impl TestCounts {
    /// Adds one line of test output if it is a libtest summary, e.g.
    /// `test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s`.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result:") else {
            return;
        };
        self.binaries += 1;
        for part in rest.split(['.', ';']) {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else {
                continue;
            };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Runs `cargo ARGS` (a `cargo test`), passing its standard output through as it comes while
/// adding its `test result:` lines to `counts`; fails if cargo fails.
fn cargo_test_counted(args: &[&str], counts: &mut TestCounts) -> Result<()> {
    let mut cmd = cargo_command();
    cmd.args(args).current_dir(root()).stdout(Stdio::piped());
    eprintln!("xtask: {cmd:?}");
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let mut out = child.stdout.take().context("child stdout is piped")?;
    let mut stdout = std::io::stdout();
    let mut buf = [0u8; 8192];
    let mut line = Vec::new();
    loop {
        let n = out.read(&mut buf).context("reading cargo test output")?;
        if n == 0 {
            break;
        }
        // Pass bytes on at once (a test's `... ok` may come long after its name).
        stdout.write_all(&buf[..n])?;
        stdout.flush()?;
        for &b in &buf[..n] {
            if b == b'\n' {
                counts.add_line(&String::from_utf8_lossy(&line));
                line.clear();
            } else {
                line.push(b);
            }
        }
    }
    counts.add_line(&String::from_utf8_lossy(&line));
    let status = child
        .wait()
        .with_context(|| format!("waiting for {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::TestCounts;

    #[test]
    fn test_result_lines_add_up_passed_failed_and_ignored_counts() {
        let mut c = TestCounts::default();
        for line in [
            "running 3 tests",
            "test a ... ok",
            "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "",
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 5 filtered out; finished in 1.50s",
            "   Doc-tests store",
        ] {
            c.add_line(line);
        }
        assert_eq!(
            c,
            TestCounts {
                passed: 15,
                failed: 2,
                ignored: 1,
                binaries: 2
            }
        );
    }
}
