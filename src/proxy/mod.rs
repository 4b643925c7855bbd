//! The PostgreSQL-facing side: accept loop, per-connection sessions, and the state they share.
//!
//! Data flow for one connection: [`session`] (the entry) → [`startup`] (TLS, startup packet) →
//! `login`: [`auth`] (grant token via SCRAM), then [`upstream`] (login with the role's
//! credential) → `relay` loop ([`intercept`] checks each statement), which ends on client exit,
//! grant expiry or revocation, kill, upstream loss or shutdown. [`cancel`] maps client-facing
//! cancel keys to upstream backends. [`wire`] holds the protocol pieces.
//!
//! The proxy sees the rest of timebox only through [`ProxyContext`], built by `app.rs`: it never
//! imports the application state or the admin API.

pub mod auth;
pub mod cancel;
pub mod intercept;
pub(crate) mod login;
pub(crate) mod relay;
pub use relay::quota::GrantUsage;
pub mod scram;
pub mod session;
pub mod startup;
pub mod stream;
pub mod target_catalog;
pub mod tls;
pub mod upstream;
pub mod upstream_cancel;
pub mod wire;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::AuditLog;
use crate::clock::Clock;
use crate::config::{ClientTls, Config};
use crate::grants::{Grant, GrantService};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("client TLS setup failed: {0}")]
    ClientTls(#[source] tls::TlsError),
    #[error("upstream TLS setup for target {target:?} failed: {source}")]
    UpstreamTls {
        target: String,
        #[source]
        source: tls::TlsError,
    },
    /// The proxy or admin listener task panicked or was cancelled.
    #[error("task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

/// Distinct statement texts whose classification is cached (shared by all sessions).
const CLASSIFY_CACHE_ENTRIES: usize = 16_384;

/// State shared by all proxy sessions.
#[derive(Debug)]
pub struct ProxyState {
    /// Client-facing TLS (absent when `proxy.tls = "disabled"`).
    pub tls: Option<tls::ServerTls>,
    /// Upstream TLS per target name (`None` for `tls = "disable"`).
    pub upstream_tls: HashMap<String, Option<Arc<rustls::ClientConfig>>>,
    pub cancel_keys: Arc<cancel::CancelKeys>,
    /// CancelRequests in flight per target server (`proxy.cancel_parallelism_per_target`), so
    /// neither a mass expiry nor a client storms a target.
    pub cancel_limits: cancel::CancelLimits,
    pub sessions: SessionRegistry,
    pub auth_throttle: auth::AuthThrottle,
    /// Prometheus metrics of this instance.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Statement policy per role name.
    pub policies: HashMap<String, Arc<crate::policy::RolePolicy>>,
    /// Classifications by statement text, shared by all sessions.
    pub classify_cache: Arc<crate::policy::ClassifyCache>,
    /// Upstream SCRAM salted passwords, so PBKDF2 runs once per upstream role, not per connection.
    pub salted_passwords: scram::SaltedPasswordCache,
    /// What each target's catalog says about function names, read once per server version.
    pub target_catalogs: target_catalog::TargetCatalogs,
    /// Each (target, role)'s masked column identities, for roles with `mask`.
    pub mask_catalogs: target_catalog::MaskCatalogs,
    /// `timebox_masked_values_total`, `timebox_masking_denials_total`.
    pub masking_metrics: crate::metrics::MaskingMetrics,
    /// Big statements prechecked on the blocking pool at once, over all sessions (one per CPU), so
    /// a flood of huge statements cannot take every blocking thread.
    pub precheck_permits: Arc<Semaphore>,
    /// One permit per authenticated client connection (`proxy.max_connections`).
    connections: Arc<Semaphore>,
    /// One permit per connection that has not finished authenticating
    /// (`proxy.max_unauthenticated`): a pool of its own, so clients that never log in cannot take
    /// the slots of engineers who do.
    unauthenticated: Arc<Semaphore>,
    /// The same connections counted per client address
    /// (`proxy.max_unauthenticated_per_address`), so one address cannot fill that pool.
    unauthenticated_by_address: Arc<AddressCounts>,
    /// One permit per auditor query running on `timebox_audit` (each may hold up to
    /// `columns × value cap` in SQLite): bounds the endpoint's memory on the whole instance.
    pub audit_queries: Arc<Semaphore>,
    /// Connection tasks, so shutdown can wait for them.
    tasks: TaskTracker,
    /// Result bytes per grant on this instance (`max_result_bytes_per_grant`).
    pub grant_result_bytes: GrantUsage,
}

impl ProxyState {
    pub fn new(config: &Config) -> Result<Self, ProxyError> {
        let tls = match (config.proxy.tls, &config.proxy.tls_cert, &config.proxy.tls_key) {
            (ClientTls::Disabled, _, _) => None,
            (_, Some(cert), Some(key)) => {
                Some(tls::ServerTls::load(cert, key).map_err(ProxyError::ClientTls)?)
            }
            _ => None,
        };
        let mut upstream_tls = HashMap::new();
        for (name, target) in &config.targets {
            let client = tls::upstream_client_config(target).map_err(|source| ProxyError::UpstreamTls {
                target: name.clone(),
                source,
            })?;
            upstream_tls.insert(name.clone(), client);
        }
        let metrics = Arc::new(crate::metrics::Metrics::new()?);
        let masking_metrics = crate::metrics::MaskingMetrics::register(&metrics)?;
        Ok(ProxyState {
            tls,
            upstream_tls,
            cancel_keys: Arc::new(cancel::CancelKeys::default()),
            cancel_limits: cancel::CancelLimits::new(config.proxy.cancel_parallelism_per_target),
            sessions: SessionRegistry::default(),
            auth_throttle: auth::AuthThrottle::new(auth::ThrottleLimits {
                per_user_and_address: config.proxy.auth_failures_per_minute,
                per_address: config.proxy.auth_failures_per_address_per_minute,
                global: config.proxy.auth_failures_global_per_minute,
            }),
            classify_cache: Arc::new(crate::policy::ClassifyCache::counting(
                CLASSIFY_CACHE_ENTRIES,
                metrics.classify_shape_hits_total.clone(),
            )),
            metrics,
            policies: config
                .roles
                .iter()
                .map(|(name, role)| (name.clone(), Arc::new(crate::policy::RolePolicy::from_role(role))))
                .collect(),
            salted_passwords: scram::SaltedPasswordCache::default(),
            target_catalogs: target_catalog::TargetCatalogs::default(),
            mask_catalogs: target_catalog::MaskCatalogs::default(),
            masking_metrics,
            precheck_permits: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            connections: Arc::new(Semaphore::new(config.proxy.max_connections)),
            unauthenticated: Arc::new(Semaphore::new(config.proxy.max_unauthenticated)),
            unauthenticated_by_address: Arc::new(AddressCounts::default()),
            audit_queries: Arc::new(Semaphore::new(crate::auditsql::QUERIES_AT_ONCE)),
            tasks: TaskTracker::new(),
            grant_result_bytes: GrantUsage::default(),
        })
    }
}

impl ProxyState {
    /// A slot for a connection that has not authenticated yet, or the FATAL 53300 to send it after
    /// its startup packet.
    fn unauthenticated_slot(&self, config: &Config, ip: IpAddr) -> Result<PreAuthSlot, wire::PgError> {
        let limit = config.proxy.max_unauthenticated_per_address;
        let Some(address) = self.unauthenticated_by_address.try_acquire(ip, limit) else {
            return Err(wire::PgError::too_many_unauthenticated_from_address(limit));
        };
        let pool = self
            .unauthenticated
            .clone()
            .try_acquire_owned()
            .map_err(|_| wire::PgError::too_many_unauthenticated(config.proxy.max_unauthenticated))?;
        Ok(PreAuthSlot {
            _pool: pool,
            _address: address,
        })
    }

    /// A slot among `proxy.max_connections` for a client that has just authenticated, or the
    /// FATAL 53300 to send it. Held until the session ends.
    pub(crate) fn admit(&self, limit: usize) -> Result<OwnedSemaphorePermit, wire::PgError> {
        self.connections
            .clone()
            .try_acquire_owned()
            .map_err(|_| wire::PgError::too_many_clients(limit))
    }
}

/// Serves one connection to the auditors' SQL endpoint (`dbname=timebox_audit`), after its
/// startup packet: the client, its startup parameters and TLS, its address, the startup deadline
/// and its slot among unauthenticated connections. Provided by `app.rs`.
pub type AuditEndpoint = Arc<
    dyn Fn(
            stream::ClientStream,
            startup::ClientParams,
            Option<startup::ClientTlsInfo>,
            SocketAddr,
            tokio::time::Instant,
            PreAuthSlot,
        ) -> futures::future::BoxFuture<'static, ()>
        + Send
        + Sync,
>;

/// What the proxy needs from the rest of timebox (and nothing more): built by `app.rs`.
pub struct ProxyContext {
    pub config: Arc<Config>,
    /// Grants by token verifier, and their watches (revocation, extension).
    pub grants: GrantService,
    pub clock: Arc<dyn Clock>,
    /// Every session start, statement, outcome and end is recorded here.
    pub audit: AuditLog,
    /// Cancelled when the instance shuts down.
    pub shutdown: CancellationToken,
    /// The proxy's own shared state (sessions, limits, caches, metrics).
    pub proxy: Arc<ProxyState>,
    /// Where connections to `dbname=timebox_audit` go.
    pub audit_endpoint: AuditEndpoint,
    /// With a fleet: forwards CancelRequests for other instances' sessions (issue 11 item 4).
    pub cancel_forward: Option<Arc<crate::fleet::cancel::CancelForwarder>>,
}

impl std::fmt::Debug for ProxyContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyContext").finish_non_exhaustive()
    }
}

/// Accepts clients until shutdown, then waits (bounded) for their sessions to end.
pub async fn serve(state: Arc<ProxyContext>, listener: TcpListener) -> Result<(), ProxyError> {
    let shutdown = state.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: keep serving those already connected.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Until it authenticates, a connection holds a slot of the unauthenticated pool only.
        let unauthenticated = state.proxy.unauthenticated_slot(&state.config, peer.ip());
        let st = state.clone();
        state
            .proxy
            .tasks
            .spawn(session::handle_connection(st, tcp, peer, unauthenticated));
    }
    drop(listener);
    state.proxy.tasks.close();
    let limit = state.config.proxy.shutdown_grace + Duration::from_secs(2);
    if tokio::time::timeout(limit, state.proxy.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = state.proxy.tasks.len(),
            "sessions still open after the shutdown grace period"
        );
    }
    Ok(())
}

/// A connection's place among those still logging in; given back when dropped.
#[derive(Debug)]
pub struct PreAuthSlot {
    _pool: OwnedSemaphorePermit,
    _address: AddressSlot,
}

/// Connections per client address (unauthenticated ones).
#[derive(Debug, Default)]
pub struct AddressCounts {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl AddressCounts {
    /// Counts one more connection from `ip`, unless it already has `limit`.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<AddressSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            counts: self.clone(),
            ip,
        })
    }

    /// Connections counted for `ip` now.
    pub fn get(&self, ip: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&ip).copied().unwrap_or(0)
    }
}

/// One counted connection of an [`AddressCounts`]; uncounted when dropped.
#[derive(Debug)]
pub struct AddressSlot {
    counts: Arc<AddressCounts>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Live sessions, for listing and killing them.
#[derive(Debug, Default)]
pub struct SessionRegistry {
    sessions: DashMap<u64, Arc<SessionHandle>>,
    /// Woken on every register and remove, so the fleet sync writes the change to the store at
    /// once rather than at the next heartbeat.
    changed: tokio::sync::Notify,
}

impl SessionRegistry {
    pub fn register(
        &self,
        grant: &Grant,
        client_addr: SocketAddr,
        tls_version: Option<String>,
        application_name: Option<String>,
    ) -> Arc<SessionHandle> {
        // Random, so session ids in the audit trail never repeat across restarts.
        let id = loop {
            let id: u64 = rand::random();
            if id != 0 && !self.sessions.contains_key(&id) {
                break id;
            }
        };
        let handle = Arc::new(SessionHandle {
            id,
            user: grant.user.clone(),
            target: grant.target.clone(),
            role: grant.role.clone(),
            grant_id: grant.id.clone(),
            client_addr,
            tls_version,
            application_name,
            started_at: Utc::now(),
            bytes_from_client: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            statements: AtomicU64::new(0),
            kill: CancellationToken::new(),
            kill_reason: Mutex::new(None),
            notices: Mutex::new(Vec::new()),
            notice_wake: tokio::sync::Notify::new(),
        });
        self.sessions.insert(id, handle.clone());
        self.changed.notify_one();
        handle
    }

    pub fn remove(&self, id: u64) {
        self.sessions.remove(&id);
        self.changed.notify_one();
    }

    /// Resolves after the next register or remove (or at once if one happened since the last call).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Looks a session up by its [`SessionHandle::name`].
    pub fn by_name(&self, name: &str) -> Option<Arc<SessionHandle>> {
        let id = u64::from_str_radix(name.strip_prefix("s_")?, 16).ok()?;
        self.get(id)
    }

    pub fn get(&self, id: u64) -> Option<Arc<SessionHandle>> {
        self.sessions.get(&id).map(|e| e.value().clone())
    }

    pub fn list(&self) -> Vec<Arc<SessionHandle>> {
        let mut all: Vec<_> = self.sessions.iter().map(|e| e.value().clone()).collect();
        all.sort_by_key(|s| s.id);
        all
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

/// A live session as the rest of timebox sees it.
#[derive(Debug)]
pub struct SessionHandle {
    pub id: u64,
    pub user: String,
    pub target: String,
    pub role: String,
    pub grant_id: String,
    pub client_addr: SocketAddr,
    pub tls_version: Option<String>,
    /// The client's own `application_name`, as it sent it (for the fleet's session list).
    pub application_name: Option<String>,
    pub started_at: DateTime<Utc>,
    bytes_from_client: AtomicU64,
    bytes_to_client: AtomicU64,
    statements: AtomicU64,
    /// Cancelled to sever the session (kill).
    kill: CancellationToken,
    kill_reason: Mutex<Option<String>>,
    /// NOTICE texts for the client from outside the relay (the fleet's store-outage warning),
    /// queued by [`SessionHandle::notify_client`] until the relay loop takes them.
    notices: Mutex<Vec<String>>,
    notice_wake: tokio::sync::Notify,
}

/// Counters of a session.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct SessionStats {
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    pub statements: u64,
}

impl SessionHandle {
    /// The session id as shown in logs, the audit trail and the API (`s_` + 16 hex digits).
    pub fn name(&self) -> String {
        format!("s_{:016x}", self.id)
    }

    pub(crate) fn add_from_client(&self, n: u64) {
        self.bytes_from_client.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_to_client(&self, n: u64) {
        self.bytes_to_client.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_statement(&self) {
        self.statements.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> SessionStats {
        SessionStats {
            bytes_from_client: self.bytes_from_client.load(Ordering::Relaxed),
            bytes_to_client: self.bytes_to_client.load(Ordering::Relaxed),
            statements: self.statements.load(Ordering::Relaxed),
        }
    }

    /// Severs the session; `by` and `reason` are shown to the engineer.
    pub fn kill(&self, by: &str, reason: &str) {
        let text = if reason.is_empty() {
            by.to_owned()
        } else {
            format!("{by} ({reason})")
        };
        *self.kill_reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
        self.kill.cancel();
    }

    pub(crate) fn kill_token(&self) -> CancellationToken {
        self.kill.clone()
    }

    pub(crate) fn kill_reason(&self) -> Option<String> {
        self.kill_reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Queues a NOTICE for the client; the relay sends it between backend frames.
    pub fn notify_client(&self, text: String) {
        self.notices.lock().unwrap_or_else(|e| e.into_inner()).push(text);
        self.notice_wake.notify_one();
    }

    /// Waits for queued notices and takes them. Cancel-safe (for `select!`).
    pub(crate) async fn next_notices(&self) -> Vec<String> {
        loop {
            let taken = std::mem::take(&mut *self.notices.lock().unwrap_or_else(|e| e.into_inner()));
            if !taken.is_empty() {
                return taken;
            }
            self.notice_wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_counts_are_per_address_and_given_back_on_drop() {
        let counts = Arc::new(AddressCounts::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = counts.try_acquire(a, 2).unwrap();
        let second = counts.try_acquire(a, 2).unwrap();
        assert!(counts.try_acquire(a, 2).is_none(), "limit per address");
        assert!(counts.try_acquire(b, 2).is_some(), "another address");
        drop(first);
        assert_eq!(counts.get(a), 1);
        let _third = counts.try_acquire(a, 2).expect("a slot was given back");
        drop(second);
        assert_eq!(counts.get(b), 0, "entries go away at zero");
    }
}
