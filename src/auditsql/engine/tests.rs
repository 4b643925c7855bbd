//! Unit tests of the auditors' SQLite engine: limits, streaming, the authorizer.

use super::*;
use rusqlite::types::ValueRef;
use tokio::sync::Semaphore;

fn slot() -> OwnedSemaphorePermit {
    Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap()
}

/// An empty audit database with the table the views read.
fn audit_db() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TABLE audit_events (seq INTEGER PRIMARY KEY, ts, kind, user_name, target, \
             grant_id, session_id, payload, prev_hash, hash)",
        )
        .unwrap();
    (dir, path)
}

#[tokio::test]
async fn a_query_past_its_time_limit_is_stopped_with_57014() {
    let (_dir, db) = audit_db();
    let limits = Limits {
        timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n";
    let mut out = Vec::new();
    let result = execute(&AuditDb::local(&db), endless.into(), limits, slot(), &mut out).await;
    let err = result.expect_err("stopped");
    assert!(matches!(err, QueryError::Timeout { .. }), "{err:?}");
    assert_eq!(err.to_pg_error().code, "57014");
}

/// A client that does not read cannot hold the query past its time limit either.
#[tokio::test]
async fn a_client_that_stops_reading_cannot_hold_the_query() {
    let (_dir, db) = audit_db();
    let limits = Limits {
        timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let (mut client, _unread) = tokio::io::duplex(1024);
    let rows = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 50000) SELECT i FROM n";
    let err = execute(&AuditDb::local(&db), rows.into(), limits, slot(), &mut client)
        .await
        .expect_err("stopped");
    assert!(matches!(err, QueryError::Timeout { .. }), "{err:?}");
}

#[tokio::test]
async fn a_row_past_the_row_cap_is_refused_before_it_is_copied() {
    let (_dir, db) = audit_db();
    let limits = Limits {
        max_value_bytes: 1000,
        max_row_bytes: 2500,
        ..Limits::default()
    };
    let wide = "SELECT printf('%.*c', 900, 'x'), printf('%.*c', 900, 'y'), printf('%.*c', 900, 'z')";
    let mut out = Vec::new();
    let err = execute(&AuditDb::local(&db), wide.into(), limits, slot(), &mut out)
        .await
        .expect_err("cut");
    assert!(matches!(err, QueryError::RowTooLarge { limit: 2500 }), "{err:?}");
    assert!(out.len() < 2500, "{} bytes sent", out.len());
    assert!(messages::encoded_size(&[ValueRef::Text(b"abc"), ValueRef::Null]) >= 7 + 4 + 3 + 4);
}

#[tokio::test]
async fn results_arrive_as_row_description_rows_and_command_complete() {
    let (_dir, db) = audit_db();
    let mut out = Vec::new();
    execute(
        &AuditDb::local(&db),
        "SELECT 1 AS a, 'x' AS b; ".into(),
        Limits::default(),
        slot(),
        &mut out,
    )
    .await
    .unwrap();
    assert_eq!(out.first(), Some(&b'T'));
    assert!(out.windows(8).any(|w| w == b"SELECT 1"), "{out:?}");
    let mut empty = Vec::new();
    execute(
        &AuditDb::local(&db),
        "  ; ".into(),
        Limits::default(),
        slot(),
        &mut empty,
    )
    .await
    .unwrap();
    assert_eq!(empty, b"I\0\0\0\x04");
}

/// Regression (attack on issue 16's fixes): the instance's query slot was given back when the
/// client got its 57014, while SQLite went on inside one function call; four more bombs
/// could then start. The slot now belongs to the thread.
#[tokio::test]
async fn the_query_slot_is_held_until_the_sqlite_thread_ends() {
    let slots = Arc::new(Semaphore::new(1));
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let mut out = Vec::new();
    let taken = slots.clone().try_acquire_owned().unwrap();
    let stuck = move |_: Instant, _: &Arc<AtomicBool>, _: &tokio::sync::mpsc::Sender<BytesMut>| {
        let _ = wait.recv();
        Ok(())
    };
    let err = stream(Duration::from_millis(50), taken, &mut out, stuck)
        .await
        .expect_err("the client is answered at the time limit");
    assert!(matches!(err, QueryError::Timeout { .. }), "{err:?}");
    assert_eq!(
        slots.available_permits(),
        0,
        "the thread still runs, so its slot is still taken"
    );
    release.send(()).unwrap();
    let freed = tokio::time::timeout(Duration::from_secs(60), slots.acquire()).await;
    assert!(freed.is_ok(), "the slot frees up when the thread ends");
}

/// Regression (attack on issue 16's fixes): `instr` over a 2 MB and a 1 MB string kept SQLite
/// busy ~45 s inside one call, where the progress handler never runs. Values are now at most
/// 1 MiB, and the products-of-lengths built-ins are linear or refused.
#[tokio::test]
async fn single_function_calls_cannot_run_long() {
    let (_dir, db) = audit_db();
    let run = |sql: &'static str| {
        let db = db.clone();
        async move {
            let mut out = Vec::new();
            let limits = Limits {
                timeout: Duration::from_secs(600),
                ..Limits::default()
            };
            execute(&AuditDb::local(&db), sql.into(), limits, slot(), &mut out)
                .await
                .map(|()| out)
        }
    };
    let bomb = "SELECT instr(printf('%.*c', 2000000, 'a'), printf('%.*c', 1000000, 'a') || 'b')";
    // SQLite's printf stops at the value cap (1 MiB) and yields NULL; instr(NULL, …) is NULL.
    let out = run(bomb).await.expect("answered");
    assert!(out.windows(7).any(|w| w == b"D\0\0\0\x0a\0\x01"), "{out:?}");
    assert!(
        out.windows(4).any(|w| w == b"\xff\xff\xff\xff"),
        "a NULL: {out:?}"
    );
    for (sql, answer) in [
        (
            "SELECT instr(printf('%.*c', 1000000, 'a'), printf('%.*c', 500000, 'a') || 'b')",
            &b"\0\0\0\x010"[..],
        ),
        (
            "SELECT length(replace(printf('%.*c', 1000000, 'a'), printf('%.*c', 500000, 'a') || 'b', 'x'))",
            &b"\0\0\0\x071000000"[..],
        ),
        ("SELECT instr('héllo wörld', 'w')", &b"\0\0\0\x017"[..]),
        ("SELECT trim('  xhix ', ' x')", &b"\0\0\0\x02hi"[..]),
        ("SELECT replace('a-b-c', '-', '+')", &b"\0\0\0\x05a+b+c"[..]),
    ] {
        let out = run(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert!(out.windows(answer.len()).any(|w| w == answer), "{sql}: {out:?}");
    }
    let trim_bomb = "SELECT length(trim(printf('%.*c', 1000000, 'a'), printf('%.*c', 1000000, 'b') || 'a'))";
    let err = run(trim_bomb).await.expect_err("refused");
    assert!(
        matches!(err, QueryError::Function(FunctionError::TooCostly { .. })),
        "{err:?}"
    );
    assert_eq!(err.to_pg_error().code, "54000");
    let err = run("SELECT instr(1.5, '.')").await.expect_err("refused");
    assert_eq!(err.to_pg_error().code, "0A000", "{err}");
    let like = "SELECT printf('%.*c', 1000000, 'a') LIKE printf('%.*c', 300, '%') || 'b'";
    let err = run(like).await.expect_err("pattern too long");
    assert!(matches!(err, QueryError::Sqlite(_)), "{err:?}");
}

fn read(table: &str) -> AuthAction<'_> {
    AuthAction::Read {
        table_name: table,
        column_name: "x",
    }
}

fn schema() -> Schema {
    Schema::new(
        [
            "audit_events",
            "grants",
            "installation",
            "events",
            "statements",
            "json_each",
            "dbstat",
        ]
        .map(String::from),
    )
}

fn authorize(action: &AuthAction<'_>, database: Option<&str>) -> Result<(), String> {
    super::authorize(action, database, &schema())
}

#[test]
fn the_authorizer_admits_reads_of_the_audit_trail_only() {
    assert!(authorize(&AuthAction::Select, None).is_ok());
    assert!(authorize(&AuthAction::Recursive, None).is_ok());
    assert!(authorize(&read("statements"), Some("temp")).is_ok());
    assert!(authorize(&read("audit_events"), Some("main")).is_ok());
    assert!(authorize(&read("json_each"), Some("main")).is_ok());
    assert!(authorize(&read("events"), None).is_ok(), "count(*) over a view");
    assert!(authorize(&read("n"), None).is_ok(), "a CTE");
    assert!(
        authorize(&read("audit_events"), Some("fleet")).is_ok(),
        "the fleet mirror"
    );
    assert!(
        authorize(&read("mirror_marks"), Some("fleet")).is_ok(),
        "timebox_mirror"
    );
    for (table, db) in [
        ("sqlite_master", Some("main")),
        ("sqlite_schema", Some("main")),
        ("sqlite_temp_master", Some("temp")),
        ("grants", Some("main")),
        ("installation", Some("main")),
        ("statements", Some("main")),
        ("audit_events", Some("x")),
        ("mirror_marks", Some("main")),
        ("sqlite_master", Some("fleet")),
        ("sqlite_schema", Some("fleet")),
        ("pragma_table_info", Some("main")),
        // count(*)-style reads arrive without a schema
        ("sqlite_master", None),
        ("grants", None),
        ("pragma_database_list", None),
        ("dbstat", None),
    ] {
        assert!(authorize(&read(table), db).is_err(), "{db:?}.{table}");
    }
}

#[test]
fn the_authorizer_admits_reviewed_functions_only() {
    for f in ["json_extract", "count", "datetime", "printf", "LIKE"] {
        let a = AuthAction::Function { function_name: f };
        assert!(authorize(&a, None).is_ok(), "{f}");
    }
    for f in [
        "load_extension",
        "zeroblob",
        "randomblob",
        "sqlite_version",
        "readfile",
    ] {
        let a = AuthAction::Function { function_name: f };
        assert!(authorize(&a, None).is_err(), "{f}");
    }
}

#[test]
fn the_authorizer_refuses_every_other_action() {
    let refused = [
        AuthAction::Pragma {
            pragma_name: "writable_schema",
            pragma_value: Some("1"),
        },
        AuthAction::Attach {
            filename: "/tmp/x.db",
        },
        AuthAction::Detach { database_name: "x" },
        AuthAction::Insert {
            table_name: "audit_events",
        },
        AuthAction::Delete {
            table_name: "audit_events",
        },
        AuthAction::Update {
            table_name: "audit_events",
            column_name: "payload",
        },
        AuthAction::CreateTempView { view_name: "v" },
        AuthAction::CreateTempTable { table_name: "t" },
        AuthAction::DropTempView { view_name: "events" },
        AuthAction::Analyze { table_name: "x" },
    ];
    for a in refused {
        assert!(authorize(&a, Some("main")).is_err(), "{a:?}");
    }
}

/// A local index with one record of `tb-b` and a fleet mirror with one of `tb-a`.
fn fleet_db() -> (tempfile::TempDir, AuditDb) {
    let (dir, local) = audit_db();
    Connection::open(&local)
        .unwrap()
        .execute_batch(
            "INSERT INTO audit_events VALUES (1, '2026-12-07T08:00:00.000000Z', 'statement', 'bob', \
             'shop', 'g_2', 's_2', '{}', '', '')",
        )
        .unwrap();
    let mirror = dir.path().join(crate::auditsql::mirror::MIRROR_FILE_NAME);
    crate::auditsql::mirror::open_writer(&mirror)
        .unwrap()
        .execute_batch(
            "INSERT INTO audit_events (instance, seq, ts, kind, payload, prev_hash, hash) \
             VALUES ('tb-a', 5, '2026-12-07T07:00:00.000000Z', 'statement', '{}', '', ''); \
             INSERT INTO mirror_marks VALUES ('tb-a', 5, '', '2026-12-07T08:00:00.000000Z');",
        )
        .unwrap();
    let db = AuditDb {
        local,
        fleet: Some(FleetDb {
            mirror,
            instance: "tb-b".into(),
        }),
    };
    (dir, db)
}

/// The fleet mirror is attached under the same authorizer: its rows are read through the views
/// only; no write, ATTACH, DETACH, PRAGMA or schema read reaches it.
#[tokio::test]
async fn the_fleet_mirror_is_read_through_the_views_under_the_same_authorizer() {
    let (_dir, db) = fleet_db();
    let mut out = Vec::new();
    execute(
        &db,
        "SELECT instance, seq FROM events ORDER BY instance".into(),
        Limits::default(),
        slot(),
        &mut out,
    )
    .await
    .unwrap();
    assert!(out.windows(8).any(|w| w == b"SELECT 2"), "both rows: {out:?}");
    for ok in [
        "SELECT count(*) FROM statements",
        "SELECT count(*) FROM timebox_mirror",
        "SELECT * FROM timebox_mirror",
    ] {
        let mut out = Vec::new();
        let done = execute(&db, ok.into(), Limits::default(), slot(), &mut out).await;
        assert!(done.is_ok(), "{ok}: {done:?}");
    }
    for refused in [
        "SELECT * FROM fleet.sqlite_master",
        "SELECT count(*) FROM fleet.sqlite_master",
        "INSERT INTO fleet.audit_events (instance, seq, ts, kind, payload, prev_hash, hash) \
         VALUES ('x', 1, '', '', '', '', '')",
        "DELETE FROM fleet.audit_events",
        "UPDATE fleet.mirror_marks SET seq = 0",
        "ATTACH DATABASE '/tmp/timebox-attach-test.db' AS x",
        "DETACH DATABASE fleet",
        "PRAGMA fleet.writable_schema = ON",
        "PRAGMA fleet.journal_mode",
        "SELECT * FROM events, pragma_database_list",
    ] {
        let mut out = Vec::new();
        let err = execute(&db, refused.into(), Limits::default(), slot(), &mut out)
            .await
            .expect_err(refused);
        assert!(
            matches!(err, QueryError::NotAuthorized { .. }),
            "{refused}: {err:?}"
        );
        assert_eq!(err.to_pg_error().code, "42501", "{refused}");
    }
}

/// Below the authorizer and `query_only`, the attached mirror is read-only too (it is opened with
/// the main database's flags).
#[test]
fn the_attached_mirror_is_read_only_below_the_authorizer() {
    let (_dir, db) = fleet_db();
    let conn = open(&db, Limits::default(), SharedRefusals::default()).unwrap();
    conn.authorizer(None::<fn(AuthContext<'_>) -> Authorization>);
    conn.pragma_update(None, "query_only", "OFF").unwrap();
    let err = conn
        .execute("DELETE FROM fleet.audit_events", [])
        .expect_err("read-only");
    assert_eq!(err.sqlite_error_code(), Some(ErrorCode::ReadOnly), "{err}");
}
