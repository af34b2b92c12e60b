//! Errors of the engine: one enum, converted to `DataFusionError::External` inside plans.

use datafusion::error::DataFusionError;

/// Result with [`QuiverError`].
pub type Result<T, E = QuiverError> = std::result::Result<T, E>;

/// What went wrong, naming the location or option that caused it.
#[derive(Debug, thiserror::Error)]
pub enum QuiverError {
    /// A configuration value or option is wrong; the message names it.
    #[error("configuration error: {0}")]
    Config(String),
    /// A location could not be parsed or resolved.
    #[error("invalid location '{location}': {reason}")]
    Location {
        /// The location as the user wrote it.
        location: String,
        /// Why it is invalid.
        reason: String,
    },
    /// An object store operation failed.
    #[error("object store error at '{location}': {source}")]
    Store {
        /// The URL or path involved.
        location: String,
        /// The store's own error.
        #[source]
        source: object_store::Error,
    },
    /// An error from the query engine.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    /// A cluster process or channel failed; the message names the process and the address.
    #[error("cluster: {0}")]
    Cluster(String),
    /// A local I/O error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A statement of a script failed; `source` says why.
    #[error("statement {index} of {count} failed: {source}\n  {text}")]
    Statement {
        /// 1-based position of the statement.
        index: usize,
        /// Statements in the script.
        count: usize,
        /// The statement, shortened to a line.
        text: String,
        /// Its error.
        #[source]
        source: Box<QuiverError>,
    },
    /// The work was cancelled (Ctrl-C, a job's cancel, a dropped client).
    #[error("{0}")]
    Cancelled(String),
    /// A failure injected at a fault point (see [`crate::fault`]).
    #[error("{0}")]
    Fault(String),
}

impl QuiverError {
    /// A query or statement that cannot be planned (a syntax error, a missing option); the
    /// message names the statement and what is wrong.
    pub fn plan(msg: impl Into<String>) -> Self {
        Self::DataFusion(DataFusionError::Plan(msg.into()))
    }

    /// Wraps an object-store error with the location it happened at.
    pub fn store(location: impl Into<String>, source: object_store::Error) -> Self {
        Self::Store {
            location: location.into(),
            source,
        }
    }
}

impl From<QuiverError> for DataFusionError {
    fn from(e: QuiverError) -> Self {
        match e {
            QuiverError::DataFusion(e) => e,
            other => DataFusionError::External(Box::new(other)),
        }
    }
}
