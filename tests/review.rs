//! Role review and policy replay over a real audit trail, produced by psql through the proxy to a
//! real PostgreSQL.

mod common;

use std::collections::BTreeMap;

use common::{cli, psql, Options};
use serde_json::json;
use timebox::config::Role;
use timebox::policy::{ServerVersion, StatementClass};
use timebox::review::{self, replay, roles, RecordedStatement, Window};

fn trail(inst: &common::TestInstance, window: &Window) -> Vec<RecordedStatement> {
    let db = inst
        .state
        .audit
        .db_path()
        .expect("the test instance has an audit database");
    let mut records = Vec::new();
    review::trail::for_each_statement(db, window, |r| {
        records.push(r);
        std::ops::ControlFlow::Continue(())
    })
    .expect("read the trail");
    records
}

/// Runs `statements` through the proxy as alice under a write grant (each must succeed) and waits
/// until their records are queryable.
async fn alice_writes(inst: &common::TestInstance, statements: &[String]) {
    let (_, token) = inst.grant("alice", "write", "10m").await;
    let conn = common::proxy_conn(inst, "alice", "sslmode=disable");
    for sql in statements {
        let out = psql(&conn, &token, sql).await;
        assert!(out.success, "{sql}: {out:?}");
    }
    inst.state.audit.wait_indexed().await.expect("indexed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_and_review_answer_from_the_trail_the_proxy_wrote() {
    let inst = common::start(Options::default()).await;
    let (_, token) = inst.grant("alice", "write", "10m").await;
    let mark = common::cluster::unique_name("review");
    let conn = common::proxy_conn(&inst, "alice", "sslmode=disable");
    for sql in [
        "SELECT count(*) FROM items".to_owned(),
        format!("UPDATE items SET name = name WHERE name = '{mark}'"),
        "SELECT count(*) FROM items".to_owned(),
        // denied now (table rule) and under any candidate below
        "SELECT * FROM secret_stuff".to_owned(),
    ] {
        psql(&conn, &token, &sql).await;
    }
    let (_, reader_token) = inst.grant("bob", "read", "10m").await;
    let out = psql(
        &common::proxy_conn(&inst, "bob", "sslmode=disable"),
        &reader_token,
        "SELECT 1",
    )
    .await;
    assert!(out.success, "{out:?}");
    inst.state.audit.wait_indexed().await.expect("indexed");

    let current: BTreeMap<String, Role> = inst.state.config.roles.clone();
    let records = trail(&inst, &Window::default());
    let update = records
        .iter()
        .find(|r| r.sql.contains(&mark))
        .expect("the UPDATE is in the trail")
        .clone();

    // the current roles reproduce every recorded decision: nothing changes
    let same = replay::replay(records.clone(), &current, &current, ServerVersion::OLDEST);
    assert!(!same.changed(), "{same:#?}");
    assert_eq!(same.not_reproducible, 0, "{same:#?}");
    assert_eq!(same.unchanged, records.len() as u64);

    // a candidate whose write role drops `write` denies exactly the UPDATE, linked to its record
    let mut candidate = current.clone();
    candidate.get_mut("write").unwrap().allow = vec![StatementClass::Read];
    let report = replay::replay(records.clone(), &current, &candidate, ServerVersion::OLDEST);
    assert_eq!((report.newly_denied, report.newly_allowed), (1, 0), "{report:#?}");
    let example = &report.groups[0].examples[0];
    assert_eq!(
        (example.seq, &example.session_id),
        (update.seq, &update.session_id)
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["groups"][0]["change"], "newly_denied");
    assert_eq!(json["groups"][0]["role"], "write");

    // the window's role filter sees only the read role's session
    let reads = trail(
        &inst,
        &Window {
            role: Some("read".into()),
            ..Window::default()
        },
    );
    assert_eq!(reads.len(), 1);

    // review: the write role wrote once; the read role never used anything but read
    let reviews = roles::review(records, &current);
    let write = reviews.iter().find(|r| r.role == "write").unwrap();
    assert_eq!(write.classes_used.get("write"), Some(&1));
    assert_eq!(write.denied, 1);
    assert!(
        write.tables_written.iter().any(|t| t.name == "public.items"),
        "{write:#?}"
    );
    let read = reviews.iter().find(|r| r.role == "read").unwrap();
    assert!(read.classes_never_used.is_empty());
    assert!(read.suggestion.as_deref().unwrap().contains("allow = [\"read\"]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_reviews_roles_and_replays_a_candidate_policy() {
    let inst = common::start(Options::default()).await;
    let mark = common::cluster::unique_name("replay");
    alice_writes(
        &inst,
        &[
            "SELECT count(*) FROM items".to_owned(),
            format!("UPDATE items SET name = name WHERE name = '{mark}'"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", inst.admin_url());

    let answer = http
        .get(url("/v1/roles/review?since=1h&role=write"))
        .bearer_auth(common::AUDITOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["statements"], 2, "{body:#}");
    assert_eq!(body["roles"][0]["role"], "write");
    assert_eq!(body["roles"][0]["classes_used"]["write"], 1);

    // the candidate drops write from the write role: the UPDATE is newly denied
    let candidate = json!({
        "read": {"allow": ["read"], "max_ttl": "8h"},
        "write": {"allow": ["read"], "max_ttl": "2h"},
    });
    let answer = http
        .post(url("/v1/policy/replay"))
        .bearer_auth(common::ADMIN_TOKEN)
        .json(&json!({"roles": candidate, "since": "1h", "role": "write"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["changed"], true, "{body:#}");
    assert_eq!(body["report"]["newly_denied"], 1, "{body:#}");
    assert!(body["report"]["groups"][0]["examples"][0]["sql"]
        .as_str()
        .unwrap()
        .contains(&mark));

    // an invalid candidate is 422 naming the key path; a bad window names `since`
    for (body, needle) in [
        (
            json!({"roles": {"write": {"allow": ["everything"]}}}),
            "roles.write.allow[0]",
        ),
        (json!({"roles": {}, "since": "last tuesday"}), "since"),
    ] {
        let answer = http
            .post(url("/v1/policy/replay"))
            .bearer_auth(common::ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 422);
        let text = answer.text().await.unwrap();
        assert!(text.contains(needle), "{text}");
    }
    // requesters may not read other people's statements this way
    let answer = http
        .get(url("/v1/roles/review"))
        .bearer_auth(common::REQUESTER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 403);
}

async fn timebox_cli(args: &[&str], admin_url: &str, token: &str) -> (Option<i32>, String, String) {
    cli::outcome(&cli::timebox_at(args, Some(token), Some(admin_url)).await)
}

/// `policy replay` is a CI gate: exit 0 when no decision changes, 1 when some do, 2 on error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_replays_a_candidate_file_with_gate_exit_codes_and_reviews_roles() {
    let inst = common::start(Options::default()).await;
    let mark = common::cluster::unique_name("gate");
    alice_writes(
        &inst,
        &[
            "SELECT count(*) FROM items".to_owned(),
            format!("DELETE FROM items WHERE name = '{mark}'"),
        ],
    )
    .await;
    let url = inst.admin_url();
    let dir = tempfile::tempdir().unwrap();

    // the instance's own config as the candidate: nothing changes
    let same = dir.path().join("same.toml");
    std::fs::write(&same, common::config_text(&Options::default(), dir.path(), 5432)).unwrap();
    let (code, stdout, stderr) = timebox_cli(
        &["policy", "replay", "--config", same.to_str().unwrap()],
        &url,
        common::AUDITOR_TOKEN,
    )
    .await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("no decision would change"), "{stdout}");

    // the write role without write: the DELETE is newly denied, with its session and seq
    let narrower = dir.path().join("narrower.toml");
    std::fs::write(
        &narrower,
        "[roles.write]\nallow = [\"read\"]\nmax_ttl = \"2h\"\n[roles.read]\nallow = [\"read\"]\nmax_ttl = \"8h\"\n",
    )
    .unwrap();
    let (code, stdout, stderr) = timebox_cli(
        &[
            "policy",
            "replay",
            "--config",
            narrower.to_str().unwrap(),
            "--role",
            "write",
        ],
        &url,
        common::AUDITOR_TOKEN,
    )
    .await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("NEWLY DENIED ×1") && stdout.contains(&mark),
        "{stdout}"
    );
    let (code, stdout, _) = timebox_cli(
        &[
            "policy",
            "replay",
            "--config",
            narrower.to_str().unwrap(),
            "--json",
        ],
        &url,
        common::AUDITOR_TOKEN,
    )
    .await;
    assert_eq!(code, Some(1));
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["report"]["newly_denied"], 1, "{json:#}");
    assert!(
        json["report"]["groups"][0]["examples"][0]["seq"]
            .as_u64()
            .unwrap()
            > 0
    );

    // an invalid candidate and a missing file are errors: exit 2 with the problem named
    let invalid = dir.path().join("invalid.toml");
    std::fs::write(&invalid, "[roles.write]\nallow = [\"everything\"]\n").unwrap();
    let (code, _, stderr) = timebox_cli(
        &["policy", "replay", "--config", invalid.to_str().unwrap()],
        &url,
        common::AUDITOR_TOKEN,
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("roles.write.allow[0]") && stderr.contains("roles.write.max_ttl"),
        "{stderr}"
    );
    let (code, _, stderr) = timebox_cli(
        &["policy", "replay", "--config", "/nonexistent.toml"],
        &url,
        common::AUDITOR_TOKEN,
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");

    // roles review: the write role's tables and the suggestion
    let (code, stdout, stderr) =
        timebox_cli(&["roles", "review", "--since", "1h"], &url, common::AUDITOR_TOKEN).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("role write on shop"), "{stdout}");
    assert!(stdout.contains("public.items"), "{stdout}");
    assert!(stdout.contains("[roles.write]"), "{stdout}");
}

/// Attack finding (F5): replays ran unbounded and piled up. One runs at a time per instance; a
/// second is told so (429 busy) instead of starting another thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_review_runs_at_a_time_and_the_next_is_told_busy() {
    let inst = common::start(Options::default()).await;
    let held = inst
        .state
        .review_slot
        .clone()
        .try_acquire_owned()
        .expect("free slot");
    let http = reqwest::Client::new();
    let answer = http
        .get(format!("{}/v1/roles/review", inst.admin_url()))
        .bearer_auth(common::AUDITOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 429);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["code"], "busy", "{body}");
    drop(held);
    let answer = http
        .get(format!("{}/v1/roles/review", inst.admin_url()))
        .bearer_auth(common::AUDITOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}
