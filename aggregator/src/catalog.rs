//! The catalog of collections: a trait, and its implementation on the
//! metastore ([`altdb_common::metastore`]: a file for one aggregator, etcd for
//! several). Specs are `collections/<name>` there; creating one is a write
//! conditional on the name being free, so two aggregators cannot both create it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use altdb_common::collection::CollectionSpec;
use altdb_common::metastore::watched::Watched;
use altdb_common::metastore::{Metastore, MetastoreError, Precondition};

use crate::error::{AggregatorError, Result};

/// A change of a collection's spec ([`Catalog::update`]).
pub type SpecChange<'c> = dyn for<'a> Fn(&'a mut CollectionSpec) -> Result<()> + Send + Sync + 'c;

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
    /// Changes a collection's spec with `change` (its incarnation stays),
    /// conditional on the spec read: a concurrent change makes it read again.
    /// The spec as stored; `None` if there is no such collection.
    async fn update(&self, name: &str, change: &SpecChange<'_>) -> Result<Option<CollectionSpec>>;
}

/// A new incarnation: the time in microseconds, and above every incarnation
/// the catalog holds (so a name created again always gets a larger one, even if
/// the clock went back).
fn next_incarnation<'a>(specs: impl Iterator<Item = &'a CollectionSpec>) -> u64 {
    let now = chrono::Utc::now().timestamp_micros().max(1) as u64;
    specs.map(|s| s.incarnation + 1).fold(now, u64::max)
}

/// Where specs live in the metastore: `collections/<name>`.
const PREFIX: &str = "collections/";
/// How long a change waits to be seen by this aggregator's own cache.
const READ_OWN_WRITE: Duration = Duration::from_secs(5);

/// The catalog in the metastore (a file for one aggregator, etcd for several),
/// read from a watch cache: a collection created through one aggregator is
/// visible through every other as soon as their caches hear of it.
#[derive(Debug)]
pub struct MetaCatalog {
    store: Arc<dyn Metastore>,
    specs: Watched<CollectionSpec>,
}

fn unavailable(error: MetastoreError) -> AggregatorError {
    AggregatorError::Unavailable(format!(
        "the catalog cannot be changed now ({error}); retry when the metastore is back"
    ))
}

impl MetaCatalog {
    /// The catalog in `store`. A `legacy` `catalog.json` from before the
    /// metastore is imported once (its specs keep their incarnations), then
    /// renamed `catalog.json.imported`.
    pub async fn open(store: Arc<dyn Metastore>, legacy: Option<&Path>) -> Result<Self> {
        if let Some(path) = legacy.filter(|p| p.exists()) {
            let specs: BTreeMap<String, CollectionSpec> = crate::files::load(path, "catalog")?;
            let entries = specs
                .values()
                .map(|spec| {
                    Ok((
                        format!("{PREFIX}{}", spec.name),
                        crate::files::to_json(spec)?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            crate::files::import(store.as_ref(), path, entries).await?;
        }
        let specs = Watched::start(store.clone(), PREFIX)
            .await
            .map_err(unavailable)?;
        Ok(Self { store, specs })
    }
}

impl MetaCatalog {
    /// A catalog in a file metastore of its own at `path` (tests, tools).
    pub async fn open_file(path: &Path) -> Result<Self> {
        let store = altdb_common::metastore::file::FileMetastore::open(path.to_path_buf())
            .map_err(unavailable)?;
        Self::open(store, None).await
    }
}

#[async_trait]
impl Catalog for MetaCatalog {
    async fn list(&self) -> Result<Vec<CollectionSpec>> {
        Ok(self.specs.list().into_iter().map(|(_, s)| s).collect())
    }

    async fn get(&self, name: &str) -> Result<Option<CollectionSpec>> {
        Ok(self.specs.get(name))
    }

    async fn create(&self, mut spec: CollectionSpec) -> Result<CollectionSpec> {
        spec.incarnation = if CollectionSpec::is_system(&spec.name) {
            0
        } else {
            next_incarnation(self.specs.list().iter().map(|(_, s)| s))
        };
        let value = crate::files::to_json(&spec)?;
        let written = self
            .store
            .put(
                &format!("{PREFIX}{}", spec.name),
                &value,
                Precondition::Absent,
            )
            .await
            .map_err(unavailable)?;
        let Some(revision) = written else {
            return Err(AggregatorError::CollectionExists(spec.name));
        };
        self.specs.caught_up(revision, READ_OWN_WRITE).await;
        Ok(spec)
    }

    async fn update(&self, name: &str, change: &SpecChange<'_>) -> Result<Option<CollectionSpec>> {
        let key = format!("{PREFIX}{name}");
        loop {
            let Some(entry) = self.store.get(&key).await.map_err(unavailable)? else {
                return Ok(None);
            };
            let mut spec: CollectionSpec = serde_json::from_str(&entry.value)
                .map_err(|e| AggregatorError::Internal(format!("stored spec of `{name}`: {e}")))?;
            let incarnation = spec.incarnation;
            change(&mut spec)?;
            spec.incarnation = incarnation;
            spec.validate()
                .map_err(|e| AggregatorError::InvalidRequest(e.to_string()))?;
            let value = crate::files::to_json(&spec)?;
            let written = self
                .store
                .put(&key, &value, Precondition::At(entry.revision))
                .await
                .map_err(unavailable)?;
            if let Some(revision) = written {
                self.specs.caught_up(revision, READ_OWN_WRITE).await;
                return Ok(Some(spec));
            }
        }
    }

    async fn delete(&self, name: &str) -> Result<bool> {
        let deleted = self
            .store
            .delete(&format!("{PREFIX}{name}"), Precondition::Any)
            .await
            .map_err(unavailable)?;
        match deleted {
            Some(revision) => {
                self.specs.caught_up(revision, READ_OWN_WRITE).await;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use altdb_common::metastore::file::FileMetastore;

    use super::*;

    fn spec(name: &str) -> CollectionSpec {
        serde_json::from_value(serde_json::json!({ "name": name })).unwrap()
    }

    #[tokio::test]
    async fn specs_survive_reopen_and_names_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metastore.json");
        let store: Arc<dyn Metastore> = FileMetastore::open(path.clone()).unwrap();
        let catalog = MetaCatalog::open(store, None).await.unwrap();
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
        drop(catalog);
        let store: Arc<dyn Metastore> = FileMetastore::open(path).unwrap();
        let reopened = MetaCatalog::open(store, None).await.unwrap();
        let names: Vec<_> = reopened
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["a"]);
    }

    #[tokio::test]
    async fn a_catalog_file_from_before_the_metastore_is_imported_once() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("catalog.json");
        let mut old = spec("events");
        old.incarnation = 42;
        let specs: BTreeMap<String, CollectionSpec> = [("events".to_string(), old)].into();
        crate::files::store(&legacy, &specs, "catalog").unwrap();
        let store: Arc<dyn Metastore> =
            FileMetastore::open(dir.path().join("metastore.json")).unwrap();
        let catalog = MetaCatalog::open(store.clone(), Some(&legacy))
            .await
            .unwrap();
        assert_eq!(
            catalog.get("events").await.unwrap().unwrap().incarnation,
            42
        );
        assert!(!legacy.exists());
        assert!(dir.path().join("catalog.json.imported").exists());
        // Opened again: nothing to import, the spec is still there.
        let again = MetaCatalog::open(store, Some(&legacy)).await.unwrap();
        assert_eq!(again.list().await.unwrap().len(), 1);
    }
}
