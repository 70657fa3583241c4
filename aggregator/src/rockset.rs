//! Rockset-compatible endpoints, for code written against Rockset's REST API.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/orgs/self/queries` | `{"sql": {"query", "parameters"?, "default_row_limit"?}}` |
//! | `DELETE /v1/orgs/self/queries/{id}` | cancel a running statement by its `query_id` |
//! | `POST /v1/orgs/self/ws/{ws}/collections/{c}/docs` | `{"data": [docs]}` |
//! | `DELETE /v1/orgs/self/ws/{ws}/collections/{c}/docs` | `{"data": [{"_id": ..}]}`, forwarded as a delete by `_id` |
//! | `PATCH /v1/orgs/self/ws/{ws}/collections/{c}/docs` | `{"data": [{"_id": .., "patch": [ops]}]}`, forwarded as a patch by `_id` |
//! | `POST /v1/orgs/self/ws/{ws}/lambdas` | `{"name", "sql": {"query", "default_parameters"?}}` |
//! | `POST /v1/orgs/self/ws/{ws}/lambdas/{l}/versions` | a new version, same body without name |
//! | `POST /v1/orgs/self/ws/{ws}/lambdas/{l}/versions/{v}` | run a version |
//! | `POST /v1/orgs/self/ws/{ws}/lambdas/{l}/tags/{t}` | run a tagged version |
//!
//! Answers have Rockset's shape: `results` as objects by column name,
//! `column_fields`, `stats.elapsed_time_ms`, `query_id`, `status`. Keys go in
//! `Authorization: ApiKey <key>` as with Rockset. The workspace `commons` is
//! altdb's one namespace: collections without a prefix (SQL may also name them
//! `commons.<collection>`); another workspace is a 404 that says so. Lambda
//! versions are numbers (Rockset's are hashes).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use altdb_common::api::{DocResult, WriteResponse};

use crate::access::{Action, Principal};
use crate::api::{forward_write, json_body, run_json, AppState};
use crate::error::{AggregatorError, Result};
use crate::lambdas::{self, RunRequest, VersionRequest};
use crate::query::params::{self, Parameter};
use crate::query::{Query, QueryOptions, QueryResponse};

/// The workspace that holds every collection.
pub const WORKSPACE: &str = "commons";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/orgs/self/queries", post(query))
        .route(
            "/v1/orgs/self/queries/{id}",
            axum::routing::delete(crate::running::cancel),
        )
        .route(
            "/v1/orgs/self/ws/{ws}/collections/{collection}/docs",
            post(add_documents)
                .delete(documents_by_id)
                .patch(documents_by_id),
        )
        .route("/v1/orgs/self/ws/{ws}/lambdas", post(create_lambda))
        .route(
            "/v1/orgs/self/ws/{ws}/lambdas/{lambda}/versions",
            post(add_lambda_version),
        )
        .route(
            "/v1/orgs/self/ws/{ws}/lambdas/{lambda}/versions/{version}",
            post(run_lambda_version),
        )
        .route(
            "/v1/orgs/self/ws/{ws}/lambdas/{lambda}/tags/{tag}",
            post(run_lambda_tag),
        )
}

fn workspace(ws: &str) -> Result<()> {
    if ws == WORKSPACE {
        return Ok(());
    }
    Err(AggregatorError::NotFound(format!(
        "workspace `{ws}` does not exist: altdb keeps every collection in the workspace \
         `{WORKSPACE}`"
    )))
}

#[derive(Debug, Deserialize)]
struct QueryRequest {
    sql: SqlRequest,
}

#[derive(Debug, Deserialize)]
struct SqlRequest {
    query: String,
    #[serde(default)]
    parameters: Vec<Parameter>,
    #[serde(default)]
    default_row_limit: Option<usize>,
}

/// A column as Rockset lists it.
#[derive(Debug, Serialize)]
struct ColumnField {
    name: String,
    #[serde(rename = "type")]
    kind: String,
}

/// An answer in Rockset's shape.
fn rockset_answer(response: QueryResponse) -> Value {
    let names: Vec<String> = response.columns.iter().map(|c| c.name.clone()).collect();
    let results: Vec<Value> = response
        .rows
        .into_iter()
        .map(|row| {
            Value::Object(
                names
                    .iter()
                    .cloned()
                    .zip(row)
                    .collect::<Map<String, Value>>(),
            )
        })
        .collect();
    let column_fields: Vec<ColumnField> = response
        .columns
        .into_iter()
        .map(|c| ColumnField {
            name: c.name,
            kind: c.sql_type,
        })
        .collect();
    json!({
        "query_id": response.query_id.clone().unwrap_or_else(crate::running::new_id),
        "status": "COMPLETED",
        "results": results,
        "results_total_doc_count": results.len(),
        "column_fields": column_fields,
        "stats": {
            "elapsed_time_ms": response.stats.elapsed_ms.round() as u64,
            "rows_scanned": response.stats.rows_scanned,
            "throttled_time_micros": 0,
        },
        "warnings": [],
        "query_errors": [],
        "pagination": null,
    })
}

async fn query(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> Result<Json<Value>> {
    let request: QueryRequest = json_body(&body)?;
    if request.sql.query.trim().is_empty() {
        return Err(AggregatorError::InvalidSql(
            "sql.query is empty; send {\"sql\": {\"query\": \"SELECT ...\"}}".into(),
        ));
    }
    let query = Query {
        sql: request.sql.query,
        options: QueryOptions::default(),
        params: params::named(&request.sql.parameters)?,
    };
    let mut response = run_json(&state, query, None, &principal).await?;
    if let Some(limit) = request.sql.default_row_limit {
        if response.rows.len() > limit {
            response.rows.truncate(limit);
            response.stats.truncated = true;
        }
    }
    Ok(Json(rockset_answer(response)))
}

#[derive(Debug, Deserialize)]
struct DocumentsRequest {
    data: Vec<Value>,
}

async fn add_documents(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((ws, collection)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response> {
    workspace(&ws)?;
    let request: DocumentsRequest = json_body(&body)?;
    let count = request.data.len();
    let mut ndjson = Vec::with_capacity(body.len());
    for document in &request.data {
        serde_json::to_writer(&mut ndjson, document)
            .map_err(|e| AggregatorError::Internal(e.to_string()))?;
        ndjson.push(b'\n');
    }
    let headers = HeaderMap::from_iter([(
        axum::http::header::CONTENT_TYPE,
        "application/x-ndjson".parse().expect("valid header"),
    )]);
    let (status, bytes) = forward_write(
        &state,
        &principal,
        &collection,
        &headers,
        ndjson.into(),
        reqwest::Method::POST,
    )
    .await?;
    if !status.is_success() {
        return Ok((
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response());
    }
    let written: WriteResponse = serde_json::from_slice(&bytes).map_err(|e| {
        AggregatorError::Internal(format!("the tailer's answer is not a write answer: {e}"))
    })?;
    let mut ids = written.ids.into_iter();
    let data: Vec<Value> = (0..count)
        .map(|index| {
            match written.errors.iter().find(|e| e.index == index) {
                Some(error) => json!({
                    "_collection": collection, "_id": null, "status": "ERROR",
                    "error": {"type": "InvalidInput", "message": error.reason},
                }),
                None => match ids.next() {
                    Some(id) => json!({
                        "_collection": collection, "_id": id, "status": "ADDED", "error": null,
                    }),
                    // Filtered out by the collection's ingest transform.
                    None => json!({
                        "_collection": collection, "_id": null, "status": "FILTERED",
                        "error": null,
                    }),
                },
            }
        })
        .collect();
    // Rockset's `last_offset` is what a read-your-writes fence is here.
    Ok((
        StatusCode::OK,
        Json(json!({ "data": data, "last_offset": written.fence })),
    )
        .into_response())
}

/// Rockset's delete, `{"data": [{"_id": ..}, ..]}` → per document
/// `DELETED` (also for an `_id` no copy held: it is deleted all the same) or
/// `ERROR` with the reason; and patch, `{"data": [{"_id": .., "patch":
/// [ops]}, ..]}` (JSON Patch and `INCREMENT`) → per document `PATCHED`, or
/// `ERROR` with the reason (`NotFound` for an `_id` no copy held).
async fn documents_by_id(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((ws, collection)): Path<(String, String)>,
    method: axum::http::Method,
    body: Bytes,
) -> Result<Response> {
    let method = if method == axum::http::Method::PATCH {
        reqwest::Method::PATCH
    } else {
        reqwest::Method::DELETE
    };
    by_id(&state, &principal, &ws, &collection, &body, method).await
}

/// A delete or patch by `_id` forwarded to a tailer, its answer in Rockset's shape.
async fn by_id(
    state: &AppState,
    principal: &Principal,
    ws: &str,
    collection: &str,
    body: &[u8],
    method: reqwest::Method,
) -> Result<Response> {
    workspace(ws)?;
    let request: DocumentsRequest = json_body(body)?;
    let elements =
        serde_json::to_vec(&request.data).map_err(|e| AggregatorError::Internal(e.to_string()))?;
    let headers = HeaderMap::from_iter([(
        axum::http::header::CONTENT_TYPE,
        "application/json".parse().expect("valid header"),
    )]);
    let patch = method == reqwest::Method::PATCH;
    let (status, bytes) = forward_write(
        state,
        principal,
        collection,
        &headers,
        elements.into(),
        method,
    )
    .await?;
    let Ok(answer) = serde_json::from_slice::<DocResults>(&bytes) else {
        return Ok((
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response());
    };
    let data: Vec<Value> = answer
        .results
        .into_iter()
        .map(|result| match result.status.as_str() {
            "error" => json!({
                "_collection": collection, "_id": result.id, "status": "ERROR",
                "error": {"type": "InvalidInput", "message": result.reason},
            }),
            "not_found" if patch => json!({
                "_collection": collection, "_id": result.id, "status": "ERROR",
                "error": {"type": "NotFound", "message": "no document has this _id"},
            }),
            _ => json!({
                "_collection": collection, "_id": result.id,
                "status": if patch { "PATCHED" } else { "DELETED" }, "error": null,
            }),
        })
        .collect();
    Ok((status, Json(json!({ "data": data }))).into_response())
}

/// The per-document results of a tailer's delete or patch answer.
#[derive(Deserialize)]
struct DocResults {
    results: Vec<DocResult>,
}

#[derive(Debug, Deserialize)]
struct LambdaRequest {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    sql: LambdaSql,
}

#[derive(Debug, Deserialize)]
struct LambdaSql {
    query: String,
    #[serde(default)]
    default_parameters: Vec<Parameter>,
}

impl LambdaRequest {
    fn into_version(self) -> VersionRequest {
        VersionRequest {
            name: self.name,
            sql: self.sql.query,
            default_parameters: self.sql.default_parameters,
            description: self.description,
        }
    }
}

/// A version as Rockset describes one.
fn rockset_version(lambda: &str, version: &lambdas::LambdaVersion) -> Value {
    json!({
        "workspace": WORKSPACE,
        "name": lambda,
        "version": version.version.to_string(),
        "description": version.description,
        "created_by": version.created_by,
        "created_at": version.created_at,
        "sql": {
            "query": version.sql,
            "default_parameters": version.default_parameters,
        },
        "state": "ACTIVE",
    })
}

async fn create_lambda(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(ws): Path<String>,
    body: Bytes,
) -> Result<Response> {
    workspace(&ws)?;
    let request: LambdaRequest = json_body(&body)?;
    let name = request
        .name
        .clone()
        .ok_or_else(|| AggregatorError::InvalidRequest("a Query Lambda needs a `name`".into()))?;
    crate::access::valid_name("Query Lambda", &name)?;
    principal.require(Action::ManageLambdas, &name)?;
    let version = lambdas::check_version(&state, &principal, request.into_version()).await?;
    let lambda = state.lambdas.create(&name, version).await?;
    let latest = lambda.tagged(lambdas::LATEST)?;
    Ok((
        StatusCode::OK,
        Json(json!({"data": {
            "workspace": WORKSPACE,
            "name": name,
            "version_count": lambda.versions.len(),
            "latest_version": rockset_version(&name, latest),
        }})),
    )
        .into_response())
}

async fn add_lambda_version(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((ws, lambda)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>> {
    workspace(&ws)?;
    principal.require(Action::ManageLambdas, &lambda)?;
    state.lambdas.get(&lambda)?;
    let request: LambdaRequest = json_body(&body)?;
    let version = lambdas::check_version(&state, &principal, request.into_version()).await?;
    let version = state.lambdas.add_version(&lambda, version).await?;
    Ok(Json(json!({ "data": rockset_version(&lambda, &version) })))
}

fn run_request(body: &[u8]) -> Result<RunRequest> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(RunRequest::default());
    }
    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        parameters: Vec<Parameter>,
        #[serde(default)]
        default_row_limit: Option<usize>,
    }
    let body: Body = json_body(body)?;
    Ok(RunRequest {
        parameters: body.parameters,
        default_row_limit: body.default_row_limit,
        ..RunRequest::default()
    })
}

async fn run_lambda_version(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((ws, name, version)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Json<Value>> {
    workspace(&ws)?;
    let lambda = state.lambdas.get(&name)?;
    let number: u32 = version.parse().map_err(|_| {
        AggregatorError::NotFound(format!(
            "Query Lambda `{name}` has no version `{version}`: altdb's versions are numbers"
        ))
    })?;
    let version = lambda.version(number)?;
    let response = lambdas::run(&state, &principal, &name, version, run_request(&body)?).await?;
    Ok(Json(rockset_answer(response)))
}

async fn run_lambda_tag(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((ws, name, tag)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Json<Value>> {
    workspace(&ws)?;
    let lambda = state.lambdas.get(&name)?;
    let version = lambda.tagged(&tag)?;
    let response = lambdas::run(&state, &principal, &name, version, run_request(&body)?).await?;
    Ok(Json(rockset_answer(response)))
}
