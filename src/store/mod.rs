//! Persistent state behind a trait: grants (with their token verifiers), access requests and the
//! installation secret.
//!
//! [`GrantStore`] is synchronous and small so that each backend is easy to write and to test; the
//! [`Store`] handle runs its calls on tokio's blocking pool so no async task ever waits on disk.
//! The embedded default is SQLite ([`sqlite::SqliteStore`]); a PostgreSQL-backed store for several
//! timebox instances can implement the same trait. A failing store fails closed: callers deny.

pub mod files;
pub mod sqlite;

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::config::StoreConfig;
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
}

/// Cheap-to-clone async handle over a [`GrantStore`].
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn GrantStore>,
}

impl Store {
    pub fn new(inner: Arc<dyn GrantStore>) -> Self {
        Store { inner }
    }

    /// Opens the store the config names (creating and migrating it as needed).
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let store: Arc<dyn GrantStore> = match config {
            StoreConfig::Sqlite { path } => Arc::new(sqlite::SqliteStore::open(path)?),
            StoreConfig::SqliteMemory => Arc::new(sqlite::SqliteStore::open_in_memory()?),
        };
        Ok(Store::new(store))
    }

    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn GrantStore) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(inner.as_ref()))
            .await
            .map_err(StoreError::Task)?
    }

    pub async fn insert_grant(&self, grant: Grant, verifier: ScramVerifier) -> Result<(), StoreError> {
        self.run(move |s| s.insert_grant(&grant, &verifier)).await
    }

    pub async fn get_grant(&self, id: String) -> Result<Option<Grant>, StoreError> {
        self.run(move |s| s.get_grant(&id)).await
    }

    pub async fn list_grants(
        &self,
        filter: GrantFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<Grant>, StoreError> {
        self.run(move |s| s.list_grants(&filter, now)).await
    }

    pub async fn grant_candidates(
        &self,
        user: String,
        target: String,
    ) -> Result<Vec<(Grant, ScramVerifier)>, StoreError> {
        self.run(move |s| s.grant_candidates(&user, &target)).await
    }

    pub async fn revoke_grant(
        &self,
        id: String,
        by: String,
        reason: String,
        at: DateTime<Utc>,
    ) -> Result<Option<Grant>, StoreError> {
        self.run(move |s| s.revoke_grant(&id, &by, &reason, at)).await
    }

    pub async fn installation_secret(&self) -> Result<[u8; 32], StoreError> {
        self.run(|s| s.installation_secret()).await
    }

    pub async fn insert_grant_flagged(
        &self,
        grant: Grant,
        verifier: ScramVerifier,
        break_glass: bool,
    ) -> Result<(), StoreError> {
        self.run(move |s| s.insert_grant_flagged(&grant, &verifier, break_glass))
            .await
    }

    pub async fn break_glass_ids(
        &self,
        ids: Vec<String>,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        self.run(move |s| s.break_glass_ids(&ids)).await
    }

    pub async fn extend_grant(
        &self,
        id: String,
        expires_at: DateTime<Utc>,
    ) -> Result<Option<Grant>, StoreError> {
        self.run(move |s| s.extend_grant(&id, expires_at)).await
    }

    pub async fn grant_counts(&self, now: DateTime<Utc>) -> Result<GrantCounts, StoreError> {
        self.run(move |s| s.grant_counts(now)).await
    }

    pub async fn grants_expired_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<Grant>, StoreError> {
        self.run(move |s| s.grants_expired_between(after, until)).await
    }

    pub async fn insert_request(&self, request: AccessRequest) -> Result<(), StoreError> {
        self.run(move |s| s.insert_request(&request)).await
    }

    pub async fn get_request(&self, id: String) -> Result<Option<AccessRequest>, StoreError> {
        self.run(move |s| s.get_request(&id)).await
    }

    pub async fn list_requests(
        &self,
        filter: RequestFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<AccessRequest>, StoreError> {
        self.run(move |s| s.list_requests(&filter, now)).await
    }

    pub async fn approve_request(
        &self,
        id: String,
        approval: Approval,
        now: DateTime<Utc>,
    ) -> Result<ApproveOutcome, StoreError> {
        self.run(move |s| s.approve_request(&id, &approval, now)).await
    }

    pub async fn deny_request(
        &self,
        id: String,
        by: String,
        reason: String,
        now: DateTime<Utc>,
    ) -> Result<Option<(bool, AccessRequest)>, StoreError> {
        self.run(move |s| s.deny_request(&id, &by, &reason, now)).await
    }

    pub async fn set_request_grant(&self, id: String, grant_id: String) -> Result<(), StoreError> {
        self.run(move |s| s.set_request_grant(&id, &grant_id)).await
    }

    pub async fn mark_token_fetched(&self, id: String, at: DateTime<Utc>) -> Result<bool, StoreError> {
        self.run(move |s| s.mark_token_fetched(&id, at)).await
    }

    pub async fn expire_requests(&self, now: DateTime<Utc>) -> Result<Vec<AccessRequest>, StoreError> {
        self.run(move |s| s.expire_requests(now)).await
    }

    pub async fn count_pending_requests(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.run(move |s| s.count_pending_requests(now)).await
    }
}
