//! The one place where SQL text from an app becomes a syntax tree, with its depth bounded
//! before any tree exists.
//!
//! Why a bound of our own: sqlparser limits its *recursion* (and grows its stack while it
//! parses and visits), but operator chains (`1+1+1…`, `a=1 OR a=2 OR …`, `… UNION …`, `a.b.c…`)
//! are built in a loop, each link one level deeper than the last. Nothing limits that depth, and
//! whatever walks the tree afterwards without stack growth — the compiler's `Drop`, `Clone`,
//! `PartialEq`, our own analyses — recursed off the end of the stack: one 300 KB statement
//! aborted the whole process (issue 15). So the text is tokenized first, a bound on the depth
//! of the tree the parser would build is computed from the tokens alone (one pass, no
//! recursion), and a statement over [`MAX_NESTING`] is refused before it is parsed.
//!
//! The bound ([`nesting_bound`]): every link of a chain consumes at least one token that is
//! neither a literal, an identifier nor a separator, at the nesting level (parentheses) of the
//! chain. Per level we count such tokens since the last comma (a comma at one level separates
//! items of a list, which are siblings, not a deeper level), plus every set operator (`UNION`,
//! `EXCEPT`, `INTERSECT`, `MINUS`) at that level since it opened: the branches of a set
//! operation are whole SELECTs whose own commas must not hide the chain. The bound at a token
//! is the sum of these counts over the levels that enclose it; the statement's is the largest.
//! It over-counts (`a=1 OR a=2` counts both `=` and `OR`), never under-counts.

use sqlparser::ast::Statement;
use sqlparser::dialect::MySqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

/// The deepest tree (as bounded by [`nesting_bound`]) a statement may build. MariaDB itself
/// refuses `SELECT 1+1+…` past ~600 terms (error 1436, thread stack overrun) but flattens OR
/// chains; at two counted tokens per `col = v OR` term this admits ORM-built OR chains of 2,500
/// terms. The stack this needs is measured by `deep_statements_are_refused_before_parsing`
/// (debug build, 2 MiB thread: the stack of a tokio worker).
pub const MAX_NESTING: usize = 5_000;

/// Why a text is not a tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    #[error("it nests {depth} levels deep (operators chained without parentheses count one level each); the limit is {limit}: split it, or use IN (…) instead of a long OR chain")]
    TooDeep { depth: usize, limit: usize },
    #[error("{0}")]
    Syntax(String),
}

/// Parses `sql` (MySQL dialect), refusing text whose tree would nest deeper than
/// [`MAX_NESTING`].
pub fn parse(sql: &str) -> Result<Vec<Statement>, SqlError> {
    parse_with_limit(sql, MAX_NESTING)
}

fn parse_with_limit(sql: &str, limit: usize) -> Result<Vec<Statement>, SqlError> {
    let dialect = MySqlDialect {};
    // Tokenized as `Parser::try_with_sql` does (its default options unescape literals).
    let tokens = Tokenizer::new(&dialect, sql)
        .with_unescape(true)
        .tokenize_with_location()
        .map_err(|e| SqlError::Syntax(ParserError::from(e).to_string()))?;
    let depth = nesting_bound(&tokens);
    if depth > limit {
        return Err(SqlError::TooDeep { depth, limit });
    }
    Parser::new(&dialect)
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|e| SqlError::Syntax(e.to_string()))
}

/// One nesting level (the statement, or the inside of a pair of brackets).
#[derive(Default, Clone, Copy)]
struct Level {
    /// Counted tokens since this level opened or since its last comma.
    item: usize,
    /// Set operators since this level opened.
    set_ops: usize,
    /// The sum of the enclosing levels' counts when this one opened.
    outer: usize,
}

impl Level {
    fn depth(&self) -> usize {
        self.outer + self.item + self.set_ops
    }
}

/// An upper bound on the depth of the tree the parser builds from `tokens` (module doc).
pub fn nesting_bound(tokens: &[TokenWithSpan]) -> usize {
    let mut levels = vec![Level::default()];
    let mut deepest = 0;
    for t in tokens {
        let Some(top) = levels.last_mut() else {
            break; // unreachable: the statement level is never popped
        };
        match &t.token {
            Token::Whitespace(_) | Token::EOF => continue,
            Token::Comma => top.item = 0,
            Token::SemiColon => {
                levels.truncate(1);
                levels[0] = Level::default();
            }
            Token::LParen | Token::LBracket | Token::LBrace => {
                top.item += 1;
                let outer = top.depth();
                levels.push(Level {
                    outer,
                    ..Level::default()
                });
            }
            Token::RParen | Token::RBracket | Token::RBrace => {
                if levels.len() > 1 {
                    levels.pop();
                }
            }
            Token::Word(w)
                if matches!(
                    w.keyword,
                    Keyword::UNION | Keyword::EXCEPT | Keyword::INTERSECT | Keyword::MINUS
                ) =>
            {
                top.set_ops += 1
            }
            // Literals, names and the keywords that are values never start a deeper level.
            Token::Word(w)
                if w.quote_style.is_some()
                    || matches!(
                        w.keyword,
                        Keyword::NoKeyword
                            | Keyword::NULL
                            | Keyword::TRUE
                            | Keyword::FALSE
                            | Keyword::DEFAULT
                    ) => {}
            Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::Placeholder(_) => {}
            _ => top.item += 1,
        }
        if let Some(top) = levels.last() {
            deepest = deepest.max(top.depth());
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(sql: &str) -> usize {
        let tokens = Tokenizer::new(&MySqlDialect {}, sql)
            .tokenize_with_location()
            .unwrap();
        nesting_bound(&tokens)
    }

    #[test]
    fn chains_count_one_level_per_link_and_lists_do_not() {
        assert!(bound(&format!("SELECT 1{}", "+1".repeat(100))) >= 100);
        let or_chain: Vec<String> = (0..100).map(|i| format!("a = {i}")).collect();
        assert!(bound(&format!("SELECT * FROM t WHERE {}", or_chain.join(" OR "))) >= 100);
        let unions = vec!["SELECT a, b, c FROM t"; 100].join(" UNION ");
        assert!(bound(&unions) >= 99);
        assert!(bound(&format!("SELECT a{}", ".b".repeat(100))) >= 100);
        // Lists are siblings: a long IN list, a wide projection or a bulk INSERT stays shallow.
        let list: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
        assert!(bound(&format!("SELECT * FROM t WHERE a IN ({})", list.join(", "))) < 20);
        let rows = vec!["(-1, 'x', NULL, NOW())"; 10_000].join(", ");
        assert!(bound(&format!("INSERT INTO t VALUES {rows}")) < 20);
        let columns: Vec<String> = (0..10_000).map(|i| format!("c{i} AS d{i}")).collect();
        assert!(bound(&format!("SELECT {} FROM t", columns.join(", "))) < 20);
    }

    #[test]
    fn nesting_adds_the_levels_it_is_inside() {
        // A chain inside a chain inside parentheses: the counts add up.
        let inner = format!("(1{})", "+1".repeat(50));
        let sql = format!("SELECT 1{}{inner}", "+1".repeat(50));
        assert!(bound(&sql) >= 100);
        // A comma in an inner list does not reset the outer chain.
        assert!(bound(&format!("SELECT 1{}+f(1, 2)+1", "+1".repeat(60))) >= 60);
    }

    /// The crash of issue 15: `SELECT 1` followed by 150,000 `+1` (and an OR chain an ORM
    /// could build) is refused before a tree exists; statements just under the limit, of every
    /// chain shape, go through the policy and the masking analysis and are dropped — all on a
    /// thread with a tokio worker's stack, in the debug build (which needs the most stack).
    #[test]
    fn deep_statements_are_refused_before_parsing() {
        let handle = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                let crash = format!("SELECT 1{}", "+1".repeat(150_000));
                assert!(matches!(parse(&crash), Err(SqlError::TooDeep { .. })));
                let verdict = crate::policy::classify(&crash).verdict;
                let crate::policy::Verdict::Refuse(why) = verdict else {
                    panic!("{verdict:?}")
                };
                assert!(why.contains("too complex"), "{why}");
                let terms = |n: usize, f: &dyn Fn(usize) -> String, sep: &str| {
                    (0..n).map(f).collect::<Vec<_>>().join(sep)
                };
                let ors = |n| terms(n, &|i| format!("email = 'a{i}'"), " OR ");
                let sql = format!("SELECT * FROM users WHERE {}", ors(40_000));
                assert!(matches!(parse(&sql), Err(SqlError::TooDeep { .. })));

                let n = MAX_NESTING - 10;
                let mut rules = std::collections::BTreeMap::new();
                rules.insert("shop.users.email".to_string(), "email".to_string());
                let rules = crate::mask::MaskRules::parse(&rules).unwrap();
                for sql in [
                    format!("SELECT 1{}", "+1".repeat(n)),
                    format!("SELECT id FROM users WHERE {}", ors(n / 2 - 10)),
                    format!(
                        "UPDATE users SET id = 1{} WHERE id = 2",
                        "-1".repeat(n - 10)
                    ),
                    terms(n, &|_| "SELECT id, name FROM users".into(), " UNION "),
                    format!("SELECT a{} FROM users", ".b".repeat(n)),
                    format!(
                        "SELECT id FROM users WHERE id IS NOT NULL{}",
                        " IS NOT NULL".repeat(n / 3 - 10)
                    ),
                ] {
                    let statement = crate::policy::parse_statement(&sql)
                        .unwrap_or_else(|| panic!("{} does not parse", &sql[..60]));
                    let _ = crate::mask::analysis::check(&statement, &rules, Some("shop"));
                    let _ = crate::policy::classify(&sql);
                }
            })
            .unwrap();
        handle.join().expect("no stack overflow, no panic");
    }
}
