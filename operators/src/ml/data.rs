//! Training data: a DataFusion query streamed into shuffled batches of float tensors, without
//! collecting the table. Partitions are read in parallel (one task each, converting rows to
//! examples as they arrive) and merged round-robin in a fixed order, so that a seed gives the
//! same batches every time.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Float32Type};
use datafusion::dataframe::DataFrame;
use futures::StreamExt;
use quiver_engine::image::{Image, ImageArray, ImageRef, is_image_type};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use tokio::sync::mpsc;

use super::MlError;
use super::spec::{InputKind, InputSpec, LabelMap, compare_labels};
use crate::image::{Augment, example_rng};
use quiver_engine::{bail, err};

/// One example: its features (u8 pixels, HWC, or floats), class index, and where it was read
/// (partition and row, the key of its augmentation draws).
#[derive(Debug, Clone)]
struct Example {
    features: Features,
    label: usize,
    id: u64,
}

#[derive(Debug, Clone)]
enum Features {
    Pixels(Vec<u8>),
    Floats(Vec<f32>),
}

/// A batch ready for the device: `features` is `[n, channels, height, width]` row-major
/// (channels-first; DNN inputs are `[n, 1, 1, len]`).
#[derive(Debug, Clone)]
pub struct Batch {
    /// Scaled input values.
    pub features: Vec<f32>,
    /// Class index of each example.
    pub labels: Vec<i64>,
    /// Examples in the batch.
    pub len: usize,
}

/// Works out the input spec from the query's schema and first row: the image size, or the
/// tensor length (`input_shape` overrides the shape of tensor inputs, e.g. `[28, 28, 1]`).
pub async fn input_spec(
    frame: &DataFrame,
    column: &str,
    input_shape: Option<Vec<usize>>,
) -> Result<InputSpec, MlError> {
    let field = column_field(frame, column)?;
    let kind = if is_image_type(field.data_type()) {
        InputKind::Image
    } else if matches!(
        field.data_type(),
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _)
    ) {
        InputKind::Tensor
    } else {
        bail!(
            MlError::Input,
            "input column '{column}' is {}: expected a decoded image (image_decode(...)) or a \
             list of numbers",
            field.data_type()
        );
    };
    let first = frame
        .clone()
        .select_columns(&[column])?
        .limit(0, Some(1))?
        .collect()
        .await?;
    let Some(array) = first.iter().find(|b| b.num_rows() > 0).map(|b| b.column(0)) else {
        return Err(MlError::Input("the training query returned no rows".into()));
    };
    let shape = match kind {
        InputKind::Image => {
            let images = ImageArray::try_new(array.as_ref())?;
            let image = images.get(0)?.ok_or_else(|| {
                err!(
                    MlError::Input,
                    "input column '{column}' is NULL in the first row"
                )
            })?;
            vec![
                image.height as usize,
                image.width as usize,
                image.channels as usize,
            ]
        }
        InputKind::Tensor => {
            let floats = float_lists(array, column)?;
            vec![floats.value_length(0) as usize]
        }
    };
    let shape = match (kind, input_shape) {
        (InputKind::Tensor, Some(wanted)) => {
            if wanted.iter().product::<usize>() != shape[0] {
                bail!(
                    MlError::Option,
                    "input_shape {wanted:?} has {} values but column '{column}' holds {}",
                    wanted.iter().product::<usize>(),
                    shape[0]
                );
            }
            wanted
        }
        (InputKind::Image, Some(_)) => {
            return Err(MlError::Option(
                "input_shape applies to tensor inputs; images carry their own size".into(),
            ));
        }
        (_, None) => shape,
    };
    Ok(InputSpec {
        column: column.to_string(),
        kind,
        shape,
        scale: if kind == InputKind::Image {
            1.0 / 255.0
        } else {
            1.0
        },
        normalize: None,
    })
}

/// The sorted distinct labels of the query; NULL labels are an error.
pub async fn label_map(frame: &DataFrame, column: &str) -> Result<LabelMap, MlError> {
    let field = column_field(frame, column)?;
    let integer = field.data_type().is_integer();
    if !integer
        && !matches!(
            field.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(_, _)
        )
    {
        bail!(
            MlError::Input,
            "label column '{column}' is {}: expected strings or integers",
            field.data_type()
        );
    }
    let batches = frame
        .clone()
        .select_columns(&[column])?
        .distinct()?
        .collect()
        .await?;
    let mut labels = Vec::new();
    for batch in &batches {
        let strings = cast(batch.column(0), &DataType::Utf8)?;
        let strings = strings.as_string::<i32>();
        if strings.null_count() > 0 {
            bail!(
                MlError::Input,
                "label column '{column}' has NULL values: filter them out (WHERE {column} IS NOT \
                 NULL) or fill them in"
            );
        }
        labels.extend(strings.iter().flatten().map(str::to_string));
    }
    labels.sort_by(|a, b| compare_labels(a, b, integer));
    if labels.len() < 2 {
        bail!(
            MlError::Input,
            "label column '{column}' has {} distinct value(s): a classifier needs at least 2",
            labels.len()
        );
    }
    Ok(LabelMap {
        column: column.to_string(),
        integer,
        labels,
    })
}

fn column_field(frame: &DataFrame, column: &str) -> Result<Arc<Field>, MlError> {
    frame
        .schema()
        .inner()
        .field_with_name(column)
        .map(|f| Arc::new(f.clone()))
        .map_err(|_| {
            let names: Vec<_> = frame
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect();
            err!(
                MlError::Input,
                "column '{column}' is not in the query (its columns: {})",
                names.join(", ")
            )
        })
}

/// A list column as `List<Float32>`.
fn float_lists(
    array: &ArrayRef,
    column: &str,
) -> Result<datafusion::arrow::array::ListArray, MlError> {
    let target = DataType::List(Arc::new(Field::new_list_field(DataType::Float32, true)));
    let cast = cast(array, &target).map_err(|e| {
        err!(
            MlError::Input,
            "input column '{column}' ({}) cannot be read as floats: {e}",
            array.data_type()
        )
    })?;
    Ok(cast.as_list::<i32>().clone())
}

/// Reads an input column's rows as features, checking each against the spec.
fn input_features(
    input: &ArrayRef,
    spec: &InputSpec,
    first_row: u64,
) -> Result<Vec<Features>, MlError> {
    let row_error =
        |i: usize, what: String| err!(MlError::Input, "row {}: {what}", first_row + i as u64);
    let null = |i: usize| row_error(i, format!("input column '{}' is NULL", spec.column));
    let mut out = Vec::with_capacity(input.len());
    match spec.kind {
        InputKind::Image => {
            let images = ImageArray::try_new(input.as_ref())?;
            for i in 0..images.len() {
                let image = images.get(i)?.ok_or_else(|| null(i))?;
                let shape = [
                    image.height as usize,
                    image.width as usize,
                    image.channels as usize,
                ];
                if shape[..] != spec.shape[..] {
                    return Err(row_error(
                        i,
                        format!(
                            "image is {}x{}x{} but the model takes {}x{}x{} (height x width x \
                             channels): resize all images to one size with image_resize, and \
                             use image_to_grayscale for mixed channels",
                            shape[0],
                            shape[1],
                            shape[2],
                            spec.shape[0],
                            spec.shape[1],
                            spec.shape[2]
                        ),
                    ));
                }
                out.push(Features::Pixels(image.data.to_vec()));
            }
        }
        InputKind::Tensor => {
            let lists = float_lists(input, &spec.column)?;
            let want = spec.len();
            for i in 0..lists.len() {
                if lists.is_null(i) {
                    return Err(null(i));
                }
                let values = lists.value(i);
                let values = values.as_primitive::<Float32Type>();
                if values.len() != want {
                    return Err(row_error(
                        i,
                        format!(
                            "input has {} values but the model takes {want}",
                            values.len()
                        ),
                    ));
                }
                out.push(Features::Floats(values.values().to_vec()));
            }
        }
    }
    Ok(out)
}

/// Converts one record batch of partition `partition` into examples.
fn to_examples(
    batch: &RecordBatch,
    spec: &InputSpec,
    labels: &LabelLookup,
    (partition, first_row): (usize, u64),
) -> Result<Vec<Example>, MlError> {
    let input = batch
        .column_by_name(&spec.column)
        .ok_or_else(|| err!(MlError::Input, "input column '{}' is missing", spec.column))?;
    let label_column = batch.column_by_name(&labels.column).ok_or_else(|| {
        err!(
            MlError::Input,
            "label column '{}' is missing",
            labels.column
        )
    })?;
    let label_strings = cast(label_column, &DataType::Utf8)?;
    let label_strings = label_strings.as_string::<i32>();
    input_features(input, spec, first_row)?
        .into_iter()
        .enumerate()
        .map(|(i, features)| {
            let row = first_row + i as u64;
            if label_strings.is_null(i) {
                bail!(
                    MlError::Input,
                    "row {row}: label column '{}' is NULL",
                    labels.column
                );
            }
            let value = label_strings.value(i);
            let label = labels.index.get(value).copied().ok_or_else(|| {
                err!(
                    MlError::Input,
                    "row {row}: label '{value}' is not in the model's label map"
                )
            })?;
            Ok(Example {
                features,
                label,
                id: ((partition as u64) << 40) | row,
            })
        })
        .collect()
}

/// An input column as model-ready values (`[rows, channels, height, width]`), for `predict`.
pub fn input_values(input: &ArrayRef, spec: &InputSpec) -> Result<Vec<f32>, MlError> {
    let features = input_features(input, spec, 0)?;
    let mut out = Vec::with_capacity(features.len() * spec.len());
    for f in &features {
        push_chw(&mut out, f, spec);
    }
    Ok(out)
}

/// Label → class index, for the data pipeline.
#[derive(Debug, Clone)]
struct LabelLookup {
    column: String,
    index: HashMap<String, usize>,
}

impl From<&LabelMap> for LabelLookup {
    fn from(map: &LabelMap) -> Self {
        Self {
            column: map.column.clone(),
            index: map
                .labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), i))
                .collect(),
        }
    }
}

/// Examples of one partition, a record batch at a time, from its reader task.
type PartitionReceiver = mpsc::Receiver<Result<Vec<Example>, MlError>>;

/// A whole training input in read order, kept after an epoch whose input fit in its shuffle
/// buffer, so that later epochs shuffle it again instead of reading and decoding it again
/// (as `tf.data`'s `cache()`).
#[derive(Clone)]
pub struct WholeInput(Arc<Vec<Example>>);

/// Streams shuffled batches of one epoch.
pub struct BatchStream {
    /// Each partition's channel and the examples received from it but not yet taken.
    partitions: Vec<(PartitionReceiver, std::collections::VecDeque<Example>)>,
    next_partition: usize,
    buffer: Vec<Example>,
    buffer_size: usize,
    rng: Option<StdRng>,
    spec: InputSpec,
    batch_size: usize,
    drained: bool,
    /// This worker's rank and the number of workers sharing each batch.
    shard: (usize, usize),
    /// The augmentation of this epoch's images and the run's seed and epoch number.
    augment: Option<(Arc<Augment>, u64, u64)>,
}

impl BatchStream {
    /// Starts reading `frame` (all partitions in parallel). With a seed, examples pass through
    /// a shuffle buffer of `buffer_size`; without, they keep the query's order.
    pub async fn start(
        frame: &DataFrame,
        spec: &InputSpec,
        labels: &LabelMap,
        batch_size: usize,
        shuffle: Option<(u64, usize)>,
    ) -> Result<Self, MlError> {
        let streams = frame.clone().execute_stream_partitioned().await?;
        let lookup = Arc::new(LabelLookup::from(labels));
        let mut partitions = Vec::with_capacity(streams.len());
        for (partition, mut stream) in streams.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel(2);
            let spec = spec.clone();
            let lookup = Arc::clone(&lookup);
            tokio::spawn(async move {
                let mut row = 0u64;
                while let Some(batch) = stream.next().await {
                    let examples = batch
                        .map_err(MlError::from)
                        .and_then(|b| to_examples(&b, &spec, &lookup, (partition, row)));
                    let failed = examples.is_err();
                    if let Ok(e) = &examples {
                        row += e.len() as u64;
                    }
                    if tx.send(examples).await.is_err() || failed {
                        break;
                    }
                }
            });
            partitions.push((rx, Default::default()));
        }
        let (rng, buffer_size) = match shuffle {
            Some((seed, size)) => (Some(StdRng::seed_from_u64(seed)), size.max(1)),
            None => (None, 0),
        };
        Ok(Self {
            partitions,
            next_partition: 0,
            buffer: Vec::new(),
            buffer_size,
            rng,
            spec: spec.clone(),
            batch_size: batch_size.max(1),
            drained: false,
            shard: (0, 1),
            augment: None,
        })
    }

    /// A stream over `input`, shuffled with `seed`: the same batches as reading the input
    /// again with that seed, since a fresh read buffers it whole, in the same order.
    pub fn replay(input: &WholeInput, spec: &InputSpec, batch_size: usize, seed: u64) -> Self {
        let buffer = input.0.as_ref().clone();
        Self {
            partitions: Vec::new(),
            next_partition: 0,
            buffer_size: buffer.len().max(1),
            buffer,
            rng: Some(StdRng::seed_from_u64(seed)),
            spec: spec.clone(),
            batch_size: batch_size.max(1),
            drained: true,
            shard: (0, 1),
            augment: None,
        }
    }

    /// After [`fill`](Self::fill): the whole input, where it ended inside the shuffle buffer.
    pub fn whole_input(&self) -> Option<WholeInput> {
        (self.rng.is_some() && self.drained).then(|| WholeInput(Arc::new(self.buffer.clone())))
    }

    /// Keeps worker `rank`'s share of every batch when `world` workers read the same stream:
    /// the batch's examples `rank`, `rank + world`, ... A batch may then be empty (the last
    /// batch of the epoch can be shorter than the number of workers).
    pub fn shard(mut self, rank: usize, world: usize) -> Self {
        self.shard = (rank, world.max(1));
        self
    }

    /// Augments each image of epoch `epoch` of a run seeded with `seed`, with draws keyed by
    /// the example, so that they do not depend on the order or the worker.
    pub fn augment(mut self, augment: Option<Arc<Augment>>, seed: u64, epoch: u64) -> Self {
        self.augment = augment.map(|a| (a, seed, epoch));
        self
    }

    /// The next example in order from the partitions, or `None` at the end: round-robin over
    /// the partitions one example at a time, so that the order does not depend on how a
    /// partition's rows happen to be cut into record batches (which can vary with timing).
    async fn next_ordered(&mut self) -> Result<Option<Example>, MlError> {
        loop {
            if self.partitions.is_empty() {
                return Ok(None);
            }
            let i = self.next_partition % self.partitions.len();
            let (rx, pending) = &mut self.partitions[i];
            if let Some(example) = pending.pop_front() {
                self.next_partition = i + 1;
                return Ok(Some(example));
            }
            match rx.recv().await {
                Some(examples) => pending.extend(examples?),
                None => {
                    self.partitions.remove(i);
                    self.next_partition = i;
                }
            }
        }
    }

    /// Reads until the shuffle buffer is full or the data ends (without shuffling, nothing):
    /// an epoch prepared in the background then starts without waiting for its input.
    pub async fn fill(&mut self) -> Result<(), MlError> {
        while self.rng.is_some() && !self.drained && self.buffer.len() < self.buffer_size {
            match self.next_ordered().await? {
                Some(example) => self.buffer.push(example),
                None => self.drained = true,
            }
        }
        Ok(())
    }

    /// The next example after the shuffle buffer.
    async fn next_example(&mut self) -> Result<Option<Example>, MlError> {
        if self.rng.is_none() {
            return self.next_ordered().await;
        }
        self.fill().await?;
        if self.buffer.is_empty() {
            return Ok(None);
        }
        let rng = self.rng.as_mut().expect("shuffling");
        let j = rng.random_range(0..self.buffer.len());
        Ok(Some(self.buffer.swap_remove(j)))
    }

    /// The next batch (the last one may be smaller), or `None` at the end of the epoch.
    pub async fn next_batch(&mut self) -> Result<Option<Batch>, MlError> {
        let (rank, world) = self.shard;
        let mut kept = Vec::with_capacity(self.batch_size / world);
        let mut taken = 0;
        while taken < self.batch_size {
            let Some(example) = self.next_example().await? else {
                break;
            };
            if taken % world == rank {
                kept.push(example);
            }
            taken += 1;
        }
        if taken == 0 {
            return Ok(None);
        }
        let spec = &self.spec;
        let features = match &self.augment {
            Some((augment, seed, epoch)) => kept
                .par_iter()
                .map(|e| {
                    let mut values = Vec::with_capacity(spec.len());
                    match image_of(e, spec) {
                        Some(image) => {
                            let mut rng = example_rng(*seed, *epoch, e.id);
                            let image = augment.apply(image, &mut rng);
                            push_model_values(&mut values, &image.data, spec);
                        }
                        None => push_chw(&mut values, &e.features, spec),
                    }
                    values
                })
                .collect::<Vec<_>>()
                .concat(),
            None => {
                let mut values = Vec::with_capacity(kept.len() * spec.len());
                for e in &kept {
                    push_chw(&mut values, &e.features, spec);
                }
                values
            }
        };
        Ok(Some(Batch {
            len: kept.len(),
            features,
            labels: kept.iter().map(|e| e.label as i64).collect(),
        }))
    }
}

/// An image example's pixels; `None` for tensors.
fn image_of<'a>(example: &'a Example, spec: &InputSpec) -> Option<ImageRef<'a>> {
    let (Features::Pixels(data), Some([c, h, w])) = (&example.features, spec.chw()) else {
        return None;
    };
    Some(ImageRef {
        width: w as u32,
        height: h as u32,
        channels: c as u8,
        data,
    })
}

/// Appends one example's values, scaled and reordered from HWC to CHW.
fn push_chw(out: &mut Vec<f32>, features: &Features, spec: &InputSpec) {
    match features {
        Features::Pixels(px) => push_model_values(out, px, spec),
        Features::Floats(v) => push_model_values(out, v, spec),
    }
}

/// Appends one example given in the input's own layout and units (HWC pixel values for image
/// models, the tensor's values otherwise) as model-ready values: scaled by the model's
/// normalisation and reordered to CHW. `hwc` must hold `spec.len()` values.
pub fn push_model_values<T: Copy + Into<f32>>(out: &mut Vec<f32>, hwc: &[T], spec: &InputSpec) {
    let scale = spec.scale;
    match spec.chw() {
        Some([c, h, w]) if c > 1 => {
            for ch in 0..c {
                let (mean, std) = channel_normalization(spec, ch);
                let pixels = (0..h * w).map(|i| hwc[i * c + ch].into() * scale);
                out.extend(pixels.map(|v| (v - mean) / std));
            }
        }
        _ => out.extend(hwc.iter().map(|&x| x.into() * scale)),
    }
}

/// The first `n` examples of an image batch back as images (the inverse of
/// [`push_model_values`]): what the model sees, after augmentation.
pub fn batch_images(batch: &Batch, spec: &InputSpec, n: usize) -> Vec<Image> {
    let Some([c, h, w]) = spec.chw() else {
        return Vec::new();
    };
    let plane = h * w;
    batch
        .features
        .chunks_exact(c * plane)
        .take(n.min(batch.len))
        .map(|chw| {
            let mut data = vec![0u8; c * plane];
            for (i, v) in chw.iter().enumerate() {
                let (mean, std) = channel_normalization(spec, i / plane);
                let pixel = ((v * std + mean) / spec.scale).round().clamp(0.0, 255.0) as u8;
                data[(i % plane) * c + i / plane] = pixel;
            }
            Image {
                width: w as u32,
                height: h as u32,
                channels: c as u8,
                data,
            }
        })
        .collect()
}

/// The mean and deviation of channel `ch` of a multi-channel input (0 and 1: none).
fn channel_normalization(spec: &InputSpec, ch: usize) -> (f32, f32) {
    match &spec.normalize {
        Some(n) if ch < 3 => (n.mean[ch], n.std[ch]),
        _ => (0.0, 1.0),
    }
}

/// The `[channels, height, width]` a batch example is laid out as.
pub fn batch_dims(spec: &InputSpec) -> [usize; 3] {
    spec.chw().unwrap_or([1, 1, spec.len()])
}
