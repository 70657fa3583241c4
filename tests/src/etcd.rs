//! A real etcd on loopback (Debian's `etcd-server`), for the metastore tests.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::free_port;

/// A single-member etcd; killed when dropped.
pub struct Etcd {
    /// `127.0.0.1:port`, for `etcd://` metastore URLs.
    pub address: String,
    child: Child,
}

impl Etcd {
    /// Starts etcd with its data and log under `dir`; returns once it answers.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let binary = std::env::var("ALTDB_ETCD").unwrap_or_else(|_| "etcd".into());
        let (client, peer) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.join("etcd.log"))?;
        let child = Command::new(&binary)
            .args([
                "--name",
                "altdb-test",
                "--data-dir",
                &dir.join("etcd").display().to_string(),
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &format!("altdb-test={peer_url}"),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {binary}: install Debian's etcd-server (scripts/setup.sh --test)"
                )
            })?;
        let etcd = Self {
            address: format!("127.0.0.1:{client}"),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let health = format!("{client_url}/health");
        loop {
            if let Ok(response) = reqwest::blocking::get(&health) {
                if response.status().is_success() {
                    return Ok(etcd);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd did not become healthy:\n{}",
                    std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The metastore URL of this etcd under `prefix`.
    pub fn metastore_url(&self, prefix: &str) -> String {
        format!("etcd://{}/{prefix}", self.address)
    }

    /// Sends a signal (`STOP`, `CONT`, ..) with `kill(1)`.
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} failed");
        Ok(())
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
