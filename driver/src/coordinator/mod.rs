//! The driver's coordinator: runs the CREATE EXPERIMENT statements of cluster clients with one
//! trial per executor slot, and their data-parallel CREATE MODEL statements (`workers = N`) on
//! a gang of N executor slots, through the live executors' trainers, and streams the live log
//! back. Everything the trials and workers write goes to the shared store.

use std::sync::Arc;

use quiver_engine::SessionOptions;
use quiver_engine::store::objects::get_bytes;
use quiver_engine::{Session, Skipped};
use quiver_operators::experiment::TrialTask;
use quiver_operators::experiment::trials::TRIAL_WEIGHTS;
use quiver_operators::ml::runs::run_log;
use quiver_operators::ml::{MlError, ModelBuilder, ModelCard, TrainHooks};
use quiver_sql::cluster::proto::coordinator_server::Coordinator;
use quiver_sql::cluster::proto::trainer_client::TrainerClient;
use quiver_sql::cluster::proto::{
    AbortWritesReply, AbortWritesRequest, HelloReply, HelloRequest, SkippedImages,
    SkippedImagesRequest, StatementEvent, StatementRequest, statement_event,
};
use quiver_sql::create_model::CreateModel;
use quiver_sql::reply::{EventStream, stream_reply};
use quiver_sql::tls::Tls;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use quiver_engine::err;
use trainers::{ClusterTrainers, connect_trainer};
pub use trainers::{TrainerDirectory, TrainerEndpoint};

mod trainers;

/// Runs experiments across the cluster's executors.
pub struct CoordinatorService {
    session: SessionOptions,
    directory: TrainerDirectory,
    tls: Option<Tls>,
}

impl CoordinatorService {
    /// A coordinator whose sessions use `session`, finding trainers through `directory` and
    /// reaching them with `tls`.
    pub fn new(session: SessionOptions, directory: TrainerDirectory, tls: Option<Tls>) -> Self {
        Self {
            session,
            directory,
            tls,
        }
    }
}

impl CoordinatorService {
    /// Calls every live executor's trainer; returns each executor's id and reply (an
    /// unreachable one's is an Unavailable status).
    async fn ask_executors<T, F, Fut>(&self, call: F) -> Vec<(String, Result<T, Status>)>
    where
        F: Fn(TrainerClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let executors = (self.directory)().await;
        let calls = executors.iter().map(|executor| {
            let call = &call;
            async move {
                let reply = match connect_trainer(&executor.address, self.tls.as_ref()).await {
                    Ok(client) => call(client).await.map(Response::into_inner),
                    Err(e) => Err(Status::unavailable(e.to_string())),
                };
                (executor.id.clone(), reply)
            }
        });
        futures::future::join_all(calls).await
    }
}

fn event(kind: statement_event::Kind) -> StatementEvent {
    StatementEvent { kind: Some(kind) }
}

/// How often a data-parallel gang starts again after losing a worker.
const GANG_RESTARTS: usize = 3;

impl CoordinatorService {
    /// The statement of `request`, a session whose log streams to the client, the live
    /// executors' trainers, and the stream's sender and receiver.
    async fn start(
        &self,
        request: Request<StatementRequest>,
        what: &'static str,
    ) -> std::result::Result<
        (
            CreateModel,
            Session,
            ClusterTrainers,
            mpsc::UnboundedSender<StatementEvent>,
            mpsc::UnboundedReceiver<StatementEvent>,
        ),
        Status,
    > {
        let create: CreateModel = serde_json::from_str(&request.into_inner().create_json)
            .map_err(|e| Status::invalid_argument(format!("bad {what}: {e}")))?;
        let (events, receiver) = mpsc::unbounded_channel();
        let log = events.clone();
        let name = create.name.clone();
        let session = quiver_sql::session(self.session.clone())
            .map_err(|e| Status::internal(e.to_string()))?
            .with_log(Arc::new(move |line: &str| {
                log::info!("{what} {name}: {line}");
                let _ = log.send(event(statement_event::Kind::Log(line.to_string())));
            }));
        let trainers = ClusterTrainers::new(Arc::clone(&self.directory), self.tls.clone())
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok((create, session, trainers, events, receiver))
    }
}

/// Trains `create`'s model on a gang of its `workers` and registers it.
async fn train_model(
    session: &Session,
    create: &CreateModel,
    trainers: &ClusterTrainers,
) -> std::result::Result<ModelCard, MlError> {
    let model_type = quiver_sql::create_model::model_type(create, "MODEL")?;
    let mut builder = ModelBuilder::new(&create.name, &model_type)?.replace(create.replace);
    for (key, value) in &create.options {
        builder.set(key, value)?;
    }
    builder.check_batch()?;
    let workers = builder.workers();
    let (registry, run_url) = builder.run_folder(session).await?;
    let task = TrialTask {
        experiment: create.name.clone(),
        trial: String::new(),
        model_type,
        options: create.options.clone(),
        query: create.query.clone(),
        run_url: run_url.to_string(),
    };
    let transcript = run_log(session, &run_url).await?;
    let hooks = TrainHooks {
        log: session.log_sink().cloned(),
        transcript: Some(Arc::clone(&transcript)),
        ..Default::default()
    };
    let output = transcript
        .around(trainers.train_gang(&task, workers, GANG_RESTARTS, &hooks))
        .await?;
    let card = output
        .model
        .ok_or_else(|| MlError::Training("worker 0 returned no model".into()))?;
    let store = session.store_for(&run_url)?;
    let weights_path = quiver_engine::store::object_path(&run_url)?.join(TRIAL_WEIGHTS);
    let weights = get_bytes(&store, &weights_path)
        .await?
        .ok_or_else(|| err!(MlError::Checkpoint, "{run_url}{TRIAL_WEIGHTS} is missing"))?;
    registry.register(card, weights).await
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    type RunExperimentStream = EventStream<StatementEvent>;

    async fn hello(
        &self,
        request: Request<HelloRequest>,
    ) -> std::result::Result<Response<HelloReply>, Status> {
        log::info!("{} reached the driver", request.into_inner().who);
        Ok(Response::new(HelloReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }

    async fn abort_writes(
        &self,
        request: Request<AbortWritesRequest>,
    ) -> std::result::Result<Response<AbortWritesReply>, Status> {
        let AbortWritesRequest {
            destination,
            write_id,
        } = request.into_inner();
        log::info!("aborting the TFRecord write {write_id} to {destination}");
        // Every live executor stops its writers of the write and waits for them ...
        let request = AbortWritesRequest {
            destination: destination.clone(),
            write_id: write_id.clone(),
        };
        let replies = self
            .ask_executors(|mut client| {
                let request = request.clone();
                async move { client.abort_writes(request).await }
            })
            .await;
        let mut writers_stopped = 0;
        let mut running = Vec::new();
        for (executor, reply) in replies {
            match reply {
                Ok(reply) => writers_stopped += reply.writers_stopped,
                // A lost executor writes nothing any more.
                Err(e) if e.code() == Code::Unavailable => {
                    log::warn!("executor {executor} is unreachable: {}", e.message());
                }
                Err(e) => running.push(format!("executor {executor}: {}", e.message())),
            }
        }
        // ... then, unless a writer may still upload, the write's staging folder is removed.
        if !running.is_empty() {
            return Err(Status::failed_precondition(format!(
                "the TFRecord write to {destination} was not cleaned up: {}",
                running.join("; ")
            )));
        }
        let session = quiver_sql::session(self.session.clone())
            .map_err(|e| Status::internal(e.to_string()))?;
        let removed =
            quiver_sql::write::remove_staged(&session.context().state(), &destination, &write_id)
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
        log::info!(
            "aborted the TFRecord write {write_id} to {destination}: {writers_stopped} writers \
             stopped, {removed} staged files removed"
        );
        Ok(Response::new(AbortWritesReply {
            writers_stopped,
            files_removed: removed as u64,
        }))
    }

    async fn take_skipped_images(
        &self,
        request: Request<SkippedImagesRequest>,
    ) -> std::result::Result<Response<SkippedImages>, Status> {
        let request = request.into_inner();
        let replies = self
            .ask_executors(|mut client| {
                let request = request.clone();
                async move { client.take_skipped_images(request).await }
            })
            .await;
        let mut skipped = Skipped::default();
        let mut missing = Vec::new();
        for (executor, reply) in replies {
            match reply {
                Ok(reply) => skipped.merge(reply.into()),
                Err(e) => {
                    log::warn!("executor {executor} did not list its skipped images: {e}");
                    missing.push(executor);
                }
            }
        }
        let mut reply = SkippedImages::from(skipped);
        reply.missing = missing;
        Ok(Response::new(reply))
    }

    async fn run_experiment(
        &self,
        request: Request<StatementRequest>,
    ) -> std::result::Result<Response<EventStream<StatementEvent>>, Status> {
        let (create, session, trainers, events, receiver) =
            self.start(request, "experiment").await?;
        Ok(stream_reply(events, receiver, async move {
            log::info!("experiment {} starts", create.name);
            let last = match quiver_sql::create_model::run_experiment(
                &session,
                &create,
                Some(Arc::new(trainers)),
            )
            .await
            {
                Ok(report) => statement_event::Kind::DoneJson(
                    serde_json::to_string(&report.file).unwrap_or_default(),
                ),
                Err(e) => statement_event::Kind::Error(e.to_string()),
            };
            log::info!("experiment {} ended", create.name);
            event(last)
        }))
    }

    type TrainModelStream = EventStream<StatementEvent>;

    async fn train_model(
        &self,
        request: Request<StatementRequest>,
    ) -> std::result::Result<Response<EventStream<StatementEvent>>, Status> {
        let (create, session, trainers, events, receiver) = self.start(request, "model").await?;
        Ok(stream_reply(events, receiver, async move {
            log::info!("data-parallel training of model {} starts", create.name);
            let last = match train_model(&session, &create, &trainers).await {
                Ok(card) => statement_event::Kind::DoneJson(
                    serde_json::to_string(&card).unwrap_or_default(),
                ),
                Err(e) => statement_event::Kind::Error(e.to_string()),
            };
            log::info!("data-parallel training of model {} ended", create.name);
            event(last)
        }))
    }
}
