//! `timebox check`: the policy decision from the command line, with the exit code scripts use.

mod common;

use std::process::Command;

use common::MINIMAL_CONFIG;

fn check(config: &std::path::Path, role: &str, sql: &str) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_timebox"))
        .args(["check", "--config"])
        .arg(config)
        .args(["--role", role, sql])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_prints_each_decision_and_exits_by_the_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("t.toml");
    std::fs::write(&config, MINIMAL_CONFIG).unwrap();

    let (code, out, _) = check(&config, "read", "SELECT name FROM public.items WHERE id = 1");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("class:     read") && out.contains("public.items") && out.contains("allowed"),
        "{out}"
    );

    let (code, out, _) = check(&config, "read", "SELECT 1; DELETE FROM items");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("statement 2 of 2: DELETE FROM items"), "{out}");
    assert!(out.contains("denied: DELETE needs write access"), "{out}");

    let (code, out, _) = check(&config, "read", "SELECT $$ unterminated");
    assert_eq!(code, 1, "unparseable text is denied: {out}");

    let (code, out, _) = check(&config, "nope", "SELECT 1");
    assert_eq!(code, 1);
    assert!(
        out.contains("unknown role \"nope\"; the config defines: read"),
        "{out}"
    );

    std::fs::write(&config, "[proxy]\nlisten = 1").unwrap();
    let (code, _, err) = check(&config, "read", "SELECT 1");
    assert_eq!(code, 2, "{err}");
}
