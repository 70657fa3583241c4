//! End-to-end test harness: starts the real altdb binaries on loopback.
//!
//! [`Cluster::start`] launches leaves, an aggregator and a tailer as separate
//! processes with their data in a temporary directory; tests talk to them over
//! HTTP exactly as users do. Expected answers come from DuckDB (see
//! `oracle/duckdb_oracle.py`), computed on the same documents.

pub mod compat;
pub mod data;
pub mod etcd;
pub mod fuzz;
pub mod kafka;
pub mod oracle;
pub mod s3;
pub mod slt;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use altdb_common::cluster_auth::ClusterSecret;

/// Where the altdb binaries are: `ALTDB_BIN_DIR`, else the target dir of this test.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("ALTDB_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf()
}

/// A loopback port for a server a test starts, free when this returns.
///
/// Taken below the kernel's ephemeral range (32768 and up on Linux), where
/// `bind(0)` and outgoing connections pick theirs: a port from `bind(0)` is
/// released before the server binds it, and in that gap a connection of a test
/// running beside it (a client, a Kafka producer) could take it, failing the
/// server's start. Tests of one binary share the counter, so they never get the
/// same port; binaries start from an offset of their pid.
pub fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const PORTS: u32 = 12_000;
    static NEXT: std::sync::OnceLock<std::sync::atomic::AtomicU32> = std::sync::OnceLock::new();
    let next =
        NEXT.get_or_init(|| std::sync::atomic::AtomicU32::new(std::process::id() * 97 % PORTS));
    for _ in 0..PORTS {
        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (FIRST + n % PORTS) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + PORTS)
}

/// One running altdb process.
pub struct Process {
    pub name: String,
    binary: &'static str,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// When the child was spawned and how long its log was then.
    spawned: (Instant, u64),
}

impl Process {
    /// Starts `binary` (one of the altdb binaries in [`bin_dir`]) with its
    /// output appended to `log`.
    pub fn start(
        name: &str,
        binary: &'static str,
        args: Vec<String>,
        env: Vec<(String, String)>,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let mut process = Self {
            name: name.to_string(),
            binary,
            args,
            env,
            log,
            child: None,
            spawned: (Instant::now(), 0),
        };
        process.spawn()?;
        Ok(process)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let path = bin_dir().join(self.binary);
        if !path.exists() {
            bail!(
                "{} is missing; run `cargo build --bins` first",
                path.display()
            );
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&path)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", path.display()))?;
        self.child = Some(child);
        self.spawned = (Instant::now(), self.log_len());
        Ok(())
    }

    /// SIGKILL: the process gets no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal by name (`STOP` hangs the process, `CONT` resumes it).
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let child = self.child.as_ref().context("process is not running")?;
        let status = Command::new("kill")
            .args([&format!("-{name}"), &child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} {} failed", self.name);
        Ok(())
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.terminate_within(Duration::from_secs(30))
    }

    /// SIGTERM and wait up to `limit` for the exit (then SIGKILL, and an error).
    pub fn terminate_within(
        &mut self,
        limit: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("process is not running")?;
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                bail!("{} did not stop within {limit:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.spawn()
    }

    /// How the process ended, if it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// Whether the process has run for `at_least` without printing a line.
    fn silent_for(&self, at_least: Duration) -> bool {
        let (at, len) = self.spawned;
        at.elapsed() >= at_least && self.log_len() == len
    }

    /// Everything the process logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Options of a test cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub leaves: usize,
    /// Tailers; HTTP writes go to the first.
    pub tailers: usize,
    /// Rows after which leaves seal their mutable segment.
    pub seal_rows: usize,
    /// Environment of every process (e.g. `AWS_*` credentials for the tailers).
    pub env: Vec<(String, String)>,
    /// The aggregators' `--metastore` (none: the file in the data directory);
    /// an `etcd://` one is the tailers' and leaves' too.
    pub metastore: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            leaves: 2,
            tailers: 1,
            seal_rows: 100_000,
            env: Vec::new(),
            metastore: None,
        }
    }
}

/// A running cluster: leaves, one aggregator, tailers.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub leaves: Vec<Process>,
    pub aggregator: Process,
    /// The aggregator's Postgres wire protocol port.
    pub postgres_port: u16,
    /// The aggregator's Arrow Flight SQL port.
    pub flight_sql_port: u16,
    pub tailers: Vec<Process>,
    /// HTTP addresses of the tailers, in order.
    pub tailer_urls: Vec<String>,
    /// Addresses of the leaves (Flight, and plain HTTP on the same port), in order.
    pub leaf_urls: Vec<String>,
    /// The secret the cluster's processes share (internal calls need it).
    pub secret: ClusterSecret,
    /// The aggregator's admin key, which this harness's requests carry.
    pub admin_key: String,
    /// What a further aggregator needs ([`Self::start_aggregator`]).
    aggregator_args: Vec<String>,
    /// What a further leaf needs besides its port and directory ([`Self::add_leaf`]).
    leaf_args: Vec<String>,
    env: Vec<(String, String)>,
    http: reqwest::blocking::Client,
    /// A client that sends no key ([`Self::request_as`]).
    bare: reqwest::blocking::Client,
}

/// Starts leaf number `index` on `port` with its data in `dir/leaf-<index>`.
fn start_leaf(
    dir: &Path,
    index: usize,
    port: u16,
    args: &[String],
    env: &[(String, String)],
) -> anyhow::Result<Process> {
    Process::start(
        &format!("leaf-{index}"),
        "altdb-leaf",
        [
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            dir.join(format!("leaf-{index}")).display().to_string(),
        ]
        .into_iter()
        .chain(args.iter().cloned())
        .collect(),
        env.to_vec(),
        dir.join(format!("leaf-{index}.log")),
    )
}

/// An HTTP answer: status and JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Cluster {
    pub fn start(options: ClusterOptions) -> anyhow::Result<Self> {
        // ALTDB_KEEP_TEST_DIRS=1 keeps data and logs for a post-mortem.
        let keep = std::env::var_os("ALTDB_KEEP_TEST_DIRS").is_some();
        let dir = tempfile::Builder::new()
            .prefix("altdb-test-")
            .disable_cleanup(keep)
            .tempdir()?;
        if keep {
            eprintln!("test cluster in {}", dir.path().display());
        }
        // Every process gets the cluster's secret; a test's own env comes after it
        // (and may replace it).
        let secret = ClusterSecret::generate()?;
        // Authentication is on, as in production: this harness's requests carry
        // the admin key.
        let admin_key = format!("admin-{}", ClusterSecret::generate()?.expose());
        // Sources may reach the loopback brokers and S3 servers tests start and
        // the cluster's own directory.
        let defaults = [
            ("ALTDB_CLUSTER_SECRET", secret.expose().to_string()),
            ("ALTDB_ADMIN_KEY", admin_key.clone()),
            ("ALTDB_ALLOWED_KAFKA_BROKERS", "127.0.0.1:*".to_string()),
            (
                "ALTDB_ALLOWED_S3_ENDPOINTS",
                "http://127.0.0.1:*".to_string(),
            ),
            ("ALTDB_ALLOWED_FILE_ROOTS", dir.path().display().to_string()),
        ];
        let options = ClusterOptions {
            env: defaults
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .chain(options.env)
                .collect(),
            ..options
        };
        // With ALTDB_TLS_CERT_FILE the aggregator and tailers serve HTTPS, and this
        // harness trusts ALTDB_TLS_CA_FILE.
        let setting = |name: &str| {
            options
                .env
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let scheme = match setting("ALTDB_TLS_CERT_FILE") {
            Some(_) => "https",
            None => "http",
        };
        let ca = setting("ALTDB_TLS_CA_FILE")
            .map(|path| -> anyhow::Result<reqwest::Certificate> {
                Ok(reqwest::Certificate::from_pem(&std::fs::read(path)?)?)
            })
            .transpose()?;
        let client = || {
            let builder = reqwest::blocking::Client::builder().timeout(Duration::from_secs(300));
            match &ca {
                Some(ca) => builder.add_root_certificate(ca.clone()),
                None => builder,
            }
        };
        let aggregator_port = free_port();
        let postgres_port = free_port();
        let flight_sql_port = free_port();
        let tailer_ports: Vec<u16> = (0..options.tailers.max(1)).map(|_| free_port()).collect();
        let leaf_urls: Vec<(u16, String)> = (0..options.leaves)
            .map(|_| {
                let port = free_port();
                (port, format!("{scheme}://127.0.0.1:{port}"))
            })
            .collect();
        let leaves_arg = leaf_urls
            .iter()
            .map(|(_, u)| u.clone())
            .collect::<Vec<_>>()
            .join(",");
        // With etcd, leaves register there and tailers read collections from it.
        let etcd_args: Vec<String> = options
            .metastore
            .iter()
            .filter(|m| m.starts_with("etcd://"))
            .flat_map(|m| ["--metastore".to_string(), m.clone()])
            .collect();
        let leaf_args: Vec<String> = [
            "--seal-rows".to_string(),
            options.seal_rows.to_string(),
            "--seal-interval-secs".into(),
            "3600".into(),
        ]
        .into_iter()
        .chain(etcd_args.iter().cloned())
        .collect();
        let mut leaves = Vec::new();
        for (i, (port, _)) in leaf_urls.iter().enumerate() {
            leaves.push(start_leaf(dir.path(), i, *port, &leaf_args, &options.env)?);
        }
        let url = format!("{scheme}://127.0.0.1:{aggregator_port}");
        let mut aggregator_args = vec![
            "--leaves".into(),
            leaves_arg.clone(),
            "--tailer-url".into(),
            format!("{scheme}://127.0.0.1:{}", tailer_ports[0]),
        ];
        if let Some(metastore) = &options.metastore {
            aggregator_args.extend(["--metastore".into(), metastore.clone()]);
        }
        let aggregator = Process::start(
            "aggregator",
            "altdb-aggregator",
            [
                "--listen".into(),
                format!("127.0.0.1:{aggregator_port}"),
                "--postgres-listen".into(),
                format!("127.0.0.1:{postgres_port}"),
                "--flight-sql-listen".into(),
                format!("127.0.0.1:{flight_sql_port}"),
                "--data-dir".into(),
                dir.path().join("aggregator").display().to_string(),
            ]
            .into_iter()
            .chain(aggregator_args.iter().cloned())
            .collect(),
            options.env.clone(),
            dir.path().join("aggregator.log"),
        )?;
        let mut tailers = Vec::new();
        for (i, port) in tailer_ports.iter().enumerate() {
            tailers.push(Process::start(
                &format!("tailer-{i}"),
                "altdb-tailer",
                vec![
                    "--listen".into(),
                    format!("127.0.0.1:{port}"),
                    "--aggregator-url".into(),
                    url.clone(),
                    "--leaves".into(),
                    leaves_arg.clone(),
                    // Object-store sources are split between the tailers.
                    "--tailers".into(),
                    tailer_ports.len().to_string(),
                    "--ordinal".into(),
                    i.to_string(),
                ]
                .into_iter()
                .chain(etcd_args.iter().cloned())
                .collect(),
                options.env.clone(),
                dir.path().join(format!("tailer-{i}.log")),
            )?);
        }
        let mut cluster = Self {
            dir,
            url,
            leaves,
            aggregator,
            postgres_port,
            flight_sql_port,
            tailers,
            tailer_urls: tailer_ports
                .iter()
                .map(|p| format!("{scheme}://127.0.0.1:{p}"))
                .collect(),
            leaf_urls: leaf_urls.into_iter().map(|(_, url)| url).collect(),
            secret,
            http: client()
                .default_headers(reqwest::header::HeaderMap::from_iter([(
                    reqwest::header::AUTHORIZATION,
                    format!("ApiKey {admin_key}").parse()?,
                )]))
                .build()?,
            bare: client().build()?,
            admin_key,
            aggregator_args,
            leaf_args,
            env: options.env.clone(),
        };
        cluster.wait_ready()?;
        Ok(cluster)
    }

    /// Starts one more leaf (`leaf-<n>`, registering in the metastore like
    /// the others); its URL once it answers.
    pub fn add_leaf(&mut self) -> anyhow::Result<String> {
        let index = self.leaves.len();
        let port = free_port();
        let scheme = self.url.split("://").next().unwrap_or("http");
        let url = format!("{scheme}://127.0.0.1:{port}");
        let process = start_leaf(self.dir.path(), index, port, &self.leaf_args, &self.env)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.bare.get(format!("{url}/healthz")).send().is_err() {
            if Instant::now() > deadline {
                bail!("leaf-{index} did not start:\n{}", process.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.leaves.push(process);
        self.leaf_urls.push(url.clone());
        Ok(url)
    }

    /// Starts another aggregator over the same leaves, tailer and metastore;
    /// returns it and its URL once it answers.
    pub fn start_aggregator(&self, name: &str) -> anyhow::Result<(Process, String)> {
        let port = free_port();
        let scheme = self.url.split("://").next().unwrap_or("http");
        let url = format!("{scheme}://127.0.0.1:{port}");
        let process = Process::start(
            name,
            "altdb-aggregator",
            [
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--postgres-listen".into(),
                String::new(),
                "--flight-sql-listen".into(),
                String::new(),
                "--data-dir".into(),
                self.dir.path().join(name).display().to_string(),
            ]
            .into_iter()
            .chain(self.aggregator_args.iter().cloned())
            .collect(),
            self.env.clone(),
            self.dir.path().join(format!("{name}.log")),
        )?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.bare.get(format!("{url}/healthz")).send().is_err() {
            if Instant::now() > deadline {
                bail!("{name} did not start:\n{}", process.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok((process, url))
    }

    /// Waits until the aggregator answers, every leaf is healthy and every tailer
    /// answers. A process
    /// that died on the way, or hung for 20 s without printing a line, is started
    /// once more (and named on stderr), so one lost process start on a loaded
    /// machine does not fail a test; a second failure fails with its log.
    pub fn wait_ready(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut respawned = std::collections::HashSet::new();
        loop {
            if let Ok(answer) = self.get("/v1/cluster") {
                let healthy = answer.body["leaves"]
                    .as_array()
                    .is_some_and(|l| l.iter().all(|leaf| leaf["healthy"] == true));
                // Writes go through the tailers: they must answer too.
                let tailers_up = || {
                    self.tailer_urls.iter().all(|url| {
                        self.get_text(&format!("{url}/healthz"))
                            .is_ok_and(|text| text == "ok")
                    })
                };
                // With a metastore, leaves register after they start.
                let all_there = answer.body["leaves"]
                    .as_array()
                    .is_some_and(|l| l.len() >= self.leaves.len());
                if answer.status == 200 && healthy && all_there && tailers_up() {
                    return Ok(());
                }
            }
            for process in self.leaves.iter_mut().chain([&mut self.aggregator]) {
                let status = match process.exited() {
                    Some(status) => status.to_string(),
                    None if process.silent_for(Duration::from_secs(20)) => {
                        process.kill9();
                        "nothing printed in 20 s".to_string()
                    }
                    None => continue,
                };
                if !respawned.insert(process.name.clone()) {
                    bail!(
                        "{} failed while the cluster started ({status}); the end of {}:\n{}",
                        process.name,
                        process.log.display(),
                        process.log_tail()
                    );
                }
                eprintln!(
                    "{} failed while the cluster started ({status}); starting it again; the end of {}:\n{}",
                    process.name,
                    process.log.display(),
                    process.log_tail()
                );
                process.spawn()?;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "cluster did not become ready in 60 s\n{}\n{}",
                    self.aggregator.log_tail(),
                    self.leaves
                        .iter()
                        .map(|p| format!("{}:\n{}", p.name, p.log_tail()))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn answer(response: reqwest::blocking::Response) -> anyhow::Result<Answer> {
        let status = response.status().as_u16();
        let text = response.text()?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Answer { status, body })
    }

    /// The processes whose logs contain any of `needles` (secrets that must not
    /// be logged), by name.
    pub fn logs_containing(&self, needles: &[&str]) -> Vec<String> {
        self.leaves
            .iter()
            .chain(&self.tailers)
            .chain([&self.aggregator])
            .filter(|process| {
                let text = process.log_text();
                needles.iter().any(|needle| text.contains(needle))
            })
            .map(|process| process.name.clone())
            .collect()
    }

    /// A client whose requests carry the admin key.
    pub fn client(&self) -> reqwest::blocking::Client {
        self.http.clone()
    }

    /// A request to the aggregator carrying `key` (none: no Authorization header).
    pub fn request_as(
        &self,
        key: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let mut request = self.bare.request(method, format!("{}{path}", self.url));
        if let Some(key) = key {
            request = request.header("authorization", format!("ApiKey {key}"));
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        Self::answer(request.send()?)
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Answer> {
        Self::answer(self.http.get(format!("{}{path}", self.url)).send()?)
    }

    /// GET any URL as text (e.g. a tailer's `/metrics`).
    pub fn get_text(&self, url: &str) -> anyhow::Result<String> {
        Ok(self.http.get(url).send()?.error_for_status()?.text()?)
    }

    /// Polls `sql` (a single integer) until `done` holds for it or `timeout` passes;
    /// returns the last value seen (`i64::MIN` if the query never answered).
    pub fn wait_until(&self, sql: &str, timeout: Duration, done: impl Fn(i64) -> bool) -> i64 {
        let started = Instant::now();
        let mut last = i64::MIN;
        while started.elapsed() < timeout {
            if let Ok(value) = self.scalar(sql) {
                last = value;
                if done(value) {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        last
    }

    pub fn delete(&self, path: &str) -> anyhow::Result<Answer> {
        Self::answer(self.http.delete(format!("{}{path}", self.url)).send()?)
    }

    pub fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Answer> {
        Self::answer(
            self.http
                .post(format!("{}{path}", self.url))
                .json(body)
                .send()?,
        )
    }

    pub fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::blocking::Body>,
    ) -> anyhow::Result<Answer> {
        Self::answer(
            self.http
                .post(format!("{}{path}", self.url))
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()?,
        )
    }

    /// The incarnation the catalog gave a collection (internal calls name it).
    pub fn incarnation(&self, collection: &str) -> anyhow::Result<u64> {
        let answer = self.get(&format!("/v1/collections/{collection}"))?;
        answer.body["collection"]["incarnation"]
            .as_u64()
            .with_context(|| format!("no incarnation in {}", answer.body))
    }

    pub fn create_collection(&self, spec: Value) -> anyhow::Result<()> {
        let answer = self.post_json("/v1/collections", &spec)?;
        if answer.status != 201 {
            bail!(
                "creating collection failed: {} {}",
                answer.status,
                answer.body
            );
        }
        Ok(())
    }

    /// Writes NDJSON documents in requests of `per_request`; fails unless all are stored.
    pub fn write_docs(
        &self,
        collection: &str,
        docs: &[Value],
        per_request: usize,
    ) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::with_capacity(docs.len());
        for chunk in docs.chunks(per_request) {
            let body: String = chunk.iter().map(|d| format!("{d}\n")).collect();
            let answer = self.post_raw(&format!("/v1/collections/{collection}/docs"), body)?;
            if answer.status != 200 || answer.body["written"].as_u64() != Some(chunk.len() as u64) {
                bail!("write failed: {} {}", answer.status, answer.body);
            }
            for id in answer.body["ids"].as_array().context("ids")? {
                ids.push(id.as_str().context("id")?.to_string());
            }
        }
        Ok(ids)
    }

    /// Writes the documents of an NDJSON file; fails unless all are stored.
    pub fn write_ndjson_file(
        &self,
        collection: &str,
        path: &Path,
        per_request: usize,
    ) -> anyhow::Result<()> {
        let docs: Vec<Value> = std::fs::read_to_string(path)?
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        self.write_docs(collection, &docs, per_request)?;
        Ok(())
    }

    /// Runs SQL; returns the whole answer (status and body).
    pub fn query(&self, sql: &str) -> anyhow::Result<Answer> {
        self.post_json("/v1/query", &serde_json::json!({ "sql": sql }))
    }

    /// Runs SQL that must succeed; returns its rows.
    pub fn rows(&self, sql: &str) -> anyhow::Result<Vec<Vec<Value>>> {
        let answer = self.query(sql)?;
        if answer.status != 200 {
            bail!("query failed: {sql}\n{} {}", answer.status, answer.body);
        }
        Ok(serde_json::from_value(answer.body["rows"].clone())?)
    }

    /// Runs SQL that returns a single integer.
    pub fn scalar(&self, sql: &str) -> anyhow::Result<i64> {
        let rows = self.rows(sql)?;
        rows.first()
            .and_then(|r| r.first())
            .and_then(Value::as_i64)
            .with_context(|| format!("no integer answer to {sql}: {rows:?}"))
    }
}
