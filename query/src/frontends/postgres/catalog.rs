//! The slice of Postgres' system catalog that clients read on connect and
//! in their schema browsers (psql's `\dt`, Grafana's table and column
//! pickers, JDBC's `DatabaseMetaData`): a `pg_catalog` schema whose tables
//! are built, when a query reads them, from the tables this node serves,
//! and the functions such queries call (`version()`, `current_schema()`,
//! `pg_table_is_visible(oid)`, `format_type(oid, typmod)`, ...).
//!
//! Everything here is read-only and describes the served tables as
//! Postgres would a database of plain tables in schema `public`: no
//! indexes, constraints, views, comments or privileges to speak of (the
//! tables that hold those are present and empty, so the queries that join
//! them answer). A relation's oid is a hash of its name, the same on every
//! node and every query, so a client may carry it from one query to the
//! next.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{MemTable, SchemaProvider, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use datafusion::prelude::SessionContext;
use pgwire::api::Type;

use crate::scan::table::Tables;

/// The database name clients see.
pub(crate) const DATABASE: &str = "sluice";
/// The role every object belongs to.
const OWNER: &str = "sluice";
const OWNER_OID: i64 = 10;
const PG_CATALOG_OID: i64 = 11;
const PUBLIC_OID: i64 = 2200;
const INFORMATION_SCHEMA_OID: i64 = 13_000;
/// Postgres' version as `version()` and `server_version` report it.
pub(crate) const SERVER_VERSION: &str = "16.6";

/// Registers the `pg_catalog` schema (over `tables`) and the functions.
pub(crate) fn register(ctx: &SessionContext, tables: Tables) {
    if let Some(catalog) = ctx.catalog(DATABASE) {
        let _ = catalog.register_schema("pg_catalog", Arc::new(PgCatalog { tables }));
    }
    for udf in functions() {
        ctx.register_udf(udf);
    }
}

/// The oid of relation `name` (a served table or a catalog table): FNV-1a
/// of the name, above Postgres' first user oid.
pub(crate) fn relation_oid(name: &str) -> i64 {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    16_384 + (hash % 1_000_000_000) as i64
}

/// Whether `name` is one of the catalog tables here.
pub(crate) fn is_catalog_table(name: &str) -> bool {
    TABLES.iter().any(|(n, _)| *n == name)
}

/// The catalog tables that never have a row here: no descriptions,
/// enums, indexes, constraints, inheritance, defaults, collations,
/// functions or views.
const EMPTY: [&str; 10] = [
    "pg_description",
    "pg_enum",
    "pg_index",
    "pg_constraint",
    "pg_inherits",
    "pg_attrdef",
    "pg_collation",
    "pg_proc",
    "pg_views",
    "pg_matviews",
];

/// Whether catalog table `name` never has a row here.
pub(crate) fn is_empty_catalog_table(name: &str) -> bool {
    EMPTY.contains(&name)
}

#[derive(Debug)]
struct PgCatalog {
    tables: Tables,
}

/// A catalog table's column kinds.
#[derive(Clone, Copy)]
enum Kind {
    /// oids and other 64-bit integers.
    Oid,
    Int,
    Text,
    Bool,
    Float,
}

/// A value of a catalog row.
#[derive(Clone)]
enum V {
    I(i64),
    T(String),
    B(bool),
    F(f64),
    Null,
}

fn t(text: &str) -> V {
    V::T(text.to_string())
}

/// The catalog tables: name, columns. Rows come from [`PgCatalog::rows`].
const TABLES: &[(&str, &[(&str, Kind)])] = {
    use Kind::*;
    &[
        ("pg_namespace", &[("oid", Oid), ("nspname", Text), ("nspowner", Oid), ("nspacl", Text)]),
        (
            "pg_class",
            &[
                ("oid", Oid),
                ("relname", Text),
                ("relnamespace", Oid),
                ("reltype", Oid),
                ("reloftype", Oid),
                ("relowner", Oid),
                ("relam", Oid),
                ("relfilenode", Oid),
                ("reltablespace", Oid),
                ("relpages", Int),
                ("reltuples", Float),
                ("relallvisible", Int),
                ("reltoastrelid", Oid),
                ("relhasindex", Bool),
                ("relisshared", Bool),
                ("relpersistence", Text),
                ("relkind", Text),
                ("relnatts", Int),
                ("relchecks", Int),
                ("relhasrules", Bool),
                ("relhastriggers", Bool),
                ("relhassubclass", Bool),
                ("relrowsecurity", Bool),
                ("relforcerowsecurity", Bool),
                ("relispopulated", Bool),
                ("relreplident", Text),
                ("relispartition", Bool),
                ("relacl", Text),
                ("reloptions", Text),
                ("relpartbound", Text),
            ],
        ),
        (
            "pg_attribute",
            &[
                ("attrelid", Oid),
                ("attname", Text),
                ("atttypid", Oid),
                ("attlen", Int),
                ("attnum", Int),
                ("attndims", Int),
                ("atttypmod", Int),
                ("attnotnull", Bool),
                ("atthasdef", Bool),
                ("atthasmissing", Bool),
                ("attidentity", Text),
                ("attgenerated", Text),
                ("attisdropped", Bool),
                ("attislocal", Bool),
                ("attinhcount", Int),
                ("attcollation", Oid),
                ("attstattarget", Int),
                ("attacl", Text),
                ("attoptions", Text),
                ("attstorage", Text),
                ("attcompression", Text),
                ("attfdwoptions", Text),
            ],
        ),
        (
            "pg_type",
            &[
                ("oid", Oid),
                ("typname", Text),
                ("typnamespace", Oid),
                ("typowner", Oid),
                ("typlen", Int),
                ("typbyval", Bool),
                ("typtype", Text),
                ("typcategory", Text),
                ("typispreferred", Bool),
                ("typisdefined", Bool),
                ("typdelim", Text),
                ("typrelid", Oid),
                ("typelem", Oid),
                ("typarray", Oid),
                ("typinput", Text),
                ("typoutput", Text),
                ("typnotnull", Bool),
                ("typbasetype", Oid),
                ("typtypmod", Int),
                ("typndims", Int),
                ("typcollation", Oid),
                ("typdefault", Text),
            ],
        ),
        ("pg_am", &[("oid", Oid), ("amname", Text), ("amtype", Text)]),
        (
            "pg_database",
            &[
                ("oid", Oid),
                ("datname", Text),
                ("datdba", Oid),
                ("encoding", Int),
                ("datcollate", Text),
                ("datctype", Text),
                ("datistemplate", Bool),
                ("datallowconn", Bool),
                ("datconnlimit", Int),
                ("dattablespace", Oid),
                ("datacl", Text),
                ("datlocprovider", Text),
                ("daticulocale", Text),
            ],
        ),
        (
            "pg_roles",
            &[
                ("oid", Oid),
                ("rolname", Text),
                ("rolsuper", Bool),
                ("rolinherit", Bool),
                ("rolcreaterole", Bool),
                ("rolcreatedb", Bool),
                ("rolcanlogin", Bool),
                ("rolconnlimit", Int),
            ],
        ),
        ("pg_user", &[("usename", Text), ("usesysid", Oid), ("usecreatedb", Bool), ("usesuper", Bool)]),
        (
            "pg_settings",
            &[
                ("name", Text),
                ("setting", Text),
                ("unit", Text),
                ("category", Text),
                ("short_desc", Text),
                ("vartype", Text),
            ],
        ),
        (
            "pg_tables",
            &[
                ("schemaname", Text),
                ("tablename", Text),
                ("tableowner", Text),
                ("tablespace", Text),
                ("hasindexes", Bool),
                ("hasrules", Bool),
                ("hastriggers", Bool),
                ("rowsecurity", Bool),
            ],
        ),
        ("pg_views", &[("schemaname", Text), ("viewname", Text), ("viewowner", Text), ("definition", Text)]),
        ("pg_matviews", &[("schemaname", Text), ("matviewname", Text), ("matviewowner", Text), ("definition", Text)]),
        ("pg_stat_user_tables", &[("relid", Oid), ("schemaname", Text), ("relname", Text), ("n_live_tup", Oid)]),
        // `information_schema.columns` as Postgres has it (types by their
        // SQL names): the wire protocol reads it instead of DataFusion's,
        // whose `data_type` is Arrow's (`Int32`, `Utf8View`).
        (
            "pg_columns",
            &[
                ("table_catalog", Text),
                ("table_schema", Text),
                ("table_name", Text),
                ("column_name", Text),
                ("ordinal_position", Int),
                ("column_default", Text),
                ("is_nullable", Text),
                ("data_type", Text),
                ("udt_name", Text),
                ("character_maximum_length", Int),
                ("numeric_precision", Int),
                ("numeric_scale", Int),
            ],
        ),
        ("pg_description", &[("objoid", Oid), ("classoid", Oid), ("objsubid", Int), ("description", Text)]),
        ("pg_enum", &[("oid", Oid), ("enumtypid", Oid), ("enumsortorder", Float), ("enumlabel", Text)]),
        (
            "pg_index",
            &[
                ("indexrelid", Oid),
                ("indrelid", Oid),
                ("indnatts", Int),
                ("indisunique", Bool),
                ("indisprimary", Bool),
                ("indisclustered", Bool),
                ("indisvalid", Bool),
                ("indkey", Text),
            ],
        ),
        (
            "pg_constraint",
            &[
                ("oid", Oid),
                ("conname", Text),
                ("connamespace", Oid),
                ("contype", Text),
                ("conrelid", Oid),
                ("confrelid", Oid),
                ("conkey", Text),
                ("confkey", Text),
            ],
        ),
        ("pg_inherits", &[("inhrelid", Oid), ("inhparent", Oid), ("inhseqno", Int)]),
        ("pg_attrdef", &[("oid", Oid), ("adrelid", Oid), ("adnum", Int), ("adbin", Text)]),
        ("pg_collation", &[("oid", Oid), ("collname", Text), ("collnamespace", Oid)]),
        ("pg_proc", &[("oid", Oid), ("proname", Text), ("pronamespace", Oid), ("prorettype", Oid)]),
    ]
};

/// Postgres' built-in types a served column can have: oid, name, length,
/// category, array type.
const TYPES: &[(i64, &str, i64, &str, i64)] = &[
    (16, "bool", 1, "B", 1000),
    (18, "char", 1, "S", 1002),
    (19, "name", 64, "S", 1003),
    (20, "int8", 8, "N", 1016),
    (21, "int2", 2, "N", 1005),
    (23, "int4", 4, "N", 1007),
    (25, "text", -1, "S", 1009),
    (26, "oid", 4, "N", 1028),
    (700, "float4", 4, "N", 1021),
    (701, "float8", 8, "N", 1022),
    (1043, "varchar", -1, "S", 1015),
    (1082, "date", 4, "D", 1182),
    (1114, "timestamp", 8, "D", 1115),
    (1184, "timestamptz", 8, "D", 1185),
    (1700, "numeric", -1, "N", 1231),
];

/// The SQL name of type `oid` (`format_type`), `???` for others.
fn type_name(oid: i64) -> &'static str {
    match oid {
        16 => "boolean",
        20 => "bigint",
        21 => "smallint",
        23 => "integer",
        25 => "text",
        700 => "real",
        701 => "double precision",
        1043 => "character varying",
        1082 => "date",
        1114 => "timestamp without time zone",
        1184 => "timestamp with time zone",
        1700 => "numeric",
        _ => TYPES.iter().find(|(o, ..)| *o == oid).map_or("???", |(_, name, ..)| name),
    }
}

/// Every column of the served tables: its table, its position (from 1, as
/// Postgres counts), its field and its Postgres type.
fn served_columns(served: &[(String, SchemaRef)]) -> impl Iterator<Item = (&str, i64, &Field, Type)> {
    served.iter().flat_map(|(table, schema)| {
        schema
            .fields()
            .iter()
            .enumerate()
            .map(move |(i, field)| (table.as_str(), i as i64 + 1, field.as_ref(), super::pg_type(field.data_type())))
    })
}

impl PgCatalog {
    /// The served tables' names and schemas, by name.
    fn served(&self) -> Vec<(String, SchemaRef)> {
        let tables = self.tables.read().unwrap_or_else(|e| e.into_inner());
        tables.iter().map(|(name, table)| (name.clone(), table.schema())).collect()
    }

    fn rows(&self, table: &str) -> Vec<Vec<V>> {
        let served = self.served();
        let catalog_tables = TABLES.iter().map(|(name, _)| *name);
        match table {
            "pg_namespace" => {
                [(PG_CATALOG_OID, "pg_catalog"), (PUBLIC_OID, "public"), (INFORMATION_SCHEMA_OID, "information_schema")]
                    .iter()
                    .map(|(oid, name)| vec![V::I(*oid), t(name), V::I(OWNER_OID), V::Null])
                    .collect()
            }
            "pg_class" => served
                .iter()
                .map(|(name, schema)| (name.as_str(), PUBLIC_OID, schema.fields().len()))
                .chain(catalog_tables.map(|name| (name, PG_CATALOG_OID, 0)))
                .map(|(name, namespace, columns)| {
                    let oid = relation_oid(name);
                    let mut row = vec![V::I(oid), t(name), V::I(namespace), V::I(0), V::I(0), V::I(OWNER_OID)];
                    row.extend([V::I(2), V::I(oid), V::I(0), V::I(0), V::F(-1.0), V::I(0), V::I(0)]);
                    row.extend([V::B(false), V::B(false), t("p"), t("r"), V::I(columns as i64), V::I(0)]);
                    row.extend([V::B(false), V::B(false), V::B(false), V::B(false), V::B(false), V::B(true)]);
                    row.extend([t("d"), V::B(false), V::Null, V::Null, V::Null]);
                    row
                })
                .collect(),
            "pg_attribute" => served_columns(&served)
                .map(|(table, position, field, ty)| {
                    let len = TYPES.iter().find(|(o, ..)| *o == i64::from(ty.oid())).map_or(-1, |t| t.2);
                    vec![
                        V::I(relation_oid(table)),
                        t(field.name()),
                        V::I(i64::from(ty.oid())),
                        V::I(len),
                        V::I(position),
                        V::I(0),
                        V::I(-1),
                        V::B(!field.is_nullable()),
                        V::B(false),
                        V::B(false),
                        t(""),
                        t(""),
                        V::B(false),
                        V::B(true),
                        V::I(0),
                        V::I(0),
                        V::I(-1),
                        V::Null,
                        V::Null,
                        t(if len > 0 { "p" } else { "x" }),
                        t(""),
                        V::Null,
                    ]
                })
                .collect(),
            "pg_type" => TYPES
                .iter()
                .map(|(oid, name, len, category, array)| {
                    let mut row = vec![V::I(*oid), t(name), V::I(PG_CATALOG_OID), V::I(OWNER_OID), V::I(*len)];
                    row.extend([V::B(*len > 0), t("b"), t(category), V::B(false), V::B(true), t(",")]);
                    row.extend([V::I(0), V::I(0), V::I(*array), t(&format!("{name}in")), t(&format!("{name}out"))]);
                    row.extend([V::B(false), V::I(0), V::I(-1), V::I(0), V::I(0), V::Null]);
                    row
                })
                .collect(),
            "pg_am" => vec![vec![V::I(2), t("heap"), t("t")]],
            "pg_database" => vec![vec![
                V::I(relation_oid(DATABASE)),
                t(DATABASE),
                V::I(OWNER_OID),
                V::I(6),
                t("C"),
                t("C"),
                V::B(false),
                V::B(true),
                V::I(-1),
                V::I(1663),
                V::Null,
                t("c"),
                V::Null,
            ]],
            "pg_roles" => vec![vec![
                V::I(OWNER_OID),
                t(OWNER),
                V::B(false),
                V::B(true),
                V::B(false),
                V::B(false),
                V::B(true),
                V::I(-1),
            ]],
            "pg_user" => vec![vec![t(OWNER), V::I(OWNER_OID), V::B(false), V::B(false)]],
            "pg_settings" => SETTINGS
                .iter()
                .map(|(name, setting)| vec![t(name), t(setting), V::Null, t("sluice"), t(""), t("string")])
                .collect(),
            "pg_tables" => served
                .iter()
                .map(|(name, _)| {
                    let mut row = vec![t("public"), t(name), t(OWNER), V::Null];
                    row.extend([V::B(false), V::B(false), V::B(false), V::B(false)]);
                    row
                })
                .collect(),
            "pg_stat_user_tables" => {
                served.iter().map(|(name, _)| vec![V::I(relation_oid(name)), t("public"), t(name), V::Null]).collect()
            }
            "pg_columns" => served_columns(&served)
                .map(|(table, position, field, ty)| {
                    let mut row = vec![t(DATABASE), t("public"), t(table), t(field.name()), V::I(position)];
                    row.extend([V::Null, t(if field.is_nullable() { "YES" } else { "NO" })]);
                    row.extend([t(type_name(i64::from(ty.oid()))), t(ty.name()), V::Null, V::Null, V::Null]);
                    row
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    fn batch(&self, table: &str, columns: &[(&str, Kind)]) -> Result<RecordBatch> {
        let rows = self.rows(table);
        let fields: Vec<Field> = columns.iter().map(|(name, kind)| Field::new(*name, kind.data_type(), true)).collect();
        let arrays = columns
            .iter()
            .enumerate()
            .map(|(i, (_, kind))| {
                let values: Vec<ScalarValue> = rows.iter().map(|row| kind.scalar(row.get(i))).collect();
                if values.is_empty() {
                    return Ok(arrow::array::new_empty_array(&kind.data_type()));
                }
                ScalarValue::iter_to_array(values)
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(DataFusionError::from)
    }
}

impl Kind {
    fn data_type(self) -> DataType {
        match self {
            Kind::Oid => DataType::Int64,
            Kind::Int => DataType::Int32,
            Kind::Text => DataType::Utf8,
            Kind::Bool => DataType::Boolean,
            Kind::Float => DataType::Float64,
        }
    }

    /// A row's value as a column of this kind holds it (NULL when the row
    /// has none, or one of another kind).
    fn scalar(self, value: Option<&V>) -> ScalarValue {
        match (self, value) {
            (Kind::Oid, Some(V::I(v))) => ScalarValue::Int64(Some(*v)),
            (Kind::Int, Some(V::I(v))) => ScalarValue::Int32(i32::try_from(*v).ok()),
            (Kind::Text, Some(V::T(v))) => ScalarValue::Utf8(Some(v.clone())),
            (Kind::Bool, Some(V::B(v))) => ScalarValue::Boolean(Some(*v)),
            (Kind::Float, Some(V::F(v))) => ScalarValue::Float64(Some(*v)),
            (kind, _) => ScalarValue::try_from(&kind.data_type()).unwrap_or(ScalarValue::Null),
        }
    }
}

/// `pg_settings` and `current_setting()`: what clients ask about.
const SETTINGS: &[(&str, &str)] = &[
    ("search_path", "public"),
    ("server_version", SERVER_VERSION),
    ("server_version_num", "160006"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("standard_conforming_strings", "on"),
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, MDY"),
    ("max_identifier_length", "63"),
    ("max_index_keys", "32"),
    ("integer_datetimes", "on"),
    ("transaction_isolation", "read committed"),
    ("default_transaction_isolation", "read committed"),
    ("transaction_read_only", "on"),
    ("default_transaction_read_only", "on"),
];

pub(crate) fn setting(name: &str) -> Option<&'static str> {
    SETTINGS.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
}

#[async_trait]
impl SchemaProvider for PgCatalog {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|(name, _)| name.to_string()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some((_, columns)) = TABLES.iter().find(|(n, _)| *n == name) else { return Ok(None) };
        let batch = self.batch(name, columns)?;
        Ok(Some(Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        is_catalog_table(name)
    }
}

/// A catalog function: its name, arguments, result type and how a row's
/// result follows from its arguments.
#[derive(Debug, PartialEq, Eq, Hash)]
struct PgFunction {
    name: &'static str,
    signature: Signature,
    returns: DataType,
    kind: Eval,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Eval {
    /// The same value whatever the arguments.
    Constant(Constant),
    /// `format_type(oid, typmod)`.
    FormatType,
    /// `quote_ident(text)`.
    QuoteIdent,
    /// `current_setting(name)`.
    CurrentSetting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Constant {
    Text(&'static str),
    Bool(bool),
    NullText,
    NullInt,
    Version,
}

fn functions() -> Vec<ScalarUDF> {
    let any = || Signature::one_of(vec![TypeSignature::Nullary, TypeSignature::VariadicAny], Volatility::Stable);
    let constant = |name: &'static str, returns: DataType, value: Constant| PgFunction {
        name,
        signature: any(),
        returns,
        kind: Eval::Constant(value),
    };
    let text = |name: &'static str, value: &'static str| constant(name, DataType::Utf8, Constant::Text(value));
    let truth = |name: &'static str| constant(name, DataType::Boolean, Constant::Bool(true));
    let null = |name: &'static str| constant(name, DataType::Utf8, Constant::NullText);
    let per_row = |name: &'static str, kind: Eval| PgFunction { name, signature: any(), returns: DataType::Utf8, kind };
    [
        constant("version", DataType::Utf8, Constant::Version),
        text("current_schema", "public"),
        text("current_database", DATABASE),
        text("current_catalog", DATABASE),
        text("pg_get_userbyid", OWNER),
        text("pg_encoding_to_char", "UTF8"),
        truth("pg_table_is_visible"),
        truth("pg_type_is_visible"),
        truth("has_table_privilege"),
        truth("has_schema_privilege"),
        truth("has_any_column_privilege"),
        truth("has_database_privilege"),
        null("obj_description"),
        null("col_description"),
        null("shobj_description"),
        null("pg_get_expr"),
        null("pg_get_indexdef"),
        null("pg_get_constraintdef"),
        constant("pg_table_size", DataType::Int64, Constant::NullInt),
        constant("pg_total_relation_size", DataType::Int64, Constant::NullInt),
        null("pg_size_pretty"),
        per_row("format_type", Eval::FormatType),
        per_row("quote_ident", Eval::QuoteIdent),
        per_row("current_setting", Eval::CurrentSetting),
    ]
    .into_iter()
    .map(ScalarUDF::new_from_impl)
    .collect()
}

impl ScalarUDFImpl for PgFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(self.returns.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let value = match self.kind {
            Eval::Constant(Constant::Text(text)) => ScalarValue::Utf8(Some(text.to_string())),
            Eval::Constant(Constant::Bool(b)) => ScalarValue::Boolean(Some(b)),
            Eval::Constant(Constant::NullText) => ScalarValue::Utf8(None),
            Eval::Constant(Constant::NullInt) => ScalarValue::Int64(None),
            Eval::Constant(Constant::Version) => ScalarValue::Utf8(Some(format!(
                "PostgreSQL {SERVER_VERSION} (sluice {}, Apache DataFusion {}), read-only",
                env!("CARGO_PKG_VERSION"),
                datafusion::DATAFUSION_VERSION
            ))),
            Eval::FormatType | Eval::QuoteIdent | Eval::CurrentSetting => {
                let Some(first) = args.args.first() else {
                    return Err(DataFusionError::Plan(format!("{}() takes an argument", self.name)));
                };
                let input = first.to_array(args.number_rows)?;
                let text = arrow::compute::cast(&input, &DataType::Utf8)?;
                let text = text.as_any().downcast_ref::<StringArray>().expect("cast to Utf8");
                let out: StringArray = text
                    .iter()
                    .map(|v| {
                        v.and_then(|v| match self.kind {
                            Eval::FormatType => v.parse::<i64>().ok().map(|oid| type_name(oid).to_string()),
                            Eval::QuoteIdent => Some(quote_ident(v)),
                            _ => Some(setting(v).unwrap_or_default().to_string()),
                        })
                    })
                    .collect();
                return Ok(ColumnarValue::Array(Arc::new(out)));
            }
        };
        Ok(ColumnarValue::Scalar(value))
    }
}

/// `name` as an SQL identifier: bare when it is lower-case letters, digits
/// and `_` (not starting with a digit), else double-quoted.
fn quote_ident(name: &str) -> String {
    let bare = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if bare { name.to_string() } else { format!("\"{}\"", name.replace('"', "\"\"")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oids_are_stable_and_above_the_system_range() {
        assert_eq!(relation_oid("clicks"), relation_oid("clicks"));
        assert_ne!(relation_oid("clicks"), relation_oid("clicks2"));
        assert!(relation_oid("") >= 16_384);
        assert_eq!(quote_ident("clicks"), "clicks");
        assert_eq!(quote_ident("Clicks"), "\"Clicks\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(type_name(1184), "timestamp with time zone");
    }

    #[test]
    fn the_tables_said_to_be_empty_are_and_the_others_are_not() {
        let tables = Tables::default();
        let schema = Schema::new(vec![Field::new("ts", DataType::Int64, false)]);
        let segments = crate::scan::table::SegmentTable::new("clicks", &schema);
        tables.write().unwrap().insert("clicks".into(), Arc::new(segments));
        let catalog = PgCatalog { tables };
        for (name, _) in TABLES {
            assert_eq!(catalog.rows(name).is_empty(), is_empty_catalog_table(name), "{name}");
        }
    }

    #[test]
    fn every_catalog_table_builds_with_its_columns() {
        let catalog = PgCatalog { tables: Tables::default() };
        for (name, columns) in TABLES {
            let batch = catalog.batch(name, columns).unwrap();
            assert_eq!(batch.num_columns(), columns.len(), "{name}");
            for (i, row) in catalog.rows(name).iter().enumerate() {
                assert_eq!(row.len(), columns.len(), "{name} row {i}");
            }
        }
    }
}
