//! An executor's trainer: a [`TrainerService`] that trains one trial per slot, exactly as the
//! embedded engine's [`LocalTrialRunner`] does, streams the trial's log and epochs back to the
//! driver (whose coordinator places the trials), carries a data-parallel gang's ring frames, and
//! stops the executor's TFRecord writers of an aborted COPY.

use std::sync::Arc;

use futures::FutureExt;
use quiver_engine::{Progress, QuiverError, Result};
use quiver_operators::experiment::{LocalTrialRunner, TrialRunner, TrialTask};
use quiver_operators::ml::collective::Ring;
use quiver_operators::ml::{EpochMetrics, MlError, TrainHooks};
use quiver_sql::cluster::proto::trainer_server::{Trainer, TrainerServer};
use quiver_sql::cluster::proto::{
    AbortWritesReply, AbortWritesRequest, RingDone, RingFrame, SkippedImages, SkippedImagesRequest,
    TrialControl, TrialEvent, trial_control, trial_event,
};
use quiver_sql::reply::{EventStream, stream_reply};
use quiver_sql::tls::Tls;
use tokio::sync::mpsc;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::Router;
use tonic::{Request, Response, Status, Streaming};

use crate::ring::{RING_FRAME, RING_WINDOW, RingInboxes, TrainerLink};
use quiver_engine::err;

/// An executor's trainer: its slots, each with its share of the cores or its GPU.
pub struct TrainerService {
    trials: Arc<LocalTrialRunner>,
    /// The executor's counters, where its tasks file the images they skip.
    progress: Arc<Progress>,
    id: String,
    tls: Option<Tls>,
    inboxes: RingInboxes,
}

impl TrainerService {
    /// A trainer named `id` over `trials`' slots, reaching other trainers with `tls`; it hands
    /// out the skipped images filed in `progress`.
    pub fn new(
        id: String,
        trials: LocalTrialRunner,
        progress: Arc<Progress>,
        tls: Option<Tls>,
    ) -> Self {
        Self {
            trials: Arc::new(trials),
            progress,
            id,
            tls,
            inboxes: RingInboxes::default(),
        }
    }

    /// Where this trainer delivers the ring frames of the gang workers it hosts.
    pub fn inboxes(&self) -> RingInboxes {
        self.inboxes.clone()
    }

    /// This trainer as a gRPC server (with its TLS), which also serves the process's Prometheus
    /// metrics at `/metrics`. Its HTTP/2 windows and frames are large,
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
                .map_err(|e| err!(QuiverError::Cluster, "trainer TLS: {e}"))?;
        }
        let trainer = TrainerServer::new(self)
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20);
        // Prometheus scrapes the executor here too, over HTTP/1.1: the driver knows this port.
        let routes = Routes::new(trainer)
            .into_axum_router()
            .route("/metrics", axum::routing::get(quiver_engine::metrics::page));
        Ok(server.accept_http1(true).add_routes(Routes::from(routes)))
    }
}

fn event(kind: trial_event::Kind) -> TrialEvent {
    TrialEvent { kind: Some(kind) }
}

#[tonic::async_trait]
impl Trainer for TrainerService {
    type RunTrialStream = EventStream<TrialEvent>;

    async fn abort_writes(
        &self,
        request: Request<AbortWritesRequest>,
    ) -> std::result::Result<Response<AbortWritesReply>, Status> {
        let request = request.into_inner();
        // Writers that did not stop may still upload: the driver must not remove their files.
        let stopped = quiver_sql::write::stop_writers(&request.destination, &request.write_id)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(AbortWritesReply {
            writers_stopped: stopped as u32,
            files_removed: 0,
        }))
    }

    async fn take_skipped_images(
        &self,
        request: Request<SkippedImagesRequest>,
    ) -> std::result::Result<Response<SkippedImages>, Status> {
        let statement = request.into_inner().statement_id;
        Ok(Response::new(self.progress.take_skipped(&statement).into()))
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
    ) -> std::result::Result<Response<EventStream<TrialEvent>>, Status> {
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
            .trials
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
        let trials = Arc::clone(&self.trials);
        let id = self.id.clone();
        let worker = start.gang.is_some();
        Ok(stream_reply(events, receiver, async move {
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
                result = trials.run_trial(&slot, &task, hooks) => result,
                () = cancelled => Err(MlError::Training("the driver stopped the gang".into())),
            };
            let last = match result {
                Ok(output) => trial_event::Kind::OutputJson(
                    serde_json::to_string(&output).unwrap_or_default(),
                ),
                Err(e) => trial_event::Kind::Error(e.to_string()),
            };
            log::info!("trainer {id}: {} ended", task.trial);
            event(last)
        }))
    }
}
