//! The Arrow Flight SQL door: ADBC, JDBC (Flight SQL driver), pandas/polars and
//! DuckDB users get answers as Arrow record batches, streamed from the engine
//! with no JSON in between.
//!
//! ```text
//!  GetFlightInfo(CommandStatementQuery)  ─► engine.describe ─► schema + ticket(sql)
//!  DoGet(TicketStatementQuery)           ─► engine.run ─► Arrow IPC stream
//!  CreatePreparedStatement               ─► handle (random), dataset and parameter schemas
//!  DoPut(CommandPreparedStatementQuery)  ─► parameters bound (first row of the batch)
//!  GetFlightInfo / DoGet(prepared)       ─► engine.run with the bound values
//!  GetCatalogs / GetDbSchemas / GetTables / GetTableTypes / GetSqlInfo
//! ```
//!
//! Every call is authenticated: `authorization: Bearer <API key>`, or `Basic`
//! with the key as the password (the handshake answers with the Bearer form,
//! as clients expect). A ticket is only the statement's text: running it runs
//! it for the caller, with the caller's privileges. Prepared statements belong
//! to the key that made them, and at most [`MAX_PREPARED`] are kept (least
//! recently used go first).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    SchemaAsIpc, Ticket,
};
use base64::Engine as _;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::common::ScalarValue;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use altdb_common::lru::LruMap;
use altdb_common::metrics::Metrics;

use crate::access::authn::{audit, Client};
use crate::access::store::KeyStore;
use crate::access::Principal;
use crate::admission::Admission;
use crate::error::AggregatorError;
use crate::query::params::{positional_index, Params};
use crate::query::pg_catalog::{DATABASE, PUBLIC};
use crate::query::{Query, QueryEngine, QueryOptions};

/// Prepared statements kept at most, over all keys.
pub const MAX_PREPARED: usize = 10_000;
/// Largest message a client may send (a statement, or a row of parameters):
/// answers go out in large messages, requests are small.
const MAX_REQUEST_BYTES: usize = 16 << 20;

/// What the door answers with.
#[derive(Clone)]
pub struct Door {
    pub engine: QueryEngine,
    pub admission: Admission,
    pub metrics: Arc<Metrics>,
    pub keys: Arc<KeyStore>,
}

/// The Flight service of the door, with gRPC message limits like the leaves'.
pub fn service(door: Door) -> FlightServiceServer<FlightSqlDoor> {
    FlightServiceServer::new(FlightSqlDoor {
        door,
        prepared: Arc::new(Mutex::new(LruMap::new(MAX_PREPARED))),
        info: Arc::new(sql_info()),
    })
    .max_decoding_message_size(MAX_REQUEST_BYTES)
    .max_encoding_message_size(altdb_common::rpc::MAX_MESSAGE_BYTES)
}

/// A prepared statement: its text, who made it, its placeholders, and the
/// values bound to them so far.
#[derive(Debug, Clone)]
struct Prepared {
    sql: String,
    owner: String,
    parameters: Vec<(String, Option<DataType>)>,
    schema: SchemaRef,
    bound: Params,
}

/// The Flight SQL service.
#[derive(Clone)]
pub struct FlightSqlDoor {
    door: Door,
    prepared: Arc<Mutex<LruMap<String, Prepared>>>,
    info: Arc<SqlInfoData>,
}

fn sql_info() -> SqlInfoData {
    let mut builder = SqlInfoDataBuilder::new();
    builder.append(SqlInfo::FlightSqlServerName, "altdb");
    builder.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    builder.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    builder.append(SqlInfo::FlightSqlServerReadOnly, true);
    builder.append(SqlInfo::FlightSqlServerSql, true);
    builder.append(SqlInfo::FlightSqlServerSubstrait, false);
    builder.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    builder.append(SqlInfo::FlightSqlServerCancel, false);
    builder.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    builder
        .build()
        .expect("the SQL info of the door is well formed")
}

/// An altdb error as a gRPC status.
fn status(error: AggregatorError) -> Status {
    let message = format!("{}: {error}", error.code());
    match error {
        AggregatorError::CollectionNotFound(_) | AggregatorError::NotFound(_) => {
            Status::not_found(message)
        }
        AggregatorError::Unauthenticated(_) => Status::unauthenticated(message),
        AggregatorError::Forbidden(_) => Status::permission_denied(message),
        AggregatorError::Timeout(_) => Status::deadline_exceeded(message),
        AggregatorError::Cancelled(_) => Status::cancelled(message),
        AggregatorError::Overloaded(_) | AggregatorError::ResourcesExhausted(_) => {
            Status::resource_exhausted(message)
        }
        AggregatorError::Unavailable(_) => Status::unavailable(message),
        AggregatorError::Internal(_) => Status::internal(message),
        AggregatorError::CollectionExists(_) | AggregatorError::Conflict(_) => {
            Status::already_exists(message)
        }
        _ => Status::invalid_argument(message),
    }
}

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

impl FlightSqlDoor {
    /// The caller: the key in `authorization` (`Bearer <key>`, or `Basic` with
    /// the key as the password); with authentication off, the open principal.
    fn principal(&self, metadata: &MetadataMap, client: Client) -> Result<Principal, Status> {
        if !self.door.keys.enforced() {
            return Ok(Principal::open());
        }
        let refused = |detail: &str| {
            audit("authentication_failed", "-", client, "denied", detail);
            Status::unauthenticated(
                "flight sql: send an altdb API key as `authorization: Bearer <key>` (or as the \
                 password of Basic authentication); it is unknown, revoked or expired, or missing",
            )
        };
        let Some(header) = metadata.get("authorization").and_then(|v| v.to_str().ok()) else {
            return Err(refused("flight sql: no key"));
        };
        let key = if let Some(token) = header.strip_prefix("Bearer ") {
            token.trim().to_string()
        } else if let Some(encoded) = header.strip_prefix("Basic ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| refused("flight sql: malformed basic credentials"))?;
            match decoded.split_once(':') {
                Some((_, password)) => password.to_string(),
                None => return Err(refused("flight sql: malformed basic credentials")),
            }
        } else {
            return Err(refused("flight sql: unknown authorization scheme"));
        };
        self.door
            .keys
            .authenticate(&key)
            .ok_or_else(|| refused("flight sql: the key is not valid"))
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        self.principal(request.metadata(), Client(request.remote_addr()))
    }

    /// Runs a statement and streams its batches as Flight data.
    async fn stream(
        &self,
        sql: String,
        params: Params,
        principal: &Principal,
    ) -> Result<Response<DoGetStream>, Status> {
        let query = Query {
            sql,
            options: QueryOptions::default(),
            params,
        };
        let answer = crate::api::run_streamed(
            &self.door.engine,
            &self.door.admission,
            &self.door.metrics,
            "flight_sql",
            query,
            principal,
        )
        .await
        .map_err(status)?;
        let schema = answer.schema.clone();
        let batches = answer
            .into_stream()
            .map_err(|error| FlightError::Tonic(Box::new(status(error))));
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(Status::from);
        Ok(Response::new(Box::pin(stream)))
    }

    /// A FlightInfo for a result of `schema`, fetched with `ticket`.
    fn info(
        schema: &Schema,
        ticket: Vec<u8>,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket));
        let info = FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(format!("cannot encode the schema: {e}")))?
            .with_endpoint(endpoint)
            .with_descriptor(descriptor);
        Ok(Response::new(info))
    }

    fn lookup(&self, handle: &[u8], principal: &Principal) -> Result<Prepared, Status> {
        let handle = String::from_utf8_lossy(handle).to_string();
        let mut prepared = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
        match prepared.get(&handle) {
            Some(statement) if statement.owner == principal.name => Ok(statement.clone()),
            _ => Err(Status::not_found(
                "this prepared statement does not exist (closed, or evicted after \
                 10000 newer ones); prepare it again",
            )),
        }
    }

    /// Encodes a stream of one batch.
    fn one_batch(
        batch: datafusion::arrow::array::RecordBatch,
    ) -> Result<Response<DoGetStream>, Status> {
        let schema = batch.schema();
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::once(async { Ok(batch) }))
            .map_err(Status::from);
        Ok(Response::new(Box::pin(stream)))
    }

    /// The collections the caller may read, with their schemas.
    async fn tables(&self, principal: &Principal) -> Result<Vec<(String, SchemaRef)>, Status> {
        let mut answer = self
            .door
            .engine
            .run(
                Query::new("SELECT table_name FROM information_schema.tables ORDER BY table_name"),
                principal,
            )
            .await
            .map_err(status)?;
        let mut names = Vec::new();
        while let Some(batch) = answer.next().await {
            let batch = batch.map_err(status)?;
            let column = datafusion::arrow::compute::cast(batch.column(0), &DataType::Utf8)
                .map_err(|e| Status::internal(e.to_string()))?;
            let column = column
                .as_any()
                .downcast_ref::<datafusion::arrow::array::StringArray>()
                .ok_or_else(|| Status::internal("table names are not text"))?;
            names.extend(column.iter().flatten().map(str::to_string));
        }
        let mut tables = Vec::with_capacity(names.len());
        for name in names {
            let sql = format!("SELECT * FROM \"{}\" LIMIT 0", name.replace('"', "\"\""));
            let described = self
                .door
                .engine
                .describe(&sql, principal)
                .await
                .map_err(status)?;
            tables.push((name, described.schema));
        }
        Ok(tables)
    }
}

/// The parameter schema of a prepared statement: one field per placeholder
/// (`$1` .. in order, or `:name`), of the type its use implies (text if none).
fn parameter_schema(parameters: &[(String, Option<DataType>)]) -> Schema {
    let mut ordered: Vec<&(String, Option<DataType>)> = parameters.iter().collect();
    ordered.sort_by_key(|(id, _)| positional_index(id).unwrap_or(usize::MAX));
    Schema::new(
        ordered
            .into_iter()
            .map(|(id, data_type)| {
                Field::new(
                    id.trim_start_matches([':', '$']),
                    data_type.clone().unwrap_or(DataType::Utf8),
                    true,
                )
            })
            .collect::<Vec<_>>(),
    )
}

fn schema_bytes(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let message: IpcMessage = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e| Status::internal(format!("cannot encode a schema: {e}")))?;
    Ok(message.0)
}

#[tonic::async_trait]
impl FlightSqlService for FlightSqlDoor {
    type FlightService = FlightSqlDoor;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        self.caller(&request)?;
        // Clients send the Bearer form on every later call.
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bearer = match header.strip_prefix("Basic ") {
            Some(encoded) => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .unwrap_or_default();
                let key = decoded.split_once(':').map(|(_, k)| k).unwrap_or_default();
                format!("Bearer {key}")
            }
            None => header,
        };
        let output = futures::stream::iter(vec![Ok(HandshakeResponse {
            protocol_version: 0,
            payload: Default::default(),
        })]);
        let mut response: Response<
            Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>,
        > = Response::new(Box::pin(output));
        if let Ok(value) = bearer.parse() {
            response.metadata_mut().insert("authorization", value);
        }
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let principal = self.caller(&request)?;
        let described = self
            .door
            .engine
            .describe(&query.query, &principal)
            .await
            .map_err(status)?;
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        };
        Self::info(
            &described.schema,
            ticket.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let principal = self.caller(&request)?;
        let sql = String::from_utf8(ticket.statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("the ticket is not a statement's text"))?;
        self.stream(sql, Params::None, &principal).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let principal = self.caller(&request)?;
        let described = self
            .door
            .engine
            .describe(&query.query, &principal)
            .await
            .map_err(status)?;
        let mut random = [0u8; 16];
        getrandom::fill(&mut random).map_err(|e| Status::internal(e.to_string()))?;
        let handle: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let result = ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.clone().into_bytes().into(),
            dataset_schema: schema_bytes(&described.schema)?,
            parameter_schema: schema_bytes(&parameter_schema(&described.parameters))?,
        };
        let bound = match described.parameters.is_empty() {
            true => Params::None,
            // Nothing bound yet: running it now names the missing parameters.
            false => Params::Positional(Vec::new()),
        };
        self.prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                handle,
                Prepared {
                    sql: query.query,
                    owner: principal.name.clone(),
                    parameters: described.parameters,
                    schema: described.schema,
                    bound,
                },
            );
        Ok(result)
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let principal = self.caller(&request)?;
        let mut statement = self.lookup(&query.prepared_statement_handle, &principal)?;
        let flight_data = request.into_inner().map_err(FlightError::from);
        let mut batches =
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(flight_data);
        let mut row = None;
        while let Some(batch) = batches.next().await {
            let batch = batch.map_err(|e| Status::invalid_argument(e.to_string()))?;
            if batch.num_rows() == 0 {
                continue;
            }
            if row.is_some() || batch.num_rows() > 1 {
                return Err(Status::invalid_argument(
                    "bind one row of parameters at a time; altdb runs a prepared query once \
                     per binding",
                ));
            }
            row = Some(batch);
        }
        let Some(batch) = row else {
            return Err(Status::invalid_argument("no parameter values were sent"));
        };
        let values = batch
            .columns()
            .iter()
            .map(|column| ScalarValue::try_from_array(column, 0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let named = statement
            .parameters
            .iter()
            .any(|(id, _)| positional_index(id).is_none());
        statement.bound = if named {
            Params::Named(
                batch
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().trim_start_matches([':', '$']).to_string())
                    .zip(values)
                    .collect::<BTreeMap<_, _>>(),
            )
        } else {
            Params::Positional(values)
        };
        self.prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                String::from_utf8_lossy(&query.prepared_statement_handle).to_string(),
                statement,
            );
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(query.prepared_statement_handle),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let principal = self.caller(&request)?;
        let statement = self.lookup(&query.prepared_statement_handle, &principal)?;
        Self::info(
            &statement.schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let principal = self.caller(&request)?;
        let statement = self.lookup(&query.prepared_statement_handle, &principal)?;
        self.stream(statement.sql, statement.bound, &principal)
            .await
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        let principal = self.caller(&request)?;
        self.lookup(&query.prepared_statement_handle, &principal)?;
        self.prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&String::from_utf8_lossy(&query.prepared_statement_handle).to_string());
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        Self::info(
            &query.into_builder().schema(),
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request)?;
        let mut builder = query.into_builder();
        builder.append(DATABASE);
        Self::one_batch(
            builder
                .build()
                .map_err(|e| Status::internal(e.to_string()))?,
        )
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        Self::info(
            &query.clone().into_builder().schema(),
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request)?;
        let mut builder = query.into_builder();
        builder.append(DATABASE, PUBLIC);
        Self::one_batch(
            builder
                .build()
                .map_err(|e| Status::internal(e.to_string()))?,
        )
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        Self::info(
            &query.clone().into_builder().schema(),
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let principal = self.caller(&request)?;
        let tables = self.tables(&principal).await?;
        let mut builder = query.into_builder();
        for (name, schema) in tables {
            builder
                .append(DATABASE, PUBLIC, name, "TABLE", &schema)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        Self::one_batch(
            builder
                .build()
                .map_err(|e| Status::internal(e.to_string()))?,
        )
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        let schema = Schema::new(vec![Field::new("table_type", DataType::Utf8, false)]);
        Self::info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_table_types(
        &self,
        _query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request)?;
        let schema = Arc::new(Schema::new(vec![Field::new(
            "table_type",
            DataType::Utf8,
            false,
        )]));
        let batch = datafusion::arrow::array::RecordBatch::try_new(
            schema,
            vec![Arc::new(datafusion::arrow::array::StringArray::from(vec![
                "TABLE",
            ]))],
        )
        .map_err(|e| Status::internal(e.to_string()))?;
        Self::one_batch(batch)
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        Self::info(
            query.clone().into_builder(&self.info).schema().as_ref(),
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request)?;
        let batch = query
            .into_builder(&self.info)
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Self::one_batch(batch)
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Err(Status::unimplemented(format!(
            "altdb's Flight SQL door does not serve {}",
            message.type_url
        )))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
