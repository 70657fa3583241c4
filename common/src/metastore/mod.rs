//! The metastore: the cluster's shared state (collections, keys and roles,
//! Query Lambdas, later leaf membership and shard assignments) as keys with
//! JSON values, each change numbered by a store-wide revision.
//!
//! Two implementations of one seam, [`Metastore`]:
//!
//! | | where | for |
//! |---|---|---|
//! | [`file::FileMetastore`] | one JSON file, replaced atomically | one aggregator (the embedded default) |
//! | [`etcd::EtcdMetastore`] | an etcd cluster (v3 API) | several aggregators, Kubernetes |
//!
//! Writes are conditional ([`Precondition`]): two aggregators creating the
//! same collection at once cannot both win. Readers keep a [`watched::Watched`]
//! cache: a snapshot of a prefix, then every change after it, re-read whole
//! when the store has forgotten the history the cache needs (etcd compaction).

pub mod etcd;
pub mod file;
pub mod membership;
pub mod watched;

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

/// A store-wide change number: every write makes a larger one.
pub type Revision = i64;

/// A lease's id: keys written under it vanish when it is not kept alive.
pub type LeaseId = i64;

/// One key and its value as of its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    /// The revision of the key's last change.
    pub revision: Revision,
}

/// When a conditional write applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Always.
    Any,
    /// Only if the key does not exist.
    Absent,
    /// Only if the key's last change is this revision (nobody changed it since
    /// it was read).
    At(Revision),
}

/// One change a watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(Entry),
    Delete { key: String, revision: Revision },
}

impl Change {
    pub fn key(&self) -> &str {
        match self {
            Change::Put(entry) => &entry.key,
            Change::Delete { key, .. } => key,
        }
    }

    pub fn revision(&self) -> Revision {
        match self {
            Change::Put(entry) => entry.revision,
            Change::Delete { revision, .. } => *revision,
        }
    }
}

/// What went wrong talking to the metastore.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MetastoreError {
    /// The store cannot be reached or refused the request; retry later.
    #[error("the metastore is unavailable: {0}")]
    Unavailable(String),
    /// The history a watch needs is gone: list again, then watch from there.
    #[error("the metastore no longer has the changes after revision {0}")]
    Compacted(Revision),
    /// A stored value or a request is not what it should be.
    #[error("metastore: {0}")]
    Invalid(String),
}

pub type Result<T, E = MetastoreError> = std::result::Result<T, E>;

/// The changes after a revision, in order, batched as the store reports them.
pub type ChangeStream = BoxStream<'static, Result<Vec<Change>>>;

/// A [`ChangeStream`] of what a watch task sends on `receiver`.
fn received(mut receiver: tokio::sync::mpsc::Receiver<Result<Vec<Change>>>) -> ChangeStream {
    Box::pin(futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)))
}

/// Shared cluster state: keys with JSON values under conditional writes,
/// watches, and leases.
#[async_trait]
pub trait Metastore: Send + Sync + std::fmt::Debug {
    /// Every entry whose key starts with `prefix`, by key, and the store's
    /// revision they are as of.
    async fn list(&self, prefix: &str) -> Result<(Vec<Entry>, Revision)>;

    /// One entry.
    async fn get(&self, key: &str) -> Result<Option<Entry>>;

    /// Writes `value` at `key` if `when` holds: the new revision, or `None`
    /// when the precondition failed (someone else wrote first).
    async fn put(&self, key: &str, value: &str, when: Precondition) -> Result<Option<Revision>>;

    /// Deletes `key` if `when` holds: the new revision, or `None` when the
    /// key did not exist or the precondition failed.
    async fn delete(&self, key: &str, when: Precondition) -> Result<Option<Revision>>;

    /// The changes under `prefix` after revision `after`, as they happen. The
    /// stream ends with [`MetastoreError::Compacted`] when those changes are
    /// gone, or another error when the store is lost; list again then.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<ChangeStream>;

    /// A lease of `ttl`: keys written under it vanish unless it is kept alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId>;

    /// Renews a lease; `false` when it has expired already.
    async fn keep_alive(&self, lease: LeaseId) -> Result<bool>;

    /// Writes `value` at `key` under `lease` if `when` holds (`Absent` makes
    /// a leader election): the new revision, or `None` when it did not.
    async fn put_leased(
        &self,
        key: &str,
        value: &str,
        lease: LeaseId,
        when: Precondition,
    ) -> Result<Option<Revision>>;

    /// Ends a lease now: its keys vanish.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;
}

/// Which metastore a process uses, from its `metastore` setting: empty for the
/// file in the data directory, or `etcd://host:port[,host:port..][/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetastoreUrl {
    File,
    Etcd {
        endpoints: Vec<String>,
        /// Every key starts with it (several altdb clusters may share one
        /// etcd); `/altdb/` unless the URL names another.
        prefix: String,
    },
}

impl MetastoreUrl {
    pub fn parse(text: &str) -> Result<Self, crate::Error> {
        let text = text.trim();
        if text.is_empty() || text == "file" {
            return Ok(MetastoreUrl::File);
        }
        let rest = text.strip_prefix("etcd://").ok_or_else(|| {
            crate::Error::InvalidConfig(format!(
                "metastore `{text}` is not one altdb knows: leave it empty for the file in \
                 the data directory, or give etcd://host:2379[,host:2379..][/prefix]"
            ))
        })?;
        let (hosts, prefix) = match rest.split_once('/') {
            Some((hosts, prefix)) => (hosts, prefix.trim_matches('/')),
            None => (rest, ""),
        };
        let endpoints: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| format!("http://{h}"))
            .collect();
        if endpoints.is_empty() {
            return Err(crate::Error::InvalidConfig(format!(
                "metastore `{text}` names no etcd endpoint; give etcd://host:2379"
            )));
        }
        let prefix = if prefix.is_empty() {
            "/altdb/".to_string()
        } else {
            format!("/{prefix}/")
        };
        Ok(MetastoreUrl::Etcd { endpoints, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metastore_urls_parse() {
        assert_eq!(MetastoreUrl::parse("").unwrap(), MetastoreUrl::File);
        assert_eq!(
            MetastoreUrl::parse("etcd://a:2379,b:2379").unwrap(),
            MetastoreUrl::Etcd {
                endpoints: vec!["http://a:2379".into(), "http://b:2379".into()],
                prefix: "/altdb/".into()
            }
        );
        assert_eq!(
            MetastoreUrl::parse("etcd://a:2379/prod/").unwrap(),
            MetastoreUrl::Etcd {
                endpoints: vec!["http://a:2379".into()],
                prefix: "/prod/".into()
            }
        );
        assert!(MetastoreUrl::parse("zk://a").is_err());
        assert!(MetastoreUrl::parse("etcd:///x").is_err());
    }
}
