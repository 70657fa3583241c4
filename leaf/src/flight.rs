//! The leaf's Arrow Flight service: writes (DoPut), fragments (DoGet), admin (DoAction).

use std::sync::Arc;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status, Streaming};

use altdb_common::rpc::{
    metadata_message, put_rows, CollectionRequest, CollectionSettingsRequest, CopyShardRequest,
    CreateCollectionRequest, FragmentMetrics, FragmentTicket, PutHeader, RangeDocsRequest,
    ShardDigestsRequest, WatermarksRequest, ACTION_COLLECTION_SETTINGS, ACTION_COLLECTION_STATS,
    ACTION_COPY_SHARD, ACTION_CREATE_COLLECTION, ACTION_DROP_COLLECTION, ACTION_HEALTH,
    ACTION_RANGE_DOCS, ACTION_SHARD_DIGESTS, ACTION_WATERMARKS,
};

use crate::error::LeafError;
use crate::exec::fragment::{run_fragment, FragmentRun};
use crate::node::{Leaf, WriteTo};
use crate::store::CollectionMeta;

/// Serves a [`Leaf`] over Arrow Flight.
pub struct LeafService {
    leaf: Arc<Leaf>,
    /// Largest DoPut stream accepted (it is buffered whole).
    max_put_bytes: usize,
}

impl LeafService {
    pub fn new(leaf: Arc<Leaf>, max_put_bytes: usize) -> Self {
        Self {
            leaf,
            max_put_bytes,
        }
    }
}

fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(body)
        .map_err(|e| Status::invalid_argument(format!("bad request body: {e}")))
}

fn one_result(body: Vec<u8>) -> BoxStream<'static, Result<arrow_flight::Result, Status>> {
    futures::stream::once(async move {
        Ok(arrow_flight::Result {
            body: Bytes::from(body),
        })
    })
    .boxed()
}

/// A fragment's rows as Flight data, then one [`FragmentMetrics`] message.
fn encode_run(leaf: Arc<Leaf>, run: FragmentRun) -> BoxStream<'static, Result<FlightData, Status>> {
    let FragmentRun {
        schema,
        batches,
        report,
    } = run;
    let batches = batches.map_err(|e| FlightError::Tonic(Box::new(LeafError::from(e).into())));
    let data = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(batches)
        .map_err(Status::from);
    let trailer = futures::stream::once(async move {
        leaf.metrics().observe(
            "altdb_leaf_fragment_duration_seconds",
            "Time to run a plan fragment on a leaf's shards, to its last row.",
            &[],
            report.elapsed_secs(),
        );
        let metrics: FragmentMetrics = report.metrics();
        Ok(metadata_message(
            serde_json::to_vec(&metrics)
                .expect("metrics serialize")
                .into(),
        ))
    });
    data.chain(trailer).boxed()
}

#[tonic::async_trait]
impl FlightService for LeafService {
    type HandshakeStream = BoxStream<'static, Result<HandshakeResponse, Status>>;
    type ListFlightsStream = BoxStream<'static, Result<FlightInfo, Status>>;
    type DoGetStream = BoxStream<'static, Result<FlightData, Status>>;
    type DoPutStream = BoxStream<'static, Result<PutResult, Status>>;
    type DoActionStream = BoxStream<'static, Result<arrow_flight::Result, Status>>;
    type ListActionsStream = BoxStream<'static, Result<ActionType, Status>>;
    type DoExchangeStream = BoxStream<'static, Result<FlightData, Status>>;

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented("handshake is not needed"))
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented("list_flights is not supported"))
    }

    async fn get_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented("get_flight_info is not supported"))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("poll_flight_info is not supported"))
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented("get_schema is not supported"))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let ticket = FragmentTicket::decode(&request.into_inner().ticket)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        checked_name(&ticket.collection)?;
        if let Some(follower) = self.leaf.follower() {
            for part in &ticket.shards {
                follower
                    .check_read(
                        &ticket.collection,
                        ticket.incarnation,
                        part.shard,
                        ticket.epoch,
                    )
                    .await?;
            }
        }
        let shards = ticket
            .shards
            .iter()
            .map(|part| {
                self.leaf
                    .shard_for(&ticket.collection, ticket.incarnation, part.shard)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let run = run_fragment(self.leaf.fragments(), &ticket, shards)?;
        Ok(Response::new(encode_run(self.leaf.clone(), run)))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let mut messages = request.into_inner();
        let first = messages
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty put stream"))?;
        let header: PutHeader = first
            .flight_descriptor
            .as_ref()
            .map(|d| parse_body(&d.cmd))
            .transpose()?
            .ok_or_else(|| Status::invalid_argument("put stream lacks a descriptor"))?;
        checked_name(&header.collection)?;
        let (mut received, max) = (0usize, self.max_put_bytes);
        let data = futures::stream::once(async { Ok(first) })
            .chain(messages)
            .map(move |message| {
                let message = message?;
                received += message.data_body.len() + message.data_header.len();
                if received > max {
                    return Err(Status::invalid_argument(format!(
                        "a put may carry at most {max} bytes (max_put_bytes); send the rows \
                         in smaller batches"
                    )));
                }
                Ok(message)
            })
            .map_err(FlightError::from);
        let batches: Vec<_> = FlightRecordBatchStream::new_from_flight_data(data)
            .try_collect()
            .await
            .map_err(Status::from)?;
        let mut docs = Vec::new();
        for batch in &batches {
            docs.extend(put_rows(batch).map_err(|e| Status::invalid_argument(e.to_string()))?);
        }
        let meta = CollectionMeta {
            text_fields: header.text_fields.clone(),
            max_fields: header.max_fields,
            retention_secs: header.retention_secs,
            rollup: header.rollup.clone(),
        };
        let ack = self
            .leaf
            .write(
                WriteTo {
                    collection: header.collection,
                    incarnation: header.incarnation,
                    shard: header.shard,
                    epoch: header.epoch,
                    version: header.version,
                    patch: header.patch,
                    doc_limits: header.doc_limits,
                },
                meta,
                header.sources,
                docs,
            )
            .await
            .map_err(Status::from)?;
        let result = PutResult {
            app_metadata: serde_json::to_vec(&ack).expect("ack serializes").into(),
        };
        Ok(Response::new(
            futures::stream::once(async { Ok(result) }).boxed(),
        ))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("do_exchange is not supported"))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let action = request.into_inner();
        let body = match action.r#type.as_str() {
            ACTION_HEALTH => b"{\"ok\":true}".to_vec(),
            ACTION_COLLECTION_STATS => {
                let request: CollectionRequest = parse_body(&action.body)?;
                checked_name(&request.collection)?;
                serde_json::to_vec(
                    &self
                        .leaf
                        .collection_stats(&request.collection, request.incarnation),
                )
                .map_err(|e| Status::internal(e.to_string()))?
            }
            ACTION_WATERMARKS => {
                let request: WatermarksRequest = parse_body(&action.body)?;
                checked_name(&request.collection)?;
                serde_json::to_vec(&self.leaf.watermarks(
                    &request.collection,
                    request.incarnation,
                    &request.sources,
                ))
                .map_err(|e| Status::internal(e.to_string()))?
            }
            ACTION_DROP_COLLECTION => {
                let request: CollectionRequest = parse_body(&action.body)?;
                checked_name(&request.collection)?;
                self.leaf
                    .drop_collection(&request.collection, request.incarnation)
                    .await
                    .map_err(Status::from)?;
                b"{}".to_vec()
            }
            ACTION_COPY_SHARD => {
                let request: CopyShardRequest = parse_body(&action.body)?;
                checked_name(&request.of.collection)?;
                let page = self
                    .follower()?
                    .copy_page(&self.leaf, request)
                    .await
                    .map_err(Status::from)?;
                serde_json::to_vec(&page).map_err(|e| Status::internal(e.to_string()))?
            }
            ACTION_SHARD_DIGESTS => {
                let request: ShardDigestsRequest = parse_body(&action.body)?;
                checked_name(&request.of.collection)?;
                let digests = self
                    .follower()?
                    .shard_digests(&self.leaf, request)
                    .await
                    .map_err(Status::from)?;
                serde_json::to_vec(&digests).map_err(|e| Status::internal(e.to_string()))?
            }
            ACTION_RANGE_DOCS => {
                let request: RangeDocsRequest = parse_body(&action.body)?;
                checked_name(&request.of.collection)?;
                if request
                    .held
                    .as_ref()
                    .is_some_and(|held| held.len() > MAX_HELD_IDS)
                {
                    return Err(Status::invalid_argument(format!(
                        "a range request may name at most {MAX_HELD_IDS} held `_id`s; send \
                         none to get every document of the range"
                    )));
                }
                let page = self
                    .follower()?
                    .range_docs(&self.leaf, request)
                    .await
                    .map_err(Status::from)?;
                serde_json::to_vec(&page).map_err(|e| Status::internal(e.to_string()))?
            }
            ACTION_COLLECTION_SETTINGS => {
                let request: CollectionSettingsRequest = parse_body(&action.body)?;
                checked_name(&request.collection)?;
                self.leaf
                    .set_settings(&request.collection, request.incarnation, request.settings)
                    .await
                    .map_err(Status::from)?;
                b"{}".to_vec()
            }
            ACTION_CREATE_COLLECTION => {
                let request: CreateCollectionRequest = parse_body(&action.body)?;
                checked_name(&request.collection)?;
                self.leaf
                    .create_collection(&request.collection, request.incarnation, &request.shards)
                    .await
                    .map_err(Status::from)?;
                b"{}".to_vec()
            }
            other => {
                return Err(Status::from(LeafError::InvalidRequest(format!(
                    "unknown action `{other}`"
                ))))
            }
        };
        Ok(Response::new(one_result(body)))
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let actions = [
            ACTION_HEALTH,
            ACTION_COLLECTION_STATS,
            ACTION_WATERMARKS,
            ACTION_DROP_COLLECTION,
            ACTION_CREATE_COLLECTION,
            ACTION_COPY_SHARD,
            ACTION_SHARD_DIGESTS,
            ACTION_RANGE_DOCS,
            ACTION_COLLECTION_SETTINGS,
        ]
        .map(|name| {
            Ok(ActionType {
                r#type: name.to_string(),
                description: String::new(),
            })
        });
        Ok(Response::new(futures::stream::iter(actions).boxed()))
    }
}

impl LeafService {
    /// The placement this leaf follows: copies compare and copy only in a
    /// cluster with a metastore.
    fn follower(&self) -> Result<&Arc<crate::placement::Follower>, Status> {
        self.leaf.follower().ok_or_else(|| {
            Status::failed_precondition(
                "this leaf follows no metastore placement; shard copies move and compare only \
                 in a cluster with an etcd metastore",
            )
        })
    }
}

/// Most `(_id, version)` pairs a range request may name (a copy sends at
/// most a few thousand: `repair::MAX_HELD_SENT`).
const MAX_HELD_IDS: usize = 100_000;

/// Refuses a collection name that cannot be stored: names become directory names
/// and key prefixes, so `..` or `/etc` must never reach storage.
fn checked_name(collection: &str) -> Result<(), Status> {
    if altdb_common::collection::is_storable_name(collection) {
        return Ok(());
    }
    Err(Status::from(LeafError::InvalidRequest(format!(
        "collection name `{}` is invalid; names are 1 to 64 lowercase letters, digits and \
         underscores",
        collection.escape_debug()
    ))))
}
