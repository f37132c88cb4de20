//! The envelope of every JSON record sluice keeps in ZooKeeper
//! (checkpoints, segment records, worker registrations, partition locks):
//! a `format_version` beside the record's own fields.
//!
//! - A record without `format_version` was written before versions existed
//!   (version 0); its fields are read as they were written then.
//! - A record newer than [`FORMAT_VERSION`] is refused with an error that
//!   says so, rather than half-understood: a node of an older sluice never
//!   acts on a record whose meaning may have changed.
//! - Older sluices ignore the `format_version` field (they never refused
//!   unknown fields), so a rolling upgrade can write version 1 while version
//!   0 readers remain.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The version written. 1: the first versioned records (the fields of
/// version 0, unchanged).
pub const FORMAT_VERSION: u32 = 1;

#[derive(Serialize)]
struct Writing<'a, T> {
    format_version: u32,
    #[serde(flatten)]
    record: &'a T,
}

#[derive(Deserialize)]
struct Reading<T> {
    #[serde(default)]
    format_version: u32,
    #[serde(flatten)]
    record: T,
}

/// Why a stored record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("not a record of this kind: {0}")]
    Json(#[from] serde_json::Error),
    #[error("format version {found} is newer than this sluice reads ({FORMAT_VERSION}): upgrade this node")]
    Newer { found: u32 },
}

/// `record` with the current format version.
pub(crate) fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(&Writing { format_version: FORMAT_VERSION, record }).expect("coordination records serialize")
}

/// A record of any version up to [`FORMAT_VERSION`].
pub(crate) fn decode<T: DeserializeOwned>(data: &[u8]) -> Result<T, RecordError> {
    let read: Reading<T> = serde_json::from_slice(data)?;
    if read.format_version > FORMAT_VERSION {
        return Err(RecordError::Newer { found: read.format_version });
    }
    Ok(read.record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Checkpoint, Position, SegmentRecord, WorkerInfo};

    #[test]
    fn records_of_version_0_read_and_are_written_as_version_1() {
        // Verbatim as the previous sluice wrote them (no format_version).
        let checkpoint: Checkpoint =
            decode(br#"{"next_offset":null,"reset_to":{"offset":42},"next_seq":3,"epoch":7}"#).unwrap();
        assert_eq!(checkpoint.reset_to, Some(Position::Offset(42)));
        assert_eq!((checkpoint.next_seq, checkpoint.epoch), (3, 7));
        let segment: SegmentRecord = decode(
            br#"{"name":"t__0__1__20261201T0000Z","partition":0,"seq":1,"start_offset":10,"end_offset":19,"row_count":10,"uri":"s3://b/t/x","size_bytes":100,"crc32c":7,"time_range":[1,2],"created_at_ms":5}"#,
        )
        .unwrap();
        assert_eq!((segment.time_range, segment.offset_gaps), (Some((1, 2)), 0));
        let worker: WorkerInfo =
            decode(br#"{"id":"w1","host":"h","http_addr":"127.0.0.1:9100","started_at_ms":1}"#).unwrap();
        assert_eq!(worker.id, "w1");

        for written in [encode(&checkpoint), encode(&segment), encode(&worker)] {
            let value: serde_json::Value = serde_json::from_slice(&written).unwrap();
            assert_eq!(value["format_version"], FORMAT_VERSION);
        }
        assert_eq!(decode::<Checkpoint>(&encode(&checkpoint)).unwrap(), checkpoint);
        assert_eq!(decode::<SegmentRecord>(&encode(&segment)).unwrap(), segment);
        assert_eq!(decode::<WorkerInfo>(&encode(&worker)).unwrap(), worker);
    }

    #[test]
    fn a_newer_record_is_refused() {
        let newer = br#"{"format_version":2,"id":"w1","host":"h","http_addr":"a","started_at_ms":1}"#;
        let error = decode::<WorkerInfo>(newer).unwrap_err();
        assert!(error.to_string().contains("newer than this sluice reads"), "{error}");
    }
}
