//! Decoding one object into chunks of records, streamed with bounded memory.
//!
//! A reader runs on its own thread: the object's bytes stream from the store
//! through decompression into the format's decoder, and records leave in chunks of
//! at most [`CHUNK_RECORDS`] records / [`CHUNK_BYTES`] bytes over a channel that
//! holds two chunks, so a multi-GB object never sits in memory and reading waits
//! while the leaves are slow.
//!
//! A record's position is its line number (NDJSON, from 0, blank lines count), its
//! record number after the header (CSV), or its row number (Parquet).

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryFutureExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use serde_json::{Map, Number, Value};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

use altdb_common::collection::{Compression, ObjectFormat};

use crate::shape::RecordError;

/// A chunk ends after this many records ...
pub const CHUNK_RECORDS: usize = 10_000;
/// ... or this many bytes of records.
pub const CHUNK_BYTES: usize = 8 << 20;
/// Parquet rows decoded at a time.
const PARQUET_BATCH_ROWS: usize = 4096;

/// One record of an object.
#[derive(Debug)]
pub enum Decoded {
    Parsed {
        position: u64,
        value: Value,
        raw_len: usize,
    },
    /// It is not a record the format can read; kept for the dead letter.
    Bad {
        position: u64,
        error: RecordError,
        payload: Vec<u8>,
    },
}

/// Why an object cannot be read (further): it is retried, then dead-lettered whole.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error(
        "cannot tell the format of `{0}`: name objects .json/.ndjson/.jsonl, .csv or .parquet \
         (optionally + .gz/.zst), or set the source's `format`"
    )]
    UnknownFormat(String),
    #[error(
        "`{0}` is Parquet inside {1:?} compression; Parquet compresses its pages itself, store \
         it uncompressed"
    )]
    CompressedParquet(String, Compression),
    #[error("cannot read `{location}`: {reason}")]
    Read { location: Path, reason: String },
    #[error("`{location}` stopped at line {line}: {source}")]
    Interrupted {
        location: Path,
        line: u64,
        source: std::io::Error,
    },
    #[error("cannot read CSV `{location}`: {source}")]
    Csv { location: Path, source: csv::Error },
    #[error("CSV `{0}` needs a header line naming every column")]
    CsvHeader(Path),
    #[error("cannot read Parquet `{location}`: {reason}")]
    Parquet { location: Path, reason: String },
    #[error("cannot start a reader: {0}")]
    Thread(std::io::Error),
    /// The source's store cannot be opened (its settings are wrong).
    #[error("{0}")]
    Store(String),
    #[error("cannot list `{url}`: {source}")]
    List {
        url: String,
        source: object_store::Error,
    },
}

/// Consecutive records of an object.
#[derive(Debug, Default)]
pub struct Chunk {
    pub records: Vec<Decoded>,
    /// Every position up to here (inclusive) was read; `None` if none yet.
    pub through: Option<u64>,
    /// The object ends with this chunk.
    pub last: bool,
    pub bytes: usize,
}

/// How an object is encoded, from the source's settings and the object's name.
pub fn encoding(
    key: &str,
    format: ObjectFormat,
    compression: Compression,
) -> Result<(ObjectFormat, Compression), ObjectError> {
    let lower = key.to_ascii_lowercase();
    let (stem, named) = if let Some(stem) = lower
        .strip_suffix(".gz")
        .or_else(|| lower.strip_suffix(".gzip"))
    {
        (stem, Compression::Gzip)
    } else if let Some(stem) = lower
        .strip_suffix(".zst")
        .or_else(|| lower.strip_suffix(".zstd"))
    {
        (stem, Compression::Zstd)
    } else {
        (lower.as_str(), Compression::None)
    };
    let compression = match compression {
        Compression::Auto => named,
        set => set,
    };
    let format = match format {
        ObjectFormat::Auto => match stem.rsplit_once('.').map(|(_, ext)| ext) {
            Some("json" | "ndjson" | "jsonl") => ObjectFormat::Ndjson,
            Some("csv") => ObjectFormat::Csv,
            Some("parquet" | "pq") => ObjectFormat::Parquet,
            _ => return Err(ObjectError::UnknownFormat(key.to_string())),
        },
        set => set,
    };
    if format == ObjectFormat::Parquet && compression != Compression::None {
        return Err(ObjectError::CompressedParquet(key.to_string(), compression));
    }
    Ok((format, compression))
}

/// What a reader needs to know about its object.
pub struct ReadJob {
    pub store: Arc<dyn ObjectStore>,
    pub meta: ObjectMeta,
    pub format: ObjectFormat,
    pub compression: Compression,
    pub csv_delimiter: u8,
    /// Records before this position are stored already: skip them.
    pub start: u64,
}

/// Reads the object on a new thread into `chunks`; an `Err` ends the object (it
/// cannot be read further). Stops early when the receiver is dropped.
pub fn spawn(
    job: ReadJob,
    handle: Handle,
    chunks: mpsc::Sender<Result<Chunk, ObjectError>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("object-reader".into())
        .spawn(move || {
            let mut out = Out {
                chunks: chunks.clone(),
                chunk: Chunk::default(),
            };
            let result = match job.format {
                ObjectFormat::Parquet => read_parquet(&job, &handle, &mut out),
                _ => open(&job, &handle).and_then(|input| match job.format {
                    ObjectFormat::Csv => read_csv(input, &job, &mut out),
                    _ => read_ndjson(input, &job, &mut out),
                }),
            };
            let _ = match result {
                Ok(Flow::Stopped) => Ok(()),
                Ok(Flow::Go) => {
                    out.chunk.last = true;
                    chunks.blocking_send(Ok(std::mem::take(&mut out.chunk)))
                }
                Err(error) => {
                    // What was decoded before the error is still delivered.
                    let _ = out.send();
                    chunks.blocking_send(Err(error))
                }
            };
        })
}

enum Flow {
    Go,
    Stopped,
}

struct Out {
    chunks: mpsc::Sender<Result<Chunk, ObjectError>>,
    chunk: Chunk,
}

impl Out {
    fn push(&mut self, record: Decoded, position: u64, bytes: usize) -> Flow {
        self.chunk.records.push(record);
        self.advance(position);
        self.chunk.bytes += bytes;
        if self.chunk.records.len() >= CHUNK_RECORDS || self.chunk.bytes >= CHUNK_BYTES {
            return self.send();
        }
        Flow::Go
    }

    fn advance(&mut self, position: u64) {
        self.chunk.through = Some(position);
    }

    fn send(&mut self) -> Flow {
        if self.chunk.records.is_empty() && self.chunk.through.is_none() {
            return Flow::Go;
        }
        let chunk = std::mem::take(&mut self.chunk);
        match self.chunks.blocking_send(Ok(chunk)) {
            Ok(()) => Flow::Go,
            Err(_) => Flow::Stopped,
        }
    }
}

/// The object's bytes, decompressed, as a blocking reader.
fn open(job: &ReadJob, handle: &Handle) -> Result<Box<dyn BufRead + Send>, ObjectError> {
    let what = |e: &dyn std::fmt::Display| ObjectError::Read {
        location: job.meta.location.clone(),
        reason: e.to_string(),
    };
    let result = handle
        .block_on(job.store.get(&job.meta.location))
        .map_err(|e| what(&e))?;
    let stream = result.into_stream().map_err(std::io::Error::other);
    let bytes = SyncIoBridge::new_with_handle(StreamReader::new(stream), handle.clone());
    let raw: Box<dyn Read + Send> = match job.compression {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(bytes))),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(bytes).map_err(|e| what(&e))?)
        }
        Compression::None | Compression::Auto => Box::new(bytes),
    };
    Ok(Box::new(BufReader::with_capacity(1 << 20, raw)))
}

fn read_ndjson(
    mut input: Box<dyn BufRead + Send>,
    job: &ReadJob,
    out: &mut Out,
) -> Result<Flow, ObjectError> {
    let mut line = Vec::with_capacity(4096);
    let mut position = 0u64;
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .map_err(|source| ObjectError::Interrupted {
                location: job.meta.location.clone(),
                line: position,
                source,
            })?;
        if n == 0 {
            return Ok(Flow::Go);
        }
        let this = position;
        position += 1;
        if this < job.start {
            continue;
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            out.advance(this);
            continue;
        }
        let record = match serde_json::from_slice::<Value>(text) {
            Ok(value) => Decoded::Parsed {
                position: this,
                value,
                raw_len: text.len(),
            },
            Err(e) => Decoded::Bad {
                position: this,
                error: RecordError::MalformedJson(e),
                payload: text.to_vec(),
            },
        };
        if let Flow::Stopped = out.push(record, this, n) {
            return Ok(Flow::Stopped);
        }
    }
}

fn read_csv(
    input: Box<dyn BufRead + Send>,
    job: &ReadJob,
    out: &mut Out,
) -> Result<Flow, ObjectError> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(job.csv_delimiter)
        .has_headers(true)
        .flexible(true)
        .from_reader(input);
    let failed = |source: csv::Error| ObjectError::Csv {
        location: job.meta.location.clone(),
        source,
    };
    let headers: Vec<String> = reader
        .headers()
        .map_err(failed)?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    if headers.is_empty() || headers.iter().any(String::is_empty) {
        return Err(ObjectError::CsvHeader(job.meta.location.clone()));
    }
    let mut record = csv::ByteRecord::new();
    let mut position = 0u64;
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => return Ok(Flow::Go),
            Ok(true) => {}
            Err(e) if matches!(e.kind(), csv::ErrorKind::Io(_)) => return Err(failed(e)),
            Err(e) => {
                // A malformed record (e.g. bad quoting): set it aside, go on.
                let bytes = record.as_slice().len();
                let bad = Decoded::Bad {
                    position,
                    error: RecordError::MalformedCsv(e),
                    payload: record.as_slice().to_vec(),
                };
                position += 1;
                if position > job.start {
                    if let Flow::Stopped = out.push(bad, position - 1, bytes) {
                        return Ok(Flow::Stopped);
                    }
                }
                continue;
            }
        }
        let this = position;
        position += 1;
        if this < job.start {
            continue;
        }
        let bytes = record.as_slice().len() + record.len();
        let decoded = csv_document(&headers, &record)
            .map(|value| Decoded::Parsed {
                position: this,
                value,
                raw_len: bytes,
            })
            .unwrap_or_else(|error| Decoded::Bad {
                position: this,
                error,
                payload: join_fields(&record, job.csv_delimiter),
            });
        if let Flow::Stopped = out.push(decoded, this, bytes) {
            return Ok(Flow::Stopped);
        }
    }
}

fn join_fields(record: &csv::ByteRecord, delimiter: u8) -> Vec<u8> {
    let mut line = Vec::with_capacity(record.as_slice().len() + record.len());
    for (i, field) in record.iter().enumerate() {
        if i > 0 {
            line.push(delimiter);
        }
        line.extend_from_slice(field);
    }
    line
}

/// A CSV record as a JSON object: header names as keys (dotted names nest, as in
/// JSON documents), empty fields left out, and numbers and booleans typed.
fn csv_document(headers: &[String], record: &csv::ByteRecord) -> Result<Value, RecordError> {
    if record.len() > headers.len() {
        return Err(RecordError::ExtraFields {
            fields: record.len(),
            columns: headers.len(),
        });
    }
    let mut doc = Map::new();
    for (name, field) in headers.iter().zip(record.iter()) {
        let text = std::str::from_utf8(field).map_err(|_| RecordError::NotUtf8(name.clone()))?;
        if text.is_empty() {
            continue;
        }
        doc.insert(name.clone(), csv_value(text));
    }
    Ok(Value::Object(doc))
}

/// The JSON value of a CSV field: integers and decimals written plainly become
/// numbers (`007`, `+5` or `1,5` stay text: likely codes), `true`/`false` booleans,
/// anything else text.
fn csv_value(text: &str) -> Value {
    if plain_number(text) {
        if let Ok(n) = text.parse::<i64>() {
            return Value::Number(n.into());
        }
        if let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    match text {
        "true" | "TRUE" | "True" => Value::Bool(true),
        "false" | "FALSE" | "False" => Value::Bool(false),
        _ => Value::String(text.to_string()),
    }
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
fn plain_number(text: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e.strip_prefix(['+', '-']).unwrap_or(e))),
        None => (unsigned, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (mantissa, None),
    };
    digits(whole)
        && (whole == "0" || !whole.starts_with('0'))
        && fraction.is_none_or(digits)
        && exponent.is_none_or(digits)
}

fn read_parquet(job: &ReadJob, handle: &Handle, out: &mut Out) -> Result<Flow, ObjectError> {
    let failed = |e: &dyn std::fmt::Display| ObjectError::Parquet {
        location: job.meta.location.clone(),
        reason: e.to_string(),
    };
    let reader = ParquetObject {
        store: job.store.clone(),
        path: job.meta.location.clone(),
        size: job.meta.size,
    };
    let builder = handle
        .block_on(ParquetRecordBatchStreamBuilder::new(reader))
        .map_err(|e| failed(&e))?;
    let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
    let mut stream = builder
        .with_batch_size(PARQUET_BATCH_ROWS)
        .with_offset(job.start.min(rows) as usize)
        .build()
        .map_err(|e| failed(&e))?;
    let mut position = job.start;
    while let Some(batch) = handle.block_on(stream.next()) {
        let batch = batch.map_err(|e| failed(&e))?;
        let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
        writer.write(&batch).map_err(|e| failed(&e))?;
        writer.finish().map_err(|e| failed(&e))?;
        let text = writer.into_inner();
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let record = match serde_json::from_slice::<Value>(line) {
                Ok(value) => Decoded::Parsed {
                    position,
                    value,
                    raw_len: line.len(),
                },
                Err(e) => Decoded::Bad {
                    position,
                    error: RecordError::Unconvertible(e),
                    payload: line.to_vec(),
                },
            };
            if let Flow::Stopped = out.push(record, position, line.len()) {
                return Ok(Flow::Stopped);
            }
            position += 1;
        }
    }
    Ok(Flow::Go)
}

/// Ranged reads of a Parquet object: only the footer and the row groups being
/// decoded are fetched.
struct ParquetObject {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

fn parquet_error(error: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(error))
}

impl AsyncFileReader for ParquetObject {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.store
            .get_range(&self.path, range)
            .map_err(parquet_error)
            .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn encodings_come_from_names_unless_set() {
        let auto = |key| encoding(key, ObjectFormat::Auto, Compression::Auto).ok();
        assert_eq!(
            auto("a/b.json.gz"),
            Some((ObjectFormat::Ndjson, Compression::Gzip))
        );
        assert_eq!(auto("b.CSV"), Some((ObjectFormat::Csv, Compression::None)));
        assert_eq!(
            auto("c.jsonl.zst"),
            Some((ObjectFormat::Ndjson, Compression::Zstd))
        );
        assert_eq!(
            auto("d.parquet"),
            Some((ObjectFormat::Parquet, Compression::None))
        );
        let error = |key| encoding(key, ObjectFormat::Auto, Compression::Auto).unwrap_err();
        assert!(matches!(error("e.txt"), ObjectError::UnknownFormat(key) if key == "e.txt"));
        assert!(matches!(
            error("f.parquet.gz"),
            ObjectError::CompressedParquet(_, Compression::Gzip)
        ));
        assert_eq!(
            encoding("g.log", ObjectFormat::Ndjson, Compression::Auto).ok(),
            Some((ObjectFormat::Ndjson, Compression::None))
        );
    }

    #[test]
    fn csv_fields_are_typed_only_when_canonical() {
        assert_eq!(csv_value("42"), json!(42));
        assert_eq!(csv_value("-7"), json!(-7));
        assert_eq!(csv_value("007"), json!("007"));
        assert_eq!(csv_value("1.5"), json!(1.5));
        assert_eq!(csv_value("0.25"), json!(0.25));
        assert_eq!(csv_value("3.0"), json!(3.0));
        assert_eq!(csv_value("1e3"), json!(1000.0));
        assert_eq!(csv_value("1."), json!("1."));
        assert_eq!(csv_value("true"), json!(true));
        assert_eq!(csv_value("NaN"), json!("NaN"));
        assert_eq!(csv_value("12ab"), json!("12ab"));
        assert_eq!(csv_value("+5"), json!("+5"));
    }
}
