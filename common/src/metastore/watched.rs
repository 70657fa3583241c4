//! A process's cache of one metastore prefix: listed once, then kept current
//! by a watch, and listed again whenever the watch breaks (the store lost the
//! history, or the connection). Reads are local and never wait for the store;
//! a writer that needs to read its own write waits for [`Watched::caught_up`].

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use serde::de::DeserializeOwned;

use super::{Change, Metastore, Result, Revision};

/// How long to wait before listing again after the store was lost.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// The values under one prefix, by name (the key without the prefix).
pub struct Watched<T> {
    inner: Arc<Inner<T>>,
    task: tokio::task::JoinHandle<()>,
}

struct Inner<T> {
    prefix: String,
    values: RwLock<BTreeMap<String, T>>,
    revision: tokio::sync::watch::Sender<Revision>,
    _kind: PhantomData<T>,
}

impl<T> Drop for Watched<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<T> std::fmt::Debug for Watched<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("prefix", &self.inner.prefix)
            .field("revision", &*self.inner.revision.borrow())
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned + Clone + Send + Sync + 'static> Watched<T> {
    /// Lists `prefix` (failing if the store cannot be read now), then follows it.
    pub async fn start(store: Arc<dyn Metastore>, prefix: &str) -> Result<Self> {
        let (revision, _) = tokio::sync::watch::channel(0);
        let inner = Arc::new(Inner {
            prefix: prefix.to_string(),
            values: RwLock::new(BTreeMap::new()),
            revision,
            _kind: PhantomData,
        });
        let at = inner.reload(store.as_ref()).await?;
        let task = tokio::spawn(follow(store, inner.clone(), at));
        Ok(Self { inner, task })
    }

    pub fn get(&self, name: &str) -> Option<T> {
        self.inner.read().get(name).cloned()
    }

    /// Every value, by name.
    pub fn list(&self) -> Vec<(String, T)> {
        self.inner
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The revision the cache is as of (it grows with every change it hears).
    pub fn revision(&self) -> Revision {
        *self.inner.revision.borrow()
    }

    /// Waits until `done` holds of the cache (checked now and after each
    /// change it hears), at most `timeout`; whether it does.
    pub async fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let mut seen = self.inner.revision.subscribe();
        let wait = async {
            loop {
                if done(self) {
                    return true;
                }
                if seen.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }

    /// Notified of every revision the cache moves to.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Revision> {
        self.inner.revision.subscribe()
    }

    /// Waits until the cache holds every change up to `revision` (a write this
    /// process just made), at most `timeout`; whether it does.
    pub async fn caught_up(&self, revision: Revision, timeout: Duration) -> bool {
        let mut seen = self.inner.revision.subscribe();
        tokio::time::timeout(timeout, seen.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

impl<T: DeserializeOwned> Inner<T> {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, T>> {
        self.values.read().unwrap_or_else(|p| p.into_inner())
    }

    fn parse(&self, key: &str, value: &str) -> Option<(String, T)> {
        let name = key.strip_prefix(&self.prefix)?.to_string();
        match serde_json::from_str(value) {
            Ok(parsed) => Some((name, parsed)),
            Err(error) => {
                tracing::warn!(%key, %error, "metastore value not understood; ignoring it");
                None
            }
        }
    }

    /// Replaces the cache with the store's current values; their revision.
    async fn reload(&self, store: &dyn Metastore) -> Result<Revision> {
        let (entries, revision) = store.list(&self.prefix).await?;
        let values: BTreeMap<String, T> = entries
            .iter()
            .filter_map(|e| self.parse(&e.key, &e.value))
            .collect();
        *self.values.write().unwrap_or_else(|p| p.into_inner()) = values;
        self.revision.send_replace(revision);
        Ok(revision)
    }

    fn apply(&self, changes: Vec<Change>) {
        let mut last = 0;
        {
            let mut values = self.values.write().unwrap_or_else(|p| p.into_inner());
            for change in changes {
                last = last.max(change.revision());
                match change {
                    Change::Put(entry) => {
                        if let Some((name, value)) = self.parse(&entry.key, &entry.value) {
                            values.insert(name, value);
                        }
                    }
                    Change::Delete { key, .. } => {
                        if let Some(name) = key.strip_prefix(&self.prefix) {
                            values.remove(name);
                        }
                    }
                }
            }
        }
        self.revision.send_if_modified(|r| {
            let newer = last > *r;
            *r = (*r).max(last);
            newer
        });
    }
}

async fn follow<T: DeserializeOwned + Send + Sync + 'static>(
    store: Arc<dyn Metastore>,
    inner: Arc<Inner<T>>,
    mut at: Revision,
) {
    loop {
        match store.watch(&inner.prefix, at).await {
            Ok(mut changes) => {
                while let Some(batch) = changes.next().await {
                    match batch {
                        Ok(batch) => {
                            at = at.max(batch.iter().map(Change::revision).max().unwrap_or(at));
                            inner.apply(batch);
                        }
                        Err(error) => {
                            tracing::info!(prefix = %inner.prefix, %error, "metastore watch ended; reading again");
                            break;
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(prefix = %inner.prefix, %error, "cannot watch the metastore; retrying");
            }
        }
        // Whatever broke, start over from a fresh list.
        loop {
            tokio::time::sleep(RETRY_AFTER).await;
            match inner.reload(store.as_ref()).await {
                Ok(revision) => {
                    at = revision;
                    break;
                }
                Err(error) => {
                    tracing::warn!(prefix = %inner.prefix, %error, "cannot read the metastore; retrying");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metastore::file::FileMetastore;
    use crate::metastore::Precondition;

    #[tokio::test]
    async fn the_cache_follows_writes_and_waits_for_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Metastore> = FileMetastore::open(dir.path().join("m.json")).unwrap();
        store.put("c/a", "1", Precondition::Any).await.unwrap();
        store.put("other/x", "9", Precondition::Any).await.unwrap();
        let cache: Watched<i64> = Watched::start(store.clone(), "c/").await.unwrap();
        assert_eq!(cache.list(), vec![("a".to_string(), 1)]);
        let at = store
            .put("c/b", "2", Precondition::Any)
            .await
            .unwrap()
            .unwrap();
        assert!(cache.caught_up(at, Duration::from_secs(5)).await);
        assert_eq!(cache.get("b"), Some(2));
        let at = store
            .delete("c/a", Precondition::Any)
            .await
            .unwrap()
            .unwrap();
        assert!(cache.caught_up(at, Duration::from_secs(5)).await);
        assert_eq!(cache.get("a"), None);
        // A value that is not a T is skipped, not fatal.
        let at = store
            .put("c/bad", "\"text\"", Precondition::Any)
            .await
            .unwrap()
            .unwrap();
        assert!(cache.caught_up(at, Duration::from_secs(5)).await);
        assert_eq!(cache.list(), vec![("b".to_string(), 2)]);
    }
}
