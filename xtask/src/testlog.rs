//! Reading libtest's output on its way through: the `test result:` lines of every test binary add
//! up to the counts a command ends with, and the `test NAME ... FAILED` lines name the tests to
//! repeat in the last lines it prints (where a log that keeps only its head and tail shows them).
//!
//! It owns no process policy: callers build the command (arguments, environment) and decide what a
//! failure means.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::util::{cargo_command, root};

/// What the test binaries of one or more cargo test runs reported.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TestCounts {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    pub binaries: u64,
    /// The tests reported `FAILED`, in the order they ended.
    pub failed_tests: Vec<String>,
}

impl TestCounts {
    /// Adds one line of test output if it is a libtest summary, e.g.
    /// `test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s`,
    /// or the end of a failed test, `test some::name ... FAILED`.
    pub fn add_line(&mut self, line: &str) {
        let line = line.trim();
        if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.strip_suffix(" ... FAILED"))
        {
            self.failed_tests.push(name.trim().to_string());
            return;
        }
        let Some(rest) = line.strip_prefix("test result:") else {
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

/// Runs `cargo ARGS` (a `cargo test`) in the workspace root; see [`run_counted`].
pub fn cargo_test_counted(args: &[&str], counts: &mut TestCounts) -> Result<()> {
    let mut cmd = cargo_command();
    cmd.args(args).current_dir(root());
    run_counted(&mut cmd, counts)
}

/// Runs a test command, passing its standard output through as it comes while adding its lines to
/// `counts`; fails if the command fails, naming the tests it reported failed.
pub fn run_counted(cmd: &mut Command, counts: &mut TestCounts) -> Result<()> {
    cmd.stdout(Stdio::piped());
    eprintln!("xtask: {cmd:?}");
    let failed_before = counts.failed_tests.len();
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let mut out = child.stdout.take().context("child stdout is piped")?;
    let mut stdout = std::io::stdout();
    let mut buf = [0u8; 8192];
    let mut line = Vec::new();
    loop {
        let n = out.read(&mut buf).context("reading test output")?;
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
        let failed = &counts.failed_tests[failed_before..];
        if failed.is_empty() {
            bail!("{cmd:?} failed: {status}");
        }
        bail!(
            "{cmd:?} failed: {status}; failed tests: {}",
            failed.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::TestCounts;

    #[test]
    fn test_result_lines_add_up_counts_and_failed_lines_name_the_tests() {
        let mut c = TestCounts::default();
        for line in [
            "running 3 tests",
            "test a ... ok",
            "test crash::a_volume_survives ... FAILED",
            "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "",
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 5 filtered out; finished in 1.50s",
            "   Doc-tests store",
            "test src/lib.rs - Store (line 12) ... FAILED",
        ] {
            c.add_line(line);
        }
        assert_eq!(
            c,
            TestCounts {
                passed: 15,
                failed: 2,
                ignored: 1,
                binaries: 2,
                failed_tests: vec![
                    "crash::a_volume_survives".to_string(),
                    "src/lib.rs - Store (line 12)".to_string()
                ],
            }
        );
    }
}
