//! Avro schemas, the writer schemas of `source.format = "avro"`: parsed from
//! their JSON form (inline, from a file, or fetched from a schema registry)
//! into an arena of nodes. Named types are resolved to indexes, so a
//! recursive schema (a linked list, a tree) is a cycle of indexes, never
//! unbounded nesting; and the JSON itself is parsed by `serde_json`, whose
//! recursion limit bounds a hostile schema's depth.
//!
//! Also here: which column types an Avro type converts to
//! ([`AvroSchema::accepts`]), so that a pipeline with an inline schema is
//! checked when it is validated, naming the column. The decoder converts by
//! the same rules (a test in `sluice-decode` holds the two together).

use std::collections::HashMap;

use serde_json::Value;

use crate::schema::{Column, ColumnType, TimestampFormat};

/// An index into [`AvroSchema`]'s nodes.
pub type NodeId = usize;

/// A parsed Avro schema; the root is the node the schema's JSON names.
#[derive(Debug, Clone, PartialEq)]
pub struct AvroSchema {
    nodes: Vec<AvroNode>,
    root: NodeId,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AvroNode {
    Null,
    Boolean,
    Int(Option<Logical>),
    Long(Option<Logical>),
    Float,
    Double,
    Bytes(Option<Decimal>),
    String,
    Record { name: String, fields: Vec<AvroField> },
    Enum { name: String, symbols: Vec<String> },
    Array(NodeId),
    Map(NodeId),
    Union(Vec<NodeId>),
    Fixed { name: String, size: usize, decimal: Option<Decimal> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvroField {
    pub name: String,
    pub node: NodeId,
}

/// The logical types of `int` and `long` that place a value in time. The
/// `local-timestamp-*` types are read as UTC (sluice stores UTC instants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logical {
    /// Days since 1970-01-01 (`int`).
    Date,
    TimestampMillis,
    TimestampMicros,
    TimestampNanos,
}

/// `decimal` on `bytes` or `fixed`: a two's-complement big-endian unscaled
/// integer, to be divided by 10^scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal {
    pub precision: u32,
    pub scale: u32,
}

/// Why text is not an Avro schema: where in its JSON, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AvroSchemaError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("at {at}: {why}")]
    Invalid { at: String, why: String },
}

/// Where a column's path leads in a schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathTarget {
    /// The values the path can end at (each branch of a union, nulls left
    /// out): never empty.
    Found(Vec<NodeId>),
    /// No record along the path has the field: the column is always absent.
    Missing,
}

impl AvroSchema {
    pub fn parse(text: &str) -> Result<Self, AvroSchemaError> {
        let value: Value = serde_json::from_str(text).map_err(|e| AvroSchemaError::Json(e.to_string()))?;
        let mut parser = Parser { nodes: Vec::new(), names: HashMap::new() };
        let root = parser.parse(&value, None, "the schema")?;
        Ok(Self { nodes: parser.nodes, root })
    }

    pub fn root(&self) -> NodeId {
        self.root
    }

    pub fn node(&self, id: NodeId) -> &AvroNode {
        &self.nodes[id]
    }

    /// The node a union branch or a plain node stands for, unions expanded
    /// (Avro forbids a union directly inside a union).
    pub fn branches(&self, id: NodeId) -> Vec<NodeId> {
        match &self.nodes[id] {
            AvroNode::Union(branches) => branches.clone(),
            _ => vec![id],
        }
    }

    /// Follows a column's field path from the root through records (and
    /// the record branches of unions).
    pub fn target(&self, path: &[&str]) -> PathTarget {
        let mut at = vec![self.root];
        for name in path {
            let mut next = Vec::new();
            for id in at.iter().flat_map(|&id| self.branches(id)) {
                if let AvroNode::Record { fields, .. } = &self.nodes[id]
                    && let Some(field) = fields.iter().find(|f| f.name == *name)
                {
                    next.push(field.node);
                }
            }
            if next.is_empty() {
                return PathTarget::Missing;
            }
            at = next;
        }
        let found: Vec<NodeId> =
            at.iter().flat_map(|&id| self.branches(id)).filter(|&id| self.nodes[id] != AvroNode::Null).collect();
        if found.is_empty() { PathTarget::Missing } else { PathTarget::Found(found) }
    }

    /// Whether values of node `id` convert to `column`'s type. The decoder
    /// converts by exactly these rules.
    pub fn accepts(&self, column: &Column, id: NodeId) -> bool {
        accepts(column.data_type, column.timestamp_format(), &self.nodes[id])
    }

    /// A short name of node `id`'s type, for messages.
    pub fn describe(&self, id: NodeId) -> String {
        describe(&self.nodes[id])
    }
}

/// Whether an Avro value of `node`'s type converts to a column of type `ty`.
pub fn accepts(ty: ColumnType, format: TimestampFormat, node: &AvroNode) -> bool {
    use AvroNode as N;
    match (ty, node) {
        (_, N::Null) => true,
        (ColumnType::String, N::String | N::Enum { .. }) => true,
        (ColumnType::String, N::Bytes(Some(_)) | N::Fixed { decimal: Some(_), .. }) => true,
        (ColumnType::Bool, N::Boolean) => true,
        (ColumnType::Int32 | ColumnType::Int64, N::Int(_) | N::Long(_)) => true,
        (ColumnType::Float32 | ColumnType::Float64, N::Int(_) | N::Long(_) | N::Float | N::Double) => true,
        (ColumnType::Float32 | ColumnType::Float64, N::Bytes(Some(_)) | N::Fixed { decimal: Some(_), .. }) => true,
        (ColumnType::Timestamp, N::Int(Some(_)) | N::Long(Some(_))) => true,
        (ColumnType::Timestamp, N::Int(None) | N::Long(None)) => format == TimestampFormat::Epoch,
        (ColumnType::Timestamp, N::String) => format == TimestampFormat::Rfc3339,
        _ => false,
    }
}

pub fn describe(node: &AvroNode) -> String {
    let decimal = |d: &Option<Decimal>| d.map(|d| format!(" (decimal({}, {}))", d.precision, d.scale));
    match node {
        AvroNode::Null => "null".into(),
        AvroNode::Boolean => "boolean".into(),
        AvroNode::Int(None) => "int".into(),
        AvroNode::Long(None) => "long".into(),
        AvroNode::Int(Some(l)) | AvroNode::Long(Some(l)) => format!("{l:?}"),
        AvroNode::Float => "float".into(),
        AvroNode::Double => "double".into(),
        AvroNode::Bytes(d) => format!("bytes{}", decimal(d).unwrap_or_default()),
        AvroNode::String => "string".into(),
        AvroNode::Record { name, .. } => format!("record {name}"),
        AvroNode::Enum { name, .. } => format!("enum {name}"),
        AvroNode::Array(_) => "array".into(),
        AvroNode::Map(_) => "map".into(),
        AvroNode::Union(_) => "union".into(),
        AvroNode::Fixed { name, size, decimal: d } => format!("fixed {name}[{size}]{}", decimal(d).unwrap_or_default()),
    }
}

struct Parser {
    nodes: Vec<AvroNode>,
    /// Full names of the named types defined so far.
    names: HashMap<String, NodeId>,
}

impl Parser {
    fn push(&mut self, node: AvroNode) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn parse(&mut self, value: &Value, namespace: Option<&str>, at: &str) -> Result<NodeId, AvroSchemaError> {
        match value {
            Value::String(name) => match primitive(name) {
                Some(node) => Ok(self.push(node)),
                None => self.reference(name, namespace, at),
            },
            Value::Array(branches) => {
                if branches.is_empty() {
                    return Err(invalid(at, "a union without branches"));
                }
                let mut ids = Vec::with_capacity(branches.len());
                for (i, branch) in branches.iter().enumerate() {
                    let id = self.parse(branch, namespace, &format!("{at}[{i}]"))?;
                    if matches!(self.nodes[id], AvroNode::Union(_)) {
                        return Err(invalid(at, "a union directly inside a union"));
                    }
                    ids.push(id);
                }
                Ok(self.push(AvroNode::Union(ids)))
            }
            Value::Object(object) => self.complex(object, namespace, at),
            other => Err(invalid(at, format!("{other}, which is not a type (a name, an object or a union)"))),
        }
    }

    fn reference(&self, name: &str, namespace: Option<&str>, at: &str) -> Result<NodeId, AvroSchemaError> {
        let qualified = match namespace {
            Some(ns) if !name.contains('.') && !ns.is_empty() => Some(format!("{ns}.{name}")),
            _ => None,
        };
        qualified
            .and_then(|q| self.names.get(&q))
            .or_else(|| self.names.get(name))
            .copied()
            .ok_or_else(|| invalid(at, format!("the type {name:?}, which is neither primitive nor defined before")))
    }

    fn complex(
        &mut self,
        object: &serde_json::Map<String, Value>,
        namespace: Option<&str>,
        at: &str,
    ) -> Result<NodeId, AvroSchemaError> {
        let ty = object.get("type").ok_or_else(|| invalid(at, "an object without `type`"))?;
        let Value::String(ty) = ty else {
            // `{"type": {...}}` or `{"type": [...]}`: the inner schema.
            return self.parse(ty, namespace, &format!("{at}.type"));
        };
        let logical = object.get("logicalType").and_then(Value::as_str);
        Ok(match ty.as_str() {
            "int" => {
                let logical = (logical == Some("date")).then_some(Logical::Date);
                self.push(AvroNode::Int(logical))
            }
            "long" => {
                let logical = match logical {
                    Some("timestamp-millis" | "local-timestamp-millis") => Some(Logical::TimestampMillis),
                    Some("timestamp-micros" | "local-timestamp-micros") => Some(Logical::TimestampMicros),
                    Some("timestamp-nanos" | "local-timestamp-nanos") => Some(Logical::TimestampNanos),
                    _ => None,
                };
                self.push(AvroNode::Long(logical))
            }
            "bytes" => {
                let decimal = decimal(object, logical, None);
                self.push(AvroNode::Bytes(decimal))
            }
            "record" | "error" => self.record(object, namespace, at)?,
            "enum" => {
                let (name, _) = self.name(object, namespace, at)?;
                let symbols = object
                    .get("symbols")
                    .and_then(Value::as_array)
                    .and_then(|s| s.iter().map(|v| v.as_str().map(str::to_string)).collect::<Option<Vec<_>>>())
                    .ok_or_else(|| invalid(at, "an enum without a `symbols` list of strings"))?;
                let id = self.push(AvroNode::Enum { name: name.clone(), symbols });
                self.define(name, id, at)?;
                id
            }
            "array" => {
                let items = object.get("items").ok_or_else(|| invalid(at, "an array without `items`"))?;
                let items = self.parse(items, namespace, &format!("{at}.items"))?;
                self.push(AvroNode::Array(items))
            }
            "map" => {
                let values = object.get("values").ok_or_else(|| invalid(at, "a map without `values`"))?;
                let values = self.parse(values, namespace, &format!("{at}.values"))?;
                self.push(AvroNode::Map(values))
            }
            "fixed" => {
                let (name, _) = self.name(object, namespace, at)?;
                let size = object
                    .get("size")
                    .and_then(Value::as_u64)
                    .and_then(|s| usize::try_from(s).ok())
                    .ok_or_else(|| invalid(at, "a fixed without a non-negative `size`"))?;
                let decimal = decimal(object, logical, Some(size));
                let id = self.push(AvroNode::Fixed { name: name.clone(), size, decimal });
                self.define(name, id, at)?;
                id
            }
            other => match primitive(other) {
                Some(node) => self.push(node),
                None => self.reference(other, namespace, at)?,
            },
        })
    }

    fn record(
        &mut self,
        object: &serde_json::Map<String, Value>,
        namespace: Option<&str>,
        at: &str,
    ) -> Result<NodeId, AvroSchemaError> {
        let (name, inner) = self.name(object, namespace, at)?;
        // Defined before its fields are read: a field may refer to it.
        let id = self.push(AvroNode::Record { name: name.clone(), fields: Vec::new() });
        self.define(name.clone(), id, at)?;
        let list = object
            .get("fields")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid(at, format!("the record {name} without a `fields` list")))?;
        let mut fields: Vec<AvroField> = Vec::with_capacity(list.len());
        for (i, field) in list.iter().enumerate() {
            let at = format!("{at}.fields[{i}]");
            let field_name = field
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(&at, "a field without a `name`"))?
                .to_string();
            if fields.iter().any(|f| f.name == field_name) {
                return Err(invalid(&at, format!("the field {field_name:?} twice in {name}")));
            }
            let ty =
                field.get("type").ok_or_else(|| invalid(&at, format!("the field {field_name:?} without `type`")))?;
            let node = self.parse(ty, inner.as_deref(), &format!("{at}.type"))?;
            fields.push(AvroField { name: field_name, node });
        }
        self.nodes[id] = AvroNode::Record { name, fields };
        Ok(id)
    }

    /// A named type's full name, and the namespace its members inherit.
    fn name(
        &self,
        object: &serde_json::Map<String, Value>,
        namespace: Option<&str>,
        at: &str,
    ) -> Result<(String, Option<String>), AvroSchemaError> {
        let name = object
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid(at, "a named type without a `name`"))?;
        if let Some((ns, _)) = name.rsplit_once('.') {
            return Ok((name.to_string(), Some(ns.to_string())));
        }
        let ns = object.get("namespace").and_then(Value::as_str).or(namespace).filter(|ns| !ns.is_empty());
        Ok(match ns {
            Some(ns) => (format!("{ns}.{name}"), Some(ns.to_string())),
            None => (name.to_string(), None),
        })
    }

    fn define(&mut self, name: String, id: NodeId, at: &str) -> Result<(), AvroSchemaError> {
        if self.names.insert(name.clone(), id).is_some() {
            return Err(invalid(at, format!("the type {name:?} defined twice")));
        }
        Ok(())
    }
}

fn primitive(name: &str) -> Option<AvroNode> {
    Some(match name {
        "null" => AvroNode::Null,
        "boolean" => AvroNode::Boolean,
        "int" => AvroNode::Int(None),
        "long" => AvroNode::Long(None),
        "float" => AvroNode::Float,
        "double" => AvroNode::Double,
        "bytes" => AvroNode::Bytes(None),
        "string" => AvroNode::String,
        _ => return None,
    })
}

/// A valid `decimal` annotation, or None: the specification has an invalid
/// logical type read as its underlying type. Unscaled values of more than
/// 16 bytes (beyond 38 digits) are not supported: such a schema is read as
/// plain bytes.
fn decimal(object: &serde_json::Map<String, Value>, logical: Option<&str>, size: Option<usize>) -> Option<Decimal> {
    if logical != Some("decimal") {
        return None;
    }
    let precision = u32::try_from(object.get("precision")?.as_u64()?).ok()?;
    let scale = match object.get("scale") {
        None => 0,
        Some(scale) => u32::try_from(scale.as_u64()?).ok()?,
    };
    let fits =
        size.is_none_or(|s| (1..=16).contains(&s) && f64::from(precision) <= ((8 * s - 1) as f64) * 2f64.log10());
    ((1..=38).contains(&precision) && scale <= precision && fits).then_some(Decimal { precision, scale })
}

fn invalid(at: &str, why: impl Into<String>) -> AvroSchemaError {
    AvroSchemaError::Invalid { at: at.to_string(), why: why.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLICK: &str = r#"{
      "type": "record", "name": "Click", "namespace": "shop",
      "fields": [
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "user", "type": {"type": "record", "name": "User", "fields": [
          {"name": "id", "type": "string"},
          {"name": "geo", "type": ["null", {"type": "record", "name": "Geo", "fields": [
            {"name": "country", "type": "string"}]}], "default": null}]}},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
        {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["view", "buy"]}},
        {"name": "next", "type": ["null", "Click"]},
        {"name": "again", "type": "shop.User"}
      ]}"#;

    #[test]
    fn named_types_resolve_in_their_namespace_and_recursion_is_a_cycle() {
        let schema = AvroSchema::parse(CLICK).unwrap();
        let AvroNode::Record { name, fields } = schema.node(schema.root()) else { panic!() };
        assert_eq!(name, "shop.Click");
        assert_eq!(schema.branches(fields[4].node)[1], schema.root(), "`Click` refers to itself");
        assert!(matches!(schema.node(fields[5].node), AvroNode::Record { name, .. } if name == "shop.User"));
        assert_eq!(schema.target(&["ts"]), PathTarget::Found(vec![fields[0].node]));
        let PathTarget::Found(country) = schema.target(&["user", "geo", "country"]) else { panic!() };
        assert_eq!(schema.node(country[0]), &AvroNode::String);
        let PathTarget::Found(deep) = schema.target(&["next", "next", "user", "id"]) else { panic!() };
        assert_eq!(schema.node(deep[0]), &AvroNode::String);
        assert_eq!(schema.target(&["user", "nope"]), PathTarget::Missing);
        assert_eq!(schema.target(&["ts", "below"]), PathTarget::Missing);
        assert!(matches!(schema.node(fields[2].node), AvroNode::Bytes(Some(Decimal { precision: 10, scale: 2 }))));
    }

    #[test]
    fn what_is_not_a_schema_says_where() {
        for (text, at) in [
            ("{", "not JSON"),
            (r#"{"type": "record", "name": "R"}"#, "the record R without a `fields` list"),
            (r#"{"type": "record", "name": "R", "fields": [{"name": "a", "type": "Nope"}]}"#, "fields[0].type"),
            (
                r#"{"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}, {"name": "a", "type": "int"}]}"#,
                "twice",
            ),
            (r#"[["int"]]"#, "a union directly inside a union"),
            (r#"[]"#, "without branches"),
            (r#"{"type": "fixed", "name": "F"}"#, "size"),
            ("17", "not a type"),
        ] {
            let error = AvroSchema::parse(text).unwrap_err().to_string();
            assert!(error.contains(at), "{text}: {error}");
        }
    }

    #[test]
    fn invalid_logical_types_are_their_underlying_type() {
        let bad =
            AvroSchema::parse(r#"{"type": "bytes", "logicalType": "decimal", "precision": 2, "scale": 3}"#).unwrap();
        assert_eq!(bad.node(bad.root()), &AvroNode::Bytes(None));
        let wide =
            AvroSchema::parse(r#"{"type": "fixed", "name": "W", "size": 2, "logicalType": "decimal", "precision": 9}"#)
                .unwrap();
        assert!(matches!(wide.node(wide.root()), AvroNode::Fixed { decimal: None, .. }), "9 digits need 4 bytes");
        let odd = AvroSchema::parse(r#"{"type": "int", "logicalType": "timestamp-millis"}"#).unwrap();
        assert_eq!(odd.node(odd.root()), &AvroNode::Int(None));
    }

    #[test]
    fn hostile_nesting_is_refused_not_recursed() {
        let deep = format!("{}\"int\"{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(AvroSchema::parse(&deep).is_err());
        let objects = format!("{}\"int\"{}", "{\"type\": ".repeat(100_000), "}".repeat(100_000));
        assert!(AvroSchema::parse(&objects).is_err());
    }
}
