//! A leaf in memory behind the [`LeafApi`] seam, for unit tests of what the
//! aggregator and the tailer do with leaves (fail-over, pushes to replicas).
//! End-to-end tests use real leaves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::rpc::{
    CollectionStats, FragmentItem, FragmentMetrics, FragmentTicket, LeafApi, PutAck, PutHeader,
    RpcError, ACTION_COLLECTION_STATS, ACTION_HEALTH,
};

/// A leaf that stores what it is sent and answers fragments with set rows.
#[derive(Debug)]
pub struct MemoryLeaf {
    url: String,
    down: AtomicBool,
    stalled: AtomicBool,
    /// Every put it stored: its header and its rows.
    pub puts: Mutex<Vec<(PutHeader, RecordBatch)>>,
    /// Every fragment ticket it was asked to run.
    pub tickets: Mutex<Vec<FragmentTicket>>,
    /// The rows each fragment answers with.
    rows: Vec<RecordBatch>,
    /// The answer to `collection_stats`, if it gives one.
    stats: Option<CollectionStats>,
}

impl MemoryLeaf {
    pub fn new(url: &str, rows: Vec<RecordBatch>) -> Self {
        Self {
            url: url.to_string(),
            down: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            puts: Mutex::default(),
            tickets: Mutex::default(),
            rows,
            stats: None,
        }
    }

    /// A leaf that answers `collection_stats` with `stats` (for every
    /// collection) and `health`, so statements plan against it.
    pub fn with_stats(self, stats: CollectionStats) -> Self {
        Self {
            stats: Some(stats),
            ..self
        }
    }

    /// From now on every call fails as a leaf that cannot be reached does.
    pub fn go_down(&self) {
        self.down.store(true, Ordering::SeqCst);
    }

    /// From now on calls are taken but never answered (a hung leaf).
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    fn reachable(&self) -> Result<(), RpcError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(RpcError::Status(tonic::Status::unavailable(format!(
                "leaf {} is down",
                self.url
            ))));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl LeafApi for MemoryLeaf {
    fn url(&self) -> &str {
        &self.url
    }

    async fn put(&self, header: &PutHeader, batch: RecordBatch) -> Result<PutAck, RpcError> {
        self.reachable()?;
        let written = batch.num_rows() as u64;
        self.puts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((header.clone(), batch));
        Ok(PutAck {
            written,
            ..PutAck::default()
        })
    }

    async fn action_body(&self, name: &str, _body: Vec<u8>) -> Result<Bytes, RpcError> {
        self.reachable()?;
        if self.stalled.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        match (name, &self.stats) {
            (ACTION_COLLECTION_STATS, Some(stats)) => Ok(serde_json::to_vec(stats)?.into()),
            (ACTION_HEALTH, _) => Ok(Bytes::from_static(b"{}")),
            _ => Err(RpcError::Protocol(format!(
                "the memory leaf does not answer `{name}`"
            ))),
        }
    }

    async fn fragment(
        &self,
        ticket: &FragmentTicket,
    ) -> Result<BoxStream<'static, Result<FragmentItem, RpcError>>, RpcError> {
        self.reachable()?;
        self.tickets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ticket.clone());
        if self.stalled.load(Ordering::SeqCst) {
            return Ok(futures::stream::pending().boxed());
        }
        let rows_scanned = self.rows.iter().map(|b| b.num_rows() as u64).sum();
        let items: Vec<Result<FragmentItem, RpcError>> = self
            .rows
            .iter()
            .cloned()
            .map(|batch| Ok(FragmentItem::Batch(batch)))
            .chain([Ok(FragmentItem::Metrics(FragmentMetrics {
                rows_scanned,
                ..FragmentMetrics::default()
            }))])
            .collect();
        Ok(futures::stream::iter(items).boxed())
    }
}
