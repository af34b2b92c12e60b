//! Training run folders, `training/<model>/v<N>/` in the default store: the run's `log.txt`
//! written while it trains, and what a reader (the console) finds in a folder.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::ObjectStore;
use object_store::path::Path;
use quiver_engine::Session;
use quiver_engine::store::objects::{get_bytes, list, list_all, put_bytes};
use quiver_engine::time::{unix_now, utc_timestamp};

use super::{EpochMetrics, MlError};

/// The folder of the default store that holds the training runs.
pub const TRAINING: &str = "training/";

/// A run's log: lines kept in memory and written to the store every few seconds (object stores
/// cannot append), so that it can be followed while the run trains.
pub struct RunLog {
    store: Arc<dyn ObjectStore>,
    path: Path,
    text: Mutex<String>,
    dirty: AtomicBool,
}

impl RunLog {
    /// The log at `path`, continuing what an earlier attempt wrote there.
    pub async fn open(store: &Arc<dyn ObjectStore>, path: Path) -> Result<Arc<Self>, MlError> {
        let text = get_bytes(store, &path)
            .await?
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        Ok(Arc::new(Self {
            store: Arc::clone(store),
            path,
            text: Mutex::new(text),
            dirty: AtomicBool::new(false),
        }))
    }

    /// Appends `line` with the time.
    pub fn line(&self, line: &str) {
        let mut text = self.text.lock().expect("log lock");
        text.push_str(&format!("{} {line}\n", utc_timestamp(unix_now())));
        self.dirty.store(true, Ordering::Release);
    }

    /// Writes the lines so far, if there are new ones.
    pub async fn flush(&self) -> Result<(), MlError> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let text = self.text.lock().expect("log lock").clone();
        Ok(put_bytes(&self.store, &self.path, text.into_bytes()).await?)
    }

    /// Flushes every two seconds until the returned guard is dropped.
    pub fn follow(self: &Arc<Self>) -> Following {
        let log = Arc::clone(self);
        Following(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let _ = log.flush().await;
            }
        }))
    }

    /// Runs `work` with the log followed; its failure is the log's last line.
    pub async fn around<T>(
        self: &Arc<Self>,
        work: impl Future<Output = Result<T, MlError>>,
    ) -> Result<T, MlError> {
        let following = self.follow();
        let result = work.await;
        drop(following);
        if let Err(e) = &result {
            self.line(&format!("{FAILED}{e}"));
        }
        self.flush().await?;
        result
    }
}

/// How the failure line of a run's log begins.
const FAILED: &str = "failed: ";

/// Why the run whose log is `log` failed, if its last line says it did.
pub fn failure(log: &str) -> Option<&str> {
    let last = log.lines().last()?;
    last.split_once(' ')?.1.strip_prefix(FAILED)
}

/// The `log.txt` of the run folder at `run_url`.
pub async fn run_log(session: &Session, run_url: &url::Url) -> Result<Arc<RunLog>, MlError> {
    let store = session.store_for(run_url)?;
    let dir = quiver_engine::store::object_path(run_url)?;
    RunLog::open(&store, dir.clone().join("log.txt")).await
}

/// Stops a [`RunLog::follow`] when dropped.
pub struct Following(tokio::task::JoinHandle<()>);

impl Drop for Following {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The epochs a run folder's `metrics.jsonl` holds so far.
pub async fn history(
    store: &Arc<dyn ObjectStore>,
    dir: &Path,
) -> Result<Vec<EpochMetrics>, MlError> {
    let Some(bytes) = get_bytes(store, &dir.clone().join("metrics.jsonl")).await? else {
        return Ok(Vec::new());
    };
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(MlError::from))
        .collect()
}

/// The training runs of a store.
pub struct Runs {
    store: Arc<dyn ObjectStore>,
    root: Path,
    url: String,
}

/// An object in a run folder.
#[derive(Debug, Clone)]
pub struct RunFile {
    /// Its path inside the run folder (`checkpoints/epoch-2/weights.safetensors`).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written, in seconds since the epoch.
    pub modified: f64,
}

/// What a run folder holds.
#[derive(Debug, Clone)]
pub struct RunFolder {
    /// The model it trains.
    pub model: String,
    /// The version it trains.
    pub version: u64,
    /// The folder's URL.
    pub url: String,
    /// Its objects, by name.
    pub files: Vec<RunFile>,
    /// The epochs finished so far.
    pub history: Vec<EpochMetrics>,
}

impl RunFolder {
    /// When anything in the folder was last written.
    pub fn modified(&self) -> f64 {
        self.files.iter().map(|f| f.modified).fold(0.0, f64::max)
    }

    /// Whether the folder holds `name`.
    pub fn has(&self, name: &str) -> bool {
        self.files.iter().any(|f| f.name == name)
    }
}

impl Runs {
    /// The runs in `session`'s default store.
    pub fn new(session: &Session) -> Result<Self, MlError> {
        let (store, root, url) = session.default_folder(TRAINING)?;
        Ok(Self {
            store,
            root,
            url: url.to_string(),
        })
    }

    /// Every run, as (model, version), by model and version.
    pub async fn list(&self) -> Result<Vec<(String, u64)>, MlError> {
        let mut runs = Vec::new();
        for model in list(&self.store, &self.root).await?.dirs {
            let folder = self.root.clone().join(model.as_str());
            for version in list(&self.store, &folder).await?.dirs {
                if let Some(v) = version.strip_prefix('v').and_then(|v| v.parse().ok()) {
                    runs.push((model.clone(), v));
                }
            }
        }
        runs.sort();
        Ok(runs)
    }

    fn dir(&self, model: &str, version: u64) -> Path {
        self.root
            .clone()
            .join(model)
            .clone()
            .join(format!("v{version}"))
    }

    /// The folder of `model`'s run for `version`.
    pub async fn folder(&self, model: &str, version: u64) -> Result<RunFolder, MlError> {
        let dir = self.dir(model, version);
        let prefix = format!("{dir}/");
        let mut files: Vec<RunFile> = list_all(&self.store, &dir)
            .await?
            .into_iter()
            .map(|o| RunFile {
                name: o.location.as_ref().trim_start_matches(&prefix).to_string(),
                size: o.size,
                modified: o.last_modified.timestamp_millis() as f64 / 1e3,
            })
            .collect();
        if files.is_empty() {
            return Err(MlError::NotFound(format!(
                "there is no training run of model '{model}' version {version} in {}",
                self.url
            )));
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(RunFolder {
            model: model.to_string(),
            version,
            url: format!("{}{model}/v{version}/", self.url),
            history: history(&self.store, &dir).await?,
            files,
        })
    }

    /// An object of a run folder (`log.txt`, `augmentations.png`), if it is there.
    pub async fn file(
        &self,
        model: &str,
        version: u64,
        name: &str,
    ) -> Result<Option<Vec<u8>>, MlError> {
        Ok(get_bytes(&self.store, &self.dir(model, version).clone().join(name)).await?)
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    #[tokio::test]
    async fn a_failed_run_logs_why_last_and_a_finished_one_does_not() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = Path::from("training/m/v1/log.txt");
        let log = RunLog::open(&store, path.clone()).await.unwrap();
        let failed: Result<(), _> = log
            .around(async {
                log.line("epoch 1/2: loss 0.5");
                Err(MlError::Training("the loss became NaN in epoch 2".into()))
            })
            .await;
        assert!(failed.is_err());
        let text = String::from_utf8(get_bytes(&store, &path).await.unwrap().unwrap()).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert_eq!(
            failure(&text),
            Some("training error: the loss became NaN in epoch 2")
        );
        // A second attempt continues the same log; its success ends with its own last line.
        let log = RunLog::open(&store, path.clone()).await.unwrap();
        log.around(async {
            log.line("epoch 2/2: loss 0.4");
            Ok(())
        })
        .await
        .unwrap();
        let text = String::from_utf8(get_bytes(&store, &path).await.unwrap().unwrap()).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert_eq!(failure(&text), None);
    }
}
