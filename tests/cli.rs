//! The real `timebox` binary as an engineer runs it: `grant issue/list/show/revoke` against a real
//! instance's admin API, its errors, `admin-token new` and `check-config`.

mod common;

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use common::cli::{stderr, stdout, timebox};
use common::{ADMIN_TOKEN, AUDITOR_TOKEN, MINIMAL_CONFIG};

fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_list_show_revoke_round_trip() {
    let tb = common::start(common::Options::default()).await;
    let url = tb.admin_url();
    let out = timebox(
        &[
            "grant",
            "--admin-url",
            &url,
            "issue",
            "--user",
            "alice",
            "--target",
            "shop",
            "--role",
            "read",
            "--ttl",
            "30m",
            "--reason",
            "incident 4711: slow checkout",
        ],
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_ok(&out);
    let text = stdout(&out);
    let token = text
        .split_whitespace()
        .find(|w| w.starts_with("tbx_") && !w.contains('\''))
        .unwrap_or_else(|| panic!("no token line in:\n{text}"))
        .to_owned();
    assert!(text.contains("shown only once"), "{text}");
    let psql_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("PGPASSWORD="))
        .unwrap_or_else(|| panic!("no psql line in:\n{text}"));
    assert!(
        psql_line.contains(&format!("PGPASSWORD='{token}' psql")),
        "{psql_line}"
    );
    assert!(
        psql_line.contains(&format!("port={}", tb.proxy_addr.port())),
        "{psql_line}"
    );
    let id = text
        .split_whitespace()
        .find(|w| w.starts_with("g_"))
        .unwrap_or_else(|| panic!("no grant id in:\n{text}"))
        .to_owned();

    // The token works: it is the one the grant service verifies (the listed grant is the issued one).
    let grants = tb.state.grants.list(Default::default()).await.unwrap();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].id, id);

    let out = timebox(
        &["grant", "list", "--json", "--admin-url", &url],
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_ok(&out);
    let json: Value = serde_json::from_str(&stdout(&out)).expect("list --json is JSON");
    let listed = json["grants"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["status"], "active");
    assert!(!stdout(&out).contains(&token), "the token is never listed");

    let out = timebox(
        &["grant", "list", "--admin-url", &url, "--user", "alice"],
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_ok(&out);
    let table = stdout(&out);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("EXPIRES_AT") && header.contains("REASON"),
        "{table}"
    );
    let row = lines.next().unwrap();
    assert!(
        row.starts_with(&id) && row.contains("alice") && row.contains("active"),
        "{table}"
    );

    let out = timebox(
        &["grant", "list", "--admin-url", &url, "--user", "nobody"],
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_ok(&out);
    assert_eq!(stdout(&out), "no grants\n");

    let out = timebox(&["grant", "show", &id, "--admin-url", &url], Some(ADMIN_TOKEN)).await;
    assert_ok(&out);
    assert!(
        stdout(&out).contains("incident 4711: slow checkout"),
        "{}",
        stdout(&out)
    );

    // The token from a file works as well as from the environment.
    let token_file = tb.dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
    let out = timebox(
        &[
            "grant",
            "revoke",
            &id,
            "--reason",
            "done",
            "--admin-url",
            &url,
            "--admin-token-file",
            token_file.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_ok(&out);
    assert!(
        stdout(&out).contains(&format!("Revoked grant {id}")),
        "{}",
        stdout(&out)
    );

    let out = timebox(
        &["grant", "show", &id, "--json", "--admin-url", &url],
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_ok(&out);
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["status"], "revoked");
    assert_eq!(json["revoked_by"], "ops");

    // A second revocation is the API's conflict, reported on stderr with exit code 1.
    let out = timebox(
        &["grant", "revoke", &id, "--reason", "again", "--admin-url", &url],
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already revoked") && stderr(&out).contains("conflict"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_are_printed_with_exit_code_1() {
    let tb = common::start(common::Options::default()).await;
    let url = tb.admin_url();

    let out = timebox(&["grant", "list", "--admin-url", &url], Some("wrong-token")).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("unknown admin token"), "{}", stderr(&out));
    assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());

    let issue = [
        "grant",
        "issue",
        "--admin-url",
        &url,
        "--user",
        "alice",
        "--target",
        "shop",
        "--role",
        "read",
        "--ttl",
        "30m",
        "--reason",
        "x",
    ];
    let out = timebox(&issue, Some(AUDITOR_TOKEN)).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("requires role admin"), "{}", stderr(&out));

    let mut over = issue.to_vec();
    over[11] = "9h";
    let out = timebox(&over, Some(ADMIN_TOKEN)).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("ttl:") && stderr(&out).contains("invalid_request"),
        "{}",
        stderr(&out)
    );

    let out = timebox(
        &["grant", "show", "g_nope", "--admin-url", &url],
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no grant g_nope"), "{}", stderr(&out));

    let out = timebox(&["grant", "list", "--admin-url", &url], None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("TIMEBOX_ADMIN_TOKEN"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_admin_api_is_named() {
    // A port that was just free: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let out = timebox(&["grant", "list", "--admin-url", &url], Some(ADMIN_TOKEN)).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("cannot reach the admin API at {url}:")),
        "{err}"
    );
    assert!(err.to_lowercase().contains("refused"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_new_prints_a_token_and_its_config_entry() {
    let out = timebox(
        &[
            "admin-token",
            "new",
            "--config-line",
            "--name",
            "carol",
            "--role",
            "approver",
            "--role",
            "auditor",
        ],
        None,
    )
    .await;
    assert_ok(&out);
    let text = stdout(&out);
    let token = text
        .split_whitespace()
        .find(|w| w.starts_with("tbxa_"))
        .unwrap_or_else(|| panic!("no token in:\n{text}"));
    assert_eq!(token.len(), "tbxa_".len() + 32);
    let snippet = &text[text.find("[[admin.tokens]]").expect("TOML snippet")..];
    let value: toml::Value = toml::from_str(snippet).expect("the snippet is TOML");
    let entry = &value["admin"]["tokens"][0];
    assert_eq!(entry["name"].as_str(), Some("carol"));
    assert_eq!(
        entry["sha256"].as_str(),
        Some(timebox::grants::token::sha256_hex(token).as_str())
    );
    let scram = entry["scram"]
        .as_str()
        .expect("a scram verifier for timebox_audit");
    let verifier = timebox::grants::token::ScramVerifier::from_text(scram).expect("PostgreSQL's format");
    assert_eq!(
        verifier,
        timebox::grants::token::ScramVerifier::derive(token, &verifier.salt, verifier.iterations)
    );
    let roles: Vec<&str> = entry["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(roles, ["approver", "auditor"]);

    let out = timebox(&["admin-token", "new", "--name", "carol", "--role", "root"], None).await;
    assert!(!out.status.success());
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.toml", MINIMAL_CONFIG);
    let out = timebox(&["check-config", "--config", &good], None).await;
    assert_ok(&out);
    assert_eq!(stdout(&out).trim(), "ok");

    let bad_text = MINIMAL_CONFIG
        .replace("listen = \"127.0.0.1:0\"\ntls", "listen = \"nowhere\"\ntls")
        .replace("max_ttl = \"1h\"", "max_ttl = \"forever\"\nallow_all = true");
    let bad = write(dir.path(), "bad.toml", &bad_text);
    let out = timebox(&["check-config", "--config", &bad], None).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    for path in ["proxy.listen", "roles.read.max_ttl", "roles.read.allow_all"] {
        assert!(err.contains(path), "{path} missing from:\n{err}");
    }

    // `serve` refuses the same file with exit code 2, before binding anything.
    let out = timebox(&["serve", "--config", &bad], None).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("roles.read.max_ttl"), "{}", stderr(&out));

    let out = timebox(
        &[
            "check-config",
            "--config",
            &dir.path().join("missing.toml").to_string_lossy(),
        ],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read config file"),
        "{}",
        stderr(&out)
    );
}
