//! The SQLite side of `timebox_audit`: runs one auditor query on a read-only connection to the
//! audit database and streams its result to the client.
//!
//! Data flow: [`super`] has authenticated the auditor, audited the query and passed PostgreSQL's
//! parser check (a first filter only: the parsers disagree, e.g. on nested `/* */` comments). What
//! decides is SQLite's authorizer, called by the engine that executes the query for every table,
//! column, function and action it is about to use: [`authorize`] admits reads of the audit views
//! (and of `audit_events` under them), the JSON table functions and a reviewed function list,
//! and nothing else — no PRAGMA, ATTACH (also `VACUUM INTO`), schema tables, writes or temp objects.
//!
//! Results are never buffered whole: rows go to the client in chunks through a small channel as
//! SQLite produces them, under caps on rows, bytes, the size of one value (SQLite's own
//! `SQLITE_LIMIT_LENGTH`, so a `printf('%.*c', 900000000, 'x')` fails inside SQLite) and time
//! (a progress handler stops the statement between VM instructions). The progress handler never
//! runs inside one function call, so no single call may run long either: values are at most
//! 1 MiB, LIKE/GLOB patterns short, and the built-ins whose cost is the product of their
//! arguments' lengths are replaced by [`super::functions`]. The instance's slot for the query (its
//! concurrency permit) belongs to the SQLite thread and is given back when that thread ends, not
//! when the client is answered. It must never let a query allocate without bound, outlive its
//! time limit or touch anything but the audit trail.
//!
//! With a PostgreSQL store the fleet mirror ([`super::mirror`]) is attached, read-only like the
//! main database (an attached database is opened with the main one's flags), as `fleet` before
//! the authorizer is installed; the authorizer then admits reads of its `audit_events` and
//! `mirror_marks` (under the views) and nothing more of it. ATTACH stays refused to auditors.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;

use super::functions::{self, Arg, Ends, FunctionError, Replaced};
use super::messages::{self, MessageError};
use crate::proxy::wire::PgError;

/// Caps on one auditor query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rows one result may have.
    pub max_rows: usize,
    /// Bytes of DataRows one result may have.
    pub max_result_bytes: usize,
    /// Bytes of one string or blob, inside SQLite too (`SQLITE_LIMIT_LENGTH`). A record's payload
    /// must fit to be read: statement text is capped at 64 KiB in the record.
    pub max_value_bytes: usize,
    /// Bytes of one encoded row, checked before it is copied.
    pub max_row_bytes: usize,
    /// Columns of one result (`SQLITE_LIMIT_COLUMN`), which with the value cap bounds a row.
    pub max_columns: usize,
    /// Wall-clock time of one query, including the time the client takes to read it.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_rows: 100_000,
            max_result_bytes: 256 * 1024 * 1024,
            max_value_bytes: 1024 * 1024,
            max_row_bytes: 8 * 1024 * 1024,
            max_columns: 32,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Arguments of one SQL function call (`SQLITE_LIMIT_FUNCTION_ARG`): few big values at once.
const MAX_FUNCTION_ARGS: i32 = 8;
/// Depth of one expression tree (`SQLITE_LIMIT_EXPR_DEPTH`).
const MAX_EXPR_DEPTH: i32 = 100;
/// Bytes of a LIKE or GLOB pattern (`SQLITE_LIMIT_LIKE_PATTERN_LENGTH`): matching costs up to the
/// pattern's length per byte of the value.
const MAX_LIKE_PATTERN: i32 = 256;
/// Bytes per chunk sent to the client; chunks in flight are bounded by [`CHUNKS_IN_FLIGHT`].
const CHUNK_BYTES: usize = 64 * 1024;
const CHUNKS_IN_FLIGHT: usize = 4;
/// SQLite VM instructions between two checks of the deadline.
const PROGRESS_EVERY: i32 = 10_000;

/// SQLite registers its eponymous table functions on first use (a schema write the authorizer
/// would refuse): use them once, before the authorizer is installed.
const WARM_TABLE_FUNCTIONS: &str = "SELECT * FROM json_each('[]'); SELECT * FROM json_tree('[]');";

/// The table the views read (in the main schema, and in the fleet mirror's).
const AUDIT_TABLE: &str = "audit_events";
/// The fleet mirror's per-instance marks (read by the `timebox_mirror` view).
const MIRROR_MARKS: &str = "mirror_marks";

/// The databases an auditor query reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditDb {
    /// This instance's audit index (the main database).
    pub local: PathBuf,
    /// With a PostgreSQL store: the fleet mirror and this instance's name.
    pub fleet: Option<FleetDb>,
}

/// The fleet mirror an auditor query reads besides the local index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetDb {
    /// `fleet-audit.db` ([`super::mirror`]), attached as [`super::views::FLEET_SCHEMA`].
    pub mirror: PathBuf,
    /// This instance's `[fleet] instance` (the local index's records carry it).
    pub instance: String,
}

impl AuditDb {
    /// The local index only (single instance).
    pub fn local(path: &Path) -> AuditDb {
        AuditDb {
            local: path.to_owned(),
            fleet: None,
        }
    }

    fn layout(&self) -> super::views::Layout<'_> {
        match &self.fleet {
            None => super::views::Layout::Local,
            Some(f) => super::views::Layout::Fleet {
                instance: &f.instance,
            },
        }
    }
}

/// Table-valued functions auditors may use (they read their argument, nothing else).
const TABLE_FUNCTIONS: &[&str] = &["json_each", "json_tree"];

/// The reviewed functions auditors may call: reads of their arguments only. Absent on purpose:
/// `load_extension`, `zeroblob`, `randomblob`, `random`, `sqlite_*`, `fts3_tokenizer`,
/// `changes`-style connection state.
pub const ALLOWED_FUNCTIONS: &[&str] = &[
    // aggregates and window functions
    "count",
    "sum",
    "total",
    "avg",
    "min",
    "max",
    "group_concat",
    "string_agg",
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
    // JSON
    "json",
    "json_extract",
    "->",
    "->>",
    "json_array_length",
    "json_type",
    "json_valid",
    "json_array",
    "json_object",
    "json_quote",
    "json_group_array",
    "json_group_object",
    // date and time
    "date",
    "time",
    "datetime",
    "julianday",
    "unixepoch",
    "strftime",
    "timediff",
    // strings and numbers
    "abs",
    "coalesce",
    "ifnull",
    "iif",
    "nullif",
    "instr",
    "length",
    "octet_length",
    "lower",
    "upper",
    "ltrim",
    "rtrim",
    "trim",
    "replace",
    "substr",
    "substring",
    "printf",
    "format",
    "round",
    "sign",
    "typeof",
    "hex",
    "quote",
    "like",
    "glob",
    "unicode",
    "char",
    "concat",
    "concat_ws",
    "floor",
    "ceil",
    "ceiling",
];

/// Why an auditor query did not complete (or was not run).
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The PostgreSQL-parser check refused it (the message says why).
    #[error("{0}")]
    Refused(String),
    /// It could not be recorded in the audit log, so it was not run (fail closed).
    #[error("timebox cannot record this query in the audit log, so it was not run")]
    AuditUnavailable,
    /// As many auditor queries as the instance runs at once are running.
    #[error("timebox_audit is running {limit} queries already; try again in a moment")]
    Busy { limit: usize },
    /// Parse/Bind/Execute and friends.
    #[error("timebox_audit supports the simple query protocol only (psql does)")]
    ExtendedProtocol,
    /// The authorizer refused something the query would do.
    #[error("timebox_audit is read-only over the audit views: {what} is not allowed; query the views {}", super::views::names().collect::<Vec<_>>().join(", "))]
    NotAuthorized { what: String },
    #[error("the result has more than {limit} rows; add a LIMIT or a narrower WHERE")]
    TooManyRows { limit: usize },
    #[error("the result is larger than {limit} bytes; select fewer rows or columns")]
    TooManyBytes { limit: usize },
    #[error("a value in the query is larger than timebox_audit's limit of {limit} bytes")]
    ValueTooLarge { limit: usize },
    #[error("a row of the result is larger than timebox_audit's limit of {limit} bytes; select fewer or shorter columns")]
    RowTooLarge { limit: usize },
    /// A replaced built-in refused its arguments ([`super::functions`]).
    #[error("{0}")]
    Function(#[source] FunctionError),
    #[error("the query ran longer than timebox_audit's limit of {limit:?} and was stopped")]
    Timeout { limit: Duration },
    #[error("cannot open the audit database: {0}")]
    Open(#[source] rusqlite::Error),
    /// SQLite refused the query (syntax error, unknown column, …).
    #[error("{0}")]
    Sqlite(#[source] rusqlite::Error),
    /// The blocking task running the query panicked or was cancelled.
    #[error("query task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// Nothing more can be told to the client.
    #[error("client left during the query")]
    ClientLeft,
    /// A result message could not be encoded (pgwire refused it).
    #[error("{0}")]
    Encode(#[from] MessageError),
}

impl QueryError {
    /// The ErrorResponse the client gets (the session goes on).
    pub fn to_pg_error(&self) -> PgError {
        let message = self.to_string();
        let error = match self {
            QueryError::Refused(_) | QueryError::NotAuthorized { .. } => {
                PgError::insufficient_privilege(message)
            }
            QueryError::AuditUnavailable => PgError::io_error(message),
            QueryError::Busy { .. } => PgError::too_many_connections(message),
            QueryError::ExtendedProtocol => PgError::feature_not_supported(message),
            QueryError::TooManyRows { .. }
            | QueryError::TooManyBytes { .. }
            | QueryError::ValueTooLarge { .. }
            | QueryError::RowTooLarge { .. }
            | QueryError::Function(FunctionError::TooCostly { .. } | FunctionError::TooLarge { .. }) => {
                PgError::program_limit_exceeded(message)
            }
            QueryError::Function(FunctionError::RealArgument { .. }) => {
                PgError::feature_not_supported(message)
            }
            QueryError::Timeout { .. } => PgError::query_canceled(message),
            QueryError::Sqlite(_) => PgError::syntax_error_or_access_rule_violation(message),
            QueryError::Open(_) | QueryError::Task(_) | QueryError::ClientLeft | QueryError::Encode(_) => {
                PgError::internal(message)
            }
        };
        error.non_fatal()
    }
}

/// The names of the audit database's schema objects and SQLite's table-valued modules, read when
/// the connection opens (before the authorizer is installed).
#[derive(Debug, Clone, Default)]
pub struct Schema {
    objects: HashSet<String>,
}

impl Schema {
    pub fn new<I: IntoIterator<Item = String>>(names: I) -> Self {
        Schema {
            objects: names.into_iter().map(|n| n.to_ascii_lowercase()).collect(),
        }
    }

    fn read(conn: &Connection, fleet: bool) -> rusqlite::Result<Self> {
        let mut sql = "SELECT name FROM main.sqlite_master UNION SELECT name FROM temp.sqlite_master \
                       UNION SELECT name FROM pragma_module_list"
            .to_owned();
        if fleet {
            sql.push_str(&format!(
                " UNION SELECT name FROM {}.sqlite_master",
                super::views::FLEET_SCHEMA
            ));
        }
        let mut stmt = conn.prepare(&sql)?;
        let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(Schema::new(names.collect::<rusqlite::Result<Vec<_>>>()?))
    }

    /// True for anything that is a table, view, index or module rather than a name the query
    /// defines itself (a CTE).
    fn is_object(&self, lowercase: &str) -> bool {
        self.objects.contains(lowercase)
            || lowercase.starts_with("sqlite_")
            || lowercase.starts_with("pragma_")
    }
}

/// The authorizer's decision on one action of a query. Pure: `Err` names what is refused.
///
/// SQLite reports a table the query reads no column of (`count(*)`) by the name as written,
/// without its schema; that is how a CTE's name arrives too, so a schema-less name is admitted
/// only when it names no object of the database.
pub fn authorize(action: &AuthAction<'_>, database: Option<&str>, schema: &Schema) -> Result<(), String> {
    match *action {
        AuthAction::Select | AuthAction::Recursive => Ok(()),
        AuthAction::Read { table_name, .. } => {
            let table = table_name.to_ascii_lowercase();
            let in_schema = |wanted: &str| database.is_none_or(|d| d.eq_ignore_ascii_case(wanted));
            let is_view = in_schema("temp") && super::views::is_view(&table);
            let fleet = in_schema(super::views::FLEET_SCHEMA);
            let is_audit_table = (in_schema("main") || fleet) && table == AUDIT_TABLE;
            let is_mirror_marks = fleet && table == MIRROR_MARKS;
            let is_table_function = in_schema("main") && TABLE_FUNCTIONS.contains(&table.as_str());
            let is_cte = database.is_none() && !schema.is_object(&table);
            if is_view || is_audit_table || is_mirror_marks || is_table_function || is_cte {
                Ok(())
            } else {
                Err(format!("reading {}", qualified(database, table_name)))
            }
        }
        AuthAction::Function { function_name } => {
            if ALLOWED_FUNCTIONS.contains(&function_name.to_ascii_lowercase().as_str()) {
                Ok(())
            } else {
                Err(format!("the function {function_name}()"))
            }
        }
        AuthAction::Pragma { pragma_name, .. } => Err(format!("PRAGMA {pragma_name}")),
        AuthAction::Attach { filename: "" } => Err("ATTACH".into()),
        // VACUUM INTO is authorized as an ATTACH of its target file.
        AuthAction::Attach { .. } => Err("ATTACH (or VACUUM INTO)".into()),
        AuthAction::Detach { .. } => Err("DETACH".into()),
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => Err("transaction control".into()),
        AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Delete { table_name } => Err(format!("writing {}", qualified(database, table_name))),
        _ => Err("schema changes and other statements than SELECT".into()),
    }
}

fn qualified(database: Option<&str>, table: &str) -> String {
    match database {
        Some(db) => format!("{db}.{table}"),
        None => table.to_owned(),
    }
}

/// Runs an already-audited query and streams its result (RowDescription, DataRows,
/// CommandComplete or EmptyQueryResponse) to `client`. On `Err` the client has received part of
/// the result at most; the caller sends the error and ReadyForQuery.
///
/// `slot` is the query's place among the instance's concurrent auditor queries: it moves into
/// the SQLite thread and is given back when that thread ends, even if the client was answered
/// (57014) before.
pub async fn execute<W: AsyncWrite + Unpin>(
    db: &AuditDb,
    sql: String,
    limits: Limits,
    slot: OwnedSemaphorePermit,
    client: &mut W,
) -> Result<(), QueryError> {
    let db = db.to_owned();
    stream(limits.timeout, slot, client, move |deadline, stop, tx| {
        run(&db, &sql, limits, deadline, stop, tx)
    })
    .await
}

/// Runs `body` on a blocking thread that holds `slot` until it ends, and streams the chunks it
/// sends to `client` until `timeout`; then sets the stop flag `body` must watch.
async fn stream<W, F>(
    timeout: Duration,
    slot: OwnedSemaphorePermit,
    client: &mut W,
    body: F,
) -> Result<(), QueryError>
where
    W: AsyncWrite + Unpin,
    F: FnOnce(Instant, &Arc<AtomicBool>, &tokio::sync::mpsc::Sender<BytesMut>) -> Result<(), QueryError>
        + Send
        + 'static,
{
    let deadline = Instant::now() + timeout;
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<BytesMut>(CHUNKS_IN_FLIGHT);
    let task = tokio::task::spawn_blocking({
        let stop = stop.clone();
        move || {
            let result = body(deadline, &stop, &tx);
            // Given back here, not when the client is answered: a thread SQLite keeps busy past
            // the time limit still counts against the instance's queries at once.
            drop(slot);
            result
        }
    });
    let streamed = async {
        while let Some(chunk) = rx.recv().await {
            client
                .write_all(&chunk)
                .await
                .map_err(|_| QueryError::ClientLeft)?;
        }
        Ok(())
    };
    let outcome = tokio::time::timeout_at(deadline.into(), streamed).await;
    // From here on SQLite stops at its next progress check, and a blocked send fails.
    stop.store(true, Ordering::Relaxed);
    drop(rx);
    match outcome {
        Err(_) => Err(QueryError::Timeout { limit: timeout }),
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) => match task.await {
            Ok(result) => result,
            Err(e) => Err(QueryError::Task(e)),
        },
    }
}

/// What SQLite's callbacks refused while a statement ran, told to the auditor instead of SQLite's
/// generic error.
#[derive(Debug, Default)]
struct Refusals {
    /// The first action the authorizer refused.
    denied: Option<String>,
    /// The first replaced built-in that refused its arguments.
    function: Option<FunctionError>,
}

type SharedRefusals = Arc<Mutex<Refusals>>;

fn lock(refusals: &SharedRefusals) -> std::sync::MutexGuard<'_, Refusals> {
    refusals.lock().unwrap_or_else(|e| e.into_inner())
}

/// Opens the audit database read-only, with the views, the limits, the replaced built-ins and the
/// authorizer in place.
fn open(db: &AuditDb, limits: Limits, refusals: SharedRefusals) -> Result<Connection, QueryError> {
    let conn = Connection::open_with_flags(
        &db.local,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(QueryError::Open)?;
    if let Some(fleet) = &db.fleet {
        // Opened with the main database's flags: read-only too.
        let path = fleet
            .mirror
            .to_str()
            .ok_or_else(|| QueryError::Open(rusqlite::Error::InvalidPath(fleet.mirror.clone())))?;
        conn.execute(
            &format!("ATTACH DATABASE ?1 AS {}", super::views::FLEET_SCHEMA),
            [path],
        )
        .map_err(QueryError::Open)?;
    }
    conn.execute_batch(&super::views::create_sql_for(db.layout()))
        .map_err(QueryError::Open)?;
    conn.execute_batch(WARM_TABLE_FUNCTIONS)
        .map_err(QueryError::Open)?;
    conn.pragma_update(None, "query_only", "ON")
        .map_err(QueryError::Open)?;
    let clamp = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, clamp(limits.max_value_bytes));
    conn.set_limit(Limit::SQLITE_LIMIT_COLUMN, clamp(limits.max_columns));
    conn.set_limit(Limit::SQLITE_LIMIT_FUNCTION_ARG, MAX_FUNCTION_ARGS);
    conn.set_limit(Limit::SQLITE_LIMIT_EXPR_DEPTH, MAX_EXPR_DEPTH);
    conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0);
    conn.set_limit(Limit::SQLITE_LIMIT_LIKE_PATTERN_LENGTH, MAX_LIKE_PATTERN);
    replace_builtins(&conn, limits.max_value_bytes, &refusals).map_err(QueryError::Open)?;
    let schema = Schema::read(&conn, db.fleet.is_some()).map_err(QueryError::Open)?;
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        match authorize(&ctx.action, ctx.database_name, &schema) {
            Ok(()) => Authorization::Allow,
            Err(what) => {
                lock(&refusals).denied.get_or_insert(what);
                Authorization::Deny
            }
        }
    }));
    Ok(conn)
}

/// Registers [`super::functions`] under the built-ins' names (which overrides them on this
/// connection). A refusal is kept in `refusals` for the auditor's error.
fn replace_builtins(
    conn: &Connection,
    max_value_bytes: usize,
    refusals: &SharedRefusals,
) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    let refused = |refusals: &SharedRefusals, e: FunctionError| {
        let message = e.to_string();
        lock(refusals).function.get_or_insert(e);
        rusqlite::Error::UserFunctionError(message.into())
    };
    let r = refusals.clone();
    conn.create_scalar_function("instr", 2, flags, move |ctx| {
        let (h, n) = (ctx.get_raw(0), ctx.get_raw(1));
        let h = Arg::from_value(h, "instr").map_err(|e| refused(&r, e))?;
        let n = Arg::from_value(n, "instr").map_err(|e| refused(&r, e))?;
        Ok(functions::instr(&h, &n))
    })?;
    let r = refusals.clone();
    conn.create_scalar_function("replace", 3, flags, move |ctx| {
        let arg = |i| Arg::from_value(ctx.get_raw(i), "replace").map_err(|e| refused(&r, e));
        let (x, p, w) = (arg(0)?, arg(1)?, arg(2)?);
        match functions::replace(&x, &p, &w, max_value_bytes).map_err(|e| refused(&r, e))? {
            Replaced::Null => Ok(None),
            Replaced::Text(t) => Ok(Some(functions::into_text(t))),
        }
    })?;
    for ends in [Ends::Left, Ends::Right, Ends::Both] {
        let r = refusals.clone();
        conn.create_scalar_function(ends.function(), 2, flags, move |ctx| {
            let arg = |i| Arg::from_value(ctx.get_raw(i), ends.function()).map_err(|e| refused(&r, e));
            let (x, set) = (arg(0)?, arg(1)?);
            let trimmed =
                functions::trim(&x, &set, ends, functions::MAX_TRIM_WORK).map_err(|e| refused(&r, e))?;
            Ok(trimmed.map(functions::into_text))
        })?;
    }
    Ok(())
}

/// The blocking half of [`execute`].
fn run(
    db: &AuditDb,
    sql: &str,
    limits: Limits,
    deadline: Instant,
    stop: &Arc<AtomicBool>,
    tx: &tokio::sync::mpsc::Sender<BytesMut>,
) -> Result<(), QueryError> {
    let refusals = SharedRefusals::default();
    let conn = open(db, limits, refusals.clone())?;
    let progress_stop = stop.clone();
    conn.progress_handler(
        PROGRESS_EVERY,
        Some(move || progress_stop.load(Ordering::Relaxed) || Instant::now() >= deadline),
    );
    let fail = |e: rusqlite::Error| {
        let refused = std::mem::take(&mut *lock(&refusals));
        query_error(e, refused, limits, stop.load(Ordering::Relaxed))
    };
    let send = |chunk: BytesMut| tx.blocking_send(chunk).map_err(|_| QueryError::ClientLeft);

    let mut out = BytesMut::with_capacity(CHUNK_BYTES);
    let trimmed = sql.trim().trim_end_matches(';').trim();
    if trimmed.is_empty() {
        messages::empty_query(&mut out)?;
        return send(out);
    }
    let mut stmt = conn.prepare(trimmed).map_err(fail)?;
    let columns: Vec<String> = stmt.column_names().into_iter().map(str::to_owned).collect();
    messages::row_description(&mut out, &columns)?;
    let mut rows = stmt.query([]).map_err(fail)?;
    let (mut count, mut bytes) = (0usize, 0usize);
    while let Some(row) = rows.next().map_err(fail)? {
        count += 1;
        if count > limits.max_rows {
            send(out)?;
            return Err(QueryError::TooManyRows {
                limit: limits.max_rows,
            });
        }
        let start = out.len();
        let mut values = Vec::with_capacity(columns.len());
        for i in 0..columns.len() {
            values.push(row.get_ref(i).map_err(fail)?);
        }
        if messages::encoded_size(&values) > limits.max_row_bytes {
            send(out)?;
            return Err(QueryError::RowTooLarge {
                limit: limits.max_row_bytes,
            });
        }
        messages::data_row(&mut out, &values)?;
        bytes += out.len() - start;
        if bytes > limits.max_result_bytes {
            out.truncate(start);
            send(out)?;
            return Err(QueryError::TooManyBytes {
                limit: limits.max_result_bytes,
            });
        }
        if out.len() >= CHUNK_BYTES {
            send(std::mem::replace(&mut out, BytesMut::with_capacity(CHUNK_BYTES)))?;
        }
    }
    messages::select_complete(&mut out, count)?;
    send(out)
}

/// Maps SQLite's error to what the auditor is told, given what SQLite's callbacks refused.
fn query_error(e: rusqlite::Error, refused: Refusals, limits: Limits, stopped: bool) -> QueryError {
    if let Some(what) = refused.denied {
        return QueryError::NotAuthorized { what };
    }
    if let Some(e) = refused.function {
        return QueryError::Function(e);
    }
    match e.sqlite_error_code() {
        Some(ErrorCode::AuthorizationForStatementDenied) => QueryError::NotAuthorized {
            what: "this statement".into(),
        },
        Some(ErrorCode::TooBig) => QueryError::ValueTooLarge {
            limit: limits.max_value_bytes,
        },
        Some(ErrorCode::OperationInterrupted) if stopped => QueryError::ClientLeft,
        Some(ErrorCode::OperationInterrupted) => QueryError::Timeout {
            limit: limits.timeout,
        },
        _ => QueryError::Sqlite(e),
    }
}

#[cfg(test)]
mod tests;
