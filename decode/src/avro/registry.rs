//! Writer schemas of Confluent-framed messages, fetched from a schema
//! registry by id (`GET /schemas/ids/{id}`, Confluent's REST API) and kept.
//!
//! A schema id names one schema forever (the registry never reuses an id),
//! so a fetched schema is kept for the process's life, and so is a verdict
//! that an id is unknown (`404`) or not usable Avro: those records are bad,
//! like any other. An unknown id costs one request; at most
//! [`MAX_REFUSED`] such verdicts are kept (oldest dropped first), so a
//! stream of forged ids cannot grow memory. A registry that cannot answer
//! (unreachable, `5xx`, `401`, garbage) is an error for the caller to
//! retry: a record is never skipped because the registry was down.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sluice_config::avro::AvroSchema;

use super::plan::Plan;
use crate::path::PathNode;
use crate::row::ColumnDecoder;

/// Confluent's schema id (a 4-byte big-endian integer after the magic byte).
pub type SchemaId = u32;

/// Verdicts on ids the registry refused, kept at most.
const MAX_REFUSED: usize = 4_096;
/// A registry answer larger than this is refused (a schema is a few KiB).
const MAX_RESPONSE_BYTES: usize = 4 << 20;

/// What is known about one schema id.
#[derive(Clone)]
pub(crate) enum Verdict {
    Plan(Arc<Plan>),
    /// The registry does not have it, or it is not Avro sluice can read.
    Refused(Arc<str>),
}

/// Why the registry could not answer: retry, never skip.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry {registry}: cannot fetch schema {id}: {source}")]
    Unreachable { registry: String, id: SchemaId, source: reqwest::Error },
    #[error("schema registry {registry}: schema {id}: HTTP {status}: {body}")]
    Status { registry: String, id: SchemaId, status: u16, body: String },
    #[error("schema registry {registry}: schema {id}: {why}")]
    Answer { registry: String, id: SchemaId, why: String },
}

pub(crate) struct Registry {
    client: reqwest::Client,
    /// The base URL, without a trailing `/`.
    base: String,
    /// The base URL as errors show it (no credentials).
    shown: String,
    known: RwLock<HashMap<SchemaId, Verdict>>,
    refused: std::sync::Mutex<VecDeque<SchemaId>>,
}

#[derive(serde::Deserialize)]
struct SchemaAnswer {
    schema: String,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<serde_json::Value>,
}

impl Registry {
    pub fn new(url: &str) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap_or_default();
        Self {
            client,
            base: url.trim_end_matches('/').to_string(),
            shown: redacted(url),
            known: RwLock::default(),
            refused: std::sync::Mutex::default(),
        }
    }

    pub fn get(&self, id: SchemaId) -> Option<Verdict> {
        self.known.read().unwrap_or_else(|e| e.into_inner()).get(&id).cloned()
    }

    /// Fetches schema `id` and keeps the verdict; an error when the
    /// registry gave none.
    pub async fn fetch(&self, id: SchemaId, paths: &PathNode, columns: &[ColumnDecoder]) -> Result<(), RegistryError> {
        let verdict = self.ask(id, paths, columns).await?;
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        if matches!(verdict, Verdict::Refused(_)) {
            let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
            refused.push_back(id);
            if refused.len() > MAX_REFUSED
                && let Some(oldest) = refused.pop_front()
            {
                known.remove(&oldest);
            }
        }
        known.insert(id, verdict);
        Ok(())
    }

    async fn ask(&self, id: SchemaId, paths: &PathNode, columns: &[ColumnDecoder]) -> Result<Verdict, RegistryError> {
        let registry = || self.shown.clone();
        let url = format!("{}/schemas/ids/{id}", self.base);
        // Without its URL: the message names the registry as `shown` does.
        let unreachable = |source: reqwest::Error| RegistryError::Unreachable {
            registry: registry(),
            id,
            source: source.without_url(),
        };
        let mut response = self
            .client
            .get(url)
            .header("Accept", "application/vnd.schemaregistry.v1+json, application/json")
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                let why = format!("an answer of more than {MAX_RESPONSE_BYTES} bytes");
                return Err(RegistryError::Answer { registry: registry(), id, why });
            }
            body.extend_from_slice(&chunk);
        }
        if status == 404 {
            return Ok(Verdict::Refused(format!("the registry has no schema {id}").into()));
        }
        if status != 200 {
            let body = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(RegistryError::Status { registry: registry(), id, status, body });
        }
        let answer: SchemaAnswer = serde_json::from_slice(&body).map_err(|e| RegistryError::Answer {
            registry: registry(),
            id,
            why: format!("not a schema registry answer: {e}"),
        })?;
        if let Some(other) = answer.schema_type.filter(|t| t != "AVRO") {
            return Ok(Verdict::Refused(format!("schema {id} is a {other} schema, not Avro").into()));
        }
        if !answer.references.is_empty() {
            return Ok(Verdict::Refused(
                format!("schema {id} uses schema references, which sluice does not resolve").into(),
            ));
        }
        Ok(match AvroSchema::parse(&answer.schema) {
            Ok(schema) => Verdict::Plan(Arc::new(Plan::new(schema, paths, columns))),
            Err(e) => Verdict::Refused(format!("schema {id} is not a valid Avro schema: {e}").into()),
        })
    }
}

/// `url` without the user information (`https://user:secret@host` →
/// `https://host`), for messages.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_reach_a_message() {
        assert_eq!(redacted("https://user:secret@registry:8081/x"), "https://registry:8081/x");
        assert_eq!(redacted("http://registry:8081"), "http://registry:8081");
        assert_eq!(redacted("http://registry:8081/a@b"), "http://registry:8081/a@b");
    }
}
