//! The cluster secret: every call between altdb's roles carries it, every role checks it.
//!
//! ```text
//!  aggregator ──Flight + x-altdb-cluster-secret──► leaf
//!  tailer     ──Flight + x-altdb-cluster-secret──► leaf
//!  aggregator ──HTTP   + x-altdb-cluster-secret──► tailer (forwarded writes)
//!  tailer     ──HTTP   + x-altdb-cluster-secret──► aggregator (catalog reads)
//! ```
//!
//! The secret is shared text (at least [`MIN_LEN`] characters) given to every process
//! as `cluster_secret_file` (preferred: it stays out of `ps` and environment dumps) or
//! `ALTDB_CLUSTER_SECRET`. A process without one refuses to start. Checks compare
//! SHA-256 digests in constant time, so neither the length nor a prefix of the secret
//! leaks through response times. Without TLS the secret crosses the network in clear
//! text: run the cluster on a private network (a Kubernetes namespace with a network
//! policy), as the README's security section says.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The header (HTTP) and metadata key (gRPC) that carries the secret.
pub const HEADER: &str = "x-altdb-cluster-secret";
/// Shortest secret accepted.
pub const MIN_LEN: usize = 16;

/// The shared secret of a cluster. `Debug` never prints it.
#[derive(Clone)]
pub struct ClusterSecret {
    value: Arc<str>,
    digest: [u8; 32],
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Wrong,
}

impl Refusal {
    /// What the caller is told: what is wrong and what to fix.
    pub fn message(self) -> String {
        let what = match self {
            Refusal::Missing => "carried no cluster secret",
            Refusal::Wrong => "carried a wrong cluster secret",
        };
        format!(
            "only processes of this altdb cluster may call this endpoint, and the call {what} \
             (header {HEADER}); give every leaf, tailer and aggregator the same \
             cluster_secret_file or ALTDB_CLUSTER_SECRET"
        )
    }
}

impl ClusterSecret {
    /// A secret from its text: at least [`MIN_LEN`] visible ASCII characters (it
    /// travels in a header).
    pub fn new(value: &str) -> Result<Self> {
        let value = value.trim();
        if value.len() < MIN_LEN {
            return Err(Error::InvalidConfig(format!(
                "the cluster secret must be at least {MIN_LEN} characters long (it has {}); \
                 generate one with `head -c 32 /dev/urandom | base64`",
                value.len()
            )));
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::InvalidConfig(
                "the cluster secret may hold visible ASCII characters only (it is sent as a \
                 header); generate one with `head -c 32 /dev/urandom | base64`"
                    .into(),
            ));
        }
        Ok(Self {
            value: value.into(),
            digest: Sha256::digest(value.as_bytes()).into(),
        })
    }

    /// The secret a role's configuration gives: the file's content, or the text
    /// (`ALTDB_CLUSTER_SECRET`); exactly one of them.
    pub fn from_config(text: &str, file: Option<&Path>) -> Result<Self> {
        match (text.trim().is_empty(), file) {
            (true, None) => Err(Error::InvalidConfig(
                "no cluster secret: every altdb process needs the same one to talk to the \
                 others; set cluster_secret_file (flag --cluster-secret-file) or \
                 ALTDB_CLUSTER_SECRET (altdb-local generates one for its processes)"
                    .into(),
            )),
            (false, Some(_)) => Err(Error::InvalidConfig(
                "both cluster_secret and cluster_secret_file are set; keep one".into(),
            )),
            (false, None) => Self::new(text),
            (true, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::InvalidConfig(format!(
                        "cannot read the cluster secret file {}: {e}",
                        path.display()
                    ))
                })?;
                Self::new(&text)
            }
        }
    }

    /// A new random secret (256 bits, hex).
    pub fn generate() -> Result<Self> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| Error::InvalidConfig(format!("no random numbers for a secret: {e}")))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Self::new(&hex)
    }

    /// The secret's text, to send or to write to a file.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Whether `presented` (a header's value) is the secret.
    pub fn check(&self, presented: Option<&[u8]>) -> Result<(), Refusal> {
        let presented = presented.ok_or(Refusal::Missing)?;
        let digest: [u8; 32] = Sha256::digest(presented).into();
        // Constant time: every byte is compared whatever the first difference.
        let difference = digest
            .iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if difference == 0 {
            Ok(())
        } else {
            Err(Refusal::Wrong)
        }
    }

    /// The secret as an HTTP header value, marked sensitive (never logged).
    pub fn header_value(&self) -> http::HeaderValue {
        let mut value =
            http::HeaderValue::from_str(&self.value).expect("visible ASCII is a valid header");
        value.set_sensitive(true);
        value
    }

    /// Checks the secret of an HTTP request.
    pub fn check_http(&self, headers: &http::HeaderMap) -> Result<(), Refusal> {
        self.check(headers.get(HEADER).map(|v| v.as_bytes()))
    }
}

/// A gRPC server interceptor that refuses calls without the secret.
#[derive(Debug, Clone)]
pub struct RequireSecret(pub ClusterSecret);

impl tonic::service::Interceptor for RequireSecret {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match self
            .0
            .check(request.metadata().get(HEADER).map(|v| v.as_bytes()))
        {
            Ok(()) => Ok(request),
            Err(refusal) => Err(tonic::Status::unauthenticated(refusal.message())),
        }
    }
}

/// A gRPC client interceptor that adds the secret to every call.
#[derive(Debug, Clone)]
pub struct AttachSecret(pub ClusterSecret);

impl tonic::service::Interceptor for AttachSecret {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let value = tonic::metadata::MetadataValue::try_from(self.0.expose())
            .map_err(|e| tonic::Status::internal(format!("cluster secret: {e}")))?;
        request.metadata_mut().insert(HEADER, value);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_secret_passes() {
        let secret = ClusterSecret::new("0123456789abcdef-secret").unwrap();
        assert_eq!(secret.check(Some(b"0123456789abcdef-secret")), Ok(()));
        assert_eq!(
            secret.check(Some(b"0123456789abcdef-secreT")),
            Err(Refusal::Wrong)
        );
        assert_eq!(secret.check(Some(b"")), Err(Refusal::Wrong));
        assert_eq!(secret.check(None), Err(Refusal::Missing));
        assert!(!format!("{secret:?}").contains("0123"));
    }

    #[test]
    fn weak_or_missing_secrets_are_refused_with_what_to_do() {
        let short = ClusterSecret::new("short").unwrap_err().to_string();
        assert!(short.contains("at least 16"), "{short}");
        let spaces = ClusterSecret::new("0123456789 abcdef")
            .unwrap_err()
            .to_string();
        assert!(spaces.contains("visible ASCII"), "{spaces}");
        let none = ClusterSecret::from_config("", None)
            .unwrap_err()
            .to_string();
        assert!(none.contains("cluster_secret_file"), "{none}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "0123456789abcdef0123\n").unwrap();
        let from_file = ClusterSecret::from_config("", Some(&file)).unwrap();
        assert_eq!(from_file.expose(), "0123456789abcdef0123");
        assert!(ClusterSecret::from_config("0123456789abcdef0123", Some(&file)).is_err());
        let generated = ClusterSecret::generate().unwrap();
        assert_eq!(generated.expose().len(), 64);
        assert_ne!(
            generated.expose(),
            ClusterSecret::generate().unwrap().expose()
        );
    }
}
