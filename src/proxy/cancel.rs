//! Query cancellation across the proxy.
//!
//! Each session gives its client a BackendKeyData of timebox's own (random pid and secret) and
//! registers it here with the upstream backend's real key. A CancelRequest arriving on a new client
//! connection is looked up and re-sent to the right upstream backend; an unknown key is ignored, as
//! PostgreSQL does. Sessions also use [`UpstreamCancel::send`] themselves to stop a running query
//! when a grant expires or the client vanishes; they do so after the client has its FATAL, through
//! [`CancelLimits`], so a mass expiry sends at most `proxy.cancel_parallelism_per_target` (default
//! [`CANCELS_PER_TARGET`]) CancelRequests to one target server at once (each forks a PostgreSQL
//! process) and never delays a client's FATAL. Clients' CancelRequests take the same slots
//! ([`CancelLimits::forward`]): one over the limit waits for a slot at most
//! `proxy.upstream_stop_timeout`, then is dropped (logged and counted), so no client can storm a
//! target with cancels.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use dashmap::DashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

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
}
