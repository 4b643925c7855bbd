//! The throwaway-PostgreSQL harness itself: the shared cluster comes up with its fixture, every
//! upstream auth method's role can log in over TCP, and a private cluster gets its own port and leaves
//! nothing behind when dropped.

mod common;

use std::path::Path;

use common::cluster::*;
use timebox::demo::cluster::{Cluster, ClusterOptions, PgInstall};

#[test]
fn shared_cluster_answers_and_has_the_shop_fixture() {
    let cluster = shared_cluster();
    assert_eq!(cluster.host(), "127.0.0.1");
    assert_eq!(cluster.superuser(), "postgres");
    assert_eq!(cluster.psql("postgres", "select 1").unwrap().trim(), "1");
    assert_eq!(
        cluster
            .psql(SHOP_DB, "select count(*) from public.items")
            .unwrap()
            .trim(),
        ITEMS_ROWS.to_string()
    );
}

#[test]
fn shared_cluster_logs_every_statement_with_user_and_database() {
    let cluster = shared_cluster();
    let marker = unique_name("log_marker");
    cluster
        .psql_as(
            READ_USER,
            Some(READ_PASSWORD),
            SHOP_DB,
            &format!("select '{marker}'"),
        )
        .unwrap();
    let log = std::fs::read_to_string(cluster.log_path()).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains(&marker) && l.contains("statement:"))
        .unwrap_or_else(|| panic!("statement with {marker} not in the server log"));
    assert!(line.contains("timebox_read@shop"), "log line: {line}");
}

/// Each role reaches the server through its own pg_hba method; `pg_hba_file_rules` shows which line
/// matched, and a wrong password must fail for every password method.
#[test]
fn every_fixture_role_logs_in_with_its_auth_method() {
    let cluster = shared_cluster();
    let with_password = [
        (READ_USER, READ_PASSWORD),
        (WRITE_USER, WRITE_PASSWORD),
        (ADMIN_USER, ADMIN_PASSWORD),
        (MD5_USER, MD5_PASSWORD),
        (PLAIN_USER, PLAIN_PASSWORD),
    ];
    for (user, password) in with_password {
        let out = cluster
            .psql_as(
                user,
                Some(password),
                SHOP_DB,
                "select current_user, count(*) from public.items",
            )
            .unwrap_or_else(|e| panic!("{user} could not log in: {e}"));
        assert_eq!(out.trim(), format!("{user}|{ITEMS_ROWS}"));
        let err = cluster
            .psql_as(user, Some("wrong-password"), SHOP_DB, "select 1")
            .expect_err("a wrong password must be refused");
        assert!(
            err.to_string().contains("password authentication failed"),
            "{user}: {err}"
        );
    }
    let out = cluster
        .psql_as(
            TRUST_USER,
            None,
            SHOP_DB,
            "select current_user, count(*) from public.items",
        )
        .unwrap();
    assert_eq!(out.trim(), format!("{TRUST_USER}|{ITEMS_ROWS}"));

    // The password really is stored as md5 (not SCRAM) for md5_user, and as SCRAM for the others.
    let stored = cluster
        .psql(
            "postgres",
            "select rolname, left(rolpassword, 5) from pg_authid \
             where rolname in ('md5_user', 'plain_user', 'timebox_read') order by rolname",
        )
        .unwrap();
    let lines: Vec<&str> = stored.trim().lines().collect();
    assert!(lines[0].starts_with("md5_user|md5"), "{stored}");
    assert!(lines[1].starts_with("plain_user|SCRAM"), "{stored}");
    assert!(lines[2].starts_with("timebox_read|SCRAM"), "{stored}");
}

#[test]
fn fixture_privileges_match_the_role_names() {
    let cluster = shared_cluster();
    let err = cluster
        .psql_as(
            READ_USER,
            Some(READ_PASSWORD),
            SHOP_DB,
            "insert into public.items (name) values ('x')",
        )
        .expect_err("timebox_read must not insert");
    assert!(err.to_string().contains("permission denied"), "{err}");

    let name = unique_name("write_probe");
    let out = cluster
        .psql_as(
            WRITE_USER,
            Some(WRITE_PASSWORD),
            SHOP_DB,
            &format!(
                "insert into public.items (name) values ('{name}') returning qty;\n\
                 delete from public.items where name = '{name}';"
            ),
        )
        .unwrap();
    assert_eq!(out.trim(), "0");

    let table = unique_name("admin_table");
    cluster
        .psql_as(
            ADMIN_USER,
            Some(ADMIN_PASSWORD),
            SHOP_DB,
            &format!("create table public.{table} (id int); drop table public.{table};"),
        )
        .unwrap();
    let superuser = cluster
        .psql(
            "postgres",
            "select rolsuper from pg_roles where rolname = 'timebox_admin'",
        )
        .unwrap();
    assert_eq!(superuser.trim(), "f");
}

#[test]
fn a_private_cluster_gets_its_own_port_and_is_removed_on_drop() {
    let shared = shared_cluster();
    let install = PgInstall::find().unwrap();
    assert!(install.version >= 10, "{install:?}");

    let cluster = Cluster::start(&install, private_options()).unwrap();
    assert_ne!(cluster.port(), shared.port());
    assert_eq!(cluster.psql("postgres", "select 40 + 2").unwrap().trim(), "42");
    let settings = cluster
        .psql(
            "postgres",
            "select current_setting('listen_addresses'), current_setting('fsync'), \
             current_setting('max_connections')",
        )
        .unwrap();
    assert_eq!(settings.trim(), "127.0.0.1|off|200");

    let data_dir = cluster.data_dir().to_path_buf();
    let pid: u32 = std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(process_exists(pid));

    drop(cluster);
    assert!(!data_dir.exists(), "{} still exists", data_dir.display());
    assert!(
        !data_dir.parent().unwrap().exists(),
        "temporary directory left behind"
    );
    assert!(!process_exists(pid), "postmaster {pid} survived drop");
}

#[test]
fn stop_is_idempotent_and_settings_override_defaults() {
    let install = PgInstall::find().unwrap();
    let mut cluster = Cluster::start(
        &install,
        private_options()
            .setting("fsync", "on")
            .setting("cluster_name", "it's me"),
    )
    .unwrap();
    let out = cluster
        .psql(
            "postgres",
            "select current_setting('fsync'), current_setting('cluster_name')",
        )
        .unwrap();
    assert_eq!(out.trim(), "on|it's me");
    cluster.stop();
    cluster.stop();
    assert!(cluster.psql("postgres", "select 1").is_err());
}

/// Private clusters are guarded too, so a killed test binary leaves nothing behind.
fn private_options() -> ClusterOptions {
    ClusterOptions::default().keep_alive_with(std::process::id())
}

fn process_exists(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; count it as gone.
    match std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .map(|rest| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

#[test]
fn a_failed_start_reports_the_server_log() {
    let install = PgInstall::find().unwrap();
    let err = Cluster::start(
        &install,
        private_options().setting("max_connections", "not-a-number"),
    )
    .expect_err("an invalid setting must fail the start");
    let message = err.to_string();
    assert!(
        matches!(
            err,
            timebox::demo::cluster::ClusterError::StartFailed { attempts: 1, .. }
        ),
        "{message}"
    );
    assert!(message.contains("max_connections"), "{message}");
}

/// The launcher as a process (`timebox demo-cluster`), as the end-to-end benchmark uses it instead
/// of a copy of its own: one JSON line describing a cluster that answers with the settings asked
/// for, and nothing left behind once stdin is closed.
#[test]
fn the_demo_cluster_command_serves_a_cluster_until_stdin_closes() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut child = Command::new(env!("CARGO_BIN_EXE_timebox"))
        .args(["demo-cluster", "--setting", "max_connections=42"])
        .args(["--hba", "host all md5_only 127.0.0.1/32 md5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("timebox demo-cluster starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let info: serde_json::Value = match serde_json::from_str(&line) {
        Ok(info) => info,
        Err(e) => {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{e}: {line:?}; stderr: {}", String::from_utf8_lossy(&out.stderr))
        }
    };
    let data_dir = Path::new(info["data_dir"].as_str().unwrap()).to_owned();
    assert!(data_dir.join("postmaster.pid").exists(), "{info}");
    assert_eq!(info["host"], "127.0.0.1");
    assert_eq!(info["superuser"], "postgres");

    let psql = PgInstall::find().unwrap().psql_path();
    let out = Command::new(psql)
        .args([
            "-X",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .args(["-p", &info["port"].to_string()])
        .args([
            "-c",
            "SHOW max_connections",
            "-c",
            "SELECT count(*) FROM pg_hba_file_rules WHERE 'md5_only' = ANY(user_name)",
        ])
        .env("PGPASSWORD", info["password"].as_str().unwrap())
        .env("PGSSLMODE", "disable")
        .env_remove("PGSERVICE")
        .env_remove("PGPASSFILE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n1\n");

    drop(child.stdin.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        !data_dir.exists(),
        "the cluster's directory is deleted when the command ends"
    );
}
