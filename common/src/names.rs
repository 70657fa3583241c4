//! How SQL names find fields: the rule of DuckDB, for schemaless documents.
//!
//! Fields are very often camelCase (`userId`, `AdvEngineID`) while SQL folds
//! unquoted names to lower case. An unquoted column name matches a field whatever
//! its case; a field spelled exactly as typed wins; two fields that differ only in
//! case make the unquoted name ambiguous. A quoted name matches exactly. Queries
//! (aggregator) and ingest transforms (tailer) both resolve names this way, and
//! `document::lookup_path` does the same for `id_field` / `event_time_field`.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    visit_expressions_mut, Expr, Ident, Query, SelectItem, SetExpr, Statement, VisitMut,
    VisitorMut,
};

/// An unquoted name that matches several fields differing only in case.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "column name `{name}` is ambiguous: fields {} differ only in case; quote the one you \
     mean, e.g. \"{}\"",
    quoted(fields),
    fields[0]
)]
pub struct AmbiguousName {
    pub name: String,
    pub fields: Vec<String>,
}

fn quoted(fields: &[String]) -> String {
    fields
        .iter()
        .map(|f| format!("\"{f}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Gives each unquoted column name the spelling of the field it matches (quoted,
/// so the planner does not fold it to lower case). `fields` are the fields of the
/// collections the statement reads.
///
/// Output names keep the case they are written in (`AS PageViews` names the
/// column `PageViews`, as in DuckDB), and an unquoted name that is no field but
/// matches such an alias refers to it (`ORDER BY pageviews`).
pub fn resolve_identifiers(
    statement: &mut Statement,
    fields: &BTreeSet<String>,
) -> Result<(), AmbiguousName> {
    let mut aliases = Aliases::default();
    let _ = statement.visit(&mut aliases);
    let aliases = aliases.0;
    let outcome = visit_expressions_mut(statement, |expr| {
        let ident = match expr {
            Expr::Identifier(ident) => ident,
            // `alias.column`: the last part names the field.
            Expr::CompoundIdentifier(parts) if parts.len() == 2 => &mut parts[1],
            _ => return ControlFlow::Continue(()),
        };
        match resolve(ident, fields, &aliases) {
            Ok(()) => ControlFlow::Continue(()),
            Err(error) => ControlFlow::Break(error),
        }
    });
    match outcome {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(error) => Err(error),
    }
}

/// Quotes the unquoted aliases of every SELECT list, keeping their case, and
/// collects them.
#[derive(Default)]
struct Aliases(BTreeSet<String>);

impl VisitorMut for Aliases {
    type Break = ();
    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        fn selects(set: &mut SetExpr, aliases: &mut BTreeSet<String>) {
            match set {
                SetExpr::Select(select) => {
                    for item in &mut select.projection {
                        if let SelectItem::ExprWithAlias { alias, .. } = item {
                            if alias.quote_style.is_none()
                                && alias.value != alias.value.to_lowercase()
                            {
                                *alias = Ident::with_quote('"', alias.value.clone());
                            }
                            aliases.insert(alias.value.clone());
                        }
                    }
                }
                SetExpr::SetOperation { left, right, .. } => {
                    selects(left, aliases);
                    selects(right, aliases);
                }
                _ => {}
            }
        }
        selects(query.body.as_mut(), &mut self.0);
        ControlFlow::Continue(())
    }
}

fn resolve(
    ident: &mut Ident,
    fields: &BTreeSet<String>,
    aliases: &BTreeSet<String>,
) -> Result<(), AmbiguousName> {
    if ident.quote_style.is_some() {
        return Ok(());
    }
    let name = if fields.contains(&ident.value) {
        ident.value.clone()
    } else {
        let mut matches = fields
            .iter()
            .filter(|field| field.eq_ignore_ascii_case(&ident.value));
        let Some(first) = matches.next() else {
            // Not a field: an alias (spelled as it was defined), a CTE's column, or
            // a mistake the planner reports.
            if let Some(alias) = aliases
                .iter()
                .find(|alias| alias.eq_ignore_ascii_case(&ident.value))
            {
                *ident = Ident::with_quote('"', alias.clone());
            }
            return Ok(());
        };
        let others: Vec<&String> = matches.collect();
        if !others.is_empty() {
            let mut fields: Vec<String> = std::iter::once(first).chain(others).cloned().collect();
            fields.sort();
            return Err(AmbiguousName {
                name: ident.value.clone(),
                fields,
            });
        }
        first.clone()
    };
    // Lower-case names need no quotes; leaving them keeps plans and output names as
    // they were.
    if name != name.to_lowercase() || name != ident.value {
        *ident = Ident::with_quote('"', name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    use super::*;

    fn resolved(sql: &str, fields: &[&str]) -> Result<String, AmbiguousName> {
        let fields: BTreeSet<String> = fields.iter().map(|f| f.to_string()).collect();
        let mut statement = Parser::parse_sql(&GenericDialect {}, sql).unwrap().remove(0);
        resolve_identifiers(&mut statement, &fields)?;
        Ok(statement.to_string())
    }

    #[test]
    fn unquoted_names_match_fields_whatever_their_case() {
        let fields = ["AdvEngineID", "URL", "url", "title", "Title"];
        assert_eq!(
            resolved(
                "SELECT advengineid, COUNT(*) FROM hits GROUP BY AdvEngineID",
                &fields
            )
            .unwrap(),
            r#"SELECT "AdvEngineID", COUNT(*) FROM hits GROUP BY "AdvEngineID""#
        );
        // An exact spelling wins over a case-insensitive match.
        assert_eq!(
            resolved("SELECT URL, url, title, Title FROM hits", &fields).unwrap(),
            r#"SELECT "URL", url, title, "Title" FROM hits"#
        );
        // Quoted names, aliases and unknown names are left alone.
        assert_eq!(
            resolved(
                r#"SELECT "advengineid" AS n, other FROM hits h WHERE h.ADVENGINEID > 0"#,
                &fields
            )
            .unwrap(),
            r#"SELECT "advengineid" AS n, other FROM hits h WHERE h."AdvEngineID" > 0"#
        );
        let error = resolved("SELECT Url FROM hits", &fields).unwrap_err();
        assert_eq!(error.fields, ["URL", "url"]);
        assert!(error.to_string().contains("ambiguous"), "{error}");
    }

    #[test]
    fn aliases_keep_their_case_and_are_referred_to_in_any_case() {
        assert_eq!(
            resolved(
                "SELECT URL, COUNT(*) AS PageViews FROM hits GROUP BY URL ORDER BY pageviews DESC",
                &["URL"]
            )
            .unwrap(),
            r#"SELECT "URL", COUNT(*) AS "PageViews" FROM hits GROUP BY "URL" ORDER BY "PageViews" DESC"#
        );
    }

    #[test]
    fn names_inside_subqueries_are_resolved() {
        assert_eq!(
            resolved(
                "SELECT * FROM t WHERE userid IN (SELECT USERID FROM t)",
                &["UserID"]
            )
            .unwrap(),
            r#"SELECT * FROM t WHERE "UserID" IN (SELECT "UserID" FROM t)"#
        );
    }
}
