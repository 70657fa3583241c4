//! Sealed segments: an immutable columnar file plus its inverted index.

use std::collections::HashSet;
use std::fs::File;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, UInt32Array, UInt64Array};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use arrow::row::{RowConverter, SortField};
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder, RowSelection,
};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, Encoding};
use parquet::file::metadata::PageIndexPolicy;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use altdb_common::columns::{is_reserved_column, EVENT_TIME_COLUMN, ID_COLUMN, SEQ_COLUMN};
use altdb_common::schema::{rows_to_batch, FieldSet, FlatRow};

use super::index::{self, IndexBuilder, SegmentIndex};
use super::{DecodedColumns, DeleteSet, SegmentMeta};
use crate::error::{LeafError, Result};

const DATA_FILE: &str = "data.parquet";
const INDEX_DIR: &str = "index";
/// Rows per Arrow batch read from or written to a segment.
pub const BATCH_ROWS: usize = 8192;
/// Rows per Parquet data page at most.
pub const PAGE_ROWS: usize = 4096;
/// Largest dictionary page of a column chunk (parquet's default is 1 MiB).
const DICTIONARY_PAGE_BYTES: usize = 64 << 10;
/// The next [`SealedSegment::cache_id`].
static NEXT_CACHE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
/// A read of at least 1/this of a segment's rows decodes its columns whole
/// and keeps them (see [`DecodedColumns`]); fewer are read from their pages.
const DECODE_WHOLE_MIN_FRACTION: usize = 16;

/// Why a sealed segment's index cannot answer; the scan reads the data instead.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IndexUnavailable {
    #[error("the segment's index is being rebuilt")]
    Rebuilding,
    #[error("the segment's index cannot be opened: {0}")]
    Broken(String),
}

/// An immutable segment on disk.
#[derive(Debug)]
pub struct SealedSegment {
    pub meta: SegmentMeta,
    pub dir: PathBuf,
    /// Opened on first use; `Err` if it cannot be (queries then scan).
    index: OnceLock<std::result::Result<Arc<SegmentIndex>, IndexUnavailable>>,
    /// The index on disk is missing or of another version: queries scan the
    /// segment until [`Self::rebuild_index_if_outdated`] has rebuilt it.
    outdated: AtomicBool,
    /// The columnar file's footer and page index, read on first use.
    metadata: OnceLock<ArrowReaderMetadata>,
    /// The `_event_time` range of each data page, from the page index on first
    /// use; `None` without one.
    time_pages: OnceLock<Option<Vec<TimePage>>>,
    /// Replaced by a merged segment: the files go when the last reader lets go.
    retired: AtomicBool,
    /// Unique among the segments this process opened (see [`Self::cache_id`]).
    cache_id: u64,
}

/// Reads the statistics of `column` in a columnar file; `None` if the file
/// has no such column.
fn statistics_converter<'a>(
    metadata: &'a ArrowReaderMetadata,
    column: &str,
) -> Option<StatisticsConverter<'a>> {
    StatisticsConverter::try_new(
        column,
        metadata.schema(),
        metadata.metadata().file_metadata().schema_descr(),
    )
    .ok()
}

/// The `_event_time` range of one data page and the rows it holds.
#[derive(Debug)]
struct TimePage {
    min: i64,
    max: i64,
    rows: Range<u32>,
}

/// Statistics of one column, one entry per row group.
#[derive(Debug, Clone)]
pub struct ColumnStatistics {
    pub mins: ArrayRef,
    pub maxes: ArrayRef,
    pub null_counts: UInt64Array,
}

impl Drop for SealedSegment {
    fn drop(&mut self) {
        if self.retired.load(Ordering::Acquire) {
            Self::remove_files(&self.dir);
        }
    }
}

/// How a segment's columns are written, chosen from its first batch.
///
/// - LZ4: a needle query decodes a few small pages per segment, where zstd's
///   per-page decoder set-up and slower decompression were most of its CPU.
/// - No dictionary for a column whose first batch is mostly distinct values
///   (ids, timestamps, measurements): its dictionary page would fill up and
///   fall back to plain pages anyway, and every read of the column chunk,
///   however few rows it wants, decodes the whole dictionary page first (like
///   Pinot's `optimizeDictionary`).
/// - `_event_time`, the sort key of sealed rows, delta-encoded.
fn writer_properties(first: &RecordBatch) -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::LZ4_RAW)
        .set_max_row_group_row_count(Some(64 * 1024))
        // Small pages, so reading the few rows the index selects decodes little.
        .set_data_page_row_count_limit(PAGE_ROWS)
        // A dictionary that does not stay small falls back to plain pages early
        // rather than carrying a dictionary as large as its data.
        .set_dictionary_page_size_limit(DICTIONARY_PAGE_BYTES);
    for (field, column) in first.schema().fields().iter().zip(first.columns()) {
        let path = ColumnPath::from(field.name().as_str());
        if field.name() == EVENT_TIME_COLUMN {
            builder = builder
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
        } else if mostly_distinct(column) {
            builder = builder.set_column_dictionary_enabled(path, false);
        }
    }
    builder.build()
}

/// Whether more than half of a flat column's values are distinct (nested
/// columns keep their dictionaries: the path of their leaves is not the name).
fn mostly_distinct(column: &ArrayRef) -> bool {
    if column.data_type().is_nested() || column.len() < 2 {
        return false;
    }
    let Ok(converter) = RowConverter::new(vec![SortField::new(column.data_type().clone())]) else {
        return false;
    };
    let Ok(rows) = converter.convert_columns(std::slice::from_ref(column)) else {
        return false;
    };
    let distinct: HashSet<_> = rows.iter().collect();
    distinct.len() * 2 > column.len()
}

/// The columns stored in a segment: the SQL schema plus the internal `_seq`.
pub(crate) fn file_schema(fields: &FieldSet) -> SchemaRef {
    let sql = fields.to_arrow_schema();
    let mut columns: Vec<Field> = sql.fields().iter().map(|f| f.as_ref().clone()).collect();
    columns.push(Field::new(SEQ_COLUMN, DataType::UInt64, false));
    Arc::new(Schema::new(columns))
}

impl SealedSegment {
    /// Writes `rows` as segment `id` under `dir` (columnar file, then index) and
    /// returns it. Nothing refers to the files until the manifest entry is written.
    pub fn write(
        dir: PathBuf,
        id: u64,
        rows: &[Arc<FlatRow>],
        text_fields: &[String],
    ) -> Result<Self> {
        let mut fields = FieldSet::default();
        for row in rows {
            fields.observe_row(&row.fields);
        }
        Self::write_chunks(
            dir,
            id,
            fields,
            rows.chunks(BATCH_ROWS).map(|chunk| Ok(chunk.to_vec())),
            text_fields,
        )
    }

    /// Writes rows arriving in chunks (so that only one chunk is in memory) with
    /// columns of `fields`' types; values convert to them as [`rows_to_batch`] does.
    pub fn write_chunks(
        dir: PathBuf,
        id: u64,
        fields: FieldSet,
        chunks: impl Iterator<Item = Result<Vec<Arc<FlatRow>>>>,
        text_fields: &[String],
    ) -> Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let schema = file_schema(&fields);
        let mut file = Some(File::create(dir.join(DATA_FILE))?);
        // Opened on the first batch, whose values choose the encodings.
        let mut writer: Option<ArrowWriter<File>> = None;
        let mut open = |batch: &RecordBatch| {
            let file = file.take().expect("one writer per segment");
            ArrowWriter::try_new(file, schema.clone(), Some(writer_properties(batch)))
        };
        let mut index = IndexBuilder::create(&dir.join(INDEX_DIR), &fields, text_fields)?;
        let mut meta = SegmentMeta {
            id,
            rows: 0,
            min_seq: u64::MAX,
            max_seq: 0,
            min_event_time_us: i64::MAX,
            max_event_time_us: i64::MIN,
            fields,
        };
        for chunk in chunks {
            let chunk = chunk?;
            if chunk.is_empty() {
                continue;
            }
            for row in &chunk {
                meta.min_seq = meta.min_seq.min(row.seq);
                meta.max_seq = meta.max_seq.max(row.seq);
                meta.min_event_time_us = meta.min_event_time_us.min(row.event_time_us);
                meta.max_event_time_us = meta.max_event_time_us.max(row.event_time_us);
            }
            meta.rows += chunk.len() as u64;
            let refs: Vec<&FlatRow> = chunk.iter().map(Arc::as_ref).collect();
            let batch = rows_to_batch(&schema, &refs)?;
            let writer = match &mut writer {
                Some(writer) => writer,
                None => writer.insert(open(&batch)?),
            };
            writer.write(&batch)?;
            index.add(&batch)?;
        }
        let writer = match writer {
            Some(writer) => writer,
            None => open(&RecordBatch::new_empty(schema.clone()))?,
        };
        let file = writer.into_inner()?;
        file.sync_all()?;
        index.finish()?;
        if meta.rows == 0 {
            (meta.min_seq, meta.min_event_time_us, meta.max_event_time_us) = (0, 0, 0);
        }
        Ok(Self::new(meta, dir))
    }

    fn new(meta: SegmentMeta, dir: PathBuf) -> Self {
        Self {
            meta,
            dir,
            index: OnceLock::new(),
            outdated: AtomicBool::new(false),
            metadata: OnceLock::new(),
            time_pages: OnceLock::new(),
            retired: AtomicBool::new(false),
            cache_id: NEXT_CACHE_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// What identifies this segment's columns in [`DecodedColumns`]: unique
    /// in the process, unlike its directory.
    pub fn cache_id(&self) -> u64 {
        self.cache_id
    }

    /// Marks the segment replaced: its files are removed once nothing uses it.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    /// The segment's inverted index, opened on first use.
    pub fn index(&self) -> std::result::Result<Arc<SegmentIndex>, IndexUnavailable> {
        if self.index_pending() {
            return Err(IndexUnavailable::Rebuilding);
        }
        self.index
            .get_or_init(|| {
                SegmentIndex::open(&self.index_dir())
                    .map(Arc::new)
                    .map_err(|e| IndexUnavailable::Broken(e.to_string()))
            })
            .clone()
    }

    /// Whether the index is missing or outdated and not rebuilt yet.
    pub fn index_pending(&self) -> bool {
        self.outdated.load(Ordering::Acquire)
    }

    /// Opens a segment listed in the manifest. An index that is missing or of
    /// another version is not rebuilt here (that would keep the leaf from serving
    /// for as long as it takes over all its data) but by
    /// [`Self::rebuild_index_if_outdated`]; queries scan the segment meanwhile.
    pub fn open(dir: PathBuf, meta: SegmentMeta) -> Result<Self> {
        let data = dir.join(DATA_FILE);
        if !data.exists() {
            return Err(LeafError::Segment(format!(
                "segment {} has no data file at {}",
                meta.id,
                data.display()
            )));
        }
        let segment = Self::new(meta, dir);
        if !index::is_current(&segment.index_dir()) {
            segment.outdated.store(true, Ordering::Release);
        }
        Ok(segment)
    }

    pub fn index_dir(&self) -> PathBuf {
        self.dir.join(INDEX_DIR)
    }

    /// Rebuilds a missing or outdated index from the columnar file, beside the old
    /// one and then swapped in; false if there was nothing to do. Blocking.
    pub fn rebuild_index_if_outdated(&self, text_fields: &[String]) -> Result<bool> {
        if !self.index_pending() || self.retired.load(Ordering::Acquire) {
            return Ok(false);
        }
        let building = self.dir.join(format!("{INDEX_DIR}.building"));
        let _ = std::fs::remove_dir_all(&building);
        let mut index = IndexBuilder::create(&building, &self.meta.fields, text_fields)?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(self.data_path())?)?
            .with_batch_size(BATCH_ROWS)
            .build()?;
        for batch in reader {
            index.add(&batch?)?;
        }
        index.finish()?;
        let _ = std::fs::remove_dir_all(self.index_dir());
        std::fs::rename(&building, self.index_dir())?;
        self.outdated.store(false, Ordering::Release);
        Ok(true)
    }

    /// Reads the segment back into rows (to rebuild derived data).
    pub fn read_rows(&self) -> Result<Vec<FlatRow>> {
        let mut rows = Vec::with_capacity(self.meta.rows as usize);
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(self.data_path())?)?
            .with_batch_size(BATCH_ROWS)
            .build()?;
        for batch in reader {
            let batch = batch?;
            let objects = arrow_json_rows(&batch)?;
            let ids = batch
                .column_by_name(ID_COLUMN)
                .map(|c| c.as_string::<i32>().clone());
            let seqs = batch
                .column_by_name(SEQ_COLUMN)
                .map(|c| c.as_primitive::<arrow::datatypes::UInt64Type>().clone());
            let times = batch.column_by_name(EVENT_TIME_COLUMN).map(|c| {
                c.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                    .clone()
            });
            for (i, object) in objects.into_iter().enumerate() {
                let mut fields: Vec<(String, serde_json::Value)> = object
                    .into_iter()
                    .filter(|(k, v)| !altdb_common::columns::is_reserved_column(k) && !v.is_null())
                    .collect();
                fields.sort_by(|a, b| a.0.cmp(&b.0));
                rows.push(FlatRow {
                    id: ids
                        .as_ref()
                        .map(|a| a.value(i).to_string())
                        .unwrap_or_default(),
                    event_time_us: times.as_ref().map_or(0, |a| a.value(i)),
                    seq: seqs.as_ref().map_or(0, |a| a.value(i)),
                    fields,
                });
            }
        }
        Ok(rows)
    }

    fn data_path(&self) -> PathBuf {
        self.dir.join(DATA_FILE)
    }

    /// The `_id` and `_seq` of every row, in row order (to rebuild the key map):
    /// from the index's row keys, or the columnar file if the index is unusable.
    pub fn ids_and_seqs(&self) -> Result<Vec<(String, u64)>> {
        if let Ok(index) = self.index() {
            let keys = index.keys();
            if keys.len() as u64 == self.meta.rows {
                return Ok((0..keys.len() as u32)
                    .filter_map(|row| keys.get(row))
                    .map(|(id, seq)| (id.to_string(), seq))
                    .collect());
            }
        }
        let mut out = Vec::with_capacity(self.meta.rows as usize);
        self.scan(
            &[ID_COLUMN.to_string(), SEQ_COLUMN.to_string()],
            &DeleteSet::default(),
            &DecodedColumns::new(0),
            |batch| {
                let ids = batch.column(0).as_string::<i32>();
                let seqs = batch
                    .column(1)
                    .as_primitive::<arrow::datatypes::UInt64Type>();
                for i in 0..batch.num_rows() {
                    out.push((ids.value(i).to_string(), seqs.value(i)));
                }
                true
            },
        )?;
        Ok(out)
    }

    /// The columnar file's footer and page index (read once, then cached).
    fn metadata(&self) -> Result<ArrowReaderMetadata> {
        if let Some(metadata) = self.metadata.get() {
            return Ok(metadata.clone());
        }
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
        let metadata = ArrowReaderMetadata::load(&File::open(self.data_path())?, options)?;
        Ok(self.metadata.get_or_init(|| metadata).clone())
    }

    /// The rows of each row group of the columnar file, in order.
    pub fn row_groups(&self) -> Result<Vec<Range<usize>>> {
        let metadata = self.metadata()?;
        let mut start = 0;
        Ok(metadata
            .metadata()
            .row_groups()
            .iter()
            .map(|group| {
                let rows = start..start + group.num_rows() as usize;
                start = rows.end;
                rows
            })
            .collect())
    }

    /// Per row group: the minimum, maximum and NULL count of `column` (in the
    /// segment's own type), and the row count. `None` if the segment has no such
    /// column or its statistics cannot be read.
    pub fn column_statistics(&self, column: &str) -> Result<Option<ColumnStatistics>> {
        let metadata = self.metadata()?;
        let Some(converter) = statistics_converter(&metadata, column) else {
            return Ok(None);
        };
        let groups = metadata.metadata().row_groups();
        Ok(Some(ColumnStatistics {
            mins: converter.row_group_mins(groups)?,
            maxes: converter.row_group_maxes(groups)?,
            null_counts: converter.row_group_null_counts(groups)?,
        }))
    }

    /// The rows of the data pages whose `_event_time` range meets `window`
    /// (microseconds, inclusive), ascending: a superset of the rows in the
    /// window, found without reading a page. Sealed rows are in event-time order,
    /// so a short window is one or two pages. `None` when the file has no page
    /// index or every page meets the window.
    pub fn rows_in_time(&self, window: &RangeInclusive<i64>) -> Result<Option<Vec<u32>>> {
        let pages = match self.time_pages.get() {
            Some(pages) => pages,
            None => {
                let pages = self.read_time_pages()?;
                self.time_pages.get_or_init(|| pages)
            }
        };
        let Some(pages) = pages else {
            return Ok(None);
        };
        let meeting: Vec<&TimePage> = pages
            .iter()
            .filter(|page| page.min <= *window.end() && page.max >= *window.start())
            .collect();
        if meeting.len() == pages.len() {
            return Ok(None);
        }
        Ok(Some(
            meeting
                .into_iter()
                .flat_map(|page| page.rows.clone())
                .collect(),
        ))
    }

    fn read_time_pages(&self) -> Result<Option<Vec<TimePage>>> {
        let metadata = self.metadata()?;
        let parquet = metadata.metadata();
        let (Some(column_index), Some(offset_index)) =
            (parquet.column_index(), parquet.offset_index())
        else {
            return Ok(None);
        };
        let Some(converter) = statistics_converter(&metadata, EVENT_TIME_COLUMN) else {
            return Ok(None);
        };
        let groups: Vec<usize> = (0..parquet.num_row_groups()).collect();
        let as_i64 = |array: ArrayRef| -> Result<Int64Array> {
            Ok(cast(&array, &DataType::Int64)?
                .as_primitive::<Int64Type>()
                .clone())
        };
        let mins = as_i64(converter.data_page_mins(column_index, offset_index, &groups)?)?;
        let maxes = as_i64(converter.data_page_maxes(column_index, offset_index, &groups)?)?;
        let Some(counts) =
            converter.data_page_row_counts(offset_index, parquet.row_groups(), &groups)?
        else {
            return Ok(None);
        };
        let mut start = 0u32;
        let pages = (0..counts.len())
            .map(|page| {
                let rows = start..start + counts.value(page) as u32;
                start = rows.end;
                // A page without statistics may hold any time.
                TimePage {
                    min: if mins.is_valid(page) {
                        mins.value(page)
                    } else {
                        i64::MIN
                    },
                    max: if maxes.is_valid(page) {
                        maxes.value(page)
                    } else {
                        i64::MAX
                    },
                    rows,
                }
            })
            .collect();
        Ok(Some(pages))
    }

    /// The file's fields among `columns`, in file order.
    fn file_fields(&self, columns: &[String]) -> Result<Vec<arrow::datatypes::FieldRef>> {
        let metadata = self.metadata()?;
        let schema = metadata.schema();
        Ok(schema
            .fields()
            .iter()
            .filter(|f| columns.iter().any(|c| c == f.name()))
            .cloned()
            .collect())
    }

    /// Every row of `columns` (those the segment has, in its own types and
    /// file order) as kept in `decoded`; with `decode`, those not kept yet are
    /// decoded and kept. `None` when the cache is off, no column is asked for,
    /// or (without `decode`) some column is not kept.
    fn whole(
        &self,
        columns: &[String],
        decoded: &DecodedColumns,
        decode: bool,
    ) -> Result<Option<RecordBatch>> {
        if !decoded.enabled() {
            return Ok(None);
        }
        let fields = self.file_fields(columns)?;
        let mut arrays = Vec::with_capacity(fields.len());
        for field in &fields {
            if let Some(array) = decoded.get(self.cache_id, field.name()) {
                arrays.push(array);
                continue;
            }
            if !decode {
                return Ok(None);
            }
            let (reader, _) = self.reader(std::slice::from_ref(field.name()), None, None)?;
            let parts = reader
                .map(|batch| batch.map(|b| b.column(0).clone()))
                .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
            let parts: Vec<&dyn Array> = parts.iter().map(AsRef::as_ref).collect();
            let array = match parts.as_slice() {
                [] => arrow::array::new_empty_array(field.data_type()),
                parts => arrow::compute::concat(parts)?,
            };
            decoded.insert(self.cache_id, field.name(), array.clone());
            arrays.push(array);
        }
        self.whole_batch(fields, arrays)
    }

    fn whole_batch(
        &self,
        fields: Vec<arrow::datatypes::FieldRef>,
        arrays: Vec<ArrayRef>,
    ) -> Result<Option<RecordBatch>> {
        if fields.is_empty() || arrays.iter().any(|a| a.len() as u64 != self.meta.rows) {
            return Ok(None);
        }
        Ok(Some(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            arrays,
        )?))
    }

    /// A reader of `columns` (those the segment has, in its own types), of the
    /// `row_groups` or all, of the rows in `selection` (counted within those row
    /// groups) or all; with no column asked for (COUNT(*)) it reads the
    /// narrowest one and the caller drops it (`true`).
    fn reader(
        &self,
        columns: &[String],
        row_groups: Option<Vec<usize>>,
        selection: Option<RowSelection>,
    ) -> Result<(ParquetRecordBatchReader, bool)> {
        let metadata = self.metadata()?;
        let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(
            File::open(self.data_path())?,
            metadata,
        );
        let file_schema = builder.schema().clone();
        let mut indices: Vec<usize> = columns
            .iter()
            .filter_map(|name| file_schema.index_of(name).ok())
            .collect();
        let count_only = indices.is_empty();
        if count_only {
            indices.push(file_schema.index_of(SEQ_COLUMN)?);
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
        let mut builder = builder.with_projection(mask).with_batch_size(BATCH_ROWS);
        if let Some(row_groups) = row_groups {
            builder = builder.with_row_groups(row_groups);
        }
        if let Some(selection) = selection {
            builder = builder.with_row_selection(selection);
        }
        Ok((builder.build()?, count_only))
    }

    /// Streams the live rows' `columns` to `emit` until it returns false. Returns
    /// the rows read.
    pub fn scan(
        &self,
        columns: &[String],
        deletes: &DeleteSet,
        decoded: &DecodedColumns,
        emit: impl FnMut(RecordBatch) -> bool,
    ) -> Result<u64> {
        self.scan_range(columns, deletes, decoded, None, emit)
    }

    /// [`Self::scan`] of one row group (see [`Self::row_groups`]).
    pub fn scan_row_group(
        &self,
        columns: &[String],
        deletes: &DeleteSet,
        decoded: &DecodedColumns,
        row_group: usize,
        emit: impl FnMut(RecordBatch) -> bool,
    ) -> Result<u64> {
        let rows = self.row_groups()?.get(row_group).cloned().ok_or_else(|| {
            LeafError::Segment(format!(
                "segment {} has no row group {row_group}",
                self.meta.id
            ))
        })?;
        self.scan_range(columns, deletes, decoded, Some((row_group, rows)), emit)
    }

    /// Scans the whole file, or one row group and the rows it holds.
    fn scan_range(
        &self,
        columns: &[String],
        deletes: &DeleteSet,
        decoded: &DecodedColumns,
        row_group: Option<(usize, Range<usize>)>,
        mut emit: impl FnMut(RecordBatch) -> bool,
    ) -> Result<u64> {
        let (row_groups, rows) = match row_group {
            Some((group, rows)) => (Some(vec![group]), rows),
            None => (None, 0..self.meta.rows as usize),
        };
        if !columns
            .iter()
            .any(|name| self.meta.fields.fields.contains_key(name) || is_reserved_column(name))
        {
            return Ok(self.count_rows(rows, deletes, emit));
        }
        if let Some(whole) = self.whole(columns, decoded, true)? {
            let mut offset = rows.start;
            while offset < rows.end {
                let end = (offset + BATCH_ROWS).min(rows.end);
                let mut batch = whole.slice(offset, end - offset);
                if !deletes.is_empty() {
                    let keep: BooleanArray = (offset..end)
                        .map(|row| Some(!deletes.contains(row)))
                        .collect();
                    batch = filter_record_batch(&batch, &keep)?;
                }
                offset = end;
                if batch.num_rows() > 0 && !emit(batch) {
                    break;
                }
            }
            return Ok((offset - rows.start) as u64);
        }
        let (reader, count_only) = self.reader(columns, row_groups, None)?;
        let mut offset = rows.start;
        for batch in reader {
            let mut batch = batch?;
            let rows = batch.num_rows();
            if count_only {
                batch = batch.project(&[])?;
            }
            if !deletes.is_empty() {
                let keep: BooleanArray = (offset..offset + rows)
                    .map(|row| Some(!deletes.contains(row)))
                    .collect();
                batch = filter_record_batch(&batch, &keep)?;
            }
            offset += rows;
            if batch.num_rows() > 0 && !emit(batch) {
                break;
            }
        }
        Ok((offset - rows.start) as u64)
    }

    /// Emits the live `rows` as batches without columns (COUNT(*), or columns this
    /// segment never saw, which are all NULL): the manifest knows how many rows
    /// there are and the delete set which are gone, so no page is read.
    fn count_rows(
        &self,
        rows: Range<usize>,
        deletes: &DeleteSet,
        mut emit: impl FnMut(RecordBatch) -> bool,
    ) -> u64 {
        let schema = Arc::new(Schema::empty());
        let mut offset = rows.start;
        while offset < rows.end {
            let end = (offset + BATCH_ROWS).min(rows.end);
            let live = if deletes.is_empty() {
                end - offset
            } else {
                (offset..end).filter(|&row| !deletes.contains(row)).count()
            };
            offset = end;
            let options = RecordBatchOptions::new().with_row_count(Some(live));
            let batch = RecordBatch::try_new_with_options(schema.clone(), Vec::new(), &options)
                .expect("a batch without columns is valid");
            if live > 0 && !emit(batch) {
                break;
            }
        }
        (offset - rows.start) as u64
    }

    /// Streams `columns` of the given rows (ascending row numbers, all live) to
    /// `emit` until it returns false, decoding only the row groups and pages that
    /// hold them.
    pub fn scan_rows(
        &self,
        columns: &[String],
        rows: &[u32],
        decoded: &DecodedColumns,
        mut emit: impl FnMut(RecordBatch) -> bool,
    ) -> Result<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        // A selection touching most pages is worth decoding the columns whole
        // (kept for the next reads); a few rows are read from their pages
        // unless the columns are kept already.
        let decode = rows.len() * DECODE_WHOLE_MIN_FRACTION >= self.meta.rows as usize;
        if let Some(whole) = self.whole(columns, decoded, decode)? {
            for part in rows.chunks(BATCH_ROWS) {
                let indices = UInt32Array::from(part.to_vec());
                if !emit(arrow::compute::take_record_batch(&whole, &indices)?) {
                    break;
                }
            }
            return Ok(rows.len() as u64);
        }
        // Row groups without a selected row are not read at all; the selection
        // counts rows within the row groups that are.
        let groups = self.row_groups()?;
        let mut touched: Vec<usize> = Vec::new();
        let mut ranges: Vec<Range<usize>> = Vec::new();
        let mut skipped = 0;
        let mut group = 0;
        for &row in rows {
            let row = row as usize;
            while group < groups.len() && groups[group].end <= row {
                if touched.last() != Some(&group) {
                    skipped += groups[group].len();
                }
                group += 1;
            }
            if group == groups.len() {
                return Err(LeafError::Segment(format!(
                    "row {row} is past the end of segment {}",
                    self.meta.id
                )));
            }
            if touched.last() != Some(&group) {
                touched.push(group);
            }
            let position = row - skipped;
            match ranges.last_mut() {
                Some(range) if range.end == position => range.end += 1,
                _ => ranges.push(position..position + 1),
            }
        }
        let total = touched.iter().map(|&g| groups[g].len()).sum();
        let selection = RowSelection::from_consecutive_ranges(ranges.into_iter(), total);
        let (reader, count_only) = self.reader(columns, Some(touched), Some(selection))?;
        for batch in reader {
            let mut batch = batch?;
            if count_only {
                batch = batch.project(&[])?;
            }
            if batch.num_rows() > 0 && !emit(batch) {
                break;
            }
        }
        Ok(rows.len() as u64)
    }

    /// Removes the segment's files.
    pub fn remove_files(dir: &Path) {
        if let Err(error) = std::fs::remove_dir_all(dir) {
            tracing::warn!(dir = %dir.display(), %error, "could not remove segment files");
        }
    }
}

fn arrow_json_rows(batch: &RecordBatch) -> Result<Vec<serde_json::Map<String, serde_json::Value>>> {
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    writer.write(batch)?;
    writer.finish()?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    Ok(serde_json::from_slice(&bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(seq: u64, body: serde_json::Value) -> Arc<FlatRow> {
        let serde_json::Value::Object(body) = body else {
            unreachable!()
        };
        Arc::new(FlatRow {
            id: format!("d{seq}"),
            event_time_us: seq as i64 * 10,
            seq,
            fields: altdb_common::document::flatten(&body),
        })
    }

    #[test]
    fn write_scan_and_reopen_without_index() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<_> = (0..20_000)
            .map(|i| {
                row(
                    i,
                    json!({"n": i, "user": {"city": if i % 2 == 0 {"Oslo"} else {"Rome"}}}),
                )
            })
            .collect();
        let segment = SealedSegment::write(dir.path().join("s1"), 1, &rows, &[]).unwrap();
        assert_eq!(segment.meta.rows, 20_000);
        assert_eq!(segment.meta.max_event_time_us, 199_990);

        let off = DecodedColumns::new(0);
        let mut deletes = DeleteSet::with_rows(20_000);
        deletes.insert(0);
        deletes.insert(19_999);
        let mut seen = 0;
        let read = segment
            .scan(
                &["n".to_string(), "missing".to_string()],
                &deletes,
                &off,
                |b| {
                    assert_eq!(b.num_columns(), 1);
                    seen += b.num_rows();
                    true
                },
            )
            .unwrap();
        assert_eq!((read, seen), (20_000, 19_998));
        let mut counted = 0;
        segment
            .scan(&[], &DeleteSet::default(), &off, |b| {
                counted += b.num_rows();
                true
            })
            .unwrap();
        assert_eq!(counted, 20_000);

        std::fs::remove_dir_all(segment.index_dir()).unwrap();
        let reopened = SealedSegment::open(dir.path().join("s1"), segment.meta.clone()).unwrap();
        // Until its index is rebuilt the segment is scanned, and its keys come
        // from the columnar file.
        assert!(reopened.index_pending() && reopened.index().is_err());
        assert_eq!(reopened.ids_and_seqs().unwrap()[7], ("d7".to_string(), 7));
        assert!(reopened.rebuild_index_if_outdated(&[]).unwrap());
        assert!(!reopened.rebuild_index_if_outdated(&[]).unwrap());
        assert_eq!(reopened.index().unwrap().num_docs(), 20_000);
        let back = reopened.read_rows().unwrap();
        assert_eq!(back[3], *rows[3]);
        assert_eq!(reopened.ids_and_seqs().unwrap()[5], ("d5".to_string(), 5));
    }

    /// Reads through kept decoded columns give what reads of the pages give:
    /// whole scans with deletes, row groups, and selections large (decoded
    /// and kept) and small (from their pages until the columns are kept).
    #[test]
    fn decoded_columns_read_as_the_pages_do() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<_> = (0..20_000)
            .map(|i| {
                row(
                    i,
                    json!({"n": i, "s": format!("v{}", i % 7), "x": (i % 3 == 0).then_some(i)}),
                )
            })
            .collect();
        let segment = SealedSegment::write(dir.path().join("s1"), 1, &rows, &[]).unwrap();
        let columns = ["n".to_string(), "s".to_string(), "x".to_string()];
        let mut deletes = DeleteSet::with_rows(20_000);
        for row in [0, 5, 8191, 8192, 19_999] {
            deletes.insert(row);
        }
        type Emit<'a> = &'a mut dyn FnMut(RecordBatch) -> bool;
        let collect = |read: &dyn Fn(Emit<'_>) -> Result<u64>| {
            let mut batches = Vec::new();
            let read = read(&mut |b| {
                batches.push(b);
                true
            })
            .unwrap();
            let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
            (read, batch)
        };
        let off = DecodedColumns::new(0);
        let kept = DecodedColumns::new(64 << 20);
        for cache in [&off, &kept, &kept] {
            let scanned = collect(&|emit| segment.scan(&columns, &deletes, cache, emit));
            let expected = collect(&|emit| segment.scan(&columns, &deletes, &off, emit));
            assert_eq!(scanned, expected);
            assert_eq!(scanned.1.num_rows(), 19_995);
            let group = collect(&|emit| segment.scan_row_group(&columns, &deletes, cache, 0, emit));
            assert_eq!(
                group,
                collect(&|emit| segment.scan_row_group(&columns, &deletes, &off, 0, emit))
            );
            for selected in [
                (0..20_000).step_by(3).collect::<Vec<u32>>(),
                vec![3, 4097, 19_000],
            ] {
                let read = collect(&|emit| segment.scan_rows(&columns, &selected, cache, emit));
                assert_eq!(
                    read,
                    collect(&|emit| segment.scan_rows(&columns, &selected, &off, emit))
                );
                assert_eq!(read.1.num_rows(), selected.len());
            }
        }
        let stats = kept.stats();
        assert_eq!(stats.columns, 3, "{stats:?}");
        assert!(stats.hits > 0 && stats.bytes > 0);
    }

    #[test]
    fn distinct_columns_are_written_without_a_dictionary() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<_> = (0..10_000)
            .map(|i| {
                let status = if i % 2 == 0 { "ok" } else { "failed" };
                row(i, json!({"order": format!("o{i}"), "status": status}))
            })
            .collect();
        let segment = SealedSegment::write(dir.path().join("s1"), 1, &rows, &[]).unwrap();
        let metadata = segment.metadata().unwrap();
        let group = &metadata.metadata().row_groups()[0];
        let column = |name: &str| {
            group
                .columns()
                .iter()
                .find(|c| c.column_path().string() == name)
                .unwrap()
        };
        assert!(column("status").dictionary_page_offset().is_some());
        for distinct in ["order", ID_COLUMN, SEQ_COLUMN, EVENT_TIME_COLUMN] {
            let column = column(distinct);
            assert!(column.dictionary_page_offset().is_none(), "{distinct}");
            assert_eq!(column.compression(), Compression::LZ4_RAW);
        }
        assert!(column(EVENT_TIME_COLUMN)
            .encodings()
            .any(|e| e == Encoding::DELTA_BINARY_PACKED));
        let back = segment.read_rows().unwrap();
        assert_eq!(back[9_999], *rows[9_999]);
        assert!(!mostly_distinct(
            &(Arc::new(UInt64Array::from(vec![1, 1, 1, 2])) as ArrayRef)
        ));
    }

    #[test]
    fn time_windows_are_found_in_the_page_index() {
        let dir = tempfile::tempdir().unwrap();
        // Event times 0, 10, 20, ..: pages of PAGE_ROWS rows each.
        let rows: Vec<_> = (0..20_000).map(|i| row(i, json!({"n": i}))).collect();
        let segment = SealedSegment::write(dir.path().join("s1"), 1, &rows, &[]).unwrap();
        let page = PAGE_ROWS as u32;
        // Rows 5000..=5099 are on the second page.
        let rows = segment.rows_in_time(&(50_000..=50_990)).unwrap().unwrap();
        assert_eq!(rows, (page..2 * page).collect::<Vec<_>>());
        // Across a page boundary: both pages.
        let edge = i64::from(page) * 10;
        let rows = segment.rows_in_time(&(edge - 10..=edge)).unwrap().unwrap();
        assert_eq!(rows, (0..2 * page).collect::<Vec<_>>());
        // Outside every page: none; every page: no narrowing.
        assert!(segment
            .rows_in_time(&(300_000..=400_000))
            .unwrap()
            .unwrap()
            .is_empty());
        assert!(segment
            .rows_in_time(&(i64::MIN..=i64::MAX))
            .unwrap()
            .is_none());
    }
}
