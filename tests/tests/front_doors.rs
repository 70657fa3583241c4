//! The Postgres wire protocol and Arrow Flight SQL doors with real clients: psql
//! (Debian's postgresql-client), psycopg 3, SQLAlchemy + pandas, asyncpg, a
//! replay of what Grafana's PostgreSQL data source sends, and the ADBC Flight
//! SQL driver; answers compared with DuckDB's (tests/clients/). Also: keys as
//! passwords, roles over the door, cancel requests.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};

use altdb_tests::{Cluster, ClusterOptions};

/// The documents postgres_clients.py expects in `events`.
fn documents() -> Vec<Value> {
    let base = chrono::DateTime::parse_from_rfc3339("2024-03-01T00:00:00Z").unwrap();
    (0..100)
        .map(|i: i64| {
            json!({
                "id": i,
                "user": format!("u{}", i % 5),
                "qty": i % 7,
                "price": i as f64 * 1.5,
                "tags": [format!("t{}", i % 3), "all"],
                "ts": format!("2024-03-01T00:{:02}:00Z", i % 60),
                "at": (base + chrono::Duration::minutes(i)).to_rfc3339(),
            })
        })
        .collect()
}

fn cluster_with_events() -> Cluster {
    let cluster = Cluster::start(ClusterOptions::default()).unwrap();
    cluster
        .create_collection(json!({"name": "events", "num_shards": 2, "event_time_field": "at"}))
        .unwrap();
    cluster.write_docs("events", &documents(), 50).unwrap();
    cluster
}

fn clients_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/postgres_clients.py")
}

/// Runs postgres_clients.py's `checks`; fails with its output.
fn run_clients(cluster: &Cluster, key: &str, checks: &[&str]) {
    let output = Command::new("python3")
        .arg(clients_script())
        .arg("127.0.0.1")
        .arg(cluster.postgres_port.to_string())
        .arg(key)
        .args(checks)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{checks:?} failed:\n{stdout}\n{stderr}\naggregator log:\n{}",
        cluster.aggregator.log_tail()
    );
    eprintln!("{stdout}");
}

/// Runs psql with `args`; returns (success, stdout, stderr).
fn psql(cluster: &Cluster, key: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new("psql")
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.postgres_port.to_string(),
            "-U",
            "analyst",
            "-d",
            "altdb",
            "-v",
            "ON_ERROR_STOP=1",
        ])
        .args(args)
        .env("PGPASSWORD", key)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql runs (apt-get install postgresql-client)");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

/// psql's major version.
fn psql_major() -> u32 {
    let output = Command::new("psql")
        .arg("--version")
        .output()
        .expect("psql runs");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .find_map(|word| word.split('.').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn python_clients_get_the_oracles_answers() {
    let cluster = cluster_with_events();
    run_clients(
        &cluster,
        &cluster.admin_key,
        &["psycopg", "sqlalchemy", "asyncpg", "grafana"],
    );
}

#[test]
fn the_adbc_flight_sql_driver_gets_arrow_answers() {
    let cluster = cluster_with_events();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/flight_sql_clients.py");
    let output = Command::new("python3")
        .arg(script)
        .arg("127.0.0.1")
        .arg(cluster.flight_sql_port.to_string())
        .arg(&cluster.admin_key)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}\naggregator log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        cluster.aggregator.log_tail()
    );
    eprintln!("{stdout}");
}

#[test]
fn psql_lists_describes_and_binds() {
    let cluster = cluster_with_events();
    let key = cluster.admin_key.clone();

    let (ok, out, err) = psql(&cluster, &key, &["-c", "SELECT COUNT(*) AS n FROM events"]);
    assert!(ok, "{err}");
    assert!(out.contains("100"), "{out}");

    let (ok, out, err) = psql(&cluster, &key, &["-c", "\\dt"]);
    assert!(ok, "\\dt failed: {err}\n{}", cluster.aggregator.log_tail());
    assert!(out.contains("events") && out.contains("table"), "{out}");

    let (ok, out, err) = psql(&cluster, &key, &["-c", "\\d events"]);
    assert!(
        ok,
        "\\d events failed: {err}\n{}",
        cluster.aggregator.log_tail()
    );
    for expected in [
        "_event_time",
        "timestamp with time zone",
        "price",
        "double precision",
        "tags",
        "text[]",
    ] {
        assert!(out.contains(expected), "`{expected}` missing from:\n{out}");
    }

    // \bind (psql 16 and later) sends the statement with the extended protocol
    // and its parameters; Debian 12's psql is 15, where psycopg and asyncpg
    // cover that protocol (python_clients_get_the_oracles_answers).
    if psql_major() >= 16 {
        let (ok, out, err) = psql(
            &cluster,
            &key,
            &["-c", "SELECT id, price FROM events WHERE \"user\" = $1 AND qty = $2 ORDER BY id \\bind u1 1 \\g"],
        );
        assert!(ok, "\\bind failed: {err}");
        let ids: Vec<&str> = out
            .lines()
            .filter_map(|line| line.split('|').next())
            .map(str::trim)
            .filter(|cell| cell.parse::<i64>().is_ok())
            .collect();
        // user u1: id % 5 == 1; qty 1: id % 7 == 1 → id % 35 == 1.
        assert_eq!(ids, vec!["1", "36", "71"], "{out}");
    } else {
        eprintln!("psql {} has no \\bind; skipped", psql_major());
    }

    // Errors carry their SQLSTATE and message.
    let (ok, _, err) = psql(&cluster, &key, &["-c", "SELECT nope FROM events"]);
    assert!(!ok);
    assert!(
        err.contains("nope") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn keys_are_passwords_and_roles_apply() {
    let cluster = cluster_with_events();
    cluster
        .create_collection(json!({"name": "secrets", "num_shards": 1}))
        .unwrap();
    cluster
        .write_docs("secrets", &[json!({"pin": 1234})], 1)
        .unwrap();
    let answer = cluster
        .post_json(
            "/v1/roles",
            &json!({"name": "events-reader", "privileges": [
                {"action": "query", "resource": "events"}]}),
        )
        .unwrap();
    assert_eq!(answer.status, 201, "{}", answer.body);
    let answer = cluster
        .post_json(
            "/v1/keys",
            &json!({"name": "dash", "role": "events-reader"}),
        )
        .unwrap();
    assert_eq!(answer.status, 201, "{}", answer.body);
    let key = answer.body["key"].as_str().unwrap().to_string();

    // A wrong password is refused at connection, saying what the password is.
    let (ok, _, err) = psql(&cluster, "not-a-key", &["-c", "SELECT 1"]);
    assert!(!ok);
    assert!(
        err.contains("password authentication failed") && err.contains("API key"),
        "{err}"
    );
    assert!(
        !cluster
            .logs_containing(&["event=authentication_failed", "postgres"])
            .is_empty(),
        "no audit line for the failed login"
    );

    // The key reads what its role allows and nothing else, as over HTTP.
    let (ok, out, err) = psql(
        &cluster,
        &key,
        &["-A", "-t", "-c", "SELECT COUNT(*) FROM events"],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "100");
    let (ok, _, err) = psql(&cluster, &key, &["-c", "SELECT * FROM secrets"]);
    assert!(!ok);
    assert!(err.contains("secrets"), "{err}");
    // The catalog lists only what it may read.
    let (ok, out, err) = psql(
        &cluster,
        &key,
        &[
            "-A",
            "-t",
            "-c",
            "SELECT table_name FROM information_schema.tables ORDER BY 1",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "events", "{out}");

    // A key revoked while its session is open: the session's next statement is
    // refused (psycopg holds the session; the admin revokes over HTTP).
    let script = r#"
import sys, urllib.request, psycopg
port, key, url, admin = sys.argv[1:5]
con = psycopg.connect(f"host=127.0.0.1 port={port} user=dash password={key} dbname=altdb", autocommit=True)
print("before", con.execute("SELECT COUNT(*) FROM events").fetchone()[0])
request = urllib.request.Request(f"{url}/v1/keys/dash", method="DELETE",
                                 headers={"Authorization": f"ApiKey {admin}"})
print("revoked", urllib.request.urlopen(request).status)
try:
    con.execute("SELECT COUNT(*) FROM events")
    print("after: answered")
except psycopg.Error as error:
    print("after:", type(error).__name__, str(error).splitlines()[0])
"#;
    let output = Command::new("python3")
        .args([
            "-c",
            script,
            &cluster.postgres_port.to_string(),
            &key,
            &cluster.url,
            &cluster.admin_key,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("before 100"), "{stdout}");
    assert!(stdout.contains("revoked 204"), "{stdout}");
    assert!(stdout.contains("revoked or has expired"), "{stdout}");

    // A revoked key's next connection is refused.
    let (ok, _, err) = psql(&cluster, &key, &["-c", "SELECT 1"]);
    assert!(!ok, "a revoked key connected");
    assert!(err.contains("password authentication failed"), "{err}");
}

#[test]
fn a_cancel_request_stops_the_running_statement() {
    let cluster = cluster_with_events();
    // psycopg's cancel() sends a CancelRequest on a second connection with the
    // session's key; the long statement (a five-way cross join: minutes, so that
    // it is surely running when the cancel comes) must end with query_canceled
    // (57014).
    let script = r#"
import sys, threading, time, psycopg
dsn = f"host=127.0.0.1 port={sys.argv[1]} user=x password={sys.argv[2]} dbname=altdb"
con = psycopg.connect(dsn, autocommit=True)
threading.Timer(1.0, con.cancel).start()
started = time.time()
try:
    con.execute("SELECT COUNT(*) FROM events a, events b, events c, events d, events e WHERE a.price + b.price + c.price + d.price + e.price < 0")
    print("finished")
except psycopg.errors.QueryCanceled:
    print(f"canceled after {time.time() - started:.1f}s")
con.execute("SELECT 1")
print("session usable")
"#;
    let output = Command::new("python3")
        .args([
            "-c",
            script,
            &cluster.postgres_port.to_string(),
            &cluster.admin_key,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("canceled after"), "{stdout}");
    assert!(stdout.contains("session usable"), "{stdout}");
}
