//! Avro records (one per Kafka message) decoded against a pipeline schema:
//! raw binary Avro with the pipeline's own writer schema, or Confluent's
//! wire format (a zero magic byte, a 4-byte big-endian schema id, then the
//! Avro body) with writer schemas from a schema registry.

mod binary;
mod plan;
mod registry;

use sluice_config::PipelineConfig;
use sluice_config::avro::AvroSchema;

use crate::bad_record::{BadRecord, BadRecordKind};
use crate::path::PathNode;
use crate::row::{ColumnDecoder, Row};
use plan::Plan;
use registry::{Registry, Verdict};
pub use registry::{RegistryError, SchemaId};

/// Confluent's framing: the magic byte, then the schema id.
const MAGIC: u8 = 0;
const HEADER: usize = 5;

pub(crate) struct AvroDecoder {
    paths: PathNode,
    writers: Writers,
}

enum Writers {
    /// Raw messages of the pipeline's schema (an error when it does not
    /// parse, which validation rules out: every record is then refused).
    Raw(Result<Plan, String>),
    Registry(Registry),
}

impl AvroDecoder {
    pub fn new(pipeline: &PipelineConfig, columns: &[ColumnDecoder]) -> Self {
        let paths = PathNode::of_columns(pipeline);
        let source = &pipeline.source;
        let writers = match (&source.schema_registry, &source.avro_schema) {
            (Some(url), _) => Writers::Registry(Registry::new(url)),
            (None, schema) => Writers::Raw(
                AvroSchema::parse(schema.as_deref().unwrap_or_default())
                    .map(|schema| Plan::new(schema, &paths, columns))
                    .map_err(|e| e.to_string()),
            ),
        };
        Self { paths, writers }
    }

    pub fn decode<'a>(&self, columns: &[ColumnDecoder], bytes: &'a [u8]) -> Result<Row<'a>, BadRecord> {
        if bytes.is_empty() {
            return Err(BadRecord::new(BadRecordKind::Empty, "the message is empty"));
        }
        match &self.writers {
            Writers::Raw(Ok(plan)) => plan.decode(columns, bytes),
            Writers::Raw(Err(why)) => Err(binary::invalid(format!("the pipeline's Avro schema: {why}"))),
            Writers::Registry(registry) => {
                let (id, body) = framed(bytes)?;
                match registry.get(id) {
                    Some(Verdict::Plan(plan)) => plan.decode(columns, body),
                    Some(Verdict::Refused(why)) => Err(BadRecord::new(BadRecordKind::UnknownSchemaId, why.to_string())),
                    // Not fetched: the caller asks `unfetched` first, so only
                    // an unknown id whose verdict was since dropped gets here.
                    None => Err(BadRecord::new(BadRecordKind::UnknownSchemaId, format!("schema {id} is not known"))),
                }
            }
        }
    }

    /// The schema id a framed message names that has not been fetched yet.
    pub fn unfetched(&self, bytes: &[u8]) -> Option<SchemaId> {
        let Writers::Registry(registry) = &self.writers else { return None };
        let (id, _) = framed(bytes).ok()?;
        registry.get(id).is_none().then_some(id)
    }

    pub async fn fetch(&self, id: SchemaId, columns: &[ColumnDecoder]) -> Result<(), RegistryError> {
        match &self.writers {
            Writers::Registry(registry) => registry.fetch(id, &self.paths, columns).await,
            Writers::Raw(_) => Ok(()),
        }
    }
}

/// The schema id and the Avro body of a Confluent-framed message.
fn framed(bytes: &[u8]) -> Result<(SchemaId, &[u8]), BadRecord> {
    match bytes.first() {
        Some(&MAGIC) => {}
        Some(other) => {
            return Err(BadRecord::new(
                BadRecordKind::WrongMagicByte,
                format!("the first byte is {other:#04x}, not Confluent's magic byte 0x00"),
            ));
        }
        None => return Err(BadRecord::new(BadRecordKind::Empty, "the message is empty")),
    }
    let Some(id) = bytes.get(1..HEADER) else {
        return Err(BadRecord::new(
            BadRecordKind::Truncated,
            format!("{} bytes, fewer than Confluent's 5-byte header", bytes.len()),
        ));
    };
    Ok((u32::from_be_bytes(id.try_into().expect("4 bytes")), &bytes[HEADER..]))
}
