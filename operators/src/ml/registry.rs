//! The model registry in the shared store: `models/<name>/<version>/{model.json,
//! model.safetensors}`. The weights are written first and `model.json` last, with
//! create-only semantics, so a version is never overwritten and never half-visible.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use quiver_engine::store::objects::{create_bytes, get_bytes, list, put_bytes};

use super::MlError;
use super::evaluate::Evaluation;
use super::spec::{Architecture, InputSpec, LabelMap, TrainOptions};
use super::train::EpochMetrics;
use quiver_engine::err;

/// `model.json`: everything needed to use, compare and reproduce a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Registry name.
    pub name: String,
    /// Version number, from 1.
    pub version: u64,
    /// `dnn_classifier` or `cnn_classifier`, with its hyperparameters.
    pub architecture: Architecture,
    /// The input column, its shape and normalisation.
    pub input: InputSpec,
    /// Class index ↔ label.
    pub labels: LabelMap,
    /// How it was trained.
    pub training: TrainOptions,
    /// Per-epoch metrics of the training run.
    pub history: Vec<EpochMetrics>,
    /// Evaluation on the validation query, if there was one.
    pub evaluation: Option<Evaluation>,
    /// The training query (SQL text or a description of the DataFrame).
    pub training_data: String,
    /// The run folder with checkpoints, metrics and event files.
    pub run: String,
    /// The weights file in the version folder.
    pub weights: String,
    /// Quiver's version.
    pub quiver_version: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

/// The registry under one store prefix (normally `<default store>/models/`).
#[derive(Debug, Clone)]
pub struct Registry {
    store: Arc<dyn ObjectStore>,
    root: Path,
    url: String,
}

impl Registry {
    /// A registry rooted at `root` (the `models/` folder) of `store`; `url` names it in messages.
    pub fn new(store: Arc<dyn ObjectStore>, root: Path, url: String) -> Self {
        Self { store, root, url }
    }

    /// The versions of `name`, ascending (only complete ones, with a `model.json`).
    pub async fn versions(&self, name: &str) -> Result<Vec<u64>, MlError> {
        let versions = self.version_folders(name).await?;
        let mut complete = Vec::new();
        for v in versions {
            let card = self.version_dir(name, v).clone().join("model.json");
            if self.store.head(&card).await.is_ok() {
                complete.push(v);
            }
        }
        Ok(complete)
    }

    /// Names of all registered models, sorted.
    pub async fn names(&self) -> Result<Vec<String>, MlError> {
        let mut names = list(&self.store, &self.root).await?.dirs;
        names.sort();
        Ok(names)
    }

    fn version_dir(&self, name: &str, version: u64) -> Path {
        self.root
            .clone()
            .join(name)
            .clone()
            .join(version.to_string())
    }

    /// The URL of a version's folder.
    pub fn version_url(&self, name: &str, version: u64) -> String {
        format!("{}/{name}/{version}/", self.url.trim_end_matches('/'))
    }

    /// The version a new registration of `name` would get.
    pub async fn next_version(&self, name: &str) -> Result<u64, MlError> {
        Ok(self
            .version_folders(name)
            .await?
            .last()
            .map_or(1, |v| v + 1))
    }

    /// Numbers of the version folders of `name` (complete or not), ascending.
    async fn version_folders(&self, name: &str) -> Result<Vec<u64>, MlError> {
        let mut versions: Vec<u64> = list(&self.store, &self.root.clone().join(name))
            .await?
            .dirs
            .iter()
            .filter_map(|dir| dir.parse().ok())
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// Registers `card` with `weights` as the next free version and returns it (the card's
    /// `version` is set here).
    pub async fn register(
        &self,
        mut card: ModelCard,
        weights: Vec<u8>,
    ) -> Result<ModelCard, MlError> {
        validate_name(&card.name)?;
        loop {
            card.version = self.next_version(&card.name).await?;
            let dir = self.version_dir(&card.name, card.version);
            card.weights = "model.safetensors".into();
            put_bytes(
                &self.store,
                &dir.clone().join("model.safetensors"),
                weights.clone(),
            )
            .await?;
            if create_bytes(
                &self.store,
                &dir.clone().join("model.json"),
                serde_json::to_vec_pretty(&card)?,
            )
            .await?
            {
                return Ok(card);
            }
            // Another writer took this version in the meantime: try the next one.
        }
    }

    /// The cards of every version of every model: by name, then version.
    pub async fn cards(&self) -> Result<Vec<ModelCard>, MlError> {
        let mut cards = Vec::new();
        for name in self.names().await? {
            for version in self.versions(&name).await? {
                cards.push(self.card(&name, version).await?);
            }
        }
        Ok(cards)
    }

    /// The card of `name` at `version`, without its weights.
    pub async fn card(&self, name: &str, version: u64) -> Result<ModelCard, MlError> {
        let dir = self.version_dir(name, version);
        let card = get_bytes(&self.store, &dir.clone().join("model.json"))
            .await?
            .ok_or_else(|| {
                err!(
                    MlError::NotFound,
                    "model '{name}' has no version {version} in the registry at {}",
                    self.url
                )
            })?;
        serde_json::from_slice(&card).map_err(|e| {
            err!(
                MlError::Checkpoint,
                "{}model.json is unreadable: {e}",
                self.version_url(name, version)
            )
        })
    }

    /// The card and weights of `name` at `version` (the newest when `None`).
    pub async fn load(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<(ModelCard, Vec<u8>), MlError> {
        let version = match version {
            Some(v) => v,
            None => *self.versions(name).await?.last().ok_or_else(|| {
                err!(
                    MlError::NotFound,
                    "model '{name}' is not in the registry at {}",
                    self.url
                )
            })?,
        };
        let card = self.card(name, version).await?;
        let dir = self.version_dir(name, version);
        let weights = get_bytes(&self.store, &dir.clone().join(card.weights.as_str()))
            .await?
            .ok_or_else(|| {
                err!(
                    MlError::Checkpoint,
                    "{}{} is missing",
                    self.version_url(name, version),
                    card.weights
                )
            })?;
        Ok((card, weights))
    }
}

/// Model names are single path segments of letters, digits, `_`, `-` and `.`.
pub fn validate_name(name: &str) -> Result<(), MlError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(err!(
            MlError::Option,
            "model name '{name}' may only contain letters, digits, '_', '-' and '.'"
        ))
    }
}
