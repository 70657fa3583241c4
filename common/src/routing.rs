//! Shard routing and placement of shards on leaves.

use xxhash_rust::xxh3::xxh3_64;

/// The shard that owns a document: `hash(_id) % num_shards`.
///
/// xxh3 is stable across versions and platforms, so a document keeps its shard
/// forever; changing the hash would silently duplicate upserted documents.
pub fn shard_for_id(id: &str, num_shards: u32) -> u32 {
    debug_assert!(num_shards > 0);
    (xxh3_64(id.as_bytes()) % u64::from(num_shards)) as u32
}

/// The leaves (indexes into the cluster's leaf list) holding copies of `shard`.
///
/// Shard `s` lives on leaf `s % n` and its further replicas on the following
/// leaves, so shards spread evenly and replicas never share a leaf.
pub fn replicas_for_shard(shard: u32, num_leaves: usize, replication: u32) -> Vec<usize> {
    let copies = (replication as usize).clamp(1, num_leaves.max(1));
    (0..copies)
        .map(|i| (shard as usize + i) % num_leaves)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_is_stable_and_in_range() {
        assert_eq!(shard_for_id("user-1", 8), shard_for_id("user-1", 8));
        for i in 0..1000 {
            assert!(shard_for_id(&format!("doc{i}"), 7) < 7);
        }
    }

    #[test]
    fn shards_spread_evenly() {
        let mut counts = [0usize; 4];
        for i in 0..40_000 {
            counts[shard_for_id(&format!("doc{i}"), 4) as usize] += 1;
        }
        for count in counts {
            assert!((9_000..11_000).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn replicas_never_share_a_leaf() {
        assert_eq!(replicas_for_shard(3, 2, 1), vec![1]);
        assert_eq!(replicas_for_shard(3, 3, 2), vec![0, 1]);
        assert_eq!(replicas_for_shard(0, 2, 5), vec![0, 1]);
    }
}
