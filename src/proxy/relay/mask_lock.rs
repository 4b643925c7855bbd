//! The answers to timebox's lock block ahead of a masked role's Bind (s10,
//! [`super::super::lock_prelude::bind_lock`]): matched in order like the client's messages'
//! ([`super::Expect::Lock`]), never the client's. Its five answers are dropped; its error fails
//! the client's batch from the Bind on (PostgreSQL skips the rest up to Sync) and answers it in
//! the Bind's place.

use super::{Expect, ResultMask};

impl ResultMask {
    /// The lock block's messages go upstream right before the Bind noted next.
    pub(crate) fn lock_sent(&mut self) {
        self.pending
            .push_back(Expect::Lock(crate::proxy::relay::lock_prelude::BIND_LOCK_ANSWERS));
    }

    /// Whether the next backend frame answers the lock block.
    pub(crate) fn answering_lock(&self) -> bool {
        matches!(self.pending.front(), Some(Expect::Lock(_)))
    }

    /// One of the lock block's answers (not an error) came.
    pub(crate) fn lock_answered(&mut self) {
        if let Some(Expect::Lock(left)) = self.pending.front_mut() {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.pending.pop_front();
            }
        }
    }

    /// The lock block failed: the client's messages after it up to Sync are skipped by the server,
    /// as after the Bind's own error.
    pub(crate) fn lock_failed(&mut self) {
        if self.answering_lock() {
            self.pending.pop_front();
        }
        self.track(b'E', None, None);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{BackendOutcome, Expect, ResultMask};
    use crate::masking::MaskKey;
    use crate::proxy::target_catalog::MaskEntry;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![tag];
        f.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    fn mask() -> ResultMask {
        ResultMask::new(Arc::new(MaskEntry::holding(None)), MaskKey::derive(&[1; 32]), "r")
    }

    /// The block's five answers are the block's; the client's Bind is answered after them.
    #[test]
    fn the_lock_answers_come_before_the_binds() {
        let mut m = mask();
        m.on_frontend(b'P', &frame(b'P', b"s\0SELECT 1\0\0\0"));
        m.lock_sent();
        m.on_frontend(b'B', &frame(b'B', b"\0s\0\0\0\0\0\0\0"));
        m.on_frontend(b'S', &frame(b'S', b""));
        assert!(!m.answering_lock(), "the Parse's answer is first");
        m.track(b'1', None, None);
        for _ in 0..5 {
            assert!(m.answering_lock());
            m.lock_answered();
        }
        assert!(!m.answering_lock());
        assert!(matches!(m.pending.front(), Some(Expect::Bind { .. })));
    }

    /// Its error skips the client's messages up to Sync, as the server does; a Parse among them
    /// is reported failed.
    #[test]
    fn a_failed_lock_skips_to_sync() {
        let mut m = mask();
        m.lock_sent();
        m.on_frontend(b'B', &frame(b'B', b"\0s\0\0\0\0\0\0\0"));
        m.on_frontend(b'E', &frame(b'E', b"\0\0\0\0\0"));
        m.on_frontend(b'P', &frame(b'P', b"t\0SELECT 2\0\0\0"));
        m.on_frontend(b'S', &frame(b'S', b""));
        m.lock_answered();
        m.lock_failed();
        assert_eq!(m.pending.front(), Some(&Expect::Sync));
        assert_eq!(m.outcomes, vec![BackendOutcome::ParseFailed("t".into())]);
    }
}
