//! The aggregator's JSON files (the catalog, keys and roles, lambdas), read and
//! replaced atomically by [`altdb_common::files`], with its errors as ours.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{AggregatorError, Result};

/// The content of `path`, or the default if there is no such file.
pub fn load<T: DeserializeOwned + Default>(path: &Path, what: &str) -> Result<T> {
    altdb_common::files::load(path, what).map_err(AggregatorError::Internal)
}

/// Replaces `path` with `value` as pretty JSON, atomically, mode 0600.
pub fn store<T: Serialize>(path: &Path, value: &T, what: &str) -> Result<()> {
    altdb_common::files::store(path, value, what).map_err(AggregatorError::Internal)
}

/// `value` as JSON text (to store in the metastore).
pub fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| AggregatorError::Internal(e.to_string()))
}

/// Moves a JSON file from before the metastore into it: each `(key, value)`
/// is written unless the key exists, then the file is renamed
/// `<name>.json.imported` so that it is imported once.
pub async fn import(
    store: &dyn altdb_common::metastore::Metastore,
    path: &Path,
    entries: Vec<(String, String)>,
) -> Result<()> {
    let count = entries.len();
    for (key, value) in entries {
        store
            .put(&key, &value, altdb_common::metastore::Precondition::Absent)
            .await
            .map_err(|e| {
                AggregatorError::Unavailable(format!(
                    "cannot import {} into the metastore: {e}",
                    path.display()
                ))
            })?;
    }
    std::fs::rename(path, path.with_extension("json.imported"))
        .map_err(|e| AggregatorError::Internal(format!("cannot rename {}: {e}", path.display())))?;
    tracing::info!(entries = count, from = %path.display(), "imported into the metastore");
    Ok(())
}
