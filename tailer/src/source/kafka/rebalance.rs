//! The rebalance side of the Kafka source: on assignment, each partition is positioned
//! at the smallest watermark the collection's shards hold for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;

use altdb_common::collection::{CollectionSpec, KafkaSource, StartFrom};

use crate::source::{resume_positions, Resume, SourceContext};

/// Records re-read before the resume point when a broker started past it (times 4
/// per further retry).
const RESUME_REWIND: i64 = 1000;

/// A change of assignment seen in the rebalance callback.
#[derive(Debug)]
pub(super) enum AssignmentEvent {
    Assigned(Vec<Resumed>),
    Revoked(Vec<i32>),
}

/// The consumer context: on assignment, positions each partition at the smallest
/// watermark the leaves hold for it.
#[derive(Clone)]
pub(super) struct Rebalancer {
    pub(super) handle: Handle,
    pub(super) spec: CollectionSpec,
    pub(super) kafka: KafkaSource,
    pub(super) context: SourceContext,
    pub(super) stopped: Arc<AtomicBool>,
    pub(super) events: Arc<Mutex<Vec<AssignmentEvent>>>,
    /// Set when librdkafka reports a fatal error (e.g. this static member was
    /// fenced by another with the same `group.instance.id`): the consumer is done.
    pub(super) fatal: Arc<AtomicBool>,
}

impl ClientContext for Rebalancer {
    fn error(&self, error: KafkaError, reason: &str) {
        // End-of-partition is also raised as a client-wide event; it is not an error.
        if matches!(
            error.rdkafka_error_code(),
            Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        ) {
            return;
        }
        if matches!(
            error.rdkafka_error_code(),
            Some(
                rdkafka::types::RDKafkaErrorCode::Fatal
                    | rdkafka::types::RDKafkaErrorCode::FencedInstanceId
            )
        ) {
            self.fatal.store(true, Ordering::Relaxed);
        }
        tracing::warn!(collection = %self.spec.name, %error, reason, "kafka client error");
    }
}

impl ConsumerContext for Rebalancer {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&self.kafka.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let Some(offsets) = self.resume_offsets(consumer, &partitions) else {
                    return;
                };
                for resumed in &offsets {
                    let _ = tpl.set_partition_offset(
                        &self.kafka.topic,
                        resumed.partition,
                        Offset::Offset(resumed.fetch_from),
                    );
                }
                tracing::info!(collection = %self.spec.name, topic = %self.kafka.topic, ?offsets, "partitions assigned");
                if let Err(error) = consumer.assign(tpl) {
                    tracing::error!(%error, "assign failed");
                    return;
                }
                self.push_event(AssignmentEvent::Assigned(offsets));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(collection = %self.spec.name, topic = %self.kafka.topic, ?partitions, "partitions revoked");
                self.push_event(AssignmentEvent::Revoked(partitions));
                let _ = consumer.unassign();
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error; dropping the assignment");
                self.push_event(AssignmentEvent::Revoked(partitions));
                let _ = consumer.unassign();
            }
        }
    }
}

impl Rebalancer {
    pub(super) fn push_event(&self, event: AssignmentEvent) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event);
    }

    /// Where each partition continues; blocks (on the consumer thread) until the
    /// leaves answer, `None` if the source stopped meanwhile.
    fn resume_offsets(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &[i32],
    ) -> Option<Vec<Resumed>> {
        let sources: Vec<String> = partitions
            .iter()
            .map(|p| self.kafka.partition_source(&self.spec.name, *p))
            .collect();
        let resumes = loop {
            let answer =
                self.handle
                    .block_on(resume_positions(&self.context.pusher, &self.spec, &sources));
            if let Some(resumes) = answer {
                break resumes;
            }
            if self.stopped.load(Ordering::Relaxed) {
                return None;
            }
            tracing::warn!(collection = %self.spec.name, "leaves unreachable; waiting to position the assigned partitions");
            std::thread::sleep(Duration::from_secs(1));
        };
        let mut offsets = Vec::with_capacity(partitions.len());
        for (&partition, resume) in partitions.iter().zip(resumes) {
            let watermarks = consumer
                .fetch_watermarks(&self.kafka.topic, partition, Duration::from_secs(10))
                .inspect_err(|error| {
                    tracing::warn!(partition, %error, "cannot read the partition's offsets")
                })
                .ok();
            let (low, high) = watermarks.unwrap_or((0, 0));
            let next = next_offset(resume, self.kafka.start, low, high);
            if watermarks.is_some() && next > high {
                tracing::error!(
                    collection = %self.spec.name,
                    topic = %self.kafka.topic,
                    partition,
                    stored_through = next - 1,
                    end = high,
                    "the leaves hold offsets past the end of this partition (was the topic \
                     re-created?); records below offset {next} are skipped — drop and re-create \
                     the collection to read it from the start"
                );
            }
            offsets.push(Resumed {
                partition,
                next,
                low,
                fetch_from: rewound(next, low, 0),
            });
        }
        Some(offsets)
    }
}

/// The offset a partition continues at: where every shard holds it up to, else
/// where the source's `start` says, within the partition's `low..high`.
pub(super) fn next_offset(resume: Resume, start: StartFrom, low: i64, high: i64) -> i64 {
    match (resume, start) {
        (Resume::At(next), _) => next as i64,
        (Resume::Fresh, StartFrom::Latest) => high,
        (Resume::Fresh | Resume::Partial, _) => low,
    }
}

/// Where a partition continues after an assignment.
#[derive(Debug, Clone, Copy)]
pub(super) struct Resumed {
    pub(super) partition: i32,
    /// The first offset not yet stored.
    pub(super) next: i64,
    /// The partition's first offset on the broker.
    pub(super) low: i64,
    /// Where fetching starts: a little before `next` (see [`rewound`]).
    pub(super) fetch_from: i64,
}

/// Where to fetch from on the `attempt`-th try to resume at `next`.
///
/// A fetch from an offset inside a producer batch must return that whole batch
/// (Apache Kafka does; librdkafka drops the records before the offset), so the
/// first try fetches from `next` itself. Some Kafka-protocol brokers (tansu 0.6)
/// return the next batch instead, which would skip the rest of the batch: the
/// consumer notices that the first record is past `next` and tries again from a
/// little earlier, dropping what is below `next` — correct with either broker.
pub(super) fn rewound(next: i64, low: i64, attempt: u32) -> i64 {
    if attempt == 0 {
        return next.max(low);
    }
    let back = RESUME_REWIND << (2 * (attempt - 1).min(8));
    next.saturating_sub(back).max(low).min(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_fetch_at_the_resume_point_then_a_little_before() {
        assert_eq!(rewound(5000, 0, 0), 5000);
        assert_eq!(rewound(5000, 0, 1), 4000);
        assert_eq!(rewound(5000, 0, 2), 1000);
        assert_eq!(rewound(5000, 3000, 2), 3000);
        assert_eq!(rewound(10, 0, 1), 0);
        assert_eq!(rewound(7, 9, 0), 9, "never before the partition's start");
        assert_eq!(rewound(7, 9, 1), 7, "never past the resume point");
    }
}
