//! `altdb-local`: a whole altdb cluster on one machine, in one command.
//!
//! Starts 2 leaves, 1 aggregator and 1 tailer as separate processes keeping their
//! data under one directory, creates a demo collection fed by the built-in
//! clickstream generator, and prints how to query it. Ctrl-C stops the tailer,
//! then the aggregator, then the leaves; starting again keeps the data.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

use altdb_common::cluster_auth::ClusterSecret;

/// mimalloc: ingest and queries allocate many small, short-lived values
/// (JSON values, strings, Arrow buffers), which the system allocator serves slowly.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "altdb-local",
    about = "Run a local altdb cluster (2 leaves, 1 tailer, 1 aggregator)"
)]
struct Args {
    /// Where every process keeps its data.
    #[arg(long, default_value = "altdb-data")]
    data_dir: PathBuf,
    /// Demo events per second from the built-in generator (0: no demo collection).
    #[arg(long, default_value_t = 2000)]
    rate: u32,
    /// Aggregator HTTP port; the tailer uses the next one, leaves PORT+101 and
    /// PORT+102; the aggregator's Postgres door listens on PORT-268 (7432) and
    /// its Flight SQL door on PORT-267 (7433).
    #[arg(long, default_value_t = 7700)]
    port: u16,
    /// Directory holding the altdb binaries (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

struct Process {
    name: &'static str,
    child: Child,
}

fn spawn(
    bin_dir: &Path,
    binary: &str,
    name: &'static str,
    args: &[String],
    env: &[(&str, String)],
    log: &Path,
) -> anyhow::Result<Process> {
    let path = bin_dir.join(binary);
    if !path.exists() {
        bail!(
            "{} not found; build the binaries first with `cargo build --release --bins`",
            path.display()
        );
    }
    // Append: the logs of earlier runs are kept for diagnosis.
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let child = Command::new(&path)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        // Own process group: Ctrl-C reaches only us, and we stop children in order.
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", path.display()))?;
    Ok(Process { name, child })
}

fn stop(process: &mut Process, deadline: Duration) {
    let pid = process.child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let started = Instant::now();
    while started.elapsed() < deadline {
        if let Ok(Some(_)) = process.child.try_wait() {
            println!("  {} stopped", process.name);
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = process.child.kill();
    let _ = process.child.wait();
    println!("  {} killed after {:?}", process.name, deadline);
}

async fn wait_healthy(
    http: &reqwest::Client,
    url: &str,
    processes: &mut [Process],
) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if let Ok(response) = http.get(url).send().await {
            if response.status().is_success() {
                return Ok(());
            }
        }
        for process in processes.iter_mut() {
            if let Ok(Some(status)) = process.child.try_wait() {
                bail!(
                    "{} exited with {status} during start-up; see its log",
                    process.name
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("{url} did not become healthy within 60 s")
}

/// A secret of the local cluster (`cluster-secret`, `admin-key`), generated on the
/// first start (readable by this user only) and kept in the data directory, so
/// that a restart finds the same one.
fn secret_file(data: &Path, name: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = data.join(name);
    if !path.exists() {
        let secret = ClusterSecret::generate()?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        std::io::Write::write_all(&mut file, secret.expose().as_bytes())?;
    }
    Ok(path)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin_dir = match args.bin_dir {
        Some(dir) => dir,
        None => std::env::current_exe()?
            .parent()
            .context("cannot locate the binaries")?
            .to_path_buf(),
    };
    let data = args.data_dir.clone();
    let logs = data.join("logs");
    std::fs::create_dir_all(&logs)?;
    let aggregator_url = format!("http://127.0.0.1:{}", args.port);
    let postgres_port = args.port.saturating_sub(268);
    let tailer_url = format!("http://127.0.0.1:{}", args.port + 1);
    let leaf_ports = [args.port + 101, args.port + 102];
    let leaves: Vec<String> = leaf_ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let leaves_arg = leaves.join(",");
    let secret_arg = [
        "--cluster-secret-file".to_string(),
        secret_file(&data, "cluster-secret")?.display().to_string(),
    ];
    // Requests to the aggregator need an API key; this one is the admin's.
    let admin_key_file = std::path::absolute(secret_file(&data, "admin-key")?)?;
    let admin_key = std::fs::read_to_string(&admin_key_file)?.trim().to_string();

    // What sources of this local cluster may reach, unless the environment says:
    // brokers and S3-compatible servers on this machine, and `<data-dir>/files`.
    let files = data.join("files");
    std::fs::create_dir_all(&files)?;
    let env: Vec<(&str, String)> = [
        (
            "ALTDB_ALLOWED_KAFKA_BROKERS",
            "localhost:*,127.0.0.1:*".to_string(),
        ),
        (
            "ALTDB_ALLOWED_S3_ENDPOINTS",
            "http://localhost:*,http://127.0.0.1:*".to_string(),
        ),
        (
            "ALTDB_ALLOWED_FILE_ROOTS",
            std::path::absolute(&files)?.display().to_string(),
        ),
    ]
    .into_iter()
    .filter(|(key, _)| std::env::var_os(key).is_none())
    .collect();

    let mut processes = Vec::new();
    for (i, port) in leaf_ports.iter().enumerate() {
        let name = if i == 0 { "leaf-0" } else { "leaf-1" };
        processes.push(spawn(
            &bin_dir,
            "altdb-leaf",
            name,
            &[
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--data-dir".into(),
                data.join(name).display().to_string(),
                secret_arg[0].clone(),
                secret_arg[1].clone(),
            ],
            &env,
            &logs.join(format!("{name}.log")),
        )?);
    }
    processes.push(spawn(
        &bin_dir,
        "altdb-aggregator",
        "aggregator",
        &[
            "--listen".into(),
            format!("127.0.0.1:{}", args.port),
            "--postgres-listen".into(),
            format!("127.0.0.1:{postgres_port}"),
            "--flight-sql-listen".into(),
            format!("127.0.0.1:{}", postgres_port + 1),
            "--data-dir".into(),
            data.join("aggregator").display().to_string(),
            "--leaves".into(),
            leaves_arg.clone(),
            "--tailer-url".into(),
            tailer_url.clone(),
            secret_arg[0].clone(),
            secret_arg[1].clone(),
            "--admin-key-file".into(),
            admin_key_file.display().to_string(),
        ],
        &env,
        &logs.join("aggregator.log"),
    )?);
    processes.push(spawn(
        &bin_dir,
        "altdb-tailer",
        "tailer",
        &[
            "--listen".into(),
            format!("127.0.0.1:{}", args.port + 1),
            "--aggregator-url".into(),
            aggregator_url.clone(),
            "--leaves".into(),
            leaves_arg,
            secret_arg[0].clone(),
            secret_arg[1].clone(),
        ],
        &env,
        &logs.join("tailer.log"),
    )?);

    let http = reqwest::Client::builder()
        .default_headers(reqwest::header::HeaderMap::from_iter([(
            reqwest::header::AUTHORIZATION,
            format!("ApiKey {admin_key}").parse()?,
        )]))
        .build()?;
    let started = async {
        wait_healthy(
            &http,
            &format!("{aggregator_url}/v1/cluster"),
            &mut processes,
        )
        .await?;
        wait_healthy(&http, &format!("{tailer_url}/healthz"), &mut processes).await?;
        if args.rate > 0 {
            let spec = serde_json::json!({
                "name": "clicks",
                "num_shards": 4,
                "event_time_field": "ts",
                "text_fields": ["page.title"],
                "sources": [{"type": "datagen", "rate": args.rate}],
            });
            let response = http
                .post(format!("{aggregator_url}/v1/collections"))
                .json(&spec)
                .send()
                .await?;
            // 409: the demo collection exists from an earlier run, with its data.
            let status = response.status();
            if !status.is_success() && status != reqwest::StatusCode::CONFLICT {
                bail!(
                    "could not create the demo collection: {}",
                    response.text().await?
                );
            }
        }
        anyhow::Ok(())
    };
    if let Err(error) = started.await {
        eprintln!("altdb-local: {error:#}");
        for process in processes.iter_mut().rev() {
            stop(process, Duration::from_secs(5));
        }
        std::process::exit(1);
    }

    println!(
        r#"altdb is running.
  console      {aggregator_url}/   (open it in a browser; paste the admin key below)
  aggregator   {aggregator_url}   (SQL, collections, writes)
  postgres     127.0.0.1:{postgres_port}   (psql, Grafana: the password is the admin key)
  flight sql   grpc://127.0.0.1:{flight_sql_port}   (ADBC, JDBC: Bearer <key>)
  tailer       {tailer_url}
  leaves       {leaves}
  data         {data}   logs in {logs}

Requests need an API key; the admin's is in {admin_key_file}
(create keys for others with POST /v1/keys). Try:
  export ALTDB_KEY=$(cat {admin_key_file})
  curl -s -H "Authorization: ApiKey $ALTDB_KEY" {aggregator_url}/v1/collections/clicks
  curl -s -H "Authorization: ApiKey $ALTDB_KEY" {aggregator_url}/v1/query -d '{{"sql":"SELECT COUNT(*) FROM clicks"}}'
  curl -s -H "Authorization: ApiKey $ALTDB_KEY" {aggregator_url}/v1/query -d '{{"sql":"SELECT event_type, COUNT(*) AS n FROM clicks GROUP BY 1 ORDER BY n DESC"}}'
  curl -s -H "Authorization: ApiKey $ALTDB_KEY" {aggregator_url}/v1/query -d '{{"sql":"SELECT \"geo.city\", AVG(price) FROM clicks WHERE event_type = '"'"'purchase'"'"' GROUP BY 1"}}'
  curl -s -H "Authorization: ApiKey $ALTDB_KEY" {aggregator_url}/v1/collections/clicks/docs -d '{{"_id":"me","hello":"world"}}'
  curl -s -H "Authorization: ApiKey $ALTDB_KEY" {aggregator_url}/v1/keys -d '{{"name":"dashboard","role":"read-only"}}'
  PGPASSWORD=$ALTDB_KEY psql -h 127.0.0.1 -p {postgres_port} -U me altdb -c 'SELECT COUNT(*) FROM clicks'

Press Ctrl-C to stop."#,
        leaves = leaves.join(" "),
        flight_sql_port = postgres_port + 1,
        data = data.display(),
        logs = logs.display(),
        admin_key_file = admin_key_file.display(),
    );

    let exited = loop {
        tokio::select! {
            _ = altdb_common::shutdown::signal() => break None,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                let gone = processes
                    .iter_mut()
                    .find_map(|p| matches!(p.child.try_wait(), Ok(Some(_))).then_some(p.name));
                if gone.is_some() {
                    break gone;
                }
            }
        }
    };
    if let Some(name) = exited {
        eprintln!(
            "altdb-local: {name} exited unexpectedly; stopping the cluster (see {})",
            logs.display()
        );
    }
    println!("stopping altdb...");
    // Tailer first (no new writes), then the aggregator, then the leaves persist.
    for process in processes.iter_mut().rev() {
        stop(process, Duration::from_secs(15));
    }
    if exited.is_some() {
        std::process::exit(1);
    }
    Ok(())
}
