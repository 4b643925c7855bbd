//! The fleet: several timebox instances sharing one PostgreSQL store (issue 11 items 2 and 3).
//!
//! Where it sits: [`crate::app::run`] registers this instance ([`Fleet::register`]) before serving
//! and runs [`Fleet::run`] beside the listeners. Three loops:
//! - **sync**: heartbeats this instance's row and writes its live sessions to the store, at once on
//!   every session start and end ([`crate::proxy::SessionRegistry::changed`]) and at least every
//!   `heartbeat_interval`;
//! - **listen**: a dedicated store connection (`application_name` `timebox-listen:<instance>`)
//!   `LISTEN`s on [`CHANNEL`]; a grant change re-reads the grant and publishes it to the local
//!   [`crate::grants::watch::GrantWatches`] (the relay loop re-checks it with the function that
//!   admitted the session), a kill request for a local session severs it;
//! - **reconcile**: every `reconcile_interval`, re-reads the grant of every live local session and
//!   the kill requests for them, so a lost notification or a dropped listener connection cannot
//!   leave a revoked grant's session alive longer than that.
//!
//! Cancel requests for another instance's session are forwarded by [`cancel`] (the peer id this
//! instance gets when it registers is in every cancel key it hands out).
//!
//! Store outage: while the reconcile fails, `timebox_store_up` is 0; past half of `max_staleness`
//! every local session gets a NOTICE ([`stale_notice`]); past `max_staleness` without
//! a successful one, every local session is severed (FATAL 57P01 saying why), and logins fail
//! closed with 08006 ([`crate::proxy::wire::PgError::store_unreachable`]). Nothing needs a restart
//! when the store returns: the pool reconnects, the listener reconnects and catches up.
//!
//! What it must never do: decide a session's fate from anything but the store's current row (a
//! notification only says *what* to re-read), carry a secret in a notification, or run a session
//! on a grant it could not re-read without saying so in the logs.

pub mod cancel;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_postgres::AsyncMessage;

use crate::app::AppState;
use crate::config::{FleetConfig, PostgresStoreConfig};
use crate::store::postgres::fleet::{Change, InstanceRow, Registered, Registration, SessionRow, CHANNEL};
use crate::store::postgres::PgStore;
use crate::store::StoreError;

/// How long `DELETE /v1/sessions/{id}` waits for another instance to confirm it severed its session.
pub const KILL_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the listener waits before reconnecting after its connection failed.
const LISTEN_RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "another live instance is registered as {0:?} in the store: give each instance its own [fleet] instance"
    )]
    NameInUse(String),
    #[error("the store's notification connection failed: {}", crate::store::pg_text(.0))]
    Listen(#[source] tokio_postgres::Error),
    #[error("the store's notification connection closed")]
    ListenClosed,
    #[error(
        "the fleet is full: all {} peer ids are held by live instances",
        cancel::MAX_PEER_ID
    )]
    Full,
}

/// This instance's membership of the fleet. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Fleet {
    config: FleetConfig,
    store: Arc<PgStore>,
    store_config: PostgresStoreConfig,
    incarnation: String,
    started_at: chrono::DateTime<chrono::Utc>,
    /// Set by [`Fleet::register`] (the advertised address needs the bound proxy port).
    registration: std::sync::OnceLock<Registration>,
    /// When the grants of the local sessions were last re-read successfully.
    last_reconcile: Mutex<Option<Instant>>,
    /// When this instance started (the staleness clock's origin before the first reconcile).
    started: Instant,
    /// Forwards CancelRequests for other instances' sessions; knows this instance's peer id.
    forwarder: Arc<cancel::CancelForwarder>,
    /// Whether the live sessions were warned of this store outage already (reset on recovery).
    stale_warned: AtomicBool,
}

/// How long the local sessions' grant state has gone unconfirmed, if that is past `max`
/// (`[fleet] max_staleness`): those sessions must be severed. Pure.
pub fn stale_for(last_ok: Instant, now: Instant, max: Duration) -> Option<Duration> {
    let age = now.saturating_duration_since(last_ok);
    (age > max).then_some(age)
}

/// What a session severed for staleness is told (after "session killed by timebox"). Pure.
pub fn stale_reason(age: Duration, max: Duration) -> String {
    format!(
        "its grant's state is unknown: the store has not answered for {}s, past [fleet] max_staleness of {}",
        age.as_secs(),
        humantime::format_duration(max)
    )
}

/// When the local sessions' grant state is `age` old and past half of `max` (but not past `max`):
/// how long until they are severed, so they can be warned once. Pure.
pub fn stale_warning_due(age: Duration, max: Duration) -> Option<Duration> {
    (age > max / 2 && age <= max).then(|| max - age)
}

/// The NOTICE a live session gets when the store has been unreachable for half of
/// `max_staleness`. Pure.
pub fn stale_notice(closes_in: Duration) -> String {
    format!(
        "timebox cannot reach its store; this session will be closed in {} s unless it recovers",
        closes_in.as_secs().max(1)
    )
}

/// The advertised address: the configured one, else the proxy's bound address. Pure.
pub fn advertise_address(configured: Option<&str>, bound: Option<std::net::SocketAddr>) -> String {
    match (configured, bound) {
        (Some(a), _) => a.to_owned(),
        (None, Some(addr)) => addr.to_string(),
        (None, None) => "unknown".into(),
    }
}

impl Fleet {
    pub fn new(
        config: FleetConfig,
        store: Arc<PgStore>,
        store_config: PostgresStoreConfig,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let mut bytes = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        let forwarder = Arc::new(cancel::CancelForwarder::new(
            store.clone(),
            config.instance_timeout,
            metrics,
        ));
        Fleet {
            forwarder,
            stale_warned: AtomicBool::new(false),
            config,
            store,
            store_config,
            incarnation: hex::encode(bytes),
            started_at: chrono::Utc::now(),
            registration: std::sync::OnceLock::new(),
            last_reconcile: Mutex::new(None),
            started: Instant::now(),
        }
    }

    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.config.instance
    }

    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// The forwarder of CancelRequests for other instances' sessions (for the proxy).
    pub fn cancel_forwarder(&self) -> Arc<cancel::CancelForwarder> {
        self.forwarder.clone()
    }

    /// This instance's peer id in cancel keys, once it has joined.
    pub fn peer_id(&self) -> Option<cancel::PeerId> {
        self.forwarder.own()
    }

    /// Time since the last successful reconcile (`None` before the first).
    pub fn reconcile_age(&self) -> Option<Duration> {
        self.last_reconcile
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|t| t.elapsed())
    }

    /// Registers this instance; refuses to start beside a live instance of the same name.
    pub async fn register(&self, state: &AppState) -> Result<(), FleetError> {
        let registration = self.registration.get_or_init(|| Registration {
            name: self.config.instance.clone(),
            incarnation: self.incarnation.clone(),
            advertise: advertise_address(self.config.advertise.as_deref(), state.proxy_addr.get().copied()),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: self.started_at,
        });
        let had = self.forwarder.own();
        let registered = self
            .store
            .bounded(
                self.store
                    .register_instance(registration, had, self.config.instance_timeout),
            )
            .await?;
        let peer = match registered {
            Registered::Joined(peer) => peer,
            Registered::NameInUse => return Err(FleetError::NameInUse(registration.name.clone())),
            Registered::Full => return Err(FleetError::Full),
        };
        if had.is_some_and(|had| had != peer) {
            // Keys handed out before carry the old id: their cancels reach nobody (never a wrong session).
            tracing::warn!(
                old = had,
                new = peer,
                "this instance's peer id changed; cancels of older sessions are lost"
            );
        }
        self.forwarder.set_own(peer);
        state.proxy.cancel_keys.set_peer(peer);
        tracing::info!(instance = %registration.name, advertise = %registration.advertise, peer_id = peer, "joined the fleet");
        Ok(())
    }

    /// Runs the sync, listen and reconcile loops until shutdown, then leaves the fleet.
    pub async fn run(self: Arc<Self>, state: Arc<AppState>) {
        let sync = tokio::spawn(self.clone().sync_loop(state.clone()));
        let listen = tokio::spawn(self.clone().listen_loop(state.clone()));
        let reconcile = tokio::spawn(self.clone().reconcile_loop(state.clone()));
        let _ = tokio::join!(sync, listen, reconcile);
        if let Some(r) = self.registration.get() {
            if let Err(e) = self.store.bounded(self.store.deregister_instance(r)).await {
                tracing::warn!(error = %e, "could not leave the fleet (peers will time this instance out)");
            }
        }
    }

    /// The live sessions of the fleet (of live instances).
    pub async fn sessions(&self, id: Option<&str>) -> Result<Vec<SessionRow>, StoreError> {
        self.store
            .bounded(self.store.list_sessions(self.config.instance_timeout, id))
            .await
    }

    pub async fn instances(&self) -> Result<Vec<InstanceRow>, StoreError> {
        self.store
            .bounded(self.store.list_instances(self.config.instance_timeout))
            .await
    }

    /// Asks the owner of a session held by another instance to sever it, and waits up to
    /// [`KILL_CONFIRM_TIMEOUT`] for its row to go. `None` if no live instance holds it; else the
    /// session and whether the owner confirmed.
    pub async fn kill_remote(
        &self,
        id: &str,
        by: &str,
        reason: &str,
    ) -> Result<Option<(SessionRow, bool)>, StoreError> {
        let Some(row) = self.sessions(Some(id)).await?.pop() else {
            return Ok(None);
        };
        let owner = self
            .store
            .bounded(
                self.store
                    .request_kill(id, by, reason, self.config.instance_timeout),
            )
            .await?;
        if owner.is_none() {
            return Ok(None);
        }
        let deadline = Instant::now() + KILL_CONFIRM_TIMEOUT;
        while Instant::now() < deadline {
            if self.sessions(Some(id)).await?.is_empty() {
                return Ok(Some((row, true)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Some((row, false)))
    }

    fn local_rows(&self, state: &AppState) -> Vec<SessionRow> {
        state
            .proxy
            .sessions
            .list()
            .iter()
            .map(|s| SessionRow {
                id: s.name(),
                instance: self.config.instance.clone(),
                grant_id: s.grant_id.clone(),
                user: s.user.clone(),
                target: s.target.clone(),
                role: s.role.clone(),
                client_addr: s.client_addr.to_string(),
                started_at: s.started_at,
                application_name: s.application_name.clone(),
            })
            .collect()
    }

    async fn sync_loop(self: Arc<Self>, state: Arc<AppState>) {
        let Some(registration) = self.registration.get() else {
            return;
        };
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => return,
                _ = tick.tick() => {}
                _ = state.proxy.sessions.changed() => {}
            }
            let rows = self.local_rows(&state);
            match self
                .store
                .bounded(self.store.sync_instance(registration, &rows))
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!("this instance's store row was taken over; registering again");
                    if let Err(e) = self.register(&state).await {
                        tracing::error!(error = %e, "cannot register this instance again");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "fleet heartbeat failed"),
            }
        }
    }

    async fn listen_loop(self: Arc<Self>, state: Arc<AppState>) {
        loop {
            let result = tokio::select! {
                _ = state.shutdown.cancelled() => return,
                r = self.listen_once(&state) => r,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "fleet notifications interrupted; reconnecting (the reconcile covers the gap)");
            }
            tokio::select! {
                _ = state.shutdown.cancelled() => return,
                _ = tokio::time::sleep(LISTEN_RETRY) => {}
            }
        }
    }

    /// One listener connection's life: connect, `LISTEN`, catch up, then apply notifications until
    /// the connection fails.
    async fn listen_once(&self, state: &AppState) -> Result<(), FleetError> {
        let (mut pg, tls) = crate::store::postgres::driver_config(&self.store_config)?;
        pg.application_name(format!("timebox-listen:{}", self.config.instance));
        let timeout = self.store_config.connect_timeout;
        let (client, mut connection) = tokio::time::timeout(timeout, pg.connect(tls))
            .await
            .map_err(|_| StoreError::Timeout(timeout))?
            .map_err(StoreError::Connect)?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.send(n.payload().to_owned()).is_err() {
                            return Ok(());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        });
        let listening = client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(FleetError::Listen);
        if let Err(e) = listening {
            driver.abort();
            return Err(e);
        }
        // Anything that changed while nobody listened.
        self.reconcile(state).await;
        while let Some(payload) = rx.recv().await {
            if let Some(sent) = Change::sent_at(&payload) {
                let lag = (chrono::Utc::now() - sent).to_std().unwrap_or_default();
                state
                    .proxy
                    .metrics
                    .fleet_notification_lag_seconds
                    .observe(lag.as_secs_f64());
            }
            match Change::parse(&payload) {
                Some(change) => self.apply(state, change).await,
                None => tracing::debug!(%payload, "ignoring an unknown fleet notification"),
            }
        }
        match driver.await {
            Ok(Err(e)) => Err(FleetError::Listen(e)),
            _ => Err(FleetError::ListenClosed),
        }
    }

    /// Acts on one notification: re-read what it names.
    async fn apply(&self, state: &AppState, change: Change) {
        match change {
            Change::Grant(id) => {
                if state.grants.watches().is_watched(&id) {
                    self.refresh_grant(state, &id).await;
                }
            }
            Change::Kill(id) => {
                if state.proxy.sessions.by_name(&id).is_some() {
                    if let Err(e) = self.act_on_kills(state).await {
                        tracing::warn!(error = %e, "cannot read kill requests (the reconcile retries)");
                    }
                }
            }
        }
    }

    async fn refresh_grant(&self, state: &AppState, id: &str) -> bool {
        match state.grants.get(id).await {
            Ok(grant) => {
                state.grants.watches().publish(&grant);
                true
            }
            Err(e) => {
                tracing::warn!(grant.id = %id, error = %e, "cannot re-read a live session's grant");
                false
            }
        }
    }

    /// Severs every local session the store holds a kill request for.
    async fn act_on_kills(&self, state: &AppState) -> Result<(), StoreError> {
        let requests = self
            .store
            .bounded(self.store.kill_requests(&self.config.instance))
            .await?;
        for k in requests {
            if let Some(session) = state.proxy.sessions.by_name(&k.session_id) {
                tracing::info!(session.id = %k.session_id, killed_by = %k.by, "session killed from another instance");
                session.kill(&k.by, &k.reason);
            }
        }
        Ok(())
    }

    /// Re-reads the grants of all live local sessions and the kill requests for them.
    async fn reconcile(&self, state: &AppState) {
        let mut ok = true;
        for id in state.grants.watches().watched_ids() {
            ok &= self.refresh_grant(state, &id).await;
        }
        if let Err(e) = self.act_on_kills(state).await {
            tracing::warn!(error = %e, "cannot read kill requests");
            ok = false;
        }
        state.proxy.metrics.store_up.set(i64::from(ok));
        let mut last = self.last_reconcile.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            *last = Some(Instant::now());
            self.stale_warned.store(false, Ordering::Relaxed);
            return;
        }
        let age = Instant::now().saturating_duration_since(last.unwrap_or(self.started));
        if let Some(closes_in) = stale_warning_due(age, self.config.max_staleness) {
            if !self.stale_warned.swap(true, Ordering::Relaxed) {
                for session in state.proxy.sessions.list() {
                    tracing::warn!(session.id = %session.name(), closes_in_secs = closes_in.as_secs(), "warning a session that the store is unreachable");
                    session.notify_client(stale_notice(closes_in));
                }
            }
        }
        let Some(age) = stale_for(
            last.unwrap_or(self.started),
            Instant::now(),
            self.config.max_staleness,
        ) else {
            return;
        };
        drop(last);
        for session in state.proxy.sessions.list() {
            tracing::warn!(session.id = %session.name(), stale_secs = age.as_secs(), "severing a session whose grant state is stale");
            state.proxy.metrics.fleet_stale_severed_total.inc();
            session.kill("timebox", &stale_reason(age, self.config.max_staleness));
        }
    }

    async fn reconcile_loop(self: Arc<Self>, state: Arc<AppState>) {
        let mut tick = tokio::time::interval(self.config.reconcile_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.reconcile(&state).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_go_stale_only_past_max_staleness() {
        let t0 = Instant::now();
        let max = Duration::from_secs(30);
        assert_eq!(stale_for(t0, t0, max), None);
        assert_eq!(
            stale_for(t0, t0 + max, max),
            None,
            "exactly at the bound is still fresh"
        );
        assert_eq!(
            stale_for(t0, t0 + Duration::from_secs(31), max),
            Some(Duration::from_secs(31))
        );
        assert_eq!(
            stale_for(t0 + max, t0, max),
            None,
            "a clock that went back is not stale"
        );
        assert_eq!(
            stale_reason(Duration::from_secs(31), max),
            "its grant's state is unknown: the store has not answered for 31s, past [fleet] max_staleness of 30s"
        );
    }

    #[test]
    fn sessions_are_warned_once_past_half_the_staleness_budget() {
        let max = Duration::from_secs(30);
        assert_eq!(stale_warning_due(Duration::from_secs(10), max), None);
        assert_eq!(stale_warning_due(max / 2, max), None, "exactly half is not yet");
        assert_eq!(
            stale_warning_due(Duration::from_secs(16), max),
            Some(Duration::from_secs(14))
        );
        assert_eq!(stale_warning_due(max, max), Some(Duration::ZERO));
        assert_eq!(
            stale_warning_due(Duration::from_secs(31), max),
            None,
            "past it: severed"
        );
        assert_eq!(
            stale_notice(Duration::from_secs(14)),
            "timebox cannot reach its store; this session will be closed in 14 s unless it recovers"
        );
        assert!(stale_notice(Duration::ZERO).contains("closed in 1 s"));
    }

    #[test]
    fn the_advertised_address_is_the_configured_one_else_the_bound_proxy() {
        let bound: std::net::SocketAddr = "10.0.0.5:6432".parse().unwrap();
        assert_eq!(advertise_address(Some("tb-a:6432"), Some(bound)), "tb-a:6432");
        assert_eq!(advertise_address(None, Some(bound)), "10.0.0.5:6432");
        assert_eq!(advertise_address(None, None), "unknown");
    }
}
