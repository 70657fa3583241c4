//! The metastore of a multi-node cluster: etcd (v3 API), the store Kubernetes
//! already runs. Conditional writes are etcd transactions comparing a key's
//! `create_revision` (absent) or `mod_revision` (unchanged since read); watches
//! are etcd watches from a revision; leases are etcd leases. Every key starts
//! with the cluster's prefix (`/altdb/` unless the metastore URL names
//! another), so several clusters can share one etcd.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::Mutex;

use super::{
    Change, ChangeStream, Entry, LeaseId, Metastore, MetastoreError, Precondition, Result, Revision,
};

/// How long one call to etcd may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// An etcd-backed metastore; keys given to it are relative to its prefix.
pub struct EtcdMetastore {
    client: Client,
    prefix: String,
    endpoints: Vec<String>,
    /// Open keep-alive streams, by lease.
    keepers: Mutex<HashMap<LeaseId, (LeaseKeeper, LeaseKeepAliveStream)>>,
}

impl std::fmt::Debug for EtcdMetastore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdMetastore")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(endpoints: &[String]) -> impl Fn(etcd_client::Error) -> MetastoreError + '_ {
    move |e| MetastoreError::Unavailable(format!("etcd at {}: {e}", endpoints.join(",")))
}

impl EtcdMetastore {
    /// Connects to etcd at `endpoints` (`http://host:port`), keys under `prefix`.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self> {
        let options = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), CALL_TIMEOUT);
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(unavailable(endpoints))?;
        let store = Self {
            client,
            prefix: prefix.to_string(),
            endpoints: endpoints.to_vec(),
            keepers: Mutex::new(HashMap::new()),
        };
        // Fail at start-up, not at the first request, when etcd is not there.
        store.get("health").await?;
        Ok(store)
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn error(&self) -> impl Fn(etcd_client::Error) -> MetastoreError + '_ {
        unavailable(&self.endpoints)
    }

    fn entry(&self, kv: &etcd_client::KeyValue) -> Result<Entry> {
        let key = kv
            .key_str()
            .map_err(|e| MetastoreError::Invalid(format!("a key is not UTF-8: {e}")))?;
        let value = kv.value_str().map_err(|e| {
            MetastoreError::Invalid(format!("the value of {key} is not UTF-8: {e}"))
        })?;
        Ok(Entry {
            key: key.strip_prefix(&self.prefix).unwrap_or(key).to_string(),
            value: value.to_string(),
            revision: kv.mod_revision(),
        })
    }

    fn compare(&self, key: &str, when: Precondition) -> Option<Compare> {
        match when {
            Precondition::Any => None,
            Precondition::Absent => Some(Compare::create_revision(key, CompareOp::Equal, 0)),
            Precondition::At(revision) => {
                Some(Compare::mod_revision(key, CompareOp::Equal, revision))
            }
        }
    }
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, |h| h.revision())
}

#[async_trait]
impl Metastore for EtcdMetastore {
    async fn list(&self, prefix: &str) -> Result<(Vec<Entry>, Revision)> {
        let response = self
            .client
            .kv_client()
            .get(self.full(prefix), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(self.error())?;
        let entries = response
            .kvs()
            .iter()
            .map(|kv| self.entry(kv))
            .collect::<Result<Vec<_>>>()?;
        Ok((entries, revision_of(response.header())))
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        let response = self
            .client
            .kv_client()
            .get(self.full(key), None)
            .await
            .map_err(self.error())?;
        response.kvs().first().map(|kv| self.entry(kv)).transpose()
    }

    async fn put(&self, key: &str, value: &str, when: Precondition) -> Result<Option<Revision>> {
        let key = self.full(key);
        let mut kv = self.client.kv_client();
        let Some(compare) = self.compare(&key, when) else {
            let response = kv.put(key, value, None).await.map_err(self.error())?;
            return Ok(Some(revision_of(response.header())));
        };
        let txn = Txn::new()
            .when(vec![compare])
            .and_then(vec![TxnOp::put(key, value, None)]);
        let response = kv.txn(txn).await.map_err(self.error())?;
        Ok(response.succeeded().then(|| revision_of(response.header())))
    }

    async fn delete(&self, key: &str, when: Precondition) -> Result<Option<Revision>> {
        let key = self.full(key);
        let mut kv = self.client.kv_client();
        let txn = Txn::new()
            .when(self.compare(&key, when).into_iter().collect::<Vec<_>>())
            .and_then(vec![TxnOp::delete(key, None::<DeleteOptions>)]);
        let response = kv.txn(txn).await.map_err(self.error())?;
        if !response.succeeded() {
            return Ok(None);
        }
        let deleted = response.op_responses().iter().any(|op| match op {
            TxnOpResponse::Delete(d) => d.deleted() > 0,
            _ => false,
        });
        Ok(deleted.then(|| revision_of(response.header())))
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<ChangeStream> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(after + 1);
        let mut stream = self
            .client
            .watch_client()
            .watch(self.full(prefix), Some(options))
            .await
            .map_err(self.error())?;
        let (sender, changes) = tokio::sync::mpsc::channel(16);
        let (base, endpoints) = (self.prefix.clone(), self.endpoints.clone());
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = stream.message() => message,
                    () = sender.closed() => return,
                };
                let item = match message {
                    Ok(Some(response)) if response.compact_revision() > 0 => {
                        Err(MetastoreError::Compacted(after))
                    }
                    Ok(Some(response)) if response.canceled() => Err(MetastoreError::Unavailable(
                        format!("etcd cancelled the watch: {}", response.cancel_reason()),
                    )),
                    Ok(Some(response)) => {
                        let mut batch = Vec::with_capacity(response.events().len());
                        for event in response.events() {
                            let Some(kv) = event.kv() else { continue };
                            let key = String::from_utf8_lossy(kv.key());
                            let key = key.strip_prefix(&base).unwrap_or(&key).to_string();
                            batch.push(match event.event_type() {
                                EventType::Put => Change::Put(Entry {
                                    key,
                                    value: String::from_utf8_lossy(kv.value()).into_owned(),
                                    revision: kv.mod_revision(),
                                }),
                                EventType::Delete => Change::Delete {
                                    key,
                                    revision: kv.mod_revision(),
                                },
                            });
                        }
                        if batch.is_empty() {
                            continue; // created, or a progress notification
                        }
                        Ok(batch)
                    }
                    Ok(None) => Err(MetastoreError::Unavailable(format!(
                        "etcd at {} closed the watch",
                        endpoints.join(",")
                    ))),
                    Err(e) => Err(unavailable(&endpoints)(e)),
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
        let seconds = ttl.as_secs().max(1) as i64;
        let response = self
            .client
            .lease_client()
            .grant(seconds, None)
            .await
            .map_err(self.error())?;
        Ok(response.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<bool> {
        let mut keepers = self.keepers.lock().await;
        if let std::collections::hash_map::Entry::Vacant(slot) = keepers.entry(lease) {
            let opened = self
                .client
                .lease_client()
                .keep_alive(lease)
                .await
                .map_err(self.error())?;
            slot.insert(opened);
        }
        let (keeper, stream) = keepers.get_mut(&lease).expect("inserted above");
        let answer = async {
            keeper.keep_alive().await?;
            stream.message().await
        }
        .await;
        match answer {
            Ok(Some(response)) if response.ttl() > 0 => Ok(true),
            Ok(_) => {
                keepers.remove(&lease);
                Ok(false)
            }
            Err(e) => {
                keepers.remove(&lease);
                Err(self.error()(e))
            }
        }
    }

    async fn put_leased(
        &self,
        key: &str,
        value: &str,
        lease: LeaseId,
        when: Precondition,
    ) -> Result<Option<Revision>> {
        let key = self.full(key);
        let options = Some(PutOptions::new().with_lease(lease));
        let txn = Txn::new()
            .when(self.compare(&key, when).into_iter().collect::<Vec<_>>())
            .and_then(vec![TxnOp::put(key, value, options)]);
        let response = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(self.error())?;
        Ok(response.succeeded().then(|| revision_of(response.header())))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.keepers.lock().await.remove(&lease);
        self.client
            .lease_client()
            .revoke(lease)
            .await
            .map_err(self.error())?;
        Ok(())
    }
}
