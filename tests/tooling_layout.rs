//! Guards the layout of issue 10: the tooling (demo, throwaway-cluster launcher) and the CLI commands
//! live under `src/demo/` and `src/cli/`, every file in `src/` is one a newcomer can read (no file over
//! 800 lines, no function over 120; `src/proxy/` is not checked yet), the binary only parses and
//! dispatches, and nothing on the serving path depends on the tooling or the CLI. Reads the source
//! tree as text; starts nothing.

use std::path::{Path, PathBuf};

/// The house limits (STYLE.md 20).
const MAX_FILE_LINES: usize = 800;
const MAX_FN_LINES: usize = 120;
/// `main.rs` parses arguments and dispatches: a few clap enums and one `match`.
const MAX_MAIN_LINES: usize = 200;

/// Directories under `src/` the size limits do not cover yet (the relay restructure lands there).
const NOT_YET_CHECKED: &[&str] = &[];

/// Modules on the serving path: they must not depend on the tooling or the CLI.
const SERVING: &[&str] = &["proxy", "policy", "audit", "grants", "store", "admin"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Functions longer than `max` lines in rustfmt-formatted `text`: (name, lines). A function runs
/// from its `fn` line to the first line after it holding only its indentation and `}`.
fn long_functions(text: &str, max: usize) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let Some(at) = trimmed.find("fn ") else { continue };
        let head = &trimmed[..at];
        let is_fn = head
            .split_whitespace()
            .all(|w| matches!(w, "pub" | "async" | "const" | "unsafe") || w.starts_with("pub("));
        if !is_fn || trimmed.ends_with(';') {
            continue;
        }
        let close = format!("{indent}}}");
        if let Some(len) = lines[i..].iter().position(|l| *l == close) {
            if len + 1 > max {
                let name = trimmed[at + 3..].split(['(', '<']).next().unwrap_or("?");
                found.push((name.to_owned(), len + 1));
            }
        }
    }
    found
}

#[test]
fn long_functions_are_found() {
    let text = "fn short() {\n    a();\n}\n\n    pub(crate) async fn long(x: u8) {\n        a();\n        b();\n    }\n";
    assert_eq!(long_functions(text, 3), vec![("long".to_owned(), 4)]);
    assert!(long_functions(text, 4).is_empty());
}

#[test]
fn source_files_and_functions_stay_small() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.retain(|f| !NOT_YET_CHECKED.iter().any(|dir| f.starts_with(src().join(dir))));
    let mut problems = Vec::new();
    for old in ["demo.rs", "pgcluster.rs", "cli.rs"] {
        if src().join(old).exists() {
            problems.push(format!("src/{old} should have moved into a directory"));
        }
    }
    for file in &files {
        let text = read(file);
        let lines = text.lines().count();
        if lines > MAX_FILE_LINES {
            problems.push(format!("{}: {lines} lines (> {MAX_FILE_LINES})", file.display()));
        }
        for (name, len) in long_functions(&text, MAX_FN_LINES) {
            problems.push(format!(
                "{}: fn {name} is {len} lines (> {MAX_FN_LINES})",
                file.display()
            ));
        }
    }
    let main_lines = read(&src().join("main.rs")).lines().count();
    if main_lines > MAX_MAIN_LINES {
        problems.push(format!(
            "src/main.rs: {main_lines} lines; it should only parse and dispatch (<= {MAX_MAIN_LINES})"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_serving_path_does_not_depend_on_tooling_or_cli() {
    let mut problems = Vec::new();
    for module in SERVING {
        let mut files = Vec::new();
        let dir = src().join(module);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        } else {
            files.push(src().join(format!("{module}.rs")));
        }
        for file in files {
            for (n, line) in read(&file).lines().enumerate() {
                if ["crate::demo", "crate::pgcluster", "crate::cli"]
                    .iter()
                    .any(|m| line.contains(m))
                {
                    problems.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
