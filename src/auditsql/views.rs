//! The views auditors query on `timebox_audit`, declared once as data: [`VIEWS`] makes the SQL
//! that creates them (per connection, in SQLite's temp schema), the list the authorizer admits,
//! and the two self-describing views `timebox_views` and `timebox_columns` that stand in for
//! psql's `\dv` and `\d view` (which read PostgreSQL's catalog, absent here).
//!
//! Times: the record's `ts` is stored as RFC 3339 (`2026-12-07T03:20:58.123456Z`), which does not
//! compare as text with what SQLite's date functions return (`2026-12-07 03:19:58`: `T` sorts
//! after the space, so every record of the same day looked newer). The views show `ts` in
//! SQLite's own format, UTC (`2026-12-07 03:20:58.123456`), so `ts > datetime('now', '-1 hour')`
//! means what it says; `events.ts_rfc3339` keeps the stored text (it is what the hash covers).
//!
//! With a PostgreSQL store ([`Layout::Fleet`]) each view is the union of this instance's local
//! index and the fleet mirror of the other instances' records ([`super::mirror`]), with an
//! `instance` column first; the SQL and the columns are otherwise the same.

/// One column of a view: its name, the SQL expression over `main.audit_events`, what it means.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub expr: &'static str,
    pub doc: &'static str,
}

/// One view: its name, what it holds, which records (`WHERE` over `audit_events`), its columns.
#[derive(Debug, Clone, Copy)]
pub struct View {
    pub name: &'static str,
    pub doc: &'static str,
    pub filter: Option<&'static str>,
    pub columns: &'static [Column],
}

const fn col(name: &'static str, expr: &'static str, doc: &'static str) -> Column {
    Column { name, expr, doc }
}

/// `ts` in SQLite's date format, UTC, microseconds kept.
const TS: Column = col(
    "ts",
    "replace(replace(ts, 'T', ' '), 'Z', '')",
    "when the record was written, UTC, in SQLite's date format (compare with datetime('now', '-1 hour'))",
);
const SEQ: Column = col("seq", "seq", "the record's position in the hash chain (gapless)");
const KIND: Column = col(
    "kind",
    "kind",
    "the record's kind (session_start, statement, grant_issued, …)",
);
const USER: Column = col(
    "user",
    "user_name",
    "the engineer (PostgreSQL user name) the record is about",
);
const TARGET: Column = col(
    "target",
    "target",
    "the target database's name in timebox's config",
);
const GRANT_ID: Column = col("grant_id", "grant_id", "the grant (g_…)");
const SESSION_ID: Column = col("session_id", "session_id", "the session (s_…; a_… for auditors)");
const PAYLOAD: Column = col(
    "payload",
    "payload",
    "the whole record as JSON (json_extract(payload, '$.field'))",
);

const fn field(name: &'static str, expr: &'static str, doc: &'static str) -> Column {
    col(name, expr, doc)
}

/// Every view auditors may read.
pub const VIEWS: &[View] = &[
    View {
        name: "events",
        doc: "every audit record, of every kind",
        filter: None,
        columns: &[
            SEQ,
            TS,
            col("ts_rfc3339", "ts", "the stored time as written in the record (RFC 3339; what the hash covers)"),
            KIND,
            USER,
            TARGET,
            GRANT_ID,
            SESSION_ID,
            PAYLOAD,
            col("prev_hash", "prev_hash", "the hash of the record before (hex)"),
            col("hash", "hash", "this record's hash over prev_hash, seq, ts, kind and payload (hex)"),
        ],
    },
    View {
        name: "statements",
        doc: "each statement an engineer (or auditor) sent, with the decision, before it ran",
        filter: Some("kind = 'statement'"),
        columns: &[
            SEQ,
            TS,
            USER,
            TARGET,
            GRANT_ID,
            SESSION_ID,
            field("statement_id", "json_extract(payload, '$.statement_id')", "the statement's number in its session (joins outcomes)"),
            field("sql", "json_extract(payload, '$.sql')", "the statement text, secrets redacted"),
            field("class", "json_extract(payload, '$.class')", "read, write, ddl, admin, session, … as classified"),
            field("decision", "json_extract(payload, '$.decision')", "allow or deny"),
            field("reason", "json_extract(payload, '$.reason')", "why it was denied (NULL when allowed)"),
            field("relations", "json_extract(payload, '$.relations')", "tables and views it touches (JSON array)"),
            field("params", "json_extract(payload, '$.params')", "bind parameters (per [audit] params; JSON)"),
        ],
    },
    View {
        name: "outcomes",
        doc: "how each allowed statement ended",
        filter: Some("kind = 'statement_outcome'"),
        columns: &[
            SEQ,
            TS,
            SESSION_ID,
            field("statement_id", "json_extract(payload, '$.statement_id')", "joins statements (with session_id)"),
            field("command_tag", "json_extract(payload, '$.command_tag')", "PostgreSQL's command tag (SELECT 3, UPDATE 1, …)"),
            field("rows", "json_extract(payload, '$.rows')", "rows returned or changed"),
            field("sqlstate", "json_extract(payload, '$.sqlstate')", "the error's SQLSTATE (NULL on success)"),
            field("duration_us", "json_extract(payload, '$.duration_us')", "microseconds from forwarding to completion"),
            field("returned_rows", "json_extract(payload, '$.returned.rows')", "result rows forwarded to the client (roles with result quotas or masks; NULL otherwise)"),
            field("returned_bytes", "json_extract(payload, '$.returned.bytes')", "result bytes forwarded to the client (roles with result quotas or masks; NULL otherwise)"),
            field("quota_stop", "json_extract(payload, '$.returned.quota_stop')", "the role quota that stopped the result (max_rows_per_statement, …), or NULL"),
            field("masked_columns", "(SELECT group_concat(json_extract(m.value, '$.column') || ' ' || json_extract(m.value, '$.method'), ', ') FROM json_each(payload, '$.returned.masked') AS m)", "the masked columns its results had, as schema.table.column method, comma-separated (roles with masks; NULL when none)"),
        ],
    },
    View {
        name: "sessions",
        doc: "session starts and ends (end reason in the payload)",
        filter: Some("kind IN ('session_start', 'session_end')"),
        columns: &[
            SEQ,
            TS,
            KIND,
            USER,
            TARGET,
            GRANT_ID,
            SESSION_ID,
            field("reason", "json_extract(payload, '$.reason')", "why the session ended (session_end only)"),
            PAYLOAD,
        ],
    },
    View {
        name: "auth_failures",
        doc: "failed logins (wrong token, no current grant, throttled, timed out)",
        filter: Some("kind = 'auth_failure'"),
        columns: &[
            SEQ,
            TS,
            USER,
            TARGET,
            field("client_addr", "json_extract(payload, '$.client_addr')", "where the client connected from"),
            field("reason", "json_extract(payload, '$.reason')", "why the login failed"),
        ],
    },
    View {
        name: "grant_events",
        doc: "grants issued, revoked and extended",
        filter: Some("kind LIKE 'grant_%'"),
        columns: &[
            SEQ,
            TS,
            KIND,
            USER,
            TARGET,
            GRANT_ID,
            field(
                "actor",
                "coalesce(json_extract(payload, '$.created_by'), json_extract(payload, '$.revoked_by'), json_extract(payload, '$.extended_by'))",
                "who issued, revoked or extended the grant",
            ),
            field("reason", "json_extract(payload, '$.reason')", "the reason given"),
            field("break_glass", "json_extract(payload, '$.break_glass')", "1 for a self-approved emergency grant (grant_issued)"),
            PAYLOAD,
        ],
    },
    View {
        name: "access_requests",
        doc: "access requests filed, approved, denied, expired and their tokens fetched",
        filter: Some("kind = 'access_request'"),
        columns: &[
            SEQ,
            TS,
            field("request_id", "json_extract(payload, '$.request_id')", "the request (r_…)"),
            field("action", "json_extract(payload, '$.action')", "created, approved, denied, expired or token_fetched"),
            field("actor", "json_extract(payload, '$.actor')", "who acted (timebox for expiry)"),
            USER,
            TARGET,
            field("role", "json_extract(payload, '$.role')", "the role asked for"),
            GRANT_ID,
            field("reason", "json_extract(payload, '$.reason')", "the request's or the decision's reason"),
            field("break_glass", "json_extract(payload, '$.break_glass')", "1 for a break-glass request"),
        ],
    },
];

/// The self-describing views: `timebox_views`, `timebox_columns` (data only) and
/// `timebox_mirror` (how fresh the fleet mirror is; empty without one).
pub const CATALOG_VIEWS: &[&str] = &["timebox_views", "timebox_columns", "timebox_mirror"];

/// The schema name the fleet mirror is attached as.
pub const FLEET_SCHEMA: &str = "fleet";

/// Where the views read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout<'a> {
    /// The local audit index only (a single instance with the SQLite store): as always.
    Local,
    /// With a PostgreSQL store: this instance's records from its local index (`instance` is its
    /// name) and every other instance's from the fleet mirror attached as [`FLEET_SCHEMA`]
    /// ([`super::mirror`]); every view gets an `instance` column first.
    Fleet { instance: &'a str },
}

/// The `instance` column of the fleet views.
pub const INSTANCE: Column = col(
    "instance",
    "instance",
    "the instance whose hash chain holds the record ([fleet] instance; with seq, the record's key)",
);

/// What `timebox_views` says of `timebox_mirror`: the hint on how fresh the fleet's records are.
pub const MIRROR_DOC: &str =
    "fleet: per other instance, the last seq mirrored from the central audit table and \
     when the mirror last held all of it (records arrive within about 2 s while the store answers; \
     this instance's own records are read directly)";

/// The columns of `timebox_mirror`.
const MIRROR_COLUMNS: &[Column] = &[
    INSTANCE,
    col(
        "through_seq",
        "seq",
        "the highest seq of the instance mirrored here",
    ),
    col(
        "synced_at",
        "replace(replace(nullif(synced_at, ''), 'T', ' '), 'Z', '')",
        "when the mirror last held every record the central table had of the instance (UTC)",
    ),
];

/// Every name auditors may read: the audit views and the catalog views.
pub fn names() -> impl Iterator<Item = &'static str> {
    VIEWS.iter().map(|v| v.name).chain(CATALOG_VIEWS.iter().copied())
}

/// True if `lowercase` names a view auditors may read.
pub fn is_view(lowercase: &str) -> bool {
    names().any(|n| n == lowercase)
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The SQL that creates every view in the temp schema, over the local index only.
pub fn create_sql() -> String {
    create_sql_for(Layout::Local)
}

/// `SELECT <columns> FROM <table> [WHERE <filter>]` of one view, with `instance` (an expression)
/// first when given.
fn select(view: &View, instance: Option<&str>, table: &str) -> String {
    let columns: Vec<String> = instance
        .map(|expr| format!("{expr} AS \"{}\"", INSTANCE.name))
        .into_iter()
        .chain(
            view.columns
                .iter()
                .map(|c| format!("{} AS \"{}\"", c.expr, c.name)),
        )
        .collect();
    format!(
        "SELECT {} FROM {table}{}",
        columns.join(", "),
        view.filter.map(|f| format!(" WHERE {f}")).unwrap_or_default()
    )
}

/// The SQL that creates every view in the temp schema for `layout`.
pub fn create_sql_for(layout: Layout<'_>) -> String {
    let mut sql = String::new();
    for view in VIEWS {
        let body = match layout {
            Layout::Local => select(view, None, "main.audit_events"),
            Layout::Fleet { instance } => format!(
                "{} UNION ALL {}",
                select(view, Some(&quote(instance)), "main.audit_events"),
                select(view, Some(INSTANCE.expr), &format!("{FLEET_SCHEMA}.audit_events"))
            ),
        };
        sql.push_str(&format!("CREATE TEMP VIEW {} AS {body};\n", view.name));
    }
    let fleet = matches!(layout, Layout::Fleet { .. });
    let mut views: Vec<String> = VIEWS
        .iter()
        .map(|v| format!("({}, {})", quote(v.name), quote(v.doc)))
        .collect();
    if fleet {
        views.push(format!("('timebox_mirror', {})", quote(MIRROR_DOC)));
    }
    sql.push_str(&format!(
        "CREATE TEMP VIEW timebox_views(view_name, description) AS VALUES {};\n",
        views.join(", ")
    ));
    let mut described: Vec<(&str, Vec<&Column>)> = VIEWS
        .iter()
        .map(|v| {
            let instance = fleet.then_some(&INSTANCE);
            (v.name, instance.into_iter().chain(v.columns).collect())
        })
        .collect();
    if fleet {
        described.push(("timebox_mirror", MIRROR_COLUMNS.iter().collect()));
    }
    let columns: Vec<String> = described
        .iter()
        .flat_map(|(name, columns)| {
            columns.iter().enumerate().map(move |(i, c)| {
                format!(
                    "({}, {}, {}, {})",
                    quote(name),
                    i + 1,
                    quote(c.name),
                    quote(c.doc)
                )
            })
        })
        .collect();
    sql.push_str(&format!(
        "CREATE TEMP VIEW timebox_columns(view_name, position, column_name, description) AS VALUES {};\n",
        columns.join(", ")
    ));
    let mirror_columns: Vec<&str> = MIRROR_COLUMNS.iter().map(|c| c.name).collect();
    sql.push_str(&match layout {
        Layout::Local => format!(
            "CREATE TEMP VIEW timebox_mirror({}) AS SELECT NULL, NULL, NULL WHERE 0;\n",
            mirror_columns.join(", ")
        ),
        Layout::Fleet { .. } => format!(
            "CREATE TEMP VIEW timebox_mirror({}) AS SELECT {} FROM {FLEET_SCHEMA}.mirror_marks;\n",
            mirror_columns.join(", "),
            MIRROR_COLUMNS
                .iter()
                .map(|c| c.expr)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    });
    sql
}

/// The hint for psql's `\d` family, whose queries read PostgreSQL's catalog.
pub const DESCRIBE_HINT: &str =
    "timebox_audit is served from SQLite and has no PostgreSQL catalog, so psql's \\d \
     commands do not work here: list the views with SELECT * FROM timebox_views; and a view's columns with \
     SELECT column_name, description FROM timebox_columns WHERE view_name = 'statements';";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_view_has_unique_documented_columns() {
        for view in VIEWS {
            let mut seen = std::collections::HashSet::new();
            for c in view.columns {
                assert!(seen.insert(c.name), "{}.{} twice", view.name, c.name);
                assert!(!c.doc.is_empty(), "{}.{} undocumented", view.name, c.name);
            }
            assert!(
                seen.contains("ts") && seen.contains("seq"),
                "{} lacks ts/seq",
                view.name
            );
        }
    }

    #[test]
    fn views_create_and_compare_times_with_sqlites_date_functions() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE audit_events (seq INTEGER PRIMARY KEY, ts TEXT, kind TEXT, user_name TEXT, \
             target TEXT, grant_id TEXT, session_id TEXT, payload TEXT, prev_hash TEXT, hash TEXT);",
        )
        .unwrap();
        let now = chrono::Utc::now();
        for (seq, age_minutes) in [(1, 120), (2, 30), (3, 0)] {
            let ts = (now - chrono::Duration::minutes(age_minutes))
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            conn.execute(
                "INSERT INTO audit_events VALUES (?1, ?2, 'statement', 'alice', 'shop', 'g_1', 's_1', \
                 '{\"sql\":\"SELECT 1\"}', '', '')",
                rusqlite::params![seq, ts],
            )
            .unwrap();
        }
        conn.execute_batch(&create_sql()).unwrap();
        let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        // the stored text compared as text is wrong to the day: each row looks later than the
        // last second of its own day (`T` sorts after the space of SQLite's datetime text);
        // s11: compared with a time of its own day, so that the check holds at any hour (against
        // `datetime('now', '-1 hour')` it failed in the two hours after midnight UTC)
        assert_eq!(
            count("SELECT count(*) FROM audit_events WHERE ts > datetime(substr(ts, 1, 10) || ' 23:59:59')"),
            3
        );
        assert_eq!(
            count("SELECT count(*) FROM events WHERE ts > datetime('now', '-1 hour')"),
            2
        );
        assert_eq!(
            count("SELECT count(*) FROM statements WHERE ts > datetime('now', '-10 minutes')"),
            1
        );
        assert_eq!(
            count("SELECT count(*) FROM events WHERE ts > datetime('now', '+1 minute')"),
            0
        );
        assert_eq!(
            count("SELECT count(*) FROM events WHERE julianday(ts) < julianday('now', '-1 hour')"),
            1
        );
        assert_eq!(count("SELECT count(*) FROM timebox_views"), VIEWS.len() as i64);
        let statement_columns = VIEWS
            .iter()
            .find(|v| v.name == "statements")
            .unwrap()
            .columns
            .len();
        assert_eq!(
            count("SELECT count(*) FROM timebox_columns WHERE view_name = 'statements'"),
            statement_columns as i64
        );
    }

    #[test]
    fn fleet_views_read_the_local_index_and_the_mirror_with_their_instance() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE audit_events (seq INTEGER PRIMARY KEY, ts TEXT, kind TEXT, user_name TEXT, \
             target TEXT, grant_id TEXT, session_id TEXT, payload TEXT, prev_hash TEXT, hash TEXT); \
             INSERT INTO audit_events VALUES (1, '2026-12-07T08:00:00.000000Z', 'statement', 'bob', \
             'shop', 'g_2', 's_2', '{\"sql\":\"SELECT 2\"}', '', '');",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mirror_path = dir.path().join("fleet-audit.db");
        let mirror = super::super::mirror::open_writer(&mirror_path).unwrap();
        mirror
            .execute_batch(
                "INSERT INTO audit_events (instance, seq, ts, kind, payload, prev_hash, hash, user_name) \
                 VALUES ('tb-a', 7, '2026-12-07T07:00:00.000000Z', 'statement', '{\"sql\":\"SELECT 1\"}', '', '', 'alice'); \
                 INSERT INTO mirror_marks VALUES ('tb-a', 7, '', '2026-12-07T08:00:01.000000Z');",
            )
            .unwrap();
        conn.execute("ATTACH DATABASE ?1 AS fleet", [mirror_path.to_str().unwrap()])
            .unwrap();
        conn.execute_batch(&create_sql_for(Layout::Fleet { instance: "tb-'b" }))
            .unwrap();
        let rows: Vec<(String, i64, String, String)> = {
            let mut stmt = conn
                .prepare("SELECT instance, seq, \"user\", sql FROM statements ORDER BY instance")
                .unwrap();
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .unwrap();
            rows.map(|r| r.unwrap()).collect()
        };
        assert_eq!(
            rows,
            [
                ("tb-'b".to_owned(), 1, "bob".to_owned(), "SELECT 2".to_owned()),
                ("tb-a".to_owned(), 7, "alice".to_owned(), "SELECT 1".to_owned()),
            ],
            "the instance name is quoted, not spliced"
        );
        let text = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, String>(0)).unwrap();
        assert_eq!(
            text("SELECT instance || ' ' || through_seq || ' ' || synced_at FROM timebox_mirror"),
            "tb-a 7 2026-12-07 08:00:01.000000"
        );
        let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(
            count("SELECT count(*) FROM timebox_views"),
            VIEWS.len() as i64 + 1
        );
        assert_eq!(
            text("SELECT column_name FROM timebox_columns WHERE view_name = 'events' AND position = 1"),
            "instance"
        );
        // The local layout has no instance column and an empty timebox_mirror.
        let local = rusqlite::Connection::open_in_memory().unwrap();
        local
            .execute_batch(
                "CREATE TABLE audit_events (seq INTEGER PRIMARY KEY, ts TEXT, kind TEXT, user_name TEXT, \
                 target TEXT, grant_id TEXT, session_id TEXT, payload TEXT, prev_hash TEXT, hash TEXT);",
            )
            .unwrap();
        local.execute_batch(&create_sql()).unwrap();
        let n: i64 = local
            .query_row("SELECT count(*) FROM timebox_mirror", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        assert!(local.prepare("SELECT instance FROM events").is_err());
    }

    #[test]
    fn the_readme_documents_every_view_and_column() {
        let readme = include_str!("../../README.md");
        for view in VIEWS {
            assert!(
                readme.contains(&format!("`{}`", view.name)),
                "README lacks view {}",
                view.name
            );
            for c in view.columns {
                assert!(
                    readme.contains(&format!("`{}`", c.name)),
                    "README lacks column {}.{}",
                    view.name,
                    c.name
                );
            }
        }
    }
}
