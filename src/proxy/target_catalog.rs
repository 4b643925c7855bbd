//! Reads what a target's catalog says about function names ([`TargetFunctions`], issue 12 item 1)
//! through a connection timebox opens for it — with the role's upstream credential, never inside an
//! engineer's session — once per target and server version, shared by every later session.
//!
//! Where it sits: login ([`super::login`]) asks [`TargetCatalogs::functions`] after the session's
//! own upstream connection reported the server version, and hands the answer to the session's
//! interceptor. The first login to a target waits for the read at most [`READ_TIMEOUT`]; when the
//! read fails or takes longer, the session goes on with the hand-kept function lists (stricter:
//! an unlisted built-in counts as write), and a later login tries again.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use dashmap::DashMap;
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;

use super::scram::SaltedPasswordCache;
use super::upstream::{self, UpstreamError};
use crate::config::{Credential, MaskRule, Target};
use crate::masking::catalog::{snapshot_query, MaskSnapshot, Row};
use crate::masking::freshness::{
    compare, fingerprint_query, CatalogFingerprint, Freshness, FINGERPRINT_STATEMENT,
};
use crate::policy::target_functions::{TargetFunctions, FUNCTIONS_QUERY};

/// How long a login waits for a target's catalog before going on without it.
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// The most bytes a catalog answer may take (PostgreSQL 18 has ~3,000 function names, ~100 KB).
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("connecting to the target: {0}")]
    Connect(#[source] UpstreamError),
    #[error("reading the catalog: {0}")]
    Io(#[from] std::io::Error),
    #[error("the target answered the catalog query with an error: {0}")]
    Query(String),
    #[error("the target's answer is not what the catalog query returns: {0}")]
    Protocol(&'static str),
    #[error("reading the catalog took longer than {0:?}")]
    Timeout(Duration),
    #[error("reading the masked columns' identities from the store: {0}")]
    Store(#[source] crate::store::StoreError),
}

/// Catalog reads by (target name, server version), each done once.
#[derive(Debug, Default)]
pub struct TargetCatalogs {
    loaded: DashMap<(String, String), Arc<OnceCell<Arc<TargetFunctions>>>>,
}

impl TargetCatalogs {
    /// The function names of `target` at `server_version`: read through a new connection the first
    /// time (one read at a time per key; concurrent logins wait for it), then from memory. `None`
    /// when it could not be read within [`READ_TIMEOUT`] (logged; the next login tries again).
    pub async fn functions(
        &self,
        target: &Target,
        credential: &Credential,
        tls: Option<Arc<rustls::ClientConfig>>,
        server_version: &str,
        salted: &SaltedPasswordCache,
    ) -> Option<Arc<TargetFunctions>> {
        let cell = self
            .loaded
            .entry((target.name.clone(), server_version.to_string()))
            .or_default()
            .clone();
        let read = cell.get_or_try_init(|| async {
            let read = read_functions(target, credential, tls, salted);
            match tokio::time::timeout(READ_TIMEOUT, read).await {
                Ok(Ok(functions)) => {
                    tracing::info!(target = %target.name, server_version, names = functions.len(), "read the target's function catalog");
                    Ok(Arc::new(functions))
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(CatalogError::Timeout(READ_TIMEOUT)),
            }
        });
        match read.await {
            Ok(functions) => Some(functions.clone()),
            Err(e) => {
                tracing::warn!(target = %target.name, error = %e, "could not read the target's function catalog; the hand-kept lists decide");
                None
            }
        }
    }
}

/// Opens a connection of its own to `target`, runs [`FUNCTIONS_QUERY`] and closes it.
async fn read_functions(
    target: &Target,
    credential: &Credential,
    tls: Option<Arc<rustls::ClientConfig>>,
    salted: &SaltedPasswordCache,
) -> Result<TargetFunctions, CatalogError> {
    let settings = [("application_name".to_string(), "timebox:catalog".to_string())];
    let conn = upstream::connect(target, credential, tls, &settings, READ_TIMEOUT, salted)
        .await
        .map_err(CatalogError::Connect)?;
    let mut stream = conn.stream;
    let mut out = BytesMut::new();
    frontend::query(FUNCTIONS_QUERY, &mut out)?;
    stream.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut rows = Vec::new();
    let mut failure = None;
    loop {
        let message = next_message(&mut stream, &mut buf).await?;
        match message {
            backend::Message::DataRow(row) => rows.push(function_row(&row)?),
            backend::Message::ErrorResponse(e) => failure = Some(error_text(&e)),
            backend::Message::ReadyForQuery(_) => break,
            _ => {}
        }
    }
    out.clear();
    frontend::terminate(&mut out);
    let _ = stream.write_all(&out).await;
    if let Some(e) = failure {
        return Err(CatalogError::Query(e));
    }
    Ok(TargetFunctions::from_rows(rows))
}

/// One row of [`FUNCTIONS_QUERY`] in text format: name, `t`/`f`, `t`/`f`.
fn function_row(row: &backend::DataRowBody) -> Result<(String, bool, bool), CatalogError> {
    use fallible_iterator::FallibleIterator;
    let values: Vec<Option<std::ops::Range<usize>>> = row.ranges().collect()?;
    let text = |i: usize| -> Option<&str> {
        let range = values.get(i)?.clone()?;
        std::str::from_utf8(row.buffer().get(range)?).ok()
    };
    match (text(0), text(1), text(2)) {
        (Some(name), read_only, user) => Ok((name.to_string(), read_only == Some("t"), user == Some("t"))),
        _ => Err(CatalogError::Protocol("a row without a function name")),
    }
}

fn error_text(e: &backend::ErrorResponseBody) -> String {
    use fallible_iterator::FallibleIterator;
    let mut fields = e.fields();
    let mut message = String::new();
    while let Ok(Some(field)) = fields.next() {
        if field.type_() == b'M' {
            message = String::from_utf8_lossy(field.value_bytes()).into_owned();
        }
    }
    message
}

/// Each (target, role)'s masking snapshot ([`MaskSnapshot`], issue 15): read on a connection of
/// timebox's own at the first login of a masked role, re-read in the background when any session
/// on the target ran DDL or a session met a relation or column the snapshot does not know.
/// Sessions read the current snapshot at each RowDescription; while none is known every column
/// from a table is unknown, so its rows are not forwarded (fail closed).
#[derive(Debug, Default)]
pub struct MaskCatalogs {
    by_role: DashMap<(String, String), Arc<MaskEntry>>,
}

/// One (target, role)'s snapshot and whether a read is under way.
#[derive(Debug, Default)]
pub struct MaskEntry {
    snapshot: std::sync::RwLock<Option<Arc<MaskSnapshot>>>,
    reading: std::sync::atomic::AtomicBool,
    /// Asked to re-read while a read was under way: read again after it.
    again: std::sync::atomic::AtomicBool,
    /// Where it is read from (set by the first login).
    source: std::sync::OnceLock<MaskSource>,
    /// `schema.table.column` of each masked (table OID, attribute number), for the audit
    /// records of results (s6). Written before the snapshot it was read with.
    names: std::sync::RwLock<Arc<MaskedNames>>,
    /// Timebox's catalog connection for this (target, role): the fingerprint before each masked
    /// statement and every snapshot read run on it, one at a time, so snapshots are stored in the
    /// order they were read. Taken out while in use: a read cut short drops it.
    conn: tokio::sync::Mutex<Option<CatalogConn>>,
}

/// An open catalog connection with the fingerprint statement prepared.
struct CatalogConn {
    stream: super::stream::UpstreamStream,
    buf: BytesMut,
}

impl std::fmt::Debug for CatalogConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CatalogConn")
    }
}

/// `schema.table.column` of each masked (table OID, attribute number) of a snapshot read.
pub type MaskedNames = std::collections::HashMap<(u32, i16), String>;

/// The masked columns' names from the attribute rows of [`snapshot_query`] (rule index, relid,
/// schema, table, attnum, whether it is the masked column, the attribute's name): the relation's
/// own current schema and name (a partition or child table's, a renamed or moved table's) and the
/// column's current name (the rule's when the row lacks it). Rows it cannot read are skipped (the
/// snapshot itself refuses them).
pub fn masked_names(rules: &[MaskRule], attrs: &[Row]) -> MaskedNames {
    let field = |row: &Row, i: usize| row.get(i).cloned().flatten();
    attrs
        .iter()
        .filter(|row| field(row, 5).as_deref() == Some("t"))
        .filter_map(|row| {
            let rule = rules.get(field(row, 0)?.parse::<usize>().ok()?)?;
            let relid = field(row, 1)?.parse::<u32>().ok()?;
            let attnum = field(row, 4)?.parse::<i16>().ok()?;
            let column = field(row, 6).unwrap_or_else(|| rule.column.clone());
            let name = format!("{}.{}.{}", field(row, 2)?, field(row, 3)?, column);
            Some(((relid, attnum), name))
        })
        .collect()
}

impl MaskEntry {
    /// The latest snapshot, if one was read.
    pub fn current(&self) -> Option<Arc<MaskSnapshot>> {
        self.snapshot.read().ok().and_then(|s| s.clone())
    }

    /// An entry holding `snapshot` (unit tests).
    pub fn holding(snapshot: Option<MaskSnapshot>) -> MaskEntry {
        MaskEntry {
            snapshot: std::sync::RwLock::new(snapshot.map(Arc::new)),
            ..MaskEntry::default()
        }
    }

    /// An entry holding `snapshot` and the names of its masked columns (unit tests).
    pub fn holding_named(snapshot: MaskSnapshot, names: MaskedNames) -> MaskEntry {
        MaskEntry {
            names: std::sync::RwLock::new(Arc::new(names)),
            ..MaskEntry::holding(Some(snapshot))
        }
    }

    /// Stores `snapshot` as a read would (unit tests).
    #[cfg(test)]
    pub fn replace_snapshot(&self, snapshot: MaskSnapshot) {
        if let Ok(mut w) = self.snapshot.write() {
            *w = Some(Arc::new(snapshot));
        }
    }

    /// The names of the masked columns as of the latest read.
    pub fn names(&self) -> Arc<MaskedNames> {
        self.names.read().map(|n| n.clone()).unwrap_or_default()
    }
}

/// What a read needs, owned (it may run in the background).
#[derive(Debug, Clone)]
pub struct MaskSource {
    pub target: Target,
    pub credential: Credential,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub rules: Vec<MaskRule>,
    /// Where the masked columns' identities outlive a restart (`masking::pins`): the store and
    /// this (target, role)'s key.
    pub pin_store: Option<(crate::store::Store, String)>,
}

impl MaskSource {
    /// The pins the last read stored (the first read of a run starts from them, s9). A store that
    /// keeps none, or bytes that are not pins (logged), give none; a store that cannot be read is
    /// an error (the read is refused, and tried again by the next statement).
    async fn stored_pins(&self) -> Result<Vec<(usize, u32, i16)>, CatalogError> {
        let Some((store, key)) = &self.pin_store else {
            return Ok(Vec::new());
        };
        let bytes = match store.meta_value(key.clone()).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) | Err(crate::store::StoreError::Unsupported(_)) => return Ok(Vec::new()),
            Err(e) => return Err(CatalogError::Store(e)),
        };
        Ok(crate::masking::pins::decode(&self.rules, &bytes).unwrap_or_else(|e| {
            tracing::error!(%key, error = %e, "stored masking pins are unreadable; masked columns are matched by name until the next read stores them again");
            Vec::new()
        }))
    }

    /// Stores `pins` for the next run; a failure is logged (this run follows them in memory).
    async fn store_pins(&self, pins: &[(usize, u32, i16)]) {
        let Some((store, key)) = &self.pin_store else {
            return;
        };
        let bytes = crate::masking::pins::encode(&self.rules, pins);
        if let Err(e) = store.set_meta_value(key.clone(), bytes).await {
            tracing::warn!(%key, error = %e, "could not store the masked columns' identities; a table renamed while timebox is down may be matched by name only after a restart");
        }
    }
}

impl MaskCatalogs {
    /// The entry of (`target`, `role`), created empty.
    pub fn entry(&self, target: &str, role: &str) -> Arc<MaskEntry> {
        self.by_role
            .entry((target.to_owned(), role.to_owned()))
            .or_default()
            .clone()
    }

    /// The snapshot of `source` for `role`: read now (bounded by [`READ_TIMEOUT`]) unless one is
    /// known. `None`: not readable now (logged); rows from tables then fail until a read succeeds.
    pub async fn snapshot(
        &self,
        source: &MaskSource,
        role: &str,
        salted: &SaltedPasswordCache,
    ) -> Arc<MaskEntry> {
        let entry = self.entry(&source.target.name, role);
        let _ = entry.source.set(source.clone());
        if entry.current().is_none() {
            read_into(&entry, salted).await;
        }
        entry
    }

    /// Every entry of `target` (DDL ran there): their snapshots are re-read.
    pub fn entries_of(&self, target: &str) -> Vec<Arc<MaskEntry>> {
        self.by_role
            .iter()
            .filter(|e| e.key().0 == target)
            .map(|e| e.value().clone())
            .collect()
    }
}

/// Re-reads `entry`'s snapshot in the background (one read at a time; a request during a read
/// makes one more read after it).
pub fn refresh_in_background(entry: Arc<MaskEntry>, state: Arc<super::ProxyState>) {
    use std::sync::atomic::Ordering;
    if entry.source.get().is_none() {
        return;
    }
    if entry.reading.swap(true, Ordering::AcqRel) {
        entry.again.store(true, Ordering::Release);
        return;
    }
    tokio::spawn(async move {
        loop {
            entry.again.store(false, Ordering::Release);
            read_into(&entry, &state.salted_passwords).await;
            if !entry.again.load(Ordering::Acquire) {
                break;
            }
        }
        entry.reading.store(false, Ordering::Release);
    });
}

async fn read_into(entry: &MaskEntry, salted: &SaltedPasswordCache) {
    if let Err(e) = entry.read(salted, Reread::Always).await {
        let target = entry.source.get().map(|s| s.target.name.as_str()).unwrap_or("?");
        tracing::warn!(target, error = %e, "could not read the target's masked columns; their rows are not forwarded until a read succeeds");
    }
}

/// Whether [`MaskEntry::read`] reads the snapshot again unconditionally or only when the
/// catalog's fingerprint changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reread {
    Always,
    IfChanged,
}

impl MaskEntry {
    /// Confirms, on the catalog connection, that the current snapshot is the target's catalog as
    /// it is now (s6): its fingerprint read again and compared with the one taken with the
    /// snapshot; when it changed (or no snapshot is known), the snapshot is read again first.
    /// Bounded by [`READ_TIMEOUT`] (waiting for other sessions' checks included). An error: the
    /// snapshot could not be confirmed, and the statement must not be checked against it.
    pub async fn confirm_current(&self, salted: &SaltedPasswordCache) -> Result<(), CatalogError> {
        self.read(salted, Reread::IfChanged).await
    }

    async fn read(&self, salted: &SaltedPasswordCache, reread: Reread) -> Result<(), CatalogError> {
        match tokio::time::timeout(READ_TIMEOUT, self.read_inner(salted, reread)).await {
            Ok(r) => r,
            Err(_) => Err(CatalogError::Timeout(READ_TIMEOUT)),
        }
    }

    async fn read_inner(&self, salted: &SaltedPasswordCache, reread: Reread) -> Result<(), CatalogError> {
        let source = self
            .source
            .get()
            .ok_or(CatalogError::Protocol("no catalog source for this role"))?;
        let mut slot = self.conn.lock().await;
        // A kept connection may have been closed by the server since (idle timeouts, restarts):
        // on any failure it is dropped and the read tried once more on a new one.
        if let Some(mut conn) = slot.take() {
            match self.read_on(&mut conn, source, reread).await {
                Ok(()) => {
                    *slot = Some(conn);
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(target = %source.target.name, error = %e, "catalog connection failed; opening another");
                }
            }
        }
        let mut conn = CatalogConn::open(source, salted).await?;
        self.read_on(&mut conn, source, reread).await?;
        *slot = Some(conn);
        Ok(())
    }

    /// One read on `conn`: the fingerprint (unless [`Reread::Always`]), then the snapshot when it
    /// changed, stored.
    async fn read_on(
        &self,
        conn: &mut CatalogConn,
        source: &MaskSource,
        reread: Reread,
    ) -> Result<(), CatalogError> {
        if reread == Reread::IfChanged {
            let sets = conn.query(&format!("EXECUTE {FINGERPRINT_STATEMENT}")).await?;
            let now = CatalogFingerprint::from_rows(sets.first().map_or(&[][..], |s| &s[..]))
                .map_err(|_| CatalogError::Protocol("unexpected catalog fingerprint rows"))?;
            let taken = self.current().and_then(|s| s.fingerprint.clone());
            match compare(taken.as_ref(), &now) {
                Freshness::Current => return Ok(()),
                Freshness::Changed(catalogs) => {
                    tracing::info!(target = %source.target.name, ?catalogs, "the target's catalog changed since timebox read it; reading it again");
                }
            }
        }
        // The masked columns of the previous read are followed by identity (renames, SET SCHEMA);
        // the first read of a run starts from those the last run stored (s9).
        let pins = match self.current() {
            Some(s) => s.pins.clone(),
            None => source.stored_pins().await?,
        };
        let sets = conn.query(&mask_read_query(&source.rules, &pins)).await?;
        let (snapshot, names) = snapshot_from_sets(&source.rules, sets)?;
        if snapshot.pins != pins {
            source.store_pins(&snapshot.pins).await;
        }
        tracing::info!(target = %source.target.name, columns = snapshot.rules.len(), views = snapshot.views.len(), "read the target's masked columns");
        let unmatched: Vec<String> = snapshot.unmatched_rules().map(|r| r.qualified()).collect();
        if !unmatched.is_empty() {
            tracing::warn!(target = %source.target.name, rules = ?unmatched, "masking rules match no column on the target (a renamed or dropped table or column?); the role's statements are refused until the rules or the target are fixed");
        }
        // Names first: a session that sees the new snapshot finds its columns' names.
        if let Ok(mut w) = self.names.write() {
            *w = Arc::new(names);
        }
        if let Ok(mut w) = self.snapshot.write() {
            *w = Some(Arc::new(snapshot));
        }
        Ok(())
    }
}

/// The fingerprint ([`fingerprint_query`]) and [`snapshot_query`] in one repeatable-read
/// transaction, so the fingerprint is the snapshot's.
fn mask_read_query(rules: &[MaskRule], pins: &[(usize, u32, i16)]) -> String {
    format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {}; {}; COMMIT",
        fingerprint_query(),
        snapshot_query(rules, pins)
    )
}

/// The snapshot and its masked columns' names from the result sets of [`mask_read_query`]:
/// BEGIN, the fingerprint, the four of [`snapshot_query`], COMMIT.
fn snapshot_from_sets(
    rules: &[MaskRule],
    sets: Vec<Vec<Row>>,
) -> Result<(MaskSnapshot, MaskedNames), CatalogError> {
    if sets.len() != 7 {
        return Err(CatalogError::Protocol(
            "unexpected number of masking catalog results",
        ));
    }
    let fingerprint = CatalogFingerprint::from_rows(&sets[1])
        .map_err(|_| CatalogError::Protocol("unexpected catalog fingerprint rows"))?;
    let mut snapshot = MaskSnapshot::from_rows(rules, &sets[2..6])
        .map_err(|_| CatalogError::Protocol("unexpected masking catalog rows"))?;
    snapshot.fingerprint = Some(fingerprint);
    let names = masked_names(rules, &sets[2]);
    Ok((snapshot, names))
}

impl CatalogConn {
    /// Connects as `source`'s credential and prepares the fingerprint statement.
    async fn open(source: &MaskSource, salted: &SaltedPasswordCache) -> Result<CatalogConn, CatalogError> {
        let settings = [("application_name".to_string(), "timebox:catalog".to_string())];
        let conn = upstream::connect(
            &source.target,
            &source.credential,
            source.tls.clone(),
            &settings,
            READ_TIMEOUT,
            salted,
        )
        .await
        .map_err(CatalogError::Connect)?;
        let mut conn = CatalogConn {
            stream: conn.stream,
            buf: BytesMut::with_capacity(64 * 1024),
        };
        conn.query(&format!(
            "PREPARE {FINGERPRINT_STATEMENT} AS {}",
            fingerprint_query()
        ))
        .await?;
        Ok(conn)
    }

    /// Runs a simple Query; its result sets (one per CommandComplete) in text format.
    async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Row>>, CatalogError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out)?;
        self.stream.write_all(&out).await?;
        let mut sets: Vec<Vec<Row>> = vec![Vec::new()];
        let mut failure = None;
        loop {
            let message = next_message(&mut self.stream, &mut self.buf).await?;
            match message {
                backend::Message::DataRow(row) => {
                    use fallible_iterator::FallibleIterator;
                    let values: Vec<Option<std::ops::Range<usize>>> = row.ranges().collect()?;
                    let row: Row = values
                        .into_iter()
                        .map(|r| {
                            r.and_then(|r| row.buffer().get(r))
                                .map(|b| String::from_utf8_lossy(b).into_owned())
                        })
                        .collect();
                    sets.last_mut().expect("one set at least").push(row);
                }
                backend::Message::CommandComplete(_) => sets.push(Vec::new()),
                backend::Message::ErrorResponse(e) => failure = Some(error_text(&e)),
                backend::Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        if let Some(e) = failure {
            return Err(CatalogError::Query(e));
        }
        sets.pop();
        Ok(sets)
    }
}

/// The next backend message of a catalog answer, reading more as needed; an answer over
/// [`MAX_ANSWER_BYTES`] or a connection closed before ReadyForQuery is an error.
async fn next_message<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<backend::Message, CatalogError> {
    loop {
        if let Some(m) = backend::Message::parse(buf)? {
            return Ok(m);
        }
        if buf.len() > MAX_ANSWER_BYTES {
            return Err(CatalogError::Protocol("answer too large"));
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(CatalogError::Protocol("connection closed before ReadyForQuery"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masking::MaskMethod;

    /// Regression (s8): the audit names of masked columns took the rule's column name, so a
    /// renamed column was recorded under its old name; the row's current name is used now (the
    /// rule's only when a row lacks it).
    #[test]
    fn masked_columns_are_named_by_their_current_names() {
        let rule = MaskRule::customers_email(MaskMethod::Email);
        let row = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Row>();
        let attrs = vec![
            row(&["0", "100", "archive", "c2", "1", "f", "id"]),
            row(&["0", "100", "archive", "c2", "2", "t", "mail"]),
            row(&["0", "101", "public", "customers", "2", "t"]),
        ];
        let names = masked_names(&[rule], &attrs);
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(names[&(100, 2)], "archive.c2.mail");
        assert_eq!(names[&(101, 2)], "public.customers.email");
    }
}
