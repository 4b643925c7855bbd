//! The auditors' SQL endpoint: psql to `dbname=timebox_audit` with an admin-API token.

mod common;

use common::{psql, Options};

fn audit_conn(inst: &common::TestInstance, user: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} dbname=timebox_audit sslmode=require",
        inst.proxy_addr.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditors_query_the_trail_with_psql_and_cannot_change_it() {
    let inst = common::start(Options::default()).await;
    let (grant, token) = inst.grant("alice", "read", "10m").await;
    let mark = common::cluster::unique_name("sqlmark");
    let denied = psql(
        &common::proxy_conn(&inst, "alice", "sslmode=disable"),
        &token,
        &format!("DELETE FROM items WHERE name = '{mark}'"),
    )
    .await;
    assert!(!denied.success);

    // "every denied statement by alice" is one query
    let out = psql(
        &audit_conn(&inst, "audrey"),
        common::AUDITOR_TOKEN,
        "SELECT grant_id, sql FROM statements WHERE \"user\" = 'alice' AND decision = 'deny'",
    )
    .await;
    assert!(out.success, "{out:?}");
    assert!(
        out.stdout.contains(&grant.id) && out.stdout.contains(&mark),
        "{}",
        out.stdout
    );

    // JSON and time functions of the audit store work
    let out = psql(
        &audit_conn(&inst, "audrey"),
        common::AUDITOR_TOKEN,
        "SELECT count(*) FROM events WHERE ts > datetime('now', '-1 day') AND json_extract(payload, '$.user') = 'alice'",
    )
    .await;
    assert!(out.success, "{out:?}");
    assert!(out.stdout.trim().parse::<i64>().unwrap() >= 2, "{}", out.stdout);

    // writes, DDL and the raw table are refused
    for sql in [
        "DELETE FROM events",
        "DROP VIEW statements",
        "SELECT * FROM audit_events",
    ] {
        let out = psql(&audit_conn(&inst, "audrey"), common::AUDITOR_TOKEN, sql).await;
        assert!(!out.success, "{sql} must be refused");
        assert!(out.stderr.contains("timebox_audit"), "{sql}: {}", out.stderr);
    }

    // the auditor's own queries are audited
    let out = psql(
        &audit_conn(&inst, "audrey"),
        common::AUDITOR_TOKEN,
        "SELECT count(*) FROM statements WHERE target = 'timebox_audit' AND \"user\" = 'audrey'",
    )
    .await;
    assert!(out.success, "{out:?}");
    assert!(out.stdout.trim().parse::<i64>().unwrap() >= 3, "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_auditors_wrong_tokens_and_plaintext_are_refused() {
    let inst = common::start(Options::default()).await;
    // a requester token is a valid principal but not an auditor
    let out = psql(&audit_conn(&inst, "alice"), common::REQUESTER_TOKEN, "SELECT 1").await;
    assert!(!out.success);
    assert!(
        out.stderr.contains("requires the auditor or admin role"),
        "{}",
        out.stderr
    );
    // the auditor's token under another name
    let out = psql(&audit_conn(&inst, "ops"), common::AUDITOR_TOKEN, "SELECT 1").await;
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("password authentication failed for user \"ops\""),
        "{}",
        out.stderr
    );
    // plaintext: the token must not cross the wire unencrypted
    let plain = format!(
        "host=127.0.0.1 port={} user=audrey dbname=timebox_audit sslmode=disable",
        inst.proxy_addr.port()
    );
    let out = psql(&plain, common::AUDITOR_TOKEN, "SELECT 1").await;
    assert!(!out.success);
    assert!(
        out.stderr.contains("requires an encrypted connection"),
        "{}",
        out.stderr
    );
}

/// A raw frontend logged in to `timebox_audit` (plaintext: the instance runs with TLS disabled).
/// Answers a cleartext-password or a SCRAM request; returns the socket after ReadyForQuery and
/// whether the server asked for SASL.
mod rawaudit {
    use bytes::BytesMut;

    use postgres_protocol::message::backend::Message;
    use postgres_protocol::message::frontend;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    use super::common::raw::read_message;

    /// Logs in to `timebox_audit`; also whether the server asked for SCRAM.
    pub async fn login(addr: std::net::SocketAddr, user: &str, token: &str) -> (TcpStream, BytesMut, bool) {
        super::common::raw::login_to(addr, user, "timebox_audit", token).await
    }

    /// What one simple query produced.
    #[derive(Debug, Default)]
    pub struct Outcome {
        pub rows: usize,
        pub row_bytes: usize,
        pub error: Option<(String, String)>,
    }

    /// Reads the outcome of a query already sent; returns its error.
    pub async fn next_error_of(s: &mut TcpStream, buf: &mut BytesMut) -> (String, String) {
        read_outcome(s, buf).await.error.expect("an error")
    }

    /// Sends `sql` as a simple query and reads up to ReadyForQuery.
    pub async fn query(s: &mut TcpStream, buf: &mut BytesMut, sql: &str) -> Outcome {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).unwrap();
        s.write_all(&out).await.unwrap();
        read_outcome(s, buf).await
    }

    async fn read_outcome(s: &mut TcpStream, buf: &mut BytesMut) -> Outcome {
        let mut outcome = Outcome::default();
        loop {
            match read_message(s, buf).await.expect("the connection stays open") {
                Message::DataRow(row) => {
                    outcome.rows += 1;
                    outcome.row_bytes += row.buffer().len();
                }
                Message::ErrorResponse(body) => {
                    outcome.error = Some(super::common::raw::error_fields(&body));
                }
                Message::ReadyForQuery(_) => return outcome,
                _ => {}
            }
        }
    }
}

fn plaintext_options() -> Options {
    Options {
        tls: "disabled",
        ..Options::default()
    }
}

/// Regression (issue 16, finding 3): the endpoint checked queries with PostgreSQL's parser and ran
/// them with SQLite's, and they disagree on nested comments. What PostgreSQL reads as one comment
/// SQLite read as `, sqlite_master`, a PRAGMA, an ATTACH or a VACUUM INTO. SQLite's authorizer
/// now decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_comment_tricks_cannot_reach_schema_pragma_attach_or_vacuum() {
    let inst = common::start(plaintext_options()).await;
    let (mut s, mut buf, _) = rawaudit::login(inst.proxy_addr, "audrey", common::AUDITOR_TOKEN).await;
    let vacuum_target = inst.dir.path().join("vacuumed.db");
    let cases = [
        (
            "SELECT name, sql FROM events /* /* */ , sqlite_master -- */".to_owned(),
            "sqlite_master",
        ),
        ("/* /* */ PRAGMA database_list -- */".to_owned(), "PRAGMA"),
        (
            "SELECT * FROM events /* /* */ , pragma_database_list -- */".to_owned(),
            "pragma_database_list",
        ),
        (
            "/* /* */ ATTACH DATABASE '/etc/passwd' AS x -- */".to_owned(),
            "ATTACH",
        ),
        (
            format!("/* /* */ VACUUM INTO '{}' -- */", vacuum_target.display()),
            "VACUUM INTO",
        ),
        ("SELECT * FROM sqlite_master".to_owned(), "sqlite_master"),
        (
            "SELECT count(*) FROM events /* /* */ , sqlite_master -- */".to_owned(),
            "sqlite_master",
        ),
        (
            "SELECT count(*) FROM events /* /* */ WHERE zeroblob(10) IS NOT NULL -- */".to_owned(),
            "zeroblob",
        ),
    ];
    for (sql, names) in &cases {
        let outcome = rawaudit::query(&mut s, &mut buf, sql).await;
        let (code, msg) = outcome
            .error
            .unwrap_or_else(|| panic!("{sql}: ran ({} rows)", outcome.rows));
        assert_eq!(code, "42501", "{sql}: {msg}");
        assert!(msg.contains(names), "{sql}: {msg}");
        assert_eq!(outcome.rows, 0, "{sql}");
    }
    assert!(
        !vacuum_target.exists(),
        "VACUUM INTO created {}",
        vacuum_target.display()
    );
    // the views still work on the same connection
    for sql in [
        "SELECT count(*) FROM events",
        "WITH x AS (SELECT * FROM statements) SELECT count(*) FROM x",
        "SELECT count(*) FROM events, json_each(events.payload)",
    ] {
        let ok = rawaudit::query(&mut s, &mut buf, sql).await;
        assert!(ok.error.is_none(), "{sql}: {ok:?}");
        assert_eq!(ok.rows, 1, "{sql}");
    }
}

/// Regression (issue 16, finding 4): results were buffered whole, so one huge value
/// (`printf('%.*c', 900000000, 'x')`) or a huge result took gigabytes. A value is now capped
/// inside SQLite and rows are streamed under a row cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_values_and_results_are_cut_with_a_clear_error() {
    let inst = common::start(plaintext_options()).await;
    let (mut s, mut buf, _) = rawaudit::login(inst.proxy_addr, "audrey", common::AUDITOR_TOKEN).await;
    let limits = timebox::auditsql::Limits::default();
    // SQLite's printf stops at the value cap without allocating more (and yields '').
    for sql in [
        "SELECT printf('%.*c', 50000000, 'x')",
        "SELECT printf('%.*c', 900000000, 'x')",
    ] {
        let outcome = rawaudit::query(&mut s, &mut buf, sql).await;
        assert!(
            outcome.row_bytes < limits.max_value_bytes,
            "{sql}: {} bytes reached the client",
            outcome.row_bytes
        );
    }
    // Other blow-ups are refused by SQLite at the same cap, with a clear error.
    for sql in [
        "SELECT length(replace(printf('%.*c', 1000000, 'x'), 'x', 'xxxxxxxxxx'))",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 200000) \
         SELECT length(group_concat(printf('%.*c', 100, 'x'))) FROM n",
    ] {
        let outcome = rawaudit::query(&mut s, &mut buf, sql).await;
        let (code, msg) = outcome.error.unwrap_or_else(|| panic!("{sql}: no error"));
        assert_eq!(code, "54000", "{sql}: {msg}");
        assert!(msg.contains("larger than timebox_audit's limit"), "{sql}: {msg}");
        assert_eq!(outcome.rows, 0, "{sql}");
    }
    // Many rows: streamed up to the cap, then the error.
    let outcome = rawaudit::query(
        &mut s,
        &mut buf,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i FROM n",
    )
    .await;
    let (code, msg) = outcome.error.expect("cut at the row cap");
    assert_eq!(code, "54000", "{msg}");
    assert!(msg.contains("more than 100000 rows"), "{msg}");
    assert_eq!(
        outcome.rows, limits.max_rows,
        "rows before the cap reach the client"
    );
    // the session goes on
    let ok = rawaudit::query(&mut s, &mut buf, "SELECT 1").await;
    assert!(ok.error.is_none() && ok.rows == 1, "{ok:?}");
}

/// Regression (issue 16, finding 12a): the endpoint asked for the bearer token in cleartext. It
/// now runs SCRAM-SHA-256 against the token's `scram` verifier; a wrong token, an unknown name
/// and a token without a verifier all end in the same 28P01, whose hint says how to make one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditors_log_in_with_scram_and_failures_look_alike() {
    const NOVA_TOKEN: &str = "test-auditor-without-verifier";
    let inst = common::start(Options {
        tls: "disabled",
        // an auditor token configured without a `scram` verifier
        proxy_extra: format!(
            "[[admin.tokens]]\nname = \"nova\"\nsha256 = \"{}\"\nroles = [\"auditor\"]\n",
            timebox::grants::token::sha256_hex(NOVA_TOKEN)
        ),
        ..Options::default()
    })
    .await;
    let (_s, _buf, asked_for_sasl) = rawaudit::login(inst.proxy_addr, "audrey", common::AUDITOR_TOKEN).await;
    assert!(asked_for_sasl, "the server asked for the token in cleartext");

    let mut seen = Vec::new();
    for (user, token) in [
        ("audrey", "wrong-token"),
        ("nobody", common::AUDITOR_TOKEN),
        ("nova", NOVA_TOKEN),
    ] {
        let conn = format!(
            "host=127.0.0.1 port={} user={user} password={token} dbname=timebox_audit sslmode=disable",
            inst.proxy_addr.port()
        );
        let err = match tokio_postgres::connect(&conn, tokio_postgres::NoTls).await {
            Ok(_) => panic!("{user} logged in"),
            Err(e) => e,
        };
        let db = err.as_db_error().unwrap_or_else(|| panic!("{user}: {err:?}"));
        assert_eq!(db.code().code(), "28P01", "{user}: {}", db.message());
        assert_eq!(
            db.message(),
            format!("password authentication failed for user \"{user}\"")
        );
        let hint = db.hint().unwrap_or_default().to_owned();
        assert!(
            hint.contains("scram") && hint.contains("timebox admin-token"),
            "{hint}"
        );
        seen.push(hint);
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "no oracle: {seen:?}");
}

/// Auditor queries running at once are bounded on the whole instance (each may hold its value and
/// column caps in SQLite): past the bound, 53300 at once. The running ones end at their time limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditor_queries_at_once_are_bounded() {
    use tokio::io::AsyncWriteExt;
    let inst = common::start(plaintext_options()).await;
    let limit = timebox::auditsql::QUERIES_AT_ONCE;
    let endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n";
    let mut running = Vec::new();
    for _ in 0..limit {
        let (mut s, buf, _) = rawaudit::login(inst.proxy_addr, "audrey", common::AUDITOR_TOKEN).await;
        let mut out = bytes::BytesMut::new();
        postgres_protocol::message::frontend::query(endless, &mut out).unwrap();
        s.write_all(&out).await.unwrap();
        running.push((s, buf));
    }
    let all_busy = common::eventually(std::time::Duration::from_secs(20), || async {
        inst.state.proxy.audit_queries.available_permits() == 0
    })
    .await;
    assert!(all_busy, "the endless queries started");
    let (mut s, mut buf, _) = rawaudit::login(inst.proxy_addr, "audrey", common::AUDITOR_TOKEN).await;
    let outcome = rawaudit::query(&mut s, &mut buf, "SELECT 1").await;
    let (code, msg) = outcome.error.expect("refused while the others run");
    assert_eq!(code, "53300", "{msg}");
    assert!(msg.contains(&format!("running {limit} queries")), "{msg}");
    for (mut s, mut buf) in running {
        let (code, msg) = rawaudit::next_error_of(&mut s, &mut buf).await;
        assert_eq!(code, "57014", "{msg}");
    }
    let outcome = rawaudit::query(&mut s, &mut buf, "SELECT 1").await;
    assert!(outcome.error.is_none(), "{outcome:?}");
}

/// Regression (attack on issue 16's fixes): `SELECT instr(printf('%.*c', 2000000, 'a'),
/// printf('%.*c', 1000000, 'a') || 'b')` got its 57014 after 10 s while SQLite went on for ~35 s
/// inside that one call (its progress handler never runs there), and the query's slot was given
/// back with the answer: four more could start. Such calls are now answered at once, and no SQLite
/// thread outlives its answer: every slot is free when the client has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_function_call_cannot_outrun_the_time_limit_or_the_query_slots() {
    let inst = common::start(plaintext_options()).await;
    let (mut s, mut buf, _) = rawaudit::login(inst.proxy_addr, "audrey", common::AUDITOR_TOKEN).await;
    let slots = || inst.state.proxy.audit_queries.available_permits();
    let all = timebox::auditsql::QUERIES_AT_ONCE;
    for (sql, want) in [
        // the attack: printf stops at the 1 MiB value cap (NULL), so instr has nothing to do
        (
            "SELECT instr(printf('%.*c', 2000000, 'a'), printf('%.*c', 1000000, 'a') || 'b')",
            None,
        ),
        // under the cap: instr and replace search in linear time
        (
            "SELECT instr(printf('%.*c', 1000000, 'a'), printf('%.*c', 500000, 'a') || 'b')",
            None,
        ),
        (
            "SELECT length(replace(printf('%.*c', 1000000, 'a'), printf('%.*c', 500000, 'a') || 'b', 'x'))",
            None,
        ),
        // trimming by a long character set counts its work and stops
        (
            "SELECT length(trim(printf('%.*c', 1000000, 'a'), printf('%.*c', 1000000, 'b') || 'a'))",
            Some("54000"),
        ),
    ] {
        let outcome = rawaudit::query(&mut s, &mut buf, sql).await;
        match want {
            None => assert!(outcome.error.is_none() && outcome.rows == 1, "{sql}: {outcome:?}"),
            Some(code) => {
                let (got, msg) = outcome
                    .error
                    .clone()
                    .unwrap_or_else(|| panic!("{sql}: {outcome:?}"));
                assert_eq!(got, code, "{sql}: {msg}");
                assert!(msg.contains("byte comparisons"), "{sql}: {msg}");
            }
        }
        assert_eq!(slots(), all, "{sql}: a SQLite thread outlived its answer");
    }
}

/// Issue 17: `ts > datetime('now', …)` compared RFC 3339 text with SQLite's format and was right only
/// to the day; psql's `\dv` and `\d view` failed without saying what to use instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_filters_are_exact_and_the_views_describe_themselves() {
    let inst = common::start(Options::default()).await;
    let (grant, token) = inst.grant("alice", "read", "10m").await;
    let out = psql(
        &common::proxy_conn(&inst, "alice", "sslmode=disable"),
        &token,
        "SELECT 1",
    )
    .await;
    assert!(out.success, "{out:?}");
    let query = |sql: &'static str| {
        let conn = audit_conn(&inst, "audrey");
        async move { psql(&conn, common::AUDITOR_TOKEN, sql).await }
    };
    let count = |out: &common::PsqlOutput| -> i64 {
        assert!(out.success, "{out:?}");
        out.stdout.trim().parse().unwrap()
    };
    // records of the last minute exist; none are from the future (before the fix: all of them were)
    assert!(count(&query("SELECT count(*) FROM events WHERE ts > datetime('now', '-1 minute')").await) >= 3);
    assert_eq!(
        count(&query("SELECT count(*) FROM events WHERE ts > datetime('now', '+1 minute')").await),
        0
    );
    assert_eq!(
        count(&query("SELECT count(*) FROM statements WHERE ts < datetime('now', '-1 hour')").await),
        0
    );

    // one name for who acted: the grant's issuer
    let out = query("SELECT actor FROM grant_events WHERE kind = 'grant_issued'").await;
    assert!(
        out.success && out.stdout.lines().any(|l| l.trim() == grant.created_by),
        "{out:?}"
    );

    // psql's describe commands say what to use instead; the catalog views answer
    for meta in ["\\dv", "\\d statements"] {
        let out = query(meta).await;
        assert!(!out.success, "{meta} must fail with a hint");
        assert!(
            out.stderr.contains("SELECT * FROM timebox_views"),
            "{meta}: {}",
            out.stderr
        );
    }
    let out = query("SELECT view_name FROM timebox_views ORDER BY 1").await;
    assert!(out.success, "{out:?}");
    for view in ["access_requests", "events", "grant_events", "statements"] {
        assert!(
            out.stdout.lines().any(|l| l.trim() == view),
            "{view}: {}",
            out.stdout
        );
    }
    let out =
        query("SELECT column_name FROM timebox_columns WHERE view_name = 'outcomes' ORDER BY position").await;
    assert!(out.success && out.stdout.contains("sqlstate"), "{out:?}");
}

/// The records of a trail with two users, three grants and four sessions (statements, outcomes,
/// session starts and ends), as one batch.
fn index_trail() -> Vec<timebox::audit::AuditEvent> {
    use timebox::audit::{AuditEvent, Decision, SessionEnd, SessionStart, Statement, StatementOutcome};
    let sessions = [
        ("alice", "g_ix_a1", "s_ix_a1"),
        ("bob", "g_ix_b1", "s_ix_b1"),
        ("alice", "g_ix_a2", "s_ix_a2"),
        ("alice", "g_ix_a1", "s_ix_a3"),
    ];
    let mut events = Vec::new();
    for (user, grant, session) in sessions {
        events.push(AuditEvent::SessionStart(SessionStart {
            application_name: None,
            client_addr: "127.0.0.1:5000".into(),
            grant_id: grant.into(),
            role: "read".into(),
            session_id: session.into(),
            target: "shop".into(),
            tls_version: None,
            user: user.into(),
        }));
    }
    for id in 1..=3u64 {
        for (user, grant, session) in sessions {
            events.push(AuditEvent::Statement(Statement {
                class: "read".into(),
                decision: Decision::Allow,
                grant_id: grant.into(),
                params: None,
                reason: None,
                relations: vec![],
                session_id: session.into(),
                sql: format!("SELECT {id}"),
                sql_bytes: None,
                sql_sha256: None,
                sql_truncated: false,
                statement_id: id,
                target: "shop".into(),
                user: user.into(),
            }));
            events.push(AuditEvent::StatementOutcome(StatementOutcome {
                command_tag: Some("SELECT 1".into()),
                duration_us: 5,
                returned: None,
                rows: Some(1),
                session_id: session.into(),
                sqlstate: None,
                statement_id: id,
            }));
        }
    }
    for (user, grant, session) in &sessions[..2] {
        events.push(AuditEvent::SessionEnd(SessionEnd {
            bytes_from_client: 1,
            bytes_to_client: 2,
            duration_us: 3,
            ended_by: None,
            grant_id: grant.to_string(),
            reason: "client_exit".into(),
            session_id: session.to_string(),
            statements: 3,
            target: "shop".into(),
            user: user.to_string(),
        }));
    }
    events
}

/// Issue 13 (statements are found by user and grant through their sessions, not through indexes
/// of their own): every user, grant, session and kind filter of `GET /v1/audit`, `timebox audit
/// search` and the auditors' views returns exactly the records whose columns match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_grant_and_session_filters_return_exactly_their_records() {
    use timebox::audit::AuditRecord;
    let inst = common::start(Options::default()).await;
    inst.state.audit.record(index_trail()).await.unwrap();
    let url = inst.admin_url();
    let page = |query: String| {
        let url = url.clone();
        async move {
            let path = format!("/v1/audit?limit=1000{query}");
            let a = common::http::get(&url, &path, common::AUDITOR_TOKEN).await;
            assert!(a.status.is_success(), "{query}: {}", a.text);
            serde_json::from_value::<Vec<AuditRecord>>(a.json["events"].clone()).unwrap()
        }
    };
    let all = page(String::new()).await;
    let head = all.iter().map(|r| r.seq).max().unwrap();
    let columns: Vec<(u64, String, timebox::audit::event::Columns)> = all
        .iter()
        .map(|r| (r.seq, r.kind.clone(), r.event().unwrap().columns()))
        .collect();
    let expected = |user: Option<&str>, grant: Option<&str>, session: Option<&str>, kind: Option<&str>| {
        let eq = |want: Option<&str>, have: &Option<String>| want.is_none() || want == have.as_deref();
        columns
            .iter()
            .filter(|(_, k, c)| {
                eq(user, &c.user)
                    && eq(grant, &c.grant_id)
                    && eq(session, &c.session_id)
                    && kind.is_none_or(|kind| kind == k)
            })
            .map(|(seq, _, _)| *seq)
            .collect::<Vec<u64>>()
    };
    let mut nonempty = 0;
    for user in [None, Some("alice"), Some("bob"), Some("nobody")] {
        for grant in [None, Some("g_ix_a1"), Some("g_ix_b1")] {
            for session in [None, Some("s_ix_a3")] {
                for kind in [
                    None,
                    Some("statement"),
                    Some("statement_outcome"),
                    Some("session_start"),
                ] {
                    if (user, grant, session) == (None, None, None) {
                        continue;
                    }
                    let query: Vec<String> = [
                        ("user", user),
                        ("grant", grant),
                        ("session", session),
                        ("kind", kind),
                    ]
                    .into_iter()
                    .filter_map(|(k, v)| v.map(|v| format!("&{k}={v}")))
                    .collect();
                    let got: Vec<u64> = page(query.concat()).await.iter().map(|r| r.seq).collect();
                    let want = expected(user, grant, session, kind);
                    assert_eq!(got, want, "{query:?}");
                    nonempty += usize::from(!want.is_empty());
                }
            }
        }
    }
    assert!(nonempty >= 30, "{nonempty}");
    // alice's statements are found by her name: 9 of them, and none of the (user-less) outcomes
    assert_eq!(expected(Some("alice"), None, None, Some("statement")).len(), 9);

    // the CLI sends the same filter
    let o = common::cli::timebox(
        &[
            "audit",
            "--admin-url",
            &url,
            "search",
            "--grant",
            "g_ix_a1",
            "--json",
            "--limit",
            "1000",
        ],
        Some(common::AUDITOR_TOKEN),
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", common::cli::describe(&o));
    let cli: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let cli: Vec<u64> = cli["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(cli, expected(None, Some("g_ix_a1"), None, None));

    // the auditors' views (read before the auditor's own statements are recorded)
    let seqs = |out: common::PsqlOutput| -> Vec<u64> {
        assert!(out.success, "{out:?}");
        out.stdout.lines().map(|l| l.trim().parse().unwrap()).collect()
    };
    for (sql, want) in [
        (
            format!(
                "SELECT seq FROM statements WHERE \"user\" = 'alice' AND seq <= {head} ORDER BY seq DESC"
            ),
            expected(Some("alice"), None, None, Some("statement")),
        ),
        (
            format!("SELECT seq FROM events WHERE grant_id = 'g_ix_b1' AND seq <= {head} ORDER BY seq DESC"),
            expected(None, Some("g_ix_b1"), None, None),
        ),
        (
            format!(
                "SELECT seq FROM outcomes WHERE session_id = 's_ix_a3' AND seq <= {head} ORDER BY seq DESC"
            ),
            expected(None, None, Some("s_ix_a3"), Some("statement_outcome")),
        ),
    ] {
        let got = seqs(psql(&audit_conn(&inst, "audrey"), common::AUDITOR_TOKEN, &sql).await);
        assert_eq!(got, want, "{sql}");
    }
}
