//! Property and fuzz tests (issue 12 item 7) for every parser that reads what a client, a config
//! file or an auditor sends: the frontend interceptor (statement checks over any sequence of
//! protocol messages), the classifier and its shape cache, the startup packet parser, the SCRAM
//! server, the config loader, the auditors' SQL gate, statement redaction and the audit journal
//! reader. Each must never panic, and the security properties must hold for every generated case:
//! a read role never gets a write forwarded, a random proof never authenticates, a secret never
//! survives redaction.
//!
//! A bounded run under `cargo test` (`PROPTEST_CASES` cases per property, 256 unless set); a long
//! run is `PROPTEST_CASES=1000000 cargo test --release --test fuzz`. Failures are shrunk by
//! proptest and the minimal case printed; seeds of failures are kept in
//! `tests/fuzz.proptest-regressions` and replayed first.

use std::sync::Arc;

use bytes::BytesMut;
use proptest::prelude::*;
use timebox::policy::{classify, ClassifyCache, RolePolicy, StatementClass};
use timebox::proxy::intercept::{FrontendAction, Interceptor};

// ---- generators --------------------------------------------------------------------------------

/// Statements a read role may run.
const READS: &[&str] = &[
    "SELECT 1",
    "SELECT * FROM orders WHERE id = 42",
    "SELECT count(*) FROM customers c JOIN orders o ON o.customer = c.id",
    "WITH t AS (SELECT 1 AS x) SELECT x FROM t",
    "TABLE orders",
    "VALUES (1), (2)",
    "SHOW search_path",
    "EXPLAIN SELECT * FROM orders",
    "SELECT lower('A'), now(), 'x' || 'y'",
    "BEGIN",
    "COMMIT",
];

/// Statements or fragments that change data, schema or the server: never for a read role.
const WRITES: &[&str] = &[
    "DELETE FROM orders",
    "UPDATE orders SET total = 0 WHERE id = 1",
    "INSERT INTO orders VALUES (1)",
    "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
    "EXPLAIN ANALYZE DELETE FROM orders",
    "PREPARE p AS DELETE FROM orders",
    "COPY orders FROM STDIN",
    "DO $$ BEGIN DELETE FROM orders; END $$",
    "SELECT nextval('s')",
    "SELECT pg_terminate_backend(1)",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SET default_transaction_read_only = off",
    "CREATE TABLE t (a int)",
    "DROP TABLE orders",
    "TRUNCATE orders",
    "SELECT * FROM orders FOR UPDATE",
    "MERGE INTO orders o USING s ON o.id = s.id WHEN MATCHED THEN DELETE",
    "SELECT my_function()",
    "LOCK orders",
    "CALL p()",
    "GRANT ALL ON orders TO public",
    "ALTER SYSTEM SET work_mem = '1GB'",
    "UPDATE pg_settings SET setting = 'x' WHERE name = 'y'",
    "SELECT lo_unlink(1)",
    "BEGIN READ WRITE",
    "START TRANSACTION READ WRITE",
];

/// Text that PostgreSQL skips between tokens.
fn trivia() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(" ".to_string()),
        Just("\n".to_string()),
        Just("\t ".to_string()),
        Just(" /* c */ ".to_string()),
        Just(" /* a /* nested */ comment */ ".to_string()),
        Just(" -- line comment\n".to_string()),
    ]
}

/// Changes the case of ASCII letters outside quotes and dollar quotes (keywords and identifiers
/// fold; literal contents must not change meaning).
fn recase(sql: &str, mask: u64) -> String {
    let mut quote: Option<char> = None;
    let mut dollar = false;
    let mut prev = ' ';
    sql.chars()
        .enumerate()
        .map(|(i, c)| {
            match (quote, c) {
                (None, '\'' | '"') if !dollar => quote = Some(c),
                (Some(q), _) if c == q => quote = None,
                (None, '$') if prev == '$' => dollar = !dollar,
                _ => {}
            }
            prev = c;
            if quote.is_none() && !dollar && c.is_ascii_alphabetic() && mask >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// A message text holding one write among reads: `reads; write; reads`, with trivia, case and
/// trailing-semicolon variations. Every such text must be denied to a read role.
fn text_with_a_write() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(READS), 0..3),
        prop::sample::select(WRITES),
        prop::collection::vec(prop::sample::select(READS), 0..3),
        trivia(),
        trivia(),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(before, write, after, t1, t2, mask, trailing)| {
            let mut parts: Vec<String> = before.iter().map(|s| s.to_string()).collect();
            parts.push(format!("{t1}{}{t2}", recase(write, mask)));
            parts.extend(after.iter().map(|s| s.to_string()));
            let mut text = parts.join(";");
            if trailing {
                text.push(';');
            }
            text
        })
}

/// Arbitrary SQL-ish text: fragments of both lists, punctuation and random characters.
fn sqlish() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        prop::sample::select(READS).prop_map(str::to_string),
        prop::sample::select(WRITES).prop_map(str::to_string),
        Just(";".to_string()),
        Just("'".to_string()),
        Just("$$".to_string()),
        Just("/*".to_string()),
        Just("*/".to_string()),
        Just("--".to_string()),
        Just("E'\\'".to_string()),
        Just("U&'\\0041'".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        "[ -~]{0,12}",
        "\\PC{0,6}",
    ];
    prop::collection::vec(atom, 0..8).prop_map(|v| v.join(" "))
}

/// Well-formed statements of both lists, joined with trivia (comments included).
fn well_formed() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (
            prop_oneof![prop::sample::select(READS), prop::sample::select(WRITES)],
            trivia(),
        ),
        0..3,
    )
    .prop_map(|v| {
        v.iter()
            .map(|(s, t)| format!("{s}{t}"))
            .collect::<Vec<_>>()
            .join(";")
    })
}

fn query_frame(sql: &str) -> BytesMut {
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::query(sql, &mut out).expect("query frame");
    out
}

fn parse_frame(name: &str, sql: &str) -> BytesMut {
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::parse(name, sql, std::iter::empty(), &mut out)
        .expect("parse frame");
    out
}

/// A frame of `tag` with `body` (tag, length word, body), as the relay hands them over.
fn raw_frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn read_interceptor(cache: &Arc<ClassifyCache>) -> Interceptor {
    let policy = RolePolicy::with_classes("read", &[StatementClass::Read]);
    Interceptor::new(Arc::new(policy), cache.clone(), "g_fuzz", "read")
}

// ---- the interceptor: a read role never gets a write through ------------------------------------

proptest! {
    /// Any text holding a write, as a simple Query or as a Parse, is not forwarded to a read role.
    #[test]
    fn a_read_role_never_gets_a_write_forwarded(text in text_with_a_write()) {
        let cache = Arc::new(ClassifyCache::new(64));
        for (tag, frame) in [(b'Q', query_frame(&text)), (b'P', parse_frame("s", &text))] {
            let mut i = read_interceptor(&cache);
            let mut checked = None;
            let action = i.on_frontend(tag, &frame, &mut checked);
            prop_assert!(action != FrontendAction::Forward, "forwarded {:?} for {text:?}", tag as char);
            let checked = checked.expect("a statement message is always checked");
            prop_assert!(checked.denied.is_some(), "not denied: {text:?}");
        }
    }

    /// Any sequence of protocol messages with any SQL: no panic; every Query or Parse forwarded
    /// was checked, allowed and read-only; a Bind is forwarded only for a statement checked in
    /// this session.
    #[test]
    fn any_message_sequence_is_checked_and_never_panics(
        steps in prop::collection::vec((0u8..8, sqlish(), prop::collection::vec(any::<u8>(), 0..24)), 1..12)
    ) {
        let cache = Arc::new(ClassifyCache::new(64));
        let mut i = read_interceptor(&cache);
        let mut parsed: Vec<String> = Vec::new();
        for (n, (kind, sql, noise)) in steps.iter().enumerate() {
            let name = format!("s{}", n % 3);
            let (tag, frame) = match kind {
                0 => (b'Q', query_frame(sql).to_vec()),
                1 => {
                    parsed.push(name.clone());
                    (b'P', parse_frame(&name, sql).to_vec())
                }
                2 => {
                    let mut body = b"\0".to_vec();
                    body.extend_from_slice(name.as_bytes());
                    body.push(0);
                    body.extend_from_slice(noise);
                    (b'B', raw_frame(b'B', &body))
                }
                3 => (b'S', raw_frame(b'S', &[])),
                4 => (b'E', raw_frame(b'E', b"\0\0\0\0\0")),
                5 => (b'C', raw_frame(b'C', &[b'S', b's', b'1', 0])),
                6 => (b'D', raw_frame(b'D', noise)),
                _ => (b'F', raw_frame(b'F', noise)),
            };
            let mut checked = None;
            let action = i.on_frontend(tag, &frame, &mut checked);
            if action == FrontendAction::Forward && matches!(tag, b'Q' | b'P') {
                let c = checked.as_ref().expect("a forwarded statement was checked");
                prop_assert!(c.denied.is_none());
                prop_assert_eq!(c.classification.class(), StatementClass::Read, "{:?}", sql);
            }
            if tag == b'F' {
                prop_assert!(action != FrontendAction::Forward, "FunctionCall forwarded");
            }
        }
    }

    /// The shape cache answers exactly what a fresh classification answers, also for texts that
    /// differ from a cached one only in their literals.
    #[test]
    fn the_cache_agrees_with_a_fresh_classification(
        text in sqlish(),
        a in any::<u32>(),
        b in "[a-z]{0,8}",
    ) {
        let cache = ClassifyCache::new(64);
        let first = format!("{text} WHERE x = {a} AND y = '{b}'");
        let second = format!("{text} WHERE x = {} AND y = '{}z'", a.wrapping_add(1), b);
        for sql in [&first, &second, &text] {
            let cached = cache.classify(sql);
            prop_assert_eq!(&*cached, &classify(sql), "{:?}", sql);
        }
    }
}

// ---- startup, SCRAM, config, auditors' gate, redaction, journal ---------------------------------

fn startup_body(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196608i32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    body
}

proptest! {
    /// Any bytes as a startup packet body: an answer (a packet or a protocol error), never a panic;
    /// a well-formed startup message with mutated bytes likewise.
    #[test]
    fn startup_packets_never_panic(
        raw in prop::collection::vec(any::<u8>(), 0..64),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let _ = timebox::proxy::wire::parse_startup_packet(&raw);
        let mut body = startup_body(&[("user", "alice"), ("database", "shop"), ("client_encoding", "UTF8")]);
        for (at, byte) in flips {
            let i = at.index(body.len());
            body[i] = byte;
        }
        let _ = timebox::proxy::wire::parse_startup_packet(&body[..cut.index(body.len() + 1)]);
        if let Ok(timebox::proxy::wire::StartupPacket::Startup(m)) = timebox::proxy::wire::parse_startup_packet(&body) {
            let _ = timebox::proxy::startup::check_startup_params(&m);
        }
    }

    /// Any client-first and client-final messages: no panic, and a proof the client could not
    /// compute (random bytes, or a valid message with a changed byte) never authenticates.
    #[test]
    fn scram_never_panics_and_random_proofs_fail(
        first in prop::collection::vec(any::<u8>(), 0..80),
        last in prop::collection::vec(any::<u8>(), 0..120),
        user_nonce in "[A-Za-z0-9+/]{1,24}",
        proof in prop::collection::vec(any::<u8>(), 32..33),
    ) {
        use base64::Engine as _;
        static VERIFIER: std::sync::OnceLock<timebox::grants::token::ScramVerifier> = std::sync::OnceLock::new();
        let verifier = VERIFIER.get_or_init(|| {
            timebox::grants::token::ScramVerifier::derive("tbx_secret_token_for_fuzz", b"saltsaltsaltsalt", 4096)
        });
        let _ = timebox::proxy::scram::server_first("SCRAM-SHA-256", &first, None, &verifier.salt, verifier.iterations);
        let client_first = format!("n,,n=,r={user_nonce}");
        let (server_first, state) = timebox::proxy::scram::server_first(
            "SCRAM-SHA-256", client_first.as_bytes(), None, &verifier.salt, verifier.iterations,
        ).expect("a well-formed client-first");
        let _ = timebox::proxy::scram::client_final(&state, &last, None, &[verifier]);
        let nonce = server_first.split(',').find_map(|p| p.strip_prefix("r=")).expect("nonce").to_string();
        let forged = format!("c=biws,r={nonce},p={}", base64::engine::general_purpose::STANDARD.encode(&proof));
        prop_assert!(timebox::proxy::scram::client_final(&state, forged.as_bytes(), None, &[verifier]).is_err());
    }

    /// The example config with bytes changed, cut or spliced: a config or an error, never a panic.
    #[test]
    fn config_loader_never_panics(
        flips in prop::collection::vec((any::<prop::sample::Index>(), "[ -~\n]"), 0..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let example = include_str!("../config/timebox.example.toml");
        let mut text: Vec<char> = example.chars().collect();
        for (at, with) in flips {
            let i = at.index(text.len());
            text[i] = with.chars().next().unwrap_or(' ');
        }
        let text: String = text.into_iter().collect();
        let _ = timebox::config::Config::from_toml_str(&text);
        let end = text.char_indices().map(|(i, _)| i).nth(cut.index(text.chars().count())).unwrap_or(0);
        let _ = timebox::config::Config::from_toml_str(&text[..end]);
    }

    /// The auditors' SQL gate answers for any text, and refuses every text that writes.
    #[test]
    fn auditors_gate_never_panics_and_refuses_writes(text in sqlish(), write in prop::sample::select(&["DELETE FROM statements", "UPDATE statements SET sql = ''", "DROP VIEW statements", "ATTACH DATABASE 'x' AS y", "PRAGMA writable_schema = 1", "INSERT INTO statements DEFAULT VALUES"][..])) {
        let _ = timebox::auditsql::check_query(&text);
        prop_assert!(timebox::auditsql::check_query(write).is_err(), "{write}");
        prop_assert!(timebox::auditsql::check_query(&format!("SELECT 1; {write}")).is_err(), "{write}");
    }

    /// A password literal in any of PostgreSQL's spellings, among other statements and comments,
    /// never survives redaction; arbitrary text never makes redaction panic. (The statements around
    /// it are well-formed: after an unbalanced quote the "secret" is not a literal at all.)
    #[test]
    fn secrets_never_survive_redaction(
        secret in "[a-z]{4}[0-9]{4}[a-z]{4}",
        spelling in 0usize..6,
        before in well_formed(),
        after in well_formed(),
        noise in sqlish(),
        text in "\\PC{0,40}",
    ) {
        let _ = timebox::audit::redact::redact_sql(&noise);
        let _ = timebox::audit::redact::redact_sql(&text);
        let literal = match spelling {
            0 => format!("'{secret}'"),
            1 => format!("E'{secret}'"),
            2 => format!("$${secret}$$"),
            3 => format!("$q${secret}$q$"),
            4 => format!("N'{secret}'"),
            _ => format!("U&'{secret}'"),
        };
        let stmt = format!("{before}; ALTER ROLE app PASSWORD {literal}; {after}");
        let out = timebox::audit::redact::redact_sql(&stmt);
        prop_assert!(!out.contains(&secret), "{stmt:?} -> {out:?}");
    }

    /// Any line given to the journal reader: a record or an error, never a panic.
    #[test]
    fn journal_lines_never_panic(line in prop::collection::vec(any::<u8>(), 0..200), seq in any::<u64>()) {
        let _ = timebox::audit::journal::parse_line(&line, seq, &[0u8; 32]);
        let mut json = br#"{"seq":1,"ts":"2026-01-01T00:00:00Z","kind":"statement","prev":""#.to_vec();
        json.extend_from_slice(&line);
        let _ = timebox::audit::journal::parse_line(&json, 1, &[0u8; 32]);
    }
}
