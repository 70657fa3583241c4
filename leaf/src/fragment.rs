//! Running a plan fragment sent by an aggregator.
//!
//! The fragment arrives as datafusion-proto bytes whose leaf is an extension node
//! holding a [`ScanSpec`]; [`FragmentCodec`] turns that node into a
//! [`LocalScanExec`] over the requested shard, and the decoded plan runs here.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{FlightData, SchemaAsIpc};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::lit;
use datafusion::physical_plan::display::DisplayableExecutionPlan;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
use datafusion::physical_plan::{execute_stream, ExecutionPlan};
use datafusion::prelude::SessionContext;
use datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use altdb_common::rpc::{FragmentMetrics, FragmentProfile, FragmentTicket, ScanSpec};
use altdb_common::schema::FieldSet;

use crate::error::{LeafError, Result};
use crate::materialize::materialize_late;
use crate::node::Leaf;
use crate::predicate::IndexPredicate;
use crate::scan::{LocalScanExec, ScanMetrics};
use crate::topk::bound_top_k_scans;

/// Decodes the aggregator's scan node into a scan of one local shard.
#[derive(Debug)]
pub struct FragmentCodec {
    leaf: Arc<Leaf>,
    shard: u32,
    metrics: Arc<ScanMetrics>,
}

impl PhysicalExtensionCodec for FragmentCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        _inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let spec: ScanSpec = serde_json::from_slice(buf)
            .map_err(|e| DataFusionError::Plan(format!("bad scan in fragment: {e}")))?;
        let shard = self.leaf.shard(&spec.collection, self.shard);
        Ok(Arc::new(LocalScanExec::new(
            spec,
            shard,
            self.metrics.clone(),
        )))
    }

    fn try_encode(
        &self,
        _node: Arc<dyn ExecutionPlan>,
        _buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        Err(DataFusionError::NotImplemented(
            "leaves do not encode plans".into(),
        ))
    }
}

/// Decodes and runs a fragment; the stream ends with a [`FragmentMetrics`] message.
pub fn run_fragment(
    leaf: Arc<Leaf>,
    ticket: FragmentTicket,
) -> Result<BoxStream<'static, Result<FlightData, tonic::Status>>> {
    let started = Instant::now();
    let metrics = Arc::new(if ticket.profile {
        ScanMetrics::profiled()
    } else {
        ScanMetrics::default()
    });
    let shard = leaf.shard(&ticket.collection, ticket.shard);
    if let Some(planned) = ticket.fields_fingerprint {
        let current = shard.as_ref().map_or_else(
            || FieldSet::default().fingerprint(),
            |s| s.fields_fingerprint(),
        );
        if current != planned {
            return Err(LeafError::StaleFields(format!(
                "the fields of `{}` shard {} changed since the statement was planned",
                ticket.collection, ticket.shard
            )));
        }
    }
    // Taken before the scan's snapshot, so the data read is at least this fresh.
    let source_as_of_us = shard.map(|shard| shard.source_as_of()).unwrap_or_default();
    let codec = FragmentCodec {
        leaf,
        shard: ticket.shard,
        metrics: metrics.clone(),
    };
    let task = session().task_ctx();
    let plan = physical_plan_from_bytes_with_extension_codec(&ticket.plan, &task, &codec)
        .map_err(|e| LeafError::InvalidRequest(format!("cannot decode plan fragment: {e}")))?;
    let plan = absorb_filters(bound_top_k_scans(materialize_late(
        push_filters_into_scans(plan)?,
    )?)?)?;
    let schema = plan.schema();
    let profiled = ticket.profile.then(|| plan.clone());
    let batches = execute_stream(plan, task)?
        .map_err(|e| arrow_flight::error::FlightError::Tonic(Box::new(LeafError::from(e).into())));
    let data = FlightDataEncoderBuilder::new()
        .with_schema(schema.clone())
        .build(batches)
        .map_err(tonic::Status::from);
    let trailer = futures::stream::once(async move {
        let profile = profiled.map(|plan| FragmentProfile {
            elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
            plan: DisplayableExecutionPlan::with_metrics(plan.as_ref())
                .indent(true)
                .to_string(),
            reads: metrics.reads(),
        });
        let metrics = FragmentMetrics {
            rows_scanned: metrics.rows_scanned.load(Ordering::Relaxed),
            scan: metrics.counts(),
            source_as_of_us,
            profile,
        };
        let mut message: FlightData = SchemaAsIpc::new(&schema, &IpcWriteOptions::default()).into();
        message.app_metadata = serde_json::to_vec(&metrics)
            .expect("metrics serialize")
            .into();
        Ok(message)
    });
    Ok(data.chain(trailer).boxed())
}

/// The session fragments decode and run in, built once: its function registry
/// takes longer to build than a needle query takes to answer.
fn session() -> &'static SessionContext {
    static SESSION: std::sync::OnceLock<SessionContext> = std::sync::OnceLock::new();
    SESSION.get_or_init(|| {
        let context = SessionContext::new();
        altdb_common::register_functions(&context);
        context
    })
}

/// Rewrites each `FilterExec` right above a `LocalScanExec` with `rewrite`
/// (`None` keeps it).
fn rewrite_filtered_scans(
    plan: Arc<dyn ExecutionPlan>,
    rewrite: impl Fn(&FilterExec, &LocalScanExec) -> DfResult<Option<Arc<dyn ExecutionPlan>>>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let rewritten = match node.downcast_ref::<FilterExec>() {
            Some(filter) => match filter.input().downcast_ref::<LocalScanExec>() {
                Some(scan) => rewrite(filter, scan)?,
                None => None,
            },
            None => None,
        };
        Ok(match rewritten {
            Some(plan) => Transformed::yes(plan),
            None => Transformed::no(node),
        })
    })
    .map(|t| t.data)
}

/// Moves the filter right above an index-using scan into the scan, which skips
/// it for rows a segment index selected exactly and applies it to the rest. What
/// stays above is the filter's projection (a filter on `true`).
fn absorb_filters(plan: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    rewrite_filtered_scans(plan, |filter, scan| {
        if scan.filters() || !scan.has_index_predicate() {
            return Ok(None);
        }
        let scan: Arc<dyn ExecutionPlan> = Arc::new(scan.with_filter(filter.predicate().clone()));
        // Same projection, fetch and batch size; the predicate is now the scan's.
        let kept = FilterExecBuilder::from(filter)
            .with_predicate(lit(true))
            .with_input(scan)
            .build()?;
        Ok(Some(Arc::new(kept)))
    })
}

/// Hands the filter right above each scan to the scan, which uses it to read
/// fewer rows (the filter stays and keeps the answer exact).
fn push_filters_into_scans(plan: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    rewrite_filtered_scans(plan, |filter, scan| {
        if !scan.uses_index() {
            return Ok(None);
        }
        let predicate = IndexPredicate::from_physical(filter.predicate());
        if predicate.is_opaque() {
            return Ok(None);
        }
        let scan: Arc<dyn ExecutionPlan> = Arc::new(scan.with_predicate(predicate));
        let filter = FilterExecBuilder::from(filter).with_input(scan).build()?;
        Ok(Some(Arc::new(filter)))
    })
}
