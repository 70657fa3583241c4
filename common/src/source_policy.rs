//! What sources an operator lets users configure.
//!
//! A source makes altdb's processes read from where a user says: a directory of
//! the tailer's host, an S3 endpoint, Kafka brokers, with client settings passed
//! through. Left open, that reads any file of the host, reaches any internal
//! address, or — through librdkafka settings such as `plugin.library.paths` or
//! `sasl.kerberos.kinit.cmd` — loads code or runs commands. So every source is
//! checked against the operator's allow-lists when its collection is created (by
//! the aggregator) and again when a tailer starts it:
//!
//! | what | allowed |
//! |---|---|
//! | `file://` directories | under one of `allowed_file_roots` (none by default) |
//! | S3 `endpoint` | AWS (no endpoint), or one of `allowed_s3_endpoints` |
//! | Kafka `brokers` | each `host:port` matches `allowed_kafka_brokers` (`host:port`, `host:*`, `*`; none by default) |
//! | client `properties` | the built-in safe lists below, plus `allowed_source_properties` |
//! | secrets as `{"file": ..}` | files under one of `allowed_secret_dirs` (none by default) |
//! | secrets as `{"env": ..}` | variables named `ALTDB_SECRET_*` ([`crate::secrets`]) |

use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use crate::collection::{KafkaSource, ObjectSource, Properties, SourceSpec};
use crate::secrets::PropertyValue;
use crate::{Error, Result};

/// librdkafka settings any source may set: security, tuning and timeouts; none
/// names a file, a command, a library or a URL to fetch.
pub const SAFE_KAFKA_PROPERTIES: &[&str] = &[
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.pem",
    "ssl.certificate.pem",
    "ssl.key.pem",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
    "enable.ssl.certificate.verification",
    "client.rack",
    "fetch.min.bytes",
    "fetch.max.bytes",
    "fetch.wait.max.ms",
    "max.partition.fetch.bytes",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "partition.assignment.strategy",
    "isolation.level",
    "socket.timeout.ms",
    "socket.keepalive.enable",
    "reconnect.backoff.ms",
    "reconnect.backoff.max.ms",
    "metadata.max.age.ms",
    "topic.metadata.refresh.interval.ms",
    "broker.address.family",
    "check.crcs",
];

/// object_store S3 settings any source may set: request style, and credentials
/// given with the source (secrets, see [`crate::secrets`]); none makes the tailer
/// fetch credentials from elsewhere.
pub const SAFE_S3_PROPERTIES: &[&str] = &[
    "aws_skip_signature",
    "aws_virtual_hosted_style_request",
    "aws_checksum_algorithm",
    "aws_unsigned_payload",
    "aws_request_payer",
    "aws_s3_express",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
];

/// The operator's allow-lists (role config keys of the same names).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourcePolicy {
    /// Absolute directories `file://` sources may read (and below).
    pub allowed_file_roots: Vec<String>,
    /// S3-compatible endpoints sources may name, e.g. `http://minio:9000`.
    pub allowed_s3_endpoints: Vec<String>,
    /// Kafka brokers sources may name: `host:port`, `host:*` or `*`.
    pub allowed_kafka_brokers: Vec<String>,
    /// Client properties allowed beyond the safe lists.
    pub allowed_source_properties: Vec<String>,
    /// Directories whose files source secrets may reference (none by default).
    #[serde(default)]
    pub allowed_secret_dirs: Vec<String>,
}

impl SourcePolicy {
    /// Checks one source; the error names the setting to change.
    pub fn check(&self, source: &SourceSpec) -> Result<()> {
        match source {
            SourceSpec::Datagen { .. } => Ok(()),
            SourceSpec::Kafka(kafka) => self.check_kafka(kafka),
            SourceSpec::S3(objects) => self.check_objects(objects),
        }
    }

    fn check_kafka(&self, kafka: &KafkaSource) -> Result<()> {
        for broker in kafka.brokers.split(',').map(str::trim) {
            let (host, _port) = broker.rsplit_once(':').ok_or_else(|| {
                Error::InvalidConfig(format!("kafka broker `{broker}` must be host:port"))
            })?;
            let allowed = self.allowed_kafka_brokers.iter().any(|pattern| {
                pattern == "*"
                    || pattern == broker
                    || pattern
                        .strip_suffix(":*")
                        .is_some_and(|pattern_host| pattern_host == host)
            });
            if !allowed {
                return Err(refused(format!(
                    "kafka broker `{broker}` is not in allowed_kafka_brokers ({})",
                    listed(&self.allowed_kafka_brokers)
                )));
            }
        }
        self.check_properties("kafka", &kafka.properties, SAFE_KAFKA_PROPERTIES)
    }

    fn check_objects(&self, objects: &ObjectSource) -> Result<()> {
        let (scheme, _, prefix) = objects.location()?;
        if scheme == "file" {
            let dir = format!("/{prefix}");
            if !self.file_allowed(Path::new(&dir)) {
                return Err(refused(format!(
                    "directory `{dir}` is not under allowed_file_roots ({})",
                    listed(&self.allowed_file_roots)
                )));
            }
        }
        if let Some(endpoint) = &objects.endpoint {
            let endpoint = endpoint.trim_end_matches('/');
            let allowed = self.allowed_s3_endpoints.iter().any(|allowed| {
                let allowed = allowed.trim_end_matches('/');
                allowed == endpoint
                    || allowed.strip_suffix(":*").is_some_and(|host| {
                        endpoint.strip_prefix(host).is_some_and(|port| {
                            port.strip_prefix(':').is_some_and(|p| {
                                !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
                            })
                        })
                    })
            });
            if !allowed {
                return Err(refused(format!(
                    "s3 endpoint `{endpoint}` is not in allowed_s3_endpoints ({})",
                    listed(&self.allowed_s3_endpoints)
                )));
            }
        }
        self.check_properties("s3", &objects.properties, SAFE_S3_PROPERTIES)
    }

    fn check_properties(&self, kind: &str, properties: &Properties, safe: &[&str]) -> Result<()> {
        for (key, value) in properties {
            if let PropertyValue::File(path) = value {
                if !under(Path::new(path), &self.allowed_secret_dirs) {
                    return Err(refused(format!(
                        "{kind} property `{key}` references the file `{path}`, which is not \
                         under allowed_secret_dirs ({})",
                        listed(&self.allowed_secret_dirs)
                    )));
                }
            }
            let allowed = safe.contains(&key.as_str())
                || self.allowed_source_properties.iter().any(|k| k == key);
            if !allowed {
                return Err(refused(format!(
                    "{kind} property `{key}` is not allowed (it is not one of the safe settings \
                     [{}], nor in allowed_source_properties)",
                    safe.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Whether `dir` (absolute) lies under an allowed root: compared by
    /// components, with no `..` anywhere.
    pub fn file_allowed(&self, dir: &Path) -> bool {
        under(dir, &self.allowed_file_roots)
    }

    /// Whether a secret file `path` (absolute) lies under an allowed secret directory.
    pub fn secret_file_allowed(&self, path: &Path) -> bool {
        under(path, &self.allowed_secret_dirs)
    }
}

/// Whether absolute `path` lies under one of `roots`: compared by components,
/// with no `..` anywhere.
fn under(path: &Path, roots: &[String]) -> bool {
    let plain = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    plain
        && roots
            .iter()
            .any(|root| !root.is_empty() && path.starts_with(Path::new(root)))
}

fn listed(items: &[String]) -> String {
    if items.is_empty() {
        "none are allowed".to_string()
    } else {
        format!("allowed: {}", items.join(", "))
    }
}

fn refused(what: String) -> Error {
    Error::InvalidConfig(format!(
        "{what}; sources may only reach what the operator allows: ask them to add it to the \
         aggregator's and tailers' configuration (ALTDB_ALLOWED_FILE_ROOTS, \
         ALTDB_ALLOWED_S3_ENDPOINTS, ALTDB_ALLOWED_KAFKA_BROKERS, \
         ALTDB_ALLOWED_SOURCE_PROPERTIES, ALTDB_ALLOWED_SECRET_DIRS)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(json: serde_json::Value) -> SourceSpec {
        serde_json::from_value(json).unwrap()
    }

    fn refusal(policy: &SourcePolicy, json: serde_json::Value) -> String {
        policy.check(&source(json)).unwrap_err().to_string()
    }

    #[test]
    fn only_what_the_operator_allows_passes() {
        let policy = SourcePolicy {
            allowed_file_roots: vec!["/data/drop".into()],
            allowed_s3_endpoints: vec!["http://minio:9000".into(), "http://127.0.0.1:*".into()],
            allowed_kafka_brokers: vec!["kafka-1:9092".into(), "kafka-2:*".into()],
            allowed_source_properties: vec!["debug".into()],
            allowed_secret_dirs: vec!["/etc/altdb/secrets".into()],
        };
        for ok in [
            serde_json::json!({"type": "kafka", "brokers": "kafka-1:9092", "topic": "t",
                               "properties": {"sasl.password": {"file": "/etc/altdb/secrets/kafka"}}}),
            serde_json::json!({"type": "s3", "url": "file:///data/drop/in/"}),
            serde_json::json!({"type": "s3", "url": "s3://bucket/x/"}),
            serde_json::json!({"type": "s3", "url": "s3://bucket/x/", "endpoint": "http://minio:9000/",
                               "properties": {"aws_skip_signature": "true"}}),
            serde_json::json!({"type": "s3", "url": "s3://bucket/x/", "endpoint": "http://127.0.0.1:9000"}),
            serde_json::json!({"type": "kafka", "brokers": "kafka-1:9092,kafka-2:9093", "topic": "t",
                               "properties": {"security.protocol": "sasl_ssl", "debug": "all"}}),
        ] {
            policy
                .check(&source(ok.clone()))
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let etc = refusal(
            &policy,
            serde_json::json!({"type": "s3", "url": "file:///etc/"}),
        );
        assert!(etc.contains("allowed_file_roots"), "{etc}");
        let escape = refusal(
            &policy,
            serde_json::json!({"type": "s3", "url": "file:///data/drop/../../etc/"}),
        );
        assert!(escape.contains("allowed_file_roots"), "{escape}");
        let sibling = refusal(
            &policy,
            serde_json::json!({"type": "s3", "url": "file:///data/dropped/"}),
        );
        assert!(sibling.contains("allowed_file_roots"), "{sibling}");
        let metadata = refusal(
            &policy,
            serde_json::json!({"type": "s3", "url": "s3://bucket/x/", "endpoint": "http://169.254.169.254"}),
        );
        assert!(metadata.contains("allowed_s3_endpoints"), "{metadata}");
        let other_host = refusal(
            &policy,
            serde_json::json!({"type": "s3", "url": "s3://bucket/x/", "endpoint": "http://127.0.0.10:9000"}),
        );
        assert!(other_host.contains("allowed_s3_endpoints"), "{other_host}");
        let credentials = refusal(
            &policy,
            serde_json::json!({"type": "s3", "url": "s3://bucket/x/",
                               "properties": {"aws_container_credentials_relative_uri": "/x"}}),
        );
        assert!(credentials.contains("not allowed"), "{credentials}");
        for outside in [
            "/etc/shadow",
            "/etc/altdb/secrets/../../shadow",
            "/etc/altdb/secretsx/k",
        ] {
            let secret = refusal(
                &policy,
                serde_json::json!({"type": "kafka", "brokers": "kafka-1:9092", "topic": "t",
                                   "properties": {"sasl.password": {"file": outside}}}),
            );
            assert!(
                secret.contains("allowed_secret_dirs"),
                "{outside}: {secret}"
            );
        }
        let broker = refusal(
            &policy,
            serde_json::json!({"type": "kafka", "brokers": "10.0.0.1:9092", "topic": "t"}),
        );
        assert!(broker.contains("allowed_kafka_brokers"), "{broker}");
        for dangerous in [
            "plugin.library.paths",
            "sasl.kerberos.kinit.cmd",
            "ssl.key.location",
        ] {
            let refused = refusal(
                &policy,
                serde_json::json!({"type": "kafka", "brokers": "kafka-1:9092", "topic": "t",
                                   "properties": {dangerous: "x"}}),
            );
            assert!(refused.contains(dangerous), "{refused}");
        }
        let nothing = SourcePolicy::default();
        let none = refusal(
            &nothing,
            serde_json::json!({"type": "kafka", "brokers": "k:9092", "topic": "t"}),
        );
        assert!(none.contains("none are allowed"), "{none}");
    }
}
