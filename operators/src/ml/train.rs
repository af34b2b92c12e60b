//! The training loop: epochs over streamed, shuffled batches; Adam or SGD; loss and accuracy on
//! the training set and an optional validation query; a checkpoint in the store after every
//! epoch; `metrics.jsonl` and TensorBoard event files written as training runs; resume from the
//! last checkpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use burn_store::{ModuleSnapshot, SafetensorsStore};
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
use super::data::{BatchStream, WholeInput, batch_dims};
use super::evaluate::evaluate_model;
use super::events::{EventFile, PluginSummary};
use super::model::Classifier;
use super::spec::{Architecture, InputSpec, LabelMap, OptimizerSpec, TrainOptions};
use quiver_engine::fault;
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
    let model = Classifier::<B>::new(
        &job.architecture,
        &job.input,
        classes,
        &device,
        options.seed,
        options.initializer,
    )?;
    let run = RunSpec {
        architecture: job.architecture.clone(),
        input: job.input.clone(),
        labels: job.labels.clone(),
        options: options.clone(),
    };
    let leader = job.hooks.collective.as_ref().is_none_or(|r| r.rank() == 0);
    let resumed = resume_state(job, &run, leader).await?;
    match options.optimizer {
        OptimizerSpec::Adam { epsilon } => {
            let optimizer = FastAdam::new(epsilon as f32).init::<B, Classifier<B>>();
            epochs(train, validation, job, device, model, optimizer, resumed).await
        }
        OptimizerSpec::Sgd { momentum } => {
            let momentum = (momentum > 0.0).then(|| {
                MomentumConfig::new()
                    .with_momentum(momentum)
                    .with_dampening(0.0)
            });
            let optimizer = SgdConfig::new()
                .with_momentum(momentum)
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

/// Model weights as safetensors bytes.
pub(crate) fn weights_bytes<B: Backend>(model: &Classifier<B>) -> Result<Vec<u8>, MlError> {
    let mut store = SafetensorsStore::from_bytes(None);
    model
        .save_into(&mut store)
        .map_err(|e| err!(MlError::Checkpoint, "cannot serialise the weights: {e}"))?;
    store
        .get_bytes()
        .map_err(|e| err!(MlError::Checkpoint, "cannot serialise the weights: {e}"))
}

/// Loads safetensors weights into a freshly built model.
pub(crate) fn load_weights<B: Backend>(
    mut model: Classifier<B>,
    bytes: Vec<u8>,
    what: &str,
) -> Result<Classifier<B>, MlError> {
    let mut store = SafetensorsStore::from_bytes(Some(bytes));
    let applied = model.load_from(&mut store).map_err(|e| {
        err!(
            MlError::Checkpoint,
            "cannot load the weights of {what}: {e}"
        )
    })?;
    if !applied.missing.is_empty() || !applied.errors.is_empty() {
        bail!(
            MlError::Checkpoint,
            "the weights of {what} do not fit the model: missing {:?}, errors {:?}",
            applied.missing,
            applied.errors
        );
    }
    Ok(model)
}

#[allow(clippy::too_many_arguments)]
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
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let mut state = CheckpointState {
        epoch: 0,
        history: Vec::new(),
        best_loss: f64::INFINITY,
        epochs_without_improvement: 0,
        seed: options.seed,
    };
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
    let ring = job.hooks.collective.clone();
    let (rank, world) = ring.as_ref().map_or((0, 1), |r| (r.rank(), r.world()));
    let leader = rank == 0;
    if let Some(ring) = &ring {
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
    let mut events = EventFile::new(unix_now());
    for summary in &job.hooks.summaries {
        events.plugin_summary(unix_now(), 0, summary);
    }
    for m in &state.history {
        log_epoch(&mut events, m);
    }
    // A resumed run rewrites its event file (with the whole history) instead of starting a
    // second one, which TensorBoard would show as repeated steps.
    let mut previous: Vec<String> = list(&job.store, &job.run_dir)
        .await?
        .files
        .into_iter()
        .filter(|f| f.starts_with("events.out.tfevents.") && f.ends_with(".quiver"))
        .collect();
    previous.sort();
    let events_path = job.run_dir.clone().join(
        previous
            .pop()
            .unwrap_or_else(|| format!("events.out.tfevents.{}.quiver", unix_now() as u64)),
    );
    let [c, h, w] = batch_dims(&job.input);
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
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
        let mut dropout_rng =
            StdRng::seed_from_u64(epoch_seed(options, epoch).wrapping_add(rank as u64));
        // The epoch's time includes any wait for its input.
        let started = Instant::now();
        // Every worker reads the same shuffled stream and trains on its share of each batch.
        let mut batches = upcoming
            .take()
            .expect("the next epoch is read ahead")
            .stream()
            .await?
            .shard(rank, world);
        let mut input_seconds = started.elapsed().as_secs_f64();
        // The next epoch's input is read and decoded while this one trains.
        upcoming = (epoch < options.epochs).then(|| read_ahead(train, job, epoch + 1, &whole));
        let bar = progress_bar(epoch, options.epochs, leader && job.hooks.log.is_none());
        let mut last_line = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0i64, 0u64);
        loop {
            let waited = Instant::now();
            let Some(batch) = batches.next_batch().await? else {
                break;
            };
            input_seconds += waited.elapsed().as_secs_f64();
            let mut n = batch.len;
            let (mut grads, mut loss, mut hits) = (GradientsParams::new(), 0.0, 0);
            if n > 0 {
                let x = Tensor::<B, 4>::from_data(
                    TensorData::new(batch.features, [n, c, h, w]),
                    &device,
                );
                let y = Tensor::<B, 1, Int>::from_data(TensorData::new(batch.labels, [n]), &device);
                (grads, loss, hits) = job.compute(|| {
                    let logits = model.forward_train(x, &mut dropout_rng);
                    let loss = loss_fn.forward(logits.clone(), y.clone());
                    let hits = logits
                        .argmax(1)
                        .flatten::<1>(0, 1)
                        .equal(y)
                        .int()
                        .sum()
                        .into_scalar()
                        .elem::<i64>();
                    let grads = GradientsParams::from_grads(loss.backward(), &model);
                    (grads, loss.into_scalar().elem::<f64>(), hits)
                });
            }
            if let Some(ring) = &ring {
                // Sum n-weighted gradients, loss, hits and examples over the workers, so that
                // the step is the one a single worker takes on the whole batch.
                let mut flat = job.compute(|| flat_gradients(&model, grads, n as f32));
                flat.extend([(loss * n as f64) as f32, hits as f32, n as f32]);
                ring.all_reduce_sum(&mut flat).await?;
                let total = flat.pop().expect("pushed").max(1.0);
                hits = flat.pop().expect("pushed") as i64;
                loss = flat.pop().expect("pushed") as f64 / total as f64;
                n = total as usize;
                grads = job.compute(|| gradients_from_flat(&model, &flat, 1.0 / total));
            }
            model = job.compute(|| optimizer.step(options.learning_rate, model, grads));
            if !loss.is_finite() {
                bail!(
                    MlError::Training,
                    "the loss became {loss} in epoch {epoch}: lower the learning_rate"
                );
            }
            loss_sum += loss * n as f64;
            correct += hits;
            seen += n as u64;
            bar.inc(n as u64);
            if let Some(progress) = &job.hooks.progress {
                progress.store(seen, Ordering::Relaxed);
            }
            let status = format!(
                "loss {:.4} acc {:.3} {:.0} ex/s",
                loss_sum / seen as f64,
                correct as f64 / seen as f64,
                seen as f64 / started.elapsed().as_secs_f64()
            );
            // In logs (no terminal) a line every 10 seconds stands in for the bar.
            if bar.is_hidden() && last_line.elapsed().as_secs() >= 10 {
                job.log(&format!(
                    "epoch {epoch}/{}: {seen} examples, {status}",
                    options.epochs
                ));
                last_line = Instant::now();
            }
            bar.set_message(status);
        }
        bar.finish_and_clear();
        let seconds = started.elapsed().as_secs_f64();
        if seen == 0 {
            return Err(MlError::Input("the training query returned no rows".into()));
        }
        // (loss, accuracy) on the validation query.
        let mut val = match validation {
            Some(frame) if leader => {
                let v = evaluate_model(
                    &model.valid(),
                    frame,
                    &job.input,
                    &job.labels,
                    options.batch_size,
                )
                .await?;
                Some((v.loss, v.accuracy))
            }
            _ => None,
        };
        if let (Some(ring), Some(_)) = (&ring, validation) {
            // Rank 0 validates; every worker needs the same numbers for early stopping.
            let mut shared = val.map_or([0.0; 2], |(l, a)| [l as f32, a as f32]);
            ring.broadcast(&mut shared).await?;
            val = Some((shared[0] as f64, shared[1] as f64));
        }
        let metrics = EpochMetrics {
            epoch,
            loss: loss_sum / seen as f64,
            accuracy: correct as f64 / seen as f64,
            val_loss: val.map(|v| v.0),
            val_accuracy: val.map(|v| v.1),
            examples: seen,
            seconds,
            input_seconds,
            examples_per_second: seen as f64 / seconds,
        };
        if leader {
            job.log(&describe(&metrics, options.epochs));
        }
        log_epoch(&mut events, &metrics);
        let monitored = metrics.val_loss.unwrap_or(metrics.loss);
        if monitored < state.best_loss {
            state.best_loss = monitored;
            state.epochs_without_improvement = 0;
        } else {
            state.epochs_without_improvement += 1;
        }
        state.epoch = epoch;
        state.history.push(metrics);
        // Rank 0 alone writes the run folder; the other workers hold the same model.
        if leader {
            // The checkpoint: weights and optimizer first, state.json (the marker) last.
            let dir = checkpoint_dir(job, epoch);
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
                serde_json::to_vec_pretty(&state)?,
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
            put_bytes(&job.store, &events_path, events.bytes().to_vec()).await?;
            fault::point_async("checkpoint", &format!("{}/epoch-{epoch}", job.run_dir)).await?;
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
    ReadAhead(Some(tokio::spawn(async move {
        if let Some(kept) = whole.get() {
            return Ok(BatchStream::replay(kept, &input, batch_size, seed));
        }
        let mut stream =
            BatchStream::start(&frame, &input, &labels, batch_size, Some((seed, buffer))).await?;
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

/// The gradients of every float parameter of `model` times `scale`, flattened as
/// [`flat_weights`] orders them (zeros for parameters without a gradient).
fn flat_gradients<B: AutodiffBackend>(
    model: &Classifier<B>,
    mut grads: GradientsParams,
    scale: f32,
) -> Vec<f32> {
    struct Collect<'a>(&'a mut GradientsParams, Vec<f32>, f32);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
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
