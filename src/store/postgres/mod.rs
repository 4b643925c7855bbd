//! The shared store: PostgreSQL through a `deadpool-postgres` pool of `tokio-postgres` connections.
//!
//! Where it sits: [`crate::store::Store`] dispatches here when `[store] url` is `postgres://…`;
//! several timebox instances share one database (the fleet of issue 11). Same semantics as the
//! SQLite store, call for call (the suite in `tests/store.rs` runs both). What it must never do:
//! hold a row lock across an await that is not a query of the same transaction, decide anything
//! from a read that another instance can change before the write (approvals lock the request row;
//! the installation secret is an `INSERT … ON CONFLICT DO NOTHING` then a read), or keep a caller
//! waiting past `[store] query_timeout`. Token verifiers are stored in PostgreSQL's
//! `SCRAM-SHA-256$…` text form; tokens never are.

mod admin_tokens;
pub mod audit;
pub mod fleet;
pub mod migrate;
pub mod tls;

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row};

use super::{
    ApprovalStep, ApproveOutcome, GrantCounts, GrantFilter, Migrated, RequestFilter, StoreError,
    MAX_CANDIDATES,
};
use crate::config::{PostgresStoreConfig, UpstreamTls};
use crate::grants::requests::{AccessRequest, Approval, RequestStatus};
use crate::grants::token::ScramVerifier;
use crate::grants::{Grant, GrantStatus};

/// Opens one connection (not from the pool) with the store's TLS setup.
pub async fn connect_one(config: &PostgresStoreConfig) -> Result<tokio_postgres::Client, StoreError> {
    let (pg, tls) = driver_config(config)?;
    let connecting = pg.connect(tls);
    let (client, connection) = tokio::time::timeout(config.connect_timeout, connecting)
        .await
        .map_err(|_| StoreError::Timeout(config.connect_timeout))?
        .map_err(StoreError::Connect)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "store connection closed");
        }
    });
    Ok(client)
}

/// Runs the migrations on a connection of its own.
pub async fn migrate(config: &PostgresStoreConfig) -> Result<Migrated, StoreError> {
    let mut client = connect_one(config).await?;
    tokio::time::timeout(
        config.query_timeout.max(Duration::from_secs(60)),
        migrate::run(&mut client),
    )
    .await
    .map_err(|_| StoreError::Timeout(config.query_timeout.max(Duration::from_secs(60))))?
}

/// The driver's config (TLS required when `tls` is not `disable`) and the TLS connector.
pub(crate) fn driver_config(
    config: &PostgresStoreConfig,
) -> Result<(tokio_postgres::Config, tls::StoreTls), StoreError> {
    let mut pg = config.connect.clone();
    pg.connect_timeout(config.connect_timeout);
    if pg.get_application_name().is_none() {
        pg.application_name("timebox");
    }
    let tls = match config.tls {
        UpstreamTls::Disable => {
            pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
            tls::StoreTls(None)
        }
        UpstreamTls::Require | UpstreamTls::VerifyFull => {
            pg.ssl_mode(tokio_postgres::config::SslMode::Require);
            tls::StoreTls(crate::proxy::tls::upstream_client_config(&config.tls_target())?)
        }
    };
    Ok((pg, tls))
}

pub struct PgStore {
    pool: Pool,
    query_timeout: Duration,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool", &self.pool.status())
            .field("query_timeout", &self.query_timeout)
            .finish()
    }
}

type Params<'a> = [&'a (dyn ToSql + Sync)];

const GRANT_COLUMNS: &str = "id, user_name, target, role, reason, created_by, created_at, starts_at, \
                             expires_at, revoked_at, revoked_by, revoke_reason";

const REQUEST_COLUMNS: &str = "id, requester, target, role, ttl, reason, ticket, break_glass, created_at, \
                               review_deadline, approvals_required, status, decided_at, denied_by, \
                               deny_reason, grant_id, token_fetched_at";

fn grant_from_row(r: &Row) -> Result<Grant, StoreError> {
    Ok(Grant {
        id: r.try_get(0)?,
        user: r.try_get(1)?,
        target: r.try_get(2)?,
        role: r.try_get(3)?,
        reason: r.try_get(4)?,
        created_by: r.try_get(5)?,
        created_at: r.try_get(6)?,
        starts_at: r.try_get(7)?,
        expires_at: r.try_get(8)?,
        revoked_at: r.try_get(9)?,
        revoked_by: r.try_get(10)?,
        revoke_reason: r.try_get(11)?,
    })
}

fn request_from_row(r: &Row) -> Result<AccessRequest, StoreError> {
    let id: String = r.try_get(0)?;
    let status: String = r.try_get(11)?;
    let required: i64 = r.try_get(10)?;
    Ok(AccessRequest {
        requester: r.try_get(1)?,
        target: r.try_get(2)?,
        role: r.try_get(3)?,
        ttl: r.try_get(4)?,
        reason: r.try_get(5)?,
        ticket: r.try_get(6)?,
        break_glass: r.try_get(7)?,
        created_at: r.try_get(8)?,
        review_deadline: r.try_get(9)?,
        approvals_required: u32::try_from(required)
            .map_err(|_| StoreError::Corrupt(format!("request {id} needs {required} approvals")))?,
        approvals: Vec::new(),
        state: RequestStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("request {id} has unknown status {status:?}")))?,
        decided_at: r.try_get(12)?,
        denied_by: r.try_get(13)?,
        deny_reason: r.try_get(14)?,
        grant_id: r.try_get(15)?,
        token_fetched_at: r.try_get(16)?,
        id,
    })
}

/// Reads one request with its approvals (oldest first); `FOR UPDATE` locks its row until the
/// transaction ends.
async fn load_request(
    c: &impl GenericClient,
    id: &str,
    for_update: bool,
) -> Result<Option<AccessRequest>, StoreError> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let sql = format!("SELECT {REQUEST_COLUMNS} FROM timebox.access_requests WHERE id = $1{lock}");
    let Some(row) = c.query_opt(&sql, &[&id]).await? else {
        return Ok(None);
    };
    let mut request = request_from_row(&row)?;
    request.approvals = load_approvals(c, id).await?;
    Ok(Some(request))
}

async fn load_approvals(c: &impl GenericClient, id: &str) -> Result<Vec<Approval>, StoreError> {
    let rows = c
        .query(
            "SELECT approver, reason, at FROM timebox.request_approvals WHERE request_id = $1 \
             ORDER BY at, approver",
            &[&id],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Approval {
                by: r.try_get(0)?,
                reason: r.try_get(1)?,
                at: r.try_get(2)?,
            })
        })
        .collect()
}

async fn load_grant(c: &impl GenericClient, id: &str) -> Result<Option<Grant>, StoreError> {
    let sql = format!("SELECT {GRANT_COLUMNS} FROM timebox.grants WHERE id = $1");
    c.query_opt(&sql, &[&id])
        .await?
        .as_ref()
        .map(grant_from_row)
        .transpose()
}

/// SQL condition for "this request's status at $3 is `status`" (the query names `$3` elsewhere too,
/// so its type is known when the condition does not use it).
fn request_status_clause(status: Option<RequestStatus>) -> &'static str {
    match status {
        None => "true",
        Some(RequestStatus::Pending) => "status = 'pending' AND review_deadline > $3",
        Some(RequestStatus::Expired) => {
            "(status = 'expired' OR (status = 'pending' AND review_deadline <= $3))"
        }
        Some(RequestStatus::Approved) => "status = 'approved'",
        Some(RequestStatus::Denied) => "status = 'denied'",
    }
}

/// SQL condition for "this grant's status at $3 is `status`" (see [`request_status_clause`]).
fn grant_status_clause(status: Option<GrantStatus>) -> &'static str {
    match status {
        None => "true",
        Some(GrantStatus::Revoked) => "revoked_at IS NOT NULL",
        Some(GrantStatus::Expired) => "revoked_at IS NULL AND expires_at <= $3",
        Some(GrantStatus::Pending) => "revoked_at IS NULL AND starts_at > $3 AND expires_at > $3",
        Some(GrantStatus::Active) => "revoked_at IS NULL AND starts_at <= $3 AND expires_at > $3",
    }
}

fn list_limit(limit: Option<usize>) -> i64 {
    limit.unwrap_or(1000).min(10_000) as i64
}

impl PgStore {
    /// Builds the pool (no connection is opened until the first call).
    pub fn new(config: &PostgresStoreConfig) -> Result<PgStore, StoreError> {
        let (pg, tls) = driver_config(config)?;
        let manager = Manager::from_config(
            pg,
            tls,
            ManagerConfig {
                // A closed connection is noticed without a round trip; a broken one fails its
                // query and is dropped.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .wait_timeout(Some(config.connect_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()?;
        Ok(PgStore {
            pool,
            query_timeout: config.query_timeout,
        })
    }

    /// Runs one store call within `[store] query_timeout`.
    pub async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.query_timeout, call)
            .await
            .map_err(|_| StoreError::Timeout(self.query_timeout))?
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(StoreError::Unavailable)
    }

    async fn execute(&self, sql: &str, params: &Params<'_>) -> Result<u64, StoreError> {
        let c = self.client().await?;
        let stmt = c.prepare_cached(sql).await?;
        Ok(c.execute(&stmt, params).await?)
    }

    pub async fn insert_grant(
        &self,
        g: &Grant,
        verifier: &ScramVerifier,
        break_glass: bool,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO timebox.grants (id, user_name, target, role, reason, created_by, created_at, \
             starts_at, expires_at, revoked_at, revoked_by, revoke_reason, verifier, break_glass) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            &[
                &g.id,
                &g.user,
                &g.target,
                &g.role,
                &g.reason,
                &g.created_by,
                &g.created_at,
                &g.starts_at,
                &g.expires_at,
                &g.revoked_at,
                &g.revoked_by,
                &g.revoke_reason,
                &verifier.to_text(),
                &break_glass,
            ],
        )
        .await?;
        Ok(())
    }

    pub async fn get_grant(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        load_grant(&**self.client().await?, id).await
    }

    pub async fn list_grants(&self, f: &GrantFilter, now: DateTime<Utc>) -> Result<Vec<Grant>, StoreError> {
        let sql = format!(
            "SELECT {GRANT_COLUMNS} FROM timebox.grants \
             WHERE ($1::text IS NULL OR user_name = $1) AND ($2::text IS NULL OR target = $2) \
             AND $3::timestamptz IS NOT NULL AND ({}) ORDER BY created_at DESC, id LIMIT $4",
            grant_status_clause(f.status)
        );
        let c = self.client().await?;
        let stmt = c.prepare_cached(&sql).await?;
        let rows = c
            .query(&stmt, &[&f.user, &f.target, &now, &list_limit(f.limit)])
            .await?;
        rows.iter().map(grant_from_row).collect()
    }

    pub async fn grant_candidates(
        &self,
        user: &str,
        target: &str,
    ) -> Result<Vec<(Grant, ScramVerifier)>, StoreError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT {GRANT_COLUMNS}, verifier FROM timebox.grants \
                 WHERE user_name = $1 AND target = $2 ORDER BY created_at DESC LIMIT $3"
            ))
            .await?;
        let rows = c
            .query(&stmt, &[&user, &target, &(MAX_CANDIDATES as i64)])
            .await?;
        rows.iter()
            .map(|r| {
                let grant = grant_from_row(r)?;
                let text: String = r.try_get(12)?;
                let verifier = ScramVerifier::from_text(&text).ok_or_else(|| {
                    StoreError::Corrupt(format!("grant {} has an unreadable verifier", grant.id))
                })?;
                Ok((grant, verifier))
            })
            .collect()
    }

    pub async fn revoke_grant(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<Grant>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "UPDATE timebox.grants SET revoked_at = $2, revoked_by = $3, revoke_reason = $4 \
             WHERE id = $1 AND revoked_at IS NULL",
            &[&id, &at, &by, &reason],
        )
        .await?;
        let grant = load_grant(&*tx, id).await?;
        // Every instance's sessions on it re-read it (sent at commit).
        fleet::notify(&*tx, &fleet::Change::Grant(id.to_owned())).await?;
        tx.commit().await?;
        Ok(grant)
    }

    pub async fn installation_secret(&self) -> Result<[u8; 32], StoreError> {
        let c = self.client().await?;
        let mut fresh = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut fresh);
        // Whoever inserts first wins; everyone reads the winner.
        c.execute(
            "INSERT INTO timebox.meta (key, value) VALUES ('installation_secret', $1) \
             ON CONFLICT (key) DO NOTHING",
            &[&fresh.as_slice()],
        )
        .await?;
        let stored: Vec<u8> = c
            .query_one(
                "SELECT value FROM timebox.meta WHERE key = 'installation_secret'",
                &[],
            )
            .await?
            .try_get(0)?;
        stored
            .try_into()
            .map_err(|_| StoreError::Corrupt("installation_secret is not 32 bytes".into()))
    }

    pub async fn meta_value(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_opt("SELECT value FROM timebox.meta WHERE key = $1", &[&key])
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    pub async fn set_meta_value(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO timebox.meta (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&key, &value],
        )
        .await?;
        Ok(())
    }

    pub async fn break_glass_ids(&self, ids: &[String]) -> Result<HashSet<String>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT id FROM timebox.grants WHERE id = ANY($1) AND break_glass",
                &[&ids],
            )
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    pub async fn extend_grant(
        &self,
        id: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<Option<Grant>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "UPDATE timebox.grants SET expires_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            &[&id, &expires_at],
        )
        .await?;
        let grant = load_grant(&*tx, id).await?;
        fleet::notify(&*tx, &fleet::Change::Grant(id.to_owned())).await?;
        tx.commit().await?;
        Ok(grant)
    }

    pub async fn grant_counts(&self, now: DateTime<Utc>) -> Result<GrantCounts, StoreError> {
        let c = self.client().await?;
        let r = c
            .query_one(
                "SELECT \
                   count(*) FILTER (WHERE revoked_at IS NULL AND starts_at > $1 AND expires_at > $1), \
                   count(*) FILTER (WHERE revoked_at IS NULL AND starts_at <= $1 AND expires_at > $1), \
                   count(*) FILTER (WHERE revoked_at IS NULL AND expires_at <= $1), \
                   count(*) FILTER (WHERE revoked_at IS NOT NULL), \
                   count(*) FILTER (WHERE break_glass AND revoked_at IS NULL AND starts_at <= $1 \
                                    AND expires_at > $1) \
                 FROM timebox.grants",
                &[&now],
            )
            .await?;
        let n = |i: usize| -> Result<u64, StoreError> { Ok(r.try_get::<_, i64>(i)? as u64) };
        Ok(GrantCounts {
            pending: n(0)?,
            active: n(1)?,
            expired: n(2)?,
            revoked: n(3)?,
            break_glass_active: n(4)?,
        })
    }

    pub async fn grants_expired_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<Grant>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {GRANT_COLUMNS} FROM timebox.grants \
                     WHERE revoked_at IS NULL AND expires_at > $1 AND expires_at <= $2 ORDER BY expires_at"
                ),
                &[&after, &until],
            )
            .await?;
        rows.iter().map(grant_from_row).collect()
    }

    pub async fn insert_request(&self, q: &AccessRequest) -> Result<(), StoreError> {
        let required = i64::from(q.approvals_required);
        self.execute(
            &format!(
                "INSERT INTO timebox.access_requests ({REQUEST_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
            ),
            &[
                &q.id,
                &q.requester,
                &q.target,
                &q.role,
                &q.ttl,
                &q.reason,
                &q.ticket,
                &q.break_glass,
                &q.created_at,
                &q.review_deadline,
                &required,
                &q.state.as_str(),
                &q.decided_at,
                &q.denied_by,
                &q.deny_reason,
                &q.grant_id,
                &q.token_fetched_at,
            ],
        )
        .await?;
        Ok(())
    }

    pub async fn get_request(&self, id: &str) -> Result<Option<AccessRequest>, StoreError> {
        load_request(&**self.client().await?, id, false).await
    }

    pub async fn list_requests(
        &self,
        f: &RequestFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<AccessRequest>, StoreError> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM timebox.access_requests \
             WHERE ($1::text IS NULL OR requester = $1) AND ($2::text IS NULL OR target = $2) \
             AND $3::timestamptz IS NOT NULL AND ({}) ORDER BY created_at DESC, id LIMIT $4",
            request_status_clause(f.status)
        );
        let c = self.client().await?;
        let stmt = c.prepare_cached(&sql).await?;
        let rows = c
            .query(&stmt, &[&f.requester, &f.target, &now, &list_limit(f.limit)])
            .await?;
        let mut out = rows.iter().map(request_from_row).collect::<Result<Vec<_>, _>>()?;
        // All their approvals in one round trip, not one per request.
        let ids: Vec<&str> = out.iter().map(|r| r.id.as_str()).collect();
        let approvals = c
            .query(
                "SELECT request_id, approver, reason, at FROM timebox.request_approvals \
                 WHERE request_id = ANY($1) ORDER BY at, approver",
                &[&ids],
            )
            .await?;
        let mut by_request: std::collections::HashMap<String, Vec<Approval>> = Default::default();
        for r in &approvals {
            by_request.entry(r.try_get(0)?).or_default().push(Approval {
                by: r.try_get(1)?,
                reason: r.try_get(2)?,
                at: r.try_get(3)?,
            });
        }
        for request in &mut out {
            request.approvals = by_request.remove(&request.id).unwrap_or_default();
        }
        Ok(out)
    }

    /// Concurrent approvers of one request (on any instance) queue on its row lock, so each sees
    /// the approvals before it and exactly one of them approves.
    pub async fn approve_request(
        &self,
        id: &str,
        approval: &Approval,
        now: DateTime<Utc>,
    ) -> Result<ApproveOutcome, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let Some(request) = load_request(&*tx, id, true).await? else {
            return Ok(ApproveOutcome::NotFound);
        };
        let step = ApprovalStep::of(&request, &approval.by, now);
        if let Some(refused) = step.refusal() {
            return Ok(refused);
        }
        tx.execute(
            "INSERT INTO timebox.request_approvals (request_id, approver, reason, at) VALUES ($1, $2, $3, $4)",
            &[&id, &approval.by, &approval.reason, &approval.at],
        )
        .await?;
        if step == (ApprovalStep::Record { completes: true }) {
            tx.execute(
                "UPDATE timebox.access_requests SET status = 'approved', decided_at = $2 WHERE id = $1",
                &[&id, &now],
            )
            .await?;
        }
        let updated = load_request(&*tx, id, false)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("request {id} vanished during approval")))?;
        tx.commit().await?;
        Ok(ApproveOutcome::Recorded(Box::new(updated)))
    }

    pub async fn deny_request(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(bool, AccessRequest)>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let changed = tx
            .execute(
                "UPDATE timebox.access_requests SET status = 'denied', decided_at = $2, denied_by = $3, \
                 deny_reason = $4 WHERE id = $1 AND status = 'pending' AND review_deadline > $2",
                &[&id, &now, &by, &reason],
            )
            .await?;
        let request = load_request(&*tx, id, false).await?;
        tx.commit().await?;
        Ok(request.map(|r| (changed == 1, r)))
    }

    pub async fn set_request_grant(&self, id: &str, grant_id: &str) -> Result<(), StoreError> {
        self.execute(
            "UPDATE timebox.access_requests SET grant_id = $2 WHERE id = $1",
            &[&id, &grant_id],
        )
        .await?;
        Ok(())
    }

    pub async fn mark_token_fetched(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let changed = self
            .execute(
                "UPDATE timebox.access_requests SET token_fetched_at = $2 \
                 WHERE id = $1 AND token_fetched_at IS NULL",
                &[&id, &at],
            )
            .await?;
        Ok(changed == 1)
    }

    pub async fn expire_requests(&self, now: DateTime<Utc>) -> Result<Vec<AccessRequest>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // Each overdue request is expired by exactly one instance: the UPDATE takes the row.
        let rows = tx
            .query(
                "UPDATE timebox.access_requests SET status = 'expired', decided_at = review_deadline \
                 WHERE status = 'pending' AND review_deadline <= $1 RETURNING id",
                &[&now],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get(0)?;
            if let Some(r) = load_request(&*tx, &id, false).await? {
                out.push(r);
            }
        }
        tx.commit().await?;
        out.sort_by(|a, b| (a.review_deadline, &a.id).cmp(&(b.review_deadline, &b.id)));
        Ok(out)
    }

    pub async fn count_pending_requests(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let c = self.client().await?;
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM timebox.access_requests WHERE status = 'pending' AND review_deadline > $1",
                &[&now],
            )
            .await?
            .try_get(0)?;
        Ok(n as u64)
    }
}
