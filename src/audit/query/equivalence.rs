//! Issue 13 moved statement and outcome records out of the user and grant indexes (they are found
//! through their sessions, `audit_sessions`). These tests hold every filter to what it meant before
//! — exactly the records whose columns match — on a trail with several users, grants, sessions and
//! records of each kind: on a new database, on one upgraded from the previous schema, and after
//! retention; and they check that a user, grant or session filter never scans `audit_events`.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection};

use super::*;
use crate::audit::event::{
    AccessRequestEvent, AuditEvent, AuthFailure, Decision, GrantIssued, GrantRevoked, SessionEnd,
    SessionStart, Statement, StatementOutcome, UpstreamEnd,
};
use crate::audit::sqlite::{self, IndexRow};

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn statement(user: &str, grant: &str, session: &str, id: u64, sql: &str) -> AuditEvent {
    AuditEvent::Statement(Statement {
        class: "read".into(),
        decision: if sql.starts_with("DELETE") {
            Decision::Deny
        } else {
            Decision::Allow
        },
        grant_id: grant.into(),
        params: None,
        reason: None,
        relations: vec!["public.orders".into()],
        session_id: session.into(),
        sql: sql.into(),
        sql_bytes: None,
        sql_sha256: None,
        sql_truncated: false,
        statement_id: id,
        target: if grant.is_empty() { "timebox_audit" } else { "shop" }.into(),
        user: user.into(),
    })
}

fn outcome(session: &str, id: u64) -> AuditEvent {
    AuditEvent::StatementOutcome(StatementOutcome {
        command_tag: Some("SELECT 1".into()),
        duration_us: 10,
        returned: None,
        rows: Some(1),
        session_id: session.into(),
        sqlstate: None,
        statement_id: id,
    })
}

fn session_start(user: &str, grant: &str, session: &str) -> AuditEvent {
    AuditEvent::SessionStart(SessionStart {
        application_name: None,
        client_addr: "127.0.0.1:5000".into(),
        grant_id: grant.into(),
        role: "read".into(),
        session_id: session.into(),
        target: "shop".into(),
        tls_version: None,
        user: user.into(),
    })
}

fn session_end(user: &str, grant: &str, session: &str) -> AuditEvent {
    AuditEvent::SessionEnd(SessionEnd {
        bytes_from_client: 1,
        bytes_to_client: 2,
        duration_us: 3,
        ended_by: None,
        grant_id: grant.into(),
        reason: "client_exit".into(),
        session_id: session.into(),
        statements: 3,
        target: "shop".into(),
        user: user.into(),
    })
}

fn grant_issued(user: &str, grant: &str) -> AuditEvent {
    AuditEvent::GrantIssued(GrantIssued {
        break_glass: false,
        created_at: t0(),
        created_by: "ops".into(),
        expires_at: t0() + chrono::Duration::hours(1),
        grant_id: grant.into(),
        reason: "incident".into(),
        role: "read".into(),
        starts_at: t0(),
        target: "shop".into(),
        user: user.into(),
    })
}

/// Users alice (grants g_a1, g_a2), bob (g_b1) with two sessions per grant, interleaved, each
/// with statements and outcomes; an auditor (`audrey`, grant "", session a_1) whose statements
/// have no session start; carol, who never logs in; every other kind once.
pub(crate) fn trail() -> Vec<AuditEvent> {
    let mut events = vec![
        grant_issued("alice", "g_a1"),
        grant_issued("bob", "g_b1"),
        AuditEvent::AuthFailure(AuthFailure {
            client_addr: "127.0.0.1:5001".into(),
            reason: "no active grant".into(),
            target: "shop".into(),
            user: "carol".into(),
        }),
    ];
    let sessions = [
        ("alice", "g_a1", "s_a1_1"),
        ("bob", "g_b1", "s_b1_1"),
        ("alice", "g_a1", "s_a1_2"),
    ];
    for (user, grant, session) in sessions {
        events.push(session_start(user, grant, session));
    }
    for id in 1..=3 {
        for (user, grant, session) in sessions {
            events.push(statement(user, grant, session, id, &format!("SELECT {id}")));
            events.push(outcome(session, id));
        }
        events.push(statement(
            "audrey",
            "",
            "a_1",
            id,
            "SELECT count(*) FROM statements",
        ));
    }
    events.push(session_end("bob", "g_b1", "s_b1_1"));
    events.push(AuditEvent::GrantRevoked(GrantRevoked {
        grant_id: "g_a1".into(),
        reason: "done".into(),
        revoked_at: t0(),
        revoked_by: "ops".into(),
        target: "shop".into(),
        user: "alice".into(),
    }));
    events.push(AuditEvent::AccessRequest(AccessRequestEvent {
        action: "approved".into(),
        actor: "ops".into(),
        break_glass: false,
        grant_id: Some("g_a2".into()),
        reason: None,
        request_id: "r_1".into(),
        role: "read".into(),
        target: "shop".into(),
        ticket: None,
        ttl: "30m".into(),
        user: "alice".into(),
    }));
    events.push(grant_issued("alice", "g_a2"));
    events.push(session_start("alice", "g_a2", "s_a2_1"));
    for id in 1..=4 {
        events.push(statement("alice", "g_a2", "s_a2_1", id, "DELETE FROM orders"));
        events.push(outcome("s_a2_1", id));
        // bob's second session runs at the same time, statements only (it never ends).
        events.push(statement("bob", "g_b1", "s_b1_2", id, "SELECT 2"));
    }
    events.push(AuditEvent::UpstreamEnd(UpstreamEnd {
        after_us: 5,
        grant_id: "g_a2".into(),
        outcome: "closed".into(),
        session_id: "s_a2_1".into(),
        target: "shop".into(),
        user: "alice".into(),
    }));
    events.push(session_end("alice", "g_a1", "s_a1_1"));
    events.extend(
        crate::audit::event::tests::samples()
            .into_iter()
            .filter(|e| matches!(e, AuditEvent::AdminTokenIssued(_) | AuditEvent::AuditRetention(_))),
    );
    events
}

/// The trail's rows, one second apart from [`t0`].
fn rows() -> Vec<IndexRow> {
    trail()
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let ts = format_ts(t0() + chrono::Duration::seconds(i as i64));
            sqlite::tests::row(i as u64 + 1, &ts, e)
        })
        .collect()
}

/// One stored record's filterable columns.
struct Stored {
    seq: u64,
    ts: String,
    kind: String,
    user: Option<String>,
    grant: Option<String>,
    target: Option<String>,
    session: Option<String>,
}

fn stored(conn: &Connection) -> Vec<Stored> {
    let mut stmt = conn
        .prepare(
            "SELECT seq, ts, kind, user_name, grant_id, target, session_id FROM audit_events ORDER BY seq",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok(Stored {
                seq: r.get::<_, i64>(0)? as u64,
                ts: r.get(1)?,
                kind: r.get(2)?,
                user: r.get(3)?,
                grant: r.get(4)?,
                target: r.get(5)?,
                session: r.get(6)?,
            })
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// What `f` means, worked out over the columns in Rust: the page of seqs and the next cursor.
fn expected(all: &[Stored], f: &AuditFilter) -> (Vec<u64>, Option<u64>) {
    let eq = |want: &Option<String>, have: &Option<String>| want.is_none() || want == have;
    let mut seqs: Vec<u64> = all
        .iter()
        .filter(|r| {
            eq(&f.user, &r.user)
                && eq(&f.grant, &r.grant)
                && eq(&f.target, &r.target)
                && eq(&f.session, &r.session)
                && f.kind.as_ref().is_none_or(|k| *k == r.kind)
                && f.since.is_none_or(|t| r.ts >= format_ts(t))
                && f.until.is_none_or(|t| r.ts < format_ts(t))
                && f.cursor.is_none_or(|c| match f.order {
                    Order::Desc => r.seq < c,
                    Order::Asc => r.seq > c,
                })
        })
        .map(|r| r.seq)
        .collect();
    if f.order == Order::Desc {
        seqs.reverse();
    }
    let limit = f.page_size();
    let next = (seqs.len() > limit).then(|| seqs[limit - 1]);
    seqs.truncate(limit);
    (seqs, next)
}

/// Every combination of user, grant, session and kind, in four shapes of time range and page.
fn filters() -> Vec<AuditFilter> {
    let some = |v: &[&str]| -> Vec<Option<String>> {
        std::iter::once(None)
            .chain(v.iter().map(|s| Some(s.to_string())))
            .collect()
    };
    let users = some(&["alice", "bob", "audrey", "carol", "ci-bot", "nobody"]);
    let grants = some(&["g_a1", "g_a2", "g_b1", "", "g_none"]);
    let sessions = some(&["s_a1_1", "s_b1_2", "a_1", "s_none"]);
    let kinds = some(&[
        "statement",
        "statement_outcome",
        "session_start",
        "grant_issued",
        "auth_failure",
    ]);
    let mid = t0() + chrono::Duration::seconds(20);
    let shapes = [
        AuditFilter::default(),
        AuditFilter {
            since: Some(mid),
            limit: 2,
            order: Order::Asc,
            cursor: Some(5),
            ..Default::default()
        },
        AuditFilter {
            until: Some(mid),
            limit: 3,
            cursor: Some(40),
            ..Default::default()
        },
        AuditFilter {
            since: Some(t0() + chrono::Duration::seconds(3)),
            until: Some(t0() + chrono::Duration::seconds(45)),
            target: Some("shop".into()),
            ..Default::default()
        },
    ];
    let mut out = Vec::new();
    for user in &users {
        for grant in &grants {
            for session in &sessions {
                for kind in &kinds {
                    for shape in &shapes {
                        out.push(AuditFilter {
                            user: user.clone(),
                            grant: grant.clone(),
                            session: session.clone(),
                            kind: kind.clone(),
                            ..shape.clone()
                        });
                    }
                }
            }
        }
    }
    out
}

/// Runs every filter against `conn` and compares with [`expected`]; returns how many matched
/// anything (so a trail that matches nothing cannot pass).
fn assert_every_filter_exact(conn: &Connection) -> usize {
    let all = stored(conn);
    let mut nonempty = 0;
    for f in filters() {
        let page = query(conn, &f).unwrap();
        let got: Vec<u64> = page.events.iter().map(|e| e.seq).collect();
        let want = expected(&all, &f);
        assert_eq!((got, page.next_cursor), want, "{f:?}");
        nonempty += usize::from(!want.0.is_empty());
    }
    nonempty
}

fn indexed_db(rows: &[IndexRow]) -> Connection {
    let mut conn = sqlite::open_writer(None).unwrap();
    sqlite::insert_rows(&mut conn, rows).unwrap();
    conn
}

#[test]
fn every_filter_returns_exactly_the_records_whose_columns_match() {
    let conn = indexed_db(&rows());
    let nonempty = assert_every_filter_exact(&conn);
    assert!(nonempty >= 200, "{nonempty}");
}

/// `EXPLAIN QUERY PLAN` of the filter's SQL, its detail lines joined.
fn plan(conn: &Connection, f: &AuditFilter) -> String {
    let (sql, values) = super::statement(f);
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let details: Vec<String> = stmt
        .query_map(rusqlite::params_from_iter(values), |r| r.get::<_, String>(3))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    details.join("; ")
}

/// A user, grant or session filter (with anything else) finds its records through indexes: no
/// `SCAN` of `audit_events` (or of `audit_sessions`) in its plan.
#[test]
fn every_user_grant_or_session_filter_is_answered_from_an_index() {
    let conn = indexed_db(&rows());
    let mut checked = 0;
    for f in filters() {
        if f.user.is_none() && f.grant.is_none() && f.session.is_none() {
            continue;
        }
        let plan = plan(&conn, &f);
        assert!(!plan.contains("SCAN "), "{f:?}: {plan}");
        checked += 1;
    }
    assert!(checked > 3000, "{checked}");
    let user = plan(
        &conn,
        &AuditFilter {
            user: Some("alice".into()),
            ..Default::default()
        },
    );
    for index in [
        "audit_events_user_ts",
        "audit_events_session",
        "PRIMARY KEY (user_name=?)",
    ] {
        assert!(user.contains(index), "{index}: {user}");
    }
    let grant = plan(
        &conn,
        &AuditFilter {
            grant: Some("g_1".into()),
            ..Default::default()
        },
    );
    for index in [
        "audit_events_grant",
        "audit_sessions_grant",
        "audit_events_session",
    ] {
        assert!(grant.contains(index), "{index}: {grant}");
    }
}

/// The schema version before issue 13's migration.
fn previous_version() -> usize {
    sqlite::MIGRATIONS
        .iter()
        .position(|m| m.contains("CREATE TABLE audit_sessions"))
        .expect("the audit_sessions migration")
}

/// A database of the schema before `audit_sessions`, with the trail in it, upgrades in place when
/// the writer opens it, and answers every filter as before.
#[test]
fn a_database_of_the_previous_schema_upgrades_in_place_and_filters_alike() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let rows = rows();
    {
        let mut old = Connection::open(&path).unwrap();
        let tx = old.transaction().unwrap();
        for sql in &sqlite::MIGRATIONS[..previous_version()] {
            tx.execute_batch(sql).unwrap();
        }
        tx.pragma_update(None, "user_version", previous_version() as i64)
            .unwrap();
        for r in &rows {
            tx.execute(
                sqlite::INSERT,
                params![
                    r.seq as i64,
                    &*r.ts,
                    r.kind,
                    r.payload,
                    r.prev_hash.as_str(),
                    r.hash.as_str(),
                    r.columns.user,
                    r.columns.target,
                    r.columns.grant_id,
                    r.columns.session_id,
                ],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let conn = sqlite::open_writer(Some(&path)).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, sqlite::MIGRATIONS.len() as i64);
    let sessions: i64 = conn
        .query_row("SELECT count(*) FROM audit_sessions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sessions, 6, "s_a1_1, s_a1_2, s_a2_1, s_b1_1, s_b1_2, a_1");
    let nonempty = assert_every_filter_exact(&conn);
    assert!(nonempty >= 200, "{nonempty}");
    let reader = sqlite::open_reader(&path).unwrap();
    assert_eq!(
        assert_every_filter_exact(&reader),
        nonempty,
        "a reader's connection"
    );
}

/// Retention removes a prefix, session starts included, while the sessions go on: their
/// statements are still found by user and grant, and sessions without any record left are
/// removed from `audit_sessions`.
#[test]
fn after_retention_filters_still_match_and_spent_sessions_go() {
    let rows = rows();
    let mut conn = indexed_db(&rows);
    // Through s_b1_1's end: every session start but s_a2_1's goes, and all of s_a1_2, s_b1_1 and
    // the auditor's a_1.
    let end_b1 = rows.iter().position(|r| r.kind == "session_end").unwrap();
    let cut = rows[end_b1 + 1].ts.to_string();
    let (deleted, _) = sqlite::prune_before(&mut conn, &cut, u64::MAX).unwrap();
    assert_eq!(deleted, end_b1 as u64 + 1);
    let nonempty = assert_every_filter_exact(&conn);
    assert!(nonempty >= 90, "{nonempty}");
    let sessions: Vec<String> = conn
        .prepare("SELECT session_id FROM audit_sessions ORDER BY 1")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    // s_a1_1 keeps its session_end, s_a2_1 and s_b1_2 their statements; s_a1_2, s_b1_1 and a_1
    // keep nothing, so their rows go.
    let left: Vec<String> = stored(&conn)
        .into_iter()
        .filter_map(|r| r.session)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let in_sessions = |s: &String| left.contains(s);
    assert!(sessions.iter().all(in_sessions), "{sessions:?} ⊄ {left:?}");
    assert_eq!(sessions, ["s_a1_1", "s_a2_1", "s_b1_2"]);
}
