//! Masking's audit records and metrics (issue 15 item 4) through the real proxy, against a real
//! PostgreSQL: each statement outcome of a role with masks names the masked columns its results
//! had (`returned.masked`, from the RowDescription) with the rows and bytes returned — for a
//! simple Query, a FETCH of a cursor and each execution of a prepared statement — and the
//! auditors' `outcomes` view shows them; records of roles without masks or quotas are unchanged;
//! the masked-values, masking-denial, refused-result and quota-stop counters move.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::frames::{bind, exchange, execute, parse, sync};
use common::pg::{audit_records, connect, db_error};
use common::wire::metrics_text;
use common::{psql, raw, TestInstance};
use serde_json::{json, Value};
use tokio::net::TcpStream;

fn roles() -> String {
    use common::cluster::{READ_PASSWORD, READ_USER};
    format!(
        r#"
[roles.support]
allow = ["read"]
max_ttl = "1h"
mask = {{ "public.customers.email" = "email", "public.customers.phone" = "partial" }}
[roles.support_capped]
allow = ["read"]
max_ttl = "1h"
mask = {{ "public.customers.email" = "redact" }}
max_rows_per_statement = 1
[targets.shop.credentials.support]
user = "{READ_USER}"
password = "{READ_PASSWORD}"
[targets.shop.credentials.support_capped]
user = "{READ_USER}"
password = "{READ_PASSWORD}"
"#
    )
}

async fn start() -> TestInstance {
    common::masking::start_over(&[common::masking::FIXTURE], roles()).await
}

async fn session(inst: &TestInstance, role: &str) -> tokio_postgres::Client {
    let (_, token) = inst.grant("alice", role, "10m").await;
    connect(&inst.conn_string("alice", &token, "disable")).await
}

fn masked(columns: &[(&str, &str)]) -> Value {
    columns
        .iter()
        .map(|(c, m)| json!({"column": c, "method": m}))
        .collect()
}

/// The outcome payloads of the allowed statements whose text is `sql`, in order, once `n` exist.
async fn outcomes_of(inst: &TestInstance, sql: &str, n: usize) -> Vec<Value> {
    let db = inst.audit_db();
    let find = |records: &[(String, Value)]| -> Vec<Value> {
        let ids: Vec<(Value, Value)> = records
            .iter()
            .filter(|(k, p)| k == "statement" && p["sql"] == sql && p["decision"] == "allow")
            .map(|(_, p)| (p["session_id"].clone(), p["statement_id"].clone()))
            .collect();
        records
            .iter()
            .filter(|(k, p)| {
                k == "statement_outcome"
                    && ids
                        .iter()
                        .any(|(s, i)| p["session_id"] == *s && p["statement_id"] == *i)
            })
            .map(|(_, p)| p.clone())
            .collect()
    };
    let found = common::eventually(Duration::from_secs(20), || {
        let db = db.clone();
        async move { find(&audit_records(&db)).len() >= n }
    })
    .await;
    let all = find(&audit_records(&db));
    assert!(found, "{n} outcomes of {sql:?}: {all:#?}");
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_outcome_of_a_masked_result_names_its_masked_columns_and_what_it_returned() {
    let inst = start().await;
    let client = session(&inst, "support").await;
    // Simple protocol; an alias does not hide the column (identity comes from the catalog).
    let simple = "SELECT id, email AS contact FROM customers ORDER BY id";
    client.simple_query(simple).await.unwrap();
    let o = &outcomes_of(&inst, simple, 1).await[0];
    assert_eq!(
        o["returned"]["masked"],
        masked(&[("public.customers.email", "email")]),
        "{o}"
    );
    assert_eq!(o["returned"]["rows"], 2, "{o}");
    assert!(o["returned"]["bytes"].as_u64().unwrap() > 0, "{o}");
    // A prepared statement (extended protocol, binary results) executed twice: each execution's
    // outcome lists its masked columns.
    let prepared = "SELECT id, email, phone FROM customers WHERE id = $1";
    let stmt = client.prepare(prepared).await.unwrap();
    for id in [1i32, 2] {
        let row = client.query_one(&stmt, &[&id]).await.unwrap();
        assert!(row.get::<_, String>(1).starts_with("***@"));
    }
    let executions: Vec<Value> = outcomes_of(&inst, prepared, 3)
        .await
        .into_iter()
        .filter(|o| o["command_tag"] == "SELECT 1")
        .collect();
    assert_eq!(executions.len(), 2, "{executions:#?}");
    for o in &executions {
        let both = masked(&[
            ("public.customers.email", "email"),
            ("public.customers.phone", "partial"),
        ]);
        assert_eq!(o["returned"]["masked"], both, "{o}");
        assert_eq!(o["returned"]["rows"], 1, "{o}");
    }
    // A FETCH of a cursor.
    // (Ends with ROLLBACK: a masked role's string may not COMMIT among other statements.)
    let fetch =
        "BEGIN; DECLARE c CURSOR FOR SELECT phone FROM customers ORDER BY id; FETCH 2 FROM c; ROLLBACK";
    client.simple_query(fetch).await.unwrap();
    let o = &outcomes_of(&inst, fetch, 1).await[0];
    assert_eq!(
        o["returned"]["masked"],
        masked(&[("public.customers.phone", "partial")]),
        "{o}"
    );
    // A plain result of the same role: rows and bytes, no masked columns.
    let plain = "SELECT id, name FROM customers";
    client.simple_query(plain).await.unwrap();
    let o = &outcomes_of(&inst, plain, 1).await[0];
    assert_eq!(o["returned"]["rows"], 2, "{o}");
    assert!(o["returned"].get("masked").is_none(), "{o}");
    // Auditors see them in the outcomes view.
    let audit = format!(
        "host=127.0.0.1 port={} user=audrey dbname=timebox_audit sslmode=require",
        inst.proxy_addr.port()
    );
    let sql = "SELECT DISTINCT masked_columns FROM outcomes WHERE masked_columns LIKE '%phone%' AND masked_columns LIKE '%email%'";
    let out = psql(&audit, common::AUDITOR_TOKEN, sql).await;
    assert_eq!(
        out.stdout.trim(),
        "public.customers.email email, public.customers.phone partial",
        "{out:?}"
    );
    let trail = format!("{:?}", audit_records(&inst.audit_db()));
    assert!(
        !trail.contains("alice@example.com"),
        "no value in the audit trail"
    );
}

/// A role without masks or quotas: its outcome records are what they were before masking
/// existed, byte for byte (no `returned`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_of_a_role_without_masks_or_quotas_are_unchanged() {
    let inst = start().await;
    let client = session(&inst, "read").await;
    let sql = "SELECT id, email FROM customers ORDER BY id";
    client.simple_query(sql).await.unwrap();
    let o = &outcomes_of(&inst, sql, 1).await[0];
    let expected = format!(
        r#"{{"command_tag":"SELECT 2","duration_us":{},"rows":2,"session_id":{},"sqlstate":null,"statement_id":{}}}"#,
        o["duration_us"], o["session_id"], o["statement_id"]
    );
    let conn =
        rusqlite::Connection::open_with_flags(inst.audit_db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let stored: String = conn
        .query_row(
            "SELECT payload FROM audit_events WHERE kind = 'statement_outcome' AND payload = ?1",
            [&expected],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("no outcome stored as {expected}: {e}; {o}"));
    assert_eq!(stored, expected);
}

/// A role with masks and a row quota: the stopped statement's outcome has the quota stop and the
/// masked columns, and counts only the row the client got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_stop_of_a_masked_result_records_both() {
    let inst = start().await;
    let client = session(&inst, "support_capped").await;
    let sql = "SELECT email FROM customers ORDER BY id";
    let e = client.simple_query(sql).await.expect_err("stopped at 1 row");
    assert_eq!(db_error(&e).0, "54000", "{e}");
    let o = &outcomes_of(&inst, sql, 1).await[0];
    assert_eq!(o["returned"]["quota_stop"], "max_rows_per_statement", "{o}");
    assert_eq!(o["returned"]["rows"], 1, "{o}");
    assert_eq!(
        o["returned"]["masked"],
        masked(&[("public.customers.email", "redact")]),
        "{o}"
    );
    assert_eq!(o["sqlstate"], "54000", "{o}");
}

/// The value of the sample `series` (name and labels as exposed), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Parse, Bind, Execute, Sync of `sql` with no Describe; a summary of the answer.
async fn execute_undescribed(s: &mut TcpStream, buf: &mut BytesMut, sql: &str) -> String {
    let frames = [parse("", sql), bind("", ""), execute(""), sync()];
    exchange(s, buf, &frames).await
}

/// Issue 15 item 4: masked values, statements denied for masking (before they run, and results
/// whose rows timebox refuses) and quota stops by limit are each counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masking_and_quota_counters_move() {
    let inst = start().await;
    let before = metrics_text(&inst).await;
    let client = session(&inst, "support").await;
    // 2 rows × 2 masked columns (a NULL counts: its column is masked).
    client
        .simple_query("SELECT email, phone FROM customers")
        .await
        .unwrap();
    let e = client
        .simple_query("SELECT lower(email) FROM customers")
        .await
        .expect_err("denied shape");
    assert_eq!(db_error(&e).0, "42501", "{e}");
    // Rows of a statement never described: not sent (42501), counted as refused.
    let (_, token) = inst.grant("alice", "support", "10m").await;
    let (mut s, mut buf) = raw::login(inst.proxy_addr, "alice", &token).await;
    let answer = execute_undescribed(&mut s, &mut buf, "SELECT email FROM customers").await;
    assert!(answer.contains("42501") && !answer.contains("D:"), "{answer}");
    let capped = session(&inst, "support_capped").await;
    capped
        .simple_query("SELECT id FROM customers")
        .await
        .expect_err("stopped");
    let after = metrics_text(&inst).await;
    let moved = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(moved("timebox_masked_values_total"), 4.0, "{after}");
    assert_eq!(moved("timebox_masking_denials_total"), 1.0, "{after}");
    assert_eq!(moved("timebox_masking_refusals_total"), 1.0, "{after}");
    assert_eq!(
        moved("timebox_quota_stops_total{limit=\"max_rows_per_statement\"}"),
        1.0,
        "{after}"
    );
}
