//! Trials across a cluster, as the driver runs them. The experiment runner talks to every
//! executor's trainer through one [`ClusterTrainers`], a [`TrialRunner`] whose slots are all the
//! executors' slots; a trial whose executor is lost fails with [`MlError::LostExecutor`], and
//! the runner's retry resumes it from its last checkpoint on an executor that is alive. A
//! data-parallel gang is placed on slots of different executors and restarts together.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use quiver_engine::{QuiverError, Result};
use quiver_engine::{bail, err};
use quiver_executor::ring::trainer_channel;
use quiver_operators::experiment::{Slot, TrialOutput, TrialRunner, TrialTask};
use quiver_operators::ml::{EpochMetrics, MlError, TrainHooks};
use quiver_sql::cluster::proto::trainer_client::TrainerClient;
use quiver_sql::cluster::proto::{Gang, TrialControl, TrialStart, trial_control, trial_event};
use quiver_sql::tls::Tls;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// How long a gang's other workers may take to stop by themselves after one failed.
const GANG_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// An executor's trainer as the driver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainerEndpoint {
    /// The executor's id, `host:port/device`.
    pub id: String,
    /// Where its trainer listens, `host:port`.
    pub address: String,
    /// Trials it trains at once.
    pub slots: usize,
    /// `cpu` or `cuda:K`.
    pub device: String,
}

/// A client of the trainer at `address` (`host:port`), over `tls` when set.
pub(super) async fn connect_trainer(
    address: &str,
    tls: Option<&Tls>,
) -> std::result::Result<TrainerClient<tonic::transport::Channel>, MlError> {
    let channel = trainer_channel(address, "the trainer", tls, |e| e).await?;
    Ok(TrainerClient::new(channel)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20))
}

/// Lists the trainers of the executors alive now.
pub type TrainerDirectory = Arc<dyn Fn() -> BoxFuture<'static, Vec<TrainerEndpoint>> + Send + Sync>;

/// Every executor's trainer as one [`TrialRunner`].
pub(super) struct ClusterTrainers {
    /// Each global slot's executor and its own slot there, as the cluster was at the start.
    homes: Vec<(TrainerEndpoint, usize)>,
    directory: TrainerDirectory,
    tls: Option<Tls>,
    /// Trials running on each executor (by id), for placing the trials of lost executors.
    running: Mutex<HashMap<String, usize>>,
    /// Executors that failed a trial or a connection: trials go elsewhere while others live.
    lost: Mutex<HashSet<String>>,
}

impl ClusterTrainers {
    /// The trainers of the executors `directory` lists now; `tls` for the connections.
    pub(super) async fn new(directory: TrainerDirectory, tls: Option<Tls>) -> Result<Self> {
        let executors = directory().await;
        if executors.is_empty() {
            return Err(QuiverError::Cluster(
                "no executor is registered to train trials on".into(),
            ));
        }
        let homes = executors
            .iter()
            .flat_map(|e| (0..e.slots).map(move |k| (e.clone(), k)))
            .collect();
        Ok(Self {
            homes,
            directory,
            tls,
            running: Mutex::new(HashMap::new()),
            lost: Mutex::new(HashSet::new()),
        })
    }

    /// Where a trial of global slot `index` trains: its home executor while it is registered
    /// and has not failed, else the healthy executor with the fewest running trials per slot.
    async fn place(&self, index: usize) -> std::result::Result<(TrainerEndpoint, usize), MlError> {
        let (home, local) = self.homes[index % self.homes.len()].clone();
        let registered = (self.directory)().await;
        let lost = self.lost.lock().expect("lost executors").clone();
        let healthy: Vec<_> = registered
            .iter()
            .filter(|e| !lost.contains(&e.id))
            .cloned()
            .collect();
        if healthy.iter().any(|e| e.id == home.id) {
            return Ok((home, local));
        }
        // With every executor suspect, try them all again rather than give up.
        let candidates = if healthy.is_empty() {
            registered
        } else {
            healthy
        };
        let running = self.running.lock().expect("running trials");
        let load = |e: &TrainerEndpoint| running.get(&e.id).copied().unwrap_or(0);
        let target = candidates
            .into_iter()
            .min_by_key(|e| load(e) * 1000 / e.slots.max(1))
            .ok_or_else(|| MlError::Training("no executor is registered to train on".into()))?;
        let local = load(&target) % target.slots.max(1);
        Ok((target, local))
    }

    /// Remembers `executor` as lost when `result` says so.
    fn note_loss<T>(&self, executor: &TrainerEndpoint, result: &std::result::Result<T, MlError>) {
        if let Err(MlError::LostExecutor { .. }) = result {
            self.lost
                .lock()
                .expect("lost executors")
                .insert(executor.id.clone());
        }
    }

    /// `workers` slots for a gang, on as many different healthy executors as possible; waits
    /// up to a minute for enough of them to be registered.
    async fn place_gang(
        &self,
        workers: usize,
    ) -> std::result::Result<Vec<(TrainerEndpoint, usize)>, MlError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let lost = self.lost.lock().expect("lost executors").clone();
            let healthy: Vec<_> = (self.directory)()
                .await
                .into_iter()
                .filter(|e| !lost.contains(&e.id))
                .collect();
            let most = healthy.iter().map(|e| e.slots).max().unwrap_or(0);
            let slots: Vec<_> = (0..most)
                .flat_map(|k| {
                    healthy
                        .iter()
                        .filter(move |e| k < e.slots)
                        .map(move |e| (e.clone(), k))
                })
                .take(workers)
                .collect();
            if slots.len() == workers {
                return Ok(slots);
            }
            if std::time::Instant::now() > deadline {
                let ids: Vec<_> = healthy.iter().map(|e| e.id.as_str()).collect();
                bail!(
                    MlError::Training,
                    "workers = {workers} needs {workers} executor slots, but the healthy \
                     executors {ids:?} have {} in all",
                    slots.len()
                );
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }

    /// Trains `task` data-parallel on a gang of `workers`, all started together; when a
    /// worker fails because its executor went away, every worker stops and the gang starts
    /// again (at most `restarts` times) from the last checkpoint, away from lost executors.
    /// Returns rank 0's output.
    pub(super) async fn train_gang(
        &self,
        task: &TrialTask,
        workers: usize,
        restarts: usize,
        hooks: &TrainHooks,
    ) -> std::result::Result<TrialOutput, MlError> {
        let log = |line: &str| hooks.log(line);
        let mut attempt = 0;
        loop {
            let placed = self.place_gang(workers).await?;
            let id = format!(
                "{}-{attempt}-{}",
                task.experiment,
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            );
            let trainers: Vec<_> = placed.iter().map(|(e, _)| e.address.clone()).collect();
            let executors: Vec<_> = placed.iter().map(|(e, _)| e.id.clone()).collect();
            log(&format!(
                "gang {id}: {workers} workers on {}",
                executors.join(", ")
            ));
            let runs = placed.iter().enumerate().map(|(rank, (executor, local))| {
                let gang = Gang {
                    id: id.clone(),
                    rank: rank as u32,
                    trainers: trainers.clone(),
                    executors: executors.clone(),
                };
                let mut task = task.clone();
                task.trial = format!("worker {rank}");
                async move {
                    let result = self
                        .train_on(executor, *local, &task, hooks, Some(gang))
                        .await;
                    self.note_loss(executor, &result);
                    (rank, result)
                }
            });
            let mut running: FuturesUnordered<_> = runs.collect();
            // Rank 0's output is the model's; the other workers hold the same weights.
            let mut leader = None;
            let mut errors = Vec::new();
            // Once a worker fails, its neighbours' rings break within moments; the workers
            // still running after a grace period are stopped (dropping their streams).
            let mut deadline = None;
            loop {
                let next = match deadline {
                    None => running.next().await,
                    Some(at) => tokio::time::timeout_at(at, running.next())
                        .await
                        .unwrap_or(None),
                };
                match next {
                    Some((0, Ok(output))) => leader = Some(output),
                    Some((_, Ok(_))) => {}
                    Some((_, Err(e))) => {
                        errors.push(e);
                        deadline.get_or_insert_with(|| tokio::time::Instant::now() + GANG_GRACE);
                    }
                    None => break,
                }
            }
            drop(running);
            if errors.is_empty() {
                return leader.ok_or_else(|| {
                    MlError::Training("worker 0 of the gang returned nothing".into())
                });
            }
            let lost = errors
                .iter()
                .any(|e| matches!(e, MlError::LostExecutor { .. }));
            let first = errors.swap_remove(0);
            if !lost || attempt == restarts {
                return Err(first);
            }
            log(&format!(
                "a worker was lost ({first}): the gang restarts from the last checkpoint \
                 (restart {} of at most {restarts})",
                attempt + 1
            ));
            attempt += 1;
        }
    }

    async fn connect(
        &self,
        address: &str,
    ) -> std::result::Result<TrainerClient<tonic::transport::Channel>, MlError> {
        connect_trainer(address, self.tls.as_ref()).await
    }

    async fn train_on(
        &self,
        executor: &TrainerEndpoint,
        local: usize,
        task: &TrialTask,
        hooks: &TrainHooks,
        gang: Option<Gang>,
    ) -> std::result::Result<TrialOutput, MlError> {
        let lost = |e: &dyn std::fmt::Display| MlError::LostExecutor {
            executor: executor.id.clone(),
            trial: task.trial.clone(),
            reason: e.to_string(),
        };
        let mut client = self
            .connect(&executor.address)
            .await
            .map_err(|e| lost(&e))?;
        let (controls, receiver) = mpsc::unbounded_channel();
        let start = TrialStart {
            task_json: serde_json::to_string(task).map_err(|e| MlError::Training(e.to_string()))?,
            slot: local as u32,
            gang,
        };
        let _ = controls.send(TrialControl {
            kind: Some(trial_control::Kind::Start(start)),
        });
        let mut events = client
            .run_trial(UnboundedReceiverStream::new(receiver))
            .await
            .map_err(|e| lost(&e))?
            .into_inner();
        let log = |line: &str| hooks.log(line);
        log(&format!(
            "{} trains on executor {} (its slot {local})",
            task.trial, executor.id
        ));
        while let Some(message) = events.message().await.map_err(|e| lost(&e))? {
            match message.kind {
                Some(trial_event::Kind::Log(line)) => log(&line),
                Some(trial_event::Kind::EpochJson(json)) => {
                    let metrics: EpochMetrics = serde_json::from_str(&json).map_err(|e| {
                        err!(MlError::Training, "bad epoch from {}: {e}", executor.id)
                    })?;
                    let key = format!("{}/epoch-{}", task.run_url, metrics.epoch);
                    quiver_engine::fault::point_async("coordinator_epoch", &key).await?;
                    let go_on = match &hooks.on_epoch {
                        Some(hook) => hook(metrics).await,
                        None => true,
                    };
                    let _ = controls.send(TrialControl {
                        kind: Some(trial_control::Kind::GoOn(go_on)),
                    });
                }
                Some(trial_event::Kind::OutputJson(json)) => {
                    return serde_json::from_str(&json).map_err(|e| {
                        err!(MlError::Training, "bad result from {}: {e}", executor.id)
                    });
                }
                Some(trial_event::Kind::Error(message)) => {
                    bail!(
                        MlError::Training,
                        "{} on executor {}: {message}",
                        task.trial,
                        executor.id
                    );
                }
                None => {}
            }
        }
        Err(lost(&"the trainer's stream ended without a result"))
    }
}

#[async_trait]
impl TrialRunner for ClusterTrainers {
    fn slots(&self) -> Vec<Slot> {
        self.homes
            .iter()
            .enumerate()
            .map(|(index, (executor, _))| Slot {
                index,
                device: executor.device.clone(),
                threads: 1,
            })
            .collect()
    }

    async fn run_trial(
        &self,
        slot: &Slot,
        task: &TrialTask,
        hooks: TrainHooks,
    ) -> std::result::Result<TrialOutput, MlError> {
        let (executor, local) = self.place(slot.index).await?;
        *self
            .running
            .lock()
            .expect("running trials")
            .entry(executor.id.clone())
            .or_default() += 1;
        let result = self.train_on(&executor, local, task, &hooks, None).await;
        self.note_loss(&executor, &result);
        if let Some(n) = self
            .running
            .lock()
            .expect("running trials")
            .get_mut(&executor.id)
        {
            *n = n.saturating_sub(1);
        }
        result
    }
}
