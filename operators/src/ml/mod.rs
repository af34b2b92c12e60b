//! Machine learning: DNN, CNN and ResNet image classifiers on Burn, streamed training data, the training
//! loop with checkpoints and metrics, evaluation, the model registry and `predict`.
//!
//! [`ModelBuilder`] takes the same options as SQL's `CREATE MODEL ... OPTIONS (...)`:
//!
//! ```no_run
//! # async fn demo(session: &quiver_engine::Session) -> Result<(), quiver_operators::ml::MlError> {
//! use quiver_operators::ml::ModelBuilder;
//! let frame = session.sql("SELECT image, label FROM train").await?;
//! let card = ModelBuilder::new("fashion", "cnn_classifier")?
//!     .option("epochs", 3)?
//!     .option("conv_filters", vec![32, 64])?
//!     .train(session, frame, "SELECT image, label FROM train")
//!     .await?;
//! println!("registered {} version {}", card.name, card.version);
//! # Ok(()) }
//! ```

pub mod adam;
pub mod collective;
pub mod conv;
pub mod data;
pub mod device;
pub mod evaluate;
pub mod events;
pub mod model;
pub mod norm;
pub mod options;
pub mod pool;
pub mod predict;
pub mod registry;
pub mod resnet;
mod run_metrics;
pub mod runs;
pub mod schedule;
pub mod spec;
pub mod train;

pub use evaluate::{ClassMetrics, Evaluation};
pub use options::{Fitted, ModelBuilder, ModelOptions, OptionValue};
pub use registry::{ModelCard, Registry};
pub use train::{EpochHook, EpochMetrics, LogSink, TrainHooks, TrainJob, TrainOutcome};

use datafusion::error::DataFusionError;
use quiver_engine::QuiverError;

/// Why a training, evaluation or prediction failed; the message names the option, column, row
/// or file.
#[derive(Debug, thiserror::Error)]
pub enum MlError {
    /// A model option is unknown or has a bad value.
    #[error("model option error: {0}")]
    Option(String),
    /// The input data does not fit (missing column, NULL label, wrong size...).
    #[error("training data error: {0}")]
    Input(String),
    /// A model or version is not in the registry.
    #[error("{0}")]
    NotFound(String),
    /// The model name is taken.
    #[error("{0}")]
    Exists(String),
    /// A checkpoint or registry file is missing or unreadable.
    #[error("checkpoint error: {0}")]
    Checkpoint(String),
    /// Training diverged or the backend failed.
    #[error("training error: {0}")]
    Training(String),
    /// The executor training a trial went away: its connection or its stream broke.
    #[error("executor {executor} lost while training {trial}: {reason}")]
    LostExecutor {
        /// The executor's id.
        executor: String,
        /// The trial (or gang worker) it trained.
        trial: String,
        /// What broke.
        reason: String,
    },
    /// The engine failed: an object store, a location or the session; the message names it.
    #[error(transparent)]
    Engine(#[from] QuiverError),
    /// The query engine failed.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    /// JSON (de)serialisation failed.
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<MlError> for QuiverError {
    fn from(e: MlError) -> Self {
        match e {
            MlError::Engine(e) => e,
            other => Self::DataFusion(other.into()),
        }
    }
}

impl From<datafusion::arrow::error::ArrowError> for MlError {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        Self::DataFusion(e.into())
    }
}

impl From<MlError> for DataFusionError {
    fn from(e: MlError) -> Self {
        match e {
            MlError::DataFusion(e) => e,
            MlError::Engine(e) => e.into(),
            other => DataFusionError::External(Box::new(other)),
        }
    }
}

/// The registry of `session`: `models/` in its default store.
pub fn registry(session: &quiver_engine::Session) -> Result<Registry, MlError> {
    let (store, root, url) = session.default_folder("models/")?;
    Ok(Registry::new(store, root, url.to_string()))
}
