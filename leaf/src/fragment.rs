//! Running a plan fragment sent by an aggregator.
//!
//! The fragment arrives as datafusion-proto bytes whose leaf is an extension node
//! holding a [`ScanSpec`]; [`FragmentCodec`] turns that node into a
//! [`LocalScanExec`] over the requested shard, and the decoded plan runs here.
//!
//! A repeated statement's fragments come back as the very same bytes (the
//! aggregator keeps its plans), and decoding one and fitting it to the shard
//! costs more than a key lookup takes to run, so [`KeptFragments`] keeps them,
//! combined over the request's shards (building that union and merge again
//! costs as much as decoding):
//!
//! ```text
//!  key    collection, shards, fragment bytes
//!  valid  the leaf still holds the shards the fragment was decoded against
//!  run    from DataFusion's reset_plan_states (fresh top-k heaps and dynamic
//!         filters), with each scan's top-k bound linked to its fresh sort; the
//!         scans count what they read in the run's own ScanMetrics (task context)
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::FlightData;
use bytes::Bytes;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::{lit, Column};
use datafusion::physical_expr::projection::ProjectionExpr;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::display::DisplayableExecutionPlan;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{execute_stream, ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::SessionContext;
use datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use altdb_common::lru::LruMap;
use altdb_common::plan::{OnePartitionExec, Partitions};
use altdb_common::rpc::{
    keep_oldest, metadata_message, FragmentMetrics, FragmentProfile, FragmentTicket, ScanSpec,
};
use altdb_common::schema::FieldSet;

use crate::error::{LeafError, Result};
use crate::materialize::materialize_late;
use crate::node::Leaf;
use crate::predicate::IndexPredicate;
use crate::scan::{LocalScanExec, ScanMetrics};
use crate::shard::Shard;
use crate::topk::bound_top_k_scans;

/// Fragments kept at most; a full cache drops the one used least recently
/// (one-off statements must not grow it without bound).
const MAX_KEPT_FRAGMENTS: usize = 512;

/// Decoded fragments, run again when the same bytes come back.
pub struct KeptFragments {
    fragments: Mutex<LruMap<FragmentKey, KeptFragment>>,
}

impl Default for KeptFragments {
    fn default() -> Self {
        Self {
            fragments: Mutex::new(LruMap::new(MAX_KEPT_FRAGMENTS)),
        }
    }
}

#[derive(PartialEq, Eq, Hash)]
struct FragmentKey {
    collection: String,
    shards: Vec<u32>,
    plan: Bytes,
}

struct KeptFragment {
    /// Decoded, fitted to each shard (as [`fit_to_shard`] leaves it) and
    /// combined over the shards (as [`combine_shards`] does).
    plan: Arc<dyn ExecutionPlan>,
    /// The shards it was decoded against (`None`: the leaf had none).
    shards: Vec<Option<Arc<Shard>>>,
}

impl KeptFragments {
    /// The plan to run `ticket` with on `shards` (the ticket's, in its order): a
    /// kept one from a fresh state, else decoded (and kept).
    fn plan(
        &self,
        ticket: &FragmentTicket,
        shards: Vec<Option<Arc<Shard>>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let key = FragmentKey {
            collection: ticket.collection.clone(),
            shards: ticket.shards.iter().map(|part| part.shard).collect(),
            plan: ticket.plan.clone(),
        };
        let kept = self
            .lock()
            .get(&key)
            .filter(|kept| same_shards(&kept.shards, &shards))
            .map(|kept| kept.plan.clone());
        if let Some(plan) = kept {
            return Ok(bound_top_k_scans(reset_plan_states(plan)?)?);
        }
        let plans = shards
            .iter()
            .map(|shard| decode_fragment(ticket, shard.clone()))
            .collect::<Result<Vec<_>>>()?;
        let plan = combine_shards(plans)?;
        self.lock().insert(
            key,
            KeptFragment {
                plan: plan.clone(),
                shards,
            },
        );
        Ok(plan)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruMap<FragmentKey, KeptFragment>> {
        self.fragments.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the fragments of `collection` (and with them its shards).
    pub fn forget(&self, collection: &str) {
        self.lock().retain(|key| key.collection != collection);
    }
}

fn same_shards(a: &[Option<Arc<Shard>>], b: &[Option<Arc<Shard>>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|pair| match pair {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        })
}

/// Decodes the aggregator's scan node into a scan of the ticket's shard.
pub struct FragmentCodec {
    collection: String,
    /// `None` when this leaf holds no data of the shard yet.
    shard: Option<Arc<Shard>>,
}

impl std::fmt::Debug for FragmentCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FragmentCodec")
            .field("collection", &self.collection)
            .field("shard", &self.shard.as_ref().map(|s| s.shard))
            .finish()
    }
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
        if spec.collection != self.collection {
            return Err(DataFusionError::Plan(format!(
                "the fragment scans `{}` but its ticket is for `{}`",
                spec.collection, self.collection
            )));
        }
        Ok(Arc::new(LocalScanExec::new(spec, self.shard.clone())))
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

/// Decodes and runs a fragment on each of the ticket's shards; the stream of
/// their rows ends with one [`FragmentMetrics`] message for them all.
pub fn run_fragment(
    leaf: Arc<Leaf>,
    ticket: FragmentTicket,
) -> Result<BoxStream<'static, Result<FlightData, tonic::Status>>> {
    let started = Instant::now();
    if ticket.profile && ticket.shards.len() != 1 {
        return Err(LeafError::InvalidRequest(
            "a profiled fragment runs on one shard per request".into(),
        ));
    }
    let metrics = Arc::new(if ticket.profile {
        ScanMetrics::profiled()
    } else {
        ScanMetrics::default()
    });
    let mut shards = Vec::with_capacity(ticket.shards.len());
    let mut source_as_of_us = BTreeMap::<String, i64>::new();
    for part in &ticket.shards {
        let shard = leaf.shard(&ticket.collection, part.shard);
        if let Some(planned) = part.fields_fingerprint {
            let current = shard.as_ref().map_or_else(
                || FieldSet::default().fingerprint(),
                |s| s.fields_fingerprint(),
            );
            if current != planned {
                return Err(LeafError::StaleFields(format!(
                    "the fields of `{}` shard {} changed since the statement was planned",
                    ticket.collection, part.shard
                )));
            }
        }
        // Taken before the scan's snapshot, so the data read is at least this fresh.
        if let Some(shard) = &shard {
            keep_oldest(&mut source_as_of_us, &shard.source_as_of());
        }
        shards.push(shard);
    }
    let plan = if ticket.profile {
        // Profiled plans show their own nodes' metrics: decoded for this run.
        let shard = shards.pop().expect("a profiled fragment has one shard");
        decode_fragment(&ticket, shard)?
    } else {
        leaf.fragments().plan(&ticket, shards)?
    };
    let task = Arc::new(execution_context(metrics.clone()));
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
        Ok(metadata_message(
            serde_json::to_vec(&metrics)
                .expect("metrics serialize")
                .into(),
        ))
    });
    Ok(data.chain(trailer).boxed())
}

/// One plan over the fragment's runs on several shards: merged in order when
/// the fragment sorts, else their rows mixed, each shard on a task of its own;
/// or, when each only reads a few documents by `_id`, the shards in turn on
/// this task (sorted again if the fragment sorts): a task and a channel per
/// shard cost more than such a run.
fn combine_shards(mut plans: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
    if plans.len() == 1 {
        return Ok(plans.pop().expect("one plan"));
    }
    let ordering = plans[0].output_ordering().cloned();
    let fetch = plans[0].fetch();
    let key_lookups = plans.iter().all(only_key_lookups);
    let union = UnionExec::try_new(plans)?;
    Ok(match (ordering, key_lookups) {
        (Some(ordering), false) => {
            Arc::new(SortPreservingMergeExec::new(ordering, union).with_fetch(fetch))
        }
        (Some(ordering), true) => Arc::new(
            SortExec::new(
                ordering,
                Arc::new(OnePartitionExec::new(union, Partitions::InTurn)),
            )
            .with_fetch(fetch),
        ),
        (None, false) => Arc::new(CoalescePartitionsExec::new(union)),
        (None, true) => Arc::new(OnePartitionExec::new(union, Partitions::InTurn)),
    })
}

/// Whether every scan of `plan` reads a few documents by `_id`.
fn only_key_lookups(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let mut scans = 0;
    let mut lookups = 0;
    plan.apply(|node| {
        if let Some(scan) = node.downcast_ref::<LocalScanExec>() {
            scans += 1;
            lookups += usize::from(scan.is_key_lookup());
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .expect("visiting a plan does not fail");
    scans > 0 && lookups == scans
}

/// Decodes `ticket`'s fragment and fits it to the local shard.
fn decode_fragment(
    ticket: &FragmentTicket,
    shard: Option<Arc<Shard>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let codec = FragmentCodec {
        collection: ticket.collection.clone(),
        shard,
    };
    let plan =
        physical_plan_from_bytes_with_extension_codec(&ticket.plan, &session().task_ctx(), &codec)
            .map_err(|e| LeafError::InvalidRequest(format!("cannot decode plan fragment: {e}")))?;
    Ok(fit_to_shard(plan)?)
}

/// The leaf's rewrites of a decoded fragment: index predicates and filters into
/// the scans, late materialization, top-k bounds.
fn fit_to_shard(plan: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    absorb_filters(bound_top_k_scans(materialize_late(
        push_filters_into_scans(plan)?,
    )?)?)
}

/// The context one run of a fragment executes in: the session's settings, and
/// `metrics` for its scans.
fn execution_context(metrics: Arc<ScanMetrics>) -> TaskContext {
    let session = session();
    altdb_common::plan::execution_context(
        session.session_id(),
        session.copied_config().with_extension(metrics),
        session.runtime_env(),
    )
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
/// stays above is the filter's projection: a filter on `true`, which gathers
/// the scan's batches into full ones, or, over a lookup of a few `_id`s, a plain
/// projection (a full batch's buffers cost more than such a lookup).
fn absorb_filters(plan: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    rewrite_filtered_scans(plan, |filter, scan| {
        if scan.filters() || !scan.has_index_predicate() {
            return Ok(None);
        }
        let key_lookup = scan.is_key_lookup() && filter.fetch().is_none();
        let scan: Arc<dyn ExecutionPlan> = Arc::new(scan.with_filter(filter.predicate().clone()));
        if key_lookup {
            return Ok(Some(match filter.projection() {
                Some(columns) => project(scan, columns)?,
                None => scan,
            }));
        }
        // Same projection, fetch and batch size; the predicate is now the scan's.
        let kept = FilterExecBuilder::from(filter)
            .with_predicate(lit(true))
            .with_input(scan)
            .build()?;
        Ok(Some(Arc::new(kept)))
    })
}

/// `input`'s columns at `indices`, under their names.
fn project(input: Arc<dyn ExecutionPlan>, indices: &[usize]) -> DfResult<Arc<dyn ExecutionPlan>> {
    let schema = input.schema();
    let columns = indices.iter().map(|&index| {
        let name = schema.field(index).name();
        ProjectionExpr::new(Arc::new(Column::new(name, index)), name.clone())
    });
    Ok(Arc::new(ProjectionExec::try_new(columns, input)?))
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
