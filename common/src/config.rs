//! Layered configuration: defaults < file (TOML) < `ALTDB_*` environment < flags.
//!
//! Each role owns one serde struct with defaults and `deny_unknown_fields`; this
//! module merges the layers and deserializes once, so an unknown key or a bad value
//! in any layer is one clear error at start-up.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::{Error, Result};

/// Prefix of every environment variable altdb reads.
pub const ENV_PREFIX: &str = "ALTDB_";

/// Loads a role config from its layers. `flags` holds only the flags given
/// (a JSON object of field name to value).
pub fn load<T>(file: Option<&Path>, flags: Value) -> Result<T>
where
    T: DeserializeOwned + Serialize + Default,
{
    let defaults = serde_json::to_value(T::default())?;
    let Value::Object(mut merged) = defaults.clone() else {
        return Err(Error::InvalidConfig("config must be a struct".into()));
    };
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::InvalidConfig(format!("cannot read config file {}: {e}", path.display()))
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            Error::InvalidConfig(format!(
                "config file {} is not valid TOML: {e}",
                path.display()
            ))
        })?;
        merge(&mut merged, serde_json::to_value(table)?);
    }
    merge(&mut merged, env_layer(&defaults, std::env::vars()));
    merge(&mut merged, flags);
    serde_json::from_value(Value::Object(merged))
        .map_err(|e| Error::InvalidConfig(format!("invalid configuration: {e}")))
}

fn merge(into: &mut Map<String, Value>, layer: Value) {
    if let Value::Object(layer) = layer {
        for (key, value) in layer {
            if !value.is_null() {
                into.insert(key, value);
            }
        }
    }
}

/// `ALTDB_DATA_DIR=/x` sets `data_dir`; lists are comma separated.
fn env_layer(defaults: &Value, vars: impl Iterator<Item = (String, String)>) -> Value {
    let mut layer = Map::new();
    let Value::Object(fields) = defaults else {
        return Value::Object(layer);
    };
    for (name, value) in vars {
        let Some(key) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        let Some(default) = fields.get(&key) else {
            continue;
        };
        let parsed = match default {
            Value::Array(_) => Value::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_string()))
                    .collect(),
            ),
            Value::String(_) => Value::String(value),
            _ => serde_json::from_str(&value).unwrap_or(Value::String(value)),
        };
        layer.insert(key, parsed);
    }
    Value::Object(layer)
}

/// Turns given flags (a serializable struct of `Option`s) into a layer.
pub fn flags_layer(flags: &impl Serialize) -> Value {
    serde_json::to_value(flags).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Demo {
        listen: String,
        leaves: Vec<String>,
        seal_rows: u64,
    }

    impl Default for Demo {
        fn default() -> Self {
            Self {
                listen: "127.0.0.1:1".into(),
                leaves: vec![],
                seal_rows: 10,
            }
        }
    }

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "listen = \"file\"\nseal_rows = 5\n").unwrap();
        let cfg: Demo = load(Some(&file), serde_json::json!({"seal_rows": 7})).unwrap();
        assert_eq!(cfg.listen, "file");
        assert_eq!(cfg.seal_rows, 7);

        let env = env_layer(
            &serde_json::to_value(Demo::default()).unwrap(),
            [
                ("ALTDB_LEAVES".to_string(), "a, b".to_string()),
                ("ALTDB_SEAL_ROWS".to_string(), "3".to_string()),
                ("OTHER".to_string(), "x".to_string()),
            ]
            .into_iter(),
        );
        assert_eq!(env, serde_json::json!({"leaves":["a","b"],"seal_rows":3}));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "lisen = \"typo\"\n").unwrap();
        let err = load::<Demo>(Some(&file), Value::Null).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }
}
