//! Routing documents to shards and pushing them to every replica leaf.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use altdb_common::cluster_auth::ClusterSecret;
use altdb_common::collection::CollectionSpec;
use altdb_common::document::DocLimits;
use altdb_common::fence::Fence;
use altdb_common::metastore::membership::LeafDirectory;
use altdb_common::metastore::watched::Watched;
use altdb_common::metastore::{Metastore, Precondition};
use altdb_common::placement::{CopyState, Placement, PLACEMENTS};
use altdb_common::routing::{replicas_for_shard, shard_for_id};
use altdb_common::rpc::{
    put_batch, LeafClient, PutAck, PutHeader, PutRow, RpcError, ShardSettings, SharedLeaf,
    SourceMark, PUT_BATCH_BYTES,
};
use altdb_common::versions::VersionClock;
use arrow::record_batch::RecordBatch;

use crate::error::{Result, TailerError};

/// Pushes batches to the leaves that own their shards.
#[derive(Debug, Clone)]
pub struct Pusher {
    layout: Arc<Layout>,
    batch_rows: usize,
    /// Gives every batch its version before it goes to the shard's copies.
    versions: Arc<VersionClock>,
}

#[derive(Debug)]
enum Layout {
    /// The configured leaves, in placement order (shard `s` on leaf `s % n`, ..).
    Static(Vec<SharedLeaf>),
    /// The leaves registered in the metastore and the placements there.
    Placed {
        leaves: LeafDirectory,
        placements: Watched<Placement>,
        /// Where a copy that missed an acknowledged write is marked behind.
        store: Arc<dyn Metastore>,
    },
}

/// How long a push waits for a placement (a collection just created) or for
/// a newer one (a leaf said the pusher's was stale).
const PLACEMENT_WAIT: Duration = Duration::from_secs(3);

/// The outcome of a push: which shards failed (their documents are not stored),
/// and which rows a leaf refused (by index in the pushed rows, with the reason;
/// e.g. over the collection's `max_fields`). Every other row is stored.
#[derive(Debug, Default)]
pub struct PushOutcome {
    pub failed_shards: BTreeMap<u32, PushError>,
    pub rejected: BTreeMap<usize, String>,
    /// Delete rows (by index) whose `_id` no copy that stored the delete held.
    pub missing: std::collections::BTreeSet<usize>,
    /// Rejected rows (by index) refused as late events: older than the
    /// collection's retention keeps.
    pub late: std::collections::BTreeSet<usize>,
    /// What the push reached, for a read-your-writes fence: per shard that
    /// stored rows, the highest version they were stored with, and the
    /// placement's revision once copies that missed them were marked behind.
    pub fence: Fence,
}

impl PushOutcome {
    /// The shard of `row` and why it failed, if it did (the shard is only
    /// worked out when some shard failed).
    pub fn failure_of(&self, spec: &CollectionSpec, row: &PutRow) -> Option<(u32, &PushError)> {
        if self.failed_shards.is_empty() {
            return None;
        }
        let shard = Pusher::shard_of(spec, row);
        Some((shard, self.failed_shards.get(&shard)?))
    }
}

impl Pusher {
    /// Pushes to the leaves at `urls`; `ca_pem`: the CA of `https://` leaves.
    pub fn new(
        urls: &[String],
        batch_rows: usize,
        secret: &ClusterSecret,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self> {
        if urls.is_empty() {
            return Err(TailerError::InvalidRequest(
                "no leaves configured; pass --leaves http://host:port,.. (or --metastore \
                 etcd://.. to find them there)"
                    .into(),
            ));
        }
        let leaves = LeafClient::connect_all(urls, secret, ca_pem)
            .map_err(|e| TailerError::InvalidRequest(e.to_string()))?;
        Ok(Self::with_leaves(leaves, batch_rows))
    }

    /// A pusher to these leaves (in placement order), however they are reached.
    pub fn with_leaves(leaves: Vec<SharedLeaf>, batch_rows: usize) -> Self {
        Self {
            layout: Arc::new(Layout::Static(leaves)),
            batch_rows: batch_rows.max(1),
            versions: Arc::default(),
        }
    }

    /// A pusher to the leaves registered in `store`, by the placements there.
    pub async fn placed(
        store: Arc<dyn Metastore>,
        batch_rows: usize,
        secret: &ClusterSecret,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self> {
        let unavailable = |e: altdb_common::metastore::MetastoreError| {
            TailerError::Unavailable(format!("cannot read the metastore: {e}"))
        };
        Ok(Self {
            layout: Arc::new(Layout::Placed {
                leaves: LeafDirectory::start(store.clone(), secret, ca_pem)
                    .await
                    .map_err(unavailable)?,
                placements: Watched::start(store.clone(), PLACEMENTS)
                    .await
                    .map_err(unavailable)?,
                store,
            }),
            batch_rows: batch_rows.max(1),
            versions: Arc::default(),
        })
    }

    /// The leaves holding copies of `spec`'s shards (the watermarks of its
    /// sources are there).
    pub fn leaves(&self, spec: &CollectionSpec) -> Vec<SharedLeaf> {
        match &*self.layout {
            Layout::Static(leaves) => leaves.clone(),
            Layout::Placed {
                leaves, placements, ..
            } => placements
                .get(&spec.name)
                .filter(|p| p.incarnation == spec.incarnation)
                .map(|p| {
                    p.leaves()
                        .into_iter()
                        .filter_map(|id| leaves.client(id))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The copies of `shard` that take writes, and the placement they were
    /// read from.
    async fn writers(
        &self,
        spec: &CollectionSpec,
        shard: u32,
        newer_than: Option<u64>,
    ) -> std::result::Result<Writers, PushError> {
        match &*self.layout {
            Layout::Static(leaves) => Ok(Writers {
                placement: None,
                copies: replicas_for_shard(shard, leaves.len(), spec.replication)
                    .into_iter()
                    .map(|i| WriteCopy {
                        leaf: leaves[i].url().to_string(),
                        ready: true,
                        client: Some(leaves[i].clone()),
                    })
                    .collect(),
            }),
            Layout::Placed {
                leaves, placements, ..
            } => {
                let current = |p: &Placement| {
                    p.incarnation > spec.incarnation
                        || (p.incarnation == spec.incarnation
                            && newer_than.is_none_or(|epoch| p.epoch > epoch))
                };
                placements
                    .wait_until(PLACEMENT_WAIT, |cache| {
                        cache.get(&spec.name).is_some_and(|p| current(&p))
                    })
                    .await;
                let placement = placements
                    .get(&spec.name)
                    .filter(|p| p.incarnation == spec.incarnation)
                    .ok_or_else(|| PushError::NotPlaced(spec.name.clone()))?;
                let copies = placement
                    .writers(shard)
                    .into_iter()
                    .map(|id| WriteCopy {
                        leaf: id.to_string(),
                        ready: placement.copy_on(shard, id) == Some(CopyState::Ready),
                        // Not registered: down, it misses this write.
                        client: leaves.client(id),
                    })
                    .collect();
                Ok(Writers {
                    placement: Some(placement),
                    copies,
                })
            }
        }
    }

    /// Records in the placement that the copies of `shard` on `leaves` missed
    /// an acknowledged write (`seen`: the placement the write was made with),
    /// before it is acknowledged: they serve no reads until they catch up.
    async fn mark_behind(
        &self,
        spec: &CollectionSpec,
        shard: u32,
        seen: &Placement,
        leaves: &[String],
    ) -> std::result::Result<(), PushError> {
        let Layout::Placed {
            placements, store, ..
        } = &*self.layout
        else {
            return Ok(());
        };
        // Copies already behind and not copying yet will copy this write: no
        // change, no transaction (a leaf down misses every write).
        let mut view = seen.clone();
        if !mark_all_behind(&mut view, shard, leaves) {
            return Ok(());
        }
        let key = format!("{PLACEMENTS}{}", spec.name);
        let failed = |e: altdb_common::metastore::MetastoreError| PushError::NotMarked {
            shard,
            error: e.to_string(),
        };
        loop {
            let Some(entry) = store.get(&key).await.map_err(failed)? else {
                return Err(PushError::NotPlaced(spec.name.clone()));
            };
            let mut placement: Placement =
                serde_json::from_str(&entry.value).map_err(|e| PushError::NotMarked {
                    shard,
                    error: format!("the placement cannot be read: {e}"),
                })?;
            if placement.incarnation != spec.incarnation {
                return Err(PushError::NotPlaced(spec.name.clone()));
            }
            if !mark_all_behind(&mut placement, shard, leaves) {
                return Ok(());
            }
            let value = serde_json::to_string(&placement).expect("a placement serializes");
            if let Some(at) = store
                .put(&key, &value, Precondition::At(entry.revision))
                .await
                .map_err(failed)?
            {
                tracing::warn!(collection = %spec.name, shard, copies = ?leaves,
                    "copies missed an acknowledged write; they serve no reads until they catch up");
                placements.caught_up(at, PLACEMENT_WAIT).await;
                return Ok(());
            }
        }
    }

    /// The shard of each row, in row order.
    pub fn shard_of(spec: &CollectionSpec, row: &PutRow) -> u32 {
        shard_for_id(&row.id, spec.num_shards)
    }

    /// Writes rows to their shards on every replica; returns when all acked or failed.
    ///
    /// `sources` are the sources the rows' positions refer to. A mark that carries
    /// `through` or `as_of_us` is sent to every shard, also those without rows, so
    /// every shard's watermark and freshness advance.
    pub async fn push(
        &self,
        spec: &CollectionSpec,
        sources: &[SourceMark],
        rows: &[PutRow],
    ) -> PushOutcome {
        let mut by_shard: BTreeMap<u32, Vec<(usize, &PutRow)>> = BTreeMap::new();
        if sources
            .iter()
            .any(|m| m.through.is_some() || m.as_of_us.is_some())
        {
            by_shard.extend((0..spec.num_shards).map(|shard| (shard, Vec::new())));
        }
        for (index, row) in rows.iter().enumerate() {
            by_shard
                .entry(Self::shard_of(spec, row))
                .or_default()
                .push((index, row));
        }
        let pushes = by_shard.into_iter().map(|(shard, rows)| async move {
            let result = self.push_shard(spec, shard, sources, rows).await;
            (shard, result)
        });
        self.outcome(spec, join_all(pushes).await)
    }

    /// The outcome of a push (or patch) from each shard's.
    fn outcome(
        &self,
        spec: &CollectionSpec,
        shards: Vec<(u32, Result<ShardDone, PushError>)>,
    ) -> PushOutcome {
        let mut outcome = PushOutcome {
            fence: Fence {
                collection: spec.name.clone(),
                incarnation: Some(spec.incarnation),
                ..Fence::default()
            },
            ..PushOutcome::default()
        };
        for (shard, result) in shards {
            match result {
                Ok(done) => {
                    outcome.rejected.extend(done.rejected);
                    outcome.missing.extend(done.missing);
                    outcome.late.extend(done.late);
                    if let Some(version) = done.version {
                        outcome.fence.versions.insert(shard, version);
                    }
                }
                Err(error) => {
                    outcome.failed_shards.insert(shard, error);
                }
            }
        }
        // Read after every copy that missed a write was marked behind (and
        // the watch saw it): a reader at this revision reads none of them.
        if let Layout::Placed { placements, .. } = &*self.layout {
            outcome.fence.revision = placements.revision();
        }
        outcome
    }

    async fn push_shard(
        &self,
        spec: &CollectionSpec,
        shard: u32,
        sources: &[SourceMark],
        rows: Vec<(usize, &PutRow)>,
    ) -> Result<ShardDone, PushError> {
        // Rows refer to sources by index, so every chunk names them all; only the
        // last chunk carries the marks, which hold once every row is stored.
        let positions_only: Vec<SourceMark> = sources
            .iter()
            .map(|m| SourceMark {
                source: m.source.clone(),
                through: None,
                as_of_us: None,
            })
            .collect();
        let chunks = put_chunks(&rows, self.batch_rows, PUT_BATCH_BYTES);
        let last = chunks.len() - 1;
        let mut done = ShardDone::default();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut header = PutHeader {
                sources: if i == last {
                    sources.to_vec()
                } else {
                    positions_only.clone()
                },
                // The same on every copy, and on a retry of this chunk.
                version: self.versions.next(),
                ..put_header(spec, shard)
            };
            let refs: Vec<&PutRow> = chunk.iter().map(|(_, row)| *row).collect();
            let batch = put_batch(&refs).map_err(PushError::Encode)?;
            let acks = self
                .replicate(spec, shard, &mut header, &batch, None)
                .await?;
            if acks.iter().any(|ack| ack.written + ack.skipped > 0) {
                done.version = done.version.max(Some(header.version));
            }
            // Deletes of `_id`s no copy that stored the chunk held.
            let mut missing_everywhere: Option<std::collections::BTreeSet<u32>> = None;
            for ack in acks {
                let here = ack.missing.into_iter().collect();
                missing_everywhere = Some(match missing_everywhere {
                    None => here,
                    Some(before) => before.intersection(&here).copied().collect(),
                });
                // A row any copy refused is reported refused.
                for refused in ack.rejected {
                    if let Some((index, _)) = chunk.get(refused.row as usize) {
                        if refused.late {
                            done.late.push(*index);
                        }
                        done.rejected.insert(*index, refused.reason);
                    }
                }
            }
            for row in missing_everywhere.into_iter().flatten() {
                if let Some((index, _)) = chunk.get(row as usize) {
                    done.missing.push(*index);
                }
            }
        }
        Ok(done)
    }

    /// Applies patches by `_id` (each row's JSON is an array of operations,
    /// [`altdb_common::patch`]): a ready copy of each shard applies them to
    /// the documents it holds, all or nothing per row, and the documents it
    /// stored go to the shard's other copies as versioned writes, acknowledged
    /// like any write (the write quorum, copies that missed them marked
    /// behind). Rows whose `_id` no copy holds are [`PushOutcome::missing`];
    /// rows whose patch does not apply are [`PushOutcome::rejected`].
    /// `limits`: how large and deep a patched document may become.
    pub async fn patch(
        &self,
        spec: &CollectionSpec,
        rows: &[PutRow],
        limits: DocLimits,
    ) -> PushOutcome {
        let mut by_shard: BTreeMap<u32, Vec<(usize, &PutRow)>> = BTreeMap::new();
        for (index, row) in rows.iter().enumerate() {
            by_shard
                .entry(Self::shard_of(spec, row))
                .or_default()
                .push((index, row));
        }
        let patches = by_shard.into_iter().map(|(shard, rows)| async move {
            (shard, self.patch_shard(spec, shard, rows, limits).await)
        });
        self.outcome(spec, join_all(patches).await)
    }

    async fn patch_shard(
        &self,
        spec: &CollectionSpec,
        shard: u32,
        rows: Vec<(usize, &PutRow)>,
        limits: DocLimits,
    ) -> Result<ShardDone, PushError> {
        let mut done = ShardDone::default();
        for chunk in put_chunks(&rows, self.batch_rows, PUT_BATCH_BYTES) {
            let refs: Vec<&PutRow> = chunk.iter().map(|(_, row)| *row).collect();
            let batch = put_batch(&refs).map_err(PushError::Encode)?;
            let mut header = PutHeader {
                version: self.versions.next(),
                patch: true,
                doc_limits: Some(limits),
                ..put_header(spec, shard)
            };
            let (ack, applied_on) = self.apply_patches(spec, shard, &mut header, batch).await?;
            for refused in ack.rejected {
                if let Some((index, _)) = chunk.get(refused.row as usize) {
                    done.rejected.insert(*index, refused.reason);
                }
            }
            for row in ack.missing {
                if let Some((index, _)) = chunk.get(row as usize) {
                    done.missing.push(*index);
                }
            }
            let Some(patched) = ack.patched.filter(|p| !p.docs.is_empty()) else {
                continue;
            };
            let results: Vec<PutRow> = patched
                .docs
                .into_iter()
                .map(|doc| PutRow {
                    id: doc.id,
                    event_time_us: doc.event_time_us,
                    position: None,
                    doc_json: doc.doc_json,
                    delete: false,
                })
                .collect();
            let refs: Vec<&PutRow> = results.iter().collect();
            let batch = put_batch(&refs).map_err(PushError::Encode)?;
            let mut header = PutHeader {
                version: patched.version,
                ..put_header(spec, shard)
            };
            self.replicate(spec, shard, &mut header, &batch, Some(&applied_on))
                .await?;
            done.version = done.version.max(Some(patched.version));
        }
        Ok(done)
    }

    /// Sends a put of patches to the first ready copy of `shard` that
    /// answers: its ack and the copy (a copy unreachable or catching up
    /// passes them to the next).
    async fn apply_patches(
        &self,
        spec: &CollectionSpec,
        shard: u32,
        header: &mut PutHeader,
        batch: RecordBatch,
    ) -> Result<(PutAck, String), PushError> {
        let mut writers = self.writers(spec, shard, None).await?;
        let mut failures = Vec::new();
        for attempt in 0..2 {
            header.epoch = writers.placement.as_ref().map_or(0, |p| p.epoch);
            let mut stale = false;
            for copy in writers.copies.iter().filter(|c| c.ready) {
                let Some(client) = &copy.client else {
                    failures.push(format!("leaf {} is not registered (down?)", copy.leaf));
                    continue;
                };
                match client.put(header, batch.clone()).await {
                    Ok(ack) => return Ok((ack, copy.leaf.clone())),
                    Err(error) if error.is_not_owner() => {
                        stale = true;
                        failures.push(format!("leaf {}: {error}", client.url()));
                    }
                    Err(error) if error.is_unavailable() => {
                        failures.push(format!("leaf {}: {error}", client.url()));
                    }
                    Err(error) => {
                        return Err(PushError::Leaf {
                            url: client.url().to_string(),
                            error,
                        })
                    }
                }
            }
            if !(stale && attempt == 0) {
                break;
            }
            writers = self.writers(spec, shard, Some(header.epoch)).await?;
        }
        Err(PushError::NoPatcher { shard, failures })
    }

    /// Sends a put to every copy of `shard` that takes writes and returns the
    /// acks of those that stored it, once enough did (the collection's write
    /// quorum; every copy without a metastore) and the copies that missed it
    /// are marked behind. `stored_on`: a copy that stored it already (the
    /// one that applied patches), counted and not sent to again. A copy
    /// saying the placement moved on: the put goes once more to every copy
    /// the newer placement names (a copy that stored it stores the same rows
    /// again).
    async fn replicate(
        &self,
        spec: &CollectionSpec,
        shard: u32,
        header: &mut PutHeader,
        batch: &RecordBatch,
        stored_on: Option<&str>,
    ) -> Result<Vec<PutAck>, PushError> {
        let mut writers = self.writers(spec, shard, None).await?;
        for attempt in 0..2 {
            header.epoch = writers.placement.as_ref().map_or(0, |p| p.epoch);
            let results = join_all(writers.copies.iter().map(|copy| {
                let header = &*header;
                async move {
                    if stored_on == Some(copy.leaf.as_str()) {
                        return Ok(None);
                    }
                    let Some(client) = &copy.client else {
                        return Err(PushError::NotRegistered {
                            leaf: copy.leaf.clone(),
                        });
                    };
                    client
                        .put(header, batch.clone())
                        .await
                        .map(Some)
                        .map_err(|error| PushError::Leaf {
                            url: client.url().to_string(),
                            error,
                        })
                }
            }))
            .await;
            let stale = results
                .iter()
                .any(|r| matches!(r, Err(PushError::Leaf { error, .. }) if error.is_not_owner()));
            if stale && attempt == 0 {
                writers = self.writers(spec, shard, Some(header.epoch)).await?;
                continue;
            }
            let mut acks = Vec::new();
            let mut missed = Vec::new();
            let mut failures = Vec::new();
            let mut stored_ready = 0;
            for (copy, result) in writers.copies.iter().zip(results) {
                match result {
                    Ok(ack) => {
                        stored_ready += u32::from(copy.ready);
                        acks.extend(ack);
                    }
                    Err(error) => {
                        missed.push(copy.leaf.clone());
                        failures.push(error);
                    }
                }
            }
            let Some(placement) = &writers.placement else {
                // Without a metastore, no copy can be marked behind: every
                // copy must store the write.
                return match failures.into_iter().next() {
                    Some(error) => Err(error),
                    None => Ok(acks),
                };
            };
            let needed = spec.write_quorum();
            if stored_ready < needed {
                return Err(PushError::NoQuorum {
                    shard,
                    stored: stored_ready,
                    needed,
                    copies: writers.copies.iter().filter(|c| c.ready).count(),
                    failures: failures.iter().map(ToString::to_string).collect(),
                });
            }
            if !missed.is_empty() {
                self.mark_behind(spec, shard, placement, &missed).await?;
            }
            return Ok(acks);
        }
        unreachable!("the second attempt returns")
    }
}

/// The header of a put to `shard` of `spec`: the collection's settings the
/// leaf keeps; the caller sets the version, sources and kind.
fn put_header(spec: &CollectionSpec, shard: u32) -> PutHeader {
    let ShardSettings {
        text_fields,
        max_fields,
        retention_secs,
        rollup,
    } = ShardSettings::of(spec);
    PutHeader {
        collection: spec.name.clone(),
        incarnation: spec.incarnation,
        shard,
        text_fields,
        max_fields,
        retention_secs,
        rollup,
        ..PutHeader::default()
    }
}

/// What a shard's copies said of the rows they stored.
#[derive(Default)]
struct ShardDone {
    /// Rows refused, by index in the push, and why.
    rejected: BTreeMap<usize, String>,
    /// Delete rows whose `_id` no copy held.
    missing: Vec<usize>,
    /// The highest version rows were stored with (none stored: `None`).
    version: Option<u64>,
    /// Rows refused as late events.
    late: Vec<usize>,
}

/// Marks every one of `leaves`' copies of `shard` behind; whether any changed.
fn mark_all_behind(placement: &mut Placement, shard: u32, leaves: &[String]) -> bool {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut changed = false;
    for leaf in leaves {
        changed |= placement.mark_behind(shard, leaf, now_ms);
    }
    changed
}

/// The copies of a shard a write goes to.
struct Writers {
    /// The placement they were read from (`None` without a metastore).
    placement: Option<Placement>,
    copies: Vec<WriteCopy>,
}

struct WriteCopy {
    leaf: String,
    /// Serves reads: counts towards the write quorum.
    ready: bool,
    /// `None`: the leaf is not registered now (down).
    client: Option<SharedLeaf>,
}

/// Rows cut into puts of at most `max_rows` rows and about `max_bytes` of
/// documents (a single larger document goes alone); no rows make one empty put
/// (it carries the source marks).
fn put_chunks<'a, 'r>(
    rows: &'a [(usize, &'r PutRow)],
    max_rows: usize,
    max_bytes: usize,
) -> Vec<&'a [(usize, &'r PutRow)]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (_, row)) in rows.iter().enumerate() {
        let size = row.doc_json.len() + row.id.len();
        if i > start && (i - start >= max_rows || bytes + size > max_bytes) {
            chunks.push(&rows[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < rows.len() || chunks.is_empty() {
        chunks.push(&rows[start..]);
    }
    chunks
}

/// Why a shard's rows were not stored on every replica.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("the rows could not be encoded: {0}")]
    Encode(altdb_common::Error),
    #[error("leaf {url} did not store the batch: {error}")]
    Leaf { url: String, error: RpcError },
    #[error("collection `{0}` has no shard placement in the metastore yet; retrying")]
    NotPlaced(String),
    #[error("leaf {leaf} holds a copy but is not registered in the metastore (down?)")]
    NotRegistered { leaf: String },
    #[error(
        "stored on {stored} of its {copies} ready copies, {needed} needed (the collection's \
         write_quorum): not acknowledged, retry once its copies are back ({})",
        failures.join("; ")
    )]
    NoQuorum {
        shard: u32,
        stored: u32,
        needed: u32,
        copies: usize,
        failures: Vec<String>,
    },
    #[error(
        "a copy of shard {shard} missed the write and cannot be marked behind in the \
         metastore ({error}): not acknowledged, retry"
    )]
    NotMarked { shard: u32, error: String },
    #[error(
        "no ready copy of shard {shard} could apply the patches ({}): nothing changed, retry",
        failures.join("; ")
    )]
    NoPatcher { shard: u32, failures: Vec<String> },
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use altdb_common::memory_leaf::MemoryLeaf;

    use super::*;

    fn spec(num_shards: u32, replication: u32) -> CollectionSpec {
        serde_json::from_value(serde_json::json!({
            "name": "events", "num_shards": num_shards, "replication": replication,
        }))
        .unwrap()
    }

    fn rows(n: usize) -> Vec<PutRow> {
        (0..n)
            .map(|i| PutRow {
                id: format!("doc-{i}"),
                event_time_us: i as i64,
                position: None,
                doc_json: format!("{{\"n\": {i}}}"),
                delete: false,
            })
            .collect()
    }

    /// Rows per (leaf, shard) that reached the leaves.
    fn stored(leaves: &[Arc<MemoryLeaf>]) -> Vec<BTreeMap<u32, usize>> {
        leaves
            .iter()
            .map(|leaf| {
                let mut by_shard = BTreeMap::new();
                for (header, batch) in leaf.puts.lock().unwrap().iter() {
                    *by_shard.entry(header.shard).or_default() += batch.num_rows();
                }
                by_shard
            })
            .collect()
    }

    #[tokio::test]
    async fn every_replica_gets_its_shards_rows_and_a_lost_one_fails_its_shards() {
        let leaves: Vec<Arc<MemoryLeaf>> = (0..3)
            .map(|i| Arc::new(MemoryLeaf::new(&format!("http://leaf-{i}"), Vec::new())))
            .collect();
        let shared: Vec<SharedLeaf> = leaves.iter().map(|l| l.clone() as SharedLeaf).collect();
        // Batches of at most 7 rows: a shard's rows go in several puts.
        let pusher = Pusher::with_leaves(shared, 7);
        let spec = spec(3, 2);
        let rows = rows(100);
        let expected: BTreeMap<u32, usize> = rows.iter().fold(BTreeMap::new(), |mut m, row| {
            *m.entry(Pusher::shard_of(&spec, row)).or_default() += 1;
            m
        });

        let outcome = pusher.push(&spec, &[], &rows).await;
        assert!(outcome.failed_shards.is_empty(), "{outcome:?}");
        // Shard s lives on leaves s and s+1 (mod 3), each with every row of it.
        let first = stored(&leaves);
        for (shard, count) in &expected {
            for replica in [*shard as usize, (*shard as usize + 1) % 3] {
                assert_eq!(first[replica].get(shard), Some(count), "shard {shard}");
            }
            assert_eq!(first[(*shard as usize + 2) % 3].get(shard), None);
        }
        assert!(leaves[0]
            .puts
            .lock()
            .unwrap()
            .iter()
            .all(|(_, b)| b.num_rows() <= 7));

        // Leaf 1 holds copies of shards 0 and 1: those fail, naming it; shard 2
        // (on leaves 2 and 0) is stored.
        leaves[1].go_down();
        let outcome = pusher.push(&spec, &[], &rows).await;
        assert_eq!(
            outcome.failed_shards.keys().copied().collect::<Vec<_>>(),
            vec![0, 1]
        );
        for reason in outcome.failed_shards.values() {
            assert!(
                matches!(reason, PushError::Leaf { url, error }
                    if url == "http://leaf-1" && error.is_unavailable()),
                "{reason}"
            );
        }
        assert_eq!(stored(&leaves)[2].get(&2), Some(&(2 * expected[&2])));
    }

    #[test]
    fn puts_are_cut_by_rows_and_by_bytes() {
        let rows = rows(10);
        let refs: Vec<(usize, &PutRow)> = rows.iter().enumerate().collect();
        let sizes =
            |chunks: Vec<&[(usize, &PutRow)]>| chunks.iter().map(|c| c.len()).collect::<Vec<_>>();
        assert_eq!(sizes(put_chunks(&refs, 4, usize::MAX)), vec![4, 4, 2]);
        // Each row is 13 bytes: 30 bytes hold two of them.
        assert_eq!(sizes(put_chunks(&refs, 100, 30)), vec![2, 2, 2, 2, 2]);
        // A row larger than the limit goes alone; no rows make one empty put.
        assert_eq!(sizes(put_chunks(&refs[..2], 100, 1)), vec![1, 1]);
        assert_eq!(sizes(put_chunks(&[], 100, 40)), vec![0]);
    }
}
