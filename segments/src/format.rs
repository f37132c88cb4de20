//! The segment file container.
//!
//! ```text
//! 0      header: magic "SLUICESG", u32 format version, zero padding to 64 bytes
//! 64     data section: an Arrow IPC file (64-byte aligned buffers, so a
//!        memory-mapped file yields arrays without copying)
//! ..     index section (see `index.rs`)
//! ..     metadata section: JSON (`SegmentMeta`)
//! end-96 footer: 4 × (u64 offset, u64 len, u32 crc32c) for header, data,
//!        index, metadata; u32 format version; u32 crc32c of the footer so far;
//!        magic "SLUICESG"
//! ```
//!
//! The sections are contiguous and each is covered by a CRC32C, so every byte
//! of the file is checked: truncation, a flipped bit anywhere, a wrong magic
//! or an unknown version is reported with the section it hit, before any
//! byte is interpreted.

use std::ops::Range;

use crate::error::{Section, SegmentError};
use crate::index::Reader;

pub const MAGIC: &[u8; 8] = b"SLUICESG";
/// Version 2 added star-tree index entries; version 1 files read as ever.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest version this build reads.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
pub(crate) const HEADER_LEN: usize = 64;
pub(crate) const FOOTER_LEN: usize = 4 * 20 + 4 + 4 + 8;

const SECTIONS: [Section; 4] = [Section::Header, Section::Data, Section::Index, Section::Metadata];

/// Assembles a file image from its sections.
pub(crate) fn assemble(data: &[u8], index: &[u8], metadata: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + data.len() + index.len() + metadata.len() + FOOTER_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.resize(HEADER_LEN, 0);
    let mut ranges = Vec::with_capacity(4);
    ranges.push(0..HEADER_LEN);
    for section in [data, index, metadata] {
        let start = out.len();
        out.extend_from_slice(section);
        ranges.push(start..out.len());
    }
    let footer_start = out.len();
    for range in &ranges {
        out.extend_from_slice(&(range.start as u64).to_le_bytes());
        out.extend_from_slice(&(range.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&out[range.clone()]).to_le_bytes());
    }
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    let footer_crc = crc32c::crc32c(&out[footer_start..]);
    out.extend_from_slice(&footer_crc.to_le_bytes());
    out.extend_from_slice(MAGIC);
    out
}

/// Byte ranges of data, index and metadata in a verified file.
pub(crate) struct Layout {
    pub data: Range<usize>,
    pub index: Range<usize>,
    pub metadata: Range<usize>,
}

/// Checks the footer, the header and every section checksum — those of the
/// bulk sections (data, index), whose size grows with the rows, only when
/// `check_bulk` (see `Segment::open_trusted`).
pub(crate) fn verify(file: &str, bytes: &[u8], check_bulk: bool) -> Result<Layout, SegmentError> {
    let corrupt = |section, reason: String| SegmentError::corrupt(file, section, reason);
    if bytes.len() < HEADER_LEN + FOOTER_LEN {
        return Err(corrupt(
            Section::Footer,
            format!("the file is {} bytes, shorter than any segment file: truncated", bytes.len()),
        ));
    }
    if &bytes[bytes.len() - 8..] != MAGIC {
        return Err(corrupt(
            Section::Footer,
            "no segment magic at the end: truncated, or not a sluice segment file".into(),
        ));
    }
    let footer_start = bytes.len() - FOOTER_LEN;
    let footer = Reader::new(&bytes[footer_start..]);
    let stored_crc = footer.u32(FOOTER_LEN - 12).map_err(|e| corrupt(Section::Footer, e))?;
    if crc32c::crc32c(&bytes[footer_start..bytes.len() - 12]) != stored_crc {
        return Err(corrupt(Section::Footer, "checksum mismatch".into()));
    }
    let version = footer.u32(FOOTER_LEN - 16).map_err(|e| corrupt(Section::Footer, e))?;
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(SegmentError::UnsupportedVersion {
            file: file.to_string(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let mut ranges = Vec::with_capacity(4);
    let mut expected_start = 0usize;
    for (i, section) in SECTIONS.into_iter().enumerate() {
        let at = i * 20;
        let start = footer.usize64(at).map_err(|e| corrupt(section, e))?;
        let len = footer.usize64(at + 8).map_err(|e| corrupt(section, e))?;
        let crc = footer.u32(at + 16).map_err(|e| corrupt(section, e))?;
        let end = start.checked_add(len).filter(|end| *end <= footer_start);
        let Some(end) = end.filter(|_| start == expected_start) else {
            return Err(corrupt(section, format!("section at {start}+{len} does not fit the file layout")));
        };
        let skip = matches!(section, Section::Data | Section::Index) && !check_bulk;
        if !skip && crc32c::crc32c(&bytes[start..end]) != crc {
            return Err(corrupt(section, "checksum mismatch".into()));
        }
        ranges.push(start..end);
        expected_start = end;
    }
    if expected_start != footer_start {
        return Err(corrupt(Section::Footer, "sections do not end where the footer starts".into()));
    }
    if &bytes[..8] != MAGIC {
        return Err(corrupt(Section::Header, "wrong magic: not a sluice segment file".into()));
    }
    let header_version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if header_version != version {
        return Err(SegmentError::UnsupportedVersion {
            file: file.to_string(),
            found: header_version,
            supported: FORMAT_VERSION,
        });
    }
    if ranges[0] != (0..HEADER_LEN) {
        return Err(corrupt(Section::Header, "header is not 64 bytes".into()));
    }
    Ok(Layout { data: ranges[1].clone(), index: ranges[2].clone(), metadata: ranges[3].clone() })
}
