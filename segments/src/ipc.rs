//! Reading a segment's Arrow IPC sections (its data, a star-tree's
//! records) from the mapped file, validated or trusted.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::ipc::convert::fb_to_schema;
use arrow::ipc::reader::{FileDecoder, read_footer_length};
use arrow::ipc::root_as_footer;

/// Decodes the data section. `validate`: check every offset, length and
/// dictionary key against its buffers, as Arrow's reader does by default.
/// Checksums prove the bytes are the ones a writer produced, not that the
/// writer was ours: a file crafted with valid CRCs and broken offsets would
/// make later reads go out of bounds. `Segment::open` validates, once per
/// file on arrival; `Segment::open_trusted` skips it for files that passed.
pub(crate) fn read_ipc(data: &Buffer, validate: bool) -> Result<RecordBatch, String> {
    let bytes = data.as_slice();
    if bytes.len() < 10 {
        return Err("Arrow IPC data too short".into());
    }
    let trailer = bytes.len() - 10;
    let footer_len = read_footer_length(bytes[trailer..].try_into().expect("10 bytes")).map_err(|e| e.to_string())?;
    let footer_start = trailer.checked_sub(footer_len).ok_or("Arrow IPC footer out of bounds")?;
    let footer = root_as_footer(&bytes[footer_start..trailer]).map_err(|e| e.to_string())?;
    let schema = fb_to_schema(footer.schema().ok_or("Arrow IPC footer without schema")?);
    // SAFETY: validation is skipped only for `open_trusted`, whose caller
    // guarantees the file passed `open` (and so this validation) before.
    let mut decoder = unsafe { FileDecoder::new(Arc::new(schema), footer.version()).with_skip_validation(!validate) };
    let block_slice = |block: &arrow::ipc::Block| -> Result<Buffer, String> {
        let start = usize::try_from(block.offset()).map_err(|e| e.to_string())?;
        let len = block.metaDataLength() as usize + block.bodyLength() as usize;
        if start.checked_add(len).is_none_or(|end| end > bytes.len()) {
            return Err("Arrow IPC block out of bounds".into());
        }
        Ok(data.slice_with_length(start, len))
    };
    for block in footer.dictionaries().iter().flatten() {
        decoder.read_dictionary(block, &block_slice(block)?).map_err(|e| e.to_string())?;
    }
    let blocks = footer.recordBatches().ok_or("Arrow IPC file without record batches")?;
    if blocks.len() != 1 {
        return Err(format!("expected one record batch, found {}", blocks.len()));
    }
    let block = blocks.get(0);
    decoder
        .read_record_batch(block, &block_slice(block)?)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "empty Arrow IPC message".to_string())
}
