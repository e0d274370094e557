//! Checks over the project's top-level documents: README.md opens with the run and test commands,
//! ARCHITECTURE.md's crate table names every workspace member, and every bullet of its
//! "Invariants" section names the test that enforces it.
//!
//! The convention for naming a test in ARCHITECTURE.md is `(test: <package> <path>)`, e.g.
//! `(test: xtask checks::sources::only_the_ceph_crate_uses_unsafe_or_links_ceph)`: the package as
//! in `cargo test -p <package>`, the path as `cargo test -p <package> -- --list` prints it (for an
//! integration test, the test file's name may lead the path: `(test: runner behaviour::...)`). A
//! bullet may name several tests, each in its own parentheses. The check resolves each name: the
//! package is a workspace member, one of its files has a test function (`#[test]`, `#[tokio::test]`,
//! ...) with the last segment as its name, and every other segment is a module on the way to it (a
//! directory or file name in its path, or a `mod` declared in the file).

use std::path::Path;

use super::{assert_no_offenders, member_files, read, rel, workspace};

fn architecture() -> String {
    read(&workspace().root.join("ARCHITECTURE.md"))
}

/// The cells of a markdown table row, trimmed, without the outer pipes.
fn cells(row: &str) -> Vec<String> {
    let row = row.trim().trim_start_matches('|').trim_end_matches('|');
    row.split('|').map(|c| c.trim().to_string()).collect()
}

/// The first-column entries (backticks removed) of the table whose header's first cell is `crate`.
fn crate_table(doc: &str) -> Option<Vec<String>> {
    let mut lines = doc.lines().skip_while(|l| {
        !(l.trim_start().starts_with('|')
            && cells(l)
                .first()
                .is_some_and(|c| c.eq_ignore_ascii_case("crate")))
    });
    lines.next()?; // header
    lines.next()?; // |---|---|
    Some(
        lines
            .take_while(|l| l.trim_start().starts_with('|'))
            .filter_map(|l| cells(l).into_iter().next())
            .map(|c| c.trim_matches('`').to_string())
            .collect(),
    )
}

/// The bullets (`* ` or `- ` at the start of a line, with their indented continuation lines) of the
/// section headed `## <title>`.
fn section_bullets(doc: &str, title: &str) -> Option<Vec<String>> {
    let mut lines = doc.lines().skip_while(|l| {
        l.strip_prefix("## ")
            .is_none_or(|t| !t.trim().eq_ignore_ascii_case(title))
    });
    lines.next()?;
    let mut bullets: Vec<String> = Vec::new();
    let mut in_bullet = false;
    for line in lines.take_while(|l| !l.starts_with("# ") && !l.starts_with("## ")) {
        if let Some(text) = line.strip_prefix("* ").or_else(|| line.strip_prefix("- ")) {
            bullets.push(text.trim().to_string());
            in_bullet = true;
        } else if in_bullet && line.starts_with(char::is_whitespace) && !line.trim().is_empty() {
            if let Some(last) = bullets.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else {
            in_bullet = false;
        }
    }
    Some(bullets)
}

/// The `(test: <package> <path>)` references in `text`, as (package, path).
fn test_references(text: &str) -> Vec<(String, String)> {
    text.split("(test:")
        .skip(1)
        .filter_map(|rest| {
            let inner = rest.split(')').next()?.replace('`', "");
            let mut words = inner.split_whitespace();
            let package = words.next()?.to_string();
            let path = words.next()?.to_string();
            Some((package, path))
        })
        .collect()
}

/// Whether `line` declares `fn <name>` (followed by `(` or `<`).
fn declares_fn(line: &str, name: &str) -> bool {
    let needle = format!("fn {name}");
    line.match_indices(&needle).any(|(at, _)| {
        let before_ok = line[..at].ends_with(|c: char| c.is_whitespace()) || at == 0;
        let after = line[at + needle.len()..].chars().next();
        before_ok && matches!(after, Some('(' | '<'))
    })
}

/// Whether `file` (of a member rooted at `dir`) holds the test `path` (`module::...::name`).
fn file_has_test(dir: &Path, file: &Path, text: &str, path: &str) -> bool {
    let segments: Vec<&str> = path.split("::").collect();
    let Some((name, modules)) = segments.split_last() else {
        return false;
    };
    let lines: Vec<&str> = text.lines().collect();
    let is_test = lines.iter().enumerate().any(|(i, l)| {
        declares_fn(l, name)
            && lines[i.saturating_sub(5)..i].iter().any(|a| {
                let a = a.trim_start();
                a.starts_with("#[") && a.contains("test")
            })
    });
    if !is_test {
        return false;
    }
    let relative = file.strip_prefix(dir).unwrap_or(file);
    let mut modules_here: Vec<String> = relative
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    for l in &lines {
        let l = l.trim_start();
        let l = l
            .strip_prefix("pub(crate) ")
            .or_else(|| l.strip_prefix("pub "))
            .unwrap_or(l);
        if let Some(rest) = l.strip_prefix("mod ") {
            let m: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            modules_here.push(m);
        }
    }
    modules.iter().all(|m| modules_here.iter().any(|h| h == m))
}

/// `Ok` if the test exists, else why not.
fn resolve_test(package: &str, path: &str) -> Result<(), String> {
    let Some(m) = workspace().member(package) else {
        return Err(format!("no workspace member `{package}`"));
    };
    let found = member_files(m)
        .iter()
        .any(|f| file_has_test(&m.dir, f, &read(f), path));
    if found {
        Ok(())
    } else {
        Err(format!("no test `{path}` in {}", rel(&m.dir)))
    }
}

#[test]
fn readme_starts_with_the_run_and_test_commands() {
    let root = &workspace().root;
    let text = read(&root.join("README.md"));
    let head: String = text.lines().take(40).collect::<Vec<_>>().join("\n");
    assert!(
        head.contains("cargo run"),
        "README must show how to run the provider near the top"
    );
    assert!(
        head.contains("cargo xtask test"),
        "README must show the test command near the top"
    );
    let ci = read(&root.join(".ci/run"));
    assert!(
        ci.contains("cargo xtask test"),
        ".ci/run must call the README's test command"
    );
}

#[test]
fn architecture_doc_states_the_unsafe_invariant() {
    assert!(architecture().contains("only crates/ceph loads librbd/librados or uses unsafe"));
}

#[test]
fn architecture_crate_table_names_every_workspace_crate() {
    let ws = workspace();
    let table = crate_table(&architecture())
        .expect("ARCHITECTURE.md has a table whose first column is headed `crate`");
    let dirs: Vec<String> = ws.members.iter().map(|m| rel(&m.dir)).collect();
    let mut offenders: Vec<String> = dirs
        .iter()
        .filter(|d| !table.contains(d))
        .map(|d| format!("`{d}` is missing"))
        .collect();
    offenders.extend(
        table
            .iter()
            .filter(|row| !dirs.contains(row))
            .map(|row| format!("`{row}` is not a workspace member")),
    );
    assert_no_offenders(
        "ARCHITECTURE.md's crate table must name every member by its directory (`crates/<dir>`)",
        &offenders,
    );
}

#[test]
fn every_architecture_invariant_names_the_test_that_enforces_it() {
    let bullets = section_bullets(&architecture(), "Invariants")
        .expect("ARCHITECTURE.md has an `## Invariants` section");
    assert!(
        !bullets.is_empty(),
        "the Invariants section lists no invariant"
    );
    let mut offenders = Vec::new();
    for (i, bullet) in bullets.iter().enumerate() {
        let short: String = bullet.chars().take(70).collect();
        let refs = test_references(bullet);
        if refs.is_empty() {
            offenders.push(format!(
                "invariant {} names no `(test: <package> <path>)`: {short}...",
                i + 1
            ));
        }
        for (package, path) in refs {
            if let Err(why) = resolve_test(&package, &path) {
                offenders.push(format!(
                    "invariant {}: (test: {package} {path}): {why}",
                    i + 1
                ));
            }
        }
    }
    assert_no_offenders(
        "ARCHITECTURE.md invariants without an enforcing test",
        &offenders,
    );
}

#[test]
fn markdown_helpers_read_tables_bullets_and_test_references() {
    let doc = "# T\n\n| crate | owns |\n|---|---|\n| `crates/a` | x |\n| `xtask` | y |\n\n\
               ## Invariants\n\nIntro.\n\n* one (test: a m::t)\n  more (test: b `n::u`)\n\
               - two\n\n## Next\n* not this\n";
    assert_eq!(
        crate_table(doc),
        Some(vec!["crates/a".to_string(), "xtask".to_string()])
    );
    let bullets = section_bullets(doc, "Invariants").expect("section exists");
    assert_eq!(bullets.len(), 2);
    assert_eq!(
        test_references(&bullets[0]),
        [
            ("a".to_string(), "m::t".to_string()),
            ("b".to_string(), "n::u".to_string())
        ]
    );
    assert!(test_references(&bullets[1]).is_empty());
}

#[test]
fn a_test_reference_resolves_through_files_and_inline_modules() {
    let dir = Path::new("/w/crates/a");
    let file = Path::new("/w/crates/a/src/checks/graph.rs");
    let text =
        "mod inner {\n    #[tokio::test(start_paused = true)]\n    async fn it_works() {}\n}\n";
    assert!(file_has_test(
        dir,
        file,
        text,
        "checks::graph::inner::it_works"
    ));
    assert!(file_has_test(dir, file, text, "it_works"));
    assert!(!file_has_test(dir, file, text, "other::it_works"));
    assert!(!file_has_test(dir, file, text, "it_work"));
    assert!(!file_has_test(dir, file, "fn it_works() {}\n", "it_works"));
}
