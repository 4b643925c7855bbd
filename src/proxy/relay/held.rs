//! Backend frames the relay holds back and reads before the client sees them: CommandComplete
//! (outcome tags), ErrorResponse (outcome SQLSTATE, denial markers) and ParameterStatus (settings
//! that change how SQL text is lexed). Decoded with `postgres_protocol`'s backend messages; every
//! other frame is forwarded undecoded. Pure functions over one whole frame; a malformed frame
//! yields `None`, never a panic.

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;

use crate::proxy::startup;

/// Frames the relay inspects before forwarding: ErrorResponse (denial markers, outcome SQLSTATE),
/// ParameterStatus (settings that change how SQL is lexed) and CommandComplete (outcome tags).
pub(crate) fn held_tag(tag: u8) -> bool {
    tag == b'E' || tag == b'S' || tag == b'C'
}

/// Decodes held frames through one reused buffer: `postgres_protocol` parses from a `BytesMut`,
/// and the relay's frames stay in its outbox, so each is copied here first. Once the first frame
/// has sized the buffer, decoding allocates nothing but the values it returns.
#[derive(Debug, Default)]
pub(crate) struct HeldDecoder {
    scratch: BytesMut,
}

impl HeldDecoder {
    /// Decodes one whole backend frame.
    fn parse(&mut self, frame: &[u8]) -> Option<Message> {
        self.scratch.clear();
        self.scratch.extend_from_slice(frame);
        Message::parse(&mut self.scratch).ok().flatten()
    }

    /// The tag of a CommandComplete frame ("UPDATE 3").
    pub(crate) fn command_tag(&mut self, frame: &[u8]) -> Option<String> {
        match self.parse(frame)? {
            Message::CommandComplete(body) => body.tag().ok().map(str::to_owned),
            _ => None,
        }
    }

    /// The SQLSTATE of an ErrorResponse frame.
    pub(crate) fn error_sqlstate(&mut self, frame: &[u8]) -> Option<String> {
        let Message::ErrorResponse(body) = self.parse(frame)? else {
            return None;
        };
        let mut fields = body.fields();
        while let Ok(Some(field)) = fields.next() {
            if field.type_() == b'C' {
                return Some(String::from_utf8_lossy(field.value_bytes()).into_owned());
            }
        }
        None
    }

    /// If a ParameterStatus frame reports a setting that changes how SQL text is lexed to a value
    /// timebox does not read statements with, the reason to end the session.
    pub(crate) fn lexing_problem(&mut self, frame: &[u8]) -> Option<String> {
        let Message::ParameterStatus(body) = self.parse(frame)? else {
            return None;
        };
        let (name, value) = (body.name().ok()?, body.value().ok()?);
        let ok = match name {
            "standard_conforming_strings" => value.eq_ignore_ascii_case("on"),
            "client_encoding" => startup::client_encoding_is_readable(value),
            _ => true,
        };
        (!ok).then(|| format!("the server reported {name} = {value}, which changes how statements are read"))
    }
}

/// [`HeldDecoder::command_tag`] of one frame.
#[cfg(test)]
fn command_tag(frame: &[u8]) -> Option<String> {
    HeldDecoder::default().command_tag(frame)
}

/// [`HeldDecoder::error_sqlstate`] of one frame.
#[cfg(test)]
fn error_sqlstate(frame: &[u8]) -> Option<String> {
    HeldDecoder::default().error_sqlstate(frame)
}

/// Rows counted in a command tag ("INSERT 0 5" → 5, "SELECT 3" → 3).
pub(crate) fn rows_of(tag: &str) -> Option<u64> {
    let last = tag.rsplit(';').next()?.split_whitespace().last()?;
    last.parse().ok()
}

/// [`HeldDecoder::lexing_problem`] of one frame (the upstream's startup settings).
pub(crate) fn lexing_problem(frame: &[u8]) -> Option<String> {
    HeldDecoder::default().lexing_problem(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::relay::test_frame as frame;
    use crate::proxy::wire::{self, PgError};

    #[test]
    fn lexing_settings_reported_by_the_server_are_checked() {
        let status = |name: &str, value: &str| {
            let mut b = BytesMut::new();
            wire::parameter_status(&mut b, name, value);
            lexing_problem(&b)
        };
        assert_eq!(status("standard_conforming_strings", "on"), None);
        assert!(status("standard_conforming_strings", "off").is_some());
        assert_eq!(status("client_encoding", "UTF8"), None);
        assert!(status("client_encoding", "SJIS").is_some());
        assert!(status("client_encoding", "BIG5").is_some());
        assert_eq!(status("TimeZone", "UTC"), None);
        assert_eq!(status("application_name", "anything"), None);
    }

    #[test]
    fn one_decoder_reads_frame_after_frame() {
        let mut d = HeldDecoder::default();
        let error = PgError::insufficient_privilege("no").to_bytes();
        for _ in 0..3 {
            assert_eq!(
                d.command_tag(&frame(b'C', b"SELECT 12\0")).as_deref(),
                Some("SELECT 12")
            );
            assert_eq!(d.error_sqlstate(&error).as_deref(), Some("42501"));
            assert_eq!(
                d.command_tag(&frame(b'C', b"COPY 1\0")).as_deref(),
                Some("COPY 1")
            );
        }
    }

    #[test]
    fn outcome_tags_and_sqlstates_are_read_from_whole_frames() {
        assert_eq!(
            command_tag(&frame(b'C', b"UPDATE 3\0")).as_deref(),
            Some("UPDATE 3")
        );
        assert_eq!(rows_of("UPDATE 3"), Some(3));
        assert_eq!(rows_of("INSERT 0 5"), Some(5));
        assert_eq!(rows_of("BEGIN; SELECT 2"), Some(2));
        assert_eq!(rows_of("CREATE TABLE"), None);
        let error = PgError::insufficient_privilege("no").to_bytes();
        assert_eq!(error_sqlstate(&error).as_deref(), Some("42501"));
        // Other frames, truncated frames and garbage are not mistaken for them.
        assert_eq!(command_tag(&error), None);
        assert_eq!(error_sqlstate(&frame(b'C', b"SELECT 1\0")), None);
        assert_eq!(error_sqlstate(&error[..error.len() - 3]), None);
        assert_eq!(command_tag(&frame(b'C', b"no terminator")), None);
        assert_eq!(error_sqlstate(&frame(b'E', b"C\xff\xfe")), None);
        assert_eq!(lexing_problem(&frame(b'S', b"client_encoding\0")), None);
        assert_eq!(lexing_problem(&[b'S', 0, 0, 0, 1]), None);
    }
}
