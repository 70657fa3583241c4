//! Collection specs as the tailer sees them: from the metastore's `collections/`
//! through a watch (etcd: no aggregator in the way), or read from an
//! aggregator's catalog API and cached briefly (a single-node cluster, whose
//! metastore is a file only the aggregator opens).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use altdb_common::collection::CollectionSpec;
use altdb_common::metastore::watched::Watched;
use altdb_common::metastore::Metastore;

use crate::error::{Result, TailerError};

const TTL: Duration = Duration::from_secs(2);
/// Where the aggregators keep specs in the metastore.
const PREFIX: &str = "collections/";

/// Where the specs come from.
#[derive(Debug)]
enum Specs {
    Aggregator {
        base_url: String,
        http: reqwest::Client,
        cache: Mutex<Option<(Instant, HashMap<String, CollectionSpec>)>>,
    },
    Metastore(Watched<CollectionSpec>),
}

/// Reads collection specs.
#[derive(Debug)]
pub struct CatalogClient {
    specs: Specs,
}

#[derive(serde::Deserialize)]
struct Listing {
    collections: Vec<CollectionSpec>,
}

impl CatalogClient {
    /// Reads from the aggregator at `base_url` with `http`, a client that
    /// presents the cluster secret ([`altdb_common::tls::internal_client`]).
    pub fn new(base_url: &str, http: reqwest::Client) -> Self {
        Self {
            specs: Specs::Aggregator {
                base_url: base_url.trim_end_matches('/').to_string(),
                http,
                cache: Mutex::new(None),
            },
        }
    }

    /// Follows the specs in `store` (failing if it cannot be read now).
    pub async fn from_metastore(store: Arc<dyn Metastore>) -> Result<Self> {
        let specs = Watched::start(store, PREFIX).await.map_err(|e| {
            TailerError::Unavailable(format!("cannot read collections from the metastore: {e}"))
        })?;
        Ok(Self {
            specs: Specs::Metastore(specs),
        })
    }

    /// Every collection (from the aggregator: fetched at most every TTL).
    pub async fn all(&self) -> Result<HashMap<String, CollectionSpec>> {
        match &self.specs {
            Specs::Metastore(specs) => Ok(specs.list().into_iter().collect()),
            Specs::Aggregator { cache, .. } => {
                if let Some((at, specs)) = cache.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
                {
                    if at.elapsed() < TTL {
                        return Ok(specs.clone());
                    }
                }
                self.refresh().await
            }
        }
    }

    async fn refresh(&self) -> Result<HashMap<String, CollectionSpec>> {
        let (base_url, http, cache) = match &self.specs {
            Specs::Aggregator {
                base_url,
                http,
                cache,
            } => (base_url, http, cache),
            Specs::Metastore(specs) => return Ok(specs.list().into_iter().collect()),
        };
        let url = format!("{base_url}/v1/collections");
        let unavailable = |e: reqwest::Error| {
            TailerError::Unavailable(format!(
                "cannot read collections from the aggregator at {base_url}: {e}"
            ))
        };
        let listing: Listing = http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(unavailable)?
            .json()
            .await
            .map_err(unavailable)?;
        let specs: HashMap<_, _> = listing
            .collections
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        *cache.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), specs.clone()));
        Ok(specs)
    }

    /// One collection; a miss reads the aggregator again once (it may have
    /// just been created; a metastore watch has heard of it already).
    pub async fn get(&self, name: &str) -> Result<CollectionSpec> {
        if let Some(spec) = self.all().await?.remove(name) {
            return Ok(spec);
        }
        if let Specs::Metastore(_) = self.specs {
            return Err(TailerError::CollectionNotFound(name.to_string()));
        }
        self.refresh()
            .await?
            .remove(name)
            .ok_or_else(|| TailerError::CollectionNotFound(name.to_string()))
    }
}
