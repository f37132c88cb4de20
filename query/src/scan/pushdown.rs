//! The one place that decides which filters the segments evaluate, and
//! translates them: [`classify`] answers DataFusion's pushdown question and
//! [`translate`] produces the segment predicate from the same code path, so
//! the promise (Exact) and the evaluation cannot drift apart.
//!
//! A translation is a predicate that is TRUE on *at least* the rows where the
//! SQL expression is TRUE. It is Exact when it is TRUE on exactly those rows
//! (three-valued logic included: a row where the expression is NULL is never
//! returned), Inexact when it may return more, and then DataFusion re-applies
//! the original filter above the scan.

use arrow::datatypes::{DataType, Schema};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::expr::{Between, BinaryExpr, InList, Like};
use datafusion::logical_expr::{Expr, Operator, TableProviderFilterPushDown};
use sluice_segments::{CmpOp, Predicate, Scalar};

/// A filter's translation and whether it is exact.
#[derive(Debug, Clone, PartialEq)]
pub struct Translation {
    pub predicate: Predicate,
    pub exact: bool,
}

/// DataFusion's pushdown answer for `expr`, from [`translate`].
pub fn classify(expr: &Expr, schema: &Schema) -> TableProviderFilterPushDown {
    match translate(expr, schema) {
        Some(Translation { exact: true, .. }) => TableProviderFilterPushDown::Exact,
        Some(Translation { exact: false, .. }) => TableProviderFilterPushDown::Inexact,
        None => TableProviderFilterPushDown::Unsupported,
    }
}

/// The conjunction of every translatable filter, and the filters that did
/// not translate exactly (the scan evaluates those itself; none left means
/// the predicate is exactly the filters).
pub fn translate_all(filters: &[Expr], schema: &Schema) -> (Option<Predicate>, Vec<Expr>) {
    let mut residual = Vec::new();
    let mut parts = Vec::with_capacity(filters.len());
    for filter in filters {
        match translate(filter, schema) {
            Some(t) => {
                if !t.exact {
                    residual.push(filter.clone());
                }
                parts.push(t.predicate);
            }
            None => residual.push(filter.clone()),
        }
    }
    let predicate = match parts.len() {
        0 => None,
        1 => parts.pop(),
        _ => Some(Predicate::And(parts)),
    };
    (predicate, residual)
}

/// A predicate TRUE on a superset of the rows where `expr` is TRUE, or None
/// when nothing useful can be said.
pub fn translate(expr: &Expr, schema: &Schema) -> Option<Translation> {
    let exact = |predicate| Some(Translation { predicate, exact: true });
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And => {
                // Dropping a conjunct widens the result: still a superset.
                let l = translate(left, schema);
                let r = translate(right, schema);
                match (l, r) {
                    (Some(l), Some(r)) => Some(Translation {
                        exact: l.exact && r.exact,
                        predicate: Predicate::And(vec![l.predicate, r.predicate]),
                    }),
                    (Some(one), None) | (None, Some(one)) => Some(Translation { exact: false, ..one }),
                    (None, None) => None,
                }
            }
            Operator::Or => {
                let l = translate(left, schema)?;
                let r = translate(right, schema)?;
                Some(Translation {
                    exact: l.exact && r.exact,
                    predicate: Predicate::Or(vec![l.predicate, r.predicate]),
                })
            }
            _ => {
                let op = cmp_op(*op)?;
                if let (Some((column, ty)), Some(value)) = (column_of(left, schema), literal(right)) {
                    exact(compare(column, op, typed(value, &ty)?))
                } else if let (Some(value), Some((column, ty))) = (literal(left), column_of(right, schema)) {
                    exact(compare(column, flip(op), typed(value, &ty)?))
                } else {
                    None
                }
            }
        },
        Expr::Not(inner) => {
            // NOT of a superset is not a superset: only exact children.
            let t = translate(inner, schema)?;
            t.exact.then(|| Translation { predicate: Predicate::Not(Box::new(t.predicate)), exact: true })
        }
        Expr::IsNull(inner) | Expr::IsNotNull(inner) => {
            let (column, _) = column_of(inner, schema)?;
            exact(Predicate::IsNull { column, negated: matches!(expr, Expr::IsNotNull(_)) })
        }
        Expr::InList(InList { expr: inner, list, negated }) => {
            let (column, ty) = column_of(inner, schema)?;
            let mut values = list.iter().map(|e| literal(e).and_then(|v| typed(v, &ty))).collect::<Option<Vec<_>>>()?;
            // SQL compares -0.0 equal to 0.0: a zero in the list stands for both.
            let zeros: Vec<Scalar> = values.iter().filter_map(zero).flat_map(|(neg, pos)| [neg, pos]).collect();
            values.extend(zeros);
            exact(Predicate::In { column, values, negated: *negated })
        }
        Expr::Between(Between { expr: inner, negated, low, high }) => {
            let (column, ty) = column_of(inner, schema)?;
            // SQL compares -0.0 equal to 0.0: widen zero bounds to both.
            let low = typed(literal(low)?, &ty)?;
            let low = zero(&low).map_or(low, |(neg, _)| neg);
            let high = typed(literal(high)?, &ty)?;
            let high = zero(&high).map_or(high, |(_, pos)| pos);
            exact(Predicate::Between { column, low, high, negated: *negated })
        }
        Expr::Column(_) => {
            // A bare boolean column as a filter: `WHERE flag`.
            let (column, ty) = column_of(expr, schema)?;
            (ty == DataType::Boolean).then(|| Translation {
                predicate: Predicate::compare(&column, CmpOp::Eq, Scalar::Bool(true)),
                exact: true,
            })
        }
        Expr::Like(like) => like_prefix(like, schema),
        _ => None,
    }
}

/// `col LIKE 'prefix%'` is the range `[prefix, successor(prefix))`: exact
/// when the pattern is nothing but a literal prefix and one trailing `%`
/// (strings order by bytes, and UTF-8 byte order is code point order), a
/// superset otherwise.
fn like_prefix(like: &Like, schema: &Schema) -> Option<Translation> {
    let Like { negated, expr, pattern, escape_char, case_insensitive } = like;
    if *negated || *case_insensitive || escape_char.is_some() {
        return None;
    }
    let (column, ty) = column_of(expr, schema)?;
    if !matches!(ty, DataType::Utf8 | DataType::Utf8View) {
        return None;
    }
    let (ScalarValue::Utf8(Some(pattern))
    | ScalarValue::LargeUtf8(Some(pattern))
    | ScalarValue::Utf8View(Some(pattern))) = literal(pattern)?
    else {
        return None;
    };
    let cut = pattern.find(['%', '_', '\\']).unwrap_or(pattern.len());
    let prefix = &pattern[..cut];
    if prefix.is_empty() {
        return None;
    }
    let exact = &pattern[cut..] == "%";
    let low = Predicate::compare(&column, CmpOp::GtEq, Scalar::Utf8(prefix.to_string()));
    let predicate = match successor(prefix) {
        Some(high) => Predicate::And(vec![low, Predicate::compare(&column, CmpOp::Lt, Scalar::Utf8(high))]),
        None => low,
    };
    Some(Translation { predicate, exact })
}

/// The smallest string greater than every string starting with `prefix`.
fn successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (last as u32 + 1..=char::MAX as u32).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// `column op value` in DataFusion's semantics, which compare floats in
/// IEEE total order except that -0.0 equals 0.0 (both sides are normalized
/// before comparing). The segments use plain total order, where -0.0 < 0.0,
/// so a zero literal stands for the pair of zeros.
fn compare(column: String, op: CmpOp, value: Scalar) -> Predicate {
    let Some((neg, pos)) = zero(&value) else { return Predicate::Compare { column, op, value } };
    match op {
        CmpOp::Eq | CmpOp::NotEq => Predicate::In { column, values: vec![neg, pos], negated: op == CmpOp::NotEq },
        CmpOp::Lt | CmpOp::GtEq => Predicate::Compare { column, op, value: neg },
        CmpOp::LtEq | CmpOp::Gt => Predicate::Compare { column, op, value: pos },
    }
}

/// For a float zero of either sign: (-0.0, +0.0) of its type.
fn zero(value: &Scalar) -> Option<(Scalar, Scalar)> {
    match value {
        Scalar::Float32(v) if *v == 0.0 => Some((Scalar::Float32(-0.0), Scalar::Float32(0.0))),
        Scalar::Float64(v) if *v == 0.0 => Some((Scalar::Float64(-0.0), Scalar::Float64(0.0))),
        _ => None,
    }
}

fn cmp_op(op: Operator) -> Option<CmpOp> {
    Some(match op {
        Operator::Eq => CmpOp::Eq,
        Operator::NotEq => CmpOp::NotEq,
        Operator::Lt => CmpOp::Lt,
        Operator::LtEq => CmpOp::LtEq,
        Operator::Gt => CmpOp::Gt,
        Operator::GtEq => CmpOp::GtEq,
        _ => return None,
    })
}

/// `a op b` as `b op' a`.
fn flip(op: CmpOp) -> CmpOp {
    match op {
        CmpOp::Lt => CmpOp::Gt,
        CmpOp::LtEq => CmpOp::GtEq,
        CmpOp::Gt => CmpOp::Lt,
        CmpOp::GtEq => CmpOp::LtEq,
        same => same,
    }
}

/// A column of this table, with its type.
fn column_of(expr: &Expr, schema: &Schema) -> Option<(String, DataType)> {
    match expr {
        Expr::Column(c) => {
            let field = schema.field_with_name(&c.name).ok()?;
            Some((c.name.clone(), field.data_type().clone()))
        }
        _ => None,
    }
}

fn literal(expr: &Expr) -> Option<ScalarValue> {
    match expr {
        Expr::Literal(v, _) => Some(v.clone()),
        _ => None,
    }
}

/// The literal as a segment scalar of the column's own type. Only literals
/// already of that type are accepted: DataFusion's coercion has put the
/// comparison in the column's type when it can, and anything else compares
/// in another domain (say Int32 against a Float64) the indexes do not model.
fn typed(value: ScalarValue, ty: &DataType) -> Option<Scalar> {
    let value = match value {
        ScalarValue::Dictionary(_, inner) => *inner,
        other => other,
    };
    if value.is_null() {
        return Some(Scalar::Null);
    }
    Some(match (ty, value) {
        (DataType::Boolean, ScalarValue::Boolean(Some(v))) => Scalar::Bool(v),
        (DataType::Int32, ScalarValue::Int32(Some(v))) => Scalar::Int32(v),
        (DataType::Int64, ScalarValue::Int64(Some(v))) => Scalar::Int64(v),
        (DataType::Float32, ScalarValue::Float32(Some(v))) => Scalar::Float32(v),
        (DataType::Float64, ScalarValue::Float64(Some(v))) => Scalar::Float64(v),
        (
            DataType::Utf8 | DataType::Utf8View,
            ScalarValue::Utf8(Some(v)) | ScalarValue::LargeUtf8(Some(v)) | ScalarValue::Utf8View(Some(v)),
        ) => Scalar::Utf8(v),
        (DataType::Timestamp(unit, _), value) => {
            use arrow::datatypes::TimeUnit::*;
            match (unit, value) {
                (Second, ScalarValue::TimestampSecond(Some(v), _))
                | (Millisecond, ScalarValue::TimestampMillisecond(Some(v), _))
                | (Microsecond, ScalarValue::TimestampMicrosecond(Some(v), _))
                | (Nanosecond, ScalarValue::TimestampNanosecond(Some(v), _)) => Scalar::Timestamp(v),
                _ => return None,
            }
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, TimeUnit};
    use datafusion::logical_expr::{col, lit};
    use std::ops::Not;

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("country", DataType::Utf8, true),
            Field::new("status", DataType::Int32, true),
            Field::new("bot", DataType::Boolean, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
        ])
    }

    #[test]
    fn comparisons_in_the_column_type_are_exact() {
        let s = schema();
        assert_eq!(classify(&col("country").eq(lit("FR")), &s), TableProviderFilterPushDown::Exact);
        assert_eq!(classify(&lit(200i32).lt(col("status")), &s), TableProviderFilterPushDown::Exact);
        let t = translate(&lit(200i32).lt(col("status")), &s).unwrap();
        assert_eq!(t.predicate, Predicate::compare("status", CmpOp::Gt, Scalar::Int32(200)));
        assert_eq!(
            classify(&col("status").in_list(vec![lit(1i32), lit(2i32)], true), &s),
            TableProviderFilterPushDown::Exact
        );
        assert_eq!(classify(&col("bot"), &s), TableProviderFilterPushDown::Exact);
        assert_eq!(classify(&col("country").is_null().not(), &s), TableProviderFilterPushDown::Exact);
    }

    #[test]
    fn other_domains_and_functions_are_not_pushed() {
        let s = schema();
        // Int32 against an Int64 literal: DataFusion would have cast the column.
        assert_eq!(classify(&col("status").eq(lit(200i64)), &s), TableProviderFilterPushDown::Unsupported);
        assert_eq!(classify(&col("status").eq(col("status")), &s), TableProviderFilterPushDown::Unsupported);
        assert_eq!(classify(&col("missing").eq(lit(1i32)), &s), TableProviderFilterPushDown::Unsupported);
    }

    #[test]
    fn partial_conjunctions_are_inexact_and_never_negated() {
        let s = schema();
        let partial = col("country").eq(lit("FR")).and(col("status").eq(col("status")));
        assert_eq!(classify(&partial, &s), TableProviderFilterPushDown::Inexact);
        assert_eq!(classify(&partial.clone().or(col("bot")), &s), TableProviderFilterPushDown::Inexact);
        assert_eq!(classify(&partial.not(), &s), TableProviderFilterPushDown::Unsupported);
    }

    #[test]
    fn like_prefixes_become_ranges() {
        let s = schema();
        let t = translate(&col("country").like(lit("F%")), &s).unwrap();
        assert!(t.exact);
        assert_eq!(
            t.predicate,
            Predicate::And(vec![
                Predicate::compare("country", CmpOp::GtEq, Scalar::Utf8("F".into())),
                Predicate::compare("country", CmpOp::Lt, Scalar::Utf8("G".into())),
            ])
        );
        assert!(!translate(&col("country").like(lit("F_x%")), &s).unwrap().exact);
        assert!(translate(&col("country").like(lit("%x")), &s).is_none());
        assert_eq!(successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(successor("\u{D7FF}").as_deref(), Some("\u{E000}"));
    }
}
