//! Row emission: every batch a scan produces, whichever way it was read, is
//! scored (when the query ranks by `_score`), widened to the planned schema,
//! filtered (unless an index selected its rows exactly) and sent on, until the
//! scan's limit is met or its consumer is gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, Float64Array};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::cast::as_boolean_array;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::physical_expr::PhysicalExpr;
use tokio::sync::mpsc;

use altdb_common::columns::{EVENT_TIME_COLUMN, ID_COLUMN, SCORE_COLUMN};
use altdb_common::schema::{align_batch, build_column, FieldSet, FlatRow};
use altdb_common::search::text_scores;

/// Where a scan's batches go.
pub(super) enum Sink {
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

/// Sends a scan's batches on, shaped as the plan above expects them.
pub(super) struct Emitter {
    /// The planned schema every batch is widened to.
    pub target: SchemaRef,
    /// Applied to the rows an index did not select exactly.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    pub limit: Option<usize>,
    /// The text search `_score` ranks by (column, query), when `_score` is read.
    pub search: Option<(String, String)>,
    pub sink: Sink,
}

impl Emitter {
    /// The search `_score` ranks by, when the query asks for `_score`.
    pub fn scored_search(&self) -> Option<(&str, &str)> {
        self.search
            .as_ref()
            .map(|(column, query)| (column.as_str(), query.as_str()))
    }

    /// Sends an error to the consumer.
    pub fn fail(&self, error: DataFusionError) {
        self.sink.send(Err(error));
    }

    /// What was kept, when the batches were collected ([`Sink::Collect`]).
    pub fn into_collected(self) -> Vec<DfResult<RecordBatch>> {
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
    pub fn emit_scored(
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

    /// An `emit(batch, rows)` for the rows of one segment: `rows` are the
    /// segment rows the batch holds, in its order (for their `scores`);
    /// `exact`: they are the rows an index selected exactly.
    pub fn segment_emitter<'a>(
        &'a self,
        exact: bool,
        scores: Option<&'a HashMap<u32, f32>>,
        produced: &'a mut usize,
        outcome: &'a mut Outcome,
    ) -> impl FnMut(RecordBatch, &[u32]) -> bool + 'a {
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
}

/// What emitting a segment's batches came to.
pub(super) struct Outcome {
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
    pub fn finish(self) -> DfResult<bool> {
        match self.failure {
            Some(error) => Err(error),
            None => Ok(self.keep_going),
        }
    }
}

/// Adapts `emit(batch, rows)` to a reader that returns `rows`, in order, in batches.
pub(super) fn in_row_order<'a>(
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
pub fn local_schema(columns: &[String], target: &SchemaRef, fields: &FieldSet) -> SchemaRef {
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
pub fn rows_batch(local: &SchemaRef, rows: &[&FlatRow]) -> DfResult<RecordBatch> {
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
