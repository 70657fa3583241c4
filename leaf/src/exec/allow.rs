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
use datafusion::physical_plan::aggregates::AggregateExec;
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
    match refused {
        None => Ok(()),
        Some(name) => Err(LeafError::InvalidRequest(format!(
            "plan fragment refused: `{name}` is not an operator altdb runs on leaves"
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
