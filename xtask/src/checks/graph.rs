//! Crate boundaries, read from the dependency graph. Only normal dependencies count:
//! dev-dependencies (tests, fakes, fixtures) may cross any boundary.
//!
//! Two sources, each for what it can answer exactly:
//! * Direct declarations (who names whom in `Cargo.toml`, of which kind) come from
//!   `cargo metadata --no-deps`.
//! * What a crate pulls in transitively, and with which features, comes from
//!   `cargo tree -p <crate> -e normal --all-features` ([`Workspace::normal_graph`]).
//!   `cargo metadata`'s resolve unifies features over the whole workspace, so the daemon's
//!   `tonic/server` would show up under every crate that uses tonic; `cargo tree -p` resolves
//!   the crate alone, as `cargo build -p` does, and with `-e normal` dev-dependencies neither
//!   appear nor turn features on. `--all-features` turns on all of the crate's own optional
//!   features, so a boundary holds however the crate is built.

use std::collections::BTreeSet;

use super::{assert_no_offenders, member, rel, workspace};
use crate::workspace::{Member, ResolvedPackage, Workspace};

/// Crates below the daemon: they never reach Ceph, the reconcilers, the daemon or a gRPC server.
const LOWER_CRATES: &[&str] = &["oci", "iri", "runner", "store", "rbd"];

/// Workspace crates the lower crates never depend on.
const UPPER_CRATES: &[&str] = &["ceph", "controllers", "volumeprovider"];

/// The crates.io packages `runner` may depend on.
const RUNNER_DEPENDENCIES: &[&str] = &["tokio", "tokio-util", "futures", "thiserror", "tracing"];

/// Whether `p` with its resolved features is gRPC/HTTP server code: tonic's `server`, `router` or
/// `transport` features, hyper's `server`, or hyper-util's `server*` features.
fn server_features(p: &ResolvedPackage) -> Vec<String> {
    let is_server = |f: &str| match p.name.as_str() {
        "tonic" => matches!(f, "server" | "router" | "transport"),
        "hyper" => f == "server",
        "hyper-util" => f.starts_with("server"),
        _ => false,
    };
    p.features
        .iter()
        .filter(|f| is_server(f))
        .map(|f| format!("{}/{f}", p.name))
        .collect()
}

/// The workspace member a resolved package is, if it is one.
fn as_member<'a>(ws: &'a Workspace, p: &ResolvedPackage) -> Option<&'a Member> {
    p.path.as_deref().and_then(|dir| ws.member_at(dir))
}

/// The members in `name`'s normal dependency graph, `name` itself left out.
fn member_dependencies(name: &str) -> BTreeSet<String> {
    member(name);
    let ws = workspace();
    ws.normal_graph(name)
        .unwrap_or_else(|e| panic!("cargo tree -p {name}: {e:#}"))
        .iter()
        .filter_map(|p| as_member(ws, p))
        .map(|m| m.name.clone())
        .filter(|n| n != name)
        .collect()
}

#[test]
fn crates_below_the_daemon_never_pull_in_ceph_controllers_the_daemon_or_a_grpc_server() {
    let ws = workspace();
    let mut offenders = Vec::new();
    for &name in LOWER_CRATES {
        member(name);
        let graph = ws
            .normal_graph(name)
            .unwrap_or_else(|e| panic!("cargo tree -p {name}: {e:#}"));
        for p in &graph {
            if let Some(m) = as_member(ws, p) {
                if m.name != name && UPPER_CRATES.contains(&m.name.as_str()) {
                    offenders.push(format!("{name} -> {}", m.name));
                }
            }
            for f in server_features(p) {
                offenders.push(format!(
                    "{name} -> {} {} with feature {f}",
                    p.name, p.version
                ));
            }
        }
    }
    assert_no_offenders(
        &format!(
            "{LOWER_CRATES:?} must not depend (normal, transitively) on {UPPER_CRATES:?} or gRPC server code"
        ),
        &offenders,
    );
}

#[test]
fn the_runner_depends_only_on_tokio_tokio_util_futures_thiserror_and_tracing() {
    let runner = member("runner");
    let offenders: Vec<String> = runner
        .dependencies
        .iter()
        .filter(|d| d.is_normal() && !RUNNER_DEPENDENCIES.contains(&d.name.as_str()))
        .map(|d| d.name.clone())
        .collect();
    assert_no_offenders(
        &format!(
            "{}: runner's normal dependencies must be among {RUNNER_DEPENDENCIES:?}",
            rel(&runner.manifest)
        ),
        &offenders,
    );
}

#[test]
fn oci_depends_on_no_other_workspace_crate() {
    let offenders: Vec<String> = member_dependencies("oci").into_iter().collect();
    assert_no_offenders(
        "oci must not depend (normal, transitively) on any workspace crate",
        &offenders,
    );
}

#[test]
fn rbd_does_not_depend_on_store() {
    let offenders: Vec<String> = member_dependencies("rbd")
        .into_iter()
        .filter(|m| m == "store")
        .collect();
    assert_no_offenders(
        "rbd must not depend (normal, transitively) on store",
        &offenders,
    );
}

#[test]
fn rbd_testkit_is_only_a_dev_dependency_or_a_dependency_of_bench() {
    let ws = workspace();
    let testkit = member("rbd-testkit");
    let bench = member("bench");
    let mut offenders = Vec::new();
    for m in &ws.members {
        for d in &m.dependencies {
            let is_testkit = d.path.as_deref() == Some(testkit.dir.as_path());
            if is_testkit && d.kind.as_deref() != Some("dev") && m.name != bench.name {
                let kind = d.kind.as_deref().unwrap_or("normal");
                offenders.push(format!("{} ({kind} dependency)", m.name));
            }
        }
    }
    assert_no_offenders(
        "rbd-testkit may only be a dev-dependency (or a dependency of bench)",
        &offenders,
    );
}

#[test]
fn nothing_depends_on_xtask_or_bench() {
    let ws = workspace();
    let leaves = [member("xtask"), member("bench")];
    let mut offenders = Vec::new();
    for m in &ws.members {
        for d in &m.dependencies {
            if let Some(leaf) = leaves
                .iter()
                .find(|l| d.path.as_deref() == Some(l.dir.as_path()))
            {
                let kind = d.kind.as_deref().unwrap_or("normal");
                offenders.push(format!("{} -> {} ({kind})", m.name, leaf.name));
            }
        }
    }
    assert_no_offenders(
        "xtask and bench are leaves: no crate may depend on them",
        &offenders,
    );
}

#[test]
fn server_features_are_recognised_by_package_and_feature_name() {
    let pkg = |name: &str, features: &[&str]| ResolvedPackage {
        name: name.to_string(),
        version: "v1.0.0".to_string(),
        path: None,
        features: features.iter().map(|f| f.to_string()).collect(),
    };
    assert_eq!(
        server_features(&pkg("tonic", &["codegen", "channel", "server", "router"])),
        ["tonic/router", "tonic/server"]
    );
    assert_eq!(
        server_features(&pkg("hyper", &["client", "http1", "server"])),
        ["hyper/server"]
    );
    assert_eq!(
        server_features(&pkg("hyper-util", &["client", "server-auto"])),
        ["hyper-util/server-auto"]
    );
    assert!(server_features(&pkg("reqwest", &["server"])).is_empty());
}

/// The daemon builds and runs without Ceph's libraries: only its `ceph` feature links them.
#[test]
fn the_default_daemon_build_does_not_link_ceph() {
    let ws = workspace();
    for daemon in ["volumeprovider", "cli"] {
        let graph = ws
            .default_graph(daemon)
            .unwrap_or_else(|e| panic!("cargo tree -p {daemon}: {e:#}"));
        let linked: Vec<String> = graph
            .iter()
            .filter(|p| p.name == "ceph" && as_member(ws, p).is_some())
            .map(|p| format!("{daemon} -> {} {}", p.name, p.version))
            .collect();
        assert!(linked.is_empty(), "{linked:?}");
    }
}
