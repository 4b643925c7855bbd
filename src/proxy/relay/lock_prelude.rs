//! The check atomic with the statement (issue 15, s10): before a masked role's Query that reads
//! relations, timebox locks them and confirms, in the session's own transaction, that the target's
//! catalog is still the copy the statement was checked against.
//!
//! Why: the text is checked against a copy of the catalog confirmed current just before it goes
//! ([`super::mask`]), but a statement that waits for a lock — a view being replaced in another
//! transaction — runs on what that transaction committed. The result's second check refuses its
//! rows and the wrap ([`super::wrap`]) rolls its effects back, but code the replaced view ran had
//! run: what it showed other sessions while it ran (a setting in `pg_stat_activity`) could not
//! be taken back (the s9 third attack's open leak).
//!
//! How: one `DO` block, pipelined ahead of the client's Query in the same transaction (after
//! timebox's `BEGIN`, or in the client's block):
//! 1. each relation the statement names — and those of the prepared statements it executes — is
//!    resolved with the session's `search_path` (the statement's) and locked to the transaction's
//!    end: tables, partitioned tables and views with `LOCK TABLE … IN ACCESS SHARE MODE` (which
//!    locks a view's relations too, recursively); materialized views and tables granted by column
//!    by an empty `TABLESAMPLE` read (refused at parse analysis for anything else, so a name that
//!    became a view while it waited is never planned); sequences through
//!    `pg_sequence_last_value` (its lock lasts to the transaction's end: `pg_relation_size`'s does
//!    not, s10 fifth attack); anything else fails the block. Replacing or dropping any of them now
//!    waits for the end of the transaction; a name that resolves to nothing is left to the
//!    statement (which fails as without timebox). Only in READ COMMITTED (see [`ISOLATION`]);
//! 2. each table, view and materialized view is planned (`EXPLAIN SELECT FROM …`, with
//!    `lock_timeout` at 1 ms for those statements only): the planner opens every index of what it
//!    reads and keeps those locks to the transaction's end, so the statement's own planning waits
//!    for none (s11 eighth attack: a statement waiting for an index a `REINDEX` held planned, once
//!    the accomplice committed, a new index whose expression called user code, and a view's domain
//!    with a new CHECK); an index held by another session fails the block (`INDEX_LOCKED`) rather
//!    than wait — a wait after the fingerprint would be planned on what committed meanwhile;
//! 3. the catalog's fingerprint ([`crate::masking::freshness::canonical_query`]) is read and
//!    compared with the one of the copy the statement was checked against: when it differs —
//!    something committed while the locks were awaited — the block raises, the transaction fails,
//!    and the client's Query, pipelined behind it, runs nothing (`25P02`); the relay answers it
//!    with timebox's refusal instead ([`changed_marker`]).
//!
//! Left: DDL that takes no lock on the relations named (a cast, operator or function overload
//! created) committed in the instant between the fingerprint read and the statement's own parse.
//! Every name, operator and collation in the block is schema-qualified (the session's
//! `search_path` is the client's).
//!
//! In the extended protocol the block goes ahead of each masked Bind that reads relations, as
//! Parse/Bind/Execute/Close messages of its own ([`bind_lock`]): its answers are matched like the
//! client's messages' (`super::mask`'s `Expect::Lock`) and dropped ([`Session::lock_frame`]); its
//! error answers the client's batch instead (PostgreSQL skips the client's Bind and the rest up to
//! Sync: nothing of it ran). The texts are pure; the relay's glue is at the end.

use bytes::BytesMut;

use super::outbox::OutboxError;
use super::Relay;
use crate::masking::freshness::{canonical_query, CatalogFingerprint};
use crate::policy::classify::Relation;
use crate::policy::mask_shape::MaskDenial;
use crate::proxy::session::Session;

/// The message of the error the block raises when the catalog changed.
const CHANGED: &str = "timebox_catalog_changed_while_locking";

/// The block's error in a transaction that is not READ COMMITTED (s10 fifth attack): there every
/// query reads the transaction's snapshot, taken before the locks were awaited, so the fingerprint
/// would not see what committed meanwhile — which the statement's own catalog lookups do see.
/// The block's error for a relation it cannot hold locked (a view granted by column only, a
/// foreign table): fail closed (`%s`: the relation).
const UNLOCKABLE: &str = "timebox: for roles with masks, %s cannot be locked before the statement runs (a view needs SELECT on the whole view)";

/// The block's error when an index of a relation is locked by another session (s11 eighth
/// attack): the planner would wait for it after the fingerprint was compared, and plan with what
/// that session committed meanwhile (a new index whose expression calls user code).
const INDEX_LOCKED: &str = "timebox: an index of %s is locked by another session (REINDEX, DROP INDEX?), and for roles with masks a statement may not wait for one after timebox confirmed the catalog; it did not run: try again";

pub(crate) const ISOLATION: &str = "timebox: for roles with masks, statements that read relations run only in READ COMMITTED transactions (timebox confirms the catalog right before they run, which a REPEATABLE READ or SERIALIZABLE snapshot cannot)";

/// Never the canonical form of a fingerprint: with no fingerprint to compare, the block raises.
const NO_FINGERPRINT: &str = "none";

/// Whether an ErrorResponse (from its type byte) is the block's "catalog changed" error.
pub(crate) fn changed_marker(frame: &[u8]) -> bool {
    has_field(frame, b'M', CHANGED)
}

/// Whether a NoticeResponse is the warning of a `BEGIN` inside a block (`25001`).
pub(crate) fn begin_warning(frame: &[u8]) -> bool {
    has_field(frame, b'C', "25001")
}

/// Whether an ErrorResponse or NoticeResponse has field `code` equal to `value`.
fn has_field(frame: &[u8], code: u8, value: &str) -> bool {
    frame
        .get(5..)
        .unwrap_or_default()
        .split(|b| *b == 0)
        .any(|field| field.first() == Some(&code) && &field[1..] == value.as_bytes())
}

/// The `DO` block locking `relations` and comparing the fingerprint with `expected` (SQL text).
/// The fingerprint is read by the session's prepared statement `check` (prepared by the block
/// when the session has none of that name with the block's own text: planning the query costs
/// more than running it; a client's `DEALLOCATE ALL` only makes the next block prepare it again,
/// and a statement of that name the client prepared itself is deallocated first — s11 sixth
/// attack: a client's `PREPARE timebox_check_… AS SELECT '<fingerprint>'` answered every block
/// with the fingerprint it expected).
pub(crate) fn lock_block(
    relations: &[Relation],
    expected: Option<&CatalogFingerprint>,
    check: &str,
) -> String {
    let names: Vec<String> = relations.iter().map(|r| literal(&r.to_string())).collect();
    let expected = expected.map_or_else(|| NO_FINGERPRINT.to_owned(), |f| f.canonical());
    let prepare = format!("PREPARE {check} AS {}", canonical_query());
    format!(
        "DO $timebox_lock$ DECLARE n pg_catalog.text; r pg_catalog.regclass; k pg_catalog.\"char\"; fp pg_catalog.text; saved pg_catalog.text; \
         BEGIN \
         IF pg_catalog.current_setting('transaction_isolation') OPERATOR(pg_catalog.<>) 'read committed' THEN \
           RAISE EXCEPTION USING MESSAGE = '{ISOLATION}', ERRCODE = '0A000'; \
         END IF; \
         FOREACH n IN ARRAY ARRAY[{names}]::pg_catalog.text[] LOOP \
           r := pg_catalog.to_regclass(n); \
           CONTINUE WHEN r IS NULL; \
           SELECT c.relkind INTO k FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) r; \
           IF k OPERATOR(pg_catalog.=) ANY ('{{r,p,v}}'::pg_catalog.\"char\"[]) \
              AND pg_catalog.has_table_privilege(r, 'SELECT') THEN \
             EXECUTE pg_catalog.format('LOCK TABLE %s IN ACCESS SHARE MODE', r); \
           ELSIF k OPERATOR(pg_catalog.=) ANY ('{{r,p,m}}'::pg_catalog.\"char\"[]) THEN \
             EXECUTE pg_catalog.format('SELECT FROM %s TABLESAMPLE pg_catalog.system (0) LIMIT 0', r); \
           ELSIF k OPERATOR(pg_catalog.=) 'S' THEN \
             PERFORM pg_catalog.pg_sequence_last_value(r); \
           ELSE \
             RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = pg_catalog.format('{UNLOCKABLE}', r); \
           END IF; \
         END LOOP; \
         saved := pg_catalog.current_setting('lock_timeout'); \
         PERFORM pg_catalog.set_config('lock_timeout', '1', true); \
         FOREACH n IN ARRAY ARRAY[{names}]::pg_catalog.text[] LOOP \
           r := pg_catalog.to_regclass(n); \
           CONTINUE WHEN r IS NULL; \
           SELECT c.relkind INTO k FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) r; \
           CONTINUE WHEN NOT k OPERATOR(pg_catalog.=) ANY ('{{r,p,v,m}}'::pg_catalog.\"char\"[]); \
           BEGIN \
             EXECUTE pg_catalog.format('EXPLAIN SELECT FROM %s', r); \
           EXCEPTION WHEN lock_not_available THEN \
             RAISE EXCEPTION USING ERRCODE = '55P03', MESSAGE = pg_catalog.format('{INDEX_LOCKED}', r); \
           END; \
         END LOOP; \
         PERFORM pg_catalog.set_config('lock_timeout', saved, true); \
         IF NOT EXISTS (SELECT FROM pg_catalog.pg_prepared_statements s \
             WHERE s.name OPERATOR(pg_catalog.=) {check_literal} \
               AND s.statement OPERATOR(pg_catalog.=) {prepare}) THEN \
           IF EXISTS (SELECT FROM pg_catalog.pg_prepared_statements s \
               WHERE s.name OPERATOR(pg_catalog.=) {check_literal}) THEN \
             EXECUTE {deallocate}; \
           END IF; \
           EXECUTE {prepare}; \
         END IF; \
         EXECUTE {execute} INTO fp; \
         IF NOT COALESCE(fp OPERATOR(pg_catalog.=) {expected}, false) THEN \
           RAISE EXCEPTION USING MESSAGE = '{CHANGED}', ERRCODE = '55000'; \
         END IF; \
         END $timebox_lock$",
        names = names.join(", "),
        check_literal = literal(check),
        prepare = literal(&prepare),
        execute = literal(&format!("EXECUTE {check}")),
        deallocate = literal(&format!("DEALLOCATE {check}")),
        expected = literal(&expected),
    )
}

/// The first statement of a Query frame's text (a client's `BEGIN …` opening its string, s10):
/// sent ahead of the lock block, so that the block it opens — with the isolation level and
/// access mode it asks for — is the one the relations are locked in; the client's own copy then
/// only warns (`25001`, dropped by the wrap). `None` when the text does not split.
pub(crate) fn leading_begin(query_frame: &[u8]) -> Option<String> {
    let body = query_frame.get(5..)?;
    let text = std::str::from_utf8(&body[..body.iter().position(|b| *b == 0)?]).ok()?;
    let first = pg_query::split_with_parser(text).ok()?.into_iter().next()?.trim();
    (!first.is_empty()).then(|| first.to_owned())
}

/// The answers PostgreSQL sends to [`bind_lock`]'s messages when the block succeeds
/// (ParseComplete, BindComplete, CommandComplete, CloseComplete twice); on an error, its
/// ErrorResponse alone (the server then skips everything up to the client's Sync).
pub(crate) const BIND_LOCK_ANSWERS: u8 = 5;

/// The lock block as extended-protocol messages, sent ahead of a masked role's Bind (s10): in the
/// extended protocol a Bind plans the statement (again, when an object it reads changed: a view
/// replaced while it waited for its lock), and its Execute runs it. Parse, Bind and Execute of the
/// block under the session's own name `name` (never the client's unnamed statement or portal),
/// then Close of both. In the batch's transaction — implicit or the client's block — so the locks
/// hold until its end; when the block raises, PostgreSQL skips the client's Bind and everything
/// after it up to Sync, as after any error in a batch.
pub(crate) fn bind_lock(name: &str, block: &str) -> BytesMut {
    use postgres_protocol::message::frontend;
    let mut out = BytesMut::new();
    frontend::parse(name, block, std::iter::empty(), &mut out).expect("no NUL in timebox's own SQL");
    // Bind: portal, statement, no parameter formats, no parameters, no result formats.
    let body_len = 4 + 2 * (name.len() + 1) + 6;
    out.extend_from_slice(b"B");
    out.extend_from_slice(&(body_len as u32).to_be_bytes());
    for _ in 0..2 {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&[0]);
    }
    out.extend_from_slice(&[0; 6]);
    frontend::execute(name, 0, &mut out).expect("no NUL in timebox's own name");
    frontend::close(b'P', name, &mut out).expect("no NUL in timebox's own name");
    frontend::close(b'S', name, &mut out).expect("no NUL in timebox's own name");
    out
}

/// Why a masked role's text is refused when it names a session's temporary schema (`pg_temp_N`,
/// `pg_toast_temp_N`, any spelling case; s10 fifth attack): another session's temporary objects
/// are left out of the catalog fingerprint, yet a statement can use them — the row type of its
/// table or a composite type altered to carry a domain whose CHECK runs code, a policy on an empty
/// temporary table run at planning. The session's own are reached as `pg_temp` (still allowed).
pub(crate) fn temporary_schema_refusal(text: &str, role: &str) -> Option<MaskDenial> {
    let lower = text.to_ascii_lowercase();
    let named = |prefix: &str| {
        lower
            .match_indices(prefix)
            .any(|(at, _)| lower[at + prefix.len()..].starts_with(|c: char| c.is_ascii_digit()))
    };
    (named("pg_temp_") || named("pg_toast_temp_")).then(|| MaskDenial {
        reason: format!(
            "role \"{role}\" masks columns, and the statement names a session's temporary schema (pg_temp_N): timebox does not follow other sessions' temporary objects"
        ),
        hint: "Use your own temporary objects through pg_temp.",
    })
}

/// A SQL string literal (standard conforming: quotes doubled; timebox's sessions keep
/// `standard_conforming_strings` on).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// What goes upstream ahead of a masked role's Query: a `BEGIN` (`begin`: timebox's, or the
/// client's own leading one, see [`leading_begin`]) and, when the Query reads relations, the lock
/// block; one Query message (`None`: nothing).
pub(crate) fn prelude(begin: Option<&str>, lock: Option<String>) -> Option<BytesMut> {
    let sql = match (begin, lock) {
        (None, None) => return None,
        (Some(begin), None) => begin.to_owned(),
        (None, Some(block)) => block,
        // A line break first: the client's `BEGIN` may end in a `--` comment (s10 fifth attack:
        // it commented the block out).
        (Some(begin), Some(block)) => format!("{begin}\n; {block}"),
    };
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::query(&sql, &mut out).expect("no NUL in timebox's own SQL");
    Some(out)
}

impl Session {
    /// A backend frame answering timebox's lock block ahead of a Bind: dropped, or (an error)
    /// replaced by the refusal the client's batch gets instead — timebox's when the catalog
    /// changed, else the block's own error (a lock timeout, a cancel) without DETAIL.
    pub(super) fn lock_frame(
        &mut self,
        r: &mut Relay,
        (tag, start, end): (u8, u64, u64),
    ) -> Result<(), OutboxError> {
        if tag != b'E' {
            if let Some(m) = r.mask.as_mut() {
                m.lock_answered();
            }
            return r.bufs.outbox.replace_frame(start, end, &[]);
        }
        let frame = r.bufs.outbox.frame_bytes(start, end)?;
        let bytes = if changed_marker(frame) {
            tracing::info!(
                "the catalog changed while a masked Bind's relations were locked; its batch did not run"
            );
            self.ctx.proxy.masking_metrics.masking_refusals_total.inc();
            match r.mask.as_ref() {
                Some(m) => m.locked_changed_error().to_bytes(),
                None => crate::proxy::wire::PgError::masked_effects_kept().to_bytes(),
            }
        } else {
            super::mask::without_detail(frame).unwrap_or_else(|| BytesMut::from(frame))
        };
        // The batch failed upstream: the hold on the client's frames learns it (and lets them go).
        self.batch_frame(r, (tag, start, end))?;
        r.sync.error(r.held.error_sqlstate(&bytes));
        r.bufs.outbox.replace_frame(start, end, &bytes)?;
        if let Some(m) = r.mask.as_mut() {
            m.lock_failed();
            self.interceptor.on_backend_outcomes(m.outcomes.drain(..));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(schema: Option<&str>, name: &str) -> Relation {
        Relation {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
        }
    }

    #[test]
    fn the_block_locks_each_name_and_compares_the_fingerprint() {
        let f = CatalogFingerprint::counting(3);
        let block = lock_block(
            &[rel(Some("public"), "v"), rel(None, "It's")],
            Some(&f),
            "timebox_check_ab",
        );
        assert!(block.starts_with("DO $timebox_lock$"), "{block}");
        assert!(
            block.contains("ARRAY['public.v', '\"It''s\"']::pg_catalog.text[]"),
            "{block}"
        );
        assert!(block.contains("LOCK TABLE %s IN ACCESS SHARE MODE"), "{block}");
        assert!(block.contains(&literal(&f.canonical())), "{block}");
        assert!(
            block.contains(&literal(&format!(
                "PREPARE timebox_check_ab AS {}",
                canonical_query()
            ))),
            "{block}"
        );
        // s11: a statement of that name is used only with the block's own text; another is
        // deallocated first.
        assert!(
            block.contains(&format!(
                "AND s.statement OPERATOR(pg_catalog.=) {}",
                literal(&format!("PREPARE timebox_check_ab AS {}", canonical_query()))
            )),
            "{block}"
        );
        assert!(block.contains("EXECUTE 'DEALLOCATE timebox_check_ab'"), "{block}");
        assert!(
            block.contains("EXECUTE 'EXECUTE timebox_check_ab' INTO fp"),
            "{block}"
        );
        // Nothing is left to the session's search_path: operators, functions and types named.
        assert_eq!(
            block.matches("OPERATOR(").count(),
            block.matches("OPERATOR(pg_catalog.").count()
        );
        assert!(
            block.contains("TABLESAMPLE pg_catalog.system (0) LIMIT 0"),
            "{block}"
        );
        assert!(block.contains("pg_catalog.pg_sequence_last_value(r)"), "{block}");
        assert!(
            !block.contains("pg_relation_size"),
            "its lock does not last: {block}"
        );
        assert!(block.contains("'read committed'"), "{block}");
        let operators = block.replace("MESSAGE = ", "").replace("ERRCODE = ", "");
        for bare in [
            " = ",
            " IN (",
            " to_regclass(",
            " format(",
            " has_table_privilege(",
        ] {
            assert!(!operators.contains(bare), "{bare:?} in {block}");
        }
    }

    #[test]
    fn without_a_fingerprint_the_block_always_raises() {
        let block = lock_block(&[rel(None, "t")], None, "timebox_check_ab");
        assert!(block.contains("OPERATOR(pg_catalog.=) 'none'"), "{block}");
        assert!(!CatalogFingerprint::counting(0).canonical().contains("none"));
    }

    #[test]
    fn the_prelude_is_one_query() {
        assert!(prelude(None, None).is_none());
        let begin = prelude(Some("BEGIN"), None).unwrap();
        assert_eq!(&begin[..], &b"Q\0\0\0\x0aBEGIN\0"[..]);
        let both = prelude(Some("BEGIN --c"), Some("DO $$ $$".into())).unwrap();
        assert_eq!(&both[5..], &b"BEGIN --c\n; DO $$ $$\0"[..]);
    }

    #[test]
    fn the_bind_lock_is_five_messages_under_the_sessions_name() {
        let out = bind_lock("timebox_lock_ab", "DO $$ $$");
        let mut tags = Vec::new();
        let mut rest = &out[..];
        while !rest.is_empty() {
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            tags.push(rest[0]);
            if rest[0] == b'B' {
                assert_eq!(
                    &rest[5..1 + len],
                    &b"timebox_lock_ab\0timebox_lock_ab\0\0\0\0\0\0\0"[..]
                );
            }
            rest = &rest[1 + len..];
        }
        assert_eq!(tags, b"PBECC");
        assert_eq!(tags.len(), BIND_LOCK_ANSWERS as usize);
    }

    #[test]
    fn temporary_schemas_are_refused_by_name_but_pg_temp_is_not() {
        for text in [
            "SELECT '(1)'::pg_temp_3.ct",
            "SELECT * FROM PG_TEMP_12.t",
            "SET search_path = pg_toast_temp_1, public",
            "SELECT 1 FROM \"pg_temp_4\".x",
        ] {
            let d = temporary_schema_refusal(text, "r").expect(text);
            assert!(d.reason.contains("temporary schema"), "{}", d.reason);
        }
        for text in [
            "SELECT * FROM pg_temp.t",
            "SELECT 'pg_temp_' AS x",
            "SELECT * FROM my_pg_temp_table",
        ] {
            assert!(temporary_schema_refusal(text, "r").is_none(), "{text}");
        }
    }

    #[test]
    fn a_leading_begin_is_taken_whole() {
        let mut frame = BytesMut::new();
        let sql =
            "START TRANSACTION /* ; */ ISOLATION LEVEL SERIALIZABLE, READ ONLY; SELECT 1 FROM t; ROLLBACK";
        postgres_protocol::message::frontend::query(sql, &mut frame).unwrap();
        assert_eq!(
            leading_begin(&frame).as_deref(),
            Some("START TRANSACTION /* ; */ ISOLATION LEVEL SERIALIZABLE, READ ONLY")
        );
        assert_eq!(leading_begin(b"Q\0\0\0\x04"), None);
    }

    #[test]
    fn only_the_blocks_own_error_is_the_marker() {
        let mut frame = vec![b'E', 0, 0, 0, 0];
        frame.extend_from_slice(b"SERROR\0C55000\0M");
        frame.extend_from_slice(CHANGED.as_bytes());
        frame.extend_from_slice(b"\0\0");
        assert!(changed_marker(&frame));
        let other = [&b"E\0\0\0\0SERROR\0C42P01\0Mrelation \"v\" does not exist\0\0"[..]].concat();
        assert!(!changed_marker(&other));
        let quoted = [&b"E\0\0\0\0SERROR\0Mx "[..], CHANGED.as_bytes(), b"\0\0"].concat();
        assert!(!changed_marker(&quoted), "only the whole message");
        let warning = &b"N\0\0\0\0SWARNING\0C25001\0Mthere is already a transaction in progress\0\0"[..];
        assert!(begin_warning(warning));
        assert!(!begin_warning(&other));
    }
}
