//! The catalog of collections: a trait, and a file-backed implementation.
//!
//! The file catalog keeps every spec in one JSON file in the data directory,
//! replaced atomically on change. A catalog backed by etcd implements the same
//! trait for multi-aggregator clusters.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::RwLock;

use async_trait::async_trait;

use altdb_common::collection::CollectionSpec;

use crate::error::{AggregatorError, Result};

/// Where collection specs live.
#[async_trait]
pub trait Catalog: Send + Sync + std::fmt::Debug {
    async fn list(&self) -> Result<Vec<CollectionSpec>>;
    async fn get(&self, name: &str) -> Result<Option<CollectionSpec>>;
    /// Adds a collection; fails if the name is taken.
    /// Adds a collection with a new incarnation (whatever `spec` says); returns
    /// it as stored.
    async fn create(&self, spec: CollectionSpec) -> Result<CollectionSpec>;
    /// Removes a collection; returns whether it existed.
    async fn delete(&self, name: &str) -> Result<bool>;
}

/// A new incarnation: the time in microseconds, and above every incarnation
/// the catalog holds (so a name created again always gets a larger one, even if
/// the clock went back).
fn next_incarnation<'a>(specs: impl Iterator<Item = &'a CollectionSpec>) -> u64 {
    let now = chrono::Utc::now().timestamp_micros().max(1) as u64;
    specs.map(|s| s.incarnation + 1).fold(now, u64::max)
}

/// A catalog kept in `<data_dir>/catalog.json` (mode 0600: specs may hold
/// source secrets; see [`crate::files`]).
#[derive(Debug)]
pub struct FileCatalog {
    path: PathBuf,
    specs: RwLock<BTreeMap<String, CollectionSpec>>,
}

impl FileCatalog {
    pub fn open(path: PathBuf) -> Result<Self> {
        let specs = crate::files::load(&path, "catalog")?;
        Ok(Self {
            path,
            specs: RwLock::new(specs),
        })
    }

    fn persist(&self, specs: &BTreeMap<String, CollectionSpec>) -> Result<()> {
        crate::files::store(&self.path, specs, "catalog")
    }
}

#[async_trait]
impl Catalog for FileCatalog {
    async fn list(&self) -> Result<Vec<CollectionSpec>> {
        Ok(self
            .specs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect())
    }

    async fn get(&self, name: &str) -> Result<Option<CollectionSpec>> {
        Ok(self
            .specs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned())
    }

    async fn create(&self, mut spec: CollectionSpec) -> Result<CollectionSpec> {
        let mut specs = self.specs.write().unwrap_or_else(|p| p.into_inner());
        if specs.contains_key(&spec.name) {
            return Err(AggregatorError::CollectionExists(spec.name));
        }
        spec.incarnation = if CollectionSpec::is_system(&spec.name) {
            0
        } else {
            next_incarnation(specs.values())
        };
        let mut next = specs.clone();
        next.insert(spec.name.clone(), spec.clone());
        self.persist(&next)?;
        *specs = next;
        Ok(spec)
    }

    async fn delete(&self, name: &str) -> Result<bool> {
        let mut specs = self.specs.write().unwrap_or_else(|p| p.into_inner());
        if !specs.contains_key(name) {
            return Ok(false);
        }
        let mut next = specs.clone();
        next.remove(name);
        self.persist(&next)?;
        *specs = next;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> CollectionSpec {
        serde_json::from_value(serde_json::json!({ "name": name })).unwrap()
    }

    #[tokio::test]
    async fn specs_survive_reopen_and_names_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.json");
        let catalog = FileCatalog::open(path.clone()).unwrap();
        catalog.create(spec("a")).await.unwrap();
        catalog.create(spec("b")).await.unwrap();
        assert!(matches!(
            catalog.create(spec("a")).await,
            Err(AggregatorError::CollectionExists(_))
        ));
        let first = catalog.get("b").await.unwrap().unwrap().incarnation;
        assert!(first > 0);
        assert!(catalog.delete("b").await.unwrap());
        assert!(!catalog.delete("b").await.unwrap());
        let again = catalog.create(spec("b")).await.unwrap();
        assert!(
            again.incarnation > first,
            "a name created again is a new incarnation"
        );
        assert!(catalog.delete("b").await.unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "specs may hold secrets: owner only");
        }
        let reopened = FileCatalog::open(path).unwrap();
        let names: Vec<_> = reopened
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["a"]);
    }
}
