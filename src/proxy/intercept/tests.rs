//! Unit tests of the frontend interceptor (statement checks, markers, prechecks).

use super::*;

fn query(sql: &str) -> BytesMut {
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::query(sql, &mut out).unwrap();
    out
}

fn interceptor(cache: &Arc<ClassifyCache>) -> Interceptor {
    let policy = RolePolicy::with_classes("read", &[StatementClass::Read]);
    Interceptor::new(Arc::new(policy), cache.clone(), "g_1", "read")
}

/// The benchmark knob off (every build but `bench-knobs` ones can only pass false): statements
/// are classified and a write is denied for a read-only role.
#[test]
fn without_the_bench_knob_statements_are_classified_and_checked() {
    let cache = Arc::new(ClassifyCache::new(16));
    let mut i = interceptor(&cache).bench_skip_policy(false);
    let frame = query("DELETE FROM accounts");
    let mut checked = None;
    let action = i.on_frontend(b'Q', &frame, &mut checked);
    assert!(matches!(action, FrontendAction::Replace(_)), "{action:?}");
    assert!(checked.unwrap().denied.is_some());
    assert_eq!(cache.len(), 1);
}

/// Regression (issue 16, finding 6): a statement of any length was classified and forwarded.
/// Over `proxy.max_statement_bytes` it is refused with 54000 unclassified, audited as an
/// `unparsed` denial with a bounded text; a Parse likewise, which then skips to Sync.
#[test]
fn statements_over_the_limit_are_refused_unclassified() {
    let cache = Arc::new(ClassifyCache::new(16));
    let mut i = interceptor(&cache).max_statement_bytes(100);
    let long = format!("SELECT '{}'", "x".repeat(200));
    let mut checked = None;
    let action = i.on_frontend(b'Q', &query(&long), &mut checked);
    assert!(matches!(action, FrontendAction::Replace(_)), "{action:?}");
    let c = checked.unwrap();
    assert_eq!(c.class, StatementClass::Unparsed);
    assert!(c.denied.as_deref().unwrap().contains("proxy.max_statement_bytes"));
    assert_eq!(c.sql.bytes(), long.len());
    assert_eq!(cache.len(), 0, "not classified");
    let denial = i.take_denial();
    assert!(denial.windows(5).any(|w| w == b"54000"));

    let mut parse = BytesMut::new();
    postgres_protocol::message::frontend::parse("s1", &long, std::iter::empty(), &mut parse).unwrap();
    let mut checked = None;
    assert!(matches!(
        i.on_frontend(b'P', &parse, &mut checked),
        FrontendAction::Replace(_)
    ));
    assert!(checked.unwrap().denied.is_some());
    let mut sync = BytesMut::new();
    postgres_protocol::message::frontend::sync(&mut sync);
    assert_eq!(i.on_frontend(b'D', &sync, &mut None), FrontendAction::Drop);
    assert_eq!(i.on_frontend(b'S', &sync, &mut None), FrontendAction::Forward);

    // Under the limit: classified and allowed as before.
    let mut checked = None;
    assert_eq!(
        i.on_frontend(b'Q', &query("SELECT 1"), &mut checked),
        FrontendAction::Forward
    );
    assert_eq!(checked.unwrap().class, StatementClass::Read);
}

/// Big texts go to the blocking pool unless their exact text is cached; small ones never do.
#[test]
fn only_big_uncached_texts_are_offloaded_and_prechecks_equal_inline_checks() {
    let cache = Arc::new(ClassifyCache::new(16));
    let mut i = interceptor(&cache);
    assert!(!i.wants_offload(b'Q', &query("SELECT 1")));
    let medium = format!("SELECT '{}'", "m".repeat(INLINE_CHECK_BYTES));
    assert!(i.wants_offload(b'Q', &query(&medium)));
    let huge = format!("SELECT '{}'", "h".repeat(ClassifyCache::MAX_CACHED_TEXT * 2));
    assert!(i.wants_offload(b'Q', &query(&huge)));
    assert!(!i.wants_offload(b'B', &query(&huge)));
    // Once classified (inline here), the medium text is a cache hit: inline from then on.
    let pre = i.prechecker().precheck(b'Q', &query(&medium));
    let mut offloaded = None;
    let action = i.on_frontend_prechecked(b'Q', &query(&medium), Some(pre), &mut offloaded);
    let mut inline = None;
    assert_eq!(i.on_frontend(b'Q', &query(&medium), &mut inline), action);
    let (a, b) = (offloaded.unwrap(), inline.unwrap());
    assert_eq!((a.class, &a.sql, a.denied), (b.class, &b.sql, b.denied));
    assert!(!i.wants_offload(b'Q', &query(&medium)));
}

/// A Query that is not UTF-8 is refused and now audited as a denial too (lossy text).
#[test]
fn unreadable_text_is_refused_and_audited() {
    let cache = Arc::new(ClassifyCache::new(16));
    let mut i = interceptor(&cache);
    let mut frame = BytesMut::from(&b"Q"[..]);
    frame.extend_from_slice(&(4 + 4i32).to_be_bytes());
    frame.extend_from_slice(b"\xff\xfe1\0");
    let mut checked = None;
    assert!(matches!(
        i.on_frontend(b'Q', &frame, &mut checked),
        FrontendAction::Replace(_)
    ));
    let c = checked.unwrap();
    assert!(c.denied.unwrap().contains("UTF-8"));
    assert_eq!(c.class, StatementClass::Unparsed);
}

/// The session's target version decides newer-grammar syntax: `JSON_ARRAY(…)` is a built-in on
/// PostgreSQL 16, a call of a user-defined `json_array` on 15 (and on an unknown version).
#[test]
fn statements_are_checked_for_the_target_version() {
    let cache = Arc::new(ClassifyCache::new(16));
    let frame = query("SELECT JSON_ARRAY(1, 2)");
    for (server_version, allowed) in [
        (Some("15.18 (Debian 15.18-0+deb12u1)"), false),
        (None, false),
        (Some("16.4"), true),
    ] {
        let mut i = interceptor(&cache).on_server(server_version);
        let mut checked = None;
        let action = i.on_frontend(b'Q', &frame, &mut checked);
        assert_eq!(action == FrontendAction::Forward, allowed, "{server_version:?}");
    }
}

/// A driver's `SET application_name` in a Parse is rewritten in place: same statement name and
/// parameter types, the tagged value as text.
#[test]
fn parse_of_set_application_name_keeps_the_tag() {
    let cache = Arc::new(ClassifyCache::new(16));
    let mut i = interceptor(&cache).tagging("alice");
    let mut parse = BytesMut::new();
    postgres_protocol::message::frontend::parse("s1", "SET application_name = 'x'", [25u32], &mut parse)
        .unwrap();
    let mut checked = None;
    let FrontendAction::Replace(out) = i.on_frontend(b'P', &parse, &mut checked) else {
        panic!("expected a rewrite");
    };
    let mut expected = BytesMut::new();
    postgres_protocol::message::frontend::parse(
        "s1",
        "SET application_name = 'timebox:alice:g_1:x'",
        [25u32],
        &mut expected,
    )
    .unwrap();
    assert_eq!(out, expected);
    assert!(checked.unwrap().denied.is_none());
}

/// `[bench] skip_policy`: everything is allowed, nothing is classified, and the statement is
/// still handed to the audit (its text, unclassified).
#[test]
fn bench_skip_policy_allows_everything_without_classifying() {
    let cache = Arc::new(ClassifyCache::new(16));
    let mut i = interceptor(&cache).bench_skip_policy(true);
    let frame = query("DELETE FROM accounts");
    let mut checked = None;
    assert_eq!(i.on_frontend(b'Q', &frame, &mut checked), FrontendAction::Forward);
    let c = checked.unwrap();
    assert!(c.denied.is_none() && c.classification.is_empty());
    assert_eq!(c.sql.text, "DELETE FROM accounts");
    assert_eq!(cache.len(), 0);

    // A Bind of a statement timebox never saw prepared is forwarded too.
    // Bind: portal "", statement "from_sql_prepare", no formats, no parameters, no result formats.
    let body = b"\0from_sql_prepare\0\0\0\0\0\0\0";
    let mut bind = BytesMut::from(&b"B"[..]);
    bind.extend_from_slice(&(4 + body.len() as i32).to_be_bytes());
    bind.extend_from_slice(body);
    let mut checked = None;
    assert_eq!(i.on_frontend(b'B', &bind, &mut checked), FrontendAction::Forward);
}
