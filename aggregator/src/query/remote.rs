//! The scatter-gather nodes of a distributed plan.
//!
//! ```text
//!   DistributedScanExec        one partition per shard; what the TableProvider returns
//!          │ DistributeFragments wraps it, then absorbs shard-local operators above it
//!          ▼
//!   RemoteFragmentExec         partition i = the fragment run on a replica of shard i
//!     fragment: Aggregate(Partial) ◄ Filter ◄ DistributedScanExec     (runs on the leaves)
//! ```
//!
//! The fragment is encoded once with datafusion-proto; [`ScanCodec`] encodes the
//! scan node as a [`ScanSpec`] that the leaf turns into a scan of its local shard.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use bytes::Bytes;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::coop::make_cooperative;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType, SchedulingType};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    displayable, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use datafusion::prelude::SessionContext;
use datafusion_proto::bytes::{
    physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_extension_codec,
};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use futures::stream::{BoxStream, FuturesUnordered};
use futures::{StreamExt, TryStreamExt};

use altdb_common::collection::CollectionSpec;
use altdb_common::routing::shards_for_filter;
use altdb_common::rpc::{
    deadline, keep_oldest, FragmentItem, FragmentMetrics, FragmentProfile, FragmentTicket,
    RpcError, ScanCounts, ScanSpec, SharedLeaf, TicketShard,
};

use crate::cluster::{Answering, Cluster, CollectionFields};

/// Counters of one query, reported in its response.
#[derive(Debug, Default)]
pub struct QueryStats {
    pub rows_scanned: AtomicU64,
    pub shards_queried: AtomicU64,
    pub shards_responded: AtomicU64,
    /// Fragments also sent to another copy (hedged reads).
    pub hedged: AtomicU64,
    /// Per source, the oldest freshness over the shards that answered.
    pub source_as_of_us: std::sync::Mutex<std::collections::BTreeMap<String, i64>>,
    /// How the leaves read their shards, summed.
    pub scan: std::sync::Mutex<ScanCounts>,
    /// How each shard's fragment ran, when the statement profiles.
    pub profiles: std::sync::Mutex<Vec<ShardProfile>>,
    /// Where the plan came from (`super::PlanSource` as a number).
    pub plan: std::sync::atomic::AtomicU8,
}

/// One shard's fragment as its leaf ran it (`EXPLAIN ANALYZE`).
#[derive(Debug, Clone)]
pub struct ShardProfile {
    pub collection: String,
    pub shard: u32,
    /// The leaf that answered.
    pub leaf: String,
    pub profile: FragmentProfile,
}

impl QueryStats {
    fn merge_freshness(&self, shard: &std::collections::BTreeMap<String, i64>) {
        let mut merged = self
            .source_as_of_us
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        keep_oldest(&mut merged, shard);
    }
}

/// Shards could not be reached on any replica.
#[derive(Debug, thiserror::Error)]
#[error("{shards} of `{collection}` cannot be reached on any replica ({detail}); the answer would be incomplete, retry when its leaf is back")]
pub struct ShardUnavailable {
    pub collection: String,
    /// The shards asked together: `shard 3`, `shards 0, 2`.
    pub shards: String,
    pub detail: String,
}

/// A leaf rejected the fragment as invalid (for example a failing cast).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LeafRejected(pub String);

/// Where a scan's fragments go: the collection and its leaves. (The statement's
/// counters, [`QueryStats`], come with the task context of each execution.)
#[derive(Debug)]
pub struct ScanTarget {
    pub collection: CollectionSpec,
    pub cluster: Cluster,
    /// Ask leaves for a [`FragmentProfile`] of each fragment.
    pub profile: bool,
    /// The remembered fields the statement was planned with: each fragment carries
    /// its shard's fingerprint, for the leaf to refuse it if they changed since.
    /// `None`: planned with fields just fetched, run whatever the shard has.
    pub remembered: Option<Arc<CollectionFields>>,
    /// Read only the copies on this leaf (id or URL); shards without one
    /// there are not read.
    pub only_leaf: Option<Arc<str>>,
}

impl ScanTarget {
    /// The copies of `shard` to ask, preferred first.
    fn copies(&self, shard: u32) -> Vec<SharedLeaf> {
        match &self.only_leaf {
            Some(leaf) => self
                .cluster
                .copy_on(&self.collection, shard, leaf)
                .into_iter()
                .collect(),
            None => self.cluster.replicas(&self.collection, shard),
        }
    }
}

/// A leaf refused a fragment because its shard's fields changed since the
/// statement was planned with remembered fields.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StaleFields(pub String);

/// The scan of a collection across all its shards.
pub struct DistributedScanExec {
    pub spec: ScanSpec,
    pub target: Arc<ScanTarget>,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for DistributedScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DistributedScanExec")
            .field("spec", &self.spec)
            .finish()
    }
}

impl DistributedScanExec {
    pub fn new(spec: ScanSpec, target: Arc<ScanTarget>) -> Self {
        // Cooperative (its stream yields to tokio's budget), so DataFusion does not
        // wrap it in a CooperativeExec that would hide it from DistributeFragments.
        let properties = Arc::new(
            PlanProperties::new(
                EquivalenceProperties::new(spec.arrow_schema()),
                Partitioning::UnknownPartitioning(target.collection.num_shards as usize),
                EmissionType::Incremental,
                Boundedness::Bounded,
            )
            .with_scheduling_type(SchedulingType::Cooperative),
        );
        Self {
            spec,
            target,
            properties,
        }
    }
}

impl DisplayAs for DistributedScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let columns: Vec<&str> = self.spec.columns.iter().map(|(n, _)| n.as_str()).collect();
        write!(
            f,
            "LeafScan: collection={}, shards={}, columns=[{}]",
            self.spec.collection,
            self.target.collection.num_shards,
            columns.join(", ")
        )?;
        if let Some(limit) = self.spec.limit {
            write!(f, ", limit={limit}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for DistributedScanExec {
    altdb_common::childless_plan_methods!("DistributedScanExec");

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        // Normally wrapped by DistributeFragments; ship the bare scan if it was not.
        let scan = Arc::new(Self::new(self.spec.clone(), self.target.clone()));
        RemoteFragmentExec::try_new(scan, self.target.clone())?.execute(partition, context)
    }
}

/// Encodes [`DistributedScanExec`] for the leaves.
#[derive(Debug)]
pub struct ScanCodec;

impl PhysicalExtensionCodec for ScanCodec {
    /// Decodes the scan as an empty placeholder: aggregators decode fragments only
    /// to prove that a leaf will be able to.
    fn try_decode(
        &self,
        buf: &[u8],
        _inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let spec: ScanSpec =
            serde_json::from_slice(buf).map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(Arc::new(EmptyExec::new(spec.arrow_schema())))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        match node.downcast_ref::<DistributedScanExec>() {
            Some(scan) => {
                let spec = serde_json::to_vec(&scan.spec)
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                buf.extend_from_slice(&spec);
                Ok(())
            }
            None => Err(DataFusionError::NotImplemented(format!(
                "{} cannot run on a leaf",
                node.name()
            ))),
        }
    }
}

/// A plan fragment executed on every shard, with one request per leaf: partition
/// `i` streams the rows of the `i`-th leaf's shards (the leaf merges them, in
/// order if the fragment sorts), and the partitions past the last leaf are empty.
/// A leaf that cannot be reached has its shards asked of their other replicas.
///
/// A fragment whose filter pins `_id` down runs only on the shards that own those
/// `_id`s (documents are routed by `_id`).
///
/// `EXPLAIN ANALYZE` asks for each shard on its own, so that each shard's profile
/// shows what that shard did.
pub struct RemoteFragmentExec {
    pub fragment: Arc<dyn ExecutionPlan>,
    pub target: Arc<ScanTarget>,
    /// The shards to ask; `None`: all.
    shards: Option<BTreeSet<u32>>,
    /// What each partition asks for: shards with the same replicas, in one request.
    requests: Arc<Vec<Vec<u32>>>,
    encoded: Bytes,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl fmt::Debug for RemoteFragmentExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteFragmentExec")
            .field("collection", &self.target.collection.name)
            .finish()
    }
}

impl RemoteFragmentExec {
    /// Fails if the fragment cannot be shipped: it must encode, and decode again
    /// without anything only the aggregator has (such as a scalar subquery's result).
    pub fn try_new(fragment: Arc<dyn ExecutionPlan>, target: Arc<ScanTarget>) -> DfResult<Self> {
        static DECODE_CONTEXT: OnceLock<Arc<TaskContext>> = OnceLock::new();
        let encoded = physical_plan_to_bytes_with_extension_codec(fragment.clone(), &ScanCodec)?;
        let context = DECODE_CONTEXT.get_or_init(|| {
            let context = SessionContext::new();
            altdb_common::register_functions(&context);
            context.task_ctx()
        });
        physical_plan_from_bytes_with_extension_codec(&encoded, context, &ScanCodec)?;
        Ok(Self::encoded(fragment, target, encoded))
    }

    /// This fragment with other literal values in its filters (a kept plan run
    /// for another statement of its shape): encoded again, and routed again
    /// by its `_id` filter; it decodes like the fragment it replaces, which
    /// [`Self::try_new`] checked.
    pub fn with_values(&self, fragment: Arc<dyn ExecutionPlan>) -> DfResult<Self> {
        let encoded = physical_plan_to_bytes_with_extension_codec(fragment.clone(), &ScanCodec)?;
        Ok(Self::encoded(fragment, self.target.clone(), encoded))
    }

    fn encoded(fragment: Arc<dyn ExecutionPlan>, target: Arc<ScanTarget>, encoded: Bytes) -> Self {
        let properties = Arc::new(
            fragment
                .properties()
                .as_ref()
                .clone()
                .with_scheduling_type(SchedulingType::Cooperative),
        );
        let shards = pinned_shards(&fragment, target.collection.num_shards);
        let requests = Arc::new(plan_requests(&target, shards.as_ref()));
        Self {
            fragment,
            target,
            shards,
            requests,
            encoded,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl RemoteFragmentExec {
    /// Whether its filter pins the fragment to the shards of the `_id`s it names.
    pub fn is_key_lookup(&self) -> bool {
        self.shards.is_some()
    }
}

impl DisplayAs for RemoteFragmentExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut steps = Vec::new();
        let mut node = Some(self.fragment.clone());
        while let Some(current) = node {
            steps.push(
                displayable(current.as_ref())
                    .one_line()
                    .to_string()
                    .trim()
                    .to_string(),
            );
            node = current.children().first().map(|c| (*c).clone());
        }
        let shards = match &self.shards {
            Some(pinned) => {
                let listed: Vec<String> = pinned.iter().map(u32::to_string).collect();
                format!(
                    "{} of {} shards ({}, by _id)",
                    pinned.len(),
                    self.target.collection.num_shards,
                    listed.join(", ")
                )
            }
            None => format!("{} shards", self.target.collection.num_shards),
        };
        let requests = self.requests.len();
        write!(
            f,
            "RemoteFragmentExec: on {shards} of `{}` in {requests} request{}: [{}]",
            self.target.collection.name,
            if requests == 1 { "" } else { "s" },
            steps.join(" <- ")
        )
    }
}

/// The shards a fragment's `_id` filter confines it to; `None` when it may match
/// on every shard. Only a filter right on the scan counts: operators below the
/// first filter are per-shard, so they see no rows on the other shards either.
fn pinned_shards(fragment: &Arc<dyn ExecutionPlan>, num_shards: u32) -> Option<BTreeSet<u32>> {
    let mut node = fragment.clone();
    loop {
        let child = node.children().first().map(|c| (*c).clone())?;
        if let Some(filter) = node.downcast_ref::<FilterExec>() {
            if child.is::<DistributedScanExec>() {
                return shards_for_filter(filter.predicate(), num_shards);
            }
        }
        node = child;
    }
}

/// The shards each partition asks for: grouped by the leaves that hold them (the
/// same replicas, in the same order, so a group fails over as one), in the
/// order of the leaves; each shard alone when profiling.
fn plan_requests(target: &ScanTarget, pinned: Option<&BTreeSet<u32>>) -> Vec<Vec<u32>> {
    let mut shards: Vec<u32> = match pinned {
        Some(pinned) => pinned.iter().copied().collect(),
        None => (0..target.collection.num_shards).collect(),
    };
    if target.only_leaf.is_some() {
        shards.retain(|&shard| !target.copies(shard).is_empty());
    }
    if target.profile {
        return shards.into_iter().map(|shard| vec![shard]).collect();
    }
    let mut groups: BTreeMap<Vec<String>, Vec<u32>> = BTreeMap::new();
    for shard in shards {
        let leaves = target.cluster.replica_urls(&target.collection, shard);
        groups.entry(leaves).or_default().push(shard);
    }
    groups.into_values().collect()
}

impl ExecutionPlan for RemoteFragmentExec {
    altdb_common::childless_plan_methods!("RemoteFragmentExec");

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    /// The same fragment with metrics of its own (a kept plan runs again).
    fn reset_state(self: Arc<Self>) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self {
            fragment: self.fragment.clone(),
            target: self.target.clone(),
            shards: self.shards.clone(),
            requests: self.requests.clone(),
            encoded: self.encoded.clone(),
            properties: self.properties.clone(),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let schema = self.schema();
        let Some(shards) = self.requests.get(partition).cloned() else {
            let nothing = futures::stream::empty::<DfResult<RecordBatch>>();
            return Ok(Box::pin(RecordBatchStreamAdapter::new(schema, nothing)));
        };
        let counters = FragmentCounters::new(&self.metrics, partition);
        let answered_by = Arc::new(std::sync::Mutex::new(String::new()));
        let stats = context
            .session_config()
            .get_extension::<QueryStats>()
            .unwrap_or_default();
        stats
            .shards_queried
            .fetch_add(shards.len() as u64, Ordering::Relaxed);
        let connect = open_fragments(
            self.target.clone(),
            self.encoded.clone(),
            shards.clone(),
            stats.clone(),
            answered_by.clone(),
        );
        let batch_schema = schema.clone();
        let collection_name = self.target.collection.name.clone();
        let profile = self.target.profile;
        let items = futures::stream::once(connect).try_flatten();
        let batches = items.filter_map(move |item| {
            let out = match item {
                Ok(FragmentItem::Batch(batch)) => {
                    counters.output_rows.add(batch.num_rows());
                    Some(conform(batch, &batch_schema))
                }
                Ok(FragmentItem::Metrics(metrics)) => {
                    counters.add(&metrics);
                    if let Some(profile) = metrics.profile {
                        let leaf = answered_by.lock().unwrap_or_else(|p| p.into_inner());
                        stats
                            .profiles
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(ShardProfile {
                                collection: collection_name.clone(),
                                shard: shards[0],
                                leaf: leaf.clone(),
                                profile,
                            });
                    }
                    stats
                        .rows_scanned
                        .fetch_add(metrics.rows_scanned, Ordering::Relaxed);
                    stats.merge_freshness(&metrics.source_as_of_us);
                    stats
                        .scan
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .add(&metrics.scan);
                    None
                }
                Err(error) => Some(Err(error)),
            };
            futures::future::ready(out)
        });
        let batches = if profile {
            // The leaf's profile follows its rows: read and record them all
            // before handing any on, so a consumer with rows enough (a merge
            // under a LIMIT) cannot drop the stream before its profile.
            futures::stream::once(batches.collect::<Vec<_>>())
                .flat_map(futures::stream::iter)
                .boxed()
        } else {
            batches.boxed()
        };
        Ok(make_cooperative(Box::pin(RecordBatchStreamAdapter::new(
            schema, batches,
        ))))
    }
}

/// Asks a leaf for the fragment's rows on `shards`, which share their replicas:
/// the first that can be reached answers for all of them.
async fn open_fragments(
    target: Arc<ScanTarget>,
    plan: Bytes,
    shards: Vec<u32>,
    stats: Arc<QueryStats>,
    answered_by: Arc<std::sync::Mutex<String>>,
) -> DfResult<futures::stream::BoxStream<'static, DfResult<FragmentItem>>> {
    let mut failures = Vec::new();
    // A leaf saying the placement moved on: once the newer one is here, the
    // copies it names are asked (once).
    let mut refreshed = false;
    loop {
        let epoch = target.cluster.epoch(&target.collection);
        let not_owner =
            match ask_copies(&target, &plan, &shards, epoch, &stats, &mut failures).await? {
                Asked::Answered(leaf, stream) => {
                    // Counted here: a consumer that has rows enough (a merge under a
                    // LIMIT) may stop before the leaf's metrics.
                    stats
                        .shards_responded
                        .fetch_add(shards.len() as u64, Ordering::Relaxed);
                    *answered_by.lock().unwrap_or_else(|p| p.into_inner()) = leaf.url().to_string();
                    let (collection, shards) = (target.collection.name.clone(), shards);
                    return Ok(stream
                        .map_err(move |error| rpc_to_datafusion(error, &collection, &shards))
                        .boxed());
                }
                Asked::NotAnswered { not_owner } => not_owner,
            };
        if not_owner
            && !refreshed
            && target
                .cluster
                .placement_after(&target.collection, epoch)
                .await
        {
            refreshed = true;
            // The shards may no longer share their copies: each group apart.
            let mut groups: BTreeMap<Vec<String>, Vec<u32>> = BTreeMap::new();
            for &shard in &shards {
                let leaves = target.cluster.replica_urls(&target.collection, shard);
                groups.entry(leaves).or_default().push(shard);
            }
            if groups.len() > 1 {
                let mut streams = Vec::with_capacity(groups.len());
                for group in groups.into_values() {
                    let opened = open_fragments(
                        target.clone(),
                        plan.clone(),
                        group,
                        stats.clone(),
                        answered_by.clone(),
                    );
                    streams.push(Box::pin(opened).await?);
                }
                return Ok(futures::stream::select_all(streams).boxed());
            }
            continue;
        }
        return Err(unavailable(
            &target.collection.name,
            &shards,
            failures.join("; "),
        ));
    }
}

/// What asking the copies of a group of shards gave.
enum Asked {
    /// A copy answered: its stream, from its first item.
    Answered(
        SharedLeaf,
        BoxStream<'static, Result<FragmentItem, RpcError>>,
    ),
    /// No copy answered (why is in the failures); some said the placement moved on.
    NotAnswered { not_owner: bool },
}

/// A copy asked: when it sent its first item (or failed), and its stream.
type Asking = Answering<BoxStream<'static, Result<FragmentItem, RpcError>>>;

/// Asks `leaf` for the fragment and waits for its first item (rows, or the
/// metrics of an empty answer): the moment hedging measures.
fn ask(leaf: SharedLeaf, ticket: FragmentTicket) -> Asking {
    Box::pin(async move {
        let started = Instant::now();
        let answer = async {
            let mut stream = leaf.fragment(&ticket).await?;
            let first = stream.next().await;
            Ok(futures::stream::iter(first).chain(stream).boxed())
        }
        .await;
        (leaf, started.elapsed(), answer)
    })
}

/// Asks the copies of `shards` (which share them) in order, hedged
/// ([`crate::hedging`]): a copy failing or refusing passes to the next at
/// once; one slower than its usual time has the next asked beside it; the
/// first to answer serves the shards and the others are dropped.
async fn ask_copies(
    target: &Arc<ScanTarget>,
    plan: &Bytes,
    shards: &[u32],
    epoch: u64,
    stats: &QueryStats,
    failures: &mut Vec<String>,
) -> DfResult<Asked> {
    let cluster = &target.cluster;
    // Retention is applied as of now, whenever the plan was made.
    let min_event_time_us = target
        .collection
        .retention_cutoff_us(chrono::Utc::now().timestamp_micros());
    let ticket = |leaf: &SharedLeaf| FragmentTicket {
        collection: target.collection.name.clone(),
        incarnation: target.collection.incarnation,
        shards: shards
            .iter()
            .map(|&shard| TicketShard {
                shard,
                fields_fingerprint: target
                    .remembered
                    .as_ref()
                    .map(|fields| fields.fingerprint(leaf.url(), shard)),
            })
            .collect(),
        profile: target.profile,
        epoch,
        min_event_time_us,
        plan: plan.clone(),
    };
    cluster.hedging.asked();
    let mut copies = target.copies(shards[0]).into_iter();
    let mut asking: FuturesUnordered<Asking> = FuturesUnordered::new();
    // The copies asked that have not answered; the last one's usual time is
    // what the next hedge waits for.
    let mut waiting: Vec<SharedLeaf> = Vec::new();
    // When each copy was asked.
    let mut asked_at: Vec<(String, Instant)> = Vec::new();
    // Out of hedge budget, a request still hedges a copy that stalls far
    // beyond its usual time (`Hedging::stall`).
    let mut out_of_budget = false;
    let mut not_owner = false;
    loop {
        if asking.is_empty() {
            let Some(leaf) = copies.next() else {
                return Ok(Asked::NotAnswered { not_owner });
            };
            asking.push(ask(leaf.clone(), ticket(&leaf)));
            asked_at.push((leaf.url().to_string(), Instant::now()));
            waiting.push(leaf);
        }
        let may_hedge = cluster.hedging.enabled() && copies.len() > 0;
        let hedge_after = match waiting.last() {
            Some(leaf) if out_of_budget => cluster.hedging.stall(leaf.url()),
            Some(leaf) => cluster.hedging.delay(leaf.url()),
            None => deadline::FRAGMENT_START,
        };
        tokio::select! {
            Some((leaf, elapsed, answer)) = asking.next() => {
                waiting.retain(|asked| asked.url() != leaf.url());
                match answer {
                Ok(stream) => {
                    cluster.hedging.answered(leaf.url(), elapsed);
                    // A loser silent past its stall time is hung, not slow:
                    // asked last from now on (a health probe clears it).
                    for loser in &waiting {
                        let stalled = asked_at.iter().any(|(url, at)| {
                            url == loser.url() && at.elapsed() >= cluster.hedging.stall(url)
                        });
                        if stalled {
                            cluster.suspect(loser);
                        }
                    }
                    cluster.follow_stragglers(asking, waiting, true);
                    return Ok(Asked::Answered(leaf, stream));
                }
                Err(error) if error.is_not_owner() => {
                    not_owner = true;
                    failures.push(format!("{}: {error}", leaf.url()));
                }
                Err(error) if error.is_unavailable() => {
                    cluster.suspect(&leaf);
                    failures.push(format!("{}: {error}", leaf.url()));
                }
                Err(error) => {
                    return Err(rpc_to_datafusion(error, &target.collection.name, shards))
                }
                }
            },
            _ = tokio::time::sleep(hedge_after), if may_hedge => {
                if out_of_budget || cluster.hedging.try_hedge() {
                    let leaf = copies.next().expect("a copy is left");
                    asking.push(ask(leaf.clone(), ticket(&leaf)));
                    asked_at.push((leaf.url().to_string(), Instant::now()));
                    waiting.push(leaf);
                    stats.hedged.fetch_add(1, Ordering::Relaxed);
                    out_of_budget = false;
                } else {
                    out_of_budget = true;
                }
            }
        }
    }
}

fn unavailable(collection: &str, shards: &[u32], detail: String) -> DataFusionError {
    let listed: Vec<String> = shards.iter().map(u32::to_string).collect();
    let plural = if shards.len() == 1 { "" } else { "s" };
    DataFusionError::External(Box::new(ShardUnavailable {
        collection: collection.to_string(),
        shards: format!("shard{plural} {}", listed.join(", ")),
        detail,
    }))
}

/// Per-partition metrics of a [`RemoteFragmentExec`], shown by `EXPLAIN ANALYZE`:
/// rows, rows scanned and each of the leaves' [`ScanCounts`].
struct FragmentCounters {
    output_rows: Count,
    rows_scanned: Count,
    scan: Vec<Count>,
}

impl FragmentCounters {
    fn new(metrics: &ExecutionPlanMetricsSet, partition: usize) -> Self {
        let counter = |name: &'static str| MetricBuilder::new(metrics).counter(name, partition);
        Self {
            output_rows: MetricBuilder::new(metrics).output_rows(partition),
            rows_scanned: counter("rows_scanned"),
            scan: ScanCounts::default()
                .named()
                .into_iter()
                .map(|(name, _)| counter(name))
                .collect(),
        }
    }

    fn add(&self, metrics: &FragmentMetrics) {
        let as_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        self.rows_scanned.add(as_usize(metrics.rows_scanned));
        for (counter, (_, value)) in self.scan.iter().zip(metrics.scan.named()) {
            counter.add(as_usize(value));
        }
    }
}

/// Failures of the leaf RPC as DataFusion errors the API layer can classify.
fn rpc_to_datafusion(error: RpcError, collection: &str, shards: &[u32]) -> DataFusionError {
    if error.is_stale_fields() {
        DataFusionError::External(Box::new(StaleFields(error.to_string())))
    } else if error.is_invalid_argument() {
        DataFusionError::External(Box::new(LeafRejected(error.to_string())))
    } else if error.is_unavailable() {
        unavailable(collection, shards, error.to_string())
    } else {
        DataFusionError::External(Box::new(error))
    }
}

/// Leaves rebuild the fragment's schema; adopt the aggregator's exact field metadata.
fn conform(batch: RecordBatch, schema: &SchemaRef) -> DfResult<RecordBatch> {
    if batch.schema() == *schema {
        return Ok(batch);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(schema.clone(), batch.columns().to_vec(), &options)
        .map_err(|e| DataFusionError::Internal(format!("leaf returned a mismatched batch: {e}")))
}

#[cfg(test)]
mod tests {
    use altdb_common::memory_leaf::MemoryLeaf;
    use altdb_common::rpc::SharedLeaf;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use futures::TryStreamExt;

    use super::*;

    fn target(leaves: &[Arc<MemoryLeaf>], replication: u32) -> Arc<ScanTarget> {
        let shared: Vec<SharedLeaf> = leaves.iter().map(|l| l.clone() as SharedLeaf).collect();
        let collection = serde_json::from_value(serde_json::json!({
            "name": "events", "num_shards": 4, "replication": replication,
        }))
        .unwrap();
        Arc::new(ScanTarget {
            collection,
            cluster: Cluster::with_leaves(shared),
            profile: false,
            remembered: None,
            only_leaf: None,
        })
    }

    fn leaf(url: &str, value: i64) -> Arc<MemoryLeaf> {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![value]))]).unwrap();
        Arc::new(MemoryLeaf::new(url, vec![batch]))
    }

    async fn open(
        target: &Arc<ScanTarget>,
        shards: Vec<u32>,
    ) -> (DfResult<Vec<FragmentItem>>, Arc<QueryStats>, String) {
        let stats = Arc::new(QueryStats::default());
        let answered_by = Arc::new(std::sync::Mutex::new(String::new()));
        let items = match open_fragments(
            target.clone(),
            Bytes::from_static(b"plan"),
            shards,
            stats.clone(),
            answered_by.clone(),
        )
        .await
        {
            Ok(stream) => stream.try_collect().await,
            Err(error) => Err(error),
        };
        let by = answered_by.lock().unwrap().clone();
        (items, stats, by)
    }

    fn values(items: &[FragmentItem]) -> Vec<i64> {
        items
            .iter()
            .filter_map(|item| match item {
                FragmentItem::Batch(batch) => Some(
                    batch
                        .column(0)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap()
                        .value(0),
                ),
                FragmentItem::Metrics(_) => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn shards_go_to_their_first_reachable_replica_as_one_request() {
        let leaves = [
            leaf("http://a", 1),
            leaf("http://b", 2),
            leaf("http://c", 3),
        ];
        let target = target(&leaves, 2);
        // Shards 1 and 4 share their replicas: leaf b first, then c.
        let (items, stats, by) = open(&target, vec![1, 4]).await;
        assert_eq!(values(&items.unwrap()), vec![2]);
        assert_eq!(by, "http://b");
        assert_eq!(stats.shards_responded.load(Ordering::Relaxed), 2);
        let tickets = leaves[1].tickets.lock().unwrap().clone();
        assert_eq!(tickets.len(), 1);
        let asked: Vec<u32> = tickets[0].shards.iter().map(|s| s.shard).collect();
        assert_eq!(asked, vec![1, 4]);

        // b is lost: the same request goes whole to c.
        leaves[1].go_down();
        let (items, _, by) = open(&target, vec![1, 4]).await;
        assert_eq!(values(&items.unwrap()), vec![3]);
        assert_eq!(by, "http://c");
        assert!(leaves[0].tickets.lock().unwrap().is_empty());

        // c too: the shards are unavailable, named with both failures.
        leaves[2].go_down();
        let (items, stats, _) = open(&target, vec![1, 4]).await;
        let error = items.unwrap_err().to_string();
        assert!(
            error.contains("shards 1, 4 of `events` cannot be reached"),
            "{error}"
        );
        assert!(
            error.contains("http://b") && error.contains("http://c"),
            "{error}"
        );
        assert_eq!(stats.shards_responded.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_hung_copy_is_hedged_then_suspected_and_asked_last() {
        let leaves = [
            leaf("http://a", 1),
            leaf("http://b", 2),
            leaf("http://c", 3),
        ];
        let target = target(&leaves, 2);
        // Shards 1 and 4 are asked of b first; b takes the call and hangs.
        leaves[1].stall();
        let (items, stats, by) = open(&target, vec![1, 4]).await;
        assert_eq!(values(&items.unwrap()), vec![3], "c answered for b");
        assert_eq!(by, "http://c");
        assert_eq!(stats.hedged.load(Ordering::Relaxed), 1);
        assert_eq!(stats.shards_responded.load(Ordering::Relaxed), 2);
        // The losing call is followed in the background: silent past the
        // fragment deadline, b is suspected and the next request asks c first.
        tokio::time::sleep(deadline::FRAGMENT_START + std::time::Duration::from_millis(200)).await;
        let (items, stats, by) = open(&target, vec![1, 4]).await;
        assert_eq!(values(&items.unwrap()), vec![3]);
        assert_eq!(by, "http://c");
        assert_eq!(stats.hedged.load(Ordering::Relaxed), 0);
        assert_eq!(leaves[1].tickets.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn without_replicas_a_lost_leaf_fails_its_shards() {
        let leaves = [leaf("http://a", 1), leaf("http://b", 2)];
        let target = target(&leaves, 1);
        leaves[0].go_down();
        let (items, _, _) = open(&target, vec![2]).await;
        let error = items.unwrap_err().to_string();
        assert!(
            error.contains("shard 2 of `events` cannot be reached"),
            "{error}"
        );
        assert!(leaves[1].tickets.lock().unwrap().is_empty());
    }
}
