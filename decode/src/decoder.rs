//! A pipeline's decoder, whatever its messages' format: the size limit and
//! the columns' conversion rules are shared, the reading is the format's.

use sluice_config::{PipelineConfig, SourceFormat};
use sluice_segments::Scalar;

use crate::avro::{AvroDecoder, RegistryError, SchemaId};
use crate::bad_record::{BadRecord, BadRecordKind};
use crate::json::JsonDecoder;
use crate::row::{ColumnDecoder, Row, column_decoders};

pub struct Decoder {
    columns: Vec<ColumnDecoder>,
    max_message_bytes: usize,
    format: Format,
}

enum Format {
    Json(JsonDecoder),
    Avro(AvroDecoder),
}

impl Decoder {
    /// A decoder for a validated pipeline.
    pub fn new(pipeline: &PipelineConfig) -> Self {
        let columns = column_decoders(pipeline);
        let format = match pipeline.source.format {
            SourceFormat::Json => Format::Json(JsonDecoder::new(pipeline)),
            SourceFormat::Avro => Format::Avro(AvroDecoder::new(pipeline, &columns)),
        };
        Self { columns, max_message_bytes: pipeline.bad_records.max_message_bytes.as_u64() as usize, format }
    }

    /// Each column's default as it is stored (a timestamp in the column's
    /// unit), in schema order; None for a column without one. Query nodes
    /// answer it for segments written before the column was added.
    pub fn defaults(&self) -> Vec<Option<Scalar>> {
        self.columns.iter().map(ColumnDecoder::default_scalar).collect()
    }

    /// Decodes one message. A message naming a schema that is not fetched
    /// yet ([`Decoder::unfetched`]) must be fetched first: decoded before,
    /// it is refused as an unknown schema.
    pub fn decode<'a>(&self, bytes: &'a [u8]) -> Result<Row<'a>, BadRecord> {
        if bytes.len() > self.max_message_bytes {
            return Err(BadRecord::new(
                BadRecordKind::Oversized,
                format!("{} bytes, more than bad_records.max_message_bytes = {}", bytes.len(), self.max_message_bytes),
            ));
        }
        match &self.format {
            Format::Json(json) => json.decode(&self.columns, bytes),
            Format::Avro(avro) => avro.decode(&self.columns, bytes),
        }
    }

    /// The writer schema a message names (Confluent's wire format) that
    /// this decoder has not fetched yet: fetch it before decoding.
    pub fn unfetched(&self, bytes: &[u8]) -> Option<SchemaId> {
        match &self.format {
            Format::Avro(avro) => avro.unfetched(bytes),
            Format::Json(_) => None,
        }
    }

    /// Fetches schema `id` from the pipeline's schema registry. An error
    /// means the registry gave no answer: retry it (with backoff), and do
    /// not decode the message meanwhile.
    pub async fn fetch(&self, id: SchemaId) -> Result<(), RegistryError> {
        match &self.format {
            Format::Avro(avro) => avro.fetch(id, &self.columns).await,
            Format::Json(_) => Ok(()),
        }
    }
}
