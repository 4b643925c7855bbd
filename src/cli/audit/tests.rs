use super::*;
use crate::audit::BadRecord;
use serde_json::json;

fn record(seq: u64, kind: &str, payload: serde_json::Value) -> AuditRecord {
    AuditRecord {
        cursor: None,
        instance: None,
        hash: "ab".repeat(32),
        kind: kind.into(),
        payload,
        prev_hash: "00".repeat(32),
        seq,
        ts: "2026-01-01T00:00:00.000000Z".into(),
    }
}

#[test]
fn table_rows_show_who_and_what() {
    let text = render_audit_table(&[
        record(
            2,
            "statement",
            json!({"user": "alice", "session_id": "s_1", "decision": "deny", "class": "write",
                   "sql": "DELETE FROM t\nWHERE 1", "reason": "role read may not write"}),
        ),
        record(
            1,
            "statement_outcome",
            json!({"session_id": "s_1", "statement_id": 1, "command_tag": "SELECT 3",
                   "sqlstate": null, "duration_us": 1500}),
        ),
    ]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("SEQ     TS"), "{text}");
    assert!(
        lines[1].ends_with("deny write: DELETE FROM t WHERE 1 — role read may not write"),
        "{text}"
    );
    assert!(lines[1].contains("alice"), "{text}");
    assert!(lines[2].ends_with("#1 SELECT 3 in 1.5 ms"), "{text}");
    assert!(lines[2].contains("  -  "), "no user on an outcome: {text}");
    assert_eq!(render_audit_table(&[]), "no audit records\n");
}

/// See: issue 17: `access_request` records were shown as raw JSON, and break-glass was not
/// flagged in `audit search`.
#[test]
fn requests_read_as_words_and_break_glass_is_flagged() {
    let request = record(
        3,
        "access_request",
        json!({"action": "approved", "actor": "bob", "break_glass": false, "grant_id": "g_9",
               "reason": "matches INC-1", "request_id": "r_1", "role": "write", "target": "shop",
               "ticket": "INC-1", "ttl": "30m", "user": "alice"}),
    );
    assert_eq!(
        record_detail(&request),
        "request r_1 approved by bob: write on shop for 30m [INC-1] → grant g_9 (matches INC-1)"
    );
    let mut glass = request.clone();
    glass.payload["action"] = json!("created");
    glass.payload["break_glass"] = json!(true);
    glass.payload["actor"] = json!("alice");
    glass.payload["reason"] = json!(null);
    assert!(
        record_detail(&glass).starts_with("BREAK-GLASS request r_1 created by alice"),
        "{}",
        record_detail(&glass)
    );
    let issued = record(
        4,
        "grant_issued",
        json!({"break_glass": true, "grant_id": "g_9", "role": "admin", "created_by": "alice",
               "expires_at": "2026-01-01T01:00:00Z", "reason": "prod down", "user": "alice"}),
    );
    assert!(
        record_detail(&issued).starts_with("BREAK-GLASS grant g_9"),
        "{}",
        record_detail(&issued)
    );
}

/// See: issue 17 item 1: admin-token records read as words, like the others (not raw JSON).
#[test]
fn admin_token_records_read_as_words() {
    let issued = record(
        5,
        "admin_token_issued",
        json!({"created_at": "2026-01-01T00:00:00Z", "created_by": "ops", "expires_at": null,
               "name": "carol", "roles": ["approver", "auditor"]}),
    );
    assert_eq!(
        record_detail(&issued),
        "admin token carol (approver, auditor) issued by ops, until revoked"
    );
    let revoked = record(
        6,
        "admin_token_revoked",
        json!({"name": "carol", "revoked_at": "2026-01-01T00:00:00Z", "revoked_by": "ops"}),
    );
    assert_eq!(record_detail(&revoked), "admin token carol revoked by ops");
}

/// See: issue 17: `audit tail --follow` printed later rows with other column widths than the
/// first page's header.
#[test]
fn follow_lines_line_up_with_the_first_page() {
    let first = render_audit_table(&[record(
        1,
        "session_start",
        json!({"user": "al", "session_id": "s_0123456789abcdef"}),
    )]);
    let later = render_audit_lines(&[record(
        12345,
        "statement_outcome",
        json!({"user": "bartholomew", "session_id": "s_1", "statement_id": 1, "command_tag": "SELECT 1"}),
    )]);
    let header = first.lines().next().unwrap();
    let row = later.lines().next().unwrap();
    for column in ["TS", "KIND", "USER", "SESSION", "DETAIL"] {
        let at = header.find(column).unwrap();
        assert!(
            row[..at].ends_with("  ") && !row[at..].starts_with(' '),
            "{column} at {at}:\n{header}\n{row}"
        );
    }
}

#[test]
fn verify_report_says_ok_or_where_it_failed() {
    let head = Head {
        seq: 9,
        hash: "cd".repeat(32),
    };
    let ok = VerifyReport {
        ok: true,
        records: 9,
        head: head.clone(),
        first_bad: None,
        anchor: None,
        instances: Vec::new(),
    };
    assert!(render_verify_report(&ok).starts_with("ok: 9 records"));
    let bad = VerifyReport {
        ok: false,
        first_bad: Some(BadRecord {
            seq: 4,
            problem: "record 4 is missing (deleted)".into(),
            instance: None,
        }),
        ..ok.clone()
    };
    let text = render_verify_report(&bad);
    assert!(
        text.starts_with("FAILED at record 4: record 4 is missing"),
        "{text}"
    );
    assert!(text.contains(&format!("head 9:{}", "cd".repeat(32))));
    assert_eq!(render_head(&head), format!("9:{}\n", "cd".repeat(32)));
    let fleet = VerifyReport {
        ok: false,
        first_bad: Some(BadRecord {
            seq: 5,
            problem: "hash does not match the record's content (edited)".into(),
            instance: Some("tb-b".into()),
        }),
        instances: vec![crate::audit::InstanceReport {
            instance: "tb-b".into(),
            report: ok.clone(),
        }],
        ..ok
    };
    let text = render_verify_report(&fleet);
    assert!(
        text.starts_with("FAILED at instance tb-b record 5: hash"),
        "{text}"
    );
    assert!(text.contains("instance tb-b: ok, 9 records"), "{text}");
}

#[test]
fn time_arguments_are_absolute_or_ago() {
    let now = DateTime::parse_from_rfc3339("2026-01-02T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    assert_eq!(
        parse_time_arg("24h", now).unwrap().to_rfc3339(),
        "2026-01-01T00:00:00+00:00"
    );
    assert_eq!(
        parse_time_arg("2026-01-01T12:00:00+02:00", now)
            .unwrap()
            .to_rfc3339(),
        "2026-01-01T10:00:00+00:00"
    );
    assert!(parse_time_arg("yesterday", now).is_err());
}

#[test]
fn filter_flags_are_sent_only_when_set() {
    let args = AuditFilterArgs {
        user: Some("alice".into()),
        grant: None,
        target: None,
        session: None,
        class: None,
        decision: Some("deny".into()),
        kind: None,
        contains: None,
        instance: None,
    };
    let filter = AuditFilter {
        limit: 5,
        ..args.into()
    };
    assert_eq!(
        super::super::client::query_pairs(&filter),
        [("decision", "deny"), ("limit", "5"), ("user", "alice")].map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
}

/// The CLI sends the one filter as a query string and the API reads the same filter back: no
/// field is lost, renamed or reformatted on the way.
#[test]
fn the_api_reads_back_the_filter_the_cli_sends() {
    let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
    let sent = AuditFilter {
        user: Some("alice".into()),
        grant: Some("g_1".into()),
        target: Some("shop".into()),
        session: Some("s_1".into()),
        class: Some("write".into()),
        decision: Some("deny".into()),
        kind: Some("statement".into()),
        since: Some(t("2026-01-01T00:00:00.123456Z")),
        until: Some(t("2026-01-02T00:00:00+02:00")),
        contains: Some("a&b=c d%".into()),
        instance: Some("tb-b".into()),
        cursor: Some(42),
        limit: 7,
        order: Order::Asc,
    };
    let client = AdminClient::new("http://h:1", crate::config::Secret::new("t")).unwrap();
    for filter in [sent, AuditFilter::default()] {
        let uri: axum::http::Uri = client.url(&["v1", "audit"], &filter).as_str().parse().unwrap();
        let axum::extract::Query(read) = axum::extract::Query::<AuditFilter>::try_from_uri(&uri)
            .unwrap_or_else(|e| panic!("{uri}: {}", e.body_text()));
        assert_eq!(read, filter, "{uri}");
    }
}

/// s6 (issue 15 item 4): an outcome of a role with masks or quotas shows what it returned and
/// the masked columns; one without `returned` reads as before.
#[test]
fn outcomes_show_rows_returned_and_masked_columns() {
    let outcome = record(
        4,
        "statement_outcome",
        json!({"command_tag": "SELECT 2", "duration_us": 2000, "session_id": "s_1",
               "sqlstate": null, "statement_id": 7, "rows": 2,
               "returned": {"bytes": 120, "rows": 2, "masked": [
                   {"column": "public.customers.email", "method": "email"}]}}),
    );
    assert_eq!(
        record_detail(&outcome),
        "#7 SELECT 2 in 2.0 ms; returned 2 rows, 120 B; masked public.customers.email (email)"
    );
    let stopped = record(
        5,
        "statement_outcome",
        json!({"command_tag": null, "duration_us": 1000, "session_id": "s_1", "sqlstate": "54000",
               "statement_id": 8, "rows": null,
               "returned": {"bytes": 10, "rows": 1, "quota_stop": "max_rows_per_statement"}}),
    );
    assert_eq!(
        record_detail(&stopped),
        "#8 error 54000 in 1.0 ms; returned 1 rows, 10 B, stopped by max_rows_per_statement"
    );
}
