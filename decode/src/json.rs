//! JSON records (one object per Kafka message) decoded against a pipeline
//! schema.
//!
//! The message is read once, front to back, by [`Reader`], following a trie
//! of the configured field paths: a key no column reads has its value
//! skipped (its grammar checked, nothing decoded), a value a column reads is
//! converted to the column's type as it is found, and strings without
//! escapes are borrowed from the message bytes. Hostile nesting cannot
//! overflow the stack: the decoder recurses only along the configured paths
//! and the reader skips every other value iteratively (tested at 500,000
//! levels).
//!
//! A record's problems are reported as one [`BadRecord`], the first of:
//! text that is not JSON (or a key the schema reads named twice in one
//! object, found as it is read), then,
//! in schema order, a column's wrong type, range or missing value. So a
//! record that is not JSON is never reported as a type error, whatever the
//! order of its fields.

use sluice_config::PipelineConfig;

use crate::bad_record::{BadRecord, BadRecordKind};
use crate::path::{Key, Named, PathNode};
use crate::reader::{Raw, Reader, SyntaxError};
use crate::row::{Cells, ColumnDecoder, Row};

/// Decodes JSON messages for one pipeline's columns.
pub(crate) struct JsonDecoder {
    root: PathNode,
}

impl JsonDecoder {
    pub fn new(pipeline: &PipelineConfig) -> Self {
        Self { root: PathNode::of_columns(pipeline) }
    }

    /// Decodes one message (of at most `bad_records.max_message_bytes`).
    pub fn decode<'a>(&self, columns: &[ColumnDecoder], bytes: &'a [u8]) -> Result<Row<'a>, BadRecord> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(BadRecord::new(BadRecordKind::Empty, "the message is empty"));
        }
        let text = std::str::from_utf8(bytes).map_err(|e| BadRecord::new(BadRecordKind::InvalidUtf8, e.to_string()))?;
        let mut reader = Reader::new(text);
        let mut read = Read { columns, cells: Cells::new(columns.len()) };
        let found = match reader.peek() {
            Some(b'{') => {
                read.object(&mut reader, &self.root)?;
                None
            }
            // The value is read first: text that is not JSON at all is that.
            _ => Some(reader.value().map_err(invalid)?.kind()),
        };
        reader.end().map_err(invalid)?;
        if let Some(found) = found {
            return Err(BadRecord::new(
                BadRecordKind::NotAnObject,
                format!("the message is {found}, not a JSON object"),
            ));
        }
        read.cells.finish(columns)
    }
}

fn invalid(e: SyntaxError) -> BadRecord {
    BadRecord::new(BadRecordKind::InvalidJson, e.to_string())
}

/// One message being read.
struct Read<'d, 'a> {
    columns: &'d [ColumnDecoder],
    cells: Cells<'a>,
}

impl<'a> Read<'_, 'a> {
    /// An object along the configured paths, at its `{`: known keys are
    /// read (values for columns, recursion for inner nodes), the others
    /// skipped.
    fn object(&mut self, reader: &mut Reader<'a>, node: &PathNode) -> Result<(), BadRecord> {
        reader.expect(b'{', "an object").map_err(invalid)?;
        if reader.empty_object() {
            return Ok(());
        }
        let mut named = Named::new(node);
        loop {
            let key = Key::new(reader.key().map_err(invalid)?);
            match node.child(&key) {
                None => reader.skip().map_err(invalid)?,
                Some((i, child)) => {
                    if !named.insert(i) {
                        return Err(BadRecord::new(
                            BadRecordKind::DuplicateKey,
                            format!("the key {:?}, which the schema reads, appears twice in one object", key.text),
                        ));
                    }
                    self.field(reader, child)?;
                }
            }
            if !reader.next_member().map_err(invalid)? {
                return Ok(());
            }
        }
    }

    /// The value of a key on a configured path.
    fn field(&mut self, reader: &mut Reader<'a>, node: &PathNode) -> Result<(), BadRecord> {
        if !node.is_leaf() && reader.peek() == Some(b'{') {
            // A path that is both a column and the parent of others (`a`
            // and `a.b`) gives the column an object: a type error for it.
            self.store(node, Raw::Object);
            return self.object(reader, node);
        }
        if node.columns.is_empty() {
            // An inner node whose value is not an object: the paths below
            // it are missing.
            return reader.skip().map_err(invalid);
        }
        let raw = reader.value().map_err(invalid)?;
        self.store(node, raw);
        Ok(())
    }

    fn store(&mut self, node: &PathNode, raw: Raw<'a>) {
        let Some((&last, others)) = node.columns.split_last() else { return };
        for &i in others {
            self.put(i, raw.clone());
        }
        self.put(last, raw);
    }

    fn put(&mut self, i: usize, raw: Raw<'a>) {
        self.cells.put(i, self.columns[i].convert(raw));
    }
}
