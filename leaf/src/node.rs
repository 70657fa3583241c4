//! The leaf node: every shard this process holds, and the background sealer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use altdb_common::health::LoopHealth;
use altdb_common::metrics::Metrics;
use altdb_common::placement::{CopyState, Placement};
use altdb_common::priority::Lowered;
use altdb_common::rpc::{
    CollectionStats, CopiedDoc, CopyOf, CopyShardPage, CopyShardRequest, PutAck, PutRow,
    RangeDocsRequest, ShardDigests, ShardDigestsRequest, SourceMark, Watermarks,
};
use altdb_common::versions::RangeDigest;
use tokio::sync::watch;

use crate::config::LeafConfig;
use crate::error::{LeafError, Result};
use crate::exec::fragment::KeptFragments;
use crate::incarnation::{CollectionState, Creation};
use crate::placement::{Follower, COPY_PAGE_BYTES};
use crate::segment::DecodedColumns;
use crate::shard::{MergePolicy, SealPolicy, Shard};
use crate::store::{CollectionMeta, RangeCut, Store, StoredDoc};

type ShardKey = (String, u32);

/// Where a put goes: a shard of a collection's incarnation, the placement
/// epoch its writer knows (0 without a metastore), and the version of its
/// documents (`PutHeader::version`).
#[derive(Debug, Clone)]
pub struct WriteTo {
    pub collection: String,
    pub incarnation: u64,
    pub shard: u32,
    pub epoch: u64,
    pub version: u64,
    /// The rows are patches ([`Shard::patch`]).
    pub patch: bool,
    /// With `patch`: how large and deep a patched document may become.
    pub doc_limits: Option<altdb_common::document::DocLimits>,
}

/// All shards of all collections on this leaf.
pub struct Leaf {
    store: Arc<Store>,
    segments_dir: PathBuf,
    shards: RwLock<HashMap<ShardKey, Arc<Shard>>>,
    /// Incarnation, placement and deletion of every collection name seen.
    collections: RwLock<HashMap<String, CollectionState>>,
    seal_policy: SealPolicy,
    merge_policy: MergePolicy,
    /// Decoded columns of every shard's sealed segments, within one budget.
    decoded: Arc<DecodedColumns>,
    /// Threads for work that can wait (`background_nice`) ...
    background: Lowered,
    /// ... and for storing pushed rows (`write_nice`).
    writes: Lowered,
    fragments: KeptFragments,
    metrics: Metrics,
    /// The placement this leaf follows, in a cluster with a metastore.
    follower: OnceLock<Arc<Follower>>,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf")
            .field("segments_dir", &self.segments_dir)
            .finish()
    }
}

impl Leaf {
    /// Opens the leaf's storage and recovers every shard. Blocking.
    pub fn open(config: &LeafConfig) -> Result<Arc<Self>> {
        std::fs::create_dir_all(&config.data_dir)?;
        let store = Arc::new(Store::open(
            &config.data_dir.join("rocksdb"),
            config.sync_writes,
        )?);
        let segments_dir = config.data_dir.join("segments");
        let decoded = Arc::new(DecodedColumns::new(
            config.decoded_cache_mb.saturating_mul(1 << 20),
        ));
        let mut shards = HashMap::new();
        for (collection, shard) in store.shards()? {
            let dir = shard_dir(&segments_dir, &collection, shard);
            let recovered = Shard::recover(&collection, shard, dir, store.clone())?
                .with_decoded(decoded.clone());
            shards.insert((collection, shard), Arc::new(recovered));
        }
        let collections = store.collection_states()?.into_iter().collect();
        // Seals and merges run one shard at a time; writes to different
        // shards in parallel, as tokio's blocking pool allowed them.
        let background = Lowered::new("leaf-background", config.background_nice, 4)?;
        let writes = Lowered::new("leaf-writes", config.write_nice, 64)?;
        Ok(Arc::new(Self {
            store,
            segments_dir,
            shards: RwLock::new(shards),
            collections: RwLock::new(collections),
            seal_policy: SealPolicy {
                max_rows: config.seal_rows,
                max_age_secs: config.seal_interval_secs,
            },
            merge_policy: MergePolicy {
                min_segments: config.merge_min_segments,
                max_rows: config.merge_max_rows,
            },
            decoded,
            background,
            writes,
            fragments: KeptFragments::default(),
            metrics: Metrics::default(),
            follower: OnceLock::new(),
        }))
    }

    /// From now on, calls are checked against `follower`'s placement.
    pub fn follow(&self, follower: Arc<Follower>) {
        let _ = self.follower.set(follower);
    }

    pub fn follower(&self) -> Option<&Arc<Follower>> {
        self.follower.get()
    }

    /// Records the shards `placement` gives this leaf (`mine`) under its
    /// incarnation, unless recorded already (data of an older incarnation goes).
    pub async fn follow_placement(
        self: &Arc<Self>,
        collection: &str,
        placement: &Placement,
        mine: &std::collections::BTreeMap<u32, CopyState>,
    ) -> Result<()> {
        // Incarnation 0 (system collections) is served on any shard.
        let recorded = placement.incarnation == 0
            || self.with_collection_state(collection, |state| {
                placement.incarnation < state.held
                    || (placement.incarnation == state.held
                        && state
                            .placed
                            .as_ref()
                            .is_some_and(|placed| placed.iter().eq(mine.keys())))
            });
        if recorded {
            return Ok(());
        }
        let shards: Vec<u32> = mine.keys().copied().collect();
        self.create_collection(collection, placement.incarnation, &shards)
            .await
    }

    /// The shards of `collection` with data on this leaf.
    pub fn held_shards(&self, collection: &str) -> Vec<u32> {
        self.shards_of(collection).iter().map(|s| s.shard).collect()
    }

    /// Drops one shard's rows, segments and watermarks (a copy moved away).
    pub async fn drop_shard(self: &Arc<Self>, collection: &str, shard: u32) -> Result<()> {
        let removed = self
            .shards
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(collection.to_string(), shard));
        self.fragments.forget(collection);
        let (store, collection) = (self.store.clone(), collection.to_string());
        tokio::task::spawn_blocking(move || {
            store.drop_shard(&collection, shard)?;
            if let Some(shard) = removed {
                shard.remove_files();
            }
            Ok(())
        })
        .await?
    }

    /// Whether this leaf holds the incarnation and shard another copy reads.
    fn serve_copy(&self, of: &CopyOf) -> Result<()> {
        self.with_collection_state(&of.collection, |state| {
            state.serve(&of.collection, of.incarnation, of.shard)
        })
    }

    /// A page of `request.shard`'s documents for a joining copy elsewhere
    /// (the caller checked the placement).
    pub async fn copy_page(self: &Arc<Self>, request: CopyShardRequest) -> Result<CopyShardPage> {
        self.serve_copy(&request.of)?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let store = &this.store;
            let (collection, shard) = (&request.of.collection, request.of.shard);
            let watermarks = first_page_watermarks(store, collection, shard, &request.after)?;
            let (docs, next) =
                store.docs_page(collection, shard, request.after.as_deref(), COPY_PAGE_BYTES)?;
            let meta = store.collection_meta(collection)?;
            let docs = docs
                .into_iter()
                .map(copied_doc)
                .collect::<Result<Vec<_>>>()?;
            Ok(CopyShardPage {
                docs,
                watermarks,
                settings: meta,
                next,
            })
        })
        .await?
    }

    /// The `_id`s and versions this leaf holds in one range of a shard, and
    /// their digest.
    pub async fn range_versions(
        self: &Arc<Self>,
        collection: &str,
        shard: u32,
        after: Option<String>,
        last: String,
    ) -> Result<(RangeDigest, Vec<(String, u64)>)> {
        let (store, collection) = (self.store.clone(), collection.to_string());
        tokio::task::spawn_blocking(move || {
            store.range_versions(&collection, shard, after.as_deref(), &last)
        })
        .await?
    }

    /// Range digests of `request.shard` for another copy (the caller checked
    /// the placement).
    pub async fn shard_digests(
        self: &Arc<Self>,
        request: ShardDigestsRequest,
    ) -> Result<ShardDigests> {
        self.serve_copy(&request.of)?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let store = &this.store;
            let (collection, shard) = (&request.of.collection, request.of.shard);
            let watermarks = first_page_watermarks(store, collection, shard, &request.after)?;
            let (ranges, next) =
                store.digest_ranges(collection, shard, request.after.as_deref(), DIGEST_CUT)?;
            let meta = store.collection_meta(collection)?;
            Ok(ShardDigests {
                ranges,
                watermarks,
                settings: meta,
                next,
            })
        })
        .await?
    }

    /// The documents of one `_id` range of `request.shard` newer than those
    /// the asker holds (the caller checked the placement).
    pub async fn range_docs(self: &Arc<Self>, request: RangeDocsRequest) -> Result<CopyShardPage> {
        self.serve_copy(&request.of)?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let held: Option<HashMap<&str, u64>> = request
                .held
                .as_ref()
                .map(|held| held.iter().map(|(id, v)| (id.as_str(), *v)).collect());
            let docs = this.store.range_docs(
                &request.of.collection,
                request.of.shard,
                request.after.as_deref(),
                &request.last,
                held.as_ref(),
            )?;
            let meta = this.store.collection_meta(&request.of.collection)?;
            Ok(CopyShardPage {
                docs: docs.into_iter().map(copied_doc).collect::<Result<_>>()?,
                watermarks: Default::default(),
                settings: meta,
                next: None,
            })
        })
        .await?
    }

    pub fn shard(&self, collection: &str, shard: u32) -> Option<Arc<Shard>> {
        self.shards
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(collection.to_string(), shard))
            .cloned()
    }

    /// What this leaf knows of `collection`'s incarnations.
    pub fn collection_state(&self, collection: &str) -> CollectionState {
        self.with_collection_state(collection, CollectionState::clone)
    }

    /// `f` of the state, read in place (writes and fragments ask on every call:
    /// no copy of the placed shards).
    fn with_collection_state<R>(
        &self,
        collection: &str,
        f: impl FnOnce(&CollectionState) -> R,
    ) -> R {
        let states = self.collections.read().unwrap_or_else(|p| p.into_inner());
        match states.get(collection) {
            Some(state) => f(state),
            None => f(&CollectionState::default()),
        }
    }

    fn set_collection_state(&self, collection: &str, state: CollectionState) -> Result<()> {
        self.store.put_collection_state(collection, &state)?;
        self.collections
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(collection.to_string(), state);
        Ok(())
    }

    /// The shard to run a fragment of `incarnation` on: refused when the leaf
    /// does not hold it ([`CollectionState::serve`]); `None` when it holds it
    /// but has no rows yet.
    pub fn shard_for(
        &self,
        collection: &str,
        incarnation: u64,
        shard: u32,
    ) -> Result<Option<Arc<Shard>>> {
        self.with_collection_state(collection, |state| {
            state.serve(collection, incarnation, shard)
        })?;
        Ok(self.shard(collection, shard))
    }

    /// A new incarnation of `collection` places `shards` on this leaf; the data
    /// of older incarnations is dropped first.
    pub async fn create_collection(
        self: &Arc<Self>,
        collection: &str,
        incarnation: u64,
        shards: &[u32],
    ) -> Result<()> {
        match self
            .collection_state(collection)
            .create(collection, incarnation, shards)?
        {
            Creation::Replace(state) => {
                self.remove_data(collection).await?;
                self.set_collection_state(collection, state)
            }
            Creation::Update(state) => self.set_collection_state(collection, state),
        }
    }

    /// This leaf's Prometheus metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Fragments decoded earlier, kept to run again.
    /// The decoded columns of this leaf's sealed segments.
    pub fn decoded(&self) -> &DecodedColumns {
        &self.decoded
    }

    pub fn fragments(&self) -> &KeptFragments {
        &self.fragments
    }

    pub(crate) fn shard_or_create(&self, collection: &str, shard: u32) -> Arc<Shard> {
        if let Some(existing) = self.shard(collection, shard) {
            return existing;
        }
        let mut shards = self.shards.write().unwrap_or_else(|p| p.into_inner());
        shards
            .entry((collection.to_string(), shard))
            .or_insert_with(|| {
                Arc::new(
                    Shard::new(
                        collection,
                        shard,
                        shard_dir(&self.segments_dir, collection, shard),
                        self.store.clone(),
                    )
                    .with_decoded(self.decoded.clone()),
                )
            })
            .clone()
    }

    /// Every shard on this leaf (a snapshot: the lock is not held while they work).
    fn all_shards(&self) -> Vec<Arc<Shard>> {
        self.shards
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn shards_of(&self, collection: &str) -> Vec<Arc<Shard>> {
        let shards = self.shards.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = shards
            .iter()
            .filter(|((c, _), _)| c == collection)
            .map(|(_, s)| s.clone())
            .collect();
        out.sort_by_key(|s| s.shard);
        out
    }

    /// Stores a batch durably; returns once it is in the WAL and queryable.
    pub async fn write(
        self: &Arc<Self>,
        to: WriteTo,
        meta: CollectionMeta,
        sources: Vec<SourceMark>,
        docs: Vec<PutRow>,
    ) -> Result<PutAck> {
        let started = Instant::now();
        let WriteTo {
            collection,
            incarnation,
            shard,
            epoch,
            version,
            patch,
            doc_limits,
        } = to;
        // Held until the rows are stored (see `placement`: a copy starting
        // waits for writes checked against an older placement).
        let _checked = match self.follower() {
            Some(follower) => {
                let gate = follower.gate.read().await;
                let placement = follower
                    .check_write(&collection, incarnation, shard, epoch)
                    .await?;
                let mine = placement.shards_on(&follower.id);
                self.follow_placement(&collection, &placement, &mine)
                    .await?;
                if mine.get(&shard) == Some(&CopyState::Joining) {
                    if patch {
                        // A copy catching up may lack the document's latest
                        // version: patches are applied by ready copies.
                        return Err(LeafError::NotOwner(format!(
                            "this copy of shard {shard} of `{collection}` is catching up and \
                             applies no patches; a ready copy does"
                        )));
                    }
                    follower
                        .begin_join(self, &collection, &placement, shard)
                        .await;
                }
                Some(gate)
            }
            None => None,
        };
        self.with_collection_state(&collection, |state| {
            state.serve(&collection, incarnation, shard)
        })?;
        let shard = self.shard_or_create(&collection, shard);
        let ack = self
            .writes
            .spawn_blocking(move || {
                if patch {
                    shard.patch(&meta, docs, version, doc_limits)
                } else {
                    shard.write(&meta, &sources, docs, version)
                }
            })
            .await?;
        self.metrics.observe(
            "altdb_leaf_write_duration_seconds",
            "Time to store a pushed batch durably (RocksDB WAL) and make it queryable.",
            &[],
            started.elapsed().as_secs_f64(),
        );
        ack
    }

    /// Stats of the shards of `incarnation` (none if the leaf holds another).
    pub fn collection_stats(&self, collection: &str, incarnation: u64) -> CollectionStats {
        let mut stats = CollectionStats::default();
        if !self.with_collection_state(collection, |state| state.holds(incarnation)) {
            return stats;
        }
        for shard in self.shards_of(collection) {
            stats.fields.merge(&shard.fields());
            stats.shards.push(shard.stats());
        }
        stats
    }

    /// Stored positions of `incarnation`'s sources (none if the leaf holds
    /// another: its sources start afresh).
    pub fn watermarks(&self, collection: &str, incarnation: u64, sources: &[String]) -> Watermarks {
        let shards = if self.with_collection_state(collection, |state| state.holds(incarnation)) {
            self.shards_of(collection)
        } else {
            Vec::new()
        };
        sources
            .iter()
            .map(|source| {
                let marks = shards
                    .iter()
                    .filter_map(|s| s.watermark(source).map(|w| (s.shard, w)))
                    .collect();
                (source.clone(), marks)
            })
            .collect()
    }

    /// Applies a collection's changed settings to the shards of `incarnation`
    /// this leaf holds (none if it holds another).
    pub async fn set_settings(
        &self,
        collection: &str,
        incarnation: u64,
        settings: CollectionMeta,
    ) -> Result<()> {
        if !self.with_collection_state(collection, |state| state.holds(incarnation)) {
            return Ok(());
        }
        let shards = self.shards_of(collection);
        tokio::task::spawn_blocking(move || {
            shards
                .iter()
                .try_for_each(|shard| shard.set_settings(&settings))
        })
        .await?
    }

    /// Deletes `incarnation` of a collection: its rows, segments and watermarks
    /// go (unless the leaf holds a newer one), and calls for it are refused from
    /// now on.
    pub async fn drop_collection(
        self: &Arc<Self>,
        collection: &str,
        incarnation: u64,
    ) -> Result<()> {
        let (state, drops_data) = self.collection_state(collection).dropped(incarnation);
        if drops_data {
            self.remove_data(collection).await?;
        }
        self.set_collection_state(collection, state)
    }

    /// Removes a collection's rows, segments and watermarks from this leaf.
    async fn remove_data(self: &Arc<Self>, collection: &str) -> Result<()> {
        let removed: Vec<Arc<Shard>> = {
            let mut shards = self.shards.write().unwrap_or_else(|p| p.into_inner());
            let keys: Vec<ShardKey> = shards
                .keys()
                .filter(|(c, _)| c == collection)
                .cloned()
                .collect();
            keys.iter().filter_map(|k| shards.remove(k)).collect()
        };
        // Kept fragments hold the shards; they must not outlive the collection.
        self.fragments.forget(collection);
        let this = self.clone();
        let collection = collection.to_string();
        tokio::task::spawn_blocking(move || {
            this.store.drop_collection(&collection)?;
            for shard in removed {
                shard.remove_files();
            }
            let dir = this.segments_dir.join(&collection);
            // Only ever a directory right under `segments/` (flight.rs checks the
            // name too).
            if dir.parent() == Some(this.segments_dir.as_path()) && dir.exists() {
                let _ = std::fs::remove_dir_all(dir);
            }
            Ok(())
        })
        .await?
    }

    /// Forgets, once a minute, the tombstones of deletes older than `grace`
    /// ([`Shard::forget_tombstones`]) until `shutdown` flips.
    pub async fn run_tombstone_forgetting(
        self: Arc<Self>,
        grace: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let health = LoopHealth::new("tombstones");
        let every = grace.clamp(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            health.passed(&self.metrics);
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            for shard in self.all_shards() {
                match self
                    .background
                    .spawn_blocking(move || shard.forget_tombstones(grace))
                    .await
                {
                    Ok(Ok(forgotten)) => {
                        health.succeeded(&self.metrics);
                        if forgotten > 0 {
                            self.metrics.add(
                                "altdb_leaf_tombstones_forgotten_total",
                                "Tombstones of deletes older than tombstone_grace_secs removed.",
                                &[],
                                forgotten as f64,
                            );
                        }
                    }
                    Ok(Err(error)) => health.failed(&self.metrics, &error),
                    Err(error) => health.failed(&self.metrics, &error),
                }
            }
        }
    }

    /// Seals due mutable segments until `shutdown` flips, then seals nothing more:
    /// unsealed rows are safe in RocksDB and return on restart.
    pub async fn run_sealer(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let health = LoopHealth::new("sealer");
        loop {
            health.passed(&self.metrics);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.changed() => return,
            }
            for shard in self.all_shards() {
                let policy = self.seal_policy;
                let started = Instant::now();
                let sealing = shard.clone();
                let sealed = self
                    .background
                    .spawn_blocking(move || sealing.seal_if_due(policy, false))
                    .await;
                // Segments the retention expired go as the sealer passes.
                match self.background.spawn_blocking(move || shard.expire()).await {
                    Ok(Ok(expired)) if expired.segments > 0 => {
                        self.metrics.add(
                            "altdb_leaf_retention_reclaimed_bytes_total",
                            "Bytes of sealed segments dropped because the collection's \
                             retention expired every row in them.",
                            &[],
                            expired.bytes as f64,
                        );
                        self.metrics.add(
                            "altdb_leaf_retention_expired_docs_total",
                            "Documents removed because the collection's retention expired them.",
                            &[],
                            expired.docs as f64,
                        );
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => health.failed(&self.metrics, &error),
                    Err(error) => health.failed(&self.metrics, &error),
                }
                match sealed {
                    Ok(Err(error)) => health.failed(&self.metrics, &error),
                    Err(error) => health.failed(&self.metrics, &error),
                    Ok(Ok(true)) => {
                        health.succeeded(&self.metrics);
                        self.metrics.observe(
                            "altdb_leaf_seal_duration_seconds",
                            "Time to seal a mutable segment into Parquet and a tantivy index.",
                            &[],
                            started.elapsed().as_secs_f64(),
                        )
                    }
                    Ok(Ok(false)) => {}
                }
                if *shutdown.borrow() {
                    return;
                }
            }
        }
    }

    /// Merges runs of small sealed segments into bigger ones until `shutdown`
    /// flips, so that queries open few segments however long ingestion runs.
    /// A merge in progress when it flips finishes or is dropped (its files are
    /// derived data) and never loses a row.
    pub async fn run_merger(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if self.merge_policy.min_segments == 0 {
            return;
        }
        let health = LoopHealth::new("merger");
        loop {
            health.passed(&self.metrics);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
            for shard in self.all_shards() {
                let policy = self.merge_policy;
                let started = Instant::now();
                let merged = self
                    .background
                    .spawn_blocking(move || shard.merge_if_due(policy))
                    .await;
                match merged {
                    Ok(Err(error)) => health.failed(&self.metrics, &error),
                    Err(error) => health.failed(&self.metrics, &error),
                    Ok(Ok(true)) => {
                        health.succeeded(&self.metrics);
                        self.metrics.observe(
                            "altdb_leaf_merge_duration_seconds",
                            "Time to merge sealed segments into one.",
                            &[],
                            started.elapsed().as_secs_f64(),
                        )
                    }
                    Ok(Ok(false)) => {}
                }
                if *shutdown.borrow() {
                    return;
                }
            }
        }
    }

    /// Rebuilds every sealed segment index that is missing or of an older
    /// version (after an upgrade that changed what is indexed), while the leaf
    /// serves: queries scan those segments until theirs is back. Blocking.
    pub fn rebuild_outdated_indexes(&self, shutdown: &watch::Receiver<bool>) {
        altdb_common::priority::lower_current_thread(self.background.nice());
        let started = std::time::Instant::now();
        let mut rebuilt = 0;
        for shard in self.all_shards() {
            rebuilt += shard.rebuild_outdated_indexes(|| *shutdown.borrow());
        }
        if rebuilt > 0 {
            tracing::info!(
                segments = rebuilt,
                elapsed_s = started.elapsed().as_secs_f64(),
                "rebuilt missing or outdated segment indexes"
            );
        }
    }

    /// Flushes RocksDB memtables so the next start replays little WAL.
    pub fn flush(&self) -> Result<()> {
        self.store.flush()
    }
}

fn shard_dir(segments_dir: &std::path::Path, collection: &str, shard: u32) -> PathBuf {
    segments_dir
        .join(collection)
        .join(format!("shard-{shard:04}"))
}

/// How a copy is cut into ranges to compare: a range holds at most this many
/// documents or bytes of them, so what one differing range sends stays
/// small; a reply holds at most this many ranges.
const DIGEST_CUT: RangeCut = RangeCut {
    docs: 1000,
    bytes: 4 << 20,
    max_ranges: 64,
};

/// A stored document as sent to another copy.
fn copied_doc(doc: StoredDoc) -> Result<CopiedDoc> {
    let text = if doc.deleted {
        "null".to_string()
    } else {
        String::from_utf8(doc.json).map_err(|e| {
            crate::error::LeafError::Segment(format!("stored document is not UTF-8: {e}"))
        })?
    };
    Ok(CopiedDoc {
        id: doc.id,
        event_time_us: doc.event_time_us,
        version: doc.version,
        doc: serde_json::value::RawValue::from_string(text)?,
        deleted: doc.deleted,
    })
}

/// A copy's source watermarks, sent with its first page (`after` is `None`)
/// only: every row at or below them is in the pages that follow.
fn first_page_watermarks(
    store: &Store,
    collection: &str,
    shard: u32,
    after: &Option<String>,
) -> Result<std::collections::BTreeMap<String, u64>> {
    Ok(match after {
        None => store.watermarks(collection, shard)?.into_iter().collect(),
        Some(_) => Default::default(),
    })
}
