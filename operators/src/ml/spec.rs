//! What a model is, as stored in `model.json`: architecture, input spec, label map and training
//! options. Plain serde types, independent of the backend.

use serde::{Deserialize, Serialize};

use super::MlError;
use quiver_engine::err;

/// The classifier's architecture and its hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Architecture {
    /// Fully connected layers over the flattened input, as TensorFlow's `DNNClassifier`.
    DnnClassifier {
        /// Units of each hidden layer, e.g. `[512, 256, 128]`.
        hidden_units: Vec<usize>,
        /// Activation after each hidden layer.
        activation: Activation,
        /// Dropout rate after each hidden layer.
        dropout: f64,
    },
    /// Convolution blocks (3x3 convolution, activation, 2x2 max pooling) and a dense head.
    CnnClassifier {
        /// Filters of each convolution block, e.g. `[32, 64]`.
        conv_filters: Vec<usize>,
        /// Side of the square convolution kernels.
        kernel_size: usize,
        /// Units of the dense layers after the convolutions.
        dense_units: Vec<usize>,
        /// Activation after each convolution and dense layer.
        activation: Activation,
        /// Dropout rate after the convolutions and after each dense layer.
        dropout: f64,
    },
}

impl Architecture {
    /// The name used in `model_type`.
    pub fn model_type(&self) -> &'static str {
        match self {
            Self::DnnClassifier { .. } => "dnn_classifier",
            Self::CnnClassifier { .. } => "cnn_classifier",
        }
    }
}

/// Activation functions of hidden layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// max(0, x).
    Relu,
    /// Hyperbolic tangent.
    Tanh,
    /// Logistic sigmoid.
    Sigmoid,
    /// Gaussian error linear unit.
    Gelu,
}

impl Activation {
    /// The names [`Self::parse`] reads.
    pub const NAMES: &[&str] = &["relu", "tanh", "sigmoid", "gelu"];

    /// Parses `relu`, `tanh`, `sigmoid` or `gelu`.
    pub fn parse(name: &str) -> Result<Self, MlError> {
        match name.to_ascii_lowercase().as_str() {
            "relu" => Ok(Self::Relu),
            "tanh" => Ok(Self::Tanh),
            "sigmoid" => Ok(Self::Sigmoid),
            "gelu" => Ok(Self::Gelu),
            other => Err(err!(
                MlError::Option,
                "activation '{other}' is not one of relu, tanh, sigmoid, gelu"
            )),
        }
    }
}

/// What the model reads: one column, and how it becomes a float tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// The input column's name in the training query.
    pub column: String,
    /// `image` (the decoded image struct, HWC u8) or `tensor` (a list of floats).
    pub kind: InputKind,
    /// Height, width and channels for images; `[length]` or `[height, width, channels]` for
    /// tensors.
    pub shape: Vec<usize>,
    /// Each value is multiplied by this before it enters the model (1/255 for images).
    pub scale: f32,
}

impl InputSpec {
    /// Number of floats per example.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether an example has no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(channels, height, width)` for convolutions, from an HWC shape.
    pub fn chw(&self) -> Option<[usize; 3]> {
        match self.shape[..] {
            [h, w, c] => Some([c, h, w]),
            _ => None,
        }
    }
}

/// The kinds of input columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// The decoded image struct of `image_decode`.
    Image,
    /// `List<Float32>` or `FixedSizeList<Float32>` (other numeric lists are cast).
    Tensor,
}

/// Class index ↔ label value, sorted; stored with the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelMap {
    /// The label column's name in the training query.
    pub column: String,
    /// Whether labels are integers (`predict` returns them as strings either way).
    pub integer: bool,
    /// Label of each class index.
    pub labels: Vec<String>,
}

impl LabelMap {
    /// The class index of a label value.
    pub fn index(&self, label: &str) -> Option<usize> {
        self.labels
            .binary_search_by(|l| compare_labels(l, label, self.integer))
            .ok()
    }
}

/// Orders labels: numerically for integer labels, as strings otherwise.
pub fn compare_labels(a: &str, b: &str, integer: bool) -> std::cmp::Ordering {
    if integer {
        match (a.parse::<i64>(), b.parse::<i64>()) {
            (Ok(x), Ok(y)) => return x.cmp(&y),
            _ => return a.cmp(b),
        }
    }
    a.cmp(b)
}

/// The optimizers training can use.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum OptimizerSpec {
    /// Adam with β1 = 0.9, β2 = 0.999, ε = 1e-7 (Keras' defaults).
    Adam,
    /// Stochastic gradient descent with (heavy-ball) momentum.
    Sgd {
        /// Momentum factor; 0 disables it.
        momentum: f64,
    },
}

/// Options of one training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Passes over the training data.
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Step size.
    pub learning_rate: f64,
    /// Adam or SGD.
    pub optimizer: OptimizerSpec,
    /// Seed of weight initialisation, shuffling and dropout.
    pub seed: u64,
    /// Stop when the monitored loss has not improved for this many epochs (0 = never).
    pub early_stopping_patience: usize,
    /// Examples held in the shuffle buffer (across partitions); capped to ~256 MiB of
    /// examples before training, so the default shuffles any dataset that fits in that.
    pub shuffle_buffer: usize,
    /// `cpu` or `cuda[:N]`.
    pub device: String,
    /// Executors training the model together, each on its share of every batch.
    #[serde(default = "one_worker")]
    pub workers: usize,
}

fn one_worker() -> usize {
    1
}
