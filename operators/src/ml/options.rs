//! Model options, shared by SQL's `CREATE MODEL ... OPTIONS (...)` and the Rust
//! [`ModelBuilder`], and the one function that trains and registers a model.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use datafusion::dataframe::DataFrame;
use quiver_engine::Session;
use url::Url;

use super::data::{input_spec, label_map};
use super::evaluate::evaluate_model;
use super::model::{BACKBONE, Classifier};
use super::registry::{ModelCard, Registry, validate_name};
use super::runs::run_log;
use super::schedule::LrSchedule;
use super::spec::{
    Activation, Architecture, Initializer, InputKind, Normalization, OptimizerSpec, TrainOptions,
};
use super::train::{Start, TrainHooks, TrainJob, load_weights, train};
use super::{MlError, registry};
use crate::image::AugmentOptions;
use quiver_engine::{bail, err};

pub use quiver_engine::options::OptionValue;
use quiver_engine::options::{
    Among, Checked, Flag, Kind, ListOf, Maybe, NonNegative, OneOf, Options, Positive, Rate, Text,
    count,
};

quiver_engine::options! {
    /// Options of `CREATE MODEL ... OPTIONS (...)` and [`ModelBuilder::option`].
    pub struct ModelOptions {
        /// The network: a dense network, a small convolutional one or a residual network.
        model_type: String = "dnn_classifier".into(),
            OneOf(&["dnn_classifier", "cnn_classifier", "resnet_classifier"]);
        /// ResNet depth: 18 and 34 stack basic blocks, 50 bottlenecks.
        depth: usize = 18, Among(super::resnet::DEPTHS);
        /// DNN hidden layer sizes.
        hidden_units: Vec<usize> = vec![512, 256, 128], ListOf(count(1));
        /// CNN filters per conv block.
        conv_filters: Vec<usize> = vec![32, 64], ListOf(count(1));
        /// CNN kernel side.
        kernel_size: usize = 3, count(1).odd();
        /// CNN dense layers after the conv blocks.
        dense_units: Vec<usize> = vec![128], ListOf(count(1));
        /// Activation of the hidden layers.
        activation: String = "relu".into(), OneOf(Activation::NAMES);
        /// Dropout rate after each hidden layer.
        dropout: f64 = 0.2, Rate;
        /// Passes over the training data; 0 registers the starting weights unchanged.
        epochs: usize = 5, count(0);
        /// Examples per step; with `workers` > 1 the global batch.
        batch_size: usize = 64, count(1);
        /// Step size.
        learning_rate: f64 = 0.001, Positive;
        /// The optimizer: 'adam', 'adamw' (decoupled weight decay) or 'sgd', each as PyTorch
        /// defines it.
        optimizer: String = "adam".into(), OneOf(&["adam", "adamw", "sgd"]);
        /// SGD momentum.
        momentum: f64 = 0.9, Rate;
        /// SGD with Nesterov momentum.
        nesterov: bool = false, Flag;
        /// Weight decay: adamw shrinks the weights by learning_rate * weight_decay each step;
        /// adam and sgd add weight_decay * weights to the gradients (an L2 penalty). Unset:
        /// 0.01 for adamw (PyTorch's default), 0 otherwise.
        weight_decay: Option<f64> = None, Maybe(NonNegative);
        /// Adam's epsilon, added to the root of the bias-corrected second moment as PyTorch
        /// adds it (Keras adds it before the correction); the default is Keras's.
        adam_epsilon: f64 = 1e-7, Positive;
        /// How the learning rate moves over the run, step by step: 'constant'; 'cosine' (down
        /// to zero at the end); 'step' (times lr_gamma every lr_step_epochs); 'one_cycle'
        /// (PyTorch's OneCycleLR: from learning_rate / 25 up to learning_rate, then down to
        /// learning_rate / 25e4).
        lr_schedule: String = "constant".into(), OneOf(LrSchedule::NAMES);
        /// Epochs (a fraction allowed) over which the rate first rises linearly from zero; with
        /// 'one_cycle', the rising phase (unset: 30% of the run).
        warmup_epochs: f64 = 0.0, NonNegative;
        /// 'step' schedule: epochs between two decays.
        lr_step_epochs: Option<usize> = None, Maybe(count(1));
        /// 'step' schedule: the factor of each decay.
        lr_gamma: f64 = 0.1, Positive;
        /// Share of each target's probability spread evenly over all classes in the training
        /// loss (validation and evaluation losses stay plain).
        label_smoothing: f64 = 0.0, Rate;
        /// Scales each step's gradients down to this global L2 norm when they are longer
        /// (PyTorch's clip_grad_norm_, Keras's global_clipnorm).
        gradient_clip_norm: Option<f64> = None, Maybe(Positive);
        /// How initial weights are drawn (biases start at zero), as Keras names the schemes.
        initializer: String = "glorot_uniform".into(), OneOf(Initializer::NAMES);
        /// Seed of weight initialisation, shuffling and dropout.
        seed: u64 = 42, count(0);
        /// A safetensors file to start from instead of drawn weights (file://, s3://, a path:
        /// any store Quiver reads; a ResNet's in torchvision's layout). A head for another
        /// number of classes is drawn anew.
        weights: Option<String> = None, Maybe(Text);
        /// Image inputs after scaling to [0, 1]: 'imagenet' subtracts torchvision's channel
        /// means (0.485, 0.456, 0.406) and divides by its deviations (0.229, 0.224, 0.225), as
        /// its pretrained weights expect (3-channel images only). Predictions and serving
        /// normalise the same way.
        input_normalization: String = "none".into(), OneOf(&["none", "imagenet"]);
        /// Tensors left as they start: 'backbone' (all but the classification head), 'none',
        /// or module names such as ['conv1', 'layer1'] (their tensors); a frozen batch norm
        /// normalises with its running averages and keeps them.
        freeze: Vec<String> = Vec::new(), Frozen;
        /// The epoch from which the frozen tensors train too (0: never), for fine-tuning in
        /// two phases.
        unfreeze_at_epoch: usize = 0, count(0);
        /// A registered model to start from: 'name' (its newest version) or 'name:version',
        /// of the same network; a head for another number of classes is drawn anew.
        warm_start: Option<String> = None, Maybe(Text);
        /// Stop after this many epochs without improvement of the monitored loss (0: never).
        early_stopping_patience: usize = 0, count(0);
        /// Examples in the shuffle buffer; unset, as many as fit in 256 MiB (image folders
        /// list files class by class, so a small buffer trains on a few classes at a time).
        shuffle_buffer: Option<usize> = None, Maybe(count(1));
        /// Where the model trains.
        device: String = "cpu".into(),
            Checked(|d| super::device::parse(d).map(drop).map_err(|e| e.to_string()),
                "'cpu', 'cuda' or 'cuda:N'");
        /// Executors training one model data-parallel on a cluster (all-reduce of gradients
        /// every step).
        workers: usize = 1, count(1);
        /// The input column; unset, the one column that is not the label.
        input_column: Option<String> = None, Maybe(Text);
        /// The label column.
        label_column: String = "label".into(), Text;
        /// Shape of a tensor input, e.g. [28, 28, 1].
        input_shape: Option<Vec<usize>> = None, Maybe(ListOf(count(1)));
        /// SQL of the validation data, evaluated after each epoch.
        validation_query: Option<String> = None, Maybe(Text);
        ..augment: AugmentOptions;
    }
}

/// `freeze`: `'backbone'`, `'none'` or a list of module names.
struct Frozen;

impl Kind for Frozen {
    type Out = Vec<String>;
    fn parse(&self, key: &str, value: &OptionValue) -> Result<Vec<String>, String> {
        match value {
            OptionValue::Str(s) if s.eq_ignore_ascii_case("none") => Ok(Vec::new()),
            OptionValue::Str(s) if s.eq_ignore_ascii_case("backbone") => Ok(vec![BACKBONE.into()]),
            OptionValue::List(_) => ListOf(Text).parse(key, value),
            other => Err(format!(
                "{key} must be 'backbone', 'none' or a list of module names such as ['conv1', \
                 'layer1'], not {other}"
            )),
        }
    }
    fn accepts(&self) -> String {
        "'backbone', 'none' or [module, ...]".into()
    }
    fn is_list(&self) -> bool {
        true
    }
}

impl ModelOptions {
    /// The options of the training loop.
    pub fn train_options(&self) -> Result<TrainOptions, MlError> {
        Ok(TrainOptions {
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            optimizer: self.optimizer()?,
            seed: self.seed,
            early_stopping_patience: self.early_stopping_patience,
            shuffle_buffer: self.shuffle_buffer.unwrap_or(usize::MAX),
            device: self.device.clone(),
            workers: self.workers,
            initializer: Initializer::parse(&self.initializer)?,
            weights: self.weights.clone(),
            warm_start: None,
            freeze: self.freeze.clone(),
            unfreeze_at_epoch: self.unfreeze_at_epoch,
            augment: self.augment.augment(),
            lr_schedule: self.lr_schedule()?,
            warmup_epochs: self.warmup_epochs,
            label_smoothing: self.label_smoothing,
            gradient_clip_norm: self.gradient_clip_norm,
        })
    }

    fn optimizer(&self) -> Result<OptimizerSpec, MlError> {
        let (epsilon, decay) = (self.adam_epsilon, self.weight_decay);
        if self.nesterov && (self.optimizer != "sgd" || self.momentum == 0.0) {
            bail!(
                MlError::Option,
                "nesterov = true needs optimizer = 'sgd' with momentum > 0 (optimizer is '{}', \
                 momentum {})",
                self.optimizer,
                self.momentum
            );
        }
        Ok(match self.optimizer.as_str() {
            "sgd" => OptimizerSpec::Sgd {
                momentum: self.momentum,
                nesterov: self.nesterov,
                weight_decay: decay.unwrap_or(0.0),
            },
            "adamw" => OptimizerSpec::AdamW {
                epsilon,
                weight_decay: decay.unwrap_or(0.01),
            },
            _ => OptimizerSpec::Adam {
                epsilon,
                weight_decay: decay.unwrap_or(0.0),
            },
        })
    }

    fn lr_schedule(&self) -> Result<LrSchedule, MlError> {
        let schedule = match (self.lr_schedule.as_str(), self.lr_step_epochs) {
            ("step", Some(every)) => LrSchedule::Step {
                every,
                gamma: self.lr_gamma,
            },
            ("step", None) => bail!(
                MlError::Option,
                "lr_schedule = 'step' needs lr_step_epochs, the epochs between two decays"
            ),
            (other, Some(_)) => bail!(
                MlError::Option,
                "lr_step_epochs applies to lr_schedule = 'step', not '{other}'"
            ),
            ("cosine", None) => LrSchedule::Cosine,
            ("one_cycle", None) => LrSchedule::OneCycle,
            _ => LrSchedule::Constant,
        };
        if self.epochs > 0 && self.warmup_epochs >= self.epochs as f64 {
            bail!(
                MlError::Option,
                "warmup_epochs = {} must end before the last epoch (epochs = {})",
                self.warmup_epochs,
                self.epochs
            );
        }
        Ok(schedule)
    }
}

/// Builds, trains and registers a model; the Rust face of `CREATE MODEL`.
#[derive(Debug, Clone)]
pub struct ModelBuilder {
    name: String,
    options: ModelOptions,
    replace: bool,
}

impl ModelBuilder {
    /// A model named `name` of `model_type` (`dnn_classifier`, `cnn_classifier` or
    /// `resnet_classifier`) with default options.
    pub fn new(name: &str, model_type: &str) -> Result<Self, MlError> {
        validate_name(name)?;
        let mut builder = Self {
            name: name.to_string(),
            options: ModelOptions::default(),
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

    /// Sets one option by its SQL name (see [`ModelOptions`]).
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
        self.options.set(key, v).map_err(MlError::Option)
    }

    fn architecture(&self) -> Result<Architecture, MlError> {
        let o = &self.options;
        let activation = Activation::parse(&o.activation)?;
        Ok(match o.model_type.as_str() {
            "cnn_classifier" => Architecture::CnnClassifier {
                conv_filters: o.conv_filters.clone(),
                kernel_size: o.kernel_size,
                dense_units: o.dense_units.clone(),
                activation,
                dropout: o.dropout,
            },
            "resnet_classifier" => Architecture::ResnetClassifier { depth: o.depth },
            _ => Architecture::DnnClassifier {
                hidden_units: o.hidden_units.clone(),
                activation,
                dropout: o.dropout,
            },
        })
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
        let transcript = run_log(session, &run_url).await?;
        let hooks = TrainHooks {
            log: session.log_sink().cloned(),
            transcript: Some(Arc::clone(&transcript)),
            ..Default::default()
        };
        let fitted = transcript
            .around(self.fit(session, frame, training_data, &run_url, hooks))
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
        let mut options = self.options.train_options()?;
        if options.unfreeze_at_epoch > 0 && options.freeze.is_empty() {
            bail!(
                MlError::Option,
                "unfreeze_at_epoch = {} has nothing to unfreeze: set freeze too",
                options.unfreeze_at_epoch
            );
        }
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
        let label_column = &self.options.label_column;
        let labels = label_map(&frame, label_column).await?;
        let input_column = match &self.options.input_column {
            Some(c) => c.clone(),
            None => {
                let others: Vec<_> = frame
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .filter(|n| n != label_column)
                    .collect();
                match &others[..] {
                    [one] => one.clone(),
                    _ => {
                        bail!(
                            MlError::Option,
                            "the query has columns {others:?} besides the label \
                             '{label_column}': name the input with input_column"
                        );
                    }
                }
            }
        };
        let mut input = input_spec(&frame, &input_column, self.options.input_shape.clone()).await?;
        if self.options.input_normalization == "imagenet" {
            if input.kind != InputKind::Image || input.chw().map(|[c, _, _]| c) != Some(3) {
                bail!(
                    MlError::Option,
                    "input_normalization = 'imagenet' needs 3-channel images; input column \
                     '{input_column}' has shape {:?}",
                    input.shape
                );
            }
            input.normalize = Some(Normalization::IMAGENET);
        }
        if options.augment.is_some() && input.kind != InputKind::Image {
            bail!(
                MlError::Option,
                "the augment_* options augment images, and input column '{input_column}' is a \
                 tensor: decode it with image_decode(...)"
            );
        }
        // Hold at most ~256 MiB of examples in the shuffle buffer (pixels are bytes, tensor
        // values f32).
        let bytes = match input.kind {
            InputKind::Image => input.len(),
            InputKind::Tensor => 4 * input.len(),
        };
        let cap = (256 << 20) / bytes.max(1);
        options.shuffle_buffer = options.shuffle_buffer.min(cap.max(options.batch_size));
        let architecture = self.architecture()?;
        // Fail on a bad architecture or frozen module before reading any data.
        Classifier::<burn::backend::Flex>::new(
            &architecture,
            &input,
            labels.labels.len(),
            &Default::default(),
            0,
            Default::default(),
        )?
        .frozen(&options.freeze)?;
        let validation = match &self.options.validation_query {
            Some(sql) => Some(
                session
                    .sql(sql)
                    .await
                    .map_err(|e| err!(MlError::Option, "validation_query does not plan: {e}"))?,
            ),
            None => None,
        };
        let start = match (&options.weights, &self.options.warm_start) {
            (Some(_), Some(_)) => bail!(
                MlError::Option,
                "weights and warm_start both give the starting weights: set one"
            ),
            (Some(location), None) => Some(Start {
                from: format!("'{location}'"),
                bytes: read_weights(session, location).await?,
            }),
            (None, Some(spec)) => {
                let (name, version) = parse_warm_start(spec)?;
                let (card, bytes) = registry(session)?.load(name, version).await?;
                options.warm_start = Some(format!("{name}:{}", card.version));
                Some(Start {
                    from: format!("model '{name}' version {}", card.version),
                    bytes,
                })
            }
            (None, None) => None,
        };
        let job = TrainJob {
            start,
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
                    Default::default(),
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

/// The name and version (`None`: the newest) of a `warm_start` value, `name[:version]`.
fn parse_warm_start(spec: &str) -> Result<(&str, Option<u64>), MlError> {
    let (name, version) = match spec.split_once(':') {
        Some((name, version)) => (name, Some(version.parse::<u64>().ok())),
        None => (spec, None),
    };
    match (validate_name(name), version) {
        (Ok(()), None) => Ok((name, None)),
        (Ok(()), Some(Some(v))) => Ok((name, Some(v))),
        _ => bail!(
            MlError::Option,
            "warm_start '{spec}' must be a model name, or name:version"
        ),
    }
}

/// The bytes of the `weights` file at `location`.
async fn read_weights(session: &Session, location: &str) -> Result<Vec<u8>, MlError> {
    let unreadable = |e: &dyn std::fmt::Display| {
        err!(MlError::Option, "weights '{location}' cannot be read: {e}")
    };
    let url = quiver_engine::store::resolve_location(location).map_err(|e| unreadable(&e))?;
    let store = session.store_for(&url)?;
    let path = quiver_engine::store::object_path(&url)?;
    quiver_engine::store::objects::get_bytes(&store, &path)
        .await
        .map_err(|e| unreadable(&e))?
        .ok_or_else(|| unreadable(&"no such file"))
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
