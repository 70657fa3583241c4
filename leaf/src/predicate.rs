//! What of a fragment's filter the leaf can answer without a scan.
//!
//! The filter above a [`crate::scan::LocalScanExec`] is translated into an
//! [`IndexPredicate`]; per sealed segment it becomes a tantivy query that selects
//! a *superset* of the matching rows (the filter still runs on what the scan
//! returns, so the index never has to be exact, only never miss a row):
//!
//! - `=`, `<>`, `IN`, `<`/`<=`/`>`/`>=`, `IS [NOT] NULL`, `LIKE 'abc%'` on a
//!   column against a literal, and `search(column, 'query')` on a text field,
//!   combined with AND / OR / NOT;
//! - a column is used only where the segment stores it with the literal's type
//!   (it then holds exactly the values the filter will see); anything else is
//!   [`IndexPredicate::Opaque`] and selects every row;
//! - `_event_time` bounds also prune whole segments by their min/max;
//! - `_id = ..` / `_id IN (..)` are answered from the key-value store.

use std::fmt;
use std::ops::{Bound, RangeInclusive};
use std::sync::Arc;

use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{
    BinaryExpr, Column, InListExpr, IsNotNullExpr, IsNullExpr, LikeExpr, Literal, NotExpr,
};
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::scalar::ScalarValue;
use tantivy::query::{
    AllQuery, BooleanQuery, EmptyQuery, Occur, Query, RangeQuery, TermQuery,
    TermSetQuery,
};
use tantivy::schema::IndexRecordOption;
use tantivy::Term;

use altdb_common::document::{EVENT_TIME_COLUMN, ID_COLUMN};
use altdb_common::geo::{GeoBox, GEO_DISTANCE, GEO_WITHIN_BOX, GEO_WITHIN_RADIUS};
use altdb_common::schema::{FieldSet, FieldType};
use altdb_common::search::{parse_query, SCORE_COLUMN, SEARCH_FUNCTION};

use crate::segment::index::{term_limit, IndexedColumn, SegmentIndex, TermKind};

/// A literal as the index stores it (timestamps as microseconds).
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Str(String),
    I64(i64),
    F64(f64),
    Bool(bool),
}

impl Scalar {
    fn of(value: &ScalarValue) -> Option<Scalar> {
        Some(match value {
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)) => Scalar::Str(s.clone()),
            ScalarValue::Int64(Some(v)) => Scalar::I64(*v),
            ScalarValue::Int32(Some(v)) => Scalar::I64(i64::from(*v)),
            ScalarValue::Float64(Some(v)) if !v.is_nan() => Scalar::F64(*v),
            ScalarValue::Boolean(Some(v)) => Scalar::Bool(*v),
            ScalarValue::TimestampMicrosecond(Some(v), _) => Scalar::I64(*v),
            _ => return None,
        })
    }

    /// Order of two literals of the same kind.
    fn compare(&self, other: &Scalar) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (Scalar::Str(a), Scalar::Str(b)) => Some(a.cmp(b)),
            (Scalar::I64(a), Scalar::I64(b)) => Some(a.cmp(b)),
            (Scalar::F64(a), Scalar::F64(b)) => a.partial_cmp(b),
            (Scalar::Bool(a), Scalar::Bool(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }

    fn kind(&self) -> TermKind {
        match self {
            Scalar::Str(_) => TermKind::Str,
            Scalar::I64(_) => TermKind::I64,
            Scalar::F64(_) => TermKind::F64,
            Scalar::Bool(_) => TermKind::Bool,
        }
    }

    fn term(&self, column: &IndexedColumn) -> Term {
        match self {
            Scalar::Str(s) => Term::from_field_text(column.field, s),
            Scalar::I64(v) => Term::from_field_i64(column.field, *v),
            Scalar::F64(v) => Term::from_field_f64(column.field, *v),
            Scalar::Bool(v) => Term::from_field_bool(column.field, *v),
        }
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Str(s) => write!(f, "'{}'", s.replace('\'', "''")),
            Scalar::I64(v) => write!(f, "{v}"),
            Scalar::F64(v) => write!(f, "{v:?}"),
            Scalar::Bool(v) => write!(f, "{v}"),
        }
    }
}

/// SQL-like text of what the index is asked (`EXPLAIN` shows it).
impl fmt::Display for IndexPredicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &mut fmt::Formatter<'_>, children: &[IndexPredicate], op: &str| {
            write!(f, "(")?;
            for (i, child) in children.iter().enumerate() {
                if i > 0 {
                    write!(f, " {op} ")?;
                }
                write!(f, "{child}")?;
            }
            write!(f, ")")
        };
        match self {
            IndexPredicate::Eq(column, value) => write!(f, "{column} = {value}"),
            IndexPredicate::In(column, values) => {
                let values: Vec<String> = values.iter().map(ToString::to_string).collect();
                write!(f, "{column} IN ({})", values.join(", "))
            }
            IndexPredicate::Range {
                column,
                lower,
                upper,
            } => {
                let lower = match lower {
                    Bound::Included(v) => format!("[{v}"),
                    Bound::Excluded(v) => format!("({v}"),
                    Bound::Unbounded => "(..".into(),
                };
                let upper = match upper {
                    Bound::Included(v) => format!("{v}]"),
                    Bound::Excluded(v) => format!("{v})"),
                    Bound::Unbounded => "..)".into(),
                };
                write!(f, "{column} IN {lower}, {upper}")
            }
            IndexPredicate::IsNull(column) => write!(f, "{column} IS NULL"),
            IndexPredicate::IsNotNull(column) => write!(f, "{column} IS NOT NULL"),
            IndexPredicate::Prefix(column, prefix) => write!(f, "{column} LIKE '{prefix}%'"),
            IndexPredicate::Search { column, query } => write!(f, "search({column}, '{query}')"),
            IndexPredicate::And(children) => join(f, children, "AND"),
            IndexPredicate::Or(children) => join(f, children, "OR"),
            IndexPredicate::Not(child) => write!(f, "NOT {child}"),
            IndexPredicate::Superset(child) => write!(f, "within {child}"),
            IndexPredicate::Opaque => write!(f, "(not indexable)"),
        }
    }
}

/// A filter, as far as an index can answer it.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexPredicate {
    Eq(String, Scalar),
    In(String, Vec<Scalar>),
    Range {
        column: String,
        lower: Bound<Scalar>,
        upper: Bound<Scalar>,
    },
    IsNull(String),
    IsNotNull(String),
    /// `LIKE 'prefix%'`.
    Prefix(String, String),
    /// `search(column, 'query')`.
    Search {
        column: String,
        query: String,
    },
    And(Vec<IndexPredicate>),
    Or(Vec<IndexPredicate>),
    Not(Box<IndexPredicate>),
    /// Selects a superset of the rows matching the filter it was translated
    /// from (a radius read as its bounding box): never exact.
    Superset(Box<IndexPredicate>),
    /// Something the index cannot answer: every row may match.
    Opaque,
}

/// A predicate's `_event_time` window (microseconds, inclusive) and the rest of
/// it (`None`: nothing else), see [`IndexPredicate::split_time`].
pub type TimeSplit = (RangeInclusive<i64>, Option<IndexPredicate>);

/// The column an expression is, unless it is `_score` (computed by the scan,
/// not stored, so no index knows it).
fn column_name(expr: &Arc<dyn PhysicalExpr>) -> Option<String> {
    expr.downcast_ref::<Column>()
        .map(|c| c.name().to_string())
        .filter(|name| name != SCORE_COLUMN)
}

fn literal(expr: &Arc<dyn PhysicalExpr>) -> Option<Scalar> {
    expr.downcast_ref::<Literal>()
        .and_then(|l| Scalar::of(l.value()))
}

impl IndexPredicate {
    /// Translates a physical filter expression.
    pub fn from_physical(expr: &Arc<dyn PhysicalExpr>) -> IndexPredicate {
        Self::translate(expr).unwrap_or(IndexPredicate::Opaque)
    }

    fn translate(expr: &Arc<dyn PhysicalExpr>) -> Option<IndexPredicate> {
        if let Some(binary) = expr.downcast_ref::<BinaryExpr>() {
            let op = *binary.op();
            if matches!(op, Operator::And | Operator::Or) {
                let mut children = Vec::new();
                for side in [binary.left(), binary.right()] {
                    match (Self::from_physical(side), op) {
                        (IndexPredicate::And(inner), Operator::And)
                        | (IndexPredicate::Or(inner), Operator::Or) => children.extend(inner),
                        (child, _) => children.push(child),
                    }
                }
                return Some(if op == Operator::And {
                    IndexPredicate::And(merge_ranges(children))
                } else {
                    IndexPredicate::Or(children)
                });
            }
            if let Some(bounds) = distance_bound(binary) {
                return Some(IndexPredicate::Superset(Box::new(bounds)));
            }
            let (column, value, op) = match (column_name(binary.left()), literal(binary.right())) {
                (Some(c), Some(v)) => (c, v, op),
                _ => (
                    column_name(binary.right())?,
                    literal(binary.left())?,
                    op.swap()?,
                ),
            };
            let range = |lower, upper| IndexPredicate::Range {
                column: column.clone(),
                lower,
                upper,
            };
            return Some(match op {
                Operator::Eq => IndexPredicate::Eq(column, value),
                Operator::NotEq => IndexPredicate::Not(Box::new(IndexPredicate::Eq(column, value))),
                Operator::Lt => range(Bound::Unbounded, Bound::Excluded(value)),
                Operator::LtEq => range(Bound::Unbounded, Bound::Included(value)),
                Operator::Gt => range(Bound::Excluded(value), Bound::Unbounded),
                Operator::GtEq => range(Bound::Included(value), Bound::Unbounded),
                _ => return None,
            });
        }
        if let Some(list) = expr.downcast_ref::<InListExpr>() {
            let column = column_name(list.expr())?;
            let values = list
                .list()
                .iter()
                .map(literal)
                .collect::<Option<Vec<_>>>()?;
            let predicate = IndexPredicate::In(column, values);
            return Some(if list.negated() {
                IndexPredicate::Not(Box::new(predicate))
            } else {
                predicate
            });
        }
        if let Some(is_null) = expr.downcast_ref::<IsNullExpr>() {
            return Some(IndexPredicate::IsNull(column_name(is_null.arg())?));
        }
        if let Some(not_null) = expr.downcast_ref::<IsNotNullExpr>() {
            return Some(IndexPredicate::IsNotNull(column_name(not_null.arg())?));
        }
        if let Some(not) = expr.downcast_ref::<NotExpr>() {
            return Some(IndexPredicate::Not(Box::new(Self::from_physical(
                not.arg(),
            ))));
        }
        if let Some(function) = expr.downcast_ref::<ScalarFunctionExpr>() {
            if let Some(bounds) = geo_function(function) {
                return Some(IndexPredicate::Superset(Box::new(bounds)));
            }
            if function.name() != SEARCH_FUNCTION {
                return None;
            }
            let [column, query] = function.args() else {
                return None;
            };
            let Scalar::Str(query) = literal(query)? else {
                return None;
            };
            return Some(IndexPredicate::Search {
                column: column_name(column)?,
                query,
            });
        }
        if let Some(like) = expr.downcast_ref::<LikeExpr>() {
            if like.case_insensitive() {
                return None;
            }
            let column = column_name(like.expr())?;
            let Scalar::Str(pattern) = literal(like.pattern())? else {
                return None;
            };
            let predicate = like_predicate(column, &pattern)?;
            return Some(if like.negated() {
                IndexPredicate::Not(Box::new(predicate))
            } else {
                predicate
            });
        }
        None
    }

    /// The `_id`s the filter restricts rows to, if it does.
    pub fn ids(&self) -> Option<Vec<String>> {
        match self {
            IndexPredicate::Eq(column, Scalar::Str(id)) if column == ID_COLUMN => {
                Some(vec![id.clone()])
            }
            IndexPredicate::In(column, values) if column == ID_COLUMN => values
                .iter()
                .map(|v| match v {
                    Scalar::Str(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            IndexPredicate::And(children) => children.iter().find_map(|c| c.ids()),
            IndexPredicate::Or(children) => {
                let mut all = Vec::new();
                for child in children {
                    all.extend(child.ids()?);
                }
                Some(all)
            }
            _ => None,
        }
    }

    /// The text search that `_score` ranks by: `search(..)` itself or one of the
    /// conditions AND-ed with it.
    pub fn search(&self) -> Option<(&str, &str)> {
        match self {
            IndexPredicate::Search { column, query } => Some((column, query)),
            IndexPredicate::And(children) => children.iter().find_map(|c| c.search()),
            _ => None,
        }
    }

    /// The `_event_time` window (microseconds, inclusive) every matching row
    /// lies in, and what else must hold (`None`: nothing), when the predicate
    /// is a condition on `_event_time` or an AND with one.
    pub fn split_time(&self) -> Option<TimeSplit> {
        if let Some(window) = self.time_window() {
            return Some((window, None));
        }
        let IndexPredicate::And(children) = self else {
            return None;
        };
        let mut window: Option<RangeInclusive<i64>> = None;
        let mut rest = Vec::new();
        for child in children {
            match (child.time_window(), &window) {
                (Some(w), Some(both)) => {
                    window = Some(*both.start().max(w.start())..=*both.end().min(w.end()));
                }
                (Some(w), None) => window = Some(w),
                (None, _) => rest.push(child.clone()),
            }
        }
        let rest = match rest.len() {
            0 => None,
            1 => rest.pop(),
            _ => Some(IndexPredicate::And(rest)),
        };
        Some((window?, rest))
    }

    /// The window of a condition on `_event_time` alone.
    fn time_window(&self) -> Option<RangeInclusive<i64>> {
        match self {
            IndexPredicate::Eq(column, Scalar::I64(v)) if column == EVENT_TIME_COLUMN => {
                Some(*v..=*v)
            }
            IndexPredicate::In(column, values) if column == EVENT_TIME_COLUMN => {
                let values: Option<Vec<i64>> = values
                    .iter()
                    .map(|v| match v {
                        Scalar::I64(v) => Some(*v),
                        _ => None,
                    })
                    .collect();
                let values = values?;
                Some(*values.iter().min()?..=*values.iter().max()?)
            }
            IndexPredicate::Range {
                column,
                lower,
                upper,
            } if column == EVENT_TIME_COLUMN => {
                let start = match lower {
                    Bound::Included(Scalar::I64(v)) => *v,
                    Bound::Excluded(Scalar::I64(v)) => v.checked_add(1)?,
                    Bound::Unbounded => i64::MIN,
                    _ => return None,
                };
                let end = match upper {
                    Bound::Included(Scalar::I64(v)) => *v,
                    Bound::Excluded(Scalar::I64(v)) => v.checked_sub(1)?,
                    Bound::Unbounded => i64::MAX,
                    _ => return None,
                };
                Some(start..=end)
            }
            _ => None,
        }
    }

    /// Whether rows with `_event_time` in `[min, max]` may match.
    pub fn may_match_time(&self, min: i64, max: i64) -> bool {
        match self {
            // Each value on its own: no segment between two of them can match.
            IndexPredicate::In(column, values) if column == EVENT_TIME_COLUMN => values
                .iter()
                .any(|value| matches!(value, Scalar::I64(v) if (min..=max).contains(v))),
            IndexPredicate::And(children) => children.iter().all(|c| c.may_match_time(min, max)),
            IndexPredicate::Or(children) => children.iter().any(|c| c.may_match_time(min, max)),
            other => other
                .time_window()
                .is_none_or(|window| *window.start() <= max && *window.end() >= min),
        }
    }

    /// Whether the index can narrow anything at all.
    pub fn is_opaque(&self) -> bool {
        match self {
            IndexPredicate::Opaque => true,
            IndexPredicate::And(children) => children.iter().all(|c| c.is_opaque()),
            IndexPredicate::Or(children) => children.iter().any(|c| c.is_opaque()),
            IndexPredicate::Not(child) | IndexPredicate::Superset(child) => child.is_opaque(),
            _ => false,
        }
    }

    /// The one column this predicate reads, if it is NULL exactly where that
    /// column is (comparisons, prefixes, searches and their AND/OR/NOT; not
    /// `IS [NOT] NULL`, which is never NULL).
    fn null_propagating_column(&self) -> Option<&str> {
        match self {
            IndexPredicate::Eq(column, _)
            | IndexPredicate::In(column, _)
            | IndexPredicate::Range { column, .. }
            | IndexPredicate::Prefix(column, _)
            | IndexPredicate::Search { column, .. } => Some(column),
            IndexPredicate::Not(child) => child.null_propagating_column(),
            IndexPredicate::And(children) | IndexPredicate::Or(children) => {
                let mut columns = children.iter().map(|c| c.null_propagating_column());
                let first = columns.next()??;
                columns.all(|c| c == Some(first)).then_some(first)
            }
            IndexPredicate::IsNull(_)
            | IndexPredicate::IsNotNull(_)
            | IndexPredicate::Superset(_)
            | IndexPredicate::Opaque => None,
        }
    }

    /// The query selecting a superset of the matching rows of one segment, and
    /// whether it selects exactly the matching rows; `None` if it would select
    /// every row.
    pub fn to_query(
        &self,
        index: &SegmentIndex,
        fields: &FieldSet,
    ) -> Option<(Box<dyn Query>, bool)> {
        match self.build(index, fields) {
            Built::All { .. } => None,
            Built::Query { query, exact } => Some((query, exact)),
        }
    }

    fn build(&self, index: &SegmentIndex, fields: &FieldSet) -> Built {
        // The column as indexed, if its terms have the literal's kind; `Err(())`
        // when the segment holds no value of the column (every row is NULL).
        let column = |name: &str, kind: TermKind| -> Option<Result<IndexedColumn, ()>> {
            let declared = match name {
                ID_COLUMN | EVENT_TIME_COLUMN => None,
                other => Some(fields.fields.get(other)),
            };
            if let Some(None | Some(FieldType::Null)) = declared {
                return Some(Err(()));
            }
            let indexed = index.column(name)?;
            (indexed.kind == kind).then_some(Ok(indexed))
        };
        let exact = |query: Box<dyn Query>| Built::Query { query, exact: true };
        let nothing = || exact(Box::new(EmptyQuery));
        match self {
            IndexPredicate::Eq(name, value) => match column(name, value.kind()) {
                None => Built::opaque(),
                Some(Err(())) => nothing(),
                Some(Ok(c)) => match value {
                    // -0.0 and 0.0 are equal but distinct terms.
                    Scalar::F64(v) if *v == 0.0 => exact(Box::new(RangeQuery::new(
                        Bound::Included(Scalar::F64(-0.0).term(&c)),
                        Bound::Included(Scalar::F64(0.0).term(&c)),
                    ))),
                    // Only a value as long is equal: those rows have no term.
                    Scalar::Str(s) if s.len() > term_limit(name) => {
                        or_long(index, name, Box::new(EmptyQuery), true)
                    }
                    _ => exact(Box::new(TermQuery::new(
                        value.term(&c),
                        IndexRecordOption::Basic,
                    ))),
                },
            },
            IndexPredicate::In(name, values) => {
                let Some(first) = values.first() else {
                    return nothing();
                };
                if values
                    .iter()
                    .any(|v| v.kind() != first.kind() || *v == Scalar::F64(0.0))
                {
                    return Built::opaque();
                }
                match column(name, first.kind()) {
                    None => Built::opaque(),
                    Some(Err(())) => nothing(),
                    Some(Ok(c)) => {
                        let long =
                            |v: &Scalar| matches!(v, Scalar::Str(s) if s.len() > term_limit(name));
                        let terms =
                            any_term(values.iter().filter(|v| !long(v)).map(|v| v.term(&c)));
                        if values.iter().any(long) {
                            or_long(index, name, terms, true)
                        } else {
                            exact(terms)
                        }
                    }
                }
            }
            IndexPredicate::Range {
                column: name,
                lower,
                upper,
            } => {
                let kind = match (lower, upper) {
                    (Bound::Included(v) | Bound::Excluded(v), _)
                    | (_, Bound::Included(v) | Bound::Excluded(v)) => v.kind(),
                    _ => return Built::opaque(),
                };
                if kind == TermKind::Bool {
                    return Built::opaque();
                }
                match column(name, kind) {
                    None => Built::opaque(),
                    Some(Err(())) => nothing(),
                    Some(Ok(c)) => {
                        let bound = |b: &Bound<Scalar>| match b {
                            Bound::Included(v) => Bound::Included(v.term(&c)),
                            Bound::Excluded(v) => Bound::Excluded(v.term(&c)),
                            Bound::Unbounded => Bound::Unbounded,
                        };
                        // -0.0 sorts before 0.0 among terms: widen such bounds.
                        let zero = |b: &Bound<Scalar>| matches!(b, Bound::Included(Scalar::F64(v)) | Bound::Excluded(Scalar::F64(v)) if *v == 0.0);
                        let widened = zero(lower) || zero(upper);
                        let lower = if zero(lower) {
                            Bound::Included(Scalar::F64(-0.0))
                        } else {
                            lower.clone()
                        };
                        let upper = if zero(upper) {
                            Bound::Included(Scalar::F64(0.0))
                        } else {
                            upper.clone()
                        };
                        let query = Box::new(RangeQuery::new(bound(&lower), bound(&upper)));
                        if kind == TermKind::Str {
                            or_long(index, name, query, !widened)
                        } else {
                            Built::Query {
                                query,
                                exact: !widened,
                            }
                        }
                    }
                }
            }
            IndexPredicate::IsNotNull(name) => present(index, name, fields),
            IndexPredicate::IsNull(name) => match present(index, name, fields) {
                Built::Query { query, exact: true } => exact(Box::new(BooleanQuery::new(vec![
                    (Occur::Must, Box::new(AllQuery)),
                    (Occur::MustNot, query),
                ]))),
                _ => Built::opaque(),
            },
            IndexPredicate::Prefix(name, prefix) => match column(name, TermKind::Str) {
                None => Built::opaque(),
                Some(Err(())) => nothing(),
                // Only long values start with a long prefix.
                Some(Ok(_)) if prefix.len() > term_limit(name) => {
                    or_long(index, name, Box::new(EmptyQuery), true)
                }
                Some(Ok(c)) => {
                    let lower = Bound::Included(Term::from_field_text(c.field, prefix));
                    let upper = match prefix_successor(prefix.as_bytes()) {
                        Some(bytes) => {
                            let mut term = Term::from_field_text(c.field, "");
                            term.append_bytes(&bytes);
                            Bound::Excluded(term)
                        }
                        None => Bound::Unbounded,
                    };
                    or_long(index, name, Box::new(RangeQuery::new(lower, upper)), true)
                }
            },
            IndexPredicate::And(children) => {
                let mut queries = Vec::new();
                let mut all_exact = true;
                for child in children {
                    match child.build(index, fields) {
                        Built::All { exact } => all_exact &= exact,
                        Built::Query { query, exact } => {
                            all_exact &= exact;
                            queries.push((Occur::Must, query));
                        }
                    }
                }
                if queries.is_empty() {
                    return Built::All { exact: all_exact };
                }
                Built::Query {
                    query: Box::new(BooleanQuery::new(queries)),
                    exact: all_exact,
                }
            }
            IndexPredicate::Or(children) => {
                let mut queries = Vec::new();
                let mut all_exact = true;
                for child in children {
                    match child.build(index, fields) {
                        Built::All { exact } => {
                            return Built::All {
                                exact: exact && all_exact,
                            }
                        }
                        Built::Query { query, exact } => {
                            all_exact &= exact;
                            queries.push((Occur::Should, query));
                        }
                    }
                }
                if queries.is_empty() {
                    return nothing();
                }
                Built::Query {
                    query: Box::new(BooleanQuery::new(queries)),
                    exact: all_exact,
                }
            }
            IndexPredicate::Not(child) => match child.build(index, fields) {
                Built::Query { query, exact: true } => {
                    // SQL's NOT is NULL where its operand is: when that is exactly
                    // where one column is missing, the rows having it are the base.
                    let present = child
                        .null_propagating_column()
                        .map(|column| present(index, column, fields));
                    let (base, exact): (Box<dyn Query>, bool) = match present {
                        Some(Built::Query { query, exact: true }) => (query, true),
                        _ => (Box::new(AllQuery), false),
                    };
                    Built::Query {
                        query: Box::new(BooleanQuery::new(vec![
                            (Occur::Must, base),
                            (Occur::MustNot, query),
                        ])),
                        exact,
                    }
                }
                Built::All { exact: true } => nothing(),
                _ => Built::opaque(),
            },
            IndexPredicate::Search { column, query } => match index.text_field(column) {
                // Not a text field here: the function evaluates it row by row.
                None => Built::opaque(),
                Some(field) => match parse_query(index.index(), field, query) {
                    Ok(query) => exact(query),
                    // The function above reports the error.
                    Err(_) => Built::opaque(),
                },
            },
            IndexPredicate::Superset(child) => match child.build(index, fields) {
                Built::All { .. } => Built::opaque(),
                Built::Query { query, .. } => Built::Query {
                    query,
                    exact: false,
                },
            },
            IndexPredicate::Opaque => Built::opaque(),
        }
    }
}

/// A literal number as f64.
fn number(expr: &Arc<dyn PhysicalExpr>) -> Option<f64> {
    match literal(expr)? {
        Scalar::F64(v) => Some(v),
        Scalar::I64(v) => Some(v as f64),
        _ => None,
    }
}

/// The index question for "the point (lat, lon) is in the box": a range on
/// each column (two longitude ranges when the box crosses ±180°). The geo
/// function above still checks each candidate exactly.
fn within_box(lat: String, lon: String, bounds: GeoBox) -> IndexPredicate {
    let range = |column: &str, lower: f64, upper: f64| IndexPredicate::Range {
        column: column.to_string(),
        lower: Bound::Included(Scalar::F64(lower)),
        upper: Bound::Included(Scalar::F64(upper)),
    };
    let mut parts = vec![range(&lat, bounds.south, bounds.north)];
    match bounds.west_east {
        None => {}
        Some((west, east)) if west <= east => parts.push(range(&lon, west, east)),
        Some((west, east)) => parts.push(IndexPredicate::Or(vec![
            range(&lon, west, 180.0),
            range(&lon, -180.0, east),
        ])),
    }
    IndexPredicate::And(parts)
}

/// `geo_within_box(lat, lon, s, w, n, e)` and `geo_within_radius(lat, lon, ..)`
/// over two columns and literal bounds.
fn geo_function(function: &ScalarFunctionExpr) -> Option<IndexPredicate> {
    let args = function.args();
    let (lat, lon) = (column_name(args.first()?)?, column_name(args.get(1)?)?);
    let bounds = match function.name() {
        GEO_WITHIN_BOX => {
            let [_, _, south, west, north, east] = args else {
                return None;
            };
            GeoBox {
                south: number(south)?,
                north: number(north)?,
                west_east: Some((number(west)?, number(east)?)),
            }
        }
        GEO_WITHIN_RADIUS => {
            let [_, _, center_lat, center_lon, meters] = args else {
                return None;
            };
            GeoBox::around(number(center_lat)?, number(center_lon)?, number(meters)?)
        }
        _ => return None,
    };
    Some(within_box(lat, lon, bounds))
}

/// `geo_distance(lat, lon, clat, clon) < meters` (or `<=`, or mirrored).
fn distance_bound(binary: &BinaryExpr) -> Option<IndexPredicate> {
    let (distance, meters) = match binary.op() {
        Operator::Lt | Operator::LtEq => (binary.left(), binary.right()),
        Operator::Gt | Operator::GtEq => (binary.right(), binary.left()),
        _ => return None,
    };
    let function = distance.downcast_ref::<ScalarFunctionExpr>()?;
    let [lat, lon, center_lat, center_lon] = function.args() else {
        return None;
    };
    if function.name() != GEO_DISTANCE {
        return None;
    }
    Some(within_box(
        column_name(lat)?,
        column_name(lon)?,
        GeoBox::around(number(center_lat)?, number(center_lon)?, number(meters)?),
    ))
}

/// Ranges on the same column AND-ed together become one range (`a >= x AND
/// a < y` reads the terms between x and y, not the two halves).
fn merge_ranges(children: Vec<IndexPredicate>) -> Vec<IndexPredicate> {
    use std::cmp::Ordering;
    let tighter = |a: &Bound<Scalar>, b: &Bound<Scalar>, keep: Ordering| -> Option<Bound<Scalar>> {
        let value = |b: &Bound<Scalar>| match b {
            Bound::Included(v) | Bound::Excluded(v) => Some(v.clone()),
            Bound::Unbounded => None,
        };
        Some(match (value(a), value(b)) {
            (None, _) => b.clone(),
            (_, None) => a.clone(),
            (Some(x), Some(y)) => match x.compare(&y)? {
                Ordering::Equal => match (a, b) {
                    (Bound::Excluded(_), _) => a.clone(),
                    _ => b.clone(),
                },
                order if order == keep => a.clone(),
                _ => b.clone(),
            },
        })
    };
    let mut merged: Vec<IndexPredicate> = Vec::with_capacity(children.len());
    for child in children {
        if let IndexPredicate::Range {
            column,
            lower,
            upper,
        } = &child
        {
            let existing = merged.iter_mut().find_map(|m| match m {
                IndexPredicate::Range {
                    column: c,
                    lower: l,
                    upper: u,
                } if c == column => Some((l, u)),
                _ => None,
            });
            if let Some((l, u)) = existing {
                if let (Some(new_lower), Some(new_upper)) = (
                    tighter(l, lower, Ordering::Greater),
                    tighter(u, upper, Ordering::Less),
                ) {
                    *l = new_lower;
                    *u = new_upper;
                    continue;
                }
            }
        }
        merged.push(child);
    }
    merged
}

/// `column IS NOT NULL` in one segment.
fn present(index: &SegmentIndex, name: &str, fields: &FieldSet) -> Built {
    let stored = matches!(name, ID_COLUMN | EVENT_TIME_COLUMN)
        || fields
            .fields
            .get(name)
            .is_some_and(|t| *t != FieldType::Null);
    if !stored {
        return Built::Query {
            query: Box::new(EmptyQuery),
            exact: true,
        };
    }
    if index.column(name).is_none() {
        return Built::opaque();
    }
    Built::Query {
        query: Box::new(TermQuery::new(
            Term::from_field_text(index.present_field(), name),
            IndexRecordOption::Basic,
        )),
        exact: true,
    }
}

/// Lists up to this long are looked up term by term; longer ones stream the
/// term dictionary once through an automaton of the set.
const TERM_LOOKUPS_MAX: usize = 64;

/// A query matching any of `terms`. Short lists become one dictionary lookup
/// per term: `TermSetQuery` builds an FST per segment, which costs far more
/// than the lookups for the handful of values an `IN` usually lists.
fn any_term(terms: impl Iterator<Item = Term>) -> Box<dyn Query> {
    let mut terms: Vec<Term> = terms.collect();
    terms.sort_unstable();
    terms.dedup();
    if terms.len() > TERM_LOOKUPS_MAX {
        return Box::new(TermSetQuery::new(terms));
    }
    Box::new(BooleanQuery::new(
        terms
            .into_iter()
            .map(|term| {
                let query: Box<dyn Query> =
                    Box::new(TermQuery::new(term, IndexRecordOption::Basic));
                (Occur::Should, query)
            })
            .collect(),
    ))
}

/// `query` over string column `name`, widened by the rows whose value is too
/// long to be a term (they may match; the filter decides) if the segment has
/// any.
fn or_long(index: &SegmentIndex, name: &str, query: Box<dyn Query>, exact: bool) -> Built {
    if !index.has_long(name) {
        return Built::Query { query, exact };
    }
    Built::Query {
        query: Box::new(BooleanQuery::new(vec![
            (Occur::Should, query),
            (Occur::Should, Box::new(index.long_rows(name))),
        ])),
        exact: false,
    }
}

/// What a predicate selects in one segment.
enum Built {
    /// Every row; `exact` if every row does match.
    All { exact: bool },
    /// The rows of `query`; `exact` if they are precisely the matching rows.
    Query { query: Box<dyn Query>, exact: bool },
}

impl Built {
    fn opaque() -> Built {
        Built::All { exact: false }
    }
}

/// `LIKE` with a pattern that is a literal or a literal followed by `%`.
fn like_predicate(column: String, pattern: &str) -> Option<IndexPredicate> {
    let (literal, wildcard) = match pattern.strip_suffix('%') {
        Some(prefix) => (prefix, true),
        None => (pattern, false),
    };
    if literal.contains(['%', '_', '\\']) {
        return None;
    }
    Some(if wildcard {
        IndexPredicate::Prefix(column, literal.to_string())
    } else {
        IndexPredicate::Eq(column, Scalar::Str(literal.to_string()))
    })
}

/// The smallest byte string greater than every string that starts with `prefix`
/// (`None`: no such string, the prefix is empty or all `0xFF`). Terms are
/// compared as bytes, so `[prefix, successor)` holds exactly the values that
/// start with the prefix, whatever characters follow it.
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut bytes = prefix.to_vec();
    while let Some(last) = bytes.pop() {
        if last < u8::MAX {
            bytes.push(last + 1);
            return Some(bytes);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::common::DFSchema;
    use datafusion::execution::context::ExecutionProps;
    use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
    use datafusion::logical_expr::{col, lit};
    use datafusion::physical_expr::create_physical_expr;

    fn translate(expr: datafusion::logical_expr::Expr) -> IndexPredicate {
        let schema = Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]);
        let df_schema = DFSchema::try_from(schema).unwrap();
        let physical = create_physical_expr(
            &expr,
            &df_schema,
            &ExecutionProps::new(),
            &PhysicalPlanningContext::default(),
        )
        .unwrap();
        IndexPredicate::from_physical(&physical)
    }

    #[test]
    fn filters_translate_and_ranges_merge() {
        assert_eq!(
            translate(col("a").gt_eq(lit(5i64)).and(col("a").lt(lit(9i64)))),
            IndexPredicate::And(vec![IndexPredicate::Range {
                column: "a".into(),
                lower: Bound::Included(Scalar::I64(5)),
                upper: Bound::Excluded(Scalar::I64(9)),
            }])
        );
        assert_eq!(
            translate(col("a").gt(lit(5i64)).and(col("a").gt_eq(lit(5i64)))),
            IndexPredicate::And(vec![IndexPredicate::Range {
                column: "a".into(),
                lower: Bound::Excluded(Scalar::I64(5)),
                upper: Bound::Unbounded,
            }])
        );
        assert_eq!(
            translate(lit("x").eq(col("s")).or(col("s").like(lit("ab%")))),
            IndexPredicate::Or(vec![
                IndexPredicate::Eq("s".into(), Scalar::Str("x".into())),
                IndexPredicate::Prefix("s".into(), "ab".into()),
            ])
        );
        // `a + 1 = 3` is not answerable; under AND it narrows nothing.
        let opaque = translate((col("a") + lit(1i64)).eq(lit(3i64)).and(col("s").is_null()));
        assert_eq!(
            opaque,
            IndexPredicate::And(vec![
                IndexPredicate::Opaque,
                IndexPredicate::IsNull("s".into())
            ])
        );
        assert!(!opaque.is_opaque());
        assert!(translate((col("a") + lit(1i64)).eq(lit(3i64)).or(col("s").is_null())).is_opaque());
        assert_eq!(
            translate(col("s").eq(lit("k")).and(col("a").eq(lit(1i64)))).ids(),
            None
        );
    }

    /// Strings too long to be terms are found through `_long` and filtered;
    /// short ones stay exact.
    #[test]
    fn long_strings_are_found_without_terms() {
        use crate::segment::index::{index_docs, MAX_TERM_BYTES};

        let long_a = format!("x{}", "a".repeat(MAX_TERM_BYTES));
        let long_b = format!("x{}", "b".repeat(MAX_TERM_BYTES));
        let docs = [
            serde_json::json!({"s": "xy"}),
            serde_json::json!({"s": long_a.clone()}),
            serde_json::json!({"s": long_b.clone(), "t": [long_b.clone(), "z"]}),
            serde_json::json!({"a": 1}),
        ];
        let dir = tempfile::tempdir().unwrap();
        let (fields, index) = index_docs(dir.path(), &docs, &[]);
        assert!(index.has_long("s"));
        assert!(!index.has_long("a"));
        let select = |predicate: IndexPredicate| {
            let (query, exact) = predicate.to_query(&index, &fields).unwrap();
            (index.matching_rows(query.as_ref()).unwrap(), exact)
        };
        let eq = |c: &str, v: &str| IndexPredicate::Eq(c.into(), Scalar::Str(v.into()));
        // Short values: exact, long values cannot equal them.
        assert_eq!(select(eq("s", "xy")), (vec![0], true));
        assert_eq!(select(eq("t", "z")), (vec![2], true));
        // A long value: a superset holding it.
        assert_eq!(select(eq("s", &long_a)), (vec![1, 2], false));
        assert_eq!(select(eq("t", &long_b)), (vec![2], false));
        assert_eq!(
            select(IndexPredicate::Prefix("s".into(), "x".into())),
            (vec![0, 1, 2], false)
        );
        assert_eq!(
            select(IndexPredicate::In(
                "s".into(),
                vec![Scalar::Str("xy".into()), Scalar::Str(long_b.clone())]
            )),
            (vec![0, 1, 2], false)
        );
        // Every row keeps its id, found by row number.
        let ids: Vec<String> = index
            .ids_and_seqs(&[1, 3])
            .into_iter()
            .map(|(_, id, _)| id)
            .collect();
        assert_eq!(ids, ["d1", "d3"]);
    }

    /// `LIKE 'prefix%'` selects exactly the values that start with the prefix:
    /// a newline after the prefix, regex metacharacters (`<`, `>`, `.`, `(`) and
    /// bytes at the top of the range are ordinary characters.
    #[test]
    fn prefixes_select_exactly_the_values_that_start_with_them() {
        use crate::segment::index::index_docs;

        let values = [
            "abc\ndef", "abc", "ab", "abd", "a<b>c", "a<b", "a.b", "a(b", "ab\u{10FFFF}x", "\u{10FFFF}",
            "\u{10FFFF}\u{10FFFF}", "zz",
        ];
        let docs: Vec<_> = values.iter().map(|v| serde_json::json!({"s": v})).collect();
        let dir = tempfile::tempdir().unwrap();
        let (fields, index) = index_docs(dir.path(), &docs, &[]);
        for prefix in ["abc", "ab", "a<b", "a<", "a.", "a(", "a", "\u{10FFFF}", "", "q"] {
            let (query, exact) = IndexPredicate::Prefix("s".into(), prefix.into())
                .to_query(&index, &fields)
                .unwrap();
            let expected: Vec<u32> = (0..values.len() as u32)
                .filter(|&row| values[row as usize].starts_with(prefix))
                .collect();
            assert_eq!(
                (index.matching_rows(query.as_ref()).unwrap(), exact),
                (expected, true),
                "LIKE '{prefix}%'"
            );
        }
    }

    /// `IN` finds the same rows whether its list is looked up term by term or
    /// through a term-set automaton, across types and with absent values.
    #[test]
    fn in_lists_short_and_long_select_the_same_rows() {
        use crate::segment::index::index_docs;

        let docs: Vec<serde_json::Value> = (0..200)
            .map(|i| serde_json::json!({"s": format!("v{i}"), "a": i % 50}))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let (fields, index) = index_docs(dir.path(), &docs, &[]);
        let select = |predicate: IndexPredicate| {
            let (query, exact) = predicate.to_query(&index, &fields).unwrap();
            (index.matching_rows(query.as_ref()).unwrap(), exact)
        };
        let strings = |values: &[&str]| {
            IndexPredicate::In(
                "s".into(),
                values.iter().map(|v| Scalar::Str(v.to_string())).collect(),
            )
        };
        assert_eq!(
            select(strings(&["v7", "nope", "v3", "v7"])),
            (vec![3, 7], true)
        );
        assert_eq!(
            select(IndexPredicate::In(
                "a".into(),
                vec![Scalar::I64(1), Scalar::I64(49)]
            )),
            (vec![1, 49, 51, 99, 101, 149, 151, 199], true)
        );
        // Longer than TERM_LOOKUPS_MAX: every even row, and absent values.
        let wanted: Vec<String> = (0..200)
            .step_by(2)
            .map(|i| format!("v{i}"))
            .chain((0..20).map(|i| format!("absent{i}")))
            .collect();
        assert!(wanted.len() > TERM_LOOKUPS_MAX);
        let refs: Vec<&str> = wanted.iter().map(String::as_str).collect();
        assert_eq!(
            select(strings(&refs)),
            ((0..200).step_by(2).collect::<Vec<u32>>(), true)
        );
        assert_eq!(select(strings(&["absent"])), (vec![], true));
    }

    #[test]
    fn geo_predicates_become_ranges() {
        use altdb_common::geo::{GeoWithinBox, GeoWithinRadius};
        use datafusion::logical_expr::Expr;
        let schema = Schema::new(vec![
            Field::new("lat", DataType::Float64, true),
            Field::new("lon", DataType::Float64, true),
        ]);
        let df_schema = DFSchema::try_from(schema).unwrap();
        let translate = |expr: Expr| {
            let physical = create_physical_expr(
                &expr,
                &df_schema,
                &ExecutionProps::new(),
                &PhysicalPlanningContext::default(),
            )
            .unwrap();
            IndexPredicate::from_physical(&physical)
        };
        let range = |column: &str, lower: f64, upper: f64| IndexPredicate::Range {
            column: column.into(),
            lower: Bound::Included(Scalar::F64(lower)),
            upper: Bound::Included(Scalar::F64(upper)),
        };
        let boxed = GeoWithinBox::udf().call(vec![
            col("lat"),
            col("lon"),
            lit(59.0),
            lit(170.0),
            lit(60.0),
            lit(-170.0),
        ]);
        assert_eq!(
            translate(boxed),
            IndexPredicate::Superset(Box::new(IndexPredicate::And(vec![
                range("lat", 59.0, 60.0),
                IndexPredicate::Or(vec![
                    range("lon", 170.0, 180.0),
                    range("lon", -180.0, -170.0)
                ]),
            ])))
        );
        let radius = GeoWithinRadius::udf().call(vec![
            col("lat"),
            col("lon"),
            lit(0.0),
            lit(0.0),
            lit(111_195.0),
        ]);
        let IndexPredicate::Superset(boxed) = translate(radius) else {
            panic!("a radius is read as its box");
        };
        let IndexPredicate::And(parts) = *boxed else {
            panic!("a radius is a box");
        };
        let IndexPredicate::Range {
            lower: Bound::Included(Scalar::F64(south)),
            ..
        } = &parts[0]
        else {
            panic!("{parts:?}");
        };
        assert!((south + 1.0).abs() < 1e-3, "{south}");
    }

    #[test]
    fn event_time_bounds_prune() {
        let window = IndexPredicate::Range {
            column: EVENT_TIME_COLUMN.into(),
            lower: Bound::Included(Scalar::I64(100)),
            upper: Bound::Excluded(Scalar::I64(200)),
        };
        assert!(window.may_match_time(150, 400));
        assert!(window.may_match_time(0, 100));
        assert!(!window.may_match_time(200, 300));
        assert!(!window.may_match_time(0, 99));
        let either = IndexPredicate::Or(vec![window.clone(), IndexPredicate::Opaque]);
        assert!(either.may_match_time(500, 600));
    }

    #[test]
    fn event_time_windows_split_off() {
        let time = |lower, upper| IndexPredicate::Range {
            column: EVENT_TIME_COLUMN.into(),
            lower,
            upper,
        };
        let window = time(
            Bound::Included(Scalar::I64(100)),
            Bound::Excluded(Scalar::I64(200)),
        );
        assert_eq!(window.split_time(), Some((100..=199, None)));
        let user = IndexPredicate::Eq("user".into(), Scalar::Str("u1".into()));
        let both = IndexPredicate::And(vec![
            window.clone(),
            user.clone(),
            time(Bound::Excluded(Scalar::I64(150)), Bound::Unbounded),
        ]);
        assert_eq!(both.split_time(), Some((151..=199, Some(user.clone()))));
        let at = IndexPredicate::In(
            EVENT_TIME_COLUMN.into(),
            vec![Scalar::I64(7), Scalar::I64(3)],
        );
        assert_eq!(at.split_time(), Some((3..=7, None)));
        assert_eq!(user.split_time(), None);
        assert_eq!(IndexPredicate::Or(vec![window, user]).split_time(), None);
    }
}
