//! Consuming-segment behaviour: bad rows change nothing, offsets, memory.

mod common;

use arrow::array::Array;
use sluice_config::ColumnType;
use sluice_segments::{CmpOp, ConsumingSegment, Datum, Predicate, RowError, Scalar, seal};

/// Metadata written before `offset_gaps` existed reads as "no gaps"; an
/// empty list is not written, so files without gaps are byte-identical to
/// the previous version's.
#[test]
fn metadata_of_the_previous_version_reads_without_gaps() {
    let mut segment = ConsumingSegment::with_live_indexes(common::clickstream_schema(None), 0, 0);
    common::fill(&mut segment, 10, 7);
    let image = seal(&segment, "s", 0).unwrap();
    let json = serde_json::to_value(&image.meta).unwrap();
    assert!(json.get("offset_gaps").is_none(), "not written when empty");
    let previous: sluice_segments::SegmentMeta = serde_json::from_value(json).unwrap();
    assert!(previous.offset_gaps.is_empty());
}

#[test]
fn a_bad_row_is_refused_and_leaves_the_segment_unchanged() {
    let schema = common::clickstream_schema(None);
    let mut segment = ConsumingSegment::with_live_indexes(schema, 0, 0);
    common::fill(&mut segment, 10, 7);
    let before = segment.to_record_batch().unwrap();
    let memory = segment.memory_bytes();

    let mut row = vec![Datum::Timestamp(1), Datum::Str("u"), Datum::Null, Datum::Null, Datum::Null, Datum::Int32(200)];
    row.extend([Datum::Null, Datum::Null, Datum::Null, Datum::Null]);
    // Wrong type in a required column, after valid values in earlier columns.
    let mut wrong = row.clone();
    wrong[5] = Datum::Str("200");
    assert_eq!(
        segment.append(10, &wrong),
        Err(RowError::TypeMismatch { column: "status".into(), expected: ColumnType::Int32, found: "string" })
    );
    let mut null_required = row.clone();
    null_required[1] = Datum::Null;
    assert_eq!(segment.append(10, &null_required), Err(RowError::NullInRequired { column: "user_id".into() }));
    assert_eq!(segment.append(10, &row[..3]), Err(RowError::Arity { expected: 10, found: 3 }));
    assert_eq!(segment.append(9, &row), Err(RowError::OffsetNotIncreasing { offset: 9, last: 9 }));

    assert_eq!(segment.to_record_batch().unwrap(), before, "no partial row was written");
    assert_eq!(segment.memory_bytes(), memory);
    assert_eq!(segment.row_count(), 10);
    // ... and the segment keeps accepting rows, live indexes included.
    segment.append(10, &row).unwrap();
    assert_eq!(segment.row_count(), 11);
    let status_200 = segment.evaluate(&Predicate::compare("status", CmpOp::Eq, Scalar::Int32(200))).unwrap();
    assert!(status_200.contains(10));
}

#[test]
fn offsets_skipped_records_and_the_next_checkpoint() {
    let mut segment = ConsumingSegment::with_live_indexes(common::clickstream_schema(None), 4, 1_000);
    assert_eq!(segment.next_offset(), 1_000);
    assert!(seal(&segment, "s", 0).is_err(), "nothing consumed, nothing to seal");
    segment.skip(1_000).unwrap();
    segment.skip(1_003).unwrap();
    assert_eq!(segment.next_offset(), 1_004);
    assert!(segment.skip(1_002).is_err());
    let image = seal(&segment, "s", 0).unwrap();
    assert_eq!((image.meta.start_offset, image.meta.end_offset, image.meta.row_count), (1_000, 1_003, 0));
    // 1,001 and 1,002 never arrived: a gap, kept in the metadata.
    assert_eq!(image.meta.offset_gaps, vec![(1_001, 1_002)]);
    let sealed = image.open().unwrap();
    assert_eq!(sealed.num_rows(), 0);
    assert!(sealed.evaluate(&Predicate::IsNull { column: "country".into(), negated: true }).unwrap().is_empty());
}

#[test]
fn reported_memory_is_within_one_and_a_half_times_the_arrow_size_plus_indexes() {
    for rows in [1_000u32, 50_000, 200_000] {
        let mut segment = ConsumingSegment::with_live_indexes(common::clickstream_schema(None), 0, 0);
        common::fill(&mut segment, rows, 11);
        let reported = segment.memory_bytes() as f64;
        let arrow: usize = segment.arrays().iter().map(|a| a.to_data().get_slice_memory_size().unwrap()).sum();
        let actual = (arrow + segment.index_memory_bytes()) as f64;
        let ratio = reported / actual;
        println!("{rows} rows: reported {reported} bytes, arrow + indexes {actual} bytes, ratio {ratio:.3}");
        assert!((1.0 / 1.5..=1.5).contains(&ratio), "{rows} rows: ratio {ratio}");
    }
}

#[test]
fn sealing_sorts_dictionary_encodes_and_keeps_stats() {
    let schema = common::clickstream_schema(Some("country"));
    let mut segment = ConsumingSegment::with_live_indexes(schema, 2, 0);
    common::fill(&mut segment, 5_000, 3);
    let image = seal(&segment, "clicks__2__0__20261125T1000Z", 42).unwrap();
    let meta = image.meta.clone();
    assert_eq!(meta.row_count, 5_000);
    let country = meta.columns.iter().find(|c| c.name == "country").unwrap();
    assert_eq!(country.encoding, sluice_segments::Encoding::Dictionary);
    assert_eq!(country.stats.distinct_count, Some(8));
    assert_eq!(country.stats.min, Some(Scalar::Utf8("AU".into())));
    assert_eq!(meta.time_range, Some((1_764_000_000_000, 1_764_000_000_000 + 4_999 * 10)));
    let sealed = image.open().unwrap();
    let batch = sealed.to_record_batch().unwrap();
    let countries = arrow::compute::cast(batch.column(2), &arrow::datatypes::DataType::Utf8).unwrap();
    let countries = countries.as_any().downcast_ref::<arrow::array::StringArray>().unwrap();
    let values: Vec<Option<&str>> = countries.iter().collect();
    let mut sorted = values.clone();
    sorted.sort();
    assert_eq!(values, sorted, "rows are sorted by the sorted column, NULLs first");
    assert_eq!(batch.schema().field(2).data_type(), &arrow::datatypes::DataType::Utf8, "logical type out");
    // Pruning: a value outside min/max or absent from the bloom filter.
    assert!(!sealed.can_match(&Predicate::compare("country", CmpOp::Eq, Scalar::Utf8("ZZ".into()))));
    assert!(!sealed.can_match(&Predicate::compare("user_id", CmpOp::Eq, Scalar::Utf8("u-nobody".into()))));
    assert!(sealed.can_match(&Predicate::compare("country", CmpOp::Eq, Scalar::Utf8("DE".into()))));
}
