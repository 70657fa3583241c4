//! What a fragment from the network may contain. A ticket is hostile input: its
//! plan is decoded by datafusion-proto, which knows operators that read and write
//! files (`CsvScan`, `ParquetScan`, sinks ..). A fragment may hold only the
//! operators the aggregator cuts into fragments (see
//! `aggregator/src/query/distribute.rs`) over altdb's own scan, and runs where no
//! object store is registered.

use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::limit::{GlobalLimitExec, LocalLimitExec};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::ExecutionPlan;
use object_store::ObjectStore;

use altdb_common::plan::OnePartitionExec;

use crate::error::LeafError;
use crate::exec::scan::LocalScanExec;

/// Refuses a decoded fragment with an operator outside the allow-list.
pub fn check_operators(plan: &Arc<dyn ExecutionPlan>) -> Result<(), LeafError> {
    let mut refused = None;
    plan.apply(|node| {
        let allowed = node.is::<LocalScanExec>()
            || node.is::<ProjectionExec>()
            || node.is::<FilterExec>()
            || node.is::<AggregateExec>()
            || node.is::<SortExec>()
            || node.is::<LocalLimitExec>()
            || node.is::<GlobalLimitExec>()
            || node.is::<CoalescePartitionsExec>()
            || node.is::<SortPreservingMergeExec>()
            || node.is::<OnePartitionExec>();
        if allowed {
            return Ok(TreeNodeRecursion::Continue);
        }
        refused = Some(node.name().to_string());
        Ok(TreeNodeRecursion::Stop)
    })
    .expect("visiting a plan does not fail");
    if let Some(name) = refused {
        return Err(LeafError::InvalidRequest(format!(
            "plan fragment refused: `{name}` is not an operator altdb runs on leaves"
        )));
    }
    check_columns(plan)
}

/// Refuses a fragment whose expressions name columns their operator's input
/// does not have (datafusion-proto decodes column indexes unchecked, and
/// operators index batches with them).
fn check_columns(plan: &Arc<dyn ExecutionPlan>) -> Result<(), LeafError> {
    let mut bad = None;
    plan.apply(|node| {
        let Some(input) = node.children().first().map(|child| child.schema()) else {
            return Ok(TreeNodeRecursion::Continue);
        };
        let mut exprs: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
        if let Some(projection) = node.downcast_ref::<ProjectionExec>() {
            exprs.extend(projection.expr().iter().map(|p| p.expr.clone()));
        } else if let Some(filter) = node.downcast_ref::<FilterExec>() {
            exprs.push(filter.predicate().clone());
        } else if let Some(aggregate) = node.downcast_ref::<AggregateExec>() {
            let group_by = aggregate.group_expr();
            let width = group_by.expr().len();
            // A plain GROUP BY has no null expressions; grouping sets have one per
            // group expression, and every set says which of them it nulls.
            let nulls = group_by.null_expr().len();
            let nulls_some = group_by.groups().iter().flatten().any(|&null| null);
            if group_by.groups().iter().any(|set| set.len() != width)
                || (nulls != 0 && nulls != width)
                || (nulls_some && nulls != width)
            {
                bad = Some("its grouping sets do not match its group expressions".to_string());
                return Ok(TreeNodeRecursion::Stop);
            }
            exprs.extend(group_by.expr().iter().map(|(e, _)| e.clone()));
            exprs.extend(group_by.null_expr().iter().map(|(e, _)| e.clone()));
            // Partial and single aggregates evaluate their arguments on the input.
            if matches!(
                aggregate.mode(),
                AggregateMode::Partial | AggregateMode::Single | AggregateMode::SinglePartitioned
            ) {
                for function in aggregate.aggr_expr() {
                    exprs.extend(function.expressions());
                }
                exprs.extend(aggregate.filter_expr().iter().flatten().cloned());
            }
        } else if let Some(sort) = node.downcast_ref::<SortExec>() {
            exprs.extend(sort.expr().iter().map(|e| e.expr.clone()));
        } else if let Some(merge) = node.downcast_ref::<SortPreservingMergeExec>() {
            exprs.extend(merge.expr().iter().map(|e| e.expr.clone()));
        }
        for expr in exprs {
            expr.apply(|e| {
                if let Some(column) = e.downcast_ref::<Column>() {
                    let fits = input
                        .fields()
                        .get(column.index())
                        .is_some_and(|field| field.name() == column.name());
                    if !fits {
                        bad = Some(format!(
                            "`{}` names column {} `{}`, which its input does not have",
                            node.name(),
                            column.index(),
                            column.name()
                        ));
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
            if bad.is_some() {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .expect("visiting a plan does not fail");
    match bad {
        None => Ok(()),
        Some(why) => Err(LeafError::InvalidRequest(format!(
            "plan fragment refused: {why}"
        ))),
    }
}

/// An object-store registry with no store: a fragment that names a file or a
/// bucket gets an error, never data.
#[derive(Debug)]
pub struct NoObjectStores;

impl ObjectStoreRegistry for NoObjectStores {
    fn register_store(
        &self,
        _url: &url::Url,
        _store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        None
    }

    fn get_store(&self, url: &url::Url) -> DfResult<Arc<dyn ObjectStore>> {
        Err(DataFusionError::Plan(format!(
            "leaves read no object store (a fragment named {url})"
        )))
    }
}
