//! What a model is, as stored in `model.json`: architecture, input spec, label map and training
//! options. Plain serde types, independent of the backend.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::MlError;
use super::schedule::LrSchedule;
use crate::image::Augment;
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
    /// A residual network with batch normalisation, as torchvision's `resnet18`, `resnet34`
    /// and `resnet50`.
    ResnetClassifier {
        /// 18, 34 (basic blocks) or 50 (bottlenecks).
        depth: usize,
    },
}

impl Architecture {
    /// The name used in `model_type`.
    pub fn model_type(&self) -> &'static str {
        match self {
            Self::DnnClassifier { .. } => "dnn_classifier",
            Self::CnnClassifier { .. } => "cnn_classifier",
            Self::ResnetClassifier { .. } => "resnet_classifier",
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
    /// Then, for 3-channel images, each channel's mean is subtracted and the result divided
    /// by its deviation (`input_normalization`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<Normalization>,
}

/// Per-channel mean and standard deviation of scaled inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Subtracted from each channel.
    pub mean: [f32; 3],
    /// Each channel is then divided by this.
    pub std: [f32; 3],
}

impl Normalization {
    /// torchvision's ImageNet statistics, which its pretrained weights expect.
    pub const IMAGENET: Self = Self {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
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
    /// Adam with β1 = 0.9, β2 = 0.999 (Keras' defaults).
    Adam {
        /// Added to the root of the second moment (Keras: 1e-7).
        #[serde(default = "keras_epsilon")]
        epsilon: f64,
        /// L2 penalty: this times the weights is added to their gradients (PyTorch's Adam).
        #[serde(default)]
        weight_decay: f64,
    },
    /// Adam with decoupled weight decay: each step first shrinks the weights by
    /// `learning rate * weight_decay` (PyTorch's and Keras's AdamW).
    #[serde(rename = "adamw")]
    AdamW {
        /// Added to the root of the second moment.
        epsilon: f64,
        /// The decoupled decay.
        weight_decay: f64,
    },
    /// Stochastic gradient descent with momentum, as PyTorch's SGD (no dampening).
    Sgd {
        /// Momentum factor; 0 disables it.
        momentum: f64,
        /// Nesterov momentum: the step looks ahead along the velocity.
        #[serde(default)]
        nesterov: bool,
        /// L2 penalty: this times the weights is added to their gradients.
        #[serde(default)]
        weight_decay: f64,
    },
}

fn keras_epsilon() -> f64 {
    1e-7
}

/// How a layer's initial weights are drawn (its biases start at zero), named as in Keras.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Initializer {
    /// Uniform in ±sqrt(6 / (fan_in + fan_out)), Keras's default.
    #[default]
    GlorotUniform,
    /// Normal with standard deviation sqrt(2 / fan_in), truncated at two deviations.
    HeNormal,
    /// Uniform in ±sqrt(6 / fan_in).
    HeUniform,
}

impl Initializer {
    /// The names [`Self::parse`] reads.
    pub const NAMES: &[&str] = &["glorot_uniform", "he_normal", "he_uniform"];

    /// Parses `glorot_uniform`, `he_normal` or `he_uniform`.
    pub fn parse(name: &str) -> Result<Self, MlError> {
        match name.to_ascii_lowercase().as_str() {
            "glorot_uniform" => Ok(Self::GlorotUniform),
            "he_normal" => Ok(Self::HeNormal),
            "he_uniform" => Ok(Self::HeUniform),
            other => Err(err!(
                MlError::Option,
                "initializer '{other}' is not one of {}",
                Self::NAMES.join(", ")
            )),
        }
    }

    /// `n` initial weights of a layer whose weights each have `fan_in` inputs and `fan_out`
    /// outputs (a convolution's count its kernel's positions), drawn from `rng`.
    pub fn draw(self, n: usize, fan_in: usize, fan_out: usize, rng: &mut impl Rng) -> Vec<f32> {
        let limit = match self {
            Self::GlorotUniform => (6.0 / (fan_in + fan_out) as f64).sqrt(),
            Self::HeUniform => (6.0 / fan_in as f64).sqrt(),
            Self::HeNormal => 0.0,
        };
        match self {
            Self::GlorotUniform | Self::HeUniform => (0..n)
                .map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * limit) as f32)
                .collect(),
            Self::HeNormal => {
                // Keras widens the deviation so that the truncated draws have the wanted one.
                let std = (2.0 / fan_in as f64).sqrt() / 0.879_625_661_034_239_8;
                (0..n)
                    .map(|_| {
                        loop {
                            // Box-Muller; draws beyond two deviations are drawn again.
                            let (u, v) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
                            let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
                            if z.abs() <= 2.0 {
                                break (z * std) as f32;
                            }
                        }
                    })
                    .collect()
            }
        }
    }
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
    /// How the initial weights were drawn.
    #[serde(default)]
    pub initializer: Initializer,
    /// The safetensors file training started from, if not from drawn weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
    /// Module names whose tensors are not trained (`backbone`: all but the head) before
    /// `unfreeze_at_epoch`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeze: Vec<String>,
    /// The epoch from which frozen tensors train too (0: never).
    #[serde(default)]
    pub unfreeze_at_epoch: usize,
    /// The registered model training started from, `name:version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_start: Option<String>,
    /// How training images are augmented, drawn anew each epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<Augment>,
    /// How the learning rate moves over the run.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Epochs (or a fraction of one) over which the rate rises linearly from zero.
    #[serde(default)]
    pub warmup_epochs: f64,
    /// Share of each target's probability spread evenly over all classes.
    #[serde(default)]
    pub label_smoothing: f64,
    /// Gradients whose global L2 norm is above this are scaled down to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradient_clip_norm: Option<f64>,
}

fn one_worker() -> usize {
    1
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Each scheme has Keras's variance (2 / (fan_in + fan_out) for Glorot, 2 / fan_in for
    /// He), zero mean, and He-normal's draws stay within two of Keras's widened deviations.
    #[test]
    fn initializers_draw_with_keras_s_variance() {
        let (fan_in, fan_out, n) = (300, 100, 200_000);
        for (init, variance) in [
            (Initializer::GlorotUniform, 2.0 / 400.0),
            (Initializer::HeUniform, 2.0 / 300.0),
            (Initializer::HeNormal, 2.0 / 300.0),
        ] {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let w = init.draw(n, fan_in, fan_out, &mut rng);
            let mean = w.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
            let var = w.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
            assert!(mean.abs() < 0.001, "{init:?}: mean {mean}");
            assert!(
                (var / variance - 1.0).abs() < 0.02,
                "{init:?}: variance {var}"
            );
            let bound = match init {
                Initializer::GlorotUniform => (6.0f64 / 400.0).sqrt(),
                Initializer::HeUniform => (6.0f64 / 300.0).sqrt(),
                Initializer::HeNormal => 2.0 * (2.0f64 / 300.0).sqrt() / 0.879_625_661_034_239_8,
            };
            assert!(
                w.iter().all(|&x| (x as f64).abs() <= bound + 1e-6),
                "{init:?}"
            );
        }
        let a = Initializer::GlorotUniform.draw(5, 3, 3, &mut rand::rngs::StdRng::seed_from_u64(1));
        let b = Initializer::GlorotUniform.draw(5, 3, 3, &mut rand::rngs::StdRng::seed_from_u64(1));
        assert_eq!(a, b, "the same seed draws the same weights");
    }
}
