//! API keys and custom roles, kept in the metastore (`keys/<name>`,
//! `roles/<name>`; a file for one aggregator, etcd for several) and read from
//! watch caches: a key created, revoked or re-roled through one aggregator
//! counts on every other as soon as its cache hears of it.
//!
//! A key is `altdb_` and 64 hex digits (256 random bits), shown once when created;
//! the store keeps its SHA-256 digest only. A fast hash is right here: the key is
//! random, so no dictionary attack applies, and every request is checked against
//! it (a slow password hash would cost more than a needle query). Requests find a
//! key by its digest in a map, so a wrong key and an expired one take the same
//! path and answer the same 401.
//!
//! Last-used times are kept in memory and written by [`KeyStore::flush`]
//! (called every minute by the aggregator).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use altdb_common::metastore::watched::Watched;
use altdb_common::metastore::{Metastore, MetastoreError, Precondition, Revision};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{valid_name, Principal, PrincipalKind, Role, ADMIN_ROLE};
use crate::error::{AggregatorError, Result};
use crate::files::to_json;

/// What a key's text starts with (so scanners and people recognise one).
pub const KEY_PREFIX: &str = "altdb_";

/// A stored key, without its secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRecord {
    pub name: String,
    pub role: String,
    /// SHA-256 of the key, hex.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub digest: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_used_at: Option<DateTime<Utc>>,
}

/// The file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    keys: BTreeMap<String, KeyRecord>,
    roles: BTreeMap<String, Role>,
}

/// A key in memory: its record and when it was last used (µs, 0: never).
#[derive(Debug)]
struct Key {
    record: KeyRecord,
    last_used_us: AtomicI64,
}

/// The keys and roles as the caches held them at `built_at`, indexed.
#[derive(Debug, Default)]
struct State {
    keys: BTreeMap<String, Arc<Key>>,
    by_digest: HashMap<[u8; 32], Arc<Key>>,
    roles: BTreeMap<String, Role>,
    /// The revisions of the key and role caches this state was built from.
    built_at: (Revision, Revision),
}

/// Keys and roles, shared by every aggregator through the metastore.
#[derive(Debug)]
pub struct KeyStore {
    store: Arc<dyn Metastore>,
    key_records: Watched<KeyRecord>,
    role_records: Watched<Role>,
    state: RwLock<State>,
    /// Some key was used since last-used times were last written.
    used: AtomicBool,
    /// The configured admin key's digest (the bootstrap key; not stored).
    admin: Option<[u8; 32]>,
}

/// Where keys and roles live in the metastore.
const KEYS: &str = "keys/";
const ROLES: &str = "roles/";
/// How long a change waits to reach this aggregator's own caches.
const READ_OWN_WRITE: Duration = Duration::from_secs(5);

fn unavailable(error: MetastoreError) -> AggregatorError {
    AggregatorError::Unavailable(format!(
        "keys and roles cannot be changed now ({error}); retry when the metastore is back"
    ))
}

/// A new key as its creator sees it once.
#[derive(Debug, Serialize)]
pub struct NewKey {
    #[serde(flatten)]
    pub record: KeyRecord,
    /// The key itself; it cannot be read again.
    pub key: String,
}

fn digest(text: &[u8]) -> [u8; 32] {
    Sha256::digest(text).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl KeyStore {
    /// The keys and roles in `store`; `admin_key` is the configured bootstrap
    /// key. A `legacy` `access.json` from before the metastore is imported
    /// once, then renamed `access.json.imported`.
    pub async fn open(
        store: Arc<dyn Metastore>,
        legacy: Option<&Path>,
        admin_key: Option<&str>,
    ) -> Result<Self> {
        if let Some(path) = legacy.filter(|p| p.exists()) {
            let stored: Stored = crate::files::load(path, "key store")?;
            let mut entries = Vec::new();
            for (name, record) in &stored.keys {
                entries.push((format!("{KEYS}{name}"), to_json(record)?));
            }
            for (name, role) in &stored.roles {
                entries.push((format!("{ROLES}{name}"), to_json(role)?));
            }
            crate::files::import(store.as_ref(), path, entries).await?;
        }
        let key_records = Watched::start(store.clone(), KEYS)
            .await
            .map_err(unavailable)?;
        let role_records = Watched::start(store.clone(), ROLES)
            .await
            .map_err(unavailable)?;
        let keys = Self {
            store,
            key_records,
            role_records,
            state: RwLock::new(State {
                built_at: (-1, -1),
                ..State::default()
            }),
            used: AtomicBool::new(false),
            admin: admin_key.map(|k| digest(k.as_bytes())),
        };
        keys.refresh();
        Ok(keys)
    }

    /// Rebuilds the index when the caches heard of a change (another
    /// aggregator's too); last-used times carry over.
    fn refresh(&self) {
        let at = (self.key_records.revision(), self.role_records.revision());
        if self.read_state().built_at == at {
            return;
        }
        let mut state = self.write();
        if state.built_at == at {
            return;
        }
        let mut next = State {
            roles: self.role_records.list().into_iter().collect(),
            built_at: at,
            ..State::default()
        };
        for (name, record) in self.key_records.list() {
            let Some(key_digest) = unhex(&record.digest) else {
                tracing::warn!(key = %name, "a stored key has no valid digest; ignoring it");
                continue;
            };
            let stored_us = record.last_used_at.map_or(0, |t| t.timestamp_micros());
            let used_us = state
                .keys
                .get(&name)
                .filter(|k| k.record.digest == record.digest)
                .map_or(0, |k| k.last_used_us.load(Ordering::Relaxed));
            let key = Arc::new(Key {
                last_used_us: AtomicI64::new(stored_us.max(used_us)),
                record,
            });
            next.by_digest.insert(key_digest, key.clone());
            next.keys.insert(name, key);
        }
        *state = next;
    }

    /// Whether requests must carry a key (an admin key is configured).
    pub fn enforced(&self) -> bool {
        self.admin.is_some()
    }

    /// The principal a presented key stands for; `None` if it is unknown,
    /// revoked or expired (the caller answers all three alike).
    pub fn authenticate(&self, presented: &str) -> Option<Principal> {
        let presented = digest(presented.as_bytes());
        if let Some(admin) = &self.admin {
            // Constant time, like every other comparison of secrets here.
            let difference = admin
                .iter()
                .zip(presented.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if difference == 0 {
                let [admin_role, ..] = Role::builtins();
                return Some(Principal::new(ADMIN_ROLE, &admin_role, PrincipalKind::Key));
            }
        }
        let state = self.read();
        let key = state.by_digest.get(&presented)?;
        let now = Utc::now();
        if key.record.expires_at.is_some_and(|at| at <= now) {
            return None;
        }
        let role = self.role_in(&state, &key.record.role)?;
        let now_us = now.timestamp_micros();
        // Updated at most once a second per key: the write is then rare enough
        // not to bounce the cache line between request threads.
        if now_us - key.last_used_us.load(Ordering::Relaxed) > 1_000_000 {
            key.last_used_us.store(now_us, Ordering::Relaxed);
            self.used.store(true, Ordering::Relaxed);
        }
        Some(Principal::new(&key.record.name, &role, PrincipalKind::Key))
    }

    fn role_in(&self, state: &State, name: &str) -> Option<Role> {
        Role::builtins()
            .into_iter()
            .find(|r| r.name == name)
            .or_else(|| state.roles.get(name).cloned())
    }

    /// Creates a key; the answer holds its text, shown this once.
    pub async fn create_key(
        &self,
        name: &str,
        role: &str,
        expires_at: Option<DateTime<Utc>>,
        created_by: &str,
    ) -> Result<NewKey> {
        valid_name("key", name)?;
        if name == ADMIN_ROLE {
            return Err(AggregatorError::InvalidRequest(
                "the key name `admin` is the configured admin key's; pick another".into(),
            ));
        }
        if expires_at.is_some_and(|at| at <= Utc::now()) {
            return Err(AggregatorError::InvalidRequest(
                "expires_at is in the past; give a future RFC 3339 time such as \
                 2030-01-01T00:00:00Z, or none for a key that does not expire"
                    .into(),
            ));
        }
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| AggregatorError::Internal(format!("no random numbers for a key: {e}")))?;
        let text = format!("{KEY_PREFIX}{}", hex(&bytes));
        let key_digest = digest(text.as_bytes());
        if self.role_in(&self.read(), role).is_none() {
            return Err(AggregatorError::InvalidRequest(format!(
                "role `{role}` does not exist; the built-in roles are admin, member and \
                 read-only, others are created with POST /v1/roles"
            )));
        }
        let record = KeyRecord {
            name: name.to_string(),
            role: role.to_string(),
            digest: hex(&key_digest),
            created_at: Utc::now(),
            created_by: created_by.to_string(),
            expires_at,
            last_used_at: None,
        };
        let written = self
            .store
            .put(
                &format!("{KEYS}{name}"),
                &to_json(&record)?,
                Precondition::Absent,
            )
            .await
            .map_err(unavailable)?;
        let Some(revision) = written else {
            return Err(AggregatorError::Conflict(format!(
                "a key named `{name}` exists; revoke it first or pick another name"
            )));
        };
        self.key_records.caught_up(revision, READ_OWN_WRITE).await;
        Ok(NewKey {
            record: KeyRecord {
                digest: String::new(),
                ..record
            },
            key: text,
        })
    }

    /// Every key, without digests.
    pub fn keys(&self) -> Vec<KeyRecord> {
        self.read().keys.values().map(|k| Self::shown(k)).collect()
    }

    fn shown(key: &Key) -> KeyRecord {
        let used = key.last_used_us.load(Ordering::Relaxed);
        KeyRecord {
            digest: String::new(),
            last_used_at: (used > 0)
                .then(|| DateTime::from_timestamp_micros(used))
                .flatten(),
            ..key.record.clone()
        }
    }

    /// Revokes a key; it fails its next request (on every aggregator, as soon
    /// as its cache hears of it).
    pub async fn delete_key(&self, name: &str) -> Result<KeyRecord> {
        let shown = self.read().keys.get(name).map(|k| Self::shown(k));
        let deleted = self
            .store
            .delete(&format!("{KEYS}{name}"), Precondition::Any)
            .await
            .map_err(unavailable)?;
        let (Some(revision), Some(shown)) = (deleted, shown) else {
            return Err(AggregatorError::NotFound(format!(
                "no key named `{name}`; GET /v1/keys lists them"
            )));
        };
        self.key_records.caught_up(revision, READ_OWN_WRITE).await;
        Ok(shown)
    }

    /// The built-in and custom roles.
    pub fn roles(&self) -> Vec<Role> {
        let state = self.read();
        Role::builtins()
            .into_iter()
            .chain(state.roles.values().cloned())
            .collect()
    }

    /// Creates a role (`replace`: or replaces the custom role of that name; its
    /// keys get the new privileges with their next request).
    pub async fn put_role(&self, role: Role, replace: bool) -> Result<Role> {
        role.validate()?;
        if Role::builtins().iter().any(|r| r.name == role.name) {
            return Err(AggregatorError::Conflict(format!(
                "`{}` is a built-in role and cannot be changed; create a custom role",
                role.name
            )));
        }
        let role = Role {
            builtin: false,
            ..role
        };
        let key = format!("{ROLES}{}", role.name);
        let previous = self.store.get(&key).await.map_err(unavailable)?;
        let when = match (&previous, replace) {
            (Some(_), false) => {
                return Err(AggregatorError::Conflict(format!(
                    "role `{}` exists; change it with PUT /v1/roles/{}",
                    role.name, role.name
                )))
            }
            (None, true) => {
                return Err(AggregatorError::NotFound(format!(
                    "no role named `{}`; create it with POST /v1/roles",
                    role.name
                )))
            }
            (Some(entry), true) => Precondition::At(entry.revision),
            (None, false) => Precondition::Absent,
        };
        let written = self
            .store
            .put(&key, &to_json(&role)?, when)
            .await
            .map_err(unavailable)?;
        let Some(revision) = written else {
            return Err(AggregatorError::Conflict(format!(
                "role `{}` was changed by another request meanwhile; read it and retry",
                role.name
            )));
        };
        self.role_records.caught_up(revision, READ_OWN_WRITE).await;
        Ok(role)
    }

    /// Deletes a custom role no key carries.
    pub async fn delete_role(&self, name: &str) -> Result<()> {
        if Role::builtins().iter().any(|r| r.name == name) {
            return Err(AggregatorError::Conflict(format!(
                "`{name}` is a built-in role and cannot be deleted"
            )));
        }
        let users: Vec<String> = self
            .read()
            .keys
            .values()
            .filter(|k| k.record.role == name)
            .map(|k| k.record.name.clone())
            .collect();
        if !users.is_empty() {
            return Err(AggregatorError::Conflict(format!(
                "role `{name}` is carried by keys {}; revoke them or give them another role first",
                users.join(", ")
            )));
        }
        let deleted = self
            .store
            .delete(&format!("{ROLES}{name}"), Precondition::Any)
            .await
            .map_err(unavailable)?;
        let Some(revision) = deleted else {
            return Err(AggregatorError::NotFound(format!(
                "no role named `{name}`; GET /v1/roles lists them"
            )));
        };
        self.role_records.caught_up(revision, READ_OWN_WRITE).await;
        Ok(())
    }

    /// Writes the last-used times of the keys used since the last flush
    /// (each only if nobody changed the key meanwhile: a revoked key stays
    /// revoked).
    pub async fn flush(&self) -> Result<()> {
        if !self.used.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let used: Vec<(String, i64)> = self
            .read()
            .keys
            .iter()
            .map(|(name, key)| (name.clone(), key.last_used_us.load(Ordering::Relaxed)))
            .filter(|(_, used)| *used > 0)
            .collect();
        for (name, used_us) in used {
            let key = format!("{KEYS}{name}");
            let Some(entry) = self.store.get(&key).await.map_err(unavailable)? else {
                continue;
            };
            let Ok(mut record) = serde_json::from_str::<KeyRecord>(&entry.value) else {
                continue;
            };
            let stored_us = record.last_used_at.map_or(0, |t| t.timestamp_micros());
            if used_us <= stored_us {
                continue;
            }
            record.last_used_at = DateTime::from_timestamp_micros(used_us);
            self.store
                .put(&key, &to_json(&record)?, Precondition::At(entry.revision))
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The index, rebuilt first if the caches moved on.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.refresh();
        self.read_state()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use altdb_common::metastore::file::FileMetastore;

    use super::super::{Action, Privilege, Resource};
    use super::*;

    async fn open(path: &Path, admin_key: Option<&str>) -> KeyStore {
        let metastore: Arc<dyn Metastore> = FileMetastore::open(path.to_path_buf()).unwrap();
        KeyStore::open(metastore, None, admin_key).await.unwrap()
    }

    #[tokio::test]
    async fn keys_are_hashed_revocable_expiring_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metastore.json");
        let store = open(&path, Some("the-admin-key-0123456789")).await;
        assert!(store.enforced());
        assert_eq!(
            store.authenticate("the-admin-key-0123456789").unwrap().role,
            "admin"
        );
        let role = Role {
            name: "dashboards".into(),
            description: String::new(),
            privileges: vec![Privilege {
                action: Action::Query,
                resource: Resource::try_from("events".to_string()).unwrap(),
            }],
            builtin: false,
        };
        store.put_role(role.clone(), false).await.unwrap();
        let dash = store
            .create_key("dash", "dashboards", None, "admin")
            .await
            .unwrap();
        assert!(dash.key.starts_with(KEY_PREFIX) && dash.key.len() == 70);
        let principal = store.authenticate(&dash.key).unwrap();
        assert!(principal.allows(Action::Query, "events"));
        assert!(!principal.allows(Action::Query, "orders"));
        assert!(store.authenticate(&format!("{}0", dash.key)).is_none());
        assert!(matches!(
            store.create_key("x", "nope", None, "admin").await,
            Err(AggregatorError::InvalidRequest(_))
        ));
        assert!(matches!(
            store.delete_role("dashboards").await,
            Err(AggregatorError::Conflict(_))
        ));

        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&dash.key), "the key itself is never stored");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "readable by its owner only");
        }

        store.flush().await.unwrap();
        drop(store);
        let reopened = open(&path, None).await;
        assert!(!reopened.enforced());
        assert!(reopened.authenticate(&dash.key).is_some());
        assert!(reopened.keys()[0].last_used_at.is_some());
        reopened.delete_key("dash").await.unwrap();
        assert!(reopened.authenticate(&dash.key).is_none());
        reopened.delete_role("dashboards").await.unwrap();

        let soon = Utc::now() + chrono::Duration::milliseconds(300);
        let brief = reopened
            .create_key("brief", "member", Some(soon), "admin")
            .await
            .unwrap();
        assert!(reopened.authenticate(&brief.key).is_some());
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert!(reopened.authenticate(&brief.key).is_none(), "expired");
    }

    #[tokio::test]
    async fn a_key_revoked_through_one_aggregator_fails_on_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let metastore: Arc<dyn Metastore> =
            FileMetastore::open(dir.path().join("metastore.json")).unwrap();
        let a = KeyStore::open(metastore.clone(), None, Some("admin-key-0123456789"))
            .await
            .unwrap();
        let b = KeyStore::open(metastore, None, Some("admin-key-0123456789"))
            .await
            .unwrap();
        let key = a.create_key("app", "member", None, "admin").await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while b.authenticate(&key.key).is_none() {
            assert!(std::time::Instant::now() < deadline, "B never saw the key");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(matches!(
            b.create_key("app", "member", None, "admin").await,
            Err(AggregatorError::Conflict(_))
        ));
        b.delete_key("app").await.unwrap();
        while a.authenticate(&key.key).is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "A still takes the revoked key"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}
