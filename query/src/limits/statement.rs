//! Limits on a statement's shape, checked before anything parses it into a
//! tree: length, expression depth, list length.
//!
//! Why before parsing: a left-deep chain (`1+1+…+1`, `a = 0 OR a = 1 OR …`)
//! parses without deep recursion, but every later pass over the tree
//! (planning, cloning, dropping, the fast path's translation, predicate
//! evaluation) recurses once per level, and a few thousand levels overflow a
//! thread's stack — an abort, not a catchable panic. So the check works on
//! the token stream, iteratively, and bounds the depth of any tree a parser
//! could build from it:
//!
//! depth(group) ≤ max over the group's comma-separated items of
//! (operators in the item + the deepest parenthesized group in it + 1).
//!
//! Every binary or unary operator (symbols and keywords such as `AND`,
//! `OR`, `NOT`, `IS`, `BETWEEN`, `LIKE`, `IN`, `CASE`/`WHEN`) adds at most
//! one level, and parentheses, brackets and function calls one each, so the
//! bound is never below the real depth (it may be above: `a = 0 OR a = 1`
//! counts three operators for a tree two deep). The engine runs queries on
//! threads whose stacks hold the deepest tree this admits
//! (see [`crate::engine`]).
//!
//! Planning itself is bounded next ([`check_statement`], [`check_plan`]):
//! it runs on the query's thread without yielding, so the deadline cannot
//! stop it, and its cost grows with the relations and CTEs a statement
//! names faster than with its length — 7,000 chained CTEs (222 KB) planned
//! for a minute at 12 GB, and a CTE read twice by the next one doubles
//! the plan at each step. So the parsed statement's CTEs and relations are
//! counted before it is planned, and the logical plan's nodes (each
//! reference to a CTE counting its whole plan) before it is optimized.

use std::ops::ControlFlow;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{Query, Select, TableFactor, Visit, Visitor};

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use sluice_config::QueryLimits;

use crate::error::QueryError;

/// Checks `sql` against the statement limits of `limits`.
pub fn check(sql: &str, limits: &QueryLimits) -> Result<(), QueryError> {
    let max_size = limits.max_query_size.as_u64();
    if sql.len() as u64 > max_size {
        return Err(QueryError::TooComplex {
            limit: "limits.max_query_size",
            message: format!("the statement is {} bytes long, more than the {max_size} bytes allowed", sql.len()),
        });
    }
    // A statement that does not tokenize is the parser's to report, with
    // its position; it cannot build a tree either.
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else { return Ok(()) };
    let shape = measure(&tokens);
    if shape.depth > u64::from(limits.max_expression_depth) {
        return Err(QueryError::TooComplex {
            limit: "limits.max_expression_depth",
            message: format!(
                "the statement nests expressions up to {} levels deep (counting operators, calls and parentheses), \
                 more than the {} allowed; use IN (...) instead of long OR chains, or simplify the expression",
                shape.depth, limits.max_expression_depth
            ),
        });
    }
    if shape.list_items > u64::from(limits.max_list_items) {
        return Err(QueryError::TooComplex {
            limit: "limits.max_list_items",
            message: format!(
                "a list in the statement has {} items, more than the {} allowed",
                shape.list_items, limits.max_list_items
            ),
        });
    }
    Ok(())
}

/// Checks a parsed statement against `limits.max_ctes` and
/// `limits.max_relations`, before it is planned. Relations are counted as
/// planning expands them: a reference to a CTE counts every relation of
/// the CTE (DataFusion plans a CTE again at each reference), so a chain of
/// CTEs that each read the one before twice doubles at every step and is
/// refused here, before planning takes exponential time.
pub fn check_statement(statement: &DFStatement, limits: &QueryLimits) -> Result<(), QueryError> {
    // CTEs first: expanding each one's relations visits the CTEs before it.
    let mut ctes = Ctes(0);
    visit(statement, &mut ctes);
    let mut counts = Relations { ctes: ctes.0, ..Relations::default() };
    if counts.ctes <= u64::from(limits.max_ctes) {
        visit(statement, &mut counts);
        counts.relations = counts.relations.saturating_sub(counts.definitions);
    }
    if counts.ctes > u64::from(limits.max_ctes) {
        return Err(QueryError::TooComplex {
            limit: "limits.max_ctes",
            message: format!(
                "the statement defines {} common table expressions (WITH items), more than the {} allowed",
                counts.ctes, limits.max_ctes
            ),
        });
    }
    if counts.relations > u64::from(limits.max_relations) {
        return Err(QueryError::TooComplex {
            limit: "limits.max_relations",
            message: format!(
                "the statement reads {} relations (SELECT blocks, and tables or subqueries in FROM and JOIN, \
                 a CTE counting its own at each reference), more than the {} allowed",
                counts.relations, limits.max_relations
            ),
        });
    }
    Ok(())
}

fn visit(statement: &DFStatement, counts: &mut impl Visitor) {
    match statement {
        DFStatement::Statement(statement) => {
            let _ = statement.visit(counts);
        }
        DFStatement::Explain(explain) => visit(&explain.statement, counts),
        // Refused as statements once planned; nothing to plan before that.
        DFStatement::CreateExternalTable(_) | DFStatement::CopyTo(_) | DFStatement::Reset(_) => {}
    }
}

/// The CTEs of a statement.
struct Ctes(u64);

impl Visitor for Ctes {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        self.0 += query.with.as_ref().map_or(0, |with| with.cte_tables.len() as u64);
        ControlFlow::Continue(())
    }
}

/// What [`check_statement`] counts.
#[derive(Default)]
struct Relations {
    ctes: u64,
    relations: u64,
    /// The relations each CTE seen so far expands to, by lowercase name.
    expansions: std::collections::HashMap<String, u64>,
    /// The relations of CTE definitions: the visit counts them where they
    /// are defined, but they count where they are read.
    definitions: u64,
}

impl Relations {
    /// The relations `node` expands to, with the CTEs known so far.
    fn expansion(&self, node: &impl Visit) -> u64 {
        let mut inner = Relations { expansions: self.expansions.clone(), ..Relations::default() };
        let _ = node.visit(&mut inner);
        inner.relations.saturating_sub(inner.definitions)
    }
}

impl Visitor for Relations {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            // A query's WITH is visited before its body: the body's
            // references find the CTEs' expansions.
            for cte in &with.cte_tables {
                let expansion = self.expansion(&cte.query);
                self.definitions = self.definitions.saturating_add(expansion);
                self.expansions.insert(cte.alias.name.value.to_lowercase(), expansion);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, _select: &Select) -> ControlFlow<()> {
        self.relations = self.relations.saturating_add(1);
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        let expansion = match factor {
            TableFactor::Table { name, .. } if name.0.len() == 1 => name.0[0]
                .as_ident()
                .and_then(|ident| self.expansions.get(&ident.value.to_lowercase()))
                .copied()
                .unwrap_or(1),
            _ => 1,
        };
        self.relations = self.relations.saturating_add(expansion);
        ControlFlow::Continue(())
    }
}

/// Checks a logical plan against `limits.max_plan_nodes` before it is
/// optimized: its nodes and its subqueries' nodes, counted until the limit
/// is passed (a plan may share a CTE's nodes many times over; its count is
/// what optimizing it would visit).
pub fn check_plan(plan: &LogicalPlan, limits: &QueryLimits) -> Result<(), QueryError> {
    let max = u64::from(limits.max_plan_nodes);
    let mut nodes = 0u64;
    let _ = plan.apply_with_subqueries(|_| {
        nodes += 1;
        Ok(if nodes > max { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    });
    if nodes > max {
        return Err(QueryError::TooComplex {
            limit: "limits.max_plan_nodes",
            message: format!(
                "the statement's plan has more than {max} nodes (each reference to a CTE counts its whole plan); \
                 simplify the statement"
            ),
        });
    }
    Ok(())
}

/// The shape [`check`] limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// An upper bound of the depth of any expression tree of the statement.
    pub depth: u64,
    /// The most comma-separated items in one group.
    pub list_items: u64,
}

/// One open group (the statement, or a parenthesis or bracket).
#[derive(Default)]
struct Group {
    /// Operators in the current item.
    ops: u64,
    /// The deepest group nested in the current item.
    child: u64,
    /// The deepest item closed so far.
    deepest: u64,
    items: u64,
}

impl Group {
    fn close_item(&mut self) {
        self.deepest = self.deepest.max(self.ops + self.child + 1);
        self.ops = 0;
        self.child = 0;
        self.items += 1;
    }
}

pub fn measure(tokens: &[Token]) -> Shape {
    let mut stack = vec![Group::default()];
    let mut list_items = 0u64;
    for token in tokens {
        match token {
            Token::LParen | Token::LBracket | Token::LBrace => stack.push(Group::default()),
            Token::RParen | Token::RBracket | Token::RBrace if stack.len() > 1 => {
                let mut group = stack.pop().expect("more than one");
                group.close_item();
                list_items = list_items.max(group.items);
                let parent = stack.last_mut().expect("the statement's group");
                parent.child = parent.child.max(group.deepest);
            }
            Token::Comma => stack.last_mut().expect("never empty").close_item(),
            token if is_operator(token) => stack.last_mut().expect("never empty").ops += 1,
            _ => {}
        }
    }
    // Unclosed groups (the parser refuses them) count as closed here.
    while stack.len() > 1 {
        let mut group = stack.pop().expect("more than one");
        group.close_item();
        list_items = list_items.max(group.items);
        let parent = stack.last_mut().expect("the statement's group");
        parent.child = parent.child.max(group.deepest);
    }
    let mut root = stack.pop().expect("the statement's group");
    root.close_item();
    let depth = root.deepest;
    list_items = list_items.max(root.items);
    Shape { depth, list_items }
}

fn is_operator(token: &Token) -> bool {
    match token {
        Token::Word(word) => matches!(
            word.keyword,
            Keyword::AND
                | Keyword::OR
                | Keyword::NOT
                | Keyword::XOR
                | Keyword::IS
                | Keyword::BETWEEN
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::SIMILAR
                | Keyword::IN
                | Keyword::CASE
                | Keyword::WHEN
                | Keyword::THEN
                | Keyword::ELSE
                | Keyword::AT
                | Keyword::COLLATE
                | Keyword::ANY
                | Keyword::ALL
                | Keyword::EXISTS
                | Keyword::INTERVAL
        ),
        Token::EOF
        | Token::Number(..)
        | Token::Char(_)
        | Token::SingleQuotedString(_)
        | Token::DoubleQuotedString(_)
        | Token::TripleSingleQuotedString(_)
        | Token::TripleDoubleQuotedString(_)
        | Token::DollarQuotedString(_)
        | Token::SingleQuotedByteStringLiteral(_)
        | Token::DoubleQuotedByteStringLiteral(_)
        | Token::TripleSingleQuotedByteStringLiteral(_)
        | Token::TripleDoubleQuotedByteStringLiteral(_)
        | Token::SingleQuotedRawStringLiteral(_)
        | Token::DoubleQuotedRawStringLiteral(_)
        | Token::TripleSingleQuotedRawStringLiteral(_)
        | Token::TripleDoubleQuotedRawStringLiteral(_)
        | Token::NationalStringLiteral(_)
        | Token::EscapedStringLiteral(_)
        | Token::UnicodeStringLiteral(_)
        | Token::HexStringLiteral(_)
        | Token::Comma
        | Token::Whitespace(_)
        | Token::Period
        | Token::SemiColon
        | Token::Placeholder(_)
        | Token::LParen
        | Token::RParen
        | Token::LBracket
        | Token::RBracket
        | Token::LBrace
        | Token::RBrace => false,
        // Every symbol: arithmetic, comparison, concatenation, casts (`::`),
        // JSON and bit operators.
        _ => true,
    }
}

/// The stack of every thread that plans or runs a query: deep enough for
/// the deepest expression `limits.max_expression_depth` admits (2,000
/// levels, run in a debug build by the query crate's tests; 5,000 levels
/// did not overflow either). Reserved, not committed: untouched pages cost
/// nothing.
pub(crate) const QUERY_STACK_SIZE: usize = 256 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(sql: &str) -> Shape {
        measure(&Tokenizer::new(&GenericDialect {}, sql).tokenize().unwrap())
    }

    #[test]
    fn chains_count_every_operator() {
        let sum = format!("SELECT 1{}", "+1".repeat(2999));
        assert_eq!(shape(&sum).depth, 3000);
        let ors: Vec<String> = (0..100).map(|i| format!("status = {i}")).collect();
        let ors = format!("SELECT status FROM t WHERE {}", ors.join(" OR "));
        assert_eq!(shape(&ors).depth, 200);
    }

    #[test]
    fn lists_are_wide_not_deep() {
        let items: Vec<String> = (0..5000).map(|i| i.to_string()).collect();
        let sql = format!("SELECT a FROM t WHERE a IN ({})", items.join(", "));
        let s = shape(&sql);
        assert_eq!(s.list_items, 5000);
        assert!(s.depth <= 4, "{s:?}");
        let columns = (0..300).map(|i| format!("a + {i}")).collect::<Vec<_>>().join(", ");
        assert!(shape(&format!("SELECT {columns} FROM t")).depth <= 3);
    }

    #[test]
    fn nesting_adds_up() {
        let nested = format!("SELECT {}1{}", "(".repeat(500), ")".repeat(500));
        assert_eq!(shape(&nested).depth, 501);
        let calls = format!("SELECT {}x{}", "abs(".repeat(40), ")".repeat(40));
        assert_eq!(shape(&calls).depth, 41);
        // Operators inside a group and around it add up.
        assert_eq!(shape("SELECT 1 + (2 + (3 + 4))").depth, 6);
        // Unbalanced parentheses still give a bound.
        assert!(shape(&format!("SELECT {}", "(".repeat(100))).depth >= 100);
        assert!(shape(&format!("SELECT 1{}", ")".repeat(100))).depth >= 1);
    }

    #[test]
    fn limits_name_the_setting() {
        let limits = QueryLimits { max_expression_depth: 100, max_list_items: 10, ..QueryLimits::default() };
        let deep = format!("SELECT 1{}", "+1".repeat(200));
        let e = check(&deep, &limits).unwrap_err();
        assert!(e.to_string().contains("limits.max_expression_depth"), "{e}");
        assert_eq!(e.status(), 400);
        let wide = format!("SELECT a FROM t WHERE a IN ({})", ["1"; 11].join(","));
        assert!(check(&wide, &limits).unwrap_err().to_string().contains("limits.max_list_items"));
        let long = format!("SELECT '{}'", "x".repeat(300 * 1024));
        assert!(check(&long, &QueryLimits::default()).unwrap_err().to_string().contains("limits.max_query_size"));
        check("SELECT a, b FROM t WHERE a = 1 AND b IN (1, 2, 3)", &limits).unwrap();
    }

    fn parse(sql: &str) -> DFStatement {
        datafusion::sql::parser::DFParser::parse_sql(sql).unwrap().pop_front().unwrap()
    }

    #[test]
    fn ctes_and_relations_are_counted_before_planning() {
        let limits = QueryLimits { max_ctes: 10, max_relations: 200, ..QueryLimits::default() };
        let chain = |n: usize| {
            let ctes: Vec<String> = (1..n).map(|i| format!("c{i} AS (SELECT * FROM c{})", i - 1)).collect();
            format!("WITH c0 AS (SELECT 1 AS x), {} SELECT * FROM c{}", ctes.join(", "), n - 1)
        };
        check_statement(&parse(&chain(10)), &limits).unwrap();
        let e = check_statement(&parse(&chain(11)), &limits).unwrap_err();
        assert!(e.to_string().contains("limits.max_ctes"), "{e}");
        assert_eq!(e.status(), 400);
        // A chain that reads each CTE twice doubles at every step: eight
        // steps expand to over 200 relations, however short the text.
        let doubling = |n: usize| {
            let ctes: Vec<String> = (1..n)
                .map(|i| format!("c{i} AS (SELECT * FROM c{p} UNION ALL SELECT * FROM c{p})", p = i - 1))
                .collect();
            format!("WITH c0 AS (SELECT 1 AS x), {} SELECT count(*) FROM c{}", ctes.join(", "), n - 1)
        };
        check_statement(&parse(&doubling(6)), &limits).unwrap();
        let e = check_statement(&parse(&doubling(9)), &limits).unwrap_err();
        assert!(e.to_string().contains("limits.max_relations"), "{e}");
        // Nested WITHs double too.
        let nested = "WITH a AS (WITH b AS (SELECT * FROM t, t, t, t, t, t, t, t) SELECT * FROM b, b, b, b, b, b, b, b) \
                      SELECT * FROM a, a, a, a";
        assert!(check_statement(&parse(nested), &limits).is_err());
        let limits = QueryLimits { max_relations: 20, ..limits };
        let joins = |n: usize| {
            let joined: Vec<String> = (1..n).map(|i| format!("JOIN t t{i} ON t{i}.a = t0.a")).collect();
            format!("SELECT count(*) FROM t t0 {}", joined.join(" "))
        };
        // One SELECT block and n tables.
        check_statement(&parse(&joins(19)), &limits).unwrap();
        let e = check_statement(&parse(&joins(20)), &limits).unwrap_err();
        assert!(e.to_string().contains("limits.max_relations"), "{e}");
        let unions = vec!["SELECT 1"; 21].join(" UNION ALL ");
        assert!(check_statement(&parse(&unions), &limits).is_err());
        // An EXPLAIN counts what it explains.
        assert!(check_statement(&parse(&format!("EXPLAIN {}", joins(20))), &limits).is_err());
    }

    #[tokio::test]
    async fn a_plan_that_doubles_is_refused_before_it_is_optimized() {
        let ctx = datafusion::prelude::SessionContext::new();
        // Each CTE reads the one before twice: 2^n nodes by n CTEs (what
        // `check_statement` admits with a high `max_relations`).
        let ctes: Vec<String> =
            (1..13).map(|i| format!("c{i} AS (SELECT * FROM c{p} UNION ALL SELECT * FROM c{p})", p = i - 1)).collect();
        let sql = format!("WITH c0 AS (SELECT 1 AS x), {} SELECT count(*) FROM c12", ctes.join(", "));
        let plan = ctx.state().create_logical_plan(&sql).await.unwrap();
        let e = check_plan(&plan, &QueryLimits { max_plan_nodes: 5000, ..QueryLimits::default() }).unwrap_err();
        assert!(e.to_string().contains("limits.max_plan_nodes"), "{e}");
        let plan = ctx.state().create_logical_plan("SELECT 1 UNION ALL SELECT 2").await.unwrap();
        check_plan(&plan, &QueryLimits::default()).unwrap();
    }
}
