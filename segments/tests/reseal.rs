//! `reseal` gives the segment a consuming segment holding the same rows would
//! have sealed into: merged chunks equal one segment sealed whole, and a cut
//! equals a segment that started at the cut.

mod common;

use std::sync::Arc;

use common::{COUNTRIES, DEVICES, Rng, clickstream_schema};
use sluice_segments::{CmpOp, ConsumingSegment, Datum, Predicate, Scalar, SegmentSchema, reseal, seal};

/// Offset 100..=105 held no record (a gap) and offset 150 a bad one.
fn present(offset: i64) -> bool {
    !(100..=105).contains(&offset)
}

fn consume(schema: &Arc<SegmentSchema>, offsets: std::ops::Range<i64>) -> ConsumingSegment {
    let mut segment = ConsumingSegment::new(schema.clone(), 0, offsets.start);
    for offset in offsets.filter(|o| present(*o)) {
        if offset == 150 {
            segment.skip(offset).unwrap();
            continue;
        }
        // The row depends on the offset only, so every segment holding an
        // offset holds the same row for it.
        let mut rng = Rng(offset as u64 * 7919 + 1);
        let (user, url) = (format!("u-{}", rng.below(50)), format!("/p/{}", rng.below(500)));
        let row = [
            Datum::Timestamp(1_764_000_000_000 + offset * 10),
            Datum::Str(&user),
            if rng.below(10) == 0 { Datum::Null } else { Datum::Str(COUNTRIES[rng.below(8) as usize]) },
            Datum::Str(DEVICES[rng.below(3) as usize]),
            Datum::Str(&url),
            Datum::Int32([200, 301, 404, 500][rng.below(4) as usize]),
            if rng.below(7) == 0 { Datum::Null } else { Datum::Int32(rng.below(2_000) as i32) },
            Datum::Int64(rng.below(1 << 20) as i64),
            Datum::Float64(rng.below(10_000) as f64 / 100.0),
            Datum::Bool(rng.below(20) == 0),
        ];
        segment.append(offset, &row).unwrap();
    }
    segment
}

fn sealed(schema: &Arc<SegmentSchema>, offsets: std::ops::Range<i64>) -> sluice_segments::Segment {
    seal(&consume(schema, offsets), "s", 7).unwrap().open().unwrap()
}

fn assert_same(a: &sluice_segments::Segment, b: &sluice_segments::Segment) {
    let (mut ma, mut mb) = (a.meta().clone(), b.meta().clone());
    ma.name = String::new();
    mb.name = String::new();
    assert_eq!(ma, mb);
    assert_eq!(a.to_record_batch().unwrap(), b.to_record_batch().unwrap());
    let predicates = [
        Predicate::compare("country", CmpOp::Eq, Scalar::Utf8("DE".into())),
        Predicate::compare("status", CmpOp::Eq, Scalar::Int32(404)),
        Predicate::compare("latency_ms", CmpOp::Gt, Scalar::Int32(1_000)),
        Predicate::compare("user_id", CmpOp::Eq, Scalar::Utf8("u-7".into())),
        Predicate::IsNull { column: "country".into(), negated: false },
    ];
    for p in &predicates {
        assert_eq!(a.evaluate(p).unwrap(), b.evaluate(p).unwrap(), "{p:?}");
    }
}

#[test]
fn merged_chunks_equal_one_segment_sealed_whole() {
    for sorted in [None, Some("latency_ms"), Some("ts")] {
        let schema = clickstream_schema(sorted);
        let chunks = [sealed(&schema, 0..100), sealed(&schema, 100..200), sealed(&schema, 200..300)];
        let parts: Vec<_> = chunks.iter().collect();
        let merged = reseal(&parts, 0, "merged", 7).unwrap().unwrap().open().unwrap();
        assert_same(&merged, &sealed(&schema, 0..300));
        assert_eq!(merged.meta().offset_gaps, vec![(100, 105)]);
        assert_eq!(merged.meta().name, "merged");
    }
}

#[test]
fn a_cut_equals_a_segment_that_started_there() {
    let schema = clickstream_schema(Some("latency_ms"));
    let chunks = [sealed(&schema, 0..120), sealed(&schema, 120..300)];
    let parts: Vec<_> = chunks.iter().collect();
    for from in [0, 50, 102, 120, 150, 151, 299] {
        let cut = reseal(&parts, from, "cut", 7).unwrap().unwrap().open().unwrap();
        assert_same(&cut, &sealed(&schema, from..300));
    }
    assert!(reseal(&parts, 300, "cut", 7).unwrap().is_none(), "nothing at or above 300");
    assert!(reseal(&[], 0, "cut", 7).unwrap().is_none());
}

#[test]
fn segments_that_are_not_adjacent_are_refused() {
    let schema = clickstream_schema(None);
    let (a, b) = (sealed(&schema, 0..100), sealed(&schema, 50..150));
    assert!(reseal(&[&a, &b], 0, "x", 7).is_err(), "overlapping");
    assert!(reseal(&[&b, &a], 0, "x", 7).is_err(), "out of order");
}
