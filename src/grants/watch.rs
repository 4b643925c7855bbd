//! Live view of grants for sessions: one `tokio::sync::watch` channel per grant that has a session.
//!
//! The admin side publishes a grant after revoking or extending it; each session's relay loop has a
//! `changed()` arm and re-checks the grant with [`super::Grant::status_at`] — the same function that
//! admitted it. An entry lives only while some session watches the grant.
//!
//! Each entry also counts the grant's sessions still relaying ([`CutBarrier`]): when a grant's
//! end cuts all of them at once, each waits after its FATAL until the others have theirs
//! ([`GrantWatch::relays_ended`]) before it does the slow part of its ending (issue 18). Must
//! never let a session wait on it unbounded (the caller bounds the wait).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::{watch, Notify};

use super::Grant;

/// A grant's channel and its sessions' cut barrier.
#[derive(Debug)]
struct Entry {
    tx: watch::Sender<Grant>,
    barrier: Arc<CutBarrier>,
}

/// How many sessions of one grant are still relaying (subscribed, and their relay has not
/// ended), and a wake-up for those waiting until none is.
#[derive(Debug, Default)]
struct CutBarrier {
    relaying: AtomicUsize,
    none_relaying: Notify,
}

impl CutBarrier {
    fn relay_ended(&self) {
        if self.relaying.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.none_relaying.notify_waiters();
        }
    }

    /// Resolves once no session of the grant relays (at once if none does). Resolves at that
    /// moment even if a new session logs in right after it.
    async fn none_relaying(&self) {
        let notified = self.none_relaying.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.relaying.load(Ordering::Acquire) == 0 {
            return;
        }
        notified.await;
    }
}

#[derive(Clone, Default, Debug)]
pub struct GrantWatches {
    senders: Arc<DashMap<String, Entry>>,
}

impl GrantWatches {
    /// Starts watching `grant` (as the caller last saw it). Callers re-read the grant from the store
    /// after subscribing and [`publish`](Self::publish) it, so a change made between their first read
    /// and the subscription is not missed.
    pub fn subscribe(&self, grant: &Grant) -> GrantWatch {
        let entry = self.senders.entry(grant.id.clone()).or_insert_with(|| Entry {
            tx: watch::channel(grant.clone()).0,
            barrier: Arc::default(),
        });
        let rx = entry.tx.subscribe();
        entry.barrier.relaying.fetch_add(1, Ordering::AcqRel);
        let barrier = entry.barrier.clone();
        drop(entry);
        GrantWatch {
            rx: Some(rx),
            relaying: true,
            barrier,
            id: grant.id.clone(),
            senders: self.senders.clone(),
        }
    }

    /// Tells every session on this grant about its new state. A no-op when nobody watches.
    pub fn publish(&self, grant: &Grant) {
        if let Some(entry) = self.senders.get(&grant.id) {
            entry.tx.send_if_modified(|current| {
                if current == grant {
                    false
                } else {
                    *current = grant.clone();
                    true
                }
            });
        }
    }

    /// The ids of the grants some session watches (the fleet's reconcile re-reads these).
    pub fn watched_ids(&self) -> Vec<String> {
        self.senders.iter().map(|e| e.key().clone()).collect()
    }

    /// Whether some session watches grant `id`.
    pub fn is_watched(&self, id: &str) -> bool {
        self.senders.contains_key(id)
    }

    /// Number of grants currently watched (for tests and metrics).
    pub fn watched(&self) -> usize {
        self.senders.len()
    }
}

/// A session's subscription to its grant; removes the registry entry when the last one goes.
#[derive(Debug)]
pub struct GrantWatch {
    rx: Option<watch::Receiver<Grant>>,
    /// The session still counts among its grant's relaying sessions.
    relaying: bool,
    barrier: Arc<CutBarrier>,
    id: String,
    senders: Arc<DashMap<String, Entry>>,
}

impl GrantWatch {
    /// Waits until the grant changes. Cancel-safe (for `select!`). Never resolves if the registry
    /// entry is gone, which cannot happen while this watch exists.
    pub async fn changed(&mut self) -> Grant {
        let rx = self.rx.as_mut().expect("receiver present until drop");
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        rx.borrow_and_update().clone()
    }

    /// Whether the grant changed since the session last took it, without waiting (an atomic
    /// load), so a busy relay notices a revocation without polling [`changed`](Self::changed).
    pub fn has_changed(&self) -> bool {
        self.rx
            .as_ref()
            .is_some_and(|rx| rx.has_changed().unwrap_or(false))
    }

    /// The grant's new state if it changed since the session last took it, without waiting.
    pub fn take_changed(&mut self) -> Option<Grant> {
        let rx = self.rx.as_mut()?;
        rx.has_changed()
            .unwrap_or(false)
            .then(|| rx.borrow_and_update().clone())
    }

    /// A second view of the grant's changes, for code that cannot borrow this watch (the relay's
    /// write path, while the loop awaits [`changed`](Self::changed)). It must not outlive the
    /// watch (the registry entry stays while it exists).
    pub fn probe(&self) -> GrantProbe {
        let mut rx = self.rx.as_ref().expect("receiver present until drop").clone();
        rx.mark_unchanged();
        GrantProbe { rx }
    }

    /// The session's relay is over (its client has its final message, or left): it no longer
    /// counts among the grant's relaying sessions. Idempotent; dropping the watch does it too.
    pub fn relay_ended(&mut self) {
        if std::mem::take(&mut self.relaying) {
            self.barrier.relay_ended();
        }
    }

    /// Resolves once no session of this grant is relaying any more (each has ended its relay or
    /// gone), including this one, which must have called [`relay_ended`](Self::relay_ended). Not
    /// bounded here: the caller bounds the wait.
    pub async fn relays_ended(&self) {
        self.barrier.none_relaying().await
    }

    pub fn current(&self) -> Grant {
        self.rx
            .as_ref()
            .expect("receiver present until drop")
            .borrow()
            .clone()
    }
}

/// See [`GrantWatch::probe`].
#[derive(Debug)]
pub struct GrantProbe {
    rx: watch::Receiver<Grant>,
}

impl GrantProbe {
    /// Whether the grant changed since [`seen`](Self::seen) (an atomic load).
    pub fn changed(&self) -> bool {
        self.rx.has_changed().unwrap_or(false)
    }

    /// The session took the grant's latest state.
    pub fn seen(&mut self) {
        self.rx.mark_unchanged();
    }
}

impl Drop for GrantWatch {
    fn drop(&mut self) {
        drop(self.rx.take());
        self.relay_ended();
        self.senders
            .remove_if(&self.id, |_, e| e.tx.receiver_count() == 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn grant() -> Grant {
        let now = Utc::now();
        Grant {
            id: "g_w".into(),
            user: "alice".into(),
            target: "shop".into(),
            role: "read".into(),
            reason: "r".into(),
            created_by: "ops".into(),
            created_at: now,
            starts_at: now,
            expires_at: now + chrono::Duration::minutes(5),
            revoked_at: None,
            revoked_by: None,
            revoke_reason: None,
        }
    }

    #[tokio::test]
    async fn sessions_see_publications_and_entries_are_cleaned_up() {
        let watches = GrantWatches::default();
        let g = grant();
        let mut a = watches.subscribe(&g);
        let b = watches.subscribe(&g);
        assert_eq!(watches.watched(), 1);

        let mut revoked = g.clone();
        revoked.revoked_at = Some(Utc::now());
        watches.publish(&revoked);
        let seen = tokio::time::timeout(std::time::Duration::from_secs(1), a.changed())
            .await
            .unwrap();
        assert!(seen.revoked_at.is_some());
        assert!(b.current().revoked_at.is_some());

        drop(a);
        assert_eq!(watches.watched(), 1, "b still watches");
        drop(b);
        assert_eq!(watches.watched(), 0);
        // publishing with nobody watching is a no-op
        watches.publish(&g);
        assert_eq!(watches.watched(), 0);
    }

    #[test]
    fn changes_are_seen_without_waiting_by_the_watch_and_its_probe() {
        let watches = GrantWatches::default();
        let g = grant();
        let mut w = watches.subscribe(&g);
        let mut probe = w.probe();
        assert!(!w.has_changed() && !probe.changed());
        assert!(w.take_changed().is_none());
        let mut revoked = g.clone();
        revoked.revoked_at = Some(Utc::now());
        watches.publish(&revoked);
        assert!(w.has_changed() && probe.changed());
        assert!(w.take_changed().unwrap().revoked_at.is_some());
        assert!(!w.has_changed(), "taken");
        assert!(
            probe.changed(),
            "the probe sees the change until told it was taken"
        );
        probe.seen();
        assert!(!probe.changed());
        drop(probe);
        drop(w);
        assert_eq!(watches.watched(), 0);
    }

    #[tokio::test]
    async fn republishing_the_same_state_does_not_wake_sessions() {
        let watches = GrantWatches::default();
        let g = grant();
        let mut a = watches.subscribe(&g);
        watches.publish(&g);
        let woke = tokio::time::timeout(std::time::Duration::from_millis(50), a.changed()).await;
        assert!(woke.is_err());
    }

    /// Regression (issue 18): at a mass cut each session waits after its FATAL until every session
    /// of the grant has its own, then does the slow part of its ending.
    #[tokio::test]
    async fn the_cut_barrier_opens_when_the_last_session_of_the_grant_ends_its_relay() {
        let watches = GrantWatches::default();
        let g = grant();
        let mut a = watches.subscribe(&g);
        let mut b = watches.subscribe(&g);
        let c = watches.subscribe(&g);
        let short = std::time::Duration::from_millis(20);
        a.relay_ended();
        a.relay_ended();
        assert!(
            tokio::time::timeout(short, a.relays_ended()).await.is_err(),
            "b and c still relay (a counted once)"
        );
        b.relay_ended();
        let waiting = a.relays_ended();
        drop(c);
        tokio::time::timeout(std::time::Duration::from_secs(60), waiting)
            .await
            .expect("the last relay ended (c went)");
        tokio::time::timeout(std::time::Duration::from_secs(60), b.relays_ended())
            .await
            .expect("and stays open for a late waiter");
        // Another grant's sessions are not counted.
        let mut other = g.clone();
        other.id = "g_other".into();
        let _o = watches.subscribe(&other);
        tokio::time::timeout(std::time::Duration::from_secs(60), b.relays_ended())
            .await
            .expect("not held by another grant's session");
    }
}
