//! Micro-benchmarks of the wire codec on the relay's hot path (see `benches/README.md`).
//!
//! - `frame_tracker/feed`: the backend → client direction. The relay forwards backend bytes untouched
//!   and only follows frame boundaries with [`FrameTracker::feed`]; this measures that over a realistic
//!   result set (RowDescription, 1000 DataRows of ~100 bytes, CommandComplete, ReadyForQuery) fed in
//!   16 KiB reads, the size of one relay read.
//! - `next_frontend_frame/pgbench_batch`: the client → backend direction. Splitting a pipelined batch
//!   of extended-protocol messages as `pgbench -M prepared` sends them (Bind, Describe, Execute, Sync
//!   per transaction) into frames with [`next_frontend_frame`].
//! - `pg_error/encode`: building the ErrorResponse / NoticeResponse bytes timebox itself sends.

use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use timebox::proxy::wire::{self, FrameTracker, PgError};

/// Rows in the benchmarked result set.
const ROWS: usize = 1000;
/// Bytes per relay read.
const CHUNK: usize = 16 * 1024;
/// Transactions in the pgbench-like batch.
const TRANSACTIONS: usize = 100;
/// The proxy's default frontend message limit is far above anything in the batch.
const MAX_MESSAGE: usize = 1 << 20;

fn cstr(b: &mut BytesMut, s: &str) {
    b.extend_from_slice(s.as_bytes());
    b.put_u8(0);
}

/// `SELECT id, note, created_at FROM t LIMIT 1000` as the backend answers it.
fn backend_result_set() -> Vec<u8> {
    let mut out = BytesMut::new();
    wire::frame(&mut out, b'T', |b| {
        let columns: [(&str, u32, i16); 3] = [("id", 23, 4), ("note", 25, -1), ("created_at", 1114, 8)];
        b.put_i16(columns.len() as i16);
        for (i, (name, type_oid, type_len)) in columns.into_iter().enumerate() {
            cstr(b, name);
            b.put_u32(16_384); // table oid
            b.put_i16(i as i16 + 1); // column number
            b.put_u32(type_oid);
            b.put_i16(type_len);
            b.put_i32(-1); // type modifier
            b.put_i16(0); // text format
        }
    });
    for i in 0..ROWS {
        let id = format!("{:05}", i + 1);
        let note = format!("{:<62}", format!("order {i} shipped to customer {}", i * 7 % 997));
        let created = "2024-05-17 12:34:56";
        wire::frame(&mut out, b'D', |b| {
            b.put_i16(3);
            for col in [id.as_str(), note.as_str(), created] {
                b.put_i32(col.len() as i32);
                b.extend_from_slice(col.as_bytes());
            }
        });
    }
    wire::frame(&mut out, b'C', |b| cstr(b, &format!("SELECT {ROWS}")));
    wire::frame(&mut out, b'Z', |b| b.put_u8(b'I'));
    out.to_vec()
}

/// What `pgbench -M prepared -S` pipelines per transaction: Bind (one text parameter), Describe
/// portal, Execute, Sync.
fn pgbench_batch() -> Vec<u8> {
    let mut out = BytesMut::new();
    for i in 0..TRANSACTIONS {
        let aid = (i * 7919 % 100_000 + 1).to_string();
        wire::frame(&mut out, b'B', |b| {
            cstr(b, ""); // unnamed portal
            cstr(b, "P0_1"); // prepared statement
            b.put_i16(0); // parameter formats: all text
            b.put_i16(1);
            b.put_i32(aid.len() as i32);
            b.extend_from_slice(aid.as_bytes());
            b.put_i16(0); // result formats: all text
        });
        wire::frame(&mut out, b'D', |b| {
            b.put_u8(b'P');
            cstr(b, "");
        });
        wire::frame(&mut out, b'E', |b| {
            cstr(b, "");
            b.put_i32(0);
        });
        wire::frame(&mut out, b'S', |_| {});
    }
    out.to_vec()
}

fn frame_tracker(c: &mut Criterion) {
    let stream = backend_result_set();
    let mut group = c.benchmark_group("frame_tracker");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("feed", |b| {
        b.iter(|| {
            let mut tracker = FrameTracker::default();
            for chunk in black_box(&stream).chunks(CHUNK) {
                tracker.feed(chunk).expect("well-formed stream");
            }
            assert_eq!(tracker.ready_count, 1);
            tracker
        })
    });
    group.finish();
}

fn frontend_frames(c: &mut Criterion) {
    let batch = pgbench_batch();
    let mut group = c.benchmark_group("next_frontend_frame");
    group.throughput(Throughput::Bytes(batch.len() as u64));
    group.bench_function("pgbench_batch", |b| {
        b.iter(|| {
            let buf = black_box(batch.as_slice());
            let (mut pos, mut frames) = (0, 0usize);
            while let Some((_tag, len)) = wire::next_frontend_frame(&buf[pos..], MAX_MESSAGE).unwrap() {
                pos += len;
                frames += 1;
            }
            assert_eq!((pos, frames), (buf.len(), TRANSACTIONS * 4));
            frames
        })
    });
    group.finish();
}

fn pg_error(c: &mut Criterion) {
    let mut group = c.benchmark_group("pg_error");
    let short = PgError::startup_timeout();
    let with_hint = PgError::upstream_rejected("shop", "28P01");
    let warning = PgError::warning(
        "grant 01J0000000000000000000000 expires in 5m; reconnect with a new grant to continue",
    );
    let mut out = BytesMut::with_capacity(512);
    for (name, err) in [
        ("fatal", &short),
        ("fatal_with_hint", &with_hint),
        ("warning", &warning),
    ] {
        group.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| {
                out.clear();
                black_box(err).encode(&mut out);
                black_box(out.len())
            })
        });
    }
    // Construct and encode into a fresh buffer, as a refusal path does.
    group.bench_function("to_bytes/invalid_password", |b| {
        b.iter_batched(
            || "alice".to_string(),
            |user| PgError::invalid_password(black_box(&user)).to_bytes(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, frame_tracker, frontend_frames, pg_error);
criterion_main!(benches);
