//! `cargo xtask test [--long]`: the project's whole test command (what CI runs).

use anyhow::Result;

use crate::util::{cargo, ensure_debian_packages};

/// Debian packages the test suites need: a real OCI registry for the populate tests, and the
/// librbd/librados development files that the `ceph` crate's test binaries link against.
const TEST_PACKAGES: &[&str] = &["docker-registry", "librbd-dev", "librados-dev"];

/// Installs what the tests need, then runs fmt check, clippy (warnings denied) and every workspace
/// test, property tests at 1,000 cases (`--long`: 10,000) unless `PROPTEST_CASES` is set.
pub fn run(args: &[String]) -> Result<()> {
    let long = args.iter().any(|a| a == "--long");
    let cases = if long { "10000" } else { "1000" };
    let cases = std::env::var("PROPTEST_CASES").unwrap_or_else(|_| cases.to_string());
    std::env::set_var("PROPTEST_CASES", &cases);
    ensure_debian_packages(TEST_PACKAGES)?;
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // Benches are compiled by clippy above and run by `cargo xtask bench --quick`; not here.
    cargo(&[
        "test",
        "--workspace",
        "--lib",
        "--bins",
        "--tests",
        "--examples",
    ])?;
    cargo(&["test", "--workspace", "--doc"])?;
    eprintln!("xtask: all tests passed (PROPTEST_CASES={cases})");
    Ok(())
}
