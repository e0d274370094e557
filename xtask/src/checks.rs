//! House checks: invariants no compiler checks, run as ordinary tests (`cargo test -p xtask`, part
//! of `cargo xtask test`). This module and its children are compiled for tests only.
//!
//! Which crates exist is read from `cargo metadata` ([`crate::workspace`]), never listed here; the
//! checks name crates only where the invariant itself is about a named crate (`ceph`, `runner`, ...).
//! Each check collects every offender before failing, so one run lists all that needs fixing.
//!
//! * [`sources`]: every Rust file documents itself (`//!`), no debugging leftovers, only the `ceph`
//!   crate writes `unsafe` or links or loads librbd/librados and each of its `unsafe` blocks says why it is
//!   sound, no source file over [`sources::MAX_LINES`] lines without a `// size: <reason>` comment.
//! * [`manifests`]: every member but `ceph` inherits the workspace lints (`unsafe_code = "forbid"`);
//!   `ceph` keeps them all except that one.
//! * [`graph`]: crate boundaries in the dependency graph (normal dependencies; dev-dependencies are
//!   free), e.g. the crates below the daemon never pull in `ceph`, the reconcilers or a gRPC server.
//! * [`docs`]: README's first screen shows the run and test commands; ARCHITECTURE.md's crate table
//!   names every member and each of its invariants names the test that enforces it.
//!
//! Unused dependencies are not checked here but by `cargo machete` in `cargo xtask test`
//! (`crate::test`): it is maintained, knows the corner cases (renamed crates, macros), and
//! installing it needs the network, which a unit test must not.
//!
//! The source checks read files as text line by line rather than parsing Rust: the compiler and
//! clippy enforce the same rules where they can (`forbid(unsafe_code)`, `dbg_macro`, `todo`,
//! `undocumented_unsafe_blocks`), and these scans catch what lints cannot (a lint table changed, a
//! `#[link]` attribute, a file grown too long) or say it with the whole list at once.

mod docs;
mod graph;
mod manifests;
mod sources;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::util::root;
use crate::workspace::{Member, Workspace};

/// The workspace, read once per test binary.
fn workspace() -> &'static Workspace {
    static WS: OnceLock<Workspace> = OnceLock::new();
    WS.get_or_init(|| Workspace::load(&root()).expect("cargo metadata describes the workspace"))
}

/// The member called `name`; the invariant being checked is about it, so it must exist.
fn member(name: &str) -> &'static Member {
    workspace()
        .member(name)
        .unwrap_or_else(|| panic!("the workspace has no member `{name}` (cargo metadata)"))
}

/// Every `.rs` file under `dir`, skipping target and hidden directories, and with
/// `skip_nested_packages` the packages nested below `dir` (directories with their own `Cargo.toml`).
fn rust_files(dir: &Path, skip_nested_packages: bool) -> Vec<PathBuf> {
    let ws = workspace();
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if p.is_dir() {
                let skip = name == "target"
                    || name.starts_with('.')
                    || p == ws.target_dir
                    || (skip_nested_packages && p.join("Cargo.toml").exists());
                if !skip {
                    stack.push(p);
                }
            } else if name.ends_with(".rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Every `.rs` file of a member (its sources, tests, benches, examples, build script).
fn member_files(m: &Member) -> Vec<PathBuf> {
    rust_files(&m.dir, true)
}

/// `path` relative to the workspace root, for messages.
fn rel(path: &Path) -> String {
    path.strip_prefix(&workspace().root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The text of a file the check needs.
fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Fails with every offender, one a line, under `what`.
fn assert_no_offenders(what: &str, offenders: &[String]) {
    assert!(
        offenders.is_empty(),
        "{what} ({} offender(s)):\n  {}",
        offenders.len(),
        offenders.join("\n  ")
    );
}
