//! A star-tree's records answer exactly what the rows answer: for every
//! subset of its dimensions, with and without a filter, at every leaf size
//! (so through star nodes and leaves alike), the records grouped by the
//! dimensions used give each group's row count, sum, min, max and value
//! count as aggregating the matching rows does.

mod common;

use std::collections::BTreeMap;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use arrow::util::display::array_value_to_string;
use sluice_segments::{CmpOp, ConsumingSegment, Predicate, Scalar, Segment, seal};

use common::STAR_DIMENSIONS as DIMENSIONS;

fn sealed(max_leaf_records: u32, rows: u32, seed: u64) -> Segment {
    let mut segment = ConsumingSegment::new(common::star_tree_schema(max_leaf_records), 1, 0);
    common::fill(&mut segment, rows, seed);
    let image = seal(&segment, "clicks__1__0__20261201T1600Z", 0).unwrap();
    Segment::from_buffer("seg", arrow::buffer::Buffer::from_vec(image.bytes)).unwrap()
}

/// Per group (the used dimensions' values): count, sum, min, max, value count.
type Answer = BTreeMap<Vec<String>, [Option<i64>; 5]>;

fn text(array: &ArrayRef, row: usize) -> String {
    if array.is_null(row) { "NULL".into() } else { array_value_to_string(array, row).unwrap() }
}

/// Aggregates rows (`count` 1 each) or records (their metric columns).
fn fold(answer: &mut Answer, key: Vec<String>, values: [Option<i64>; 5]) {
    let slot = answer.entry(key).or_insert([Some(0), None, None, None, Some(0)]);
    let add = |a: Option<i64>, b: Option<i64>, f: fn(i64, i64) -> i64| match (a, b) {
        (Some(a), Some(b)) => Some(f(a, b)),
        (a, b) => a.or(b),
    };
    slot[0] = add(slot[0], values[0], i64::wrapping_add);
    slot[1] = add(slot[1], values[1], i64::wrapping_add);
    slot[2] = add(slot[2], values[2], i64::min);
    slot[3] = add(slot[3], values[3], i64::max);
    slot[4] = add(slot[4], values[4], i64::wrapping_add);
}

fn from_rows(segment: &Segment, used: &[&str], predicate: Option<&Predicate>) -> Answer {
    let batch = segment.to_record_batch().unwrap();
    let column = |name: &str| batch.column(batch.schema().index_of(name).unwrap()).clone();
    let int64 = |name: &str| arrow::compute::cast(&column(name), &arrow::datatypes::DataType::Int64).unwrap();
    let (bytes, latency, country) = (int64("bytes"), int64("latency_ms"), column("country"));
    let used_columns: Vec<ArrayRef> = used.iter().map(|d| column(d)).collect();
    let int = |a: &ArrayRef, row: usize| (!a.is_null(row)).then(|| a.as_primitive::<Int64Type>().value(row));
    let rows = match predicate {
        Some(p) => segment.evaluate(p).unwrap(),
        None => (0..segment.num_rows()).collect(),
    };
    let mut answer = Answer::new();
    for row in rows {
        let row = row as usize;
        let key = used_columns.iter().map(|c| text(c, row)).collect();
        let l = int(&latency, row);
        fold(&mut answer, key, [Some(1), int(&bytes, row), l, l, Some(i64::from(country.is_valid(row)))]);
    }
    answer
}

fn from_tree(segment: &Segment, used: &[&str], predicate: Option<&Predicate>) -> (Answer, usize) {
    let tree = &segment.star_trees()[0];
    let positions: Vec<usize> = used.iter().map(|d| segment.meta().schema.column_index(d).unwrap()).collect();
    let records: RecordBatch = tree.select(&positions, predicate).unwrap();
    let spec = tree.spec().clone();
    let metric = |i: usize| {
        let (value, count) = tree.metric_columns(&spec.metrics[i]).unwrap();
        (records.column(value).as_primitive::<Int64Type>().clone(), records.column(count).clone())
    };
    let (counts, _) = metric(0);
    let (sums, _) = metric(1);
    let (mins, _) = metric(2);
    let (maxes, _) = metric(3);
    let (country_counts, _) = metric(4);
    let (avg_sums, avg_counts) = metric(5);
    let mut answer = Answer::new();
    for r in 0..records.num_rows() {
        let key = positions.iter().map(|&p| text(records.column(tree.dimension_column(p).unwrap()), r)).collect();
        let get = |a: &arrow::array::Int64Array| (!a.is_null(r)).then(|| a.value(r));
        // AVG keeps a sum and a count: they agree with SUM and MIN's counts.
        assert_eq!(get(&avg_sums).is_some(), avg_counts.as_primitive::<Int64Type>().value(r) > 0);
        fold(&mut answer, key, [get(&counts), get(&sums), get(&mins), get(&maxes), get(&country_counts)]);
    }
    (answer, records.num_rows())
}

fn predicates() -> Vec<(Vec<&'static str>, Predicate)> {
    let s = |v: &str| Scalar::Utf8(v.into());
    vec![
        (vec!["country"], Predicate::compare("country", CmpOp::Eq, s("FR"))),
        (vec!["country"], Predicate::In { column: "country".into(), values: vec![s("DE"), s("US")], negated: false }),
        (vec!["country"], Predicate::IsNull { column: "country".into(), negated: false }),
        (vec!["country"], Predicate::Not(Box::new(Predicate::compare("country", CmpOp::Eq, s("DE"))))),
        (vec!["device"], Predicate::compare("device", CmpOp::Eq, s("mobile"))),
        (
            vec!["status", "device"],
            Predicate::And(vec![
                Predicate::Between {
                    column: "status".into(),
                    low: Scalar::Int32(300),
                    high: Scalar::Int32(500),
                    negated: false,
                },
                Predicate::compare("device", CmpOp::NotEq, s("tablet")),
            ]),
        ),
        (vec!["status"], Predicate::compare("status", CmpOp::Gt, Scalar::Int32(200))),
    ]
}

#[test]
fn records_answer_every_query_on_its_dimensions_as_the_rows_do() {
    for (max_leaf, seed) in [(1, 3), (4, 5), (40, 7), (10_000, 9)] {
        let segment = sealed(max_leaf, 3_000, seed);
        let subsets: Vec<Vec<&str>> = (0..8u32)
            .map(|mask| DIMENSIONS.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, d)| *d).collect())
            .collect();
        for used in &subsets {
            let (tree, _) = from_tree(&segment, used, None);
            assert_eq!(tree, from_rows(&segment, used, None), "leaf {max_leaf}, grouped by {used:?}");
            for (columns, predicate) in predicates() {
                let mut with_filter = used.clone();
                with_filter.extend(columns.iter().filter(|c| !used.contains(c)));
                // Group by what the query groups by; the filter's columns
                // are used as well (the tree must not star them).
                let (tree, _) = from_tree(&segment, &with_filter, Some(&predicate));
                assert_eq!(
                    tree,
                    from_rows(&segment, &with_filter, Some(&predicate)),
                    "leaf {max_leaf}, grouped by {used:?}, where {predicate:?}"
                );
            }
        }
    }
}

#[test]
fn star_nodes_read_fewer_records() {
    let segment = sealed(2, 3_000, 11);
    let tree = &segment.star_trees()[0];
    let (_, all) = from_tree(&segment, &DIMENSIONS, None);
    let (_, by_status) = from_tree(&segment, &["status"], None);
    let (_, none) = from_tree(&segment, &[], None);
    assert!(by_status < all && none < by_status, "{none} < {by_status} < {all} records");
    assert!(tree.num_records() > all, "star records are stored besides the base records");
}

#[test]
fn an_empty_dimension_subset_is_one_total() {
    let segment = sealed(10_000, 500, 13);
    let (answer, _) = from_tree(&segment, &[], None);
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[&Vec::<String>::new()][0], Some(500));
}
