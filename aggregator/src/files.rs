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
