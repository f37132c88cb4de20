//! JSON decoding of a ~250-byte, 10-column clickstream event: sluice's
//! decoder (its own reader following a trie of the configured paths, borrowing
//! strings) against simd-json, the alternative the ingestion issue asked to
//! measure. simd-json parses in place, so its figures include copying the
//! (immutable) Kafka payload into a scratch buffer, as a decoder would have to.
//!
//! `cargo bench -p sluice-decode --bench decode`

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_decode::Decoder;

const PIPELINE: &str = r#"
table = "clicks"
[source]
bootstrap_servers = "localhost:9092"
topic = "clicks"
[schema]
time_column = "ts"
[[schema.columns]]
name = "ts"
type = "timestamp"
nullable = false
[[schema.columns]]
name = "session_id"
type = "string"
path = "session"
[[schema.columns]]
name = "user_id"
type = "string"
path = "user.id"
[[schema.columns]]
name = "country"
type = "string"
path = "user.country"
[[schema.columns]]
name = "device"
type = "string"
[[schema.columns]]
name = "url"
type = "string"
[[schema.columns]]
name = "status"
type = "int32"
[[schema.columns]]
name = "latency_ms"
type = "int32"
[[schema.columns]]
name = "bytes"
type = "int64"
[[schema.columns]]
name = "is_bot"
type = "bool"
"#;

fn events(n: u64) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            format!(
                "{{\"ts\":{},\"session\":\"s-{:08}\",\"user\":{{\"id\":\"u-{:06}\",\"country\":\"DE\"}},\"device\":\"mobile\",\
                 \"url\":\"/product/{}/view?ref=search&page={}\",\"status\":200,\"latency_ms\":{},\"bytes\":{},\"is_bot\":false,\
                 \"referrer\":\"https://www.example.com/search?q=item-{}\"}}",
                1_764_000_000_000u64 + i,
                i / 20,
                h % 200_000,
                h % 5_000,
                (h >> 20) % 10,
                (h >> 32) % 2_000,
                (h >> 40) % 1_000_000,
                h % 100_000,
            )
            .into_bytes()
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let config = sluice_config::parse_pipeline(PIPELINE, Path::new("bench.toml"), &sluice_config::ProcessEnv).unwrap();
    let decoder = Decoder::new(&config);
    let events = events(10_000);
    let bytes: usize = events.iter().map(Vec::len).sum();
    let mut group = c.benchmark_group("decode_10k_events");
    group.throughput(Throughput::Elements(events.len() as u64));
    eprintln!("average event: {} bytes", bytes / events.len());

    group.bench_function("sluice_decoder", |b| {
        b.iter(|| {
            for e in &events {
                let row = decoder.decode(e).unwrap();
                black_box(row.datums());
            }
        })
    });
    group.bench_function("serde_json_value", |b| {
        b.iter(|| {
            for e in &events {
                black_box(serde_json::from_slice::<serde_json::Value>(e).unwrap());
            }
        })
    });
    let mut scratch = Vec::with_capacity(1024);
    group.bench_function("simd_json_borrowed_value", |b| {
        b.iter(|| {
            for e in &events {
                scratch.clear();
                scratch.extend_from_slice(e);
                black_box(simd_json::to_borrowed_value(&mut scratch).unwrap());
            }
        })
    });
    let mut buffers = simd_json::Buffers::new(1024);
    let mut scratch = Vec::with_capacity(1024);
    group.bench_function("simd_json_tape_only", |b| {
        b.iter(|| {
            for e in &events {
                scratch.clear();
                scratch.extend_from_slice(e);
                black_box(simd_json::Deserializer::from_slice_with_buffers(&mut scratch, &mut buffers).unwrap());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
