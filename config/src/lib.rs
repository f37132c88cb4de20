//! sluice's configuration files: pipelines (one Kafka topic into one table),
//! workers (`sluice ingest`) and query nodes (`sluice query`).
//!
//! Invariants:
//! - A config value handed out by this crate has passed [`PipelineConfig::validate`]
//!   (or the node equivalent): the loaders never return an unvalidated config,
//!   so later crates may rely on every cross-field rule (the time column exists
//!   and is a timestamp, at most one sorted column, index columns exist, flush
//!   thresholds are positive, ...).
//! - Unknown fields are errors everywhere (`deny_unknown_fields`): a misspelt
//!   option never silently falls back to its default.
//! - Every error names the file, the field path (`schema.columns[3].type`),
//!   what was found and what was expected; a file with several semantic
//!   mistakes reports all of them.
//! - `${VAR}` interpolation happens on parsed string values, never on raw text,
//!   so an environment value cannot change a file's structure.

pub mod avro;
mod error;
pub mod evolution;
pub mod interpolate;
pub mod node;
pub mod pipeline;
pub mod schema;
pub mod star_tree;
pub mod units;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use error::{ConfigError, Problem, Problems};
pub use evolution::schema_change_problems;
pub use interpolate::{Env, ProcessEnv};
pub use node::{
    CoordinatorConfig, CoordinatorEndpoint, FlightCompression, FlightToken, HttpAuth, HttpConfig, HttpUser,
    ObjectStoreConfig, PgWireConfig, PipelineSources, QueryLimits, QueryNodeConfig, TlsConfig, WorkerConfig,
    ZooKeeperAuthConfig, ZooKeeperTlsConfig,
};
pub use pipeline::{
    BadRecordPolicy, BadRecords, DeepStore, FlushThresholds, Indexes, KafkaSource, PipelineConfig, SourceFormat,
    StartPosition,
};
pub use schema::{Column, ColumnType, Literal, Schema, TimeUnit, TimestampFormat};
pub use star_tree::{MetricFunction, MetricSpec, StarTreeConfig};
pub use units::{ByteSize, HostPort};

/// The three kinds of config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    Pipeline,
    Worker,
    QueryNode,
}

/// A worker file together with the pipeline files it names, all validated.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedWorker {
    pub config: WorkerConfig,
    pub pipelines: Vec<(PathBuf, PipelineConfig)>,
}

/// Any validated config file.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyConfig {
    Pipeline(PipelineConfig),
    Worker(LoadedWorker),
    QueryNode(QueryNodeConfig),
}

/// Parses and validates a pipeline from TOML text. `path` names the source
/// in errors, and `source.avro_schema_file` is read relative to it.
pub fn parse_pipeline(text: &str, path: &Path, env: &dyn Env) -> Result<PipelineConfig, ConfigError> {
    let mut config: PipelineConfig = deserialize(parse_toml(text, path, env)?, path)?;
    let mut problems = config.inline_schema_file(path);
    problems.extend(config.validate());
    problems.into_result(path)?;
    Ok(config)
}

/// Parses and validates a worker file's own fields (not the pipeline files it names).
pub fn parse_worker(text: &str, path: &Path, env: &dyn Env) -> Result<WorkerConfig, ConfigError> {
    let config: WorkerConfig = deserialize(parse_toml(text, path, env)?, path)?;
    config.validate().into_result(path)?;
    Ok(config)
}

pub fn parse_query_node(text: &str, path: &Path, env: &dyn Env) -> Result<QueryNodeConfig, ConfigError> {
    let config: QueryNodeConfig = deserialize(parse_toml(text, path, env)?, path)?;
    config.validate().into_result(path)?;
    Ok(config)
}

pub fn load_pipeline(path: &Path) -> Result<PipelineConfig, ConfigError> {
    parse_pipeline(&read(path)?, path, &ProcessEnv)
}

pub fn load_query_node(path: &Path) -> Result<QueryNodeConfig, ConfigError> {
    parse_query_node(&read(path)?, path, &ProcessEnv)
}

/// Loads a worker file and every pipeline file it names (relative paths are
/// taken from the worker file's directory). Two pipelines may not fill the
/// same table.
pub fn load_worker(path: &Path) -> Result<LoadedWorker, ConfigError> {
    let config = parse_worker(&read(path)?, path, &ProcessEnv)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut pipelines: Vec<(PathBuf, PipelineConfig)> = Vec::new();
    let mut problems = Problems::default();
    for (i, file) in config.pipelines.files.iter().enumerate() {
        let resolved = base.join(file);
        if !resolved.is_file() {
            problems.push(
                format!("pipelines.files[{i}]"),
                format!("{:?}, which does not exist (resolved to {})", file.display().to_string(), resolved.display()),
                "the path of a pipeline file, relative to this worker file",
            );
            continue;
        }
        let pipeline = load_pipeline(&resolved)?;
        if let Some((other, _)) = pipelines.iter().find(|(_, p)| p.table == pipeline.table) {
            problems.push(
                format!("pipelines.files[{i}]"),
                format!("table {:?}, which {} also fills", pipeline.table, other.display()),
                "one pipeline per table",
            );
        }
        pipelines.push((resolved, pipeline));
    }
    problems.into_result(path)?;
    Ok(LoadedWorker { config, pipelines })
}

/// Loads any config file; the kind is taken from `kind` or, when `None`,
/// recognised from the file's top-level keys.
pub fn load_any(path: &Path, kind: Option<ConfigKind>) -> Result<AnyConfig, ConfigError> {
    let kind = match kind {
        Some(kind) => kind,
        None => {
            let text = read(path)?;
            let table: toml::Table = toml::from_str(&text).map_err(|e| syntax_error(&e, &text, path))?;
            detect_kind(&table).ok_or_else(|| ConfigError::UnknownKind { path: path.to_path_buf() })?
        }
    };
    Ok(match kind {
        ConfigKind::Pipeline => AnyConfig::Pipeline(load_pipeline(path)?),
        ConfigKind::Worker => AnyConfig::Worker(load_worker(path)?),
        ConfigKind::QueryNode => AnyConfig::QueryNode(load_query_node(path)?),
    })
}

/// Recognises a file's kind by keys only that kind has.
pub fn detect_kind(table: &toml::Table) -> Option<ConfigKind> {
    let has = |keys: &[&str]| keys.iter().any(|k| table.contains_key(*k));
    if has(&["table", "source", "schema"]) {
        Some(ConfigKind::Pipeline)
    } else if has(&["cache_dir", "limits"]) {
        Some(ConfigKind::QueryNode)
    } else if has(&["pipelines", "data_dir", "memory_budget", "node_id"]) {
        Some(ConfigKind::Worker)
    } else {
        None
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })
}

fn parse_toml(text: &str, path: &Path, env: &dyn Env) -> Result<toml::Value, ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| syntax_error(&e, text, path))?;
    let mut value = toml::Value::Table(table);
    let mut problems = Problems::default();
    interpolate::interpolate(&mut value, "", env, &mut problems);
    problems.into_result(path)?;
    Ok(value)
}

fn syntax_error(error: &toml::de::Error, text: &str, path: &Path) -> ConfigError {
    let offset = error.span().map(|span| span.start).unwrap_or(0).min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let message = error.message().trim().replace('\n', " ");
    ConfigError::Syntax { path: path.to_path_buf(), line, column, message }
}

/// Deserializes `value`, reporting every field that does not fit, not only
/// the first: serde stops at the first error, so the offending value is
/// removed and deserialization tried again (at most [`MAX_SERDE_PROBLEMS`]
/// times). A field reported missing only because its bad value was removed
/// is not reported twice.
fn deserialize<T: DeserializeOwned>(mut value: toml::Value, path: &Path) -> Result<T, ConfigError> {
    let mut problems: Vec<Problem> = Vec::new();
    let mut removed: Vec<String> = Vec::new();
    loop {
        let error = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(config) if problems.is_empty() => return Ok(config),
            Ok(_) => break,
            Err(error) => error,
        };
        let segments: Vec<serde_path_to_error::Segment> = error.path().iter().cloned().collect();
        let field = match error.path().to_string() {
            root if root == "." => String::new(),
            field => field,
        };
        let problem = serde_problem(field, error.inner().message().trim());
        let consequence = removed.contains(&problem.field);
        if !consequence {
            problems.push(problem.clone());
        }
        if consequence || problems.len() >= MAX_SERDE_PROBLEMS || !remove_at(&mut value, &segments) {
            break;
        }
        removed.push(problem.field);
    }
    Err(ConfigError::Invalid { path: path.to_path_buf(), problems })
}

const MAX_SERDE_PROBLEMS: usize = 50;

/// Removes the value at `path` (serde's path to an error) from `value`;
/// false when there is nothing there to remove.
fn remove_at(value: &mut toml::Value, path: &[serde_path_to_error::Segment]) -> bool {
    use serde_path_to_error::Segment;
    let Some((last, parents)) = path.split_last() else { return false };
    let mut at = value;
    for segment in parents {
        at = match (segment, at) {
            (Segment::Map { key }, toml::Value::Table(t)) => match t.get_mut(key) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Seq { index }, toml::Value::Array(a)) => match a.get_mut(*index) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, at) {
        (Segment::Map { key }, toml::Value::Table(t)) => t.remove(key).is_some(),
        (Segment::Seq { index }, toml::Value::Array(a)) if *index < a.len() => {
            a.remove(*index);
            true
        }
        _ => false,
    }
}

/// Serde's Rust type names (`i64`, `u32`) in words a config author reads.
fn plain_type(expected: &str) -> String {
    match expected {
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer".to_string(),
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer".to_string(),
        "f32" | "f64" => "a number".to_string(),
        "a boolean" | "bool" => "`true` or `false`".to_string(),
        other => other.to_string(),
    }
}

/// Turns serde's one-line messages into found/expected pairs.
fn serde_problem(field: String, message: &str) -> Problem {
    let name_in_backticks = |text: &str| text.split('`').nth(1).unwrap_or_default().to_string();
    if let Some(rest) = message.strip_prefix("missing field ") {
        let name = name_in_backticks(rest);
        let field = interpolate::join_key(&field, &name);
        return Problem::new(field, "nothing", format!("the required field `{name}`"));
    }
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let name = name_in_backticks(rest);
        let expected = rest.split_once(", expected ").map_or("no such field".to_string(), |(_, e)| e.to_string());
        let field = if field.ends_with(&name) { field } else { interpolate::join_key(&field, &name) };
        return Problem::new(field, format!("the unknown field `{name}`"), expected);
    }
    if message.starts_with("data did not match any variant of untagged enum Literal") {
        return Problem::new(field, "a value of an unsupported type", "a boolean, integer, float or string");
    }
    let message =
        message.strip_prefix("invalid type: ").or_else(|| message.strip_prefix("invalid value: ")).unwrap_or(message);
    match message.split_once(", expected ") {
        Some((found, expected)) => Problem::new(field, found, plain_type(expected)),
        None => Problem::new(field, message, "a valid value"),
    }
}
