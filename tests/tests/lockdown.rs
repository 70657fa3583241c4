//! Internal surfaces refuse hostile input (issue: lock the cluster down). Each
//! test is a probe an attacker who reaches a port could try.

use std::sync::Arc;

use altdb_common::rpc::{
    put_batch, CollectionRequest, LeafApi, LeafClient, PutHeader, ACTION_DROP_COLLECTION,
};
use altdb_tests::{Cluster, ClusterOptions};

/// A leaf never turns a collection name into a path outside its data directory:
/// `DROP` of `../../victim` used to delete that directory.
#[test]
fn a_leaf_refuses_collection_names_that_are_paths() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default())?;
    let victim = cluster.dir.path().join("victim");
    std::fs::create_dir_all(&victim)?;
    std::fs::write(victim.join("keep.txt"), "precious")?;
    let runtime = tokio::runtime::Runtime::new()?;
    let _context = runtime.enter();
    let leaf: Arc<dyn LeafApi> = Arc::new(LeafClient::new(&cluster.leaf_urls[0])?);
    for name in ["../../victim", "/tmp", "..", "a/b", "Events"] {
        let dropped = runtime.block_on(leaf.action::<_, serde_json::Value>(
            ACTION_DROP_COLLECTION,
            &CollectionRequest {
                collection: name.to_string(),
            },
        ));
        let error = dropped.expect_err(name);
        assert!(error.is_invalid_argument(), "{name}: {error}");
        assert!(error.to_string().contains("is invalid"), "{name}: {error}");
        let header = PutHeader {
            collection: name.to_string(),
            shard: 0,
            sources: Vec::new(),
            text_fields: Vec::new(),
        };
        let put = runtime.block_on(leaf.put(&header, put_batch(&[])?));
        assert!(put.expect_err(name).is_invalid_argument(), "{name}");
    }
    assert_eq!(
        std::fs::read_to_string(victim.join("keep.txt"))?,
        "precious"
    );
    Ok(())
}
