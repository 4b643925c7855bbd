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
    /// Statements whose result was stopped by a role quota, by limit (`max_rows_per_statement`,
    /// `max_result_bytes_per_statement`, `max_result_bytes_per_grant`).
    pub quota_stops_total: IntCounterVec,
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
            webhook_failures_total: reg!(IntCounterVec::new(
                Opts::new(
                    "timebox_webhook_failures_total",
                    "Webhook deliveries that failed after all retries"
                ),
                &["event"]
            )?),
            quota_stops_total: reg!(IntCounterVec::new(
                Opts::new(
                    "timebox_quota_stops_total",
                    "Statements whose result was stopped by a role quota, by limit"
                ),
                &["limit"]
            )?),
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
