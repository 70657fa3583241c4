//! `/v1/keys` and `/v1/roles`.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/keys` | `{"name", "role", "expires_at"?}` → the key, shown once |
//! | `GET /v1/keys` | names, roles, creation, expiry, last use (never the keys) |
//! | `DELETE /v1/keys/{name}` | revoke |
//! | `POST /v1/roles` | `{"name", "description"?, "privileges": [{"action", "resource"}]}` |
//! | `GET /v1/roles` | built-in and custom roles |
//! | `PUT /v1/roles/{name}` | replace a custom role's privileges |
//! | `DELETE /v1/roles/{name}` | delete a custom role no key carries |
//!
//! Every one needs `manage_keys` (on `*`), and authentication to be on.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::authn::{audit, Client};
use super::{Action, Principal, Role};
use crate::api::{json_body, AppState};
use crate::error::{AggregatorError, Result};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/keys", post(create_key).get(list_keys))
        .route("/v1/keys/{name}", axum::routing::delete(delete_key))
        .route("/v1/roles", post(create_role).get(list_roles))
        .route(
            "/v1/roles/{name}",
            axum::routing::put(put_role).delete(delete_role),
        )
}

/// `manage_keys` on everything, with authentication on.
fn manager(state: &AppState, principal: &Principal) -> Result<()> {
    if !state.auth.keys.enforced() {
        return Err(AggregatorError::InvalidRequest(
            "authentication is off, so keys would not be checked; start the aggregator with \
             admin_key_file (or ALTDB_ADMIN_KEY) to use keys and roles"
                .into(),
        ));
    }
    principal.require(Action::ManageKeys, "*")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRequest {
    name: String,
    role: String,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
}

async fn create_key(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(client): Extension<Client>,
    body: Bytes,
) -> Result<Response> {
    manager(&state, &principal)?;
    let request: KeyRequest = json_body(&body)?;
    let created = state
        .auth
        .keys
        .create_key(
            &request.name,
            &request.role,
            request.expires_at,
            &principal.name,
        )
        .await?;
    audit(
        "key_created",
        &created.record.name,
        client,
        "ok",
        &format!("role {} by {}", created.record.role, principal.name),
    );
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn list_keys(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response> {
    manager(&state, &principal)?;
    Ok(Json(serde_json::json!({ "keys": state.auth.keys.keys() })).into_response())
}

async fn delete_key(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(client): Extension<Client>,
    Path(name): Path<String>,
) -> Result<Response> {
    manager(&state, &principal)?;
    let revoked = state.auth.keys.delete_key(&name).await?;
    audit(
        "key_revoked",
        &revoked.name,
        client,
        "ok",
        &format!("by {}", principal.name),
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn create_role(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(client): Extension<Client>,
    body: Bytes,
) -> Result<Response> {
    manager(&state, &principal)?;
    let role: Role = json_body(&body)?;
    let role = state.auth.keys.put_role(role, false).await?;
    audit(
        "role_created",
        &principal.name,
        client,
        "ok",
        &format!("role {}", role.name),
    );
    Ok((StatusCode::CREATED, Json(role)).into_response())
}

async fn put_role(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(client): Extension<Client>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response> {
    manager(&state, &principal)?;
    let role: Role = json_body(&body)?;
    if role.name != name {
        return Err(AggregatorError::InvalidRequest(format!(
            "the body names role `{}` but the path `{name}`; roles cannot be renamed",
            role.name
        )));
    }
    let role = state.auth.keys.put_role(role, true).await?;
    audit(
        "role_changed",
        &principal.name,
        client,
        "ok",
        &format!("role {}", role.name),
    );
    Ok(Json(role).into_response())
}

async fn list_roles(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response> {
    manager(&state, &principal)?;
    Ok(Json(serde_json::json!({ "roles": state.auth.keys.roles() })).into_response())
}

async fn delete_role(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(client): Extension<Client>,
    Path(name): Path<String>,
) -> Result<Response> {
    manager(&state, &principal)?;
    state.auth.keys.delete_role(&name).await?;
    audit(
        "role_deleted",
        &principal.name,
        client,
        "ok",
        &format!("role {name}"),
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}
