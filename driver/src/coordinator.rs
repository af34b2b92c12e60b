//! The driver's experiment coordinator: runs the CREATE EXPERIMENT statements of cluster clients
//! with one trial per executor slot, through every live executor's trainer, and streams the
//! experiment's live log back. Everything the trials write goes to the shared store.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use quiver_engine::SessionOptions;
use quiver_executor::trainer::{ClusterTrainers, TrainerDirectory};
use quiver_sql::cluster::proto::coordinator_server::Coordinator;
use quiver_sql::cluster::proto::{ExperimentEvent, ExperimentRequest, experiment_event};
use quiver_sql::statements::CreateModel;
use quiver_sql::tls::Tls;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};

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

type EventStream = Pin<Box<dyn Stream<Item = std::result::Result<ExperimentEvent, Status>> + Send>>;

fn event(kind: experiment_event::Kind) -> ExperimentEvent {
    ExperimentEvent { kind: Some(kind) }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    type RunExperimentStream = EventStream;

    async fn run_experiment(
        &self,
        request: Request<ExperimentRequest>,
    ) -> std::result::Result<Response<EventStream>, Status> {
        let create: CreateModel = serde_json::from_str(&request.into_inner().create_json)
            .map_err(|e| Status::invalid_argument(format!("bad experiment: {e}")))?;
        let (events, receiver) = mpsc::unbounded_channel();
        let log = events.clone();
        let name = create.name.clone();
        let session = quiver_sql::session(self.session.clone())
            .map_err(|e| Status::internal(e.to_string()))?
            .with_log(Arc::new(move |line: &str| {
                log::info!("experiment {name}: {line}");
                let _ = log.send(event(experiment_event::Kind::Log(line.to_string())));
            }));
        let trainers = ClusterTrainers::new(Arc::clone(&self.directory), self.tls.clone())
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        tokio::spawn(async move {
            log::info!("experiment {} starts", create.name);
            let last = match quiver_sql::statements::run_experiment(
                &session,
                &create,
                Some(Arc::new(trainers)),
            )
            .await
            {
                Ok(report) => experiment_event::Kind::DoneJson(
                    serde_json::to_string(&report.file).unwrap_or_default(),
                ),
                Err(e) => experiment_event::Kind::Error(e.to_string()),
            };
            log::info!("experiment {} ended", create.name);
            let _ = events.send(event(last));
        });
        Ok(Response::new(Box::pin(
            UnboundedReceiverStream::new(receiver).map(Ok),
        )))
    }
}
