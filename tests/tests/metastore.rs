//! The metastore on a real etcd (Debian's `etcd-server`, on loopback):
//! conditional writes, watches (and what a compacted history does to them),
//! leases; and two aggregators sharing collections, Query Lambdas, keys and
//! roles through it, with a tailer that reads collections from it too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::Method;
use serde_json::json;

use altdb_common::metastore::etcd::EtcdMetastore;
use altdb_common::metastore::watched::Watched;
use altdb_common::metastore::{Change, Metastore, MetastoreError, Precondition};
use altdb_tests::etcd::Etcd;
use altdb_tests::{Cluster, ClusterOptions};

#[test]
fn etcd_metastore_writes_conditionally_watches_and_leases() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path()).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let endpoints = vec![format!("http://{}", etcd.address)];
        let store = EtcdMetastore::connect(&endpoints, "/test/").await.unwrap();
        let other = EtcdMetastore::connect(&endpoints, "/other/").await.unwrap();

        let first = store
            .put("c/a", r#"{"n":1}"#, Precondition::Absent)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            store.put("c/a", "{}", Precondition::Absent).await.unwrap(),
            None
        );
        // Prefixes keep clusters apart.
        assert!(other.get("c/a").await.unwrap().is_none());
        let mut watch = store.watch("c/", first).await.unwrap();
        let second = store
            .put("c/a", r#"{"n":2}"#, Precondition::At(first))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            store
                .put("c/a", "{}", Precondition::At(first))
                .await
                .unwrap(),
            None,
            "changed since read"
        );
        assert_eq!(
            store.delete("c/a", Precondition::At(first)).await.unwrap(),
            None
        );
        store
            .delete("c/a", Precondition::At(second))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(store.delete("c/a", Precondition::Any).await.unwrap(), None);
        let mut seen = Vec::new();
        while seen.len() < 2 {
            seen.extend(watch.next().await.unwrap().unwrap());
        }
        assert!(matches!(&seen[0], Change::Put(e) if e.key == "c/a" && e.value == r#"{"n":2}"#));
        assert!(matches!(&seen[1], Change::Delete { key, .. } if key == "c/a"));
        let (entries, _) = store.list("c/").await.unwrap();
        assert!(entries.is_empty());

        // A watch from before a compaction ends with Compacted; the cache
        // lists again and goes on.
        let cache: Watched<i64> = Watched::start(
            Arc::new(EtcdMetastore::connect(&endpoints, "/test/").await.unwrap()),
            "n/",
        )
        .await
        .unwrap();
        let old = store
            .put("n/x", "1", Precondition::Any)
            .await
            .unwrap()
            .unwrap();
        for i in 0..5 {
            store
                .put("n/y", &i.to_string(), Precondition::Any)
                .await
                .unwrap();
        }
        let (_, now) = store.list("n/").await.unwrap();
        let mut client = etcd_client::Client::connect(&endpoints, None)
            .await
            .unwrap();
        client.compact(now, None).await.unwrap();
        let mut stale = store.watch("n/", old).await.unwrap();
        assert!(matches!(
            stale.next().await,
            Some(Err(MetastoreError::Compacted(_)))
        ));
        let at = store
            .put("n/z", "7", Precondition::Any)
            .await
            .unwrap()
            .unwrap();
        assert!(cache.caught_up(at, Duration::from_secs(10)).await);
        assert_eq!(cache.get("z"), Some(7));
        assert_eq!(cache.get("y"), Some(4));

        // Leased keys vanish when the lease is not kept alive.
        let lease = store.grant_lease(Duration::from_secs(2)).await.unwrap();
        store
            .put_leased("leaves/1", "{}", lease, Precondition::Any)
            .await
            .unwrap();
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            assert!(store.keep_alive(lease).await.unwrap());
        }
        assert!(store.get("leaves/1").await.unwrap().is_some());
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.get("leaves/1").await.unwrap().is_some() {
            assert!(
                Instant::now() < deadline,
                "the leased key outlived its lease"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(!store.keep_alive(lease).await.unwrap());
        let lease = store.grant_lease(Duration::from_secs(30)).await.unwrap();
        store
            .put_leased("leaves/2", "{}", lease, Precondition::Any)
            .await
            .unwrap();
        // A leased key written only if absent elects one leader.
        let elected = store
            .put_leased("controller", r#"{"id":"a"}"#, lease, Precondition::Absent)
            .await
            .unwrap();
        assert!(elected.is_some());
        let second = store
            .put_leased("controller", r#"{"id":"b"}"#, lease, Precondition::Absent)
            .await
            .unwrap();
        assert_eq!(second, None, "a second candidate is not elected");
        store.revoke_lease(lease).await.unwrap();
        assert!(store.get("leaves/2").await.unwrap().is_none());
    });
}

#[test]
fn two_aggregators_share_collections_lambdas_and_keys_through_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path()).unwrap();
    let mut cluster = Cluster::start(ClusterOptions {
        metastore: Some(etcd.metastore_url("shared")),
        ..ClusterOptions::default()
    })
    .unwrap();
    let (mut second, b) = cluster.start_aggregator("aggregator-b").unwrap();
    let http = cluster.client();
    let a = cluster.url.clone();
    let on = |url: &str, method: Method, path: &str, body: Option<serde_json::Value>| {
        let response = http
            .request(method, format!("{url}{path}"))
            .json(&body.unwrap_or(json!(null)))
            .send()
            .unwrap();
        let status = response.status().as_u16();
        (
            status,
            response.json::<serde_json::Value>().unwrap_or(json!(null)),
        )
    };

    // Created through A, written through A, queried through B.
    cluster
        .create_collection(json!({"name": "orders", "num_shards": 2}))
        .unwrap();
    let docs: Vec<serde_json::Value> = (0..100).map(|i| json!({"n": i})).collect();
    cluster.write_docs("orders", &docs, 50).unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let (status, body) = on(
            &b,
            Method::POST,
            "/v1/query",
            Some(json!({"sql": "SELECT COUNT(*), SUM(n) FROM orders"})),
        );
        if status == 200 {
            assert_eq!(body["rows"][0], json!([100, 4950]));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B did not see the collection within a second: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // A Query Lambda saved through A runs through B.
    let (status, body) = on(
        &a,
        Method::POST,
        "/v1/lambdas",
        Some(
            json!({"name": "big", "sql": "SELECT COUNT(*) FROM orders WHERE n >= :min",
                    "default_parameters": [{"name": "min", "type": "int", "value": 90}]}),
        ),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = on(
        &b,
        Method::POST,
        "/v1/lambdas/big/tags/latest",
        Some(json!({})),
    );
    assert_eq!(
        (status, body["rows"][0][0].clone()),
        (200, json!(10)),
        "{body}"
    );

    // A key made through A opens B; revoked through B, A refuses it within a second.
    let (status, body) = on(
        &a,
        Method::POST,
        "/v1/keys",
        Some(json!({"name": "app", "role": "read-only"})),
    );
    assert_eq!(status, 201, "{body}");
    let key = body["key"].as_str().unwrap().to_string();
    let with_key = |url: &str| {
        reqwest::blocking::Client::new()
            .post(format!("{url}/v1/query"))
            .header("authorization", format!("ApiKey {key}"))
            .json(&json!({"sql": "SELECT COUNT(*) FROM orders"}))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let started = Instant::now();
    while with_key(&b) != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "B does not take A's key"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "a key made through A opened B after {:?}",
        started.elapsed()
    );
    assert_eq!(on(&b, Method::DELETE, "/v1/keys/app", None).0, 204);
    let started = Instant::now();
    while with_key(&a) != 401 {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "A still takes the key B revoked"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "a revocation through B reached A after {:?}",
        started.elapsed()
    );

    // The same name created through both at once: one wins, the other is told.
    let mut statuses: Vec<u16> = std::thread::scope(|scope| {
        [a.clone(), b.clone()]
            .map(|url| {
                let on = &on;
                scope.spawn(move || {
                    on(
                        &url,
                        Method::POST,
                        "/v1/collections",
                        Some(json!({"name": "raced"})),
                    )
                    .0
                })
            })
            .map(|h| h.join().unwrap())
            .to_vec()
    });
    statuses.sort();
    assert_eq!(statuses, [201, 409]);

    // Deleted through B: gone through A.
    let (status, _) = on(&b, Method::DELETE, "/v1/collections/raced", None);
    assert_eq!(status, 204);
    let started = Instant::now();
    while on(&a, Method::GET, "/v1/collections/raced", None).0 != 404 {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "A still lists the deleted collection"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "a deletion through B reached A after {:?}",
        started.elapsed()
    );

    // Every leaf registered itself; one killed leaves the members once its
    // lease runs out.
    let members = |url: &str| -> Vec<String> {
        let (_, body) = on(url, Method::GET, "/v1/cluster", None);
        let mut urls: Vec<String> = body["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["url"].as_str().unwrap().to_string())
            .collect();
        urls.sort();
        urls
    };
    let mut leaves = cluster.leaf_urls.clone();
    leaves.sort();
    assert_eq!(members(&b), leaves);
    let gone = cluster.leaf_urls[1].clone();
    cluster.leaves[1].kill9();
    let started = Instant::now();
    while members(&b).contains(&gone) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "a dead leaf is still a member"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "a killed leaf left the members after {:?}",
        started.elapsed()
    );
    cluster.leaves[1].restart().unwrap();
    let started = Instant::now();
    while members(&b) != leaves {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the restarted leaf did not register"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // B keeps answering when A is gone.
    cluster.aggregator.kill9();
    let (status, body) = on(
        &b,
        Method::POST,
        "/v1/query",
        Some(json!({"sql": "SELECT COUNT(*) FROM orders"})),
    );
    assert_eq!((status, body["rows"][0][0].clone()), (200, json!(100)));
    // The tailer (configured with A's URL) learns of a collection created
    // through B from etcd and runs its source.
    let (status, body) = on(
        &b,
        Method::POST,
        "/v1/collections",
        Some(
            json!({"name": "generated", "sources": [{"type": "datagen", "rate": 500, "max_events": 300}]}),
        ),
    );
    assert_eq!(status, 201, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = on(
            &b,
            Method::POST,
            "/v1/query",
            Some(json!({"sql": "SELECT COUNT(*) FROM generated"})),
        );
        if body["rows"][0][0] == json!(300) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the tailer never ran B's new source: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    second.kill9();
}
