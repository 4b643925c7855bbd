//! Cancel requests across the fleet (issue 11 item 4).
//!
//! Where it sits: a CancelRequest may reach any instance behind the load balancer, not the one
//! holding the session. With a PostgreSQL store every instance has a small numeric peer id,
//! allocated uniquely through the store when it joins, and the client-facing cancel key carries
//! it, as PgBouncer's peering does. The pid half of the key (kept positive, as PostgreSQL's) is:
//!
//! ```text
//! bit 31      0 (the sign)
//! bit 30      hop: 0 as handed to the client, 1 once a peer has forwarded the request
//! bits 29-22  peer id of the instance holding the session (1..=255)
//! bits 21-0   random
//! ```
//!
//! and the secret half is 32 random bits. An instance that receives a key of its own peer id looks
//! it up locally ([`route`] says [`CancelRoute::Local`]) and never forwards it; a key of another
//! live peer is forwarded once, with the hop bit set, to that peer's advertised address
//! ([`CancelForwarder`]); a key with the hop bit set and another peer id, or with an unknown peer
//! id, is dropped. So a request travels at most one hop, and an unknown or forged key reaches no
//! target: the owner only sends a CancelRequest upstream for a key it registered itself.
//! With the SQLite store there is no peer id and nothing here runs.
//!
//! What it must never do: forward a request twice, wait unboundedly on a peer, or let a flood of
//! forged keys open unbounded connections (at most [`FORWARDS_AT_ONCE`] are in flight; the rest
//! are dropped).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::proxy::ProxyContext;
use crate::store::postgres::PgStore;
use crate::store::StoreError;

/// A fleet member's small numeric id in cancel keys (1..=[`MAX_PEER_ID`]; 0 is "none").
pub type PeerId = u8;

/// The largest peer id: the fleet's size limit.
pub const MAX_PEER_ID: PeerId = u8::MAX;

/// Set in the pid of a forwarded request: the receiver must not forward it again.
const HOP_BIT: i32 = 1 << 30;
const PEER_SHIFT: u32 = 22;
const RANDOM_MASK: i32 = (1 << PEER_SHIFT) - 1;

/// How long one forward may take (connect, send, wait for the peer to close).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// Cancel requests being forwarded at once by one instance; more are dropped.
pub const FORWARDS_AT_ONCE: usize = 16;

/// The peer addresses are re-read from the store on a miss at most this often, so a flood of
/// keys naming unknown peers costs the store one query per interval, not one per key.
pub const PEER_REFRESH_MIN: Duration = Duration::from_secs(1);

/// Whether a miss may re-read the peer addresses now (last read at `last`). Pure.
pub fn may_refresh(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|last| now.saturating_duration_since(last) >= PEER_REFRESH_MIN)
}

/// The client-facing pid for a session of peer `peer`, from `random` bits. Pure.
pub fn client_pid(peer: PeerId, random: u32) -> i32 {
    (i32::from(peer) << PEER_SHIFT) | (random as i32 & RANDOM_MASK)
}

/// What to do with a CancelRequest for key pid `pid` received by peer `own`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelRoute {
    /// Ours: look up this client-facing pid (the hop bit cleared) among the local sessions only.
    Local(i32),
    /// Another peer's: forward once to it.
    Forward(PeerId),
    /// Not a key any instance hands out, or a forwarded request that is not ours: do nothing.
    Drop(&'static str),
}

/// The forward decision (see the module docs). Pure.
pub fn route(own: PeerId, pid: i32) -> CancelRoute {
    if pid < 0 {
        return CancelRoute::Drop("negative pid");
    }
    let hop = pid & HOP_BIT != 0;
    let peer = ((pid >> PEER_SHIFT) & 0xff) as PeerId;
    if peer == 0 {
        return CancelRoute::Drop("no peer id");
    }
    if peer == own {
        return CancelRoute::Local(pid & !HOP_BIT);
    }
    if hop {
        return CancelRoute::Drop("already forwarded once, and not ours");
    }
    CancelRoute::Forward(peer)
}

/// The pid a forwarded request carries: the hop bit set. Pure.
pub fn forwarded_pid(pid: i32) -> i32 {
    pid | HOP_BIT
}

/// Forwards CancelRequests to the peer holding the session. One per instance (in [`super::Fleet`]).
#[derive(Debug)]
pub struct CancelForwarder {
    store: Arc<PgStore>,
    /// This instance's peer id (0 until it has joined the fleet).
    own: AtomicU16,
    instance_timeout: Duration,
    /// Advertised addresses of live peers by peer id, and when they were read; re-read from the
    /// store on a miss (at most every [`PEER_REFRESH_MIN`]).
    addresses: Mutex<(HashMap<PeerId, String>, Option<Instant>)>,
    /// Bounds the forwards in flight ([`FORWARDS_AT_ONCE`]).
    in_flight: Arc<Semaphore>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl CancelForwarder {
    pub fn new(
        store: Arc<PgStore>,
        instance_timeout: Duration,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        CancelForwarder {
            store,
            own: AtomicU16::new(0),
            instance_timeout,
            addresses: Mutex::new((HashMap::new(), None)),
            in_flight: Arc::new(Semaphore::new(FORWARDS_AT_ONCE)),
            metrics,
        }
    }

    /// This instance's peer id, once it has joined.
    pub fn own(&self) -> Option<PeerId> {
        match self.own.load(Ordering::Relaxed) {
            0 => None,
            p => Some(p as PeerId),
        }
    }

    pub(crate) fn set_own(&self, peer: PeerId) {
        self.own.store(u16::from(peer), Ordering::Relaxed);
    }

    /// The advertised address of `peer`: from the cache, else re-read from the store.
    async fn address_of(&self, peer: PeerId) -> Result<Option<String>, StoreError> {
        {
            let cache = self.lock();
            if let Some(a) = cache.0.get(&peer) {
                return Ok(Some(a.clone()));
            }
            if !may_refresh(cache.1, Instant::now()) {
                return Ok(None);
            }
        }
        let fresh = self
            .store
            .bounded(self.store.peer_addresses(self.instance_timeout))
            .await?;
        let mut cache = self.lock();
        *cache = (fresh.into_iter().collect(), Some(Instant::now()));
        Ok(cache.0.get(&peer).cloned())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<PeerId, String>, Option<Instant>)> {
        self.addresses.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forwards the request for (`pid`, `secret`) to `peer`, once, bounded. Never fails loudly: a
    /// cancel is best effort, as PostgreSQL's own.
    pub async fn forward(&self, peer: PeerId, pid: i32, secret: i32) {
        let Ok(_permit) = self.in_flight.clone().try_acquire_owned() else {
            self.count("dropped_busy");
            tracing::warn!(peer, "too many cancel requests being forwarded; dropping one");
            return;
        };
        let address = match self.address_of(peer).await {
            Ok(Some(a)) => a,
            Ok(None) => {
                self.count("unknown_peer");
                tracing::debug!(peer, "cancel request for an unknown peer dropped");
                return;
            }
            Err(e) => {
                self.count("failed");
                tracing::warn!(peer, error = %e, "cannot look up the peer of a cancel request");
                return;
            }
        };
        match tokio::time::timeout(FORWARD_TIMEOUT, send(&address, forwarded_pid(pid), secret)).await {
            Ok(Ok(())) => {
                self.count("forwarded");
                tracing::info!(peer, %address, "cancel request forwarded to its instance");
            }
            outcome => {
                self.count("failed");
                // The address may have moved: re-read it next time.
                self.lock().0.remove(&peer);
                let error = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("timed out after {FORWARD_TIMEOUT:?}"),
                };
                tracing::warn!(peer, %address, %error, "could not forward a cancel request");
            }
        }
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .fleet_cancel_forwards_total
            .with_label_values(&[outcome])
            .inc();
    }
}

/// Sends one CancelRequest to `address` and waits for the peer to close the connection.
async fn send(address: &str, pid: i32, secret: i32) -> std::io::Result<()> {
    let mut tcp = match address.parse::<SocketAddr>() {
        Ok(addr) => TcpStream::connect(addr).await?,
        Err(_) => TcpStream::connect(address).await?,
    };
    let mut buf = BytesMut::with_capacity(16);
    postgres_protocol::message::frontend::cancel_request(pid, secret, &mut buf);
    tcp.write_all(&buf).await?;
    let mut sink = [0u8; 64];
    while tcp.read(&mut sink).await? > 0 {}
    Ok(())
}

/// Handles a CancelRequest received by this instance: a key of a local session is sent to its
/// upstream; with a fleet, a key of another peer is forwarded (see the module docs); anything
/// else is ignored, as PostgreSQL does.
pub async fn on_cancel_request(ctx: &ProxyContext, client: SocketAddr, pid: i32, secret: i32) {
    let own = ctx
        .cancel_forward
        .as_ref()
        .and_then(|f| f.own().map(|own| (f, own)));
    let local_pid = match own {
        None => pid,
        Some((forwarder, own)) => match route(own, pid) {
            CancelRoute::Local(pid) => pid,
            CancelRoute::Forward(peer) => {
                forwarder.forward(peer, pid, secret).await;
                return;
            }
            CancelRoute::Drop(why) => {
                tracing::debug!(client.addr = %client, why, "cancel request dropped");
                return;
            }
        },
    };
    let cancels = &ctx.proxy.metrics.cancel_requests_total;
    match ctx.proxy.cancel_keys.lookup(local_pid, secret) {
        Some(target) => {
            tracing::info!(client.addr = %client, "forwarding cancel request");
            // Through the target's cancel slots, waiting at most upstream_stop_timeout.
            let wait = ctx.config.proxy.upstream_stop_timeout;
            match ctx.proxy.cancel_limits.forward(&target, wait).await {
                Ok(()) => cancels.with_label_values(&["forwarded"]).inc(),
                Err(e) => {
                    tracing::warn!(client.addr = %client, error = %e, "cancel request not delivered");
                    cancels.with_label_values(&[e.outcome()]).inc();
                }
            }
        }
        None => {
            tracing::debug!(client.addr = %client, "cancel request with unknown key ignored");
            cancels.with_label_values(&["unknown_key"]).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_pids_are_positive_carry_the_peer_and_route_home() {
        for peer in [1, 2, 77, MAX_PEER_ID] {
            for random in [0, 1, 0x3f_ffff, u32::MAX, 0xdead_beef] {
                let pid = client_pid(peer, random);
                assert!(pid > 0, "peer {peer} random {random:#x}: {pid}");
                assert_eq!(pid & HOP_BIT, 0, "a client's key has no hop");
                assert_eq!(route(peer, pid), CancelRoute::Local(pid));
                assert_eq!(route(peer, forwarded_pid(pid)), CancelRoute::Local(pid));
            }
        }
        assert_ne!(client_pid(3, 1), client_pid(3, 2), "the random bits are kept");
        assert_ne!(client_pid(3, 1), client_pid(4, 1), "the peer bits are kept");
    }

    #[test]
    fn another_peers_key_is_forwarded_once_and_never_again() {
        let pid = client_pid(2, 0xabcdef);
        assert_eq!(route(1, pid), CancelRoute::Forward(2));
        // At the receiver (peer 2) it is local; anywhere else, a forwarded key goes no further.
        assert_eq!(route(2, forwarded_pid(pid)), CancelRoute::Local(pid));
        assert!(matches!(route(3, forwarded_pid(pid)), CancelRoute::Drop(_)));
    }

    #[test]
    fn peer_addresses_are_reread_on_a_miss_at_most_once_a_second() {
        let t0 = Instant::now();
        assert!(may_refresh(None, t0), "never read: read now");
        assert!(!may_refresh(Some(t0), t0 + Duration::from_millis(999)));
        assert!(may_refresh(Some(t0), t0 + PEER_REFRESH_MIN));
        assert!(
            !may_refresh(Some(t0 + PEER_REFRESH_MIN), t0),
            "a clock that went back waits"
        );
    }

    #[test]
    fn keys_no_instance_hands_out_are_dropped() {
        // Peer id 0 (an SQLite instance's or a forged key), and negative pids.
        assert!(matches!(route(1, 12345), CancelRoute::Drop(_)));
        assert!(matches!(route(1, HOP_BIT | 12345), CancelRoute::Drop(_)));
        assert!(matches!(route(1, -1), CancelRoute::Drop(_)));
        assert!(matches!(route(1, i32::MIN), CancelRoute::Drop(_)));
    }
}
