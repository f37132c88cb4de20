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
    // A key nothing reads cannot make the row ambiguous, however often it appears.
    assert!(decoder().decode(br#"{"ts": 1, "user": {"id": "u", "x": 1, "x": 2}, "y": [], "y": {}}"#).is_ok());
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

    /// Every field the schema reads is found at any position among
    /// arbitrary others (escaped strings, nesting, numbers of every form),
    /// and converted exactly.
    #[test]
    fn rows_hold_exactly_the_fields_read(record in record(), extras in extras()) {
        let (json, expected) = record;
        let mut object = extras;
        let serde_json::Value::Object(fields) = json else { unreachable!() };
        for (key, value) in fields {
            match (object.get_mut(&key), value) {
                // `user` merges with the extra fields of the user object.
                (Some(serde_json::Value::Object(existing)), serde_json::Value::Object(inner)) => existing.extend(inner),
                (_, value) => drop(object.insert(key, value)),
            }
        }
        let text = serde_json::to_string(&object).unwrap();
        let row = decoder().decode(text.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e} in {text}")))?;
        prop_assert_eq!(row.datums(), expected.iter().map(|d| d.as_datum()).collect::<Vec<_>>(), "{}", text);
    }

    /// Text that serde_json finds is not JSON is invalid JSON here too (or a
    /// duplicate key found before the fault), and JSON is never refused as
    /// invalid: the reader accepts exactly RFC 8259's grammar.
    #[test]
    fn json_validity_is_serde_jsons(text in mutated_json()) {
        let verdict = decoder().decode(text.as_bytes());
        let grammar = serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok();
        let values = serde_json::from_str::<serde_json::Value>(&text).is_ok();
        let kind = verdict.as_ref().err().map(|e| e.kind);
        if !grammar && !text.trim().is_empty() {
            prop_assert!(matches!(kind, Some(BadRecordKind::InvalidJson | BadRecordKind::DuplicateKey)), "{:?} for {}", verdict, text);
        }
        if values {
            prop_assert_ne!(kind, Some(BadRecordKind::InvalidJson), "{:?} for {}", verdict, text);
        }
    }
}

/// An owned [`Datum`], for expectations built before the row.
#[derive(Debug, Clone)]
enum Expected {
    Null,
    Str(String),
    Int32(i32),
    Int64(i64),
    Float32(f32),
    Bool(bool),
    Timestamp(i64),
}

impl Expected {
    fn as_datum(&self) -> Datum<'_> {
        match self {
            Expected::Null => Datum::Null,
            Expected::Str(s) => Datum::Str(s),
            Expected::Int32(v) => Datum::Int32(*v),
            Expected::Int64(v) => Datum::Int64(*v),
            Expected::Float32(v) => Datum::Float32(*v),
            Expected::Bool(v) => Datum::Bool(*v),
            Expected::Timestamp(v) => Datum::Timestamp(*v),
        }
    }
}

/// An optional field: absent, null, or a value.
fn field<T: std::fmt::Debug + Clone + 'static>(
    value: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<Option<T>>> {
    prop_oneof![Just(None), Just(Some(None)), value.prop_map(|v| Some(Some(v)))]
}

/// The fields of the test pipeline's schema, as JSON, with the row they make.
fn record() -> impl Strategy<Value = (serde_json::Value, Vec<Expected>)> {
    (
        any::<i64>(),
        "\\PC{0,12}|[\"\\\\/\u{0}-\u{1f}a-z\u{e9}\u{1f600}]{0,12}",
        field("[A-Z\"\\\\]{0,3}"),
        field(any::<i32>()),
        field(any::<i64>()),
        field(any::<f32>().prop_filter("finite", |v| v.is_finite())),
        field(any::<bool>()),
    )
        .prop_map(|(ts, user, country, status, bytes, score, ok)| {
            let mut json = serde_json::json!({"ts": ts, "user": {"id": user}});
            let mut put = |path: &[&str], value: serde_json::Value| {
                let mut at = &mut json;
                for key in &path[..path.len() - 1] {
                    at = at.as_object_mut().unwrap().entry(*key).or_insert_with(|| serde_json::json!({}));
                }
                at.as_object_mut().unwrap().insert(path[path.len() - 1].to_string(), value);
            };
            let optional = |v: &Option<Option<serde_json::Value>>, put: &mut dyn FnMut(serde_json::Value)| {
                if let Some(v) = v {
                    put(v.clone().unwrap_or(serde_json::Value::Null));
                }
            };
            optional(&country.clone().map(|c| c.map(serde_json::Value::from)), &mut |v| {
                put(&["user", "geo", "country"], v)
            });
            optional(&status.map(|c| c.map(serde_json::Value::from)), &mut |v| put(&["status"], v));
            optional(&bytes.map(|c| c.map(serde_json::Value::from)), &mut |v| put(&["bytes"], v));
            optional(&score.map(|c| c.map(|f| serde_json::Value::from(f64::from(f)))), &mut |v| put(&["score"], v));
            optional(&ok.map(|c| c.map(serde_json::Value::from)), &mut |v| put(&["ok"], v));
            let or_null = |v: Option<Option<Expected>>| v.flatten().unwrap_or(Expected::Null);
            let expected = vec![
                Expected::Timestamp(ts),
                Expected::Str(user),
                country.flatten().map_or(Expected::Str("ZZ".into()), Expected::Str),
                or_null(status.map(|v| v.map(Expected::Int32))),
                or_null(bytes.map(|v| v.map(Expected::Int64))),
                or_null(score.map(|v| v.map(Expected::Float32))),
                or_null(ok.map(|v| v.map(Expected::Bool))),
                Expected::Null,
            ];
            (json, expected)
        })
}

/// Fields no column reads, at the top level and inside `user`.
fn extras() -> impl Strategy<Value = serde_json::Map<String, serde_json::Value>> {
    let key = "[a-z]{1,3}|[a-z\"\\\\\u{e9}]{4,9}".prop_filter("not a column's", |k| {
        !["ts", "user", "status", "bytes", "score", "ok", "seen", "id", "geo"].contains(&k.as_str())
    });
    (
        prop::collection::btree_map(key.clone(), arbitrary_json(3), 0..6),
        prop::collection::btree_map(key, arbitrary_json(3), 0..4),
    )
        .prop_map(|(top, user)| {
            let mut top: serde_json::Map<String, serde_json::Value> = top.into_iter().collect();
            top.insert("user".into(), serde_json::Value::Object(user.into_iter().collect()));
            top
        })
}

/// Valid JSON with a few bytes replaced, inserted or removed.
fn mutated_json() -> impl Strategy<Value = String> {
    let edit =
        (any::<prop::sample::Index>(), 0..5u8, prop::sample::select(&b"{}[]\",:0123456789-+.eE \\tfnu\x01abc"[..]));
    (arbitrary_json(3), prop::collection::vec(edit, 0..3)).prop_map(|(json, edits)| {
        let mut bytes =
            serde_json::to_string(&serde_json::json!({"ts": 1, "user": {"id": "u"}, "x": json})).unwrap().into_bytes();
        for (at, how, byte) in edits {
            let i = at.index(bytes.len() + 1);
            // Half the edits hit the structure: a bracket, comma, colon or quote.
            let structural: Vec<usize> = (0..bytes.len()).filter(|&i| b"{}[],:\"".contains(&bytes[i])).collect();
            if how >= 3 {
                let i = structural[at.index(structural.len())];
                bytes[i] = byte;
                continue;
            }
            match how {
                0 => bytes.insert(i, byte),
                1 if i < bytes.len() => bytes[i] = byte,
                _ if i < bytes.len() => drop(bytes.remove(i)),
                _ => {}
            }
        }
        // Mutations keep to ASCII edits but may split a character.
        String::from_utf8_lossy(&bytes).into_owned()
    })
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
