//! Avro records, raw and Confluent-framed: good records become the row the
//! same values in JSON give, every bad-record class is recognised, no input
//! panics, and the decoder converts exactly the type pairs validation
//! accepts. (Records written by an independent producer, fastavro, are in
//! `tests/avro.rs` at the workspace root.)

use std::path::Path;

use proptest::prelude::*;
use sluice_config::avro::{self, AvroSchema, PathTarget};
use sluice_config::{ColumnType, PipelineConfig, TimestampFormat, parse_pipeline};
use sluice_decode::{BadRecordKind, Decoder};
use sluice_segments::Datum;

const SCHEMA: &str = r#"{"type": "record", "name": "Click", "namespace": "shop", "fields": [
  {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
  {"name": "tags", "type": {"type": "array", "items": "string"}},
  {"name": "user", "type": {"type": "record", "name": "User", "fields": [
    {"name": "id", "type": "string"},
    {"name": "geo", "type": ["null", {"type": "record", "name": "Geo", "fields": [{"name": "country", "type": "string"}]}]}]}},
  {"name": "status", "type": ["null", "int"]},
  {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
  {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["view", "buy"]}},
  {"name": "extra", "type": {"type": "map", "values": "double"}},
  {"name": "day", "type": {"type": "int", "logicalType": "date"}}]}"#;

fn pipeline(source: &str) -> PipelineConfig {
    let text = format!(
        r#"table = "clicks"
[source]
bootstrap_servers = "k:9092"
topic = "clicks"
format = "avro"
{source}
[schema]
time_column = "ts"
[[schema.columns]]
name = "ts"
type = "timestamp"
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
name = "price"
type = "float64"
[[schema.columns]]
name = "price_text"
type = "string"
path = "price"
[[schema.columns]]
name = "kind"
type = "string"
[[schema.columns]]
name = "day"
type = "timestamp"
unit = "s"
[bad_records]
max_message_bytes = "4KiB"
"#
    );
    parse_pipeline(&text, Path::new("clicks.toml"), &|_: &str| None).unwrap()
}

fn raw() -> Decoder {
    Decoder::new(&pipeline(&format!("avro_schema = '''{SCHEMA}'''")))
}

/// Avro's binary encoding, enough for the tests.
#[derive(Default)]
struct Avro(Vec<u8>);

impl Avro {
    fn long(mut self, v: i64) -> Self {
        let mut n = ((v << 1) ^ (v >> 63)) as u64;
        while n >= 0x80 {
            self.0.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.0.push(n as u8);
        self
    }
    fn bytes(self, b: &[u8]) -> Self {
        let mut s = self.long(b.len() as i64);
        s.0.extend_from_slice(b);
        s
    }
    fn string(self, s: &str) -> Self {
        self.bytes(s.as_bytes())
    }
    fn double(mut self, v: f64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
}

/// A click: micros 1_764_000_000_123_456, two tags, user `u1` in DE,
/// status 200, price 12.05, `buy`, one extra entry, day 20_000.
fn click() -> Avro {
    Avro::default()
        .long(1_764_000_000_123_456)
        .long(2)
        .string("a")
        .string("b")
        .long(0)
        .string("u1")
        .long(1)
        .string("DE")
        .long(1)
        .long(200)
        .bytes(&1205i32.to_be_bytes()[1..])
        .long(1)
        .long(1)
        .string("x")
        .double(0.5)
        .long(0)
        .long(20_000)
}

fn datums(decoder: &Decoder, bytes: &[u8]) -> Vec<String> {
    decoder.decode(bytes).unwrap().datums().iter().map(|d| format!("{d:?}")).collect()
}

#[test]
fn a_raw_record_becomes_the_row_its_values_mean() {
    let (decoder, bytes) = (raw(), click().0);
    let row = decoder.decode(&bytes).unwrap();
    assert_eq!(
        row.datums(),
        vec![
            Datum::Timestamp(1_764_000_000_123),
            Datum::Str("u1"),
            Datum::Str("DE"),
            Datum::Int32(200),
            Datum::Float64(12.05),
            Datum::Str("12.05"),
            Datum::Str("buy"),
            Datum::Timestamp(20_000 * 86_400),
        ]
    );
}

#[test]
fn a_null_union_branch_is_absent_below_and_null_at_the_leaf() {
    let record = Avro::default()
        .long(1)
        .long(0)
        .string("u2")
        .long(0) // geo: null
        .long(0) // status: null
        .bytes(&[0xff]) // -1 → -0.01
        .long(0)
        .long(0)
        .long(-1);
    let row = datums(&raw(), &record.0);
    assert_eq!(row[2], "Str(\"ZZ\")", "the default of a column under a null record");
    assert_eq!(row[3], "Null");
    assert_eq!(row[5], "Str(\"-0.01\")");
    assert_eq!(row[7], "Timestamp(-86400)");
}

#[test]
fn every_avro_bad_record_class() {
    let d = raw();
    let good = click().0;
    let kind = |bytes: &[u8]| d.decode(bytes).map(|_| ()).unwrap_err().kind;
    assert_eq!(kind(&good[..good.len() - 1]), BadRecordKind::Truncated);
    assert_eq!(kind(&good[..3]), BadRecordKind::Truncated);
    assert_eq!(kind(&[good.as_slice(), &[0]].concat()), BadRecordKind::InvalidAvro, "trailing bytes");
    assert_eq!(kind(b""), BadRecordKind::Empty);
    assert_eq!(kind(&vec![1u8; 5_000]), BadRecordKind::Oversized);
    // A union branch out of range (status = branch 7).
    let mut branch = click();
    branch.0 = Avro::default().long(1).long(0).string("u").long(0).long(7).0;
    assert_eq!(kind(&branch.0), BadRecordKind::InvalidAvro);
    // A string that is not UTF-8, in a column.
    let bad_utf8 =
        Avro::default().long(1).long(0).bytes(&[0xff, 0xfe]).long(0).long(0).bytes(&[1]).long(0).long(0).long(0);
    let error = d.decode(&bad_utf8.0).map(|_| ()).unwrap_err();
    assert_eq!((error.kind, error.column.as_deref()), (BadRecordKind::InvalidUtf8, Some("user")));
    // An int beyond 32 bits into status: the varint is not an Avro int.
    let wide = Avro::default().long(1).long(0).string("u").long(0).long(1).long(1 << 40).0;
    assert_eq!(kind(&wide), BadRecordKind::InvalidAvro);
}

#[test]
fn a_writer_schema_of_the_wrong_type_names_its_column() {
    let schema = r#"{"type": "record", "name": "Click", "fields": [
      {"name": "ts", "type": "long"}, {"name": "user", "type": {"type": "record", "name": "U", "fields": [{"name": "id", "type": "string"}]}},
      {"name": "status", "type": "string"}, {"name": "price", "type": "double"}, {"name": "price_text", "type": "string"},
      {"name": "kind", "type": "string"}]}"#;
    // Validation refuses this schema for `status`; a registry may hold it
    // all the same, so the decoder must judge it per record.
    let mut config = pipeline(&format!("avro_schema = '''{SCHEMA}'''"));
    config.source.avro_schema = Some(schema.to_string());
    let d = Decoder::new(&config);
    let record = Avro::default().long(5).string("u").string("x").double(1.5).string("p").string("view");
    let error = d.decode(&record.0).map(|_| ()).unwrap_err();
    assert_eq!((error.kind, error.column.as_deref()), (BadRecordKind::WrongType, Some("status")));
    assert!(error.detail.contains("string"), "{error}");
}

fn registry_decoder() -> Decoder {
    Decoder::new(&pipeline("schema_registry = \"http://key:s3cret@127.0.0.1:9\""))
}

#[tokio::test]
async fn confluent_framing_is_checked_before_the_schema_is_fetched() {
    let d = registry_decoder();
    let kind = |bytes: &[u8]| d.decode(bytes).map(|_| ()).unwrap_err().kind;
    assert_eq!(kind(&[1, 0, 0, 0, 7, 2]), BadRecordKind::WrongMagicByte);
    assert_eq!(kind(b"{\"ts\": 1}"), BadRecordKind::WrongMagicByte);
    assert_eq!(kind(&[0, 0, 0]), BadRecordKind::Truncated);
    assert_eq!(d.unfetched(&[0, 0, 0, 0, 7, 2]), Some(7));
    assert_eq!(d.unfetched(&[1, 0, 0, 0, 7, 2]), None, "a bad frame needs no schema");
    // Nothing listens on port 9: an error to retry, never a verdict.
    let error = d.fetch(7).await.unwrap_err().to_string();
    assert!(error.contains("schema 7") && error.contains("127.0.0.1:9"), "{error}");
    assert!(!error.contains("s3cret"), "credentials never reach a message: {error}");
    assert_eq!(d.unfetched(&[0, 0, 0, 0, 7, 2]), Some(7), "still to fetch");
}

/// A registry behind basic auth (a managed registry's API key): the
/// credentials in `source.schema_registry` are sent, a wrong one is an
/// error to retry (never a verdict), and no message shows the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_credentials_in_the_url_are_sent_and_never_shown() {
    let registry = sluice_testkit::SchemaRegistry::start().unwrap();
    let id = registry.register("clicks-value", SCHEMA);
    registry.require_basic_auth("key", "s3cret-value");
    let with = |password: &str| {
        let url = registry.url().replacen("http://", &format!("http://key:{password}@"), 1);
        Decoder::new(&pipeline(&format!("schema_registry = \"{url}\"")))
    };
    let framed = [&[0u8][..], &id.to_be_bytes(), &click().0].concat();

    let wrong = with("not-the-secret");
    let error = wrong.fetch(id).await.unwrap_err().to_string();
    assert!(error.contains("401") && !error.contains("not-the-secret"), "{error}");
    assert_eq!(wrong.unfetched(&framed), Some(id), "a refused login is no verdict on the schema");

    let right = with("s3cret-value");
    right.fetch(id).await.unwrap();
    assert_eq!(right.unfetched(&framed), None);
    assert_eq!(right.decode(&framed).unwrap().datums()[1], Datum::Str("u1"));
}

/// A registry answer larger than the cap (a hostile or broken registry)
/// is an error, read no further than the cap; an id under a schema that
/// is not valid Avro is a verdict: its records are bad.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_registry_answers_are_bounded_or_refused() {
    let registry = sluice_testkit::SchemaRegistry::start().unwrap();
    let huge = SCHEMA.replacen("\"Click\",", &format!("\"Click\", \"doc\": \"{}\",", "x".repeat(5 << 20)), 1);
    let huge_id = registry.register("huge-value", &huge);
    let broken_id = registry
        .register("broken-value", r#"{"type": "record", "name": "B", "fields": [{"name": "a", "type": "Nope"}]}"#);
    let d = Decoder::new(&pipeline(&format!("schema_registry = \"{}\"", registry.url())));
    let error = d.fetch(huge_id).await.unwrap_err().to_string();
    assert!(error.contains("more than"), "{error}");
    d.fetch(broken_id).await.unwrap();
    let framed = [&[0u8][..], &broken_id.to_be_bytes(), &click().0].concat();
    let bad = d.decode(&framed).map(|_| ()).unwrap_err();
    assert_eq!(bad.kind, BadRecordKind::UnknownSchemaId);
    assert!(bad.detail.contains("not a valid Avro schema"), "{bad}");
}

/// One column of `ty`/`format` reading field `v` of type `field`.
fn one_field(ty: ColumnType, format: TimestampFormat, field: &str) -> (PipelineConfig, AvroSchema) {
    let schema = format!(r#"{{"type": "record", "name": "R", "fields": [{{"name": "v", "type": {field}}}]}}"#);
    let mut config = pipeline(&format!("avro_schema = '''{SCHEMA}'''"));
    let mut column = config.schema.columns[0].clone();
    column.name = "v".into();
    column.data_type = ty;
    column.nullable = true;
    column.unit = None;
    column.format = (ty == ColumnType::Timestamp).then_some(format);
    config.schema.columns = vec![column];
    config.schema.time_column = "v".into();
    config.source.avro_schema = Some(schema.clone());
    (config, AvroSchema::parse(&schema).unwrap())
}

/// The decoder converts a value exactly when validation says the types
/// convert: the two never disagree.
#[test]
fn the_decoder_converts_exactly_what_validation_accepts() {
    let fields: Vec<(&str, Vec<u8>)> = vec![
        (r#""boolean""#, vec![1]),
        (r#""int""#, Avro::default().long(7).0),
        (r#""long""#, Avro::default().long(7).0),
        (r#""float""#, 1.5f32.to_le_bytes().to_vec()),
        (r#""double""#, Avro::default().double(1.5).0),
        (r#""string""#, Avro::default().string("2026-11-25T10:00:00Z").0),
        (r#""bytes""#, Avro::default().bytes(b"x").0),
        (
            r#"{"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 1}"#,
            Avro::default().bytes(&[0x10]).0,
        ),
        (
            r#"{"type": "fixed", "name": "F", "size": 2, "logicalType": "decimal", "precision": 4, "scale": 1}"#,
            vec![0, 0x10],
        ),
        (r#"{"type": "fixed", "name": "F", "size": 2}"#, vec![1, 2]),
        (r#"{"type": "enum", "name": "E", "symbols": ["a"]}"#, vec![0]),
        (r#"{"type": "array", "items": "int"}"#, vec![2, 2, 0]),
        (r#"{"type": "map", "values": "int"}"#, vec![2, 2, b'k', 2, 0]),
        (r#"{"type": "record", "name": "In", "fields": [{"name": "x", "type": "int"}]}"#, vec![2]),
        (r#"{"type": "long", "logicalType": "timestamp-millis"}"#, Avro::default().long(7).0),
        (r#"{"type": "long", "logicalType": "timestamp-nanos"}"#, Avro::default().long(7).0),
        (r#"{"type": "int", "logicalType": "date"}"#, Avro::default().long(7).0),
    ];
    let types = [
        ColumnType::String,
        ColumnType::Bool,
        ColumnType::Int32,
        ColumnType::Int64,
        ColumnType::Float32,
        ColumnType::Float64,
        ColumnType::Timestamp,
    ];
    for (field, value) in &fields {
        for ty in types {
            for format in [TimestampFormat::Epoch, TimestampFormat::Rfc3339] {
                let (config, schema) = one_field(ty, format, field);
                let PathTarget::Found(nodes) = schema.target(&["v"]) else { panic!("{field}") };
                let accepted = avro::accepts(ty, format, schema.node(nodes[0]));
                let decoded = Decoder::new(&config).decode(value);
                assert_eq!(decoded.is_ok(), accepted, "{field} into {ty} ({format:?}): {decoded:?}");
                if let Err(bad) = decoded {
                    assert_eq!(bad.kind, BadRecordKind::WrongType, "{field} into {ty}");
                }
            }
        }
    }
}

proptest! {
    /// No input panics or hangs, raw or framed, whatever its bytes.
    #[test]
    fn any_bytes_get_an_answer(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = raw().decode(&bytes);
        let _ = registry_decoder().decode(&bytes);
    }

    /// A good record with any prefix cut is refused, never misread.
    #[test]
    fn every_cut_of_a_good_record_is_refused(cut in 0usize..60) {
        let good = click().0;
        let cut = cut.min(good.len() - 1);
        prop_assert!(raw().decode(&good[..cut]).is_err());
    }
}
