//! The served models: each registry folder's versions, loaded once and swapped in when a new
//! version is registered, and the optional dynamic batcher in front of each version.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use quiver_engine::Session;
use quiver_engine::{bail, err};
use quiver_operators::ml::device::Device;
use quiver_operators::ml::predict::LoadedModel;
use quiver_operators::ml::{MlError, Registry};
use tokio::sync::{mpsc, oneshot};

use crate::console::Loaded;

/// Why a request or the server failed; each maps to a gRPC code and an HTTP status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServeError {
    /// The model or version is not served.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed: wrong input name, shape, type, an undecodable image.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request is larger than `--max-request-bytes`.
    #[error("{0}")]
    TooLarge(String),
    /// A gRPC message larger than `--max-request-bytes`, refused while it was decoded (tonic's
    /// OUT_OF_RANGE).
    #[error("{0}")]
    OutOfRange(String),
    /// The server is shutting down or the model could not run.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl ServeError {
    /// TensorFlow's error code name, for REST statuses and prediction logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "NOT_FOUND",
            Self::InvalidArgument(_) => "INVALID_ARGUMENT",
            Self::TooLarge(_) => "RESOURCE_EXHAUSTED",
            Self::OutOfRange(_) => "OUT_OF_RANGE",
            Self::Unavailable(_) => "UNAVAILABLE",
            Self::Internal(_) => "INTERNAL",
        }
    }
}

impl From<MlError> for ServeError {
    fn from(e: MlError) -> Self {
        match e {
            MlError::NotFound(m) => Self::NotFound(m),
            MlError::Input(m) | MlError::Option(m) => Self::InvalidArgument(m),
            other => Self::Internal(other.to_string()),
        }
    }
}

/// Dynamic batching: concurrent requests to one version are merged into one forward pass.
#[derive(Debug, Clone)]
pub struct Batching {
    /// Rows per forward pass; a larger request runs alone.
    pub max_batch_size: usize,
    /// How long the first request of a batch waits for others.
    pub batch_timeout: Duration,
}

/// One request's examples waiting for the batcher.
struct Job {
    values: Vec<f32>,
    rows: usize,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, MlError>>,
}

/// One loaded version of a model.
#[derive(Debug)]
pub struct Servable {
    /// Its registry version.
    pub version: u64,
    /// The loaded model and its card.
    pub model: Arc<LoadedModel>,
    batcher: Option<mpsc::Sender<Job>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({} rows)", self.rows)
    }
}

impl Servable {
    fn new(version: u64, model: LoadedModel, batching: Option<&Batching>) -> Self {
        let model = Arc::new(model);
        let batcher = batching.map(|b| {
            let (tx, rx) = mpsc::channel(1024);
            tokio::spawn(batch_loop(Arc::clone(&model), version, rx, b.clone()));
            tx
        });
        Self {
            version,
            model,
            batcher,
        }
    }

    /// Class probabilities `[rows][classes]` for model-ready values, through the batcher when
    /// there is one.
    pub async fn infer(&self, values: Vec<f32>, rows: usize) -> Result<Vec<Vec<f32>>, ServeError> {
        quiver_engine::fault::point_async("serve_infer", &self.model.card.name)
            .await
            .map_err(|e| ServeError::Internal(e.to_string()))?;
        let result = match &self.batcher {
            Some(batcher) => {
                let (reply, answer) = oneshot::channel();
                batcher
                    .send(Job {
                        values,
                        rows,
                        reply,
                    })
                    .await
                    .map_err(|_| ServeError::Unavailable("the batcher has stopped".into()))?;
                answer
                    .await
                    .map_err(|_| ServeError::Unavailable("the batcher has stopped".into()))?
            }
            None => forward(Arc::clone(&self.model), self.version, values, rows).await,
        };
        Ok(result?)
    }
}

/// Collects jobs until `max_batch_size` rows or `batch_timeout` after the first, runs them as
/// one forward pass and hands each job its rows. One batch runs at a time, so requests that
/// arrive during a pass form the next batch.
async fn batch_loop(
    model: Arc<LoadedModel>,
    version: u64,
    mut jobs: mpsc::Receiver<Job>,
    batching: Batching,
) {
    while let Some(first) = jobs.recv().await {
        let deadline = tokio::time::Instant::now() + batching.batch_timeout;
        let mut rows = first.rows;
        let mut batch = vec![first];
        while rows < batching.max_batch_size {
            match tokio::time::timeout_at(deadline, jobs.recv()).await {
                Ok(Some(job)) => {
                    rows += job.rows;
                    batch.push(job);
                }
                _ => break,
            }
        }
        let mut values = Vec::with_capacity(batch.iter().map(|j| j.values.len()).sum());
        let mut replies = Vec::with_capacity(batch.len());
        for job in batch {
            values.extend_from_slice(&job.values);
            replies.push((job.rows, job.reply));
        }
        match forward(Arc::clone(&model), version, values, rows).await {
            Ok(probs) => {
                let mut probs = probs.into_iter();
                for (n, reply) in replies {
                    let _ = reply.send(Ok(probs.by_ref().take(n).collect()));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for (_, reply) in replies {
                    let _ = reply.send(Err(MlError::Training(message.clone())));
                }
            }
        }
    }
}

/// One forward pass of `rows` rows on a blocking thread, counted in the metrics.
async fn forward(
    model: Arc<LoadedModel>,
    version: u64,
    values: Vec<f32>,
    rows: usize,
) -> Result<Vec<Vec<f32>>, MlError> {
    super::metrics::forward_pass(&model.card.name, version, rows);
    tokio::task::spawn_blocking(move || model.probabilities_of(values, rows))
        .await
        .unwrap_or_else(|e| Err(err!(MlError::Training, "inference failed: {e}")))
}

/// One served name: where it comes from and its loaded versions.
#[derive(Debug)]
struct ServedModel {
    registry: Registry,
    /// The registry folder, for messages.
    url: String,
    /// `Some` when the command line pinned a version.
    pinned: Option<u64>,
    versions: RwLock<BTreeMap<u64, Arc<Servable>>>,
    /// Serialises loads of this model.
    loading: tokio::sync::Mutex<()>,
    /// The newest version whose load failed and was reported (retried quietly at each poll).
    failed: std::sync::Mutex<Option<u64>>,
}

impl ServedModel {
    /// The loaded version numbers, oldest first.
    fn loaded(&self) -> Vec<u64> {
        self.versions
            .read()
            .expect("versions lock")
            .keys()
            .copied()
            .collect()
    }
}

/// The models a server serves.
#[derive(Debug)]
pub struct Models {
    models: BTreeMap<String, ServedModel>,
    batching: Option<Batching>,
    device: Device,
    replicas: usize,
}

/// Splits `<store>/models/<name>[/<version>]` into the registry folder, name and version.
fn parse_model_location(location: &str) -> Result<(String, String, Option<u64>), ServeError> {
    let bad = |why: &str| {
        err!(
            ServeError::InvalidArgument,
            "--model {location}: {why}; expected <store>/models/<name> or \
             <store>/models/<name>/<version>"
        )
    };
    let trimmed = location.trim_end_matches('/');
    let (rest, last) = trimmed.rsplit_once('/').ok_or_else(|| bad("no folder"))?;
    let (rest, name, version) = match last.parse::<u64>() {
        Ok(v) => {
            let (rest, name) = rest.rsplit_once('/').ok_or_else(|| bad("no model name"))?;
            (rest, name, Some(v))
        }
        Err(_) => (rest, last, None),
    };
    if name.is_empty() || rest.is_empty() {
        return Err(bad("no model name"));
    }
    Ok((format!("{rest}/"), name.to_string(), version))
}

impl Models {
    /// Loads the newest (or pinned) version of each model folder.
    pub async fn open(
        session: &Session,
        locations: &[String],
        batching: Option<Batching>,
        device: Device,
        replicas: usize,
    ) -> Result<Self, ServeError> {
        let mut models = BTreeMap::new();
        for location in locations {
            let (root, name, pinned) = parse_model_location(location)?;
            let url = quiver_engine::resolve_location(&root)
                .map_err(|e| err!(ServeError::InvalidArgument, "--model {location}: {e}"))?;
            let store = session
                .store_for(&url)
                .map_err(|e| err!(ServeError::InvalidArgument, "--model {location}: {e}"))?;
            let path = quiver_engine::store::object_path(&url)
                .map_err(|e| err!(ServeError::InvalidArgument, "--model {location}: {e}"))?;
            if models.contains_key(&name) {
                bail!(
                    ServeError::InvalidArgument,
                    "--model {location}: a model named '{name}' is already served"
                );
            }
            let served = ServedModel {
                registry: Registry::new(store, path, url.to_string()),
                url: format!("{url}{name}/"),
                pinned,
                versions: RwLock::default(),
                loading: tokio::sync::Mutex::default(),
                failed: std::sync::Mutex::default(),
            };
            models.insert(name, served);
        }
        let models = Self {
            models,
            batching,
            device,
            replicas,
        };
        for (name, served) in &models.models {
            let version = match served.pinned {
                Some(v) => v,
                None => models.newest(name, served).await?.ok_or_else(|| {
                    err!(
                        ServeError::NotFound,
                        "model '{name}' has no registered version at {}",
                        served.url
                    )
                })?,
            };
            models.load(name, served, version).await?;
        }
        Ok(models)
    }

    async fn newest(&self, name: &str, served: &ServedModel) -> Result<Option<u64>, ServeError> {
        Ok(served.registry.versions(name).await?.last().copied())
    }

    /// Loads `version` of `name` unless it is loaded.
    async fn load(
        &self,
        name: &str,
        served: &ServedModel,
        version: u64,
    ) -> Result<Arc<Servable>, ServeError> {
        let _guard = served.loading.lock().await;
        if let Some(s) = served.versions.read().expect("versions lock").get(&version) {
            return Ok(Arc::clone(s));
        }
        let model = LoadedModel::load_on(
            &served.registry,
            name,
            Some(version),
            self.device,
            self.replicas,
        )
        .await?;
        let servable = Arc::new(Servable::new(version, model, self.batching.as_ref()));
        served
            .versions
            .write()
            .expect("versions lock")
            .insert(version, Arc::clone(&servable));
        Ok(servable)
    }

    fn served(&self, name: &str) -> Result<&ServedModel, ServeError> {
        self.models.get(name).ok_or_else(|| {
            err!(
                ServeError::NotFound,
                "model '{name}' is not served here (served: {})",
                self.names().join(", ")
            )
        })
    }

    /// The served model names.
    pub fn names(&self) -> Vec<String> {
        self.models.keys().cloned().collect()
    }

    /// The version a request gets: the given one (loaded on first use when the model is not
    /// pinned), or the newest loaded.
    pub async fn get(&self, name: &str, version: Option<u64>) -> Result<Arc<Servable>, ServeError> {
        let served = self.served(name)?;
        if let Some(v) = version {
            if let Some(s) = served.versions.read().expect("versions lock").get(&v) {
                return Ok(Arc::clone(s));
            }
            let available = || {
                served
                    .loaded()
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if served.pinned.is_some() {
                bail!(
                    ServeError::NotFound,
                    "model '{name}' version {v} is not served (served versions: {})",
                    available()
                );
            }
            return match self.load(name, served, v).await {
                Err(ServeError::NotFound(_)) => Err(err!(
                    ServeError::NotFound,
                    "model '{name}' has no version {v} (registered at {}; served versions: {})",
                    served.url,
                    available()
                )),
                other => other,
            };
        }
        served
            .versions
            .read()
            .expect("versions lock")
            .values()
            .next_back()
            .cloned()
            .ok_or_else(|| {
                err!(
                    ServeError::Unavailable,
                    "model '{name}' has no loaded version"
                )
            })
    }

    /// The loaded versions of `name`, oldest first.
    pub fn versions(&self, name: &str) -> Result<Vec<u64>, ServeError> {
        Ok(self.served(name)?.loaded())
    }

    /// The versions a status request reports: `version` (loaded if need be), or every loaded
    /// version of `name`, oldest first.
    pub async fn status(&self, name: &str, version: Option<u64>) -> Result<Vec<u64>, ServeError> {
        match version {
            Some(v) => Ok(vec![self.get(name, Some(v)).await?.version]),
            None => self.versions(name),
        }
    }

    /// Lines describing what is served, for the log.
    pub fn describe(&self) -> Vec<String> {
        self.loaded()
            .into_iter()
            .map(|m| {
                format!(
                    "model '{}' version {} ({}, {} classes, on {:?}, {} replica(s)) from {}{}",
                    m.name,
                    m.versions.last().copied().unwrap_or(0),
                    m.model_type,
                    m.classes,
                    self.device,
                    self.replicas,
                    m.source,
                    if m.follows {
                        ", following new versions"
                    } else {
                        ", pinned"
                    }
                )
            })
            .collect()
    }

    /// What is loaded now, with each version's forward passes, for the console.
    pub fn loaded(&self) -> Vec<Loaded> {
        self.models
            .iter()
            .map(|(name, served)| {
                let versions = served.versions.read().expect("versions lock");
                let newest = versions.values().next_back();
                Loaded {
                    name: name.clone(),
                    versions: versions.keys().copied().collect(),
                    model_type: newest
                        .map_or("-", |s| s.model.card.architecture.model_type())
                        .to_string(),
                    classes: newest.map_or(0, |s| s.model.card.labels.labels.len()),
                    source: served.url.clone(),
                    follows: served.pinned.is_none(),
                    passes: super::metrics::batches(name),
                }
            })
            .collect()
    }

    /// Loads versions registered since the last poll; returns what changed, for the log.
    pub async fn poll(&self) -> Vec<String> {
        let mut changes = Vec::new();
        for (name, served) in &self.models {
            if served.pinned.is_some() {
                continue;
            }
            if let Err(e) = quiver_engine::fault::point_async("serve_poll", name).await {
                changes.push(format!("model '{name}': {e}"));
                continue;
            }
            let newest_loaded = served.loaded().last().copied();
            match self.newest(name, served).await {
                Ok(Some(v)) if Some(v) > newest_loaded => match self.load(name, served, v).await {
                    Ok(_) => {
                        // The new version replaces the others; requests in flight keep theirs,
                        // and a request naming an older version loads it again.
                        served
                            .versions
                            .write()
                            .expect("versions lock")
                            .retain(|&k, _| k == v);
                        *served.failed.lock().expect("failed lock") = None;
                        changes.push(format!("model '{name}' version {v} loaded and serving"))
                    }
                    Err(e) => {
                        let mut failed = served.failed.lock().expect("failed lock");
                        if *failed != Some(v) {
                            *failed = Some(v);
                            changes.push(format!(
                                "model '{name}' version {v} failed to load (retrying at each \
                                 poll, still serving the previous version): {e}"
                            ));
                        }
                    }
                },
                Ok(_) => {}
                Err(e) => changes.push(format!("model '{name}': cannot poll {}: {e}", served.url)),
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_model_locations() {
        let p = |s: &str| parse_model_location(s).map_err(|e| e.to_string());
        assert_eq!(
            p("./quiver-data/models/fashion").unwrap(),
            ("./quiver-data/models/".into(), "fashion".into(), None)
        );
        assert_eq!(
            p("s3://bucket/models/fashion/3/").unwrap(),
            ("s3://bucket/models/".into(), "fashion".into(), Some(3))
        );
        assert!(p("fashion").unwrap_err().contains("--model fashion"));
    }
}
