//! Classification time per statement over a representative corpus (pgbench, ORM-style joins, DDL,
//! session statements), uncached and through the [`ClassifyCache`] hit paths: exact text, and
//! literal shape (pgbench in simple protocol, a new literal every time).
//!
//! Run: `cargo bench --bench classify -- --warm-up-time 1 --measurement-time 3`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use timebox::policy::shape::literal_shape;
use timebox::policy::{authorize_all, classify, ClassifyCache, RolePolicy, StatementClass};

const CORPUS: &[(&str, &str)] = &[
    ("pgbench_select", "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"),
    (
        "pgbench_update_accounts",
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;",
    ),
    (
        "pgbench_update_tellers",
        "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2;",
    ),
    (
        "pgbench_insert_history",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);",
    ),
    ("begin", "BEGIN;"),
    (
        "orm_join",
        "SELECT \"orders\".\"id\", \"orders\".\"total\", \"customers\".\"name\", count(\"items\".\"id\") AS \"n\" \
         FROM \"orders\" INNER JOIN \"customers\" ON \"customers\".\"id\" = \"orders\".\"customer_id\" \
         LEFT OUTER JOIN \"order_items\" \"items\" ON \"items\".\"order_id\" = \"orders\".\"id\" \
         WHERE \"orders\".\"created_at\" >= $1 AND \"customers\".\"country\" = ANY($2) \
         GROUP BY \"orders\".\"id\", \"customers\".\"name\" ORDER BY \"orders\".\"created_at\" DESC LIMIT 50 OFFSET $3",
    ),
    (
        "cte_window",
        "WITH recent AS (SELECT customer_id, total, row_number() OVER (PARTITION BY customer_id ORDER BY created_at DESC) AS rn \
         FROM public.orders WHERE created_at > now() - interval '7 days') \
         SELECT customer_id, sum(total) FROM recent WHERE rn <= 3 GROUP BY customer_id",
    ),
    (
        "ddl_create_table",
        "CREATE TABLE IF NOT EXISTS audit.events (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), \
         actor text NOT NULL, payload jsonb)",
    ),
    ("ddl_alter_table", "ALTER TABLE public.orders ADD COLUMN note text"),
    ("set_timeout", "SET statement_timeout = '5s'"),
];

fn uncached(c: &mut Criterion) {
    let mut group = c.benchmark_group("classify_uncached");
    group.throughput(Throughput::Elements(1));
    for (name, sql) in CORPUS {
        group.bench_function(*name, |b| b.iter(|| classify(black_box(sql))));
    }
    group.finish();

    let role = RolePolicy::with_classes("write", &[StatementClass::Read, StatementClass::Write]);
    let pgbench_select = CORPUS[0].1;
    c.bench_function("classify_and_authorize/pgbench_select", |b| {
        b.iter(|| authorize_all(&role, &classify(black_box(pgbench_select))))
    });
}

fn cached(c: &mut Criterion) {
    let cache = ClassifyCache::new(1024);
    for (_, sql) in CORPUS {
        cache.classify(sql);
    }
    let mut group = c.benchmark_group("classify_cached");
    for (name, sql) in CORPUS.iter().take(2) {
        group.bench_function(*name, |b| b.iter(|| cache.classify(black_box(sql))));
    }

    // pgbench in simple protocol: the literal changes every time, so the exact text never repeats
    // and only the literal-shape level can answer. The texts are made up front (aids spread over
    // 1..=100000 like pgbench's scale 1, so literal lengths and spans vary).
    let texts: Vec<String> = (0..4096u64)
        .map(|i| {
            let aid = i.wrapping_mul(2_654_435_761) % 100_000 + 1;
            format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};")
        })
        .collect();
    cache.classify(&texts[0]);
    let hits = cache.shape_hits();
    cache.classify(&texts[1]);
    assert_eq!(cache.shape_hits(), hits + 1, "the shape level answers");
    let mut next = 0;
    group.bench_function("pgbench_select_varying_literal", |b| {
        b.iter(|| {
            next = (next + 1) % texts.len();
            cache.classify(black_box(&texts[next]))
        })
    });
    group.finish();

    // The shape level's own lexer, which every exact-text miss pays.
    let select = &texts[2];
    c.bench_function("literal_shape/pgbench_select", |b| {
        b.iter(|| literal_shape(black_box(select)))
    });
}

criterion_group!(benches, uncached, cached);
criterion_main!(benches);
