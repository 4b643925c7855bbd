//! The real `timebox` binary as an engineer runs it, with a clean environment for the variables it
//! reads, so a developer's own `TIMEBOX_ADMIN_TOKEN` or `RUST_LOG` cannot change a test.

use std::process::Output;

/// Runs the binary with `TIMEBOX_ADMIN_TOKEN`, `TIMEBOX_ADMIN_URL` and `RUST_LOG` removed; `token`
/// goes in `TIMEBOX_ADMIN_TOKEN` when given.
pub async fn timebox(args: &[&str], token: Option<&str>) -> Output {
    timebox_at(args, token, None).await
}

/// [`timebox`], with `admin_url` in `TIMEBOX_ADMIN_URL` when given.
pub async fn timebox_at(args: &[&str], token: Option<&str>, admin_url: Option<&str>) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_timebox"));
    cmd.args(args)
        .env_remove("TIMEBOX_ADMIN_TOKEN")
        .env_remove("TIMEBOX_ADMIN_URL")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    if let Some(t) = token {
        cmd.env("TIMEBOX_ADMIN_TOKEN", t);
    }
    if let Some(url) = admin_url {
        cmd.env("TIMEBOX_ADMIN_URL", url);
    }
    cmd.output().await.expect("run timebox")
}

/// Exit code, stdout and stderr of a run.
pub fn outcome(o: &Output) -> (Option<i32>, String, String) {
    (o.status.code(), stdout(o), stderr(o))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A run's exit code and output, for assertion messages.
pub fn describe(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}
