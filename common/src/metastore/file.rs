//! The metastore of a single-node cluster: one JSON file in the data
//! directory, replaced atomically on every change (owner-only: values may hold
//! source secrets). Watches are served from memory; leased keys live in memory
//! only (a restart ends every lease, as it would in etcd after their TTL).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::{
    Change, ChangeStream, Entry, LeaseId, Metastore, MetastoreError, Precondition, Result, Revision,
};

/// Change batches kept for watches that start a little behind.
const HISTORY: usize = 4096;
/// How often expired leases are looked for.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// A metastore in `<data-dir>/metastore.json`.
#[derive(Debug)]
pub struct FileMetastore {
    path: PathBuf,
    state: Mutex<State>,
    changes: broadcast::Sender<Vec<Change>>,
}

#[derive(Debug, Default)]
struct State {
    stored: Stored,
    /// Keys written under a lease: never on disk.
    leased: BTreeMap<String, (Entry, LeaseId)>,
    leases: HashMap<LeaseId, (Instant, Duration)>,
    next_lease: LeaseId,
    history: VecDeque<Vec<Change>>,
    /// Watches after a revision older than this cannot be replayed.
    history_floor: Revision,
}

/// What the file holds.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Stored {
    revision: Revision,
    entries: BTreeMap<String, StoredValue>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredValue {
    /// Values are JSON; kept as JSON so that the file reads as such.
    value: serde_json::Value,
    revision: Revision,
}

impl State {
    fn entry(&self, key: &str) -> Option<Entry> {
        if let Some((entry, _)) = self.leased.get(key) {
            return Some(entry.clone());
        }
        self.stored.entries.get(key).map(|v| Entry {
            key: key.to_string(),
            value: v.value.to_string(),
            revision: v.revision,
        })
    }

    fn holds(&self, key: &str, when: Precondition) -> bool {
        let current = self.entry(key).map(|e| e.revision);
        match when {
            Precondition::Any => true,
            Precondition::Absent => current.is_none(),
            Precondition::At(revision) => current == Some(revision),
        }
    }

    fn record(&mut self, changes: Vec<Change>) {
        if self.history.len() == HISTORY {
            if let Some(oldest) = self.history.pop_front() {
                self.history_floor = oldest.last().map_or(self.history_floor, Change::revision);
            }
        }
        self.history.push_back(changes);
    }

    /// Ends the leases whose time has passed; the changes that makes.
    fn expire(&mut self, now: Instant) -> Vec<Change> {
        let expired: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, (deadline, _))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        expired
            .into_iter()
            .flat_map(|lease| self.end_lease(lease))
            .collect()
    }

    fn end_lease(&mut self, lease: LeaseId) -> Vec<Change> {
        self.leases.remove(&lease);
        let keys: Vec<String> = self
            .leased
            .iter()
            .filter(|(_, (_, l))| *l == lease)
            .map(|(k, _)| k.clone())
            .collect();
        keys.into_iter()
            .map(|key| {
                self.leased.remove(&key);
                self.stored.revision += 1;
                Change::Delete {
                    key,
                    revision: self.stored.revision,
                }
            })
            .collect()
    }
}

impl FileMetastore {
    /// Opens (or starts) the metastore at `path`; within a Tokio runtime,
    /// expired leases are swept in the background.
    pub fn open(path: PathBuf) -> Result<Arc<Self>> {
        let stored: Stored =
            crate::files::load(&path, "metastore").map_err(MetastoreError::Invalid)?;
        let (changes, _) = broadcast::channel(1024);
        let store = Arc::new(Self {
            path,
            state: Mutex::new(State {
                history_floor: stored.revision,
                stored,
                next_lease: 1,
                ..State::default()
            }),
            changes,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&store);
            runtime.spawn(sweep(weak));
        }
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records and announces `changes` (already applied to `state`).
    fn publish(&self, state: &mut State, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        state.record(changes.clone());
        // No receiver is fine: nobody watches.
        let _ = self.changes.send(changes);
    }

    fn persist(&self, stored: &Stored) -> Result<()> {
        crate::files::store(&self.path, stored, "metastore").map_err(MetastoreError::Unavailable)
    }

    fn sweep_now(&self) {
        let mut state = self.lock();
        let changes = state.expire(Instant::now());
        self.publish(&mut state, changes);
    }
}

async fn sweep(store: Weak<FileMetastore>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        match store.upgrade() {
            Some(store) => store.sweep_now(),
            None => return,
        }
    }
}

fn json(value: &str) -> Result<serde_json::Value> {
    serde_json::from_str(value)
        .map_err(|e| MetastoreError::Invalid(format!("values must be JSON: {e}")))
}

#[async_trait]
impl Metastore for FileMetastore {
    async fn list(&self, prefix: &str) -> Result<(Vec<Entry>, Revision)> {
        let state = self.lock();
        let mut entries: Vec<Entry> = state
            .stored
            .entries
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| Entry {
                key: k.clone(),
                value: v.value.to_string(),
                revision: v.revision,
            })
            .collect();
        entries.extend(
            state
                .leased
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, (e, _))| e.clone()),
        );
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((entries, state.stored.revision))
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        Ok(self.lock().entry(key))
    }

    async fn put(&self, key: &str, value: &str, when: Precondition) -> Result<Option<Revision>> {
        let parsed = json(value)?;
        let mut state = self.lock();
        if !state.holds(key, when) {
            return Ok(None);
        }
        let mut next = state.stored.clone();
        next.revision += 1;
        let revision = next.revision;
        next.entries.insert(
            key.to_string(),
            StoredValue {
                value: parsed.clone(),
                revision,
            },
        );
        self.persist(&next)?;
        state.stored = next;
        state.leased.remove(key);
        let change = Change::Put(Entry {
            key: key.to_string(),
            value: parsed.to_string(),
            revision,
        });
        self.publish(&mut state, vec![change]);
        Ok(Some(revision))
    }

    async fn delete(&self, key: &str, when: Precondition) -> Result<Option<Revision>> {
        let mut state = self.lock();
        if state.entry(key).is_none() || !state.holds(key, when) {
            return Ok(None);
        }
        let revision = if state.leased.remove(key).is_some() {
            state.stored.revision += 1;
            state.stored.revision
        } else {
            let mut next = state.stored.clone();
            next.revision += 1;
            next.entries.remove(key);
            self.persist(&next)?;
            state.stored = next;
            state.stored.revision
        };
        let change = Change::Delete {
            key: key.to_string(),
            revision,
        };
        self.publish(&mut state, vec![change]);
        Ok(Some(revision))
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<ChangeStream> {
        // Subscribed under the lock: nothing falls between replay and live.
        let state = self.lock();
        if after < state.history_floor {
            return Err(MetastoreError::Compacted(after));
        }
        let mut receiver = self.changes.subscribe();
        let replay: Vec<Vec<Change>> = state
            .history
            .iter()
            .map(|batch| {
                batch
                    .iter()
                    .filter(|c| c.revision() > after && c.key().starts_with(prefix))
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .filter(|batch| !batch.is_empty())
            .collect();
        drop(state);
        let prefix = prefix.to_string();
        let (sender, changes) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            for batch in replay {
                if sender.send(Ok(batch)).await.is_err() {
                    return;
                }
            }
            loop {
                let received = tokio::select! {
                    received = receiver.recv() => received,
                    () = sender.closed() => return,
                };
                let item = match received {
                    Ok(batch) => {
                        let batch: Vec<Change> = batch
                            .into_iter()
                            .filter(|c| c.key().starts_with(&prefix))
                            .collect();
                        if batch.is_empty() {
                            continue;
                        }
                        Ok(batch)
                    }
                    // This watcher fell behind: it lists again.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        Err(MetastoreError::Compacted(after))
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let last = item.is_err();
                if sender.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(super::received(changes))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let mut state = self.lock();
        let id = state.next_lease;
        state.next_lease += 1;
        state.leases.insert(id, (Instant::now() + ttl, ttl));
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<bool> {
        let mut state = self.lock();
        let now = Instant::now();
        let changes = state.expire(now);
        self.publish(&mut state, changes);
        Ok(match state.leases.get_mut(&lease) {
            Some((deadline, ttl)) => {
                *deadline = now + *ttl;
                true
            }
            None => false,
        })
    }

    async fn put_leased(
        &self,
        key: &str,
        value: &str,
        lease: LeaseId,
        when: Precondition,
    ) -> Result<Option<Revision>> {
        let parsed = json(value)?;
        let mut state = self.lock();
        if !state.leases.contains_key(&lease) {
            return Err(MetastoreError::Invalid(format!(
                "lease {lease} has expired"
            )));
        }
        if !state.holds(key, when) {
            return Ok(None);
        }
        state.stored.revision += 1;
        let revision = state.stored.revision;
        let entry = Entry {
            key: key.to_string(),
            value: parsed.to_string(),
            revision,
        };
        state.leased.insert(key.to_string(), (entry.clone(), lease));
        self.publish(&mut state, vec![Change::Put(entry)]);
        Ok(Some(revision))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        let mut state = self.lock();
        let changes = state.end_lease(lease);
        self.publish(&mut state, changes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn conditional_writes_survive_reopen_and_watches_see_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metastore.json");
        let store = FileMetastore::open(path.clone()).unwrap();
        let first = store
            .put("/a/x", r#"{"n":1}"#, Precondition::Absent)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            store.put("/a/x", "{}", Precondition::Absent).await.unwrap(),
            None,
            "the name is taken"
        );
        let mut watch = store.watch("/a/", first).await.unwrap();
        let second = store
            .put("/a/x", r#"{"n":2}"#, Precondition::At(first))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            store
                .put("/a/x", "{}", Precondition::At(first))
                .await
                .unwrap(),
            None,
            "someone changed it since"
        );
        store.put("/b/y", "1", Precondition::Any).await.unwrap();
        store
            .delete("/a/x", Precondition::At(second))
            .await
            .unwrap();
        let seen: Vec<Change> = [
            watch.next().await.unwrap().unwrap(),
            watch.next().await.unwrap().unwrap(),
        ]
        .concat();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(matches!(&seen[0], Change::Put(e) if e.value == r#"{"n":2}"#));
        assert!(matches!(&seen[1], Change::Delete { key, .. } if key == "/a/x"));
        assert!(store
            .put("/a/z", "not json", Precondition::Any)
            .await
            .is_err());

        let reopened = FileMetastore::open(path.clone()).unwrap();
        let (entries, revision) = reopened.list("/").await.unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].key, "/b/y");
        assert!(revision > second);
        // A watch from before the reopen cannot be replayed.
        assert!(matches!(
            reopened.watch("/", first).await,
            Err(MetastoreError::Compacted(_))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "values may hold secrets: owner only");
        }
    }

    #[tokio::test]
    async fn leased_keys_vanish_when_the_lease_is_not_kept_alive() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileMetastore::open(dir.path().join("m.json")).unwrap();
        let lease = store.grant_lease(Duration::from_millis(300)).await.unwrap();
        store
            .put_leased("/leaves/1", "{}", lease, Precondition::Any)
            .await
            .unwrap();
        let (_, at) = store.list("/leaves/").await.unwrap();
        let mut watch = store.watch("/leaves/", at).await.unwrap();
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(store.keep_alive(lease).await.unwrap());
        }
        assert_eq!(store.list("/leaves/").await.unwrap().0.len(), 1);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!store.keep_alive(lease).await.unwrap());
        assert!(store.list("/leaves/").await.unwrap().0.is_empty());
        let gone = watch.next().await.unwrap().unwrap();
        assert!(matches!(&gone[0], Change::Delete { key, .. } if key == "/leaves/1"));
        // Leased keys are never written to the file.
        let lease = store.grant_lease(Duration::from_secs(10)).await.unwrap();
        store
            .put_leased("/leaves/2", "{}", lease, Precondition::Any)
            .await
            .unwrap();
        store.revoke_lease(lease).await.unwrap();
        assert!(store.get("/leaves/2").await.unwrap().is_none());
    }
}
