//! Versioned migrations of the PostgreSQL store, in a schema of our own (`timebox`).
//!
//! Where it sits: [`crate::store::migrate`] (the `timebox store migrate` command) and every
//! [`crate::store::Store`] open run [`run`] before anything else touches the store. Several
//! instances may start at once: all steps run in one transaction that first takes a
//! transaction-scoped advisory lock ([`MIGRATION_LOCK`]), so one instance migrates and the others
//! wait, then find nothing left to do. `timebox.schema_version` has one row per applied step; a store
//! whose version is above [`MIGRATIONS`]`.len()` belongs to a newer timebox and is refused
//! ([`StoreError::SchemaTooNew`]) before anything is written. What it must never do: edit a shipped
//! step (a store that ran it would never see the change) — add a new one instead. Step 2 holds
//! the fleet's instances and sessions, step 3 their peer ids for cancel keys; the next slices of
//! issue 11 (central audit) land as further steps.

use tokio_postgres::Client;

use crate::store::{Migrated, StoreError};

/// The schema every store table lives in.
pub const SCHEMA: &str = "timebox";

/// Key of the advisory lock migrations hold (the bytes of `"tbx\0migr"` read as an integer); other
/// software using advisory locks in the same database must not use it.
pub const MIGRATION_LOCK: i64 = 0x7462_7800_6d69_6772;

/// Each entry moves the schema from version `index` to `index + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: what the SQLite store holds (its migrations 1 and 2), with PostgreSQL's types.
    r#"
    CREATE TABLE timebox.meta (
        key   text PRIMARY KEY,
        value bytea NOT NULL
    );
    CREATE TABLE timebox.grants (
        id            text PRIMARY KEY,
        user_name     text NOT NULL,
        target        text NOT NULL,
        role          text NOT NULL,
        reason        text NOT NULL,
        created_by    text NOT NULL,
        created_at    timestamptz NOT NULL,
        starts_at     timestamptz NOT NULL,
        expires_at    timestamptz NOT NULL,
        revoked_at    timestamptz,
        revoked_by    text,
        revoke_reason text,
        verifier      text NOT NULL,
        break_glass   boolean NOT NULL DEFAULT false
    );
    CREATE INDEX grants_user_target ON timebox.grants (user_name, target, created_at DESC);
    CREATE INDEX grants_expires ON timebox.grants (expires_at);
    CREATE TABLE timebox.access_requests (
        id                 text PRIMARY KEY,
        requester          text NOT NULL,
        target             text NOT NULL,
        role               text NOT NULL,
        ttl                text NOT NULL,
        reason             text NOT NULL,
        ticket             text,
        break_glass        boolean NOT NULL,
        created_at         timestamptz NOT NULL,
        review_deadline    timestamptz NOT NULL,
        approvals_required bigint NOT NULL CHECK (approvals_required >= 0),
        status             text NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired')),
        decided_at         timestamptz,
        denied_by          text,
        deny_reason        text,
        grant_id           text REFERENCES timebox.grants (id),
        token_fetched_at   timestamptz
    );
    CREATE INDEX access_requests_status ON timebox.access_requests (status, review_deadline);
    CREATE INDEX access_requests_requester ON timebox.access_requests (requester, created_at DESC);
    CREATE TABLE timebox.request_approvals (
        request_id text NOT NULL REFERENCES timebox.access_requests (id),
        approver   text NOT NULL,
        reason     text NOT NULL,
        at         timestamptz NOT NULL,
        PRIMARY KEY (request_id, approver)
    );
"#,
    // 2: the fleet (issue 11 items 2 and 3): instances with their heartbeat, the live sessions each
    // holds, and kill requests for them (a session's owner acts on its row).
    r#"
    CREATE TABLE timebox.instances (
        name         text PRIMARY KEY,
        incarnation  text NOT NULL,
        advertise    text NOT NULL,
        version      text NOT NULL,
        started_at   timestamptz NOT NULL,
        heartbeat_at timestamptz NOT NULL,
        sessions     bigint NOT NULL DEFAULT 0
    );
    CREATE TABLE timebox.sessions (
        id                text PRIMARY KEY,
        instance          text NOT NULL REFERENCES timebox.instances (name),
        grant_id          text NOT NULL,
        user_name         text NOT NULL,
        target            text NOT NULL,
        role              text NOT NULL,
        client_addr       text NOT NULL,
        started_at        timestamptz NOT NULL,
        application_name  text,
        kill_by           text,
        kill_reason       text,
        kill_requested_at timestamptz
    );
    CREATE INDEX sessions_instance ON timebox.sessions (instance);
"#,
    // Admin-API tokens issued over the API (issue 17), as in the SQLite store: the token's SHA-256
    // and SCRAM verifier, never the token; `id` is the token's id prefix (one indexed read).
    r#"
    CREATE TABLE timebox.admin_tokens (
        id           text PRIMARY KEY,
        name         text NOT NULL,
        roles        text NOT NULL,
        sha256       text NOT NULL,
        scram        text NOT NULL,
        created_at   timestamptz NOT NULL,
        created_by   text NOT NULL,
        expires_at   timestamptz,
        revoked_at   timestamptz,
        revoked_by   text,
        last_used_at timestamptz
    );
    CREATE INDEX admin_tokens_name ON timebox.admin_tokens (name, created_at DESC);
"#,
    // 4: cancel across instances (issue 11 item 4): each live instance's small numeric peer id,
    // carried in the cancel keys it hands out; unique, so a key names one instance.
    r#"
    ALTER TABLE timebox.instances ADD COLUMN peer_id integer CHECK (peer_id BETWEEN 1 AND 255);
    CREATE UNIQUE INDEX instances_peer_id ON timebox.instances (peer_id);
"#,
    // 5: central audit (issue 11 items 6 and 7): every instance's records, partitioned by day (the
    // shipper creates partitions ahead, retention drops whole ones), and per instance the last
    // record retention dropped, so the remaining chain starts from a known hash. The key holds the
    // partition column, as PostgreSQL requires; a record's ts never changes, so it is still
    // one row per (instance, seq). `central_id` orders fleet-wide pages (a seq is per instance).
    r#"
    CREATE SEQUENCE timebox.audit_records_central_id_seq;
    CREATE TABLE timebox.audit_records (
        instance   text NOT NULL,
        seq        bigint NOT NULL,
        ts         timestamptz NOT NULL,
        kind       text NOT NULL,
        payload    text NOT NULL,
        prev_hash  text NOT NULL,
        hash       text NOT NULL,
        user_name  text,
        target     text,
        grant_id   text,
        session_id text,
        central_id bigint NOT NULL DEFAULT nextval('timebox.audit_records_central_id_seq'),
        PRIMARY KEY (instance, seq, ts)
    ) PARTITION BY RANGE (ts);
    CREATE INDEX audit_records_central_id ON timebox.audit_records (central_id);
    CREATE INDEX audit_records_user_ts ON timebox.audit_records (user_name, ts);
    CREATE INDEX audit_records_grant ON timebox.audit_records (grant_id);
    CREATE INDEX audit_records_session ON timebox.audit_records (session_id);
    CREATE TABLE timebox.audit_anchors (
        instance text PRIMARY KEY,
        seq      bigint NOT NULL,
        hash     text NOT NULL,
        ts       timestamptz NOT NULL,
        cut      timestamptz NOT NULL
    );
"#,
];

/// The schema version this binary writes and reads.
pub fn supported_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Whether a store at `found` can be migrated by this binary (pure).
pub fn check_version(found: i64) -> Result<(), StoreError> {
    let supported = supported_version();
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    Ok(())
}

/// Brings the store up to [`supported_version`] (see the module docs).
pub async fn run(client: &mut Client) -> Result<Migrated, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    // CREATE SCHEMA IF NOT EXISTS would need CREATE on the database even when the schema exists;
    // a DBA may have made it for us.
    let has_schema = tx
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&SCHEMA])
        .await?
        .is_some();
    if !has_schema {
        tx.batch_execute("CREATE SCHEMA timebox").await?;
    }
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS timebox.schema_version (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now(),
             applied_by text NOT NULL
         )",
    )
    .await?;
    let found: i64 = tx
        .query_one(
            "SELECT coalesce(max(version), 0)::bigint FROM timebox.schema_version",
            &[],
        )
        .await?
        .try_get(0)?;
    check_version(found)?;
    let applied_by = format!("timebox {}", env!("CARGO_PKG_VERSION"));
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = (i + 1) as i32;
        tx.batch_execute(sql)
            .await
            .map_err(|source| StoreError::Migration { version, source })?;
        tx.execute(
            "INSERT INTO timebox.schema_version (version, applied_by) VALUES ($1, $2)",
            &[&version, &applied_by],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Migrated {
        from: found,
        to: supported_version(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_newer_than_the_binary_is_refused_and_older_ones_are_not() {
        assert!(check_version(0).is_ok());
        assert!(check_version(supported_version()).is_ok());
        let err = check_version(supported_version() + 1).unwrap_err();
        assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err}");
    }

    #[test]
    fn every_step_names_its_tables_with_the_schema() {
        for sql in MIGRATIONS {
            for word in ["TABLE ", "ON ", "REFERENCES "] {
                // Whole words only (`PARTITION BY` is not `ON `).
                let words = sql
                    .match_indices(word)
                    .filter(|(at, _)| sql[..*at].chars().next_back().is_none_or(char::is_whitespace));
                for (at, _) in words {
                    let rest = &sql[at + word.len()..];
                    assert!(
                        rest.starts_with("timebox."),
                        "unqualified name after {word:?}: {rest:.40}"
                    );
                }
            }
        }
    }
}
