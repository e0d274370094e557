//! Checks over the members' `Cargo.toml` lint tables: `unsafe_code = "forbid"` comes from the
//! workspace lints, which every member but `ceph` inherits (`[lints] workspace = true`); `ceph`
//! has its own table that allows `unsafe` and keeps every other workspace lint at least as strict.
//!
//! `cargo metadata` does not report lints, so the manifests are parsed with the `toml` crate.

use super::{assert_no_offenders, member, read, rel, workspace};

/// The crate that may use `unsafe`.
const CEPH: &str = "ceph";

fn manifest(path: &std::path::Path) -> toml::Table {
    read(path)
        .parse()
        .unwrap_or_else(|e| panic!("{} is not valid TOML: {e}", path.display()))
}

/// The level of a lint entry: `"warn"` or `{ level = "warn", priority = -1 }`.
fn level(entry: &toml::Value) -> Option<&str> {
    entry
        .as_str()
        .or_else(|| entry.get("level").and_then(toml::Value::as_str))
}

/// Orders lint levels from lax to strict.
fn strictness(level: &str) -> u8 {
    match level {
        "allow" => 0,
        "expect" => 1,
        "warn" => 2,
        "deny" => 3,
        "forbid" => 4,
        _ => 0,
    }
}

/// `[workspace.lints]` of the root manifest.
fn workspace_lints() -> toml::Table {
    let root = manifest(&workspace().root.join("Cargo.toml"));
    root.get("workspace")
        .and_then(|w| w.get("lints"))
        .and_then(toml::Value::as_table)
        .cloned()
        .expect("the workspace manifest has a [workspace.lints] table")
}

#[test]
fn the_workspace_lints_forbid_unsafe_code() {
    let lints = workspace_lints();
    let unsafe_code = lints
        .get("rust")
        .and_then(|r| r.get("unsafe_code"))
        .and_then(level);
    assert_eq!(
        unsafe_code,
        Some("forbid"),
        "[workspace.lints.rust] must set unsafe_code = \"forbid\""
    );
}

#[test]
fn every_crate_but_ceph_inherits_the_workspace_lints() {
    let mut offenders = Vec::new();
    for m in workspace().members.iter().filter(|m| m.name != CEPH) {
        let lints = manifest(&m.manifest).get("lints").cloned();
        let inherits = lints
            .as_ref()
            .and_then(|l| l.get("workspace"))
            .and_then(toml::Value::as_bool)
            == Some(true);
        if !inherits {
            offenders.push(format!(
                "{}: needs `[lints] workspace = true`",
                rel(&m.manifest)
            ));
        }
    }
    assert_no_offenders(
        "members that do not inherit the workspace lints (unsafe_code = \"forbid\")",
        &offenders,
    );
}

#[test]
fn the_ceph_crate_allows_unsafe_and_keeps_every_other_workspace_lint() {
    let ceph = member(CEPH);
    let own = manifest(&ceph.manifest)
        .get("lints")
        .and_then(toml::Value::as_table)
        .cloned()
        .unwrap_or_else(|| panic!("{} has no [lints] table", rel(&ceph.manifest)));
    let mut offenders = Vec::new();
    if own.get("workspace").and_then(toml::Value::as_bool) == Some(true) {
        offenders.push("inherits the workspace lints, which forbid unsafe code".to_string());
    }
    let unsafe_code = own
        .get("rust")
        .and_then(|r| r.get("unsafe_code"))
        .and_then(level);
    if unsafe_code != Some("allow") {
        offenders.push(format!(
            "[lints.rust] unsafe_code is {unsafe_code:?}, must be \"allow\" (FFI)"
        ));
    }
    for (tool, table) in workspace_lints() {
        let Some(table) = table.as_table() else {
            continue;
        };
        for (lint, entry) in table {
            if tool == "rust" && lint == "unsafe_code" {
                continue;
            }
            let wanted = level(entry).unwrap_or("allow");
            let have = own.get(&tool).and_then(|t| t.get(lint)).and_then(level);
            if have.is_none_or(|h| strictness(h) < strictness(wanted)) {
                offenders.push(format!(
                    "[lints.{tool}] {lint} is {have:?}, the workspace has \"{wanted}\""
                ));
            }
        }
    }
    assert_no_offenders(
        &format!("{}: the ceph crate's own lint table", rel(&ceph.manifest)),
        &offenders,
    );
}
