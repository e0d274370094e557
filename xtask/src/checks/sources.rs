//! Checks over the text of every Rust file of the workspace: self-documentation, debugging
//! leftovers, `unsafe` and native linking outside the `ceph` crate, SAFETY comments, file size.
//!
//! Files are read as lines; nothing here parses Rust (see the parent module for why).

use std::path::Path;

use super::{assert_no_offenders, member, member_files, read, rel, rust_files, workspace};

/// The crate that may use `unsafe` and load librbd/librados.
const CEPH: &str = "ceph";

/// Longest a `.rs` file may be without a `// size: <reason>` comment in its first lines.
pub const MAX_LINES: usize = 900;

/// How many lines from the top of a file may carry its `// size: <reason>` comment.
const SIZE_COMMENT_WITHIN: usize = 10;

/// Whether the first thing in `text` is an inner doc comment (`//!` or `/*!`). Blank lines and
/// plain `//` comments (such as `// size: ...`) may come before it.
fn starts_with_inner_doc(text: &str) -> bool {
    for line in text.lines().map(str::trim) {
        if line.starts_with("//!") || line.starts_with("/*!") {
            return true;
        }
        if line.is_empty() || (line.starts_with("//") && !line.starts_with("///")) {
            continue;
        }
        return false;
    }
    false
}

#[test]
fn every_crate_root_has_a_crate_doc() {
    let mut offenders = Vec::new();
    for m in &workspace().members {
        for t in &m.targets {
            if !starts_with_inner_doc(&read(&t.src_path)) {
                offenders.push(format!("{} ({})", rel(&t.src_path), t.kinds.join(",")));
            }
        }
    }
    assert_no_offenders(
        "crate roots (lib, bin, test, bench, example, build script) must start with a crate doc (//!)",
        &offenders,
    );
}

#[test]
fn every_module_file_has_a_module_doc() {
    let mut offenders = Vec::new();
    for m in &workspace().members {
        for f in member_files(m) {
            if m.targets.iter().any(|t| t.src_path == f) {
                continue; // a crate root: the check above
            }
            if !starts_with_inner_doc(&read(&f)) {
                offenders.push(rel(&f));
            }
        }
    }
    assert_no_offenders(
        "module files must start with a module doc (//!) saying what the module owns",
        &offenders,
    );
}

#[test]
fn no_debugging_leftovers_in_sources() {
    let banned = [
        concat!("db", "g!("),
        concat!("to", "do!("),
        concat!("unimpl", "emented!("),
    ];
    let mut offenders = Vec::new();
    for m in &workspace().members {
        for f in member_files(m) {
            for (i, line) in read(&f).lines().enumerate() {
                for b in banned.iter().filter(|b| line.contains(*b)) {
                    offenders.push(format!("{}:{}: {b}", rel(&f), i + 1));
                }
            }
        }
    }
    assert_no_offenders("debugging leftovers", &offenders);
}

#[test]
fn only_the_ceph_crate_uses_unsafe_or_links_ceph() {
    let needles = [
        concat!("unsafe", " {"),
        concat!("unsafe", " fn"),
        concat!("unsafe", " impl"),
        concat!("unsafe", " extern"),
        concat!("extern", " \"C\""),
        concat!("extern", " \"system\""),
    ];
    let ceph = member(CEPH);
    let mut offenders = Vec::new();
    for m in &workspace().members {
        if m.name == ceph.name {
            continue;
        }
        if let Some(links) = &m.links {
            offenders.push(format!("{}: `links = \"{links}\"`", rel(&m.manifest)));
        }
        for f in member_files(m) {
            for (i, line) in read(&f).lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                let mut found: Vec<&str> = needles
                    .iter()
                    .copied()
                    .filter(|n| code.contains(n))
                    .collect();
                let links_native = code.contains(concat!("rustc-link", "-lib"))
                    || code.contains(concat!("#[link", "("));
                if links_native && (code.contains("rbd") || code.contains("rados")) {
                    found.push("links librbd/librados");
                }
                if code.contains(concat!("lib", "loading")) {
                    found.push("loads a library at run time");
                }
                for n in found {
                    offenders.push(format!("{}:{}: `{n}`", rel(&f), i + 1));
                }
            }
        }
    }
    assert_no_offenders(
        "only crates/ceph may use unsafe or load librbd/librados",
        &offenders,
    );
}

#[test]
fn every_unsafe_block_in_ceph_has_a_safety_comment() {
    let mut offenders = Vec::new();
    for f in member_files(member(CEPH)) {
        // Generated bindings carry no hand-written unsafe blocks worth a comment.
        if f.file_name().is_some_and(|n| n == "sys.rs") {
            continue;
        }
        let text = read(&f);
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim_start().starts_with("//") || !line.contains(concat!("unsafe", " {")) {
                continue;
            }
            let window = &lines[i.saturating_sub(6)..=i];
            if !window.iter().any(|l| l.contains("SAFETY:")) {
                offenders.push(format!("{}:{}", rel(&f), i + 1));
            }
        }
    }
    assert_no_offenders(
        "unsafe blocks without a // SAFETY: comment in the 6 lines above",
        &offenders,
    );
}

/// The reason given by a `// size: <reason>` comment in the first lines of `text`, if any.
fn size_reason(text: &str) -> Option<&str> {
    text.lines()
        .take(SIZE_COMMENT_WITHIN)
        .filter_map(|l| l.trim().strip_prefix("// size:"))
        .map(str::trim)
        .find(|reason| !reason.is_empty())
}

#[test]
fn no_source_file_is_over_900_lines_without_a_size_comment() {
    let root: &Path = &workspace().root;
    let mut offenders: Vec<(usize, String)> = rust_files(root, false)
        .into_iter()
        .filter_map(|f| {
            let text = read(&f);
            let lines = text.lines().count();
            (lines > MAX_LINES && size_reason(&text).is_none()).then(|| (lines, rel(&f)))
        })
        .collect();
    offenders.sort_by(|a, b| b.cmp(a));
    let offenders: Vec<String> = offenders
        .into_iter()
        .map(|(lines, f)| format!("{lines:>5} {f}"))
        .collect();
    assert_no_offenders(
        &format!(
            "files over {MAX_LINES} lines: split them, or give a reason in a `// size: <reason>` \
             comment within their first {SIZE_COMMENT_WITHIN} lines"
        ),
        &offenders,
    );
}

#[test]
fn a_doc_may_follow_plain_comments_but_not_code_or_outer_docs() {
    assert!(starts_with_inner_doc("//! Owns x.\n"));
    assert!(starts_with_inner_doc("\n// size: tables\n//! Owns x.\n"));
    assert!(!starts_with_inner_doc("/// Item doc.\nfn f() {}\n"));
    assert!(!starts_with_inner_doc("use x;\n//! late\n"));
    assert!(!starts_with_inner_doc(""));
}

#[test]
fn a_size_comment_needs_a_reason_near_the_top() {
    assert_eq!(
        size_reason("//! Doc.\n// size: one table\n"),
        Some("one table")
    );
    assert_eq!(size_reason("// size:\n"), None);
    let late = format!("{}// size: late\n", "\n".repeat(SIZE_COMMENT_WITHIN));
    assert_eq!(size_reason(&late), None);
}
