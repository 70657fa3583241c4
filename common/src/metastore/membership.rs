//! Leaf membership: a leaf registers itself under `leaves/<id>` with a lease
//! (10 s TTL, renewed every 3 s), so the registration vanishes soon after the
//! leaf dies or loses the metastore; a graceful stop revokes it at once.
//! Aggregators read the members through a [`super::watched::Watched`] cache.
//!
//! A leaf that cannot renew its lease fences itself ([`Fence`]): from
//! [`FENCE_AFTER`] past its last renewal — before the lease can expire and the
//! controller hand its shards to others — it serves no reads and takes no
//! writes until a renewal succeeds again.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{LeaseId, Metastore, Result};

/// Where leaves register.
pub const LEAVES: &str = "leaves/";
/// How long a registration outlives the last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often a leaf renews its lease.
const RENEW_EVERY: Duration = Duration::from_secs(3);
/// How long after its last renewal a leaf stops serving: the lease outlives
/// that renewal by [`LEASE_TTL`], so the leaf is fenced first.
pub const FENCE_AFTER: Duration = Duration::from_secs(7);

/// Whether a leaf's lease is surely still alive (renewed within [`FENCE_AFTER`]).
#[derive(Debug, Clone)]
pub struct Fence {
    renewed: Arc<std::sync::Mutex<std::time::Instant>>,
}

impl Fence {
    /// The lease was renewed by a request sent at `sent` (the store extended
    /// it no earlier than that).
    fn renewed(&self, sent: std::time::Instant) {
        *self.renewed.lock().unwrap_or_else(|p| p.into_inner()) = sent;
    }

    /// True once the last renewal is [`FENCE_AFTER`] old: serve nothing.
    pub fn is_fenced(&self) -> bool {
        self.renewed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            > FENCE_AFTER
    }
}

/// A registered leaf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafMember {
    pub id: String,
    /// Where other roles reach its Flight service.
    pub url: String,
    /// RFC 3339.
    pub started_at: String,
}

impl LeafMember {
    /// A leaf starting now.
    pub fn new(id: String, url: String) -> Self {
        Self {
            id,
            url,
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }
}

/// A leaf's registration, renewed in the background until [`Self::deregister`]
/// (or the process ends, and the lease after it).
pub struct Registration {
    store: Arc<dyn Metastore>,
    lease: Arc<std::sync::atomic::AtomicI64>,
    fence: Fence,
    task: tokio::task::JoinHandle<()>,
}

impl Registration {
    /// Registers `member` (failing if the metastore cannot be reached now)
    /// and keeps it registered: when a renewal finds the lease gone (the
    /// metastore was unreachable for longer than its TTL), it registers again.
    pub async fn start(store: Arc<dyn Metastore>, member: LeafMember) -> Result<Self> {
        let key = format!("{LEAVES}{}", member.id);
        let value = serde_json::to_string(&member).expect("a member serializes");
        let fence = Fence {
            renewed: Arc::new(std::sync::Mutex::new(std::time::Instant::now())),
        };
        let first = register(store.as_ref(), &key, &value).await?;
        let lease = Arc::new(std::sync::atomic::AtomicI64::new(first));
        let task = tokio::spawn(renew(
            store.clone(),
            key,
            value,
            lease.clone(),
            fence.clone(),
        ));
        Ok(Self {
            store,
            lease,
            fence,
            task,
        })
    }

    /// Whether this registration is surely alive, for the leaf to check on
    /// every call.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Stops renewing and removes the registration now.
    pub async fn deregister(self) {
        self.task.abort();
        let lease: LeaseId = self.lease.load(std::sync::atomic::Ordering::Relaxed);
        if let Err(error) = self.store.revoke_lease(lease).await {
            tracing::warn!(%error, "could not deregister; the registration ends with its lease");
        }
    }
}

async fn register(store: &dyn Metastore, key: &str, value: &str) -> Result<LeaseId> {
    let lease = store.grant_lease(LEASE_TTL).await?;
    store
        .put_leased(key, value, lease, super::Precondition::Any)
        .await?;
    Ok(lease)
}

async fn renew(
    store: Arc<dyn Metastore>,
    key: String,
    value: String,
    lease: Arc<std::sync::atomic::AtomicI64>,
    fence: Fence,
) {
    let mut every = tokio::time::interval(RENEW_EVERY);
    every.tick().await;
    loop {
        every.tick().await;
        let current = lease.load(std::sync::atomic::Ordering::Relaxed);
        // A renewal that hangs (the store stopped answering) is given up in
        // time for the next one.
        let sent = std::time::Instant::now();
        let renewed = tokio::time::timeout(RENEW_EVERY, store.keep_alive(current)).await;
        let renewed = renewed.unwrap_or_else(|_| {
            Err(super::MetastoreError::Unavailable(
                "the lease renewal timed out".into(),
            ))
        });
        match renewed {
            Ok(true) => fence.renewed(sent),
            Ok(false) => {
                tracing::warn!(%key, "the membership lease expired; registering again");
                match register(store.as_ref(), &key, &value).await {
                    Ok(new) => {
                        lease.store(new, std::sync::atomic::Ordering::Relaxed);
                        fence.renewed(sent);
                    }
                    Err(error) => tracing::warn!(%key, %error, "cannot register again yet"),
                }
            }
            Err(error) => tracing::warn!(%key, %error, "cannot renew the membership lease"),
        }
    }
}

/// The registered leaves and a client of each, made on first use (the roles
/// that call leaves found in the metastore share it).
pub struct LeafDirectory {
    pub members: super::watched::Watched<LeafMember>,
    secret: crate::cluster_auth::ClusterSecret,
    ca_pem: Option<Vec<u8>>,
    clients: std::sync::Mutex<std::collections::HashMap<String, crate::rpc::SharedLeaf>>,
}

impl std::fmt::Debug for LeafDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafDirectory").finish_non_exhaustive()
    }
}

impl LeafDirectory {
    /// Reads the members (failing if the store cannot be read now), then follows them.
    pub async fn start(
        store: Arc<dyn Metastore>,
        secret: &crate::cluster_auth::ClusterSecret,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self> {
        Ok(Self {
            members: super::watched::Watched::start(store, LEAVES).await?,
            secret: secret.clone(),
            ca_pem: ca_pem.map(<[u8]>::to_vec),
            clients: Default::default(),
        })
    }

    /// A client of the registered leaf `id` (`None` if it is not registered).
    pub fn client(&self, id: &str) -> Option<crate::rpc::SharedLeaf> {
        let member = self.members.get(id)?;
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&member.url) {
            return Some(client.clone());
        }
        match crate::rpc::LeafClient::new(&member.url, &self.secret, self.ca_pem.as_deref()) {
            Ok(client) => {
                let client: crate::rpc::SharedLeaf = Arc::new(client);
                clients.insert(member.url, client.clone());
                Some(client)
            }
            Err(error) => {
                tracing::warn!(leaf = id, %error, "cannot make a client of a registered leaf");
                None
            }
        }
    }

    /// Every registered leaf's id.
    pub fn ids(&self) -> Vec<String> {
        self.members.list().into_iter().map(|(id, _)| id).collect()
    }
}
