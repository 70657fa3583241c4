//! SQL over collections: plan with DataFusion, run fragments on leaves, merge here.
//!
//! ```text
//!  SQL ─► SessionContext (per query, from a base state built once)
//!           │ CollectionSchemaProvider: catalog + leaf fields (remembered, see fields.rs)
//!           ▼
//!         logical plan ─► physical plan
//!           ▼
//!  DistributeFragments: shard-local operators move into RemoteFragmentExec
//!           ▼
//!  execute: RemoteFragmentExec partitions stream from leaves; final aggregate,
//!           merge, joins and windows run here ─► JSON rows + stats
//! ```

pub mod distribute;
pub mod fields;
pub mod json;
pub mod lookups;
pub mod plans;
pub mod remote;
pub mod statement;
pub mod table;

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
use datafusion::physical_plan::{execute_stream, ExecutionPlan};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use altdb_common::collection::CollectionSpec;
use altdb_common::columns::SCORE_COLUMN;
use altdb_common::rpc::ScanCounts;
use altdb_common::search::SEARCH_FUNCTION;

use crate::access::Principal;
use crate::catalog::Catalog;
use crate::cluster::Cluster;
use crate::error::{AggregatorError, Result};
use distribute::DistributeFragments;
use fields::FieldsCache;
use lookups::GatherLookups;
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
}

impl Default for QueryOptions {
    fn default() -> Self {
        Self { use_index: true }
    }
}

/// What a query reports besides its rows.
#[derive(Debug, Serialize)]
pub struct Stats {
    pub elapsed_ms: f64,
    pub rows_scanned: u64,
    pub shards_queried: u64,
    pub shards_responded: u64,
    /// Rows beyond `max_result_rows`, or beyond `max_result_bytes` of JSON, were
    /// not returned.
    pub truncated: bool,
    /// Data freshness: everything the streaming sources of the queried collections
    /// produced more than this long ago is in the answer (null without such sources).
    pub freshness_ms: Option<f64>,
    /// How the leaves read: sealed segments pruned by `_event_time`, read through
    /// the index or scanned, and rows fetched by `_id`.
    pub scan: ScanCounts,
}

/// The answer to `POST /v1/query`.
#[derive(Debug, Serialize)]
pub struct QueryResponse {
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
        catalog
            .register_schema("public", provider.clone())
            .map_err(|e| AggregatorError::Internal(e.to_string()))?;
        let catalogs = MemoryCatalogProviderList::new();
        catalogs.register_catalog("datafusion".to_string(), Arc::new(catalog));
        let mut state = SessionStateBuilder::new_from_existing(SessionState::clone(&self.base))
            .with_runtime_env(self.runtime()?)
            .build();
        state.register_catalog_list(Arc::new(catalogs));
        state.config_mut().set_extension(stats);
        Ok((SessionContext::new_with_state(state), provider))
    }

    /// The task context a kept plan runs in: the base state's, with the
    /// statement's counters.
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

    /// Runs one SQL statement with options for `principal`: every collection it
    /// reads must be one the principal may query (`_dlq`: read dead letters of;
    /// its rows are cut to those collections).
    ///
    /// It is planned with remembered collection fields when there are some; if a
    /// leaf refuses a fragment because its shard's fields changed since (or the
    /// statement fails for any reason), it is planned again with fresh fields.
    ///
    /// With an executor ([`Self::with_executor`]) the statement runs there, and a
    /// caller that goes away (or times out) cancels it.
    pub async fn query_as(
        &self,
        sql: &str,
        options: &QueryOptions,
        principal: &Principal,
    ) -> Result<QueryResponse> {
        let Some(executor) = &self.executor else {
            return self.run_statement(sql, options, principal).await;
        };
        let (engine, sql, options, principal) = (
            self.clone(),
            sql.to_string(),
            options.clone(),
            principal.clone(),
        );
        let task = AbortOnDrop(
            executor.spawn(async move { engine.run_statement(&sql, &options, &principal).await }),
        );
        match task.await {
            Ok(answer) => answer,
            Err(error) => Err(AggregatorError::Internal(format!(
                "the statement's task failed: {error}"
            ))),
        }
    }

    async fn run_statement(
        &self,
        sql: &str,
        options: &QueryOptions,
        principal: &Principal,
    ) -> Result<QueryResponse> {
        let started = Instant::now();
        let run = async {
            let failed = match self.attempt(sql, options, principal, started, true).await {
                Ok(answer) => return Ok(answer),
                Err(failed) => failed,
            };
            if failed.remembered.is_empty() {
                return Err(failed.error);
            }
            for collection in &failed.remembered {
                self.fields.forget(collection, failed.stale);
            }
            self.attempt(sql, options, principal, started, false)
                .await
                .map_err(|failed| failed.error)
        };
        match tokio::time::timeout(self.limits.timeout, run).await {
            Err(_) => Err(AggregatorError::Timeout(self.limits.timeout.as_secs())),
            Ok(answer) => answer,
        }
    }

    /// Plans and runs a statement once; `remembered_fields`: plan with remembered
    /// collection fields where there are some.
    async fn attempt(
        &self,
        sql: &str,
        options: &QueryOptions,
        principal: &Principal,
        started: Instant,
        remembered_fields: bool,
    ) -> std::result::Result<QueryResponse, Failed> {
        let stats = Arc::new(QueryStats::default());
        let lower = sql.to_ascii_lowercase();
        let profile = is_explain_analyze(&lower);
        let tables = TableOptions {
            scored: lower.contains(SEARCH_FUNCTION) || lower.contains(SCORE_COLUMN),
            use_index: options.use_index,
            profile,
            remembered_fields,
        };
        let failed = |error| Failed {
            error,
            remembered: Vec::new(),
            stale: false,
        };
        let specs = self.catalog.list().await.map_err(failed)?;
        // EXPLAIN shows how a statement is planned now, so it is always planned.
        let key = (remembered_fields && !lower.trim_start().starts_with("explain"))
            .then(|| PlanKey::new(sql, options.use_index, principal.dlq_scope()));
        let kept = key
            .as_ref()
            .and_then(|key| self.plans.get(key, &specs, &self.fields));
        let (statement, provider, kept_collections) = match kept {
            Some((plan, collections)) => {
                // A kept plan skips the schema provider that checks access when
                // planning; its collections are checked here instead.
                for collection in &collections {
                    principal.require_read(collection).map_err(failed)?;
                }
                (Statement::Kept(plan), None, collections)
            }
            None => {
                let (context, provider) = self
                    .context(&specs, stats.clone(), tables, principal)
                    .map_err(failed)?;
                (
                    Statement::Plan(context, provider.clone()),
                    Some(provider),
                    Vec::new(),
                )
            }
        };
        let run = async {
            let (plan, task) = match statement {
                Statement::Kept(plan) => (
                    plan,
                    self.task_context(stats.clone())
                        .map_err(|e| DataFusionError::External(Box::new(e)))?,
                ),
                Statement::Plan(context, provider) => {
                    let frame = read_only_frame(&context, &provider, sql).await?;
                    let logical = frame.logical_plan().clone();
                    let plan = frame.create_physical_plan().await?;
                    if let Some(key) = &key {
                        self.plans.put(key.clone(), &specs, &logical, &plan);
                    }
                    (plan, context.task_ctx())
                }
            };
            let schema: SchemaRef = plan.schema();
            let class = query_class(&plan, tables.scored);
            let mut stream = execute_stream(plan, task)?;
            let mut rows = json::Rows::new(self.limits.max_rows, self.limits.max_bytes);
            while let Some(batch) = stream.next().await {
                if !rows.append(&batch?) {
                    break;
                }
            }
            let (rows, truncated) = rows.finish();
            Ok::<_, DataFusionError>((schema, rows, truncated, class))
        };
        let (schema, mut rows, truncated, class) = run.await.map_err(|error| {
            if let Some(key) = &key {
                self.plans.forget(key);
            }
            let stale = matches!(
                error.find_root(),
                DataFusionError::External(inner) if inner.is::<StaleFields>()
            );
            let remembered = match &provider {
                Some(provider) => std::mem::take(
                    &mut *provider
                        .remembered
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()),
                ),
                None => kept_collections,
            };
            Failed {
                error: classify(error),
                remembered,
                stale,
            }
        })?;
        if profile {
            rows.extend(leaf_profile_rows(&stats));
        }
        let freshness_ms = freshness_ms(&stats, &specs);
        let scan = *stats.scan.lock().unwrap_or_else(|p| p.into_inner());
        Ok(QueryResponse {
            columns: schema
                .fields()
                .iter()
                .map(|f| Column {
                    name: f.name().clone(),
                    sql_type: json::sql_type_name(f.data_type()),
                })
                .collect(),
            rows,
            stats: Stats {
                elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
                rows_scanned: stats.rows_scanned.load(Ordering::Relaxed),
                shards_queried: stats.shards_queried.load(Ordering::Relaxed),
                shards_responded: stats.shards_responded.load(Ordering::Relaxed),
                truncated,
                freshness_ms,
                scan,
            },
            class,
        })
    }
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

/// How a statement gets its physical plan.
enum Statement {
    /// Planned in this session.
    Plan(SessionContext, Arc<CollectionSchemaProvider>),
    /// Kept from an earlier run of the same statement.
    Kept(Arc<dyn datafusion::physical_plan::ExecutionPlan>),
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
fn leaf_profile_rows(stats: &QueryStats) -> Vec<Vec<Value>> {
    let mut profiles = stats
        .profiles
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    profiles.sort_by(|a, b| (&a.collection, a.shard).cmp(&(&b.collection, b.shard)));
    profiles
        .into_iter()
        .map(|shard| {
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
            vec![
                Value::String(format!(
                    "Leaf fragment `{}` shard {} on {}",
                    shard.collection, shard.shard, shard.leaf
                )),
                Value::String(text),
            ]
        })
        .collect()
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
/// after the rewrites of [`statement`].
///
/// Anything else is refused before its tables are looked up, so every collection
/// the planner looks up is one a query reads, and a missing one is reported as
/// such by the schema provider ([`AggregatorError::CollectionNotFound`]).
async fn read_only_frame(
    context: &SessionContext,
    provider: &CollectionSchemaProvider,
    sql: &str,
) -> std::result::Result<datafusion::dataframe::DataFrame, DataFusionError> {
    let refused = |error: AggregatorError| DataFusionError::External(Box::new(error));
    altdb_common::sql_guard::check_parse_cost(sql)
        .map_err(|why| refused(AggregatorError::InvalidSql(why)))?;
    let state = context.state();
    let dialect = state.config().options().sql_parser.dialect;
    let mut statement = state.sql_to_statement(sql, &dialect)?;
    statement::check_read_only(&statement).map_err(refused)?;
    let mut fields = std::collections::BTreeSet::new();
    for reference in state.resolve_table_references(&statement)? {
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
    context.execute_logical_plan(plan).await
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
