//! Source client settings that are secrets: write-only, or references.
//!
//! A source's `properties` (librdkafka or object_store settings) may hold
//! credentials: `sasl.password`, `ssl.key.password`, `ssl.key.pem`,
//! `aws_secret_access_key`, `aws_session_token`, ... ([`is_secret_property`]). Such
//! a value is given either inline — then it is stored, sent to the tailers, and
//! shown to nobody else: every API response carries [`REDACTED`] instead — or as a
//! reference the tailer resolves when it starts the source, so it is never stored:
//!
//! ```json
//! "properties": {
//!   "sasl.username": "ingest",
//!   "sasl.password": {"env": "ALTDB_SECRET_KAFKA_PASSWORD"},
//!   "ssl.key.pem": {"file": "/etc/altdb/secrets/kafka-key.pem"}
//! }
//! ```
//!
//! Environment references must name variables starting with [`ENV_PREFIX`], so a
//! source cannot read the tailer's other variables (its cluster secret, cloud
//! credentials); file references must lie under one of the operator's
//! `allowed_secret_dirs` (none by default), checked like `allowed_file_roots`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What an API response shows instead of an inline secret.
pub const REDACTED: &str = "<redacted>";
/// Environment variables a source may reference.
pub const ENV_PREFIX: &str = "ALTDB_SECRET_";

/// Whether a client setting holds a credential.
pub fn is_secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "key.pem",
        "access_key",
        "credential",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// A client setting's value: text, or where the tailer finds it.
#[derive(Clone, PartialEq, Eq)]
pub enum PropertyValue {
    Text(String),
    /// `{"env": "ALTDB_SECRET_..."}`
    Env(String),
    /// `{"file": "/dir/file"}`
    File(String),
}

impl fmt::Debug for PropertyValue {
    /// Text is never printed: the setting may be a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PropertyValue::Text(_) => f.write_str("Text(..)"),
            PropertyValue::Env(var) => write!(f, "Env({var})"),
            PropertyValue::File(path) => write!(f, "File({path})"),
        }
    }
}

impl From<&str> for PropertyValue {
    fn from(text: &str) -> Self {
        PropertyValue::Text(text.to_string())
    }
}

impl Serialize for PropertyValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            PropertyValue::Text(text) => serializer.serialize_str(text),
            PropertyValue::Env(var) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("env", var)?;
                map.end()
            }
            PropertyValue::File(path) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("file", path)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for PropertyValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(deserializer)?;
        let shape = "a property is a string, {\"env\": \"ALTDB_SECRET_...\"} or \
                     {\"file\": \"/path\"}";
        match value {
            serde_json::Value::String(text) => Ok(PropertyValue::Text(text)),
            // librdkafka and object_store take every setting as text.
            serde_json::Value::Number(n) => Ok(PropertyValue::Text(n.to_string())),
            serde_json::Value::Bool(b) => Ok(PropertyValue::Text(b.to_string())),
            serde_json::Value::Object(map) if map.len() == 1 => {
                let (kind, target) = map.into_iter().next().expect("one entry");
                let target = target
                    .as_str()
                    .ok_or_else(|| D::Error::custom(format!("{shape}; `{kind}` takes a string")))?
                    .to_string();
                match kind.as_str() {
                    "env" => Ok(PropertyValue::Env(target)),
                    "file" => Ok(PropertyValue::File(target)),
                    _ => Err(D::Error::custom(format!("{shape}, not `{kind}`"))),
                }
            }
            _ => Err(D::Error::custom(shape)),
        }
    }
}

impl PropertyValue {
    /// The value the client gets; references are read now (on the tailer).
    pub fn resolve(&self, name: &str) -> Result<String, String> {
        match self {
            PropertyValue::Text(text) => Ok(text.clone()),
            PropertyValue::Env(var) => {
                check_env_name(name, var)?;
                std::env::var(var).map_err(|_| {
                    format!(
                        "property `{name}` references the environment variable `{var}`, which \
                         this tailer does not have; set it on every tailer"
                    )
                })
            }
            PropertyValue::File(path) => std::fs::read_to_string(path)
                .map(|text| text.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| {
                    format!("property `{name}` references the file `{path}`, unreadable here: {e}")
                }),
        }
    }

    /// The value as API responses show it: inline secrets redacted.
    pub fn shown(&self, name: &str) -> PropertyValue {
        match self {
            PropertyValue::Text(_) if is_secret_property(name) => {
                PropertyValue::Text(REDACTED.to_string())
            }
            other => other.clone(),
        }
    }
}

/// Environment references must start with [`ENV_PREFIX`].
pub fn check_env_name(name: &str, var: &str) -> Result<(), String> {
    let valid = var.len() > ENV_PREFIX.len()
        && var.starts_with(ENV_PREFIX)
        && var
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "property `{name}` references the environment variable `{var}`; only variables \
             named {ENV_PREFIX}<NAME> (upper case, digits, `_`) may be referenced, so that a \
             source cannot read the tailer's other settings"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_show_and_resolve() {
        let parsed: std::collections::BTreeMap<String, PropertyValue> = serde_json::from_str(
            r#"{"sasl.password": "hunter2", "fetch.min.bytes": 1,
                "ssl.key.password": {"env": "ALTDB_SECRET_TEST_ONE"},
                "ssl.key.pem": {"file": "/nonexistent/key.pem"}}"#,
        )
        .unwrap();
        assert_eq!(parsed["fetch.min.bytes"], PropertyValue::from("1"));
        assert_eq!(
            parsed["sasl.password"].shown("sasl.password"),
            PropertyValue::from(REDACTED)
        );
        assert_eq!(
            parsed["fetch.min.bytes"].shown("fetch.min.bytes"),
            PropertyValue::from("1")
        );
        assert_eq!(
            serde_json::to_string(&parsed["ssl.key.password"]).unwrap(),
            r#"{"env":"ALTDB_SECRET_TEST_ONE"}"#
        );
        assert!(!format!("{parsed:?}").contains("hunter2"));
        assert!(parsed["ssl.key.pem"]
            .resolve("ssl.key.pem")
            .unwrap_err()
            .contains("unreadable"));
        for bad in [
            r#"{"env": 1}"#,
            r#"{"vault": "x"}"#,
            r#"[1]"#,
            r#"{"env":"A","file":"B"}"#,
        ] {
            assert!(serde_json::from_str::<PropertyValue>(bad).is_err(), "{bad}");
        }
        assert!(check_env_name("p", "ALTDB_CLUSTER_SECRET").is_err());
        assert!(check_env_name("p", "HOME").is_err());
        assert!(check_env_name("p", "ALTDB_SECRET_").is_err());
        assert!(check_env_name("p", "ALTDB_SECRET_KAFKA_1").is_ok());
        for name in [
            "sasl.password",
            "ssl.key.pem",
            "aws_secret_access_key",
            "aws_session_token",
        ] {
            assert!(is_secret_property(name), "{name}");
        }
        assert!(!is_secret_property("sasl.username") && !is_secret_property("ssl.ca.pem"));
    }
}
