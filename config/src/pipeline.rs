//! The pipeline file: one Kafka topic into one table.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::avro::{AvroSchema, PathTarget};
use crate::error::Problems;
use crate::schema::{Column, ColumnType, Literal, Schema, TimestampFormat};
use crate::star_tree::StarTreeConfig;
use crate::units::{self, ByteSize, parse_host_ports};

/// A pipeline: where records come from, how they are decoded and indexed, when
/// segments are sealed, where they are stored and for how long. The table a
/// pipeline fills carries the pipeline's name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Table name, also the pipeline's identity in ZooKeeper and in segment
    /// names: lower-case letters, digits and single underscores.
    pub table: String,
    pub source: KafkaSource,
    pub schema: Schema,
    #[serde(default)]
    pub indexes: Indexes,
    #[serde(default)]
    pub flush: FlushThresholds,
    #[serde(default)]
    pub deep_store: DeepStore,
    #[serde(default)]
    pub bad_records: BadRecords,
    /// Segments whose newest row is older than this are deleted by the
    /// cluster leader. Absent: kept forever.
    #[serde(default, with = "units::option_duration", skip_serializing_if = "Option::is_none")]
    pub retention: Option<Duration>,
    /// In a cluster of query nodes: how many serve each of this table's
    /// committed segments and partition tails (a small, hot dimension table
    /// on every node, say). Absent: the query nodes' own `replication`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSource {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    pub topic: String,
    /// Where to start reading a partition that has no checkpoint yet. Once a
    /// partition has a checkpoint, the checkpoint alone decides.
    #[serde(default)]
    pub start_position: StartPosition,
    /// Passed through to librdkafka as is (SASL, TLS, fetch tuning, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// How each message is encoded.
    #[serde(default, skip_serializing_if = "is_default")]
    pub format: SourceFormat,
    /// `format = "avro"`, raw binary Avro (one record per message, no
    /// framing): the writer schema, as Avro's JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avro_schema: Option<String>,
    /// The same, from a file (relative to the pipeline file). It is read
    /// when the pipeline is loaded and kept inline (`avro_schema`), so every
    /// node decodes with the schema that was validated, wherever it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avro_schema_file: Option<PathBuf>,
    /// `format = "avro"` in Confluent's wire format (a zero byte, a 4-byte
    /// schema id, the Avro body): the schema registry's base URL
    /// (`http://registry:8081`). Writer schemas are fetched by id and cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_registry: Option<String>,
}

/// How a pipeline's messages are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    /// One JSON object per message.
    #[default]
    Json,
    /// One Avro record per message: raw with `avro_schema`, or framed by
    /// Confluent's wire format with `schema_registry`.
    Avro,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// librdkafka properties that sluice sets itself, with the reason; overriding
/// any of them would break exactly-once or duplicate a first-class field.
pub const RESERVED_KAFKA_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "set `source.bootstrap_servers` instead"),
    ("enable.auto.commit", "offsets are committed to ZooKeeper with each segment, never by the consumer"),
    ("enable.auto.offset.store", "offsets are committed to ZooKeeper with each segment, never by the consumer"),
    ("auto.offset.reset", "set `source.start_position` instead"),
    ("group.instance.id", "partitions are assigned by sluice, not by a consumer group"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPosition {
    #[default]
    Earliest,
    Latest,
    Offset(u64),
}

impl Serialize for StartPosition {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            StartPosition::Earliest => serializer.serialize_str("earliest"),
            StartPosition::Latest => serializer.serialize_str("latest"),
            StartPosition::Offset(offset) => serializer.serialize_u64(*offset),
        }
    }
}

impl<'de> Deserialize<'de> for StartPosition {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PositionVisitor;
        impl Visitor<'_> for PositionVisitor {
            type Value = StartPosition;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`earliest`, `latest` or a non-negative offset")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StartPosition, E> {
                Ok(StartPosition::Offset(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StartPosition, E> {
                u64::try_from(v).map(StartPosition::Offset).map_err(|_| {
                    E::custom(format!("negative offset {v}, expected `earliest`, `latest` or a non-negative offset"))
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StartPosition, E> {
                match v {
                    "earliest" => Ok(StartPosition::Earliest),
                    "latest" => Ok(StartPosition::Latest),
                    other => other.parse::<u64>().map(StartPosition::Offset).map_err(|_| {
                        E::custom(format!(
                            "unknown start position `{other}`, expected `earliest`, `latest` or a non-negative offset"
                        ))
                    }),
                }
            }
        }
        deserializer.deserialize_any(PositionVisitor)
    }
}

/// Indexes by kind, each a list of column names (Pinot's table index config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Indexes {
    /// Value → bitmap of rows, over a sorted dictionary.
    #[serde(default)]
    pub inverted: Vec<String>,
    /// At most one: rows are sorted by it at seal time.
    #[serde(default)]
    pub sorted: Vec<String>,
    /// Range predicates evaluated from the index instead of a scan.
    #[serde(default)]
    pub range: Vec<String>,
    /// Per-segment bloom filter, for pruning equality predicates.
    #[serde(default)]
    pub bloom: Vec<String>,
    /// Pre-aggregations built at seal (see [`crate::star_tree`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub star_tree: Vec<StarTreeConfig>,
}

impl Indexes {
    fn lists(&self) -> [(&'static str, &Vec<String>); 4] {
        [("inverted", &self.inverted), ("sorted", &self.sorted), ("range", &self.range), ("bloom", &self.bloom)]
    }

    pub fn sorted_column(&self) -> Option<&str> {
        self.sorted.first().map(String::as_str)
    }
}

/// A consuming segment is sealed when the first of these is reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlushThresholds {
    #[serde(default = "FlushThresholds::default_rows")]
    pub rows: i64,
    #[serde(default = "FlushThresholds::default_time", with = "units::duration")]
    pub time: Duration,
    #[serde(default = "FlushThresholds::default_bytes")]
    pub bytes: ByteSize,
}

impl FlushThresholds {
    fn default_rows() -> i64 {
        1_000_000
    }
    fn default_time() -> Duration {
        Duration::from_secs(600)
    }
    fn default_bytes() -> ByteSize {
        ByteSize::mib(256)
    }
}

impl Default for FlushThresholds {
    fn default() -> Self {
        Self { rows: Self::default_rows(), time: Self::default_time(), bytes: Self::default_bytes() }
    }
}

/// Deep-store URI schemes sluice can write segments to.
pub const DEEP_STORE_SCHEMES: &[&str] = &["file", "memory", "s3", "s3a", "gs", "az", "adl", "azure", "abfs", "abfss"];

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeepStore {
    /// Where sealed segment files are uploaded, e.g. `file:///mnt/segments`.
    /// Absent: `<worker data_dir>/deep-store`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadRecordPolicy {
    /// Count, log and skip.
    #[default]
    Skip,
    /// Count, log, and write the original bytes with a reason header to a topic.
    DeadLetter,
    /// Stop the partition at the first bad record.
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BadRecords {
    #[serde(default)]
    pub policy: BadRecordPolicy,
    /// The dead-letter topic (policy `dead_letter` only), on the source cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Records larger than this are bad records (`oversized`), not decoded.
    #[serde(default = "BadRecords::default_max_message_bytes")]
    pub max_message_bytes: ByteSize,
}

impl BadRecords {
    fn default_max_message_bytes() -> ByteSize {
        ByteSize::mib(1)
    }
}

impl Default for BadRecords {
    fn default() -> Self {
        Self { policy: BadRecordPolicy::default(), topic: None, max_message_bytes: Self::default_max_message_bytes() }
    }
}

impl PipelineConfig {
    /// Checks everything the types alone cannot: references between fields,
    /// value ranges, name rules. Reports every problem found, not the first.
    pub fn validate(&self) -> Problems {
        let mut p = Problems::default();
        if !is_valid_table_name(&self.table) {
            p.push(
                "table",
                format!("{:?}", self.table),
                "a name of lower-case letters, digits and `_`, starting with a letter, without `__`, at most 64 characters",
            );
        }
        self.validate_source(&mut p);
        self.validate_schema(&mut p);
        self.validate_indexes(&mut p);
        self.validate_flush(&mut p);
        self.validate_deep_store(&mut p);
        self.validate_bad_records(&mut p);
        if self.retention == Some(Duration::ZERO) {
            p.push("retention", "`0s`", "a retention greater than zero (or no `retention` to keep segments forever)");
        }
        if let Some(r) = self.replication.filter(|r| !(1..=16).contains(r)) {
            p.push("replication", r.to_string(), "from 1 to 16 query nodes per segment");
        }
        p
    }

    fn validate_source(&self, p: &mut Problems) {
        if let Err(why) = parse_host_ports(&self.source.bootstrap_servers) {
            p.push(
                "source.bootstrap_servers",
                format!("{:?} ({why})", self.source.bootstrap_servers),
                "a comma-separated list of `host:port`",
            );
        }
        if !is_valid_topic(&self.source.topic) {
            p.push(
                "source.topic",
                format!("{:?}", self.source.topic),
                "a Kafka topic name: 1 to 249 of letters, digits, `.`, `_`, `-`",
            );
        }
        for (key, reason) in RESERVED_KAFKA_PROPERTIES {
            if self.source.properties.contains_key(*key) {
                p.push(
                    crate::interpolate::join_key("source.properties", key),
                    format!("`{key}`, which sluice sets itself"),
                    format!("no such property: {reason}"),
                );
            }
        }
        self.validate_format(p);
    }

    fn validate_format(&self, p: &mut Problems) {
        let source = &self.source;
        if let Some(url) = &source.schema_registry
            && let Err(why) = check_http_url(url)
        {
            p.push("source.schema_registry", why, "an http:// or https:// URL such as `http://registry:8081`");
        }
        match source.format {
            SourceFormat::Json => {
                for (field, set) in [
                    ("avro_schema", source.avro_schema.is_some()),
                    ("avro_schema_file", source.avro_schema_file.is_some()),
                    ("schema_registry", source.schema_registry.is_some()),
                ] {
                    if set {
                        p.push(
                            format!("source.{field}"),
                            format!("`{field}` with format = \"json\""),
                            format!("`{field}` only with format = \"avro\""),
                        );
                    }
                }
            }
            SourceFormat::Avro => match (&source.avro_schema, &source.schema_registry) {
                (None, None) => p.push(
                    "source.format",
                    "\"avro\" without a schema",
                    "`avro_schema` or `avro_schema_file` (raw Avro), or `schema_registry` (Confluent's wire format)",
                ),
                (Some(_), Some(_)) => p.push(
                    "source.schema_registry",
                    "both a schema registry and an inline schema",
                    "one of them: a registry for Confluent-framed messages, a schema for raw ones",
                ),
                (Some(text), None) => match AvroSchema::parse(text) {
                    Err(e) => p.push("source.avro_schema", format!("a schema that is invalid ({e})"), "an Avro schema"),
                    Ok(schema) => self.validate_avro_paths(&schema, p),
                },
                (None, Some(_)) => {}
            },
        }
    }

    /// Each column's path leads to a field of the (raw) writer schema
    /// whose type converts to the column's.
    fn validate_avro_paths(&self, schema: &AvroSchema, p: &mut Problems) {
        for (i, column) in self.schema.columns.iter().enumerate() {
            match schema.target(&column.field_path()) {
                PathTarget::Missing => p.push(
                    format!("schema.columns[{i}].path"),
                    format!("{:?}, which is not a field of the Avro schema", column.field_path().join(".")),
                    "a field (or a dotted path through records) of `source.avro_schema`",
                ),
                PathTarget::Found(nodes) => {
                    if let Some(&node) = nodes.iter().find(|&&n| !schema.accepts(column, n)) {
                        p.push(
                            format!("schema.columns[{i}].type"),
                            format!("{}, but the Avro field is {}", column.data_type, schema.describe(node)),
                            "a column type the Avro type converts to (README: Avro input)",
                        );
                    }
                }
            }
        }
    }

    fn validate_schema(&self, p: &mut Problems) {
        let columns = &self.schema.columns;
        if columns.is_empty() {
            p.push("schema.columns", "an empty list", "at least one column");
        }
        let mut seen = BTreeSet::new();
        for (i, column) in columns.iter().enumerate() {
            let field = format!("schema.columns[{i}]");
            if !is_valid_column_name(&column.name) {
                p.push(
                    format!("{field}.name"),
                    format!("{:?}", column.name),
                    "a name of letters, digits and `_`, starting with a letter or `_`",
                );
            } else if column.name.starts_with("__") {
                p.push(
                    format!("{field}.name"),
                    format!("{:?}, which starts with `__`", column.name),
                    "a name not starting with `__` (reserved for sluice's own columns, such as `__offset`)",
                );
            }
            if !seen.insert(column.name.to_ascii_lowercase()) {
                p.push(
                    format!("{field}.name"),
                    format!("{:?}, a duplicate column name", column.name),
                    "column names unique (case-insensitively, as in SQL)",
                );
            }
            if let Some(path) = &column.path
                && (path.is_empty() || path.split('.').any(str::is_empty))
            {
                p.push(
                    format!("{field}.path"),
                    format!("{path:?}"),
                    "a field name or a dotted path such as `device.os.name`",
                );
            }
            if column.data_type != ColumnType::Timestamp {
                for (name, set) in [("unit", column.unit.is_some()), ("format", column.format.is_some())] {
                    if set {
                        p.push(
                            format!("{field}.{name}"),
                            format!("`{name}` on a column of type {}", column.data_type),
                            format!("`{name}` only on timestamp columns"),
                        );
                    }
                }
            }
            if let Some(default) = &column.default
                && let Err(expected) = check_literal(column, default)
            {
                p.push(format!("{field}.default"), default.to_string(), expected);
            }
        }
        match self.schema.column(&self.schema.time_column) {
            None => p.push(
                "schema.time_column",
                format!("{:?}, which is not a column of the schema", self.schema.time_column),
                "the name of a timestamp column in schema.columns",
            ),
            Some(c) if c.data_type != ColumnType::Timestamp => p.push(
                "schema.time_column",
                format!("{:?}, a column of type {}", c.name, c.data_type),
                "the name of a column of type timestamp",
            ),
            Some(_) => {}
        }
    }

    fn validate_indexes(&self, p: &mut Problems) {
        for (kind, list) in self.indexes.lists() {
            let mut seen = BTreeSet::new();
            for (i, name) in list.iter().enumerate() {
                let field = format!("indexes.{kind}[{i}]");
                if self.schema.column(name).is_none() {
                    p.push(
                        field.clone(),
                        format!("{name:?}, which is not a column of the schema"),
                        "a column name from schema.columns",
                    );
                }
                if !seen.insert(name) {
                    p.push(field, format!("{name:?} listed twice"), "each column at most once per index kind");
                }
            }
        }
        if self.indexes.sorted.len() > 1 {
            p.push(
                "indexes.sorted",
                format!("{} columns {:?}", self.indexes.sorted.len(), self.indexes.sorted),
                "at most one sorted column: rows can be sorted by one column only",
            );
        }
        for (i, tree) in self.indexes.star_tree.iter().enumerate() {
            tree.validate(&format!("indexes.star_tree[{i}]"), &self.schema, p);
        }
    }

    fn validate_flush(&self, p: &mut Problems) {
        let flush = &self.flush;
        if flush.rows <= 0 {
            p.push("flush.rows", flush.rows.to_string(), "a number of rows greater than zero");
        }
        if flush.time.is_zero() {
            p.push("flush.time", "`0s`", "a duration greater than zero, such as `10m`");
        }
        if flush.bytes.as_u64() == 0 {
            p.push("flush.bytes", "0 bytes", "a size greater than zero, such as `256MiB`");
        }
    }

    fn validate_deep_store(&self, p: &mut Problems) {
        if let Some(uri) = &self.deep_store.uri
            && let Err(found) = check_deep_store_uri(uri)
        {
            p.push(
                "deep_store.uri",
                found,
                format!(
                    "a URI with one of the schemes {}, such as `file:///var/lib/sluice/segments`",
                    DEEP_STORE_SCHEMES.join(", ")
                ),
            );
        }
    }

    fn validate_bad_records(&self, p: &mut Problems) {
        if self.bad_records.max_message_bytes.as_u64() == 0 {
            p.push("bad_records.max_message_bytes", "0 bytes", "a size greater than zero, such as `1MiB`");
        }
        match (self.bad_records.policy, &self.bad_records.topic) {
            (BadRecordPolicy::DeadLetter, None) => p.push(
                "bad_records.topic",
                "nothing (policy is `dead_letter`)",
                "the dead-letter topic to write bad records to",
            ),
            (BadRecordPolicy::DeadLetter, Some(topic)) if !is_valid_topic(topic) => p.push(
                "bad_records.topic",
                format!("{topic:?}"),
                "a Kafka topic name: 1 to 249 of letters, digits, `.`, `_`, `-`",
            ),
            (BadRecordPolicy::DeadLetter, Some(topic)) if *topic == self.source.topic => p.push(
                "bad_records.topic",
                format!("{topic:?}, the source topic itself"),
                "a topic other than the source topic",
            ),
            (policy, Some(_)) if policy != BadRecordPolicy::DeadLetter => p.push(
                "bad_records.topic",
                format!("a topic with policy `{}`", serde_name(&policy)),
                "`topic` only with policy = \"dead_letter\"",
            ),
            _ => {}
        }
    }
}

fn serde_name<T: Serialize>(value: &T) -> String {
    toml::Value::try_from(value).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn check_literal(column: &Column, value: &Literal) -> Result<(), String> {
    let ok = match (column.data_type, value) {
        (ColumnType::String, Literal::String(_)) => true,
        (ColumnType::Bool, Literal::Bool(_)) => true,
        (ColumnType::Int32, Literal::Int(v)) => i32::try_from(*v).is_ok(),
        (ColumnType::Int64, Literal::Int(_)) => true,
        (ColumnType::Float32 | ColumnType::Float64, Literal::Int(_) | Literal::Float(_)) => true,
        (ColumnType::Timestamp, Literal::Int(_)) => column.timestamp_format() == TimestampFormat::Epoch,
        (ColumnType::Timestamp, Literal::String(_)) => column.timestamp_format() == TimestampFormat::Rfc3339,
        _ => false,
    };
    if ok {
        return Ok(());
    }
    Err(match column.data_type {
        ColumnType::Int32 => "an integer from -2147483648 to 2147483647".to_string(),
        ColumnType::Timestamp if column.timestamp_format() == TimestampFormat::Epoch => {
            "an integer epoch timestamp in the column's unit".to_string()
        }
        ColumnType::Timestamp => "an RFC 3339 timestamp string".to_string(),
        other => format!("a value of type {other}"),
    })
}

fn check_http_url(url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    match rest {
        None => Err(format!("{url:?}, which is not an http:// or https:// URL")),
        Some(rest) if rest.split('/').next().is_none_or(str::is_empty) => Err(format!("{url:?}, without a host")),
        Some(_) => Ok(()),
    }
}

impl PipelineConfig {
    /// Reads `source.avro_schema_file` (relative to the pipeline file at
    /// `path`) into `source.avro_schema`.
    pub(crate) fn inline_schema_file(&mut self, path: &Path) -> Problems {
        let mut p = Problems::default();
        let Some(file) = self.source.avro_schema_file.take() else { return p };
        if self.source.avro_schema.is_some() {
            p.push(
                "source.avro_schema_file",
                "both `avro_schema` and `avro_schema_file`",
                "one of them: the schema inline or in a file",
            );
            return p;
        }
        let resolved = path.parent().unwrap_or(Path::new(".")).join(&file);
        match std::fs::read_to_string(&resolved) {
            Ok(text) => self.source.avro_schema = Some(text),
            Err(e) => p.push(
                "source.avro_schema_file",
                format!(
                    "{:?}, which cannot be read ({e}; resolved to {})",
                    file.display().to_string(),
                    resolved.display()
                ),
                "an Avro schema file, relative to this pipeline file",
            ),
        }
        p
    }
}

fn check_deep_store_uri(uri: &str) -> Result<(), String> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(format!("{uri:?}, which has no scheme"));
    };
    let scheme = scheme.to_ascii_lowercase();
    if !DEEP_STORE_SCHEMES.contains(&scheme.as_str()) {
        return Err(format!("{uri:?}, with the unsupported scheme `{scheme}`"));
    }
    if scheme == "file" && !rest.starts_with('/') {
        return Err(format!("{uri:?}, a file URI without an absolute path (write `file:///absolute/path`)"));
    }
    if scheme != "file" && rest.split('/').next().is_none_or(str::is_empty) {
        return Err(format!("{uri:?}, without a bucket or container (write `{scheme}://bucket/prefix`)"));
    }
    Ok(())
}

pub(crate) fn is_valid_table_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.contains("__")
}

fn is_valid_column_name(name: &str) -> bool {
    !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}
