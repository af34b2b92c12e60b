//! Errors of the engine: one enum, converted to `DataFusionError::External` inside plans, and
//! the [`err!`](crate::err) / [`bail!`](crate::bail) macros every crate builds its errors with.
//!
//! Each crate has its own `thiserror` enum whose message-carrying variants say what went wrong and
//! where: the file, row, tensor or option. `err!(MlError::Input, "row {row}: label is NULL")` is
//! that error; `bail!(..)` returns it, converted into the function's error type. DataFusion's own
//! kinds use its `exec_err!`, `plan_err!` and `internal_err!`.

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

/// The error of a variant (or constructor such as [`QuiverError::plan`]) that takes a message,
/// from a format string (Polars' `polars_err!`):
/// `err!(QuiverError::Config, "option '{key}' is not a number")`.
#[macro_export]
macro_rules! err {
    ($variant:path, $($fmt:tt)+) => {
        $variant(::std::format!($($fmt)+))
    };
}

/// Returns that error from the function, converted into its error type with `From` (Polars'
/// `polars_bail!`): `bail!(MlError::Option, "epochs must be at least 1, not {n}")`.
#[macro_export]
macro_rules! bail {
    ($variant:path, $($fmt:tt)+) => {
        return ::std::result::Result::Err($crate::err!($variant, $($fmt)+).into())
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(n: &str) -> Result<u32, DataFusionError> {
        let Ok(n) = n.parse() else {
            bail!(QuiverError::Config, "'{n}' is not a number");
        };
        Ok(n)
    }

    #[test]
    fn bail_converts_and_names_the_value() {
        assert_eq!(parse("7").unwrap(), 7);
        let e = parse("seven").unwrap_err();
        assert_eq!(
            e.to_string(),
            "External error: configuration error: 'seven' is not a number"
        );
        let e = err!(QuiverError::Cluster, "executor {} is gone", 3);
        assert!(matches!(e, QuiverError::Cluster(ref m) if m == "executor 3 is gone"));
    }
}
