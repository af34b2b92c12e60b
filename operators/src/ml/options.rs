//! Model options, shared by SQL's `CREATE MODEL ... OPTIONS (...)` and the Rust
//! [`ModelBuilder`], and the one function that trains and registers a model.

use std::time::{SystemTime, UNIX_EPOCH};

use datafusion::dataframe::DataFrame;
use quiver_engine::Session;
use url::Url;

use super::data::{input_spec, label_map};
use super::evaluate::evaluate_model;
use super::model::Classifier;
use super::registry::{ModelCard, Registry, validate_name};
use super::spec::{Activation, Architecture, InputKind, OptimizerSpec, TrainOptions};
use super::train::{TrainHooks, TrainJob, load_weights, train};
use super::{MlError, registry};
use quiver_engine::{bail, err};

/// An option value: a string, a number, a boolean or a list (in JSON: the plain value).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum OptionValue {
    /// `'text'`.
    Str(String),
    /// `3`, `0.001`.
    Num(f64),
    /// `true` / `false`.
    Bool(bool),
    /// `[512, 256]`.
    List(Vec<OptionValue>),
}

impl From<&str> for OptionValue {
    fn from(s: &str) -> Self {
        Self::Str(s.to_string())
    }
}
impl From<String> for OptionValue {
    fn from(s: String) -> Self {
        Self::Str(s)
    }
}
impl From<f64> for OptionValue {
    fn from(n: f64) -> Self {
        Self::Num(n)
    }
}
impl From<i32> for OptionValue {
    fn from(n: i32) -> Self {
        Self::Num(n as f64)
    }
}
impl From<bool> for OptionValue {
    fn from(b: bool) -> Self {
        Self::Bool(b)
    }
}
impl<T: Into<OptionValue>> From<Vec<T>> for OptionValue {
    fn from(v: Vec<T>) -> Self {
        Self::List(v.into_iter().map(Into::into).collect())
    }
}

impl std::fmt::Display for OptionValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Str(s) => write!(f, "'{s}'"),
            Self::Num(n) => write!(f, "{n}"),
            Self::Bool(b) => write!(f, "{b}"),
            Self::List(items) => {
                let items: Vec<_> = items.iter().map(ToString::to_string).collect();
                write!(f, "[{}]", items.join(", "))
            }
        }
    }
}

fn want_str(key: &str, v: &OptionValue) -> Result<String, MlError> {
    match v {
        OptionValue::Str(s) => Ok(s.clone()),
        other => Err(err!(MlError::Option, "{key} must be a string, not {other}")),
    }
}

fn want_num(key: &str, v: &OptionValue) -> Result<f64, MlError> {
    match v {
        OptionValue::Num(n) => Ok(*n),
        other => Err(err!(MlError::Option, "{key} must be a number, not {other}")),
    }
}

fn want_count(key: &str, v: &OptionValue, min: usize) -> Result<usize, MlError> {
    let n = want_num(key, v)?;
    if n.fract() != 0.0 || n < min as f64 || n > u32::MAX as f64 {
        bail!(
            MlError::Option,
            "{key} must be a whole number of at least {min}, not {n}"
        );
    }
    Ok(n as usize)
}

fn want_counts(key: &str, v: &OptionValue, min: usize) -> Result<Vec<usize>, MlError> {
    match v {
        OptionValue::List(items) => items.iter().map(|i| want_count(key, i, min)).collect(),
        other => Err(err!(
            MlError::Option,
            "{key} must be a list such as [512, 256], not {other}"
        )),
    }
}

fn want_rate(key: &str, v: &OptionValue) -> Result<f64, MlError> {
    let n = want_num(key, v)?;
    if !(0.0..1.0).contains(&n) {
        bail!(MlError::Option, "{key} must be in [0, 1), not {n}");
    }
    Ok(n)
}

/// Options of `CREATE MODEL` and their meaning, for errors and documentation.
pub const MODEL_OPTIONS: &[(&str, &str)] = &[
    ("model_type", "'dnn_classifier' or 'cnn_classifier'"),
    (
        "hidden_units",
        "DNN hidden layer sizes, default [512, 256, 128]",
    ),
    (
        "conv_filters",
        "CNN filters per conv block, default [32, 64]",
    ),
    ("kernel_size", "CNN kernel side (odd), default 3"),
    ("dense_units", "CNN dense layers, default [128]"),
    ("activation", "'relu' (default), 'tanh', 'sigmoid', 'gelu'"),
    ("dropout", "dropout rate, default 0.2"),
    ("epochs", "default 5"),
    ("batch_size", "default 64"),
    ("learning_rate", "default 0.001"),
    ("optimizer", "'adam' (default) or 'sgd'"),
    ("momentum", "SGD momentum, default 0.9"),
    ("seed", "default 42"),
    (
        "early_stopping_patience",
        "epochs without improvement, default 0 (off)",
    ),
    (
        "shuffle_buffer",
        "examples, default: as many as fit in 256 MiB (image folders list files class by \
         class, so a small buffer trains on a few classes at a time)",
    ),
    ("device", "'cpu' (default), 'cuda', 'cuda:N'"),
    (
        "workers",
        "executors training one model data-parallel on a cluster (all-reduce of gradients \
         every step), default 1; batch_size is the global batch",
    ),
    (
        "input_column",
        "default: the one column that is not the label",
    ),
    ("label_column", "default 'label'"),
    ("input_shape", "shape of a tensor input, e.g. [28, 28, 1]"),
    (
        "validation_query",
        "SQL of the validation data, evaluated after each epoch",
    ),
];

/// Builds, trains and registers a model; the Rust face of `CREATE MODEL`.
#[derive(Debug, Clone)]
pub struct ModelBuilder {
    name: String,
    model_type: String,
    hidden_units: Vec<usize>,
    conv_filters: Vec<usize>,
    kernel_size: usize,
    dense_units: Vec<usize>,
    activation: Activation,
    dropout: f64,
    momentum: f64,
    optimizer: String,
    options: TrainOptions,
    input_column: Option<String>,
    label_column: String,
    input_shape: Option<Vec<usize>>,
    validation_query: Option<String>,
    replace: bool,
}

impl ModelBuilder {
    /// A model named `name` of `model_type` (`dnn_classifier` or `cnn_classifier`) with
    /// default options.
    pub fn new(name: &str, model_type: &str) -> Result<Self, MlError> {
        validate_name(name)?;
        let mut builder = Self {
            name: name.to_string(),
            model_type: String::new(),
            hidden_units: vec![512, 256, 128],
            conv_filters: vec![32, 64],
            kernel_size: 3,
            dense_units: vec![128],
            activation: Activation::Relu,
            dropout: 0.2,
            momentum: 0.9,
            optimizer: "adam".into(),
            options: TrainOptions::default(),
            input_column: None,
            label_column: "label".into(),
            input_shape: None,
            validation_query: None,
            replace: false,
        };
        builder.set("model_type", &OptionValue::from(model_type))?;
        Ok(builder)
    }

    /// Registers a new version when the name exists (`CREATE OR REPLACE MODEL`) instead of
    /// failing; older versions stay.
    pub fn replace(mut self, replace: bool) -> Self {
        self.replace = replace;
        self
    }

    /// Sets one option by its SQL name (see [`MODEL_OPTIONS`]).
    pub fn option(mut self, key: &str, value: impl Into<OptionValue>) -> Result<Self, MlError> {
        self.set(key, &value.into())?;
        Ok(self)
    }

    /// The `workers` option: how many executors train the model together.
    pub fn workers(&self) -> usize {
        self.options.workers
    }

    /// Checks that the global batch splits evenly over the workers.
    pub fn check_batch(&self) -> Result<(), MlError> {
        let (batch, workers) = (self.options.batch_size, self.options.workers);
        if batch % workers != 0 {
            bail!(
                MlError::Option,
                "batch_size {batch} is the global batch and must be a multiple of workers = \
                 {workers}"
            );
        }
        Ok(())
    }

    /// Sets one option in place.
    pub fn set(&mut self, key: &str, v: &OptionValue) -> Result<(), MlError> {
        match key.to_ascii_lowercase().as_str() {
            "model_type" => {
                let t = want_str(key, v)?.to_ascii_lowercase();
                if t != "dnn_classifier" && t != "cnn_classifier" {
                    bail!(
                        MlError::Option,
                        "model_type '{t}' is not 'dnn_classifier' or 'cnn_classifier'"
                    );
                }
                self.model_type = t;
            }
            "hidden_units" => self.hidden_units = want_counts(key, v, 1)?,
            "conv_filters" => self.conv_filters = want_counts(key, v, 1)?,
            "dense_units" => self.dense_units = want_counts(key, v, 1)?,
            "kernel_size" => {
                let k = want_count(key, v, 1)?;
                if k % 2 == 0 {
                    bail!(
                        MlError::Option,
                        "kernel_size must be odd so that 'same' padding is symmetric, got {k}"
                    );
                }
                self.kernel_size = k;
            }
            "activation" => self.activation = Activation::parse(&want_str(key, v)?)?,
            "dropout" => self.dropout = want_rate(key, v)?,
            "momentum" => self.momentum = want_rate(key, v)?,
            "epochs" => self.options.epochs = want_count(key, v, 1)?,
            "batch_size" => self.options.batch_size = want_count(key, v, 1)?,
            "learning_rate" => {
                let lr = want_num(key, v)?;
                if lr <= 0.0 || !lr.is_finite() {
                    bail!(MlError::Option, "learning_rate must be positive, not {lr}");
                }
                self.options.learning_rate = lr;
            }
            "optimizer" => {
                let o = want_str(key, v)?.to_ascii_lowercase();
                if o != "adam" && o != "sgd" {
                    bail!(MlError::Option, "optimizer '{o}' is not 'adam' or 'sgd'");
                }
                self.optimizer = o;
            }
            "seed" => self.options.seed = want_count(key, v, 0)? as u64,
            "early_stopping_patience" => {
                self.options.early_stopping_patience = want_count(key, v, 0)?
            }
            "shuffle_buffer" => self.options.shuffle_buffer = want_count(key, v, 1)?,
            "device" => {
                let d = want_str(key, v)?;
                super::device::parse(&d)?;
                self.options.device = d;
            }
            "workers" => self.options.workers = want_count(key, v, 1)?,
            "input_column" => self.input_column = Some(want_str(key, v)?),
            "label_column" => self.label_column = want_str(key, v)?,
            "input_shape" => self.input_shape = Some(want_counts(key, v, 1)?),
            "validation_query" => self.validation_query = Some(want_str(key, v)?),
            other => {
                let known: Vec<_> = MODEL_OPTIONS.iter().map(|(k, _)| *k).collect();
                bail!(
                    MlError::Option,
                    "unknown option '{other}' (known: {})",
                    known.join(", ")
                );
            }
        }
        Ok(())
    }

    fn architecture(&self) -> Architecture {
        if self.model_type == "cnn_classifier" {
            Architecture::CnnClassifier {
                conv_filters: self.conv_filters.clone(),
                kernel_size: self.kernel_size,
                dense_units: self.dense_units.clone(),
                activation: self.activation,
                dropout: self.dropout,
            }
        } else {
            Architecture::DnnClassifier {
                hidden_units: self.hidden_units.clone(),
                activation: self.activation,
                dropout: self.dropout,
            }
        }
    }

    /// Trains on `frame` and registers the result in the session's registry. `training_data`
    /// describes the data (the SQL text) in `model.json`. A crashed run of the same model and
    /// options resumes from its last checkpoint.
    pub async fn train(
        self,
        session: &Session,
        frame: DataFrame,
        training_data: &str,
    ) -> Result<ModelCard, MlError> {
        let (registry, run_url) = self.run_folder(session).await?;
        let fitted = self
            .fit(
                session,
                frame,
                training_data,
                &run_url,
                TrainHooks {
                    log: session.log_sink().cloned(),
                    ..Default::default()
                },
            )
            .await?;
        registry.register(fitted.card, fitted.weights).await
    }

    /// The registry to register the model in and the run folder to train it in (that of the
    /// next version); fails when the name is taken and [`Self::replace`] was not asked for.
    pub async fn run_folder(&self, session: &Session) -> Result<(Registry, Url), MlError> {
        let registry = registry(session)?;
        let existing = registry.versions(&self.name).await?;
        if !existing.is_empty() && !self.replace {
            bail!(
                MlError::Exists,
                "model '{}' exists (versions {existing:?}): use CREATE OR REPLACE MODEL to add a \
                 version, or another name",
                self.name
            );
        }
        let version = registry.next_version(&self.name).await?;
        let run_url = session
            .default_store()
            .join(&format!("training/{}/v{version}/", self.name))
            .map_err(|e| MlError::Option(e.to_string()))?;
        Ok((registry, run_url))
    }

    /// Trains on `frame` in the run folder `run_url` (resuming from its last checkpoint) and
    /// returns the model without registering it: the card's `version` is 0.
    pub async fn fit(
        &self,
        session: &Session,
        frame: DataFrame,
        training_data: &str,
        run_url: &Url,
        hooks: TrainHooks,
    ) -> Result<Fitted, MlError> {
        let mut options = self.options.clone();
        options.optimizer = if self.optimizer == "sgd" {
            OptimizerSpec::Sgd {
                momentum: self.momentum,
            }
        } else {
            OptimizerSpec::Adam
        };
        let workers = hooks.collective.as_ref().map_or(1, |r| r.world());
        if options.workers != workers {
            bail!(
                MlError::Option,
                "workers = {} trains across a cluster's executors: run the statement on a \
                 cluster session (quiver sql --cluster URL)",
                options.workers
            );
        }
        self.check_batch()?;
        let leader = hooks.collective.as_ref().is_none_or(|r| r.rank() == 0);
        let labels = label_map(&frame, &self.label_column).await?;
        let input_column = match &self.input_column {
            Some(c) => c.clone(),
            None => {
                let others: Vec<_> = frame
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .filter(|n| n != &self.label_column)
                    .collect();
                match &others[..] {
                    [one] => one.clone(),
                    _ => {
                        bail!(
                            MlError::Option,
                            "the query has columns {others:?} besides the label '{}': name the \
                             input with input_column",
                            self.label_column
                        );
                    }
                }
            }
        };
        let input = input_spec(&frame, &input_column, self.input_shape.clone()).await?;
        // Hold at most ~256 MiB of examples in the shuffle buffer (pixels are bytes, tensor
        // values f32).
        let bytes = match input.kind {
            InputKind::Image => input.len(),
            InputKind::Tensor => 4 * input.len(),
        };
        let cap = (256 << 20) / bytes.max(1);
        options.shuffle_buffer = options.shuffle_buffer.min(cap.max(options.batch_size));
        let architecture = self.architecture();
        // Fail on a bad architecture before reading any data.
        Classifier::<burn::backend::Flex>::new(
            &architecture,
            &input,
            labels.labels.len(),
            &Default::default(),
            0,
        )?;
        let validation = match &self.validation_query {
            Some(sql) => Some(
                session
                    .sql(sql)
                    .await
                    .map_err(|e| err!(MlError::Option, "validation_query does not plan: {e}"))?,
            ),
            None => None,
        };
        let job = TrainJob {
            architecture: architecture.clone(),
            input: input.clone(),
            labels: labels.clone(),
            options: options.clone(),
            store: session.store_for(run_url)?,
            run_dir: quiver_engine::store::object_path(run_url)?,
            run_url: run_url.to_string(),
            hooks,
        };
        let outcome = train(&frame, validation.as_ref(), &job).await?;
        let evaluation = match &validation {
            Some(v) if leader => {
                let model = Classifier::<burn::backend::Flex>::new(
                    &architecture,
                    &input,
                    labels.labels.len(),
                    &Default::default(),
                    0,
                )?;
                let model = load_weights(model, outcome.weights.clone(), "the trained model")?;
                Some(evaluate_model(&model, v, &input, &labels, options.batch_size).await?)
            }
            _ => None,
        };
        let card = ModelCard {
            name: self.name.clone(),
            version: 0,
            architecture,
            input,
            labels,
            training: options,
            history: outcome.history,
            evaluation,
            training_data: training_data.to_string(),
            run: run_url.to_string(),
            weights: String::new(),
            quiver_version: env!("CARGO_PKG_VERSION").to_string(),
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        Ok(Fitted {
            card,
            weights: outcome.weights,
            stopped_early: outcome.stopped_early,
            stopped_by_scheduler: outcome.stopped_by_scheduler,
        })
    }
}

/// A trained model that is not registered yet.
#[derive(Debug, Clone)]
pub struct Fitted {
    /// Its card, with version 0.
    pub card: ModelCard,
    /// Its weights as safetensors.
    pub weights: Vec<u8>,
    /// Whether early stopping (patience) ended the run.
    pub stopped_early: bool,
    /// Whether the epoch hook (a scheduler) ended the run.
    pub stopped_by_scheduler: bool,
}
