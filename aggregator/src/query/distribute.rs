//! `DistributeFragments`: pushes shard-local work from the aggregator into leaves.
//!
//! Walking up from each [`DistributedScanExec`], every operator that works on one
//! partition at a time (filter, projection, partial aggregate, per-partition sort
//! and top-k, local limit) joins the fragment the leaves run. The first operator
//! that needs data from several shards (repartition, final aggregate, merge, join,
//! window) stays on the aggregator. With a single shard, the whole query
//! up to the first multi-input operator moves to the leaf.
//!
//! An operator only joins the fragment if the grown fragment still encodes, so a
//! plan that cannot be shipped degrades to gathering rows, never to an error.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result as DfResult;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::limit::{GlobalLimitExec, LocalLimitExec};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};

use super::remote::{DistributedScanExec, RemoteFragmentExec};

/// The physical optimizer rule; runs after DataFusion's own rules.
#[derive(Debug, Default)]
pub struct DistributeFragments;

/// Whether `node` can run on each shard independently, given the number of shards.
fn is_shard_local(node: &Arc<dyn ExecutionPlan>, shards: usize) -> bool {
    let single = shards == 1;
    if node.is::<FilterExec>() || node.is::<ProjectionExec>() || node.is::<LocalLimitExec>() {
        return true;
    }
    if let Some(aggregate) = node.downcast_ref::<AggregateExec>() {
        return matches!(aggregate.mode(), AggregateMode::Partial) || single;
    }
    if let Some(sort) = node.downcast_ref::<SortExec>() {
        return sort.preserve_partitioning() || single;
    }
    single
        && (node.is::<GlobalLimitExec>()
            || node.is::<CoalescePartitionsExec>()
            || node.is::<SortPreservingMergeExec>())
}

impl PhysicalOptimizerRule for DistributeFragments {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if let Some(scan) = node.downcast_ref::<DistributedScanExec>() {
                let target = scan.target.clone();
                let remote: Arc<dyn ExecutionPlan> =
                    Arc::new(RemoteFragmentExec::try_new(node.clone(), target)?);
                return Ok(Transformed::yes(remote));
            }
            let children = node.children();
            let [child] = children.as_slice() else {
                return Ok(Transformed::no(node));
            };
            let Some(remote) = child.downcast_ref::<RemoteFragmentExec>() else {
                return Ok(Transformed::no(node));
            };
            let shards = remote.fragment.output_partitioning().partition_count();
            if !is_shard_local(&node, shards) {
                return Ok(Transformed::no(node));
            }
            // The fragment has the properties its RemoteFragmentExec showed
            // (that node copies them), so the operator's own stay valid:
            // recomputing them (a filter's statistics) is a tenth of planning.
            let grown = node.clone().replace_children(
                vec![remote.fragment.clone()],
                ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
            )?;
            match RemoteFragmentExec::try_new(grown, remote.target.clone()) {
                Ok(absorbed) => Ok(Transformed::yes(Arc::new(absorbed) as Arc<dyn ExecutionPlan>)),
                Err(error) => {
                    tracing::debug!(%error, operator = node.name(), "kept operator on the aggregator");
                    Ok(Transformed::no(node))
                }
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "altdb_distribute_fragments"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
