//! API keys and custom roles, kept in `<data_dir>/access.json`.
//!
//! A key is `altdb_` and 64 hex digits (256 random bits), shown once when created;
//! the store keeps its SHA-256 digest only. A fast hash is right here: the key is
//! random, so no dictionary attack applies, and every request is checked against
//! it (a slow password hash would cost more than a needle query). Requests find a
//! key by its digest in a map, so a wrong key and an expired one take the same
//! path and answer the same 401.
//!
//! Last-used times are kept in memory and written with the next change, or by
//! [`KeyStore::flush`] (called every minute by the aggregator). The file is
//! replaced atomically and readable by its owner only.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{valid_name, Principal, PrincipalKind, Role, ADMIN_ROLE};
use crate::error::{AggregatorError, Result};

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

#[derive(Debug, Default)]
struct State {
    keys: BTreeMap<String, Arc<Key>>,
    by_digest: HashMap<[u8; 32], Arc<Key>>,
    roles: BTreeMap<String, Role>,
}

/// Keys and roles of one aggregator.
#[derive(Debug)]
pub struct KeyStore {
    path: PathBuf,
    state: RwLock<State>,
    /// Some key was used since the file was last written.
    used: AtomicBool,
    /// The configured admin key's digest (the bootstrap key; not stored).
    admin: Option<[u8; 32]>,
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
    /// Opens the store at `path`; `admin_key` is the configured bootstrap key.
    pub fn open(path: PathBuf, admin_key: Option<&str>) -> Result<Self> {
        let stored: Stored = crate::files::load(&path, "key store")?;
        let mut state = State {
            roles: stored.roles,
            ..State::default()
        };
        for (name, record) in stored.keys {
            let digest = unhex(&record.digest).ok_or_else(|| {
                AggregatorError::Internal(format!(
                    "key store {}: key `{name}` has no valid digest",
                    path.display()
                ))
            })?;
            let key = Arc::new(Key {
                last_used_us: AtomicI64::new(
                    record.last_used_at.map_or(0, |t| t.timestamp_micros()),
                ),
                record,
            });
            state.by_digest.insert(digest, key.clone());
            state.keys.insert(name, key);
        }
        Ok(Self {
            path,
            state: RwLock::new(state),
            used: AtomicBool::new(false),
            admin: admin_key.map(|k| digest(k.as_bytes())),
        })
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
    pub fn create_key(
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
        let mut state = self.write();
        if self.role_in(&state, role).is_none() {
            return Err(AggregatorError::InvalidRequest(format!(
                "role `{role}` does not exist; the built-in roles are admin, member and \
                 read-only, others are created with POST /v1/roles"
            )));
        }
        if state.keys.contains_key(name) {
            return Err(AggregatorError::Conflict(format!(
                "a key named `{name}` exists; revoke it first or pick another name"
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
        let key = Arc::new(Key {
            record: record.clone(),
            last_used_us: AtomicI64::new(0),
        });
        state.keys.insert(name.to_string(), key.clone());
        state.by_digest.insert(key_digest, key);
        if let Err(error) = self.persist(&state) {
            state.keys.remove(name);
            state.by_digest.remove(&key_digest);
            return Err(error);
        }
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

    /// Revokes a key; it fails its next request.
    pub fn delete_key(&self, name: &str) -> Result<KeyRecord> {
        let mut state = self.write();
        let key = state.keys.remove(name).ok_or_else(|| {
            AggregatorError::NotFound(format!("no key named `{name}`; GET /v1/keys lists them"))
        })?;
        state.by_digest.retain(|_, held| !Arc::ptr_eq(held, &key));
        if let Err(error) = self.persist(&state) {
            // Not revoked: the file still holds it, so memory must too.
            if let Some(digest) = unhex(&key.record.digest) {
                state.by_digest.insert(digest, key.clone());
            }
            state.keys.insert(name.to_string(), key);
            return Err(error);
        }
        Ok(Self::shown(&key))
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
    pub fn put_role(&self, role: Role, replace: bool) -> Result<Role> {
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
        let mut state = self.write();
        let previous = state.roles.get(&role.name).cloned();
        match (&previous, replace) {
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
            _ => {}
        }
        state.roles.insert(role.name.clone(), role.clone());
        if let Err(error) = self.persist(&state) {
            match previous {
                Some(previous) => state.roles.insert(role.name.clone(), previous),
                None => state.roles.remove(&role.name),
            };
            return Err(error);
        }
        Ok(role)
    }

    /// Deletes a custom role no key carries.
    pub fn delete_role(&self, name: &str) -> Result<()> {
        let mut state = self.write();
        if Role::builtins().iter().any(|r| r.name == name) {
            return Err(AggregatorError::Conflict(format!(
                "`{name}` is a built-in role and cannot be deleted"
            )));
        }
        let users: Vec<&str> = state
            .keys
            .values()
            .filter(|k| k.record.role == name)
            .map(|k| k.record.name.as_str())
            .collect();
        if !users.is_empty() {
            return Err(AggregatorError::Conflict(format!(
                "role `{name}` is carried by keys {}; revoke them or give them another role first",
                users.join(", ")
            )));
        }
        let Some(role) = state.roles.remove(name) else {
            return Err(AggregatorError::NotFound(format!(
                "no role named `{name}`; GET /v1/roles lists them"
            )));
        };
        if let Err(error) = self.persist(&state) {
            state.roles.insert(name.to_string(), role);
            return Err(error);
        }
        Ok(())
    }

    /// Writes last-used times if keys were used since the last write.
    pub fn flush(&self) -> Result<()> {
        if !self.used.load(Ordering::Relaxed) {
            return Ok(());
        }
        let state = self.read();
        self.persist(&state)
    }

    fn persist(&self, state: &State) -> Result<()> {
        self.used.store(false, Ordering::Relaxed);
        let stored = Stored {
            keys: state
                .keys
                .iter()
                .map(|(name, key)| {
                    let mut record = Self::shown(key);
                    record.digest = key.record.digest.clone();
                    (name.clone(), record)
                })
                .collect(),
            roles: state.roles.clone(),
        };
        crate::files::store(&self.path, &stored, "key store")
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Action, Privilege, Resource};
    use super::*;

    #[test]
    fn keys_are_hashed_revocable_expiring_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.json");
        let store = KeyStore::open(path.clone(), Some("the-admin-key-0123456789")).unwrap();
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
        store.put_role(role.clone(), false).unwrap();
        let dash = store
            .create_key("dash", "dashboards", None, "admin")
            .unwrap();
        assert!(dash.key.starts_with(KEY_PREFIX) && dash.key.len() == 70);
        let principal = store.authenticate(&dash.key).unwrap();
        assert!(principal.allows(Action::Query, "events"));
        assert!(!principal.allows(Action::Query, "orders"));
        assert!(store.authenticate(&format!("{}0", dash.key)).is_none());
        assert!(matches!(
            store.create_key("x", "nope", None, "admin"),
            Err(AggregatorError::InvalidRequest(_))
        ));
        assert!(matches!(
            store.delete_role("dashboards"),
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

        store.flush().unwrap();
        let reopened = KeyStore::open(path.clone(), None).unwrap();
        assert!(!reopened.enforced());
        assert!(reopened.authenticate(&dash.key).is_some());
        assert!(reopened.keys()[0].last_used_at.is_some());
        reopened.delete_key("dash").unwrap();
        assert!(reopened.authenticate(&dash.key).is_none());
        reopened.delete_role("dashboards").unwrap();

        let soon = Utc::now() + chrono::Duration::milliseconds(300);
        let brief = reopened
            .create_key("brief", "member", Some(soon), "admin")
            .unwrap();
        assert!(reopened.authenticate(&brief.key).is_some());
        std::thread::sleep(std::time::Duration::from_millis(400));
        assert!(reopened.authenticate(&brief.key).is_none(), "expired");
    }
}
