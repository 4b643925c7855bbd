//! Cuts that cannot be starved: the relay's `select!` polls socket I/O first (the hot path), so a
//! client or backend whose socket is always ready (a pipelining client, a COPY stream, a huge
//! result) would keep the expiry, revocation, kill and shutdown arms from ever being polled. The
//! relay therefore asks [`due`] at the top of every loop iteration, from signals it reads without
//! awaiting (the grant probe: an atomic load; the kill and shutdown tokens: an uncontended lock
//! each; the clock the loop reads anyway), and asks [`may_forward`] before every write of client
//! frames upstream (one more clock read and the kill token, per write call, not per frame; no
//! syscall is added). Pure: callers pass the signals and the time.
//! Must never let a client frame go upstream once the deadline has passed, the session was killed,
//! or its grant changed and has not been re-checked.

use chrono::{DateTime, Utc};
use tokio::time::Instant;

/// What the relay knows at the top of an iteration, read without awaiting.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Signals {
    /// The session is still relaying (not closing).
    pub relaying: bool,
    /// An administrator killed the session.
    pub killed: bool,
    /// The grant watch has a change the session has not re-checked.
    pub grant_changed: bool,
    /// Wall-clock now (the instance's clock) and the grant's end.
    pub now: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Shutdown was asked while the session is still open (not draining yet).
    pub shutdown_while_open: bool,
    /// Monotonic now, and the deadlines of the draining and closing states.
    pub instant: Instant,
    pub drain_deadline: Option<Instant>,
    pub close_deadline: Option<Instant>,
}

/// A cut the relay must make before it polls its sockets again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Sever with the kill's FATAL.
    Kill,
    /// Take the grant's new state and re-check it (a revocation severs, an extension does not).
    GrantChanged,
    /// The grant's end has passed: re-check it (severs).
    Expired,
    /// Start draining for shutdown.
    Shutdown,
    /// The drain deadline passed: sever for shutdown.
    DrainOver,
    /// The final message could not be delivered in time: end now.
    CloseOver,
}

/// The most urgent cut due now, if any. An explicit kill goes first, then what the grant says,
/// then shutdown; a closing session only has its close deadline left.
pub(crate) fn due(s: &Signals) -> Option<Due> {
    if !s.relaying {
        return s
            .close_deadline
            .filter(|d| s.instant >= *d)
            .map(|_| Due::CloseOver);
    }
    if s.killed {
        Some(Due::Kill)
    } else if s.grant_changed {
        Some(Due::GrantChanged)
    } else if s.now >= s.expires_at {
        Some(Due::Expired)
    } else if s.shutdown_while_open {
        Some(Due::Shutdown)
    } else if s.drain_deadline.is_some_and(|d| s.instant >= d) {
        Some(Due::DrainOver)
    } else {
        None
    }
}

/// Whether client frames may be written upstream at `now`: only before `deadline` (the grant's
/// end), while the session is not killed and has no unchecked grant change. Refusing leaves the
/// frames buffered; the cut that follows drops them.
pub(crate) fn may_forward(now: Instant, deadline: Instant, killed: bool, grant_changed: bool) -> bool {
    now < deadline && !killed && !grant_changed
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn open(now: DateTime<Utc>, expires_at: DateTime<Utc>) -> Signals {
        Signals {
            relaying: true,
            killed: false,
            grant_changed: false,
            now,
            expires_at,
            shutdown_while_open: false,
            instant: Instant::now(),
            drain_deadline: None,
            close_deadline: None,
        }
    }

    #[test]
    fn nothing_is_due_before_the_end_and_expiry_is_due_from_it() {
        let t = Utc::now();
        let end = t + chrono::Duration::seconds(1);
        assert_eq!(due(&open(t, end)), None);
        assert_eq!(
            due(&open(end, end)),
            Some(Due::Expired),
            "expires_at itself is past"
        );
        assert_eq!(
            due(&open(end + chrono::Duration::hours(1), end)),
            Some(Due::Expired)
        );
    }

    #[test]
    fn a_kill_goes_first_then_the_grant_then_shutdown() {
        let t = Utc::now();
        let mut s = open(t + chrono::Duration::seconds(5), t);
        s.shutdown_while_open = true;
        s.grant_changed = true;
        s.killed = true;
        assert_eq!(due(&s), Some(Due::Kill));
        s.killed = false;
        assert_eq!(
            due(&s),
            Some(Due::GrantChanged),
            "a revocation is re-checked first"
        );
        s.grant_changed = false;
        assert_eq!(due(&s), Some(Due::Expired));
        s.now = t - chrono::Duration::seconds(5);
        assert_eq!(due(&s), Some(Due::Shutdown));
    }

    #[test]
    fn drain_and_close_deadlines_are_honoured_and_a_closing_session_ignores_the_rest() {
        let t = Utc::now();
        let mut s = open(t, t + chrono::Duration::hours(1));
        s.drain_deadline = Some(s.instant + Duration::from_millis(1));
        assert_eq!(due(&s), None);
        s.drain_deadline = Some(s.instant);
        assert_eq!(due(&s), Some(Due::DrainOver));
        // Closing: kills, grant changes and expiry no longer matter; only the close deadline does.
        let mut c = open(t + chrono::Duration::hours(2), t);
        c.relaying = false;
        c.killed = true;
        c.grant_changed = true;
        assert_eq!(due(&c), None);
        c.close_deadline = Some(c.instant + Duration::from_millis(1));
        assert_eq!(due(&c), None);
        c.close_deadline = Some(c.instant);
        assert_eq!(due(&c), Some(Due::CloseOver));
    }

    #[test]
    fn client_frames_go_upstream_only_before_the_deadline_and_without_a_pending_cut() {
        let now = Instant::now();
        let later = now + Duration::from_millis(1);
        assert!(may_forward(now, later, false, false));
        assert!(!may_forward(later, later, false, false), "not at the deadline");
        assert!(!may_forward(later + Duration::from_secs(1), later, false, false));
        assert!(!may_forward(now, later, true, false), "not once killed");
        assert!(
            !may_forward(now, later, false, true),
            "not before a grant change is re-checked"
        );
    }
}
