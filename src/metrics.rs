//! Prometheus metrics of one timebox instance, in its own registry (no process-wide default
//! registry, so parallel test instances do not mix). Served as text at the admin API's `/metrics`.
//!
//! Names follow `timebox_<noun>_<unit|total>`; labels are small bounded sets (target and role names
//! from the config, fixed reason/class/decision vocabularies) — never user names, grant ids or SQL.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metric registration failed: {0}")]
    Register(#[from] prometheus::Error),
    #[error("metrics are not UTF-8: {0}")]
    Utf8(#[from] std::string::FromUtf8Error),
}

/// Every metric timebox exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Sessions currently relayed, by target and role.
    pub sessions_active: IntGaugeVec,
    /// Sessions started, by target and role.
    pub sessions_total: IntCounterVec,
    /// Session ends by reason (client_exit, expired, revoked, killed, upstream_error, client_error, shutdown).
    pub session_ends_total: IntCounterVec,
    /// Failed authentications by reason (wrong_token, grant_not_current, throttled, protocol, store_unavailable).
    pub auth_failures_total: IntCounterVec,
    /// Statements checked, by class and decision.
    pub statements_total: IntCounterVec,
    /// Time from forwarding a query (or Sync) to its ReadyForQuery, by target.
    pub statement_duration_seconds: HistogramVec,
    /// Bytes relayed, by direction (from_client, to_client).
    pub relayed_bytes_total: IntCounterVec,
    /// Failed upstream logins by target and kind (connect, timeout, tls, rejected, protocol).
    pub upstream_connect_errors_total: IntCounterVec,
    /// Grants by state (pending, active, expired, revoked), refreshed when scraped.
    pub grants: IntGaugeVec,
    /// Access requests waiting for review, refreshed when scraped.
    pub requests_pending: IntGauge,
    /// Active break-glass grants, refreshed when scraped.
    pub break_glass_grants_active: IntGauge,
    /// Events waiting in the audit queue.
    pub audit_queue_depth: IntGauge,
    /// Durable audit records not yet in the queryable index.
    pub audit_index_lag: IntGauge,
    /// Statement texts classified from the literal-shape cache level (fed by the cache itself).
    pub classify_shape_hits_total: IntCounter,
    /// Time from submitting audit events to their durability acknowledgement.
    pub audit_write_seconds: Histogram,
    /// Audit submissions refused (queue full or writer failed) — each one denied a statement.
    pub audit_failures_total: IntCounter,
    /// Webhook deliveries that failed after all retries, by event.
    pub webhook_failures_total: IntCounterVec,
    /// Fleet only: 1 while the shared store answers the reconcile, 0 after it failed.
    pub store_up: IntGauge,
    /// Fleet only: seconds since the grants of live sessions were last re-read (refreshed when
    /// scraped; -1 before the first reconcile).
    pub fleet_reconcile_age_seconds: Gauge,
    /// Fleet only: local sessions severed because their grant state was stale (store unreachable
    /// past `[fleet] max_staleness`).
    pub fleet_stale_severed_total: IntCounter,
    /// Clients' CancelRequests by outcome: `forwarded`, `failed` (upstream), `dropped` (no cancel
    /// slot of the target within `proxy.upstream_stop_timeout`), `unknown_key`.
    pub cancel_requests_total: IntCounterVec,
    /// Fleet only: CancelRequests for another instance's session, by outcome (forwarded, failed,
    /// unknown_peer, dropped_busy).
    pub fleet_cancel_forwards_total: IntCounterVec,
    /// Fleet only: time from a peer's NOTIFY (its clock) to this instance reading it.
    pub fleet_notification_lag_seconds: Histogram,
    /// Central audit (PostgreSQL store): the shipper's lag and counts.
    pub audit_ship: AuditShipMetrics,
    /// Statements whose result was stopped by a role quota, by limit (`max_rows_per_statement`,
    /// `max_result_bytes_per_statement`, `max_result_bytes_per_grant`).
    pub quota_stops_total: IntCounterVec,
}

/// The central audit shipper's metrics ([`crate::audit::ship`]).
#[derive(Debug, Clone)]
pub struct AuditShipMetrics {
    /// Records of this instance not yet in the central table.
    pub lag_records: IntGauge,
    /// Age of the oldest record not yet shipped (0 when none).
    pub lag_seconds: Gauge,
    /// Records shipped to the central table.
    pub shipped_total: IntCounter,
    /// Failed shipping attempts (the store unreachable, a query failed).
    pub errors_total: IntCounter,
    /// The fleet mirror the auditors' SQL endpoint reads the other instances' records from
    /// ([`crate::auditsql::mirror`]): its age and counts.
    pub mirror: crate::auditsql::mirror::MirrorMetrics,
}

impl AuditShipMetrics {
    fn register(registry: &Registry) -> Result<AuditShipMetrics, MetricsError> {
        let m = AuditShipMetrics {
            lag_records: IntGauge::new(
                "timebox_audit_ship_lag_records",
                "Central audit: records of this instance not yet in the central table",
            )?,
            lag_seconds: Gauge::new(
                "timebox_audit_ship_lag_seconds",
                "Central audit: age of the oldest record not yet shipped",
            )?,
            shipped_total: IntCounter::new(
                "timebox_audit_shipped_total",
                "Central audit: records shipped to the central table",
            )?,
            errors_total: IntCounter::new(
                "timebox_audit_ship_errors_total",
                "Central audit: failed shipping attempts",
            )?,
            mirror: crate::auditsql::mirror::MirrorMetrics::register(registry)?,
        };
        registry.register(Box::new(m.lag_records.clone()))?;
        registry.register(Box::new(m.lag_seconds.clone()))?;
        registry.register(Box::new(m.shipped_total.clone()))?;
        registry.register(Box::new(m.errors_total.clone()))?;
        Ok(m)
    }
}

impl Metrics {
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                registry.register(Box::new(m.clone()))?;
                m
            }};
        }
        let latency_buckets = vec![
            0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            5.0, 10.0, 30.0, 60.0,
        ];
        let (fleet_cancel_forwards_total, fleet_notification_lag_seconds) = fleet_metrics(&registry)?;
        let (cancel_requests_total, quota_stops_total) = limit_metrics(&registry)?;
        Ok(Metrics {
            sessions_active: reg!(IntGaugeVec::new(
                Opts::new("timebox_sessions_active", "Sessions currently relayed"),
                &["target", "role"]
            )?),
            sessions_total: reg!(IntCounterVec::new(
                Opts::new("timebox_sessions_total", "Sessions started"),
                &["target", "role"]
            )?),
            session_ends_total: reg!(IntCounterVec::new(
                Opts::new("timebox_session_ends_total", "Sessions ended, by reason"),
                &["reason"]
            )?),
            auth_failures_total: reg!(IntCounterVec::new(
                Opts::new(
                    "timebox_auth_failures_total",
                    "Failed client authentications, by reason"
                ),
                &["reason"]
            )?),
            statements_total: reg!(IntCounterVec::new(
                Opts::new(
                    "timebox_statements_total",
                    "Statements checked, by class and decision"
                ),
                &["class", "decision"]
            )?),
            statement_duration_seconds: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "timebox_statement_duration_seconds",
                    "Time from forwarding a query or Sync to its ReadyForQuery"
                )
                .buckets(latency_buckets.clone()),
                &["target"]
            )?),
            relayed_bytes_total: reg!(IntCounterVec::new(
                Opts::new("timebox_relayed_bytes_total", "Bytes relayed, by direction"),
                &["direction"]
            )?),
            upstream_connect_errors_total: reg!(IntCounterVec::new(
                Opts::new("timebox_upstream_connect_errors_total", "Failed upstream logins"),
                &["target", "kind"]
            )?),
            grants: reg!(IntGaugeVec::new(
                Opts::new("timebox_grants", "Grants by state"),
                &["state"]
            )?),
            requests_pending: reg!(IntGauge::new(
                "timebox_requests_pending",
                "Access requests waiting for review"
            )?),
            break_glass_grants_active: reg!(IntGauge::new(
                "timebox_break_glass_grants_active",
                "Active break-glass grants"
            )?),
            audit_index_lag: reg!(IntGauge::new(
                "timebox_audit_index_lag_records",
                "Audit records durable in the journal but not yet in the queryable database"
            )?),
            classify_shape_hits_total: reg!(IntCounter::new(
                "timebox_classify_shape_hits_total",
                "Statements classified by literal shape (a cache hit with other literals) since start"
            )?),
            audit_queue_depth: reg!(IntGauge::new(
                "timebox_audit_queue_depth",
                "Events waiting in the audit queue"
            )?),
            audit_write_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "timebox_audit_write_seconds",
                    "Time from submitting audit events to their durability acknowledgement"
                )
                .buckets(latency_buckets)
            )?),
            store_up: reg!(IntGauge::new(
                "timebox_store_up",
                "Fleet: 1 while the shared store answers the reconcile, 0 after it failed"
            )?),
            fleet_reconcile_age_seconds: reg!(Gauge::new(
                "timebox_fleet_reconcile_age_seconds",
                "Fleet: seconds since live sessions' grants were last re-read (-1 before the first)"
            )?),
            fleet_stale_severed_total: reg!(IntCounter::new(
                "timebox_fleet_stale_severed_total",
                "Fleet: sessions severed because the store was unreachable past max_staleness"
            )?),
            audit_failures_total: reg!(IntCounter::new(
                "timebox_audit_failures_total",
                "Audit submissions refused (each denied a statement)"
            )?),
            audit_ship: AuditShipMetrics::register(&registry)?,
            webhook_failures_total: reg!(IntCounterVec::new(
                Opts::new(
                    "timebox_webhook_failures_total",
                    "Webhook deliveries that failed after all retries"
                ),
                &["event"]
            )?),
            cancel_requests_total,
            fleet_cancel_forwards_total,
            fleet_notification_lag_seconds,
            quota_stops_total,
            registry,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .map_err(MetricsError::Register)?;
        Ok(String::from_utf8(out)?)
    }
}

/// A labelled counter, registered (kept out of [`Metrics::new`] for its length).
fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, MetricsError> {
    let counter = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(counter.clone()))?;
    Ok(counter)
}

/// The limits' counters: clients' CancelRequests by outcome, and result quota stops by limit.
fn limit_metrics(registry: &Registry) -> Result<(IntCounterVec, IntCounterVec), MetricsError> {
    let cancels = counter_vec(
        registry,
        "timebox_cancel_requests_total",
        "Clients' CancelRequests by outcome (forwarded, failed, dropped, unknown_key)",
        &["outcome"],
    )?;
    let quota_stops = counter_vec(
        registry,
        "timebox_quota_stops_total",
        "Statements whose result was stopped by a role quota, by limit",
        &["limit"],
    )?;
    Ok((cancels, quota_stops))
}

/// Column masking's metrics (issue 15), in an instance's registry.
#[derive(Debug, Clone)]
pub struct MaskingMetrics {
    /// Values of masked columns sent masked.
    pub masked_values_total: IntCounter,
    /// Statements denied by the masking shape check (also counted in `timebox_statements_total`
    /// as denied).
    pub masking_denials_total: IntCounter,
    /// Results whose rows were not sent (42501) because timebox could not establish which of
    /// their columns are masked (s6: these statements were denied for masking without a count).
    pub masking_refusals_total: IntCounter,
}

impl MaskingMetrics {
    pub fn register(metrics: &Metrics) -> Result<MaskingMetrics, MetricsError> {
        let m = MaskingMetrics {
            masked_values_total: IntCounter::new(
                "timebox_masked_values_total",
                "Values of masked columns sent masked",
            )?,
            masking_denials_total: IntCounter::new(
                "timebox_masking_denials_total",
                "Statements denied because they would return a masked column in another shape than a plain column",
            )?,
            masking_refusals_total: IntCounter::new(
                "timebox_masking_refusals_total",
                "Results whose rows were not sent because timebox could not establish which of their columns are masked",
            )?,
        };
        metrics
            .registry
            .register(Box::new(m.masked_values_total.clone()))?;
        metrics
            .registry
            .register(Box::new(m.masking_denials_total.clone()))?;
        metrics
            .registry
            .register(Box::new(m.masking_refusals_total.clone()))?;
        Ok(m)
    }
}

/// The fleet's cancel-forwarding and notification-lag metrics (issue 11 items 4 and 5),
/// registered in `registry`.
fn fleet_metrics(registry: &Registry) -> Result<(IntCounterVec, Histogram), MetricsError> {
    let forwards = IntCounterVec::new(
        Opts::new(
            "timebox_fleet_cancel_forwards_total",
            "Fleet: CancelRequests for another instance's session, by outcome",
        ),
        &["outcome"],
    )?;
    let lag = Histogram::with_opts(
        HistogramOpts::new(
            "timebox_fleet_notification_lag_seconds",
            "Fleet: time from a change notification being sent (sender's clock) to its receipt",
        )
        .buckets(vec![
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]),
    )?;
    registry.register(Box::new(forwards.clone()))?;
    registry.register(Box::new(lag.clone()))?;
    Ok((forwards, lag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_their_names_and_labels() {
        let m = Metrics::new().unwrap();
        m.sessions_total.with_label_values(&["shop", "read"]).inc();
        m.statements_total.with_label_values(&["write", "deny"]).inc_by(2);
        m.statement_duration_seconds
            .with_label_values(&["shop"])
            .observe(0.003);
        let text = m.render().unwrap();
        assert!(
            text.contains("timebox_sessions_total{role=\"read\",target=\"shop\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("timebox_statements_total{class=\"write\",decision=\"deny\"} 2"),
            "{text}"
        );
        assert!(text.contains("timebox_statement_duration_seconds_bucket{target=\"shop\",le=\"0.005\"} 1"));
        assert!(text.contains("# TYPE timebox_audit_queue_depth gauge"));
    }

    #[test]
    fn instances_do_not_share_metrics() {
        let a = Metrics::new().unwrap();
        let b = Metrics::new().unwrap();
        a.audit_failures_total.inc();
        assert!(b.render().unwrap().contains("timebox_audit_failures_total 0"));
    }
}
