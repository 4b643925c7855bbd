//! The classification cache in front of [`classify()`]: the relay asks
//! [`ClassifyCache::classify`] for the text of every simple Query and Parse, and gets the same
//! [`Classification`] a fresh [`classify()`] would give. It must never return anything else: a
//! cache that answers a different question than the parsers would make the policy depend on what
//! other sessions ran before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::classify::{classify, Classification};

/// A bounded cache of classifications keyed by the exact statement text (Parse messages repeat the
/// same text; ORMs and pgbench send a handful of statements millions of times).
///
/// Eviction is an approximate LRU in two generations: lookups hit the young generation or promote
/// from the old one; when the young generation is full it becomes the old one and the previous old
/// one is dropped. Entries used within the last `capacity / 2` insertions always survive; at most
/// `capacity` entries are held.
#[derive(Debug)]
pub struct ClassifyCache {
    inner: Mutex<Generations>,
    half: usize,
}

#[derive(Debug, Default)]
struct Generations {
    young: HashMap<Box<str>, Arc<Classification>>,
    old: HashMap<Box<str>, Arc<Classification>>,
}

impl ClassifyCache {
    /// `capacity` entries at most (at least 2).
    pub fn new(capacity: usize) -> ClassifyCache {
        let half = (capacity / 2).max(1);
        ClassifyCache {
            inner: Mutex::new(Generations {
                young: HashMap::with_capacity(half),
                old: HashMap::new(),
            }),
            half,
        }
    }

    /// Texts longer than this are classified but not stored, so a few huge messages cannot pin
    /// `capacity` copies of themselves in memory.
    pub const MAX_CACHED_TEXT: usize = 16 * 1024;

    /// The classification of `sql`, from the cache or computed (outside the lock) and stored.
    pub fn classify(&self, sql: &str) -> Arc<Classification> {
        if sql.len() > Self::MAX_CACHED_TEXT {
            return Arc::new(classify(sql));
        }
        if let Some(hit) = self.get(sql) {
            return hit;
        }
        let fresh = Arc::new(classify(sql));
        self.insert(sql, fresh.clone());
        fresh
    }

    pub fn get(&self, sql: &str) -> Option<Arc<Classification>> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = g.young.get(sql) {
            return Some(hit.clone());
        }
        let (key, value) = g.old.remove_entry(sql)?;
        g.insert(key, value.clone(), self.half);
        Some(value)
    }

    fn insert(&self, sql: &str, value: Arc<Classification>) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.insert(sql.into(), value, self.half);
    }

    /// Entries held (young and old generations).
    pub fn len(&self) -> usize {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.young.len() + g.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Generations {
    fn insert(&mut self, key: Box<str>, value: Arc<Classification>, half: usize) {
        if self.young.len() >= half && !self.young.contains_key(&key) {
            self.old = std::mem::take(&mut self.young);
            self.young.reserve(half);
        }
        self.young.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::StatementClass::Read;

    #[test]
    fn cache_hits_and_stays_bounded() {
        let cache = ClassifyCache::new(4);
        let a = cache.classify("SELECT 1");
        let b = cache.classify("SELECT 1");
        assert!(Arc::ptr_eq(&a, &b), "second lookup is a hit");
        for i in 0..100 {
            cache.classify(&format!("SELECT {i}"));
            assert!(cache.len() <= 4, "cache grew to {}", cache.len());
        }
        let huge = format!("SELECT 1{}", " ".repeat(ClassifyCache::MAX_CACHED_TEXT));
        let before = cache.len();
        assert_eq!(cache.classify(&huge).class(), Read);
        assert!(
            cache.get(&huge).is_none() && cache.len() <= before.max(4),
            "huge texts are not stored"
        );
        // A hot entry survives churn as long as it is used within every half-capacity window.
        let hot = cache.classify("SELECT 'hot'");
        for i in 0..50 {
            cache.classify(&format!("SELECT {i} + 1"));
            assert!(Arc::ptr_eq(&hot, &cache.classify("SELECT 'hot'")));
        }
    }
}
