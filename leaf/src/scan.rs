//! `LocalScanExec`: the leaf end of a plan fragment, reading one shard.
//!
//! It reads the mutable segment and the sealed segments of a snapshot, drops
//! deleted rows, and widens each batch to the collection-wide schema the
//! aggregator planned with. Filters, aggregation and top-k above it run in the
//! same fragment on this leaf.
//!
//! With the filter above it translated into an [`IndexPredicate`]
//! ([`LocalScanExec::with_predicate`]), it reads less:
//!
//! ```text
//!  _id = / IN        → the documents from RocksDB, no segment touched
//!  sealed segment    → skipped if its _event_time range cannot match
//!                    → else the rows its tantivy index selects, when they are
//!                      at most 1/INDEX_MAX_FRACTION of it (only their pages decoded)
//!                    → else a columnar scan
//!                    → under a top-k, both by row group, best first, skipping
//!                      those its bound rules out (see [`crate::topk`])
//!  mutable segment   → scanned (it is small and in memory)
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, Float64Array};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::cast::as_boolean_array;
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;
use tantivy::query::Query;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use altdb_common::document::{EVENT_TIME_COLUMN, ID_COLUMN};
use altdb_common::rpc::{Access, ScanCounts, ScanSpec, SegmentRead};
use altdb_common::schema::{align_batch, build_column, FieldSet, FieldType, FlatRow};
use altdb_common::search::{parse_query, text_scores, SCORE_COLUMN};

use crate::predicate::{IndexPredicate, TimeSplit};
use crate::segment::index::SegmentIndex;
use crate::segment::sealed::PAGE_ROWS;
use crate::shard::{SealedEntry, Shard, ShardSnapshot};
use crate::topk::{RowGroupStats, TopKBound};

/// A segment is read through its index when the index selects at most
/// 1/this of its rows; above that, a sequential scan is cheaper.
const INDEX_MAX_FRACTION: usize = 8;
/// Up to this many selected rows of a segment are fetched from RocksDB ..
const FETCH_MAX_ROWS: usize = 1024;
/// .. unless they are this many or more per Parquet page they fall in (as a time
/// range's rows are, sealed segments being in event-time order): decoding a page
/// of each column then costs less than a RocksDB read and a JSON parse per row.
const PAGE_READ_MIN_ROWS: usize = 64;
/// A lookup of at most this many `_id`s runs on the fragment's task instead of
/// a blocking thread: a few reads from RocksDB's block cache cost less than the
/// hand-over.
const INLINE_MAX_IDS: usize = 64;

/// Whether a lookup of `ids` is small enough to run on the fragment's task.
fn is_few(ids: &[String]) -> bool {
    ids.len() <= INLINE_MAX_IDS
}

/// What the scans of one fragment read.
#[derive(Debug, Default)]
pub struct ScanMetrics {
    pub rows_scanned: AtomicU64,
    pub segments_pruned: AtomicU64,
    pub segments_indexed: AtomicU64,
    pub segments_scanned: AtomicU64,
    pub rows_by_id: AtomicU64,
    pub row_groups_pruned: AtomicU64,
    /// Each part of the shard read, when profiling (`EXPLAIN ANALYZE`).
    reads: Option<Mutex<Vec<SegmentRead>>>,
}

impl ScanMetrics {
    /// Metrics that also record how each part of the shard was read.
    pub fn profiled() -> Self {
        Self {
            reads: Some(Mutex::new(Vec::new())),
            ..Self::default()
        }
    }

    /// The parts read so far (empty unless profiled).
    pub fn reads(&self) -> Vec<SegmentRead> {
        self.reads.as_ref().map_or_else(Vec::new, |reads| {
            reads.lock().unwrap_or_else(|p| p.into_inner()).clone()
        })
    }

    fn record(&self, access: Access, segment: Option<u64>, rows: u64, rows_read: u64) {
        if let Some(reads) = &self.reads {
            reads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(SegmentRead {
                    access,
                    segment,
                    rows,
                    rows_read,
                });
        }
    }

    pub fn counts(&self) -> ScanCounts {
        ScanCounts {
            segments_pruned: self.segments_pruned.load(Ordering::Relaxed),
            segments_indexed: self.segments_indexed.load(Ordering::Relaxed),
            segments_scanned: self.segments_scanned.load(Ordering::Relaxed),
            rows_by_id: self.rows_by_id.load(Ordering::Relaxed),
            row_groups_pruned: self.row_groups_pruned.load(Ordering::Relaxed),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Scans one shard on this leaf.
pub struct LocalScanExec {
    spec: ScanSpec,
    schema: SchemaRef,
    shard: Option<Arc<Shard>>,
    properties: Arc<PlanProperties>,
    predicate: Option<Arc<IndexPredicate>>,
    /// The predicate's `_event_time` window and the rest of it, if it has one.
    time_split: Option<Arc<TimeSplit>>,
    /// The filter the scan applies itself to the rows an index did not select
    /// exactly (see [`LocalScanExec::with_filter`]).
    filter: Option<Arc<dyn PhysicalExpr>>,
    /// The bound of the top-k right above, which rules out row groups.
    top_k: Option<Arc<TopKBound>>,
}

impl fmt::Debug for LocalScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalScanExec")
            .field("spec", &self.spec)
            .finish()
    }
}

impl LocalScanExec {
    /// `shard` is `None` when this leaf holds no data of the shard yet. What the
    /// scan reads is counted in the [`ScanMetrics`] of the task context it runs
    /// in (a new set per run, so a plan can run again).
    pub fn new(spec: ScanSpec, shard: Option<Arc<Shard>>) -> Self {
        let schema = spec.arrow_schema();
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            spec,
            schema,
            shard,
            properties,
            predicate: None,
            time_split: None,
            filter: None,
            top_k: None,
        }
    }

    /// The same scan reading only `columns`.
    pub fn with_columns(&self, columns: Vec<(String, FieldType)>) -> Self {
        let spec = ScanSpec {
            columns,
            ..self.spec.clone()
        };
        Self {
            predicate: self.predicate.clone(),
            top_k: self.top_k.clone(),
            ..Self::new(spec, self.shard.clone())
        }
    }

    /// Whether a filter above was translated for the segment indexes.
    pub fn has_index_predicate(&self) -> bool {
        self.predicate.is_some()
    }

    /// Whether the scan reads a few documents by `_id` (on the task that runs it).
    pub fn is_key_lookup(&self) -> bool {
        self.predicate
            .as_ref()
            .and_then(|p| p.ids())
            .is_some_and(|ids| is_few(&ids))
    }

    /// Whether the scan applies a filter itself.
    pub fn filters(&self) -> bool {
        self.filter.is_some()
    }

    /// The same scan applying `filter` (bound to its output schema) itself:
    /// rows a segment index selected exactly skip it, the rest are filtered
    /// (so a `search()` is not evaluated again on rows its index matched).
    pub fn with_filter(&self, filter: Arc<dyn PhysicalExpr>) -> Self {
        Self {
            filter: Some(filter),
            ..self.clone_parts()
        }
    }

    fn clone_parts(&self) -> Self {
        Self {
            spec: self.spec.clone(),
            schema: self.schema.clone(),
            shard: self.shard.clone(),
            properties: self.properties.clone(),
            predicate: self.predicate.clone(),
            time_split: self.time_split.clone(),
            filter: self.filter.clone(),
            top_k: self.top_k.clone(),
        }
    }

    /// The same scan skipping the sealed row groups `bound` rules out.
    pub fn with_top_k(&self, bound: Arc<TopKBound>) -> Self {
        Self {
            top_k: Some(bound),
            ..self.clone_parts()
        }
    }

    pub fn spec(&self) -> &ScanSpec {
        &self.spec
    }

    pub fn shard(&self) -> Option<&Arc<Shard>> {
        self.shard.as_ref()
    }

    /// Whether the query lets this scan use indexes.
    pub fn uses_index(&self) -> bool {
        self.spec.use_index
    }

    /// The same scan, narrowed by the filter that runs above it. The filter still
    /// runs: the scan may return rows that do not match, never miss one.
    pub fn with_predicate(&self, predicate: IndexPredicate) -> Self {
        Self {
            time_split: predicate.split_time().map(Arc::new),
            predicate: Some(Arc::new(predicate)),
            ..self.clone_parts()
        }
    }
}

impl DisplayAs for LocalScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let columns: Vec<&str> = self.spec.columns.iter().map(|(n, _)| n.as_str()).collect();
        write!(
            f,
            "LocalScanExec: collection={}, shard={}, columns=[{}]",
            self.spec.collection,
            self.shard.as_ref().map_or(-1, |s| i64::from(s.shard)),
            columns.join(", ")
        )?;
        if let Some(limit) = self.spec.limit {
            write!(f, ", limit={limit}")?;
        }
        if let Some(predicate) = &self.predicate {
            write!(f, ", index_predicate={predicate}")?;
        }
        if let Some(filter) = &self.filter {
            write!(f, ", filter={filter}")?;
        }
        if self.top_k.is_some() {
            write!(f, ", top_k_bound")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for LocalScanExec {
    altdb_common::childless_plan_methods!("LocalScanExec");

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "LocalScanExec has one partition, asked for {partition}"
            )));
        }
        let Some(shard) = &self.shard else {
            return Ok(Box::pin(RecordBatchStreamAdapter::new(
                self.schema.clone(),
                futures::stream::empty(),
            )));
        };
        let ids = self.predicate.as_ref().and_then(|p| p.ids());
        let inline = ids.as_ref().is_some_and(|ids| is_few(ids));
        let (sink, receiver) = if inline {
            (Sink::Collect(Mutex::default()), None)
        } else {
            let (sender, receiver) = mpsc::channel(2);
            (Sink::Channel(sender), Some(receiver))
        };
        let snapshot = shard.snapshot();
        let job = ScanJob {
            target: self.schema.clone(),
            columns: self.spec.columns.iter().map(|(n, _)| n.clone()).collect(),
            limit: self.spec.limit,
            ids,
            metrics: context
                .session_config()
                .get_extension::<ScanMetrics>()
                .unwrap_or_default(),
            predicate: self.predicate.clone(),
            time_split: self.time_split.clone(),
            filter: self.filter.clone(),
            top_k: self.top_k.clone(),
            shard: shard.clone(),
            sink,
        };
        let schema = self.schema.clone();
        Ok(match receiver {
            Some(receiver) => {
                tokio::task::spawn_blocking(move || job.run(snapshot));
                Box::pin(RecordBatchStreamAdapter::new(
                    schema,
                    ReceiverStream::new(receiver),
                ))
            }
            // A few RocksDB reads: cheaper on this task than handed to a thread.
            None => Box::pin(RecordBatchStreamAdapter::new(
                schema,
                futures::stream::once(async move { futures::stream::iter(job.run(snapshot)) })
                    .flatten(),
            )),
        })
    }
}

/// Where a scan's batches go.
enum Sink {
    /// To the fragment's stream, from a blocking thread.
    Channel(mpsc::Sender<DfResult<RecordBatch>>),
    /// Kept until the scan ends (one run on the fragment's own task).
    Collect(Mutex<Vec<DfResult<RecordBatch>>>),
}

impl Sink {
    /// False when the consumer is gone.
    fn send(&self, batch: DfResult<RecordBatch>) -> bool {
        match self {
            Sink::Channel(sender) => sender.blocking_send(batch).is_ok(),
            Sink::Collect(batches) => {
                batches
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(batch);
                true
            }
        }
    }
}

struct ScanJob {
    target: SchemaRef,
    columns: Vec<String>,
    limit: Option<usize>,
    /// The `_id`s the predicate confines the scan to (read from RocksDB).
    ids: Option<Vec<String>>,
    metrics: Arc<ScanMetrics>,
    predicate: Option<Arc<IndexPredicate>>,
    time_split: Option<Arc<TimeSplit>>,
    filter: Option<Arc<dyn PhysicalExpr>>,
    top_k: Option<Arc<TopKBound>>,
    shard: Arc<Shard>,
    sink: Sink,
}

impl ScanJob {
    /// Runs the scan; returns what it produced when it collects them
    /// ([`Sink::Collect`]), nothing when it sent them.
    fn run(self, snapshot: ShardSnapshot) -> Vec<DfResult<RecordBatch>> {
        let mut produced = 0usize;
        if let Err(error) = self.scan(&snapshot, &mut produced) {
            self.sink.send(Err(error));
        }
        match self.sink {
            Sink::Collect(batches) => batches.into_inner().unwrap_or_else(|p| p.into_inner()),
            Sink::Channel(_) => Vec::new(),
        }
    }

    /// Sends a batch; false when the consumer is gone or the limit is reached.
    /// `scores` are the batch's `_score`s from a segment index; without them and
    /// with `_score` asked for, they are computed from the batch's text. `exact`
    /// batches hold only matching rows (an exact index selection) and skip the
    /// scan's filter.
    fn emit_scored(
        &self,
        batch: RecordBatch,
        produced: &mut usize,
        scores: Option<Vec<Option<f32>>>,
        exact: bool,
    ) -> DfResult<bool> {
        let batch = match self.scored_search() {
            Some((column, query)) => {
                let scores = match scores {
                    Some(scores) => scores,
                    None => match batch.column_by_name(column) {
                        Some(values) => {
                            text_scores(values, query).map_err(DataFusionError::Execution)?
                        }
                        None => vec![None; batch.num_rows()],
                    },
                };
                with_scores(batch, &scores)?
            }
            None => batch,
        };
        self.emit(batch, produced, exact)
    }

    /// The search `_score` ranks by, when the query asks for `_score`.
    fn scored_search(&self) -> Option<(&str, &str)> {
        if !self.columns.iter().any(|c| c == SCORE_COLUMN) {
            return None;
        }
        self.predicate.as_ref()?.search()
    }

    fn emit(&self, batch: RecordBatch, produced: &mut usize, exact: bool) -> DfResult<bool> {
        let mut batch = align_batch(&batch, &self.target)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        if let Some(filter) = self.filter.as_ref().filter(|_| !exact) {
            let mask = filter.evaluate(&batch)?.into_array(batch.num_rows())?;
            batch = filter_record_batch(&batch, as_boolean_array(&mask)?)?;
            if batch.num_rows() == 0 {
                return Ok(true);
            }
        }
        *produced += batch.num_rows();
        if !self.sink.send(Ok(batch)) {
            return Ok(false);
        }
        Ok(self.limit.is_none_or(|limit| *produced < limit))
    }

    fn scan(&self, snapshot: &ShardSnapshot, produced: &mut usize) -> DfResult<()> {
        // Mutable rows are converted with the shard's local types, then widened
        // exactly as sealed segments are, so both paths give the same values.
        let local = local_schema(&self.columns, &self.target, &snapshot.fields);
        if let Some(ids) = &self.ids {
            let rows = self
                .shard
                .documents(ids)
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            ScanMetrics::add(&self.metrics.rows_by_id, rows.len() as u64);
            ScanMetrics::add(&self.metrics.rows_scanned, rows.len() as u64);
            self.metrics
                .record(Access::ById, None, ids.len() as u64, rows.len() as u64);
            if !rows.is_empty() {
                let refs: Vec<&FlatRow> = rows.iter().collect();
                self.emit_scored(rows_batch(&local, &refs)?, produced, None, false)?;
            }
            return Ok(());
        }
        for chunk in &snapshot.mutable {
            if chunk.rows.is_empty() {
                continue;
            }
            let rows: Vec<&FlatRow> = chunk.rows.iter().map(Arc::as_ref).collect();
            ScanMetrics::add(&self.metrics.rows_scanned, rows.len() as u64);
            self.metrics
                .record(Access::Memory, None, rows.len() as u64, rows.len() as u64);
            let columns = local
                .fields()
                .iter()
                .map(|field| {
                    snapshot
                        .column_cache
                        .get_or_build(chunk, field, || build_column(field, &rows))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
            let batch = RecordBatch::try_new_with_options(local.clone(), columns, &options)?;
            if !self.emit_scored(batch, produced, None, false)? {
                return Ok(());
            }
        }
        // Under a top-k, segments not read whole are read by row group, best first.
        let mut parts: Vec<RowGroupPart<'_>> = Vec::new();
        for entry in &snapshot.sealed {
            let meta = &entry.segment.meta;
            if let Some(predicate) = &self.predicate {
                if !predicate.may_match_time(meta.min_event_time_us, meta.max_event_time_us) {
                    ScanMetrics::add(&self.metrics.segments_pruned, 1);
                    self.metrics
                        .record(Access::Pruned, Some(meta.id), meta.rows, 0);
                    continue;
                }
            }
            let selected = self.index_rows(entry);
            if let Some(bound) = &self.top_k {
                if selected
                    .as_ref()
                    .is_none_or(|s| s.rows.len() > FETCH_MAX_ROWS)
                {
                    let segment = &entry.segment;
                    match segment
                        .row_groups()
                        .and_then(|groups| Ok((groups, bound.statistics(segment, &self.target)?)))
                    {
                        Ok((groups, stats)) => {
                            parts.extend(Self::row_group_parts(
                                bound, entry, selected, groups, stats,
                            ));
                            continue;
                        }
                        Err(error) => {
                            tracing::warn!(
                                segment = meta.id,
                                %error,
                                "no row group statistics; reading the segment whole"
                            );
                        }
                    }
                }
            }
            if !self.read_segment(entry, selected, &local, produced)? {
                return Ok(());
            }
        }
        if let Some(bound) = &self.top_k {
            self.read_parts(bound, parts, produced)?;
        }
        Ok(())
    }

    /// Reads one sealed segment: the rows its index selected, or all. False when
    /// no more rows are wanted.
    fn read_segment(
        &self,
        entry: &SealedEntry,
        selected: Option<Selected>,
        local: &SchemaRef,
        produced: &mut usize,
    ) -> DfResult<bool> {
        let meta = &entry.segment.meta;
        let mut outcome = Outcome::default();
        let mut emit = self.emitter(selected.as_ref(), produced, &mut outcome);
        let (access, read) = match &selected {
            Some(selected) => {
                ScanMetrics::add(&self.metrics.segments_indexed, 1);
                if worth_fetching(&selected.rows) {
                    (
                        Access::IndexFetch,
                        self.fetch_rows(entry, selected, local, &mut emit),
                    )
                } else {
                    (
                        selected.access,
                        entry.segment.scan_rows(
                            &self.columns,
                            &selected.rows,
                            in_row_order(&selected.rows, &mut emit),
                        ),
                    )
                }
            }
            None => {
                ScanMetrics::add(&self.metrics.segments_scanned, 1);
                (
                    Access::Scan,
                    entry
                        .segment
                        .scan(&self.columns, &entry.deletes, |batch| emit(batch, &[])),
                )
            }
        };
        drop(emit);
        let read = read.map_err(|e| DataFusionError::External(Box::new(e)))?;
        ScanMetrics::add(&self.metrics.rows_scanned, read);
        self.metrics.record(access, Some(meta.id), meta.rows, read);
        outcome.finish()
    }

    /// An `emit(batch, rows)` for the rows of one segment: `rows` are the
    /// segment rows the batch holds, in its order (for their scores).
    fn emitter<'a>(
        &'a self,
        selected: Option<&'a Selected>,
        produced: &'a mut usize,
        outcome: &'a mut Outcome,
    ) -> impl FnMut(RecordBatch, &[u32]) -> bool + 'a {
        let exact = selected.is_some_and(|s| s.exact);
        let scores = selected.and_then(|s| s.scores.as_ref());
        move |batch: RecordBatch, rows: &[u32]| {
            let batch_scores =
                scores.map(|scores| rows.iter().map(|row| scores.get(row).copied()).collect());
            match self.emit_scored(batch, produced, batch_scores, exact) {
                Ok(go) => outcome.keep_going = go,
                Err(e) => {
                    outcome.failure = Some(e);
                    outcome.keep_going = false;
                }
            }
            outcome.keep_going
        }
    }

    /// The row groups of a segment, each with its statistics and its share of
    /// the index's selection.
    fn row_group_parts<'a>(
        bound: &TopKBound,
        entry: &'a SealedEntry,
        selected: Option<Selected>,
        groups: Vec<std::ops::Range<usize>>,
        stats: RowGroupStats,
    ) -> Vec<RowGroupPart<'a>> {
        let selected = selected.map(Arc::new);
        groups
            .into_iter()
            .enumerate()
            .map(|(group, rows)| {
                let stats = stats.of_group(group);
                RowGroupPart {
                    entry,
                    order: bound.order_key(&stats),
                    selected: selected.clone(),
                    group,
                    rows,
                    stats,
                }
            })
            .collect()
    }

    /// Reads row groups in the order of the top-k's leading key, skipping those
    /// its bound rules out by then.
    fn read_parts(
        &self,
        bound: &TopKBound,
        mut parts: Vec<RowGroupPart<'_>>,
        produced: &mut usize,
    ) -> DfResult<()> {
        // Unknown keys last, in either direction.
        parts.sort_by(|a, b| match (&a.order, &b.order) {
            (Some(x), Some(y)) => {
                let order = x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal);
                if bound.descending() {
                    order.reverse()
                } else {
                    order
                }
            }
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
        // Per segment: rows read, rows ruled out, and how it was read.
        let mut reads: Vec<(u64, Access, u64, u64)> = Vec::new();
        let mut tally = |segment: u64, access: Access, read: u64, skipped: u64| match reads
            .iter_mut()
            .find(|r| r.0 == segment)
        {
            Some(r) => {
                r.2 += read;
                r.3 += skipped;
            }
            None => reads.push((segment, access, read, skipped)),
        };
        let mut current = None;
        let mut result = Ok(());
        for part in &parts {
            if bound.changed_since(current.as_ref()) {
                current = bound.current(&self.target);
            }
            let segment = &part.entry.segment;
            let access = part.selected.as_ref().map_or(Access::Scan, |s| s.access);
            if current.as_ref().is_some_and(|c| !c.may_match(&part.stats)) {
                ScanMetrics::add(&self.metrics.row_groups_pruned, 1);
                tally(segment.meta.id, access, 0, part.rows.len() as u64);
                continue;
            }
            let mut outcome = Outcome::default();
            let mut emit = self.emitter(part.selected.as_deref(), produced, &mut outcome);
            let read = match &part.selected {
                Some(selected) => {
                    let start = selected
                        .rows
                        .partition_point(|&r| (r as usize) < part.rows.start);
                    let end = selected
                        .rows
                        .partition_point(|&r| (r as usize) < part.rows.end);
                    let rows = &selected.rows[start..end];
                    segment.scan_rows(&self.columns, rows, in_row_order(rows, &mut emit))
                }
                None => segment.scan_row_group(
                    &self.columns,
                    &part.entry.deletes,
                    part.group,
                    |batch| emit(batch, &[]),
                ),
            };
            drop(emit);
            let read = read.map_err(|e| DataFusionError::External(Box::new(e)))?;
            ScanMetrics::add(&self.metrics.rows_scanned, read);
            tally(segment.meta.id, access, read, 0);
            match outcome.finish() {
                Ok(true) => {}
                Ok(false) => break,
                Err(error) => {
                    result = Err(error);
                    break;
                }
            }
        }
        for (segment, access, read, skipped) in reads {
            let rows = parts
                .iter()
                .find(|p| p.entry.segment.meta.id == segment)
                .map_or(0, |p| p.entry.segment.meta.rows);
            if rows > skipped {
                let counter = match access {
                    Access::Index | Access::TimePages => &self.metrics.segments_indexed,
                    _ => &self.metrics.segments_scanned,
                };
                ScanMetrics::add(counter, 1);
                self.metrics
                    .record(access, Some(segment), rows - skipped, read);
            }
            if skipped > 0 {
                self.metrics
                    .record(Access::TopKBound, Some(segment), skipped, 0);
            }
        }
        result
    }

    /// Emits the selected rows of a segment as stored in RocksDB (a few point
    /// reads instead of decoding Parquet pages). A row whose document changed
    /// since the segment's snapshot is read from the segment instead.
    fn fetch_rows(
        &self,
        entry: &SealedEntry,
        selected: &Selected,
        local: &SchemaRef,
        mut emit: impl FnMut(RecordBatch, &[u32]) -> bool,
    ) -> crate::error::Result<u64> {
        if selected.rows.is_empty() {
            return Ok(0);
        }
        let hits = selected.index.ids_and_seqs(&selected.rows);
        let ids: Vec<String> = hits.iter().map(|(_, id, _)| id.clone()).collect();
        let documents = self.shard.documents(&ids)?;
        let current: HashMap<&str, &FlatRow> =
            documents.iter().map(|d| (d.id.as_str(), d)).collect();
        let mut fresh: Vec<&FlatRow> = Vec::with_capacity(hits.len());
        let mut fresh_rows: Vec<u32> = Vec::with_capacity(hits.len());
        let mut changed: Vec<u32> = Vec::new();
        for (row, id, seq) in &hits {
            match current.get(id.as_str()) {
                Some(doc) if doc.seq == *seq => {
                    fresh.push(doc);
                    fresh_rows.push(*row);
                }
                _ => changed.push(*row),
            }
        }
        if !fresh.is_empty() {
            let batch = rows_batch(local, &fresh).map_err(|e| {
                crate::error::LeafError::Segment(format!("cannot convert fetched rows: {e}"))
            })?;
            if !emit(batch, &fresh_rows) {
                return Ok(fresh.len() as u64);
            }
        }
        let stale =
            entry
                .segment
                .scan_rows(&self.columns, &changed, in_row_order(&changed, &mut emit))?;
        Ok(fresh.len() as u64 + stale)
    }

    /// The live rows of a sealed segment the index selects, if it is worth it,
    /// with their BM25 scores when the query ranks by `_score`.
    fn index_rows(&self, entry: &SealedEntry) -> Option<Selected> {
        let predicate = self.predicate.as_ref().filter(|p| !p.is_opaque())?;
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
        let (mut rows, exact, access) = match self.window_rows(entry) {
            Some(window) => {
                let rest = self.time_split.as_ref().and_then(|split| split.1.as_ref());
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
        let search = self.scored_search().and_then(|(column, query)| {
            let field = index.text_field(column)?;
            parse_query(index.index(), field, query).ok()
        });
        // The pages of a time window are read as cheaply as a scan reads them.
        let live = live_rows(entry) as usize;
        if search.is_none() && access != Access::TimePages && rows.len() * INDEX_MAX_FRACTION > live
        {
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
    fn window_rows(&self, entry: &SealedEntry) -> Option<Vec<u32>> {
        let (window, _) = self.time_split.as_deref()?;
        match entry.segment.rows_in_time(window) {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(segment = entry.segment.meta.id, %error, "no page index; using the index");
                None
            }
        }
    }
}

/// Rows of a sealed segment not superseded or deleted since it was sealed.
fn live_rows(entry: &SealedEntry) -> u64 {
    entry.segment.meta.rows - entry.deletes.len() as u64
}

/// Rows of a segment chosen through its index.
struct Selected {
    rows: Vec<u32>,
    /// BM25 score by row, when the query ranks by `_score`.
    scores: Option<HashMap<u32, f32>>,
    index: Arc<SegmentIndex>,
    /// The rows are exactly those matching the predicate.
    exact: bool,
    /// How they were chosen: [`Access::Index`] or [`Access::TimePages`].
    access: Access,
}

/// What emitting a segment's batches came to.
struct Outcome {
    keep_going: bool,
    failure: Option<DataFusionError>,
}

impl Default for Outcome {
    fn default() -> Self {
        Self {
            keep_going: true,
            failure: None,
        }
    }
}

impl Outcome {
    /// Whether more rows are wanted, or the error emitting met.
    fn finish(self) -> DfResult<bool> {
        match self.failure {
            Some(error) => Err(error),
            None => Ok(self.keep_going),
        }
    }
}

/// One row group of a sealed segment, read under a top-k.
struct RowGroupPart<'a> {
    entry: &'a SealedEntry,
    /// The leading sort key's minimum (or maximum when descending).
    order: Option<ScalarValue>,
    /// The segment's rows its index selected (all rows if `None`).
    selected: Option<Arc<Selected>>,
    group: usize,
    rows: std::ops::Range<usize>,
    stats: RowGroupStats,
}

/// Adapts `emit(batch, rows)` to a reader that returns `rows`, in order, in batches.
fn in_row_order<'a>(
    rows: &'a [u32],
    mut emit: impl FnMut(RecordBatch, &[u32]) -> bool + 'a,
) -> impl FnMut(RecordBatch) -> bool + 'a {
    let mut offset = 0;
    move |batch| {
        let end = (offset + batch.num_rows()).min(rows.len());
        let batch_rows = &rows[offset.min(end)..end];
        offset = end;
        emit(batch, batch_rows)
    }
}

/// `columns` with the shard's local types (`_id` and `_event_time` as in
/// `target`); columns the shard has never seen are left out.
pub(crate) fn local_schema(columns: &[String], target: &SchemaRef, fields: &FieldSet) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .filter_map(|name| match name.as_str() {
                ID_COLUMN | EVENT_TIME_COLUMN => target.field_with_name(name).ok().cloned(),
                _ => fields
                    .fields
                    .get(name)
                    .map(|t| Field::new(name, t.arrow_type(), true)),
            })
            .collect::<Vec<_>>(),
    ))
}

/// Rows converted to Arrow with the shard's local types.
pub(crate) fn rows_batch(local: &SchemaRef, rows: &[&FlatRow]) -> DfResult<RecordBatch> {
    let columns = local
        .fields()
        .iter()
        .map(|field| build_column(field, rows))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
    Ok(RecordBatch::try_new_with_options(
        local.clone(),
        columns,
        &options,
    )?)
}

/// The batch with a `_score` column (replacing one it may have).
fn with_scores(batch: RecordBatch, scores: &[Option<f32>]) -> DfResult<RecordBatch> {
    let scores: ArrayRef = Arc::new(
        scores
            .iter()
            .map(|s| s.map(f64::from))
            .collect::<Float64Array>(),
    );
    let mut fields: Vec<Field> = Vec::new();
    let mut columns = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if field.name() != SCORE_COLUMN {
            fields.push(field.as_ref().clone());
            columns.push(column.clone());
        }
    }
    fields.push(Field::new(SCORE_COLUMN, DataType::Float64, true));
    columns.push(scores);
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        columns,
        &options,
    )?)
}

/// Whether the selected rows (ascending) of a segment are better fetched from
/// RocksDB one by one than read from the pages of its columnar file: few, and
/// spread over many pages.
fn worth_fetching(rows: &[u32]) -> bool {
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
    rows.len() < pages.max(1) * PAGE_READ_MIN_ROWS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_scattered_rows_are_fetched_and_runs_read_from_pages() {
        // A few rows on pages of their own: a read per row beats a page per row.
        let scattered: Vec<u32> = (0..10).map(|i| i * PAGE_ROWS as u32 + 7).collect();
        assert!(worth_fetching(&scattered));
        // A time range's rows: one run on one or two pages.
        let run: Vec<u32> = (1_000..1_250).collect();
        assert!(!worth_fetching(&run));
        // Too many rows for point reads, however spread.
        let many: Vec<u32> = (0..2_000).map(|i| i * 97).collect();
        assert!(!worth_fetching(&many));
        assert!(worth_fetching(&[]));
    }
}
