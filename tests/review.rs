//! Role review and policy replay over a real audit trail, produced by psql through the proxy to a
//! real PostgreSQL.

mod common;

use std::collections::BTreeMap;

use common::{psql, Options};
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
    review::trail::for_each_statement(db, window, |r| records.push(r)).expect("read the trail");
    records
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
