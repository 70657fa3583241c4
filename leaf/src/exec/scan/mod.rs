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
//!  sealed segment    → the path access::SegmentAccess::choose picks: pruned by
//!                      its _event_time range, the rows its index selects
//!                      (fetched or from their pages), a columnar scan, or under
//!                      a top-k by row group, best first, skipping those its
//!                      bound rules out (topk)
//!  mutable segment   → scanned (it is small and in memory)
//! ```
//!
//! | module | owns |
//! |---|---|
//! | `access` | the access-path choice per sealed segment |
//! | `topk` | top-k bounds and the order row groups are read in |
//! | `emit` | scoring, widening, filtering and sending the rows read |
//! | `metrics` | what the scans of a fragment read |

pub mod access;
pub mod emit;
pub mod metrics;
pub mod topk;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
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
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use altdb_common::columns::SCORE_COLUMN;
use altdb_common::rpc::{Access, ScanSpec};
use altdb_common::schema::{build_column, FieldType, FlatRow};

use crate::exec::predicate::{IndexPredicate, TimeSplit};
use crate::shard::{SealedEntry, Shard, ShardSnapshot};
use access::{is_few, Narrowing, SegmentAccess, Selected};
use emit::{in_row_order, local_schema, rows_batch, Emitter, Outcome, Sink};
use metrics::ScanMetrics;
use topk::{best_first, row_group_parts, RowGroupPart, TopKBound};

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

    /// The same scan also reading `_event_time` (appended if it does not
    /// read it yet; the columns it reads keep their positions), and the
    /// position of `_event_time`.
    pub fn with_event_time(&self) -> (Self, usize) {
        if let Some(at) = self
            .spec
            .columns
            .iter()
            .position(|(name, _)| name == altdb_common::columns::EVENT_TIME_COLUMN)
        {
            return (self.clone_with(self.spec.clone()), at);
        }
        let mut spec = self.spec.clone();
        spec.columns.push((
            altdb_common::columns::EVENT_TIME_COLUMN.to_string(),
            FieldType::Timestamp,
        ));
        let at = spec.columns.len() - 1;
        (self.clone_with(spec), at)
    }

    fn clone_with(&self, spec: ScanSpec) -> Self {
        Self {
            predicate: self.predicate.clone(),
            time_split: self.time_split.clone(),
            filter: self.filter.clone(),
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
        let columns: Vec<String> = self.spec.columns.iter().map(|(n, _)| n.clone()).collect();
        // `_score` is ranked by the search of the predicate, when there is one.
        let search = columns
            .iter()
            .any(|c| c == SCORE_COLUMN)
            .then(|| self.predicate.as_ref()?.search())
            .flatten()
            .map(|(column, query)| (column.to_string(), query.to_string()));
        let job = ScanJob {
            columns,
            ids,
            metrics: context
                .session_config()
                .get_extension::<ScanMetrics>()
                .unwrap_or_default(),
            predicate: self.predicate.clone(),
            time_split: self.time_split.clone(),
            top_k: self.top_k.clone(),
            shard: shard.clone(),
            emitter: Emitter {
                target: self.schema.clone(),
                filter: self.filter.clone(),
                limit: self.spec.limit,
                search,
                sink,
            },
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

struct ScanJob {
    columns: Vec<String>,
    /// The `_id`s the predicate confines the scan to (read from RocksDB).
    ids: Option<Vec<String>>,
    metrics: Arc<ScanMetrics>,
    predicate: Option<Arc<IndexPredicate>>,
    time_split: Option<Arc<TimeSplit>>,
    top_k: Option<Arc<TopKBound>>,
    shard: Arc<Shard>,
    emitter: Emitter,
}

impl ScanJob {
    /// Runs the scan; returns what it produced when it collects them
    /// ([`Sink::Collect`]), nothing when it sent them.
    fn run(self, snapshot: ShardSnapshot) -> Vec<DfResult<RecordBatch>> {
        let mut produced = 0usize;
        if let Err(error) = self.scan(&snapshot, &mut produced) {
            self.emitter.fail(error);
        }
        self.emitter.into_collected()
    }

    fn narrowing(&self) -> Narrowing<'_> {
        Narrowing {
            predicate: self.predicate.as_deref(),
            time_split: self.time_split.as_deref(),
            search: self.emitter.scored_search(),
            top_k: self.top_k.is_some(),
            columns: self.columns.len(),
        }
    }

    fn scan(&self, snapshot: &ShardSnapshot, produced: &mut usize) -> DfResult<()> {
        // Mutable rows are converted with the shard's local types, then widened
        // exactly as sealed segments are, so both paths give the same values.
        let local = local_schema(&self.columns, &self.emitter.target, &snapshot.fields);
        if let Some(ids) = &self.ids {
            let rows = self
                .shard
                .documents(ids)
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            self.metrics.count(|c| c.rows_by_id += rows.len() as u64);
            self.metrics.add_rows_scanned(rows.len() as u64);
            self.metrics
                .record(Access::ById, None, ids.len() as u64, rows.len() as u64);
            if !rows.is_empty() {
                let refs: Vec<&FlatRow> = rows.iter().collect();
                self.emitter
                    .emit_scored(rows_batch(&local, &refs)?, produced, None, false)?;
            }
            return Ok(());
        }
        for chunk in &snapshot.mutable {
            if chunk.rows.is_empty() {
                continue;
            }
            let count = chunk.rows.len();
            self.metrics.add_rows_scanned(count as u64);
            self.metrics
                .record(Access::Memory, None, count as u64, count as u64);
            let columns = local
                .fields()
                .iter()
                .map(|field| {
                    snapshot.column_cache.get_or_build(chunk, field, |from| {
                        let rows: Vec<&FlatRow> =
                            chunk.rows[from..].iter().map(Arc::as_ref).collect();
                        build_column(field, &rows)
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            let options = RecordBatchOptions::new().with_row_count(Some(count));
            let batch = RecordBatch::try_new_with_options(local.clone(), columns, &options)?;
            if !self.emitter.emit_scored(batch, produced, None, false)? {
                return Ok(());
            }
        }
        // Under a top-k, segments not read whole are read by row group, best first.
        let mut parts: Vec<RowGroupPart<'_>> = Vec::new();
        for entry in &snapshot.sealed {
            let meta = &entry.segment.meta;
            let access = match SegmentAccess::choose(entry, self.narrowing()) {
                SegmentAccess::Pruned => {
                    self.metrics.count(|c| c.segments_pruned += 1);
                    self.metrics
                        .record(Access::Pruned, Some(meta.id), meta.rows, 0);
                    continue;
                }
                SegmentAccess::RowGroups(selected) => {
                    let bound = self
                        .top_k
                        .as_ref()
                        .expect("row groups are read under a top-k");
                    let segment = &entry.segment;
                    match segment.row_groups().and_then(|groups| {
                        Ok((groups, bound.statistics(segment, &self.emitter.target)?))
                    }) {
                        Ok((groups, stats)) => {
                            parts.extend(row_group_parts(bound, entry, selected, groups, stats));
                            continue;
                        }
                        Err(error) => {
                            tracing::warn!(
                                segment = meta.id,
                                %error,
                                "no row group statistics; reading the segment whole"
                            );
                            SegmentAccess::without_row_groups(selected, self.columns.len())
                        }
                    }
                }
                access => access,
            };
            if !self.read_segment(entry, access, &local, produced)? {
                return Ok(());
            }
        }
        if let Some(bound) = &self.top_k {
            self.read_parts(bound, parts, produced)?;
        }
        Ok(())
    }

    /// Reads one sealed segment as `access` says: the rows its index selected,
    /// or all. False when no more rows are wanted.
    fn read_segment(
        &self,
        entry: &SealedEntry,
        access: SegmentAccess,
        local: &SchemaRef,
        produced: &mut usize,
    ) -> DfResult<bool> {
        let meta = &entry.segment.meta;
        let mut outcome = Outcome::default();
        let selected = match &access {
            SegmentAccess::Fetch(selected) | SegmentAccess::Rows(selected) => Some(selected),
            _ => None,
        };
        let mut emit = self.emitter.segment_emitter(
            selected.is_some_and(|s| s.exact),
            selected.and_then(|s| s.scores.as_ref()),
            produced,
            &mut outcome,
        );
        let (access, read) = match &access {
            SegmentAccess::Fetch(selected) => {
                self.metrics.count(|c| c.segments_indexed += 1);
                (
                    Access::IndexFetch,
                    self.fetch_rows(entry, selected, local, &mut emit),
                )
            }
            SegmentAccess::Rows(selected) => {
                self.metrics.count(|c| c.segments_indexed += 1);
                (
                    selected.access,
                    entry.segment.scan_rows(
                        &self.columns,
                        &selected.rows,
                        self.shard.decoded(),
                        in_row_order(&selected.rows, &mut emit),
                    ),
                )
            }
            SegmentAccess::Scan | SegmentAccess::Pruned | SegmentAccess::RowGroups(_) => {
                self.metrics.count(|c| c.segments_scanned += 1);
                (
                    Access::Scan,
                    entry.segment.scan(
                        &self.columns,
                        &entry.deletes,
                        self.shard.decoded(),
                        |batch| emit(batch, &[]),
                    ),
                )
            }
        };
        drop(emit);
        let read = read.map_err(|e| DataFusionError::External(Box::new(e)))?;
        self.metrics.add_rows_scanned(read);
        self.metrics.record(access, Some(meta.id), meta.rows, read);
        outcome.finish()
    }

    /// Reads row groups in the order of the top-k's leading key, skipping those
    /// its bound rules out by then.
    fn read_parts(
        &self,
        bound: &TopKBound,
        mut parts: Vec<RowGroupPart<'_>>,
        produced: &mut usize,
    ) -> DfResult<()> {
        best_first(bound, &mut parts);
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
                current = bound.current(&self.emitter.target);
            }
            let segment = &part.entry.segment;
            let access = part.selected.as_ref().map_or(Access::Scan, |s| s.access);
            if current.as_ref().is_some_and(|c| !c.may_match(&part.stats)) {
                self.metrics.count(|c| c.row_groups_pruned += 1);
                tally(segment.meta.id, access, 0, part.rows.len() as u64);
                continue;
            }
            let mut outcome = Outcome::default();
            let mut emit = self.emitter.segment_emitter(
                part.selected.as_ref().is_some_and(|s| s.exact),
                part.selected.as_ref().and_then(|s| s.scores.as_ref()),
                produced,
                &mut outcome,
            );
            let read = match &part.selected {
                Some(selected) => {
                    let start = selected
                        .rows
                        .partition_point(|&r| (r as usize) < part.rows.start);
                    let end = selected
                        .rows
                        .partition_point(|&r| (r as usize) < part.rows.end);
                    let rows = &selected.rows[start..end];
                    segment.scan_rows(
                        &self.columns,
                        rows,
                        self.shard.decoded(),
                        in_row_order(rows, &mut emit),
                    )
                }
                None => segment.scan_row_group(
                    &self.columns,
                    &part.entry.deletes,
                    self.shard.decoded(),
                    part.group,
                    |batch| emit(batch, &[]),
                ),
            };
            drop(emit);
            let read = read.map_err(|e| DataFusionError::External(Box::new(e)))?;
            self.metrics.add_rows_scanned(read);
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
                self.metrics.count(|c| match access {
                    Access::Index | Access::TimePages => c.segments_indexed += 1,
                    _ => c.segments_scanned += 1,
                });
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
        let stale = entry.segment.scan_rows(
            &self.columns,
            &changed,
            self.shard.decoded(),
            in_row_order(&changed, &mut emit),
        )?;
        Ok(fresh.len() as u64 + stale)
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    use datafusion::physical_expr::expressions::col;
    use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
    use datafusion::physical_plan::sorts::sort::SortExec;
    use datafusion::physical_plan::{collect, ExecutionPlan};
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::exec::rewrite::bound_top_k_scans;
    use crate::shard::tests::new_shard;
    use crate::shard::SealPolicy;
    use crate::store::CollectionMeta;
    use altdb_common::rpc::PutRow;

    /// `ORDER BY n DESC LIMIT 3` over 20 sealed segments of disjoint `n`: the
    /// row group of the largest values is read first and fills the top-k, whose
    /// bound then rules out the others without reading them. (The scan runs
    /// ahead of the sort by the batches its channel holds, so the first few
    /// row groups after it may still be read.)
    #[tokio::test]
    async fn a_top_k_bound_skips_row_groups_that_cannot_hold_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let shard = Arc::new(new_shard(dir.path()));
        let policy = SealPolicy {
            max_rows: 1,
            max_age_secs: 3600,
        };
        for segment in 0..20 {
            let docs = (0..1000)
                .map(|i| {
                    let n = segment * 1000 + i;
                    PutRow {
                        id: format!("d{n}"),
                        event_time_us: n,
                        position: None,
                        doc_json: format!(r#"{{"n": {n}}}"#),
                        delete: false,
                    }
                })
                .collect();
            shard
                .write(&CollectionMeta::default(), &[], docs, 0)
                .unwrap();
            assert!(shard.seal_if_due(policy, true).unwrap());
        }
        let spec = ScanSpec {
            collection: "c".into(),
            columns: vec![("n".into(), FieldType::Int64)],
            limit: None,
            use_index: true,
        };
        let scan: Arc<dyn ExecutionPlan> = Arc::new(LocalScanExec::new(spec, Some(shard)));
        let ordering = LexOrdering::new(vec![PhysicalSortExpr::new(
            col("n", &scan.schema()).unwrap(),
            arrow::compute::SortOptions {
                descending: true,
                nulls_first: false,
            },
        )])
        .unwrap();
        let top_k = Arc::new(SortExec::new(ordering, scan).with_fetch(Some(3)));
        let plan = bound_top_k_scans(top_k).unwrap();

        let metrics = Arc::new(ScanMetrics::profiled());
        let session = SessionContext::new();
        let task = Arc::new(altdb_common::plan::execution_context(
            session.session_id(),
            session.copied_config().with_extension(metrics.clone()),
            session.runtime_env(),
        ));
        let batches = collect(plan, task).await.unwrap();
        let top: Vec<i64> = batches
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        assert_eq!(top, vec![19_999, 19_998, 19_997]);
        let counts = metrics.counts();
        assert!(counts.row_groups_pruned >= 15, "{counts:?}");
        let scanned = metrics
            .rows_scanned
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(scanned <= 5 * 1000, "{scanned} rows scanned");
    }
}
