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

/// See: issue 17: `timebox check-config --config config/timebox.example.toml`, the command in that
/// file's header, reported 4 errors about files and variables that only exist where timebox runs.
/// `--offline` skips those checks, says which it skipped, and still reports every other problem.
#[test]
fn check_config_offline_validates_the_example_and_says_what_it_skipped() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/timebox.example.toml");
    let run = |args: &[&str], config: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_timebox"))
            .arg("check-config")
            .args(args)
            .arg("--config")
            .arg(config)
            .env_remove("TIMEBOX_SHOP_READ_PASSWORD")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, stderr) = run(&[], &example);
    assert_eq!(
        code, 1,
        "on this machine the example's files do not exist: {stderr}"
    );

    let (code, stdout, stderr) = run(&["--offline"], &example);
    assert_eq!(code, 0, "stdout {stdout}\nstderr {stderr}");
    assert!(stdout.starts_with("ok (offline"), "{stdout}");
    for skipped in ["proxy.tls_cert", "proxy.tls_key", "password_env", "password_file"] {
        assert!(
            stdout.contains(&format!("skipped {skipped}")) || stdout.contains(skipped),
            "{skipped}: {stdout}"
        );
    }

    // Offline still reports what is wrong in the file itself.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    let text = std::fs::read_to_string(&example)
        .unwrap()
        .replacen("[proxy]", "[proxy]\nlisten_typo = 1", 1);
    std::fs::write(&broken, text).unwrap();
    let (code, _, stderr) = run(&["--offline"], &broken);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("proxy.listen_typo: unknown key"), "{stderr}");
    assert!(
        !stderr.contains("  - proxy.tls_cert"),
        "host checks stay skipped: {stderr}"
    );
}
