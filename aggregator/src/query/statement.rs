//! What is done to a parsed statement before DataFusion plans it.
//!
//! 1. [`check_read_only`]: only queries run (`SELECT`, `WITH`, `VALUES`, `EXPLAIN`
//!    of one); anything else is refused before a table is looked up.
//! 2. [`resolve_identifiers`]: documents are schemaless and their fields are very
//!    often camelCase (`userId`, `AdvEngineID`), while SQL folds unquoted names to
//!    lower case. altdb follows DuckDB: an unquoted column name matches a field
//!    whatever its case; a field spelled exactly as typed wins; two fields that
//!    differ only in case make the unquoted name ambiguous (quote the one you
//!    mean). A quoted name matches exactly. Collection names are lower case, so an
//!    unquoted collection name matches in any case.
//! 3. [`rewrite_exists_in_projections`]: `EXISTS (subquery)` outside `WHERE`
//!    becomes a count of the subquery's rows compared with 0, which DataFusion
//!    plans (it plans `EXISTS` only as a filter).
//! 4. [`rewrite_postgres_idioms`]: what Postgres clients send that DataFusion
//!    does not plan, in terms it does.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    visit_expressions_mut, Expr, GroupByExpr, Ident, Query, SelectItem, SetExpr, Statement, Value,
    VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};

use altdb_common::names;

use crate::error::AggregatorError;

/// Refuses statements that are not queries.
pub fn check_read_only(statement: &DfStatement) -> Result<(), AggregatorError> {
    let is_query = |statement: &Statement| matches!(statement, Statement::Query(_));
    let read_only = match statement {
        DfStatement::Statement(statement) => match statement.as_ref() {
            Statement::Explain { statement, .. } => is_query(statement),
            statement => is_query(statement),
        },
        DfStatement::Explain(explain) => matches!(
            explain.statement.as_ref(),
            DfStatement::Statement(statement) if is_query(statement)
        ),
        _ => false,
    };
    if read_only {
        return Ok(());
    }
    Err(AggregatorError::InvalidSql(
        "only queries can run here: SELECT, WITH .. SELECT, VALUES or EXPLAIN of one; \
         collections are created, changed and deleted through /v1/collections"
            .into(),
    ))
}

/// The statement inside an `EXPLAIN`, or the statement itself.
fn sql_statement(statement: &mut DfStatement) -> Option<&mut Statement> {
    match statement {
        DfStatement::Statement(statement) => Some(statement.as_mut()),
        DfStatement::Explain(explain) => sql_statement(explain.statement.as_mut()),
        _ => None,
    }
}

/// [`names::resolve_identifiers`] on the statement (inside an `EXPLAIN` too).
pub fn resolve_identifiers(
    statement: &mut DfStatement,
    fields: &BTreeSet<String>,
) -> Result<(), AggregatorError> {
    let Some(statement) = sql_statement(statement) else {
        return Ok(());
    };
    names::resolve_identifiers(statement, fields)
        .map_err(|error| AggregatorError::InvalidSql(error.to_string()))
}

/// Rewrites `[NOT] EXISTS (q)` in SELECT lists to `(SELECT COUNT(*) FROM (q)) > 0`
/// (`= 0` when negated).
pub fn rewrite_exists_in_projections(statement: &mut DfStatement) {
    struct Projections;
    impl VisitorMut for Projections {
        type Break = ();
        fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
            let SetExpr::Select(select) = query.body.as_mut() else {
                return ControlFlow::Continue(());
            };
            for item in &mut select.projection {
                let (expr, unnamed) = match item {
                    SelectItem::UnnamedExpr(expr) => (expr, true),
                    SelectItem::ExprWithAlias { expr, .. } => (expr, false),
                    _ => continue,
                };
                let written = expr.to_string();
                let mut rewritten = false;
                let _ = visit_expressions_mut(expr, |expr| {
                    if let Expr::Exists { subquery, negated } = expr {
                        if let Some(count) = exists_as_count(subquery, *negated) {
                            *expr = count;
                            rewritten = true;
                        }
                    }
                    ControlFlow::<()>::Continue(())
                });
                // The column keeps the name of what was written.
                if rewritten && unnamed {
                    let expr = std::mem::replace(expr, Expr::value(Value::Null));
                    *item = SelectItem::ExprWithAlias {
                        expr,
                        alias: Ident::with_quote('"', written),
                    };
                }
            }
            ControlFlow::Continue(())
        }
    }
    if let Some(statement) = sql_statement(statement) {
        let _ = statement.visit(&mut Projections);
    }
}

/// Rewrites idioms Postgres clients send that DataFusion does not plan:
///
/// - `x IN (SELECT .. FROM .. string_to_array(current_setting('search_path'), ',') ..)`,
///   the schemas on the search path (Grafana's schema browser), becomes
///   `x IN ('public')`: collections are the tables of schema `public`.
pub fn rewrite_postgres_idioms(statement: &mut DfStatement) {
    let Some(statement) = sql_statement(statement) else {
        return;
    };
    let _ = visit_expressions_mut(statement, |expr| {
        if let Expr::InSubquery {
            expr: tested,
            subquery,
            negated,
        } = expr
        {
            let text = subquery.to_string().to_ascii_lowercase().replace(' ', "");
            if text.contains("current_setting('search_path')") {
                *expr = Expr::InList {
                    expr: tested.clone(),
                    list: vec![Expr::value(Value::SingleQuotedString(
                        super::pg_catalog::PUBLIC.to_string(),
                    ))],
                    negated: *negated,
                };
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

fn exists_as_count(subquery: &Query, negated: bool) -> Option<Expr> {
    let comparison = if negated { "=" } else { ">" };
    // A plain SELECT keeps its FROM and WHERE, so a correlated subquery stays one
    // DataFusion decorrelates; anything else is counted as a derived table.
    let sql = match subquery.body.as_ref() {
        SetExpr::Select(select)
            if subquery.with.is_none()
                && subquery.limit_clause.is_none()
                && subquery.order_by.is_none()
                && matches!(&select.group_by, GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty())
                && select.having.is_none()
                && select.distinct.is_none()
                && !select.from.is_empty() =>
        {
            let from: Vec<String> = select.from.iter().map(ToString::to_string).collect();
            let filter = select
                .selection
                .as_ref()
                .map(|e| format!(" WHERE {e}"))
                .unwrap_or_default();
            format!(
                "SELECT ((SELECT COUNT(*) FROM {}{filter}) {comparison} 0)",
                from.join(", ")
            )
        }
        _ => format!("SELECT ((SELECT COUNT(*) FROM ({subquery}) AS __exists) {comparison} 0)"),
    };
    let mut statements = Parser::parse_sql(&GenericDialect {}, &sql).ok()?;
    let Some(Statement::Query(query)) = statements.pop() else {
        return None;
    };
    let SetExpr::Select(select) = *query.body else {
        return None;
    };
    match select.projection.into_iter().next()? {
        SelectItem::UnnamedExpr(expr) => Some(expr),
        _ => None,
    }
}

/// A parser error as a sentence, position first: `syntax error at line 1, column
/// 1: expected an SQL statement, found SELEC`.
pub fn describe_parser_error(error: &ParserError) -> String {
    let (ParserError::ParserError(text) | ParserError::TokenizerError(text)) = error else {
        return format!("the statement is too deeply nested: {error}");
    };
    let (what, position) = match text.rsplit_once(" at Line: ") {
        Some((what, position)) => match position.split_once(", Column: ") {
            Some((line, column)) => (what, format!(" at line {line}, column {column}")),
            None => (text.as_str(), String::new()),
        },
        None => (text.as_str(), String::new()),
    };
    let what = what
        .replacen("Expected: ", "expected ", 1)
        .replacen(", found: ", ", found ", 1);
    format!("syntax error{position}: {what}")
}

/// The name among `known` nearest to `name` (by edit distance, ignoring case), if
/// it is near enough to be a likely typo.
pub fn nearest<'a>(name: &str, known: &'a [String]) -> Option<&'a str> {
    let name = name.to_lowercase();
    let limit = (name.chars().count() / 3).max(1);
    known
        .iter()
        .map(|k| (edit_distance(&name, &k.to_lowercase()), k))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, k)| k.as_str())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substituted = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substituted.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use datafusion::sql::parser::DFParser;

    use super::*;

    fn parse(sql: &str) -> DfStatement {
        DFParser::parse_sql(sql).unwrap().pop_front().unwrap()
    }

    fn resolved(sql: &str, fields: &[&str]) -> Result<String, AggregatorError> {
        let fields: BTreeSet<String> = fields.iter().map(|f| f.to_string()).collect();
        let mut statement = parse(sql);
        resolve_identifiers(&mut statement, &fields)?;
        Ok(statement.to_string())
    }

    #[test]
    fn names_inside_explain_and_subqueries_are_resolved() {
        let fields = ["UserID"];
        assert_eq!(
            resolved(
                "EXPLAIN SELECT * FROM t WHERE userid IN (SELECT USERID FROM t)",
                &fields
            )
            .unwrap(),
            r#"EXPLAIN SELECT * FROM t WHERE "UserID" IN (SELECT "UserID" FROM t)"#
        );
    }

    #[test]
    fn exists_in_a_select_list_becomes_a_count() {
        let mut statement = parse(
            "SELECT EXISTS (SELECT 1 FROM t WHERE a > 1) AS e, NOT EXISTS (SELECT a FROM t GROUP BY a) FROM u WHERE EXISTS (SELECT 1 FROM t)",
        );
        rewrite_exists_in_projections(&mut statement);
        assert_eq!(
            statement.to_string(),
            "SELECT ((SELECT COUNT(*) FROM t WHERE a > 1) > 0) AS e, \
             ((SELECT COUNT(*) FROM (SELECT a FROM t GROUP BY a) AS __exists) = 0) \
             AS \"NOT EXISTS (SELECT a FROM t GROUP BY a)\" FROM u WHERE EXISTS (SELECT 1 FROM t)"
        );
    }

    #[test]
    fn only_queries_are_read_only() {
        for sql in [
            "SELECT 1",
            "WITH t AS (SELECT 1) SELECT * FROM t",
            "VALUES (1)",
            "EXPLAIN SELECT 1",
            "EXPLAIN ANALYZE SELECT 1",
        ] {
            assert!(check_read_only(&parse(sql)).is_ok(), "{sql}");
        }
        for sql in [
            "CREATE TABLE x (a INT)",
            "DROP TABLE x",
            "INSERT INTO x VALUES (1)",
            "SET a = 1",
            "EXPLAIN CREATE TABLE x (a INT)",
            "COPY x TO 'f'",
        ] {
            assert!(check_read_only(&parse(sql)).is_err(), "{sql}");
        }
    }

    #[test]
    fn parser_errors_read_as_sentences_with_the_position() {
        let datafusion::error::DataFusionError::SQL(error, _) =
            DFParser::parse_sql("SELEC 1").unwrap_err()
        else {
            panic!("not a parser error")
        };
        assert_eq!(
            describe_parser_error(&error),
            "syntax error at line 1, column 1: expected an SQL statement, found SELEC"
        );
    }

    #[test]
    fn near_misses_are_suggested() {
        let known: Vec<String> = ["AdvEngineID", "UserID", "URL"].map(String::from).to_vec();
        assert_eq!(nearest("advengineed", &known), Some("AdvEngineID"));
        assert_eq!(nearest("usrid", &known), Some("UserID"));
        assert_eq!(nearest("title", &known), None);
    }
}
