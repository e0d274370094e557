//! The workspace as cargo sees it: members, their targets and declared dependencies (from
//! `cargo metadata --no-deps`), and the resolved dependency graph of one package (from `cargo tree`).
//!
//! Everything that needs to know which crates exist asks this module instead of listing them, so
//! that adding or renaming a crate needs no change in xtask. It only reads; it never builds.
//!
//! Why two sources: `cargo metadata` resolves features once for the whole workspace (a feature one
//! member turns on shows up for every other), so it cannot say what one crate pulls in on its own.
//! `cargo tree -p <crate>` resolves features as `cargo build -p <crate>` does, which is the question
//! the crate-boundary checks ask. The JSON is read with `serde_json` into the few fields used here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// A dependency as declared in a member's manifest.
#[derive(Debug, Clone)]
pub struct Dependency {
    /// The package name (not the `rename`).
    pub name: String,
    /// `None` for a normal dependency, `Some("dev")` or `Some("build")` otherwise.
    pub kind: Option<String>,
    /// Set for path dependencies: the directory of the depended-on package.
    pub path: Option<PathBuf>,
}

impl Dependency {
    /// A normal (not dev, not build) dependency.
    pub fn is_normal(&self) -> bool {
        self.kind.is_none()
    }
}

/// A build target of a member (library, binary, test, bench, example, build script).
#[derive(Debug, Clone)]
pub struct Target {
    /// Its kinds as cargo reports them (`lib`, `bin`, `test`, `bench`, `example`, `custom-build`, ...).
    pub kinds: Vec<String>,
    /// Its root source file.
    pub src_path: PathBuf,
}

/// A workspace member.
#[derive(Debug, Clone)]
pub struct Member {
    /// The package name.
    pub name: String,
    /// The directory holding its `Cargo.toml`.
    pub dir: PathBuf,
    /// Its `Cargo.toml`.
    pub manifest: PathBuf,
    /// Its targets.
    pub targets: Vec<Target>,
    /// Its declared dependencies, every kind.
    pub dependencies: Vec<Dependency>,
    /// The names of its cargo features.
    pub features: BTreeSet<String>,
    /// Its `links` manifest key (the native library it declares it links), if any.
    pub links: Option<String>,
}

/// The workspace: its root and members, in `cargo metadata` order.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// The directory of the workspace `Cargo.toml`.
    pub root: PathBuf,
    /// The target directory (never scanned for sources).
    pub target_dir: PathBuf,
    /// Every member of the workspace.
    pub members: Vec<Member>,
}

impl Workspace {
    /// Runs `cargo metadata --format-version 1 --no-deps` in `root` and reads it.
    pub fn load(root: &Path) -> Result<Self> {
        let out = cargo_stdout(root, &["metadata", "--format-version", "1", "--no-deps"])?;
        let json: Value = serde_json::from_str(&out).context("parsing cargo metadata")?;
        Self::from_metadata(&json)
    }

    fn from_metadata(json: &Value) -> Result<Self> {
        let root = PathBuf::from(str_field(json, "workspace_root")?);
        let target_dir = PathBuf::from(str_field(json, "target_directory")?);
        let ids: BTreeSet<&str> = array_field(json, "workspace_members")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let mut members = Vec::new();
        for p in array_field(json, "packages")? {
            if !ids.contains(str_field(p, "id")?) {
                continue;
            }
            let manifest = PathBuf::from(str_field(p, "manifest_path")?);
            let dir = manifest
                .parent()
                .context("a manifest path has a parent")?
                .to_path_buf();
            let mut targets = Vec::new();
            for t in array_field(p, "targets")? {
                targets.push(Target {
                    kinds: strings(array_field(t, "kind")?),
                    src_path: PathBuf::from(str_field(t, "src_path")?),
                });
            }
            let mut dependencies = Vec::new();
            for d in array_field(p, "dependencies")? {
                dependencies.push(Dependency {
                    name: str_field(d, "name")?.to_string(),
                    kind: d.get("kind").and_then(Value::as_str).map(str::to_string),
                    path: d.get("path").and_then(Value::as_str).map(PathBuf::from),
                });
            }
            let features = p
                .get("features")
                .and_then(Value::as_object)
                .map(|f| f.keys().cloned().collect())
                .unwrap_or_default();
            members.push(Member {
                name: str_field(p, "name")?.to_string(),
                dir,
                manifest,
                targets,
                dependencies,
                features,
                links: p.get("links").and_then(Value::as_str).map(str::to_string),
            });
        }
        Ok(Self {
            root,
            target_dir,
            members,
        })
    }

    /// The member called `name`.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// The member whose directory is `dir`, if `dir` is one.
    pub fn member_at(&self, dir: &Path) -> Option<&Member> {
        self.members.iter().find(|m| m.dir == dir)
    }

    /// The `<member>/<feature>` list of every member's `ceph` feature (for clippy and builds that
    /// must see the librbd code paths).
    pub fn ceph_features(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.features.contains("ceph"))
            .map(|m| format!("{}/ceph", m.name))
            .collect()
    }

    /// The packages `member` pulls in through normal dependencies (transitively, itself included),
    /// with the features cargo resolves for them when building `member` on its own with all of its
    /// own features on, for the host platform (the project builds on Linux only; `--target all`
    /// would need every other platform's packages downloaded):
    /// `cargo tree -p <member> -e normal --all-features`.
    pub fn normal_graph(&self, member: &str) -> Result<Vec<ResolvedPackage>> {
        self.graph(member, true)
    }

    /// Like [`Workspace::normal_graph`], but with the member's default features only: what a
    /// plain `cargo build -p <member>` links.
    pub fn default_graph(&self, member: &str) -> Result<Vec<ResolvedPackage>> {
        self.graph(member, false)
    }

    fn graph(&self, member: &str, all_features: bool) -> Result<Vec<ResolvedPackage>> {
        let mut args = vec!["tree", "-p", member, "-e", "normal"];
        if all_features {
            args.push("--all-features");
        }
        args.extend(["--prefix", "none", "--format", "{p}|{f}"]);
        let out = cargo_stdout(&self.root, &args)?;
        let mut seen = BTreeSet::new();
        let mut packages = Vec::new();
        for line in out.lines().filter(|l| !l.trim().is_empty()) {
            let p = ResolvedPackage::parse(line)
                .with_context(|| format!("reading cargo tree line {line:?}"))?;
            if seen.insert((p.name.clone(), p.version.clone())) {
                packages.push(p);
            }
        }
        Ok(packages)
    }
}

/// One package of a resolved graph, as `cargo tree --format '{p}|{f}'` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPackage {
    /// The package name.
    pub name: String,
    /// Its version (`v1.2.3`).
    pub version: String,
    /// Its directory, for path packages (workspace members among them).
    pub path: Option<PathBuf>,
    /// Its enabled features.
    pub features: BTreeSet<String>,
}

impl ResolvedPackage {
    /// Parses `name v1.2.3 (/path) (*)|feat,feat`; the path, `(proc-macro)` and `(*)` are optional.
    fn parse(line: &str) -> Result<Self> {
        let (pkg, features) = line
            .rsplit_once('|')
            .context("no `|` between package and features")?;
        let mut words = pkg.split_whitespace();
        let name = words.next().context("no package name")?.to_string();
        let version = words.next().context("no package version")?.to_string();
        let path = pkg
            .split(" (")
            .skip(1)
            .map(|s| s.trim_end().trim_end_matches(')'))
            .find(|s| s.starts_with('/'))
            .map(PathBuf::from);
        let features = features
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect();
        Ok(Self {
            name,
            version,
            path,
            features,
        })
    }
}

/// Runs `cargo ARGS` in `dir` and returns its standard output; fails with its standard error.
pub fn cargo_stdout(dir: &Path, args: &[&str]) -> Result<String> {
    let out = crate::util::cargo_command()
        .args(args)
        .current_dir(dir)
        .output()
        .with_context(|| format!("starting cargo {args:?}"))?;
    if !out.status.success() {
        bail!(
            "cargo {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).context("cargo printed non-UTF-8")
}

fn str_field<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .with_context(|| format!("cargo metadata: `{key}` is not a string"))
}

fn array_field<'a>(v: &'a Value, key: &str) -> Result<&'a Vec<Value>> {
    v.get(key)
        .and_then(Value::as_array)
        .with_context(|| format!("cargo metadata: `{key}` is not an array"))
}

fn strings(values: &[Value]) -> Vec<String> {
    values
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cargo_tree_line_yields_name_version_path_and_features() {
        let p = ResolvedPackage::parse("store v0.1.0 (/w/crates/store) (*)|default,hostdir")
            .expect("parses");
        assert_eq!(p.name, "store");
        assert_eq!(p.version, "v0.1.0");
        assert_eq!(p.path, Some(PathBuf::from("/w/crates/store")));
        assert_eq!(
            p.features,
            BTreeSet::from(["default".to_string(), "hostdir".to_string()])
        );
        let p = ResolvedPackage::parse("futures-macro v0.3.34 (proc-macro)|").expect("parses");
        assert_eq!(p.path, None);
        assert!(p.features.is_empty());
    }
}
