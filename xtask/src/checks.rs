//! House checks, run as ordinary tests (`cargo test -p xtask`, part of `cargo xtask test`).
//!
//! They guard invariants that no compiler checks: every crate documents itself, no debugging
//! leftovers, and only `crates/ceph` links Ceph or uses `unsafe`.

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::{Path, PathBuf};

    use crate::util::root;

    /// Every `.rs` file under `dir`, skipping `target`.
    fn rust_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    if p.file_name().is_some_and(|n| n == "target" || n == ".git") {
                        continue;
                    }
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        out.sort();
        out
    }

    fn members() -> Vec<PathBuf> {
        let r = root();
        let mut v: Vec<PathBuf> = fs::read_dir(r.join("crates"))
            .expect("crates/ is readable")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("Cargo.toml").exists())
            .collect();
        v.sort();
        v.push(r.join("xtask"));
        v.push(r.join("tests"));
        v
    }

    #[test]
    fn every_crate_root_has_a_crate_doc() {
        for m in members() {
            let lib = m.join("src/lib.rs");
            let main = m.join("src/main.rs");
            let file = if lib.exists() { lib } else { main };
            let text = fs::read_to_string(&file).expect("crate root is readable");
            assert!(
                text.trim_start().starts_with("//!"),
                "{} must start with a crate doc (//!)",
                file.display()
            );
        }
    }

    #[test]
    fn no_debugging_leftovers_in_sources() {
        let banned = [
            concat!("db", "g!("),
            concat!("to", "do!("),
            concat!("unimpl", "emented!("),
        ];
        for m in members() {
            for f in rust_files(&m) {
                let text = fs::read_to_string(&f).expect("source is readable");
                for b in banned {
                    assert!(!text.contains(b), "{} contains {b}", f.display());
                }
            }
        }
    }

    #[test]
    fn only_the_ceph_crate_uses_unsafe_or_links_ceph() {
        let rbd = root().join("crates/ceph");
        let needles = [
            concat!("unsafe", " {"),
            concat!("unsafe", " fn"),
            concat!("unsafe", " impl"),
            concat!("extern", " \"C\""),
            concat!("rustc-link-lib=", "rbd"),
            concat!("rustc-link-lib=", "rados"),
            concat!("name = \"", "rbd\""),
            concat!("name = \"", "rados\""),
        ];
        for m in members() {
            if m == rbd {
                continue;
            }
            for f in rust_files(&m) {
                let text = fs::read_to_string(&f).expect("source is readable");
                for n in needles {
                    assert!(
                        !text.contains(n),
                        "{} contains `{n}`: only crates/ceph may",
                        f.display()
                    );
                }
            }
        }
        let ws = fs::read_to_string(root().join("Cargo.toml")).expect("workspace manifest");
        assert!(
            ws.contains("unsafe_code = \"forbid\""),
            "workspace lints must forbid unsafe code"
        );
    }

    #[test]
    fn every_unsafe_block_in_ceph_has_a_safety_comment() {
        for f in rust_files(&root().join("crates/ceph/src")) {
            // Generated bindings carry no hand-written unsafe blocks worth a comment.
            if f.file_name().is_some_and(|n| n == "sys.rs") {
                continue;
            }
            let text = fs::read_to_string(&f).expect("source is readable");
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let t = line.trim_start();
                if t.starts_with("//") || !line.contains(concat!("unsafe", " {")) {
                    continue;
                }
                let window = &lines[i.saturating_sub(6)..=i];
                assert!(
                    window.iter().any(|l| l.contains("SAFETY:")),
                    "{}:{} has an unsafe block without a // SAFETY: comment above it",
                    f.display(),
                    i + 1
                );
            }
        }
    }

    #[test]
    fn architecture_doc_names_every_crate() {
        let text =
            fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md exists");
        for c in [
            "runner",
            "store",
            "rbd",
            "controllers",
            "volumeprovider",
            "xtask",
            "tests",
        ] {
            assert!(text.contains(c), "ARCHITECTURE.md does not mention {c}");
        }
        assert!(text.contains("only crates/ceph links librbd/librados or uses unsafe"));
    }

    #[test]
    fn readme_starts_with_the_run_and_test_commands() {
        let text = fs::read_to_string(root().join("README.md")).expect("README.md exists");
        let head: String = text.lines().take(40).collect::<Vec<_>>().join("\n");
        assert!(
            head.contains("cargo run"),
            "README must show how to run the provider near the top"
        );
        assert!(
            head.contains("cargo xtask test"),
            "README must show the test command near the top"
        );
        let ci = fs::read_to_string(root().join(".ci/run")).expect(".ci/run exists");
        assert!(
            ci.contains("cargo xtask test"),
            ".ci/run must call the README's test command"
        );
    }
}
