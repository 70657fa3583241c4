//! Users, API keys and roles end to end: which key may do what on every endpoint
//! class, SQL checked per collection it reads, dead letters cut to the collections
//! a key may read, revocation, expiry, the audit log, source secrets that never
//! come back out, HTTPS with a test CA, and refusing to listen open.

use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use altdb_tests::{Cluster, ClusterOptions};

/// Creates a key; returns its text.
fn create_key(cluster: &Cluster, body: Value) -> String {
    let answer = cluster.post_json("/v1/keys", &body).unwrap();
    assert_eq!(answer.status, 201, "{}", answer.body);
    answer.body["key"].as_str().unwrap().to_string()
}

fn status(
    cluster: &Cluster,
    key: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let answer = cluster
        .request_as(key, method, path, body.as_ref())
        .unwrap();
    (answer.status, answer.body)
}

fn query(cluster: &Cluster, key: Option<&str>, sql: &str) -> (u16, Value) {
    status(
        cluster,
        key,
        Method::POST,
        "/v1/query",
        Some(json!({ "sql": sql })),
    )
}

/// Writes `count` objects of NDJSON, each with one malformed line, for a
/// collection's file source: its dead letters.
fn files_with_dead_letters(dir: &std::path::Path, good: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut text: String = (0..good)
        .map(|i| format!("{}\n", json!({"n": i})))
        .collect();
    text.push_str("{not json\n");
    std::fs::write(dir.join("part-0.ndjson"), text).unwrap();
}

#[test]
fn keys_and_roles_decide_every_request() {
    let cluster = Cluster::start(ClusterOptions::default()).unwrap();
    // Three collections fed from files with one malformed line each: each has dead letters.
    for name in ["events", "orders", "web_clicks"] {
        let dir = cluster.dir.path().join("files").join(name);
        files_with_dead_letters(&dir, 3);
        cluster
            .create_collection(json!({"name": name, "num_shards": 2, "sources": [
                {"type": "s3", "url": format!("file://{}/", dir.display()), "poll_interval": "200ms"}]}))
            .unwrap();
    }
    let dead = cluster.wait_until("SELECT COUNT(*) FROM _dlq", Duration::from_secs(60), |n| {
        n == 3
    });
    assert_eq!(dead, 3, "{}", cluster.tailers[0].log_tail());

    // The operator's keys: a dashboard (reads one collection and its dead letters),
    // an ingest job (writes two), a colleague (everything but keys), a monitor.
    let answer = cluster
        .post_json(
            "/v1/roles",
            &json!({"name": "dashboards", "privileges": [
                {"action": "query", "resource": "events"},
                {"action": "read_dlq", "resource": "events"}]}),
        )
        .unwrap();
    assert_eq!(answer.status, 201, "{}", answer.body);
    let answer = cluster
        .post_json(
            "/v1/roles",
            &json!({"name": "ingest", "privileges": [
                {"action": "write", "resource": "events"},
                {"action": "write", "resource": "orders"}]}),
        )
        .unwrap();
    assert_eq!(answer.status, 201, "{}", answer.body);
    let dash = create_key(&cluster, json!({"name": "dashboard", "role": "dashboards"}));
    let ingest = create_key(&cluster, json!({"name": "ingest-job", "role": "ingest"}));
    let colleague = create_key(&cluster, json!({"name": "colleague", "role": "member"}));
    let watcher = create_key(&cluster, json!({"name": "watcher", "role": "read-only"}));
    let admin = cluster.admin_key.clone();
    let (dash, ingest, colleague, watcher) = (
        Some(dash.as_str()),
        Some(ingest.as_str()),
        Some(colleague.as_str()),
        Some(watcher.as_str()),
    );
    let wrong = Some("altdb_0000000000000000000000000000000000000000000000000000000000000000");

    // No key and a wrong key: 401, the same message.
    let (code, none_body) = query(&cluster, None, "SELECT 1");
    assert_eq!(code, 401);
    assert_eq!(none_body["error"]["code"], json!("unauthenticated"));
    let (code, wrong_body) = query(&cluster, wrong, "SELECT 1");
    assert_eq!(code, 401);
    assert!(wrong_body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unknown, revoked or expired"));
    // Health stays open for probes.
    assert_eq!(
        cluster
            .get_text(&format!("{}/healthz", cluster.url))
            .unwrap(),
        "ok"
    );

    // Queries, per collection read.
    let count = "SELECT COUNT(*) FROM events";
    let join = "SELECT COUNT(*) FROM events e JOIN orders o ON e.n = o.n";
    let sub = "SELECT COUNT(*) FROM events WHERE n IN (SELECT n FROM orders)";
    let cte = "WITH x AS (SELECT n FROM orders) SELECT COUNT(*) FROM x";
    for (key, sql, expected) in [
        (dash, count, 200),
        (dash, join, 403),
        (dash, sub, 403),
        (dash, cte, 403),
        (dash, "SELECT COUNT(*) FROM orders", 403),
        (dash, "EXPLAIN SELECT * FROM orders", 403),
        // Whether a collection exists is not told to a key that may not read it.
        (dash, "SELECT * FROM nope", 403),
        (dash, "SELECT * FROM generate_series(1, 3)", 200),
        (ingest, count, 403),
        (colleague, join, 200),
        (colleague, "SELECT * FROM nope", 404),
        (watcher, join, 200),
        (Some(admin.as_str()), join, 200),
    ] {
        let (code, body) = query(&cluster, key, sql);
        assert_eq!(code, expected, "{sql} as {key:?}: {body}");
        if code == 403 {
            let message = body["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("`query`") && message.contains("dashboard")
                    || message.contains("ingest-job"),
                "{message}"
            );
        }
    }
    let (_, body) = query(
        &cluster,
        dash,
        "SELECT COUNT(*) FROM events e JOIN orders o ON e.n = o.n",
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("collection `orders`"),
        "{body}"
    );

    // Dead letters: the dashboard sees those of `events` only, also when its plan
    // is kept and when another key ran the same statement before.
    let per_collection =
        "SELECT collection, COUNT(*) FROM _dlq GROUP BY collection ORDER BY collection";
    for _ in 0..2 {
        let (code, body) = query(&cluster, colleague, per_collection);
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            body["rows"],
            json!([["events", 1], ["orders", 1], ["web_clicks", 1]])
        );
        let (code, body) = query(&cluster, dash, per_collection);
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["rows"], json!([["events", 1]]));
    }
    let (code, body) = query(
        &cluster,
        dash,
        "SELECT COUNT(*) FROM _dlq WHERE collection = 'orders'",
    );
    assert_eq!((code, body["rows"].clone()), (200, json!([[0]])));
    let (code, body) = status(&cluster, dash, Method::GET, "/v1/collections/_dlq", None);
    assert_eq!((code, body["documents"].clone()), (200, json!(1)), "{body}");
    assert_eq!(
        cluster.get("/v1/collections/_dlq").unwrap().body["documents"],
        json!(3)
    );
    let (code, body) = query(&cluster, ingest, "SELECT COUNT(*) FROM _dlq");
    assert_eq!(code, 403, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("read_dlq"));

    // Writes.
    let write = |key: Option<&str>, collection: &str| {
        status(
            &cluster,
            key,
            Method::POST,
            &format!("/v1/collections/{collection}/docs"),
            Some(json!({"n": 100})),
        )
        .0
    };
    assert_eq!(write(ingest, "events"), 200);
    assert_eq!(write(ingest, "orders"), 200);
    assert_eq!(write(ingest, "web_clicks"), 403);
    assert_eq!(write(dash, "events"), 403);
    assert_eq!(write(colleague, "web_clicks"), 200);
    assert_eq!(write(watcher, "events"), 403);

    // Collections: listing shows what a key holds privileges on; describing others is refused.
    let names = |key: Option<&str>| -> Vec<String> {
        let (code, body) = status(&cluster, key, Method::GET, "/v1/collections", None);
        assert_eq!(code, 200);
        body["collections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(dash), ["_dlq", "events"]);
    assert_eq!(names(ingest), ["events", "orders"]);
    assert_eq!(names(colleague), ["_dlq", "events", "orders", "web_clicks"]);
    assert_eq!(
        status(&cluster, dash, Method::GET, "/v1/collections/events", None).0,
        200
    );
    assert_eq!(
        status(&cluster, dash, Method::GET, "/v1/collections/orders", None).0,
        403
    );
    let create = |key: Option<&str>, name: &str| {
        status(
            &cluster,
            key,
            Method::POST,
            "/v1/collections",
            Some(json!({"name": name, "num_shards": 1})),
        )
        .0
    };
    assert_eq!(create(dash, "scratch"), 403);
    assert_eq!(create(ingest, "scratch"), 403);
    assert_eq!(create(colleague, "scratch"), 201);
    assert_eq!(
        status(
            &cluster,
            dash,
            Method::DELETE,
            "/v1/collections/scratch",
            None
        )
        .0,
        403
    );
    assert_eq!(
        status(
            &cluster,
            colleague,
            Method::DELETE,
            "/v1/collections/scratch",
            None
        )
        .0,
        204
    );

    // Keys and roles: the admin only.
    for key in [dash, ingest, colleague, watcher] {
        assert_eq!(status(&cluster, key, Method::GET, "/v1/keys", None).0, 403);
        assert_eq!(status(&cluster, key, Method::GET, "/v1/roles", None).0, 403);
        assert_eq!(
            status(
                &cluster,
                key,
                Method::POST,
                "/v1/keys",
                Some(json!({"name": "x", "role": "admin"}))
            )
            .0,
            403
        );
        assert_eq!(
            status(&cluster, key, Method::DELETE, "/v1/keys/dashboard", None).0,
            403
        );
    }
    // Monitoring: roles with `monitor`.
    for (key, expected) in [(dash, 403), (ingest, 403), (colleague, 200), (watcher, 200)] {
        assert_eq!(
            status(&cluster, key, Method::GET, "/v1/cluster", None).0,
            expected
        );
        let code = cluster
            .request_as(key, Method::GET, "/metrics", None)
            .unwrap()
            .status;
        assert_eq!(code, expected);
    }

    // The key listing has no secrets and shows use.
    let listing = cluster.get("/v1/keys").unwrap();
    assert_eq!(listing.status, 200);
    let text = listing.body.to_string();
    for key in [dash, ingest, colleague, watcher] {
        assert!(!text.contains(key.unwrap()));
    }
    assert!(!text.contains("digest"), "{text}");
    let dashboard = listing.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "dashboard")
        .unwrap();
    assert_eq!(dashboard["role"], json!("dashboards"));
    assert_eq!(dashboard["created_by"], json!("admin"));
    assert!(dashboard["last_used_at"].is_string(), "{dashboard}");

    // A role changed takes effect with the key's next request.
    let answer = cluster
        .request_as(
            Some(&admin),
            Method::PUT,
            "/v1/roles/dashboards",
            Some(&json!({"name": "dashboards", "privileges": [
                {"action": "query", "resource": "events"},
                {"action": "query", "resource": "orders"},
                {"action": "read_dlq", "resource": "events"}]})),
        )
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(query(&cluster, dash, join).0, 200);
    // A role in use cannot be deleted; built-in roles cannot be changed.
    assert_eq!(cluster.delete("/v1/roles/dashboards").unwrap().status, 409);
    assert_eq!(cluster.delete("/v1/roles/member").unwrap().status, 409);

    // Revocation: the next request is refused.
    assert_eq!(query(&cluster, colleague, count).0, 200);
    assert_eq!(cluster.delete("/v1/keys/colleague").unwrap().status, 204);
    let (code, body) = query(&cluster, colleague, count);
    assert_eq!(code, 401);
    assert_eq!(
        body, wrong_body,
        "a revoked key is answered like a wrong one"
    );

    // Expiry.
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let brief = create_key(
        &cluster,
        json!({"name": "brief", "role": "read-only", "expires_at": soon}),
    );
    assert_eq!(query(&cluster, Some(&brief), count).0, 200);
    std::thread::sleep(Duration::from_millis(2_500));
    let (code, body) = query(&cluster, Some(&brief), count);
    assert_eq!(code, 401);
    assert_eq!(
        body, wrong_body,
        "an expired key is answered like a wrong one"
    );
    let past = (chrono::Utc::now() - chrono::Duration::seconds(2)).to_rfc3339();
    let answer = cluster
        .post_json(
            "/v1/keys",
            &json!({"name": "old", "role": "read-only", "expires_at": past}),
        )
        .unwrap();
    assert_eq!(answer.status, 400);
    let answer = cluster
        .post_json("/v1/keys", &json!({"name": "x", "role": "superuser"}))
        .unwrap();
    assert_eq!(answer.status, 400);
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("role `superuser` does not exist"));

    // The audit log: who did what from where, never a key.
    let log = cluster.aggregator.log_text();
    let audit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" audit event="))
        .collect();
    for event in [
        "authentication_failed",
        "access_denied",
        "key_created",
        "key_revoked",
        "role_created",
        "role_changed",
        "collection_created",
        "collection_deleted",
    ] {
        assert!(
            audit.iter().any(|l| l.contains(event)),
            "no `{event}` in the audit log:\n{}",
            audit.join("\n")
        );
    }
    assert!(audit
        .iter()
        .any(|l| l.contains("key_revoked") && l.contains("colleague") && l.contains("127.0.0.1")));
    let keys = [
        dash,
        ingest,
        colleague,
        watcher,
        Some(admin.as_str()),
        Some(brief.as_str()),
    ]
    .map(Option::unwrap);
    assert_eq!(
        cluster.logs_containing(&keys),
        Vec::<String>::new(),
        "a key shows in a log"
    );
}

/// Source secrets are write-only: responses show `<redacted>`, a redacted value
/// sent back is refused, references must stay within what the operator allows,
/// and only the cluster's own processes read the real value.
#[test]
fn source_secrets_never_come_back_out() {
    let cluster = Cluster::start(ClusterOptions::default()).unwrap();
    let spec = json!({"name": "secured", "sources": [
        {"type": "kafka", "brokers": "127.0.0.1:9", "topic": "t",
         "properties": {"security.protocol": "sasl_ssl", "sasl.mechanism": "PLAIN",
                        "sasl.username": "u", "sasl.password": "hunter2-kafka-password",
                        "ssl.key.password": {"env": "ALTDB_SECRET_KEY_PASSWORD"}}},
        {"type": "s3", "url": "s3://bucket/prefix/", "endpoint": "http://127.0.0.1:9",
         "properties": {"aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "hunter2-s3-secret"}}]});
    let created = cluster.post_json("/v1/collections", &spec).unwrap();
    assert_eq!(created.status, 201, "{}", created.body);
    std::thread::sleep(Duration::from_secs(3)); // the tailer starts (and fails) the sources
    let listed = cluster.get("/v1/collections").unwrap().body;
    let described = cluster.get("/v1/collections/secured").unwrap().body;
    for shown in [&created.body, &listed, &described] {
        let text = shown.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("AKIDEXAMPLE"),
            "{text}"
        );
    }
    let kafka = &described["collection"]["sources"][0]["properties"];
    assert_eq!(kafka["sasl.password"], json!("<redacted>"));
    assert_eq!(kafka["sasl.username"], json!("u"));
    assert_eq!(
        kafka["ssl.key.password"],
        json!({"env": "ALTDB_SECRET_KEY_PASSWORD"})
    );

    // The cluster's own processes (tailers) read the real values.
    let internal = cluster
        .client()
        .get(format!("{}/v1/collections", cluster.url))
        .header(
            altdb_common::cluster_auth::HEADER,
            cluster.secret.header_value(),
        )
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(internal.contains("hunter2-kafka-password"));

    // A spec read back and sent again does not store `<redacted>` as a password.
    let mut again = described["collection"].clone();
    again["name"] = json!("secured_copy");
    again.as_object_mut().unwrap().remove("incarnation");
    let answer = cluster.post_json("/v1/collections", &again).unwrap();
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("<redacted>"));

    // References reach only what the operator allows.
    for (password, says) in [
        (json!({"env": "ALTDB_CLUSTER_SECRET"}), "ALTDB_SECRET_"),
        (json!({"env": "HOME"}), "ALTDB_SECRET_"),
        (json!({"file": "/etc/shadow"}), "allowed_secret_dirs"),
        (json!({"file": "relative/path"}), "absolute"),
        (json!({"vault": "x"}), "\"env\""),
    ] {
        let spec = json!({"name": "refused", "sources": [
            {"type": "kafka", "brokers": "127.0.0.1:9", "topic": "t",
             "properties": {"sasl.password": password}}]});
        let answer = cluster.post_json("/v1/collections", &spec).unwrap();
        assert_eq!(answer.status, 400, "{password}: {}", answer.body);
        let message = answer.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{password}: {message}");
    }

    // No log line of any process holds a secret.
    assert_eq!(cluster.logs_containing(&["hunter2"]), Vec::<String>::new());
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A certificate for 127.0.0.1 and localhost named `name`, signed by the test CA.
fn issue(dir: &std::path::Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// Every door is TLS with a test CA (HTTP and the Postgres door of the
/// aggregator, the tailers, Flight to the leaves): clients that trust the CA get answers,
/// others do not; writes go aggregator → tailer over HTTPS, the tailer reads the
/// catalog over HTTPS, puts and fragments travel to the leaves over Flight with
/// TLS; a new certificate is served after SIGHUP.
#[test]
fn https_with_a_test_ca_and_certificate_reload() {
    let pki = tempfile::tempdir().unwrap();
    let dir = pki.path();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=altdb test CA",
        ],
    );
    issue(dir, "server");
    let path = |name: &str| dir.join(name).display().to_string();
    let cluster = Cluster::start(ClusterOptions {
        env: vec![
            ("ALTDB_TLS_CERT_FILE".into(), path("server.pem")),
            ("ALTDB_TLS_KEY_FILE".into(), path("server.key")),
            ("ALTDB_TLS_CA_FILE".into(), path("ca.pem")),
        ],
        ..ClusterOptions::default()
    })
    .unwrap();
    assert!(cluster.url.starts_with("https://"));
    // Leaves serve Flight (and their HTTP routes) over TLS too; the aggregator and
    // the tailer reach them with the CA.
    assert!(cluster
        .leaf_urls
        .iter()
        .all(|url| url.starts_with("https://")));
    for url in cluster.leaf_urls.iter().chain(&cluster.tailer_urls) {
        assert_eq!(cluster.get_text(&format!("{url}/healthz")).unwrap(), "ok");
    }
    cluster
        .create_collection(json!({"name": "events", "num_shards": 2}))
        .unwrap();
    cluster
        .write_docs("events", &[json!({"n": 1}), json!({"n": 2})], 10)
        .unwrap();
    assert_eq!(cluster.scalar("SELECT SUM(n) FROM events").unwrap(), 3);

    let curl = |extra: &[&str]| {
        Command::new("curl")
            .args([
                "-sS",
                "-v",
                "-H",
                &format!("Authorization: ApiKey {}", cluster.admin_key),
            ])
            .args(extra)
            .arg(format!("{}/v1/collections/events", cluster.url))
            .output()
            .unwrap()
    };
    let untrusted = curl(&[]);
    assert!(!untrusted.status.success(), "curl without the CA must fail");
    let trusted = curl(&["--cacert", &path("ca.pem")]);
    assert!(
        trusted.status.success(),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    let body: Value = serde_json::from_slice(&trusted.stdout).unwrap();
    assert_eq!(body["documents"], json!(2));
    assert!(String::from_utf8_lossy(&trusted.stderr).contains("CN=server"));
    let plain = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(cluster.url.replace("https://", "http://") + "/healthz")
        .output()
        .unwrap();
    assert_ne!(
        String::from_utf8_lossy(&plain.stdout),
        "200",
        "no plain HTTP on the HTTPS port"
    );
    // The Postgres door offers TLS with the same certificate: psql verifies it
    // against the CA and the host name.
    let psql = Command::new("psql")
        .args(["-X", "-A", "-t", "-c", "SELECT SUM(n) FROM events"])
        .arg(format!(
            "host=127.0.0.1 port={} user=me dbname=altdb sslmode=verify-full sslrootcert={}",
            cluster.postgres_port,
            path("ca.pem")
        ))
        .env("PGPASSWORD", &cluster.admin_key)
        .output()
        .expect("psql runs");
    assert!(
        psql.status.success(),
        "{}",
        String::from_utf8_lossy(&psql.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&psql.stdout).trim(), "3");

    // A renewed certificate replaces the files; SIGHUP makes the aggregator serve it.
    issue(dir, "renewed");
    std::fs::copy(dir.join("renewed.key"), dir.join("server.key.new")).unwrap();
    std::fs::copy(dir.join("renewed.pem"), dir.join("server.pem.new")).unwrap();
    std::fs::rename(dir.join("server.key.new"), dir.join("server.key")).unwrap();
    std::fs::rename(dir.join("server.pem.new"), dir.join("server.pem")).unwrap();
    cluster.aggregator.signal("HUP").unwrap();
    let mut served = String::new();
    for _ in 0..50 {
        served = String::from_utf8_lossy(&curl(&["--cacert", &path("ca.pem")]).stderr).into_owned();
        if served.contains("CN=renewed") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(served.contains("CN=renewed"), "{served}");
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM events").unwrap(), 2);
}

/// An aggregator asked to listen beyond loopback with authentication off refuses
/// to start, unless told `--insecure`.
#[test]
fn listening_open_beyond_loopback_needs_insecure() {
    let binary = altdb_tests::bin_dir().join("altdb-aggregator");
    let data = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let mut child = Command::new(&binary)
            .args(["--listen", &format!("0.0.0.0:{}", altdb_tests::free_port())])
            .arg("--data-dir")
            .arg(data.path())
            .args(extra)
            .env("ALTDB_CLUSTER_SECRET", "0123456789abcdef0123456789abcdef")
            .env_remove("ALTDB_ADMIN_KEY")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        for _ in 0..50 {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let exited = child.try_wait().unwrap();
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        (
            exited,
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let (exited, text) = run(&[]);
    assert!(
        exited.is_some_and(|s| !s.success()),
        "it must refuse to start: {text}"
    );
    assert!(
        text.contains("authentication off") && text.contains("--insecure"),
        "{text}"
    );
    let (exited, text) = run(&["--insecure"]);
    assert!(exited.is_none(), "with --insecure it runs: {text}");
}
