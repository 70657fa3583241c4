//! The access-path choice: how a scan reads each sealed segment of a shard.
//!
//! ```text
//!  _id = / IN (few)   → the documents from RocksDB, no segment touched (is_few)
//!  per sealed segment:
//!    its _event_time range cannot match        → Pruned
//!    an index selection (tantivy terms, or the pages of an _event_time window):
//!      under a top-k and more than FETCH_MAX_ROWS rows, or no selection
//!                                              → RowGroups (best first, see topk)
//!      fewer rows than the pages of the columns read would cost
//!                                              → Fetch (RocksDB point reads)
//!      else                                    → Rows (their pages decoded)
//!    the selection is above 1/INDEX_MAX_FRACTION of the segment (no ranking)
//!                                              → Scan (every column page)
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use tantivy::query::Query;

use altdb_common::rpc::Access;
use altdb_common::search::parse_query;

use crate::exec::predicate::{IndexPredicate, TimeSplit};
use crate::segment::index::SegmentIndex;
use crate::segment::sealed::PAGE_ROWS;
use crate::shard::SealedEntry;

/// A segment is read through its index when the index selects at most
/// 1/this of its rows; above that, a sequential scan is cheaper.
pub const INDEX_MAX_FRACTION: usize = 8;
/// Up to this many selected rows of a segment are fetched from RocksDB ..
pub const FETCH_MAX_ROWS: usize = 1024;
/// .. unless the pages they fall in cost less to decode, a page of one column
/// costing about as much as this many point reads (a RocksDB read and the
/// parse of the whole document each) ..
pub const PAGE_COLUMN_FETCHES: usize = 8;
/// .. and a page of every column read at most this many: rows as dense as a
/// time range's (sealed segments are in event-time order) are read from pages.
pub const PAGE_READ_MIN_ROWS: usize = 64;
/// A lookup of at most this many `_id`s runs on the fragment's task instead of
/// a blocking thread: a few reads from RocksDB's block cache cost less than the
/// hand-over.
pub const INLINE_MAX_IDS: usize = 64;

/// Whether a lookup of `ids` is small enough to run on the fragment's task.
pub fn is_few(ids: &[String]) -> bool {
    ids.len() <= INLINE_MAX_IDS
}

/// What a scan knows that can narrow its reads of a segment.
#[derive(Clone, Copy, Default)]
pub struct Narrowing<'a> {
    /// The filter above, translated for the indexes.
    pub predicate: Option<&'a IndexPredicate>,
    /// Its `_event_time` window and the rest of it.
    pub time_split: Option<&'a TimeSplit>,
    /// The text search `_score` ranks by (column, query), when `_score` is read.
    pub search: Option<(&'a str, &'a str)>,
    /// A top-k sits right above the scan (its bound can rule out row groups).
    pub top_k: bool,
    /// How many columns the scan reads (what a page read decodes).
    pub columns: usize,
}

/// How one sealed segment is read.
pub enum SegmentAccess {
    /// Not at all: its `_event_time` range cannot match.
    Pruned,
    /// The selected rows as stored in RocksDB (a point read each).
    Fetch(Selected),
    /// The selected rows from the pages of the segment's columnar file.
    Rows(Selected),
    /// By row group under a top-k, best first; the index's selection, if any,
    /// read within each.
    RowGroups(Option<Selected>),
    /// Every live row.
    Scan,
}

impl SegmentAccess {
    /// The path chosen for `entry`.
    pub fn choose(entry: &SealedEntry, narrowing: Narrowing<'_>) -> SegmentAccess {
        let meta = &entry.segment.meta;
        if let Some(predicate) = narrowing.predicate {
            if !predicate.may_match_time(meta.min_event_time_us, meta.max_event_time_us) {
                return SegmentAccess::Pruned;
            }
        }
        let selected = index_rows(entry, narrowing);
        if narrowing.top_k
            && selected
                .as_ref()
                .is_none_or(|s| s.rows.len() > FETCH_MAX_ROWS)
        {
            return SegmentAccess::RowGroups(selected);
        }
        Self::without_row_groups(selected, narrowing.columns)
    }

    /// The path for a segment read whole or by its selection (also when its row
    /// groups cannot be ranked), `columns` read.
    pub fn without_row_groups(selected: Option<Selected>, columns: usize) -> SegmentAccess {
        match selected {
            Some(selected) if worth_fetching(&selected.rows, columns) => {
                SegmentAccess::Fetch(selected)
            }
            Some(selected) => SegmentAccess::Rows(selected),
            None => SegmentAccess::Scan,
        }
    }
}

/// Rows of a segment chosen through its index.
pub struct Selected {
    /// Ascending, live (deleted rows removed).
    pub rows: Vec<u32>,
    /// BM25 score by row, when the query ranks by `_score`.
    pub scores: Option<HashMap<u32, f32>>,
    pub index: Arc<SegmentIndex>,
    /// The rows are exactly those matching the predicate.
    pub exact: bool,
    /// How they were chosen: [`Access::Index`] or [`Access::TimePages`].
    pub access: Access,
}

/// The live rows of a sealed segment the index selects, if it is worth it,
/// with their BM25 scores when the query ranks by `_score`.
fn index_rows(entry: &SealedEntry, narrowing: Narrowing<'_>) -> Option<Selected> {
    let predicate = narrowing.predicate.filter(|p| !p.is_opaque())?;
    let segment = &entry.segment;
    if segment.index_pending() {
        return None;
    }
    let index = match segment.index() {
        Ok(index) => index,
        Err(error) => {
            tracing::warn!(segment = segment.meta.id, %error, "segment index unusable; scanning");
            return None;
        }
    };
    let fields = &segment.meta.fields;
    let matching = |query: Box<dyn Query>| match index.matching_rows(query.as_ref()) {
        Ok(rows) => Some(rows),
        Err(error) => {
            tracing::warn!(segment = segment.meta.id, %error, "index query failed; scanning");
            None
        }
    };
    // A time window is found in the page index (no term of `_event_time`
    // read); the rest of the predicate, if any, through the index.
    let (mut rows, exact, access) = match window_rows(entry, narrowing.time_split) {
        Some(window) => {
            let rest = narrowing.time_split.and_then(|split| split.1.as_ref());
            match rest.and_then(|rest| rest.to_query(&index, fields)) {
                None => (window, false, Access::TimePages),
                Some((query, _)) => {
                    let mut rows = matching(query)?;
                    rows.retain(|row| window.binary_search(row).is_ok());
                    (rows, false, Access::Index)
                }
            }
        }
        None => {
            let (query, exact) = predicate.to_query(&index, fields)?;
            (matching(query)?, exact, Access::Index)
        }
    };
    rows.retain(|&row| !entry.deletes.contains(row as usize));
    // Ranked text search keeps the segment's own BM25 statistics, so it
    // reads through the index however many rows match.
    let search = narrowing.search.and_then(|(column, query)| {
        let field = index.text_field(column)?;
        parse_query(index.index(), field, query).ok()
    });
    // The pages of a time window are read as cheaply as a scan reads them.
    let live = live_rows(entry) as usize;
    if search.is_none() && access != Access::TimePages && rows.len() * INDEX_MAX_FRACTION > live {
        return None;
    }
    let scores = match search {
        Some(search) => Some(
            index
                .scored_rows(search.as_ref())
                .ok()?
                .into_iter()
                .collect::<HashMap<u32, f32>>(),
        ),
        None => None,
    };
    Some(Selected {
        rows,
        scores,
        index,
        exact,
        access,
    })
}

/// The rows of the pages of a sealed segment that may hold the predicate's
/// `_event_time` window, if it has one and that is not every page.
fn window_rows(entry: &SealedEntry, time_split: Option<&TimeSplit>) -> Option<Vec<u32>> {
    let (window, _) = time_split?;
    match entry.segment.rows_in_time(window) {
        Ok(rows) => rows,
        Err(error) => {
            tracing::warn!(segment = entry.segment.meta.id, %error, "no page index; using the index");
            None
        }
    }
}

/// Rows of a sealed segment not superseded or deleted since it was sealed.
fn live_rows(entry: &SealedEntry) -> u64 {
    entry.segment.meta.rows - entry.deletes.len() as u64
}

/// Whether the selected rows (ascending) of a segment are better fetched from
/// RocksDB one by one than read from the pages of `columns` columns of its
/// columnar file: few, and spread over many pages. Reading no column (a
/// count) costs no page.
fn worth_fetching(rows: &[u32], columns: usize) -> bool {
    if rows.len() > FETCH_MAX_ROWS {
        return false;
    }
    let mut pages = 0;
    let mut last = None;
    for &row in rows {
        let page = row as usize / PAGE_ROWS;
        if last != Some(page) {
            pages += 1;
            last = Some(page);
        }
    }
    // No rows: nothing to read either way; a fetch of none costs nothing.
    let per_page = (columns * PAGE_COLUMN_FETCHES).min(PAGE_READ_MIN_ROWS);
    rows.is_empty() || rows.len() < pages * per_page
}

#[cfg(test)]
mod tests {
    use std::ops::Bound;

    use super::*;
    use crate::exec::predicate::Scalar;
    use crate::shard::tests::new_shard;
    use crate::shard::{SealPolicy, Shard};
    use crate::store::CollectionMeta;
    use altdb_common::columns::{EVENT_TIME_COLUMN, ID_COLUMN};
    use altdb_common::rpc::PutRow;

    const DOCS: usize = 20_000;

    /// One sealed segment of `DOCS` documents, in `_event_time` order (1 ms
    /// apart): `user` repeats every 1000 documents (20 rows each, far apart),
    /// `n` is unique, `status` is `ok` for 9 in 10.
    fn sealed_shard(dir: &std::path::Path) -> Shard {
        let shard = new_shard(dir);
        let docs = (0..DOCS)
            .map(|i| PutRow {
                id: format!("d{i}"),
                event_time_us: i as i64 * 1000,
                position: None,
                doc_json: format!(
                    r#"{{"user": "u{}", "n": {i}, "status": "{}"}}"#,
                    i % 1000,
                    if i % 10 == 0 { "err" } else { "ok" }
                ),
                delete: false,
            })
            .collect();
        shard
            .write(&CollectionMeta::default(), &[], docs, 0)
            .unwrap();
        let policy = SealPolicy {
            max_rows: 1,
            max_age_secs: 3600,
        };
        assert!(shard.seal_if_due(policy, true).unwrap());
        shard
    }

    /// What the choice comes to: the path's name, how the rows were
    /// selected, and how many.
    fn chosen(
        shard: &Shard,
        predicate: Option<IndexPredicate>,
        top_k: bool,
    ) -> (&'static str, Option<(Access, usize)>) {
        let split = predicate.as_ref().and_then(IndexPredicate::split_time);
        let narrowing = Narrowing {
            predicate: predicate.as_ref(),
            time_split: split.as_ref(),
            search: None,
            top_k,
            columns: 3,
        };
        let snapshot = shard.snapshot();
        let summary = |s: &Selected| (s.access, s.rows.len());
        match SegmentAccess::choose(&snapshot.sealed[0], narrowing) {
            SegmentAccess::Pruned => ("pruned", None),
            SegmentAccess::Fetch(s) => ("fetch", Some(summary(&s))),
            SegmentAccess::Rows(s) => ("rows", Some(summary(&s))),
            SegmentAccess::RowGroups(s) => ("row groups", s.as_ref().map(summary)),
            SegmentAccess::Scan => ("scan", None),
        }
    }

    fn eq(column: &str, value: Scalar) -> Option<IndexPredicate> {
        Some(IndexPredicate::Eq(column.into(), value))
    }

    fn range(column: &str, low: i64, high: i64) -> Option<IndexPredicate> {
        Some(IndexPredicate::Range {
            column: column.into(),
            lower: Bound::Included(Scalar::I64(low)),
            upper: Bound::Included(Scalar::I64(high)),
        })
    }

    #[test]
    fn each_sealed_segment_is_read_the_cheapest_way() {
        let dir = tempfile::tempdir().unwrap();
        let shard = sealed_shard(dir.path());

        // 20 rows, each on a page of its own: fetched from RocksDB by `_id`.
        assert_eq!(
            chosen(&shard, eq("user", Scalar::Str("u7".into())), false),
            ("fetch", Some((Access::Index, 20)))
        );
        // 1000 neighbouring rows through the index: read from their pages.
        assert_eq!(
            chosen(&shard, range("n", 5_000, 5_999), false),
            ("rows", Some((Access::Index, 1000)))
        );
        // A time window: the pages of `_event_time` that may hold it.
        let (path, selected) = chosen(
            &shard,
            range(EVENT_TIME_COLUMN, 5_000_000, 5_099_000),
            false,
        );
        assert_eq!(path, "rows");
        let (access, rows) = selected.unwrap();
        assert_eq!(access, Access::TimePages);
        assert!((100..=2 * PAGE_ROWS).contains(&rows), "{rows} rows");
        // A window AND another condition: the index within the window's pages.
        let both = IndexPredicate::And(vec![
            range(EVENT_TIME_COLUMN, 5_000_000, 5_099_000).unwrap(),
            eq("status", Scalar::Str("err".into())).unwrap(),
        ]);
        let (_, selected) = chosen(&shard, Some(both), false);
        assert_eq!(selected.unwrap().0, Access::Index);
        // 9 rows in 10 match: a scan reads them for less.
        assert_eq!(
            chosen(&shard, eq("status", Scalar::Str("ok".into())), false),
            ("scan", None)
        );
        // Nothing to narrow by.
        assert_eq!(chosen(&shard, None, false), ("scan", None));
        assert_eq!(
            chosen(&shard, Some(IndexPredicate::Opaque), false),
            ("scan", None)
        );
        // Outside the segment's time range: not read at all.
        assert_eq!(
            chosen(&shard, range(EVENT_TIME_COLUMN, 1 << 50, 1 << 51), false),
            ("pruned", None)
        );
        // Under a top-k: by row group, with the index's selection when it is large.
        assert_eq!(chosen(&shard, None, true), ("row groups", None));
        assert_eq!(
            chosen(&shard, range("n", 0, 1_999), true),
            ("row groups", Some((Access::Index, 2000)))
        );
        // .. and fetched when it is small.
        assert_eq!(
            chosen(&shard, eq("user", Scalar::Str("u7".into())), true),
            ("fetch", Some((Access::Index, 20)))
        );
        // Rows replaced since sealing are not selected.
        shard
            .write(
                &CollectionMeta::default(),
                &[],
                vec![PutRow {
                    id: "d7".into(),
                    event_time_us: 7_000,
                    position: None,
                    doc_json: r#"{"user": "moved"}"#.into(),
                    delete: false,
                }],
                0,
            )
            .unwrap();
        assert_eq!(
            chosen(&shard, eq("user", Scalar::Str("u7".into())), false),
            ("fetch", Some((Access::Index, 19)))
        );
    }

    #[test]
    fn key_lookups_of_a_few_ids_run_inline() {
        let ids = |n: usize| -> IndexPredicate {
            IndexPredicate::In(
                ID_COLUMN.into(),
                (0..n).map(|i| Scalar::Str(format!("d{i}"))).collect(),
            )
        };
        assert!(is_few(&ids(INLINE_MAX_IDS).ids().unwrap()));
        assert!(!is_few(&ids(INLINE_MAX_IDS + 1).ids().unwrap()));
        let either = IndexPredicate::Or(vec![ids(2), ids(3)]);
        assert_eq!(either.ids().unwrap().len(), 5);
    }

    #[test]
    fn few_scattered_rows_are_fetched_and_runs_read_from_pages() {
        // A few rows on pages of their own: a read per row beats a page per row.
        let scattered: Vec<u32> = (0..10).map(|i| i * PAGE_ROWS as u32 + 7).collect();
        assert!(worth_fetching(&scattered, 1));
        assert!(worth_fetching(&scattered, 20));
        // A count reads no page: nothing to fetch.
        assert!(!worth_fetching(&scattered, 0));
        // A time range's rows: one run on one or two pages.
        let run: Vec<u32> = (1_000..1_250).collect();
        assert!(!worth_fetching(&run, 20));
        // Many rows on few pages of few columns: the pages are read.
        let user: Vec<u32> = (0..100).map(|i| i * 97).collect();
        assert!(!worth_fetching(&user, 2));
        assert!(worth_fetching(&user, 20));
        // Too many rows for point reads, however spread.
        let many: Vec<u32> = (0..2_000).map(|i| i * 97).collect();
        assert!(!worth_fetching(&many, 20));
        assert!(worth_fetching(&[], 2));
    }
}
