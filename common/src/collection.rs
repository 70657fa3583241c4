//! The collection spec: what a user sends to `POST /v1/collections`.

use serde::{Deserialize, Serialize};

use crate::secrets::{PropertyValue, REDACTED};
use crate::{Error, Result};

/// Largest number of shards a collection may have.
pub const MAX_SHARDS: u32 = 1024;

/// The system collection of records a source could not ingest (the dead-letter store).
pub const DLQ_COLLECTION: &str = "_dlq";

/// A source's client settings (librdkafka or object_store), by name.
pub type Properties = std::collections::BTreeMap<String, PropertyValue>;

/// A named, schemaless set of JSON documents and how it is fed and laid out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionSpec {
    pub name: String,
    #[serde(default = "default_num_shards")]
    pub num_shards: u32,
    /// Copies of each shard, on distinct leaves.
    #[serde(default = "default_replication")]
    pub replication: u32,
    /// Copies of a shard that must store a write before it is acknowledged
    /// (a cluster with a metastore; without one every copy must). Default
    /// [`CollectionSpec::write_quorum`]: a majority, and both copies with
    /// replication 2. A ready copy that missed an acknowledged write serves no
    /// reads until it has caught up from a copy that has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_quorum: Option<u32>,
    /// How long documents are kept, by `_event_time` (`"30d"`, `"12h"`,
    /// `"90m"`, `"45s"`, `"2w"`): older ones are invisible to queries at once
    /// and removed from the leaves soon after; arriving ones already older
    /// are dropped. `None`: kept for ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
    /// What a source does with a record older than the retention keeps (a
    /// late event): `dead_letter` it to `_dlq` with the reason (the default),
    /// or `drop` it, counted. HTTP writes refuse such documents either way.
    #[serde(default, skip_serializing_if = "LateEvents::is_default")]
    pub late_events: LateEvents,
    /// Dotted path of the field that holds the document id; else `_id`, else derived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_field: Option<String>,
    /// Dotted path of the field that holds the event time; else the ingest time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time_field: Option<String>,
    /// Fields that also get tokenized full-text indexing.
    #[serde(default)]
    pub text_fields: Vec<String>,
    /// Sources the tailers read into this collection.
    #[serde(default)]
    pub sources: Vec<SourceSpec>,
    /// Ingest transform applied to every document from every source (HTTP writes
    /// included): `SELECT ... FROM _input [WHERE ...]`, see [`crate::transform`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<String>,
    /// The collection is a rollup of what its sources send: `SELECT <time
    /// bucket> AS _event_time, <dimensions>, COUNT(*)|SUM|MIN|MAX(..) AS
    /// <name>, .. FROM _input GROUP BY ..` ([`crate::rollup`]); one document
    /// per group, updated in place as records arrive. Not with `transform` or
    /// `id_field`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollup: Option<String>,
    /// Distinct fields (flattened paths) a shard of the collection may hold; a
    /// document that would add more is refused with the reason (HTTP) or goes to
    /// `_dlq` (sources), so keys made of data (`{"user_123": ..}`) cannot grow
    /// the schema, the plans and the indexes without bound.
    #[serde(default = "default_max_fields")]
    pub max_fields: u32,
    /// Which creation of the name this is, set by the catalog (whatever a client
    /// sends): leaves keep data, watermarks and placement per incarnation, so a
    /// deleted collection's data, sources and writes in flight never reach one
    /// created later under the same name. 0: created before incarnations existed
    /// (and system collections).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub incarnation: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn default_num_shards() -> u32 {
    4
}

/// Default of [`CollectionSpec::max_fields`].
pub const DEFAULT_MAX_FIELDS: u32 = 10_000;
/// Highest [`CollectionSpec::max_fields`] accepted.
pub const MAX_MAX_FIELDS: u32 = 1_000_000;

fn default_max_fields() -> u32 {
    DEFAULT_MAX_FIELDS
}

fn default_replication() -> u32 {
    1
}

/// A source of documents for a collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceSpec {
    /// Built-in generator of realistic clickstream events.
    Datagen {
        /// Events per second.
        #[serde(default = "default_datagen_rate")]
        rate: u32,
        /// Stop after this many events (none: run forever).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_events: Option<u64>,
        #[serde(default)]
        seed: u64,
    },
    /// A Kafka topic, read by the tailers of a consumer group.
    Kafka(KafkaSource),
    /// Objects under an S3 prefix or files under a local directory: the ones there
    /// now (backfill) and the ones that appear later.
    S3(ObjectSource),
}

/// How the records of an object are encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectFormat {
    /// From the object's name: `.json`/`.ndjson`/`.jsonl`, `.csv`, `.parquet`
    /// (before a `.gz`/`.zst` suffix).
    #[default]
    Auto,
    /// One JSON object per line.
    Ndjson,
    /// A header line of field names, then one record per line.
    Csv,
    Parquet,
}

/// How objects are compressed (Parquet compresses inside the file instead).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// From the object's name: `.gz` is gzip, `.zst` is zstd, else none.
    #[default]
    Auto,
    None,
    Gzip,
    Zstd,
}

/// `{"type":"s3","url":"s3://bucket/prefix/"}` (or `file:///dir/`) in a collection's `sources`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectSource {
    /// `s3://bucket/prefix/` or `file:///absolute/dir/`.
    pub url: String,
    #[serde(default)]
    pub format: ObjectFormat,
    #[serde(default)]
    pub compression: Compression,
    /// S3 API endpoint for S3-compatible stores (MinIO, R2, ..), e.g. `http://host:9000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// How often the prefix is listed for new objects, e.g. `"10s"`, `"500ms"`, `"1m"`.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: String,
    /// Field separator of CSV objects.
    #[serde(default = "default_csv_delimiter")]
    pub csv_delimiter: char,
    /// Add `_meta.object` (`key`, `record`) to every document.
    #[serde(default = "default_true")]
    pub include_metadata: bool,
    /// object_store S3 settings passed through (e.g. `aws_skip_signature`,
    /// `aws_virtual_hosted_style_request`, or credentials: `aws_access_key_id`,
    /// `aws_secret_access_key`, `aws_session_token`, see [`crate::secrets`]);
    /// without credentials here, they come from the usual `AWS_*` environment
    /// variables of the tailers.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub properties: Properties,
}

fn default_poll_interval() -> String {
    "10s".to_string()
}

fn default_csv_delimiter() -> char {
    ','
}

impl ObjectSource {
    /// The watermark of an object that was read to its end (an object's watermark
    /// is otherwise the number of its last stored record).
    pub const DONE: u64 = u64::MAX - 1;

    /// The watermark key of one object: `s3:<collection>:<object url>`.
    pub fn object_source(&self, collection: &str, object_url: &str) -> String {
        format!("s3:{collection}:{object_url}")
    }

    /// `(scheme, bucket, prefix)` of [`Self::url`]; the prefix has no leading `/`.
    pub fn location(&self) -> Result<(&str, &str, &str)> {
        let bad = || {
            Error::InvalidConfig(format!(
                "s3 source url `{}` is invalid; use `s3://bucket/prefix/` or `file:///absolute/dir/`",
                self.url
            ))
        };
        if let Some(rest) = self.url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-')
                });
            if !bucket_ok {
                return Err(Error::InvalidConfig(format!(
                    "s3 bucket `{bucket}` is invalid; bucket names have 3 to 63 lowercase                      letters, digits, `.` or `-`"
                )));
            }
            Ok(("s3", bucket, prefix))
        } else if let Some(path) = self.url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad());
            }
            Ok(("file", "", path.trim_start_matches('/')))
        } else {
            Err(bad())
        }
    }

    /// [`Self::poll_interval`] as a duration.
    pub fn poll_interval(&self) -> Result<std::time::Duration> {
        let text = self.poll_interval.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number.parse().map_err(|_| self.bad_interval())?;
        let seconds = match unit.trim() {
            "ms" => number / 1000.0,
            "s" | "" => number,
            "m" => number * 60.0,
            "h" => number * 3600.0,
            _ => return Err(self.bad_interval()),
        };
        if !(0.1..=86_400.0).contains(&seconds) {
            return Err(Error::InvalidConfig(format!(
                "poll_interval `{}` must be between 100ms and 24h",
                self.poll_interval
            )));
        }
        Ok(std::time::Duration::from_secs_f64(seconds))
    }

    fn bad_interval(&self) -> Error {
        Error::InvalidConfig(format!(
            "poll_interval `{}` is not a duration; write e.g. \"500ms\", \"10s\" or \"5m\"",
            self.poll_interval
        ))
    }

    fn validate(&self) -> Result<()> {
        self.location()?;
        self.poll_interval()?;
        if let Some(endpoint) = &self.endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(Error::InvalidConfig(format!(
                    "s3 endpoint `{endpoint}` must be an http:// or https:// URL"
                )));
            }
        }
        if self.csv_delimiter == '\n' || self.csv_delimiter == '"' || !self.csv_delimiter.is_ascii()
        {
            return Err(Error::InvalidConfig(format!(
                "csv_delimiter {:?} cannot separate fields; use an ASCII character such as \",\", \";\" or \"\\t\"",
                self.csv_delimiter
            )));
        }
        validate_properties(&self.properties)?;
        for key in self.properties.keys() {
            if key.parse::<object_store::aws::AmazonS3ConfigKey>().is_err() {
                return Err(Error::InvalidConfig(format!(
                    "s3 property `{key}` is not an object_store S3 setting (e.g. \
                     `aws_skip_signature`, `aws_virtual_hosted_style_request`)"
                )));
            }
        }
        Ok(())
    }
}

/// Where a Kafka source starts when the leaves hold nothing of a partition yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    #[default]
    Earliest,
    Latest,
}

/// How records of a source are decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordFormat {
    /// One JSON object per record.
    #[default]
    Json,
}

/// What a Kafka record with a key and no value (a tombstone) does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaDeletes {
    /// It is no document: it goes to `_dlq`.
    #[default]
    DeadLetters,
    /// It deletes the document whose `_id` is the record's key (a compacted
    /// topic's deletes).
    Tombstones,
}

/// `{"type":"kafka","brokers":..,"topic":..}` in a collection's `sources`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSource {
    /// Bootstrap servers, `host:port,..`.
    pub brokers: String,
    pub topic: String,
    #[serde(default)]
    pub format: RecordFormat,
    #[serde(default)]
    pub start: StartFrom,
    /// Consumer group shared by the tailers; default `altdb-<collection>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_group: Option<String>,
    /// Add `_meta.kafka` (partition, offset, timestamp, key, headers) to every document.
    #[serde(default = "default_true")]
    pub include_metadata: bool,
    /// `tombstones`: a record with a key and no value deletes `_id = key`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub deletes: KafkaDeletes,
    /// librdkafka settings passed through (e.g. `security.protocol`, `sasl.*`;
    /// secrets inline or as references, see [`crate::secrets`]).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub properties: Properties,
}

/// librdkafka settings altdb sets itself; a source may not override them.
pub const MANAGED_KAFKA_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "group.instance.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.partition.eof",
];

impl KafkaSource {
    pub fn consumer_group(&self, collection: &str) -> String {
        self.consumer_group
            .clone()
            .unwrap_or_else(|| format!("altdb-{collection}"))
    }

    /// The watermark key of one partition: `kafka:<collection>:<topic>:<partition>`.
    pub fn partition_source(&self, collection: &str, partition: i32) -> String {
        format!("kafka:{collection}:{}:{partition}", self.topic)
    }

    fn validate(&self) -> Result<()> {
        if self.brokers.trim().is_empty() {
            return Err(Error::InvalidConfig(
                "kafka source needs `brokers`, e.g. \"localhost:9092\"".into(),
            ));
        }
        let topic_ok = !self.topic.is_empty()
            && self.topic.len() <= 249
            && self
                .topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !topic_ok {
            return Err(Error::InvalidConfig(format!(
                "kafka topic `{}` is invalid; use 1 to 249 letters, digits, `.`, `_` or `-`",
                self.topic
            )));
        }
        validate_properties(&self.properties)?;
        if let Some(key) = self
            .properties
            .keys()
            .find(|k| MANAGED_KAFKA_PROPERTIES.contains(&k.as_str()))
        {
            return Err(Error::InvalidConfig(format!(
                "kafka property `{key}` is set by altdb; use `brokers`, `consumer_group` or \
                 `start` instead, or drop it"
            )));
        }
        Ok(())
    }
}

/// Values of client settings: no redacted text sent back, references well formed.
fn validate_properties(properties: &Properties) -> Result<()> {
    for (name, value) in properties {
        match value {
            PropertyValue::Text(text) if text == REDACTED => {
                return Err(Error::InvalidConfig(format!(
                    "property `{name}` is `{REDACTED}`, which is what altdb shows instead of a                      secret; give the secret itself or a reference such as                      {{\"env\": \"ALTDB_SECRET_...\"}}"
                )))
            }
            PropertyValue::Env(var) => {
                crate::secrets::check_env_name(name, var).map_err(Error::InvalidConfig)?
            }
            PropertyValue::File(path) if !path.starts_with('/') => {
                return Err(Error::InvalidConfig(format!(
                    "property `{name}` references the file `{path}`; give an absolute path"
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

fn default_true() -> bool {
    true
}

fn default_datagen_rate() -> u32 {
    2000
}

impl SourceSpec {
    /// Stable name of this source, used as the key of its watermarks on the leaves.
    pub fn source_id(&self, collection: &str) -> String {
        match self {
            SourceSpec::Datagen { seed, .. } => format!("datagen:{collection}:{seed}"),
            SourceSpec::Kafka(kafka) => format!("kafka:{collection}:{}", kafka.topic),
            SourceSpec::S3(objects) => format!("s3:{collection}:{}", objects.url),
        }
    }
}

/// What a source does with a late event ([`CollectionSpec::late_events`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LateEvents {
    #[default]
    DeadLetter,
    Drop,
}

impl LateEvents {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl CollectionSpec {
    /// The spec as API responses show it: secrets of its sources' client
    /// settings replaced by [`REDACTED`] (see [`crate::secrets`]).
    pub fn redacted(&self) -> CollectionSpec {
        let mut spec = self.clone();
        for source in &mut spec.sources {
            let properties = match source {
                SourceSpec::Kafka(kafka) => &mut kafka.properties,
                SourceSpec::S3(objects) => &mut objects.properties,
                SourceSpec::Datagen { .. } => continue,
            };
            for (name, value) in properties.iter_mut() {
                *value = value.shown(name);
            }
        }
        spec
    }

    /// The spec of [`DLQ_COLLECTION`], which the aggregator creates on start-up.
    pub fn dead_letters() -> Self {
        Self {
            name: DLQ_COLLECTION.to_string(),
            num_shards: 2,
            replication: 1,
            write_quorum: None,
            retention: None,
            late_events: LateEvents::DeadLetter,
            id_field: None,
            event_time_field: None,
            text_fields: vec!["error".to_string()],
            sources: Vec::new(),
            transform: None,
            rollup: None,
            max_fields: DEFAULT_MAX_FIELDS,
            incarnation: 0,
        }
    }

    /// Copies of a shard that must store a write before it is acknowledged:
    /// `write_quorum` if set, else a majority of `replication` (all of them
    /// when that is 1 or 2).
    pub fn write_quorum(&self) -> u32 {
        self.write_quorum
            .unwrap_or(if self.replication <= 2 {
                self.replication
            } else {
                self.replication / 2 + 1
            })
            .max(1)
    }

    /// How long documents are kept ([`CollectionSpec::retention`]).
    pub fn retention(&self) -> Option<std::time::Duration> {
        self.retention.as_deref().and_then(parse_duration)
    }

    /// The oldest `_event_time` (microseconds) kept at `now_us`.
    pub fn retention_cutoff_us(&self, now_us: i64) -> Option<i64> {
        self.retention()
            .map(|d| now_us.saturating_sub(d.as_micros().min(i64::MAX as u128) as i64))
    }

    /// Whether altdb manages this collection itself (its name starts with `_`).
    pub fn is_system(name: &str) -> bool {
        name.starts_with('_')
    }

    /// Checks the spec and says what to fix.
    pub fn validate(&self) -> Result<()> {
        validate_collection_name(&self.name)?;
        if self.num_shards == 0 || self.num_shards > MAX_SHARDS {
            return Err(Error::InvalidConfig(format!(
                "num_shards must be between 1 and {MAX_SHARDS}, got {}",
                self.num_shards
            )));
        }
        if self.replication == 0 {
            return Err(Error::InvalidConfig(
                "replication must be at least 1".to_string(),
            ));
        }
        if let Some(quorum) = self.write_quorum {
            if quorum == 0 || quorum > self.replication {
                return Err(Error::InvalidConfig(format!(
                    "write_quorum must be between 1 and replication ({}), got {quorum}",
                    self.replication
                )));
            }
        }
        if let Some(text) = &self.retention {
            match parse_duration(text) {
                Some(d) if d.as_secs() >= 1 => {}
                _ => {
                    return Err(Error::InvalidConfig(format!(
                        "retention must be a duration of at least 1s like \"30d\", \"12h\", \
                         \"90m\" or \"2w\", got {text:?}"
                    )))
                }
            }
        }
        if self.max_fields == 0 || self.max_fields > MAX_MAX_FIELDS {
            return Err(Error::InvalidConfig(format!(
                "max_fields must be between 1 and {MAX_MAX_FIELDS}, got {}",
                self.max_fields
            )));
        }
        for (what, field) in [
            ("id_field", &self.id_field),
            ("event_time_field", &self.event_time_field),
        ] {
            if let Some(field) = field {
                validate_field_path(what, field)?;
            }
        }
        for field in &self.text_fields {
            validate_field_path("text_fields", field)?;
        }
        for source in &self.sources {
            match source {
                SourceSpec::Datagen { rate, .. } if *rate == 0 => {
                    return Err(Error::InvalidConfig(
                        "datagen rate must be at least 1 event/s".to_string(),
                    ))
                }
                SourceSpec::Datagen { .. } => {}
                SourceSpec::Kafka(kafka) => kafka.validate()?,
                SourceSpec::S3(objects) => objects.validate()?,
            }
        }
        if let Some(sql) = &self.transform {
            crate::transform::IngestTransform::compile(sql)?;
        }
        if let Some(sql) = &self.rollup {
            if self.transform.is_some()
                || self.id_field.is_some()
                || self.event_time_field.is_some()
            {
                return Err(Error::InvalidConfig(
                    "a rollup gives its documents their `_id` (its groups) and `_event_time` \
                     (its time bucket): leave out transform, id_field and event_time_field"
                        .into(),
                ));
            }
            let rollup = crate::rollup::Rollup::parse(sql).map_err(Error::InvalidConfig)?;
            crate::transform::IngestTransform::compile(&rollup.per_record)?;
        }
        Ok(())
    }
}

/// A duration like `30d`, `12h`, `90m`, `45s`, `2w` (a number and a unit).
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return None,
    };
    Some(std::time::Duration::from_secs(number.checked_mul(seconds)?))
}

/// Collection names are SQL identifiers that need no quoting.
pub fn validate_collection_name(name: &str) -> Result<()> {
    if CollectionSpec::is_system(name) {
        return Err(Error::InvalidConfig(format!(
            "collection name `{name}` is reserved: names starting with `_` are system \
             collections such as `{DLQ_COLLECTION}`"
        )));
    }
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "collection name `{name}` is invalid; use 1 to 64 lowercase letters, digits and \
             underscores, starting with a letter"
        )))
    }
}

/// Whether `name` can be a stored collection's name: a user collection's (see
/// [`validate_collection_name`]) or a system one's (`_dlq`). Leaves check every
/// name a caller sends with this before it touches storage (names become RocksDB
/// key prefixes and directory names).
pub fn is_storable_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn validate_field_path(what: &str, path: &str) -> Result<()> {
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(Error::InvalidConfig(format!(
            "{what} `{path}` is not a field path; use a field name or a dotted path like `user.id`"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<CollectionSpec> {
        let spec: CollectionSpec = serde_json::from_str(json)?;
        spec.validate()?;
        Ok(spec)
    }

    #[test]
    fn storable_names_never_leave_a_directory() {
        for name in ["events", "_dlq", "a_1"] {
            assert!(is_storable_name(name), "{name}");
        }
        for name in [
            "",
            "..",
            "../x",
            "/etc",
            "a/b",
            "A",
            "a.b",
            "1a",
            &"a".repeat(65),
        ] {
            assert!(!is_storable_name(name), "{name}");
        }
    }

    #[test]
    fn defaults_apply() {
        let spec = spec(r#"{"name":"events"}"#).unwrap();
        assert_eq!(spec.num_shards, 4);
        assert_eq!(spec.replication, 1);
        assert!(spec.sources.is_empty());
        assert_eq!(spec.write_quorum(), 1);
    }

    #[test]
    fn retention_is_a_duration_with_a_unit() {
        let retention = |json: &str| spec(json).map(|s| s.retention());
        assert_eq!(
            retention(r#"{"name":"c","retention":"30d"}"#).unwrap(),
            Some(std::time::Duration::from_secs(30 * 86_400))
        );
        assert_eq!(retention(r#"{"name":"c"}"#).unwrap(), None);
        for bad in ["30", "0s", "d", "-1d", "1y"] {
            let err = retention(&format!(r#"{{"name":"c","retention":"{bad}"}}"#))
                .unwrap_err()
                .to_string();
            assert!(err.contains("retention must be a duration"), "{bad}: {err}");
        }
        let spec = spec(r#"{"name":"c","retention":"1h"}"#).unwrap();
        assert_eq!(spec.retention_cutoff_us(7_200_000_000), Some(3_600_000_000));
    }

    #[test]
    fn the_write_quorum_is_a_majority_and_both_of_two_copies() {
        let quorum = |json: &str| spec(json).map(|s| s.write_quorum());
        assert_eq!(quorum(r#"{"name":"c","replication":2}"#).unwrap(), 2);
        assert_eq!(quorum(r#"{"name":"c","replication":3}"#).unwrap(), 2);
        assert_eq!(quorum(r#"{"name":"c","replication":5}"#).unwrap(), 3);
        assert_eq!(
            quorum(r#"{"name":"c","replication":2,"write_quorum":1}"#).unwrap(),
            1
        );
        let err = quorum(r#"{"name":"c","replication":2,"write_quorum":3}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("write_quorum must be between 1 and replication (2)"),
            "{err}"
        );
    }

    #[test]
    fn bad_specs_say_what_to_fix() {
        let err = spec(r#"{"name":"Bad-Name"}"#).unwrap_err().to_string();
        assert!(err.contains("lowercase"), "{err}");
        let err = spec(r#"{"name":"ok","num_shards":0}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("num_shards"), "{err}");
        let err = spec(r#"{"name":"ok","id_field":"a..b"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("id_field"), "{err}");
        assert!(spec(r#"{"name":"ok","shards":3}"#).is_err());
    }

    #[test]
    fn kafka_source_parses_and_validates() {
        let spec = spec(
            r#"{"name":"orders","sources":[{"type":"kafka","brokers":"k:9092","topic":"orders.v1",
                "properties":{"fetch.min.bytes":"1"}}]}"#,
        )
        .unwrap();
        let SourceSpec::Kafka(kafka) = &spec.sources[0] else {
            panic!("not kafka")
        };
        assert_eq!(kafka.start, StartFrom::Earliest);
        assert_eq!(kafka.consumer_group("orders"), "altdb-orders");
        assert_eq!(
            kafka.partition_source("orders", 3),
            "kafka:orders:orders.v1:3"
        );
        let err = spec_err(r#"{"type":"kafka","brokers":"k:1","topic":"a b"}"#);
        assert!(err.contains("topic"), "{err}");
        let err = spec_err(
            r#"{"type":"kafka","brokers":"k:1","topic":"t","properties":{"enable.auto.commit":"true"}}"#,
        );
        assert!(err.contains("enable.auto.commit"), "{err}");
        let err = spec_err(r#"{"type":"kafka","brokers":"k:1","topic":"t","start":"middle"}"#);
        assert!(err.contains("unknown variant"), "{err}");
    }

    fn spec_err(source: &str) -> String {
        spec(&format!(r#"{{"name":"c","sources":[{source}]}}"#))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn datagen_source_parses() {
        let spec = spec(r#"{"name":"clicks","sources":[{"type":"datagen","rate":10}]}"#).unwrap();
        assert_eq!(
            spec.sources[0],
            SourceSpec::Datagen {
                rate: 10,
                max_events: None,
                seed: 0
            }
        );
    }
}
