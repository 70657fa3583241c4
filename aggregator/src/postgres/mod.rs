//! The Postgres wire protocol door: psql, Grafana, Superset, Metabase, DBeaver,
//! psycopg, asyncpg, SQLAlchemy and JDBC connect to the aggregator as to a
//! Postgres server (built on the `pgwire` crate).
//!
//! ```text
//!  client ──TCP──► [TLS if asked and configured] ──► startup: the password is
//!  an API key (KeyStore::authenticate; any user name; checked again at every
//!  statement, so revocation and role changes reach open sessions) ──► session
//!    simple query:   split at `;` ─► each: session command | engine.run ─► text rows
//!    extended query: Parse (engine.describe: parameter and column types)
//!                    Bind ($1.. decoded as their types) ─► Execute (engine.run)
//!                    ─► rows in the format each column asked (text or binary)
//!    CancelRequest:  (pid, secret) ─► the session's running statement stops
//! ```
//!
//! Session commands (`BEGIN`, `SET`, `SHOW`, a statement of only comments, ..)
//! are answered here ([`session`]); everything else is a query for the engine,
//! with the same privileges, admission, limits and plans as over HTTP. The
//! `pg_catalog` and `information_schema` tables clients browse are in the
//! engine ([`crate::query::pg_catalog`]).

pub mod session;
pub mod types;

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use futures::sink::Sink;
use futures::StreamExt;
use pgwire::api::auth::driver::AuthOutcome;
use pgwire::api::auth::mechanism::{AuthMechanism, AuthState};
use pgwire::api::auth::{
    protocol_negotiation, save_startup_parameters_to_metadata, AuthDriver,
    DefaultServerParameterProvider, StartupHandler,
};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    DataRowEncoder, DescribePortalResponse, DescribeStatementResponse, FieldInfo, QueryResponse,
    Response, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::{ClientInfo, ClientPortalStore, ConnectionManager, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::{Authentication, PasswordMessageFamily};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use altdb_common::metrics::Metrics;
use altdb_common::tls::TlsFiles;

use crate::access::authn::{audit, Client};
use crate::access::store::KeyStore;
use crate::access::Principal;
use crate::admission::Admission;
use crate::error::AggregatorError;
use crate::query::params::{positional_index, Params};
use crate::query::{Query, QueryEngine, QueryOptions};
use session::{Command, Settings};

/// What the door answers with.
#[derive(Clone)]
pub struct Door {
    pub engine: QueryEngine,
    pub admission: Admission,
    pub metrics: Arc<Metrics>,
    pub keys: Arc<KeyStore>,
}

/// Connections the door serves at once (Postgres's `max_connections` is 100);
/// more are closed at once, with a warning in the log.
pub const MAX_CONNECTIONS: usize = 512;

/// Serves the door on `listener` until `stop` flips (then it takes no new
/// connection; open ones go on until the process exits); TLS when `tls` is
/// given (clients ask with `sslmode=require`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    door: Door,
    tls: Option<Arc<TlsFiles>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let manager = Arc::new(ConnectionManager::new());
    let handlers = Arc::new(Handlers::new(door, manager));
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let (socket, _) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "postgres door: cannot accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(
                "postgres door: {MAX_CONNECTIONS} connections are open; closing a new one \
                 (use a connection pool)"
            );
            drop(socket);
            continue;
        };
        let acceptor = tls
            .as_ref()
            .map(|files| tokio_rustls::TlsAcceptor::from(files.current()));
        let handlers = handlers.clone();
        tokio::spawn(async move {
            if let Err(error) = pgwire::tokio::process_socket(socket, acceptor, handlers).await {
                tracing::debug!(%error, "postgres connection ended");
            }
            drop(permit);
        });
    }
}

/// The handlers of every connection.
struct Handlers {
    startup: Arc<Startup>,
    queries: Arc<Queries>,
    cancel: Arc<DefaultCancelHandler>,
}

impl Handlers {
    fn new(door: Door, manager: Arc<ConnectionManager>) -> Self {
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = session::SERVER_VERSION.to_string();
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        Self {
            startup: Arc::new(Startup {
                driver: AuthDriver::new(parameters).with_connection_manager(manager.clone()),
                keys: door.keys.clone(),
            }),
            queries: Arc::new(Queries {
                parser: Arc::new(Parser {
                    engine: door.engine.clone(),
                    keys: door.keys.clone(),
                }),
                door,
            }),
            cancel: Arc::new(DefaultCancelHandler::new(manager)),
        }
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.queries.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.queries.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }
}

/// A Postgres error with a SQLSTATE code.
pub fn user_error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        code.to_string(),
        message.into(),
    )))
}

/// An altdb error as a Postgres one: the SQLSTATE closest to its meaning.
fn pg_error(error: AggregatorError) -> PgWireError {
    let code = match &error {
        AggregatorError::InvalidRequest(_) => "22023",
        AggregatorError::CollectionNotFound(_) => "42P01",
        AggregatorError::CollectionExists(_) => "42P07",
        AggregatorError::InvalidSql(_) => "42601",
        AggregatorError::UnknownColumn(_) => "42703",
        AggregatorError::InvalidParameter(_) => "22023",
        AggregatorError::Unavailable(_) => "57P03",
        AggregatorError::Timeout(_) | AggregatorError::Cancelled(_) => "57014",
        AggregatorError::ResourcesExhausted(_) => "53200",
        AggregatorError::Overloaded(_) => "53300",
        AggregatorError::Unauthenticated(_) => "28000",
        AggregatorError::Forbidden(_) => "42501",
        AggregatorError::NotFound(_) => "42704",
        AggregatorError::Conflict(_) => "55000",
        AggregatorError::Internal(_) => "XX000",
    };
    let mut info = ErrorInfo::new("ERROR".to_string(), code.to_string(), error.to_string());
    info.detail = Some(format!("altdb error code: {}", error.code()));
    PgWireError::UserError(Box::new(info))
}

// ---- startup: the password is an API key ----

/// Authenticates a connection by the API key it gives as its password.
struct Startup {
    driver: AuthDriver<DefaultServerParameterProvider, SessionKey>,
    keys: Arc<KeyStore>,
}

/// Cleartext password exchange checked against the key store; with
/// authentication off, every connection is let in as the open principal.
struct KeyMechanism {
    keys: Arc<KeyStore>,
}

#[async_trait]
impl AuthMechanism<SessionKey> for KeyMechanism {
    async fn begin(
        &mut self,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> PgWireResult<AuthState<SessionKey>> {
        if !self.keys.enforced() {
            return Ok(AuthState::Ok {
                final_message: None,
                identity: Some(SessionKey(None)),
            });
        }
        Ok(AuthState::InProgress(Authentication::CleartextPassword))
    }

    async fn next(
        &mut self,
        client: &(dyn ClientInfo + Send + Sync),
        message: PasswordMessageFamily,
    ) -> PgWireResult<AuthState<SessionKey>> {
        let password = message.into_password()?;
        let user = client.metadata().get("user").cloned().unwrap_or_default();
        match self.keys.authenticate(&password.password) {
            Some(_) => Ok(AuthState::Ok {
                final_message: None,
                identity: Some(SessionKey(Some(password.password))),
            }),
            None => {
                audit(
                    "authentication_failed",
                    "-",
                    Client(Some(client.socket_addr())),
                    "denied",
                    "postgres: the password is not a valid API key",
                );
                Ok(AuthState::Failed(user_error(
                    "28P01",
                    format!(
                        "password authentication failed for user \"{user}\": the password must \
                         be an altdb API key (the user name is not checked)"
                    ),
                )))
            }
        }
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let outcome = match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                let mechanism: Box<dyn AuthMechanism<SessionKey>> = Box::new(KeyMechanism {
                    keys: self.keys.clone(),
                });
                self.driver.begin_authentication(client, mechanism).await?
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                self.driver.advance_authentication(client, message).await?
            }
            _ => return Ok(()),
        };
        if let AuthOutcome::Authenticated {
            identity,
            final_message,
        } = outcome
        {
            let key = identity.unwrap_or(SessionKey(None));
            client.session_extensions().insert(key);
            client.session_extensions().insert(Settings::default());
            self.driver
                .complete_authentication(client, final_message)
                .await?;
        }
        Ok(())
    }
}

/// The key a session authenticated with (none: authentication is off).
/// Statements check it again, so a revoked or expired key, or a changed role,
/// applies to sessions already open from their next statement on.
struct SessionKey(Option<String>);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

/// The principal of a session's key now.
fn principal<C: ClientInfo>(client: &C, keys: &KeyStore) -> PgWireResult<Principal> {
    let Some(key) = client.session_extensions().get::<SessionKey>() else {
        return Err(user_error("28000", "the connection is not authenticated"));
    };
    match &key.0 {
        None => Ok(Principal::open()),
        Some(key) => keys.authenticate(key).ok_or_else(|| {
            let mut info = ErrorInfo::new(
                "FATAL".to_string(),
                "28000".to_string(),
                "the API key of this session was revoked or has expired; reconnect with a \
                 valid key"
                    .to_string(),
            );
            info.detail = Some("altdb error code: unauthenticated".to_string());
            PgWireError::UserError(Box::new(info))
        }),
    }
}

fn settings<C: ClientInfo>(client: &C) -> Arc<Settings> {
    client
        .session_extensions()
        .get_or_insert_with(Settings::default)
}

// ---- statements ----

/// A parsed statement of the extended protocol.
#[derive(Debug, Clone)]
pub struct PgStatement {
    sql: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Command(Command),
    Query {
        /// `$1`, `$2`, .. in order, with the types their use implies.
        parameters: Vec<Option<DataType>>,
        schema: SchemaRef,
    },
}

/// Plans statements at Parse time, to describe them.
struct Parser {
    engine: QueryEngine,
    keys: Arc<KeyStore>,
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = PgStatement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<PgStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        if let Some(command) = session::command(sql) {
            if command == Command::Empty {
                return Ok(None);
            }
            return Ok(Some(PgStatement {
                sql: sql.to_string(),
                kind: Kind::Command(command),
            }));
        }
        let principal = principal(client, &self.keys)?;
        let described = self
            .engine
            .describe(sql, &principal)
            .await
            .map_err(pg_error)?;
        let mut parameters: Vec<Option<DataType>> = Vec::new();
        for (id, data_type) in described.parameters {
            let Some(index) = positional_index(&id) else {
                return Err(user_error(
                    "42601",
                    format!("placeholder `{id}`: use $1, $2, .. over the Postgres protocol"),
                ));
            };
            if parameters.len() <= index {
                parameters.resize(index + 1, None);
            }
            parameters[index] = data_type;
        }
        Ok(Some(PgStatement {
            sql: sql.to_string(),
            kind: Kind::Query {
                parameters,
                schema: described.schema,
            },
        }))
    }

    fn get_parameter_types(&self, statement: &PgStatement) -> PgWireResult<Vec<Type>> {
        Ok(match &statement.kind {
            Kind::Query { parameters, .. } => parameters
                .iter()
                .map(|inferred| types::parameter_type(None, inferred.as_ref()))
                .collect(),
            Kind::Command(_) => Vec::new(),
        })
    }

    fn get_result_schema(
        &self,
        statement: &PgStatement,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let format = format.cloned().unwrap_or(Format::UnifiedText);
        Ok(match &statement.kind {
            Kind::Query { schema, .. } => types::fields(schema, &format),
            Kind::Command(Command::Show(name)) => vec![FieldInfo::new(
                name.clone(),
                None,
                None,
                Type::TEXT,
                format.format_for(0),
            )],
            Kind::Command(_) => Vec::new(),
        })
    }
}

/// Runs statements of both protocols.
struct Queries {
    door: Door,
    parser: Arc<Parser>,
}

impl Queries {
    /// Runs a query and answers its rows as `format` asks.
    async fn run(
        &self,
        sql: &str,
        params: Params,
        format: &Format,
        principal: &Principal,
    ) -> PgWireResult<Response> {
        let query = Query {
            sql: sql.to_string(),
            options: QueryOptions::default(),
            params,
        };
        let answer = crate::api::run_streamed(
            &self.door.engine,
            &self.door.admission,
            &self.door.metrics,
            "postgres",
            query,
            principal,
        )
        .await
        .map_err(pg_error)?;
        let fields = Arc::new(types::fields(&answer.schema, format));
        let rows_fields = fields.clone();
        let rows = answer
            .into_stream()
            .map(move |batch| match batch {
                Ok(batch) => futures::stream::iter(types::encode_batch(&batch, &rows_fields)),
                Err(error) => futures::stream::iter(vec![Err(pg_error(error))]),
            })
            .flatten();
        Ok(Response::Query(QueryResponse::new(fields, rows)))
    }

    /// Answers a session command.
    fn command<C: ClientInfo>(
        client: &C,
        command: &Command,
        format: &Format,
    ) -> PgWireResult<Response> {
        let settings = settings(client);
        Ok(match command {
            Command::Empty => Response::EmptyQuery,
            Command::Begin => Response::TransactionStart(Tag::new("BEGIN")),
            Command::Commit => Response::TransactionEnd(Tag::new("COMMIT")),
            Command::Rollback => Response::TransactionEnd(Tag::new("ROLLBACK")),
            Command::Set { name, value } => {
                settings.set(name, value);
                Response::Execution(Tag::new("SET"))
            }
            Command::Reset(name) => {
                settings.reset(name);
                Response::Execution(Tag::new("RESET"))
            }
            Command::Tag(tag) => Response::Execution(Tag::new(tag)),
            Command::Show(name) => {
                let Some(value) = settings.get(name) else {
                    return Err(user_error(
                        "42704",
                        format!("unrecognized configuration parameter \"{name}\""),
                    ));
                };
                let fields = Arc::new(vec![FieldInfo::new(
                    name.clone(),
                    None,
                    None,
                    Type::TEXT,
                    format.format_for(0),
                )]);
                let mut encoder = DataRowEncoder::new(fields.clone());
                encoder.encode_field(&value)?;
                let row = encoder.take_row();
                Response::Query(QueryResponse::new(
                    fields,
                    futures::stream::iter(vec![Ok(row)]),
                ))
            }
        })
    }
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, sql: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let principal = principal(client, &self.door.keys)?;
        let mut responses = Vec::new();
        for statement in session::split_statements(sql) {
            let response = match session::command(&statement) {
                Some(command) => Self::command(client, &command, &types::TEXT),
                None => {
                    self.run(&statement, Params::None, &types::TEXT, &principal)
                        .await
                }
            };
            match response {
                Ok(response) => responses.push(response),
                Err(PgWireError::UserError(info)) => {
                    // Postgres stops a simple query's statements at the first error.
                    responses.push(Response::Error(info));
                    break;
                }
                Err(other) => return Err(other),
            }
        }
        Ok(responses)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = PgStatement;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<PgStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stored: &StoredStatement<PgStatement> = &portal.statement;
        let statement = &stored.statement;
        match &statement.kind {
            Kind::Command(command) => Self::command(client, command, &portal.result_column_format),
            Kind::Query { parameters, .. } => {
                let principal = principal(client, &self.door.keys)?;
                if portal.parameter_len() != parameters.len() {
                    return Err(user_error(
                        "08P01",
                        format!(
                            "bind message supplies {} parameters, but the statement needs {}",
                            portal.parameter_len(),
                            parameters.len()
                        ),
                    ));
                }
                let mut values = Vec::with_capacity(parameters.len());
                for (index, inferred) in parameters.iter().enumerate() {
                    let declared = stored.parameter_types.get(index).and_then(|t| t.as_ref());
                    let pg = types::parameter_type(declared, inferred.as_ref());
                    values.push(types::parameter_value(
                        portal,
                        index,
                        &pg,
                        inferred.as_ref(),
                    )?);
                }
                let params = match values.is_empty() {
                    true => Params::None,
                    false => Params::Positional(values),
                };
                self.run(
                    &statement.sql,
                    params,
                    &portal.result_column_format,
                    &principal,
                )
                .await
            }
        }
    }

    async fn do_describe_statement<C>(
        &self,
        _client: &mut C,
        target: &StoredStatement<PgStatement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let parser = &self.parser;
        let inferred = parser.get_parameter_types(&target.statement)?;
        let parameters = inferred
            .iter()
            .enumerate()
            .map(|(index, inferred)| {
                target
                    .parameter_types
                    .get(index)
                    .and_then(|t| t.clone())
                    .filter(|t| *t != Type::UNKNOWN)
                    .unwrap_or_else(|| inferred.clone())
            })
            .collect();
        let fields = parser.get_result_schema(&target.statement, None)?;
        Ok(DescribeStatementResponse::new(parameters, fields))
    }

    async fn do_describe_portal<C>(
        &self,
        _client: &mut C,
        portal: &Portal<PgStatement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let fields = self.parser.get_result_schema(
            &portal.statement.statement,
            Some(&portal.result_column_format),
        )?;
        Ok(DescribePortalResponse::new(fields))
    }
}
