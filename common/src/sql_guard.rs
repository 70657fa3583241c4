//! Checks of SQL text before it reaches the parser.
//!
//! sqlparser backtracks at keywords that may start an expression or be a
//! function name (`NOT (`, `POSITION(`, `CAST(`, `CASE(`, ..): each such keyword
//! call nested in another doubles (for `POSITION(`, about triples) the work, so
//! a one-kilobyte statement of nested `not(` can hold a thread for hours, beyond
//! any query timeout (the parser cannot be interrupted). Found by fuzzing the
//! query path. Statements that nest such calls deeper than
//! [`MAX_KEYWORD_NESTING`] are refused before parsing; ordinary function calls
//! and parentheses may nest as deep as the parser allows.

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// Keyword calls nested in one another at most (about 70 ms of parsing at
/// worst, 2 ms for most keywords).
pub const MAX_KEYWORD_NESTING: usize = 10;
/// Parts of a dotted name at most: the parser backtracks through a long chain
/// (`a.b.c. .. .(..`) too, doubling per part (16 ms at 12 parts).
pub const MAX_DOTTED_PARTS: usize = 16;

/// The words sqlparser tries as a keyword expression before a function name.
const BACKTRACKING_WORDS: &[&str] = &[
    "ARRAY",
    "BOX",
    "CASE",
    "CAST",
    "CEIL",
    "CIRCLE",
    "CONVERT",
    "CURRENT_CATALOG",
    "CURRENT_DATE",
    "CURRENT_TIME",
    "CURRENT_TIMESTAMP",
    "CURRENT_USER",
    "EXISTS",
    "EXTRACT",
    "FALSE",
    "FLOOR",
    "INTERVAL",
    "LAMBDA",
    "LINE",
    "LOCALTIME",
    "LOCALTIMESTAMP",
    "LSEG",
    "MAP",
    "MATCH",
    "NOT",
    "NULL",
    "OVERLAY",
    "PATH",
    "POINT",
    "POLYGON",
    "POSITION",
    "PRIOR",
    "SAFE_CAST",
    "SESSION_USER",
    "STRUCT",
    "SUBSTR",
    "SUBSTRING",
    "TRIM",
    "TRUE",
    "TRY_CAST",
    "TRY_CONVERT",
    "USER",
];

/// Refuses SQL whose parsing would take exponential time; says what to change.
pub fn check_parse_cost(sql: &str) -> Result<(), String> {
    // Text that does not tokenize is refused by the parser at once.
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return Ok(());
    };
    let mut opened: Vec<bool> = Vec::new();
    let mut nesting = 0usize;
    let mut previous: Option<&Token> = None;
    let mut dotted = 0usize;
    for token in &tokens {
        match (previous, token) {
            (_, Token::Whitespace(_)) => continue,
            (Some(Token::Period), Token::Word(_)) => {
                dotted += 1;
                if dotted >= MAX_DOTTED_PARTS {
                    return Err(format!(
                        "the statement has a dotted name of more than {MAX_DOTTED_PARTS} parts, \
                         which the SQL parser takes exponential time for; quote long field \
                         paths as one name, e.g. \"a.b.c\""
                    ));
                }
            }
            (_, Token::Period) => {}
            _ => dotted = 0,
        }
        match token {
            Token::LParen => {
                let keyword = matches!(previous, Some(Token::Word(word))
                    if word.quote_style.is_none()
                        && BACKTRACKING_WORDS.iter().any(|k| word.value.eq_ignore_ascii_case(k)));
                opened.push(keyword);
                if keyword {
                    nesting += 1;
                    if nesting > MAX_KEYWORD_NESTING {
                        return Err(format!(
                            "the statement nests keyword calls such as `NOT (`, `CAST(`, \
                             `POSITION(` or `SUBSTRING(` more than {MAX_KEYWORD_NESTING} deep, \
                             which the SQL parser takes exponential time for; simplify the \
                             expression (e.g. fold nested NOTs, compute parts in a subquery)"
                        ));
                    }
                }
            }
            Token::RParen if opened.pop() == Some(true) => nesting -= 1,
            _ => {}
        }
        previous = Some(token);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_keyword_calls_are_refused_before_parsing() {
        let deep = format!("SELECT {}1", "not(".repeat(40));
        let started = std::time::Instant::now();
        let refused = check_parse_cost(&deep).unwrap_err();
        assert!(refused.contains("more than 10 deep"), "{refused}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(
            check_parse_cost(&format!("SELECT {}1{}", "NOT (".repeat(11), ")".repeat(11))).is_err()
        );
        // Siblings do not add up; ordinary calls and parentheses do not count;
        // neither do keywords in strings or quoted names.
        let siblings = format!("SELECT {}", vec!["CAST(x AS int)"; 50].join(" + "));
        check_parse_cost(&siblings).unwrap();
        check_parse_cost(&format!(
            "SELECT {}1{}",
            "abs((".repeat(30),
            "))".repeat(30)
        ))
        .unwrap();
        check_parse_cost(&format!("SELECT '{}'", "not(".repeat(40))).unwrap();
        check_parse_cost(&format!(
            "SELECT {}1{}",
            "\"not\"(".repeat(20),
            ")".repeat(20)
        ))
        .unwrap();
        check_parse_cost(&format!("SELECT {}1{}", "not(".repeat(10), ")".repeat(10))).unwrap();
        // Long dotted chains too; quoted paths and short ones pass.
        let chain = format!("SELECT x/{}(o.r(y)) FROM t", "o.".repeat(40));
        assert!(check_parse_cost(&chain)
            .unwrap_err()
            .contains("dotted name"));
        check_parse_cost("SELECT a.b.c.d.e.f, \"a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r\" FROM t")
            .unwrap();
    }
}
