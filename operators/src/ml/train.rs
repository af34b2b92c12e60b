//! The training loop: epochs over streamed, shuffled batches; Adam or SGD; loss and accuracy on
//! the training set and an optional validation query; a checkpoint in the store after every
//! epoch; `metrics.jsonl` and TensorBoard event files written as training runs; resume from the
//! last checkpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use burn_store::{ApplyError, ModuleSnapshot, SafetensorsStore};
use datafusion::dataframe::DataFrame;
use futures::future::BoxFuture;
use indicatif::{ProgressBar, ProgressStyle};
use object_store::ObjectStore;
use object_store::path::Path;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::MlError;
use super::adam::{AdamBackend, FastAdam};
use super::collective::Ring;
use super::conv::ConvBackend;
use super::data::{Batch, BatchStream, WholeInput, batch_dims, batch_images};
use super::evaluate::evaluate_model;
use super::events::{EventFile, PluginSummary};
use super::model::Classifier;
use super::run_metrics;
use super::runs::RunLog;
use super::schedule::Rates;
use super::spec::{Architecture, InputSpec, LabelMap, OptimizerSpec, TrainOptions};
use crate::image::kernels::{self, EncodeFormat};
use quiver_engine::fault;
use quiver_engine::image::{Image, ImageRef};
use quiver_engine::store::objects::{get_bytes, list, put_bytes};
use quiver_engine::time::unix_now;

/// Everything one training run needs, apart from the data.
#[derive(Debug, Clone)]
pub struct TrainJob {
    /// The model to train.
    pub architecture: Architecture,
    /// What it reads.
    pub input: InputSpec,
    /// Its classes.
    pub labels: LabelMap,
    /// How to train.
    pub options: TrainOptions,
    /// The store holding the run folder.
    pub store: Arc<dyn ObjectStore>,
    /// The run folder: `checkpoints/`, `metrics.jsonl`, `events.out.tfevents.*`, `run.json`.
    pub run_dir: Path,
    /// The run folder as a URL, for messages.
    pub run_url: String,
    /// Where the run reports to and computes on.
    pub hooks: TrainHooks,
    /// The weights training starts from instead of drawn ones.
    pub start: Option<Start>,
}

/// Weights to start training from.
#[derive(Debug, Clone)]
pub struct Start {
    /// Where they came from, for messages: `'path.safetensors'`, `model 'm' version 2`.
    pub from: String,
    /// Safetensors bytes.
    pub bytes: Vec<u8>,
}

/// Called after each epoch's checkpoint; resolving to `false` ends the run there (an early-
/// stopping scheduler's decision).
pub type EpochHook = Arc<dyn Fn(EpochMetrics) -> BoxFuture<'static, bool> + Send + Sync>;

/// Receives a run's log lines.
pub use quiver_engine::LogSink;
use quiver_engine::{bail, err};

/// How a run reports and where it computes. The default logs to stderr with a progress bar and
/// computes on every core.
#[derive(Clone, Default)]
pub struct TrainHooks {
    /// Receives every log line instead of stderr; the progress bar is hidden.
    pub log: Option<LogSink>,
    /// The run folder's `log.txt`, which also gets every log line and, while a progress bar
    /// shows, a line of progress every 10 seconds.
    pub transcript: Option<Arc<RunLog>>,
    /// Asked after every epoch whether to go on.
    pub on_epoch: Option<EpochHook>,
    /// Examples trained so far in the current epoch, for live displays.
    pub progress: Option<Arc<AtomicU64>>,
    /// The CPU threads the run computes on (an executor slot's share of the cores).
    pub threads: Option<Arc<rayon::ThreadPool>>,
    /// Written at the start of each event file (a trial's hyperparameters, for example).
    pub summaries: Vec<PluginSummary>,
    /// This worker's ring when several workers train one model (`workers = N`): each trains
    /// on its share of every batch and the gradients are summed over the ring; rank 0 writes.
    pub collective: Option<Arc<Ring>>,
}

impl std::fmt::Debug for TrainHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainHooks")
            .field("log", &self.log.is_some())
            .field("transcript", &self.transcript.is_some())
            .field("on_epoch", &self.on_epoch.is_some())
            .field(
                "threads",
                &self.threads.as_ref().map(|p| p.current_num_threads()),
            )
            .field("collective", &self.collective)
            .finish()
    }
}

impl TrainHooks {
    /// Sends `line` to the run's log sink, or to stderr without one.
    pub fn log(&self, line: &str) {
        if let Some(transcript) = &self.transcript {
            transcript.line(line);
        }
        match &self.log {
            Some(sink) => sink(line),
            None => eprintln!("{line}"),
        }
    }
}

impl TrainJob {
    fn log(&self, line: &str) {
        self.hooks.log(line);
    }

    /// Runs CPU-heavy work off the async runtime, on the run's threads.
    ///
    /// Without a pool of its own, the work stays on this thread rather than moving onto
    /// rayon's global pool: Burn's autodiff holds a graph lock during the backward pass, and a
    /// global worker waiting inside it would take up another run's step, whose backward pass
    /// then waits for the same lock (two concurrent runs deadlocked that way).
    fn compute<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        tokio::task::block_in_place(|| match &self.hooks.threads {
            Some(pool) => pool.install(work),
            None => work(),
        })
    }
}

/// Metrics of one epoch, one line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss (with dropout active).
    pub loss: f64,
    /// Training accuracy (with dropout active).
    pub accuracy: f64,
    /// Validation loss, with a validation query.
    pub val_loss: Option<f64>,
    /// Validation accuracy, with a validation query.
    pub val_accuracy: Option<f64>,
    /// Training examples seen.
    pub examples: u64,
    /// Wall-clock seconds of the epoch, including any wait for its input.
    pub seconds: f64,
    /// The part of `seconds` spent waiting for input (reading, decoding and batching it):
    /// near zero when the input keeps up with training.
    #[serde(default)]
    pub input_seconds: f64,
    /// Training throughput.
    pub examples_per_second: f64,
    /// The learning rate of the epoch's last step.
    #[serde(default)]
    pub learning_rate: f64,
}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// The trained weights as safetensors.
    pub weights: Vec<u8>,
    /// Metrics of every epoch, including those before a resume.
    pub history: Vec<EpochMetrics>,
    /// The epoch the run resumed after, if it resumed.
    pub resumed_after: Option<usize>,
    /// Whether early stopping (patience) ended the run.
    pub stopped_early: bool,
    /// Whether the epoch hook (a scheduler) ended the run.
    pub stopped_by_scheduler: bool,
}

/// State stored with each checkpoint (the RNG state is derived from the seed and the epoch).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    epoch: usize,
    history: Vec<EpochMetrics>,
    best_loss: f64,
    epochs_without_improvement: usize,
    seed: u64,
    /// Optimizer steps per epoch, counted before the first when the learning rate follows a
    /// schedule (0 otherwise).
    #[serde(default)]
    steps_per_epoch: usize,
}

/// Identity of a run, written once as `run.json`: a resume must train the same thing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunSpec {
    architecture: Architecture,
    input: InputSpec,
    labels: LabelMap,
    options: TrainOptions,
}

/// Trains on `train` (and validates on `validation` after each epoch) on the job's device.
pub async fn train(
    train: &DataFrame,
    validation: Option<&DataFrame>,
    job: &TrainJob,
) -> Result<TrainOutcome, MlError> {
    match super::device::parse(&job.options.device)? {
        super::device::Device::Cpu => {
            train_on::<burn::backend::Autodiff<burn::backend::Flex>>(
                train,
                validation,
                job,
                Default::default(),
            )
            .await
        }
        #[cfg(feature = "cuda")]
        super::device::Device::Cuda(index) => {
            train_on::<burn::backend::Autodiff<burn::backend::Cuda>>(
                train,
                validation,
                job,
                burn::backend::cuda::CudaDevice::new(index),
            )
            .await
        }
    }
}

async fn train_on<B: AutodiffBackend<InnerBackend: ConvBackend + AdamBackend> + ConvBackend>(
    train: &DataFrame,
    validation: Option<&DataFrame>,
    job: &TrainJob,
    device: B::Device,
) -> Result<TrainOutcome, MlError> {
    let options = &job.options;
    let classes = job.labels.labels.len();
    let mut model = Classifier::<B>::new(
        &job.architecture,
        &job.input,
        classes,
        &device,
        options.seed,
        options.initializer,
    )?;
    if let Some(Start { from, bytes }) = &job.start {
        let redrawn;
        (model, redrawn) = apply_weights(model, bytes.clone(), from, true)?;
        job.log(&match &redrawn[..] {
            [] => format!("starting from the weights of {from}"),
            head => format!(
                "starting from the weights of {from}, with a new head ({}) for {classes} classes",
                head.join(", ")
            ),
        });
    }
    let run = RunSpec {
        architecture: job.architecture.clone(),
        input: job.input.clone(),
        labels: job.labels.clone(),
        options: options.clone(),
    };
    let leader = job.hooks.collective.as_ref().is_none_or(|r| r.rank() == 0);
    let resumed = resume_state(job, &run, leader).await?;
    match options.optimizer {
        OptimizerSpec::Adam {
            epsilon,
            weight_decay,
        } => {
            let optimizer = FastAdam::with_decay(epsilon as f32, weight_decay as f32, 0.0)
                .init::<B, Classifier<B>>();
            epochs(train, validation, job, device, model, optimizer, resumed).await
        }
        OptimizerSpec::AdamW {
            epsilon,
            weight_decay,
        } => {
            let optimizer = FastAdam::with_decay(epsilon as f32, 0.0, weight_decay as f32)
                .init::<B, Classifier<B>>();
            epochs(train, validation, job, device, model, optimizer, resumed).await
        }
        OptimizerSpec::Sgd {
            momentum,
            nesterov,
            weight_decay,
        } => {
            let momentum = (momentum > 0.0).then(|| {
                MomentumConfig::new()
                    .with_momentum(momentum)
                    .with_dampening(0.0)
                    .with_nesterov(nesterov)
            });
            let optimizer = SgdConfig::new()
                .with_momentum(momentum)
                .with_weight_decay(
                    (weight_decay > 0.0).then(|| WeightDecayConfig::new(weight_decay as f32)),
                )
                .init::<B, Classifier<B>>();
            epochs(train, validation, job, device, model, optimizer, resumed).await
        }
    }
}

/// Where a run left off: `None` for a fresh run (after writing `run.json` if `leader`).
async fn resume_state(
    job: &TrainJob,
    run: &RunSpec,
    leader: bool,
) -> Result<Option<CheckpointState>, MlError> {
    let spec_path = job.run_dir.clone().join("run.json");
    match get_bytes(&job.store, &spec_path).await? {
        Some(bytes) => {
            let stored: RunSpec = serde_json::from_slice(&bytes).map_err(|e| {
                err!(
                    MlError::Checkpoint,
                    "{}/run.json is unreadable: {e}",
                    job.run_url
                )
            })?;
            if &stored != run {
                bail!(
                    MlError::Checkpoint,
                    "{} holds a different training run (other options or data); delete it or \
                     train under another name",
                    job.run_url
                );
            }
        }
        None => {
            if leader {
                put_bytes(&job.store, &spec_path, serde_json::to_vec_pretty(run)?).await?;
            }
            return Ok(None);
        }
    }
    let mut last = None;
    for dir in list(&job.store, &job.run_dir.clone().join("checkpoints"))
        .await?
        .dirs
    {
        if let Some(epoch) = dir
            .strip_prefix("epoch-")
            .and_then(|e| e.parse::<usize>().ok())
        {
            let state = checkpoint_dir(job, epoch).clone().join("state.json");
            if let Some(bytes) = get_bytes(&job.store, &state).await? {
                let state: CheckpointState = serde_json::from_slice(&bytes).map_err(|e| {
                    err!(
                        MlError::Checkpoint,
                        "{}/{state} is unreadable: {e}",
                        job.run_url
                    )
                })?;
                if last
                    .as_ref()
                    .is_none_or(|l: &CheckpointState| l.epoch < state.epoch)
                {
                    last = Some(state);
                }
            }
        }
    }
    Ok(last)
}

/// Loads one Burn record (`model.bin`, `optimizer.bin`) from a checkpoint folder.
async fn checkpoint_record<B: Backend, R: burn::record::Record<B>>(
    job: &TrainJob,
    dir: &Path,
    file: &str,
    device: &B::Device,
) -> Result<R, MlError> {
    let what = format!("{}/{dir}/{file}", job.run_url);
    let bytes = get_bytes(&job.store, &dir.clone().join(file))
        .await?
        .ok_or_else(|| err!(MlError::Checkpoint, "{what} is missing"))?;
    BinBytesRecorder::<FullPrecisionSettings>::default()
        .load(bytes, device)
        .map_err(|e| err!(MlError::Checkpoint, "{what}: {e}"))
}

fn checkpoint_dir(job: &TrainJob, epoch: usize) -> Path {
    job.run_dir
        .clone()
        .join("checkpoints")
        .clone()
        .join(format!("epoch-{epoch:04}"))
}

/// Model weights as safetensors bytes, named without the [`Classifier`] variant (a ResNet's as
/// torchvision names them).
pub fn weights_bytes<B: Backend>(model: &Classifier<B>) -> Result<Vec<u8>, MlError> {
    let mut store = SafetensorsStore::from_bytes(None).skip_enum_variants(true);
    model
        .save_into(&mut store)
        .map_err(|e| err!(MlError::Checkpoint, "cannot serialise the weights: {e}"))?;
    store
        .get_bytes()
        .map_err(|e| err!(MlError::Checkpoint, "cannot serialise the weights: {e}"))
}

/// Loads safetensors weights into a freshly built model. Tensors the model does not have
/// (torch's `num_batches_tracked`) are ignored; a missing tensor or a shape that differs is
/// refused, naming the tensors and both shapes.
pub fn load_weights<B: Backend>(
    model: Classifier<B>,
    bytes: Vec<u8>,
    what: &str,
) -> Result<Classifier<B>, MlError> {
    apply_weights(model, bytes, what, false).map(|(model, _)| model)
}

/// [`load_weights`]; with `new_head`, a classification head of another shape (another number
/// of classes) keeps its drawn weights, and the names of its tensors are returned.
fn apply_weights<B: Backend>(
    mut model: Classifier<B>,
    bytes: Vec<u8>,
    what: &str,
    new_head: bool,
) -> Result<(Classifier<B>, Vec<String>), MlError> {
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .skip_enum_variants(true)
        .validate(false)
        .allow_partial(true);
    let applied = model.load_from(&mut store).map_err(|e| {
        err!(
            MlError::Checkpoint,
            "cannot load the weights of {what}: {e}"
        )
    })?;
    let head = model.head();
    let (mut redrawn, mut problems) = (Vec::new(), Vec::new());
    for error in &applied.errors {
        match error {
            ApplyError::ShapeMismatch { path, .. } if new_head && head.contains(&path.as_str()) => {
                redrawn.push(path.clone())
            }
            ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => problems.push(format!(
                "tensor '{path}' has shape {:?} in the file, the model needs {:?}",
                found.as_slice(),
                expected.as_slice()
            )),
            other => problems.push(other.to_string()),
        }
    }
    if !applied.missing.is_empty() {
        let missing: Vec<&str> = applied.missing.iter().map(|(p, _)| p.as_str()).collect();
        problems.push(format!("missing tensors {}", missing.join(", ")));
    }
    if !problems.is_empty() {
        bail!(
            MlError::Checkpoint,
            "the weights of {what} do not fit the model: {}",
            problems.join("; ")
        );
    }
    Ok((model, redrawn))
}

/// What every step of a run shares: the job, the device, the loss, the batch shape and the
/// gang a data-parallel worker trains with.
struct Steps<'a, B: Backend> {
    job: &'a TrainJob,
    device: B::Device,
    loss_fn: CrossEntropyLoss<B>,
    /// Channels, height, width of one example.
    dims: [usize; 3],
    ring: Option<Arc<Ring>>,
    /// The learning rate of each step.
    rates: Rates,
}

/// The loss, correct predictions and examples of one step over the whole (global) batch.
#[derive(Debug, Clone, Copy, PartialEq)]
struct StepStats {
    loss: f64,
    hits: i64,
    examples: usize,
}

impl<'a, B: AutodiffBackend<InnerBackend: ConvBackend> + ConvBackend> Steps<'a, B> {
    fn new(job: &'a TrainJob, device: B::Device, steps_per_epoch: usize) -> Self {
        let options = &job.options;
        let smoothing = options.label_smoothing as f32;
        Self {
            loss_fn: CrossEntropyLossConfig::new()
                .with_smoothing((smoothing > 0.0).then_some(smoothing))
                .init(&device),
            dims: batch_dims(&job.input),
            ring: job.hooks.collective.clone(),
            rates: Rates {
                schedule: options.lr_schedule,
                base: options.learning_rate,
                steps_per_epoch,
                epochs: options.epochs,
                warmup_epochs: options.warmup_epochs,
            },
            job,
            device,
        }
    }

    /// One optimizer step at rate `lr` on `batch` (this worker's share of it), dropout masks
    /// from `rng`; a gang's workers sum their gradients first, so that the step is the one a
    /// single worker takes on the whole batch. Gradients longer than `gradient_clip_norm` are
    /// scaled down to it.
    async fn step<O: Optimizer<Classifier<B>, B>>(
        &self,
        model: Classifier<B>,
        optimizer: &mut O,
        batch: Batch,
        rng: &mut StdRng,
        lr: f64,
    ) -> Result<(Classifier<B>, StepStats), MlError> {
        let job = self.job;
        let [c, h, w] = self.dims;
        let mut n = batch.len;
        let (mut grads, mut loss, mut hits) = (GradientsParams::new(), 0.0, 0);
        let mut running = Vec::new();
        if n > 0 {
            let x = Tensor::<B, 4>::from_data(
                TensorData::new(batch.features, [n, c, h, w]),
                &self.device,
            );
            let y =
                Tensor::<B, 1, Int>::from_data(TensorData::new(batch.labels, [n]), &self.device);
            (grads, loss, hits, running) = job.compute(|| {
                let (logits, running) = model.forward_train(x, rng);
                let loss = self.loss_fn.forward(logits.clone(), y.clone());
                let hits = logits
                    .argmax(1)
                    .flatten::<1>(0, 1)
                    .equal(y)
                    .int()
                    .sum()
                    .into_scalar()
                    .elem::<i64>();
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                (grads, loss.into_scalar().elem::<f64>(), hits, running)
            });
        }
        if let Some(ring) = &self.ring {
            // Sum n-weighted gradients, running averages, loss, hits and examples over the
            // workers: each normalises with its own batch statistics, and all keep the
            // example-weighted mean of their running averages.
            let mut flat = job.compute(|| flat_gradients(&model, grads, n as f32));
            if running.is_empty() {
                running = model.running();
            }
            let gradients = flat.len();
            for (_, value) in &running {
                flat.extend(value.to_data().iter::<f32>().map(|v| v * n as f32));
            }
            flat.extend([(loss * n as f64) as f32, hits as f32, n as f32]);
            ring.all_reduce_sum(&mut flat).await?;
            let total = flat.pop().expect("pushed").max(1.0);
            hits = flat.pop().expect("pushed") as i64;
            loss = flat.pop().expect("pushed") as f64 / total as f64;
            n = total as usize;
            let mut averages = &flat[gradients..];
            for (_, value) in running.iter_mut() {
                let (mine, rest) = averages.split_at(value.dims()[0]);
                averages = rest;
                let mean: Vec<f32> = mine.iter().map(|v| v / total).collect();
                *value = Tensor::from_data(TensorData::new(mean, value.dims()), &self.device);
            }
            let flat = &flat[..gradients];
            let scale = clip_scale(job.options.gradient_clip_norm, flat, 1.0 / total);
            grads = job.compute(|| gradients_from_flat(&model, flat, scale));
        } else if job.options.gradient_clip_norm.is_some() {
            grads = job.compute(|| {
                let flat = flat_gradients(&model, grads, 1.0);
                let scale = clip_scale(job.options.gradient_clip_norm, &flat, 1.0);
                gradients_from_flat(&model, &flat, scale)
            });
        }
        let model = job.compute(|| optimizer.step(lr, model, grads).with_running(running));
        Ok((
            model,
            StepStats {
                loss,
                hits,
                examples: n,
            },
        ))
    }

    /// Trains one epoch on `batches`, showing progress; returns the model and the epoch's
    /// metrics without validation. `started` is when the epoch began waiting for its input,
    /// `input_seconds` how long it has waited so far.
    async fn epoch<O: Optimizer<Classifier<B>, B>>(
        &self,
        mut model: Classifier<B>,
        optimizer: &mut O,
        mut batches: BatchStream,
        epoch: usize,
        started: Instant,
        mut input_seconds: f64,
    ) -> Result<(Classifier<B>, EpochMetrics), MlError> {
        let (job, options) = (self.job, &self.job.options);
        let rank = self.ring.as_ref().map_or(0, |r| r.rank());
        let mut rng = StdRng::seed_from_u64(epoch_seed(options, epoch).wrapping_add(rank as u64));
        let bar = progress_bar(epoch, options.epochs, rank == 0 && job.hooks.log.is_none());
        let mut last_line = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0i64, 0u64);
        let mut preview = epoch == 1 && rank == 0 && options.augment.is_some();
        let first_step = (epoch - 1) * self.rates.steps_per_epoch;
        let mut lr = self.rates.at(first_step);
        for step in first_step.. {
            let waited = Instant::now();
            let Some(batch) = batches.next_batch().await? else {
                break;
            };
            input_seconds += waited.elapsed().as_secs_f64();
            if std::mem::take(&mut preview) {
                write_augmentations(job, &batch).await?;
            }
            lr = self.rates.at(step);
            let stats;
            (model, stats) = self.step(model, optimizer, batch, &mut rng, lr).await?;
            if !stats.loss.is_finite() {
                bail!(
                    MlError::Training,
                    "the loss became {} in epoch {epoch}: lower the learning_rate",
                    stats.loss
                );
            }
            loss_sum += stats.loss * stats.examples as f64;
            correct += stats.hits;
            seen += stats.examples as u64;
            bar.inc(stats.examples as u64);
            if let Some(progress) = &job.hooks.progress {
                progress.store(seen, Ordering::Relaxed);
            }
            let (loss, accuracy) = (loss_sum / seen as f64, correct as f64 / seen as f64);
            if rank == 0 {
                run_metrics::step(&job.run_url, epoch, stats.examples as u64, loss, accuracy);
            }
            let status = format!(
                "loss {loss:.4} acc {accuracy:.3} {:.0} ex/s",
                seen as f64 / started.elapsed().as_secs_f64()
            );
            // In logs (no terminal) a line every 10 seconds stands in for the bar.
            if last_line.elapsed().as_secs() >= 10 {
                let line = format!(
                    "epoch {epoch}/{}: {seen} examples, {status}",
                    options.epochs
                );
                if bar.is_hidden() {
                    job.log(&line);
                } else if let Some(transcript) = &job.hooks.transcript {
                    transcript.line(&line);
                }
                last_line = Instant::now();
            }
            bar.set_message(status);
        }
        bar.finish_and_clear();
        let seconds = started.elapsed().as_secs_f64();
        if seen == 0 {
            return Err(MlError::Input("the training query returned no rows".into()));
        }
        let metrics = EpochMetrics {
            epoch,
            loss: loss_sum / seen as f64,
            accuracy: correct as f64 / seen as f64,
            val_loss: None,
            val_accuracy: None,
            examples: seen,
            seconds,
            input_seconds,
            examples_per_second: seen as f64 / seconds,
            learning_rate: lr,
        };
        Ok((model, metrics))
    }

    /// (loss, accuracy) on the validation query: worker 0 evaluates, and every worker of a gang
    /// gets its numbers (early stopping needs them everywhere).
    async fn validate(
        &self,
        model: &Classifier<B>,
        validation: Option<&DataFrame>,
    ) -> Result<Option<(f64, f64)>, MlError> {
        let Some(frame) = validation else {
            return Ok(None);
        };
        let options = &self.job.options;
        let mut val = match &self.ring {
            Some(ring) if ring.rank() != 0 => None,
            _ => {
                let v = evaluate_model(
                    &model.valid(),
                    frame,
                    &self.job.input,
                    &self.job.labels,
                    options.batch_size,
                )
                .await?;
                Some((v.loss, v.accuracy))
            }
        };
        if let Some(ring) = &self.ring {
            let mut shared = val.map_or([0.0; 2], |(l, a)| [l as f32, a as f32]);
            ring.broadcast(&mut shared).await?;
            val = Some((shared[0] as f64, shared[1] as f64));
        }
        Ok(val)
    }
}

impl CheckpointState {
    /// Before the first epoch.
    fn new(seed: u64) -> Self {
        Self {
            epoch: 0,
            history: Vec::new(),
            best_loss: f64::INFINITY,
            epochs_without_improvement: 0,
            seed,
            steps_per_epoch: 0,
        }
    }

    /// Records a finished epoch: its metrics, and whether the monitored loss (validation loss,
    /// else training loss) improved.
    fn record(&mut self, metrics: EpochMetrics) {
        let monitored = metrics.val_loss.unwrap_or(metrics.loss);
        if monitored < self.best_loss {
            self.best_loss = monitored;
            self.epochs_without_improvement = 0;
        } else {
            self.epochs_without_improvement += 1;
        }
        self.epoch = metrics.epoch;
        self.history.push(metrics);
    }
}

/// Writes epoch `state.epoch`'s checkpoint (weights and optimizer first, `state.json`, the
/// marker, last), then `metrics.jsonl`, the event file and the log so far.
async fn save_checkpoint<B: AutodiffBackend, O: Optimizer<Classifier<B>, B>>(
    job: &TrainJob,
    model: &Classifier<B>,
    optimizer: &O,
    state: &CheckpointState,
    events: (&EventFile, &Path),
) -> Result<(), MlError> {
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let dir = checkpoint_dir(job, state.epoch);
    let weights = recorder
        .record(model.clone().into_record(), ())
        .map_err(|e| err!(MlError::Checkpoint, "cannot serialise the model: {e}"))?;
    put_bytes(&job.store, &dir.clone().join("model.bin"), weights).await?;
    let optim = recorder
        .record(optimizer.to_record(), ())
        .map_err(|e| err!(MlError::Checkpoint, "cannot serialise the optimizer: {e}"))?;
    put_bytes(&job.store, &dir.clone().join("optimizer.bin"), optim).await?;
    put_bytes(
        &job.store,
        &dir.clone().join("state.json"),
        serde_json::to_vec_pretty(state)?,
    )
    .await?;
    let mut lines = Vec::new();
    for m in &state.history {
        serde_json::to_writer(&mut lines, m)?;
        lines.push(b'\n');
    }
    put_bytes(
        &job.store,
        &job.run_dir.clone().join("metrics.jsonl"),
        lines,
    )
    .await?;
    put_bytes(&job.store, events.1, events.0.bytes().to_vec()).await?;
    if let Some(transcript) = &job.hooks.transcript {
        transcript.flush().await?;
    }
    fault::point_async(
        "checkpoint",
        &format!("{}/epoch-{}", job.run_dir, state.epoch),
    )
    .await?;
    Ok(())
}

/// Trains the epochs a resumed run has left (a fresh run all of them), with a checkpoint after
/// each; stops early on `early_stopping_patience` or when the epoch hook says so.
async fn epochs<
    B: AutodiffBackend<InnerBackend: ConvBackend> + ConvBackend,
    O: Optimizer<Classifier<B>, B>,
>(
    train: &DataFrame,
    validation: Option<&DataFrame>,
    job: &TrainJob,
    device: B::Device,
    mut model: Classifier<B>,
    mut optimizer: O,
    resumed: Option<CheckpointState>,
) -> Result<TrainOutcome, MlError> {
    let options = &job.options;
    let mut state = CheckpointState::new(options.seed);
    let resumed_after = resumed.as_ref().map(|s| s.epoch);
    if let Some(saved) = resumed {
        let dir = checkpoint_dir(job, saved.epoch);
        // Burn's own record keeps the parameter ids the optimizer state is keyed by.
        model = model.load_record(checkpoint_record(job, &dir, "model.bin", &device).await?);
        let record = checkpoint_record(job, &dir, "optimizer.bin", &device).await?;
        optimizer = optimizer.load_record(record);
        job.log(&format!(
            "resuming {} after epoch {}",
            job.run_url, saved.epoch
        ));
        state = saved;
    }
    if state.epoch == 0 && Rates::varies(options.lr_schedule, options.warmup_epochs) {
        let examples = train.clone().count().await?;
        state.steps_per_epoch = examples.div_ceil(options.batch_size);
        job.log(&format!(
            "{examples} training examples: {} steps per epoch for the learning-rate schedule",
            state.steps_per_epoch
        ));
    }
    let steps = Steps::<B>::new(job, device, state.steps_per_epoch);
    let (rank, world) = steps
        .ring
        .as_ref()
        .map_or((0, 1), |r| (r.rank(), r.world()));
    let leader = rank == 0;
    if let Some(ring) = &steps.ring {
        // Rank 0's weights, and the epoch it resumed after, become every worker's.
        let mut flat = job.compute(|| flat_weights(&model));
        flat.push(state.epoch as f32);
        ring.broadcast(&mut flat).await?;
        let first = flat.pop().expect("pushed") as usize;
        if first != state.epoch {
            bail!(
                MlError::Checkpoint,
                "worker {rank} found {} at epoch {} but worker 0 at epoch {first}",
                job.run_url,
                state.epoch
            );
        }
        model = job.compute(|| set_weights(model, &flat));
    }
    // By name, after a checkpoint's load, which brings the checkpoint's parameter ids.
    let frozen = model.frozen(&options.freeze)?;
    let first_epoch = state.epoch + 1;
    let mut events = EventFile::new(unix_now());
    for summary in &job.hooks.summaries {
        events.plugin_summary(unix_now(), 0, summary);
    }
    for m in &state.history {
        log_epoch(&mut events, m);
    }
    let events_path = events_path(job).await?;
    let (mut stopped_early, mut stopped_by_scheduler) = (false, false);
    let whole = Arc::new(OnceLock::new());
    let mut upcoming =
        (state.epoch < options.epochs).then(|| read_ahead(train, job, state.epoch + 1, &whole));
    while state.epoch < options.epochs {
        let epoch = state.epoch + 1;
        fault::point_async(
            "epoch_start",
            &format!("{}/rank-{rank}/epoch-{epoch}", job.run_dir),
        )
        .await?;
        if !frozen.is_empty() {
            let unfrozen = options.unfreeze_at_epoch > 0 && epoch >= options.unfreeze_at_epoch;
            model = model.with_trained(&frozen, unfrozen);
            if leader && (epoch == first_epoch || epoch == options.unfreeze_at_epoch) {
                job.log(&format!(
                    "epoch {epoch}: {} tensors of {} {}",
                    frozen.len(),
                    options.freeze.join(", "),
                    if unfrozen {
                        "train from now on"
                    } else {
                        "frozen"
                    }
                ));
            }
        }
        // The epoch's time includes any wait for its input.
        let started = Instant::now();
        // Every worker reads the same shuffled stream and trains on its share of each batch.
        let batches = upcoming
            .take()
            .expect("the next epoch is read ahead")
            .stream()
            .await?
            .shard(rank, world);
        let input_seconds = started.elapsed().as_secs_f64();
        // The next epoch's input is read and decoded while this one trains.
        upcoming = (epoch < options.epochs).then(|| read_ahead(train, job, epoch + 1, &whole));
        let mut metrics;
        (model, metrics) = steps
            .epoch(
                model,
                &mut optimizer,
                batches,
                epoch,
                started,
                input_seconds,
            )
            .await?;
        if let Some((loss, accuracy)) = steps.validate(&model, validation).await? {
            (metrics.val_loss, metrics.val_accuracy) = (Some(loss), Some(accuracy));
        }
        if leader {
            job.log(&describe(&metrics, options.epochs));
        }
        log_epoch(&mut events, &metrics);
        state.record(metrics);
        // Rank 0 alone writes the run folder; the other workers hold the same model.
        if leader {
            save_checkpoint(job, &model, &optimizer, &state, (&events, &events_path)).await?;
        }
        if options.early_stopping_patience > 0
            && state.epochs_without_improvement >= options.early_stopping_patience
        {
            job.log(&format!(
                "early stopping after epoch {epoch}: no improvement for {} epochs",
                state.epochs_without_improvement
            ));
            stopped_early = true;
            break;
        }
        if let Some(hook) = &job.hooks.on_epoch
            && epoch < options.epochs
            && !hook(state.history.last().expect("pushed").clone()).await
        {
            job.log(&format!("stopped by the scheduler after epoch {epoch}"));
            stopped_by_scheduler = true;
            break;
        }
    }
    Ok(TrainOutcome {
        weights: weights_bytes(&model)?,
        history: state.history,
        resumed_after,
        stopped_early,
        stopped_by_scheduler,
    })
}

/// Writes the first 16 images of epoch 1's first batch as the model sees them to the run
/// folder: a 4x4 grid as `augmentations.png` and TensorBoard image summaries (in an event
/// file of their own: a resumed run rewrites the main event file from its history, which has
/// no images).
async fn write_augmentations(job: &TrainJob, batch: &Batch) -> Result<(), MlError> {
    let images = batch_images(batch, &job.input, 16);
    let refs: Vec<_> = images.iter().map(Image::as_ref).collect();
    if refs.is_empty() {
        return Ok(());
    }
    let png = |image: ImageRef<'_>| kernels::encode(image, EncodeFormat::Png);
    let grid = kernels::grid(&refs, 4, 2).and_then(|g| png(g.as_ref()));
    let grid = grid.map_err(|e| err!(MlError::Training, "augmentations.png: {e}"))?;
    put_bytes(
        &job.store,
        &job.run_dir.clone().join("augmentations.png"),
        grid,
    )
    .await?;
    let mut summaries = Vec::with_capacity(refs.len());
    for (i, image) in refs.iter().enumerate() {
        let encoded = png(*image).map_err(|e| err!(MlError::Training, "image summary: {e}"))?;
        summaries.push((
            format!("augmentations/image/{i}"),
            image.width,
            image.height,
            image.channels,
            encoded,
        ));
    }
    let now = unix_now();
    let mut events = EventFile::new(now);
    events.images(now, 1, &summaries);
    // One name, so that a run resumed in epoch 1 replaces the file instead of adding one.
    let name = "events.out.tfevents.0.augmentations";
    put_bytes(
        &job.store,
        &job.run_dir.clone().join(name),
        events.bytes().to_vec(),
    )
    .await?;
    Ok(())
}

/// The run's event file: a resumed run rewrites its event file (with the whole history)
/// instead of starting a second one, which TensorBoard would show as repeated steps.
async fn events_path(job: &TrainJob) -> Result<Path, MlError> {
    let mut previous: Vec<String> = list(&job.store, &job.run_dir)
        .await?
        .files
        .into_iter()
        .filter(|f| f.starts_with("events.out.tfevents.") && f.ends_with(".quiver"))
        .collect();
    previous.sort();
    Ok(job.run_dir.clone().join(
        previous
            .pop()
            .unwrap_or_else(|| format!("events.out.tfevents.{}.quiver", unix_now() as u64)),
    ))
}

/// Seeding per epoch makes dropout and shuffling after a resume equal an uninterrupted run.
fn epoch_seed(options: &TrainOptions, epoch: usize) -> u64 {
    options
        .seed
        .wrapping_add((epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// An epoch's shuffled batch stream, started and filled by a background task; dropping it
/// stops the task.
struct ReadAhead(Option<tokio::task::JoinHandle<Result<BatchStream, MlError>>>);

impl ReadAhead {
    /// The stream, once its shuffle buffer is full.
    async fn stream(mut self) -> Result<BatchStream, MlError> {
        let task = self.0.take().expect("taken once");
        task.await
            .map_err(|e| err!(MlError::Training, "reading the training data failed: {e}"))?
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Starts preparing epoch `epoch`'s input in the background: a replay of `whole` where an
/// earlier epoch's input fit in the shuffle buffer, else a read (which fills `whole` when the
/// input fits and a later epoch follows).
fn read_ahead(
    train: &DataFrame,
    job: &TrainJob,
    epoch: usize,
    whole: &Arc<OnceLock<WholeInput>>,
) -> ReadAhead {
    let (frame, input, labels) = (train.clone(), job.input.clone(), job.labels.clone());
    let (batch_size, seed, buffer, last) = (
        job.options.batch_size,
        epoch_seed(&job.options, epoch),
        job.options.shuffle_buffer,
        job.options.epochs,
    );
    let whole = Arc::clone(whole);
    let (augment, run_seed) = (job.options.augment.clone().map(Arc::new), job.options.seed);
    ReadAhead(Some(tokio::spawn(async move {
        if let Some(kept) = whole.get() {
            return Ok(BatchStream::replay(kept, &input, batch_size, seed).augment(
                augment,
                run_seed,
                epoch as u64,
            ));
        }
        let mut stream =
            BatchStream::start(&frame, &input, &labels, batch_size, Some((seed, buffer)))
                .await?
                .augment(augment, run_seed, epoch as u64);
        stream.fill().await?;
        // Keeping a copy only pays when a later epoch will replay it.
        if let Some(kept) = (epoch < last).then(|| stream.whole_input()).flatten() {
            let _ = whole.set(kept);
        }
        Ok(stream)
    })))
}

fn log_epoch(events: &mut EventFile, m: &EpochMetrics) {
    let mut values = vec![
        ("epoch_loss", m.loss),
        ("epoch_accuracy", m.accuracy),
        ("examples_per_second", m.examples_per_second),
        ("input_seconds", m.input_seconds),
        ("learning_rate", m.learning_rate),
    ];
    if let (Some(l), Some(a)) = (m.val_loss, m.val_accuracy) {
        values.push(("val_loss", l));
        values.push(("val_accuracy", a));
    }
    events.scalars(unix_now(), m.epoch as i64, &values);
}

/// One line per epoch, for logs.
pub fn describe(m: &EpochMetrics, epochs: usize) -> String {
    let mut line = format!(
        "epoch {}/{epochs}: loss {:.4} accuracy {:.4}",
        m.epoch, m.loss, m.accuracy
    );
    if let (Some(l), Some(a)) = (m.val_loss, m.val_accuracy) {
        line.push_str(&format!(" val_loss {l:.4} val_accuracy {a:.4}"));
    }
    line.push_str(&format!(
        " ({} examples, {:.1}s of which {:.1}s waiting for input, {:.0} examples/s)",
        m.examples, m.seconds, m.input_seconds, m.examples_per_second
    ));
    line
}

fn progress_bar(epoch: usize, epochs: usize, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} epoch {prefix} {pos} examples {msg}")
            .expect("valid template"),
    );
    bar.set_prefix(format!("{epoch}/{epochs}"));
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// Every float parameter of `model`, flattened in visiting order.
fn flat_weights<B: Backend>(model: &Classifier<B>) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.extend(param.val().into_data().iter::<f32>());
        }
    }
    let mut collect = Collect(Vec::with_capacity(model.num_params()));
    model.visit(&mut collect);
    collect.0
}

/// `model` with its float parameters replaced by `flat` (as [`flat_weights`] orders them).
fn set_weights<B: Backend>(model: Classifier<B>, flat: &[f32]) -> Classifier<B> {
    struct Assign<'a>(&'a [f32]);
    impl<B: Backend> ModuleMapper<B> for Assign<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            param.map(|tensor| {
                let shape = tensor.shape();
                let (values, rest) = self.0.split_at(shape.num_elements());
                self.0 = rest;
                let new =
                    Tensor::from_data(TensorData::new(values.to_vec(), shape), &tensor.device());
                new.set_require_grad(tensor.is_require_grad())
            })
        }
    }
    model.map(&mut Assign(flat))
}

/// The factor that turns gradients `flat` times `scale` into ones whose global L2 norm is at
/// most `clip`: `scale` when they are shorter, as PyTorch's `clip_grad_norm_` computes it.
fn clip_scale(clip: Option<f64>, flat: &[f32], scale: f32) -> f32 {
    let Some(clip) = clip else {
        return scale;
    };
    let norm = flat.iter().map(|&g| (g as f64).powi(2)).sum::<f64>().sqrt() * scale as f64;
    (scale as f64 * (clip / (norm + 1e-6)).min(1.0)) as f32
}

/// The gradients of every trained float parameter of `model` times `scale`, flattened as
/// [`flat_weights`] orders them (zeros for parameters without a gradient; frozen ones and
/// running averages left out).
fn flat_gradients<B: AutodiffBackend>(
    model: &Classifier<B>,
    mut grads: GradientsParams,
    scale: f32,
) -> Vec<f32> {
    struct Collect<'a>(&'a mut GradientsParams, Vec<f32>, f32);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if !param.is_require_grad() {
                return;
            }
            match self.0.remove::<B::InnerBackend, D>(param.id) {
                Some(grad) => self
                    .1
                    .extend(grad.into_data().iter::<f32>().map(|g| g * self.2)),
                None => {
                    let len = param.val().shape().num_elements();
                    self.1.resize(self.1.len() + len, 0.0);
                }
            }
        }
    }
    let mut collect = Collect(&mut grads, Vec::with_capacity(model.num_params()), scale);
    model.visit(&mut collect);
    collect.1
}

/// Gradients of `model`'s parameters from `flat` (as [`flat_gradients`] orders them) times
/// `scale`.
fn gradients_from_flat<B: AutodiffBackend>(
    model: &Classifier<B>,
    flat: &[f32],
    scale: f32,
) -> GradientsParams {
    struct Split<'a>(&'a [f32], GradientsParams, f32);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Split<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if !param.is_require_grad() {
                return;
            }
            let inner = param.val().inner();
            let shape = inner.shape();
            let (values, rest) = self.0.split_at(shape.num_elements());
            self.0 = rest;
            let values: Vec<f32> = values.iter().map(|v| v * self.2).collect();
            let grad = Tensor::<B::InnerBackend, D>::from_data(
                TensorData::new(values, shape),
                &inner.device(),
            );
            self.1.register(param.id, grad);
        }
    }
    let mut split = Split(flat, GradientsParams::new(), scale);
    model.visit(&mut split);
    split.1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Augment;
    use crate::ml::ModelOptions;
    use crate::ml::schedule::LrSchedule;
    use crate::ml::spec::{Activation, InputKind};
    use object_store::memory::InMemory;

    type B = burn::backend::Autodiff<burn::backend::Flex>;

    fn job() -> TrainJob {
        TrainJob {
            architecture: Architecture::DnnClassifier {
                hidden_units: vec![4],
                activation: Activation::Relu,
                dropout: 0.0,
            },
            input: InputSpec {
                column: "x".into(),
                kind: InputKind::Tensor,
                shape: vec![3],
                scale: 1.0,
                normalize: None,
            },
            labels: LabelMap {
                column: "label".into(),
                integer: true,
                labels: vec!["0".into(), "1".into(), "2".into()],
            },
            options: ModelOptions::default().train_options().unwrap(),
            store: Arc::new(object_store::memory::InMemory::new()),
            run_dir: Path::from("run"),
            run_url: "memory:///run/".into(),
            hooks: TrainHooks::default(),
            start: None,
        }
    }

    /// `job`'s classifier (3 classes) with seed 1's initial weights.
    fn model(job: &TrainJob) -> Classifier<B> {
        Classifier::<B>::new(
            &job.architecture,
            &job.input,
            3,
            &Default::default(),
            1,
            Default::default(),
        )
        .unwrap()
    }

    /// From all-zero weights every logit is 0: the loss is ln(3) for 3 classes, and only the
    /// output biases have gradients (1/3 less each class's share of the labels), so Adam's
    /// first step moves each of them by the learning rate against its gradient's sign.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_step_from_zero_weights_has_loss_ln_3_and_moves_the_biases_by_the_learning_rate() {
        let job = job();
        let model = model(&job);
        let zeros = vec![0.0; flat_weights(&model).len()];
        let model = set_weights(model, &zeros);
        let mut optimizer = FastAdam::new(1e-7).init::<B, Classifier<B>>();
        let steps = Steps::<B>::new(&job, Default::default(), 0);
        let batch = Batch {
            features: vec![0.5, -1.0, 2.0, 1.0, 0.0, -0.5],
            labels: vec![0, 2],
            len: 2,
        };
        let (model, stats) = steps
            .step(
                model,
                &mut optimizer,
                batch,
                &mut StdRng::seed_from_u64(0),
                job.options.learning_rate,
            )
            .await
            .unwrap();
        assert!((stats.loss - 3f64.ln()).abs() < 1e-6, "{stats:?}");
        assert_eq!(stats.examples, 2);
        let after = flat_weights(&model);
        let lr = job.options.learning_rate as f32;
        let (rest, biases) = after.split_at(after.len() - 3);
        assert!(rest.iter().all(|&w| w == 0.0), "{rest:?}");
        for (got, want) in biases.iter().zip([lr, -lr, lr]) {
            assert!((got - want).abs() < 1e-6 * lr + 1e-9, "{biases:?}");
        }
    }

    /// 40 examples of 3 floats in 3 classes, as a query.
    fn examples() -> DataFrame {
        use datafusion::arrow::array::{Float32Builder, Int64Array, ListBuilder};
        use datafusion::arrow::record_batch::RecordBatch;
        let mut x = ListBuilder::new(Float32Builder::new());
        for i in 0..40 {
            x.values()
                .append_slice(&[i as f32 / 40.0, (i % 3) as f32, (i * 7 % 5) as f32]);
            x.append(true);
        }
        let labels = Int64Array::from_iter_values((0..40).map(|i| i % 3));
        let batch = RecordBatch::try_from_iter([
            ("x", Arc::new(x.finish()) as _),
            ("label", Arc::new(labels) as _),
        ])
        .unwrap();
        datafusion::prelude::SessionContext::new()
            .read_batch(batch)
            .unwrap()
    }

    /// 40 gray 4x4 images in 3 classes, as a query.
    fn images() -> DataFrame {
        use datafusion::arrow::array::Int64Array;
        use datafusion::arrow::record_batch::RecordBatch;
        use quiver_engine::image::{ImageArrayBuilder, ImageRef};
        let mut images = ImageArrayBuilder::with_capacity(40);
        for i in 0..40u32 {
            let data: Vec<u8> = (0..16).map(|p| ((p * 16 + i * 37) % 256) as u8).collect();
            images.append(ImageRef {
                width: 4,
                height: 4,
                channels: 1,
                data: &data,
            });
        }
        let labels = Int64Array::from_iter_values((0..40).map(|i| i % 3));
        let batch =
            RecordBatch::try_from_iter([("x", images.finish()), ("label", Arc::new(labels) as _)])
                .unwrap();
        datafusion::prelude::SessionContext::new()
            .read_batch(batch)
            .unwrap()
    }

    fn dnn() -> Architecture {
        Architecture::DnnClassifier {
            hidden_units: vec![8],
            activation: Activation::Relu,
            dropout: 0.3,
        }
    }

    /// Stopped after epoch 1 (the epoch hook says stop) and run again, training resumes from
    /// the checkpoint (weights, Adam's moments, the epoch, dropout and shuffling seeds) and ends
    /// with the weights of an uninterrupted run, to the bit.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one() {
        resumes_exactly(dnn(), None, |_| ()).await;
    }

    /// The same for a ResNet, whose batch norms' running averages are part of the weights.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_resumed_resnet_ends_with_the_weights_and_running_averages_of_an_uninterrupted_one() {
        resumes_exactly(Architecture::ResnetClassifier { depth: 18 }, None, |_| ()).await;
    }

    /// The same with augmented images: each draw is keyed by the seed, the epoch and the
    /// example. And augmentation does change what is learnt.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_resumed_run_on_augmented_images_ends_with_the_weights_of_an_uninterrupted_one() {
        let augment = crate::image::AugmentOptions::from_json(
            r#"{"augment_flip": "both", "augment_rotation": 30, "augment_brightness": 0.5}"#,
        )
        .unwrap()
        .augment();
        assert!(augment.is_some());
        let plain = resumes_exactly(dnn(), Some(None), |_| ()).await;
        let augmented = resumes_exactly(dnn(), Some(augment), |_| ()).await;
        assert_ne!(plain, augmented);
    }

    /// The same with the backbone frozen: the resumed run freezes the same tensors (chosen by
    /// name, as the checkpoint brings its own parameter ids).
    #[tokio::test(flavor = "multi_thread")]
    async fn a_resumed_run_with_a_frozen_backbone_ends_with_the_weights_of_an_uninterrupted_one() {
        let resnet = Architecture::ResnetClassifier { depth: 18 };
        let all = resumes_exactly(resnet.clone(), Some(None), |_| ()).await;
        let head_only = resumes_exactly(resnet, Some(None), |o| {
            o.freeze = vec!["backbone".into()];
        })
        .await;
        assert_ne!(all, head_only);
    }

    /// The same with each optimizer, schedule, warm-up, label smoothing and clipping: the
    /// resumed run takes each step at the rate the uninterrupted one did. Each changes what
    /// is learnt.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_resumed_run_with_a_schedule_ends_with_the_weights_of_an_uninterrupted_one() {
        let plain = resumes_exactly(dnn(), None, |_| ()).await;
        let tweaks: [fn(&mut TrainOptions); 4] = [
            |o| {
                o.optimizer = OptimizerSpec::AdamW {
                    epsilon: 1e-7,
                    weight_decay: 0.1,
                };
                (o.lr_schedule, o.warmup_epochs) = (LrSchedule::Cosine, 0.5);
            },
            |o| {
                o.optimizer = OptimizerSpec::Sgd {
                    momentum: 0.9,
                    nesterov: true,
                    weight_decay: 0.01,
                };
                o.lr_schedule = LrSchedule::OneCycle;
            },
            |o| {
                o.lr_schedule = LrSchedule::Step {
                    every: 1,
                    gamma: 0.5,
                };
                o.label_smoothing = 0.2;
            },
            |o| o.gradient_clip_norm = Some(0.01),
        ];
        let mut seen = vec![plain];
        for tweak in tweaks {
            let weights = resumes_exactly(dnn(), None, tweak).await;
            assert!(!seen.contains(&weights));
            seen.push(weights);
        }
    }

    /// Data-parallel training of a ResNet on an in-memory ring. Batch norm is per replica (each
    /// worker normalises its share of a batch with that share's statistics, as PyTorch's DDP
    /// does) and the running averages are averaged over the workers every step, so both
    /// workers end with the same weights and running averages, to the bit. With every norm
    /// frozen (so that per-replica and whole-batch statistics cannot differ), two workers take
    /// the steps one worker takes, up to float summation order.
    #[tokio::test(flavor = "multi_thread")]
    async fn data_parallel_resnet_workers_agree_and_with_frozen_norms_match_one_worker() {
        let [a, b] = &gang(2, &[]).await[..] else {
            unreachable!()
        };
        assert!(a == b, "the workers of a gang ended with different weights");
        let mut norms = vec!["bn1".to_string()];
        for layer in 1..=4 {
            for block in 0..2 {
                norms.push(format!("layer{layer}.{block}.bn1"));
                norms.push(format!("layer{layer}.{block}.bn2"));
            }
            if layer > 1 {
                norms.push(format!("layer{layer}.0.downsample.1"));
            }
        }
        let one = gang(1, &norms).await.remove(0);
        let two = gang(2, &norms).await;
        assert!(two[0] == two[1]);
        let job = resnet_job(1, &norms);
        let (seed, initializer) = (job.options.seed, job.options.initializer);
        let start = Classifier::<B>::new(
            &job.architecture,
            &job.input,
            3,
            &Default::default(),
            seed,
            initializer,
        );
        let start = flat_weights(&start.unwrap());
        let largest = |x: &[f32], y: &[f32]| {
            x.iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max)
        };
        assert!(largest(&one, &start) > 1e-3, "training moved the weights");
        let diff = largest(&one, &two[0]);
        assert!(diff < 1e-6, "two workers ended {diff} away from one");
    }

    /// A job training ResNet-18 with SGD on [`examples`] as `world` workers, `freeze` frozen.
    fn resnet_job(world: usize, freeze: &[String]) -> TrainJob {
        let mut job = job();
        job.architecture = Architecture::ResnetClassifier { depth: 18 };
        job.input.shape = vec![1, 3, 1];
        job.options.epochs = 2;
        job.options.batch_size = 8;
        job.options.workers = world;
        job.options.learning_rate = 0.01;
        job.options.optimizer = OptimizerSpec::Sgd {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        };
        job.options.freeze = freeze.to_vec();
        job
    }

    /// Each worker's final weights (running averages included) after [`resnet_job`] on a
    /// ring of `world` workers in memory (no ring for one).
    async fn gang(world: usize, freeze: &[String]) -> Vec<Vec<f32>> {
        let rings = super::super::collective::testing::rings(world);
        let tasks: Vec<_> = rings
            .into_iter()
            .map(|ring| {
                let mut job = resnet_job(world, freeze);
                job.hooks.collective = (world > 1).then(|| Arc::new(ring));
                tokio::spawn(async move {
                    let outcome = train(&examples(), None, &job).await.unwrap();
                    flat_weights(
                        &load_weights(model(&job), outcome.weights, "a worker's weights").unwrap(),
                    )
                })
            })
            .collect();
        let mut weights = Vec::new();
        for task in tasks {
            weights.push(task.await.unwrap());
        }
        weights
    }

    /// Trains `architecture` twice, straight and stopped then resumed, and returns the final
    /// weights, which must agree. With `images`, on [`images`] augmented with it; otherwise on
    /// [`examples`] (as a 1x3 one-channel image for a ResNet). `tweak` sets other options.
    async fn resumes_exactly(
        architecture: Architecture,
        images: Option<Option<Augment>>,
        tweak: fn(&mut TrainOptions),
    ) -> Vec<f32> {
        let fresh = |store: Arc<dyn ObjectStore>| {
            let mut job = job();
            job.architecture = architecture.clone();
            job.input.shape = vec![1, 3, 1];
            if let Some(augment) = &images {
                job.input.kind = InputKind::Image;
                job.input.shape = vec![4, 4, 1];
                job.input.scale = 1.0 / 255.0;
                job.options.augment = augment.clone();
            }
            job.options.epochs = 2;
            job.options.batch_size = 8;
            tweak(&mut job.options);
            job.store = store;
            job
        };
        let data = if images.is_some() {
            self::images()
        } else {
            examples()
        };
        let straight = train(&data, None, &fresh(Arc::new(InMemory::new())))
            .await
            .unwrap();
        assert_eq!(straight.resumed_after, None);
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let mut first = fresh(Arc::clone(&store));
        first.hooks.on_epoch = Some(Arc::new(|_| Box::pin(async { false })));
        let stopped = train(&data, None, &first).await.unwrap();
        assert!(stopped.stopped_by_scheduler && stopped.history.len() == 1);
        let resumed = train(&data, None, &fresh(store)).await.unwrap();
        assert_eq!(resumed.resumed_after, Some(1));
        let scores = |h: &[EpochMetrics]| {
            h.iter()
                .map(|m| (m.epoch, m.loss, m.accuracy, m.examples, m.learning_rate))
                .collect::<Vec<_>>()
        };
        assert_eq!(scores(&resumed.history), scores(&straight.history));
        // Each epoch's rate is its last step's (40 examples: 5 steps per epoch).
        let options = fresh(Arc::new(InMemory::new())).options;
        let rates = Rates {
            schedule: options.lr_schedule,
            base: options.learning_rate,
            steps_per_epoch: 5,
            epochs: 2,
            warmup_epochs: options.warmup_epochs,
        };
        let want: Vec<f64> = [4, 9].into_iter().map(|s| rates.at(s)).collect();
        let got: Vec<f64> = straight.history.iter().map(|m| m.learning_rate).collect();
        assert_eq!(got, want);
        let job = fresh(Arc::new(InMemory::new()));
        let weights = |bytes: &[u8]| {
            flat_weights(&load_weights(model(&job), bytes.to_vec(), "a run's weights").unwrap())
        };
        let (a, b) = (weights(&resumed.weights), weights(&straight.weights));
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(a == b, "the resumed run ends elsewhere (by up to {diff})");
        a
    }

    #[test]
    fn epochs_without_improvement_count_from_the_best_monitored_loss() {
        let mut state = CheckpointState::new(7);
        let metrics = |epoch, loss, val_loss| EpochMetrics {
            epoch,
            loss,
            accuracy: 0.5,
            val_loss,
            val_accuracy: None,
            examples: 10,
            seconds: 1.0,
            input_seconds: 0.0,
            examples_per_second: 10.0,
            learning_rate: 0.001,
        };
        state.record(metrics(1, 1.0, None));
        state.record(metrics(2, 0.5, Some(2.0)));
        assert_eq!(
            (state.best_loss, state.epochs_without_improvement),
            (1.0, 1)
        );
        state.record(metrics(3, 0.9, Some(0.8)));
        assert_eq!(
            (state.best_loss, state.epochs_without_improvement),
            (0.8, 0)
        );
        assert_eq!((state.epoch, state.history.len(), state.seed), (3, 3, 7));
    }
}
