//! Retention (issue 11 item 7): with `[audit] retain = "90d"`, records older than the cut are
//! removed on a schedule, and what remains still verifies.
//!
//! Data flow: [`run`] (one task per instance) calls [`run_once`] at start and every
//! [`interval`]. A run computes the cut ([`cut`]: now − retain), then
//! 1. with a PostgreSQL store, drops the central partitions entirely older than the cut, first
//!    moving each instance's anchor (`timebox.audit_anchors`) to its last record in them
//!    ([`crate::store::postgres::PgStore::central_retention`]; one instance at a time);
//! 2. prunes the local index of rows older than the cut — with a PostgreSQL store only those
//!    already shipped ([`local_through`]) — keeping the last pruned record as the local anchor
//!    (`audit_anchor`) in the same transaction, and never the head (the journal's segments
//!    already go once indexed);
//! 3. records the run itself as an `audit_retention` event.
//!
//! `verify` then starts each chain from its anchor: the first remaining record must link to the
//! anchor's hash. What it must never do: remove a record that is not yet shipped (with a
//! PostgreSQL store), or remove a record without moving the anchor past it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::chain::format_ts;
use serde::{Deserialize, Serialize};

use super::event::AuditEvent;
use super::ship::CentralAudit;
use super::{AuditError, AuditLog};
use crate::clock::Clock;

/// The shortest and longest time between two retention runs (see [`interval`]).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// Records before this time are removed (pure). A window longer than the clock's past removes
/// nothing.
pub fn cut(now: DateTime<Utc>, retain: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(retain)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// How often retention runs: a tenth of the window, within [`MIN_INTERVAL`]..=[`MAX_INTERVAL`]
/// (pure).
pub fn interval(retain: Duration) -> Duration {
    (retain / 10).clamp(MIN_INTERVAL, MAX_INTERVAL)
}

/// The highest seq the local index may prune (pure): everything with the SQLite store; with a
/// PostgreSQL store only what the central table is known to hold, nothing before the shipper
/// has heard from the store.
pub fn local_through(central: bool, shipped: Option<u64>) -> Option<u64> {
    if central {
        shipped
    } else {
        Some(u64::MAX)
    }
}

/// The `audit_retention` event: a retention run: what it removed and where each chain now starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRetention {
    /// Records older than this were removed (RFC 3339).
    pub cut: DateTime<Utc>,
    /// Central partitions dropped (their names), empty with a SQLite store.
    pub dropped_partitions: Vec<String>,
    /// The instance that ran it.
    pub instance: Option<String>,
    /// This instance's local chain now starts after this record (`SEQ:HASH`), if it was pruned.
    pub local_anchor: Option<String>,
    /// Local index rows removed.
    pub pruned_local: u64,
    /// The configured window (`90d`).
    pub retain: String,
}

/// What one run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub cut: DateTime<Utc>,
    pub dropped_partitions: Vec<String>,
    pub pruned_local: u64,
    /// The local chain's anchor after the run, if this run moved it.
    pub local_anchor: Option<super::Head>,
}

/// One retention run at `now` (see the module docs).
pub async fn run_once(
    audit: &AuditLog,
    central: Option<&CentralAudit>,
    retain: Duration,
    now: DateTime<Utc>,
) -> Result<RetentionOutcome, AuditError> {
    let cut = cut(now, retain);
    let mut dropped_partitions = Vec::new();
    if let Some(central) = central {
        let store = central.store();
        if let Some(done) = store
            .bounded(store.central_retention(cut))
            .await
            .map_err(AuditError::Central)?
        {
            dropped_partitions = done.dropped;
        }
    }
    let (pruned_local, local_anchor) =
        match local_through(central.is_some(), central.and_then(CentralAudit::shipped)) {
            Some(through) => audit.prune_before(format_ts(cut), through).await?,
            None => (0, None),
        };
    let outcome = RetentionOutcome {
        cut,
        dropped_partitions,
        pruned_local,
        local_anchor,
    };
    if outcome.pruned_local > 0 || !outcome.dropped_partitions.is_empty() {
        tracing::info!(cut = %format_ts(cut), pruned_local, dropped = ?outcome.dropped_partitions,
            "audit retention removed old records");
        audit
            .record(vec![AuditEvent::AuditRetention(AuditRetention {
                cut,
                dropped_partitions: outcome.dropped_partitions.clone(),
                instance: central.map(|c| c.instance().to_owned()),
                local_anchor: outcome.local_anchor.as_ref().map(ToString::to_string),
                pruned_local,
                retain: humantime::format_duration(retain).to_string(),
            })])
            .await?;
    }
    Ok(outcome)
}

/// Runs retention at start and every [`interval`] until `shutdown`; failures are logged and
/// retried at the next run.
pub async fn run(
    audit: AuditLog,
    central: Option<Arc<CentralAudit>>,
    retain: Duration,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval(retain));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = run_once(&audit, central.as_deref(), retain, clock.now()).await {
            tracing::warn!(error = %e, "audit retention failed; retrying at the next run");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::tests::samples;
    use crate::audit::AuditOptions;
    use crate::clock::ManualClock;
    use crate::config::{AuditConfig, Durability, ParamLogging, StoreConfig};

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_cut_is_now_minus_the_window_and_runs_come_a_tenth_of_it_apart() {
        let now = at("2026-03-31T12:00:00Z");
        assert_eq!(
            cut(now, Duration::from_secs(90 * 86_400)),
            at("2025-12-31T12:00:00Z")
        );
        assert_eq!(cut(now, Duration::from_secs(2)), at("2026-03-31T11:59:58Z"));
        assert_eq!(
            cut(now, Duration::MAX),
            DateTime::<Utc>::MIN_UTC,
            "a huge window removes nothing"
        );
        assert_eq!(interval(Duration::from_secs(2)), MIN_INTERVAL);
        assert_eq!(interval(Duration::from_secs(600)), Duration::from_secs(60));
        assert_eq!(interval(Duration::from_secs(90 * 86_400)), MAX_INTERVAL);
    }

    #[test]
    fn retain_is_absent_by_default_and_a_bad_window_is_named() {
        use crate::config::testing::MINIMAL;
        let load =
            |audit: &str| crate::config::Config::from_toml_str(&format!("{MINIMAL}\n[audit]\n{audit}\n"));
        assert_eq!(
            crate::config::Config::from_toml_str(MINIMAL)
                .unwrap()
                .audit
                .retain,
            None
        );
        assert_eq!(
            load("retain = \"90d\"").unwrap().audit.retain,
            Some(Duration::from_secs(90 * 86_400))
        );
        for (bad, message) in [("0s", "must be greater than zero"), ("soon", "not a duration")] {
            let err = load(&format!("retain = \"{bad}\"")).unwrap_err().to_string();
            assert!(
                err.contains("audit.retain") && err.contains(message),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn with_a_central_store_only_shipped_records_are_pruned_locally() {
        assert_eq!(
            local_through(false, None),
            Some(u64::MAX),
            "SQLite store: just the cut"
        );
        assert_eq!(
            local_through(true, None),
            None,
            "shipper not heard from the store: nothing"
        );
        assert_eq!(local_through(true, Some(42)), Some(42));
    }

    fn config() -> AuditConfig {
        AuditConfig {
            durability: Durability::Write,
            jsonl: None,
            params: ParamLogging::Redacted,
            jsonl_max_bytes: 1 << 20,
            jsonl_keep: 1,
            retain: Some(Duration::from_secs(86_400)),
        }
    }

    /// Retention on a SQLite store: old records go, the run is recorded, and verify passes from
    /// the anchor (and still catches an edit after it).
    #[tokio::test]
    async fn local_retention_prunes_old_records_and_verify_starts_from_the_anchor() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreConfig::Sqlite {
            path: dir.path().join("timebox.db"),
        };
        let clock = Arc::new(ManualClock::new(at("2026-01-01T00:00:00Z")));
        let (audit, writer) = AuditLog::open_with(AuditOptions {
            clock: clock.clone(),
            ..AuditOptions::from_config(&config(), &store)
        })
        .unwrap();
        audit.record(samples()).await.unwrap();
        let old_head = audit.head();
        clock.advance(chrono::Duration::days(3));
        audit.record(samples()).await.unwrap();
        let kept_from = old_head.seq + 1;

        let done = run_once(&audit, None, Duration::from_secs(86_400), clock.now())
            .await
            .unwrap();
        assert_eq!(done.pruned_local, old_head.seq);
        assert_eq!(
            done.local_anchor.as_ref(),
            Some(&old_head),
            "the last pruned record is the anchor"
        );
        let page = audit
            .query(crate::audit::AuditFilter {
                order: crate::audit::Order::Asc,
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.events.first().map(|r| r.seq), Some(kept_from));
        assert_eq!(
            page.events.last().map(|r| r.kind.as_str()),
            Some("audit_retention")
        );

        let report = audit.verify(vec![]).await.unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.anchor.as_ref(), Some(&old_head));
        // An anchor an auditor noted before the cut can no longer be checked; the retention
        // anchor itself still is.
        let report = audit.verify(vec![old_head.clone()]).await.unwrap();
        assert!(report.ok, "{report:?}");
        let forged = super::super::Head {
            seq: old_head.seq,
            hash: "cd".repeat(32),
        };
        let report = audit.verify(vec![forged]).await.unwrap();
        assert_eq!(report.first_bad.map(|b| b.seq), Some(old_head.seq));
        // A second run finds nothing more to remove and records nothing.
        let head = audit.head();
        let again = run_once(&audit, None, Duration::from_secs(86_400), clock.now())
            .await
            .unwrap();
        assert_eq!((again.pruned_local, audit.head()), (0, head));
        writer.shutdown().await;

        // The first remaining record is edited: verify (offline too) reports it, anchored.
        let db = dir.path().join("audit.db");
        {
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.execute(
                "UPDATE audit_events SET payload = replace(payload, 'alice', 'mallory') WHERE seq = ?1",
                [kept_from as i64],
            )
            .unwrap();
        }
        let report = crate::audit::verify_file(&db, &[]).unwrap();
        assert_eq!(
            report.first_bad.map(|b| b.seq),
            Some(kept_from),
            "edited after the anchor"
        );
    }
}
