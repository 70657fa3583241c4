//! Making a copy of a shard equal to another: compare digests of `_id`
//! ranges, fetch only the documents of differing ranges that are newer on
//! the other copy.
//!
//! Used twice:
//! - a copy that fell behind (it missed writes acknowledged by a quorum of
//!   the other copies) catches up this way before it serves reads again
//!   (`placement::copy_in`): it holds most documents already, so it fetches
//!   what it missed, not the shard;
//! - anti-entropy (`placement::run_anti_entropy`): every so often each ready copy
//!   pulls from each other ready copy what differs, so copies that drifted
//!   (a write that reached some copies and was never acknowledged, a bug)
//!   converge, and `altdb_leaf_repaired_docs_total` says how many documents
//!   it took.
//!
//! A copy is cut into ranges by the copy asked (1000 documents or 4 MiB each,
//! [`crate::node`]); the asker computes its own digest over the same bounds
//! (a `RangeDigest`: count and a sum of hashes of `_id` and version), and
//! for a range that differs sends the `_id`s and versions it holds and gets
//! back the documents that are newer there. Documents keep their versions,
//! and a copy stores a document only if it is newer than the one it holds
//! (`Shard::write_copied`), so pulling in both directions converges and
//! never undoes a write that raced the comparison.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use altdb_common::rpc::{
    CopyOf, CopyShardPage, PutRow, RangeDocsRequest, ShardDigests, ShardDigestsRequest, SharedLeaf,
    SourceMark, ACTION_RANGE_DOCS, ACTION_SHARD_DIGESTS,
};

use crate::error::{LeafError, Result};
use crate::shard::Shard;
use crate::store::CollectionMeta;
use crate::Leaf;

/// Ranges whose `_id`s and versions the asker sends at most this many of;
/// beyond, it asks for every document of the range (it holds far more than
/// the other copy there: the other copy is the one behind).
const MAX_HELD_SENT: usize = 4000;

/// What comparing with another copy found and fetched.
#[derive(Debug, Default, Clone, Copy)]
pub struct Synced {
    /// Documents of the other copy compared.
    pub compared: u64,
    pub ranges: u64,
    pub differing_ranges: u64,
    /// Documents stored because the other copy held them newer.
    pub repaired: u64,
    /// Bytes of documents fetched.
    pub bytes: u64,
}

/// Stores in `target` every document `from` holds newer than `target` does,
/// then raises `target`'s watermarks to `from`'s.
pub async fn pull_differences(
    leaf: &Arc<Leaf>,
    from: &CopySource,
    target: &Arc<Shard>,
) -> Result<Synced> {
    let mut synced = Synced::default();
    let mut request = ShardDigestsRequest {
        of: from.of.clone(),
        after: None,
    };
    let failed = |e: altdb_common::rpc::RpcError| {
        LeafError::NotHeld(format!("comparing with {}: {e}", from.leaf.url()))
    };
    let mut first: Option<(CollectionMeta, _)> = None;
    // The ranges are consecutive: each starts after the previous one's last.
    let mut lower: Option<String> = None;
    let mut last_log = Instant::now();
    loop {
        let digests: ShardDigests = from
            .leaf
            .action(ACTION_SHARD_DIGESTS, &request)
            .await
            .map_err(failed)?;
        if first.is_none() {
            first = Some((digests.settings.clone(), digests.watermarks.clone()));
        }
        for range in digests.ranges {
            synced.ranges += 1;
            synced.compared += range.digest.docs;
            let (own, held) = leaf
                .range_versions(
                    &from.of.collection,
                    from.of.shard,
                    lower.clone(),
                    range.last.clone(),
                )
                .await?;
            if own != range.digest {
                synced.differing_ranges += 1;
                let request = RangeDocsRequest {
                    of: from.of.clone(),
                    after: lower.clone(),
                    last: range.last.clone(),
                    held: (held.len() <= MAX_HELD_SENT).then_some(held),
                };
                let page: CopyShardPage = from
                    .leaf
                    .action(ACTION_RANGE_DOCS, &request)
                    .await
                    .map_err(failed)?;
                let (stored, bytes) = store_copied(target, page).await?;
                synced.repaired += stored;
                synced.bytes += bytes;
            }
            lower = Some(range.last);
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            last_log = Instant::now();
            tracing::info!(collection = %from.of.collection, shard = from.of.shard,
                compared = synced.compared, differing_ranges = synced.differing_ranges,
                repaired = synced.repaired, "comparing with another copy");
        }
        match digests.next {
            Some(next) => request.after = Some(next),
            None => break,
        }
    }
    if let Some((meta, marks)) = first {
        raise_watermarks(target, meta, marks).await?;
    }
    Ok(synced)
}

/// A ready copy to copy from (at the epoch this copy began copying), and
/// its leaf.
pub struct CopySource {
    pub leaf: SharedLeaf,
    pub of: CopyOf,
}

/// Stores a page's documents where this copy holds no newer version; the
/// number stored and the page's document bytes.
pub async fn store_copied(target: &Arc<Shard>, page: CopyShardPage) -> Result<(u64, u64)> {
    let meta = page.settings;
    let versions: Vec<u64> = page.docs.iter().map(|doc| doc.version).collect();
    let mut bytes = 0;
    let rows: Vec<PutRow> = page
        .docs
        .into_iter()
        .map(|doc| {
            bytes += doc.doc.get().len() as u64;
            PutRow {
                id: doc.id,
                event_time_us: doc.event_time_us,
                position: None,
                doc_json: if doc.deleted {
                    String::new()
                } else {
                    doc.doc.get().to_string()
                },
                delete: doc.deleted,
            }
        })
        .collect();
    if rows.is_empty() {
        return Ok((0, 0));
    }
    let target = target.clone();
    let stored =
        tokio::task::spawn_blocking(move || target.write_copied(&meta, rows, &versions)).await??;
    Ok((stored, bytes))
}

/// Every row at or below the source's watermarks (read before its first
/// page) is here now: this copy's watermarks rise to them.
pub async fn raise_watermarks(
    target: &Arc<Shard>,
    meta: CollectionMeta,
    marks: BTreeMap<String, u64>,
) -> Result<()> {
    let sources: Vec<SourceMark> = marks
        .into_iter()
        .map(|(source, position)| SourceMark {
            source,
            through: Some(position),
            as_of_us: None,
        })
        .collect();
    if sources.is_empty() {
        return Ok(());
    }
    let target = target.clone();
    tokio::task::spawn_blocking(move || target.write(&meta, &sources, Vec::new(), 0)).await??;
    Ok(())
}

/// Adds what a comparison did to the leaf's metrics (`why`: `catch_up` or
/// `anti_entropy`).
pub fn record(leaf: &Leaf, why: &str, synced: &Synced) {
    let metrics = leaf.metrics();
    metrics.add(
        "altdb_leaf_repaired_docs_total",
        "Documents a copy stored because another copy held them newer (catch_up: a copy that \
         missed writes; anti_entropy: copies found different by the periodic comparison).",
        &[("reason", why)],
        synced.repaired as f64,
    );
    metrics.add(
        "altdb_leaf_compared_docs_total",
        "Documents of other copies compared by range digests.",
        &[("reason", why)],
        synced.compared as f64,
    );
}
