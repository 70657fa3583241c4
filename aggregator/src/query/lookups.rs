//! `_id` lookups that ask several leaves, gathered on the statement's task.
//!
//! A fragment pinned to a few shards by `_id` returns a few rows per leaf; the
//! task and channel `SortPreservingMergeExec` (or `CoalescePartitionsExec`)
//! spawns per partition to buffer them cost more than the rows. [`gather_lookups`]
//! replaces them with a [`OnePartitionExec`] reading partitions together, which polls the leaves' streams together
//! on one task (the requests still run at once), then sorts the few rows again
//! when the statement orders them.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};

use altdb_common::plan::{OnePartitionExec, Partitions};

use super::remote::RemoteFragmentExec;

/// Whether `plan` is a fragment pinned by `_id` that asks more than one leaf.
fn is_lookup(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<RemoteFragmentExec>()
        .is_some_and(|remote| remote.is_key_lookup())
        && plan.output_partitioning().partition_count() > 1
}

/// Gathers the partitions of `_id` lookups with a [`OnePartitionExec`] reading partitions together where a merge
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
        return Ok(Arc::new(OnePartitionExec::new(plan, Partitions::Together)));
    }
    plan.transform_up(|node| {
        let Some(input) = node.children().first().map(|c| (*c).clone()) else {
            return Ok(Transformed::no(node));
        };
        if !is_lookup(&input) {
            return Ok(Transformed::no(node));
        }
        if let Some(merge) = node.downcast_ref::<SortPreservingMergeExec>() {
            let sort = SortExec::new(
                merge.expr().clone(),
                Arc::new(OnePartitionExec::new(input, Partitions::Together)),
            )
            .with_fetch(merge.fetch());
            return Ok(Transformed::yes(Arc::new(sort)));
        }
        if node.is::<CoalescePartitionsExec>() && node.fetch().is_none() {
            return Ok(Transformed::yes(Arc::new(OnePartitionExec::new(
                input,
                Partitions::Together,
            ))));
        }
        Ok(Transformed::no(node))
    })
    .map(|t| t.data)
}
