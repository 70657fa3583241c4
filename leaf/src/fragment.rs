//! Running a plan fragment sent by an aggregator.
//!
//! The fragment arrives as datafusion-proto bytes whose leaf is an extension node
//! holding a [`ScanSpec`]; [`FragmentCodec`] turns that node into a
//! [`LocalScanExec`] over the requested shard, and the decoded plan runs here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{FlightData, SchemaAsIpc};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{execute_stream, ExecutionPlan};
use datafusion::prelude::SessionContext;
use datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use altdb_common::rpc::{FragmentMetrics, FragmentTicket, ScanSpec};

use crate::error::{LeafError, Result};
use crate::node::Leaf;
use crate::scan::LocalScanExec;

/// Decodes the aggregator's scan node into a scan of one local shard.
#[derive(Debug)]
pub struct FragmentCodec {
    leaf: Arc<Leaf>,
    shard: u32,
    rows_scanned: Arc<AtomicU64>,
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
            self.rows_scanned.clone(),
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
    let rows_scanned = Arc::new(AtomicU64::new(0));
    // Taken before the scan's snapshot, so the data read is at least this fresh.
    let source_as_of_us = leaf
        .shard(&ticket.collection, ticket.shard)
        .map(|shard| shard.source_as_of())
        .unwrap_or_default();
    let codec = FragmentCodec {
        leaf,
        shard: ticket.shard,
        rows_scanned: rows_scanned.clone(),
    };
    let context = SessionContext::new();
    let task = context.task_ctx();
    let plan = physical_plan_from_bytes_with_extension_codec(&ticket.plan, &task, &codec)
        .map_err(|e| LeafError::InvalidRequest(format!("cannot decode plan fragment: {e}")))?;
    let schema = plan.schema();
    let batches = execute_stream(plan, task)?
        .map_err(|e| arrow_flight::error::FlightError::ExternalError(Box::new(e)));
    let data = FlightDataEncoderBuilder::new()
        .with_schema(schema.clone())
        .build(batches)
        .map_err(tonic::Status::from);
    let trailer = futures::stream::once(async move {
        let metrics = FragmentMetrics {
            rows_scanned: rows_scanned.load(Ordering::Relaxed),
            source_as_of_us,
        };
        let mut message: FlightData = SchemaAsIpc::new(&schema, &IpcWriteOptions::default()).into();
        message.app_metadata = serde_json::to_vec(&metrics)
            .expect("metrics serialize")
            .into();
        Ok(message)
    });
    Ok(data.chain(trailer).boxed())
}
