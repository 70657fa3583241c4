//! The columns altdb itself fills in, in one place. A document field with one
//! of these names is not a column of its own.

/// The document id, a string: the configured `id_field`, else derived from
/// where the record came from.
pub const ID_COLUMN: &str = "_id";
/// The event time, microseconds since the epoch, UTC: the configured
/// `event_time_field`, else the source's time or the ingest time.
pub const EVENT_TIME_COLUMN: &str = "_event_time";
/// The shard-local write sequence of a row (stored, never shown to SQL).
pub const SEQ_COLUMN: &str = "_seq";
/// The relevance of a row to the `search()` of its query (computed by the
/// scan, never stored).
pub const SCORE_COLUMN: &str = "_score";

/// Whether `name` is a column altdb stores itself.
pub fn is_reserved_column(name: &str) -> bool {
    matches!(name, ID_COLUMN | EVENT_TIME_COLUMN | SEQ_COLUMN)
}
