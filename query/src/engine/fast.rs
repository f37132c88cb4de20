//! Selection queries answered from the indexes without DataFusion's planner.
//!
//! Pinot's broker answers `SELECT columns FROM t WHERE filter LIMIT n`
//! without a query optimizer, and a point or range lookup then costs
//! microseconds. Through DataFusion the same query spends most of its time
//! turning SQL into a plan and optimizing it (about 0.65 ms, see
//! docs/PERFORMANCE.md) before the scan, which already did the real work at
//! planning time, returns its rows.
//!
//! [`plan`] recognizes exactly one shape:
//!
//! ```sql
//! SELECT <column, ... | *> FROM <table> [WHERE <filter>] [LIMIT <n>]
//! ```
//!
//! where the columns are plain, distinct names and the filter is built of
//! comparisons, IN, BETWEEN, IS [NOT] NULL, `LIKE 'prefix%'`, bare boolean
//! columns, AND, OR and NOT, over literals of the column's own type, and
//! [`crate::scan::pushdown`] translates it *exactly*. Everything else, and
//! everything this module is unsure of (a literal of another type, a NULL
//! literal, a qualified name, any clause it does not model), returns None
//! and goes to DataFusion. So the invariant is: the fast path answers with
//! the rows, columns, names and types DataFusion would (row order aside,
//! which SQL leaves open without ORDER BY), and the differential tests run
//! the query corpus both ways to hold it to that.
//!
//! On a cluster node, a recognized selection whose filter leaves segments
//! that other nodes serve does not run here alone: its physical plan is
//! built from the parse ([`FastQuery::physical_plan`], what DataFusion's
//! planner would make of it) and DataFusion Distributed runs it, with no
//! SQL planning or optimization spent on it.
//!
//! Unknown clauses cannot slip through: the parsed statement, with the parts
//! this module understood swapped for a template's, must equal the parsed
//! template `SELECT a FROM t`, so a clause added by a future parser version
//! makes the comparison fail and the query go to DataFusion.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::expr::Like;
use datafusion::logical_expr::{Expr, Operator, binary_expr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::limit::GlobalLimitExec;
use datafusion::sql::sqlparser::ast::{
    self, BinaryOperator, LimitClause, ObjectNamePart, SelectItem, SetExpr, Statement, TableFactor, UnaryOperator,
    Value, WildcardAdditionalOptions,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use sluice_segments::Predicate;

use crate::error::QueryError;
use crate::scan::pushdown;
use crate::scan::read::Reader;
use crate::scan::selection::{Part, par_map, select, truncate};
use crate::scan::table::SegmentTable;
use crate::stats::ScanStats;

/// A query the fast path answers.
pub(crate) struct FastQuery {
    table: Arc<SegmentTable>,
    /// Positions of the output columns in the table's schema.
    projection: Vec<usize>,
    /// Exactly the query's filter.
    predicate: Option<Predicate>,
    /// The same filter as DataFusion's expression, for a spread query's
    /// scan.
    filter: Option<Expr>,
    limit: Option<u64>,
    /// Other nodes serve some of the segments the filter may match.
    spread: bool,
}

/// The parsed `SELECT a FROM t`: what a statement must equal once its
/// understood parts are swapped for these.
static TEMPLATE: LazyLock<ast::Query> =
    LazyLock::new(|| match Parser::parse_sql(&GenericDialect {}, "SELECT a FROM t").map(|mut s| s.pop()) {
        Ok(Some(Statement::Query(query))) => *query,
        other => unreachable!("the template parses as a query: {other:?}"),
    });

fn template_select() -> &'static ast::Select {
    match TEMPLATE.body.as_ref() {
        SetExpr::Select(select) => select,
        _ => unreachable!("the template is a plain SELECT"),
    }
}

/// The fast plan of `sql`, or None when DataFusion should plan it.
/// `table` resolves a (normalized) table name.
pub(crate) fn plan(sql: &str, table: impl Fn(&str) -> Option<Arc<SegmentTable>>) -> Option<FastQuery> {
    // DataFusion's own dialect (`datafusion.sql_parser.dialect` = generic).
    let mut statements = Parser::parse_sql(&GenericDialect {}, sql).ok()?;
    if statements.len() != 1 {
        return None;
    }
    let Some(Statement::Query(mut query)) = statements.pop() else { return None };
    let limit = match query.limit_clause.take() {
        None => None,
        Some(LimitClause::LimitOffset { limit: Some(n), offset: None, limit_by }) if limit_by.is_empty() => {
            Some(unsigned(&n)?)
        }
        Some(_) => return None,
    };
    let body = std::mem::replace(&mut query.body, TEMPLATE.body.clone());
    if *query != *TEMPLATE {
        return None;
    }
    let SetExpr::Select(mut select) = *body else { return None };
    let template = template_select();
    let projection = std::mem::replace(&mut select.projection, template.projection.clone());
    let selection = select.selection.take();
    let mut from = std::mem::replace(&mut select.from, template.from.clone());
    if *select != *template || from.len() != 1 {
        return None;
    }
    let mut from = from.pop()?;
    let TableFactor::Table { name, .. } = &mut from.relation else { return None };
    let [ObjectNamePart::Identifier(ident)] = name.0.as_mut_slice() else { return None };
    let table_name = normalize(ident);
    *ident = ast::Ident::new("t");
    if from != template.from[0] {
        return None;
    }
    let table = table(&table_name)?;
    let schema = table.schema_ref();

    let mut columns = Vec::with_capacity(projection.len());
    for item in &projection {
        match item {
            SelectItem::UnnamedExpr(ast::Expr::Identifier(ident)) => {
                let index = schema.index_of(&normalize(ident)).ok()?;
                if columns.contains(&index) {
                    return None;
                }
                columns.push(index);
            }
            SelectItem::Wildcard(options) if *options == WildcardAdditionalOptions::default() => {
                if projection.len() != 1 {
                    return None;
                }
                columns.extend(0..schema.fields().len());
            }
            _ => return None,
        }
    }
    let filter = match selection {
        None => None,
        Some(filter) => Some(to_expr(&filter, &schema)?),
    };
    let predicate = match &filter {
        None => None,
        Some(filter) => {
            let (predicate, residual) = pushdown::translate_all(std::slice::from_ref(filter), &schema);
            if !residual.is_empty() {
                return None;
            }
            Some(predicate?)
        }
    };
    // Unless the filter rules out every other node's segments, a table
    // spread over the cluster is read by DataFusion Distributed's tasks.
    let spread = !table.cluster_snapshot_for(predicate.as_ref()).1.is_empty();
    Some(FastQuery { table, projection: columns, predicate, filter, limit, spread })
}

impl FastQuery {
    /// Whether other nodes serve some of the segments the query reads:
    /// [`FastQuery::physical_plan`] then runs it, not [`execute`].
    pub(crate) fn spread(&self) -> bool {
        self.spread
    }

    /// The query's physical plan as DataFusion would make it: the table's
    /// scan of the output columns with the filter (which the table applies
    /// exactly, as checked above) and the limit pushed into it, under the
    /// limit. Planned from here, a selection skips turning SQL into a plan,
    /// optimizing it and planning it, which cost more than its distributed
    /// round (docs/PERFORMANCE.md); the placement of its stages and their
    /// execution are DataFusion Distributed's, as for any other query.
    pub(crate) async fn physical_plan(
        &self,
        state: &dyn Session,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let filters: Vec<Expr> = self.filter.iter().cloned().collect();
        let fetch = self.limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let scan = self.table.scan(state, Some(&self.projection), &filters, fetch).await?;
        Ok(match fetch {
            Some(fetch) => Arc::new(GlobalLimitExec::new(Arc::new(CoalescePartitionsExec::new(scan)), 0, Some(fetch))),
            None => scan,
        })
    }
}

/// Runs a fast plan: the scan's own selection, then the selected rows of
/// the projected columns, one batch per segment.
pub(crate) async fn execute(
    query: FastQuery,
    threads: usize,
    max_rows: u64,
) -> Result<(SchemaRef, Vec<RecordBatch>, ScanStats), QueryError> {
    let schema = Arc::new(query.table.schema_ref().project(&query.projection).map_err(internal)?);
    let (segments, elsewhere) = query.table.cluster_snapshot_for(query.predicate.as_ref());
    if !elsewhere.is_empty() {
        // Spread over the cluster since it was planned: plan it again.
        return Err(QueryError::Remote { message: "the table moved while planned".into(), node: None });
    }
    let out = schema.clone();
    tokio::task::spawn_blocking(move || {
        let table = query.table.schema_ref();
        let (mut parts, mut stats) = select(&segments, query.predicate.as_ref(), &table, threads).map_err(internal)?;
        stats.tails_excluded += query.table.tails_excluded();
        if let Some(limit) = query.limit {
            truncate(&mut parts, limit);
        }
        let rows: u64 = parts.iter().map(|p| p.rows.len()).sum();
        if rows > max_rows {
            return Err(QueryError::TooManyRows { limit: max_rows });
        }
        let batches = read(&parts, &out, threads)?;
        Ok((out, batches, stats))
    })
    .await
    .map_err(|e| QueryError::Internal { message: e.to_string() })?
}

/// The selected rows of every part, spread over `threads` when there is
/// enough to read.
fn read(parts: &[Part], schema: &SchemaRef, threads: usize) -> Result<Vec<RecordBatch>, QueryError> {
    let reader = Reader::plain(schema);
    let one = |part: &Part| reader.read(&part.segment, &part.rows, schema).map_err(internal);
    // Below this, threads cost more than they save.
    const PARALLEL_ROWS: u64 = 32 * 1024;
    let rows: u64 = parts.iter().map(|p| p.rows.len()).sum();
    par_map(parts, if rows < PARALLEL_ROWS { 1 } else { threads }, one).into_iter().collect()
}

fn internal(e: impl std::fmt::Display) -> QueryError {
    QueryError::Internal { message: e.to_string() }
}

/// DataFusion's identifier normalization: unquoted names are lowercased
/// (ASCII only), quoted ones kept.
fn normalize(ident: &ast::Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_ascii_lowercase(),
    }
}

/// A LIMIT's value.
fn unsigned(expr: &ast::Expr) -> Option<u64> {
    match expr {
        ast::Expr::Value(v) => match &v.value {
            Value::Number(n, false) => n.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

/// The filter as the logical expression DataFusion would hand the scan,
/// with every literal already in its column's type.
fn to_expr(expr: &ast::Expr, schema: &Schema) -> Option<Expr> {
    use ast::Expr as A;
    Some(match expr {
        A::Nested(inner) => to_expr(inner, schema)?,
        A::Identifier(_) => column(expr, schema)?.0,
        A::UnaryOp { op: UnaryOperator::Not, expr } => Expr::Not(Box::new(to_expr(expr, schema)?)),
        A::BinaryOp { left, op: BinaryOperator::And, right } => to_expr(left, schema)?.and(to_expr(right, schema)?),
        A::BinaryOp { left, op: BinaryOperator::Or, right } => to_expr(left, schema)?.or(to_expr(right, schema)?),
        A::BinaryOp { left, op, right } => {
            let op = match op {
                BinaryOperator::Eq => Operator::Eq,
                BinaryOperator::NotEq => Operator::NotEq,
                BinaryOperator::Lt => Operator::Lt,
                BinaryOperator::LtEq => Operator::LtEq,
                BinaryOperator::Gt => Operator::Gt,
                BinaryOperator::GtEq => Operator::GtEq,
                _ => return None,
            };
            if let Some((col, ty)) = column(left, schema) {
                binary_expr(col, op, literal(right, &ty)?)
            } else {
                let (col, ty) = column(right, schema)?;
                binary_expr(literal(left, &ty)?, op, col)
            }
        }
        A::IsNull(inner) => column(inner, schema)?.0.is_null(),
        A::IsNotNull(inner) => column(inner, schema)?.0.is_not_null(),
        A::Between { expr, negated, low, high } => {
            let (col, ty) = column(expr, schema)?;
            let (low, high) = (literal(low, &ty)?, literal(high, &ty)?);
            if *negated { col.not_between(low, high) } else { col.between(low, high) }
        }
        A::InList { expr, list, negated } => {
            let (col, ty) = column(expr, schema)?;
            let list = list.iter().map(|e| literal(e, &ty)).collect::<Option<Vec<_>>>()?;
            col.in_list(list, *negated)
        }
        A::Like { negated, any: false, expr, pattern, escape_char: None } => {
            let (col, ty) = column(expr, schema)?;
            let pattern = literal(pattern, &ty)?;
            Expr::Like(Like::new(*negated, Box::new(col), Box::new(pattern), None, false))
        }
        _ => return None,
    })
}

/// A plain column name of the table, as an expression, with its type.
fn column(expr: &ast::Expr, schema: &Schema) -> Option<(Expr, DataType)> {
    let ast::Expr::Identifier(ident) = expr else { return None };
    let name = normalize(ident);
    let field = schema.field_with_name(&name).ok()?;
    Some((Expr::Column(Column::new_unqualified(name)), field.data_type().clone()))
}

/// A literal in the type of the column it meets, only where DataFusion's
/// coercion would put the comparison in that type too, so the indexes
/// answer the same question: integers that fit an integer column, numbers
/// on a Float64 column (an integer becomes the float DataFusion's cast
/// makes of it), strings on a string column, booleans on a boolean one, and
/// strings on a timestamp column cast by arrow as DataFusion casts them.
fn literal(expr: &ast::Expr, ty: &DataType) -> Option<Expr> {
    let (value, negative) = match expr {
        ast::Expr::Value(v) => (&v.value, false),
        ast::Expr::UnaryOp { op: UnaryOperator::Minus, expr } => match expr.as_ref() {
            ast::Expr::Value(v) if matches!(v.value, Value::Number(..)) => (&v.value, true),
            _ => return None,
        },
        _ => return None,
    };
    let scalar = match (value, ty) {
        (Value::Number(n, false), _) => {
            // DataFusion reads a number as an i64 when it can, else a float.
            let signed = if negative { format!("-{n}") } else { n.clone() };
            match (signed.parse::<i64>(), ty) {
                (Ok(v), DataType::Int64) => ScalarValue::Int64(Some(v)),
                (Ok(v), DataType::Int32) => ScalarValue::Int32(Some(i32::try_from(v).ok()?)),
                (Ok(v), DataType::Float64) => ScalarValue::Float64(Some(v as f64)),
                (Err(_), DataType::Float64) if !n.chars().all(|c| c.is_ascii_digit()) => {
                    ScalarValue::Float64(Some(signed.parse().ok()?))
                }
                _ => return None,
            }
        }
        (Value::SingleQuotedString(s), DataType::Utf8 | DataType::Utf8View) => ScalarValue::Utf8View(Some(s.clone())),
        (Value::SingleQuotedString(s), DataType::Timestamp(..)) => {
            ScalarValue::Utf8(Some(s.clone())).cast_to(ty).ok()?
        }
        (Value::Boolean(b), DataType::Boolean) => ScalarValue::Boolean(Some(*b)),
        _ => return None,
    };
    (!scalar.is_null()).then(|| Expr::Literal(scalar, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, TimeUnit};

    fn table() -> Arc<SegmentTable> {
        let schema = Schema::new(vec![
            Field::new("country", DataType::Utf8, true),
            Field::new("status", DataType::Int32, true),
            Field::new("latency", DataType::Float64, true),
            Field::new("bot", DataType::Boolean, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
        ]);
        Arc::new(SegmentTable::new("clicks", &schema))
    }

    fn fast(sql: &str) -> bool {
        let t = table();
        plan(sql, |name| (name == "clicks").then(|| t.clone())).is_some()
    }

    #[test]
    fn simple_selections_take_the_fast_path() {
        for sql in [
            "SELECT country FROM clicks",
            "select * from CLICKS",
            "SELECT country, status FROM clicks WHERE status = 404",
            "SELECT country FROM clicks WHERE NOT (country IN ('FR', 'DE') OR status >= 500) LIMIT 10",
            "SELECT ts FROM clicks WHERE ts BETWEEN '2025-11-24T16:10:00Z' AND '2025-11-24 16:11:00'",
            "SELECT \"country\" FROM clicks WHERE country LIKE 'F%' AND bot AND latency < -1.5 AND status IS NOT NULL;",
            "SELECT status FROM clicks WHERE latency <> 3 AND -2 < status",
        ] {
            assert!(fast(sql), "{sql}");
        }
    }

    /// A selection spread over the cluster is planned from its parse: the
    /// table's scan of the output columns in the query's order, with the
    /// filter and the limit in it, under the limit.
    #[tokio::test]
    async fn a_spread_selection_is_planned_from_its_parse() {
        let t = table();
        let state = datafusion::execution::SessionStateBuilder::new().build();
        let sql = "SELECT status, country FROM clicks WHERE status = 404 OR country IN ('FR', 'DE') LIMIT 10";
        let query = plan(sql, |name| (name == "clicks").then(|| t.clone())).unwrap();
        let physical = query.physical_plan(&state).await.unwrap();
        let shown = datafusion::physical_plan::displayable(physical.as_ref()).indent(true).to_string();
        let lines: Vec<&str> = shown.lines().map(str::trim).collect();
        assert_eq!(lines.len(), 3, "{shown}");
        assert_eq!(lines[0], "GlobalLimitExec: skip=0, fetch=10", "{shown}");
        assert_eq!(lines[1], "CoalescePartitionsExec", "{shown}");
        assert!(lines[2].starts_with("SegmentScanExec"), "{shown}");
        let names: Vec<String> = physical.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["status", "country"]);

        let everything = plan("SELECT * FROM clicks", |name| (name == "clicks").then(|| t.clone())).unwrap();
        let physical = everything.physical_plan(&state).await.unwrap();
        let names: Vec<String> = physical.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["country", "status", "latency", "bot", "ts"]);
    }

    #[test]
    fn everything_else_goes_to_datafusion() {
        for sql in [
            "SELECT country FROM clicks ORDER BY country",
            "SELECT DISTINCT country FROM clicks",
            "SELECT country AS c FROM clicks",
            "SELECT country, country FROM clicks",
            "SELECT clicks.country FROM clicks",
            "SELECT country FROM clicks c",
            "SELECT country FROM public.clicks",
            "SELECT country FROM clicks LIMIT 10 OFFSET 5",
            "SELECT country FROM clicks GROUP BY country",
            "SELECT COUNT(*) FROM clicks",
            "SELECT * EXCLUDE (bot) FROM clicks",
            "SELECT country FROM clicks WHERE status = 404.5",
            "SELECT country FROM clicks WHERE status = 4000000000",
            "SELECT country FROM clicks WHERE status = '404'",
            "SELECT country FROM clicks WHERE country = NULL",
            "SELECT country FROM clicks WHERE country LIKE '%R'",
            "SELECT country FROM clicks WHERE country ILIKE 'f%'",
            "SELECT country FROM clicks WHERE status = status",
            "SELECT country FROM clicks WHERE ts > 'yesterday'",
            "SELECT country FROM clicks WHERE upper(country) = 'FR'",
            "SELECT country FROM clicks, clicks",
            "SELECT country FROM missing",
            "SELECT missing FROM clicks",
            "WITH x AS (SELECT 1) SELECT country FROM clicks",
            "SELECT country FROM clicks UNION ALL SELECT country FROM clicks",
            "SELECT country FROM clicks; SELECT country FROM clicks",
            "EXPLAIN SELECT country FROM clicks",
            "INSERT INTO clicks VALUES (1)",
            "",
            "SELECT",
        ] {
            assert!(!fast(sql), "{sql}");
        }
    }
}
