//! JSON decoding of a ~250-byte, 10-column clickstream event: sluice's
//! decoder (its own reader following a trie of the configured paths, borrowing
//! strings) against simd-json, the alternative the ingestion issue asked to
//! measure. simd-json parses in place, so its figures include copying the
//! (immutable) Kafka payload into a scratch buffer, as a decoder would have to.
//!
//! The same events as raw binary Avro (`source.format = "avro"`, the
//! pipeline's schema) are decoded too: `sluice_avro_decoder`.
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

const AVRO_SCHEMA: &str = r#"{"type": "record", "name": "Click", "fields": [
  {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
  {"name": "session", "type": "string"},
  {"name": "user", "type": {"type": "record", "name": "User", "fields": [
    {"name": "id", "type": "string"}, {"name": "country", "type": "string"}]}},
  {"name": "device", "type": "string"},
  {"name": "url", "type": "string"},
  {"name": "status", "type": "int"},
  {"name": "latency_ms", "type": "int"},
  {"name": "bytes", "type": "long"},
  {"name": "is_bot", "type": "boolean"},
  {"name": "referrer", "type": "string"}]}"#;

/// Avro's zig-zag varint.
fn long(out: &mut Vec<u8>, v: i64) {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn string(out: &mut Vec<u8>, s: &str) {
    long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

/// The JSON events' values, in raw binary Avro of [`AVRO_SCHEMA`].
fn avro_events(json: &[Vec<u8>]) -> Vec<Vec<u8>> {
    json.iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_slice(e).unwrap();
            let mut out = Vec::new();
            long(&mut out, v["ts"].as_i64().unwrap());
            string(&mut out, v["session"].as_str().unwrap());
            string(&mut out, v["user"]["id"].as_str().unwrap());
            string(&mut out, v["user"]["country"].as_str().unwrap());
            string(&mut out, v["device"].as_str().unwrap());
            string(&mut out, v["url"].as_str().unwrap());
            for field in ["status", "latency_ms", "bytes"] {
                long(&mut out, v[field].as_i64().unwrap());
            }
            out.push(u8::from(v["is_bot"].as_bool().unwrap()));
            string(&mut out, v["referrer"].as_str().unwrap());
            out
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
    let avro_pipeline = PIPELINE.replacen(
        "topic = \"clicks\"\n",
        &format!("topic = \"clicks\"\nformat = \"avro\"\navro_schema = '''{AVRO_SCHEMA}'''\n"),
        1,
    );
    let avro_config =
        sluice_config::parse_pipeline(&avro_pipeline, Path::new("bench.toml"), &sluice_config::ProcessEnv).unwrap();
    let avro_decoder = Decoder::new(&avro_config);
    let avro = avro_events(&events);
    eprintln!("average Avro event: {} bytes", avro.iter().map(Vec::len).sum::<usize>() / avro.len());
    for (json, binary) in events.iter().zip(&avro) {
        let (a, b) = (decoder.decode(json).unwrap(), avro_decoder.decode(binary).unwrap());
        assert_eq!(a.datums(), b.datums(), "the same row from JSON and Avro");
    }
    group.bench_function("sluice_avro_decoder", |b| {
        b.iter(|| {
            for e in &avro {
                let row = avro_decoder.decode(e).unwrap();
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
