//! Persistent state behind a trait: grants (with their token verifiers) and the installation secret.
//!
//! [`GrantStore`] is synchronous and small so that each backend is easy to write and to test; the
//! [`Store`] handle runs its calls on tokio's blocking pool so no async task ever waits on disk.
//! The embedded default is SQLite ([`sqlite::SqliteStore`]); a PostgreSQL-backed store for several
//! timebox instances can implement the same trait. A failing store fails closed: callers deny.

pub mod sqlite;

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::config::StoreConfig;
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
    #[error("store schema version {found} is newer than this timebox understands ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("corrupt store row: {0}")]
    Corrupt(String),
    #[error("store task failed: {0}")]
    Task(String),
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
            .map_err(|e| StoreError::Task(e.to_string()))?
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
}
