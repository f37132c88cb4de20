//! Every class of bad record is recognised with its reason and column; good
//! records become exactly the expected row; nothing panics on any input.

use std::path::Path;

use proptest::prelude::*;
use sluice_config::parse_pipeline;
use sluice_decode::{BadRecordKind, Decoder};
use sluice_segments::Datum;

const PIPELINE: &str = r#"
table = "events"
[source]
bootstrap_servers = "k:9092"
topic = "events"
[schema]
time_column = "ts"
[[schema.columns]]
name = "ts"
type = "timestamp"
unit = "ms"
nullable = false
[[schema.columns]]
name = "user"
type = "string"
path = "user.id"
nullable = false
[[schema.columns]]
name = "country"
type = "string"
path = "user.geo.country"
default = "ZZ"
[[schema.columns]]
name = "status"
type = "int32"
[[schema.columns]]
name = "bytes"
type = "int64"
[[schema.columns]]
name = "score"
type = "float32"
[[schema.columns]]
name = "ok"
type = "bool"
[[schema.columns]]
name = "seen"
type = "timestamp"
format = "rfc3339"
unit = "ms"
[bad_records]
max_message_bytes = "4KiB"
"#;

fn decoder() -> Decoder {
    let env = |_: &str| None;
    Decoder::new(&parse_pipeline(PIPELINE, Path::new("events.toml"), &env).unwrap())
}

fn bad(json: &[u8]) -> (BadRecordKind, Option<String>) {
    let error = decoder().decode(json).expect_err("a bad record");
    assert!(!error.to_string().is_empty());
    (error.kind, error.column)
}

#[test]
fn a_good_record_becomes_a_row() {
    let d = decoder();
    let json = br#"{"ts": 1764000000123, "user": {"id": "u-\u00e9", "geo": {"country": "DE"}, "extra": [1, {"x": 2}]},
                   "status": 200, "bytes": 9007199254740993, "score": 0.5, "ok": true, "seen": "2026-11-25T10:07:59.999Z",
                   "ignored": {"deep": [[[]]]}}"#;
    let row = d.decode(json).unwrap();
    assert_eq!(
        row.datums(),
        vec![
            Datum::Timestamp(1_764_000_000_123),
            Datum::Str("u-é"),
            Datum::Str("DE"),
            Datum::Int32(200),
            Datum::Int64(9_007_199_254_740_993),
            Datum::Float32(0.5),
            Datum::Bool(true),
            Datum::Timestamp(1_795_601_279_999),
        ]
    );
}

#[test]
fn missing_and_null_optional_fields_use_defaults_or_null() {
    let row = decoder().decode(br#"{"ts": 1, "user": {"id": "u"}, "status": null}"#).unwrap();
    let datums = row.datums();
    assert_eq!(datums[2], Datum::Str("ZZ"), "default for a missing field");
    assert_eq!(datums[3], Datum::Null);
    assert_eq!(datums[7], Datum::Null);
}

#[test]
fn each_class_of_bad_record() {
    use BadRecordKind::*;
    let col = |c: &str| Some(c.to_string());
    assert_eq!(bad(b"{\"ts\": 1, \"user\": "), (InvalidJson, None));
    assert_eq!(bad(b"{\"ts\": 1} trailing"), (InvalidJson, None));
    assert_eq!(bad(b"[1, 2, 3]"), (NotAnObject, None));
    assert_eq!(bad(b"\"just a string\""), (NotAnObject, None));
    assert_eq!(bad(br#"{"user": {"id": "u"}}"#), (MissingRequired, col("ts")));
    assert_eq!(bad(br#"{"ts": 1, "user": {"id": 7}}"#), (WrongType, col("user")));
    assert_eq!(bad(br#"{"ts": 1, "user": {"id": "u"}, "status": 1.5}"#), (WrongType, col("status")));
    assert_eq!(bad(br#"{"ts": 1, "user": {"id": "u"}, "ok": "yes"}"#), (WrongType, col("ok")));
    assert_eq!(bad(br#"{"ts": "2026-01-01", "user": {"id": "u"}}"#), (WrongType, col("ts")));
    assert_eq!(bad(br#"{"ts": 1, "user": {"id": "u"}, "status": 3000000000}"#), (OutOfRange, col("status")));
    assert_eq!(bad(br#"{"ts": 1, "user": {"id": "u"}, "bytes": 18446744073709551615}"#), (OutOfRange, col("bytes")));
    assert_eq!(bad(br#"{"ts": 1, "user": {"id": "u"}, "score": 1e300}"#), (OutOfRange, col("score")));
    assert_eq!(bad(br#"{"ts": 1, "user": {"id": "u"}, "seen": "last tuesday"}"#), (InvalidTimestamp, col("seen")));
    assert_eq!(bad(b"{\"ts\": 1, \"user\": {\"id\": \"\xff\xfe\"}}"), (InvalidUtf8, None));
    assert_eq!(bad(b""), (Empty, None));
    assert_eq!(bad(b"  \n"), (Empty, None));
    let big = format!("{{\"ts\": 1, \"user\": {{\"id\": \"{}\"}}}}", "x".repeat(5000));
    assert_eq!(bad(big.as_bytes()), (Oversized, None));
    assert_eq!(bad(br#"{"ts": null, "user": {"id": "u"}}"#), (NullInRequired, col("ts")));
    assert_eq!(bad(br#"{"ts": 1, "ts": 2, "user": {"id": "u"}}"#), (DuplicateKey, None));
    assert_eq!(bad(br#"{"ts": 1, "user": {"id": "u", "id": "v"}}"#), (DuplicateKey, None));
}

#[test]
fn deeply_nested_input_never_overflows_the_stack() {
    let env = |_: &str| None;
    let text = PIPELINE.replace("max_message_bytes = \"4KiB\"", "max_message_bytes = \"4MiB\"");
    let d = Decoder::new(&parse_pipeline(&text, Path::new("events.toml"), &env).unwrap());
    let levels = 500_000;
    // In a field no column reads: skipped (iteratively), the row is fine.
    let ignored =
        format!("{{\"ts\": 1, \"user\": {{\"id\": \"u\"}}, \"x\": {}{}}}", "[".repeat(levels), "]".repeat(levels));
    assert!(d.decode(ignored.as_bytes()).is_ok());
    // In a field a column reads: the wrong type for it.
    let read =
        format!("{{\"ts\": 1, \"user\": {{\"id\": \"u\"}}, \"status\": {}{}}}", "[".repeat(levels), "]".repeat(levels));
    assert_eq!(d.decode(read.as_bytes()).unwrap_err().kind, BadRecordKind::WrongType);
    // Unbalanced: invalid JSON, found without recursing either.
    let open = format!("{{\"ts\": 1, \"x\": {}", "{\"a\":".repeat(levels));
    assert!(d.decode(open.as_bytes()).is_err());
}

#[test]
fn every_kind_has_a_distinct_label() {
    let labels: std::collections::HashSet<&str> = BadRecordKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(labels.len(), BadRecordKind::ALL.len());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decoder().decode(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(json in arbitrary_json(4)) {
        let text = serde_json::to_string(&serde_json::json!({"ts": 1, "user": {"id": "u", "geo": json.clone()}, "status": json})).unwrap();
        let _ = decoder().decode(text.as_bytes());
    }
}

fn arbitrary_json(depth: u32) -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|v| serde_json::json!(v)),
        any::<f64>().prop_filter("finite", |v| v.is_finite()).prop_map(|v| serde_json::json!(v)),
        ".{0,8}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(depth, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[a-z]{1,3}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}
