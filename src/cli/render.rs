//! The one printer of the CLI: every command's answer goes out either as JSON (`--json`, for scripts)
//! or as text for a terminal (aligned tables, one field per line), decided here and nowhere else;
//! plus the small pure helpers every text rendering uses (alignment, sanitizing, times).
//!
//! Where it sits: under [`crate::cli`], called by each command group after it has its answer. Pure
//! but for [`print()`] (and the [`Printer`] methods that call it), which writes to stdout. What it
//! must never do: print text from the API or the audit trail unsanitized (a newline or a terminal
//! escape in a reason must not forge a row or recolour the terminal).

use std::io::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::client::ApiResponse;

/// How a command prints: the `--json` flag every command has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Text for a terminal.
    Text,
    /// Pretty JSON, exactly what the admin API answered (or the local value serialized).
    Json,
    /// One compact JSON value per line (`audit tail --json`, so a stream stays line-oriented).
    JsonLines,
}

impl Format {
    /// [`Format::Json`] when `--json` was given, else [`Format::Text`].
    pub fn json_if(json: bool) -> Format {
        if json {
            Format::Json
        } else {
            Format::Text
        }
    }
}

/// What a command prints, in the format it was asked for.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub format: Format,
}

impl Printer {
    pub fn new(format: Format) -> Printer {
        Printer { format }
    }

    /// `--json` on or off.
    pub fn json_if(json: bool) -> Printer {
        Printer::new(Format::json_if(json))
    }

    /// An admin API answer: its JSON as received, or `text` of its typed reading.
    pub fn answer<T>(&self, answer: &ApiResponse<T>, text: impl FnOnce(&T) -> String) {
        print(&self.render(&answer.raw, || text(&answer.body)));
    }

    /// A value made here (a verification report read offline, a head): serialized, or `text` of it.
    pub fn value<T: Serialize>(&self, value: &T, text: impl FnOnce(&T) -> String) {
        let json = serde_json::to_value(value).unwrap_or_default();
        print(&self.render(&json, || text(value)));
    }

    /// Several values (audit records): one JSON value each, or `text` of all of them.
    pub fn values<T: Serialize>(&self, values: &[T], text: impl FnOnce(&[T]) -> String) {
        let json = serde_json::to_value(values).unwrap_or_default();
        print(&self.render(&json, || text(values)));
    }

    /// The text to print for `json` (or for `text()` in [`Format::Text`]). Pure.
    pub fn render(&self, json: &serde_json::Value, text: impl FnOnce() -> String) -> String {
        match self.format {
            Format::Text => text(),
            Format::Json => render_json(json),
            Format::JsonLines => match json {
                serde_json::Value::Array(items) => items.iter().map(|v| format!("{v}\n")).collect(),
                other => format!("{other}\n"),
            },
        }
    }
}

/// Writes `text` to stdout and flushes it (a `tail --follow` reader sees each batch at once).
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Pretty JSON with a final newline.
pub fn render_json(value: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    text.push('\n');
    text
}

/// A time as the tables show it: RFC 3339, whole seconds, `Z`.
pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Control characters (newlines, terminal escapes) from API text become spaces before printing.
pub fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// `s` cut to `max_chars`, the last one an ellipsis when cut.
pub fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max_chars.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// Rows of cells as aligned columns separated by two spaces; the last column is not padded.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A list command's table: `none` (e.g. "no grants") when `items` is empty, else a header and one
/// row of `cells` per item.
pub fn render_rows<T>(items: &[T], none: &str, header: &[&str], cells: impl Fn(&T) -> Vec<String>) -> String {
    if items.is_empty() {
        return format!("{none}\n");
    }
    let rows: Vec<Vec<String>> = items.iter().map(cells).collect();
    render_table(header, &rows)
}

/// `key  value` lines, keys padded to the longest, values sanitized: the `show` commands.
pub fn render_fields(fields: &[(&str, String)]) -> String {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    fields
        .iter()
        .map(|(key, value)| format!("{key:<width$}  {}\n", sanitize(value)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_printer_decides_json_or_text() {
        let raw = json!({"id": "g_1", "note": "a\nb"});
        let text = Printer::json_if(false).render(&raw, || "table\n".into());
        assert_eq!(text, "table\n");
        let pretty = Printer::json_if(true).render(&raw, || unreachable!("no text for --json"));
        assert_eq!(pretty, "{\n  \"id\": \"g_1\",\n  \"note\": \"a\\nb\"\n}\n");
        let lines =
            Printer::new(Format::JsonLines).render(&json!([{"seq": 1}, {"seq": 2}]), || unreachable!());
        assert_eq!(lines, "{\"seq\":1}\n{\"seq\":2}\n", "one record per line");
        assert_eq!(
            Printer::new(Format::JsonLines).render(&json!([]), || unreachable!()),
            ""
        );
    }

    #[test]
    fn fields_are_aligned_and_sanitized() {
        assert_eq!(
            render_fields(&[("id", "g_1".into()), ("reason", "a\nb\x1b[31m".into())]),
            "id      g_1\nreason  a b [31m\n"
        );
    }
}
