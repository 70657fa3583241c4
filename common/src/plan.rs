//! Helpers for altdb's own DataFusion plan nodes.

/// The [`ExecutionPlan`](datafusion::physical_plan::ExecutionPlan) methods all
/// altdb nodes share: `name`, `properties` (from a `properties:
/// Arc<PlanProperties>` field) and `apply_expressions` (they have none).
#[doc(hidden)]
#[macro_export]
macro_rules! plan_basics {
    ($name:literal) => {
        fn name(&self) -> &str {
            $name
        }

        fn properties(&self) -> &::std::sync::Arc<::datafusion::physical_plan::PlanProperties> {
            &self.properties
        }

        fn apply_expressions(
            &self,
            _f: &mut dyn FnMut(
                &::std::sync::Arc<dyn ::datafusion::physical_expr::PhysicalExpr>,
            ) -> ::datafusion::error::Result<
                ::datafusion::common::tree_node::TreeNodeRecursion,
            >,
        ) -> ::datafusion::error::Result<::datafusion::common::tree_node::TreeNodeRecursion> {
            Ok(::datafusion::common::tree_node::TreeNodeRecursion::Continue)
        }
    };
}

/// Implements the [`ExecutionPlan`](datafusion::physical_plan::ExecutionPlan)
/// methods every childless altdb node shares: those of [`plan_basics`],
/// `children` and `with_new_children`. Use inside the `impl ExecutionPlan for ..`
/// block.
#[macro_export]
macro_rules! childless_plan_methods {
    ($name:literal) => {
        $crate::plan_basics!($name);

        fn children(
            &self,
        ) -> Vec<&::std::sync::Arc<dyn ::datafusion::physical_plan::ExecutionPlan>> {
            vec![]
        }

        fn with_new_children(
            self: ::std::sync::Arc<Self>,
            _children: Vec<::std::sync::Arc<dyn ::datafusion::physical_plan::ExecutionPlan>>,
        ) -> ::datafusion::error::Result<
            ::std::sync::Arc<dyn ::datafusion::physical_plan::ExecutionPlan>,
        > {
            Ok(self)
        }
    };
}

/// Implements the [`ExecutionPlan`](datafusion::physical_plan::ExecutionPlan)
/// methods every altdb node over one input shares: those of [`plan_basics`] and
/// `children` (from an `input: Arc<dyn ExecutionPlan>` field).
#[macro_export]
macro_rules! single_input_plan_methods {
    ($name:literal) => {
        $crate::plan_basics!($name);

        fn children(
            &self,
        ) -> Vec<&::std::sync::Arc<dyn ::datafusion::physical_plan::ExecutionPlan>> {
            vec![&self.input]
        }
    };
}

/// The context to run an already-built physical plan in: `config` (with the
/// run's extensions) and `runtime`, without the function registry, which only
/// planning and decoding look functions up in (copying it costs more than a
/// needle query takes to run).
pub fn execution_context(
    session_id: String,
    config: datafusion::prelude::SessionConfig,
    runtime: std::sync::Arc<datafusion::execution::runtime_env::RuntimeEnv>,
) -> datafusion::execution::TaskContext {
    use std::collections::HashMap;
    datafusion::execution::TaskContext::new(
        None,
        session_id,
        config,
        HashMap::new(),
        HashMap::new(),
        HashMap::new(),
        HashMap::new(),
        runtime,
    )
}

/// How [`OnePartitionExec`] reads its input's partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitions {
    /// One after another (each does a few local reads).
    InTurn,
    /// Polled together (each waits on a remote peer).
    Together,
}

/// The partitions of its input as one, read on the caller's task: for inputs
/// whose partitions each yield a few rows, where the task and channel per
/// partition of `CoalescePartitionsExec` (or a merge's buffering) cost more than
/// the rows.
#[derive(Debug)]
pub struct OnePartitionExec {
    input: std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    partitions: Partitions,
    properties: std::sync::Arc<datafusion::physical_plan::PlanProperties>,
}

impl OnePartitionExec {
    pub fn new(
        input: std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        partitions: Partitions,
    ) -> Self {
        use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
        let properties = std::sync::Arc::new(datafusion::physical_plan::PlanProperties::new(
            datafusion::physical_expr::EquivalenceProperties::new(input.schema()),
            datafusion::physical_plan::Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            input,
            partitions,
            properties,
        }
    }
}

impl datafusion::physical_plan::DisplayAs for OnePartitionExec {
    fn fmt_as(
        &self,
        _t: datafusion::physical_plan::DisplayFormatType,
        f: &mut std::fmt::Formatter<'_>,
    ) -> std::fmt::Result {
        use datafusion::physical_plan::ExecutionPlanProperties;
        let how = match self.partitions {
            Partitions::InTurn => "in turn",
            Partitions::Together => "together",
        };
        let count = self.input.output_partitioning().partition_count();
        write!(f, "OnePartitionExec: {count} partitions {how}")
    }
}

impl datafusion::physical_plan::ExecutionPlan for OnePartitionExec {
    crate::single_input_plan_methods!("OnePartitionExec");

    fn with_new_children(
        self: std::sync::Arc<Self>,
        mut children: Vec<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>,
    ) -> datafusion::error::Result<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>
    {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(std::sync::Arc::new(Self::new(input, self.partitions))),
            _ => Err(datafusion::error::DataFusionError::Internal(
                "OnePartitionExec takes one input".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: std::sync::Arc<datafusion::execution::TaskContext>,
    ) -> datafusion::error::Result<datafusion::physical_plan::SendableRecordBatchStream> {
        use datafusion::physical_plan::ExecutionPlanProperties;
        use futures::StreamExt;
        if partition != 0 {
            return Err(datafusion::error::DataFusionError::Internal(format!(
                "OnePartitionExec has one partition, asked for {partition}"
            )));
        }
        let streams = (0..self.input.output_partitioning().partition_count())
            .map(|partition| self.input.execute(partition, context.clone()))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let batches = match self.partitions {
            Partitions::InTurn => futures::stream::iter(streams).flatten().boxed(),
            Partitions::Together => futures::stream::select_all(streams).boxed(),
        };
        Ok(Box::pin(
            datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                self.schema(),
                batches,
            ),
        ))
    }
}

/// `expr` bound to `from`, re-bound by column name to `to`.
pub fn rebind(
    expr: &std::sync::Arc<dyn datafusion::physical_expr::PhysicalExpr>,
    from: &datafusion::arrow::datatypes::SchemaRef,
    to: &datafusion::arrow::datatypes::SchemaRef,
) -> datafusion::error::Result<std::sync::Arc<dyn datafusion::physical_expr::PhysicalExpr>> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::physical_expr::expressions::Column;
    expr.clone()
        .transform(|e| {
            let Some(column) = e.downcast_ref::<Column>() else {
                return Ok(Transformed::no(e));
            };
            let name = from.field(column.index()).name();
            let index = to.index_of(name)?;
            Ok(Transformed::yes(
                std::sync::Arc::new(Column::new(name, index)) as _,
            ))
        })
        .map(|t| t.data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::execution::TaskContext;
    use datafusion::physical_plan::{collect, ExecutionPlan, ExecutionPlanProperties};
    use std::sync::Arc;

    #[tokio::test]
    async fn reads_every_partition_as_one() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = |values: Vec<i64>| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(values))]).unwrap()
        };
        let partitions = vec![vec![batch(vec![1, 2])], vec![], vec![batch(vec![3])]];
        for how in [Partitions::InTurn, Partitions::Together] {
            let input =
                MemorySourceConfig::try_new_exec(&partitions, schema.clone(), None).unwrap();
            let plan: Arc<dyn ExecutionPlan> = Arc::new(OnePartitionExec::new(input, how));
            assert_eq!(plan.output_partitioning().partition_count(), 1);
            let mut batches = collect(plan, Arc::new(TaskContext::default()))
                .await
                .unwrap();
            if how == Partitions::Together {
                batches.sort_by_key(|b| b.num_rows());
                batches.reverse();
            }
            assert_eq!(batches, vec![batch(vec![1, 2]), batch(vec![3])]);
        }
    }
}
