//! TLS for every server of altdb (rustls): HTTPS on the aggregator's and the
//! tailer's HTTP, and Flight (gRPC over HTTP/2, with `/metrics` and `/healthz` over
//! HTTP/1.1 on the same port) on the leaves.
//!
//! ```text
//!  TcpListener ──accept──► handshake task (10 s at most, one per connection)
//!                              │ TlsAcceptor from the current ServerConfig
//!                              ▼
//!  TlsListener::accept ◄── channel of finished handshakes ──► axum::serve
//!
//!  cert/key PEM files ──(SIGHUP, or a change seen every 5 s)──► new ServerConfig
//! ```
//!
//! Handshakes run in tasks of their own, so a client that connects and stays
//! silent holds only its own task. A reload that fails (a half-written file, a key
//! that does not match) keeps the previous certificate and logs why; connections
//! made after a successful reload present the new one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::{Error, Result};

/// Time a client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the files are checked for a change.
const WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// When the certificate and the key files were last changed.
type Stamps = (SystemTime, SystemTime);

/// A certificate chain and key, from PEM files, reloadable.
#[derive(Debug)]
pub struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    /// Protocols offered in the handshake (ALPN), most preferred first.
    alpn: Vec<Vec<u8>>,
    current: RwLock<(Arc<ServerConfig>, Option<Stamps>)>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Protocols of an HTTP/1.1 server.
pub const HTTP1: &[&[u8]] = &[b"http/1.1"];
/// Protocols of a leaf: Flight (gRPC, HTTP/2) and its plain HTTP/1.1 routes.
pub const GRPC_AND_HTTP1: &[&[u8]] = &[b"h2", b"http/1.1"];
/// The Postgres door (PostgreSQL 17 clients offer `postgresql`; older ones
/// offer no protocol, which a server with protocols still accepts).
pub const POSTGRES: &[&[u8]] = &[b"postgresql"];

/// A server configuration from a PEM certificate chain and a PEM private key.
pub fn server_config(cert: &Path, key: &Path, alpn: &[Vec<u8>]) -> Result<ServerConfig> {
    let invalid = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        Error::InvalidConfig(format!(
            "TLS {what} {} cannot be used: {e}; give a PEM file",
            path.display()
        ))
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| invalid("certificate", cert, &e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| invalid("certificate", cert, &e))?;
    if chain.is_empty() {
        return Err(invalid("certificate", cert, &"it holds no certificate"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| invalid("key", key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidConfig(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            Error::InvalidConfig(format!(
                "TLS certificate {} and key {} do not go together: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}

impl TlsFiles {
    /// Loads `cert` and `key` for a server speaking `alpn`; fails with what to fix.
    pub fn load(cert: &Path, key: &Path, alpn: &[&[u8]]) -> Result<Arc<Self>> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let stamps = modified(cert).zip(modified(key));
        let config = server_config(cert, key, &alpn)?;
        Ok(Arc::new(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            alpn,
            current: RwLock::new((Arc::new(config), stamps)),
        }))
    }

    /// The configuration new connections get.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// Loads the files again (`force`: even if they look unchanged); keeps the
    /// current configuration if they cannot be used.
    pub fn reload(&self, force: bool) -> Result<bool> {
        let stamps = modified(&self.cert).zip(modified(&self.key));
        if !force && stamps == self.current.read().unwrap_or_else(|p| p.into_inner()).1 {
            return Ok(false);
        }
        let config = server_config(&self.cert, &self.key, &self.alpn)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (Arc::new(config), stamps);
        Ok(true)
    }

    /// Reloads on SIGHUP and when the files change, for as long as the process runs.
    pub fn watch(self: &Arc<Self>) {
        let files = self.clone();
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                #[cfg(unix)]
                let forced = match hangup.as_mut() {
                    Some(signal) => tokio::select! {
                        _ = signal.recv() => true,
                        _ = tokio::time::sleep(WATCH_INTERVAL) => false,
                    },
                    None => {
                        tokio::time::sleep(WATCH_INTERVAL).await;
                        false
                    }
                };
                #[cfg(not(unix))]
                let forced = {
                    tokio::time::sleep(WATCH_INTERVAL).await;
                    false
                };
                match files.reload(forced) {
                    Ok(true) => {
                        tracing::info!(cert = %files.cert.display(), "reloaded the TLS certificate")
                    }
                    Ok(false) => {}
                    Err(error) => tracing::warn!(%error, "kept the previous TLS certificate"),
                }
            }
        });
    }
}

/// A listener whose connections are TLS sessions, for `axum::serve`.
#[derive(Debug)]
pub struct TlsListener {
    handshaken: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `listener`; each connection's handshake runs in a task of its own.
    pub fn new(listener: TcpListener, files: Arc<TlsFiles>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (sender, handshaken) = mpsc::channel(64);
        tokio::spawn(async move {
            while !sender.is_closed() {
                let (tcp, address) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: wait, then go on.
                        tracing::warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = TlsAcceptor::from(files.current());
                let sender = sender.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = sender.send((stream, address)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%address, %error, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%address, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { handshaken, local })
    }
}

impl TlsListener {
    /// The sessions as a stream, for `tonic`'s `serve_with_incoming`.
    pub fn into_incoming(
        self,
    ) -> impl futures::Stream<Item = std::io::Result<TlsStream<TcpStream>>> + Send + 'static {
        futures::stream::unfold(self.handshaken, |mut handshaken| async move {
            let (stream, _) = handshaken.recv().await?;
            Some((Ok(stream), handshaken))
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(connection) => connection,
            // The accepting task ended (it does not, while this listener lives).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Whether a listen address reaches only this machine.
pub fn is_loopback(address: &SocketAddr) -> bool {
    address.ip().is_loopback()
}

/// Serves `app` on `listener` until `shutdown`: HTTPS when `tls` is given, else
/// plain HTTP; handlers can read the client's address (`ConnectInfo<SocketAddr>`).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<TlsFiles>>,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        Some(files) => {
            files.watch();
            // (Tapped with nothing: axum gives connect info to tapped listeners.)
            let listener = TlsListener::new(listener, files)?.tap_io(|_| {});
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            // Small JSON answers must not wait out the client's delayed ACK.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// The TLS files a role's configuration names: both or neither.
pub fn from_config(
    cert: Option<&Path>,
    key: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<Option<Arc<TlsFiles>>> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => TlsFiles::load(cert, key, alpn).map(Some),
        _ => Err(Error::InvalidConfig(
            "set both tls_cert_file and tls_key_file (PEM), or neither".into(),
        )),
    }
}

/// The CA certificates of `tls_ca_file`, read once at start.
pub fn read_ca(ca_file: Option<&Path>) -> Result<Option<Vec<u8>>> {
    ca_file
        .map(|path| {
            std::fs::read(path).map_err(|e| {
                Error::InvalidConfig(format!("cannot read tls_ca_file {}: {e}", path.display()))
            })
        })
        .transpose()
}

/// An HTTP client for calls to other processes of the cluster: it presents the
/// cluster secret, and trusts the CA certificates of `ca_file` (PEM) for those
/// served over HTTPS.
pub fn internal_client(
    secret: &crate::cluster_auth::ClusterSecret,
    ca_file: Option<&Path>,
    timeout: Duration,
) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(timeout).default_headers(
        reqwest::header::HeaderMap::from_iter([(
            reqwest::header::HeaderName::from_static(crate::cluster_auth::HEADER),
            secret.header_value(),
        )]),
    );
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            Error::InvalidConfig(format!("cannot read tls_ca_file {}: {e}", path.display()))
        })?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            Error::InvalidConfig(format!(
                "tls_ca_file {} holds no usable PEM certificate: {e}",
                path.display()
            ))
        })?;
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .build()
        .map_err(|e| Error::InvalidConfig(format!("cannot build the HTTP client: {e}")))
}
