//! Errors of the leaf, mapped to Flight status in one place.

/// Everything that can go wrong on a leaf.
#[derive(Debug, thiserror::Error)]
pub enum LeafError {
    /// The request is malformed; the message says what to fix.
    #[error("{0}")]
    InvalidRequest(String),
    /// A fragment was planned with other fields than its shard has (plan again).
    #[error("{0}")]
    StaleFields(String),
    /// The call is for a deleted or replaced incarnation of its collection.
    #[error("{0}")]
    Gone(String),
    /// The leaf does not hold the shard asked for (ask another copy).
    #[error("{0}")]
    NotHeld(String),
    /// The caller's placement is older than the leaf's for this shard: refresh
    /// it and call the copies it names now.
    #[error("{0}")]
    NotOwner(String),
    #[error("storage error: {0}")]
    Storage(#[from] rocksdb::Error),
    #[error("segment error: {0}")]
    Segment(String),
    #[error(transparent)]
    Common(#[from] altdb_common::Error),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error(transparent)]
    Tantivy(#[from] tantivy::TantivyError),
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("leaf task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Result alias for [`LeafError`].
pub type Result<T, E = LeafError> = std::result::Result<T, E>;

impl From<LeafError> for tonic::Status {
    fn from(error: LeafError) -> Self {
        match &error {
            LeafError::InvalidRequest(_) => tonic::Status::invalid_argument(error.to_string()),
            LeafError::StaleFields(_) => tonic::Status::failed_precondition(error.to_string()),
            LeafError::Gone(_) => tonic::Status::not_found(error.to_string()),
            LeafError::NotHeld(_) => tonic::Status::unavailable(error.to_string()),
            LeafError::NotOwner(_) => tonic::Status::aborted(error.to_string()),
            LeafError::DataFusion(e) if is_cast_error(e) => {
                tonic::Status::invalid_argument(format!(
                    "{}; a value could not be converted: compare each column with a literal \
                 of its own type (quote numbers compared with a text column) or CAST it",
                    e.find_root()
                ))
            }
            LeafError::DataFusion(e) if is_user_error(e) => {
                tonic::Status::invalid_argument(error.to_string())
            }
            _ => tonic::Status::internal(error.to_string()),
        }
    }
}

fn is_user_error(error: &datafusion::error::DataFusionError) -> bool {
    use datafusion::arrow::error::ArrowError as A;
    use datafusion::error::DataFusionError as E;
    match error.find_root() {
        E::Plan(_) | E::SchemaError(..) | E::SQL(..) | E::NotImplemented(_) => true,
        E::ArrowError(arrow, _) => matches!(
            arrow.as_ref(),
            A::DivideByZero | A::ArithmeticOverflow(_) | A::InvalidArgumentError(_)
        ),
        _ => false,
    }
}

/// A value of the data does not convert to the type the statement compares it
/// with (DataFusion casts a text column to a number compared with a number).
fn is_cast_error(error: &datafusion::error::DataFusionError) -> bool {
    use datafusion::arrow::error::ArrowError as A;
    use datafusion::error::DataFusionError as E;
    match error.find_root() {
        E::ArrowError(arrow, _) => matches!(arrow.as_ref(), A::CastError(_) | A::ParseError(_)),
        _ => false,
    }
}
