//! Query Lambdas: named, versioned, parameterized saved queries.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/lambdas` | `{"name", "sql", "default_parameters"?, "description"?}` → version 1 |
//! | `GET /v1/lambdas` | every lambda: versions, tags, executions |
//! | `GET /v1/lambdas/{name}` | one lambda with its versions |
//! | `DELETE /v1/lambdas/{name}` | delete it and its versions |
//! | `POST /v1/lambdas/{name}/versions` | `{"sql", "default_parameters"?}` → the next version; `latest` moves |
//! | `GET /v1/lambdas/{name}/versions/{v}` | one version |
//! | `PUT /v1/lambdas/{name}/tags/{tag}` | `{"version"}`: point a tag at a version (`latest` moves by itself) |
//! | `DELETE /v1/lambdas/{name}/tags/{tag}` | remove a tag |
//! | `POST /v1/lambdas/{name}/versions/{v}` | run a version: `{"parameters"?}` |
//! | `POST /v1/lambdas/{name}/tags/{tag}` | run the version a tag points at |
//!
//! A version's SQL names its parameters `:name`; running it binds the request's
//! parameters over the version's defaults (typed values, never spliced into the
//! SQL; a missing or mistyped one is a 400 naming it). The SQL is checked when a
//! version is created: it must be a query that plans for the caller. Versions
//! never change, so a dashboard pinned to one keeps its answer's shape while
//! the lambda moves on. Running a lambda needs `query` on what it reads;
//! creating, versioning, tagging and deleting need `manage_lambdas` on its name.
//! Executions count in `/metrics` per lambda (`altdb_lambda_executions_total`,
//! `altdb_lambda_duration_seconds`); a version's plan is kept between runs with
//! the same parameter values like any repeated statement.
//!
//! Lambdas live in the metastore (`lambdas/<name>`; a file for one aggregator,
//! etcd for several), changed by conditional writes and read from a watch cache.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use altdb_common::metastore::watched::Watched;
use altdb_common::metastore::{Metastore, MetastoreError, Precondition};

use crate::files::to_json;

use crate::access::{valid_name, Action, Principal};
use crate::api::{json_body, run_json, AppState};
use crate::error::{AggregatorError, Result};
use crate::query::params::{self, Parameter};
use crate::query::{Query, QueryOptions, QueryResponse};

/// The tag every new version takes.
pub const LATEST: &str = "latest";
/// Versions one lambda keeps at most (a dashboard's deploy loop must not grow
/// the file without bound).
const MAX_VERSIONS: usize = 1000;
/// Lambdas kept at most, and tags one lambda has at most.
const MAX_LAMBDAS: usize = 10_000;
const MAX_TAGS: usize = 100;
/// Bytes of SQL one version holds at most.
const MAX_SQL_BYTES: usize = 1 << 20;

/// One version of a lambda: never changes once created.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LambdaVersion {
    pub version: u32,
    pub sql: String,
    #[serde(default)]
    pub default_parameters: Vec<Parameter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

/// A lambda: its versions and tags.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lambda {
    pub name: String,
    pub versions: Vec<LambdaVersion>,
    /// Tag → version; `latest` is always the newest version.
    pub tags: BTreeMap<String, u32>,
}

impl Lambda {
    pub fn version(&self, version: u32) -> Result<&LambdaVersion> {
        self.versions
            .iter()
            .find(|v| v.version == version)
            .ok_or_else(|| {
                AggregatorError::NotFound(format!(
                    "Query Lambda `{}` has no version {version}; its versions are 1 to {}",
                    self.name,
                    self.versions.last().map_or(0, |v| v.version)
                ))
            })
    }

    pub fn tagged(&self, tag: &str) -> Result<&LambdaVersion> {
        let version = self.tags.get(tag).ok_or_else(|| {
            AggregatorError::NotFound(format!(
                "Query Lambda `{}` has no tag `{tag}`; its tags are {}",
                self.name,
                self.tags.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        self.version(*version)
    }
}

/// The lambdas of this aggregator, in `<data-dir>/lambdas.json`.
#[derive(Debug)]
pub struct LambdaStore {
    store: Arc<dyn Metastore>,
    lambdas: Watched<Lambda>,
}

/// Where lambdas live in the metastore: `lambdas/<name>`.
const PREFIX: &str = "lambdas/";
/// Attempts at a change that others keep changing under it.
const ATTEMPTS: usize = 16;

fn unavailable(error: MetastoreError) -> AggregatorError {
    AggregatorError::Unavailable(format!(
        "Query Lambdas cannot be changed now ({error}); retry when the metastore is back"
    ))
}

fn missing(name: &str) -> AggregatorError {
    AggregatorError::NotFound(format!(
        "Query Lambda `{name}` does not exist; create it with POST /v1/lambdas"
    ))
}

impl LambdaStore {
    /// The lambdas in `store`; a `legacy` `lambdas.json` from before the
    /// metastore is imported once, then renamed `lambdas.json.imported`.
    pub async fn open(store: Arc<dyn Metastore>, legacy: Option<&std::path::Path>) -> Result<Self> {
        if let Some(path) = legacy.filter(|p| p.exists()) {
            let lambdas: BTreeMap<String, Lambda> =
                crate::files::load(path, "the Query Lambda file")?;
            let entries = lambdas
                .values()
                .map(|l| Ok((format!("{PREFIX}{}", l.name), to_json(l)?)))
                .collect::<Result<Vec<_>>>()?;
            crate::files::import(store.as_ref(), path, entries).await?;
        }
        let lambdas = Watched::start(store.clone(), PREFIX)
            .await
            .map_err(unavailable)?;
        Ok(Self { store, lambdas })
    }

    /// Applies `change` to the lambda `name` as stored now (`None`: there is
    /// none); it returns what to store (`None`: delete) and the answer. A
    /// conditional write: if another aggregator changed the lambda meanwhile,
    /// `change` runs again on its new value.
    async fn update<T>(
        &self,
        name: &str,
        change: impl Fn(Option<Lambda>) -> Result<(Option<Lambda>, T)>,
    ) -> Result<T> {
        let key = format!("{PREFIX}{name}");
        for _ in 0..ATTEMPTS {
            let current = self.store.get(&key).await.map_err(unavailable)?;
            let (when, lambda) = match &current {
                Some(entry) => (
                    Precondition::At(entry.revision),
                    Some(serde_json::from_str::<Lambda>(&entry.value).map_err(|e| {
                        AggregatorError::Internal(format!("stored lambda `{name}`: {e}"))
                    })?),
                ),
                None => (Precondition::Absent, None),
            };
            let (next, answer) = change(lambda)?;
            let written = match next {
                Some(next) => self.store.put(&key, &to_json(&next)?, when).await,
                None => self.store.delete(&key, when).await,
            }
            .map_err(unavailable)?;
            if let Some(revision) = written {
                self.lambdas
                    .caught_up(revision, Duration::from_secs(5))
                    .await;
                return Ok(answer);
            }
        }
        Err(AggregatorError::Conflict(format!(
            "Query Lambda `{name}` keeps changing under this request; retry"
        )))
    }

    pub fn get(&self, name: &str) -> Result<Lambda> {
        self.lambdas.get(name).ok_or_else(|| missing(name))
    }

    pub fn list(&self) -> Vec<Lambda> {
        self.lambdas.list().into_iter().map(|(_, l)| l).collect()
    }

    /// Creates a lambda with its first version.
    pub async fn create(&self, name: &str, version: LambdaVersion) -> Result<Lambda> {
        if self.lambdas.list().len() >= MAX_LAMBDAS {
            return Err(AggregatorError::InvalidRequest(format!(
                "there are {MAX_LAMBDAS} Query Lambdas, the most altdb keeps; delete some"
            )));
        }
        self.update(name, |current| {
            if current.is_some() {
                return Err(AggregatorError::Conflict(format!(
                    "Query Lambda `{name}` already exists; add a version with POST \
                     /v1/lambdas/{name}/versions"
                )));
            }
            let lambda = Lambda {
                name: name.to_string(),
                tags: BTreeMap::from([(LATEST.to_string(), version.version)]),
                versions: vec![version.clone()],
            };
            Ok((Some(lambda.clone()), lambda))
        })
        .await
    }

    /// Adds the next version; `latest` moves to it.
    pub async fn add_version(&self, name: &str, version: LambdaVersion) -> Result<LambdaVersion> {
        self.update(name, |current| {
            let mut lambda = current.ok_or_else(|| missing(name))?;
            if lambda.versions.len() >= MAX_VERSIONS {
                return Err(AggregatorError::InvalidRequest(format!(
                    "Query Lambda `{name}` has {MAX_VERSIONS} versions, the most one may \
                     have; create a new lambda"
                )));
            }
            let mut version = version.clone();
            version.version = lambda.versions.last().map_or(1, |v| v.version + 1);
            lambda.versions.push(version.clone());
            lambda.tags.insert(LATEST.to_string(), version.version);
            Ok((Some(lambda), version))
        })
        .await
    }

    pub async fn set_tag(&self, name: &str, tag: &str, version: u32) -> Result<Lambda> {
        self.update(name, |current| {
            let mut lambda = current.ok_or_else(|| missing(name))?;
            lambda.version(version)?;
            if !lambda.tags.contains_key(tag) && lambda.tags.len() >= MAX_TAGS {
                return Err(AggregatorError::InvalidRequest(format!(
                    "Query Lambda `{name}` has {MAX_TAGS} tags, the most one may have; \
                     delete one first"
                )));
            }
            lambda.tags.insert(tag.to_string(), version);
            Ok((Some(lambda.clone()), lambda))
        })
        .await
    }

    pub async fn delete_tag(&self, name: &str, tag: &str) -> Result<()> {
        self.update(name, |current| {
            let mut lambda = current.ok_or_else(|| missing(name))?;
            if lambda.tags.remove(tag).is_none() {
                return Err(AggregatorError::NotFound(format!(
                    "Query Lambda `{name}` has no tag `{tag}`"
                )));
            }
            Ok((Some(lambda), ()))
        })
        .await
    }

    pub async fn delete(&self, name: &str) -> Result<()> {
        self.update(name, |current| match current {
            Some(_) => Ok((None, ())),
            None => Err(missing(name)),
        })
        .await
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/lambdas", post(create).get(list))
        .route("/v1/lambdas/{name}", get(describe).delete(delete))
        .route("/v1/lambdas/{name}/versions", post(add_version))
        .route(
            "/v1/lambdas/{name}/versions/{version}",
            get(describe_version).post(run_version),
        )
        .route(
            "/v1/lambdas/{name}/tags/{tag}",
            post(run_tag).put(set_tag).delete(delete_tag),
        )
}

/// What creating a lambda or a version takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRequest {
    #[serde(default)]
    pub name: Option<String>,
    pub sql: String,
    #[serde(default)]
    pub default_parameters: Vec<Parameter>,
    #[serde(default)]
    pub description: Option<String>,
}

/// Checks a version's SQL before it is kept: it is a query that plans for the
/// caller (its placeholders may stay unbound), and its defaults fit their types.
pub async fn check_version(
    state: &AppState,
    principal: &Principal,
    request: VersionRequest,
) -> Result<LambdaVersion> {
    if request.sql.trim().is_empty() || request.sql.len() > MAX_SQL_BYTES {
        return Err(AggregatorError::InvalidRequest(format!(
            "a Query Lambda's sql must be a query of at most {MAX_SQL_BYTES} bytes"
        )));
    }
    params::named(&request.default_parameters)?;
    let described = state.engine.describe(&request.sql, principal).await?;
    for (id, _) in &described.parameters {
        if params::positional_index(id).is_some() {
            return Err(AggregatorError::InvalidParameter(format!(
                "a Query Lambda names its parameters (`:user`), not `{id}`"
            )));
        }
    }
    Ok(LambdaVersion {
        version: 1,
        sql: request.sql,
        default_parameters: request.default_parameters,
        description: request.description,
        created_at: Utc::now(),
        created_by: principal.name.clone(),
    })
}

async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> Result<Response> {
    let request: VersionRequest = json_body(&body)?;
    let name = request
        .name
        .clone()
        .ok_or_else(|| AggregatorError::InvalidRequest("a Query Lambda needs a `name`".into()))?;
    valid_name("Query Lambda", &name)?;
    principal.require(Action::ManageLambdas, &name)?;
    let version = check_version(&state, &principal, request).await?;
    let lambda = state.lambdas.create(&name, version).await?;
    Ok((StatusCode::CREATED, Json(lambda)).into_response())
}

/// A lambda as listed: how many versions, the newest, and its tags.
#[derive(Serialize)]
struct Listed {
    name: String,
    latest_version: u32,
    versions: usize,
    tags: BTreeMap<String, u32>,
}

/// Lambdas (their SQL included) are shown to keys that may query or manage
/// lambdas.
fn may_see(principal: &Principal) -> Result<()> {
    if principal.has(Action::Query) || principal.has(Action::ManageLambdas) {
        return Ok(());
    }
    Err(principal.forbidden(Action::Query, "*"))
}

async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Vec<Listed>>> {
    may_see(&principal)?;
    Ok(Json(
        state
            .lambdas
            .list()
            .into_iter()
            .map(|lambda| Listed {
                latest_version: lambda.tags.get(LATEST).copied().unwrap_or(0),
                versions: lambda.versions.len(),
                name: lambda.name,
                tags: lambda.tags,
            })
            .collect(),
    ))
}

async fn describe(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<Lambda>> {
    may_see(&principal)?;
    Ok(Json(state.lambdas.get(&name)?))
}

async fn describe_version(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((name, version)): Path<(String, u32)>,
) -> Result<Json<LambdaVersion>> {
    may_see(&principal)?;
    Ok(Json(state.lambdas.get(&name)?.version(version)?.clone()))
}

async fn delete(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>> {
    principal.require(Action::ManageLambdas, &name)?;
    state.lambdas.delete(&name).await?;
    Ok(Json(serde_json::json!({ "deleted": name })))
}

async fn add_version(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response> {
    principal.require(Action::ManageLambdas, &name)?;
    state.lambdas.get(&name)?;
    let request: VersionRequest = json_body(&body)?;
    let version = check_version(&state, &principal, request).await?;
    let version = state.lambdas.add_version(&name, version).await?;
    Ok((StatusCode::CREATED, Json(version)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TagRequest {
    version: u32,
}

async fn set_tag(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((name, tag)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Lambda>> {
    principal.require(Action::ManageLambdas, &name)?;
    if tag == LATEST {
        return Err(AggregatorError::InvalidRequest(
            "`latest` always points at the newest version; add a version to move it".into(),
        ));
    }
    valid_name("tag", &tag)?;
    let request: TagRequest = json_body(&body)?;
    Ok(Json(
        state.lambdas.set_tag(&name, &tag, request.version).await?,
    ))
}

async fn delete_tag(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((name, tag)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>> {
    principal.require(Action::ManageLambdas, &name)?;
    if tag == LATEST {
        return Err(AggregatorError::InvalidRequest(
            "`latest` cannot be removed".into(),
        ));
    }
    state.lambdas.delete_tag(&name, &tag).await?;
    Ok(Json(serde_json::json!({ "deleted": tag })))
}

/// What running a lambda takes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    #[serde(default)]
    pub parameters: Vec<Parameter>,
    /// Rockset's row limit (rows returned at most), accepted as is.
    #[serde(default)]
    pub default_row_limit: Option<usize>,
    /// Read-your-writes: run once the copies hold these fences
    /// ([`crate::fences`]), as `options.fence` of a query.
    #[serde(default)]
    pub fence: Option<crate::fences::FenceArgs>,
    /// How long to wait for `fence` (milliseconds).
    #[serde(default)]
    pub fence_timeout_ms: Option<u64>,
}

/// Runs a version: the request's parameters over its defaults.
pub async fn run(
    state: &AppState,
    principal: &Principal,
    lambda: &str,
    version: &LambdaVersion,
    request: RunRequest,
) -> Result<QueryResponse> {
    let mut parameters: BTreeMap<String, Parameter> = version
        .default_parameters
        .iter()
        .map(|p| (p.name.trim_start_matches(':').to_string(), p.clone()))
        .collect();
    for parameter in request.parameters {
        parameters.insert(
            parameter.name.trim_start_matches(':').to_string(),
            parameter,
        );
    }
    let parameters: Vec<Parameter> = parameters.into_values().collect();
    let query = Query {
        sql: version.sql.clone(),
        options: QueryOptions {
            fence: request.fence,
            fence_timeout_ms: request.fence_timeout_ms,
            ..QueryOptions::default()
        },
        params: params::named(&parameters)?,
    };
    let result = run_json(state, query, None, principal).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(error) => error.code(),
    };
    state.metrics.add(
        "altdb_lambda_executions_total",
        "Query Lambda runs, by lambda, version and outcome.",
        &[
            ("lambda", lambda),
            ("version", &version.version.to_string()),
            ("outcome", outcome),
        ],
        1.0,
    );
    let mut response = result?;
    state.metrics.observe(
        "altdb_lambda_duration_seconds",
        "Time to answer a Query Lambda run, by lambda.",
        &[("lambda", lambda)],
        response.stats.elapsed_ms / 1000.0,
    );
    if let Some(limit) = request.default_row_limit {
        if response.rows.len() > limit {
            response.rows.truncate(limit);
            response.stats.truncated = true;
        }
    }
    Ok(response)
}

fn run_body(body: &[u8]) -> Result<RunRequest> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(RunRequest::default());
    }
    json_body(body)
}

async fn run_version(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((name, version)): Path<(String, u32)>,
    body: Bytes,
) -> Result<Json<QueryResponse>> {
    let lambda = state.lambdas.get(&name)?;
    let version = lambda.version(version)?;
    Ok(Json(
        run(&state, &principal, &name, version, run_body(&body)?).await?,
    ))
}

async fn run_tag(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((name, tag)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<QueryResponse>> {
    let lambda = state.lambdas.get(&name)?;
    let version = lambda.tagged(&tag)?;
    Ok(Json(
        run(&state, &principal, &name, version, run_body(&body)?).await?,
    ))
}

#[cfg(test)]
mod store_tests {
    use altdb_common::metastore::file::FileMetastore;

    use super::*;

    fn version(sql: &str) -> LambdaVersion {
        LambdaVersion {
            version: 1,
            sql: sql.into(),
            default_parameters: Vec::new(),
            description: None,
            created_at: Utc::now(),
            created_by: "test".into(),
        }
    }

    #[tokio::test]
    async fn two_aggregators_version_one_lambda_without_losing_a_version() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Metastore> =
            FileMetastore::open(dir.path().join("metastore.json")).unwrap();
        let a = LambdaStore::open(store.clone(), None).await.unwrap();
        let b = LambdaStore::open(store, None).await.unwrap();
        a.create("daily", version("SELECT 1")).await.unwrap();
        assert!(matches!(
            b.create("daily", version("SELECT 1")).await,
            Err(AggregatorError::Conflict(_))
        ));
        let (x, y) = tokio::join!(
            a.add_version("daily", version("SELECT 2")),
            b.add_version("daily", version("SELECT 3"))
        );
        let mut numbers = [x.unwrap().version, y.unwrap().version];
        numbers.sort();
        assert_eq!(numbers, [2, 3]);
        let seen = b.get("daily").unwrap();
        assert_eq!(seen.versions.len(), 3);
        assert_eq!(seen.tags[LATEST], 3);
        b.set_tag("daily", "prod", 2).await.unwrap();
        a.delete_tag("daily", "prod").await.unwrap();
        a.delete("daily").await.unwrap();
        assert!(matches!(
            b.delete("daily").await,
            Err(AggregatorError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn a_lambda_file_from_before_the_metastore_is_imported_once() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("lambdas.json");
        let lambda = Lambda {
            name: "old".into(),
            versions: vec![version("SELECT 1")],
            tags: BTreeMap::from([(LATEST.to_string(), 1)]),
        };
        let file: BTreeMap<String, Lambda> = [("old".to_string(), lambda)].into();
        crate::files::store(&legacy, &file, "lambdas").unwrap();
        let store: Arc<dyn Metastore> =
            FileMetastore::open(dir.path().join("metastore.json")).unwrap();
        let lambdas = LambdaStore::open(store, Some(&legacy)).await.unwrap();
        assert_eq!(lambdas.get("old").unwrap().versions[0].sql, "SELECT 1");
        assert!(!legacy.exists());
    }
}
