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

use datafusion::scalar::ScalarValue;
use tantivy::Term;

use altdb_common::columns::ID_COLUMN;

use crate::segment::index::{IndexedColumn, TermKind};

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

mod query;
mod time;
mod translate;

impl IndexPredicate {
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
}
