//! Functions whose output can dwarf their input, bounded.
//!
//! The memory pool never sees what an expression produces, and one kernel
//! call does not yield to the query's deadline until it returns. So every
//! scalar function is registered as a wrapper ([`Bounded`]) that measures
//! what each call produced when its output is variable-width (strings,
//! binary, lists): a call over `limits.max_function_output` fails with a
//! resources error the engine answers 413. That bounds any growth that
//! needs more than one call (a recursive CTE doubling a string, nested
//! concatenations) at one call past the limit. The functions that grow
//! their input many times in *one* call are also estimated before the call
//! allocates, from their arguments (an upper bound): `lpad('x',
//! 2147483647)`, `repeat(url, 1000000)`, `replace(s, '', big)`,
//! `concat`/`concat_ws` and the `||` operator (rewritten into a bounded
//! call, [`ConcatRewrite`], with DataFusion's own kernel and semantics).
//! Constant folding at planning calls the same wrappers.
//!
//! Aggregates whose result holds every input row (`string_agg`,
//! `array_agg`) are bounded the same way per accumulator, cumulatively: in
//! a window each row's frame is evaluated again, so an unbounded frame
//! would otherwise build n results of n rows each.

use std::sync::Arc;

use crate::error::REFUSED;
use crate::limits::sizes::{array_bytes, variable_width};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Field, FieldRef, Int64Type, Schema};
use datafusion::common::tree_node::Transformed;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::expr_rewriter::FunctionRewrite;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::type_coercion::binary::BinaryTypeCoercer;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, BinaryExpr, ColumnarValue, Documentation, Expr, Operator,
    ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `lpad/rpad(s, n [, fill])`: n characters of at most the fill's width.
    Pad,
    /// `repeat(s, n)`: n copies of s.
    Repeat,
    /// `replace(s, from, to)`: every match of `from` (every position when
    /// empty) becomes `to`.
    Replace,
    /// `concat(a, b, ...)`, `concat_ws(sep, a, ...)` and `||`: at most the
    /// sum of the arguments (the separator once per argument).
    Concat,
    /// `array_repeat(x, n)`, `array_resize(a, n [, x])`: n elements of at
    /// most 16 bytes (a larger element is measured after the call).
    Elements,
}

const GROWING: [(&str, Growth); 8] = [
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("repeat", Growth::Repeat),
    ("replace", Growth::Replace),
    ("concat", Growth::Concat),
    ("concat_ws", Growth::Concat),
    ("array_repeat", Growth::Elements),
    ("array_resize", Growth::Elements),
];

/// Functions DataFusion recognises by their concrete type while planning
/// (`get_field` over `named_struct`, `log` against `power`): left
/// unwrapped. None of them outgrows its arguments.
const UNWRAPPED: [&str; 5] = ["get_field", "named_struct", "struct", "log", "power"];

/// Aggregates whose result holds every row they read.
const COLLECTING: [&str; 2] = ["string_agg", "array_agg"];

/// Replaces the functions of `registry` by bounded wrappers and makes `||`
/// a bounded call.
pub(crate) fn register(registry: &mut impl FunctionRegistry, max_output: u64) {
    let mut names: Vec<String> = registry.udfs().into_iter().collect();
    names.sort();
    let mut done = std::collections::HashSet::new();
    for name in names {
        let Ok(inner) = registry.udf(&name) else { continue };
        // Aliases name the same function: wrap it once, under all names.
        if UNWRAPPED.contains(&inner.name()) || !done.insert(inner.name().to_string()) {
            continue;
        }
        let growth = GROWING.iter().find(|(n, _)| *n == inner.name()).map(|(_, g)| *g);
        // Only fails for registries that take no functions; ours do.
        let _ = registry.register_udf(Arc::new(bounded(inner.as_ref().clone(), growth, max_output)));
    }
    for name in COLLECTING {
        if let Ok(inner) = registry.udaf(name) {
            let collecting = Collecting { inner: inner.as_ref().clone(), max_output };
            let _ = registry.register_udaf(Arc::new(AggregateUDF::new_from_impl(collecting)));
        }
    }
    let concat = ScalarUDF::new_from_impl(ConcatOperator::new());
    let concat = Arc::new(bounded(concat, Some(Growth::Concat), max_output));
    let _ = registry.register_function_rewrite(Arc::new(ConcatRewrite { concat }));
}

fn bounded(inner: ScalarUDF, growth: Option<Growth>, max_output: u64) -> ScalarUDF {
    ScalarUDF::new_from_impl(Bounded { inner, growth, max_output })
}

fn refused(name: &str, bytes: u128, rows: usize, max_output: u64, when: &str) -> DataFusionError {
    DataFusionError::ResourcesExhausted(format!(
        "{REFUSED}: {name}() {when} {bytes} bytes for {rows} row(s), more than the {max_output} bytes of the node's \
         limits.max_function_output"
    ))
}

/// What function outputs a query thread holds at once. Each call is
/// bounded alone, but a call's arguments are all evaluated before it runs:
/// `concat` of 300 arguments of 64 MB each would hold 19 GB before
/// `concat` could refuse. So every variable-width output is noted (weakly:
/// it counts while anything still holds it), and a call that would bring
/// the thread's held outputs past [`CALLS`] full outputs is refused, before
/// it allocates when it is estimated. Outputs a pool-accounted operator
/// buffers (a sort of computed strings) count too, so the bound is set
/// well above what one expression needs.
mod held {
    use std::cell::RefCell;
    use std::sync::{Arc, Weak};

    use arrow::array::Array;
    use datafusion::error::DataFusionError;
    use datafusion::logical_expr::ColumnarValue;

    use super::REFUSED;

    /// How many full outputs (`limits.max_function_output` each) one
    /// thread may hold at once: 1 GiB at the default.
    pub(super) const CALLS: u128 = 16;

    thread_local! {
        static HELD: RefCell<Vec<(Weak<dyn Array>, u128)>> = const { RefCell::new(Vec::new()) };
    }

    /// The bytes of the outputs still held, forgetting those dropped.
    pub(super) fn bytes() -> u128 {
        HELD.with(|held| {
            let mut held = held.borrow_mut();
            held.retain(|(output, _)| output.strong_count() > 0);
            held.iter().map(|(_, bytes)| bytes).sum()
        })
    }

    /// Notes an output of `bytes`.
    pub(super) fn hold(output: &ColumnarValue, bytes: u128) {
        if let ColumnarValue::Array(array) = output
            && bytes > 0
        {
            HELD.with(|held| held.borrow_mut().push((Arc::downgrade(array), bytes)));
        }
    }

    pub(super) fn refused(name: &str, held: u128, bytes: u128, joint: u128) -> DataFusionError {
        DataFusionError::ResourcesExhausted(format!(
            "{REFUSED}: {name}() would bring the function outputs held at once to {} bytes, more than {CALLS} \
             times the node's limits.max_function_output ({joint} bytes; a call's arguments are all held before \
             it runs)",
            held + bytes
        ))
    }
}

/// A scalar function whose variable-width output is measured after each
/// call, and, for the growing ones, estimated before it.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: ScalarUDF,
    growth: Option<Growth>,
    max_output: u64,
}

impl Bounded {
    /// The call's estimated output (0 for a function that does not grow
    /// its arguments), refused over the limit.
    fn check(&self, args: &ScalarFunctionArgs) -> Result<u128> {
        let Some(growth) = self.growth else { return Ok(0) };
        let rows = args.number_rows.max(1) as u128;
        let a = &args.args;
        let estimate = match growth {
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
            Growth::Concat => {
                let separator = if self.inner.name() == "concat_ws" { a.first() } else { None };
                let separators = separator.map_or(0, |s| text_total(s, rows) * a.len() as u128);
                a.iter().map(|v| value_bytes(v, rows)).sum::<u128>() + separators
            }
            Growth::Elements => a.get(1).map_or(0, |n| int_sum(n, rows)) * 16,
        };
        if estimate > u128::from(self.max_output) {
            return Err(refused(self.inner.name(), estimate, args.number_rows, self.max_output, "would produce up to"));
        }
        Ok(estimate)
    }

    /// Refuses an output over the limit: the call is done, but the
    /// expression above it, and the next iteration of a recursive query,
    /// will not grow it further.
    fn measure(&self, output: &ColumnarValue, rows: usize) -> Result<u128> {
        let bytes = match output {
            ColumnarValue::Array(array) if variable_width(array.data_type()) => array_bytes(array.as_ref()),
            ColumnarValue::Scalar(scalar) if variable_width(&scalar.data_type()) => scalar.size() as u128,
            _ => return Ok(0),
        };
        if bytes > u128::from(self.max_output) {
            return Err(refused(self.inner.name(), bytes, rows, self.max_output, "produced"));
        }
        Ok(bytes)
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.inner().schema_name(args)
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        // `now()` and the time zone functions take the session's settings:
        // the updated function is wrapped again.
        let updated = self.inner.inner().with_updated_config(config)?;
        Some(bounded(updated, self.growth, self.max_output))
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }
    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let estimate = self.check(&args)?;
        let rows = args.number_rows;
        // Fixed-width outputs are the size of their input: only
        // variable-width ones are held to account.
        if !variable_width(args.return_field.data_type()) {
            return self.inner.invoke_with_args(args);
        }
        let held = held::bytes();
        let joint = u128::from(self.max_output) * held::CALLS;
        if held + estimate > joint {
            return Err(held::refused(self.inner.name(), held, estimate, joint));
        }
        let output = self.inner.invoke_with_args(args)?;
        let bytes = self.measure(&output, rows)?;
        if held + bytes > joint {
            return Err(held::refused(self.inner.name(), held, bytes, joint));
        }
        held::hold(&output, bytes);
        Ok(output)
    }
    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }
    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> Result<datafusion::logical_expr::preimage::PreimageResult> {
        self.inner.inner().preimage(args, lit_expr, info)
    }
    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }
    fn conditional_arguments<'a>(&self, args: &'a [Expr]) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner.inner().conditional_arguments(args)
    }
    fn evaluate_bounds(
        &self,
        input: &[&datafusion::logical_expr::interval_arithmetic::Interval],
    ) -> Result<datafusion::logical_expr::interval_arithmetic::Interval> {
        self.inner.evaluate_bounds(input)
    }
    fn propagate_constraints(
        &self,
        interval: &datafusion::logical_expr::interval_arithmetic::Interval,
        inputs: &[&datafusion::logical_expr::interval_arithmetic::Interval],
    ) -> Result<Option<Vec<datafusion::logical_expr::interval_arithmetic::Interval>>> {
        self.inner.propagate_constraints(interval, inputs)
    }
    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(inputs)
    }
    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.preserves_lex_ordering(inputs)
    }
    fn strictly_order_preserving(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.inner().strictly_order_preserving(inputs)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn struct_field_mapping(
        &self,
        literal_args: &[Option<ScalarValue>],
    ) -> Option<datafusion::logical_expr::StructFieldMapping> {
        self.inner.inner().struct_field_mapping(literal_args)
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
    fn placement(
        &self,
        args: &[datafusion::logical_expr::ExpressionPlacement],
    ) -> datafusion::logical_expr::ExpressionPlacement {
        self.inner.inner().placement(args)
    }
}

/// A chain `a || b || c` as one function call, so that it is bounded like
/// `concat` ([`Bounded`] with [`Growth::Concat`]). It folds DataFusion's
/// own `||` over its arguments from the left, each step coerced as
/// DataFusion coerces the operator's arguments: same types, same NULLs as
/// `(a || b) || c`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ConcatOperator {
    signature: Signature,
}

impl ConcatOperator {
    const NAME: &str = "sluice_concat_operator";

    fn new() -> Self {
        // The arguments keep their types: each step of the fold casts what
        // it needs (the types of a step depend on the steps before it).
        ConcatOperator { signature: Signature::user_defined(Volatility::Immutable) }
    }

    /// The type of `left || right`, and the types its sides are cast to.
    fn step(left: &DataType, right: &DataType) -> Result<(DataType, DataType, DataType)> {
        let coercer = BinaryTypeCoercer::new(left, &Operator::StringConcat, right);
        let (l, r) = coercer.get_input_types()?;
        Ok((coercer.get_result_type()?, l, r))
    }
}

impl ScalarUDFImpl for ConcatOperator {
    fn name(&self) -> &str {
        Self::NAME
    }
    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        // The name of the operator chain it replaces.
        let names: Vec<String> = args.iter().map(|a| a.schema_name().to_string()).collect();
        Ok(names.join(" || "))
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.return_type(arg_types)?;
        Ok(arg_types.to_vec())
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let Some((first, rest)) = arg_types.split_first().filter(|(_, rest)| !rest.is_empty()) else {
            return Err(DataFusionError::Plan(format!("|| takes two operands, not {}", arg_types.len())));
        };
        rest.iter().try_fold(first.clone(), |left, right| Ok(Self::step(&left, right)?.0))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use datafusion::physical_expr::PhysicalExpr;
        use datafusion::physical_expr::expressions::{BinaryExpr, Column};
        let rows = args.number_rows;
        let scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let mut columns = ColumnarValue::values_to_arrays(&args.args)?.into_iter();
        let mut left = columns.next().ok_or_else(|| DataFusionError::Internal("|| without operands".into()))?;
        let operator =
            BinaryExpr::new(Arc::new(Column::new("l", 0)), Operator::StringConcat, Arc::new(Column::new("r", 1)));
        let options = arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(left.len()));
        for right in columns {
            let (_, l, r) = Self::step(left.data_type(), right.data_type())?;
            let schema = Schema::new(vec![Field::new("l", l.clone(), true), Field::new("r", r.clone(), true)]);
            let sides = vec![arrow::compute::cast(&left, &l)?, arrow::compute::cast(&right, &r)?];
            let batch = arrow::record_batch::RecordBatch::try_new_with_options(Arc::new(schema), sides, &options)?;
            left = operator.evaluate(&batch)?.into_array(batch.num_rows())?;
        }
        // Scalars in, a scalar out (what constant folding expects).
        if scalar && rows <= 1 && left.len() == 1 {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&left, 0)?));
        }
        Ok(ColumnarValue::Array(left))
    }
}

/// Rewrites `a || b` into [`ConcatOperator`], a left-deep chain into one
/// call of all its operands (the column keeps its name `a || b || c`).
/// Nested calls would cost planning the cube of the chain's length: every
/// level names and types its whole subtree again (a chain of 300 took 3.4 s
/// to plan). Arrays never reach it: the SQL planner already made their
/// `||` an `array_concat`. No operand's type is asked here, for the same
/// reason: the call's coercion finds the types once.
#[derive(Debug)]
struct ConcatRewrite {
    concat: Arc<ScalarUDF>,
}

impl FunctionRewrite for ConcatRewrite {
    fn name(&self) -> &str {
        "bounded_string_concat"
    }

    fn rewrite(&self, expr: Expr, _schema: &DFSchema, _config: &ConfigOptions) -> Result<Transformed<Expr>> {
        let Expr::BinaryExpr(BinaryExpr { left, op: Operator::StringConcat, right }) = expr else {
            return Ok(Transformed::no(expr));
        };
        // Bottom-up: the left operand of a chain is already a call.
        let mut operands = match *left {
            Expr::ScalarFunction(call) if call.func.name() == ConcatOperator::NAME => call.args,
            left => vec![left],
        };
        operands.push(*right);
        Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(self.concat.clone(), operands))))
    }
}

/// An aggregate whose result holds every row it read, bounded per
/// accumulator by the bytes of everything it evaluated (see the module's
/// doc).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Collecting {
    inner: AggregateUDF,
    max_output: u64,
}

impl Collecting {
    fn wrap(&self, inner: Box<dyn Accumulator>) -> Box<dyn Accumulator> {
        Box::new(BoundedAccumulator {
            inner,
            name: self.inner.name().to_string(),
            produced: 0,
            max_output: self.max_output,
        })
    }
}

impl AggregateUDFImpl for Collecting {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn schema_name(&self, params: &datafusion::logical_expr::expr::AggregateFunctionParams) -> Result<String> {
        self.inner.inner().schema_name(params)
    }
    fn human_display(&self, params: &datafusion::logical_expr::expr::AggregateFunctionParams) -> Result<String> {
        self.inner.inner().human_display(params)
    }
    fn window_function_schema_name(
        &self,
        params: &datafusion::logical_expr::expr::WindowFunctionParams,
    ) -> Result<String> {
        self.inner.inner().window_function_schema_name(params)
    }
    fn display_name(&self, params: &datafusion::logical_expr::expr::AggregateFunctionParams) -> Result<String> {
        self.inner.inner().display_name(params)
    }
    fn window_function_display_name(
        &self,
        params: &datafusion::logical_expr::expr::WindowFunctionParams,
    ) -> Result<String> {
        self.inner.inner().window_function_display_name(params)
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        self.inner.return_field(arg_fields)
    }
    fn is_nullable(&self) -> bool {
        self.inner.is_nullable()
    }
    fn accumulator(&self, acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(self.wrap(self.inner.accumulator(acc_args)?))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.inner.state_fields(args)
    }
    // Grouped aggregation accounts its groups' state in the memory pool
    // and evaluates each group once: DataFusion's own groups accumulator
    // serves it, unbounded here (a boxed accumulator per group made a
    // grouping by 16,000 keys take seconds).
    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        self.inner.groups_accumulator_supported(args)
    }
    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn datafusion::logical_expr::GroupsAccumulator>> {
        self.inner.create_groups_accumulator(args)
    }
    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(self.wrap(self.inner.create_sliding_accumulator(args)?))
    }
    fn with_beneficial_ordering(
        self: Arc<Self>,
        beneficial_ordering: bool,
    ) -> Result<Option<Arc<dyn AggregateUDFImpl>>> {
        let Some(inner) = self.inner.clone().with_beneficial_ordering(beneficial_ordering)? else { return Ok(None) };
        Ok(Some(Arc::new(Collecting { inner, max_output: self.max_output })))
    }
    fn order_sensitivity(&self) -> datafusion::logical_expr::utils::AggregateOrderSensitivity {
        self.inner.inner().order_sensitivity()
    }
    fn reverse_expr(&self) -> datafusion::logical_expr::ReversedUDAF {
        use datafusion::logical_expr::ReversedUDAF;
        match self.inner.reverse_udf() {
            ReversedUDAF::Reversed(reversed) => {
                ReversedUDAF::Reversed(Arc::new(AggregateUDF::new_from_impl(Collecting {
                    inner: reversed.as_ref().clone(),
                    max_output: self.max_output,
                })))
            }
            other => other,
        }
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        self.inner.default_value(data_type)
    }
    fn supports_null_handling_clause(&self) -> bool {
        self.inner.inner().supports_null_handling_clause()
    }
    fn supports_within_group_clause(&self) -> bool {
        self.inner.inner().supports_within_group_clause()
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

#[derive(Debug)]
struct BoundedAccumulator {
    inner: Box<dyn Accumulator>,
    name: String,
    /// Bytes of every value evaluated so far.
    produced: u128,
    max_output: u64,
}

impl Accumulator for BoundedAccumulator {
    fn update_batch(&mut self, values: &[arrow::array::ArrayRef]) -> Result<()> {
        self.inner.update_batch(values)
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        let value = self.inner.evaluate()?;
        self.produced += value.size() as u128;
        if self.produced > u128::from(self.max_output) {
            return Err(refused(&self.name, self.produced, 1, self.max_output, "produced"));
        }
        Ok(value)
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.inner.state()
    }
    fn merge_batch(&mut self, states: &[arrow::array::ArrayRef]) -> Result<()> {
        self.inner.merge_batch(states)
    }
    fn retract_batch(&mut self, values: &[arrow::array::ArrayRef]) -> Result<()> {
        self.inner.retract_batch(values)
    }
    fn supports_retract_batch(&self) -> bool {
        self.inner.supports_retract_batch()
    }
}

/// An argument's bytes over `rows` rows.
fn value_bytes(value: &ColumnarValue, rows: u128) -> u128 {
    match value {
        ColumnarValue::Scalar(s) => s.size() as u128 * rows,
        ColumnarValue::Array(a) => array_bytes(a.as_ref()),
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

    /// A call's arguments are held together before it runs: many large
    /// ones are refused before they are all built; a few pass, and what a
    /// thread held is forgotten once dropped.
    #[tokio::test]
    async fn arguments_held_together_are_bounded_together() {
        let mut ctx = SessionContext::new();
        register(&mut ctx, 1 << 20);
        // 8,192 rows of 100 bytes each: 800 KB per argument, under the 1 MiB
        // of one call; 40 of them are 32 MB, past 16 calls' worth.
        let rows = "(SELECT repeat('x', n % 10 + 95) AS s FROM generate_series(1, 8192) t(n))";
        // Distinct arguments: identical ones are computed once.
        let args = |n: usize| (0..n).map(|i| format!("lpad(s, {})", 100 + i)).collect::<Vec<_>>().join(", ");
        let many = format!("SELECT max(length(concat({}))) FROM {rows}", args(40));
        let e = run(&ctx, &many).await.unwrap_err();
        assert!(e.to_string().contains("held at once"), "{e}");
        // Four held at once, fifty times over: nothing stays counted.
        let lengths = (0..4).map(|i| format!("length(lpad(s, {}))", 100 + i)).collect::<Vec<_>>().join(" + ");
        let few = format!("SELECT count(*) FROM {rows} WHERE {lengths} > 0");
        for _ in 0..50 {
            run(&ctx, &few).await.unwrap_or_else(|e| panic!("{few}: {e}"));
        }
    }

    /// `||` as a bounded call answers what DataFusion's operator answers,
    /// with the same column name and type, and a chain is one call.
    #[tokio::test]
    async fn concatenation_keeps_the_operators_answers() {
        let plain = SessionContext::new();
        let mut bounded = SessionContext::new();
        register(&mut bounded, QueryLimits::default().max_function_output.as_u64());
        let answer = |batches: Result<Vec<arrow::record_batch::RecordBatch>>| match batches {
            Ok(b) => {
                let schema = b.first().map(|b| format!("{:?}", b.schema().fields()));
                format!("{schema:?}\n{}", arrow::util::pretty::pretty_format_batches(&b).unwrap())
            }
            Err(_) => "error".to_string(),
        };
        let values = "(VALUES ('x', 'y', 1), (NULL, 'z', 2), ('w', NULL, NULL)) v(s, t, n)";
        for sql in [
            "SELECT 'a' || 'b' || 'c'".to_string(),
            "SELECT 'a' || NULL".to_string(),
            "SELECT NULL || NULL".to_string(),
            "SELECT 1 || 'x' || 2.5".to_string(),
            "SELECT arrow_cast('a', 'Utf8View') || 'b' || arrow_cast('c', 'LargeUtf8')".to_string(),
            format!("SELECT s || t, s || '-' || t || n, n || s, 'p' || (s || t) FROM {values}"),
            format!("SELECT count(*) FROM {values} WHERE s || t = 'xy'"),
        ] {
            let expected = answer(async { plain.sql(&sql).await?.collect().await }.await);
            let got = answer(async { bounded.sql(&sql).await?.collect().await }.await);
            assert_eq!(got, expected, "{sql}");
        }
        let chain = format!("SELECT s{} FROM {values}", " || s".repeat(200));
        let plan = bounded.sql(&chain).await.unwrap().into_optimized_plan().unwrap();
        assert_eq!(plan.display_indent().to_string().matches(ConcatOperator::NAME).count(), 1, "{plan}");
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
