//! The classification cache in front of [`classify()`]: the relay asks
//! [`ClassifyCache::classify`] for the text of every simple Query and Parse, and gets the same
//! [`Classification`] a fresh [`classify()`] would give. It must never return anything else: a
//! cache that answers a different question than the parsers would make the policy depend on what
//! other sessions ran before.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use super::classify::{classify, classify_with_constants, Classification};
use super::shape::{literal_independent, literal_shape, map_offset};

/// A bounded cache of classifications in two levels, each answering exactly what
/// [`classify()`] would:
///
/// 1. **Exact text** (Parse messages repeat the same text; ORMs and pgbench send a handful of
///    statements millions of times). [`ClassifyCache::get`] looks at this level only.
/// 2. **Literal shape** ([`super::shape`]): the text with its integer and string literals
///    abstracted, for clients that inline their values (pgbench in simple protocol sends
///    `… WHERE aid = 48213;` with a new `aid` each time). A shape is stored only when its first
///    text's classification provably holds for every text of the shape
///    ([`super::shape`]'s module doc has the argument); a hit returns that classification with
///    the span moved to the new text, equal (`==`) to a fresh parse. Texts answered from this
///    level are not added to the first one, so a stream of one-off texts cannot flush it.
///
/// Eviction, per level, is an approximate LRU in two generations: lookups hit the young generation
/// or promote from the old one; when the young generation is full it becomes the old one and the
/// previous old one is dropped. Entries used within the last `capacity / 2` insertions always
/// survive; each level holds at most `capacity` entries (a shape entry also keeps up to
/// [`MAX_SPAN_VARIANTS`] copies of its classification, one per span).
#[derive(Debug)]
pub struct ClassifyCache {
    inner: Mutex<Levels>,
    half: usize,
    /// Answers given by the shape level: `timebox_classify_shape_hits_total` when the proxy made the
    /// cache with [`ClassifyCache::counting`] (tests and benchmarks read it too: proof it is used).
    shape_hits: prometheus::IntCounter,
}

/// At most this many classifications per shape entry: texts of one shape differ in their span only
/// when their literals differ in length, so a few copies cover a workload.
pub const MAX_SPAN_VARIANTS: usize = 8;

#[derive(Debug)]
struct Levels {
    texts: Generations<Arc<Classification>>,
    shapes: Generations<ShapeEntry>,
}

#[derive(Debug)]
struct Generations<V> {
    young: HashMap<Box<str>, V>,
    old: HashMap<Box<str>, V>,
}

/// One literal shape whose classification holds for all its texts.
#[derive(Debug)]
struct ShapeEntry {
    /// Where the literals are in the text that was classified (the template).
    literals: Box<[Range<usize>]>,
    /// The template's classification, then copies of it with the spans of other texts.
    variants: Vec<Arc<Classification>>,
}

impl ClassifyCache {
    /// `capacity` entries at most per level (at least 2).
    pub fn new(capacity: usize) -> ClassifyCache {
        let uncounted = prometheus::IntCounter::new("classify_shape_hits", "shape-level answers")
            .expect("a valid metric name and help");
        ClassifyCache::counting(capacity, uncounted)
    }

    /// As [`ClassifyCache::new`], counting shape-level answers in `shape_hits` (a registered
    /// counter).
    pub fn counting(capacity: usize, shape_hits: prometheus::IntCounter) -> ClassifyCache {
        let half = (capacity / 2).max(1);
        ClassifyCache {
            inner: Mutex::new(Levels {
                texts: Generations::new(half),
                shapes: Generations::new(half),
            }),
            half,
            shape_hits,
        }
    }

    /// Texts longer than this are classified but not stored, so a few huge messages cannot pin
    /// `capacity` copies of themselves in memory.
    pub const MAX_CACHED_TEXT: usize = 16 * 1024;

    /// The classification of `sql`: by exact text, else by literal shape, else computed (outside
    /// the lock) and stored.
    pub fn classify(&self, sql: &str) -> Arc<Classification> {
        if sql.len() > Self::MAX_CACHED_TEXT {
            return Arc::new(classify(sql));
        }
        if let Some(hit) = self.get(sql) {
            return hit;
        }
        // Texts without literals are their own shape: the first level has them already.
        let shape = literal_shape(sql).filter(|s| !s.literals().is_empty());
        if let Some(shape) = &shape {
            let hit = self
                .lock()
                .shapes
                .with(shape.key(), self.half, |entry| {
                    entry.classification_for(shape.literals())
                })
                .flatten();
            if let Some(hit) = hit {
                self.shape_hits.inc();
                return hit;
            }
        }
        let (fresh, constants) = classify_with_constants(sql);
        let fresh = Arc::new(fresh);
        let template = shape.filter(|s| literal_independent(sql, s, &fresh, &constants).is_ok());
        let mut g = self.lock();
        g.texts.insert(sql.into(), fresh.clone(), self.half);
        if let Some(shape) = template {
            let entry = ShapeEntry {
                literals: shape.literals().into(),
                variants: vec![fresh.clone()],
            };
            g.shapes.insert(shape.key().into(), entry, self.half);
        }
        fresh
    }

    /// The classification stored for exactly this text, if any (the shape level is not consulted).
    pub fn get(&self, sql: &str) -> Option<Arc<Classification>> {
        self.lock().texts.with(sql, self.half, |hit| hit.clone())
    }

    /// Exact-text entries held (young and old generations).
    pub fn len(&self) -> usize {
        self.lock().texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shape entries held (young and old generations).
    pub fn shapes_len(&self) -> usize {
        self.lock().shapes.len()
    }

    /// How many classifications the shape level has answered.
    pub fn shape_hits(&self) -> u64 {
        self.shape_hits.get()
    }

    fn lock(&self) -> MutexGuard<'_, Levels> {
        // The maps are consistent after any panic (every update is a single insert or swap).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<V> Generations<V> {
    fn new(half: usize) -> Self {
        Generations {
            young: HashMap::with_capacity(half),
            old: HashMap::new(),
        }
    }

    /// Applies `f` to the entry for `key`, promoting it to the young generation if it was old.
    fn with<R>(&mut self, key: &str, half: usize, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        if let Some(value) = self.young.get_mut(key) {
            return Some(f(value));
        }
        let (owned, value) = self.old.remove_entry(key)?;
        self.insert(owned, value, half);
        self.young.get_mut(key).map(f)
    }

    fn insert(&mut self, key: Box<str>, value: V, half: usize) {
        if self.young.len() >= half && !self.young.contains_key(&key) {
            self.old = std::mem::take(&mut self.young);
            self.young.reserve(half);
        }
        self.young.insert(key, value);
    }

    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

impl ShapeEntry {
    /// The classification of a text of this shape whose literals are at `literals`: the
    /// template's, with its span moved to the new text (`None` if it cannot be moved, which
    /// [`literal_independent`] already ruled out).
    fn classification_for(&mut self, literals: &[Range<usize>]) -> Option<Arc<Classification>> {
        let template = self.variants.first()?;
        let [stmt] = template.statements.as_slice() else {
            return None;
        };
        let span = map_offset(stmt.span.start, &self.literals, literals)?
            ..map_offset(stmt.span.end, &self.literals, literals)?;
        let same_span = |c: &&Arc<Classification>| c.statements.first().is_some_and(|s| s.span == span);
        if let Some(known) = self.variants.iter().find(same_span) {
            return Some(known.clone());
        }
        let mut moved = Classification::clone(template);
        for s in &mut moved.statements {
            s.span = span.clone();
        }
        let moved = Arc::new(moved);
        if self.variants.len() < MAX_SPAN_VARIANTS {
            self.variants.push(moved.clone());
        }
        Some(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::shape::Shape;
    use crate::policy::{authorize_all, Decision, RolePolicy, StatementClass};

    #[test]
    fn cache_hits_and_stays_bounded() {
        let cache = ClassifyCache::new(4);
        let a = cache.classify("SELECT 1");
        let b = cache.classify("SELECT 1");
        assert!(Arc::ptr_eq(&a, &b), "second lookup is a hit");
        // `::` keeps these texts out of the shape level, so each one is a new exact-text entry.
        for i in 0..100 {
            cache.classify(&format!("SELECT {i}::int"));
            assert!(cache.len() <= 4, "cache grew to {}", cache.len());
        }
        let huge = format!("SELECT 1{}", " ".repeat(ClassifyCache::MAX_CACHED_TEXT));
        let before = cache.len();
        assert_eq!(cache.classify(&huge).class(), StatementClass::Read);
        assert!(
            cache.get(&huge).is_none() && cache.len() <= before.max(4),
            "huge texts are not stored"
        );
        // A hot entry survives churn as long as it is used within every half-capacity window.
        let hot = cache.classify("SELECT 'hot'");
        for i in 0..50 {
            cache.classify(&format!("SELECT {i}::int + 1"));
            assert!(Arc::ptr_eq(&hot, &cache.classify("SELECT 'hot'")));
        }
    }

    #[test]
    fn shape_level_stays_bounded_and_keeps_hot_shapes() {
        let cache = ClassifyCache::new(4);
        cache.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 1");
        for i in 0..100 {
            // A new alias, a new shape.
            cache.classify(&format!("SELECT {i} AS c{i}"));
            assert!(
                cache.shapes_len() <= 4,
                "shape level grew to {}",
                cache.shapes_len()
            );
            let hits = cache.shape_hits();
            let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {}", i + 2);
            assert_eq!(*cache.classify(&sql), classify(&sql));
            assert_eq!(cache.shape_hits(), hits + 1, "the hot shape survives: {sql}");
        }
        assert!(cache.len() <= 4, "the exact-text level stays bounded too");
    }

    /// pgbench's five statements in simple protocol, with the literals it sends (the accounts
    /// select, the three balance updates with signed deltas, the history insert).
    const PGBENCH: &[&str] = &[
        "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
        "UPDATE pgbench_accounts SET abalance = abalance + -2345 WHERE aid = 123;",
        "UPDATE pgbench_tellers SET tbalance = tbalance + 4721 WHERE tid = 7;",
        "UPDATE pgbench_branches SET bbalance = bbalance + -12 WHERE bid = 1;",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, -4, CURRENT_TIMESTAMP);",
    ];

    const INTS: &[&str] = &["0", "7", "42", "31337", "123456789", "000000001", "5", "99999"];
    const STRINGS: &[&str] = &[
        "''",
        "' '",
        "'x'",
        "'SELECT 1; DROP TABLE t; --'",
        "'/* not a comment */ -- nor this'",
        "'on'",
        "'off'",
        "'default_transaction_read_only'",
        "'naïve ✓ ünïcode'",
        "'where 1 = 1) OR (1 = 1'",
        "'-5'",
        "'1e5'",
        "'a much longer value, with commas, spaces, keywords like FROM and ; semicolons'",
    ];

    /// `sql` with its literals replaced by values of the same lexical kind; `k` picks the values.
    fn vary(sql: &str, shape: &Shape, k: usize) -> String {
        let mut out = String::with_capacity(sql.len() + 64);
        let mut copied = 0;
        for (j, lit) in shape.literals().iter().enumerate() {
            out.push_str(&sql[copied..lit.start]);
            let pool = if sql[lit.clone()].starts_with('\'') {
                STRINGS
            } else {
                INTS
            };
            if k == 0 && pool == STRINGS {
                // A long one, so that spans move far.
                out.push('\'');
                out.push_str(&"long ".repeat(200));
                out.push('\'');
            } else {
                out.push_str(pool[(k * 3 + j) % pool.len()]);
            }
            copied = lit.end;
        }
        out.push_str(&sql[copied..]);
        out
    }

    /// For every statement of the policy test tables and pgbench: prime a cache with it, then ask
    /// for texts with other literals of the same kinds. Every answer must equal a fresh parse, and
    /// the shape level must really have answered (pgbench always; the tables often).
    #[test]
    fn shape_hits_equal_fresh_parses() {
        let tables = crate::policy::tests::CASES.iter().map(|(_, _, sql, _)| *sql);
        let classes = crate::policy::tests::CLASSES.iter().map(|(_, sql, _)| *sql);
        let corpus: Vec<&str> = PGBENCH.iter().copied().chain(tables).chain(classes).collect();
        let (mut templates_with_hits, mut hits, mut compared) = (Vec::new(), 0, 0);
        for template in &corpus {
            let Some(shape) = literal_shape(template).filter(|s| !s.literals().is_empty()) else {
                continue;
            };
            let cache = ClassifyCache::new(64);
            assert_eq!(*cache.classify(template), classify(template), "{template}");
            let mut expected_hits = 0;
            for k in 0..16 {
                let varied = vary(template, &shape, k);
                assert_eq!(
                    literal_shape(&varied).map(|s| s.key().to_owned()).as_deref(),
                    Some(shape.key()),
                    "{varied}"
                );
                let before = cache.shape_hits();
                let got = cache.classify(&varied);
                assert_eq!(
                    *got,
                    classify(&varied),
                    "primed with {template:?}, asked {varied:?}"
                );
                compared += 1;
                expected_hits += usize::from(cache.shapes_len() > 0 && varied != *template);
                if cache.shape_hits() > before {
                    hits += 1;
                }
            }
            if cache.shapes_len() > 0 {
                assert_eq!(
                    cache.shape_hits() as usize,
                    expected_hits,
                    "every new text of a stored shape is a shape hit: {template}"
                );
                templates_with_hits.push(*template);
            }
        }
        for sql in PGBENCH {
            assert!(templates_with_hits.contains(sql), "no shape hits for {sql}");
        }
        assert!(
            templates_with_hits.len() >= 25 && hits >= 400,
            "only {} templates and {hits} hits of {compared} comparisons",
            templates_with_hits.len()
        );
    }

    /// The spans of texts whose literals differ in length, and the copies kept per shape.
    #[test]
    fn spans_follow_the_literals_and_copies_are_bounded() {
        let cache = ClassifyCache::new(16);
        cache.classify("  SELECT abalance FROM pgbench_accounts WHERE aid = 1 ;");
        let mut seen = Vec::new();
        for digits in 1..=9 {
            let sql = format!(
                "  SELECT abalance FROM pgbench_accounts WHERE aid = {} ;",
                "7".repeat(digits)
            );
            let got = cache.classify(&sql);
            assert_eq!(*got, classify(&sql));
            assert_eq!(
                &sql[got.statements[0].span.clone()],
                sql.trim_start().trim_end_matches(';'),
                "the span runs from the first token up to the semicolon"
            );
            seen.push(got);
        }
        assert_eq!(cache.shape_hits(), 9);
        let again = cache.classify("  SELECT abalance FROM pgbench_accounts WHERE aid = 4 ;");
        assert!(
            Arc::ptr_eq(&again, &seen[0]),
            "a known span is shared, not copied again"
        );
        let g = cache.lock();
        let entries: Vec<&ShapeEntry> = g.shapes.young.values().chain(g.shapes.old.values()).collect();
        assert_eq!(entries.len(), 1);
        assert_eq!(
            entries[0].variants.len(),
            MAX_SPAN_VARIANTS,
            "nine spans seen, eight kept"
        );
    }

    /// Statements where a literal decides the outcome: primed with a harmless literal, the cache
    /// must not answer for a dangerous one (no shape hit), and the answer is the fresh one.
    #[test]
    fn refused_shapes_never_answer_for_other_literals() {
        let read = RolePolicy::with_classes("read", &[StatementClass::Read]);
        for (harmless, dangerous) in [
            (
                "SELECT set_config('application_name','x',false)",
                "SELECT set_config('default_transaction_read_only','off',false)",
            ),
            (
                "SELECT set_config('search_path','public',false)",
                "SELECT set_config('search_path','evil, pg_catalog',false)",
            ),
            (
                "EXPLAIN (ANALYZE 'off') DELETE FROM t WHERE id = 1",
                "EXPLAIN (ANALYZE 'on') DELETE FROM t WHERE id = 1",
            ),
            (
                "EXPLAIN (ANALYZE 0) DELETE FROM t WHERE id = 1",
                "EXPLAIN (ANALYZE 1) DELETE FROM t WHERE id = 1",
            ),
            (
                "SET default_transaction_read_only = 'on'",
                "SET default_transaction_read_only = 'off'",
            ),
            ("SET client_encoding = 'UTF8'", "SET client_encoding = 'SJIS'"),
            (
                "SELECT CAST(a AS float(10)) FROM t",
                "SELECT CAST(a AS float(99)) FROM t",
            ),
        ] {
            let cache = ClassifyCache::new(16);
            cache.classify(harmless);
            let got = cache.classify(dangerous);
            assert_eq!(cache.shape_hits(), 0, "{dangerous}");
            assert_eq!(cache.shapes_len(), 0, "{harmless} is not a template");
            assert_eq!(*got, classify(dangerous));
            assert_eq!(
                authorize_all(&read, &classify(harmless)),
                Decision::Allow,
                "{harmless}"
            );
            assert_ne!(authorize_all(&read, &got), Decision::Allow, "{dangerous}");
        }
        // Where a literal changes only the facts (a file name in the reason, a setting's value).
        for (one, other) in [
            ("COPY t TO '/tmp/a'", "COPY t TO '/tmp/b'"),
            ("SET statement_timeout = '5s'", "SET statement_timeout = '0'"),
            ("SELECT nextval('a')", "SELECT nextval('b')"),
        ] {
            let cache = ClassifyCache::new(16);
            cache.classify(one);
            assert_eq!(*cache.classify(other), classify(other));
            assert_eq!(cache.shape_hits(), 0, "{other}");
        }
    }
}
