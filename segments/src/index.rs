//! Sealed-segment index encodings, read in place from the segment bytes.
//!
//! Index section: `u32 count`, then `count` entries of
//! `(u8 kind, 3 × u8 zero, u32 column, u64 offset, u64 len)` with offsets
//! relative to the section start, then the payloads:
//! - inverted: the sorted distinct keys, `(n + 1) × u64` bitmap offsets, and
//!   the bitmaps in roaring's portable format. Keys are sorted, so a value
//!   range is a contiguous run of bitmaps.
//! - range: `u32 n`, then the non-null row ids ordered by value (ties by row).
//! - bloom: `u32 hashes`, `u64 bits`, then the bit array.
//!
//! Keys: `u8 kind` (0 bool, 1 int, 2 float, 3 string), `u32 n`, then
//! `n × u64` (bool/int/float bits), or `(n + 1) × u32` offsets and the bytes.
//! Every read is bounds-checked: a corrupt index is an error, never a panic.

use std::cmp::Ordering;
use std::ops::{Bound, Range};

use roaring::RoaringBitmap;

use crate::types::{Key, finish_stable_hash, fnv1a_step, stable_hash_start};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexKind {
    Inverted,
    Range,
    Bloom,
    /// Rows are sorted by the column (NULLs first); no payload.
    Sorted,
    /// A star-tree (see `star_tree.rs`); its entry's column is the tree's
    /// position among the schema's trees. Format version 2 on.
    StarTree,
}

impl IndexKind {
    fn code(self) -> u8 {
        match self {
            IndexKind::Inverted => 1,
            IndexKind::Range => 2,
            IndexKind::Bloom => 3,
            IndexKind::Sorted => 4,
            IndexKind::StarTree => 5,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => IndexKind::Inverted,
            2 => IndexKind::Range,
            3 => IndexKind::Bloom,
            4 => IndexKind::Sorted,
            5 => IndexKind::StarTree,
            _ => return None,
        })
    }
}

const ENTRY_LEN: usize = 24;

/// A bounds-checked little-endian reader over a byte slice.
#[derive(Clone, Copy)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

pub(crate) type Corrupt = String;

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }
    pub fn slice(&self, range: Range<usize>) -> Result<&'a [u8], Corrupt> {
        self.bytes
            .get(range.clone())
            .ok_or_else(|| format!("bytes {range:?} are outside the {}-byte region", self.bytes.len()))
    }
    pub fn u8(&self, at: usize) -> Result<u8, Corrupt> {
        Ok(self.slice(at..at + 1)?[0])
    }
    pub fn u32(&self, at: usize) -> Result<u32, Corrupt> {
        Ok(u32::from_le_bytes(self.slice(at..at + 4)?.try_into().expect("4 bytes")))
    }
    pub fn u64(&self, at: usize) -> Result<u64, Corrupt> {
        Ok(u64::from_le_bytes(self.slice(at..at + 8)?.try_into().expect("8 bytes")))
    }
    pub fn usize64(&self, at: usize) -> Result<usize, Corrupt> {
        usize::try_from(self.u64(at)?).map_err(|_| "offset overflows".to_string())
    }
}

/// One entry of the index directory.
#[derive(Debug, Clone)]
pub(crate) struct IndexEntry {
    pub kind: IndexKind,
    pub column: usize,
    pub payload: Range<usize>,
}

pub(crate) fn parse_directory(section: &[u8], columns: usize, trees: usize) -> Result<Vec<IndexEntry>, Corrupt> {
    let r = Reader::new(section);
    let count = r.u32(0)? as usize;
    if count > 4 * columns + trees {
        return Err(format!("{count} index entries for {columns} columns and {trees} star-trees"));
    }
    (0..count)
        .map(|i| {
            let at = 4 + i * ENTRY_LEN;
            let kind = IndexKind::from_code(r.u8(at)?)
                .ok_or_else(|| format!("unknown index kind {}", r.u8(at).unwrap_or(0)))?;
            let column = r.u32(at + 4)? as usize;
            if kind == IndexKind::StarTree && column >= trees {
                return Err(format!("star-tree {column} of {trees}"));
            }
            if kind != IndexKind::StarTree && column >= columns {
                return Err(format!("index on column {column} of {columns}"));
            }
            let offset = r.usize64(at + 8)?;
            let len = r.usize64(at + 16)?;
            let end = offset.checked_add(len).ok_or("payload range overflows")?;
            r.slice(offset..end)?;
            Ok(IndexEntry { kind, column, payload: offset..end })
        })
        .collect()
}

/// Builds the index section.
#[derive(Default)]
pub(crate) struct SectionWriter {
    entries: Vec<(IndexKind, usize, Vec<u8>)>,
}

impl SectionWriter {
    pub fn add(&mut self, kind: IndexKind, column: usize, payload: Vec<u8>) {
        self.entries.push((kind, column, payload));
    }

    pub fn finish(self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        let mut offset = 4 + self.entries.len() * ENTRY_LEN;
        for (kind, column, payload) in &self.entries {
            out.extend_from_slice(&[kind.code(), 0, 0, 0]);
            out.extend_from_slice(&(*column as u32).to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            offset += payload.len();
        }
        for (_, _, payload) in self.entries {
            out.extend_from_slice(&payload);
        }
        out
    }
}

// ---- keys ------------------------------------------------------------------

fn encode_keys(keys: &[&Key], out: &mut Vec<u8>) {
    let kind = match keys.first() {
        Some(Key::Bool(_)) | None => 0u8,
        Some(Key::Int(_)) => 1,
        Some(Key::Float(_)) => 2,
        Some(Key::Str(_)) => 3,
    };
    out.push(kind);
    out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
    if kind == 3 {
        let mut offset = 0u32;
        out.extend_from_slice(&offset.to_le_bytes());
        for key in keys {
            if let Key::Str(s) = key {
                offset += s.len() as u32;
            }
            out.extend_from_slice(&offset.to_le_bytes());
        }
        for key in keys {
            if let Key::Str(s) = key {
                out.extend_from_slice(s.as_bytes());
            }
        }
    } else {
        for key in keys {
            let bits = match key {
                Key::Bool(v) => u64::from(*v),
                Key::Int(v) => *v as u64,
                Key::Float(v) => *v,
                Key::Str(_) => 0,
            };
            out.extend_from_slice(&bits.to_le_bytes());
        }
    }
}

/// Sorted keys read in place.
struct Keys<'a> {
    kind: u8,
    n: usize,
    r: Reader<'a>,
    /// Start of the fixed-width values or of the string offsets.
    at: usize,
    /// Start of string bytes.
    data: usize,
    end: usize,
}

impl<'a> Keys<'a> {
    fn parse(r: Reader<'a>, at: usize) -> Result<Self, Corrupt> {
        let kind = r.u8(at)?;
        let n = r.u32(at + 1)? as usize;
        let start = at + 5;
        let (data, end) = match kind {
            0..=2 => (start, start + n * 8),
            3 => {
                let data = start + (n + 1) * 4;
                (data, data + r.u32(start + n * 4)? as usize)
            }
            other => return Err(format!("unknown key kind {other}")),
        };
        r.slice(start..end)?;
        Ok(Self { kind, n, r, at: start, data, end })
    }

    fn cmp_at(&self, i: usize, key: &Key) -> Result<Ordering, Corrupt> {
        Ok(match (self.kind, key) {
            (0, Key::Bool(v)) => (self.r.u64(self.at + i * 8)? != 0).cmp(v),
            (1, Key::Int(v)) => (self.r.u64(self.at + i * 8)? as i64).cmp(v),
            (2, Key::Float(v)) => self.r.u64(self.at + i * 8)?.cmp(v),
            (3, Key::Str(v)) => {
                let from = self.r.u32(self.at + i * 4)? as usize;
                let to = self.r.u32(self.at + (i + 1) * 4)? as usize;
                self.r.slice(self.data + from..self.data + to)?.cmp(v.as_bytes())
            }
            _ => return Err("key kind does not match the column type".to_string()),
        })
    }
}

/// Position range `[start, end)` of sorted items within key bounds, given a
/// comparison of item `i` against a key.
pub(crate) fn bounds_range(
    n: usize,
    cmp_at: impl Fn(usize, &Key) -> Result<Ordering, Corrupt>,
    low: Bound<&Key>,
    high: Bound<&Key>,
) -> Result<Range<usize>, Corrupt> {
    let search = |pred: &dyn Fn(Ordering) -> bool, key: &Key| -> Result<usize, Corrupt> {
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(cmp_at(mid, key)?) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    };
    let start = match low {
        Bound::Unbounded => 0,
        Bound::Included(k) => search(&|o| o == Ordering::Less, k)?,
        Bound::Excluded(k) => search(&|o| o != Ordering::Greater, k)?,
    };
    let end = match high {
        Bound::Unbounded => n,
        Bound::Included(k) => search(&|o| o != Ordering::Greater, k)?,
        Bound::Excluded(k) => search(&|o| o == Ordering::Less, k)?,
    };
    Ok(start..end.max(start))
}

// ---- inverted --------------------------------------------------------------

pub(crate) fn encode_inverted(groups: &[(Key, RoaringBitmap)]) -> Vec<u8> {
    let mut out = Vec::new();
    let keys: Vec<&Key> = groups.iter().map(|(k, _)| k).collect();
    encode_keys(&keys, &mut out);
    let mut offset = 0u64;
    out.extend_from_slice(&offset.to_le_bytes());
    for (_, rows) in groups {
        offset += rows.serialized_size() as u64;
        out.extend_from_slice(&offset.to_le_bytes());
    }
    for (_, rows) in groups {
        rows.serialize_into(&mut out).expect("writing to a Vec cannot fail");
    }
    out
}

pub(crate) struct Inverted<'a> {
    keys: Keys<'a>,
    r: Reader<'a>,
    offsets_at: usize,
    bitmaps_at: usize,
}

impl<'a> Inverted<'a> {
    pub fn parse(payload: &'a [u8]) -> Result<Self, Corrupt> {
        let r = Reader::new(payload);
        let keys = Keys::parse(r, 0)?;
        let offsets_at = keys.end;
        let bitmaps_at = offsets_at + (keys.n + 1) * 8;
        r.slice(offsets_at..bitmaps_at)?;
        Ok(Self { keys, r, offsets_at, bitmaps_at })
    }

    fn bitmap(&self, i: usize) -> Result<RoaringBitmap, Corrupt> {
        let from = self.r.usize64(self.offsets_at + i * 8)?;
        let to = self.r.usize64(self.offsets_at + (i + 1) * 8)?;
        if from > to {
            return Err("bitmap offsets decrease".to_string());
        }
        let bytes = self.r.slice(self.bitmaps_at + from..self.bitmaps_at + to)?;
        RoaringBitmap::deserialize_from(bytes).map_err(|e| format!("bitmap {i}: {e}"))
    }

    pub fn rows_in(&self, low: Bound<&Key>, high: Bound<&Key>) -> Result<RoaringBitmap, Corrupt> {
        let range = bounds_range(self.keys.n, |i, k| self.keys.cmp_at(i, k), low, high)?;
        let mut rows = RoaringBitmap::new();
        for i in range {
            rows |= self.bitmap(i)?;
        }
        Ok(rows)
    }
}

// ---- range -----------------------------------------------------------------

pub(crate) fn encode_range(sorted_rows: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + sorted_rows.len() * 4);
    out.extend_from_slice(&(sorted_rows.len() as u32).to_le_bytes());
    for row in sorted_rows {
        out.extend_from_slice(&row.to_le_bytes());
    }
    out
}

/// Row ids ordered by value; `cmp_row` compares a row's value with a key.
pub(crate) fn range_rows(
    payload: &[u8],
    num_rows: u32,
    cmp_row: impl Fn(u32, &Key) -> Ordering,
    low: Bound<&Key>,
    high: Bound<&Key>,
) -> Result<RoaringBitmap, Corrupt> {
    let r = Reader::new(payload);
    let n = r.u32(0)? as usize;
    let ids = r.slice(4..4 + n * 4)?;
    let row = |i: usize| -> Result<u32, Corrupt> {
        let id = u32::from_le_bytes(ids[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
        if id >= num_rows { Err(format!("row id {id} beyond {num_rows} rows")) } else { Ok(id) }
    };
    let range = bounds_range(n, |i, k| Ok(cmp_row(row(i)?, k)), low, high)?;
    let mut rows: Vec<u32> = range.map(row).collect::<Result<_, _>>()?;
    rows.sort_unstable();
    Ok(RoaringBitmap::from_sorted_iter(rows).expect("sorted"))
}

// ---- bloom -----------------------------------------------------------------

const BLOOM_HASHES: u32 = 7;
/// ~1% false positives at 7 hashes.
const BLOOM_BITS_PER_KEY: u64 = 10;

/// The bit positions of a value's hash bytes (see [`Key::hash_bytes`]).
fn bloom_positions(bytes: &[u8], bits: u64) -> impl Iterator<Item = u64> {
    let (h1, h2) = stable_hash_pair(bytes);
    let h2 = h2 | 1;
    (0..u64::from(BLOOM_HASHES)).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % bits)
}

/// The seed of the stored filter's second hash.
const BLOOM_SECOND_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// `stable_hash(bytes, 0)` and `stable_hash(bytes, BLOOM_SECOND_SEED)`,
/// the two hashes of the stored filter's double hashing, computed in one
/// pass: two independent multiply chains, which the CPU overlaps.
fn stable_hash_pair(bytes: &[u8]) -> (u64, u64) {
    let (mut a, mut b) = (stable_hash_start(0), stable_hash_start(BLOOM_SECOND_SEED));
    for &byte in bytes {
        a = fnv1a_step(a, byte);
        b = fnv1a_step(b, byte);
    }
    (finish_stable_hash(a), finish_stable_hash(b))
}

/// A bloom filter being filled, sized for `values` distinct values.
pub(crate) struct BloomBuilder {
    bits: u64,
    array: Vec<u8>,
}

impl BloomBuilder {
    pub(crate) fn new(values: usize) -> Self {
        let bits = (values as u64 * BLOOM_BITS_PER_KEY).max(64).next_multiple_of(8);
        Self { bits, array: vec![0u8; (bits / 8) as usize] }
    }

    /// Adds a value by its hash bytes ([`Key::hash_bytes`]; a string's are its UTF-8).
    pub(crate) fn add(&mut self, bytes: &[u8]) {
        for pos in bloom_positions(bytes, self.bits) {
            self.array[(pos / 8) as usize] |= 1 << (pos % 8);
        }
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.array.len());
        out.extend_from_slice(&BLOOM_HASHES.to_le_bytes());
        out.extend_from_slice(&self.bits.to_le_bytes());
        out.extend_from_slice(&self.array);
        out
    }
}

pub(crate) fn encode_bloom<'k>(keys: impl ExactSizeIterator<Item = &'k Key>) -> Vec<u8> {
    let mut bloom = BloomBuilder::new(keys.len());
    let mut scratch = Vec::new();
    for key in keys {
        key.hash_bytes(&mut scratch);
        bloom.add(&scratch);
    }
    bloom.finish()
}

/// False when the key is certainly absent.
pub(crate) fn bloom_may_contain(payload: &[u8], key: &Key) -> Result<bool, Corrupt> {
    let r = Reader::new(payload);
    let bits = r.u64(4)?;
    if bits == 0 || bits % 8 != 0 {
        return Err(format!("bloom filter of {bits} bits"));
    }
    let array = r.slice(12..12 + (bits / 8) as usize)?;
    let mut bytes = Vec::new();
    key.hash_bytes(&mut bytes);
    Ok(bloom_positions(&bytes, bits).all(|pos| array[(pos / 8) as usize] & (1 << (pos % 8)) != 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::stable_hash;

    #[test]
    fn inverted_lookups() {
        let groups: Vec<(Key, RoaringBitmap)> = vec![
            (Key::Str("a".into()), [0u32, 5].into_iter().collect()),
            (Key::Str("bb".into()), [1u32].into_iter().collect()),
            (Key::Str("c".into()), [2u32, 3].into_iter().collect()),
        ];
        let bytes = encode_inverted(&groups);
        let inv = Inverted::parse(&bytes).unwrap();
        let b = Key::Str("bb".into());
        assert_eq!(inv.rows_in(Bound::Included(&b), Bound::Included(&b)).unwrap().len(), 1);
        let rows = inv.rows_in(Bound::Excluded(&Key::Str("a".into())), Bound::Unbounded).unwrap();
        assert_eq!(rows.iter().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(inv.rows_in(Bound::Included(&Key::Str("zz".into())), Bound::Unbounded).unwrap().is_empty());
        assert!(
            Inverted::parse(&bytes[..bytes.len() - 3])
                .and_then(|i| i.rows_in(Bound::Unbounded, Bound::Unbounded))
                .is_err()
        );
    }

    #[test]
    fn bloom_has_no_false_negatives() {
        let keys: Vec<Key> = (0..1000).map(Key::Int).collect();
        for text in ["", "a", "user-123456", "ünïcode"] {
            let pair = stable_hash_pair(text.as_bytes());
            assert_eq!(pair, (stable_hash(text.as_bytes(), 0), stable_hash(text.as_bytes(), BLOOM_SECOND_SEED)));
        }
        let bytes = encode_bloom(keys.iter());
        assert!(keys.iter().all(|k| bloom_may_contain(&bytes, k).unwrap()));
        let false_positives = (1000..11000).filter(|i| bloom_may_contain(&bytes, &Key::Int(*i)).unwrap()).count();
        assert!(false_positives < 300, "{false_positives} false positives in 10000");
    }
}
