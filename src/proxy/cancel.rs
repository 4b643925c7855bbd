//! Query cancellation across the proxy.
//!
//! Each session gives its client a BackendKeyData of timebox's own (random pid and secret) and
//! registers it here with the upstream backend's real key. A CancelRequest arriving on a new client
//! connection is looked up and re-sent to the right upstream backend; an unknown key is ignored, as
//! PostgreSQL does. Sessions also use [`UpstreamCancel::send`] themselves to stop a running query
//! when a grant expires or the client vanishes; they do so after the client has its FATAL, through
//! [`CancelLimits`], so a mass expiry sends at most [`CANCELS_PER_TARGET`] CancelRequests to one
//! target at once (each forks a PostgreSQL process) and never delays a client's FATAL.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use dashmap::DashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// CancelRequests in flight to one target at once (over all sessions of the instance).
pub const CANCELS_PER_TARGET: usize = 8;

/// How long a severed session's upstream query has to stop (waiting for a cancel slot, the
/// CancelRequest, and the backend's exit after Terminate) before timebox closes the upstream
/// connection instead.
pub const UPSTREAM_STOP_BOUND: Duration = Duration::from_secs(2);

/// How to cancel the query running on one upstream backend.
#[derive(Debug, Clone)]
pub struct UpstreamCancel {
    pub host: String,
    pub port: u16,
    pub pid: i32,
    pub secret: i32,
}

impl UpstreamCancel {
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

/// One semaphore per target bounds the CancelRequests sent to it at once.
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
