//! Persistent state: grants (with their token verifiers), access requests and approvals, the
//! break-glass flag and the installation secret.
//!
//! Everything else reaches the store through [`Store`], a cheap-to-clone async handle over one of
//! two backends (enum dispatch, see [`Store`]):
//! - embedded (the default): a synchronous [`GrantStore`], SQLite ([`sqlite::SqliteStore`]) or a test
//!   double, run on tokio's blocking pool so no async task ever waits on disk;
//! - shared: [`postgres::PgStore`], async over a connection pool, for several timebox instances.
//!
//! [`migrate`] brings a store's schema up to date (also done on every open). A failing store fails
//! closed: callers deny. [`StoreError::is_unavailable`] tells an unreachable store from a bad row.

pub mod files;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::config::StoreConfig;
use crate::grants::admin_tokens::{AdminTokenRecord, StoredAdminToken};
use crate::grants::requests::{AccessRequest, Approval, RequestStatus};
use crate::grants::token::ScramVerifier;
use crate::grants::{Grant, GrantStatus};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot prepare store directory {path}: {source}")]
    Directory {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot prepare store file {path}: {source}")]
    File {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store schema version {found} is newer than this timebox understands ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("corrupt store row: {0}")]
    Corrupt(String),
    /// The blocking task running a store call panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    #[error("this store does not support {0}")]
    Unsupported(&'static str),
    #[error("store database error: {}", pg_text(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// No connection to the PostgreSQL store could be had (refused, timed out, pool exhausted).
    #[error("the PostgreSQL store is unavailable: {}", pool_text(.0))]
    Unavailable(#[source] deadpool_postgres::PoolError),
    #[error("cannot connect to the PostgreSQL store: {}", pg_text(.0))]
    Connect(#[source] tokio_postgres::Error),
    /// A store call (or connecting) took longer than allowed (`[store] query_timeout`,
    /// `connect_timeout`).
    #[error("the PostgreSQL store did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("cannot set up TLS to the PostgreSQL store: {0}")]
    Tls(#[from] crate::proxy::tls::TlsError),
    #[error("cannot build the PostgreSQL store's connection pool: {0}")]
    Pool(#[from] deadpool_postgres::BuildError),
    #[error("store migration to version {version} failed: {}", pg_text(.source))]
    Migration {
        version: i32,
        #[source]
        source: tokio_postgres::Error,
    },
    /// The thread that migrates the PostgreSQL store for a synchronous [`Store::open`] failed.
    #[error("cannot migrate the PostgreSQL store: {0}")]
    MigrationThread(String),
}

/// A driver error with what the server said: `tokio_postgres::Error`'s own text is only its kind
/// ("db error") for a server error.
pub fn pg_text(e: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    match (e.as_db_error(), e.source()) {
        (Some(db), _) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        (None, Some(cause)) => format!("{e}: {cause}"),
        (None, None) => e.to_string(),
    }
}

/// A pool error with the driver's cause spelled out (see [`pg_text`]).
fn pool_text(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_text(e),
        other => other.to_string(),
    }
}

impl StoreError {
    /// Whether the store could not be reached at all (as opposed to a refused or corrupt row): the
    /// caller fails closed either way; this tells it what to say.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) | StoreError::Connect(_) | StoreError::Timeout(_) => true,
            StoreError::Postgres(e) => {
                e.is_closed() || e.code().is_some_and(|c| unreachable_sqlstate(c.code()))
            }
            _ => false,
        }
    }
}

/// SQLSTATEs that mean the store went away under a call, not that the call was wrong: connection
/// exceptions (class 08), the server shutting down or terminating the connection (57P01–57P03), the
/// database not accepting connections (55000 with `ALLOW_CONNECTIONS false` arrives at connect).
fn unreachable_sqlstate(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
}

#[cfg(test)]
mod unreachable_tests {
    #[test]
    fn connection_loss_sqlstates_mean_unreachable() {
        for code in ["08006", "08003", "57P01", "57P02", "57P03"] {
            assert!(super::unreachable_sqlstate(code), "{code}");
        }
        for code in ["23505", "42P01", "40001", "XX000"] {
            assert!(!super::unreachable_sqlstate(code), "{code}");
        }
    }
}

/// What [`migrate`] did: the schema version found and the one left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    pub from: i64,
    pub to: i64,
}

impl Migrated {
    fn log(self, store: &'static str) {
        if self.from == self.to {
            tracing::info!(store, schema_version = self.to, "store schema is current");
        } else {
            tracing::info!(store, from = self.from, to = self.to, "store schema migrated");
        }
    }
}

/// Brings the store the config names up to this binary's schema version (creating it if needed)
/// and reports the versions; refuses a store written by a newer timebox
/// ([`StoreError::SchemaTooNew`]). Safe to run from several instances at once. This is what
/// `timebox store migrate` runs; every [`Store::open`] runs it too.
pub async fn migrate(config: &StoreConfig) -> Result<Migrated, StoreError> {
    match config {
        StoreConfig::Postgres(pg) => postgres::migrate(pg).await,
        StoreConfig::Sqlite { path } => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || sqlite::SqliteStore::migrate_file(&path))
                .await
                .map_err(StoreError::Task)?
        }
        StoreConfig::SqliteMemory => Ok(Migrated {
            from: 0,
            to: sqlite::SqliteStore::supported_version(),
        }),
    }
}

/// Which access requests to list.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    pub requester: Option<String>,
    pub target: Option<String>,
    pub status: Option<RequestStatus>,
    pub limit: Option<usize>,
}

/// What recording an approval did.
#[derive(Debug, Clone)]
pub enum ApproveOutcome {
    NotFound,
    /// The request is no longer pending (approved, denied or expired).
    NotPending(RequestStatus),
    /// This approver has already approved it.
    Duplicate,
    /// Recorded; the request is `Approved` if this was the last approval needed.
    Recorded(Box<AccessRequest>),
}

/// What an approval by `approver` at `now` does to `request`, decided once for every store: refused
/// ([`ApproveOutcome::NotPending`], [`ApproveOutcome::Duplicate`]) or recorded, and then whether it
/// is the last approval the request needs (the request becomes `Approved`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalStep {
    Refuse(RequestStatus),
    Duplicate,
    Record { completes: bool },
}

impl ApprovalStep {
    pub fn of(request: &AccessRequest, approver: &str, now: DateTime<Utc>) -> Self {
        let status = request.status_at(now);
        if status != RequestStatus::Pending {
            return Self::Refuse(status);
        }
        if request.approvals.iter().any(|a| a.by == approver) {
            return Self::Duplicate;
        }
        Self::Record {
            completes: request.approvals.len() + 1 >= request.approvals_required as usize,
        }
    }

    /// The outcome to answer without recording anything; `None` when the approval is to be recorded.
    pub fn refusal(&self) -> Option<ApproveOutcome> {
        match self {
            Self::Refuse(status) => Some(ApproveOutcome::NotPending(*status)),
            Self::Duplicate => Some(ApproveOutcome::Duplicate),
            Self::Record { .. } => None,
        }
    }
}

#[cfg(test)]
mod approval_step_tests {
    use chrono::{Duration, TimeZone, Utc};

    use super::{ApprovalStep, ApproveOutcome};
    use crate::grants::requests::tests::pending_request;
    use crate::grants::requests::{AccessRequest, Approval, RequestStatus};

    fn request(required: u32, approvers: &[&str]) -> AccessRequest {
        let created = Utc.with_ymd_and_hms(2026, 12, 7, 9, 0, 0).unwrap();
        let mut request = pending_request("r1", created, required);
        request.approvals = approvers
            .iter()
            .map(|by| Approval {
                by: (*by).into(),
                reason: "ok".into(),
                at: created,
            })
            .collect();
        request
    }

    #[test]
    fn the_last_needed_approval_completes_the_request_and_earlier_ones_do_not() {
        let now = Utc.with_ymd_and_hms(2026, 12, 7, 9, 10, 0).unwrap();
        assert_eq!(
            ApprovalStep::of(&request(1, &[]), "bob", now),
            ApprovalStep::Record { completes: true }
        );
        assert_eq!(
            ApprovalStep::of(&request(2, &[]), "bob", now),
            ApprovalStep::Record { completes: false }
        );
        assert_eq!(
            ApprovalStep::of(&request(2, &["carol"]), "bob", now),
            ApprovalStep::Record { completes: true }
        );
        assert!(ApprovalStep::of(&request(2, &["carol"]), "bob", now)
            .refusal()
            .is_none());
    }

    #[test]
    fn a_repeat_approval_and_a_decided_or_expired_request_are_refused() {
        let now = Utc.with_ymd_and_hms(2026, 12, 7, 9, 10, 0).unwrap();
        let repeat = ApprovalStep::of(&request(2, &["bob"]), "bob", now);
        assert_eq!(repeat, ApprovalStep::Duplicate);
        assert!(matches!(repeat.refusal(), Some(ApproveOutcome::Duplicate)));
        let late = now + Duration::hours(2);
        let expired = ApprovalStep::of(&request(1, &[]), "bob", late);
        assert_eq!(expired, ApprovalStep::Refuse(RequestStatus::Expired));
        assert!(matches!(
            expired.refusal(),
            Some(ApproveOutcome::NotPending(RequestStatus::Expired))
        ));
        let mut denied = request(1, &[]);
        denied.state = RequestStatus::Denied;
        assert_eq!(
            ApprovalStep::of(&denied, "bob", now),
            ApprovalStep::Refuse(RequestStatus::Denied)
        );
    }
}

/// Grant counts by state at one instant (for the metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrantCounts {
    pub pending: u64,
    pub active: u64,
    pub expired: u64,
    pub revoked: u64,
    pub break_glass_active: u64,
}

/// Which grants to list.
#[derive(Debug, Clone, Default)]
pub struct GrantFilter {
    pub user: Option<String>,
    pub target: Option<String>,
    pub status: Option<GrantStatus>,
    pub limit: Option<usize>,
}

/// How many of a (user, target)'s most recent grants a presented token is checked against.
pub const MAX_CANDIDATES: usize = 50;

/// Most admin tokens `GET /v1/admin-tokens` lists (newest first).
pub const MAX_ADMIN_TOKENS_LISTED: usize = 1000;

pub trait GrantStore: Send + Sync + std::fmt::Debug + 'static {
    fn insert_grant(&self, grant: &Grant, verifier: &ScramVerifier) -> Result<(), StoreError>;
    fn get_grant(&self, id: &str) -> Result<Option<Grant>, StoreError>;
    fn list_grants(&self, filter: &GrantFilter, now: DateTime<Utc>) -> Result<Vec<Grant>, StoreError>;
    /// Newest first, at most [`MAX_CANDIDATES`].
    fn grant_candidates(&self, user: &str, target: &str) -> Result<Vec<(Grant, ScramVerifier)>, StoreError>;
    /// Marks a grant revoked; `None` if it does not exist. Revoking twice keeps the first revocation.
    fn revoke_grant(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<Grant>, StoreError>;
    /// A random 32-byte secret made on first use and kept forever (SCRAM salt derivation).
    fn installation_secret(&self) -> Result<[u8; 32], StoreError>;

    // Everything below has a default that refuses, so a minimal backend (or a test double) only
    // implements the grant basics above.

    /// Inserts a grant flagged break-glass (or not).
    fn insert_grant_flagged(
        &self,
        grant: &Grant,
        verifier: &ScramVerifier,
        break_glass: bool,
    ) -> Result<(), StoreError> {
        if break_glass {
            return Err(StoreError::Unsupported("break-glass grants"));
        }
        self.insert_grant(grant, verifier)
    }
    /// A value timebox keeps for itself under `key` (the `meta` table), if any.
    fn meta_value(&self, _key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Err(StoreError::Unsupported("meta values"))
    }
    /// Sets (or replaces) the value under `key`.
    fn set_meta_value(&self, _key: &str, _value: &[u8]) -> Result<(), StoreError> {
        Err(StoreError::Unsupported("meta values"))
    }
    /// Which of `ids` are break-glass grants.
    fn break_glass_ids(&self, _ids: &[String]) -> Result<std::collections::HashSet<String>, StoreError> {
        Err(StoreError::Unsupported("break-glass grants"))
    }
    /// Moves a grant's expiry; `None` if it does not exist. A revoked grant is left unchanged.
    fn extend_grant(&self, _id: &str, _expires_at: DateTime<Utc>) -> Result<Option<Grant>, StoreError> {
        Err(StoreError::Unsupported("extending grants"))
    }
    fn grant_counts(&self, _now: DateTime<Utc>) -> Result<GrantCounts, StoreError> {
        Err(StoreError::Unsupported("grant counts"))
    }
    /// Unrevoked grants whose expiry is in `(after, until]`.
    fn grants_expired_between(
        &self,
        _after: DateTime<Utc>,
        _until: DateTime<Utc>,
    ) -> Result<Vec<Grant>, StoreError> {
        Err(StoreError::Unsupported("grant expiry notifications"))
    }
    fn insert_request(&self, _request: &AccessRequest) -> Result<(), StoreError> {
        Err(StoreError::Unsupported("access requests"))
    }
    fn get_request(&self, _id: &str) -> Result<Option<AccessRequest>, StoreError> {
        Err(StoreError::Unsupported("access requests"))
    }
    fn list_requests(
        &self,
        _filter: &RequestFilter,
        _now: DateTime<Utc>,
    ) -> Result<Vec<AccessRequest>, StoreError> {
        Err(StoreError::Unsupported("access requests"))
    }
    /// Records an approval atomically; the approval that reaches `approvals_required` approves.
    fn approve_request(
        &self,
        _id: &str,
        _approval: &Approval,
        _now: DateTime<Utc>,
    ) -> Result<ApproveOutcome, StoreError> {
        Err(StoreError::Unsupported("access requests"))
    }
    /// Denies a pending request; `(whether this call denied it, the request)`, `None` if unknown.
    fn deny_request(
        &self,
        _id: &str,
        _by: &str,
        _reason: &str,
        _now: DateTime<Utc>,
    ) -> Result<Option<(bool, AccessRequest)>, StoreError> {
        Err(StoreError::Unsupported("access requests"))
    }
    fn set_request_grant(&self, _id: &str, _grant_id: &str) -> Result<(), StoreError> {
        Err(StoreError::Unsupported("access requests"))
    }
    /// Marks the token fetched; `false` if it already was.
    fn mark_token_fetched(&self, _id: &str, _at: DateTime<Utc>) -> Result<bool, StoreError> {
        Err(StoreError::Unsupported("access requests"))
    }
    /// Marks pending requests past their review deadline expired; returns them.
    fn expire_requests(&self, _now: DateTime<Utc>) -> Result<Vec<AccessRequest>, StoreError> {
        Err(StoreError::Unsupported("access requests"))
    }
    fn count_pending_requests(&self, _now: DateTime<Utc>) -> Result<u64, StoreError> {
        Err(StoreError::Unsupported("access requests"))
    }
    /// Stores a new admin token unless a live one (unrevoked, unexpired at `now`) has its name:
    /// `false` then, and nothing is stored. Atomic against concurrent issues of the same name.
    fn insert_admin_token(&self, _token: &StoredAdminToken, _now: DateTime<Utc>) -> Result<bool, StoreError> {
        Err(StoreError::Unsupported("admin tokens"))
    }
    /// The admin token whose id is `id` (the id prefix of a presented token).
    fn admin_token(&self, _id: &str) -> Result<Option<StoredAdminToken>, StoreError> {
        Err(StoreError::Unsupported("admin tokens"))
    }
    /// Every admin token, newest first (at most [`MAX_ADMIN_TOKENS_LISTED`]).
    fn list_admin_tokens(&self) -> Result<Vec<AdminTokenRecord>, StoreError> {
        Err(StoreError::Unsupported("admin tokens"))
    }
    /// Revokes the live admin token named `name` (live at `at`); `None` if there is none.
    fn revoke_admin_token(
        &self,
        _name: &str,
        _by: &str,
        _at: DateTime<Utc>,
    ) -> Result<Option<AdminTokenRecord>, StoreError> {
        Err(StoreError::Unsupported("admin tokens"))
    }
    /// Notes an accepted use of admin token `id` at `at`.
    fn touch_admin_token(&self, _id: &str, _at: DateTime<Utc>) -> Result<(), StoreError> {
        Err(StoreError::Unsupported("admin tokens"))
    }
    /// The admin token named `name` that is live at `now`, with its hash and verifier.
    fn live_admin_token_named(
        &self,
        _name: &str,
        _now: DateTime<Utc>,
    ) -> Result<Option<StoredAdminToken>, StoreError> {
        Err(StoreError::Unsupported("admin tokens"))
    }
}

/// Cheap-to-clone async handle over the store.
///
/// Enum dispatch rather than an async trait: there are exactly two kinds of backend, the blocking
/// one needs `spawn_blocking` around each call and the async one a timeout, and a plain `match`
/// keeps both visible at each call with no boxed futures. [`GrantStore`] stays the small sync trait
/// that SQLite and test doubles implement.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone, Debug)]
enum Backend {
    Blocking(Arc<dyn GrantStore>),
    Postgres(Arc<postgres::PgStore>),
}

/// Runs a call on whichever backend the store has: `$blocking` (a closure over `&dyn GrantStore`)
/// on the blocking pool, `$pg` (an expression over `pg: &PgStore`) within the query timeout.
macro_rules! dispatch {
    ($self:ident, |$s:ident| $blocking:expr, |$pg:ident| $async_call:expr) => {
        match &$self.backend {
            Backend::Blocking(_) => $self.run(move |$s| $blocking).await,
            Backend::Postgres($pg) => $pg.bounded($async_call).await,
        }
    };
}

impl Store {
    pub fn new(inner: Arc<dyn GrantStore>) -> Self {
        Store {
            backend: Backend::Blocking(inner),
        }
    }

    /// Opens the store the config names, creating and migrating it as needed. Synchronous, for
    /// callers that build their state outside an async context or before serving; for a
    /// PostgreSQL store the migration runs on a short-lived thread of its own (so it also works
    /// from inside a single-threaded runtime). Prefer [`Store::connect`] in async code.
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        match config {
            StoreConfig::Postgres(pg) => {
                let cfg = pg.clone();
                let migrated = std::thread::Builder::new()
                    .name("timebox-store-migrate".into())
                    .spawn(move || {
                        let runtime = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .map_err(|e| StoreError::MigrationThread(e.to_string()))?;
                        runtime.block_on(postgres::migrate(&cfg))
                    })
                    .map_err(|e| StoreError::MigrationThread(e.to_string()))?
                    .join()
                    .map_err(|_| StoreError::MigrationThread("the migration thread panicked".into()))??;
                migrated.log("postgres");
                Ok(Store::postgres(postgres::PgStore::new(pg)?))
            }
            StoreConfig::Sqlite { path } => Ok(Store::new(Arc::new(sqlite::SqliteStore::open(path)?))),
            StoreConfig::SqliteMemory => Ok(Store::new(Arc::new(sqlite::SqliteStore::open_in_memory()?))),
        }
    }

    /// [`Store::open`] for async callers: migrates, then hands back the handle.
    pub async fn connect(config: &StoreConfig) -> Result<Self, StoreError> {
        match config {
            StoreConfig::Postgres(pg) => {
                postgres::migrate(pg).await?.log("postgres");
                Ok(Store::postgres(postgres::PgStore::new(pg)?))
            }
            other => {
                let other = other.clone();
                tokio::task::spawn_blocking(move || Store::open(&other))
                    .await
                    .map_err(StoreError::Task)?
            }
        }
    }

    fn postgres(store: postgres::PgStore) -> Self {
        Store {
            backend: Backend::Postgres(Arc::new(store)),
        }
    }

    /// The PostgreSQL store behind this handle, if it is one (the fleet's calls live there only).
    pub fn postgres_store(&self) -> Option<&Arc<postgres::PgStore>> {
        match &self.backend {
            Backend::Postgres(pg) => Some(pg),
            Backend::Blocking(_) => None,
        }
    }

    /// Which backend this is: `"embedded"` (SQLite, or a test double) or `"postgres"`.
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Blocking(_) => "embedded",
            Backend::Postgres(_) => "postgres",
        }
    }

    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn GrantStore) -> Result<T, StoreError> + Send + 'static,
    {
        let Backend::Blocking(inner) = &self.backend else {
            return Err(StoreError::Unsupported("blocking calls"));
        };
        let inner = inner.clone();
        tokio::task::spawn_blocking(move || f(inner.as_ref()))
            .await
            .map_err(StoreError::Task)?
    }

    pub async fn insert_grant(&self, grant: Grant, verifier: ScramVerifier) -> Result<(), StoreError> {
        dispatch!(self, |s| s.insert_grant(&grant, &verifier), |pg| pg
            .insert_grant(&grant, &verifier, false))
    }

    pub async fn get_grant(&self, id: String) -> Result<Option<Grant>, StoreError> {
        dispatch!(self, |s| s.get_grant(&id), |pg| pg.get_grant(&id))
    }

    pub async fn list_grants(
        &self,
        filter: GrantFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<Grant>, StoreError> {
        dispatch!(self, |s| s.list_grants(&filter, now), |pg| pg
            .list_grants(&filter, now))
    }

    pub async fn grant_candidates(
        &self,
        user: String,
        target: String,
    ) -> Result<Vec<(Grant, ScramVerifier)>, StoreError> {
        dispatch!(self, |s| s.grant_candidates(&user, &target), |pg| pg
            .grant_candidates(&user, &target))
    }

    pub async fn revoke_grant(
        &self,
        id: String,
        by: String,
        reason: String,
        at: DateTime<Utc>,
    ) -> Result<Option<Grant>, StoreError> {
        dispatch!(self, |s| s.revoke_grant(&id, &by, &reason, at), |pg| pg
            .revoke_grant(&id, &by, &reason, at))
    }

    pub async fn installation_secret(&self) -> Result<[u8; 32], StoreError> {
        dispatch!(self, |s| s.installation_secret(), |pg| pg.installation_secret())
    }

    pub async fn insert_grant_flagged(
        &self,
        grant: Grant,
        verifier: ScramVerifier,
        break_glass: bool,
    ) -> Result<(), StoreError> {
        dispatch!(
            self,
            |s| s.insert_grant_flagged(&grant, &verifier, break_glass),
            |pg| pg.insert_grant(&grant, &verifier, break_glass)
        )
    }

    /// A value timebox keeps for itself under `key` (for example the masked columns' identities,
    /// `masking::pins`), shared by every instance of a fleet.
    pub async fn meta_value(&self, key: String) -> Result<Option<Vec<u8>>, StoreError> {
        dispatch!(self, |s| s.meta_value(&key), |pg| pg.meta_value(&key))
    }

    pub async fn set_meta_value(&self, key: String, value: Vec<u8>) -> Result<(), StoreError> {
        dispatch!(self, |s| s.set_meta_value(&key, &value), |pg| pg
            .set_meta_value(&key, &value))
    }

    pub async fn break_glass_ids(
        &self,
        ids: Vec<String>,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        dispatch!(self, |s| s.break_glass_ids(&ids), |pg| pg.break_glass_ids(&ids))
    }

    pub async fn extend_grant(
        &self,
        id: String,
        expires_at: DateTime<Utc>,
    ) -> Result<Option<Grant>, StoreError> {
        dispatch!(self, |s| s.extend_grant(&id, expires_at), |pg| pg
            .extend_grant(&id, expires_at))
    }

    pub async fn grant_counts(&self, now: DateTime<Utc>) -> Result<GrantCounts, StoreError> {
        dispatch!(self, |s| s.grant_counts(now), |pg| pg.grant_counts(now))
    }

    pub async fn grants_expired_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<Grant>, StoreError> {
        dispatch!(self, |s| s.grants_expired_between(after, until), |pg| pg
            .grants_expired_between(after, until))
    }

    pub async fn insert_request(&self, request: AccessRequest) -> Result<(), StoreError> {
        dispatch!(self, |s| s.insert_request(&request), |pg| pg
            .insert_request(&request))
    }

    pub async fn get_request(&self, id: String) -> Result<Option<AccessRequest>, StoreError> {
        dispatch!(self, |s| s.get_request(&id), |pg| pg.get_request(&id))
    }

    pub async fn list_requests(
        &self,
        filter: RequestFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<AccessRequest>, StoreError> {
        dispatch!(self, |s| s.list_requests(&filter, now), |pg| pg
            .list_requests(&filter, now))
    }

    pub async fn approve_request(
        &self,
        id: String,
        approval: Approval,
        now: DateTime<Utc>,
    ) -> Result<ApproveOutcome, StoreError> {
        dispatch!(self, |s| s.approve_request(&id, &approval, now), |pg| pg
            .approve_request(&id, &approval, now))
    }

    pub async fn deny_request(
        &self,
        id: String,
        by: String,
        reason: String,
        now: DateTime<Utc>,
    ) -> Result<Option<(bool, AccessRequest)>, StoreError> {
        dispatch!(self, |s| s.deny_request(&id, &by, &reason, now), |pg| pg
            .deny_request(&id, &by, &reason, now))
    }

    pub async fn set_request_grant(&self, id: String, grant_id: String) -> Result<(), StoreError> {
        dispatch!(self, |s| s.set_request_grant(&id, &grant_id), |pg| pg
            .set_request_grant(&id, &grant_id))
    }

    pub async fn mark_token_fetched(&self, id: String, at: DateTime<Utc>) -> Result<bool, StoreError> {
        dispatch!(self, |s| s.mark_token_fetched(&id, at), |pg| pg
            .mark_token_fetched(&id, at))
    }

    pub async fn expire_requests(&self, now: DateTime<Utc>) -> Result<Vec<AccessRequest>, StoreError> {
        dispatch!(self, |s| s.expire_requests(now), |pg| pg.expire_requests(now))
    }

    pub async fn count_pending_requests(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        dispatch!(self, |s| s.count_pending_requests(now), |pg| pg
            .count_pending_requests(now))
    }

    pub async fn insert_admin_token(
        &self,
        token: StoredAdminToken,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        dispatch!(self, |s| s.insert_admin_token(&token, now), |pg| pg
            .insert_admin_token(&token, now))
    }

    pub async fn admin_token(&self, id: String) -> Result<Option<StoredAdminToken>, StoreError> {
        dispatch!(self, |s| s.admin_token(&id), |pg| pg.admin_token(&id))
    }

    pub async fn list_admin_tokens(&self) -> Result<Vec<AdminTokenRecord>, StoreError> {
        dispatch!(self, |s| s.list_admin_tokens(), |pg| pg.list_admin_tokens())
    }

    pub async fn revoke_admin_token(
        &self,
        name: String,
        by: String,
        at: DateTime<Utc>,
    ) -> Result<Option<AdminTokenRecord>, StoreError> {
        dispatch!(self, |s| s.revoke_admin_token(&name, &by, at), |pg| pg
            .revoke_admin_token(&name, &by, at))
    }

    pub async fn touch_admin_token(&self, id: String, at: DateTime<Utc>) -> Result<(), StoreError> {
        dispatch!(self, |s| s.touch_admin_token(&id, at), |pg| pg
            .touch_admin_token(&id, at))
    }

    pub async fn live_admin_token_named(
        &self,
        name: String,
        now: DateTime<Utc>,
    ) -> Result<Option<StoredAdminToken>, StoreError> {
        dispatch!(self, |s| s.live_admin_token_named(&name, now), |pg| pg
            .live_admin_token_named(&name, now))
    }
}
