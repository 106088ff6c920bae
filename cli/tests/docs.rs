//! Keeps `docs/` honest: every YAML example in the docs is a tested fixture, quoted byte for byte;
//! every seed fixture is covered by the user guide; every fixture the docs mention passes (or, for
//! `tests/fixtures/invalid/`, fails) `kubectl-storm lint`; relative links point at files that exist.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What a fixture reference in the docs starts with.
const FIXTURES: &str = "tests/fixtures/";
/// The API group whose objects may only appear in the docs as quoted fixtures.
const OUR_API: &str = "apiVersion: orchestration.aibrix.ai";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `docs/*.md` file: (name, text).
fn docs() -> Vec<(String, String)> {
    let dir = repo().join("docs");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .map(|p| {
            let name = p
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
            (name, text)
        })
        .collect();
    out.sort();
    assert!(
        out.iter().any(|(n, _)| n == "user-guide.md"),
        "docs/user-guide.md is missing"
    );
    out
}

/// Fixture paths (`tests/fixtures/....yaml`) mentioned in a text, in order of appearance.
fn fixture_mentions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(FIXTURES) {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || "_./-".contains(c)))
            .unwrap_or(tail.len());
        let path = tail[..end].trim_end_matches('.');
        if path.ends_with(".yaml") {
            out.push(path.to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// A fenced code block: its info string, its content (lines joined with '\n', each line ending in
/// '\n'), the prose between the previous block and this one, and its first line number.
struct Block {
    info: String,
    content: String,
    prose_before: String,
    line: usize,
}

fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut prose = String::new();
    let mut open: Option<(String, usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut open {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some((info.trim().to_string(), i + 1, String::new()));
                } else {
                    prose.push_str(line);
                    prose.push('\n');
                }
            }
            Some((info, start, content)) => {
                if trimmed == "```" {
                    out.push(Block {
                        info: std::mem::take(info),
                        content: std::mem::take(content),
                        prose_before: std::mem::take(&mut prose),
                        line: *start,
                    });
                    open = None;
                } else {
                    content.push_str(line);
                    content.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "a fenced block is never closed");
    out
}

/// A fixture's whole text and each of its `---`-separated documents (nothing if it can't be read).
fn quotable(fixture: &str) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(repo().join(fixture)) else {
        return Vec::new();
    };
    let mut out = vec![text.clone()];
    let mut doc = String::new();
    for line in text.lines() {
        if line == "---" {
            out.push(std::mem::take(&mut doc));
        } else {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    out.push(doc);
    out.retain(|d| !d.trim().is_empty());
    out
}

#[test]
fn every_seed_fixture_is_in_the_user_guide() {
    let guide = docs()
        .into_iter()
        .find(|(n, _)| n == "user-guide.md")
        .map(|(_, t)| t)
        .expect("user guide");
    let dir = repo().join("tests/fixtures/seed");
    let mut seeds: Vec<String> = std::fs::read_dir(&dir)
        .expect("tests/fixtures/seed")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 13, "seed fixtures: {seeds:?}");
    let missing: Vec<&String> = seeds
        .iter()
        .filter(|n| !guide.contains(&format!("tests/fixtures/seed/{n}")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/user-guide.md does not mention these seed fixtures (as tests/fixtures/seed/NAME): {missing:?}"
    );
}

#[test]
fn yaml_in_the_docs_is_quoted_verbatim_from_the_fixture_named_before_it() {
    let mut problems = Vec::new();
    let mut quoted = 0;
    for (name, text) in docs() {
        for b in blocks(&text) {
            let ours = b.content.contains(OUR_API);
            if b.info != "yaml" && !ours {
                continue;
            }
            quoted += 1;
            let Some(fixture) = fixture_mentions(&b.prose_before).pop() else {
                problems.push(format!(
                    "docs/{name}:{}: YAML block without a fixture named before it; quote a file from tests/fixtures/ and name it just above the block",
                    b.line
                ));
                continue;
            };
            if !quotable(&fixture).contains(&b.content) {
                problems.push(format!(
                    "docs/{name}:{}: YAML block is not byte-identical to {fixture} (or one of its documents); paste the fixture again",
                    b.line
                ));
            }
        }
    }
    assert!(
        quoted >= 13,
        "only {quoted} YAML blocks found in docs/: is the fence parser broken?"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn fixtures_named_in_the_docs_lint_as_expected() {
    let mut named = BTreeSet::new();
    for (_, text) in docs() {
        named.extend(fixture_mentions(&text));
    }
    assert!(
        named.iter().filter(|f| f.contains("/seed/")).count() >= 13,
        "{named:?}"
    );
    let missing: Vec<&String> = named.iter().filter(|f| !repo().join(f).is_file()).collect();
    assert!(
        missing.is_empty(),
        "named in docs/ but not in the repository: {missing:?}"
    );
    // Building the CRD schemas takes most of a lint run: check every fixture that must pass in one
    // run (exit 0 means every object in every file is valid), and only the invalid ones singly.
    let (invalid, valid): (Vec<&String>, Vec<&String>) = named
        .iter()
        .partition(|f| f.starts_with("tests/fixtures/invalid/"));
    let mut problems = Vec::new();
    let mut check = |files: &[&String], want: i32| {
        let out = Command::new(env!("CARGO_BIN_EXE_kubectl-storm"))
            .args(["lint", "--quiet"])
            .args(files.iter().map(|f| f.as_str()))
            .current_dir(repo())
            .output()
            .expect("kubectl-storm runs");
        if out.status.code() != Some(want) {
            problems.push(format!(
                "kubectl-storm lint {files:?}: exit {:?}, want {want}\n{}{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    };
    check(&valid, 0);
    for f in invalid {
        check(&[f], 1);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn relative_links_in_the_docs_point_at_files_that_exist() {
    let docs_dir = repo().join("docs");
    let mut problems = Vec::new();
    for (name, text) in docs() {
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            let tail = &rest[at + 2..];
            let end = tail.find(')').unwrap_or(tail.len());
            let target = &tail[..end];
            rest = &tail[end..];
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let file = target.split('#').next().unwrap_or_default();
            if !docs_dir.join(file).exists() {
                problems.push(format!("docs/{name}: link to {target}: no such file"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
