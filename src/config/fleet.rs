//! `[fleet]`: this instance's name and address among the instances sharing a PostgreSQL store, and
//! how often it heartbeats and reconciles — raw keys, validation, and the typed [`FleetConfig`].
//!
//! Where it sits: [`super::RawConfig::validate`] calls [`validate_fleet`] after the store; the
//! result is `Some` exactly when the store is PostgreSQL (with SQLite there is one instance and
//! nothing to share, so a `[fleet]` table is refused rather than silently ignored). What it must
//! never do: let `reconcile_interval` or the heartbeat outlast the times they bound
//! (`max_staleness`, `instance_timeout`), which would make those bounds lies.

use std::time::Duration;

use serde::Deserialize;

use super::validate::{valid_name, Problems};

/// `[fleet] reconcile_interval` when the config does not say.
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(5);
/// `[fleet] max_staleness` when the config does not say.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(30);
/// `[fleet] heartbeat_interval` when the config does not say.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// `[fleet] instance_timeout` when the config does not say.
pub const DEFAULT_INSTANCE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize)]
pub(super) struct RawFleet {
    instance: Option<String>,
    advertise: Option<String>,
    reconcile_interval: Option<String>,
    max_staleness: Option<String>,
    heartbeat_interval: Option<String>,
    instance_timeout: Option<String>,
}

/// A validated `[fleet]` (defaults filled in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// `instance`: this instance's name, unique in the fleet (default: the host name).
    pub instance: String,
    /// `advertise`: "host:port" where peers reach this instance's proxy port (default: `[proxy]
    /// listen`, with the bound port when it is 0).
    pub advertise: Option<String>,
    /// `reconcile_interval`: how often the grants of live local sessions are re-read from the store
    /// (and kill requests looked for), whatever the notifications said.
    pub reconcile_interval: Duration,
    /// `max_staleness`: how long a session may run without a successful reconcile.
    pub max_staleness: Duration,
    /// `heartbeat_interval`: how often this instance's row and session list are written.
    pub heartbeat_interval: Duration,
    /// `instance_timeout`: an instance without a heartbeat for this long is dead; its sessions
    /// drop out of the fleet view.
    pub instance_timeout: Duration,
}

/// This machine's host name, or `"timebox"` if it cannot be read (the default instance name).
pub fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .chain(std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "timebox".into())
}

/// Validates `[fleet]` against the store kind (see the module docs).
pub(super) fn validate_fleet(
    raw: Option<&RawFleet>,
    postgres: bool,
    p: &mut Problems,
) -> Option<FleetConfig> {
    if !postgres {
        if raw.is_some() {
            p.push(
                "fleet",
                "only with a postgres:// store: with SQLite there is a single instance; remove [fleet] or \
                 set [store] url = \"postgres://…\"",
            );
        }
        return None;
    }
    let none = RawFleet {
        instance: None,
        advertise: None,
        reconcile_interval: None,
        max_staleness: None,
        heartbeat_interval: None,
        instance_timeout: None,
    };
    let raw = raw.unwrap_or(&none);
    let instance = raw.instance.clone().unwrap_or_else(host_name);
    if !valid_name(&instance) {
        p.push(
            "fleet.instance",
            format!("{instance:?}: instance names use letters, digits, '_' and '-' only, at most 63"),
        );
    }
    if let Some(a) = &raw.advertise {
        if advertise_problem(a) {
            p.push(
                "fleet.advertise",
                format!("{a:?} is not \"host:port\" (e.g. \"tb-a.internal:6432\")"),
            );
        }
    }
    let reconcile_interval = p.duration(
        "fleet.reconcile_interval",
        raw.reconcile_interval.as_deref(),
        DEFAULT_RECONCILE_INTERVAL,
    );
    let max_staleness = p.duration(
        "fleet.max_staleness",
        raw.max_staleness.as_deref(),
        DEFAULT_MAX_STALENESS,
    );
    let heartbeat_interval = p.duration(
        "fleet.heartbeat_interval",
        raw.heartbeat_interval.as_deref(),
        DEFAULT_HEARTBEAT_INTERVAL,
    );
    let instance_timeout = p.duration(
        "fleet.instance_timeout",
        raw.instance_timeout.as_deref(),
        DEFAULT_INSTANCE_TIMEOUT,
    );
    if reconcile_interval >= max_staleness {
        p.push(
            "fleet.reconcile_interval",
            "must be shorter than fleet.max_staleness (every session would be stale between reconciles)",
        );
    }
    if heartbeat_interval * 2 > instance_timeout {
        p.push(
            "fleet.heartbeat_interval",
            "must be at most half of fleet.instance_timeout (one late heartbeat would declare the instance dead)",
        );
    }
    Some(FleetConfig {
        instance,
        advertise: raw.advertise.clone(),
        reconcile_interval,
        max_staleness,
        heartbeat_interval,
        instance_timeout,
    })
}

/// Whether `value` is not "host:port" with a non-empty host and a port number. Pure.
fn advertise_problem(value: &str) -> bool {
    match value.rsplit_once(':') {
        Some((host, port)) => host.trim().is_empty() || port.parse::<u16>().map_or(true, |p| p == 0),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: Option<RawFleet>, postgres: bool) -> (Option<FleetConfig>, Vec<(String, String)>) {
        let mut p = Problems::default();
        let out = validate_fleet(raw.as_ref(), postgres, &mut p);
        (out, p.0.into_iter().map(|c| (c.path, c.message)).collect())
    }

    fn raw(f: impl FnOnce(&mut RawFleet)) -> Option<RawFleet> {
        let mut r = RawFleet {
            instance: Some("tb-a".into()),
            advertise: None,
            reconcile_interval: None,
            max_staleness: None,
            heartbeat_interval: None,
            instance_timeout: None,
        };
        f(&mut r);
        Some(r)
    }

    #[test]
    fn defaults_apply_with_postgres_and_fleet_is_refused_with_sqlite() {
        let (fleet, problems) = check(None, true);
        let fleet = fleet.unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(fleet.reconcile_interval, DEFAULT_RECONCILE_INTERVAL);
        assert_eq!(fleet.max_staleness, DEFAULT_MAX_STALENESS);
        assert!(!fleet.instance.is_empty());
        assert_eq!(check(None, false), (None, vec![]));
        let (fleet, problems) = check(raw(|_| {}), false);
        assert!(fleet.is_none());
        assert_eq!(problems[0].0, "fleet");
        assert!(problems[0].1.contains("postgres://"), "{problems:?}");
    }

    #[test]
    fn bad_values_are_reported_with_their_key_path() {
        let (_, problems) = check(
            raw(|r| {
                r.instance = Some("tb a".into());
                r.advertise = Some("nohost".into());
                r.reconcile_interval = Some("soon".into());
            }),
            true,
        );
        let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["fleet.instance", "fleet.advertise", "fleet.reconcile_interval"]
        );
        let (_, problems) = check(
            raw(|r| {
                r.reconcile_interval = Some("30s".into());
                r.max_staleness = Some("10s".into());
                r.heartbeat_interval = Some("10s".into());
                r.instance_timeout = Some("15s".into());
            }),
            true,
        );
        let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["fleet.reconcile_interval", "fleet.heartbeat_interval"]);
    }

    #[test]
    fn advertise_needs_a_host_and_a_port() {
        assert!(!advertise_problem("tb-a.internal:6432"));
        assert!(!advertise_problem("[::1]:6432"));
        assert!(advertise_problem("tb-a"));
        assert!(advertise_problem(":6432"));
        assert!(advertise_problem("tb-a:0"));
        assert!(advertise_problem("tb-a:http"));
    }
}
