//! The HTTP write API: `POST /v1/collections/{name}/docs` with NDJSON or a JSON
//! array; `DELETE` on the same path with `[{"_id": ..}, ..]`.
//!
//! Every element is parsed and validated on its own: bad ones are reported with
//! their index and reason, good ones are stored. A 200 means every accepted
//! document is durable on its leaves and visible to queries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;

use altdb_common::api::{
    DeleteResponse, DocResult, PatchResponse, RejectedDoc, WriteResponse, SPEC_HEADER,
};
use altdb_common::cluster_auth::ClusterSecret;
use altdb_common::collection::CollectionSpec;
use altdb_common::document::DocLimits;
use altdb_common::metrics::{self, Metrics};
use altdb_common::probes::Readiness;
use altdb_common::rpc::PutRow;

use crate::catalog::CatalogClient;
use crate::error::{Result, TailerError};
use crate::pusher::{PushOutcome, Pusher};
use crate::shape::{Record, RecordError, Shaped, Shaper};

/// Shared state of the write API.
#[derive(Clone)]
pub struct WriteApi {
    pub catalog: Arc<CatalogClient>,
    pub pusher: Pusher,
    pub limits: DocLimits,
    pub metrics: Arc<Metrics>,
    pub id_counter: Arc<AtomicU64>,
    pub id_salt: u64,
    /// Shapers by collection, with the spec they were made for.
    pub shapers: Arc<Mutex<HashMap<String, (CollectionSpec, Shaper)>>>,
    /// Largest body accepted, also once decompressed.
    pub max_write_bytes: usize,
}

/// The routes. Writes come from the aggregator (or another altdb process) only:
/// they must carry the cluster secret. The probes (`/livez`, `/readyz`,
/// `/healthz`) and `/metrics` stay open to supervisors and scrapers.
pub fn router(
    api: WriteApi,
    max_write_bytes: usize,
    secret: ClusterSecret,
    readiness: Arc<Readiness>,
) -> Router {
    Router::new()
        .route(
            "/v1/collections/{name}/docs",
            post(write_docs).delete(delete_docs).patch(patch_docs),
        )
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let checked = secret.check_http(request.headers());
                async move {
                    match checked {
                        Ok(()) => next.run(request).await,
                        Err(refusal) => {
                            TailerError::Unauthenticated(refusal.message()).into_response()
                        }
                    }
                }
            },
        ))
        .merge(altdb_common::probes::routes(readiness))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(max_write_bytes))
        .with_state(api)
}

/// The body as sent, or decompressed (`Content-Encoding: gzip` or `zstd`), at
/// most `limit` bytes either way (a small compressed body may expand a lot).
fn decoded_body(headers: &HeaderMap, body: Bytes, limit: usize) -> Result<Bytes> {
    use std::io::Read;
    let encoding = headers
        .get(axum::http::header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    let reader: Box<dyn Read + '_> = match encoding.as_deref() {
        None | Some("identity") => return Ok(body),
        Some("gzip" | "x-gzip") => Box::new(flate2::read::MultiGzDecoder::new(&body[..])),
        Some("zstd") => Box::new(
            zstd::stream::read::Decoder::new(&body[..])
                .map_err(|e| TailerError::InvalidRequest(format!("zstd body: {e}")))?,
        ),
        Some(other) => {
            return Err(TailerError::InvalidRequest(format!(
                "Content-Encoding `{other}` is not supported; send the body as it is, gzip or zstd"
            )))
        }
    };
    let mut decoded = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut decoded)
        .map_err(|e| {
            TailerError::InvalidRequest(format!(
                "the body does not decompress ({e}); check its Content-Encoding"
            ))
        })?;
    if decoded.len() > limit {
        return Err(TailerError::InvalidRequest(format!(
            "the body is larger than {limit} bytes once decompressed (max_write_bytes); send \
             it in smaller requests"
        )));
    }
    Ok(decoded.into())
}

/// One element of a request body: its index, its JSON (or why it is not JSON), its size.
pub struct Element {
    index: usize,
    parsed: std::result::Result<Value, RecordError>,
    raw_len: usize,
}

/// Splits a body into elements: a JSON array, or NDJSON (one document per line).
pub fn split_body(body: &[u8]) -> Result<Vec<Element>> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        return split_array(body).map_err(|reason| {
            TailerError::InvalidRequest(format!(
                "body starts with `[` but is not a valid JSON array ({reason}); send a JSON \
                 array of objects or NDJSON, one object per line"
            ))
        });
    }
    Ok(body
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| line.iter().any(|b| !b.is_ascii_whitespace()))
        .map(|(index, line)| Element {
            index,
            parsed: serde_json::from_slice(line).map_err(RecordError::MalformedJson),
            raw_len: line.len(),
        })
        .collect())
}

/// The elements of a JSON array body, each parsed once: every element is read by its
/// own stream deserializer, whose byte offset gives the element's size.
fn split_array(body: &[u8]) -> std::result::Result<Vec<Element>, String> {
    let skip_whitespace = |mut pos: usize| {
        while body.get(pos).is_some_and(u8::is_ascii_whitespace) {
            pos += 1;
        }
        pos
    };
    // The caller saw `[` as the first non-blank byte.
    let mut pos = skip_whitespace(skip_whitespace(0) + 1);
    let mut elements = Vec::new();
    if body.get(pos) != Some(&b']') {
        loop {
            let mut stream =
                serde_json::Deserializer::from_slice(&body[pos..]).into_iter::<Value>();
            let value = match stream.next() {
                Some(Ok(value)) => value,
                Some(Err(e)) => {
                    return Err(format!("element {} at byte {pos}: {e}", elements.len()))
                }
                None => return Err(format!("the array ends at byte {pos} without `]`")),
            };
            let raw_len = stream.byte_offset();
            elements.push(Element {
                index: elements.len(),
                parsed: Ok(value),
                raw_len,
            });
            pos = skip_whitespace(pos + raw_len);
            match body.get(pos) {
                Some(b',') => pos = skip_whitespace(pos + 1),
                Some(b']') => break,
                Some(other) => {
                    return Err(format!(
                        "expected `,` or `]` at byte {pos}, found `{}`",
                        char::from(*other).escape_default()
                    ))
                }
                None => return Err(format!("the array ends at byte {pos} without `]`")),
            }
        }
    }
    if skip_whitespace(pos + 1) != body.len() {
        return Err(format!(
            "unexpected bytes after the array's `]` at byte {pos}"
        ));
    }
    Ok(elements)
}

impl WriteApi {
    /// An id for a document that has none: HTTP writes have no source position to
    /// derive one from, so it is unique per tailer process and request element.
    fn fresh_id(&self) -> String {
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{:08x}", self.id_salt, n)
    }

    /// The shaper of `spec`, compiled once per spec version.
    fn shaper(&self, spec: &CollectionSpec) -> Result<Shaper> {
        let mut shapers = self.shapers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cached, shaper)) = shapers.get(&spec.name) {
            if cached == spec {
                return Ok(shaper.clone());
            }
        }
        let shaper = Shaper::new(spec, self.limits)?;
        shapers.insert(spec.name.clone(), (spec.clone(), shaper.clone()));
        Ok(shaper)
    }

    /// Shapes elements into rows; rejected ones are returned with reasons, and the
    /// number the transform filtered out.
    pub async fn prepare_rows(
        &self,
        spec: &CollectionSpec,
        elements: Vec<Element>,
        now_us: i64,
    ) -> Result<(Vec<(usize, PutRow)>, Vec<RejectedDoc>, usize)> {
        let shaper = self.shaper(spec)?;
        let mut rejected = Vec::new();
        let mut indexes = Vec::with_capacity(elements.len());
        let mut records = Vec::with_capacity(elements.len());
        for element in elements {
            match element.parsed {
                Ok(value) => {
                    indexes.push(element.index);
                    records.push(Record {
                        value,
                        raw_len: element.raw_len,
                        derived_id: self.fresh_id(),
                        default_time_us: now_us,
                    });
                }
                Err(reason) => rejected.push(RejectedDoc {
                    index: element.index,
                    reason: reason.to_string(),
                }),
            }
        }
        let mut rows = Vec::with_capacity(records.len());
        let mut filtered = 0;
        for (index, outcome) in indexes.into_iter().zip(shaper.shape(records).await) {
            match outcome {
                Shaped::Row(row) => rows.push((index, row)),
                Shaped::Filtered => filtered += 1,
                Shaped::Rejected { reason, .. } => rejected.push(RejectedDoc {
                    index,
                    reason: reason.to_string(),
                }),
            }
        }
        Ok((rows, rejected, filtered))
    }
}

async fn metrics(State(api): State<WriteApi>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        api.metrics.render(),
    )
        .into_response()
}

/// The spec of the collection a write or delete goes to.
async fn written_spec(api: &WriteApi, name: &str, headers: &HeaderMap) -> Result<CollectionSpec> {
    if CollectionSpec::is_system(name) {
        return Err(TailerError::InvalidRequest(format!(
            "`{name}` is a system collection: altdb writes it, clients only read it"
        )));
    }
    // A spec the aggregator forwarded saves a catalog lookup; it is checked like
    // any input (a `num_shards` of 0 must not reach the shard routing).
    let forwarded = headers
        .get(SPEC_HEADER)
        .and_then(|v| serde_json::from_slice::<CollectionSpec>(v.as_bytes()).ok())
        .filter(|spec| spec.name == name);
    match forwarded {
        Some(spec) => {
            spec.validate().map_err(|e| {
                TailerError::InvalidRequest(format!("invalid {SPEC_HEADER} header: {e}"))
            })?;
            Ok(spec)
        }
        None => api.catalog.get(name).await,
    }
}

/// The collection and elements of a delete or patch request (`verb`): a
/// JSON array (`usage` says of what) of at most `max` elements.
async fn by_id_request(
    api: &WriteApi,
    name: &str,
    headers: &HeaderMap,
    body: Bytes,
    verb: &str,
    usage: &str,
    max: usize,
) -> Result<(CollectionSpec, Vec<serde_json::Value>)> {
    let spec = written_spec(api, name, headers).await?;
    let body = decoded_body(headers, body, api.max_write_bytes)?;
    let elements: Vec<serde_json::Value> = serde_json::from_slice(&body)
        .map_err(|e| TailerError::InvalidRequest(format!("{usage}: {e}")))?;
    if elements.len() > max {
        return Err(TailerError::InvalidRequest(format!(
            "{} elements in one {verb}; send at most {max} per request",
            elements.len()
        )));
    }
    Ok((spec, elements))
}

/// Most `_id`s one delete request may name.
pub const MAX_DELETE_IDS: usize = 100_000;

/// `DELETE /v1/collections/{name}/docs` with `[{"_id": ..}, ..]`: each `_id`
/// is deleted on every copy of its shard (a versioned tombstone, ordered
/// against writes like an upsert), and the answer says per element whether
/// it was deleted, not found, or why not.
async fn delete_docs(
    State(api): State<WriteApi>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let (spec, elements) = by_id_request(
        &api,
        &name,
        &headers,
        body,
        "delete",
        "a delete takes a JSON array of objects with an `_id`, like [{\"_id\": \"a\"}]",
        MAX_DELETE_IDS,
    )
    .await?;
    let now_us = chrono::Utc::now().timestamp_micros();
    let mut results: Vec<DocResult> = Vec::with_capacity(elements.len());
    let mut rows = Vec::new();
    let mut indexes = Vec::new();
    for (index, element) in elements.iter().enumerate() {
        let id = element
            .as_object()
            .and_then(|o| o.get("_id"))
            .and_then(altdb_common::document::id_from_value);
        match id {
            Some(id) if !id.is_empty() => {
                indexes.push(index);
                rows.push(PutRow {
                    id: id.clone(),
                    event_time_us: now_us,
                    position: None,
                    doc_json: String::new(),
                    delete: true,
                });
                results.push(DocResult {
                    id: Some(id),
                    status: "deleted".into(),
                    reason: None,
                });
            }
            _ => results.push(DocResult {
                id: None,
                status: "error".into(),
                reason: Some(format!(
                    "element {index} is not an object with a string or integer `_id`"
                )),
            }),
        }
    }
    let outcome = api.pusher.push(&spec, &[], &rows).await;
    settle(&spec, &outcome, &indexes, &rows, &mut results, "delete");
    let (status, deleted, not_found) = tally(
        &api,
        &name,
        &outcome,
        &results,
        "deleted",
        (
            "altdb_tailer_http_deleted_total",
            "Documents deleted through the HTTP delete API.",
        ),
    );
    let response = DeleteResponse {
        deleted,
        not_found,
        results,
        fence: fence_token(&outcome),
    };
    Ok((status, Json(response)).into_response())
}

/// Marks in `results` (by `indexes`, one per row pushed) the rows a push
/// did not carry out: their shard failed, a leaf refused them (`error`), or
/// their `_id` was not held (`not_found`).
fn settle(
    spec: &CollectionSpec,
    outcome: &PushOutcome,
    indexes: &[usize],
    rows: &[PutRow],
    results: &mut [DocResult],
    verb: &str,
) {
    for (position, (&index, row)) in indexes.iter().zip(rows).enumerate() {
        let result = &mut results[index];
        if let Some((shard, reason)) = outcome.failure_of(spec, row) {
            result.status = "error".into();
            result.reason = Some(format!(
                "not done: shard {shard} is unavailable ({reason}); retry this {verb}"
            ));
        } else if let Some(reason) = outcome.rejected.get(&position) {
            result.status = "error".into();
            result.reason = Some(reason.clone());
        } else if outcome.missing.contains(&position) {
            result.status = "not_found".into();
        }
    }
}

/// How many of a delete's or patch's `results` were `done` (counted in
/// `metric`: name and help) and `not_found`, and the answer's status (503
/// when a shard was unavailable: those elements are to be retried).
fn tally(
    api: &WriteApi,
    collection: &str,
    outcome: &PushOutcome,
    results: &[DocResult],
    done: &str,
    metric: (&'static str, &'static str),
) -> (StatusCode, usize, usize) {
    let count = |status: &str| results.iter().filter(|r| r.status == status).count();
    let (done, not_found) = (count(done), count("not_found"));
    api.metrics.add(
        metric.0,
        metric.1,
        &[("collection", collection)],
        done as f64,
    );
    let status = if outcome.failed_shards.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, done, not_found)
}

/// The token of the fence of what a push stored (`None`: nothing).
fn fence_token(outcome: &PushOutcome) -> Option<String> {
    (!outcome.fence.versions.is_empty()).then(|| outcome.fence.token())
}

/// Most documents one patch request may change.
pub const MAX_PATCH_DOCS: usize = 10_000;

/// `PATCH /v1/collections/{name}/docs` with `[{"_id": .., "patch": [ops]}, ..]`:
/// JSON Patch operations (and `increment`) applied to each document by a copy
/// of its shard that holds it, all or nothing per document; the result is
/// stored on every copy like a write. The answer says per element whether it
/// was patched, not found, or why not (a failed `test`, a bad path).
async fn patch_docs(
    State(api): State<WriteApi>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let usage = "a patch takes a JSON array of objects with an `_id` and a `patch` (an array of \
                 operations), like [{\"_id\": \"a\", \"patch\": [{\"op\": \"replace\", \
                 \"path\": \"/n\", \"value\": 1}]}]";
    let (spec, elements) =
        by_id_request(&api, &name, &headers, body, "patch", usage, MAX_PATCH_DOCS).await?;
    let mut results: Vec<DocResult> = Vec::with_capacity(elements.len());
    let mut rows = Vec::new();
    let mut indexes = Vec::new();
    for (index, element) in elements.iter().enumerate() {
        let object = element.as_object();
        let id = object
            .and_then(|o| o.get("_id"))
            .and_then(altdb_common::document::id_from_value)
            .filter(|id| !id.is_empty());
        let ops = object
            .and_then(|o| o.get("patch"))
            .map(|ops| altdb_common::patch::parse(ops).map(|_| ops.to_string()));
        let (id, ops) = match (id, ops) {
            (Some(id), Some(Ok(ops))) => (id, ops),
            (id, ops) => {
                let reason = match ops {
                    Some(Err(error)) => format!("element {index}: {error}"),
                    _ => format!("element {index}: {usage}"),
                };
                results.push(DocResult {
                    id,
                    status: "error".into(),
                    reason: Some(reason),
                });
                continue;
            }
        };
        indexes.push(index);
        rows.push(PutRow {
            id: id.clone(),
            event_time_us: 0,
            position: None,
            doc_json: ops,
            delete: false,
        });
        results.push(DocResult {
            id: Some(id),
            status: "patched".into(),
            reason: None,
        });
    }
    let outcome = api.pusher.patch(&spec, &rows, api.limits).await;
    settle(&spec, &outcome, &indexes, &rows, &mut results, "patch");
    let (status, patched, not_found) = tally(
        &api,
        &name,
        &outcome,
        &results,
        "patched",
        (
            "altdb_tailer_http_patched_total",
            "Documents patched through the HTTP patch API.",
        ),
    );
    let response = PatchResponse {
        patched,
        not_found,
        results,
        fence: fence_token(&outcome),
    };
    Ok((status, Json(response)).into_response())
}

async fn write_docs(
    State(api): State<WriteApi>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let started = std::time::Instant::now();
    let spec = written_spec(&api, &name, &headers).await?;
    let body = decoded_body(&headers, body, api.max_write_bytes)?;
    let elements = split_body(&body)?;
    let now_us = chrono::Utc::now().timestamp_micros();
    let (rows, mut errors, filtered) = api.prepare_rows(&spec, elements, now_us).await?;

    let (indexes, rows): (Vec<usize>, Vec<PutRow>) = rows.into_iter().unzip();
    let outcome = api.pusher.push(&spec, &[], &rows).await;

    let mut response = WriteResponse::default();
    for (position, (index, row)) in indexes.into_iter().zip(rows).enumerate() {
        if let Some(reason) = outcome.rejected.get(&position) {
            errors.push(RejectedDoc {
                index,
                reason: reason.clone(),
            });
            continue;
        }
        match outcome.failure_of(&spec, &row) {
            None => response.ids.push(row.id),
            Some((shard, reason)) => errors.push(RejectedDoc {
                index,
                reason: format!(
                    "not stored: shard {shard} is unavailable ({reason}); retry this document"
                ),
            }),
        }
    }
    errors.sort_by_key(|e| e.index);
    response.written = response.ids.len();
    if !outcome.late.is_empty() {
        api.metrics.add(
            "altdb_tailer_late_events_total",
            "Source records older than their collection's retention keeps, by what became of \
             them (the collection's late_events).",
            &[("collection", name.as_str()), ("outcome", "refused")],
            outcome.late.len() as f64,
        );
    }
    response.fence = fence_token(&outcome);
    response.filtered = filtered;
    let labels = [("collection", name.as_str())];
    api.metrics.observe(
        "altdb_tailer_http_write_duration_seconds",
        "Time to answer an HTTP write: parse, transform, push, acknowledged by the leaves.",
        &labels,
        started.elapsed().as_secs_f64(),
    );
    api.metrics.add(
        "altdb_tailer_http_documents_total",
        "Documents stored through the HTTP write API.",
        &labels,
        response.written as f64,
    );
    api.metrics.add(
        "altdb_tailer_http_rejected_total",
        "Documents of HTTP writes that were rejected or not stored.",
        &labels,
        errors.len() as f64,
    );
    response.errors = errors;
    let status = if outcome.failed_shards.is_empty() {
        StatusCode::OK
    } else {
        tracing::warn!(collection = %name, failed = ?outcome.failed_shards, "write partly failed");
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(response)).into_response())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn bodies_split_into_indexed_elements() {
        let ndjson = b"{\"a\":1}\n\n{bad\n[1]\n";
        let elements = split_body(ndjson).unwrap();
        let indexes: Vec<usize> = elements.iter().map(|e| e.index).collect();
        assert_eq!(indexes, [0, 2, 3]);
        assert!(matches!(
            elements[1].parsed,
            Err(RecordError::MalformedJson(_))
        ));
        let array = br#" [{"a":1}, 2, {"b":{"c":3}}]"#;
        let elements = split_body(array).unwrap();
        assert_eq!(elements.len(), 3);
        assert_eq!(elements[2].raw_len, 13);
        assert!(split_body(b"[{\"a\":1},").is_err());
        assert!(split_body(b"[{\"a\":1} {\"b\":2}]").is_err());
        assert!(split_body(b"[1,]").is_err());
        assert!(split_body(b"[1] x").is_err());
        assert!(split_body(b"[{\"a\":1x}]").is_err());
        assert!(split_body(b" [ ] ").unwrap().is_empty());
        let numbers = split_body(b"[1,2.5 , true,null,\"s\"]\n").unwrap();
        let values: Vec<Value> = numbers.into_iter().map(|e| e.parsed.unwrap()).collect();
        assert_eq!(
            values,
            [json!(1), json!(2.5), json!(true), Value::Null, json!("s")]
        );
    }
}
