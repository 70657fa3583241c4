//! An [`IndexPredicate`] as a tantivy query over one sealed segment's index.

use std::ops::Bound;

use tantivy::query::{
    AllQuery, BooleanQuery, EmptyQuery, Occur, Query, RangeQuery, TermQuery, TermSetQuery,
};
use tantivy::schema::IndexRecordOption;
use tantivy::Term;

use altdb_common::columns::{EVENT_TIME_COLUMN, ID_COLUMN};
use altdb_common::schema::{FieldSet, FieldType};
use altdb_common::search::parse_query;

use crate::segment::index::{term_limit, IndexedColumn, SegmentIndex, TermKind};

use super::{IndexPredicate, Scalar};

impl IndexPredicate {
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
                // When term lookups among the conditions already select few
                // rows, the conditions that enumerate terms (ranges, prefixes,
                // searches) are left to the filter: walking half a dictionary
                // to intersect it with a few dozen rows costs more than
                // filtering them.
                let estimates: Vec<Option<u64>> =
                    children.iter().map(|c| c.estimate(index, fields)).collect();
                let narrow = estimates
                    .iter()
                    .flatten()
                    .min()
                    .is_some_and(|&rows| rows * NARROW_FRACTION <= index.num_docs());
                for (child, estimate) in children.iter().zip(&estimates) {
                    if narrow && estimate.is_none() {
                        all_exact = false;
                        continue;
                    }
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

/// An AND is narrowed by its term lookups alone when they select at most
/// 1/this of a segment's rows (as a scan reads a segment whose index selects
/// more than 1/8 of it).
const NARROW_FRACTION: u64 = 8;

impl IndexPredicate {
    /// At most how many rows of the segment this selects, when term
    /// lookups tell (equalities and `IN` lists, and their AND/OR); `None` for
    /// what enumerates terms or cannot be looked up.
    fn estimate(&self, index: &SegmentIndex, fields: &FieldSet) -> Option<u64> {
        let lookup = |name: &str, value: &Scalar| -> Option<u64> {
            if !matches!(name, ID_COLUMN | EVENT_TIME_COLUMN)
                && fields
                    .fields
                    .get(name)
                    .is_none_or(|t| *t == FieldType::Null)
            {
                return Some(0);
            }
            let column = index.column(name).filter(|c| c.kind == value.kind())?;
            match value {
                Scalar::F64(v) if *v == 0.0 => None,
                Scalar::Str(s) if s.len() > term_limit(name) => None,
                _ => index.doc_freq(&value.term(&column)),
            }
        };
        match self {
            IndexPredicate::Eq(name, value) => lookup(name, value),
            IndexPredicate::In(name, values) if values.len() <= TERM_LOOKUPS_MAX => {
                values.iter().map(|v| lookup(name, v)).sum::<Option<u64>>()
            }
            IndexPredicate::And(children) => children
                .iter()
                .filter_map(|c| c.estimate(index, fields))
                .min(),
            IndexPredicate::Or(children) => children
                .iter()
                .map(|c| c.estimate(index, fields))
                .sum::<Option<u64>>(),
            _ => None,
        }
    }
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

    /// The rows `predicate` selects in a segment, and whether exactly those.
    fn selected(
        index: &SegmentIndex,
        fields: &FieldSet,
        predicate: IndexPredicate,
    ) -> (Vec<u32>, bool) {
        let (query, exact) = predicate.to_query(index, fields).unwrap();
        (index.matching_rows(query.as_ref()).unwrap(), exact)
    }
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
        let select = |predicate: IndexPredicate| selected(&index, &fields, predicate);
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

    /// An AND whose equalities select few rows leaves its range to the filter
    /// (a superset, not exact); one whose equalities select many intersects
    /// them with the range in the index.
    #[test]
    fn ands_are_narrowed_by_their_term_lookups_when_those_select_few_rows() {
        use crate::segment::index::index_docs;

        let docs: Vec<serde_json::Value> = (0..400)
            .map(|i| serde_json::json!({"user": i % 100, "kind": i % 2, "t": format!("t{i:04}")}))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let (fields, index) = index_docs(dir.path(), &docs, &[]);
        let select = |predicate: IndexPredicate| selected(&index, &fields, predicate);
        let since = |t: &str| IndexPredicate::Range {
            column: "t".into(),
            lower: Bound::Included(Scalar::Str(t.into())),
            upper: Bound::Unbounded,
        };
        // user = 7: 4 rows of 400; the range is not walked.
        let user = IndexPredicate::Eq("user".into(), Scalar::I64(7));
        assert_eq!(user.estimate(&index, &fields), Some(4));
        assert_eq!(
            select(IndexPredicate::And(vec![user.clone(), since("t0200")])),
            (vec![7, 107, 207, 307], false)
        );
        // kind = 1: half the rows; intersected with the range, exactly.
        let kind = IndexPredicate::Eq("kind".into(), Scalar::I64(1));
        let (rows, exact) = select(IndexPredicate::And(vec![kind, since("t0396")]));
        assert_eq!((rows, exact), (vec![397, 399], true));
        // A column no row has selects nothing, and is the narrowest.
        let absent = IndexPredicate::Eq("nope".into(), Scalar::I64(1));
        assert_eq!(absent.estimate(&index, &fields), Some(0));
        assert_eq!(
            select(IndexPredicate::And(vec![absent, since("t0000")])),
            (vec![], false)
        );
        // Ranges and what enumerates terms have no estimate.
        assert_eq!(since("t0").estimate(&index, &fields), None);
        let either = IndexPredicate::Or(vec![
            user,
            IndexPredicate::Eq("user".into(), Scalar::I64(8)),
        ]);
        assert_eq!(either.estimate(&index, &fields), Some(8));
    }

    /// `LIKE 'prefix%'` selects exactly the values that start with the prefix:
    /// a newline after the prefix, regex metacharacters (`<`, `>`, `.`, `(`) and
    /// bytes at the top of the range are ordinary characters.
    #[test]
    fn prefixes_select_exactly_the_values_that_start_with_them() {
        use crate::segment::index::index_docs;

        let values = [
            "abc\ndef",
            "abc",
            "ab",
            "abd",
            "a<b>c",
            "a<b",
            "a.b",
            "a(b",
            "ab\u{10FFFF}x",
            "\u{10FFFF}",
            "\u{10FFFF}\u{10FFFF}",
            "zz",
        ];
        let docs: Vec<_> = values.iter().map(|v| serde_json::json!({"s": v})).collect();
        let dir = tempfile::tempdir().unwrap();
        let (fields, index) = index_docs(dir.path(), &docs, &[]);
        for prefix in [
            "abc",
            "ab",
            "a<b",
            "a<",
            "a.",
            "a(",
            "a",
            "\u{10FFFF}",
            "",
            "q",
        ] {
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
        let select = |predicate: IndexPredicate| selected(&index, &fields, predicate);
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
}
