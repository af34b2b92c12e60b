//! `quiver experiment list|trials|logs`: experiments in the store, their trials, and a trial's
//! log, followed live while it runs.

use std::time::Duration;

use quiver_engine::{QuiverError, Result, Session};
use quiver_operators::experiment::Experiments;

use crate::run::{Output, print_new, run_all};
use quiver_engine::bail;

/// What `quiver experiment` does.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ExperimentCommand {
    /// One line per experiment: status, objective, best trial, registered model.
    List,
    /// One row per trial of an experiment, with its hyperparameters and metrics.
    Trials {
        /// The experiment.
        name: String,
    },
    /// A trial's log; with --follow, new lines as they are written until the trial ends.
    Logs {
        /// The experiment.
        name: String,
        /// The trial, e.g. trial-0003.
        trial: String,
        /// Keep printing new lines until the trial ends.
        #[arg(short, long)]
        follow: bool,
    },
}

pub(crate) async fn experiment_command(
    session: &Session,
    command: ExperimentCommand,
    output: Output,
) -> Result<()> {
    match command {
        ExperimentCommand::List => run_all(session, "SHOW EXPERIMENTS", output).await,
        ExperimentCommand::Trials { name } => {
            let sql = format!(
                "SELECT * FROM experiment_trials('{}') ORDER BY trial",
                name.replace('\'', "''")
            );
            run_all(session, &sql, output).await
        }
        ExperimentCommand::Logs {
            name,
            trial,
            follow,
        } => {
            let dir = Experiments::new(session)?.dir(&name)?;
            if dir.file().await?.is_none() {
                bail!(
                    QuiverError::Config,
                    "experiment '{name}' does not exist at {}",
                    dir.url
                );
            }
            let mut printed = 0;
            loop {
                // Read the end marker first: a log read after it is complete.
                let finished = dir.result(&trial).await?.is_some();
                let log = dir.log(&trial).await?;
                if log.is_none() && dir.params(&trial).await?.is_none() {
                    let trials = dir.trial_ids().await?;
                    bail!(
                        QuiverError::Config,
                        "experiment '{name}' has no trial '{trial}' (trials: {})",
                        trials.join(", ")
                    );
                }
                let log = log.unwrap_or_default();
                print_new(&log, &mut printed)?;
                if !follow || finished {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
