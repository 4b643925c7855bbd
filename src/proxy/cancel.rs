//! Query cancellation across the proxy.
//!
//! Each session gives its client a BackendKeyData of timebox's own (random pid and secret) and
//! registers it here with the upstream backend's real key. A CancelRequest arriving on a new client
//! connection is looked up and re-sent to the right upstream backend; an unknown key is ignored, as
//! PostgreSQL does. Sessions stop their own running query when a grant expires or the client
//! vanishes ([`stop_upstream`], after the client has its FATAL, so it never delays it): first
//! through the batch connection of [`super::upstream_cancel`] (one `pg_terminate_backend` query for
//! every session of a role cut at about the same moment), and only when that fails with
//! [`UpstreamCancel::send`] through [`CancelLimits`], so a mass expiry sends at most
//! `proxy.cancel_parallelism_per_target` (default [`CANCELS_PER_TARGET`]) CancelRequests to one
//! target server at once (each forks a PostgreSQL process). How each query ended is the session's
//! `upstream_end` audit record ([`UpstreamOutcome`]). Clients' CancelRequests take the same slots
//! ([`CancelLimits::forward`]): one over the limit waits for a slot at most
//! `proxy.upstream_stop_timeout`, then is dropped (logged and counted), so no client can storm a
//! target with cancels.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use dashmap::DashMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::upstream_cancel::{BatchError, BatchStops};

/// CancelRequests in flight to one target at once (over all sessions of the instance), unless
/// `proxy.cancel_parallelism_per_target` says otherwise.
pub const CANCELS_PER_TARGET: usize = 8;

/// How long a severed session's upstream query has to stop (waiting for a cancel slot, the
/// CancelRequest, and the backend's exit after Terminate) before timebox closes the upstream
/// connection instead, and how long a client's CancelRequest waits for a slot; unless
/// `proxy.upstream_stop_timeout` says otherwise.
pub const UPSTREAM_STOP_BOUND: Duration = Duration::from_secs(2);

/// Why a client's CancelRequest was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// Every cancel slot of the target stayed taken for the whole wait.
    #[error("no cancel slot free for {server} within {waited:?}; cancel request dropped")]
    NoSlot { server: String, waited: Duration },
    #[error("cancel request to {server} failed: {source}")]
    Upstream {
        server: String,
        #[source]
        source: std::io::Error,
    },
}

impl CancelError {
    /// The metric label of this outcome.
    pub fn outcome(&self) -> &'static str {
        match self {
            CancelError::NoSlot { .. } => "dropped",
            CancelError::Upstream { .. } => "failed",
        }
    }
}

/// How to cancel the query running on one upstream backend.
#[derive(Debug, Clone)]
pub struct UpstreamCancel {
    pub host: String,
    pub port: u16,
    pub pid: i32,
    pub secret: i32,
}

impl UpstreamCancel {
    /// The server the CancelRequest goes to (the key of its cancel slots).
    pub fn server(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Sends a CancelRequest and waits (bounded) for the server to close the connection, which it
    /// does after signalling the backend.
    pub async fn send(&self) -> std::io::Result<()> {
        let attempt = async {
            let mut tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
            let mut buf = BytesMut::with_capacity(16);
            postgres_protocol::message::frontend::cancel_request(self.pid, self.secret, &mut buf);
            tcp.write_all(&buf).await?;
            let mut sink = [0u8; 64];
            while tcp.read(&mut sink).await? > 0 {}
            Ok(())
        };
        tokio::time::timeout(Duration::from_secs(2), attempt)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    }
}

/// One semaphore per target server (`host:port`) bounds the CancelRequests sent to it at once.
#[derive(Debug)]
pub struct CancelLimits {
    per_target: DashMap<String, Arc<Semaphore>>,
    permits: usize,
    /// Severed sessions' backends ended in batches, one connection per (target, role), before any
    /// CancelRequest (see [`super::upstream_cancel`]).
    pub batch: BatchStops,
}

impl Default for CancelLimits {
    fn default() -> Self {
        CancelLimits::new(CANCELS_PER_TARGET)
    }
}

impl CancelLimits {
    /// At most `permits` cancels in flight per target (at least one).
    pub fn new(permits: usize) -> Self {
        CancelLimits {
            per_target: DashMap::new(),
            permits: permits.max(1),
            batch: BatchStops::default(),
        }
    }

    /// The cancel slots of the server `cancel` goes to.
    pub fn for_server(&self, cancel: &UpstreamCancel) -> Arc<Semaphore> {
        self.for_target(&cancel.server())
    }

    /// Forwards a client's CancelRequest once a slot of its server is free, waiting at most
    /// `wait`; past it the request is dropped ([`CancelError::NoSlot`]).
    pub async fn forward(&self, cancel: &UpstreamCancel, wait: Duration) -> Result<(), CancelError> {
        let slots = self.for_server(cancel);
        let Ok(Ok(_slot)) = tokio::time::timeout(wait, slots.acquire_owned()).await else {
            return Err(CancelError::NoSlot {
                server: cancel.server(),
                waited: wait,
            });
        };
        cancel.send().await.map_err(|source| CancelError::Upstream {
            server: cancel.server(),
            source,
        })
    }

    /// The semaphore of `target` (created on first use).
    pub fn for_target(&self, target: &str) -> Arc<Semaphore> {
        if let Some(s) = self.per_target.get(target) {
            return s.clone();
        }
        self.per_target
            .entry(target.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.permits)))
            .clone()
    }
}

/// Client-facing cancel keys of live sessions.
#[derive(Debug, Default)]
pub struct CancelKeys {
    map: DashMap<(i32, i32), UpstreamCancel>,
    /// With a fleet, this instance's peer id (0 until it joins, and with the SQLite store): new
    /// keys carry it (see [`crate::fleet::cancel`]).
    peer: std::sync::atomic::AtomicU16,
}

impl CancelKeys {
    /// Allocates a fresh client-facing key for `upstream`; the key is removed when the guard drops.
    pub fn register(self: &Arc<Self>, upstream: UpstreamCancel) -> CancelKeyGuard {
        let peer = self.peer.load(std::sync::atomic::Ordering::Relaxed);
        loop {
            let pid = match u8::try_from(peer) {
                Ok(peer) if peer > 0 => crate::fleet::cancel::client_pid(peer, rand::random()),
                _ => (rand::random::<u32>() >> 1) as i32 | 1,
            };
            let secret = rand::random::<i32>();
            if let dashmap::Entry::Vacant(e) = self.map.entry((pid, secret)) {
                e.insert(upstream);
                return CancelKeyGuard {
                    keys: self.clone(),
                    pid,
                    secret,
                };
            }
        }
    }

    /// Makes new keys carry this instance's fleet peer id.
    pub fn set_peer(&self, peer: crate::fleet::cancel::PeerId) {
        self.peer
            .store(u16::from(peer), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn lookup(&self, pid: i32, secret: i32) -> Option<UpstreamCancel> {
        self.map.get(&(pid, secret)).map(|e| e.value().clone())
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A session's registered cancel key.
#[derive(Debug)]
pub struct CancelKeyGuard {
    keys: Arc<CancelKeys>,
    pub pid: i32,
    pub secret: i32,
}

impl Drop for CancelKeyGuard {
    fn drop(&mut self) {
        self.keys.map.remove(&(self.pid, self.secret));
    }
}

/// How a running upstream query ended after its session was severed (`upstream_end.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamOutcome {
    /// Its backend was ended by timebox's batch connection (`pg_terminate_backend`, see
    /// [`super::upstream_cancel`]) and exited: nothing more ran on it.
    Terminated,
    /// A CancelRequest was delivered and the backend exited after Terminate: nothing more ran.
    Cancelled,
    /// Not confirmed within the bound, or closed at once because statements were queued behind
    /// the running one: the connection was closed (PostgreSQL ends the backend when it notices,
    /// within `client_connection_check_interval` on a target that sets it).
    Closed,
}

impl UpstreamOutcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            UpstreamOutcome::Terminated => "terminated",
            UpstreamOutcome::Cancelled => "cancelled",
            UpstreamOutcome::Closed => "closed",
        }
    }
}

/// How a severed session's upstream is stopped. Pure decision: [`stop_plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopPlan {
    /// Nothing runs upstream: Terminate and close.
    Idle,
    /// One statement (sync point) runs: end its backend through the batch connection, else a
    /// CancelRequest then Terminate; confirmed by the backend closing the connection.
    Stop,
    /// Statements are queued behind the running one (a pipelining client): a CancelRequest would
    /// stop only the running one and let the queued ones run after the FATAL. The connection is
    /// half-closed at once (so a target with `client_connection_check_interval` ends the backend
    /// even if nothing else does) and the backend ended through the batch connection; there is no
    /// CancelRequest fallback.
    CloseAtOnce,
}

/// How to stop the upstream of a session severed while `busy`, with `sync_points` statements
/// (sync points, plus extended-protocol messages not yet synced) forwarded and not answered.
pub(crate) fn stop_plan(busy: bool, sync_points: usize) -> StopPlan {
    match (busy, sync_points) {
        (false, _) => StopPlan::Idle,
        (true, 0 | 1) => StopPlan::Stop,
        (true, _) => StopPlan::CloseAtOnce,
    }
}

/// What [`stop_upstream`] needs to stop a running query.
pub(crate) struct Stop<'a, B> {
    pub plan: StopPlan,
    /// Ends the backend through the batch connection ([`super::upstream_cancel::BatchStops`]);
    /// `Ok(true)` once it was signalled.
    pub batch: B,
    /// The CancelRequest fallback and the target's cancel slots.
    pub cancel: &'a UpstreamCancel,
    pub slots: &'a Semaphore,
}

/// Ends the upstream connection. When a query may be running ([`StopPlan::Stop`],
/// [`StopPlan::CloseAtOnce`]) its backend is ended through the batch connection, falling back to a
/// CancelRequest and Terminate, then the backend's exit (EOF) is awaited, all within `bound`; past
/// it the connection is closed. `None` when nothing was running.
pub(crate) async fn stop_upstream<S, B>(
    upstream: &mut S,
    stop: Stop<'_, B>,
    bound: Duration,
) -> Option<UpstreamOutcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: std::future::Future<Output = Result<bool, Arc<BatchError>>>,
{
    let mut terminate = BytesMut::new();
    postgres_protocol::message::frontend::terminate(&mut terminate);
    if stop.plan == StopPlan::Idle {
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            upstream.write_all(&terminate).await?;
            upstream.shutdown().await
        })
        .await;
        return None;
    }
    let stopped = tokio::time::timeout(bound, async {
        if stop.plan == StopPlan::CloseAtOnce {
            let _ = upstream.shutdown().await;
        }
        match stop.batch.await {
            Ok(true) => {
                let mut sink = [0u8; 8192];
                // The backend was told to exit: EOF (or a reset) means it did.
                while matches!(upstream.read(&mut sink).await, Ok(n) if n > 0) {}
                return Ok(UpstreamOutcome::Terminated);
            }
            Ok(false) => {
                tracing::debug!("the batch connection did not see the backend; sending a CancelRequest")
            }
            Err(e) => tracing::debug!(error = %e, "no batch connection; sending a CancelRequest"),
        }
        if stop.plan == StopPlan::CloseAtOnce {
            return Ok(UpstreamOutcome::Closed);
        }
        // Read by the backend once its query is over: it then exits and closes the connection.
        upstream.write_all(&terminate).await?;
        upstream.flush().await?;
        {
            let _slot = stop.slots.acquire().await.map_err(std::io::Error::other)?;
            stop.cancel.send().await?;
        }
        let mut sink = [0u8; 8192];
        while upstream.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(UpstreamOutcome::Cancelled)
    })
    .await;
    match stopped {
        Ok(Ok(outcome)) => Some(outcome),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not cancel the upstream query; closing its connection");
            Some(UpstreamOutcome::Closed)
        }
        Err(_) => {
            tracing::warn!("the upstream query did not stop in time; closing its connection");
            Some(UpstreamOutcome::Closed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancels_are_bounded_per_target_not_across_targets() {
        let limits = CancelLimits::new(3);
        let shop = limits.for_target("shop");
        let held: Vec<_> = (0..3)
            .map(|_| shop.clone().try_acquire_owned().unwrap())
            .collect();
        assert!(
            limits.for_target("shop").try_acquire().is_err(),
            "a fourth cancel to the same target must wait"
        );
        assert!(
            limits.for_target("billing").try_acquire().is_ok(),
            "another target has its own slots"
        );
        drop(held);
        assert_eq!(limits.for_target("shop").available_permits(), 3);
        assert_eq!(CancelLimits::new(0).for_target("x").available_permits(), 1);
    }

    fn key_for(port: u16) -> UpstreamCancel {
        UpstreamCancel {
            host: "127.0.0.1".into(),
            port,
            pid: 42,
            secret: 7,
        }
    }

    /// Regression (issue 18): clients' CancelRequests were sent at once, however many, outside
    /// the per-target limit the sessions' own cancels respect.
    #[tokio::test]
    async fn a_client_cancel_over_the_limit_waits_bounded_then_is_dropped() {
        let limits = CancelLimits::new(2);
        // Port 9 (discard) is never reached: the request must not get past the limit.
        let key = key_for(9);
        let mut held: Vec<_> = (0..2)
            .map(|_| limits.for_server(&key).try_acquire_owned().unwrap())
            .collect();
        let wait = Duration::from_millis(50);
        let started = std::time::Instant::now();
        let dropped = limits.forward(&key, wait).await.unwrap_err();
        assert!(matches!(dropped, CancelError::NoSlot { .. }), "{dropped}");
        assert_eq!(dropped.outcome(), "dropped");
        assert!(started.elapsed() >= wait, "it waited for a slot first");
        // A slot freed during the wait is taken: the request goes on (and fails here only
        // because nothing listens on the discard port).
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(held.pop());
            held
        });
        let outcome = limits.forward(&key, Duration::from_secs(60)).await;
        assert!(!matches!(outcome, Err(CancelError::NoSlot { .. })), "{outcome:?}");
        drop(release.await.unwrap());
        // Other servers have their own slots.
        assert_eq!(limits.for_server(&key_for(10)).available_permits(), 2);
    }

    #[tokio::test]
    async fn a_client_cancel_within_the_limit_reaches_the_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let key = key_for(listener.local_addr().unwrap().port());
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 16];
            tcp.read_exact(&mut request).await.unwrap();
            request
        });
        let limits = CancelLimits::new(1);
        limits
            .forward(&key, Duration::from_secs(30))
            .await
            .expect("forwarded");
        let request = server.await.unwrap();
        assert_eq!(&request[..8], &[0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e]);
        assert_eq!(i32::from_be_bytes(request[8..12].try_into().unwrap()), 42);
        assert_eq!(limits.for_server(&key).available_permits(), 1, "the slot is back");
    }

    #[test]
    fn keys_are_positive_unique_and_released() {
        let keys = Arc::new(CancelKeys::default());
        let target = UpstreamCancel {
            host: "127.0.0.1".into(),
            port: 5432,
            pid: 42,
            secret: 7,
        };
        let a = keys.register(target.clone());
        let b = keys.register(target);
        assert!(a.pid > 0 && b.pid > 0);
        assert_ne!((a.pid, a.secret), (b.pid, b.secret));
        assert_eq!(keys.lookup(a.pid, a.secret).unwrap().pid, 42);
        assert!(
            keys.lookup(a.pid, a.secret.wrapping_add(1)).is_none(),
            "the secret must match"
        );
        drop(a);
        assert_eq!(keys.len(), 1);
        drop(b);
        assert!(keys.is_empty());
    }

    #[test]
    fn a_cut_with_statements_queued_behind_the_running_one_closes_at_once() {
        assert_eq!(stop_plan(false, 0), StopPlan::Idle);
        assert_eq!(
            stop_plan(false, 3),
            StopPlan::Idle,
            "nothing runs: nothing to stop"
        );
        assert_eq!(stop_plan(true, 1), StopPlan::Stop);
        assert_eq!(
            stop_plan(true, 0),
            StopPlan::Stop,
            "busy counts even without a sync point"
        );
        assert_eq!(stop_plan(true, 2), StopPlan::CloseAtOnce);
        assert_eq!(stop_plan(true, 50), StopPlan::CloseAtOnce);
    }

    /// A listener standing in for the target's postmaster: counts the CancelRequests it gets.
    async fn cancel_listener() -> (UpstreamCancel, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let key = key_for(listener.local_addr().unwrap().port());
        let got = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = got.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut request = [0u8; 16];
                if tcp.read_exact(&mut request).await.is_ok() {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
        (key, got)
    }

    fn batch_failed() -> Result<bool, Arc<BatchError>> {
        Err(Arc::new(BatchError::Gone))
    }

    #[tokio::test]
    async fn a_backend_ended_by_the_batch_is_terminated_without_a_cancel_request() {
        let (key, got) = cancel_listener().await;
        let slots = Semaphore::new(1);
        let (mut ours, mut backend) = tokio::io::duplex(1024);
        // The backend exits once signalled.
        drop(tokio::spawn(async move { backend.shutdown().await }));
        let stop = Stop {
            plan: StopPlan::Stop,
            batch: async { Ok(true) },
            cancel: &key,
            slots: &slots,
        };
        let outcome = stop_upstream(&mut ours, stop, Duration::from_secs(30)).await;
        assert_eq!(outcome, Some(UpstreamOutcome::Terminated));
        assert_eq!(got.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn without_the_batch_a_cancel_request_and_terminate_stop_the_query() {
        let (key, got) = cancel_listener().await;
        let slots = Semaphore::new(1);
        let (mut ours, mut backend) = tokio::io::duplex(1024);
        let exited = tokio::spawn(async move {
            // The backend reads Terminate after its query was cancelled, then exits.
            let mut terminate = [0u8; 5];
            backend.read_exact(&mut terminate).await.unwrap();
            backend.shutdown().await.unwrap();
            terminate
        });
        let stop = Stop {
            plan: StopPlan::Stop,
            batch: async { batch_failed() },
            cancel: &key,
            slots: &slots,
        };
        let outcome = stop_upstream(&mut ours, stop, Duration::from_secs(30)).await;
        assert_eq!(outcome, Some(UpstreamOutcome::Cancelled));
        assert_eq!(exited.await.unwrap(), [b'X', 0, 0, 0, 4]);
        assert_eq!(got.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// Statements queued behind the running one would run after a CancelRequest stopped it: the
    /// connection is closed at once instead, and no CancelRequest is sent.
    #[tokio::test]
    async fn queued_statements_close_the_upstream_at_once_when_the_batch_fails() {
        let (key, got) = cancel_listener().await;
        let slots = Semaphore::new(1);
        let (mut ours, mut backend) = tokio::io::duplex(1024);
        let stop = Stop {
            plan: StopPlan::CloseAtOnce,
            batch: async { batch_failed() },
            cancel: &key,
            slots: &slots,
        };
        let outcome = stop_upstream(&mut ours, stop, Duration::from_secs(30)).await;
        assert_eq!(outcome, Some(UpstreamOutcome::Closed));
        let mut rest = Vec::new();
        backend.read_to_end(&mut rest).await.unwrap();
        assert!(
            rest.is_empty(),
            "no Terminate: the backend only sees the connection end"
        );
        assert_eq!(
            got.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "no CancelRequest"
        );
        assert_eq!(UpstreamOutcome::Terminated.as_str(), "terminated");
    }
}
