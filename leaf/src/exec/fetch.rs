//! `FetchByIdExec`: late materialization of top-k rows
//! ([`crate::exec::rewrite::materialize_late`] puts it in a fragment).
//!
//! ```text
//!   SortExec(k) ◄ FilterExec ◄ LocalScanExec(every column)         as planned
//!            ▼ rewritten when k is small and the scan is wide
//!   FetchByIdExec ◄ SortExec(k) ◄ FilterExec ◄ LocalScanExec(filter + sort columns, _id)
//! ```
//!
//! The narrow plan finds the k rows reading only the columns the filter and the
//! sort need; [`FetchByIdExec`] then reads those k documents whole from RocksDB.
//! A document changed meanwhile in a column the filter or sort used (or deleted)
//! would make the answer disagree with the snapshot the rows were chosen from:
//! then the plan as planned runs instead.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    collect, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;

use altdb_common::columns::ID_COLUMN;
use altdb_common::schema::{align_batch, FlatRow};

use crate::exec::scan::emit::{local_schema, rows_batch};
use crate::shard::Shard;

/// Reads the documents of the top-k rows its input chose (by `_id`, from
/// RocksDB) in the input's order, with the columns of the plan it replaces.
pub struct FetchByIdExec {
    input: Arc<dyn ExecutionPlan>,
    /// The plan as planned, run if a fetched document changed meanwhile.
    fallback: Arc<dyn ExecutionPlan>,
    shard: Arc<Shard>,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for FetchByIdExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchByIdExec").finish()
    }
}

impl FetchByIdExec {
    pub(crate) fn new(
        input: Arc<dyn ExecutionPlan>,
        fallback: Arc<dyn ExecutionPlan>,
        shard: Arc<Shard>,
    ) -> Self {
        let properties = fallback.properties().clone();
        Self {
            input,
            fallback,
            shard,
            properties,
        }
    }
}

impl DisplayAs for FetchByIdExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let columns: Vec<String> = self
            .fallback
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        write!(f, "FetchByIdExec: columns=[{}]", columns.join(", "))
    }
}

impl ExecutionPlan for FetchByIdExec {
    altdb_common::single_input_plan_methods!("FetchByIdExec");

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| DataFusionError::Internal("FetchByIdExec has one child".into()))?;
        Ok(Arc::new(Self::new(
            input,
            self.fallback.clone(),
            self.shard.clone(),
        )))
    }

    /// Also resets the plan as planned, which runs in its place when a fetched
    /// document changed (its top-k must not start from an earlier run's bound).
    fn reset_state(self: Arc<Self>) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::new(
            self.input.clone(),
            reset_plan_states(self.fallback.clone())?,
            self.shard.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let input = self.input.clone();
        let fallback = self.fallback.clone();
        let shard = self.shard.clone();
        let schema = self.schema();
        let stream_schema = schema.clone();
        let batches = futures::stream::once(async move {
            let chosen = collect(input, context.clone()).await?;
            let fetched = tokio::task::spawn_blocking(move || fetch(&shard, &chosen, &schema))
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))??;
            match fetched {
                Some(batch) => Ok(futures::stream::iter([Ok(batch)]).boxed()),
                None => Ok(fallback.execute(partition, context)?.boxed()),
            }
        })
        .flat_map(|stream| match stream {
            Ok(stream) => stream,
            Err(error) => futures::stream::iter([Err(error)]).boxed(),
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            stream_schema,
            batches,
        )))
    }
}

/// The chosen rows' documents with `schema`'s columns, in the chosen order;
/// `None` if one is gone or changed in a column the choice read.
fn fetch(
    shard: &Shard,
    chosen: &[RecordBatch],
    schema: &SchemaRef,
) -> DfResult<Option<RecordBatch>> {
    let external = |e: crate::error::LeafError| DataFusionError::External(Box::new(e));
    let mut ids: Vec<String> = Vec::new();
    for batch in chosen {
        let column = batch
            .column_by_name(ID_COLUMN)
            .ok_or_else(|| DataFusionError::Internal("narrow top-k lost `_id`".into()))?;
        let strings = column
            .as_string_opt::<i32>()
            .ok_or_else(|| DataFusionError::Internal("`_id` is not text".into()))?;
        ids.extend((0..strings.len()).map(|i| strings.value(i).to_string()));
    }
    let documents: HashMap<String, FlatRow> = shard
        .documents(&ids)
        .map_err(external)?
        .into_iter()
        .map(|d| (d.id.clone(), d))
        .collect();
    let Some(rows) = ids
        .iter()
        .map(|id| documents.get(id))
        .collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    let fields = shard.fields();
    let batch_of = |target: &SchemaRef| -> DfResult<RecordBatch> {
        let names: Vec<String> = target.fields().iter().map(|f| f.name().clone()).collect();
        let local = local_schema(&names, target, &fields);
        let batch = rows_batch(&local, &rows)?;
        align_batch(&batch, target).map_err(|e| DataFusionError::External(Box::new(e)))
    };
    // The fetched versions must agree with what the rows were chosen by.
    let mut offset = 0;
    for batch in chosen {
        let again = batch_of(&batch.schema())?;
        let again = again.slice(offset, batch.num_rows());
        offset += batch.num_rows();
        for (was, is) in batch.columns().iter().zip(again.columns()) {
            for row in 0..was.len() {
                if ScalarValue::try_from_array(was, row)? != ScalarValue::try_from_array(is, row)? {
                    return Ok(None);
                }
            }
        }
    }
    batch_of(schema).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CollectionMeta, Store};
    use altdb_common::rpc::PutRow;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn chosen(ids: &[&str], qty: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("qty", DataType::Int64, true),
            Field::new(ID_COLUMN, DataType::Utf8, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(qty.to_vec())),
                Arc::new(StringArray::from(ids.to_vec())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn fetched_rows_keep_the_chosen_order_unless_they_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db"), false).unwrap());
        let shard = Shard::new("c", 0, dir.path().join("segments"), store);
        let docs = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, id)| PutRow {
                id: id.to_string(),
                event_time_us: 1,
                position: None,
                doc_json: format!(r#"{{"qty": {i}, "name": "n{i}"}}"#),
                delete: false,
            })
            .collect();
        shard
            .write(&CollectionMeta::default(), &[], docs, 0)
            .unwrap();
        let output = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("qty", DataType::Int64, true),
        ]));
        let batch = fetch(&shard, &[chosen(&["c", "a"], &[2, 0])], &output)
            .unwrap()
            .expect("unchanged documents are fetched");
        let names = batch.column(0).as_string::<i32>();
        assert_eq!((names.value(0), names.value(1)), ("n2", "n0"));
        // Chosen by a value the document no longer has: run the plan as planned.
        assert!(fetch(&shard, &[chosen(&["c", "a"], &[2, 9])], &output)
            .unwrap()
            .is_none());
        // Deleted (or never there).
        assert!(fetch(&shard, &[chosen(&["zz"], &[1])], &output)
            .unwrap()
            .is_none());
    }
}
