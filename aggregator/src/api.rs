//! The aggregator's HTTP API.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/query` | `{"sql": .., "parameters"?: [{"name", "type", "value"}], "query_id"?}` → columns, rows, stats |
//! | `GET /v1/queries`, `DELETE /v1/queries/{id}` | running statements; cancel one ([`crate::running`]) |
//! | `POST /v1/collections` | create a collection from its spec |
//! | `GET /v1/collections` | list specs |
//! | `GET /v1/collections/{name}` | spec, schema as SQL columns, document count, shards |
//! | `DELETE /v1/collections/{name}` | drop data everywhere, then the spec |
//! | `POST /v1/collections/{name}/docs` | NDJSON or JSON array, forwarded to a tailer |
//! | `DELETE /v1/collections/{name}/docs` | `[{"_id": ..}, ..]`, forwarded to a tailer |
//! | `PATCH /v1/collections/{name}` | change `retention` or `write_quorum` |
//! | `GET /v1/cluster` | leaf health; where each shard's copies live; leaves registered in the metastore |
//! | `GET /metrics` | Prometheus metrics, incl. per-partition lag and freshness |
//! | `/v1/keys`, `/v1/roles` | API keys and roles ([`crate::access::routes`]) |
//! | `/v1/lambdas/..` | Query Lambdas ([`crate::lambdas`]) |
//! | `/v1/orgs/self/..` | Rockset-compatible endpoints ([`crate::rockset`]) |
//! | `GET /`, `/console/..` | the web console's static files ([`crate::console`]) |
//! | `GET /livez`, `GET /healthz` | liveness: the process answers |
//! | `GET /readyz` | readiness: metastore readable, every shard has a copy on a leaf that answers ([`altdb_common::probes`]) |
//!
//! Every other route (the console's files and the probes are public) runs
//! [`authenticate`] first, and each handler checks the
//! privilege it needs on the collection it touches ([`Principal::require`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use altdb_common::collection::{CollectionSpec, DLQ_COLLECTION};
use altdb_common::metastore::membership::LeafMember;
use altdb_common::metrics::{self, Metrics};
use altdb_common::schema::FieldType;

use altdb_common::source_policy::SourcePolicy;

use crate::access::authn::{audit, authenticate, Authenticator, Client};
use crate::access::{Action, DlqScope, Principal};
use crate::admission::Admission;
use crate::catalog::Catalog;
use crate::cluster::Cluster;
use crate::error::{AggregatorError, Result};
use crate::query::params::{self, Parameter};
use crate::query::{Query, QueryEngine, QueryOptions, QueryResponse};
use crate::sources::{export, source_status, KafkaProbe};

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub catalog: Arc<dyn Catalog>,
    pub cluster: Cluster,
    pub engine: QueryEngine,
    pub admission: Admission,
    /// What sources users may configure.
    pub policy: Arc<SourcePolicy>,
    pub http: reqwest::Client,
    pub tailer_url: String,
    pub probe: Arc<KafkaProbe>,
    pub metrics: Arc<Metrics>,
    /// Keys, roles and the cluster secret requests are checked against.
    pub auth: Authenticator,
    /// Query Lambdas.
    pub lambdas: Arc<crate::lambdas::LambdaStore>,
    /// HTTP statements running now, to list and cancel.
    pub running: Arc<crate::running::RunningQueries>,
    /// The leaves registered in the metastore (with etcd; none with the file).
    pub members: Arc<altdb_common::metastore::watched::Watched<LeafMember>>,
}

/// Builds the router.
pub fn router(
    state: AppState,
    max_write_bytes: usize,
    readiness: Arc<altdb_common::probes::Readiness>,
) -> Router {
    let protected = Router::new()
        .route("/v1/query", post(query))
        .route("/v1/cluster", get(cluster_status))
        .route(
            "/v1/cluster/leaves/{id}/drain",
            post(drain_leaf).delete(undrain_leaf),
        )
        .route("/metrics", get(metrics))
        .route(
            "/v1/collections",
            post(create_collection).get(list_collections),
        )
        .route(
            "/v1/collections/{name}",
            get(describe_collection)
                .patch(change_collection)
                .delete(delete_collection),
        )
        .route(
            "/v1/collections/{name}/docs",
            post(docs).delete(docs).patch(docs),
        )
        .route("/v1/collections/{name}/fences/check", post(check_fence))
        .merge(crate::access::routes::routes())
        .merge(crate::lambdas::routes())
        .merge(crate::rockset::routes())
        .merge(crate::running::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            authenticate,
        ));
    Router::new()
        .merge(altdb_common::probes::routes(readiness))
        .merge(crate::console::routes())
        .merge(protected)
        .layer(DefaultBodyLimit::max(max_write_bytes))
        .with_state(state)
}

/// Parses a JSON body whatever its content type (`curl -d` sends a form type).
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        AggregatorError::InvalidRequest(format!("request body is not valid JSON here: {e}"))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryRequest {
    sql: String,
    #[serde(default)]
    options: QueryOptions,
    /// Values of the statement's `:name` placeholders.
    #[serde(default)]
    parameters: Vec<Parameter>,
    /// The id to list and cancel the statement by while it runs (`GET` and
    /// `DELETE /v1/queries/{id}`); the aggregator picks one if none is given.
    #[serde(default)]
    query_id: Option<String>,
}

async fn query(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> Result<Response> {
    let request: QueryRequest = json_body(&body)?;
    if request.sql.trim().is_empty() {
        return Err(AggregatorError::InvalidSql(
            "sql is empty; send {\"sql\": \"SELECT ...\"}".into(),
        ));
    }
    let query = Query {
        sql: request.sql,
        options: request.options,
        params: params::named(&request.parameters)?,
    };
    Ok(Json(run_json(&state, query, request.query_id, &principal).await?).into_response())
}

/// Runs a statement for an HTTP request: listed as running under `query_id`
/// (or a new id) until it ends, admitted, answered in JSON, counted.
pub(crate) async fn run_json(
    state: &AppState,
    query: Query,
    query_id: Option<String>,
    principal: &Principal,
) -> Result<QueryResponse> {
    let running = state.running.start(query_id, &principal.name, &query.sql)?;
    let work = async {
        let _turn = state.admission.admit().await?;
        state.engine.query_json(query, principal).await
    };
    let result = tokio::select! {
        result = work => result,
        () = running.cancelled() => Err(AggregatorError::Cancelled(format!(
            "query `{}` was cancelled (DELETE /v1/queries/{})",
            running.id, running.id
        ))),
    };
    let result = result.map(|mut response| {
        response.query_id = Some(running.id.clone());
        response
    });
    running.finish();
    let (class, elapsed_ms) = match &result {
        Ok(response) => (response.class, response.stats.elapsed_ms),
        Err(_) => ("", 0.0),
    };
    count_query(&state.metrics, "http", &result, class, elapsed_ms);
    result
}

/// Starts a statement for a door that streams its answer (Postgres, Flight
/// SQL): admitted (the turn is held as long as the answer), counted.
pub(crate) async fn run_streamed(
    engine: &QueryEngine,
    admission: &Admission,
    metrics: &Metrics,
    door: &str,
    query: Query,
    principal: &Principal,
) -> Result<crate::query::Answer> {
    let result = async {
        let turn = admission.admit().await?;
        let mut answer = engine.run(query, principal).await?;
        answer.hold(turn);
        Ok(answer)
    }
    .await;
    count_query(metrics, door, &result, "", 0.0);
    result
}

/// Counts a statement's outcome, and its time by class when it succeeded and
/// was answered whole (`class` empty: a streamed answer, not timed here);
/// `door`: `http`, `postgres` or `flight_sql`.
pub(crate) fn count_query<T>(
    metrics: &Metrics,
    door: &str,
    result: &Result<T>,
    class: &str,
    elapsed_ms: f64,
) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(error) => error.code(),
    };
    metrics.add(
        "altdb_aggregator_queries_total",
        "SQL queries answered, by door (http, postgres, flight_sql) and outcome.",
        &[("door", door), ("outcome", outcome)],
        1.0,
    );
    if result.is_ok() && !class.is_empty() {
        metrics.observe(
            "altdb_aggregator_query_duration_seconds",
            "Time to answer a query, by class (aggregate, top_k, search, select, explain).",
            &[("class", class)],
            elapsed_ms / 1000.0,
        );
    }
}

/// Prometheus metrics; source lag and freshness are measured at scrape time,
/// into series of this scrape's own.
async fn metrics(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response> {
    monitor(&principal)?;
    let scraped = Metrics::default();
    for spec in state.catalog.list().await? {
        if spec.sources.is_empty() {
            continue;
        }
        if let Ok(stats) = state.cluster.collection_stats(&spec).await {
            let statuses = source_status(&spec, &stats, &state.probe).await;
            export(&scraped, &spec.name, &statuses);
        }
    }
    scraped.set(
        "altdb_aggregator_queries_running",
        "Statements running now (at most max_concurrent_queries).",
        &[],
        state.admission.running() as f64,
    );
    scraped.set(
        "altdb_aggregator_queries_queued",
        "Statements waiting for their turn now (at most max_queued_queries).",
        &[],
        state.admission.queued() as f64,
    );
    let text = state.metrics.render() + &scraped.render();
    Ok((
        [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        text,
    )
        .into_response())
}

/// Health and metrics need `monitor` (on any resource: they are cluster-wide).
fn monitor(principal: &Principal) -> Result<()> {
    if principal.has(Action::Monitor) {
        return Ok(());
    }
    Err(principal.forbidden(Action::Monitor, "*"))
}

async fn cluster_status(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response> {
    monitor(&principal)?;
    let leaves = state.cluster.status().await;
    let collections: Vec<serde_json::Value> = state
        .catalog
        .list()
        .await?
        .into_iter()
        .filter(|spec| principal.sees(&spec.name))
        .map(|spec| {
            serde_json::json!({
                "name": spec.name,
                "replication": spec.replication,
                "write_quorum": spec.write_quorum(),
                "shards": state.cluster.placement(&spec),
                "placement_epoch": state.cluster.epoch(&spec),
                "joining": state.cluster.joining(&spec),
                "behind": state.cluster.behind(&spec),
            })
        })
        .collect();
    let members: Vec<LeafMember> = state.members.list().into_iter().map(|(_, m)| m).collect();
    let controller = match state.cluster.placed_state() {
        Some(placed) => placed
            .store
            .get(altdb_common::placement::CONTROLLER)
            .await
            .ok()
            .flatten()
            .and_then(|entry| serde_json::from_str::<serde_json::Value>(&entry.value).ok())
            .and_then(|value| value["id"].as_str().map(str::to_string)),
        None => None,
    };
    Ok(Json(serde_json::json!({
        "leaves": leaves,
        "collections": collections,
        "members": members,
        "controller": controller,
    }))
    .into_response())
}

/// `POST /v1/cluster/leaves/{id}/drain`: the leaf's shard copies move to
/// other leaves (it gets no new ones); once `copies` is 0 it can be stopped.
async fn drain_leaf(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response> {
    set_draining(&state, &principal, &id, true).await
}

/// `DELETE /v1/cluster/leaves/{id}/drain`: the leaf may hold copies again.
async fn undrain_leaf(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response> {
    set_draining(&state, &principal, &id, false).await
}

async fn set_draining(
    state: &AppState,
    principal: &Principal,
    id: &str,
    draining: bool,
) -> Result<Response> {
    principal.require(Action::ManageCollections, "*")?;
    let placed = state.cluster.placed_state().ok_or_else(|| {
        AggregatorError::InvalidRequest(
            "leaves are drained in a cluster with an etcd metastore; this one has a static \
             list of leaves"
                .into(),
        )
    })?;
    if draining && placed.leaves.members.get(id).is_none() {
        return Err(AggregatorError::NotFound(format!(
            "no leaf `{id}` is registered; GET /v1/cluster lists the members"
        )));
    }
    let key = format!("{}{id}", altdb_common::placement::DRAINS);
    let unavailable =
        |e: altdb_common::metastore::MetastoreError| AggregatorError::Unavailable(e.to_string());
    let at = if draining {
        let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let value = serde_json::json!({ "since": since }).to_string();
        placed
            .store
            .put(&key, &value, altdb_common::metastore::Precondition::Any)
            .await
            .map_err(unavailable)?
    } else {
        placed
            .store
            .delete(&key, altdb_common::metastore::Precondition::Any)
            .await
            .map_err(unavailable)?
    };
    if let Some(at) = at {
        placed
            .drains
            .caught_up(at, std::time::Duration::from_secs(2))
            .await;
    }
    let copies: usize = placed
        .placements
        .list()
        .iter()
        .map(|(_, p)| p.shards_on(id).len())
        .sum();
    Ok(
        Json(serde_json::json!({ "leaf": id, "draining": draining, "copies": copies }))
            .into_response(),
    )
}

/// A spec as `principal` may see it: source secrets only for the cluster's own
/// processes.
fn shown(principal: &Principal, spec: CollectionSpec) -> CollectionSpec {
    if principal.sees_secrets() {
        spec
    } else {
        spec.redacted()
    }
}

async fn create_collection(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(client): Extension<Client>,
    body: Bytes,
) -> Result<Response> {
    let spec: CollectionSpec = json_body(&body)?;
    principal.require(Action::ManageCollections, &spec.name)?;
    spec.validate()?;
    for source in &spec.sources {
        state.policy.check(source)?;
    }
    let spec = state.catalog.create(spec).await?;
    if let Err(error) = state.cluster.create_collection(&spec).await {
        // Undone: a collection some leaf does not know would refuse its shards.
        state.catalog.delete(&spec.name).await?;
        state.cluster.drop_collection(&spec).await;
        return Err(error);
    }
    tracing::info!(collection = %spec.name, shards = spec.num_shards, "created collection");
    audit(
        "collection_created",
        &principal.name,
        client,
        "ok",
        &format!("collection {}", spec.name),
    );
    Ok((StatusCode::CREATED, Json(shown(&principal, spec))).into_response())
}

/// The collections the principal holds some privilege on.
async fn list_collections(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response> {
    let specs: Vec<CollectionSpec> = state
        .catalog
        .list()
        .await?
        .into_iter()
        .filter(|spec| principal.sees(&spec.name))
        .map(|spec| shown(&principal, spec))
        .collect();
    Ok(Json(serde_json::json!({ "collections": specs })).into_response())
}

#[derive(Serialize)]
struct SchemaColumn {
    name: String,
    #[serde(rename = "type")]
    sql_type: String,
}

async fn describe_collection(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response> {
    // Before the lookup: whether a collection exists is not told to keys that
    // may not see it.
    if !principal.sees(&name) {
        return Err(principal.forbidden(Action::Query, &name));
    }
    let spec = state
        .catalog
        .get(&name)
        .await?
        .ok_or_else(|| AggregatorError::CollectionNotFound(name.clone()))?;
    let stats = state.cluster.collection_stats(&spec).await?;
    let mut columns = vec![
        SchemaColumn {
            name: "_id".into(),
            sql_type: FieldType::Utf8.sql_name(),
        },
        SchemaColumn {
            name: "_event_time".into(),
            sql_type: FieldType::Timestamp.sql_name(),
        },
    ];
    columns.extend(
        stats
            .fields
            .fields
            .iter()
            .filter(|(n, _)| !altdb_common::columns::is_reserved_column(n))
            .map(|(n, t)| SchemaColumn {
                name: n.clone(),
                sql_type: t.sql_name(),
            }),
    );
    let mut documents: u64 = stats.shards.iter().map(|s| s.docs).sum();
    let mut shards = serde_json::to_value(&stats.shards)
        .map_err(|e| AggregatorError::Internal(e.to_string()))?;
    if name == DLQ_COLLECTION && matches!(principal.dlq_scope(), DlqScope::Only(_)) {
        // A key that reads some collections' dead letters learns how many of
        // those there are, not how many the whole `_dlq` holds.
        let counted = state
            .engine
            .query_as(
                &format!("SELECT COUNT(*) FROM {DLQ_COLLECTION}"),
                &QueryOptions::default(),
                &principal,
            )
            .await?;
        documents = counted
            .rows
            .first()
            .and_then(|row| row.first())
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        shards = serde_json::Value::Null;
    }
    let sources = source_status(&spec, &stats, &state.probe).await;
    Ok(Json(serde_json::json!({
        "collection": shown(&principal, spec),
        "schema": columns,
        "documents": documents,
        "sources": sources,
        "shards": shards,
    }))
    .into_response())
}

/// `PATCH /v1/collections/{name}` with the settings to change: `retention`
/// (a duration, or `null` to keep documents for ever), `late_events` and
/// `write_quorum`.
/// Other settings fix where data lives or how it was shaped, so they are
/// refused with the reason. The spec as stored comes back.
async fn change_collection(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(client): Extension<Client>,
    Path(name): Path<String>,
    Json(changes): Json<serde_json::Map<String, serde_json::Value>>,
) -> Result<Response> {
    principal.require(Action::ManageCollections, &name)?;
    if CollectionSpec::is_system(&name) {
        return Err(AggregatorError::InvalidRequest(format!(
            "`{name}` is a system collection; its settings are altdb's"
        )));
    }
    for key in changes.keys() {
        if !matches!(key.as_str(), "retention" | "late_events" | "write_quorum") {
            return Err(AggregatorError::InvalidRequest(format!(
                "`{key}` cannot be changed on an existing collection; only `retention`, \
                 `late_events` and `write_quorum` can (create the collection again for the \
                 others)"
            )));
        }
    }
    let described = serde_json::Value::Object(changes.clone()).to_string();
    let apply = |spec: &mut CollectionSpec| -> Result<()> {
        for (key, value) in &changes {
            let bad =
                |e: serde_json::Error| AggregatorError::InvalidRequest(format!("`{key}`: {e}"));
            match key.as_str() {
                "retention" => {
                    spec.retention = serde_json::from_value(value.clone()).map_err(bad)?
                }
                "late_events" => {
                    spec.late_events = serde_json::from_value(value.clone()).map_err(bad)?
                }
                _ => spec.write_quorum = serde_json::from_value(value.clone()).map_err(bad)?,
            }
        }
        Ok(())
    };
    let spec = state
        .catalog
        .update(&name, &apply)
        .await?
        .ok_or_else(|| AggregatorError::CollectionNotFound(name.clone()))?;
    // The leaves take a new retention at once (expired segments go without
    // waiting for a write); one that missed it takes it with the next write.
    for missed in state.cluster.push_settings(&spec).await {
        tracing::warn!(collection = %name, %missed, "settings not applied yet");
    }
    audit(
        "collection_changed",
        &principal.name,
        client,
        "ok",
        &format!("collection {name}: {described}"),
    );
    Ok(Json(shown(&principal, spec)).into_response())
}

async fn delete_collection(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(client): Extension<Client>,
    Path(name): Path<String>,
) -> Result<Response> {
    principal.require(Action::ManageCollections, &name)?;
    let spec = state
        .catalog
        .get(&name)
        .await?
        .ok_or_else(|| AggregatorError::CollectionNotFound(name.clone()))?;
    if CollectionSpec::is_system(&name) {
        // Cleared, not deleted: every leaf must drop its rows.
        let missed = state.cluster.drop_collection(&spec).await;
        if !missed.is_empty() {
            return Err(AggregatorError::Unavailable(format!(
                "could not clear `{name}` on every leaf ({}); retry when they are back",
                missed.join("; ")
            )));
        }
        tracing::info!(collection = %name, "cleared system collection");
        audit(
            "collection_cleared",
            &principal.name,
            client,
            "ok",
            &format!("collection {name}"),
        );
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    // The spec first: from then on no source, write or query reaches this
    // incarnation, and each leaf refuses it once told (a leaf that is down now
    // keeps its rows, which no later incarnation sees, until the name is created
    // again).
    state.catalog.delete(&name).await?;
    let missed = state.cluster.drop_collection(&spec).await;
    if !missed.is_empty() {
        tracing::warn!(collection = %name, missed = ?missed, "deleted collection; some leaves keep its rows until the name is created again");
    }
    tracing::info!(collection = %name, "deleted collection");
    audit(
        "collection_deleted",
        &principal.name,
        client,
        "ok",
        &format!("collection {name}"),
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/collections/{name}/docs` (a write: NDJSON or a JSON array),
/// `DELETE` (`[{"_id": ..}, ..]`) and `PATCH` (`[{"_id": .., "patch": [ops]}]`):
/// forwarded to a tailer, which parses, routes and pushes to the leaves, its
/// answer passed on. All three need the write privilege.
async fn docs(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let method = reqwest::Method::from_bytes(method.as_str().as_bytes())
        .map_err(|e| AggregatorError::Internal(e.to_string()))?;
    let (status, bytes) = forward_write(&state, &principal, &name, &headers, body, method).await?;
    Ok((
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response())
}

/// The body of `POST /v1/collections/{name}/fences/check`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FenceCheck {
    fence: crate::fences::FenceArg,
}

/// `POST /v1/collections/{name}/fences/check` with `{"fence": <token>}`:
/// whether every copy a query may read holds what the fence names now
/// (`visible`), and if not, which copies lack what (`pending`). Answers at
/// once; a query with `"options": {"fence": ..}` waits instead.
async fn check_fence(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response> {
    principal.require_read(&name)?;
    let request: FenceCheck = json_body(&body)?;
    let fence = request.fence.fence()?;
    if fence.collection != name {
        return Err(AggregatorError::InvalidRequest(format!(
            "the fence is of collection `{}`, not `{name}`: check it at \
             /v1/collections/{}/fences/check",
            fence.collection, fence.collection
        )));
    }
    let pending = crate::fences::Fences::new(state.catalog.clone(), state.cluster.clone())
        .check(&fence)
        .await?;
    Ok(Json(serde_json::json!({
        "visible": pending.is_empty(),
        "pending": pending,
    }))
    .into_response())
}

/// Sends a write to a tailer (with the collection's spec): its status and JSON
/// answer ([`altdb_common::api::WriteResponse`] when it succeeded).
pub(crate) async fn forward_write(
    state: &AppState,
    principal: &Principal,
    name: &str,
    headers: &HeaderMap,
    body: Bytes,
    method: reqwest::Method,
) -> Result<(StatusCode, Bytes)> {
    principal.require(Action::Write, name)?;
    if CollectionSpec::is_system(name) {
        return Err(AggregatorError::InvalidRequest(format!(
            "`{name}` is a system collection that altdb writes itself; write to your own \
             collections"
        )));
    }
    let spec = state
        .catalog
        .get(name)
        .await?
        .ok_or_else(|| AggregatorError::CollectionNotFound(name.to_string()))?;
    let spec_json =
        serde_json::to_string(&spec).map_err(|e| AggregatorError::Internal(e.to_string()))?;
    let url = format!("{}/v1/collections/{name}/docs", state.tailer_url);
    let mut request = state
        .http
        .request(method, &url)
        .header(altdb_common::api::SPEC_HEADER, spec_json)
        .body(body);
    for header in [
        axum::http::header::CONTENT_TYPE,
        axum::http::header::CONTENT_ENCODING,
    ] {
        if let Some(value) = headers.get(&header) {
            request = request.header(header, value);
        }
    }
    let response = request.send().await.map_err(|e| {
        AggregatorError::Unavailable(format!(
            "the tailer at {} did not answer ({e}); nothing was written, retry when it is back",
            state.tailer_url
        ))
    })?;
    let status = StatusCode::from_u16(response.status().as_u16())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let bytes = response.bytes().await.map_err(|e| {
        AggregatorError::Unavailable(format!(
            "the tailer's answer was cut off: {e}; retry the write"
        ))
    })?;
    Ok((status, bytes))
}
