//! Where trials run. A trial runner offers slots (a GPU, or a share of the CPU cores) and trains
//! one trial per slot; the experiment runner only talks to the [`TrialRunner`] trait, so the
//! [`LocalTrialRunner`] here and the driver's, over a cluster's executors, are interchangeable.

use std::sync::Arc;

use async_trait::async_trait;
use quiver_engine::Session;
use quiver_engine::store::objects::put_bytes;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::ml::{
    EpochMetrics, Evaluation, MlError, ModelBuilder, ModelCard, OptionValue, TrainHooks,
};
use quiver_engine::err;

/// One place a trial runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    /// Position among the trial runner's slots.
    pub index: usize,
    /// `cpu`, or `cuda:N`.
    pub device: String,
    /// CPU threads the trial computes on.
    pub threads: usize,
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "slot {} ({}, {} thread{})",
            self.index,
            self.device,
            self.threads,
            if self.threads == 1 { "" } else { "s" }
        )
    }
}

/// Everything a trial runner needs to train one trial: plain data, so that it can travel to a
/// cluster executor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialTask {
    /// The experiment's name (the model name in the trial's card).
    pub experiment: String,
    /// The trial's id, e.g. `trial-0003`.
    pub trial: String,
    /// `dnn_classifier` or `cnn_classifier`.
    pub model_type: String,
    /// Model options: the shared ones, then the trial's hyperparameters.
    pub options: Vec<(String, OptionValue)>,
    /// The training query.
    pub query: String,
    /// The trial's folder in the shared store: checkpoints, metrics, event files, weights.
    pub run_url: String,
}

/// What a finished trial produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialOutput {
    /// Metrics of every epoch.
    pub history: Vec<EpochMetrics>,
    /// Evaluation on the validation query, if there was one.
    pub evaluation: Option<Evaluation>,
    /// Whether the scheduler stopped it early.
    pub stopped_by_scheduler: bool,
    /// The trained model's card (version 0), its weights in `weights.safetensors` in the
    /// trial's folder; `None` for trial runners that produce no model.
    pub model: Option<ModelCard>,
}

/// The weights file of a trial's folder.
pub const TRIAL_WEIGHTS: &str = "weights.safetensors";

/// Runs trials on slots.
#[async_trait]
pub trait TrialRunner: Send + Sync {
    /// The slots trials can run on.
    fn slots(&self) -> Vec<Slot>;

    /// Trains `task` on `slot`, resuming from the last checkpoint in its folder, reporting
    /// through `hooks`.
    async fn run_trial(
        &self,
        slot: &Slot,
        task: &TrialTask,
        hooks: TrainHooks,
    ) -> Result<TrialOutput, MlError>;
}

/// Runs trials in this process: each slot is a device, or a share of the CPU cores with its
/// own thread pool.
pub struct LocalTrialRunner {
    session: Session,
    slots: Vec<(Slot, Arc<rayon::ThreadPool>)>,
}

impl LocalTrialRunner {
    /// `count` slots on `device` (`cpu`, `cuda` or `cuda:N`). CPU slots split the cores evenly
    /// (at least one thread each); `cuda` gives each slot its own GPU when there are several.
    pub fn new(session: Session, count: usize, device: &str) -> Result<Self, MlError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let count = count.max(1);
        let threads = (cores / count).max(1);
        let devices = slot_devices(device, count)?;
        let slots = devices
            .into_iter()
            .enumerate()
            .map(|(index, device)| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(move |i| format!("quiver-slot{index}-{i}"))
                    .build()
                    .map_err(|e| err!(MlError::Training, "cannot start slot threads: {e}"))?;
                Ok((
                    Slot {
                        index,
                        device,
                        threads,
                    },
                    Arc::new(pool),
                ))
            })
            .collect::<Result<_, MlError>>()?;
        Ok(Self { session, slots })
    }
}

/// The device of each of `count` slots.
fn slot_devices(device: &str, count: usize) -> Result<Vec<String>, MlError> {
    match crate::ml::device::parse(device)? {
        crate::ml::device::Device::Cpu => Ok(vec!["cpu".to_string(); count]),
        #[cfg(feature = "cuda")]
        crate::ml::device::Device::Cuda(index) => {
            let gpus = crate::ml::device::cuda_device_count();
            Ok((0..count)
                .map(|i| {
                    // `cuda` spreads the slots over every GPU; `cuda:N` pins them to one.
                    let gpu = if device.contains(':') {
                        index
                    } else {
                        i % gpus.max(1)
                    };
                    format!("cuda:{gpu}")
                })
                .collect())
        }
    }
}

#[async_trait]
impl TrialRunner for LocalTrialRunner {
    fn slots(&self) -> Vec<Slot> {
        self.slots.iter().map(|(s, _)| s.clone()).collect()
    }

    async fn run_trial(
        &self,
        slot: &Slot,
        task: &TrialTask,
        mut hooks: TrainHooks,
    ) -> Result<TrialOutput, MlError> {
        let mut builder = ModelBuilder::new(&task.experiment, &task.model_type)?;
        for (key, value) in &task.options {
            builder.set(key, value)?;
        }
        builder.set("device", &OptionValue::Str(slot.device.clone()))?;
        hooks.threads = self
            .slots
            .iter()
            .find(|(s, _)| s.index == slot.index)
            .map(|(_, pool)| Arc::clone(pool));
        let run_url = Url::parse(&task.run_url)
            .map_err(|e| err!(MlError::Option, "bad trial folder {}: {e}", task.run_url))?;
        let frame = self.session.sql(&task.query).await?;
        // Of a data-parallel gang's workers, rank 0 writes the weights.
        let leader = hooks.collective.as_ref().is_none_or(|r| r.rank() == 0);
        let fitted = builder
            .fit(&self.session, frame, &task.query, &run_url, hooks)
            .await?;
        if leader {
            let store = self.session.store_for(&run_url)?;
            let dir = quiver_engine::store::object_path(&run_url)?;
            put_bytes(&store, &dir.clone().join(TRIAL_WEIGHTS), fitted.weights).await?;
        }
        Ok(TrialOutput {
            history: fitted.card.history.clone(),
            evaluation: fitted.card.evaluation.clone(),
            stopped_by_scheduler: fitted.stopped_by_scheduler,
            model: Some(fitted.card),
        })
    }
}
