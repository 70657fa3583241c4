//! How SQL names find fields: the rule of DuckDB, for schemaless documents.
//!
//! Fields are very often camelCase (`userId`, `AdvEngineID`) while SQL folds
//! unquoted names to lower case. An unquoted column name matches a field whatever
//! its case; a field spelled exactly as typed wins; two fields that differ only in
//! case make the unquoted name ambiguous. A quoted name matches exactly. Queries
//! (aggregator) and ingest transforms (tailer) both resolve names this way, and
//! `document::lookup_path` does the same for `id_field` / `event_time_field`.

use std::collections::{BTreeSet, HashMap};
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    AccessExpr, Expr, FunctionArguments, Ident, Query, SelectItem, SetExpr, Statement, TableFactor,
    VisitMut, VisitorMut,
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
/// A dotted name whose first part is no table or alias of the statement names a
/// nested field by its path (`user.geo.city` reads `"user.geo.city"`). Output
/// names keep the case they are written in (`AS PageViews` names the column
/// `PageViews`, as in DuckDB), and an unquoted name that is no field but matches
/// such an alias refers to it (`ORDER BY pageviews`).
pub fn resolve_identifiers(
    statement: &mut Statement,
    fields: &BTreeSet<String>,
) -> Result<(), AmbiguousName> {
    let mut scope = Scope::default();
    let _ = statement.visit(&mut scope);
    struct Names<'a> {
        fields: FieldNames<'a>,
        scope: Scope,
    }
    impl VisitorMut for Names<'_> {
        type Break = AmbiguousName;
        fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<AmbiguousName> {
            match resolve(expr, &self.fields, &self.scope) {
                Ok(()) => ControlFlow::Continue(()),
                Err(error) => ControlFlow::Break(error),
            }
        }
    }
    let mut names = Names {
        fields: FieldNames::new(fields),
        scope,
    };
    match statement.visit(&mut names) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(error) => Err(error),
    }
}

/// The names a statement defines: SELECT-list aliases (quoted on the way when
/// they have capitals, so they keep their case) and tables with their aliases
/// (lower case).
#[derive(Default)]
struct Scope {
    aliases: BTreeSet<String>,
    relations: BTreeSet<String>,
}

impl VisitorMut for Scope {
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
        selects(query.body.as_mut(), &mut self.aliases);
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        let (name, alias) = match factor {
            TableFactor::Table { name, alias, .. } => (Some(name.to_string()), alias),
            TableFactor::Derived { alias, .. } => (None, alias),
            _ => return ControlFlow::Continue(()),
        };
        if let Some(name) = name {
            let last = name.rsplit('.').next().unwrap_or(&name);
            self.relations.insert(last.trim_matches('"').to_lowercase());
        }
        if let Some(alias) = alias {
            self.relations.insert(alias.name.value.to_lowercase());
        }
        ControlFlow::Continue(())
    }
}

/// The fields a statement reads, looked up exactly or by their case-folded
/// spelling (built once per statement: a wide collection has thousands).
struct FieldNames<'a> {
    exact: &'a BTreeSet<String>,
    folded: HashMap<String, Vec<&'a String>>,
}

impl<'a> FieldNames<'a> {
    fn new(exact: &'a BTreeSet<String>) -> Self {
        let mut folded: HashMap<String, Vec<&'a String>> = HashMap::new();
        for field in exact {
            folded
                .entry(field.to_ascii_lowercase())
                .or_default()
                .push(field);
        }
        Self { exact, folded }
    }

    /// The field `name` matches: spelled exactly, else the one that differs only
    /// in case.
    fn find(&self, name: &str) -> Result<Option<String>, AmbiguousName> {
        if self.exact.contains(name) {
            return Ok(Some(name.to_string()));
        }
        match self
            .folded
            .get(&name.to_ascii_lowercase())
            .map(Vec::as_slice)
        {
            None | Some([]) => Ok(None),
            Some([field]) => Ok(Some((*field).clone())),
            Some(twins) => Err(AmbiguousName {
                name: name.to_string(),
                fields: twins.iter().map(|f| (*f).clone()).collect(),
            }),
        }
    }
}

fn resolve(expr: &mut Expr, fields: &FieldNames<'_>, scope: &Scope) -> Result<(), AmbiguousName> {
    if let Expr::Identifier(ident) = expr {
        return resolve_column(ident, fields, scope);
    }
    let Some(mut parts) = path(expr) else {
        return Ok(());
    };
    if parts.len() < 2 {
        return Ok(());
    }
    if scope.relations.contains(&parts[0].value.to_lowercase()) {
        // `alias.column`; `alias.user.geo.city` names a nested field.
        if parts.len() == 2 {
            resolve_column(&mut parts[1], fields, scope)?;
        } else if let Some(field) = fields.find(&join(&parts[1..]))? {
            parts.truncate(1);
            parts.push(Ident::with_quote('"', field));
        } else {
            return Ok(());
        }
        *expr = Expr::CompoundIdentifier(parts);
        return Ok(());
    }
    if let Some(field) = fields.find(&join(&parts))? {
        *expr = Expr::Identifier(Ident::with_quote('"', field));
    }
    Ok(())
}

/// The parts of a dotted name: `a.b.c`, also when a part is a keyword the parser
/// reads as a function without arguments (`user.id`).
fn path(expr: &Expr) -> Option<Vec<Ident>> {
    match expr {
        Expr::Identifier(ident) => Some(vec![ident.clone()]),
        Expr::CompoundIdentifier(parts) => Some(parts.clone()),
        Expr::Function(function)
            if matches!(function.args, FunctionArguments::None) && function.name.0.len() == 1 =>
        {
            Some(vec![Ident::new(function.name.to_string())])
        }
        Expr::CompoundFieldAccess { root, access_chain } => {
            let mut parts = path(root)?;
            for access in access_chain {
                match access {
                    AccessExpr::Dot(expr) => parts.extend(path(expr)?),
                    AccessExpr::Subscript(_) => return None,
                }
            }
            Some(parts)
        }
        _ => None,
    }
}

fn join(parts: &[Ident]) -> String {
    parts
        .iter()
        .map(|p| p.value.as_str())
        .collect::<Vec<_>>()
        .join(".")
}

fn resolve_column(
    ident: &mut Ident,
    fields: &FieldNames<'_>,
    scope: &Scope,
) -> Result<(), AmbiguousName> {
    if ident.quote_style.is_some() {
        return Ok(());
    }
    let Some(name) = fields.find(&ident.value)? else {
        // Not a field: an alias (spelled as it was defined), a CTE's column, or a
        // mistake the planner reports.
        if let Some(alias) = scope
            .aliases
            .iter()
            .find(|alias| alias.eq_ignore_ascii_case(&ident.value))
        {
            *ident = Ident::with_quote('"', alias.clone());
        }
        return Ok(());
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
        let mut statement = Parser::parse_sql(&GenericDialect {}, sql)
            .unwrap()
            .remove(0);
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
    fn dotted_names_are_nested_fields_unless_they_start_with_a_table() {
        let fields = ["user.geo.city", "user.id", "n"];
        assert_eq!(
            resolved(
                "SELECT user.geo.City, e.user.id, e.n FROM events e WHERE USER.ID = 'u1'",
                &fields
            )
            .unwrap(),
            r#"SELECT "user.geo.city", e."user.id", e.n FROM events e WHERE "user.id" = 'u1'"#
        );
        // `events.n`: a table's column, not a path.
        assert_eq!(
            resolved("SELECT events.n FROM events", &["events.n", "n"]).unwrap(),
            "SELECT events.n FROM events"
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
