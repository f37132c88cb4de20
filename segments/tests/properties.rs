//! For random schemas, rows (with NULLs) and predicates: indexed evaluation
//! equals a row-by-row brute-force evaluation written independently here, on
//! consuming and on sealed segments; sealed segments read back exactly the
//! rows appended; pruning never rejects a segment that has a match.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type};
use proptest::prelude::*;
use sluice_config::{ColumnType, TimeUnit};
use sluice_segments::types::{f32_order_bits, f64_order_bits};
use sluice_segments::{
    CmpOp, ColumnSpec, ConsumingSegment, Datum, Key, OFFSET_COLUMN, Predicate, Scalar, Segment, SegmentSchema, seal,
};

const TYPES: [ColumnType; 7] = [
    ColumnType::String,
    ColumnType::Bool,
    ColumnType::Int32,
    ColumnType::Int64,
    ColumnType::Float32,
    ColumnType::Float64,
    ColumnType::Timestamp,
];
const STRINGS: [&str; 6] = ["", "a", "ab", "b", "zz", "é"];
const FLOATS: [f64; 8] = [-1.5, -0.0, 0.0, 1.5, 2.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN];

#[derive(Debug, Clone)]
struct Case {
    schema: SegmentSchema,
    rows: Vec<Vec<Scalar>>,
    predicates: Vec<Predicate>,
}

fn value_strategy(ty: ColumnType) -> BoxedStrategy<Scalar> {
    match ty {
        ColumnType::String => prop::sample::select(STRINGS.to_vec()).prop_map(|s| Scalar::Utf8(s.to_string())).boxed(),
        ColumnType::Bool => any::<bool>().prop_map(Scalar::Bool).boxed(),
        ColumnType::Int32 => (-4i32..4).prop_map(Scalar::Int32).boxed(),
        ColumnType::Int64 => prop_oneof![
            (-4i64..4).prop_map(Scalar::Int64),
            Just(Scalar::Int64(i64::MIN)),
            Just(Scalar::Int64(i64::MAX))
        ]
        .boxed(),
        ColumnType::Float32 => prop::sample::select(FLOATS.to_vec()).prop_map(|f| Scalar::Float32(f as f32)).boxed(),
        ColumnType::Float64 => prop::sample::select(FLOATS.to_vec()).prop_map(Scalar::Float64).boxed(),
        ColumnType::Timestamp => (1_700_000_000_000i64..1_700_000_000_008).prop_map(Scalar::Timestamp).boxed(),
    }
}

fn cell_strategy(spec: &ColumnSpec) -> BoxedStrategy<Scalar> {
    if spec.nullable {
        prop_oneof![1 => Just(Scalar::Null), 4 => value_strategy(spec.data_type)].boxed()
    } else {
        value_strategy(spec.data_type)
    }
}

fn literal_strategy(ty: ColumnType) -> BoxedStrategy<Scalar> {
    prop_oneof![1 => Just(Scalar::Null), 8 => value_strategy(ty)].boxed()
}

fn leaf_strategy(columns: Vec<ColumnSpec>) -> BoxedStrategy<Predicate> {
    let n = columns.len();
    (0..n)
        .prop_flat_map(move |i| {
            let c = columns[i].clone();
            let name = c.name.clone();
            let ty = c.data_type;
            let ops = prop::sample::select(vec![CmpOp::Eq, CmpOp::NotEq, CmpOp::Lt, CmpOp::LtEq, CmpOp::Gt, CmpOp::GtEq]);
            prop_oneof![
                4 => (ops, literal_strategy(ty)).prop_map({ let name = name.clone(); move |(op, value)| Predicate::Compare { column: name.clone(), op, value } }),
                2 => (prop::collection::vec(literal_strategy(ty), 0..4), any::<bool>())
                    .prop_map({ let name = name.clone(); move |(values, negated)| Predicate::In { column: name.clone(), values, negated } }),
                2 => (literal_strategy(ty), literal_strategy(ty), any::<bool>())
                    .prop_map({ let name = name.clone(); move |(low, high, negated)| Predicate::Between { column: name.clone(), low, high, negated } }),
                1 => any::<bool>().prop_map(move |negated| Predicate::IsNull { column: name.clone(), negated }),
            ]
        })
        .boxed()
}

fn predicate_strategy(columns: Vec<ColumnSpec>) -> BoxedStrategy<Predicate> {
    leaf_strategy(columns)
        .prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 1..3).prop_map(Predicate::And),
                prop::collection::vec(inner.clone(), 1..3).prop_map(Predicate::Or),
                inner.prop_map(|p| Predicate::Not(Box::new(p))),
            ]
        })
        .boxed()
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let column = (prop::sample::select(TYPES.to_vec()), any::<bool>(), 0u8..16);
    (prop::collection::vec(column, 1..5), any::<bool>(), 0usize..6)
        .prop_flat_map(|(cols, ts_nullable, sorted_pick)| {
            let mut columns = vec![ColumnSpec {
                name: "ts".into(),
                data_type: ColumnType::Timestamp,
                nullable: ts_nullable,
                unit: TimeUnit::Milliseconds,
            }];
            let mut inverted = Vec::new();
            let mut range = Vec::new();
            let mut bloom = Vec::new();
            for (i, (ty, nullable, flags)) in cols.iter().enumerate() {
                let idx = i + 1;
                columns.push(ColumnSpec {
                    name: format!("c{idx}"),
                    data_type: *ty,
                    nullable: *nullable,
                    unit: TimeUnit::Milliseconds,
                });
                if flags & 1 != 0 {
                    inverted.push(idx);
                }
                if flags & 2 != 0 {
                    range.push(idx);
                }
                if flags & 4 != 0 {
                    bloom.push(idx);
                }
            }
            let sorted = (sorted_pick < columns.len()).then_some(sorted_pick);
            let schema = SegmentSchema {
                table: "t".into(),
                columns: columns.clone(),
                time_column: 0,
                sorted,
                inverted,
                range,
                bloom,
                star_trees: vec![],
            };
            let row = columns.iter().map(cell_strategy).collect::<Vec<_>>();
            (Just(schema), prop::collection::vec(row, 0..120), prop::collection::vec(predicate_strategy(columns), 1..6))
        })
        .prop_map(|(schema, rows, predicates)| Case { schema, rows, predicates })
}

fn datum(value: &Scalar) -> Datum<'_> {
    match value {
        Scalar::Null => Datum::Null,
        Scalar::Bool(v) => Datum::Bool(*v),
        Scalar::Int32(v) => Datum::Int32(*v),
        Scalar::Int64(v) => Datum::Int64(*v),
        Scalar::Float32(v) => Datum::Float32(*v),
        Scalar::Float64(v) => Datum::Float64(*v),
        Scalar::Utf8(v) => Datum::Str(v),
        Scalar::Timestamp(v) => Datum::Timestamp(*v),
    }
}

// ---- brute force: three-valued logic, row by row --------------------------

fn key(value: &Scalar) -> Option<Key> {
    Some(match value {
        Scalar::Null => return None,
        Scalar::Bool(v) => Key::Bool(*v),
        Scalar::Int32(v) => Key::Int(i64::from(*v)),
        Scalar::Int64(v) | Scalar::Timestamp(v) => Key::Int(*v),
        Scalar::Float32(v) => Key::Float(f32_order_bits(*v)),
        Scalar::Float64(v) => Key::Float(f64_order_bits(*v)),
        Scalar::Utf8(v) => Key::Str(v.as_str().into()),
    })
}

/// Some(true) TRUE, Some(false) FALSE, None UNKNOWN.
// `None` is UNKNOWN, not failure: the fold must not stop at it, so not try_fold.
#[allow(clippy::manual_try_fold)]
fn brute(schema: &SegmentSchema, row: &[Scalar], p: &Predicate) -> Option<bool> {
    let cell = |name: &str| key(&row[schema.column_index(name).unwrap()]);
    let cmp = |a: Option<Key>, b: Option<Key>| -> Option<Ordering> { Some(a?.cmp(&b?)) };
    let and = |a: Option<bool>, b: Option<bool>| match (a, b) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    };
    let or = |a: Option<bool>, b: Option<bool>| match (a, b) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (Some(false), Some(false)) => Some(false),
        _ => None,
    };
    match p {
        Predicate::Compare { column, op, value } => cmp(cell(column), key(value)).map(|o| match op {
            CmpOp::Eq => o == Ordering::Equal,
            CmpOp::NotEq => o != Ordering::Equal,
            CmpOp::Lt => o == Ordering::Less,
            CmpOp::LtEq => o != Ordering::Greater,
            CmpOp::Gt => o == Ordering::Greater,
            CmpOp::GtEq => o != Ordering::Less,
        }),
        Predicate::In { column, values, negated } => {
            let mut acc = Some(false);
            for v in values {
                acc = or(acc, cmp(cell(column), key(v)).map(|o| o == Ordering::Equal));
            }
            if *negated { acc.map(|b| !b) } else { acc }
        }
        Predicate::Between { column, low, high, negated } => {
            let ge = cmp(cell(column), key(low)).map(|o| o != Ordering::Less);
            let le = cmp(cell(column), key(high)).map(|o| o != Ordering::Greater);
            let r = and(ge, le);
            if *negated { r.map(|b| !b) } else { r }
        }
        Predicate::IsNull { column, negated } => Some(cell(column).is_none() != *negated),
        Predicate::Not(inner) => brute(schema, row, inner).map(|b| !b),
        Predicate::And(ps) => ps.iter().fold(Some(true), |acc, p| and(acc, brute(schema, row, p))),
        Predicate::Or(ps) => ps.iter().fold(Some(false), |acc, p| or(acc, brute(schema, row, p))),
        Predicate::Constant(truth) => *truth,
    }
}

fn offsets_of(batch: &arrow::array::RecordBatch) -> BTreeSet<i64> {
    batch.column(0).as_primitive::<Int64Type>().values().iter().copied().collect()
}

/// Each row's value at a column, via the scalar view of an Arrow array.
fn scalar_at(array: &dyn Array, row: usize, ty: ColumnType) -> Scalar {
    use arrow::datatypes::*;
    if array.is_null(row) {
        return Scalar::Null;
    }
    match ty {
        ColumnType::String => Scalar::Utf8(array.as_string::<i32>().value(row).to_string()),
        ColumnType::Bool => Scalar::Bool(array.as_boolean().value(row)),
        ColumnType::Int32 => Scalar::Int32(array.as_primitive::<Int32Type>().value(row)),
        ColumnType::Int64 => Scalar::Int64(array.as_primitive::<Int64Type>().value(row)),
        ColumnType::Float32 => Scalar::Float32(array.as_primitive::<Float32Type>().value(row)),
        ColumnType::Float64 => Scalar::Float64(array.as_primitive::<Float64Type>().value(row)),
        ColumnType::Timestamp => Scalar::Timestamp(array.as_primitive::<TimestampMillisecondType>().value(row)),
    }
}

fn same(a: &Scalar, b: &Scalar) -> bool {
    key(a) == key(b)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// A segment without live statistics computes, when asked, exactly the
    /// min/max/NULL counts one with them observed row by row.
    #[test]
    fn stats_from_buffers_equal_live_stats(case in case_strategy()) {
        let schema = Arc::new(case.schema.clone());
        let mut live = ConsumingSegment::with_live_indexes(schema.clone(), 0, 0);
        let mut plain = ConsumingSegment::new(schema.clone(), 0, 0);
        for (offset, row) in case.rows.iter().enumerate() {
            let datums: Vec<Datum> = row.iter().map(datum).collect();
            live.append(offset as i64, &datums).unwrap();
            plain.append(offset as i64, &datums).unwrap();
        }
        for (c, spec) in schema.columns.iter().enumerate() {
            // In key space: NaN equals itself there, as pruning sees it.
            let (a, b) = (plain.column_stats(c), live.column_stats(c));
            prop_assert_eq!(a.key_range(spec.data_type), b.key_range(spec.data_type), "column {}", spec.name.clone());
            prop_assert_eq!(a.null_count, b.null_count);
        }
    }

    /// Binding a column to one row's value (as a segment written before
    /// the column was added answers it) gives, for that row, the truth of
    /// the predicate itself: three-valued logic, NULLs and NaN included.
    #[test]
    fn a_bound_column_answers_as_its_value_does(case in case_strategy(), pick in 0usize..8) {
        for row in case.rows.iter().take(20) {
            let column = pick % case.schema.columns.len();
            let spec = &case.schema.columns[column];
            for predicate in &case.predicates {
                let bound = predicate.bind(&|name: &str| {
                    (name == spec.name).then(|| (spec.data_type, row[column].clone()))
                });
                prop_assert!(!bound.columns().contains(&spec.name.as_str()), "{:?}", bound);
                prop_assert_eq!(brute(&case.schema, row, &bound), brute(&case.schema, row, predicate), "{:?}", predicate);
            }
        }
    }

    #[test]
    fn indexed_evaluation_equals_brute_force(case in case_strategy()) {
        let schema = Arc::new(case.schema.clone());
        let mut consuming = ConsumingSegment::with_live_indexes(schema.clone(), 3, 100);
        let mut offset = 100;
        for row in &case.rows {
            let datums: Vec<Datum> = row.iter().map(datum).collect();
            consuming.append(offset, &datums).unwrap();
            offset += 1 + (offset % 3); // gaps, as compaction leaves them
        }
        consuming.skip(offset).unwrap();
        let image = seal(&consuming, "t__3__0__20261125T0000Z", 0).unwrap();
        let sealed = Segment::from_buffer("prop", arrow::buffer::Buffer::from_vec(image.bytes)).unwrap();
        prop_assert_eq!(sealed.meta().end_offset, offset);

        // Round trip: the sealed segment holds exactly the rows appended.
        let all = sealed.to_record_batch().unwrap();
        let offset_col = all.column(all.num_columns() - 1).as_primitive::<Int64Type>().clone();
        prop_assert_eq!(all.num_rows(), case.rows.len());
        let mut row_offset = 100;
        let mut expected_by_offset = std::collections::BTreeMap::new();
        for row in &case.rows {
            expected_by_offset.insert(row_offset, row.clone());
            row_offset += 1 + (row_offset % 3);
        }
        for r in 0..all.num_rows() {
            let expected = &expected_by_offset[&offset_col.value(r)];
            for (c, spec) in schema.columns.iter().enumerate() {
                let got = scalar_at(all.column(c).as_ref(), r, spec.data_type);
                prop_assert!(same(&got, &expected[c]), "row {} column {}: {:?} != {:?}", r, spec.name, got, expected[c]);
            }
        }

        for predicate in &case.predicates {
            let expected: BTreeSet<i64> = expected_by_offset
                .iter()
                .filter(|(_, row)| brute(&schema, row, predicate) == Some(true))
                .map(|(o, _)| *o)
                .collect();
            let live = consuming.evaluate(predicate).unwrap();
            let live_offsets = offsets_of(&consuming.materialize(&live, &[OFFSET_COLUMN]).unwrap());
            prop_assert_eq!(&live_offsets, &expected, "consuming segment, {:?}", predicate);
            let rows = sealed.evaluate(predicate).unwrap();
            let sealed_offsets = offsets_of(&sealed.materialize(&rows, &[OFFSET_COLUMN]).unwrap());
            prop_assert_eq!(&sealed_offsets, &expected, "sealed segment, {:?}", predicate);
            // Strings as the query engine reads them (views, gathered from a
            // dictionary's when the column has one): the same values.
            let all_schema = all.schema();
            let names: Vec<&str> = all_schema.fields().iter().map(|f| f.name().as_str()).collect();
            let plain = sealed.materialize(&rows, &names).unwrap();
            let types: Vec<DataType> = plain.schema().fields().iter().map(|f| match f.data_type() {
                DataType::Utf8 => DataType::Utf8View,
                other => other.clone(),
            }).collect();
            let viewed = sealed.materialize_as(&rows, &names, &types).unwrap();
            for (c, column) in viewed.iter().enumerate() {
                let expected = arrow::compute::cast(plain.column(c), &types[c]).unwrap();
                prop_assert_eq!(column.as_ref(), expected.as_ref(), "column {} as {}", names[c], types[c]);
            }
            if !expected.is_empty() {
                prop_assert!(consuming.can_match(predicate), "consuming pruned a match: {:?}", predicate);
                prop_assert!(sealed.can_match(predicate), "sealed pruned a match: {:?}", predicate);
            }
        }
    }
}
