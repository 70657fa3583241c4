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
//! 5. [`scientific_literals_as_double`]: `1e127` is a DOUBLE, as in DuckDB and
//!    Postgres (literals with a decimal point are decimals here; an exponent
//!    would make a decimal of negative scale, which DataFusion's type
//!    coercion cannot take).

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    visit_expressions_mut, visit_relations_mut, BinaryOperator, DataType as SqlDataType, Expr,
    GroupByExpr, Ident, ObjectNamePart, Query, Select, SelectItem, SetExpr, Statement,
    TimezoneInfo, Value, VisitMut, VisitorMut,
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
///   `x IN ('public')`: collections are the tables of schema `public`;
/// - `a OPERATOR(pg_catalog.~) b` (psql) becomes `a ~ b`;
/// - `x COLLATE pg_catalog.default` becomes `x` (altdb compares text by bytes);
/// - casts to `pg_catalog.text`, `regclass`, `regtype`, `oid`, `int4`, ..
///   become casts to the types altdb has (object ids are `bigint`);
/// - an unqualified catalog table (`pg_extension`, found on Postgres's search
///   path) that is not a collection becomes `pg_catalog.pg_extension`.
pub fn scientific_literals_as_double(statement: &mut DfStatement) {
    let Some(statement) = sql_statement(statement) else {
        return;
    };
    let _ = visit_expressions_mut(statement, |expr| {
        if let Expr::Value(value) = expr {
            if let Value::Number(text, _) = &value.value {
                if text.contains(['e', 'E']) {
                    // The text is digits, a point, `e` and a sign: safe to quote.
                    let cast = format!("CAST('{text}' AS DOUBLE)");
                    if let Ok(parsed) = Parser::new(&GenericDialect)
                        .try_with_sql(&cast)
                        .and_then(|mut p| p.parse_expr())
                    {
                        *expr = parsed;
                    }
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

pub fn rewrite_postgres_idioms(statement: &mut DfStatement, is_collection: impl Fn(&str) -> bool) {
    let Some(statement) = sql_statement(statement) else {
        return;
    };
    let _ = visit_relations_mut(statement, |name| {
        if let [ObjectNamePart::Identifier(ident)] = name.0.as_slice() {
            let table = ident.value.to_ascii_lowercase();
            if super::pg_catalog::is_catalog_table(&table) && !is_collection(&table) {
                name.0
                    .insert(0, ObjectNamePart::Identifier(Ident::new("pg_catalog")));
            }
        }
        ControlFlow::<()>::Continue(())
    });
    if let Statement::Query(query) = statement {
        if blank_empty_catalog_reads(query.body.as_mut()) {
            query.order_by = None;
            query.limit_clause = None;
        }
    }
    let _ = visit_expressions_mut(statement, |expr| {
        match expr {
            Expr::Collate { expr: inner, .. } => {
                let inner = std::mem::replace(inner.as_mut(), Expr::value(Value::Null));
                *expr = inner;
            }
            Expr::BinaryOp { op, .. } => {
                if let BinaryOperator::PGCustomBinaryOperator(parts) = op {
                    if let Some(standard) = parts.last().and_then(|op| standard_operator(op)) {
                        *op = standard;
                    }
                }
            }
            Expr::Cast { data_type, .. } => {
                if let Some(standard) = standard_type(data_type) {
                    *data_type = standard;
                }
            }
            Expr::Subquery(query) => {
                if reads_empty_catalog_table(query) {
                    *expr = Expr::value(Value::Null);
                } else {
                    aggregate_catalog_lookup(query);
                }
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
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

/// A SELECT (or every branch of a UNION) reading an empty `pg_catalog` table
/// has no rows; it becomes `SELECT NULL AS <its column names> WHERE false`
/// without being planned, since what psql's `\d` asks of those tables
/// (policies, statistics objects, publications, inheritance) uses expressions
/// DataFusion does not have. Returns whether the body was replaced.
fn blank_empty_catalog_reads(body: &mut SetExpr) -> bool {
    match body {
        SetExpr::SetOperation { left, right, .. } => {
            let (l, r) = (
                blank_empty_catalog_reads(left.as_mut()),
                blank_empty_catalog_reads(right.as_mut()),
            );
            l && r
        }
        SetExpr::Select(select) => {
            if !select_reads_empty_catalog_table(select) {
                return false;
            }
            let columns: Vec<String> = select
                .projection
                .iter()
                .map(|item| match item {
                    SelectItem::ExprWithAlias { alias, .. } => alias.value.clone(),
                    SelectItem::UnnamedExpr(Expr::Identifier(ident)) => ident.value.clone(),
                    SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => parts
                        .last()
                        .map_or_else(|| "?column?".to_string(), |p| p.value.clone()),
                    _ => "?column?".to_string(),
                })
                .enumerate()
                // Unique names: DataFusion refuses two columns of one name.
                .map(|(i, name)| {
                    format!(
                        "{name}{}",
                        if i == 0 {
                            String::new()
                        } else {
                            format!("_{i}")
                        }
                    )
                })
                .collect();
            let text = format!(
                "SELECT {} WHERE false",
                columns
                    .iter()
                    .map(|c| format!("NULL AS \"{}\"", c.replace('"', "\"\"")))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let Ok(parsed) = Parser::new(&GenericDialect {})
                .try_with_sql(&text)
                .and_then(|mut parser| parser.parse_query())
            else {
                return false;
            };
            *body = *parsed.body;
            true
        }
        _ => false,
    }
}

/// Whether a query's rows come from a `pg_catalog` table that altdb keeps empty
/// (`pg_attrdef`, `pg_collation`, ..), joined in: then it has no rows, and as a
/// scalar subquery it is NULL (DataFusion cannot decorrelate some of the ones
/// psql sends, e.g. with `a.attcollation <> t.typcollation`).
fn reads_empty_catalog_table(query: &Query) -> bool {
    match query.body.as_ref() {
        SetExpr::Select(select) => select_reads_empty_catalog_table(select),
        _ => false,
    }
}

fn select_reads_empty_catalog_table(select: &Select) -> bool {
    let empty = |relation: &datafusion::sql::sqlparser::ast::TableFactor| {
        let name = relation.to_string().to_ascii_lowercase();
        let table = name.split_whitespace().next().unwrap_or_default();
        super::pg_catalog::EMPTY_TABLES
            .iter()
            .any(|t| table == format!("pg_catalog.{t}"))
    };
    select.from.iter().any(|from| {
        empty(&from.relation)
            || from.joins.iter().any(|join| {
                matches!(
                    join.join_operator,
                    datafusion::sql::sqlparser::ast::JoinOperator::Inner(_)
                        | datafusion::sql::sqlparser::ast::JoinOperator::Join(_)
                        | datafusion::sql::sqlparser::ast::JoinOperator::CrossJoin(_)
                ) && empty(&join.relation)
            })
    })
}

/// A scalar subquery over `pg_catalog` tables that selects one value without
/// an aggregate (psql's `\d`: `(SELECT pg_get_expr(..) FROM pg_attrdef d WHERE
/// d.adrelid = a.attrelid ..)`) selects `max(value)`: Postgres would fail on a
/// second row, DataFusion plans only aggregated correlated subqueries, and the
/// catalog has at most one such row.
fn aggregate_catalog_lookup(query: &mut Query) {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    let catalog = !select.from.is_empty()
        && select.from.iter().all(|from| {
            from.relation
                .to_string()
                .to_ascii_lowercase()
                .starts_with("pg_catalog.")
        });
    let grouped =
        !matches!(&select.group_by, GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty());
    if !catalog || grouped || select.projection.len() != 1 {
        return;
    }
    let (expr, alias) = match &select.projection[0] {
        SelectItem::UnnamedExpr(expr) => (expr.clone(), None),
        SelectItem::ExprWithAlias { expr, alias } => (expr.clone(), Some(alias.clone())),
        _ => return,
    };
    let text = expr.to_string().to_ascii_lowercase();
    if [
        "max(",
        "min(",
        "count(",
        "sum(",
        "avg(",
        "array_agg(",
        "string_agg(",
    ]
    .iter()
    .any(|aggregate| text.contains(aggregate))
    {
        return;
    }
    let Ok(wrapped) = Parser::new(&GenericDialect {})
        .try_with_sql(&format!("max({expr})"))
        .and_then(|mut parser| parser.parse_expr())
    else {
        return;
    };
    select.projection[0] = match alias {
        Some(alias) => SelectItem::ExprWithAlias {
            expr: wrapped,
            alias,
        },
        None => SelectItem::UnnamedExpr(wrapped),
    };
}

/// The operator `OPERATOR(pg_catalog.<op>)` names.
fn standard_operator(op: &str) -> Option<BinaryOperator> {
    Some(match op {
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
        "||" => BinaryOperator::StringConcat,
        _ => return None,
    })
}

/// A Postgres type name altdb plans under another name.
fn standard_type(data_type: &SqlDataType) -> Option<SqlDataType> {
    let name = match data_type {
        SqlDataType::Regclass => "regclass".to_string(),
        SqlDataType::Custom(name, _) => name.to_string().to_ascii_lowercase(),
        _ => return None,
    };
    let name = name.strip_prefix("pg_catalog.").unwrap_or(&name);
    Some(match name {
        "text" | "varchar" | "name" | "bpchar" | "char" | "\"char\"" => SqlDataType::Text,
        "oid" | "regclass" | "regtype" | "regproc" | "regprocedure" | "regnamespace"
        | "regrole" | "int8" | "xid" => SqlDataType::BigInt(None),
        "int4" | "int2" => SqlDataType::Int(None),
        "bool" => SqlDataType::Boolean,
        "float8" => SqlDataType::DoublePrecision,
        "float4" => SqlDataType::Real,
        "timestamptz" => SqlDataType::Timestamp(None, TimezoneInfo::Tz),
        _ => return None,
    })
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

    fn postgres(sql: &str) -> String {
        let mut statement = parse(sql);
        rewrite_postgres_idioms(&mut statement, |name| name == "pg_settings_log");
        statement.to_string()
    }

    #[test]
    fn postgres_idioms_become_what_datafusion_plans() {
        assert_eq!(
            postgres(
                "SELECT c.oid FROM pg_catalog.pg_class c WHERE c.relname \
                 OPERATOR(pg_catalog.~) '^(events)$' COLLATE pg_catalog.default"
            ),
            "SELECT c.oid FROM pg_catalog.pg_class c WHERE c.relname ~ '^(events)$'"
        );
        assert_eq!(
            postgres("SELECT x::pg_catalog.regtype::pg_catalog.text FROM pg_type"),
            "SELECT x::BIGINT::TEXT FROM pg_catalog.pg_type"
        );
        // A collection of a catalog table's name stays the collection.
        assert_eq!(
            postgres("SELECT * FROM pg_settings_log"),
            "SELECT * FROM pg_settings_log"
        );
        // Grafana's search path subquery is the schema `public`.
        assert_eq!(
            postgres(
                "SELECT 1 FROM information_schema.tables WHERE quote_ident(table_schema) IN \
                 (SELECT trim(s[i]) FROM generate_series(1, 2) AS i, \
                 string_to_array(current_setting('search_path'), ',') s)"
            ),
            "SELECT 1 FROM information_schema.tables WHERE quote_ident(table_schema) IN ('public')"
        );
        // Reads of tables altdb keeps empty answer no rows without being planned.
        assert_eq!(
            postgres(
                "SELECT pol.polname, pg_get_expr(pol.polqual, pol.polrelid) FROM \
                 pg_catalog.pg_policy pol WHERE pol.polrelid = '1' ORDER BY 1"
            ),
            r#"SELECT NULL AS "polname", NULL AS "?column?_1" WHERE false"#
        );
        // A catalog lookup in a scalar subquery is aggregated.
        assert_eq!(
            postgres(
                "SELECT (SELECT t.typname FROM pg_catalog.pg_type t WHERE t.oid = a.atttypid) \
                 FROM pg_catalog.pg_attribute a"
            ),
            "SELECT (SELECT max(t.typname) FROM pg_catalog.pg_type t WHERE t.oid = a.atttypid) \
             FROM pg_catalog.pg_attribute a"
        );
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

    #[test]
    fn numbers_with_an_exponent_are_doubles() {
        let mut statement =
            parse("SELECT id FROM events WHERE id < -1e127 AND x > 2.5E-3 AND y = 1.5");
        scientific_literals_as_double(&mut statement);
        let text = statement.to_string();
        assert!(text.contains("CAST('1e127' AS DOUBLE)"), "{text}");
        assert!(text.contains("CAST('2.5E-3' AS DOUBLE)"), "{text}");
        assert!(text.contains("y = 1.5"), "{text}");
    }
}
