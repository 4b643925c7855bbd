//! The PostgreSQL store's admin tokens (see [`crate::grants::admin_tokens`]), call for call as in
//! the SQLite store. Several instances may issue at once: the check that no live token has the name
//! and the insert run in one transaction holding a transaction-scoped advisory lock on the name
//! ([`NAME_LOCK_CLASS`], `hashtext(name)`), so two issues of one name never both succeed. Tokens are
//! never stored: only their SHA-256 (hex) and SCRAM verifier.

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::PgStore;
use crate::grants::admin_tokens::{
    parse_roles, roles_text, stored_from_parts, AdminTokenRecord, StoredAdminToken,
};
use crate::store::{StoreError, MAX_ADMIN_TOKENS_LISTED};

/// First key of the two-key advisory lock taken on a token name while issuing (the bytes of
/// `"tbxa"`); the two-key space is distinct from the migrations' one-key lock.
pub const NAME_LOCK_CLASS: i32 = 0x7462_7861;

const COLUMNS: &str =
    "id, name, roles, created_at, created_by, expires_at, revoked_at, revoked_by, last_used_at";

/// "Live at $N": not revoked, not expired.
fn live(now_param: &str) -> String {
    format!("revoked_at IS NULL AND (expires_at IS NULL OR expires_at > {now_param})")
}

fn record_from_row(r: &Row) -> Result<AdminTokenRecord, StoreError> {
    let name: String = r.try_get(1)?;
    let roles: String = r.try_get(2)?;
    Ok(AdminTokenRecord {
        id: r.try_get(0)?,
        roles: parse_roles(&roles).ok_or_else(|| {
            StoreError::Corrupt(format!("admin token {name:?} has unknown roles {roles:?}"))
        })?,
        name,
        created_at: r.try_get(3)?,
        created_by: r.try_get(4)?,
        expires_at: r.try_get(5)?,
        revoked_at: r.try_get(6)?,
        revoked_by: r.try_get(7)?,
        last_used_at: r.try_get(8)?,
    })
}

impl PgStore {
    pub async fn insert_admin_token(
        &self,
        t: &StoredAdminToken,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let r = &t.record;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&NAME_LOCK_CLASS, &r.name],
        )
        .await?;
        let taken = tx
            .query_opt(
                &format!(
                    "SELECT id FROM timebox.admin_tokens WHERE name = $1 AND {} LIMIT 1",
                    live("$2")
                ),
                &[&r.name, &now],
            )
            .await?;
        if taken.is_some() {
            return Ok(false);
        }
        tx.execute(
            &format!(
                "INSERT INTO timebox.admin_tokens ({COLUMNS}, sha256, scram) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            ),
            &[
                &r.id,
                &r.name,
                &roles_text(&r.roles),
                &r.created_at,
                &r.created_by,
                &r.expires_at,
                &r.revoked_at,
                &r.revoked_by,
                &r.last_used_at,
                &hex::encode(t.sha256),
                &t.scram.to_text(),
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn admin_token(&self, id: &str) -> Result<Option<StoredAdminToken>, StoreError> {
        self.stored_admin_token("id = $1", &[&id]).await
    }

    pub async fn live_admin_token_named(
        &self,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<StoredAdminToken>, StoreError> {
        self.stored_admin_token(&format!("name = $1 AND {}", live("$2")), &[&name, &now])
            .await
    }

    /// The one token (with hash and verifier) `condition` finds.
    async fn stored_admin_token(
        &self,
        condition: &str,
        params: &super::Params<'_>,
    ) -> Result<Option<StoredAdminToken>, StoreError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT {COLUMNS}, sha256, scram FROM timebox.admin_tokens WHERE {condition}"
            ))
            .await?;
        let Some(row) = c.query_opt(&stmt, params).await? else {
            return Ok(None);
        };
        let record = record_from_row(&row)?;
        let name = record.name.clone();
        let sha256: String = row.try_get(9)?;
        let scram: String = row.try_get(10)?;
        stored_from_parts(record, &sha256, &scram)
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt(format!("admin token {name:?} has an unreadable hash")))
    }

    pub async fn list_admin_tokens(&self) -> Result<Vec<AdminTokenRecord>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!("SELECT {COLUMNS} FROM timebox.admin_tokens ORDER BY created_at DESC, id LIMIT $1"),
                &[&(MAX_ADMIN_TOKENS_LISTED as i64)],
            )
            .await?;
        rows.iter().map(record_from_row).collect()
    }

    pub async fn revoke_admin_token(
        &self,
        name: &str,
        by: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<AdminTokenRecord>, StoreError> {
        let c = self.client().await?;
        // One statement: two revokes of one name race on the row, and the second finds it revoked.
        let row = c
            .query_opt(
                &format!(
                    "UPDATE timebox.admin_tokens SET revoked_at = $3, revoked_by = $2 \
                     WHERE name = $1 AND {} RETURNING {COLUMNS}",
                    live("$3")
                ),
                &[&name, &by, &at],
            )
            .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    pub async fn touch_admin_token(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.execute(
            "UPDATE timebox.admin_tokens SET last_used_at = $2 WHERE id = $1",
            &[&id, &at],
        )
        .await?;
        Ok(())
    }
}
