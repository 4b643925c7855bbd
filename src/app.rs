//! Builds the shared state and runs the proxy and admin listeners until shutdown.
//!
//! `run` takes its config, already-bound listeners and a shutdown future as arguments, so tests start
//! real instances on `127.0.0.1:0` in parallel in one process. Shutdown: stop accepting, tell every
//! session (idle ones end at once, busy ones get `proxy.shutdown_grace`), then force; last, the audit
//! writer flushes what is queued and stops.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditError, AuditLog, AuditOptions, AuditWriterHandle};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::grants::effects::Effects;
use crate::grants::requests::RequestService;
use crate::grants::GrantService;
use crate::proxy::{self, ProxyContext, ProxyError, ProxyState};
use crate::store::{Store, StoreError};
use crate::webhooks::Webhooks;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
    #[error("admin listener failed: {0}")]
    Admin(#[source] std::io::Error),
    #[error(transparent)]
    Mirror(#[from] crate::auditsql::mirror::MirrorError),
}

/// State shared by the proxy sessions and the admin API.
#[derive(Debug)]
pub struct AppState {
    pub config: Arc<Config>,
    pub grants: GrantService,
    pub clock: Arc<dyn Clock>,
    /// Proxy-side state: TLS, live sessions, cancel keys, limits.
    pub proxy: Arc<ProxyState>,
    /// Cancelled when the instance shuts down.
    pub shutdown: CancellationToken,
    /// The proxy's bound address (known once `run` starts), for connection hints.
    pub proxy_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// The audit trail every session and grant change is recorded in.
    pub audit: AuditLog,
    /// The audit writer, taken and shut down by `run` once the proxy has drained.
    pub audit_writer: std::sync::Mutex<Option<AuditWriterHandle>>,
    /// Access requests (and the in-memory tokens of approved ones not yet fetched).
    pub requests: RequestService,
    /// Notification dispatcher; its delivery task is started by `run`.
    pub webhooks: Arc<Webhooks>,
    /// This instance's membership of the fleet (`Some` with a PostgreSQL store); its loops are
    /// started by `run`.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
    /// One role review or policy replay at a time per instance (each reads the whole window).
    pub review_slot: Arc<tokio::sync::Semaphore>,
    /// Admin-API tokens kept in the store (checked after the config's, by [`crate::admin::auth`]).
    pub admin_tokens: crate::grants::admin_tokens::AdminTokenService,
    /// Central audit (`Some` with a PostgreSQL store): ships this instance's records and answers
    /// fleet-wide audit reads; its shipper is started by `run`.
    pub central_audit: Option<Arc<crate::audit::ship::CentralAudit>>,
    /// The fleet mirror (`Some` with central audit): the other instances' records for the
    /// auditors' SQL endpoint; its task is started by `run`.
    pub fleet_mirror: Option<Arc<crate::auditsql::mirror::FleetMirror>>,
}

impl AppState {
    /// Opens the store the config names and prepares TLS.
    pub fn build(config: Config) -> Result<Arc<AppState>, AppError> {
        let store = Store::open(&config.store)?;
        Self::build_with(config, store, Arc::new(SystemClock))
    }

    pub fn build_with(
        config: Config,
        store: Store,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<AppState>, AppError> {
        let config = Arc::new(config);
        let proxy = Arc::new(ProxyState::new(&config)?);
        let webhooks = Arc::new(Webhooks::new(config.webhooks.clone(), proxy.metrics.clone()));
        let (audit, audit_writer) = AuditLog::open_with(AuditOptions {
            clock: clock.clone(),
            ..AuditOptions::from_config(&config.audit, &config.store)
        })?;
        // Grant and request changes are recorded and announced by the services themselves.
        let effects = Effects::new(audit.clone(), webhooks.clone(), clock.clone());
        let grants = GrantService::new(store.clone(), config.clone(), clock.clone(), effects);
        let admin_tokens = crate::grants::admin_tokens::AdminTokenService::new(
            store.clone(),
            config.clone(),
            clock.clone(),
            grants.effects().clone(),
        );
        let fleet = match (&config.fleet, &config.store, store.postgres_store()) {
            (Some(fleet), crate::config::StoreConfig::Postgres(pg), Some(pg_store)) => {
                Some(Arc::new(crate::fleet::Fleet::new(
                    fleet.clone(),
                    pg_store.clone(),
                    (**pg).clone(),
                    proxy.metrics.clone(),
                )))
            }
            _ => None,
        };
        let central_audit = match (&config.fleet, store.postgres_store()) {
            (Some(fleet), Some(pg_store)) => Some(crate::audit::ship::CentralAudit::new(
                fleet.instance.clone(),
                pg_store.clone(),
                proxy.metrics.clone(),
            )),
            _ => None,
        };
        let fleet_mirror = match (&central_audit, audit.db_path()) {
            (Some(central), Some(index)) => Some(crate::auditsql::mirror::FleetMirror::open(
                central.instance().to_owned(),
                central.store().clone(),
                index.with_file_name(crate::auditsql::mirror::MIRROR_FILE_NAME),
                config.audit.retain,
                clock.clone(),
                proxy.metrics.clone(),
            )?),
            _ => None,
        };
        let requests = RequestService::new(store, grants.clone(), config.clone(), clock.clone());
        Ok(Arc::new(AppState {
            config,
            grants,
            clock,
            proxy,
            shutdown: CancellationToken::new(),
            proxy_addr: std::sync::OnceLock::new(),
            audit,
            audit_writer: std::sync::Mutex::new(Some(audit_writer)),
            requests,
            webhooks,
            fleet,
            review_slot: Arc::new(tokio::sync::Semaphore::new(1)),
            admin_tokens,
            central_audit,
            fleet_mirror,
        }))
    }
}

/// The listeners an instance serves; bind them first (port 0 in tests) and read their addresses.
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        Ok(Listeners {
            proxy: TcpListener::bind(config.proxy.listen).await?,
            admin: TcpListener::bind(config.admin.listen).await?,
        })
    }
}

/// The narrow state the proxy runs on; connections to the auditors' endpoint are handed back to
/// [`crate::auditsql`] with the whole application state.
fn proxy_context(state: &Arc<AppState>) -> Arc<ProxyContext> {
    let app = state.clone();
    let audit_endpoint: proxy::AuditEndpoint =
        Arc::new(move |client, params, tls, peer, deadline, unauthenticated| {
            let pre_auth = crate::auditsql::PreAuth {
                deadline,
                unauthenticated,
            };
            Box::pin(crate::auditsql::serve(
                app.clone(),
                client,
                params,
                tls,
                peer,
                pre_auth,
            ))
        });
    Arc::new(ProxyContext {
        config: state.config.clone(),
        grants: state.grants.clone(),
        clock: state.clock.clone(),
        audit: state.audit.clone(),
        shutdown: state.shutdown.clone(),
        proxy: state.proxy.clone(),
        audit_endpoint,
        cancel_forward: state.fleet.as_ref().map(|f| f.cancel_forwarder()),
    })
}

/// Runs until `shutdown` resolves, then drains sessions (see module docs) and returns.
pub async fn run(
    state: Arc<AppState>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AppError> {
    if let Ok(addr) = listeners.proxy.local_addr() {
        let _ = state.proxy_addr.set(addr);
    }
    let bench = state.config.bench;
    if bench.any() {
        let mut off = Vec::new();
        if bench.skip_policy() {
            off.push("statements are NOT checked against policy");
        }
        if bench.skip_audit() {
            off.push("statements are NOT audited");
        }
        tracing::warn!(
            skip_policy = bench.skip_policy(),
            skip_audit = bench.skip_audit(),
            "BENCHMARK KNOBS ON ([bench] in the config of a --features bench-knobs build): {}. \
             For benchmarks only: never let real users connect to this instance",
            off.join(" and ")
        );
    }
    if let Some(fleet) = &state.fleet {
        fleet.register(&state).await?;
    }
    let admin_router = crate::admin::router(state.clone());
    let admin_shutdown = state.shutdown.clone();
    let admin_limits = crate::admin::server::AdminLimits::from(&state.config.admin);
    let admin = tokio::spawn(crate::admin::server::serve(
        listeners.admin,
        admin_router,
        admin_limits,
        admin_shutdown,
    ));
    let context = proxy_context(&state);
    // Masked roles' catalog copies, read now so renames are followed from the start (s8).
    let prefetch = tokio::spawn(crate::proxy::relay::mask::prefetch_masks(context.clone()));
    let proxy = tokio::spawn(proxy::serve(context, listeners.proxy));
    let webhooks = tokio::spawn(state.webhooks.clone().run(state.shutdown.clone()));
    let expiry = tokio::spawn(expiry_task(state.clone()));
    let fleet = state
        .fleet
        .clone()
        .map(|fleet| tokio::spawn(fleet.run(state.clone())));

    let shipper = state
        .central_audit
        .clone()
        .map(|central| tokio::spawn(central.run(state.audit.clone(), state.shutdown.clone())));
    let mirror = state
        .fleet_mirror
        .clone()
        .map(|mirror| tokio::spawn(mirror.run(state.shutdown.clone())));
    let retention = state.config.audit.retain.map(|retain| {
        tokio::spawn(crate::audit::retention::run(
            state.audit.clone(),
            state.central_audit.clone(),
            retain,
            state.clock.clone(),
            state.shutdown.clone(),
        ))
    });

    shutdown.await;
    tracing::info!("shutting down: closing listeners and draining sessions");
    state.shutdown.cancel();
    // A catalog read still running (a target slow to answer) is not waited for.
    prefetch.abort();
    let proxy_result = proxy.await.map_err(ProxyError::Task)?;
    let admin_result = admin.await.map_err(ProxyError::Task)?;
    let _ = expiry.await;
    if let Some(fleet) = fleet {
        let _ = fleet.await;
    }
    let _ = webhooks.await;
    for task in [shipper, retention, mirror].into_iter().flatten() {
        let _ = task.await;
    }
    let audit_writer = state
        .audit_writer
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(writer) = audit_writer {
        writer.shutdown().await;
    }
    proxy_result?;
    admin_result.map_err(AppError::Admin)?;
    Ok(())
}

/// How often pending requests are checked for expiry (and grant expiries announced).
const EXPIRY_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// Until shutdown: marks overdue access requests expired (the request service records and announces
/// them) and announces expired grants to the webhooks. Store failures are logged and retried on the
/// next tick.
async fn expiry_task(state: Arc<AppState>) {
    use crate::webhooks::{Notification, WebhookEvent};
    let wants_grant_expiry = state
        .config
        .webhooks
        .iter()
        .any(|w| w.wants(WebhookEvent::GrantExpired));
    let mut last = state.clock.now();
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = state.requests.expire_due().await {
            tracing::warn!(error = %e, "could not expire access requests");
        }
        if wants_grant_expiry {
            let now = state.clock.now();
            match state.grants.store().grants_expired_between(last, now).await {
                Ok(grants) => {
                    last = now;
                    for g in grants {
                        state.webhooks.notify(Notification::new(
                            WebhookEvent::GrantExpired,
                            format!(
                                "Grant {} for {} on {} ({}) expired",
                                g.id, g.user, g.target, g.role
                            ),
                            serde_json::json!({ "grant": g }),
                            now,
                        ));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not look for expired grants"),
            }
        }
    }
}
