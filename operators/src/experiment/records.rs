//! An experiment's records in the store: `experiment.json`, each trial's `params.json` and
//! `result.json`, and the folders they live in.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::path::Path;
use quiver_engine::Session;
use serde::{Deserialize, Serialize};
use url::Url;

use quiver_engine::store::objects::{exists, get_bytes, list, put_bytes};

use super::space::Params;
use super::spec::Objective;
use crate::ml::{EpochMetrics, MlError, ModelCard, OptionValue};
use quiver_engine::err;

/// How a trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialStatus {
    /// Trained every epoch.
    Completed,
    /// Stopped early by the scheduler.
    Stopped,
    /// Failed on every attempt; re-running the experiment tries it again.
    Failed,
}

impl TrialStatus {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
        }
    }
}

/// `params.json`: a trial's identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialParams {
    /// `trial-0003`.
    pub trial: String,
    /// Evolutionary search's generation (0 otherwise).
    pub generation: usize,
    /// The searched hyperparameters.
    pub params: Params,
}

/// `result.json`: how a trial ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    /// `trial-0003`.
    pub trial: String,
    /// Evolutionary search's generation (0 otherwise).
    pub generation: usize,
    /// The searched hyperparameters.
    pub params: Params,
    /// How it ended.
    pub status: TrialStatus,
    /// The objective metric after its last epoch.
    pub objective: Option<f64>,
    /// Metrics of every epoch.
    pub history: Vec<EpochMetrics>,
    /// Attempts it took (1 without failures).
    pub attempts: usize,
    /// Seconds since the Unix epoch when it first started.
    pub started_at: f64,
    /// Seconds since the Unix epoch when it ended.
    pub finished_at: f64,
    /// The slot of its last attempt.
    pub slot: String,
    /// The last attempt's error, for failed trials.
    pub error: Option<String>,
    /// The folder of its last checkpoint.
    pub checkpoint: Option<String>,
    /// The trained model (version 0), for trial runners that produce one.
    pub model: Option<ModelCard>,
}

/// `experiment.json`: the experiment as given, and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentFile {
    /// Its name.
    pub name: String,
    /// `dnn_classifier` or `cnn_classifier`.
    pub model_type: String,
    /// The options as given.
    pub options: Vec<(String, OptionValue)>,
    /// The training query.
    pub query: String,
    /// `running`, `completed` or `failed`.
    pub status: String,
    /// What is optimised.
    pub objective: Objective,
    /// Trials finished (completed, stopped or failed).
    pub trials_finished: usize,
    /// The best trial so far.
    pub best_trial: Option<String>,
    /// Its objective value.
    pub best_value: Option<f64>,
    /// The registry folder of the best trial's model.
    pub model: Option<String>,
    /// Seconds since the Unix epoch.
    pub created_at: f64,
    /// Seconds since the Unix epoch.
    pub updated_at: f64,
    /// Quiver's version.
    pub quiver_version: String,
}

/// What an experiment run produced.
#[derive(Debug, Clone)]
pub struct ExperimentReport {
    /// `experiment.json` as it was left.
    pub file: ExperimentFile,
    /// Every trial, in trial order.
    pub trials: Vec<TrialRecord>,
    /// The folder of the experiment.
    pub url: String,
}

/// An experiment's folder in the store.
#[derive(Debug, Clone)]
pub struct ExperimentDir {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// `experiments/<name>` in it.
    pub dir: Path,
    /// The folder's URL.
    pub url: Url,
}

/// The `experiments/` folder of a store.
#[derive(Debug, Clone)]
pub struct Experiments {
    store: Arc<dyn ObjectStore>,
    root: Path,
    url: Url,
}

impl Experiments {
    /// `experiments/` in the session's default store.
    pub fn new(session: &Session) -> Result<Self, MlError> {
        let (store, root, url) = session.default_folder("experiments/")?;
        Ok(Self { store, root, url })
    }

    /// The folder of experiment `name`.
    pub fn dir(&self, name: &str) -> Result<ExperimentDir, MlError> {
        crate::ml::registry::validate_name(name)?;
        Ok(ExperimentDir {
            store: Arc::clone(&self.store),
            dir: self.root.clone().join(name),
            url: self
                .url
                .join(&format!("{name}/"))
                .map_err(|e| err!(MlError::Option, "bad experiment name '{name}': {e}"))?,
        })
    }

    /// Names of the experiments, sorted.
    pub async fn names(&self) -> Result<Vec<String>, MlError> {
        let mut names = list(&self.store, &self.root).await?.dirs;
        names.sort();
        Ok(names)
    }
}

impl ExperimentDir {
    pub(super) fn path(&self, file: &str) -> Path {
        self.dir.clone().join(file)
    }

    /// The folder of one trial.
    pub fn trial_dir(&self, trial: &str) -> Path {
        self.dir.clone().join("trials").clone().join(trial)
    }

    pub(super) fn trial_url(&self, trial: &str) -> Result<Url, MlError> {
        self.url
            .join(&format!("trials/{trial}/"))
            .map_err(|e| MlError::Option(e.to_string()))
    }

    pub(super) async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &Path,
    ) -> Result<Option<T>, MlError> {
        match get_bytes(&self.store, path).await? {
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                err!(
                    MlError::Checkpoint,
                    "{}/{path} is unreadable: {e}",
                    self.store
                )
            }),
            None => Ok(None),
        }
    }

    pub(super) async fn write_json<T: Serialize>(
        &self,
        path: &Path,
        value: &T,
    ) -> Result<(), MlError> {
        Ok(put_bytes(&self.store, path, serde_json::to_vec_pretty(value)?).await?)
    }

    /// `experiment.json`, if the experiment exists.
    pub async fn file(&self) -> Result<Option<ExperimentFile>, MlError> {
        self.read_json(&self.path("experiment.json")).await
    }

    /// The trial ids that have a folder, sorted.
    pub async fn trial_ids(&self) -> Result<Vec<String>, MlError> {
        let mut ids = list(&self.store, &self.dir.clone().join("trials"))
            .await?
            .dirs;
        ids.sort();
        Ok(ids)
    }

    /// The `result.json` of each of `trials` that has ended, in their order.
    pub async fn results(&self, trials: &[String]) -> Result<Vec<TrialRecord>, MlError> {
        let mut records = Vec::new();
        for trial in trials {
            records.extend(self.result(trial).await?);
        }
        Ok(records)
    }

    /// A trial's `params.json`.
    pub async fn params(&self, trial: &str) -> Result<Option<TrialParams>, MlError> {
        self.read_json(&self.trial_dir(trial).clone().join("params.json"))
            .await
    }

    /// A trial's `result.json`, once it has ended.
    pub async fn result(&self, trial: &str) -> Result<Option<TrialRecord>, MlError> {
        self.read_json(&self.trial_dir(trial).clone().join("result.json"))
            .await
    }

    /// The epochs a trial has finished so far (its `metrics.jsonl`).
    pub async fn progress(&self, trial: &str) -> Result<Vec<EpochMetrics>, MlError> {
        crate::ml::runs::history(&self.store, &self.trial_dir(trial)).await
    }

    /// A trial's log so far.
    pub async fn log(&self, trial: &str) -> Result<Option<Vec<u8>>, MlError> {
        Ok(get_bytes(&self.store, &self.trial_dir(trial).clone().join("log.txt")).await?)
    }

    /// The status of a trial without a result, given its epochs so far: `pending` until it
    /// starts (writes its log or an epoch), then `running`.
    pub async fn unfinished_status(
        &self,
        trial: &str,
        history: &[EpochMetrics],
    ) -> Result<&'static str, MlError> {
        Ok(if history.is_empty() && !self.started(trial).await? {
            "pending"
        } else {
            "running"
        })
    }

    /// Whether a trial has started (its log exists), without reading the log.
    pub async fn started(&self, trial: &str) -> Result<bool, MlError> {
        Ok(exists(&self.store, &self.trial_dir(trial).clone().join("log.txt")).await?)
    }
}

/// The completed trial with the best objective (stopped trials only when none completed).
pub fn best_trial<'a>(trials: &'a [TrialRecord], objective: &Objective) -> Option<&'a TrialRecord> {
    let best_of = |status: TrialStatus| {
        trials
            .iter()
            .filter(|t| t.status == status)
            .filter_map(|t| t.objective.map(|v| (t, objective.score(v))))
            .filter(|(_, s)| s.is_finite())
            // The first of equals wins, so ties go to the lower trial id.
            .fold(
                None,
                |best: Option<(&TrialRecord, f64)>, (t, s)| match best {
                    Some((_, b)) if b >= s => best,
                    _ => Some((t, s)),
                },
            )
            .map(|(t, _)| t)
    };
    best_of(TrialStatus::Completed).or_else(|| best_of(TrialStatus::Stopped))
}
