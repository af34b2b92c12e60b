//! `quiver serve`: registered models served over TensorFlow Serving's gRPC API
//! (`tensorflow.serving.PredictionService` and `ModelService`) and its REST API, with optional
//! dynamic batching, mutual TLS, hot version swaps, prediction logs in the store and Prometheus
//! metrics.

pub mod convert;
pub mod grpc;
mod metrics;
pub mod models;
pub mod plog;
pub mod rest;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quiver_engine::Session;

use crate::console::Console;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use models::{Batching, Models, ServeError};
use quiver_engine::{bail, err};

/// The TensorFlow Serving protocol messages and services (compiled from `driver/proto/`).
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    /// `tensorflow.*`: tensors, shapes, signatures.
    pub mod tensorflow {
        tonic::include_proto!("tensorflow");
        /// `tensorflow.serving.*`: requests, responses and services.
        pub mod serving {
            tonic::include_proto!("tensorflow.serving");
        }
    }
}

/// How `quiver serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Model folders: `<store>/models/<name>` (newest version, followed) or
    /// `<store>/models/<name>/<version>` (pinned).
    pub models: Vec<String>,
    /// The address both servers bind.
    pub host: String,
    /// The gRPC port (0 picks a free one).
    pub grpc_port: u16,
    /// The REST port (0 picks a free one).
    pub rest_port: u16,
    /// TLS files; plain TCP without them.
    pub tls: Option<quiver_sql::tls::TlsFiles>,
    /// Where the models run.
    pub device: quiver_operators::ml::device::Device,
    /// Copies of each loaded version that run forward passes concurrently.
    pub replicas: usize,
    /// Dynamic batching; each request runs alone without it.
    pub batching: Option<Batching>,
    /// How often the registry is polled for new versions.
    pub poll_interval: Duration,
    /// The largest request accepted, in bytes (gRPC message or REST body).
    pub max_request_bytes: usize,
    /// Whether predictions are logged to `serving/<model>/logs/` in the default store.
    pub prediction_log: bool,
    /// How often buffered prediction logs are written.
    pub log_flush_interval: Duration,
    /// How long in-flight requests may take to finish on shutdown.
    pub shutdown_grace: Duration,
}

/// What request handlers share.
#[derive(Debug)]
pub struct ServerState {
    /// The served models.
    pub models: Models,
    /// The prediction log.
    pub log: plog::PredictionLog,
    /// The largest request accepted, in bytes.
    pub max_request_bytes: usize,
}

/// Runs the servers until `shutdown` turns true (or Ctrl-C / SIGTERM when `None`), then lets
/// in-flight requests finish and writes the remaining prediction logs.
pub async fn serve(
    session: &Session,
    options: ServeOptions,
    shutdown: Option<watch::Receiver<bool>>,
) -> Result<(), ServeError> {
    if options.models.is_empty() {
        return Err(ServeError::InvalidArgument(
            "no model to serve: pass --model <store>/models/<name>[/<version>]".into(),
        ));
    }
    let tls = options
        .tls
        .as_ref()
        .map(quiver_sql::tls::Tls::load)
        .transpose()
        .map_err(|e| ServeError::InvalidArgument(e.to_string()))?;
    let models = Models::open(
        session,
        &options.models,
        options.batching.clone(),
        options.device,
        options.replicas,
    )
    .await?;
    let log = if options.prediction_log {
        plog::PredictionLog::start(session, options.log_flush_interval)?
    } else {
        plog::PredictionLog::disabled()
    };
    metrics::init();
    let state = Arc::new(ServerState {
        models,
        log,
        max_request_bytes: options.max_request_bytes,
    });

    let bind = |port: u16| {
        let host = options.host.clone();
        async move {
            TcpListener::bind((host.as_str(), port))
                .await
                .map_err(|e| err!(ServeError::Internal, "cannot listen on {host}:{port}: {e}"))
        }
    };
    let grpc_listener = bind(options.grpc_port).await?;
    let rest_listener = bind(options.rest_port).await?;
    let addr = |l: &TcpListener| {
        l.local_addr()
            .map_err(|e| ServeError::Internal(e.to_string()))
    };
    let (grpc_addr, rest_addr): (SocketAddr, SocketAddr) =
        (addr(&grpc_listener)?, addr(&rest_listener)?);

    let (stop_tx, stop_rx) = watch::channel(false);
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!(
        "quiver serve: gRPC on {grpc_addr}, REST on {scheme}://{rest_addr} ({}{})",
        if tls.as_ref().is_some_and(|t| t.mutual()) {
            "mutual TLS"
        } else if tls.is_some() {
            "TLS"
        } else {
            "plain TCP"
        },
        match &options.batching {
            Some(b) => format!(
                ", dynamic batching up to {} rows within {} µs",
                b.max_batch_size,
                b.batch_timeout.as_micros()
            ),
            None => String::new(),
        }
    );
    for line in state.models.describe() {
        eprintln!("quiver serve: {line}");
    }

    let grpc = tokio::spawn(grpc::run(
        Arc::clone(&state),
        grpc_listener,
        tls.clone(),
        stop_rx.clone(),
    ));
    let console = Console::new(session)
        .map_err(|e| err!(ServeError::Internal, "console: {e}"))?
        .with_serving({
            let state = Arc::clone(&state);
            Arc::new(move || state.models.loaded())
        });
    let rest = tokio::spawn(rest::run(
        (Arc::clone(&state), crate::console::pages(Arc::new(console))),
        rest_listener,
        tls,
        stop_rx.clone(),
        options.shutdown_grace,
    ));
    let poller = tokio::spawn(poll_registry(
        Arc::clone(&state),
        options.poll_interval,
        stop_rx,
    ));
    eprintln!("quiver serve: ready");

    match shutdown {
        Some(mut rx) => {
            let _ = rx.wait_for(|stop| *stop).await;
        }
        None => crate::shutdown_signal().await,
    }
    eprintln!("quiver serve: shutting down, finishing in-flight requests");
    let _ = stop_tx.send(true);
    let join = |r: Result<Result<(), ServeError>, tokio::task::JoinError>| match r {
        Ok(r) => r,
        Err(e) => Err(err!(ServeError::Internal, "server task failed: {e}")),
    };
    let grpc = join(grpc.await);
    let rest = join(rest.await);
    let _ = poller.await;
    state.log.close().await;
    eprintln!("quiver serve: stopped");
    grpc.and(rest)
}

/// Loads newly registered versions every `interval` until the servers stop.
async fn poll_registry(
    state: Arc<ServerState>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        for line in state.models.poll().await {
            eprintln!("quiver serve: {line}");
        }
    }
}

/// Who asks for a prediction, for checks and the prediction log.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// `grpc` or `rest`.
    pub protocol: &'static str,
    /// `predict` or `classify`.
    pub method: &'static str,
    /// The model name.
    pub model: &'a str,
    /// The version asked for; the newest when `None`.
    pub version: Option<u64>,
    /// The signature asked for (`""` is the default).
    pub signature: &'a str,
}

/// A prediction: the version that made it and the class probabilities of each example.
#[derive(Debug)]
pub struct Prediction {
    /// The version that answered.
    pub servable: Arc<models::Servable>,
    /// `[rows][classes]`.
    pub probabilities: Vec<Vec<f32>>,
}

/// The most examples of one request that are prepared and run in one forward pass.
pub const MAX_ROWS_PER_PASS: usize = 256;

/// The prediction-log folder of requests for models that are not served (a client must not
/// be able to create log folders for arbitrary names).
pub const UNKNOWN_MODELS: &str = "_unknown";

/// The signature every served model has.
pub const SIGNATURE: &str = "serving_default";

impl ServerState {
    /// Logs a request refused before its body could be read (too large, not JSON).
    pub fn refused(&self, call: Call<'_>, started: std::time::Instant, error: &ServeError) {
        let timestamp = quiver_engine::time::unix_now() - started.elapsed().as_secs_f64();
        self.log_request(call, started, timestamp, None, None, &Err(error.clone()));
    }

    /// Logs one request with its outcome.
    fn log_request(
        &self,
        call: Call<'_>,
        started: std::time::Instant,
        timestamp: f64,
        version: Option<u64>,
        summary: Option<convert::InputSummary>,
        result: &Result<Prediction, ServeError>,
    ) {
        let (labels, scores) = match result {
            Ok(p) => convert::best(&p.probabilities)
                .into_iter()
                .map(|(i, s)| (p.servable.model.card.labels.labels[i].clone(), s))
                .unzip(),
            Err(_) => (Vec::new(), Vec::new()),
        };
        let served = self.models.names().iter().any(|n| n == call.model);
        let model: String = call.model.chars().take(256).collect();
        let status = result.as_ref().map_or_else(ServeError::code, |_| "OK");
        metrics::request(
            if served { &model } else { UNKNOWN_MODELS },
            version,
            status,
            started.elapsed(),
        );
        self.log.record(plog::PredictionRecord {
            timestamp,
            folder: if served {
                model.clone()
            } else {
                UNKNOWN_MODELS.to_string()
            },
            model,
            version,
            protocol: call.protocol,
            method: call.method,
            rows: summary
                .as_ref()
                .map_or(0, |s| s.shape.first().copied().unwrap_or(0)),
            input: summary,
            labels,
            scores,
            latency_ms: started.elapsed().as_secs_f64() * 1000.0,
            status,
            error: result.as_ref().err().map(ToString::to_string),
        });
    }

    /// Checks the request's inputs, runs the model and logs the request.
    pub async fn predict(
        &self,
        call: Call<'_>,
        inputs: Result<Vec<(String, convert::InputTensor)>, ServeError>,
    ) -> Result<Prediction, ServeError> {
        let started = std::time::Instant::now();
        let timestamp = quiver_engine::time::unix_now();
        let mut summary = None;
        let mut version = None;
        let result = async {
            if !call.signature.is_empty() && call.signature != SIGNATURE {
                bail!(
                    ServeError::InvalidArgument,
                    "model '{}' has no signature '{}' (it has '{SIGNATURE}')",
                    call.model,
                    call.signature
                );
            }
            let servable = self.models.get(call.model, call.version).await?;
            version = Some(servable.version);
            let spec = &servable.model.card.input;
            let mut inputs = inputs?;
            let input = match inputs.len() {
                // REST bodies that do not name the input give it as "".
                1 if inputs[0].0 == spec.column || inputs[0].0.is_empty() => inputs.remove(0).1,
                0 => {
                    bail!(
                        ServeError::InvalidArgument,
                        "the request has no input; model '{}' takes input '{}'",
                        call.model,
                        spec.column
                    );
                }
                _ => {
                    let names: Vec<&str> = inputs.iter().map(|(n, _)| n.as_str()).collect();
                    bail!(
                        ServeError::InvalidArgument,
                        "model '{}' takes one input named '{}', not {}",
                        call.model,
                        spec.column,
                        names.join(", ")
                    );
                }
            };
            // A large request is decoded and run in passes, so that its memory beyond the
            // request itself is one pass's.
            let rows = input.rows();
            let mut probabilities = Vec::with_capacity(rows);
            let mut summaries = Vec::new();
            let mut start = 0;
            loop {
                let end = rows.min(start + MAX_ROWS_PER_PASS);
                let prepared = convert::prepare(spec, &spec.column, &input, start..end)?;
                summaries.push(prepared.summary);
                probabilities.extend(servable.infer(prepared.values, prepared.rows).await?);
                start = end;
                if start >= rows {
                    break;
                }
            }
            summary = convert::InputSummary::merge(&summaries, input.shape());
            Ok(Prediction {
                servable,
                probabilities,
            })
        }
        .await;
        self.log_request(call, started, timestamp, version, summary, &result);
        result
    }
}
