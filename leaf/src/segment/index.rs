//! The inverted index of a sealed segment (tantivy).
//!
//! Every column of the segment is indexed with the type it has in the segment's
//! columnar file, from the same Arrow values, so a term matches exactly the rows
//! whose column holds that value:
//!
//! ```text
//!  varchar, json  → raw string terms      bigint, timestamp → i64 terms
//!  double         → f64 terms             boolean           → bool terms
//!  list<T>        → a term per element    text_fields       → tokenized text (BM25)
//!  _present       → the names of the columns that are not NULL in the row
//!  _long          → the names of the columns whose string is too long to be
//!                   a term (over MAX_TERM_BYTES, like Elasticsearch's
//!                   `ignore_above`); lookups read these rows and filter them
//!  _row           → the row number in the columnar file (fast field only: the
//!                   index is never merged, so each tantivy segment holds a run
//!                   of consecutive rows and a row's document is found by
//!                   subtraction)
//! ```
//!
//! Beside the tantivy files, [`KEYS_FILE`] holds every row's `_id` and `_seq`
//! (see [`super::keys`]): the few rows a needle query selects are fetched from
//! RocksDB by `_id`, and `_seq` tells whether the row is still current.
//!
//! Each segment has its own schema (the fields it holds); [`INDEX_VERSION`] is
//! written next to it and an index of another version is rebuilt on open.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimestampMicrosecondType, UInt64Type};
use arrow::record_batch::RecordBatch;
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::Column;
use tantivy::directory::{Directory, MmapDirectory};
use tantivy::indexer::NoMergePolicy;
use tantivy::query::{EnableScoring, Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, NumericOptions, Schema, FAST, STRING};
use tantivy::{
    DocId, Index, IndexReader, ReloadPolicy, Score, SegmentReader, TantivyDocument, Term,
};

use altdb_common::columns::{ID_COLUMN, SEQ_COLUMN};
use altdb_common::schema::{FieldSet, FieldType};

use super::keys::{RowKeys, RowKeysWriter};
use altdb_common::search::text_field_options;

use crate::error::{LeafError, Result};

/// Bumped whenever what is indexed or how it is encoded changes; older indexes are
/// rebuilt. 6: tantivy without its sstable zstd blocks (version 5 indexes may hold
/// zstd-compressed term dictionaries this build cannot read).
pub const INDEX_VERSION: u32 = 6;
const VERSION_FILE: &str = "altdb-index-version";
/// The row keys of the segment, written beside the tantivy files.
pub const KEYS_FILE: &str = "altdb-row-keys";
/// Field holding the names of the row's non-NULL columns.
pub const PRESENT: &str = "_present";
/// Field holding the names of the row's columns too long to be terms.
pub const LONG: &str = "_long";
/// Field holding the row number in the segment.
pub const ROW: &str = "_row";
/// Longest string indexed as a term. Every distinct term is a key of the
/// segment's term dictionary (an FST, whose construction dominates indexing
/// cost), and free text, JSON blobs and stack traces are rarely looked up
/// whole; a longer value is marked in [`LONG`] instead.
pub const MAX_TERM_BYTES: usize = 256;
/// Prefix of the tokenized twin of a text field.
const TEXT_PREFIX: &str = "text:";

const WRITER_HEAP_BYTES: usize = 64 << 20;

/// How one column is indexed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TermKind {
    Str,
    I64,
    F64,
    Bool,
}

impl TermKind {
    /// The kind of terms a column of `field_type` is indexed with.
    pub fn of(field_type: &FieldType) -> Option<TermKind> {
        match field_type {
            FieldType::Utf8 | FieldType::Json => Some(TermKind::Str),
            FieldType::Int64 | FieldType::Timestamp => Some(TermKind::I64),
            FieldType::Float64 => Some(TermKind::F64),
            FieldType::Bool => Some(TermKind::Bool),
            FieldType::List(element) => match element.as_ref() {
                FieldType::Null => Some(TermKind::Str),
                FieldType::List(_) => None,
                other => TermKind::of(other),
            },
            FieldType::Null => None,
        }
    }
}

/// An indexed column: its tantivy field and how its values became terms.
#[derive(Debug, Clone, Copy)]
pub struct IndexedColumn {
    pub field: Field,
    pub kind: TermKind,
}

/// The index schema of a segment with `fields` (plus `_id` and `_event_time`).
struct Layout {
    schema: Schema,
    columns: HashMap<String, IndexedColumn>,
    text: HashMap<String, Field>,
    present: Field,
    long: Field,
    row: Field,
}

impl Layout {
    /// The layout of an existing index, read from its schema.
    fn of(schema: Schema) -> Result<Layout> {
        let mut columns = HashMap::new();
        let mut text = HashMap::new();
        let (mut present, mut long, mut row) = (None, None, None);
        for (field, entry) in schema.fields() {
            let name = entry.name();
            if name == PRESENT {
                present = Some(field);
            } else if name == LONG {
                long = Some(field);
            } else if name == ROW {
                row = Some(field);
            } else if let Some(column) = name.strip_prefix(TEXT_PREFIX) {
                text.insert(column.to_string(), field);
            } else {
                let kind = match entry.field_type().value_type() {
                    tantivy::schema::Type::Str => TermKind::Str,
                    tantivy::schema::Type::I64 => TermKind::I64,
                    tantivy::schema::Type::F64 => TermKind::F64,
                    tantivy::schema::Type::Bool => TermKind::Bool,
                    other => {
                        return Err(LeafError::Segment(format!(
                            "index field `{name}` has unexpected type {other:?}"
                        )))
                    }
                };
                columns.insert(name.to_string(), IndexedColumn { field, kind });
            }
        }
        let (Some(present), Some(long), Some(row)) = (present, long, row) else {
            return Err(LeafError::Segment(
                "index lacks its _present, _long or _row field".into(),
            ));
        };
        Ok(Layout {
            schema,
            columns,
            text,
            present,
            long,
            row,
        })
    }
}

fn layout(fields: &FieldSet, text_fields: &[String]) -> Layout {
    let mut builder = Schema::builder();
    let mut columns = HashMap::new();
    let mut text = HashMap::new();
    let numeric = NumericOptions::default().set_indexed();
    let mut all: Vec<(String, FieldType)> = vec![
        (ID_COLUMN.to_string(), FieldType::Utf8),
        (
            altdb_common::columns::EVENT_TIME_COLUMN.to_string(),
            FieldType::Timestamp,
        ),
    ];
    all.extend(fields.fields.iter().map(|(n, t)| (n.clone(), t.clone())));
    for (name, field_type) in all {
        let Some(kind) = TermKind::of(&field_type) else {
            continue;
        };
        let field = match kind {
            TermKind::Str => builder.add_text_field(&name, STRING),
            TermKind::I64 => builder.add_i64_field(&name, numeric.clone()),
            TermKind::F64 => builder.add_f64_field(&name, numeric.clone()),
            TermKind::Bool => builder.add_bool_field(&name, numeric.clone()),
        };
        columns.insert(name.clone(), IndexedColumn { field, kind });
        // A text field named in any case counts, unless a field is spelled exactly
        // as named (README, "Names in SQL").
        let is_text = text_fields.iter().any(|t| {
            t == &name || (t.eq_ignore_ascii_case(&name) && !fields.fields.contains_key(t))
        });
        if kind == TermKind::Str && is_text {
            text.insert(
                name.clone(),
                builder.add_text_field(&format!("{TEXT_PREFIX}{name}"), text_field_options()),
            );
        }
    }
    let present = builder.add_text_field(PRESENT, STRING);
    let long = builder.add_text_field(LONG, STRING);
    let row = builder.add_u64_field(ROW, FAST);
    Layout {
        schema: builder.build(),
        columns,
        text,
        present,
        long,
        row,
    }
}

/// Writes the index of a segment, batch by batch in row order.
pub struct IndexBuilder {
    dir: std::path::PathBuf,
    layout: Layout,
    writer: tantivy::IndexWriter<TantivyDocument>,
    keys: RowKeysWriter,
    row: u64,
}

impl IndexBuilder {
    pub fn create(dir: &Path, fields: &FieldSet, text_fields: &[String]) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let layout = layout(fields, text_fields);
        let index = Index::create_in_dir(dir, layout.schema.clone())?;
        // One thread and no merges: documents keep the order they were added
        // in, each tantivy segment a run of consecutive rows.
        let writer = index.writer_with_num_threads::<TantivyDocument>(1, WRITER_HEAP_BYTES)?;
        writer.set_merge_policy(Box::new(NoMergePolicy));
        Ok(Self {
            dir: dir.to_path_buf(),
            layout,
            writer,
            keys: RowKeysWriter::default(),
            row: 0,
        })
    }

    /// Indexes the next rows of the segment (columns as in its columnar file).
    pub fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        let layout = &self.layout;
        let columns: Vec<(&str, &ArrayRef, IndexedColumn, Option<Field>)> = batch
            .schema_ref()
            .fields()
            .iter()
            .zip(batch.columns())
            .filter_map(|(f, array)| {
                let name = f.name().as_str();
                let column = layout.columns.get(name)?;
                Some((name, array, *column, layout.text.get(name).copied()))
            })
            .collect();
        let (Some(ids), Some(seqs)) = (
            batch
                .column_by_name(ID_COLUMN)
                .and_then(|c| c.as_string_opt::<i32>()),
            batch
                .column_by_name(SEQ_COLUMN)
                .and_then(|c| c.as_primitive_opt::<UInt64Type>()),
        ) else {
            return Err(LeafError::Segment(
                "rows to index lack their _id or _seq column".into(),
            ));
        };
        for i in 0..batch.num_rows() {
            self.keys.push(ids.value(i), seqs.value(i))?;
            let mut doc = TantivyDocument::new();
            for (name, array, column, text) in &columns {
                if array.is_null(i) {
                    continue;
                }
                doc.add_text(layout.present, name);
                if !add_value(&mut doc, column, array, i, term_limit(name)) {
                    doc.add_text(layout.long, name);
                }
                if let (Some(text), Some(strings)) = (text, array.as_string_opt::<i32>()) {
                    doc.add_text(*text, strings.value(i));
                }
            }
            doc.add_u64(layout.row, self.row);
            self.writer.add_document(doc)?;
            self.row += 1;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        self.writer.commit()?;
        self.writer.wait_merging_threads()?;
        self.keys.write(&self.dir.join(KEYS_FILE))?;
        std::fs::write(self.dir.join(VERSION_FILE), INDEX_VERSION.to_string())?;
        Ok(())
    }
}

/// The longest string of `column` indexed as a term (`_id` always is: the
/// index is where a selected row's id is read from).
pub fn term_limit(column: &str) -> usize {
    if column == ID_COLUMN {
        usize::MAX
    } else {
        MAX_TERM_BYTES
    }
}

/// Adds the terms of value `i`; false if a string longer than `limit` was left
/// out.
fn add_value(
    doc: &mut TantivyDocument,
    column: &IndexedColumn,
    array: &ArrayRef,
    i: usize,
    limit: usize,
) -> bool {
    match array.data_type() {
        DataType::Utf8 => {
            let value = array.as_string::<i32>().value(i);
            if value.len() > limit {
                return false;
            }
            doc.add_text(column.field, value)
        }
        DataType::Int64 => doc.add_i64(column.field, array.as_primitive::<Int64Type>().value(i)),
        DataType::Float64 => {
            doc.add_f64(column.field, array.as_primitive::<Float64Type>().value(i))
        }
        DataType::Boolean => doc.add_bool(column.field, array.as_boolean().value(i)),
        DataType::Timestamp(_, _) => doc.add_i64(
            column.field,
            array.as_primitive::<TimestampMicrosecondType>().value(i),
        ),
        DataType::List(_) => {
            let items = array.as_list::<i32>().value(i);
            let mut complete = true;
            for j in 0..items.len() {
                if !items.is_null(j) {
                    complete &= add_value(doc, column, &items, j, limit);
                }
            }
            return complete;
        }
        _ => {}
    }
    true
}

/// Whether `dir` holds a committed index of the current version.
pub fn is_current(dir: &Path) -> bool {
    dir.join("meta.json").exists()
        && std::fs::read_to_string(dir.join(VERSION_FILE))
            .is_ok_and(|v| v.trim() == INDEX_VERSION.to_string())
}

/// An opened segment index.
pub struct SegmentIndex {
    index: Index,
    reader: IndexReader,
    layout: Layout,
    /// The `_row` column of each tantivy segment (by ordinal), opened on first
    /// use: opening a column decodes its block headers, which costs more than a
    /// needle lookup.
    rows: OnceLock<Vec<Column<u64>>>,
    keys: RowKeys,
}

impl std::fmt::Debug for SegmentIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentIndex")
            .field("columns", &self.layout.columns.len())
            .finish()
    }
}

impl SegmentIndex {
    pub fn open(dir: &Path) -> Result<Self> {
        let index = Index::open_in_dir(dir)?;
        let layout = Layout::of(index.schema())?;
        // Read through a directory of its own: the index's checks tantivy's
        // footer, which the keys file has not.
        let keys = MmapDirectory::open(dir)
            .map_err(|e| e.to_string())
            .and_then(|d| d.open_read(Path::new(KEYS_FILE)).map_err(|e| e.to_string()))
            .map_err(|e| LeafError::Segment(format!("cannot open the row keys: {e}")))?;
        let keys = RowKeys::open(keys.read_bytes()?)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Self {
            index,
            reader,
            layout,
            rows: OnceLock::new(),
            keys,
        })
    }

    /// The `_row` column of each tantivy segment. The reader never reloads (a
    /// sealed segment's index does not change), so segment ordinals hold.
    fn rows(&self) -> Result<&[Column<u64>]> {
        if let Some(rows) = self.rows.get() {
            return Ok(rows);
        }
        let opened = self
            .reader
            .searcher()
            .segment_readers()
            .iter()
            .map(|reader| reader.fast_fields().u64(ROW))
            .collect::<tantivy::Result<Vec<_>>>()?;
        Ok(self.rows.get_or_init(|| opened))
    }

    /// The `_id` and `_seq` of every row.
    pub fn keys(&self) -> &RowKeys {
        &self.keys
    }

    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// How `column` is indexed in this segment, if it is.
    pub fn column(&self, name: &str) -> Option<IndexedColumn> {
        self.layout.columns.get(name).copied()
    }

    /// The tokenized field of a text column.
    pub fn text_field(&self, name: &str) -> Option<Field> {
        self.layout.text.get(name).copied()
    }

    pub fn present_field(&self) -> Field {
        self.layout.present
    }

    /// The rows holding a value of `column` too long to be a term.
    pub fn long_rows(&self, column: &str) -> TermQuery {
        TermQuery::new(
            Term::from_field_text(self.layout.long, column),
            IndexRecordOption::Basic,
        )
    }

    /// How many rows hold `term` (rows deleted from the segment included): one
    /// lookup in the term dictionary.
    pub fn doc_freq(&self, term: &Term) -> Option<u64> {
        self.reader.searcher().doc_freq(term).ok()
    }

    /// Whether some row holds a value of `column` too long to be a term.
    pub fn has_long(&self, column: &str) -> bool {
        self.reader
            .searcher()
            .doc_freq(&Term::from_field_text(self.layout.long, column))
            .map_or(true, |n| n > 0)
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Row numbers matching `query`, ascending.
    pub fn matching_rows(&self, query: &dyn Query) -> Result<Vec<u32>> {
        let searcher = self.reader.searcher();
        let collector = RowCollector { rows: self.rows()? };
        let mut rows = searcher.search(query, &collector)?;
        rows.sort_unstable();
        Ok(rows)
    }

    /// `_id` and `_seq` of the given rows, in their order.
    pub fn ids_and_seqs(&self, rows: &[u32]) -> Vec<(u32, String, u64)> {
        rows.iter()
            .filter_map(|&row| {
                let (id, seq) = self.keys.get(row)?;
                Some((row, id.to_string(), seq))
            })
            .collect()
    }

    /// The best `limit` rows by BM25 score for `query`, with their scores.
    pub fn top_rows(&self, query: &dyn Query, limit: usize) -> Result<Vec<(u32, f32)>> {
        let searcher = self.reader.searcher();
        let top = searcher.search(
            query,
            &tantivy::collector::TopDocs::with_limit(limit.max(1)).order_by_score(),
        )?;
        let columns = self.rows()?;
        let mut out = Vec::with_capacity(top.len());
        for (score, address) in top {
            let rows = &columns[address.segment_ord as usize];
            if let Some(row) = rows.first(address.doc_id) {
                out.push((row as u32, score));
            }
        }
        Ok(out)
    }

    /// Every matching row with its BM25 score (scoring enabled).
    pub fn scored_rows(&self, query: &dyn Query) -> Result<Vec<(u32, f32)>> {
        let searcher = self.reader.searcher();
        let weight = query.weight(EnableScoring::enabled_from_searcher(&searcher))?;
        let mut out = Vec::new();
        for (reader, rows) in searcher.segment_readers().iter().zip(self.rows()?) {
            weight.for_each(reader, &mut |doc, score| {
                if let Some(row) = rows.first(doc) {
                    out.push((row as u32, score));
                }
            })?;
        }
        out.sort_unstable_by_key(|(row, _)| *row);
        Ok(out)
    }
}

/// Collects the `_row` of every matching document.
struct RowCollector<'a> {
    rows: &'a [Column<u64>],
}

struct RowSegmentCollector {
    rows: Column<u64>,
    out: Vec<u32>,
}

impl Collector for RowCollector<'_> {
    type Fruit = Vec<u32>;
    type Child = RowSegmentCollector;

    fn for_segment(
        &self,
        segment_local_id: u32,
        _segment: &SegmentReader,
    ) -> tantivy::Result<RowSegmentCollector> {
        Ok(RowSegmentCollector {
            rows: self.rows[segment_local_id as usize].clone(),
            out: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Vec<u32>>) -> tantivy::Result<Vec<u32>> {
        Ok(fruits.concat())
    }
}

impl SegmentCollector for RowSegmentCollector {
    type Fruit = Vec<u32>;

    fn collect(&mut self, doc: DocId, _score: Score) {
        if let Some(row) = self.rows.first(doc) {
            self.out.push(row as u32);
        }
    }

    fn harvest(self) -> Vec<u32> {
        self.out
    }
}

/// Indexes `docs` (ids `d0`, `d1`, .., seq and event time their position) into
/// `dir` as sealing a segment would; returns their fields and the index.
#[cfg(test)]
pub(crate) fn index_docs(
    dir: &Path,
    docs: &[serde_json::Value],
    text_fields: &[String],
) -> (FieldSet, SegmentIndex) {
    use altdb_common::schema::{rows_to_batch, FlatRow};

    let rows: Vec<FlatRow> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| FlatRow {
            id: format!("d{i}"),
            event_time_us: i as i64,
            seq: i as u64,
            fields: altdb_common::document::flatten(d.as_object().expect("an object")),
        })
        .collect();
    let mut fields = FieldSet::default();
    for row in &rows {
        fields.observe_row(&row.fields);
    }
    let refs: Vec<&FlatRow> = rows.iter().collect();
    let batch = rows_to_batch(&crate::segment::sealed::file_schema(&fields), &refs).unwrap();
    let mut builder = IndexBuilder::create(dir, &fields, text_fields).unwrap();
    builder.add(&batch).unwrap();
    builder.finish().unwrap();
    (fields, SegmentIndex::open(dir).unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tantivy::query::QueryParser;
    use tantivy::Term;

    #[test]
    fn columns_are_indexed_with_their_segment_types() {
        let dir = tempfile::tempdir().unwrap();
        let docs = [
            json!({"city": "Oslo", "n": 1, "x": 1.5, "ok": true, "tags": ["a", "b"], "title": "Fast analytics engine"}),
            json!({"city": "Bergen", "n": 2, "x": 2, "title": "Slow engine"}),
            json!({"city": 7, "n": 3}),
        ];
        let (_, index) = index_docs(dir.path(), &docs, &["title".to_string()]);
        assert!(is_current(dir.path()));
        let rows_of = |term: Term| {
            index
                .matching_rows(&TermQuery::new(term, IndexRecordOption::Basic))
                .unwrap()
        };
        let city = index.column("city").unwrap();
        assert_eq!(city.kind, TermKind::Str);
        // A number in a varchar column is indexed as the text the column holds.
        assert_eq!(rows_of(Term::from_field_text(city.field, "7")), vec![2]);
        assert_eq!(rows_of(Term::from_field_text(city.field, "Oslo")), vec![0]);
        let x = index.column("x").unwrap();
        assert_eq!(rows_of(Term::from_field_f64(x.field, 2.0)), vec![1]);
        let tags = index.column("tags").unwrap();
        assert_eq!(rows_of(Term::from_field_text(tags.field, "b")), vec![0]);
        assert_eq!(
            rows_of(Term::from_field_text(index.present_field(), "ok")),
            vec![0]
        );
        let parser =
            QueryParser::for_index(index.index(), vec![index.text_field("title").unwrap()]);
        let engine = parser.parse_query("engine").unwrap();
        assert_eq!(index.matching_rows(engine.as_ref()).unwrap(), vec![0, 1]);
        let scored = index
            .scored_rows(parser.parse_query("fast").unwrap().as_ref())
            .unwrap();
        assert_eq!(scored.len(), 1);
        assert!(scored[0].1 > 0.0);
    }

    #[test]
    fn text_fields_are_named_in_any_case_unless_spelled_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let docs = [json!({"Title": "fast engine", "Body": "a", "body": "b"})];
        let (_, index) = index_docs(dir.path(), &docs, &["title".into(), "body".into()]);
        assert!(index.text_field("Title").is_some());
        // `body` is spelled exactly: its case-only twin is not a text field.
        assert!(index.text_field("body").is_some());
        assert!(index.text_field("Body").is_none());
    }
}
