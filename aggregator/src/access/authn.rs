//! Authentication of HTTP requests, and the audit log.
//!
//! Every route but the probes (`/livez`, `/readyz`, `/healthz`) and the
//! console's files runs [`authenticate`] first: it puts the request's
//! [`Principal`] into the request's extensions or answers 401. The audit log is
//! one line per authentication failure, refused privilege, key and role change
//! and collection creation or deletion, under the tracing target `altdb::audit`,
//! with the key's name (never the key) and the client's address.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use altdb_common::cluster_auth::{self, ClusterSecret};

use super::store::KeyStore;
use super::Principal;
use crate::error::AggregatorError;

/// What [`authenticate`] checks requests against.
#[derive(Debug, Clone)]
pub struct Authenticator {
    pub keys: Arc<KeyStore>,
    /// Other processes of the cluster (tailers reading the catalog) present it.
    pub secret: ClusterSecret,
}

/// The address a request came from, if the server recorded it.
#[derive(Debug, Clone, Copy)]
pub struct Client(pub Option<SocketAddr>);

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(address) => write!(f, "{address}"),
            None => f.write_str("unknown"),
        }
    }
}

/// Writes one audit line.
pub fn audit(event: &str, key: &str, client: Client, outcome: &str, detail: &str) {
    tracing::info!(
        target: "altdb::audit",
        event,
        key,
        client = %client,
        outcome,
        detail,
        "audit"
    );
}

/// Why a request is not authenticated (all wrong keys answer alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    NoKey,
    BadKey,
    BadClusterSecret,
}

impl Failure {
    fn error(self) -> AggregatorError {
        AggregatorError::Unauthenticated(match self {
            Failure::NoKey => "this request carries no API key; send the header \
                               `Authorization: ApiKey <key>` (or `Bearer <key>`)"
                .into(),
            Failure::BadKey => "the API key is not valid: it is unknown, revoked or expired; \
                                ask an admin for a key (POST /v1/keys)"
                .into(),
            Failure::BadClusterSecret => cluster_auth::Refusal::Wrong.message(),
        })
    }

    fn reason(self) -> &'static str {
        match self {
            Failure::NoKey => "no key",
            Failure::BadKey => "unknown, revoked or expired key",
            Failure::BadClusterSecret => "wrong cluster secret",
        }
    }
}

/// The key an `Authorization` header carries: `ApiKey <key>` or `Bearer <key>`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, key) = value.trim().split_once(' ')?;
    let known = scheme.eq_ignore_ascii_case("apikey") || scheme.eq_ignore_ascii_case("bearer");
    (known && !key.trim().is_empty()).then(|| key.trim())
}

impl Authenticator {
    /// Who sent a request with these headers.
    pub fn principal(&self, headers: &HeaderMap) -> Result<Principal, Failure> {
        if headers.contains_key(cluster_auth::HEADER) {
            return match self.secret.check_http(headers) {
                Ok(()) => Ok(Principal::cluster()),
                Err(_) => Err(Failure::BadClusterSecret),
            };
        }
        if !self.keys.enforced() {
            return Ok(Principal::open());
        }
        let key = presented_key(headers).ok_or(Failure::NoKey)?;
        self.keys.authenticate(key).ok_or(Failure::BadKey)
    }
}

/// Middleware: the request's principal into its extensions, or 401.
pub async fn authenticate(
    State(auth): State<Authenticator>,
    mut request: Request,
    next: Next,
) -> Response {
    let client = Client(
        request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0),
    );
    request.extensions_mut().insert(client);
    match auth.principal(request.headers()) {
        Ok(principal) => {
            let what = format!("{} {}", request.method(), request.uri().path());
            let name = principal.name.clone();
            request.extensions_mut().insert(principal);
            let response = next.run(request).await;
            if response.status() == axum::http::StatusCode::FORBIDDEN {
                audit("access_denied", &name, client, "refused", &what);
            }
            response
        }
        Err(failure) => {
            audit(
                "authentication_failed",
                "",
                client,
                "refused",
                &format!(
                    "{} {}: {}",
                    request.method(),
                    request.uri().path(),
                    failure.reason()
                ),
            );
            failure.error().into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_apikey_or_bearer_headers() {
        let headers = |value: &str| {
            let mut map = HeaderMap::new();
            map.insert(axum::http::header::AUTHORIZATION, value.parse().unwrap());
            map
        };
        assert_eq!(presented_key(&headers("ApiKey abc")), Some("abc"));
        assert_eq!(presented_key(&headers("bearer  abc ")), Some("abc"));
        assert_eq!(presented_key(&headers("Basic abc")), None);
        assert_eq!(presented_key(&headers("ApiKey ")), None);
        assert_eq!(presented_key(&HeaderMap::new()), None);
    }
}
