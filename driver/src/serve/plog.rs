//! Prediction logs: one JSON line per request (model, version, protocol, input summary,
//! predictions, latency, status), buffered and written in batches as newline-delimited JSON
//! files under `serving/<model>/logs/` in the default store, where SQL can read them:
//! `CREATE EXTERNAL TABLE p STORED AS JSON LOCATION '<store>/serving/<model>/logs/'`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::ObjectStore;
use object_store::path::Path;
use quiver_engine::Session;
use quiver_engine::store::objects::put_bytes;
use quiver_engine::time::unix_now;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::ServeError;
use super::convert::InputSummary;
use quiver_engine::err;

/// Records buffered per model before a file is written, whatever the flush interval.
const MAX_BUFFERED: usize = 5000;

/// One logged request.
#[derive(Debug, Clone, Serialize)]
pub struct PredictionRecord {
    /// Seconds since the Unix epoch when the request arrived.
    pub timestamp: f64,
    /// The model name requested.
    pub model: String,
    /// The folder of `serving/` the record goes to: the model's, or
    /// [`super::UNKNOWN_MODELS`]'s for a model that is not served.
    #[serde(skip)]
    pub folder: String,
    /// The version that answered (NULL when none did).
    pub version: Option<u64>,
    /// `grpc` or `rest`.
    pub protocol: &'static str,
    /// `predict` or `classify`.
    pub method: &'static str,
    /// Examples in the request.
    pub rows: usize,
    /// The input's type, shape and value statistics.
    pub input: Option<InputSummary>,
    /// The predicted label of each example.
    pub labels: Vec<String>,
    /// The probability of each predicted label.
    pub scores: Vec<f32>,
    /// Time from arrival to answer, in milliseconds.
    pub latency_ms: f64,
    /// `OK` or TensorFlow's error code name.
    pub status: &'static str,
    /// The error message, if any.
    pub error: Option<String>,
}

/// The prediction log's writer.
#[derive(Debug)]
pub struct PredictionLog {
    sender: Mutex<Option<mpsc::UnboundedSender<PredictionRecord>>>,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl PredictionLog {
    /// A log that records nothing.
    pub fn disabled() -> Self {
        Self {
            sender: Mutex::new(None),
            task: tokio::sync::Mutex::new(None),
        }
    }

    /// Starts the writer: records are written every `flush` (and when many are buffered).
    pub fn start(session: &Session, flush: Duration) -> Result<Self, ServeError> {
        let (store, root, url) = session
            .default_folder("serving/")
            .map_err(|e| err!(ServeError::Internal, "prediction log: {e}"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            store,
            root,
            url: url.to_string(),
            // Several servers may log the same model: file names carry the process id.
            prefix: format!("{}-{}", unix_now() as u64, std::process::id()),
            sequence: 0,
        };
        let task = tokio::spawn(writer.run(rx, flush));
        Ok(Self {
            sender: Mutex::new(Some(tx)),
            task: tokio::sync::Mutex::new(Some(task)),
        })
    }

    /// Queues one record.
    pub fn record(&self, record: PredictionRecord) {
        if let Some(tx) = self.sender.lock().expect("log lock").as_ref() {
            let _ = tx.send(record);
        }
    }

    /// Writes what is buffered and stops the writer.
    pub async fn close(&self) {
        self.sender.lock().expect("log lock").take();
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }
}

struct Writer {
    store: Arc<dyn ObjectStore>,
    root: Path,
    url: String,
    prefix: String,
    sequence: u64,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<PredictionRecord>, flush: Duration) {
        let mut buffered: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut count = 0usize;
        let mut ticker = tokio::time::interval(flush);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                record = rx.recv() => match record {
                    Some(record) => {
                        let line = buffered.entry(record.folder.clone()).or_default();
                        serde_json::to_writer(&mut *line, &record).expect("records serialise");
                        line.push(b'\n');
                        count += 1;
                        if count >= MAX_BUFFERED {
                            self.flush(&mut buffered).await;
                            count = 0;
                        }
                    }
                    None => break,
                },
                _ = ticker.tick() => {
                    self.flush(&mut buffered).await;
                    count = 0;
                }
            }
        }
        self.flush(&mut buffered).await;
    }

    /// Writes one file per model with what is buffered; a failed write is reported and kept
    /// for the next flush.
    async fn flush(&mut self, buffered: &mut BTreeMap<String, Vec<u8>>) {
        let models: Vec<String> = buffered.keys().cloned().collect();
        for model in models {
            let lines = buffered.remove(&model).expect("listed");
            if lines.is_empty() {
                continue;
            }
            self.sequence += 1;
            let file = format!("{}-{:06}.json", self.prefix, self.sequence);
            let path = self
                .root
                .clone()
                .join(model.as_str())
                .join("logs")
                .join(file.as_str());
            if let Err(e) = put_bytes(&self.store, &path, lines.clone()).await {
                eprintln!(
                    "quiver serve: cannot write the prediction log {}{model}/logs/{file}: {e}",
                    self.url
                );
                buffered.insert(model, lines);
            }
        }
    }
}
