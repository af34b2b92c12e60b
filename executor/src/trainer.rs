//! Trials across a cluster. Each executor serves a [`TrainerService`] that trains one trial per
//! slot, exactly as the embedded engine's [`LocalExecutor`] does, and streams the trial's log and
//! epochs back. The driver's experiment runner talks to every executor's trainer through one
//! [`ClusterTrainers`], a [`TrialExecutor`] whose slots are all the executors' slots; a trial
//! whose executor is lost fails, and the runner's retry resumes it from its last checkpoint on
//! an executor that is alive.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use quiver_engine::{QuiverError, Result};
use quiver_operators::experiment::{LocalExecutor, Slot, TrialExecutor, TrialOutput, TrialTask};
use quiver_operators::ml::collective::Ring;
use quiver_operators::ml::{EpochMetrics, MlError, TrainHooks};
use quiver_sql::cluster::proto::trainer_client::TrainerClient;
use quiver_sql::cluster::proto::trainer_server::Trainer;
use quiver_sql::cluster::proto::{
    AbortWritesReply, AbortWritesRequest, Gang, RingDone, RingFrame, TrialControl, TrialEvent,
    TrialStart, trial_control, trial_event,
};

use crate::ring::{RING_FRAME, RING_WINDOW, RingInboxes, TrainerLink, trainer_channel};
use quiver_sql::cluster::proto::trainer_server::TrainerServer;
use quiver_sql::tls::Tls;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Server;
use tonic::transport::server::Router;
use tonic::{Request, Response, Status, Streaming};

/// An executor's trainer: its slots, each with its share of the cores or its GPU.
pub struct TrainerService {
    executor: Arc<LocalExecutor>,
    id: String,
    tls: Option<Tls>,
    inboxes: RingInboxes,
}

impl TrainerService {
    /// A trainer named `id` over `executor`'s slots, reaching other trainers with `tls`.
    pub fn new(id: String, executor: LocalExecutor, tls: Option<Tls>) -> Self {
        Self {
            executor: Arc::new(executor),
            id,
            tls,
            inboxes: RingInboxes::default(),
        }
    }

    /// Where this trainer delivers the ring frames of the gang workers it hosts.
    pub fn inboxes(&self) -> RingInboxes {
        self.inboxes.clone()
    }

    /// This trainer as a gRPC server (with its TLS). Its HTTP/2 windows and frames are large,
    /// so that ring frames stream at the link's speed instead of waiting for a window update
    /// every 64 KiB, in 16 KiB pieces.
    pub fn router(self) -> Result<Router> {
        let mut server = Server::builder()
            .initial_stream_window_size(RING_WINDOW)
            .initial_connection_window_size(2 * RING_WINDOW)
            .max_frame_size(RING_FRAME);
        if let Some(tls) = &self.tls {
            server = server
                .tls_config(tls.tonic_server()?)
                .map_err(|e| QuiverError::Cluster(format!("trainer TLS: {e}")))?;
        }
        Ok(server.add_service(
            TrainerServer::new(self)
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20),
        ))
    }
}

type EventStream = Pin<Box<dyn Stream<Item = std::result::Result<TrialEvent, Status>> + Send>>;

fn event(kind: trial_event::Kind) -> TrialEvent {
    TrialEvent { kind: Some(kind) }
}

#[tonic::async_trait]
impl Trainer for TrainerService {
    type RunTrialStream = EventStream;

    async fn abort_writes(
        &self,
        request: Request<AbortWritesRequest>,
    ) -> std::result::Result<Response<AbortWritesReply>, Status> {
        let request = request.into_inner();
        let stopped =
            quiver_sql::write::stop_writers(&request.destination, request.up_to_nanos.into())
                .await
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(AbortWritesReply {
            writers_stopped: stopped as u32,
            files_removed: 0,
        }))
    }

    async fn ring(
        &self,
        request: Request<Streaming<RingFrame>>,
    ) -> std::result::Result<Response<RingDone>, Status> {
        let mut frames = request.into_inner();
        let mut inbox = None;
        loop {
            match frames.message().await {
                Ok(Some(frame)) => {
                    let inbox =
                        inbox.get_or_insert_with(|| self.inboxes.sender(&frame.gang, frame.rank));
                    let _ = inbox.send(Ok(frame));
                }
                Ok(None) => return Ok(Response::new(RingDone {})),
                Err(e) => {
                    if let Some(inbox) = inbox {
                        let _ = inbox.send(Err(format!(
                            "the stream from the previous worker broke: {}",
                            e.message()
                        )));
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn run_trial(
        &self,
        request: Request<Streaming<TrialControl>>,
    ) -> std::result::Result<Response<EventStream>, Status> {
        let mut controls = request.into_inner();
        let start = match controls.message().await? {
            Some(TrialControl {
                kind: Some(trial_control::Kind::Start(start)),
            }) => start,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must start a trial",
                ));
            }
        };
        let task: TrialTask = serde_json::from_str(&start.task_json)
            .map_err(|e| Status::invalid_argument(format!("bad trial: {e}")))?;
        let slot = self
            .executor
            .slots()
            .into_iter()
            .find(|s| s.index == start.slot as usize)
            .ok_or_else(|| {
                Status::invalid_argument(format!("executor {} has no slot {}", self.id, start.slot))
            })?;
        let (events, receiver) = mpsc::unbounded_channel();
        // The runner's answers to the Epoch events, in order.
        let (answers, decisions) = mpsc::unbounded_channel::<bool>();
        // Fires when the driver's side of the stream goes away.
        let (gone, driver_gone) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            while let Ok(Some(control)) = controls.message().await {
                if let Some(trial_control::Kind::GoOn(go_on)) = control.kind {
                    let _ = answers.send(go_on);
                }
            }
            let _ = gone.send(());
        });
        let decisions = Arc::new(tokio::sync::Mutex::new(decisions));
        let log = events.clone();
        let epochs = events.clone();
        let hooks = TrainHooks {
            log: Some(Arc::new(move |line: &str| {
                let _ = log.send(event(trial_event::Kind::Log(line.to_string())));
            })),
            // Without an answer (the runner went away) the trial stops after this epoch.
            on_epoch: Some(Arc::new(move |metrics: EpochMetrics| {
                let (epochs, decisions) = (epochs.clone(), Arc::clone(&decisions));
                async move {
                    let json = serde_json::to_string(&metrics).unwrap_or_default();
                    if epochs
                        .send(event(trial_event::Kind::EpochJson(json)))
                        .is_err()
                    {
                        return false;
                    }
                    decisions.lock().await.recv().await.unwrap_or(false)
                }
                .boxed()
            })),
            collective: match &start.gang {
                Some(gang) => {
                    let link = TrainerLink::connect(gang, &self.inboxes, self.tls.as_ref())
                        .await
                        .map_err(|e| Status::unavailable(e.to_string()))?;
                    let world = gang.trainers.len();
                    Some(Arc::new(Ring::new(
                        gang.rank as usize,
                        world,
                        Box::new(link),
                    )))
                }
                None => None,
            },
            ..Default::default()
        };
        let executor = Arc::clone(&self.executor);
        let id = self.id.clone();
        let worker = start.gang.is_some();
        tokio::spawn(async move {
            log::info!("trainer {id}: {} starts on {slot}", task.trial);
            // A gang's worker stops at once when the driver gives up the gang (another worker
            // failed); a trial finishes its epoch and stops for want of an answer.
            let cancelled = async move {
                match driver_gone.await {
                    Ok(()) if worker => {}
                    _ => std::future::pending().await,
                }
            };
            let result = tokio::select! {
                result = executor.run_trial(&slot, &task, hooks) => result,
                () = cancelled => Err(MlError::Training("the driver stopped the gang".into())),
            };
            let last = match result {
                Ok(output) => trial_event::Kind::OutputJson(
                    serde_json::to_string(&output).unwrap_or_default(),
                ),
                Err(e) => trial_event::Kind::Error(e.to_string()),
            };
            log::info!("trainer {id}: {} ended", task.trial);
            let _ = events.send(event(last));
        });
        Ok(Response::new(Box::pin(
            UnboundedReceiverStream::new(receiver).map(Ok),
        )))
    }
}

/// How the error of a trial whose executor went away reads.
const LOST: &str = "lost while training";

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
pub async fn connect_trainer(
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

/// Every executor's trainer as one [`TrialExecutor`].
pub struct ClusterTrainers {
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
    pub async fn new(directory: TrainerDirectory, tls: Option<Tls>) -> Result<Self> {
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
        if let Err(MlError::Training(message)) = result
            && message.contains(LOST)
        {
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
                return Err(MlError::Training(format!(
                    "workers = {workers} needs {workers} executor slots, but the healthy \
                     executors {ids:?} have {} in all",
                    slots.len()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }

    /// Trains `task` data-parallel on a gang of `workers`, all started together; when a
    /// worker fails because its executor went away, every worker stops and the gang starts
    /// again (at most `restarts` times) from the last checkpoint, away from lost executors.
    /// Returns rank 0's output.
    pub async fn train_gang(
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
                .any(|e| matches!(e, MlError::Training(m) if m.contains(LOST)));
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
        let lost = |e: &dyn std::fmt::Display| {
            MlError::Training(format!(
                "executor {} {LOST} {}: {e}",
                executor.id, task.trial
            ))
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
                        MlError::Training(format!("bad epoch from {}: {e}", executor.id))
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
                        MlError::Training(format!("bad result from {}: {e}", executor.id))
                    });
                }
                Some(trial_event::Kind::Error(message)) => {
                    return Err(MlError::Training(format!(
                        "{} on executor {}: {message}",
                        task.trial, executor.id
                    )));
                }
                None => {}
            }
        }
        Err(lost(&"the trainer's stream ended without a result"))
    }
}

#[async_trait]
impl TrialExecutor for ClusterTrainers {
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
