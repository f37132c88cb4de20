use std::fmt;
use std::path::PathBuf;

/// One thing wrong with a config file: where it is, what was there, and what
/// would have been accepted. Every validation rule reports through this type so
/// that `sluice validate` can print all problems of a file at once, in one
/// shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted field path into the file, e.g. `schema.columns[3].type`.
    pub field: String,
    pub found: String,
    pub expected: String,
}

impl Problem {
    pub fn new(field: impl Into<String>, found: impl Into<String>, expected: impl Into<String>) -> Self {
        Self { field: field.into(), found: found.into(), expected: expected.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: found {}; expected {}", self.field, self.found, self.expected)
    }
}

/// Why a config file could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the file: {source}")]
    Read { path: PathBuf, source: std::io::Error },

    #[error("{path}:{line}:{column}: TOML syntax error: {message}")]
    Syntax { path: PathBuf, line: usize, column: usize, message: String },

    #[error("{}", render_problems(.path, .problems))]
    Invalid { path: PathBuf, problems: Vec<Problem> },

    #[error(
        "{path}: cannot tell whether this is a pipeline, worker or query-node config \
         (pipeline files have [source] and [schema], worker files [pipelines] or data_dir, \
         query-node files cache_dir or [limits]); name the kind explicitly"
    )]
    UnknownKind { path: PathBuf },
}

impl ConfigError {
    /// The problems of an `Invalid` error, empty for the other variants.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

fn render_problems(path: &std::path::Path, problems: &[Problem]) -> String {
    let mut out = String::new();
    for (i, problem) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("{}: {problem}", path.display()));
    }
    out
}

/// Collects problems while a validation pass walks a config, so that a file
/// with several mistakes reports all of them instead of the first.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    pub fn push(&mut self, field: impl Into<String>, found: impl Into<String>, expected: impl Into<String>) {
        self.0.push(Problem::new(field, found, expected));
    }

    pub fn extend(&mut self, other: Problems) {
        self.0.extend(other.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_result(self, path: impl Into<PathBuf>) -> Result<(), ConfigError> {
        if self.0.is_empty() { Ok(()) } else { Err(ConfigError::Invalid { path: path.into(), problems: self.0 }) }
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.0
    }
}
