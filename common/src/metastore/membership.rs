//! Leaf membership: a leaf registers itself under `leaves/<id>` with a lease
//! (10 s TTL, renewed every 3 s), so the registration vanishes soon after the
//! leaf dies or loses the metastore; a graceful stop revokes it at once.
//! Aggregators read the members through a [`super::watched::Watched`] cache.

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
    task: tokio::task::JoinHandle<()>,
}

impl Registration {
    /// Registers `member` (failing if the metastore cannot be reached now)
    /// and keeps it registered: when a renewal finds the lease gone (the
    /// metastore was unreachable for longer than its TTL), it registers again.
    pub async fn start(store: Arc<dyn Metastore>, member: LeafMember) -> Result<Self> {
        let key = format!("{LEAVES}{}", member.id);
        let value = serde_json::to_string(&member).expect("a member serializes");
        let first = register(store.as_ref(), &key, &value).await?;
        let lease = Arc::new(std::sync::atomic::AtomicI64::new(first));
        let task = tokio::spawn(renew(store.clone(), key, value, lease.clone()));
        Ok(Self { store, lease, task })
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
    store.put_leased(key, value, lease).await?;
    Ok(lease)
}

async fn renew(
    store: Arc<dyn Metastore>,
    key: String,
    value: String,
    lease: Arc<std::sync::atomic::AtomicI64>,
) {
    let mut every = tokio::time::interval(RENEW_EVERY);
    every.tick().await;
    loop {
        every.tick().await;
        let current = lease.load(std::sync::atomic::Ordering::Relaxed);
        match store.keep_alive(current).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(%key, "the membership lease expired; registering again");
                match register(store.as_ref(), &key, &value).await {
                    Ok(new) => lease.store(new, std::sync::atomic::Ordering::Relaxed),
                    Err(error) => tracing::warn!(%key, %error, "cannot register again yet"),
                }
            }
            Err(error) => tracing::warn!(%key, %error, "cannot renew the membership lease"),
        }
    }
}
