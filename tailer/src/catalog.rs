//! Collection specs as the tailer sees them: read from the aggregator, cached briefly.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use altdb_common::collection::CollectionSpec;

use crate::error::{Result, TailerError};

const TTL: Duration = Duration::from_secs(2);

/// Reads collection specs from the aggregator's catalog API.
#[derive(Debug)]
pub struct CatalogClient {
    base_url: String,
    http: reqwest::Client,
    cache: Mutex<Option<(Instant, HashMap<String, CollectionSpec>)>>,
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
            base_url: base_url.trim_end_matches('/').to_string(),
            http,
            cache: Mutex::new(None),
        }
    }

    /// Every collection, fetched at most every TTL.
    pub async fn all(&self) -> Result<HashMap<String, CollectionSpec>> {
        if let Some((at, specs)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            if at.elapsed() < TTL {
                return Ok(specs.clone());
            }
        }
        self.refresh().await
    }

    async fn refresh(&self) -> Result<HashMap<String, CollectionSpec>> {
        let url = format!("{}/v1/collections", self.base_url);
        let unavailable = |e: reqwest::Error| {
            TailerError::Unavailable(format!(
                "cannot read collections from the aggregator at {}: {e}",
                self.base_url
            ))
        };
        let listing: Listing = self
            .http
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
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), specs.clone()));
        Ok(specs)
    }

    /// One collection; a miss refreshes the cache once (it may have just been created).
    pub async fn get(&self, name: &str) -> Result<CollectionSpec> {
        if let Some(spec) = self.all().await?.remove(name) {
            return Ok(spec);
        }
        self.refresh()
            .await?
            .remove(name)
            .ok_or_else(|| TailerError::CollectionNotFound(name.to_string()))
    }
}
