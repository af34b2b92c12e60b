//! Hyperparameter experiments: search spaces and the algorithms that propose trials (grid,
//! random, differential evolution, with ASHA early stopping), trial runners that run one trial
//! per slot, and the runner that keeps everything in the shared store and resumes after a crash.
//!
//! ```no_run
//! # async fn demo(session: &quiver_engine::Session) -> Result<(), quiver_operators::ml::MlError> {
//! use quiver_operators::experiment::ExperimentBuilder;
//! let report = ExperimentBuilder::new("fashion_grid", "cnn_classifier")?
//!     .option("learning_rate", vec![0.001, 0.005])?
//!     .option("dropout", vec![0.45, 0.5, 0.55])?
//!     .option("epochs", 3)?
//!     .option("max_parallel_trials", 2)?
//!     .run(session, "SELECT image, label FROM train")
//!     .await?;
//! println!("best trial: {:?}", report.file.best_trial);
//! # Ok(()) }
//! ```

pub mod asha;
pub mod display;
mod execute;
pub mod hparams;
pub mod records;
pub mod runner;
pub mod space;
pub mod spec;
pub mod tables;
pub mod trials;

pub use records::{
    ExperimentDir, ExperimentFile, ExperimentReport, Experiments, TrialRecord, TrialStatus,
};
pub use runner::run_experiment;
pub use space::{DifferentialEvolution, Domain, Params, SearchSpace};
pub use spec::{ExperimentBuilder, ExperimentOptions, ExperimentSpec, Objective, Search};
pub use tables::ExperimentTableFunc;
pub use trials::{LocalTrialRunner, Slot, TrialOutput, TrialRunner, TrialTask};
