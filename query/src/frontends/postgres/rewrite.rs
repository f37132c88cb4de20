//! Postgres spellings that DataFusion's SQL does not take, rewritten to
//! ones it does, for statements that come over the wire protocol: what
//! psql, JDBC and Grafana send about the catalog.
//!
//! - `a OPERATOR(pg_catalog.~) b` → `a ~ b` (and the other operators);
//! - `x COLLATE name` → `x` (one collation here);
//! - `pg_catalog.f(...)` → `f(...)`; catalog tables named without their
//!   schema (`pg_class`) → `pg_catalog.pg_class`, as Postgres' search path
//!   has them, unless a served table has that name;
//! - `'name'::regclass` → the relation's oid; `x::regtype` →
//!   `format_type(x, NULL)`; other `reg*`, `oid` and `name` casts → to
//!   integers or text;
//! - `current_user`, `session_user`, `user` → the login name;
//! - `IN (SELECT ... current_setting('search_path') ...)` (the schemas of
//!   the search path, as Grafana lists them) → `IN ('public')`;
//! - `information_schema.columns` → `pg_catalog.pg_columns`, the same
//!   columns with Postgres' type names (DataFusion's has Arrow's);
//! - in queries of the catalog only: scalar subqueries aggregated (or NULL
//!   over an always-empty catalog table), `n.oid, n.*` made distinct, and
//!   a query over an always-empty catalog table answered as no rows.
//!
//! A statement that needs none of this, or that does not parse, is passed
//! on untouched, so what a query means never depends on this module's
//! printing of it.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    BinaryOperator, CastKind, DataType, Expr, Function, FunctionArguments, Ident, ObjectName, ObjectNamePart, Select,
    SetExpr, Statement, TableFactor, Value, visit_expressions_mut, visit_relations_mut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use super::catalog::{is_catalog_table, is_empty_catalog_table, relation_oid};

/// `sql` rewritten for DataFusion, or None when it needs no rewriting.
/// `served` says whether a table of that name is served here; `user` is
/// the session's login name.
pub(crate) fn rewrite(sql: &str, user: &str, served: impl Fn(&str) -> bool) -> Option<String> {
    let mut statements: Vec<Statement> = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let [statement] = statements.as_mut_slice() else { return None };
    let (mut changed, mut catalog) = (false, false);
    let _ = visit_relations_mut(statement, |name: &mut ObjectName| {
        if let [ObjectNamePart::Identifier(table)] = name.0.as_slice()
            && is_catalog_table(&table.value)
            && !served(&table.value)
        {
            name.0.insert(0, ObjectNamePart::Identifier(Ident::new("pg_catalog")));
            changed = true;
        }
        if let [ObjectNamePart::Identifier(schema), ObjectNamePart::Identifier(table)] = name.0.as_slice()
            && schema.value.eq_ignore_ascii_case("information_schema")
            && table.value.eq_ignore_ascii_case("columns")
        {
            *name = ObjectName::from(vec![Ident::new("pg_catalog"), Ident::new("pg_columns")]);
            changed = true;
        }
        catalog |= matches!(name.0.first(), Some(ObjectNamePart::Identifier(schema))
            if ["pg_catalog", "information_schema"].contains(&schema.value.to_ascii_lowercase().as_str()));
        ControlFlow::<()>::Continue(())
    });
    if catalog && let Some(nothing) = no_rows(statement) {
        return Some(nothing);
    }
    if catalog {
        changed |= distinct_names(statement);
    }
    let _ = visit_expressions_mut(statement, |expr: &mut Expr| {
        let general = rewrite_expr(expr, user);
        let current = general.as_ref().unwrap_or(expr);
        if let Some(new) = catalog.then(|| catalog_expr(current)).flatten().or(general) {
            *expr = new;
            changed = true;
        }
        ControlFlow::<()>::Continue(())
    });
    changed.then(|| statement.to_string())
}

fn rewrite_expr(expr: &Expr, user: &str) -> Option<Expr> {
    match expr {
        Expr::BinaryOp { left, op: BinaryOperator::PGCustomBinaryOperator(parts), right } => {
            let op = match parts.last()?.as_str() {
                "~" => BinaryOperator::PGRegexMatch,
                "~*" => BinaryOperator::PGRegexIMatch,
                "!~" => BinaryOperator::PGRegexNotMatch,
                "!~*" => BinaryOperator::PGRegexNotIMatch,
                "=" => BinaryOperator::Eq,
                "<>" | "!=" => BinaryOperator::NotEq,
                "<" => BinaryOperator::Lt,
                "<=" => BinaryOperator::LtEq,
                ">" => BinaryOperator::Gt,
                ">=" => BinaryOperator::GtEq,
                "~~" => {
                    return Some(Expr::Like {
                        negated: false,
                        any: false,
                        expr: left.clone(),
                        pattern: right.clone(),
                        escape_char: None,
                    });
                }
                _ => return None,
            };
            Some(Expr::BinaryOp { left: left.clone(), op, right: right.clone() })
        }
        Expr::Collate { expr, .. } => Some((**expr).clone()),
        Expr::Function(function) => function_rewrite(function, user),
        Expr::Identifier(ident) if ident.quote_style.is_none() && is_session_user(&ident.value) => Some(text(user)),
        Expr::Cast { expr, data_type, .. } => cast_rewrite(expr, data_type),
        // `schema IN (SELECT ... string_to_array(current_setting('search_path'), ',') ...)`
        // (Grafana's table and column pickers): the search path is `public`.
        Expr::InSubquery { expr, subquery, negated } => {
            let query = subquery.to_string().to_ascii_lowercase();
            (query.contains("current_setting('search_path')") && query.contains("string_to_array"))
                .then(|| Expr::InList { expr: expr.clone(), list: vec![text("public")], negated: *negated })
        }
        // `(current_schemas(true))[1]`: the first schema of the search
        // path, the one schema here (JDBC's schema listing asks).
        Expr::CompoundFieldAccess { root, access_chain } => {
            let root = match root.as_ref() {
                Expr::Nested(inner) => inner.as_ref(),
                other => other,
            };
            let current_schemas = matches!(root, Expr::Function(f)
                if f.name.0.last().is_some_and(|n| n.to_string().eq_ignore_ascii_case("current_schemas")));
            (current_schemas && access_chain.len() == 1).then(|| text("public"))
        }
        _ => None,
    }
}

/// `SELECT n.oid, n.*`: Postgres answers two columns named `oid`,
/// DataFusion refuses the duplicate; the explicit one is renamed `oid_1`
/// (clients read such columns by name, and the wildcard's keeps it).
fn distinct_names(statement: &mut Statement) -> bool {
    use datafusion::sql::sqlparser::ast::{SelectItem, SelectItemQualifiedWildcardKind, SetExpr};
    let Statement::Query(query) = statement else { return false };
    let SetExpr::Select(select) = query.body.as_mut() else { return false };
    let qualifiers: Vec<String> = select
        .projection
        .iter()
        .filter_map(|item| match item {
            SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(name), _) => {
                Some(name.to_string())
            }
            _ => None,
        })
        .collect();
    let mut changed = false;
    for item in &mut select.projection {
        if let SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) = item
            && let [qualifier, column] = parts.as_slice()
            && qualifiers.contains(&qualifier.to_string())
        {
            let alias = Ident::new(format!("{}_1", column.value));
            *item = SelectItem::ExprWithAlias { expr: Expr::CompoundIdentifier(parts.clone()), alias };
            changed = true;
        }
    }
    changed
}

/// Whether `name` (as a query names it) is a catalog table that never has
/// a row here: one of ours that is empty, or a `pg_catalog` table this
/// catalog does not have (policies, publications, triggers, ...).
fn empty_relation(name: &ObjectName) -> bool {
    let parts: Vec<String> = name.0.iter().map(|p| p.to_string().to_ascii_lowercase()).collect();
    match parts.as_slice() {
        [schema, table] if schema == "pg_catalog" => is_empty_catalog_table(table) || !is_catalog_table(table),
        [table] => is_empty_catalog_table(table),
        _ => false,
    }
}

/// Aggregates: over no rows they still answer one row.
const AGGREGATES: [&str; 10] =
    ["count", "sum", "min", "max", "avg", "string_agg", "array_agg", "bool_and", "bool_or", "every"];

/// Whether a select has no rows: it reads (inner- or cross-joined) an
/// always-empty catalog table, or a derived table that has none, and
/// neither groups nor aggregates.
fn select_empty(select: &Select) -> bool {
    use datafusion::sql::sqlparser::ast::JoinOperator;
    let inner =
        |op: &JoinOperator| matches!(op, JoinOperator::Join(_) | JoinOperator::Inner(_) | JoinOperator::CrossJoin(_));
    !aggregates(select)
        && select.from.iter().any(|from| {
            factor_empty(&from.relation)
                || from.joins.iter().any(|j| inner(&j.join_operator) && factor_empty(&j.relation))
        })
}

/// Whether a select groups or aggregates (in its own projection, not in
/// the subqueries there).
fn aggregates(select: &Select) -> bool {
    use datafusion::sql::sqlparser::ast::{GroupByExpr, Query, Visit, Visitor};
    struct Aggregates {
        /// Subqueries entered.
        depth: usize,
    }
    impl Visitor for Aggregates {
        type Break = ();
        fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.depth += 1;
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            match e {
                Expr::Function(f)
                    if self.depth == 0
                        && f.name
                            .0
                            .last()
                            .is_some_and(|n| AGGREGATES.contains(&n.to_string().to_ascii_lowercase().as_str())) =>
                {
                    ControlFlow::Break(())
                }
                _ => ControlFlow::Continue(()),
            }
        }
    }
    select.group_by != GroupByExpr::Expressions(vec![], vec![])
        || select.projection.visit(&mut Aggregates { depth: 0 }).is_break()
}

fn factor_empty(factor: &TableFactor) -> bool {
    match factor {
        TableFactor::Table { name, .. } => empty_relation(name),
        TableFactor::Derived { subquery, .. } => body_empty(&subquery.body),
        _ => false,
    }
}

/// Whether a query body has no rows (a UNION: when every branch has none).
fn body_empty(body: &SetExpr) -> bool {
    match body {
        SetExpr::Select(select) => select_empty(select),
        SetExpr::SetOperation { left, right, .. } => body_empty(left) && body_empty(right),
        SetExpr::Query(query) => body_empty(&query.body),
        _ => false,
    }
}

/// The first select of a query body (it names the columns).
fn first_select(body: &SetExpr) -> Option<&Select> {
    match body {
        SetExpr::Select(select) => Some(select),
        SetExpr::SetOperation { left, .. } => first_select(left),
        SetExpr::Query(query) => first_select(&query.body),
        _ => None,
    }
}

/// A catalog query that has no rows ([`body_empty`]): answered as `SELECT
/// NULL AS name, ... WHERE false` with the query's column names (psql's
/// `\d` asks for a table's policies, publications, triggers; JDBC's
/// `getPrimaryKeys` for its indexes: none here, and those queries use
/// array functions DataFusion does not have).
fn no_rows(statement: &Statement) -> Option<String> {
    use datafusion::sql::sqlparser::ast::SelectItem;
    let Statement::Query(query) = statement else { return None };
    if !body_empty(&query.body) {
        return None;
    }
    let select = first_select(&query.body)?;
    let mut names = Vec::new();
    for item in &select.projection {
        let name = match item {
            SelectItem::ExprWithAlias { alias, .. } => alias.value.clone(),
            SelectItem::UnnamedExpr(Expr::Identifier(ident)) => ident.value.clone(),
            SelectItem::UnnamedExpr(Expr::CompoundIdentifier(idents)) => idents.last()?.value.clone(),
            SelectItem::UnnamedExpr(Expr::Function(f)) => f.name.0.last()?.to_string().to_ascii_lowercase(),
            SelectItem::UnnamedExpr(_) => "?column?".to_string(),
            _ => return None,
        };
        // DataFusion wants distinct column names, Postgres does not.
        let mut unique = name.clone();
        let mut n = 1;
        while names.contains(&unique) {
            n += 1;
            unique = format!("{name}_{n}");
        }
        names.push(unique);
    }
    let names: Vec<String> = names.iter().map(|n| format!("NULL AS \"{}\"", n.replace('"', "\"\""))).collect();
    Some(format!("SELECT {} WHERE false", names.join(", ")))
}

/// What only a catalog query gets rewritten: its scalar subqueries
/// ([`one_row`]), and `array_to_string(acl, ...)` as NULL (the catalog's
/// array columns, privileges and options, are all NULL here; DataFusion
/// has no such function without its array functions).
fn catalog_expr(expr: &Expr) -> Option<Expr> {
    match expr {
        Expr::Function(f) if f.name.0.last().is_some_and(|n| n.to_string().eq_ignore_ascii_case("array_to_string")) => {
            Some(Expr::value(Value::Null))
        }
        _ => one_row(expr),
    }
}

/// A scalar subquery of a catalog query, its value aggregated with `max`:
/// DataFusion plans a correlated scalar subquery only when it is
/// aggregated, and the catalog's (an attribute's default, its collation)
/// have at most one row, so the value is the same.
fn one_row(expr: &Expr) -> Option<Expr> {
    use datafusion::sql::sqlparser::ast::SelectItem;
    let Expr::Subquery(query) = expr else { return None };
    // Over a catalog table that is always empty here (defaults,
    // collations, descriptions, ...): no row, so NULL.
    if body_empty(&query.body) {
        return Some(Expr::value(Value::Null));
    }
    let SetExpr::Select(select) = query.body.as_ref() else { return None };
    if aggregates(select) {
        return None;
    }
    let [item] = select.projection.as_slice() else { return None };
    let max = |e: &Expr| Some(call("max", vec![e.clone()]));
    let item = match item {
        SelectItem::UnnamedExpr(e) => SelectItem::UnnamedExpr(max(e)?),
        SelectItem::ExprWithAlias { expr, alias } => {
            SelectItem::ExprWithAlias { expr: max(expr)?, alias: alias.clone() }
        }
        _ => return None,
    };
    let mut query = query.clone();
    let SetExpr::Select(select) = query.body.as_mut() else { return None };
    select.projection = vec![item];
    Some(Expr::Subquery(query))
}

fn call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: function_args(args),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: Vec::new(),
    })
}

fn is_session_user(name: &str) -> bool {
    ["current_user", "session_user", "user", "current_role"].iter().any(|n| n.eq_ignore_ascii_case(name))
}

fn text(value: &str) -> Expr {
    Expr::value(Value::SingleQuotedString(value.to_string()))
}

fn function_rewrite(function: &Function, user: &str) -> Option<Expr> {
    let parts = &function.name.0;
    if let [ObjectNamePart::Identifier(name)] = parts.as_slice()
        && matches!(function.args, FunctionArguments::None)
        && is_session_user(&name.value)
    {
        return Some(text(user));
    }
    if let [ObjectNamePart::Identifier(schema), last] = parts.as_slice()
        && schema.value.eq_ignore_ascii_case("pg_catalog")
    {
        let mut bare = function.clone();
        bare.name = ObjectName(vec![last.clone()]);
        return Some(Expr::Function(bare));
    }
    None
}

fn cast_rewrite(expr: &Expr, data_type: &DataType) -> Option<Expr> {
    let name = match data_type {
        DataType::Regclass => "regclass".to_string(),
        DataType::Custom(name, _) => match name.0.last()? {
            ObjectNamePart::Identifier(ident) => ident.value.to_ascii_lowercase(),
            _ => return None,
        },
        _ => return None,
    };
    let cast = |to: DataType| Expr::Cast {
        kind: CastKind::Cast,
        expr: Box::new(expr.clone()),
        data_type: to,
        array: false,
        format: None,
    };
    Some(match name.as_str() {
        "regclass" => match expr {
            Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(relation) => {
                    let bare = relation.rsplit('.').next().unwrap_or(relation).trim_matches('"');
                    Expr::value(Value::Number(relation_oid(bare).to_string(), false))
                }
                _ => cast(DataType::BigInt(None)),
            },
            _ => cast(DataType::Varchar(None)),
        },
        "regtype" => call("format_type", vec![expr.clone(), Expr::value(Value::Null)]),
        "oid" | "regnamespace" | "regrole" | "int8" | "int4" | "int2" => cast(DataType::BigInt(None)),
        "regproc" | "regprocedure" | "name" | "char" | "bpchar" | "text" | "varchar" => cast(DataType::Varchar(None)),
        "bool" => cast(DataType::Boolean),
        "float8" | "float4" => cast(DataType::DoublePrecision),
        _ => return None,
    })
}

fn function_args(args: Vec<Expr>) -> FunctionArguments {
    use datafusion::sql::sqlparser::ast::{FunctionArg, FunctionArgExpr, FunctionArgumentList};
    FunctionArguments::List(FunctionArgumentList {
        duplicate_treatment: None,
        args: args.into_iter().map(|e| FunctionArg::Unnamed(FunctionArgExpr::Expr(e))).collect(),
        clauses: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(sql: &str) -> Option<String> {
        rewrite(sql, "analyst", |name| name == "pg_views")
    }

    #[test]
    fn catalog_spellings_become_datafusions() {
        let sql = "SELECT c.oid FROM pg_catalog.pg_class c WHERE c.relname OPERATOR(pg_catalog.~) '^(t)$' \
                   COLLATE pg_catalog.default AND pg_catalog.pg_table_is_visible(c.oid)";
        assert_eq!(
            rewritten(sql).unwrap(),
            "SELECT c.oid FROM pg_catalog.pg_class c WHERE c.relname ~ '^(t)$' AND pg_table_is_visible(c.oid)"
        );
        let sql = "SELECT 'pg_class'::regclass, t.typrelid::regtype, current_user, session_user FROM pg_type t";
        let out = rewritten(sql).unwrap();
        assert!(out.contains(&relation_oid("pg_class").to_string()), "{out}");
        assert!(out.contains("format_type(t.typrelid, NULL)") && out.contains("FROM pg_catalog.pg_type"), "{out}");
        assert!(out.contains("'analyst', 'analyst'"), "{out}");
    }

    #[test]
    fn what_reads_an_always_empty_catalog_table_has_no_rows() {
        let join = "SELECT a.attname, ci.relname AS pk FROM pg_catalog.pg_class ct JOIN pg_catalog.pg_attribute a \
                    ON ct.oid = a.attrelid JOIN pg_catalog.pg_index i ON a.attrelid = i.indrelid";
        assert_eq!(rewritten(join).unwrap(), "SELECT NULL AS \"attname\", NULL AS \"pk\" WHERE false");
        let union = "SELECT pubname, NULL FROM pg_catalog.pg_publication UNION SELECT pubname, NULL FROM pg_catalog.pg_publication_rel";
        assert_eq!(rewritten(union).unwrap(), "SELECT NULL AS \"pubname\", NULL AS \"?column?\" WHERE false");
        let derived = "SELECT * FROM (SELECT i.indkey AS keys FROM pg_catalog.pg_class c JOIN pg_catalog.pg_index i ON c.oid = i.indrelid) r";
        assert_eq!(rewritten(derived), None, "a wildcard names no columns: left to DataFusion");
        // Aggregates answer a row over nothing: left as they are.
        assert_eq!(rewritten("SELECT COUNT(*) FROM pg_catalog.pg_index"), None);
        let scalar = rewritten(
            "SELECT c.relname, (SELECT COUNT(*) FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid) FROM pg_class c",
        );
        assert!(scalar.unwrap().contains("(SELECT COUNT(*) FROM pg_catalog.pg_index"), "an aggregated subquery stays");
        let default = rewritten(
            "SELECT (SELECT d.adbin FROM pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid) FROM pg_attribute a",
        );
        assert_eq!(default.unwrap(), "SELECT NULL FROM pg_catalog.pg_attribute a");
    }

    #[test]
    fn other_statements_pass_untouched() {
        assert_eq!(rewritten("SELECT country, COUNT(*) FROM clicks GROUP BY 1"), None);
        assert_eq!(rewritten("SELECT \"user\" FROM clicks"), None, "a quoted column named user stays a column");
        assert_eq!(rewritten("SELECT * FROM pg_views"), None, "a served table of a catalog name is the served one");
        assert_eq!(rewritten("not sql at all"), None);
        assert_eq!(rewritten("SELECT 1; SELECT 2"), None);
        // Hostile nesting stops at the parser's depth limit: passed on
        // untouched, for the engine's own limits to refuse.
        let deep = format!("SELECT {}1{} FROM pg_class", "(".repeat(100_000), ")".repeat(100_000));
        assert_eq!(rewritten(&deep), None);
    }
}
