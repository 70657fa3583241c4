//! Running a plan fragment sent by an aggregator, on shards the caller resolved
//! (the Flight service, [`crate::flight`], resolves them and encodes the rows).
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

use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::display::DisplayableExecutionPlan;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{
    execute_stream, ExecutionPlan, ExecutionPlanProperties, SendableRecordBatchStream,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use futures::StreamExt;

use altdb_common::lru::{plan_weight, LruMap};
use altdb_common::plan::{OnePartitionExec, Partitions};
use altdb_common::rpc::{keep_oldest, FragmentMetrics, FragmentProfile, FragmentTicket, ScanSpec};
use altdb_common::schema::FieldSet;

use crate::error::{LeafError, Result};
use crate::exec::allow::{check_operators, NoObjectStores};
use crate::exec::rewrite::{bound_top_k_scans, fit_to_shard};
use crate::exec::scan::metrics::ScanMetrics;
use crate::exec::scan::LocalScanExec;
use crate::shard::Shard;

/// Fragments kept at most; a full cache drops the one used least recently
/// (one-off statements must not grow it without bound) ...
const MAX_KEPT_FRAGMENTS: usize = 512;
/// ... and their estimated bytes at most (a fragment may be megabytes).
const MAX_KEPT_FRAGMENT_BYTES: usize = 64 << 20;

/// Decoded fragments, run again when the same bytes come back.
pub struct KeptFragments {
    fragments: Mutex<LruMap<FragmentKey, KeptFragment>>,
}

impl Default for KeptFragments {
    fn default() -> Self {
        Self {
            fragments: Mutex::new(LruMap::with_max_weight(
                MAX_KEPT_FRAGMENTS,
                MAX_KEPT_FRAGMENT_BYTES,
            )),
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
        let weight = plan_weight(key.plan.len()).saturating_mul(shards.len().max(1));
        self.lock().insert_weighted(
            key,
            KeptFragment {
                plan: plan.clone(),
                shards,
            },
            weight,
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

/// A fragment running on its shards: its rows, then what its scans read.
pub struct FragmentRun {
    pub schema: SchemaRef,
    pub batches: SendableRecordBatchStream,
    pub report: RunReport,
}

/// What a run reports once its rows are read.
pub struct RunReport {
    started: Instant,
    scans: Arc<ScanMetrics>,
    source_as_of_us: BTreeMap<String, i64>,
    /// The plan, when profiled (its nodes' metrics are shown).
    profiled: Option<Arc<dyn ExecutionPlan>>,
}

impl RunReport {
    /// The run's metrics: taken once its batches are drained.
    pub fn metrics(&self) -> FragmentMetrics {
        let profile = self.profiled.as_ref().map(|plan| FragmentProfile {
            elapsed_ms: self.elapsed_secs() * 1000.0,
            plan: DisplayableExecutionPlan::with_metrics(plan.as_ref())
                .indent(true)
                .to_string(),
            reads: self.scans.reads(),
        });
        FragmentMetrics {
            rows_scanned: self.scans.rows_scanned.load(Ordering::Relaxed),
            scan: self.scans.counts(),
            source_as_of_us: self.source_as_of_us.clone(),
            profile,
        }
    }

    /// Seconds since the run started.
    pub fn elapsed_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// Decodes and runs `ticket`'s fragment on `shards` (the ticket's, in its
/// order; `None` where this leaf holds no data of the shard).
pub fn run_fragment(
    kept: &KeptFragments,
    ticket: &FragmentTicket,
    mut shards: Vec<Option<Arc<Shard>>>,
) -> Result<FragmentRun> {
    let started = Instant::now();
    if ticket.profile && ticket.shards.len() != 1 {
        return Err(LeafError::InvalidRequest(
            "a profiled fragment runs on one shard per request".into(),
        ));
    }
    let scans = Arc::new(if ticket.profile {
        ScanMetrics::profiled()
    } else {
        ScanMetrics::default()
    });
    let mut source_as_of_us = BTreeMap::<String, i64>::new();
    for (part, shard) in ticket.shards.iter().zip(&shards) {
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
        if let Some(shard) = shard {
            keep_oldest(&mut source_as_of_us, &shard.source_as_of());
        }
    }
    let plan = if ticket.profile {
        // Profiled plans show their own nodes' metrics: decoded for this run.
        let shard = shards.pop().expect("a profiled fragment has one shard");
        decode_fragment(ticket, shard)?
    } else {
        kept.plan(ticket, shards)?
    };
    let plan = match ticket.min_event_time_us {
        Some(cutoff) => crate::exec::rewrite::hide_expired(plan, cutoff)?,
        None => plan,
    };
    let task = Arc::new(execution_context(scans.clone()));
    let schema = plan.schema();
    let profiled = ticket.profile.then(|| plan.clone());
    let batches = without_panics(execute_stream(plan, task)?);
    Ok(FragmentRun {
        schema,
        batches,
        report: RunReport {
            started,
            scans,
            source_as_of_us,
            profiled,
        },
    })
}

/// The stream with a panic below it (an operator's, re-raised from the task
/// it ran on) turned into its last item, an error: a fragment from the network
/// must not take down the request's task, whatever it holds.
fn without_panics(stream: SendableRecordBatchStream) -> SendableRecordBatchStream {
    let schema = stream.schema();
    let mut failed = false;
    let guarded = std::panic::AssertUnwindSafe(stream)
        .catch_unwind()
        .map(|item| {
            item.unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(DataFusionError::Execution(format!(
                    "the fragment failed: an operator panicked ({what})"
                )))
            })
        })
        .take_while(move |item| {
            let go = !failed;
            failed |= item.is_err();
            futures::future::ready(go)
        });
    Box::pin(RecordBatchStreamAdapter::new(schema, guarded))
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
    // The decoder panics on some operators (AvroScan): a hostile ticket must not.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        physical_plan_from_bytes_with_extension_codec(&ticket.plan, &session().task_ctx(), &codec)
    }))
    .map_err(|_| LeafError::InvalidRequest("cannot decode plan fragment".into()))?;
    let plan = decoded
        .map_err(|e| LeafError::InvalidRequest(format!("cannot decode plan fragment: {e}")))?;
    check_operators(&plan)?;
    Ok(fit_to_shard(plan)?)
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
        let runtime = RuntimeEnvBuilder::new()
            .with_object_store_registry(Arc::new(NoObjectStores))
            .build_arc()
            .expect("a runtime without object stores");
        let context = SessionContext::new_with_config_rt(SessionConfig::new(), runtime);
        altdb_common::register_functions(&context);
        context
    })
}
