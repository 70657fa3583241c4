//! Graceful shutdown: the signal that starts it, an HTTP server that runs
//! until then, and the deadline of the grace period that follows.

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

/// The end of a shutdown's grace period.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(std::time::Instant);

impl Deadline {
    pub fn after(grace: std::time::Duration) -> Self {
        Self(std::time::Instant::now() + grace)
    }

    /// Time left until the deadline (zero once past it).
    pub fn left(&self) -> std::time::Duration {
        self.0.saturating_duration_since(std::time::Instant::now())
    }

    /// Runs `work` until the deadline at the latest; says so if it had to be
    /// cut short.
    pub async fn within<T>(
        &self,
        what: &str,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        match tokio::time::timeout(self.left(), work).await {
            Ok(done) => Some(done),
            Err(_) => {
                tracing::warn!(
                    "{what} did not finish within the shutdown grace period; stopping anyway"
                );
                None
            }
        }
    }
}

/// A role's HTTP server, asked to stop.
pub type Stopping = tokio::task::JoinHandle<std::io::Result<()>>;

/// Serves `app` on `listener` until SIGTERM or Ctrl-C; then `readiness` says
/// "shutting down" and the server task is returned: it stops accepting once
/// `stop` flips and ends when the requests in flight are answered (await it
/// within the grace period). An error if the server stopped by itself first.
pub async fn serve_until_signal(
    listener: tokio::net::TcpListener,
    tls: Option<std::sync::Arc<crate::tls::TlsFiles>>,
    app: axum::Router,
    readiness: &crate::probes::Readiness,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<Stopping> {
    let mut server = tokio::spawn(crate::tls::serve(listener, tls, app, async move {
        let _ = stop.changed().await;
    }));
    tokio::select! {
        _ = signal() => {}
        served = &mut server => {
            served.map_err(std::io::Error::other)??;
            return Err(std::io::Error::other("the HTTP server stopped"));
        }
    }
    readiness.stop();
    Ok(server)
}
