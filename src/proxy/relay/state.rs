//! The session's lifecycle state inside the relay: open, draining for shutdown, or closing with a
//! reason. What the backend is doing (idle, in a transaction, busy until ReadyForQuery) is the
//! [`super::sync::Phase`] the sync tracker reports. Pure transitions, unit-tested; the relay loop
//! reads its `select!` guards from here instead of from loose flags.

use std::time::Duration;

use tokio::time::Instant;

/// How long a severed session may take to reach a frame boundary and deliver its FATAL.
pub(crate) const SEVER_DRAIN: Duration = Duration::from_millis(500);

/// Why a session ended (audit, metrics, logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    ClientExit,
    Expired,
    Revoked,
    Killed,
    UpstreamError,
    ClientError,
    Shutdown,
    /// The audit log refused or failed to record statements (fail closed).
    AuditUnavailable,
    /// The server sent a frame the relay must hold whole that is over its limit
    /// ([`super::io::MAX_HELD_FRAME`]).
    FrameTooLarge,
    /// The relay lost track of the backend stream (an internal error; fail closed).
    InternalError,
    /// A masked role's result was refused for a catalog change after its transaction had ended:
    /// the session's upstream goes, with whatever that statement left in it (see `wrap`).
    MaskedEffects,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::ClientExit => "client_exit",
            EndReason::Expired => "expired",
            EndReason::Revoked => "revoked",
            EndReason::Killed => "killed",
            EndReason::UpstreamError => "upstream_error",
            EndReason::ClientError => "client_error",
            EndReason::Shutdown => "shutdown",
            EndReason::AuditUnavailable => "audit_unavailable",
            EndReason::FrameTooLarge => "frame_too_large",
            EndReason::InternalError => "internal_error",
            EndReason::MaskedEffects => "masked_effects",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionState {
    /// Relaying statements; expiry, revocation, kills and shutdown are watched.
    Open,
    /// Shutdown was asked: relaying until the session is idle, severed at `deadline` at the latest.
    Draining { deadline: Instant },
    /// Ending: the final message is on its way to the client. Nothing more is read from it and
    /// nothing more goes upstream; the session ends once the message is out or at `deadline`.
    Closing { reason: EndReason, deadline: Instant },
}

impl SessionState {
    /// Shutdown was asked at `now`: an open session drains for `grace`.
    pub(crate) fn shutdown(&mut self, now: Instant, grace: Duration) {
        if *self == SessionState::Open {
            *self = SessionState::Draining {
                deadline: now + grace,
            };
        }
    }

    /// The session is severed for `reason` at `now` (a later reason replaces an earlier one: the
    /// FATAL sent is the last one queued).
    pub(crate) fn close(&mut self, reason: EndReason, now: Instant) {
        *self = SessionState::Closing {
            reason,
            deadline: now + SEVER_DRAIN,
        };
    }

    /// Client frames are read and relayed (not once closing).
    pub(crate) fn relaying(&self) -> bool {
        !matches!(self, SessionState::Closing { .. })
    }

    pub(crate) fn draining(&self) -> bool {
        matches!(self, SessionState::Draining { .. })
    }

    /// When a draining session is severed.
    pub(crate) fn drain_deadline(&self) -> Option<Instant> {
        match self {
            SessionState::Draining { deadline } => Some(*deadline),
            _ => None,
        }
    }

    /// When a closing session gives up delivering its final message.
    pub(crate) fn close_deadline(&self) -> Option<Instant> {
        match self {
            SessionState::Closing { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    /// Why the session is closing, once it is.
    pub(crate) fn reason(&self) -> Option<EndReason> {
        match self {
            SessionState::Closing { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_drains_an_open_session_then_closing_ends_it() {
        let now = Instant::now();
        let mut s = SessionState::Open;
        assert!(s.relaying() && !s.draining());
        s.shutdown(now, Duration::from_secs(30));
        assert_eq!(s.drain_deadline(), Some(now + Duration::from_secs(30)));
        assert!(s.relaying(), "a draining session still relays its statements");
        s.shutdown(now + Duration::from_secs(5), Duration::from_secs(30));
        assert_eq!(
            s.drain_deadline(),
            Some(now + Duration::from_secs(30)),
            "asked once"
        );
        s.close(EndReason::Shutdown, now);
        assert!(!s.relaying());
        assert_eq!(s.drain_deadline(), None);
        assert_eq!(s.close_deadline(), Some(now + SEVER_DRAIN));
        assert_eq!(s.reason(), Some(EndReason::Shutdown));
    }

    #[test]
    fn a_closing_session_is_not_reopened_by_shutdown() {
        let now = Instant::now();
        let mut s = SessionState::Open;
        s.close(EndReason::Killed, now);
        s.shutdown(now, Duration::from_secs(1));
        assert_eq!(s.reason(), Some(EndReason::Killed));
        assert_eq!(s.drain_deadline(), None);
        // The last severing reason is the one reported (its FATAL is the one the client gets).
        s.close(EndReason::AuditUnavailable, now);
        assert_eq!(s.reason(), Some(EndReason::AuditUnavailable));
    }

    #[test]
    fn end_reasons_have_stable_names() {
        assert_eq!(EndReason::ClientExit.as_str(), "client_exit");
        assert_eq!(EndReason::AuditUnavailable.as_str(), "audit_unavailable");
    }
}
