//! `SET autocommit = 1, sql_mode = …` in one statement (MariaDB Connector/J's first statement):
//! the autocommit part is emulated per app connection and must never reach the session's
//! connection (turning autocommit on there would commit the session), the rest goes upstream.
//! The rest is cut from the statement's own text — tokens unchanged, so the server reads what
//! the app wrote — and is classified again as a statement of its own: whatever this cutting
//! got wrong, the policy sees exactly what is sent.

use super::{classify, Verdict};
use sqlparser::dialect::MySqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

/// The autocommit value and the statement without its autocommit assignment; `None` if the
/// statement cannot be cut so (then it is refused).
pub(super) fn without_autocommit(sql: &str) -> Option<(bool, String)> {
    // Raw literals (no unescaping), so that the tokens print back as written.
    let tokens = Tokenizer::new(&MySqlDialect {}, sql)
        .with_unescape(false)
        .tokenize()
        .ok()?;
    let mut tokens = tokens
        .iter()
        .skip_while(|t| matches!(t, Token::Whitespace(_)));
    match tokens.next()? {
        Token::Word(w) if w.value.eq_ignore_ascii_case("SET") => {}
        _ => return None,
    }
    // Assignments, split at the commas outside parentheses.
    let mut segments = vec![String::new()];
    let mut depth = 0usize;
    for t in tokens {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::Comma if depth == 0 => {
                segments.push(String::new());
                continue;
            }
            _ => {}
        }
        segments.last_mut()?.push_str(&t.to_string());
    }
    let mut autocommit = None;
    let mut rest = Vec::new();
    for segment in segments {
        match classify(&format!("SET {segment}")).verdict {
            Verdict::SetAutocommit(on) if autocommit.is_none() => autocommit = Some(on),
            Verdict::SetAutocommit(_) => return None,
            _ => rest.push(segment.trim().to_owned()),
        }
    }
    Some((autocommit?, format!("SET {}", rest.join(", "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_autocommit_assignment_is_cut_and_the_rest_kept_as_written() {
        let (on, rest) = without_autocommit(
            "set autocommit=1, sql_mode = concat(@@sql_mode,',STRICT_TRANS_TABLES')",
        )
        .unwrap();
        assert!(on);
        assert_eq!(
            rest,
            "SET sql_mode = concat(@@sql_mode,',STRICT_TRANS_TABLES')"
        );
        let (on, rest) = without_autocommit(
            "SET @a = 'x\\'y,(z)', @@session.autocommit = OFF, time_zone = '+00:00'",
        )
        .unwrap();
        assert!(!on);
        assert_eq!(rest, "SET @a = 'x\\'y,(z)', time_zone = '+00:00'");
        assert_eq!(
            without_autocommit("SET autocommit = 1, autocommit = 0"),
            None
        );
        assert_eq!(without_autocommit("SET time_zone = '+00:00'"), None);
    }
}
