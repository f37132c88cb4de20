//! Avro's binary encoding, read from a message's bytes: zig-zag varints,
//! little-endian floats, length-prefixed bytes, and values skipped whole
//! without recursion.
//!
//! Every length is checked against the bytes that remain before anything
//! is allocated or sliced, and skipping is bounded twice: by an explicit
//! stack (hostile nesting costs heap, never native stack) and by a budget
//! of values per message (an array of a billion `null`s costs no bytes
//! but would cost a billion steps).

use sluice_config::avro::{AvroNode, AvroSchema, NodeId};

use crate::bad_record::{BadRecord, BadRecordKind};

/// Values one message may hold beyond one per byte: zero-width values
/// (`null`, empty records, `fixed` of size 0) are legal but need a bound.
const ZERO_WIDTH_VALUES: usize = 1 << 16;
/// Nesting that skipping follows before the record is refused.
const MAX_DEPTH: usize = 4_096;

/// A position in a message's bytes.
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Values still allowed to be read or skipped.
    budget: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0, budget: bytes.len() + ZERO_WIDTH_VALUES }
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn truncated(&self, what: &str) -> BadRecord {
        BadRecord::new(
            BadRecordKind::Truncated,
            format!("the message ends inside {what} (byte {} of {})", self.at, self.bytes.len()),
        )
    }

    fn spend(&mut self) -> Result<(), BadRecord> {
        self.budget = self.budget.checked_sub(1).ok_or_else(|| {
            invalid(format!(
                "more than {} values in a {}-byte message",
                self.bytes.len() + ZERO_WIDTH_VALUES,
                self.bytes.len()
            ))
        })?;
        Ok(())
    }

    pub fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], BadRecord> {
        if n > self.remaining() {
            return Err(self.truncated(what));
        }
        let slice = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(slice)
    }

    /// A zig-zag varint of at most 64 bits.
    pub fn long(&mut self) -> Result<i64, BadRecord> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.bytes.get(self.at) else { return Err(self.truncated("a number")) };
            self.at += 1;
            if shift == 63 && byte > 1 {
                return Err(invalid("a varint longer than 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err(invalid("a varint longer than 64 bits"))
    }

    pub fn int(&mut self) -> Result<i32, BadRecord> {
        let value = self.long()?;
        i32::try_from(value).map_err(|_| invalid(format!("{value} where an Avro int (32 bits) is")))
    }

    /// A length in bytes: non-negative, and within the message.
    fn length(&mut self, what: &str) -> Result<usize, BadRecord> {
        let value = self.long()?;
        let n = usize::try_from(value).map_err(|_| invalid(format!("{what} of {value} bytes")))?;
        if n > self.remaining() {
            return Err(BadRecord::new(
                BadRecordKind::Truncated,
                format!("{what} of {n} bytes where {} remain", self.remaining()),
            ));
        }
        Ok(n)
    }

    pub fn boolean(&mut self) -> Result<bool, BadRecord> {
        match self.take(1, "a boolean")?[0] {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(invalid(format!("the byte {other} where a boolean (0 or 1) is"))),
        }
    }

    pub fn float(&mut self) -> Result<f32, BadRecord> {
        Ok(f32::from_le_bytes(self.take(4, "a float")?.try_into().expect("4 bytes")))
    }

    pub fn double(&mut self) -> Result<f64, BadRecord> {
        Ok(f64::from_le_bytes(self.take(8, "a double")?.try_into().expect("8 bytes")))
    }

    /// `bytes` or `string`: a length, then that many bytes.
    pub fn bytes(&mut self) -> Result<&'a [u8], BadRecord> {
        let n = self.length("a string or bytes")?;
        self.take(n, "bytes")
    }

    /// A union's branch index, below `branches`.
    pub fn branch(&mut self, branches: usize) -> Result<usize, BadRecord> {
        let i = self.long()?;
        usize::try_from(i)
            .ok()
            .filter(|&i| i < branches)
            .ok_or_else(|| invalid(format!("union branch {i} of a union of {branches}")))
    }

    /// An enum's symbol index, below `symbols`.
    pub fn symbol(&mut self, symbols: usize) -> Result<usize, BadRecord> {
        let i = self.int()?;
        usize::try_from(i).ok().filter(|&i| i < symbols).ok_or_else(|| invalid(format!("enum symbol {i} of {symbols}")))
    }

    /// The item count of an array or map block (0 ends the value). A
    /// negative count is followed by the block's size in bytes.
    fn block(&mut self) -> Result<usize, BadRecord> {
        let count = self.long()?;
        if count < 0 {
            // The block's size in bytes: checked, and the items read one by
            // one all the same (each checked for being there).
            self.length("an array or map block")?;
        }
        usize::try_from(count.unsigned_abs()).map_err(|_| invalid(format!("a block of {count} items")))
    }

    /// Skips one value of node `id`: every byte of it checked for being
    /// there, nothing decoded. Iterative, whatever the nesting.
    pub fn skip(&mut self, schema: &AvroSchema, id: NodeId) -> Result<(), BadRecord> {
        // Most skipped fields are one primitive: no stack for them.
        match schema.node(id) {
            AvroNode::Null => return self.spend(),
            AvroNode::Boolean => return self.spend().and(self.boolean().map(drop)),
            AvroNode::Int(_) | AvroNode::Long(_) => return self.spend().and(self.long().map(drop)),
            AvroNode::Bytes(_) | AvroNode::String => return self.spend().and(self.bytes().map(drop)),
            _ => {}
        }
        enum Frame {
            Value(NodeId),
            /// The fields of a record from `next` on.
            Fields {
                record: NodeId,
                next: usize,
            },
            /// `left` more items of an array or map block, then the next block.
            Items {
                item: NodeId,
                map: bool,
                left: usize,
            },
        }
        let mut stack = vec![Frame::Value(id)];
        while let Some(frame) = stack.pop() {
            if stack.len() > MAX_DEPTH {
                return Err(invalid(format!("values nested more than {MAX_DEPTH} deep")));
            }
            self.spend()?;
            match frame {
                Frame::Value(id) => match schema.node(id) {
                    AvroNode::Null => {}
                    AvroNode::Boolean => {
                        self.boolean()?;
                    }
                    AvroNode::Int(_) | AvroNode::Long(_) => {
                        self.long()?;
                    }
                    AvroNode::Float => {
                        self.take(4, "a float")?;
                    }
                    AvroNode::Double => {
                        self.take(8, "a double")?;
                    }
                    AvroNode::Bytes(_) | AvroNode::String => {
                        self.bytes()?;
                    }
                    AvroNode::Fixed { size, .. } => {
                        self.take(*size, "a fixed")?;
                    }
                    AvroNode::Enum { symbols, .. } => {
                        self.symbol(symbols.len())?;
                    }
                    AvroNode::Union(branches) => {
                        let i = self.branch(branches.len())?;
                        stack.push(Frame::Value(branches[i]));
                    }
                    AvroNode::Record { .. } => stack.push(Frame::Fields { record: id, next: 0 }),
                    AvroNode::Array(item) => stack.push(Frame::Items { item: *item, map: false, left: 0 }),
                    AvroNode::Map(value) => stack.push(Frame::Items { item: *value, map: true, left: 0 }),
                },
                Frame::Fields { record, next } => {
                    let AvroNode::Record { fields, .. } = schema.node(record) else { unreachable!("a record frame") };
                    if let Some(field) = fields.get(next) {
                        stack.push(Frame::Fields { record, next: next + 1 });
                        stack.push(Frame::Value(field.node));
                    }
                }
                Frame::Items { item, map, left } => {
                    let left = if left == 0 { self.block()? } else { left };
                    if left > 0 {
                        stack.push(Frame::Items { item, map, left: left - 1 });
                        if map {
                            self.bytes()?;
                        }
                        stack.push(Frame::Value(item));
                    }
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn invalid(detail: impl Into<String>) -> BadRecord {
    BadRecord::new(BadRecordKind::InvalidAvro, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zigzag(v: i64) -> Vec<u8> {
        let mut n = ((v << 1) ^ (v >> 63)) as u64;
        let mut out = Vec::new();
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    #[test]
    fn varints_round_trip_at_their_limits() {
        for v in [0, -1, 1, 63, -64, 64, i64::from(i32::MAX), i64::from(i32::MIN), i64::MAX, i64::MIN] {
            assert_eq!(Cursor::new(&zigzag(v)).long().unwrap(), v);
        }
        assert_eq!(Cursor::new(&[0x80; 11]).long().unwrap_err().kind, BadRecordKind::InvalidAvro);
        assert_eq!(Cursor::new(&[0xff, 0xff]).long().unwrap_err().kind, BadRecordKind::Truncated);
        assert_eq!(Cursor::new(&zigzag(i64::from(i32::MAX) + 1)).int().unwrap_err().kind, BadRecordKind::InvalidAvro);
    }

    #[test]
    fn lengths_beyond_the_message_are_truncation_never_an_allocation() {
        let mut claim = zigzag(1 << 40);
        claim.extend_from_slice(b"abc");
        assert_eq!(Cursor::new(&claim).bytes().unwrap_err().kind, BadRecordKind::Truncated);
        assert_eq!(Cursor::new(&zigzag(-3)).bytes().unwrap_err().kind, BadRecordKind::InvalidAvro);
    }

    #[test]
    fn hostile_arrays_and_nesting_cost_a_bounded_effort() {
        let nulls = AvroSchema::parse(r#"{"type": "array", "items": "null"}"#).unwrap();
        let mut billion = zigzag(1_000_000_000);
        billion.push(0);
        let error = Cursor::new(&billion).skip(&nulls, nulls.root()).unwrap_err();
        assert!(error.detail.contains("more than"), "{error}");

        let list = AvroSchema::parse(
            r#"{"type": "record", "name": "L", "fields": [{"name": "next", "type": ["null", "L"]}]}"#,
        )
        .unwrap();
        let deep = [vec![2u8; 100_000], vec![0]].concat(); // branch 1 (`L`) 100,000 times, then null
        let error = Cursor::new(&deep).skip(&list, list.root()).unwrap_err();
        assert!(error.detail.contains("nested"), "{error}");
        let shallow = [vec![2u8; 100], vec![0]].concat();
        let mut cursor = Cursor::new(&shallow);
        cursor.skip(&list, list.root()).unwrap();
        assert_eq!(cursor.remaining(), 0);

        // A record that contains itself (no union to end it) has no finite
        // value: skipping it ends, refused, within the depth bound.
        let endless =
            AvroSchema::parse(r#"{"type": "record", "name": "E", "fields": [{"name": "e", "type": "E"}]}"#).unwrap();
        assert_eq!(Cursor::new(&[]).skip(&endless, endless.root()).unwrap_err().kind, BadRecordKind::InvalidAvro);
    }

    #[test]
    fn blocks_with_sizes_and_maps_are_skipped() {
        let map = AvroSchema::parse(r#"{"type": "map", "values": "long"}"#).unwrap();
        // One block of -2 items (with its byte size), then a block of 1, then the end.
        let mut bytes = zigzag(-2);
        bytes.extend(zigzag(6));
        for (key, value) in [("a", 1), ("b", 2)] {
            bytes.extend(zigzag(1));
            bytes.extend(key.as_bytes());
            bytes.extend(zigzag(value));
        }
        bytes.extend(zigzag(1));
        bytes.extend(zigzag(1));
        bytes.extend(b"c");
        bytes.extend(zigzag(3));
        bytes.push(0);
        let mut cursor = Cursor::new(&bytes);
        cursor.skip(&map, map.root()).unwrap();
        assert_eq!(cursor.remaining(), 0);
        assert_eq!(
            Cursor::new(&bytes[..bytes.len() - 1]).skip(&map, map.root()).unwrap_err().kind,
            BadRecordKind::Truncated
        );
    }
}
