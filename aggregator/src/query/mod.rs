//! SQL over collections: plan with DataFusion, run fragments on leaves, merge here.
//!
//! ```text
//!  Query (SQL, options, parameters) from a door: HTTP, Postgres, Flight SQL
//!           ▼
//!  SessionContext (per query, from a base state built once)
//!           │ CollectionSchemaProvider: catalog + leaf fields (remembered, see fields.rs)
//!           │ pg_catalog / information_schema over the same collections
//!           ▼
//!         logical plan (placeholders bound: params.rs) ─► physical plan
//!           ▼
//!  DistributeFragments: shard-local operators move into RemoteFragmentExec
//!           ▼
//!  execute: RemoteFragmentExec partitions stream from leaves; final aggregate,
//!           merge, joins and windows run here ─► Answer: schema, then batches
//!           (HTTP turns them into JSON rows + stats; the other doors stream them)
//! ```

pub mod distribute;
pub mod fields;
pub mod json;
pub mod lookups;
pub mod params;
pub mod pg_catalog;
pub mod plans;
pub mod remote;
pub mod shapes;
pub mod statement;
pub mod table;

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
};
use datafusion::common::tree_node::TreeNode;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::{execute_stream, ExecutionPlan};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use altdb_common::collection::CollectionSpec;
use altdb_common::columns::SCORE_COLUMN;
use altdb_common::rpc::ScanCounts;
use altdb_common::search::SEARCH_FUNCTION;

use crate::access::Principal;
use crate::catalog::Catalog;
use crate::cluster::Cluster;
use crate::error::{AggregatorError, Result};
use crate::fences::{self, FenceArgs, Fences};
use distribute::DistributeFragments;
use fields::FieldsCache;
use lookups::GatherLookups;
pub use params::Params;
use plans::{PlanCache, PlanKey};
use remote::{LeafRejected, QueryStats, ShardUnavailable, StaleFields};
use table::{CollectionSchemaProvider, TableOptions};

/// A result column.
#[derive(Debug, Serialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub sql_type: String,
}

/// Per-statement options of `POST /v1/query`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryOptions {
    /// `false` makes leaves scan every segment instead of using their indexes
    /// (to compare; answers are the same).
    pub use_index: bool,
    /// Reads only the copies on this leaf (its id, or its URL): every shard
    /// with a ready copy there is read from it, the others are not read at
    /// all (`stats.shards_queried` says how many were). To compare the copies
    /// of a shard; never for answers.
    pub only_leaf: Option<String>,
    /// Read-your-writes: the fence (or fences) a write answered with; the
    /// statement runs once every copy it may read holds what they name
    /// ([`crate::fences`]), waiting at most `fence_timeout_ms`.
    pub fence: Option<FenceArgs>,
    /// How long to wait for `fence` (10,000 by default, at most 60,000).
    pub fence_timeout_ms: Option<u64>,
}

impl Default for QueryOptions {
    fn default() -> Self {
        Self {
            use_index: true,
            only_leaf: None,
            fence: None,
            fence_timeout_ms: None,
        }
    }
}

/// What a query reports besides its rows.
#[derive(Debug, Serialize)]
pub struct Stats {
    pub elapsed_ms: f64,
    pub rows_scanned: u64,
    pub shards_queried: u64,
    pub shards_responded: u64,
    /// Fragments also sent to another copy of their shards because the copy
    /// asked first was slower than usual ([`crate::hedging`]).
    pub hedged: u64,
    /// Rows beyond `max_result_rows`, or beyond `max_result_bytes` of JSON, were
    /// not returned.
    pub truncated: bool,
    /// Data freshness: everything the streaming sources of the queried collections
    /// produced more than this long ago is in the answer (null without such sources).
    pub freshness_ms: Option<f64>,
    /// How long the statement waited for its fence to be reached (`options.fence`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fence_wait_ms: Option<f64>,
    /// How the leaves read: sealed segments pruned by `_event_time`, read through
    /// the index or scanned, and rows fetched by `_id`.
    pub scan: ScanCounts,
    /// Where its plan came from: `planned`, `kept` (the plan of the same
    /// statement) or `kept_for_shape` (the plan of one that differed only in
    /// the values it compares, [`shapes`]).
    pub plan: &'static str,
}

/// Where a statement's plan came from ([`Stats::plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PlanSource {
    Planned = 0,
    Kept = 1,
    KeptForShape = 2,
}

impl PlanSource {
    fn name(source: u8) -> &'static str {
        match source {
            1 => "kept",
            2 => "kept_for_shape",
            _ => "planned",
        }
    }
}

/// The answer to `POST /v1/query`.
#[derive(Debug, Serialize)]
pub struct QueryResponse {
    /// The id the statement ran under (HTTP door).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_id: Option<String>,
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Value>>,
    pub stats: Stats,
    /// What kind of statement it was, for latency metrics ([`query_class`]).
    #[serde(skip)]
    pub class: &'static str,
}

/// What one statement may take.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// Time to answer, planning included.
    pub timeout: Duration,
    /// Rows returned at most; the answer says `truncated`.
    pub max_rows: usize,
    /// Bytes of JSON returned at most (about); the answer says `truncated`.
    pub max_bytes: usize,
    /// Bytes of memory on the aggregator ([`GreedyMemoryPool`] of its own).
    pub memory: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            max_rows: 100_000,
            max_bytes: 64 << 20,
            memory: 4096 << 20,
        }
    }
}

/// Plans and runs SQL against the cluster.
#[derive(Debug, Clone)]
pub struct QueryEngine {
    catalog: Arc<dyn Catalog>,
    cluster: Cluster,
    limits: QueryLimits,
    /// Where statements run ([`Self::with_executor`]); `None`: on the caller's task.
    executor: Option<tokio::runtime::Handle>,
    /// Functions, rules and config every statement's session starts from.
    base: Arc<SessionState>,
    /// Collection fields of earlier statements.
    fields: Arc<FieldsCache>,
    /// Plans of earlier statements.
    plans: Arc<PlanCache>,
}

/// A spawned statement, aborted when its caller stops waiting for it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = std::result::Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl QueryEngine {
    pub fn new(catalog: Arc<dyn Catalog>, cluster: Cluster, limits: QueryLimits) -> Self {
        Self {
            catalog,
            cluster,
            limits,
            executor: None,
            base: Arc::new(base_state()),
            fields: Arc::new(FieldsCache::default()),
            plans: Arc::new(PlanCache::default()),
        }
    }

    /// Runs statements on `executor`, a runtime of their own: CPU-heavy plans
    /// then cannot starve the runtime that accepts connections and answers
    /// health checks, metrics and admission refusals (as InfluxDB IOx and
    /// GreptimeDB separate them).
    pub fn with_executor(self, executor: tokio::runtime::Handle) -> Self {
        Self {
            executor: Some(executor),
            ..self
        }
    }

    /// A session for one statement: the engine's base state (built once: its
    /// function registry takes longer to build than a needle query to answer)
    /// with a catalog of its own, resolving `specs` for this statement, and the
    /// statement's counters for its fragments to report into.
    fn context(
        &self,
        specs: &[CollectionSpec],
        stats: Arc<QueryStats>,
        tables: TableOptions,
        principal: &Principal,
    ) -> Result<(SessionContext, Arc<CollectionSchemaProvider>)> {
        let names = specs
            .iter()
            .filter(|spec| principal.require_read(&spec.name).is_ok())
            .map(|spec| spec.name.clone())
            .collect();
        let provider = Arc::new(CollectionSchemaProvider::new(
            self.catalog.clone(),
            self.cluster.clone(),
            self.fields.clone(),
            names,
            tables,
            self.base.table_functions().keys().cloned().collect(),
            principal.clone(),
        ));
        let catalog = MemoryCatalogProvider::new();
        // `commons.<collection>` too: Rockset's one workspace, for SQL moved from it.
        for schema in [pg_catalog::PUBLIC, crate::rockset::WORKSPACE] {
            catalog
                .register_schema(schema, provider.clone())
                .map_err(|e| AggregatorError::Internal(e.to_string()))?;
        }
        for which in [
            pg_catalog::CatalogSchema::PgCatalog,
            pg_catalog::CatalogSchema::InformationSchema,
        ] {
            catalog
                .register_schema(
                    which.name(),
                    Arc::new(pg_catalog::CatalogSchemaProvider::new(
                        which,
                        provider.clone(),
                    )),
                )
                .map_err(|e| AggregatorError::Internal(e.to_string()))?;
        }
        let catalogs = MemoryCatalogProviderList::new();
        catalogs.register_catalog("datafusion".to_string(), Arc::new(catalog));
        // A clone of the base state, not a rebuild: building a state registers
        // every function anew, a tenth of a short statement's planning. The
        // statement runs with a runtime of its own ([`Self::task_context`]).
        let mut state = SessionState::clone(&self.base);
        state.register_catalog_list(Arc::new(catalogs));
        state.config_mut().set_extension(stats);
        Ok((SessionContext::new_with_state(state), provider))
    }

    /// The task context a statement runs in: the base state's, with the
    /// statement's counters and a runtime of its own ([`Self::runtime`]).
    fn task_context(&self, stats: Arc<QueryStats>) -> Result<Arc<TaskContext>> {
        Ok(Arc::new(altdb_common::plan::execution_context(
            self.base.session_id().to_string(),
            self.base.config().clone().with_extension(stats),
            self.runtime()?,
        )))
    }

    /// The runtime of one statement: the base state's (its spill directory and
    /// caches) with a memory pool of its own, `query_memory` bytes.
    fn runtime(&self) -> Result<Arc<RuntimeEnv>> {
        RuntimeEnvBuilder::from_runtime_env(self.base.runtime_env())
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(self.limits.memory)))
            .build_arc()
            .map_err(|e| AggregatorError::Internal(e.to_string()))
    }

    /// Runs one SQL statement as a caller that may read everything (tests and
    /// tools; requests run [`Self::query_as`] their principal).
    pub async fn query(&self, sql: &str) -> Result<QueryResponse> {
        self.query_as(sql, &QueryOptions::default(), &Principal::open())
            .await
    }

    /// Runs one SQL statement with options for `principal` and answers in JSON
    /// ([`Self::run`] says how it runs).
    pub async fn query_as(
        &self,
        sql: &str,
        options: &QueryOptions,
        principal: &Principal,
    ) -> Result<QueryResponse> {
        let query = Query {
            sql: sql.to_string(),
            options: options.clone(),
            params: Params::None,
        };
        self.query_json(query, principal).await
    }

    /// Runs a statement with its parameters and answers in JSON: rows up to
    /// `max_result_rows` and about `max_result_bytes` of JSON (the answer says
    /// `truncated`; the statement stops there).
    pub async fn query_json(&self, query: Query, principal: &Principal) -> Result<QueryResponse> {
        let mut answer = self.run(query, principal).await?;
        let mut rows = json::Rows::new(self.limits.max_rows, self.limits.max_bytes);
        while let Some(batch) = answer.next().await {
            if !rows.append(&batch?) {
                break;
            }
        }
        let (rows, truncated) = rows.finish();
        Ok(QueryResponse {
            query_id: None,
            columns: answer
                .schema
                .fields()
                .iter()
                .map(|f| Column {
                    name: f.name().clone(),
                    sql_type: json::sql_type_name(f.data_type()),
                })
                .collect(),
            rows,
            stats: answer.stats(truncated),
            class: answer.class,
        })
    }

    /// Starts a statement for `principal`: every collection it reads must be one
    /// the principal may query (`_dlq`: read dead letters of; its rows are cut
    /// to those collections). The answer has its schema and streams its batches.
    ///
    /// It is planned with remembered collection fields when there are some; if a
    /// leaf refuses a fragment because its shard's fields changed since (or the
    /// statement fails for any reason) before [`RETRY_BUFFER_BYTES`] of results
    /// were produced, it is planned again with fresh fields. Results are held
    /// back until then, so the retry is invisible; a larger answer streams.
    ///
    /// With an executor ([`Self::with_executor`]) the statement runs there; a
    /// caller that drops the answer (or goes away, or times out) cancels it.
    pub async fn run(&self, query: Query, principal: &Principal) -> Result<Answer> {
        let fence_wait = match &query.options.fence {
            Some(args) => {
                let fences = args.fences()?;
                for fence in &fences {
                    principal.require_read(&fence.collection)?;
                }
                let timeout = query
                    .options
                    .fence_timeout_ms
                    .map_or(fences::DEFAULT_TIMEOUT, Duration::from_millis);
                Some(
                    Fences::new(self.catalog.clone(), self.cluster.clone())
                        .wait(&fences, timeout)
                        .await?,
                )
            }
            None => None,
        };
        let (head_tx, head_rx) = oneshot::channel();
        let (batches_tx, batches_rx) = mpsc::channel(2);
        let engine = self.clone();
        let principal = principal.clone();
        let produce = async move {
            engine
                .produce(&query, &principal, head_tx, batches_tx)
                .await
        };
        let task = AbortOnDrop(match &self.executor {
            Some(executor) => executor.spawn(produce),
            None => tokio::spawn(produce),
        });
        let head = match head_rx.await {
            Ok(head) => head?,
            Err(_) => {
                return Err(match task.await {
                    Err(error) => {
                        AggregatorError::Internal(format!("the statement's task failed: {error}"))
                    }
                    Ok(()) => AggregatorError::Internal("the statement ended unanswered".into()),
                })
            }
        };
        Ok(Answer {
            schema: head.schema,
            class: head.class,
            batches: batches_rx,
            stats: head.stats,
            specs: head.specs,
            started: head.started,
            fence_wait,
            _task: task,
            held: Vec::new(),
        })
    }

    /// Plans a statement without running it: the types of its parameters (as
    /// far as their use says) and of its result's columns. Prepared statements
    /// of the Postgres and Flight SQL doors describe themselves with it.
    pub async fn describe(&self, sql: &str, principal: &Principal) -> Result<Described> {
        let stats = Arc::new(QueryStats::default());
        let specs = self.catalog.list().await?;
        let tables = TableOptions {
            scored: is_scored(&sql.to_ascii_lowercase()),
            use_index: true,
            profile: false,
            remembered_fields: true,
            only_leaf: None,
        };
        let (context, provider) = self.context(&specs, stats, tables, principal)?;
        let plan = read_only_plan(&context, &provider, sql)
            .await
            .map_err(classify)?;
        let parameters = params::placeholders(&plan)?.into_iter().collect();
        Ok(Described {
            parameters,
            schema: Arc::new(plan.schema().as_arrow().clone()),
        })
    }

    /// Runs a statement on the task [`Self::run`] spawned: sends its head
    /// (schema or error), then its batches; an error after the head goes
    /// where the batches go.
    async fn produce(
        &self,
        query: &Query,
        principal: &Principal,
        head: oneshot::Sender<Result<Head>>,
        batches: mpsc::Sender<Result<RecordBatch>>,
    ) {
        let started = Instant::now();
        let mut head = Some(head);
        let outcome = tokio::time::timeout(
            self.limits.timeout,
            self.stream(query, principal, started, &mut head, &batches),
        )
        .await
        .unwrap_or(Err(AggregatorError::Timeout(self.limits.timeout.as_secs())));
        if let Err(error) = outcome {
            match head.take() {
                Some(head) => {
                    let _ = head.send(Err(error));
                }
                None => {
                    let _ = batches.send(Err(error)).await;
                }
            }
        }
    }

    async fn stream(
        &self,
        query: &Query,
        principal: &Principal,
        started: Instant,
        head: &mut Option<oneshot::Sender<Result<Head>>>,
        batches: &mpsc::Sender<Result<RecordBatch>>,
    ) -> Result<()> {
        let mut remembered_fields = true;
        'attempts: loop {
            let mut attempt = match self
                .start(query, principal, started, remembered_fields)
                .await
            {
                Ok(attempt) => attempt,
                Err(failed) => {
                    self.retry_or_fail(failed, remembered_fields)?;
                    remembered_fields = false;
                    continue;
                }
            };
            let mut held = Vec::new();
            let mut held_bytes = 0;
            while let Some(batch) = attempt.stream.next().await {
                let batch = match batch {
                    Ok(batch) => batch,
                    Err(error) => {
                        let failed = self.failure(&attempt, error);
                        if head.is_none() {
                            return Err(failed.error);
                        }
                        self.retry_or_fail(failed, remembered_fields)?;
                        remembered_fields = false;
                        continue 'attempts;
                    }
                };
                if head.is_none() {
                    if batches.send(Ok(batch)).await.is_err() {
                        return Ok(());
                    }
                    continue;
                }
                held_bytes += batch.get_array_memory_size();
                held.push(batch);
                if held_bytes > RETRY_BUFFER_BYTES
                    && !send_head(head, attempt.head(), batches, std::mem::take(&mut held)).await
                {
                    return Ok(());
                }
            }
            if head.is_some() && !send_head(head, attempt.head(), batches, held).await {
                return Ok(());
            }
            if attempt.profile {
                let batch = leaf_profile_batch(&attempt.schema, &attempt.stats)?;
                let _ = batches.send(Ok(batch)).await;
            }
            return Ok(());
        }
    }

    /// After a failed attempt: plan again with fresh fields if it was planned
    /// with remembered ones (forgetting them), else the error.
    fn retry_or_fail(&self, failed: Failed, remembered_fields: bool) -> Result<()> {
        if !remembered_fields || failed.remembered.is_empty() {
            return Err(failed.error);
        }
        for collection in &failed.remembered {
            self.fields.forget(collection, failed.stale);
        }
        Ok(())
    }

    /// Plans a statement (or takes its kept plan) and starts it.
    async fn start(
        &self,
        query: &Query,
        principal: &Principal,
        started: Instant,
        remembered_fields: bool,
    ) -> std::result::Result<Attempt, Failed> {
        let stats = Arc::new(QueryStats::default());
        let sql = query.sql.as_str();
        let lower = sql.to_ascii_lowercase();
        let profile = is_explain_analyze(&lower);
        let tables = TableOptions {
            scored: is_scored(&lower),
            use_index: query.options.use_index,
            profile,
            remembered_fields,
            only_leaf: query.options.only_leaf.as_deref().map(Arc::from),
        };
        let failed = |error| Failed {
            error,
            remembered: Vec::new(),
            stale: false,
        };
        let specs = self.catalog.list().await.map_err(failed)?;
        // EXPLAIN shows how a statement is planned now, so it is always
        // planned; so is one reading the copies of one leaf.
        let key = (remembered_fields
            && query.options.only_leaf.is_none()
            && !lower.trim_start().starts_with("explain"))
        .then(|| {
            PlanKey::new(
                sql,
                query.options.use_index,
                principal.dlq_scope(),
                query.params.fingerprint(),
            )
        });
        let exact = key
            .as_ref()
            .and_then(|key| self.plans.get(key, &specs, &self.fields));
        // Else its shape's plan with its values, when it compares values
        // (the shape is taken only then: an exact hit needs none).
        let shape = match (&key, &exact) {
            (Some(key), None) => shapes::Shape::of(sql).map(|shape| (key.shaped(&shape), shape)),
            _ => None,
        };
        let kept = exact.map(|kept| (kept, PlanSource::Kept)).or_else(|| {
            let (key, shape) = shape.as_ref()?;
            let kept = self
                .plans
                .get_shaped(key, &specs, &self.fields, &shape.values)?;
            Some((kept, PlanSource::KeptForShape))
        });
        if let Some((_, source)) = &kept {
            stats.plan.store(*source as u8, Ordering::Relaxed);
        }
        let mut attempt = Attempt {
            schema: Arc::new(datafusion::arrow::datatypes::Schema::empty()),
            class: "select",
            stream: Box::pin(
                datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                    Arc::new(datafusion::arrow::datatypes::Schema::empty()),
                    futures::stream::empty(),
                ),
            ),
            stats: stats.clone(),
            specs: Arc::new(Vec::new()),
            started,
            profile,
            key: key.clone(),
            shape_key: shape.as_ref().map(|(key, _)| key.clone()),
            provider: None,
            kept_collections: Vec::new(),
        };
        let planned = async {
            let (plan, task) = match kept {
                Some(((plan, collections), _)) => {
                    // A kept plan skips the schema provider that checks access
                    // when planning; its collections are checked here instead.
                    for collection in &collections {
                        principal
                            .require_read(collection)
                            .map_err(|e| DataFusionError::External(Box::new(e)))?;
                    }
                    attempt.kept_collections = collections;
                    let task = self
                        .task_context(stats.clone())
                        .map_err(|e| DataFusionError::External(Box::new(e)))?;
                    (plan, task)
                }
                None => {
                    let (context, provider) = self
                        .context(&specs, stats.clone(), tables.clone(), principal)
                        .map_err(|e| DataFusionError::External(Box::new(e)))?;
                    attempt.provider = Some(provider.clone());
                    let logical = read_only_plan(&context, &provider, sql).await?;
                    let logical = query
                        .params
                        .bind(logical)
                        .map_err(|e| DataFusionError::External(Box::new(e)))?;
                    let frame = context.execute_logical_plan(logical).await?;
                    let logical = frame.logical_plan().clone();
                    let plan = frame.create_physical_plan().await?;
                    if let Some(key) = &key {
                        self.plans.put(key.clone(), &specs, &logical, &plan);
                    }
                    if let Some((key, shape)) = &shape {
                        self.plans
                            .put_shaped(key.clone(), &specs, &logical, &plan, shape);
                    }
                    let task = self
                        .task_context(stats.clone())
                        .map_err(|e| DataFusionError::External(Box::new(e)))?;
                    (plan, task)
                }
            };
            let schema: SchemaRef = plan.schema();
            let class = query_class(&plan, tables.scored);
            let stream = execute_stream(plan, task)?;
            Ok::<_, DataFusionError>((schema, class, stream))
        };
        match planned.await {
            Ok((schema, class, stream)) => {
                attempt.schema = schema;
                attempt.class = class;
                attempt.stream = stream;
                attempt.specs = Arc::new(specs);
                Ok(attempt)
            }
            Err(error) => Err(self.failure(&attempt, error)),
        }
    }

    /// What an attempt's error means: the plan is not kept; which collections
    /// it planned with remembered fields (to plan again with fresh ones).
    fn failure(&self, attempt: &Attempt, error: DataFusionError) -> Failed {
        for key in attempt.key.iter().chain(&attempt.shape_key) {
            self.plans.forget(key);
        }
        let stale = matches!(
            error.find_root(),
            DataFusionError::External(inner) if inner.is::<StaleFields>()
        );
        let remembered = match &attempt.provider {
            Some(provider) => std::mem::take(
                &mut *provider
                    .remembered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            ),
            None => attempt.kept_collections.clone(),
        };
        Failed {
            error: classify(error),
            remembered,
            stale,
        }
    }
}

/// Results held back before any is sent, so that a statement failing early
/// (a leaf refusing a fragment planned with stale fields) can be planned again
/// unseen; past this the answer streams.
pub const RETRY_BUFFER_BYTES: usize = 4 << 20;

/// Sends the head of an answer and the batches held back; false: the caller
/// went away.
async fn send_head(
    head: &mut Option<oneshot::Sender<Result<Head>>>,
    value: Head,
    batches: &mpsc::Sender<Result<RecordBatch>>,
    held: Vec<RecordBatch>,
) -> bool {
    let Some(sender) = head.take() else {
        return true;
    };
    let sent = sender.send(Ok(value));
    if sent.is_err() {
        return false;
    }
    for batch in held {
        if batches.send(Ok(batch)).await.is_err() {
            return false;
        }
    }
    true
}

/// `search(..)` or `_score` in a statement: its collections are read scored.
fn is_scored(lower: &str) -> bool {
    lower.contains(SEARCH_FUNCTION) || lower.contains(SCORE_COLUMN)
}

/// A statement and what it runs with.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub sql: String,
    pub options: QueryOptions,
    pub params: Params,
}

impl Query {
    pub fn new(sql: impl Into<String>) -> Self {
        Self {
            sql: sql.into(),
            ..Self::default()
        }
    }
}

/// What [`QueryEngine::describe`] finds.
#[derive(Debug, Clone)]
pub struct Described {
    /// Placeholders (`$1`, `:name`) with the types their use implies.
    pub parameters: Vec<(String, Option<datafusion::arrow::datatypes::DataType>)>,
    pub schema: SchemaRef,
}

/// What a statement's task sends first.
struct Head {
    schema: SchemaRef,
    class: &'static str,
    stats: Arc<QueryStats>,
    specs: Arc<Vec<CollectionSpec>>,
    started: Instant,
}

/// A running statement's answer: its columns, then its batches as they come.
/// Dropping it cancels the statement.
pub struct Answer {
    pub schema: SchemaRef,
    /// What kind of statement it is, for latency metrics ([`query_class`]).
    pub class: &'static str,
    batches: mpsc::Receiver<Result<RecordBatch>>,
    stats: Arc<QueryStats>,
    specs: Arc<Vec<CollectionSpec>>,
    started: Instant,
    /// How long the statement waited for its fence.
    fence_wait: Option<Duration>,
    /// The statement's task, aborted when the answer is dropped.
    _task: AbortOnDrop<()>,
    /// Kept as long as the answer is (an admission turn).
    held: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("schema", &self.schema)
            .field("class", &self.class)
            .finish_non_exhaustive()
    }
}

impl Answer {
    /// The next batch; `None` at the end.
    pub async fn next(&mut self) -> Option<Result<RecordBatch>> {
        self.batches.recv().await
    }

    /// Keeps `value` (an admission turn) until the answer is dropped.
    pub fn hold(&mut self, value: impl std::any::Any + Send + Sync) {
        self.held.push(Box::new(value));
    }

    /// The batches as a stream that keeps the statement running while it is.
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<RecordBatch>> + Send {
        futures::stream::unfold(self, |mut answer| async move {
            let batch = answer.next().await?;
            Some((batch, answer))
        })
    }

    /// What the statement reports besides its rows, so far.
    pub fn stats(&self, truncated: bool) -> Stats {
        Stats {
            elapsed_ms: self.started.elapsed().as_secs_f64() * 1000.0,
            rows_scanned: self.stats.rows_scanned.load(Ordering::Relaxed),
            shards_queried: self.stats.shards_queried.load(Ordering::Relaxed),
            shards_responded: self.stats.shards_responded.load(Ordering::Relaxed),
            hedged: self.stats.hedged.load(Ordering::Relaxed),
            truncated,
            freshness_ms: freshness_ms(&self.stats, &self.specs),
            fence_wait_ms: self.fence_wait.map(|d| d.as_secs_f64() * 1000.0),
            scan: *self.stats.scan.lock().unwrap_or_else(|p| p.into_inner()),
            plan: PlanSource::name(self.stats.plan.load(Ordering::Relaxed)),
        }
    }
}

impl Attempt {
    fn head(&self) -> Head {
        Head {
            schema: self.schema.clone(),
            class: self.class,
            stats: self.stats.clone(),
            specs: self.specs.clone(),
            started: self.started,
        }
    }
}

/// One attempt at a statement, started.
struct Attempt {
    schema: SchemaRef,
    class: &'static str,
    stream: datafusion::execution::SendableRecordBatchStream,
    stats: Arc<QueryStats>,
    specs: Arc<Vec<CollectionSpec>>,
    started: Instant,
    profile: bool,
    key: Option<PlanKey>,
    /// The key of its shape's plan ([`shapes`]), if it compares values.
    shape_key: Option<PlanKey>,
    /// The schema provider it was planned with (none: a kept plan).
    provider: Option<Arc<CollectionSchemaProvider>>,
    /// The collections of a kept plan.
    kept_collections: Vec<String>,
}

/// The class a statement's latency is counted under: `explain`, `search`
/// (ranked or filtered by `search()`), `aggregate`, `top_k` (a sort with a
/// limit) or `select`.
fn query_class(plan: &Arc<dyn ExecutionPlan>, scored: bool) -> &'static str {
    let has = |test: fn(&dyn ExecutionPlan) -> bool| {
        plan.exists(|node| Ok(test(node.as_ref())))
            .expect("visiting a plan does not fail")
    };
    if matches!(plan.name(), "ExplainExec" | "AnalyzeExec") {
        "explain"
    } else if scored {
        "search"
    } else if has(|node| node.name() == "AggregateExec") {
        "aggregate"
    } else if has(|node| node.name().starts_with("Sort") && node.fetch().is_some()) {
        "top_k"
    } else {
        "select"
    }
}

/// Why an attempt at a statement failed.
struct Failed {
    error: AggregatorError,
    /// Collections it planned with remembered fields.
    remembered: Vec<String>,
    /// A leaf refused a fragment: its shard's fields changed since they were remembered.
    stale: bool,
}

/// The session state statements start from.
fn base_state() -> SessionState {
    let mut config = SessionConfig::new()
        .with_target_partitions(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .with_information_schema(false)
        .with_create_default_catalog_and_schema(false);
    let options = config.options_mut();
    // Partition-local operators must sit right on the scan to be shipped to leaves.
    options.optimizer.enable_round_robin_repartition = false;
    // No dynamic filters (top-k, join, aggregate) here: they are runtime state
    // pushed into other operators, which a kept plan run again would carry over
    // (see plans.rs). The master switch alone does not turn the three off when
    // set field by field.
    options.optimizer.enable_dynamic_filter_pushdown = false;
    options.optimizer.enable_topk_dynamic_filter_pushdown = false;
    options.optimizer.enable_join_dynamic_filter_pushdown = false;
    options.optimizer.enable_aggregate_dynamic_filter_pushdown = false;
    // `0.06 + 0.01` is exactly 0.07, as in SQL and DuckDB: literals with a decimal
    // point are decimals, not binary floats (TPC-H q6 depends on it).
    options.sql_parser.parse_float_as_decimal = true;
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_physical_optimizer_rule(Arc::new(DistributeFragments))
        .with_physical_optimizer_rule(Arc::new(GatherLookups))
        .build();
    let context = SessionContext::new_with_state(state);
    altdb_common::register_functions(&context);
    pg_catalog::register_functions(&context);
    context.state()
}

/// `EXPLAIN ANALYZE ..` (any spacing and case; `lower` is lowercased).
fn is_explain_analyze(lower: &str) -> bool {
    let mut words = lower.split_whitespace();
    words.next() == Some("explain") && words.next() == Some("analyze")
}

/// `EXPLAIN ANALYZE` rows after DataFusion's plan with metrics: per shard, the
/// fragment its leaf ran (with the leaf's operator metrics) and how each segment
/// was read — pruned, through the index, or scanned — with the rows read.
fn leaf_profile_batch(schema: &SchemaRef, stats: &QueryStats) -> Result<RecordBatch> {
    let mut profiles = stats
        .profiles
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    profiles.sort_by(|a, b| (&a.collection, a.shard).cmp(&(&b.collection, b.shard)));
    let mut kinds = Vec::new();
    let mut plans = Vec::new();
    for shard in profiles {
        let mut text = shard.profile.plan.clone();
        let _ = writeln!(text, "elapsed: {:.2} ms", shard.profile.elapsed_ms);
        if shard.profile.reads.is_empty() {
            text.push_str("reads: none");
        } else {
            text.push_str("reads:");
            for read in &shard.profile.reads {
                let _ = write!(text, "\n  {read}");
            }
        }
        kinds.push(format!(
            "Leaf fragment `{}` shard {} on {}",
            shard.collection, shard.shard, shard.leaf
        ));
        plans.push(text);
    }
    let columns = [kinds, plans]
        .into_iter()
        .zip(schema.fields())
        .map(|(values, field)| {
            let array: ArrayRef = Arc::new(StringArray::from(values));
            datafusion::arrow::compute::cast(&array, field.data_type())
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| AggregatorError::Internal(format!("profile rows: {e}")))?;
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| AggregatorError::Internal(format!("profile rows: {e}")))
}

/// The worst freshness over the current sources of the collections a query read.
fn freshness_ms(stats: &QueryStats, specs: &[CollectionSpec]) -> Option<f64> {
    let as_of = stats
        .source_as_of_us
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let oldest = as_of
        .iter()
        .filter(|(key, _)| specs.iter().any(|s| crate::sources::is_live_source(s, key)))
        .map(|(_, t)| *t)
        .min()?;
    let now = chrono::Utc::now().timestamp_micros();
    Some((now - oldest).max(0) as f64 / 1000.0)
}

/// Plans `sql` if it is a query (`SELECT`, `WITH`, `VALUES`, `EXPLAIN` of one),
/// after the rewrites of [`statement`]; its placeholders stay in the plan.
///
/// Anything else is refused before its tables are looked up, so every collection
/// the planner looks up is one a query reads, and a missing one is reported as
/// such by the schema provider ([`AggregatorError::CollectionNotFound`]).
async fn read_only_plan(
    context: &SessionContext,
    provider: &CollectionSchemaProvider,
    sql: &str,
) -> std::result::Result<LogicalPlan, DataFusionError> {
    let refused = |error: AggregatorError| DataFusionError::External(Box::new(error));
    altdb_common::sql_guard::check_parse_cost(sql)
        .map_err(|why| refused(AggregatorError::InvalidSql(why)))?;
    let state = context.state();
    let dialect = state.config().options().sql_parser.dialect;
    let mut statement = state.sql_to_statement(sql, &dialect)?;
    statement::check_read_only(&statement).map_err(refused)?;
    statement::scientific_literals_as_double(&mut statement);
    // Before the table references are resolved: it qualifies catalog tables.
    statement::rewrite_postgres_idioms(&mut statement, |name| {
        datafusion::catalog::SchemaProvider::table_exist(provider, name)
    });
    let mut fields = std::collections::BTreeSet::new();
    for reference in state.resolve_table_references(&statement)? {
        // Catalog tables (`pg_catalog.pg_class`) are not collections.
        if reference.schema().is_some_and(|schema| {
            schema != pg_catalog::PUBLIC && schema != crate::rockset::WORKSPACE
        }) {
            continue;
        }
        if let Some(collection) = provider.collection_fields(reference.table()).await? {
            fields.extend(collection.fields.fields.keys().cloned());
        }
    }
    statement::resolve_identifiers(&mut statement, &fields).map_err(refused)?;
    statement::rewrite_exists_in_projections(&mut statement);
    let plan = state.statement_to_plan(statement).await?;
    // The check of the statement's kind above is the rule; this is its backstop.
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)?;
    Ok(plan)
}

/// Turns a DataFusion error into an API error with an actionable message.
fn classify(error: DataFusionError) -> AggregatorError {
    use datafusion::common::SchemaError;
    let root = error.find_root();
    match root {
        DataFusionError::External(inner) => {
            if let Some(e) = inner.downcast_ref::<AggregatorError>() {
                return e.clone();
            }
            if let Some(e) = inner.downcast_ref::<ShardUnavailable>() {
                return AggregatorError::Unavailable(e.to_string());
            }
            if let Some(e) = inner.downcast_ref::<LeafRejected>() {
                return AggregatorError::InvalidSql(e.to_string());
            }
            AggregatorError::Internal(inner.to_string())
        }
        DataFusionError::SchemaError(schema_error, _) => match schema_error.as_ref() {
            SchemaError::FieldNotFound {
                field,
                valid_fields,
            } => {
                let mut known: Vec<String> = valid_fields.iter().map(|c| c.name.clone()).collect();
                known.sort();
                known.dedup();
                let shown = known
                    .iter()
                    .take(30)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut message = format!("column `{}` does not exist", field.flat_name());
                if field.relation.is_some() {
                    message.push_str(QUOTE_HINT);
                }
                if let Some(near) = statement::nearest(&field.name, &known) {
                    message.push_str(&format!("; did you mean `{near}`?"));
                }
                message.push_str(&format!("; available columns: {shown}"));
                AggregatorError::UnknownColumn(message)
            }
            other => AggregatorError::InvalidSql(other.to_string()),
        },
        DataFusionError::SQL(error, _) => {
            AggregatorError::InvalidSql(statement::describe_parser_error(error))
        }
        DataFusionError::Plan(_) | DataFusionError::NotImplemented(_) => {
            let mut message = strip_prefix(&root.to_string());
            if message.contains("Dot access") {
                message.push_str(QUOTE_HINT);
            }
            AggregatorError::InvalidSql(message)
        }
        DataFusionError::ResourcesExhausted(message) => {
            AggregatorError::ResourcesExhausted(message.clone())
        }
        DataFusionError::ArrowError(..) | DataFusionError::Execution(_) => {
            AggregatorError::InvalidSql(strip_prefix(&root.to_string()))
        }
        other => AggregatorError::Internal(other.to_string()),
    }
}

const QUOTE_HINT: &str =
    "; nested fields are dotted column names and must be quoted, e.g. \"user.geo.city\"";

/// DataFusion's message as one sentence: without its category prefix, its lines
/// joined (`Invalid function 'x'.\nDid you mean 'y'?` reads `Invalid function 'x';
/// did you mean 'y'?`).
fn strip_prefix(message: &str) -> String {
    let mut rest = message;
    for prefix in [
        "Error during planning: ",
        "SQL error: ",
        "This feature is not implemented: ",
        "Execution error: ",
    ] {
        if let Some(stripped) = rest.strip_prefix(prefix) {
            rest = stripped;
            break;
        }
    }
    let lines: Vec<&str> = rest
        .lines()
        .map(|line| line.trim().trim_end_matches('.'))
        .filter(|line| !line.is_empty())
        .collect();
    let mut sentence = String::new();
    for (i, line) in lines.iter().enumerate() {
        if i == 0 {
            sentence.push_str(line);
            continue;
        }
        sentence.push_str("; ");
        let mut chars = line.chars();
        if let Some(first) = chars.next() {
            sentence.extend(first.to_lowercase());
            sentence.push_str(chars.as_str());
        }
    }
    sentence
}
