//! Micro-benchmark of column masking's per-row work (issue 15 item 5), without sockets: the
//! DataRows of `benches/mask.rs`'s result (`id, name, email, phone, ssn`; `email`, `phone` and
//! `ssn` masked with `email`, `partial` and `hash`) rewritten by
//! [`timebox::masking::rewrite_data_row_into`] into one reused buffer, as the relay does, and by
//! [`timebox::masking::rewrite_data_row`] (a new buffer per row) for comparison, and without the
//! `hash` column masked (the keyed hash's share).
//!
//!   cargo bench --bench mask_row                  release, criterion's report
//!   cargo test --bench mask_row                   smoke: each benchmark runs once

use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use timebox::masking::{
    rewrite_data_row, rewrite_data_row_into, rewrite_row_description, MaskKey, MaskMethod, MaskedColumn,
};
use timebox::proxy::wire;

/// Rows per iteration.
const ROWS: usize = 1000;
/// The benchmarked table's OID in the descriptions below.
const TABLE: u32 = 16_400;

/// The RowDescription of `id int, name text, email text, phone text, ssn text` (text format).
fn row_description() -> BytesMut {
    let mut out = BytesMut::new();
    wire::frame(&mut out, b'T', |b| {
        let names = ["id", "name", "email", "phone", "ssn"];
        b.put_i16(names.len() as i16);
        for (i, name) in names.into_iter().enumerate() {
            b.extend_from_slice(name.as_bytes());
            b.put_u8(0);
            b.put_u32(TABLE);
            b.put_i16(i as i16 + 1);
            b.put_u32(if i == 0 { 23 } else { 25 });
            b.put_i16(if i == 0 { 4 } else { -1 });
            b.put_i32(-1);
            b.put_i16(0);
        }
    });
    out
}

/// The masks of `benches/mask.rs`'s role: email, phone, ssn.
fn masks(table: u32, attnum: i16) -> Option<MaskMethod> {
    match (table, attnum) {
        (TABLE, 3) => Some(MaskMethod::Email),
        (TABLE, 4) => Some(MaskMethod::Partial),
        (TABLE, 5) => Some(MaskMethod::Hash),
        _ => None,
    }
}

/// `ROWS` DataRows as `benches/mask.rs` inserts them (~60 bytes of values each).
fn rows() -> Vec<BytesMut> {
    (1..=ROWS)
        .map(|i| {
            let values = [
                i.to_string(),
                format!("customer number {i}"),
                format!("customer{i}@example.com"),
                format!("+1 555 01{i:06}"),
                format!("{i:09}"),
            ];
            let mut out = BytesMut::new();
            wire::frame(&mut out, b'D', |b| {
                b.put_i16(values.len() as i16);
                for v in &values {
                    b.put_i32(v.len() as i32);
                    b.extend_from_slice(v.as_bytes());
                }
            });
            out
        })
        .collect()
}

fn rewrite(c: &mut Criterion) {
    let (_, columns): (_, Vec<Option<MaskedColumn>>) = rewrite_row_description(&row_description(), masks)
        .expect("a well-formed description")
        .expect("masked columns");
    let rows = rows();
    let key = MaskKey::derive(&[7; 32]);
    let mut group = c.benchmark_group("rewrite_data_row");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("reused_buffer", |b| {
        let mut out = BytesMut::new();
        b.iter(|| {
            for row in &rows {
                out.clear();
                rewrite_data_row_into(black_box(row), &columns, &key, &mut out).expect("a DataRow");
                black_box(&out);
            }
        })
    });
    group.bench_function("buffer_per_row", |b| {
        b.iter(|| {
            for row in &rows {
                black_box(rewrite_data_row(black_box(row), &columns, &key).expect("a DataRow"));
            }
        })
    });
    // The same with `ssn` left plain: what the keyed hash (HMAC-SHA256 per value) costs.
    let without_hash: Vec<Option<MaskedColumn>> = columns
        .iter()
        .map(|c| c.filter(|c| c.method != MaskMethod::Hash))
        .collect();
    group.bench_function("reused_buffer_without_hash", |b| {
        let mut out = BytesMut::new();
        b.iter(|| {
            for row in &rows {
                out.clear();
                rewrite_data_row_into(black_box(row), &without_hash, &key, &mut out).expect("a DataRow");
                black_box(&out);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, rewrite);
criterion_main!(benches);
