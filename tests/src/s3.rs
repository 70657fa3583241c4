//! A real S3-API server (s3s-fs, files on disk) on loopback, and a client to put
//! objects into it.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

pub const ACCESS_KEY: &str = "altdbtest";
pub const SECRET_KEY: &str = "altdbtestsecret";
pub const REGION: &str = "us-east-1";

/// The `s3s-fs` binary: `ALTDB_S3S_FS`, else on PATH, else `~/.cargo/bin/s3s-fs`.
fn s3s_binary() -> PathBuf {
    if let Ok(path) = std::env::var("ALTDB_S3S_FS") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH").map(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("s3s-fs"))
            .find(|p| p.exists())
    });
    if let Some(Some(path)) = on_path {
        return path;
    }
    PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/s3s-fs")
}

/// An s3s-fs server serving buckets as directories under `root`, killed on drop.
pub struct S3Server {
    pub endpoint: String,
    pub root: PathBuf,
    child: Child,
}

impl S3Server {
    /// Starts a server with the given buckets (created empty).
    pub fn start(root: &Path, buckets: &[&str], log: PathBuf) -> anyhow::Result<Self> {
        for bucket in buckets {
            std::fs::create_dir_all(root.join(bucket))?;
        }
        let port = crate::free_port();
        let binary = s3s_binary();
        let log = std::fs::File::create(&log)?;
        let child = Command::new(&binary)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--access-key",
                ACCESS_KEY,
                "--secret-key",
                SECRET_KEY,
            ])
            .arg(root)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {}; install it with `cargo install s3s-fs --features binary \
                     --locked` (.ci/run does)",
                    binary.display()
                )
            })?;
        let address = format!("127.0.0.1:{port}");
        let started = Instant::now();
        while TcpStream::connect(&address).is_err() {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("s3s-fs did not listen on {address} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            endpoint: format!("http://{address}"),
            root: root.to_path_buf(),
            child,
        })
    }

    /// The environment a tailer needs to reach this server with its credentials.
    pub fn credentials_env() -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("AWS_REGION".into(), REGION.into()),
        ]
    }

    /// A client for `bucket`, through the S3 API.
    pub fn bucket(&self, bucket: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
        let store = AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region(REGION)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .build()?;
        Ok(Arc::new(store))
    }
}

/// Puts `bytes` at `key` through the S3 API (blocking).
pub fn put(store: &Arc<dyn ObjectStore>, key: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(store.put(
            &object_store::path::Path::from(key),
            PutPayload::from(bytes),
        ))
        .with_context(|| format!("cannot put {key}"))?;
    Ok(())
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
