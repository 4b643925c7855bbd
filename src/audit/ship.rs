//! Central audit (issue 11 item 6): with a PostgreSQL store, each instance ships its records from
//! its local index to the store's `timebox.audit_records`, and answers fleet-wide reads from there.
//!
//! Data flow: the writer makes a record durable in the local journal and acknowledges it (the
//! statement goes on); the indexer puts it in the local SQLite index; [`CentralAudit::run`] (one
//! task per instance) reads the index after the highest seq the central table holds for this
//! instance — asked of the store at start and after every failure, so a restart or an outage
//! resumes without a gap — and ships batches of up to [`SHIP_BATCH`] records
//! ([`crate::store::postgres::PgStore::ship`]: COPY into staging, then `INSERT … ON CONFLICT DO
//! NOTHING`, so a batch shipped twice is harmless). `GET /v1/audit` and `/v1/audit/verify` then
//! read the central table ([`CentralAudit::query`], [`CentralAudit::verify`]), after giving this
//! instance's own records up to [`SHIP_WAIT`] to arrive.
//!
//! What it must never do: slow down or unblock a statement. Shipping only reads the index; a slow
//! or absent store grows the lag (`timebox_audit_ship_lag_records`, `_seconds`) and counts
//! errors (`timebox_audit_ship_errors_total`), nothing else. The local journal and index stay the
//! durable-before-execute record.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::chain::{BadRecord, Head, InstanceReport, VerifyReport};
use super::query::{AuditFilter, Page};
use super::{sqlite, AuditError, AuditLog};
use crate::metrics::Metrics;
use crate::store::postgres::PgStore;

/// How often the shipper looks for new records when it has caught up.
pub const SHIP_INTERVAL: Duration = Duration::from_millis(500);
/// Most records shipped in one transaction.
pub const SHIP_BATCH: u64 = 5_000;
/// Longest wait between attempts while the store fails (doubling from [`SHIP_INTERVAL`]).
pub const SHIP_RETRY_MAX: Duration = Duration::from_secs(10);
/// How long a fleet-wide read waits for this instance's records acknowledged before it to be
/// shipped; past it, the read answers with what the central table has.
pub const SHIP_WAIT: Duration = Duration::from_secs(10);

/// This instance's shipper and its fleet-wide reads.
pub struct CentralAudit {
    /// This instance's name (`[fleet] instance`): its chain in the central table.
    instance: String,
    store: Arc<PgStore>,
    /// The highest seq of this instance known to be in the central table (`None` before the
    /// first answer of the store).
    shipped: watch::Sender<Option<u64>>,
    /// Set after a failure: ask the store again where the central chain ends before shipping.
    resync: AtomicBool,
    /// Wakes the shipper early (a reader is waiting for its records).
    wake: Notify,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for CentralAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CentralAudit")
            .field("instance", &self.instance)
            .field("shipped", &*self.shipped.borrow())
            .finish_non_exhaustive()
    }
}

/// Lag of the shipper: records not shipped, and the age in seconds of the oldest (pure).
pub fn lag(
    head: u64,
    shipped: u64,
    oldest_unshipped: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> (u64, f64) {
    let records = head.saturating_sub(shipped);
    let seconds = match oldest_unshipped {
        Some(ts) if records > 0 => (now - ts).num_milliseconds().max(0) as f64 / 1000.0,
        _ => 0.0,
    };
    (records, seconds)
}

impl CentralAudit {
    pub fn new(instance: String, store: Arc<PgStore>, metrics: Arc<Metrics>) -> Arc<CentralAudit> {
        Arc::new(CentralAudit {
            instance,
            store,
            shipped: watch::Sender::new(None),
            resync: AtomicBool::new(true),
            wake: Notify::new(),
            metrics,
        })
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn store(&self) -> &Arc<PgStore> {
        &self.store
    }

    /// The highest seq of this instance known to be in the central table.
    pub fn shipped(&self) -> Option<u64> {
        *self.shipped.borrow()
    }

    /// Ships until `shutdown`: as fast as records come while behind, every [`SHIP_INTERVAL`]
    /// when caught up, backing off to [`SHIP_RETRY_MAX`] while the store fails.
    pub async fn run(self: Arc<Self>, audit: AuditLog, shutdown: CancellationToken) {
        let mut wait = SHIP_INTERVAL;
        loop {
            // A store call can take up to `[store] query_timeout`: shutdown does not wait for it
            // (the transaction is rolled back; the records are shipped after the restart).
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                result = self.ship_once(&audit) => result,
            };
            let more = match result {
                Ok(more) => {
                    wait = SHIP_INTERVAL;
                    more
                }
                Err(e) => {
                    self.metrics.audit_ship.errors_total.inc();
                    self.resync.store(true, Ordering::SeqCst);
                    tracing::warn!(error = %e, retry_in = ?wait, "central audit: shipping failed; records wait in the local index");
                    wait = (wait * 2).min(SHIP_RETRY_MAX);
                    false
                }
            };
            if let Err(e) = self.update_lag(&audit).await {
                tracing::debug!(error = %e, "central audit: could not measure the lag");
            }
            if more {
                tokio::task::yield_now().await;
                if shutdown.is_cancelled() {
                    return;
                }
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Ships the next batch; `Ok(true)` when more are waiting.
    async fn ship_once(&self, audit: &AuditLog) -> Result<bool, AuditError> {
        let central = AuditError::Central;
        let shipped = match self.shipped() {
            Some(s) if !self.resync.load(Ordering::SeqCst) => s,
            _ => {
                let s = self
                    .store
                    .bounded(self.store.shipped_through(&self.instance))
                    .await
                    .map_err(central)?;
                self.resync.store(false, Ordering::SeqCst);
                self.shipped.send_replace(Some(s));
                s
            }
        };
        let indexed = audit.indexed();
        if indexed <= shipped {
            return Ok(false);
        }
        let to = indexed.min(shipped.saturating_add(SHIP_BATCH));
        let rows = audit
            .with_reader(move |conn| sqlite::ship_rows(conn, shipped + 1, to))
            .await?;
        let Some(first) = rows.first().map(|r| r.seq) else {
            return Ok(false);
        };
        if first != shipped + 1 {
            // The local index no longer has them (pruned before they were shipped, or the central
            // table lost them): ship what there is; `verify` reports the gap with its seqs.
            tracing::error!(
                expected = shipped + 1,
                first,
                "central audit: records missing from the local index"
            );
        }
        let last = rows.last().map_or(to, |r| r.seq);
        let inserted = self
            .store
            .bounded(self.store.ship(&self.instance, &rows))
            .await
            .map_err(central)?;
        self.metrics.audit_ship.shipped_total.inc_by(rows.len() as u64);
        tracing::debug!(from = first, to = last, inserted, "central audit: shipped");
        self.shipped.send_replace(Some(last));
        Ok(last < indexed)
    }

    async fn update_lag(&self, audit: &AuditLog) -> Result<(), AuditError> {
        let head = audit.head().seq;
        let shipped = self.shipped().unwrap_or(0);
        let oldest = if head > shipped {
            let ts = audit
                .with_reader(move |conn| sqlite::ts_of(conn, shipped + 1))
                .await?;
            ts.and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc))
        } else {
            None
        };
        let (records, seconds) = lag(head, shipped, oldest, Utc::now());
        self.metrics.audit_ship.lag_records.set(records as i64);
        self.metrics.audit_ship.lag_seconds.set(seconds);
        Ok(())
    }

    /// Waits (up to [`SHIP_WAIT`]) until this instance's records up to `target` are shipped.
    pub async fn wait_shipped(&self, target: u64) -> bool {
        let mut rx = self.shipped.subscribe();
        let reached = |v: &Option<u64>| v.is_some_and(|s| s >= target);
        if reached(&rx.borrow_and_update()) {
            return true;
        }
        self.wake.notify_one();
        tokio::time::timeout(SHIP_WAIT, async {
            loop {
                if rx.changed().await.is_err() {
                    return false;
                }
                if reached(&rx.borrow_and_update()) {
                    return true;
                }
                self.wake.notify_one();
            }
        })
        .await
        .unwrap_or(false)
    }

    /// Waits for this instance's records acknowledged before the call to reach the central
    /// table (bounded), so a caller sees its own actions.
    async fn catch_up(&self, audit: &AuditLog) -> Result<(), AuditError> {
        let target = audit.head().seq;
        audit.wait_indexed().await?;
        if !self.wait_shipped(target).await {
            tracing::warn!(target, shipped = ?self.shipped(), "central audit: answering before this instance's latest records arrived");
        }
        Ok(())
    }

    /// One page of the fleet's records (see [`PgStore::central_query`]).
    pub async fn query(&self, audit: &AuditLog, filter: AuditFilter) -> Result<Page, AuditError> {
        if let Err((field, message)) = filter.validate() {
            return Err(AuditError::InvalidFilter { field, message });
        }
        self.catch_up(audit).await?;
        self.store
            .bounded(self.store.central_query(&filter))
            .await
            .map_err(AuditError::Central)
    }

    /// Verifies every instance's chain in the central table; `anchors` (heads noted earlier)
    /// apply to this instance's chain. The report's `first_bad` names the instance.
    pub async fn verify(&self, audit: &AuditLog, anchors: Vec<Head>) -> Result<VerifyReport, AuditError> {
        self.catch_up(audit).await?;
        let central = AuditError::Central;
        let mut instances = self.store.central_instances().await.map_err(central)?;
        if !instances.contains(&self.instance) {
            instances.push(self.instance.clone());
            instances.sort();
        }
        let mut reports = Vec::with_capacity(instances.len());
        for instance in instances {
            let anchors: &[Head] = if instance == self.instance { &anchors } else { &[] };
            let mut report = self
                .store
                .central_chain(&instance, anchors)
                .await
                .map_err(AuditError::Central)?;
            if let Some(bad) = report.first_bad.as_mut() {
                bad.instance = Some(instance.clone());
            }
            reports.push(InstanceReport { instance, report });
        }
        Ok(fleet_report(&self.instance, reports))
    }
}

/// Folds per-instance reports into one: ok when all are, the first failure (by instance name)
/// with its instance, `head` this instance's (pure).
pub fn fleet_report(own: &str, instances: Vec<InstanceReport>) -> VerifyReport {
    let first_bad: Option<BadRecord> = instances.iter().find_map(|i| i.report.first_bad.clone());
    let head = instances
        .iter()
        .find(|i| i.instance == own)
        .map_or_else(Head::genesis, |i| i.report.head.clone());
    VerifyReport {
        ok: first_bad.is_none(),
        records: instances.iter().map(|i| i.report.records).sum(),
        head,
        first_bad,
        anchor: None,
        instances,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(seq: u64, bad: Option<u64>, instance: &str) -> InstanceReport {
        InstanceReport {
            instance: instance.into(),
            report: VerifyReport {
                ok: bad.is_none(),
                records: seq,
                head: Head {
                    seq,
                    hash: "ab".repeat(32),
                },
                first_bad: bad.map(|seq| BadRecord {
                    seq,
                    problem: "edited".into(),
                    instance: Some(instance.into()),
                }),
                anchor: None,
                instances: Vec::new(),
            },
        }
    }

    #[test]
    fn the_fleet_report_names_the_failing_instance_and_counts_every_chain() {
        let ok = fleet_report("tb-a", vec![report(3, None, "tb-a"), report(4, None, "tb-b")]);
        assert!(ok.ok);
        assert_eq!((ok.records, ok.head.seq), (7, 3));
        let bad = fleet_report("tb-a", vec![report(3, None, "tb-a"), report(4, Some(2), "tb-b")]);
        assert!(!bad.ok);
        let first = bad.first_bad.unwrap();
        assert_eq!((first.instance.as_deref(), first.seq), (Some("tb-b"), 2));
        let json = serde_json::to_value(&bad.instances[1]).unwrap();
        assert_eq!(json["instance"], "tb-b", "instance reports are flat: {json}");
        assert_eq!(json["first_bad"]["instance"], "tb-b");
    }

    #[test]
    fn the_shipper_metrics_are_exported_under_their_names() {
        let text = Metrics::new().unwrap().render().unwrap();
        for name in [
            "timebox_audit_ship_lag_records",
            "timebox_audit_ship_lag_seconds",
            "timebox_audit_shipped_total",
            "timebox_audit_ship_errors_total",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }

    #[test]
    fn lag_counts_unshipped_records_and_the_age_of_the_oldest() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:10Z")
            .unwrap()
            .with_timezone(&Utc);
        let then = now - chrono::Duration::milliseconds(2500);
        assert_eq!(lag(10, 4, Some(then), now), (6, 2.5));
        assert_eq!(lag(10, 10, Some(then), now), (0, 0.0), "caught up: no age");
        assert_eq!(
            lag(3, 5, None, now),
            (0, 0.0),
            "a resync may see more than the head"
        );
        assert_eq!(
            lag(10, 4, Some(now + chrono::Duration::seconds(1)), now),
            (6, 0.0)
        );
    }
}
