//! Object-store source: NDJSON, CSV and Parquet objects under an S3 prefix (or files
//! under a local directory), the ones there at start (backfill) and every one that
//! appears later, each ingested exactly once.
//!
//! ```text
//!  every poll_interval: list prefix ─► objects this tailer owns, not done yet
//!     └─► per object: resume point from the leaves ─► reader thread (read.rs):
//!         GET ─► gunzip/zstd ─► NDJSON/CSV/Parquet ─► chunks ─► shape ─► push
//!                                                   rows + mark {object, through}
//! ```
//!
//! - Exactly once: every object has its own watermark key,
//!   `s3:<collection>:<object url>`, whose position is the record number in the
//!   object. Each chunk is pushed with the object's mark (`through` = last record
//!   read) to every shard; leaves skip records at or below it, so a restart resumes
//!   mid-object without loss or duplicates. When an object ends, its mark is set to
//!   [`OBJECT_DONE`], which is how a restarted tailer knows it is finished.
//! - `_id`s default to `<object url>:<record>`.
//! - Objects whose name starts with `.` or `_` (temporary files, `_SUCCESS`) are
//!   skipped; write objects whole (S3 does) or rename them into place.
//! - Several tailers split a source by hashing object keys ([`SourceContext::ordinal`]).
//! - An object that cannot be read (not found, bad compression, not Parquet, unknown
//!   format) is reported in the log, the metrics and `_dlq`, retried on the next
//!   polls, and given up after [`MAX_ATTEMPTS`] until it changes; others go on.
//! - Freshness: once everything listed is stored, a mark with the listing time goes
//!   to every shard (`stats.freshness_ms` of queries).

pub mod read;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore};
use serde_json::json;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use xxhash_rust::xxh3::xxh3_64;

use altdb_common::collection::{CollectionSpec, ObjectSource, SourceSpec};
use altdb_common::health::LoopHealth;
use altdb_common::rpc::{RowPosition, SourceMark};

use self::read::{encoding, Chunk, Decoded, ObjectError, ReadJob};
use super::dead_letter::{dead_letter, DeadLetter};
use super::{deliver, resume_positions, Flush, Resume, SourceContext};
use crate::shape::{Record, Shaped, Shaper};

/// The watermark of an object that was read to its end.
pub const OBJECT_DONE: u64 = ObjectSource::DONE;
/// Times an unreadable object is tried (once per poll) before it is given up.
pub const MAX_ATTEMPTS: u32 = 3;
/// Objects whose resume points are asked for at once.
const RESUME_BATCH: usize = 500;

const M_OBJECTS: &str = "altdb_tailer_source_objects_total";
const M_OBJECT_ERRORS: &str = "altdb_tailer_source_object_errors_total";

/// Runs an object-store source of `spec` until `stop` flips.
pub async fn run(
    spec: CollectionSpec,
    source: ObjectSource,
    context: SourceContext,
    mut stop: watch::Receiver<bool>,
) {
    let source_id = SourceSpec::S3(source.clone()).source_id(&spec.name);
    let Some(shaper) = super::shaper_or_wait(&spec, &context, &source_id, &mut stop).await else {
        return;
    };
    let (store, prefix) = match open_store(&source) {
        Ok(opened) => opened,
        Err(error) => {
            tracing::error!(source = %source_id, %error, "cannot open the object store; source not started");
            let _ = stop.changed().await;
            return;
        }
    };
    let poll = source.poll_interval().unwrap_or(Duration::from_secs(10));
    let mut reader = Reader {
        spec,
        source,
        source_id,
        context,
        shaper,
        store,
        prefix,
        done: HashSet::new(),
        failures: HashMap::new(),
    };
    tracing::info!(source = %reader.source_id, ?poll, "object source started");
    let health = LoopHealth::new(reader.source_id.clone());
    loop {
        let outcome = reader.poll(&mut stop).await;
        health.passed(&reader.context.metrics);
        match outcome {
            Ok(true) => health.succeeded(&reader.context.metrics),
            Ok(false) => break,
            // Logged when it starts failing and then once a minute (health.rs).
            Err(error) => health.failed(&reader.context.metrics, &error),
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = stop.changed() => break,
        }
    }
    tracing::info!(source = %reader.source_id, "object source stopped");
}

/// The store and the prefix objects are listed under.
fn open_store(source: &ObjectSource) -> Result<(Arc<dyn ObjectStore>, Option<Path>), ObjectError> {
    let (scheme, bucket, prefix) = source
        .location()
        .map_err(|e| ObjectError::Store(e.to_string()))?;
    if scheme == "file" {
        let dir = format!("/{prefix}");
        let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
            .map_err(|e| ObjectError::Store(format!("cannot open directory `{dir}`: {e}")))?;
        return Ok((Arc::new(store), None));
    }
    let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(region) = &source.region {
        builder = builder.with_region(region);
    }
    if let Some(endpoint) = &source.endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    for (name, value) in &source.properties {
        let key = name
            .parse()
            .map_err(|e| ObjectError::Store(format!("s3 property `{name}`: {e}")))?;
        builder = builder.with_config(key, value.resolve(name).map_err(ObjectError::Store)?);
    }
    let store = builder
        .build()
        .map_err(|e| ObjectError::Store(e.to_string()))?;
    let prefix = Some(prefix.trim_end_matches('/'))
        .filter(|p| !p.is_empty())
        .map(Path::from);
    Ok((Arc::new(store), prefix))
}

/// Why an object was not read to its end.
enum ObjectFailure {
    Stopped,
    Unreadable(ObjectError),
}

struct Reader {
    spec: CollectionSpec,
    source: ObjectSource,
    source_id: String,
    context: SourceContext,
    shaper: Shaper,
    store: Arc<dyn ObjectStore>,
    prefix: Option<Path>,
    /// Objects read to their end, by location.
    done: HashSet<Path>,
    /// Objects that failed: attempts so far and the version (size, e_tag) they failed at.
    failures: HashMap<Path, (u32, u64, Option<String>)>,
}

impl Reader {
    /// Lists the prefix and reads every new object this tailer owns; `false` if stopped.
    async fn poll(&mut self, stop: &mut watch::Receiver<bool>) -> Result<bool, ObjectError> {
        let listed_at_us = chrono::Utc::now().timestamp_micros();
        let mut objects: Vec<ObjectMeta> = self
            .store
            .list(self.prefix.as_ref())
            .try_collect()
            .await
            .map_err(|source| ObjectError::List {
                url: self.source.url.clone(),
                source,
            })?;
        objects.retain(|meta| {
            let name = meta.location.filename().unwrap_or_default();
            let hidden = name.starts_with('.') || name.starts_with('_');
            let owned = xxh3_64(meta.location.as_ref().as_bytes())
                % u64::from(self.context.tailers)
                == u64::from(self.context.ordinal);
            owned && !hidden && !self.done.contains(&meta.location) && !self.given_up(meta)
        });
        // Listing order: for time-partitioned keys, oldest first.
        objects.sort_by(|a, b| a.location.cmp(&b.location));
        let mut all_done = true;
        for batch in objects.chunks(RESUME_BATCH) {
            let names: Vec<String> = batch.iter().map(|m| self.watermark_key(m)).collect();
            let Some(resumes) = self.resume(&names, stop).await else {
                return Ok(false);
            };
            for (meta, resume) in batch.iter().zip(resumes) {
                let start = match resume {
                    Resume::At(next) if next > OBJECT_DONE => {
                        self.done.insert(meta.location.clone());
                        continue;
                    }
                    Resume::At(next) => next,
                    Resume::Fresh | Resume::Partial => 0,
                };
                match self.ingest(meta, start, stop).await {
                    Ok(()) => {
                        self.failures.remove(&meta.location);
                        self.done.insert(meta.location.clone());
                        self.context.metrics.add(
                            M_OBJECTS,
                            "Objects read to their end by object-store sources.",
                            &[("source", &self.source_id)],
                            1.0,
                        );
                    }
                    Err(ObjectFailure::Stopped) => return Ok(false),
                    Err(ObjectFailure::Unreadable(error)) => {
                        all_done = false;
                        if !self.failed(meta, &error, stop).await {
                            return Ok(false);
                        }
                    }
                }
            }
        }
        if all_done {
            // Everything listed is stored: that is how fresh the collection is.
            let mark = SourceMark {
                source: self.source_id.clone(),
                through: None,
                as_of_us: Some(listed_at_us),
            };
            let flush = Flush {
                marks: vec![mark],
                ..Flush::default()
            };
            if !deliver(&self.spec, &self.source_id, &self.context, &flush, stop).await {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// `s3:<collection>:<object url>`: the key of the object's watermark.
    fn watermark_key(&self, meta: &ObjectMeta) -> String {
        self.source
            .object_source(&self.spec.name, &self.object_url(meta))
    }

    /// The object's URL, e.g. `s3://bucket/prefix/file.json`.
    fn object_url(&self, meta: &ObjectMeta) -> String {
        let base = self.source.url.trim_end_matches('/');
        let relative = match &self.prefix {
            Some(prefix) => meta
                .location
                .as_ref()
                .strip_prefix(prefix.as_ref())
                .unwrap_or(meta.location.as_ref())
                .trim_start_matches('/'),
            None => meta.location.as_ref(),
        };
        format!("{base}/{relative}")
    }

    fn given_up(&self, meta: &ObjectMeta) -> bool {
        self.failures
            .get(&meta.location)
            .is_some_and(|(attempts, size, e_tag)| {
                *attempts >= MAX_ATTEMPTS && *size == meta.size && *e_tag == meta.e_tag
            })
    }

    async fn resume(
        &self,
        names: &[String],
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Vec<Resume>> {
        loop {
            if let Some(resumes) = resume_positions(&self.context.pusher, &self.spec, names).await {
                return Some(resumes);
            }
            tracing::warn!(source = %self.source_id, "leaves unreachable; waiting to resume");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return None,
            }
        }
    }

    /// Records a failed attempt; the last one puts a dead letter in `_dlq`.
    async fn failed(
        &mut self,
        meta: &ObjectMeta,
        error: &ObjectError,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let entry = self.failures.entry(meta.location.clone()).or_insert((
            0,
            meta.size,
            meta.e_tag.clone(),
        ));
        if entry.1 != meta.size || entry.2 != meta.e_tag {
            *entry = (0, meta.size, meta.e_tag.clone());
        }
        entry.0 += 1;
        let attempts = entry.0;
        self.context.metrics.add(
            M_OBJECT_ERRORS,
            "Attempts to read an object that failed.",
            &[("source", &self.source_id)],
            1.0,
        );
        if attempts < MAX_ATTEMPTS {
            tracing::warn!(source = %self.source_id, object = %meta.location, attempts, %error, "cannot read object; retrying at the next poll");
            return true;
        }
        tracing::error!(source = %self.source_id, object = %meta.location, attempts, %error, "cannot read object; given up until it changes (see _dlq)");
        let url = self.object_url(meta);
        let key = self.watermark_key(meta);
        let origin = json!({"object": url, "object_size": meta.size});
        let letter = dead_letter(DeadLetter {
            collection: &self.spec.name,
            source: &key,
            position: None,
            origin: origin.as_object().cloned().unwrap_or_default(),
            key: None,
            payload: None,
            error: &format!("object unreadable after {attempts} attempts: {error}"),
            timestamp_us: Some(meta.last_modified.timestamp_micros()),
            now_us: chrono::Utc::now().timestamp_micros(),
        });
        let flush = Flush {
            dead: vec![letter],
            ..Flush::default()
        };
        deliver(&self.spec, &self.source_id, &self.context, &flush, stop).await
    }

    /// Reads one object from record `start` to its end and stores it.
    async fn ingest(
        &self,
        meta: &ObjectMeta,
        start: u64,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), ObjectFailure> {
        let (format, compression) = encoding(
            meta.location.as_ref(),
            self.source.format,
            self.source.compression,
        )
        .map_err(ObjectFailure::Unreadable)?;
        tracing::info!(source = %self.source_id, object = %meta.location, size = meta.size, start, ?format, "reading object");
        let (chunks, mut received) = mpsc::channel(2);
        let job = ReadJob {
            store: self.store.clone(),
            meta: meta.clone(),
            format,
            compression,
            csv_delimiter: self.source.csv_delimiter as u8,
            start,
        };
        let thread = read::spawn(job, Handle::current(), chunks)
            .map_err(|e| ObjectFailure::Unreadable(ObjectError::Thread(e)))?;
        let url = self.object_url(meta);
        let key = self.watermark_key(meta);
        // The next chunk is shaped while the previous one is being pushed, so the
        // leaves index one flush while the tailer prepares the next.
        let mut outcome = Err(ObjectFailure::Stopped);
        let mut shaped: Option<(Flush, bool)> = None;
        loop {
            let pending_last = shaped.as_ref().is_some_and(|(_, last)| *last);
            let chunk = if pending_last {
                None
            } else {
                let message = tokio::select! {
                    message = received.recv() => message,
                    _ = stop.changed() => None,
                };
                match message {
                    Some(Ok(chunk)) => Some(chunk),
                    Some(Err(error)) => {
                        outcome = Err(ObjectFailure::Unreadable(error));
                        break;
                    }
                    None => break,
                }
            };
            let push = async {
                match &shaped {
                    Some((flush, _)) => {
                        self.context.count(&self.spec.name, &self.source_id, flush);
                        deliver(&self.spec, &self.source_id, &self.context, flush, stop).await
                    }
                    None => true,
                }
            };
            let next = async {
                match chunk {
                    Some(chunk) => {
                        let last = chunk.last;
                        Some((self.flush(chunk, &url, &key, meta).await, last))
                    }
                    None => None,
                }
            };
            let (delivered, next) = tokio::join!(push, next);
            if !delivered {
                break;
            }
            shaped = next;
            if pending_last {
                outcome = Ok(());
                break;
            }
        }
        drop(received);
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        outcome
    }

    /// Shapes a chunk into rows and dead letters, with the object's mark.
    async fn flush(&self, chunk: Chunk, url: &str, key: &str, meta: &ObjectMeta) -> Flush {
        let default_time_us = chrono::Utc::now().timestamp_micros();
        let mut flush = Flush {
            records: chunk.records.len(),
            bytes: chunk.bytes,
            marks: vec![SourceMark {
                source: key.to_string(),
                through: if chunk.last {
                    Some(OBJECT_DONE)
                } else {
                    chunk.through
                },
                as_of_us: None,
            }],
            ..Flush::default()
        };
        let mut positions = Vec::with_capacity(chunk.records.len());
        let mut records = Vec::with_capacity(chunk.records.len());
        for decoded in chunk.records {
            match decoded {
                Decoded::Parsed {
                    position,
                    mut value,
                    raw_len,
                } => {
                    if let Some(body) = value.as_object_mut() {
                        if self.source.include_metadata && !body.contains_key("_meta") {
                            body.insert(
                                "_meta".into(),
                                json!({"object": {"key": url, "record": position}}),
                            );
                        }
                    }
                    positions.push(position);
                    records.push(Record {
                        value,
                        raw_len,
                        derived_id: format!("{url}:{position}"),
                        default_time_us,
                    });
                }
                Decoded::Bad {
                    position,
                    error,
                    payload,
                } => flush.dead.push(self.record_letter(
                    key,
                    url,
                    meta,
                    position,
                    &error.to_string(),
                    &payload,
                )),
            }
        }
        let shaped = self.shaper.shape(records).await;
        for (position, outcome) in positions.into_iter().zip(shaped) {
            match outcome {
                Shaped::Row(mut row) => {
                    row.position = Some(RowPosition {
                        source: 0,
                        offset: position,
                    });
                    flush.rows.push(row);
                }
                Shaped::Filtered => flush.filtered += 1,
                Shaped::Rejected { reason, value } => {
                    let payload = value.to_string();
                    flush.dead.push(self.record_letter(
                        key,
                        url,
                        meta,
                        position,
                        &reason.to_string(),
                        payload.as_bytes(),
                    ));
                }
            }
        }
        flush
    }

    fn record_letter(
        &self,
        key: &str,
        url: &str,
        meta: &ObjectMeta,
        position: u64,
        error: &str,
        payload: &[u8],
    ) -> altdb_common::rpc::PutRow {
        let origin = json!({"object": url, "record": position});
        dead_letter(DeadLetter {
            collection: &self.spec.name,
            source: key,
            position: Some(position),
            origin: origin.as_object().cloned().unwrap_or_default(),
            key: None,
            payload: Some(payload),
            error,
            timestamp_us: Some(meta.last_modified.timestamp_micros()),
            now_us: chrono::Utc::now().timestamp_micros(),
        })
    }
}
