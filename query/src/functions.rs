//! String functions whose output can dwarf their input, bounded.
//!
//! `lpad('x', 2147483647)`, `repeat(url, 1000000)` or `replace(s, '', big)`
//! are a few bytes of SQL that ask one kernel call for gigabytes: the memory
//! pool never sees scalar function outputs, and the call does not yield to
//! the query's deadline until it returns. Each such function is registered
//! under its own name as a wrapper that estimates the output of the call
//! from its arguments (an upper bound) *before* calling, and refuses a call
//! over `limits.max_function_output` with a resources error, which the
//! engine answers 413. Constant folding at planning calls the same wrapper.

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

/// The prefix of the error a refused call raises; the engine recognises it.
pub(crate) const REFUSED: &str = "function output limit";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `lpad/rpad(s, n [, fill])`: n characters of at most the fill's width.
    Pad,
    /// `repeat(s, n)`: n copies of s.
    Repeat,
    /// `replace(s, from, to)`: every match of `from` (every position when
    /// empty) becomes `to`.
    Replace,
}

const BOUNDED: [(&str, Growth); 4] =
    [("lpad", Growth::Pad), ("rpad", Growth::Pad), ("repeat", Growth::Repeat), ("replace", Growth::Replace)];

/// Replaces the growing functions of `ctx` by bounded wrappers.
pub(crate) fn register(registry: &mut impl FunctionRegistry, max_output: u64) {
    for (name, growth) in BOUNDED {
        if let Ok(inner) = registry.udf(name) {
            let bounded = Bounded { inner: inner.as_ref().clone(), growth, max_output };
            // Only fails for registries that take no functions; ours do.
            let _ = registry.register_udf(Arc::new(ScalarUDF::new_from_impl(bounded)));
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: ScalarUDF,
    growth: Growth,
    max_output: u64,
}

impl Bounded {
    fn check(&self, args: &ScalarFunctionArgs) -> Result<()> {
        let rows = args.number_rows.max(1) as u128;
        let a = &args.args;
        let estimate = match self.growth {
            Growth::Pad => {
                let width = match a.get(2) {
                    Some(fill) => max_char_width(fill),
                    None => 1,
                };
                a.get(1).map_or(0, |n| int_sum(n, rows)) * width
            }
            Growth::Repeat => match (a.first(), a.get(1)) {
                (Some(s), Some(n)) => match n {
                    ColumnarValue::Scalar(_) => text_total(s, rows) * int_sum(n, 1),
                    ColumnarValue::Array(_) => max_len(s) as u128 * int_sum(n, rows),
                },
                _ => 0,
            },
            Growth::Replace => match (a.first(), a.get(1), a.get(2)) {
                (Some(s), Some(from), Some(to)) => {
                    let total = text_total(s, rows);
                    let shortest_from = min_len(from).max(1) as u128;
                    total + (total / shortest_from + rows) * max_len(to) as u128
                }
                _ => 0,
            },
        };
        if estimate > u128::from(self.max_output) {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{REFUSED}: {}() would produce up to {estimate} bytes for {} row(s), more than the {} bytes of \
                 the node's limits.max_function_output",
                self.inner.name(),
                args.number_rows,
                self.max_output
            )));
        }
        Ok(())
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }
    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.check(&args)?;
        self.inner.invoke_with_args(args)
    }
    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

/// The sum over rows of a non-negative integer argument (negatives count 0).
fn int_sum(value: &ColumnarValue, rows: u128) -> u128 {
    match value {
        ColumnarValue::Scalar(s) => scalar_int(s).max(0) as u128 * rows,
        ColumnarValue::Array(a) => match a.as_primitive_opt::<Int64Type>() {
            Some(ints) => ints.iter().flatten().map(|n| n.max(0) as u128).sum(),
            // Another integer type: cast to be sure; unknown types count
            // as the largest request possible.
            None => match arrow::compute::cast(a, &DataType::Int64) {
                Ok(cast) => cast.as_primitive::<Int64Type>().iter().flatten().map(|n| n.max(0) as u128).sum(),
                Err(_) => u128::MAX / 8,
            },
        },
    }
}

fn scalar_int(s: &ScalarValue) -> i64 {
    match s.cast_to(&DataType::Int64) {
        Ok(ScalarValue::Int64(Some(n))) => n,
        _ => 0,
    }
}

fn scalar_str(s: &ScalarValue) -> Option<&str> {
    match s {
        ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => v.as_deref(),
        _ => None,
    }
}

/// Lengths in bytes of the text values of an argument.
fn lengths(array: &dyn Array) -> Box<dyn Iterator<Item = usize> + '_> {
    match array.data_type() {
        DataType::Utf8 => Box::new(array.as_string::<i32>().iter().map(|v| v.map_or(0, str::len))),
        DataType::LargeUtf8 => Box::new(array.as_string::<i64>().iter().map(|v| v.map_or(0, str::len))),
        DataType::Utf8View => Box::new(array.as_string_view().iter().map(|v| v.map_or(0, str::len))),
        // Not text (binary or a type a future coercion brings): bound by
        // the array's memory.
        _ => Box::new(std::iter::once(array.get_array_memory_size())),
    }
}

fn text_total(value: &ColumnarValue, rows: u128) -> u128 {
    match value {
        ColumnarValue::Scalar(s) => scalar_str(s).map_or(0, str::len) as u128 * rows,
        ColumnarValue::Array(a) => lengths(a.as_ref()).map(|n| n as u128).sum(),
    }
}

fn max_len(value: &ColumnarValue) -> usize {
    match value {
        ColumnarValue::Scalar(s) => scalar_str(s).map_or(0, str::len),
        ColumnarValue::Array(a) => lengths(a.as_ref()).max().unwrap_or(0),
    }
}

fn min_len(value: &ColumnarValue) -> usize {
    match value {
        ColumnarValue::Scalar(s) => scalar_str(s).map_or(0, str::len),
        ColumnarValue::Array(a) => lengths(a.as_ref()).min().unwrap_or(0),
    }
}

/// The widest character of a fill argument, in bytes (4 when unknown).
fn max_char_width(value: &ColumnarValue) -> u128 {
    match value {
        ColumnarValue::Scalar(s) => {
            scalar_str(s).map_or(1, |t| t.chars().map(char::len_utf8).max().unwrap_or(1)) as u128
        }
        ColumnarValue::Array(_) => 4,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use datafusion::prelude::SessionContext;
    use sluice_config::QueryLimits;

    async fn run(ctx: &SessionContext, sql: &str) -> Result<()> {
        ctx.sql(sql).await?.collect().await.map(|_| ())
    }

    #[tokio::test]
    async fn growing_calls_over_the_limit_are_refused_before_they_allocate() {
        let mut ctx = SessionContext::new();
        register(&mut ctx, QueryLimits::default().max_function_output.as_u64());
        for sql in [
            "SELECT length(lpad('x', 2147483647))",
            "SELECT length(rpad('x', 100000000, 'é'))",
            "SELECT length(repeat('abc', 100000000))",
            "SELECT length(replace(repeat('a', 10000), '', repeat('b', 10000)))",
        ] {
            let e = run(&ctx, sql).await.unwrap_err();
            assert!(e.to_string().contains(REFUSED), "{sql}: {e}");
        }
        for sql in [
            "SELECT lpad('x', 10), rpad('x', 5, '-'), repeat('ab', 3), replace('abc', 'b', 'xyz')",
            "SELECT length(repeat('a', 1000000))",
        ] {
            run(&ctx, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        let batches = ctx.sql("SELECT repeat('ab', 3) AS r").await.unwrap().collect().await.unwrap();
        let r = batches[0].column(0);
        let text = arrow::util::display::array_value_to_string(r, 0).unwrap();
        assert_eq!(text, "ababab");
    }

    #[test]
    fn estimates_bound_array_arguments() {
        let n: Arc<dyn Array> = Arc::new(arrow::array::Int64Array::from(vec![Some(5), None, Some(-3), Some(7)]));
        assert_eq!(int_sum(&ColumnarValue::Array(n), 4), 12);
        let s: Arc<dyn Array> = Arc::new(arrow::array::StringArray::from(vec![Some("ab"), None, Some("cdef")]));
        let s = ColumnarValue::Array(s);
        assert_eq!((text_total(&s, 3), max_len(&s), min_len(&s)), (6, 4, 0));
    }
}
