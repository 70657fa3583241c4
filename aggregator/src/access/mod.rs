//! Who may do what: API keys, roles and the principal of a request.
//!
//! ```text
//!  Authorization: ApiKey <key> | Bearer <key>
//!      │ SHA-256 ─► KeyStore (hashed keys, roles; metastore)        ─► Principal
//!  x-altdb-cluster-secret (tailers reading the catalog)             ─► Principal::cluster
//!  no admin key configured (authentication off)                     ─► Principal::open
//!      ▼
//!  handlers: principal.require(Action, collection)?  ─► 403 naming the privilege
//!  queries:  every collection a statement reads (planned or kept) is checked;
//!            `_dlq` rows are cut to the collections the key may read dead letters of
//! ```
//!
//! A role is a list of privileges `{action, resource}` (Rockset's custom roles);
//! `resource` is `*`, a collection name, or a prefix ending in `*`. Built-in roles:
//! `admin` (everything), `member` (everything but keys and roles), `read-only`
//! (query, dead letters, monitoring).

pub mod authn;
pub mod routes;
pub mod store;

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use altdb_common::collection::DLQ_COLLECTION;

use crate::error::{AggregatorError, Result};

/// What a privilege allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Read a collection with SQL.
    Query,
    /// Write documents into a collection.
    Write,
    /// Create and delete collections (and clear `_dlq`).
    ManageCollections,
    /// Create and revoke keys, create, change and delete roles.
    ManageKeys,
    /// Read the dead letters (`_dlq` rows) of a collection.
    ReadDlq,
    /// See the cluster's health and metrics (`GET /v1/cluster`, `/metrics`).
    Monitor,
    /// Create, version, tag and delete Query Lambdas (running one needs `query`
    /// on what it reads).
    ManageLambdas,
}

impl Action {
    pub const ALL: [Action; 7] = [
        Action::Query,
        Action::Write,
        Action::ManageCollections,
        Action::ManageKeys,
        Action::ReadDlq,
        Action::Monitor,
        Action::ManageLambdas,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::Query => "query",
            Action::Write => "write",
            Action::ManageCollections => "manage_collections",
            Action::ManageKeys => "manage_keys",
            Action::ReadDlq => "read_dlq",
            Action::Monitor => "monitor",
            Action::ManageLambdas => "manage_lambdas",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a privilege applies to: `*`, a collection name, or a prefix ending in `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Resource(String);

impl Resource {
    pub fn any() -> Self {
        Self("*".into())
    }

    /// Whether the resource covers `collection` (`*` covers system collections too).
    pub fn covers(&self, collection: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => collection.starts_with(prefix),
            None => self.0 == collection,
        }
    }

    /// Whether this resource covers every collection `other` covers.
    fn includes(&self, other: &Resource) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => other.0.starts_with(prefix),
            None => self.0 == other.0,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Resource {
    type Error = String;

    fn try_from(text: String) -> std::result::Result<Self, String> {
        let name = text.strip_suffix('*').unwrap_or(&text);
        let valid = name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if valid {
            Ok(Self(text))
        } else {
            Err(format!(
                "resource `{text}` is neither `*`, a collection name, nor a prefix of one \
                 ending in `*` (lower-case letters, digits and `_`)"
            ))
        }
    }
}

impl From<Resource> for String {
    fn from(resource: Resource) -> String {
        resource.0
    }
}

/// An action on a resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Privilege {
    pub action: Action,
    pub resource: Resource,
}

/// A named list of privileges that keys carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub privileges: Vec<Privilege>,
    /// Built in: cannot be changed or deleted (what a user sends here is ignored).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub builtin: bool,
}

/// Privileges of one role at most (each request of its keys walks them).
pub const MAX_PRIVILEGES: usize = 256;

pub const ADMIN_ROLE: &str = "admin";
pub const MEMBER_ROLE: &str = "member";
pub const READ_ONLY_ROLE: &str = "read-only";

impl Role {
    fn builtin(name: &str, description: &str, actions: &[Action]) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            privileges: actions
                .iter()
                .map(|&action| Privilege {
                    action,
                    resource: Resource::any(),
                })
                .collect(),
            builtin: true,
        }
    }

    /// `admin`, `member` and `read-only`.
    pub fn builtins() -> [Role; 3] {
        use Action::*;
        [
            Role::builtin(
                ADMIN_ROLE,
                "everything, keys and roles included",
                &Action::ALL,
            ),
            Role::builtin(
                MEMBER_ROLE,
                "everything but keys and roles",
                &[
                    Query,
                    Write,
                    ManageCollections,
                    ReadDlq,
                    Monitor,
                    ManageLambdas,
                ],
            ),
            Role::builtin(
                READ_ONLY_ROLE,
                "queries, dead letters and monitoring of every collection",
                &[Query, ReadDlq, Monitor],
            ),
        ]
    }

    /// Checks a role given by a user and says what to fix.
    pub fn validate(&self) -> Result<()> {
        valid_name("role", &self.name)?;
        if self.privileges.len() > MAX_PRIVILEGES {
            return Err(AggregatorError::InvalidRequest(format!(
                "role `{}` has {} privileges, more than {MAX_PRIVILEGES}; every request of its \
                 keys walks them, so use prefixes (`web_*`) or `*` instead",
                self.name,
                self.privileges.len()
            )));
        }
        if self.privileges.is_empty() {
            return Err(AggregatorError::InvalidRequest(format!(
                "role `{}` has no privileges; give a list such as [{{\"action\": \"query\", \
                 \"resource\": \"events\"}}]",
                self.name
            )));
        }
        Ok(())
    }
}

/// Key and role names: 1–64 of letters, digits, `_`, `-` and `.`.
pub fn valid_name(what: &str, name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if valid {
        Ok(())
    } else {
        Err(AggregatorError::InvalidRequest(format!(
            "{what} name `{name}` is invalid: use 1 to 64 letters, digits, `_`, `-` or `.`"
        )))
    }
}

/// Who made a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// An API key (stored, or the bootstrap admin key of the configuration).
    Key,
    /// Another process of the cluster (it presented the cluster secret).
    Cluster,
    /// Authentication is off: every request may do everything.
    Open,
}

/// The caller of a request and what it may do.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The key's name (`admin` for the configured admin key).
    pub name: String,
    pub role: String,
    pub kind: PrincipalKind,
    privileges: Arc<[Privilege]>,
}

/// Which dead letters a principal may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DlqScope {
    All,
    /// Those of the collections these resources cover (never empty).
    Only(Vec<Resource>),
    None,
}

impl DlqScope {
    /// Part of a kept plan's key: principals with the same scope share plans.
    pub fn fingerprint(&self) -> String {
        match self {
            DlqScope::All => String::new(),
            DlqScope::None => "-".into(),
            DlqScope::Only(resources) => resources
                .iter()
                .map(Resource::as_str)
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

impl Principal {
    pub fn new(name: &str, role: &Role, kind: PrincipalKind) -> Self {
        Self {
            name: name.to_string(),
            role: role.name.clone(),
            kind,
            privileges: role.privileges.clone().into(),
        }
    }

    /// Every request when authentication is off.
    pub fn open() -> Self {
        let [admin, ..] = Role::builtins();
        Self::new("anonymous", &admin, PrincipalKind::Open)
    }

    /// A process of the cluster (a tailer reading the catalog).
    pub fn cluster() -> Self {
        let [admin, ..] = Role::builtins();
        Self::new("cluster", &admin, PrincipalKind::Cluster)
    }

    /// Whether the principal may do `action` on `collection` (`*`: on every one).
    pub fn allows(&self, action: Action, collection: &str) -> bool {
        self.privileges.iter().any(|p| {
            p.action == action
                && if collection == "*" {
                    p.resource.as_str() == "*"
                } else {
                    p.resource.covers(collection)
                }
        })
    }

    /// Whether the principal may do `action` on some collection.
    pub fn has(&self, action: Action) -> bool {
        self.privileges.iter().any(|p| p.action == action)
    }

    /// Whether any privilege names `collection` (it may see that it exists).
    pub fn sees(&self, collection: &str) -> bool {
        if collection == DLQ_COLLECTION {
            return self.has(Action::ReadDlq);
        }
        self.privileges
            .iter()
            .any(|p| p.resource.covers(collection))
    }

    /// Ok if allowed; else 403 naming the privilege that is missing.
    pub fn require(&self, action: Action, collection: &str) -> Result<()> {
        if self.allows(action, collection) {
            return Ok(());
        }
        Err(self.forbidden(action, collection))
    }

    pub fn forbidden(&self, action: Action, collection: &str) -> AggregatorError {
        let on = if action == Action::Monitor {
            "(on any resource: it covers the whole cluster)".to_string()
        } else if collection == "*" {
            "on every collection (resource `*`)".to_string()
        } else if action == Action::ManageLambdas {
            format!("on Query Lambda `{collection}`")
        } else {
            format!("on collection `{collection}`")
        };
        AggregatorError::Forbidden(format!(
            "key `{}` (role `{}`) lacks the privilege `{action}` {on}; ask an admin for a \
             role that grants it",
            self.name, self.role
        ))
    }

    /// Checks that the principal may read `collection` with SQL: `query` on it,
    /// or for `_dlq`, `read_dlq` on some collection (its rows are cut to those).
    pub fn require_read(&self, collection: &str) -> Result<()> {
        if collection == DLQ_COLLECTION {
            if self.dlq_scope() == DlqScope::None {
                return Err(AggregatorError::Forbidden(format!(
                    "key `{}` (role `{}`) lacks the privilege `read_dlq`, which reading \
                     `{DLQ_COLLECTION}` needs; ask an admin for a role that grants it",
                    self.name, self.role
                )));
            }
            return Ok(());
        }
        self.require(Action::Query, collection)
    }

    /// The dead letters the principal may read.
    pub fn dlq_scope(&self) -> DlqScope {
        let mut resources: Vec<Resource> = Vec::new();
        for privilege in self.privileges.iter() {
            if privilege.action != Action::ReadDlq {
                continue;
            }
            if privilege.resource.as_str() == "*" {
                return DlqScope::All;
            }
            if resources.iter().any(|r| r.includes(&privilege.resource)) {
                continue;
            }
            resources.retain(|r| !privilege.resource.includes(r));
            resources.push(privilege.resource.clone());
        }
        if resources.is_empty() {
            DlqScope::None
        } else {
            resources.sort_by(|a, b| a.0.cmp(&b.0));
            DlqScope::Only(resources)
        }
    }

    /// Whether this principal sees source secrets (only the cluster's own
    /// processes do: tailers need them to connect).
    pub fn sees_secrets(&self) -> bool {
        self.kind == PrincipalKind::Cluster
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(privileges: &[(Action, &str)]) -> Role {
        Role {
            name: "custom".into(),
            description: String::new(),
            privileges: privileges
                .iter()
                .map(|(action, resource)| Privilege {
                    action: *action,
                    resource: Resource::try_from(resource.to_string()).unwrap(),
                })
                .collect(),
            builtin: false,
        }
    }

    #[test]
    fn privileges_cover_names_prefixes_and_everything() {
        let dashboard = Principal::new(
            "dash",
            &role(&[
                (Action::Query, "events"),
                (Action::Query, "web_*"),
                (Action::ReadDlq, "events"),
            ]),
            PrincipalKind::Key,
        );
        assert!(dashboard.allows(Action::Query, "events"));
        assert!(dashboard.allows(Action::Query, "web_clicks"));
        assert!(!dashboard.allows(Action::Query, "eventsx"));
        assert!(!dashboard.allows(Action::Query, "orders"));
        assert!(!dashboard.allows(Action::Query, "*"));
        assert!(!dashboard.allows(Action::Write, "events"));
        assert!(dashboard.require_read("_dlq").is_ok());
        let error = dashboard.require(Action::Write, "events").unwrap_err();
        assert_eq!(error.status().as_u16(), 403);
        assert!(error.to_string().contains("`write` on collection `events`"));
        assert!(dashboard.sees("web_x") && !dashboard.sees("orders"));

        let [admin, member, read_only] = Role::builtins();
        let admin = Principal::new("a", &admin, PrincipalKind::Key);
        assert!(Action::ALL.iter().all(|&a| admin.allows(a, "*")));
        let member = Principal::new("m", &member, PrincipalKind::Key);
        assert!(!member.has(Action::ManageKeys) && member.allows(Action::Write, "x"));
        let read_only = Principal::new("r", &read_only, PrincipalKind::Key);
        assert!(!read_only.has(Action::Write) && read_only.allows(Action::Query, "x"));
        assert_eq!(read_only.dlq_scope(), DlqScope::All);
    }

    #[test]
    fn dead_letter_scopes_keep_the_widest_resources() {
        let scope = |privileges: &[(Action, &str)]| {
            Principal::new("k", &role(privileges), PrincipalKind::Key).dlq_scope()
        };
        assert_eq!(scope(&[(Action::Query, "*")]), DlqScope::None);
        assert_eq!(
            scope(&[(Action::ReadDlq, "a"), (Action::ReadDlq, "*")]),
            DlqScope::All
        );
        let only = scope(&[
            (Action::ReadDlq, "web_x"),
            (Action::ReadDlq, "web_*"),
            (Action::ReadDlq, "orders"),
            (Action::ReadDlq, "orders"),
        ]);
        assert_eq!(only.fingerprint(), "orders,web_*");
    }

    #[test]
    fn roles_are_bounded() {
        let mut huge = role(&[(Action::Query, "a")]);
        huge.privileges = vec![huge.privileges[0].clone(); MAX_PRIVILEGES + 1];
        assert!(huge
            .validate()
            .unwrap_err()
            .to_string()
            .contains("more than"));
        assert!(role(&[]).validate().is_err());
        let mut bad_name = role(&[(Action::Query, "a")]);
        bad_name.name = "../x".into();
        assert!(bad_name.validate().is_err());
    }

    #[test]
    fn resources_must_be_names_or_prefixes() {
        for good in ["*", "events", "web_*", "_dlq"] {
            assert!(Resource::try_from(good.to_string()).is_ok(), "{good}");
        }
        for bad in ["Events", "a/b", "*x", "a**", "../x"] {
            assert!(Resource::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }
}
