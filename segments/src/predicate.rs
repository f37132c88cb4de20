//! Predicates over a segment's columns, evaluated to roaring bitmaps of row
//! ids with SQL's three-valued logic, and segment pruning from statistics.
//!
//! Evaluation keeps two sets per node: the rows where it is TRUE and the rows
//! where it is UNKNOWN (NULL); every other row is FALSE. A comparison with a
//! NULL operand is UNKNOWN, so `x = v` and `x != v` both skip NULL rows, and
//! `NOT` of UNKNOWN stays UNKNOWN. A `WHERE` keeps the TRUE rows only.
//!
//! Each leaf uses an index when the segment has one for the column and a
//! vectorised Arrow scan otherwise; both follow the total order of
//! [`crate::types`], so the two paths agree on every input.

use std::ops::Bound;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Scalar as ArrowScalar};
use arrow::compute::kernels::cmp;
use arrow::datatypes::{DataType, Int32Type};
use roaring::RoaringBitmap;
use sluice_config::ColumnType;

use crate::error::SegmentError;
use crate::stats::ColumnStats;
use crate::types::{Key, Scalar, key_array};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CmpOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

impl CmpOp {
    pub fn negate(self) -> CmpOp {
        match self {
            CmpOp::Eq => CmpOp::NotEq,
            CmpOp::NotEq => CmpOp::Eq,
            CmpOp::Lt => CmpOp::GtEq,
            CmpOp::LtEq => CmpOp::Gt,
            CmpOp::Gt => CmpOp::LtEq,
            CmpOp::GtEq => CmpOp::Lt,
        }
    }
}

/// Serializable: distributed queries send it to the nodes that evaluate it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Predicate {
    Compare {
        column: String,
        op: CmpOp,
        value: Scalar,
    },
    In {
        column: String,
        values: Vec<Scalar>,
        negated: bool,
    },
    Between {
        column: String,
        low: Scalar,
        high: Scalar,
        negated: bool,
    },
    IsNull {
        column: String,
        negated: bool,
    },
    And(Vec<Predicate>),
    Or(Vec<Predicate>),
    Not(Box<Predicate>),
    /// The same truth for every row: TRUE, FALSE or (None) UNKNOWN. What a
    /// leaf over a column the segment lacks becomes ([`Predicate::bind`]).
    Constant(Option<bool>),
}

impl Predicate {
    pub fn compare(column: &str, op: CmpOp, value: Scalar) -> Self {
        Predicate::Compare { column: column.to_string(), op, value }
    }

    /// Negation normal form: `NOT` pushed down to the leaves (De Morgan holds
    /// in three-valued logic), so pruning can reason about leaves alone.
    pub fn to_nnf(&self) -> Predicate {
        self.nnf(false)
    }

    fn nnf(&self, negate: bool) -> Predicate {
        match self {
            Predicate::Not(inner) => inner.nnf(!negate),
            Predicate::And(ps) | Predicate::Or(ps) => {
                let children = ps.iter().map(|p| p.nnf(negate)).collect();
                match (self, negate) {
                    (Predicate::And(_), false) | (Predicate::Or(_), true) => Predicate::And(children),
                    _ => Predicate::Or(children),
                }
            }
            Predicate::Compare { column, op, value } if negate => {
                Predicate::Compare { column: column.clone(), op: op.negate(), value: value.clone() }
            }
            Predicate::In { column, values, negated } if negate => {
                Predicate::In { column: column.clone(), values: values.clone(), negated: !negated }
            }
            Predicate::Between { column, low, high, negated } if negate => {
                Predicate::Between { column: column.clone(), low: low.clone(), high: high.clone(), negated: !negated }
            }
            Predicate::IsNull { column, negated } if negate => {
                Predicate::IsNull { column: column.clone(), negated: !negated }
            }
            Predicate::Constant(truth) if negate => Predicate::Constant(truth.map(|t| !t)),
            leaf => leaf.clone(),
        }
    }

    /// Every column the predicate reads.
    pub fn columns(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.collect_columns(&mut out);
        out
    }

    fn collect_columns<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Predicate::Compare { column, .. }
            | Predicate::In { column, .. }
            | Predicate::Between { column, .. }
            | Predicate::IsNull { column, .. } => out.push(column),
            Predicate::And(ps) | Predicate::Or(ps) => ps.iter().for_each(|p| p.collect_columns(out)),
            Predicate::Not(p) => p.collect_columns(out),
            Predicate::Constant(_) => {}
        }
    }

    /// The predicate with each leaf over a column `constant` knows replaced
    /// by its truth for that column's one value (`Scalar::Null` for NULL),
    /// in SQL's three-valued logic: how a segment written before a column
    /// was added answers a filter on it (every row holds the column's
    /// default). A leaf whose literal does not fit the column's type stays.
    pub fn bind(&self, constant: &dyn Fn(&str) -> Option<(ColumnType, Scalar)>) -> Predicate {
        let truth = |leaf: &Predicate, column: &str, of: &dyn Fn(ColumnType, Option<Key>) -> Option<Option<bool>>| {
            let Some((ty, value)) = constant(column) else { return leaf.clone() };
            match value.key_for(ty).ok().and_then(|key| of(ty, key)) {
                Some(truth) => Predicate::Constant(truth),
                None => leaf.clone(),
            }
        };
        match self {
            Predicate::And(ps) => Predicate::And(ps.iter().map(|p| p.bind(constant)).collect()),
            Predicate::Or(ps) => Predicate::Or(ps.iter().map(|p| p.bind(constant)).collect()),
            Predicate::Not(p) => Predicate::Not(Box::new(p.bind(constant))),
            Predicate::Constant(_) => self.clone(),
            Predicate::IsNull { column, negated } => {
                truth(self, column, &|_, value| Some(Some(value.is_none() != *negated)))
            }
            Predicate::Compare { column, op, value: literal } => truth(self, column, &|ty, value| {
                let literal = literal.key_for(ty).ok()?;
                let (Some(value), Some(literal)) = (value, literal) else { return Some(None) };
                let ordering = value.cmp(&literal);
                Some(Some(match op {
                    CmpOp::Eq => ordering.is_eq(),
                    CmpOp::NotEq => ordering.is_ne(),
                    CmpOp::Lt => ordering.is_lt(),
                    CmpOp::LtEq => ordering.is_le(),
                    CmpOp::Gt => ordering.is_gt(),
                    CmpOp::GtEq => ordering.is_ge(),
                }))
            }),
            Predicate::Between { column, low, high, negated } => {
                // As the conjunction it abbreviates (NULL bounds included).
                let both = Predicate::And(vec![
                    Predicate::compare(column, CmpOp::GtEq, low.clone()),
                    Predicate::compare(column, CmpOp::LtEq, high.clone()),
                ]);
                let both = if *negated { Predicate::Not(Box::new(both)) } else { both };
                match constant(column) {
                    Some(_) => both.bind(constant),
                    None => self.clone(),
                }
            }
            Predicate::In { column, values, negated } => truth(self, column, &|ty, value| {
                let keys: Vec<Option<Key>> = values.iter().map(|v| v.key_for(ty)).collect::<Result<_, _>>().ok()?;
                // An empty list is FALSE for every row, NULL included.
                let matched = match value {
                    _ if keys.is_empty() => Some(false),
                    None => None,
                    Some(value) if keys.iter().flatten().any(|k| *k == value) => Some(true),
                    Some(_) if keys.iter().any(Option::is_none) => None,
                    Some(_) => Some(false),
                };
                Some(matched.map(|m| m != *negated))
            }),
        }
    }
}

/// What predicate evaluation needs from a segment, consuming or sealed.
pub(crate) trait Columns {
    fn num_rows(&self) -> u32;
    /// Column position and type by name.
    fn resolve(&self, column: &str) -> Option<(usize, ColumnType)>;
    /// The column as an Arrow array (plain or dictionary-encoded).
    fn array(&self, column: usize) -> Result<ArrayRef, SegmentError>;
    /// Rows equal to `key`, when an index answers it.
    fn lookup_eq(&self, column: usize, key: &Key) -> Result<Option<RoaringBitmap>, SegmentError>;
    /// Rows in a key range, when an index answers it.
    fn lookup_range(
        &self,
        column: usize,
        low: Bound<&Key>,
        high: Bound<&Key>,
    ) -> Result<Option<RoaringBitmap>, SegmentError>;
    /// Rows where the column is NULL.
    fn nulls(&self, column: usize) -> Result<RoaringBitmap, SegmentError>;
}

/// The rows where `array` is NULL, from its validity buffer.
pub(crate) fn null_rows(array: &dyn Array) -> RoaringBitmap {
    let Some(nulls) = array.logical_nulls() else { return RoaringBitmap::new() };
    if nulls.null_count() == 0 {
        return RoaringBitmap::new();
    }
    let invalid = !nulls.inner();
    RoaringBitmap::from_sorted_iter(invalid.set_indices().map(|i| i as u32)).expect("ascending")
}

/// TRUE and UNKNOWN rows of a predicate.
struct Truth {
    yes: RoaringBitmap,
    unknown: RoaringBitmap,
}

/// Rows for which `predicate` is TRUE.
pub(crate) fn evaluate(segment: &dyn Columns, predicate: &Predicate) -> Result<RoaringBitmap, SegmentError> {
    let mut eval =
        Evaluator { segment, all: std::cell::OnceCell::new(), arrays: Default::default(), nulls: Default::default() };
    Ok(eval.eval(predicate, false)?.yes)
}

fn full(rows: u32) -> RoaringBitmap {
    let mut all = RoaringBitmap::new();
    all.insert_range(0..rows);
    all
}

struct Evaluator<'a> {
    segment: &'a dyn Columns,
    /// Every row; built only when a negation or NULL handling needs it.
    all: std::cell::OnceCell<RoaringBitmap>,
    /// Arrays fetched once per evaluation (a consuming segment builds them).
    arrays: std::collections::HashMap<usize, ArrayRef>,
    /// NULL rows per column, fetched when first needed.
    nulls: std::collections::HashMap<usize, RoaringBitmap>,
}

impl Evaluator<'_> {
    fn all(&self) -> &RoaringBitmap {
        self.all.get_or_init(|| full(self.segment.num_rows()))
    }

    fn column(&self, name: &str) -> Result<(usize, ColumnType), SegmentError> {
        self.segment.resolve(name).ok_or_else(|| SegmentError::Predicate(format!("unknown column `{name}`")))
    }

    fn key(&self, ty: ColumnType, value: &Scalar) -> Result<Option<Key>, SegmentError> {
        value.key_for(ty).map_err(SegmentError::Predicate)
    }

    fn array(&mut self, column: usize) -> Result<ArrayRef, SegmentError> {
        if let Some(array) = self.arrays.get(&column) {
            return Ok(array.clone());
        }
        let array = self.segment.array(column)?;
        self.arrays.insert(column, array.clone());
        Ok(array)
    }

    /// The rows where the column is NULL, fetched once per evaluation.
    fn nulls(&mut self, column: usize) -> Result<RoaringBitmap, SegmentError> {
        if let Some(nulls) = self.nulls.get(&column) {
            return Ok(nulls.clone());
        }
        let nulls = self.segment.nulls(column)?;
        self.nulls.insert(column, nulls.clone());
        Ok(nulls)
    }

    /// TRUE rows, and UNKNOWN rows when `want_unknown`: only a `NOT` turns
    /// UNKNOWN into anything, so outside one the UNKNOWN sets (and the NULL
    /// bitmaps they are built from, the bulk of a simple filter's work) are
    /// not computed.
    fn eval(&mut self, predicate: &Predicate, want_unknown: bool) -> Result<Truth, SegmentError> {
        let none = RoaringBitmap::new;
        Ok(match predicate {
            Predicate::Compare { column, op, value } => {
                let (col, ty) = self.column(column)?;
                match self.key(ty, value)? {
                    None if want_unknown => self.all_unknown(),
                    None => Truth { yes: none(), unknown: none() },
                    Some(key) => {
                        let yes = self.compare(col, *op, &key)?;
                        let unknown = if want_unknown { self.nulls(col)? } else { none() };
                        Truth { yes, unknown }
                    }
                }
            }
            Predicate::Between { column, low, high, negated } => {
                let (col, ty) = self.column(column)?;
                match (self.key(ty, low)?, self.key(ty, high)?) {
                    (Some(lo), Some(hi)) => {
                        let inside = if lo <= hi {
                            self.range(col, Bound::Included(&lo), Bound::Included(&hi))?
                        } else {
                            RoaringBitmap::new()
                        };
                        let yes = if *negated { &(self.all() - &inside) - &self.nulls(col)? } else { inside };
                        let unknown = if want_unknown { self.nulls(col)? } else { none() };
                        Truth { yes, unknown }
                    }
                    _ => {
                        // A NULL bound: evaluate as the conjunction it abbreviates.
                        let expanded = Predicate::And(vec![
                            Predicate::compare(column, CmpOp::GtEq, low.clone()),
                            Predicate::compare(column, CmpOp::LtEq, high.clone()),
                        ]);
                        let expanded = if *negated { Predicate::Not(Box::new(expanded)) } else { expanded };
                        self.eval(&expanded, want_unknown)?
                    }
                }
            }
            Predicate::In { column, values, negated } => {
                let (col, ty) = self.column(column)?;
                let mut matched = RoaringBitmap::new();
                let mut null_in_list = false;
                for value in values {
                    match self.key(ty, value)? {
                        Some(key) => matched |= self.compare(col, CmpOp::Eq, &key)?,
                        None => null_in_list = true,
                    }
                }
                // With a NULL in the list, a row that matches no other item is
                // UNKNOWN rather than FALSE (for IN and NOT IN alike).
                // An empty list is an empty OR: FALSE for every row, NULLs too.
                let unknown = if !want_unknown && !*negated {
                    none()
                } else if null_in_list {
                    self.all() - &matched
                } else if values.is_empty() {
                    RoaringBitmap::new()
                } else {
                    self.nulls(col)?
                };
                let yes = if *negated { &(self.all() - &matched) - &unknown } else { matched };
                Truth { yes, unknown }
            }
            Predicate::IsNull { column, negated } => {
                let (col, _) = self.column(column)?;
                let nulls = self.nulls(col)?;
                let yes = if *negated { self.all() - &nulls } else { nulls };
                Truth { yes, unknown: RoaringBitmap::new() }
            }
            Predicate::Constant(Some(true)) => Truth { yes: self.all().clone(), unknown: none() },
            Predicate::Constant(Some(false)) => Truth { yes: none(), unknown: none() },
            Predicate::Constant(None) if want_unknown => self.all_unknown(),
            Predicate::Constant(None) => Truth { yes: none(), unknown: none() },
            Predicate::Not(inner) => {
                let t = self.eval(inner, true)?;
                let yes = &(self.all() - &t.yes) - &t.unknown;
                Truth { yes, unknown: if want_unknown { t.unknown } else { none() } }
            }
            Predicate::And(children) if !want_unknown => {
                let mut yes: Option<RoaringBitmap> = None;
                for child in children {
                    let t = self.eval(child, false)?;
                    yes = Some(match yes {
                        Some(acc) => acc & t.yes,
                        None => t.yes,
                    });
                }
                Truth { yes: yes.unwrap_or_else(|| self.all().clone()), unknown: none() }
            }
            Predicate::And(children) => {
                let mut acc = Truth { yes: self.all().clone(), unknown: RoaringBitmap::new() };
                for child in children {
                    let t = self.eval(child, true)?;
                    // TRUE in both; UNKNOWN where neither is FALSE and one is UNKNOWN.
                    let not_false_acc = &acc.yes | &acc.unknown;
                    let not_false_t = &t.yes | &t.unknown;
                    let unknown = &(&not_false_acc & &not_false_t) & &(&acc.unknown | &t.unknown);
                    acc = Truth { yes: &acc.yes & &t.yes, unknown };
                }
                acc
            }
            Predicate::Or(children) => {
                let mut acc = Truth { yes: RoaringBitmap::new(), unknown: RoaringBitmap::new() };
                for child in children {
                    let t = self.eval(child, want_unknown)?;
                    let yes = &acc.yes | &t.yes;
                    let unknown = if want_unknown { &(&acc.unknown | &t.unknown) - &yes } else { none() };
                    acc = Truth { yes, unknown };
                }
                acc
            }
        })
    }

    fn all_unknown(&self) -> Truth {
        Truth { yes: RoaringBitmap::new(), unknown: self.all().clone() }
    }

    /// Non-null rows where `column op key` holds.
    fn compare(&mut self, col: usize, op: CmpOp, key: &Key) -> Result<RoaringBitmap, SegmentError> {
        use Bound::*;
        let range = match op {
            CmpOp::Eq => {
                if let Some(rows) = self.segment.lookup_eq(col, key)? {
                    return Ok(rows);
                }
                return self.scan(col, op, key);
            }
            CmpOp::NotEq => {
                if let Some(rows) = self.segment.lookup_eq(col, key)? {
                    return Ok(&(self.all() - &rows) - &self.nulls(col)?);
                }
                return self.scan(col, op, key);
            }
            CmpOp::Lt => (Unbounded, Excluded(key)),
            CmpOp::LtEq => (Unbounded, Included(key)),
            CmpOp::Gt => (Excluded(key), Unbounded),
            CmpOp::GtEq => (Included(key), Unbounded),
        };
        self.range(col, range.0, range.1)
    }

    fn range(&mut self, col: usize, low: Bound<&Key>, high: Bound<&Key>) -> Result<RoaringBitmap, SegmentError> {
        if let Some(rows) = self.segment.lookup_range(col, low, high)? {
            return Ok(rows);
        }
        let mut rows = self.all().clone();
        rows -= &self.nulls(col)?;
        match low {
            Bound::Included(k) => rows &= self.scan(col, CmpOp::GtEq, k)?,
            Bound::Excluded(k) => rows &= self.scan(col, CmpOp::Gt, k)?,
            Bound::Unbounded => {}
        }
        match high {
            Bound::Included(k) => rows &= self.scan(col, CmpOp::LtEq, k)?,
            Bound::Excluded(k) => rows &= self.scan(col, CmpOp::Lt, k)?,
            Bound::Unbounded => {}
        }
        Ok(rows)
    }

    /// Vectorised scan with Arrow's comparison kernels.
    fn scan(&mut self, col: usize, op: CmpOp, key: &Key) -> Result<RoaringBitmap, SegmentError> {
        let array = self.array(col)?;
        if let DataType::Dictionary(_, _) = array.data_type() {
            // Compare the (small) dictionary once, then map row keys.
            let dict = array.as_dictionary::<Int32Type>();
            let matching = compare_kernel(dict.values(), op, key)?;
            let keys = dict.keys();
            let mut rows = RoaringBitmap::new();
            for (row, k) in keys.iter().enumerate() {
                if let Some(k) = k
                    && matching.value(k as usize)
                    && !matching.is_null(k as usize)
                {
                    rows.insert(row as u32);
                }
            }
            return Ok(rows);
        }
        Ok(true_rows(&compare_kernel(&array, op, key)?))
    }
}

fn compare_kernel(array: &ArrayRef, op: CmpOp, key: &Key) -> Result<BooleanArray, SegmentError> {
    let scalar_array = key_array(key, array.data_type());
    let scalar = ArrowScalar::new(scalar_array);
    Ok(match op {
        CmpOp::Eq => cmp::eq(array, &scalar)?,
        CmpOp::NotEq => cmp::neq(array, &scalar)?,
        CmpOp::Lt => cmp::lt(array, &scalar)?,
        CmpOp::LtEq => cmp::lt_eq(array, &scalar)?,
        CmpOp::Gt => cmp::gt(array, &scalar)?,
        CmpOp::GtEq => cmp::gt_eq(array, &scalar)?,
    })
}

/// Rows where a boolean array is TRUE (NULL is not TRUE).
pub(crate) fn true_rows(result: &BooleanArray) -> RoaringBitmap {
    let values = match result.nulls() {
        Some(nulls) => result.values() & nulls.inner(),
        None => result.values().clone(),
    };
    RoaringBitmap::from_sorted_iter(values.set_indices().map(|i| i as u32)).expect("set_indices ascend")
}

/// What pruning needs about a segment: its row count and per-column stats.
pub(crate) trait StatsSource {
    fn row_count(&self) -> u64;
    fn column_stats(&self, column: &str) -> Option<(ColumnType, &ColumnStats)>;
    /// False when a bloom filter proves `key` absent from the column.
    fn may_contain(&self, column: &str, key: &Key) -> bool;
}

/// False only when no row of a segment whose time column holds values from
/// `range.0` to `range.1` (a catalog record's `time_range`, in the column's
/// unit) can satisfy `predicate`: a query node prunes the segments other
/// nodes serve by it, as Pinot's broker prunes by time, without the file.
/// Nothing else is known about such a segment, so only filters on the time
/// column prune.
pub fn time_range_can_match(predicate: &Predicate, time_column: &str, range: (i64, i64)) -> bool {
    struct TimeRange<'a> {
        column: &'a str,
        stats: ColumnStats,
    }
    impl StatsSource for TimeRange<'_> {
        // Unknown: a NULL test on the time column never prunes (one NULL
        // of "many" rows keeps both IS NULL and IS NOT NULL possible).
        fn row_count(&self) -> u64 {
            u64::MAX
        }
        fn column_stats(&self, column: &str) -> Option<(ColumnType, &ColumnStats)> {
            (column == self.column).then_some((ColumnType::Timestamp, &self.stats))
        }
        fn may_contain(&self, _column: &str, _key: &Key) -> bool {
            true
        }
    }
    let stats = ColumnStats {
        min: Some(Scalar::Timestamp(range.0)),
        max: Some(Scalar::Timestamp(range.1)),
        null_count: 1,
        distinct_count: None,
    };
    can_match(&TimeRange { column: time_column, stats }, predicate)
}

/// False only when no row of the segment can satisfy `predicate`.
pub(crate) fn can_match(source: &dyn StatsSource, predicate: &Predicate) -> bool {
    prune(source, &predicate.to_nnf())
}

fn prune(s: &dyn StatsSource, p: &Predicate) -> bool {
    let rows = s.row_count();
    match p {
        Predicate::And(ps) => ps.iter().all(|p| prune(s, p)),
        Predicate::Or(ps) => ps.iter().any(|p| prune(s, p)),
        Predicate::Not(_) => true,
        Predicate::Constant(truth) => *truth == Some(true),
        Predicate::IsNull { column, negated } => match s.column_stats(column) {
            Some((_, st)) if *negated => st.null_count < rows,
            Some((_, st)) => st.null_count > 0,
            None => true,
        },
        Predicate::Compare { column, op, value } => {
            let Some((ty, st)) = s.column_stats(column) else { return true };
            let Ok(key) = value.key_for(ty) else { return true };
            let Some(key) = key else { return false };
            let Some((min, max)) = st.key_range(ty) else { return false };
            match op {
                CmpOp::Eq => min <= key && key <= max && s.may_contain(column, &key),
                CmpOp::NotEq => !(min == key && max == key),
                CmpOp::Lt => min < key,
                CmpOp::LtEq => min <= key,
                CmpOp::Gt => max > key,
                CmpOp::GtEq => max >= key,
            }
        }
        Predicate::In { column, values, negated } => {
            let Some((ty, st)) = s.column_stats(column) else { return true };
            if values.is_empty() {
                return *negated;
            }
            let Ok(keys) = values.iter().map(|v| v.key_for(ty)).collect::<Result<Vec<_>, _>>() else { return true };
            let Some((min, max)) = st.key_range(ty) else { return false };
            if *negated {
                // A NULL in the list makes NOT IN never TRUE.
                keys.iter().all(Option::is_some) && !(min == max && keys.iter().flatten().any(|k| *k == min))
            } else {
                keys.iter().flatten().any(|k| min <= *k && *k <= max && s.may_contain(column, k))
            }
        }
        Predicate::Between { column, low, high, negated } => {
            let Some((ty, st)) = s.column_stats(column) else { return true };
            let (Ok(lo), Ok(hi)) = (low.key_for(ty), high.key_for(ty)) else { return true };
            let (Some(lo), Some(hi)) = (lo, hi) else { return true };
            let Some((min, max)) = st.key_range(ty) else { return false };
            if *negated { min < lo || max > hi } else { lo <= hi && max >= lo && min <= hi }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment known only by its record's time range: filters on the time
    /// column prune it, nothing else does (a NULL test included: the
    /// record does not say whether the column holds NULLs).
    #[test]
    fn a_time_range_prunes_only_by_the_time_column() {
        let ts = |v: i64| Scalar::Timestamp(v);
        let range = (1_000, 2_000);
        let matches = |p: Predicate| time_range_can_match(&p, "ts", range);
        assert!(matches(Predicate::compare("ts", CmpOp::GtEq, ts(2_000))));
        assert!(!matches(Predicate::compare("ts", CmpOp::Gt, ts(2_000))));
        assert!(!matches(Predicate::compare("ts", CmpOp::Lt, ts(1_000))));
        let between =
            |low, high, negated| Predicate::Between { column: "ts".into(), low: ts(low), high: ts(high), negated };
        assert!(matches(between(500, 1_000, false)));
        assert!(!matches(between(2_001, 3_000, false)));
        assert!(matches(between(2_001, 3_000, true)));
        assert!(!matches(Predicate::And(vec![
            Predicate::compare("status", CmpOp::Eq, Scalar::Int32(200)),
            between(3_000, 4_000, false),
        ])));
        assert!(matches(Predicate::Or(vec![
            Predicate::compare("status", CmpOp::Eq, Scalar::Int32(200)),
            between(3_000, 4_000, false),
        ])));
        for negated in [false, true] {
            assert!(matches(Predicate::IsNull { column: "ts".into(), negated }));
        }
        assert!(matches(Predicate::compare("other", CmpOp::Lt, ts(0))));
        assert!(!matches(Predicate::Constant(Some(false))));
    }
}
