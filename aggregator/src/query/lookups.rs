//! `_id` lookups that ask several leaves, gathered on the statement's task.
//!
//! A fragment pinned to a few shards by `_id` returns a few rows per leaf; the
//! task and channel `SortPreservingMergeExec` (or `CoalescePartitionsExec`)
//! spawns per partition to buffer them cost more than the rows. [`gather_lookups`]
//! replaces them with [`GatherExec`], which polls the leaves' streams together
//! on one task (the requests still run at once), then sorts the few rows again
//! when the statement orders them.

use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, SendableRecordBatchStream,
};

use super::remote::RemoteFragmentExec;

/// The partitions of its input polled together on the caller's task, their
/// batches in the order they arrive.
#[derive(Debug)]
pub struct GatherExec {
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl GatherExec {
    pub fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(input.schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self { input, properties }
    }
}

impl DisplayAs for GatherExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GatherExec")
    }
}

impl ExecutionPlan for GatherExec {
    altdb_common::single_input_plan_methods!("GatherExec");

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(Self::new(input))),
            _ => Err(DataFusionError::Internal(
                "GatherExec takes one input".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "GatherExec has one partition, asked for {partition}"
            )));
        }
        let streams = (0..self.input.output_partitioning().partition_count())
            .map(|partition| self.input.execute(partition, context.clone()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            futures::stream::select_all(streams),
        )))
    }
}

/// Whether `plan` is a fragment pinned by `_id` that asks more than one leaf.
fn is_lookup(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<RemoteFragmentExec>()
        .is_some_and(|remote| remote.is_key_lookup())
        && plan.output_partitioning().partition_count() > 1
}

/// Gathers the partitions of `_id` lookups with [`GatherExec`] where a merge
/// or a coalesce would spawn a task per partition; the plan itself too when it
/// is such a lookup (a statement's partitions are coalesced to answer it). Runs
/// after [`DistributeFragments`](super::distribute::DistributeFragments).
#[derive(Debug)]
pub struct GatherLookups;

impl PhysicalOptimizerRule for GatherLookups {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        gather_lookups(plan)
    }

    fn name(&self) -> &str {
        "GatherLookups"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

fn gather_lookups(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    if is_lookup(&plan) {
        return Ok(Arc::new(GatherExec::new(plan)));
    }
    plan.transform_up(|node| {
        let Some(input) = node.children().first().map(|c| (*c).clone()) else {
            return Ok(Transformed::no(node));
        };
        if !is_lookup(&input) {
            return Ok(Transformed::no(node));
        }
        if let Some(merge) = node.downcast_ref::<SortPreservingMergeExec>() {
            let sort = SortExec::new(merge.expr().clone(), Arc::new(GatherExec::new(input)))
                .with_fetch(merge.fetch());
            return Ok(Transformed::yes(Arc::new(sort)));
        }
        if node.is::<CoalescePartitionsExec>() && node.fetch().is_none() {
            return Ok(Transformed::yes(Arc::new(GatherExec::new(input))));
        }
        Ok(Transformed::no(node))
    })
    .map(|t| t.data)
}
