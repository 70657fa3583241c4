//! The collection spec: what a user sends to `POST /v1/collections`.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Largest number of shards a collection may have.
pub const MAX_SHARDS: u32 = 1024;

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
}

fn default_num_shards() -> u32 {
    4
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
}

fn default_datagen_rate() -> u32 {
    2000
}

impl SourceSpec {
    /// Stable name of this source, used as the key of its watermarks on the leaves.
    pub fn source_id(&self, collection: &str) -> String {
        match self {
            SourceSpec::Datagen { seed, .. } => format!("datagen:{collection}:{seed}"),
        }
    }
}

impl CollectionSpec {
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
            }
        }
        Ok(())
    }
}

/// Collection names are SQL identifiers that need no quoting.
pub fn validate_collection_name(name: &str) -> Result<()> {
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
    fn defaults_apply() {
        let spec = spec(r#"{"name":"events"}"#).unwrap();
        assert_eq!(spec.num_shards, 4);
        assert_eq!(spec.replication, 1);
        assert!(spec.sources.is_empty());
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
