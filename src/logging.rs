//! Log output: the tracing subscriber the `timebox serve` binary installs, built here so a test can
//! install the same one on a buffer.
//!
//! Where it sits: every `tracing` event of the library ends up in [`escaping_writer`]'s writer as
//! one formatted line. Many of those lines carry client-supplied text (the startup user name,
//! database, application name, statement errors): a client must never be able to start a line of
//! its own (log forging) or send terminal escape sequences to whoever reads the log. So, after
//! formatting and before the bytes reach stderr, every control character of an event — C0 controls
//! including `\n` and `\r`, DEL, C1 controls, and the Unicode line and paragraph separators — is
//! written as a visible escape (`\n`, `\x1b`, `\u{85}`), and each event ends with exactly one newline.
//! This module must never let an event write more than one line.

use std::borrow::Cow;
use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// `text` with every control character written as a visible escape (see the module docs); borrowed
/// when there is none. Pure.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && needs_escape(c) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// C0 controls, DEL, C1 controls, the Unicode line/paragraph separators, and the bidirectional
/// embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069), which make a terminal show a
/// line's text in another order than it has (the same set the API refuses in free text).
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// One log line from one formatted event: its control characters escaped, one final newline.
pub fn log_line(event: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(event);
    let body = text.strip_suffix('\n').unwrap_or(&text);
    let mut line = escape_controls(body).into_owned().into_bytes();
    line.push(b'\n');
    line
}

/// A [`MakeWriter`] whose writers collect one event and write it, escaped by [`log_line`], to the
/// inner writer in one `write_all` when dropped (the fmt layer makes one writer per event).
#[derive(Debug, Clone)]
pub struct EscapingMakeWriter<M> {
    inner: M,
}

/// Wraps `inner` so that every event it receives is written as exactly one escaped line.
pub fn escaping_writer<M>(inner: M) -> EscapingMakeWriter<M> {
    EscapingMakeWriter { inner }
}

/// The writer of one event (see [`EscapingMakeWriter`]).
pub struct EscapingWriter<W: Write> {
    inner: W,
    event: Vec<u8>,
}

impl<W: Write> Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.event.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for EscapingWriter<W> {
    fn drop(&mut self) {
        if self.event.is_empty() {
            return;
        }
        let line = log_line(&self.event);
        // Nowhere to report a failing log write.
        let _ = self.inner.write_all(&line);
        let _ = self.inner.flush();
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for EscapingMakeWriter<M> {
    type Writer = EscapingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        EscapingWriter {
            inner: self.inner.make_writer(),
            event: Vec::with_capacity(256),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        EscapingWriter {
            inner: self.inner.make_writer_for(meta),
            event: Vec::with_capacity(256),
        }
    }
}

/// The subscriber `timebox serve` installs: `filter`, plain text (no ANSI colours: escapes are
/// escaped), every event one line on `writer`.
pub fn subscriber<M>(filter: EnvFilter, writer: M) -> impl tracing::Subscriber + Send + Sync
where
    M: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(escaping_writer(writer))
        .finish()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn controls_are_escaped_and_plain_text_is_borrowed() {
        assert!(matches!(escape_controls("alice é 日本"), Cow::Borrowed(_)));
        assert_eq!(escape_controls("evil\nFORGED"), "evil\\nFORGED");
        assert_eq!(escape_controls("a\r\nb\tc"), "a\\r\\nb\\tc");
        assert_eq!(escape_controls("\x1b[31mred\x1b[0m"), "\\x1b[31mred\\x1b[0m");
        assert_eq!(escape_controls("nul\0del\x7f"), "nul\\x00del\\x7f");
        assert_eq!(escape_controls("c1\u{85}csi\u{9b}"), "c1\\u{85}csi\\u{9b}");
        assert_eq!(escape_controls("ls\u{2028}ps\u{2029}"), "ls\\u{2028}ps\\u{2029}");
        // Regression (attack round on issue 16): a right-to-left override in a startup user name
        // was written raw, reordering what an operator reads.
        assert_eq!(escape_controls("bob\u{202e}nimda"), "bob\\u{202e}nimda");
        assert_eq!(escape_controls("x\u{2066}y\u{2069}"), "x\\u{2066}y\\u{2069}");
    }

    #[test]
    fn an_event_is_one_line_whatever_it_contains() {
        assert_eq!(
            log_line(b"INFO x user=evil\nFORGED line\n"),
            b"INFO x user=evil\\nFORGED line\n"
        );
        assert_eq!(log_line(b"no newline"), b"no newline\n");
        assert_eq!(log_line(b"two\n\n"), b"two\\n\n");
    }

    /// A buffer the test can read after the subscriber wrote to it.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    /// Regression (issue 16, finding 9a): a startup user name with a newline or an ANSI escape wrote
    /// a forged standalone log line. Span fields, event fields and messages are all covered.
    #[test]
    fn client_text_cannot_start_a_log_line() {
        let buffer = Buffer::default();
        let subscriber = subscriber(EnvFilter::new("info"), buffer.clone());
        tracing::subscriber::with_default(subscriber, || {
            let user = "evil\nFORGED INFO timebox: admin login ok\r\n\x1b[2K\x1b[1Gspoofed";
            let span = tracing::info_span!("session", user = %user);
            let _enter = span.enter();
            tracing::info!(reason = %user, "authentication failed");
            tracing::info!("message with {user}");
            tracing::info!(?user, "debug formatted");
        });
        let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        for line in &lines {
            assert!(line.contains("INFO"), "{line}");
            assert!(!line.contains('\x1b') && !line.contains('\r'), "{line:?}");
        }
        assert!(
            !out.lines()
                .any(|l| l.starts_with("FORGED") || l.starts_with("spoofed")),
            "{out}"
        );
        assert!(lines[0].contains("user=evil\\nFORGED"), "{}", lines[0]);
        assert!(lines[1].contains("\\x1b[2K"), "{}", lines[1]);
    }
}
