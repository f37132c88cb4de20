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

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use sluice_config::QueryLimits;

use crate::engine::QueryError;

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
}
