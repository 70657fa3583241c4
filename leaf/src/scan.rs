//! `LocalScanExec`: the leaf end of a plan fragment, reading one shard.
//!
//! It reads the mutable segment and every sealed segment of a snapshot, drops
//! deleted rows, and widens each batch to the collection-wide schema the
//! aggregator planned with. Filters, aggregation and top-k above it run in the
//! same fragment on this leaf.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use altdb_common::document::{EVENT_TIME_COLUMN, ID_COLUMN};
use altdb_common::rpc::ScanSpec;
use altdb_common::schema::{align_batch, build_column, FlatRow};

use crate::shard::{Shard, ShardSnapshot};

/// Scans one shard on this leaf.
pub struct LocalScanExec {
    spec: ScanSpec,
    schema: SchemaRef,
    shard: Option<Arc<Shard>>,
    properties: Arc<PlanProperties>,
    rows_scanned: Arc<AtomicU64>,
}

impl fmt::Debug for LocalScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalScanExec")
            .field("spec", &self.spec)
            .finish()
    }
}

impl LocalScanExec {
    /// `shard` is `None` when this leaf holds no data of the shard yet.
    pub fn new(spec: ScanSpec, shard: Option<Arc<Shard>>, rows_scanned: Arc<AtomicU64>) -> Self {
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
            rows_scanned,
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
        Ok(())
    }
}

impl ExecutionPlan for LocalScanExec {
    altdb_common::childless_plan_methods!("LocalScanExec");

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "LocalScanExec has one partition, asked for {partition}"
            )));
        }
        let (sender, receiver) = mpsc::channel(2);
        if let Some(shard) = &self.shard {
            let snapshot = shard.snapshot();
            let job = ScanJob {
                target: self.schema.clone(),
                columns: self.spec.columns.iter().map(|(n, _)| n.clone()).collect(),
                limit: self.spec.limit,
                rows_scanned: self.rows_scanned.clone(),
                sender,
            };
            tokio::task::spawn_blocking(move || job.run(snapshot));
        }
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            ReceiverStream::new(receiver),
        )))
    }
}

struct ScanJob {
    target: SchemaRef,
    columns: Vec<String>,
    limit: Option<usize>,
    rows_scanned: Arc<AtomicU64>,
    sender: mpsc::Sender<DfResult<RecordBatch>>,
}

impl ScanJob {
    fn run(self, snapshot: ShardSnapshot) {
        let mut produced = 0usize;
        if let Err(error) = self.scan(&snapshot, &mut produced) {
            let _ = self.sender.blocking_send(Err(error));
        }
    }

    /// Sends a batch; false when the consumer is gone or the limit is reached.
    fn emit(&self, batch: RecordBatch, produced: &mut usize) -> DfResult<bool> {
        let batch = align_batch(&batch, &self.target)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        *produced += batch.num_rows();
        if self.sender.blocking_send(Ok(batch)).is_err() {
            return Ok(false);
        }
        Ok(self.limit.is_none_or(|limit| *produced < limit))
    }

    fn scan(&self, snapshot: &ShardSnapshot, produced: &mut usize) -> DfResult<()> {
        // Mutable rows are converted with the shard's local types, then widened
        // exactly as sealed segments are, so both paths give the same values.
        let local = Arc::new(Schema::new(
            self.columns
                .iter()
                .filter_map(|name| match name.as_str() {
                    ID_COLUMN | EVENT_TIME_COLUMN => {
                        self.target.field_with_name(name).ok().cloned()
                    }
                    _ => snapshot
                        .fields
                        .fields
                        .get(name)
                        .map(|t| Field::new(name, t.arrow_type(), true)),
                })
                .collect::<Vec<_>>(),
        ));
        for chunk in &snapshot.mutable {
            if chunk.rows.is_empty() {
                continue;
            }
            let rows: Vec<&FlatRow> = chunk.rows.iter().map(Arc::as_ref).collect();
            self.rows_scanned
                .fetch_add(rows.len() as u64, Ordering::Relaxed);
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
            if !self.emit(batch, produced)? {
                return Ok(());
            }
        }
        for entry in &snapshot.sealed {
            let mut keep_going = true;
            let mut failure = None;
            let read = entry
                .segment
                .scan(&self.columns, &entry.deletes, |batch| {
                    match self.emit(batch, produced) {
                        Ok(go) => keep_going = go,
                        Err(e) => {
                            failure = Some(e);
                            keep_going = false;
                        }
                    }
                    keep_going
                })
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            self.rows_scanned.fetch_add(read, Ordering::Relaxed);
            if let Some(error) = failure {
                return Err(error);
            }
            if !keep_going {
                return Ok(());
            }
        }
        Ok(())
    }
}
