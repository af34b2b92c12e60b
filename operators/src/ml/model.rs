//! The classifiers as Burn modules: one module type for DNNs and CNNs, built from an
//! [`Architecture`] and an [`InputSpec`].

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::activation::{Activation as ActivationLayer, ActivationConfig};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use std::sync::Mutex;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use rand::Rng;
use rand::rngs::StdRng;

use super::conv::ConvBackend;

use super::MlError;
use super::spec::{Activation, Architecture, InputSpec};
use quiver_engine::{bail, err};

/// A DNN or CNN classifier producing one logit per class.
#[derive(Module, Debug)]
pub struct Classifier<B: Backend> {
    convs: Vec<Conv2d<B>>,
    pool: MaxPool2d,
    dense: Vec<Linear<B>>,
    output: Linear<B>,
    dropout: Dropout,
    activation: ActivationLayer<B>,
}

/// Burn's backends draw initial weights from one process-wide RNG: seeding it and building a
/// model happen under this lock, so that models built concurrently (parallel trials) each get
/// the weights of their own seed.
static BACKEND_RNG: Mutex<()> = Mutex::new(());

impl<B: Backend> Classifier<B> {
    /// Builds a classifier with weights initialised from `seed`.
    pub fn new(
        architecture: &Architecture,
        input: &InputSpec,
        classes: usize,
        device: &B::Device,
        seed: u64,
    ) -> Result<Self, MlError> {
        let _rng = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
        B::seed(device, seed);
        let model = Self::build(architecture, input, classes, device)?;
        // Burn initialises parameters lazily, on first use: draw them now, under the lock.
        model.visit(&mut Materialise);
        Ok(model)
    }

    fn build(
        architecture: &Architecture,
        input: &InputSpec,
        classes: usize,
        device: &B::Device,
    ) -> Result<Self, MlError> {
        let (convs, flat, dense_units, activation, dropout) = match architecture {
            Architecture::DnnClassifier {
                hidden_units,
                activation,
                dropout,
            } => (Vec::new(), input.len(), hidden_units, activation, dropout),
            Architecture::CnnClassifier {
                conv_filters,
                kernel_size,
                dense_units,
                activation,
                dropout,
            } => {
                let [mut channels, mut h, mut w] = input.chw().ok_or_else(|| {
                    err!(
                        MlError::Option,
                        "cnn_classifier needs an image or a [height, width, channels] tensor \
                         input; column '{}' has shape {:?} (set input_shape)",
                        input.column,
                        input.shape
                    )
                })?;
                let mut convs = Vec::with_capacity(conv_filters.len());
                for &filters in conv_filters {
                    if h < 2 || w < 2 {
                        bail!(
                            MlError::Option,
                            "{} convolution blocks pool a {:?} input down to nothing: use fewer \
                             conv_filters or a larger image",
                            conv_filters.len(),
                            input.shape
                        );
                    }
                    convs.push(
                        Conv2dConfig::new([channels, filters], [*kernel_size, *kernel_size])
                            .with_padding(PaddingConfig2d::Same)
                            .init(device),
                    );
                    channels = filters;
                    h /= 2;
                    w /= 2;
                }
                (convs, channels * h * w, dense_units, activation, dropout)
            }
        };
        if flat == 0 || classes < 2 {
            bail!(
                MlError::Option,
                "a classifier needs a non-empty input and at least 2 classes (got {flat} \
                 inputs, {classes} classes)"
            );
        }
        let mut dense = Vec::with_capacity(dense_units.len());
        let mut width = flat;
        for &units in dense_units {
            dense.push(LinearConfig::new(width, units).init(device));
            width = units;
        }
        let activation = match activation {
            Activation::Relu => ActivationConfig::Relu,
            Activation::Tanh => ActivationConfig::Tanh,
            Activation::Sigmoid => ActivationConfig::Sigmoid,
            Activation::Gelu => ActivationConfig::Gelu,
        };
        Ok(Self {
            convs,
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            dense,
            output: LinearConfig::new(width, classes).init(device),
            dropout: DropoutConfig::new(*dropout).init(),
            activation: activation.init(device),
        })
    }
}

/// Initialises every lazily initialised parameter it visits.
struct Materialise;

impl<B: Backend> ModuleVisitor<B> for Materialise {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        param.val();
    }
}

impl<B: ConvBackend> Classifier<B> {
    /// Logits `[batch, classes]` for a batch `[batch, channels, height, width]` (DNNs flatten
    /// it), without dropout.
    pub fn forward(&self, input: Tensor<B, 4>) -> Tensor<B, 2> {
        self.forward_with(input, |x| x)
    }

    /// Logits with dropout, its masks drawn from `rng` (the run's own generator, so that
    /// concurrent runs stay reproducible).
    pub fn forward_train(&self, input: Tensor<B, 4>, rng: &mut StdRng) -> Tensor<B, 2> {
        let p = self.dropout.prob;
        if p <= 0.0 {
            return self.forward(input);
        }
        let scale = (1.0 / (1.0 - p)) as f32;
        // Dropped where a uniform u32 falls below p (one 32-bit draw per value).
        let threshold = (p * 4_294_967_296.0).min(u32::MAX as f64) as u32;
        self.forward_with(input, |x| {
            let dims = x.dims();
            let mask: Vec<f32> = (0..dims[0] * dims[1])
                .map(|_| {
                    if rng.random::<u32>() < threshold {
                        0.0
                    } else {
                        scale
                    }
                })
                .collect();
            let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, dims), &x.device());
            x * mask
        })
    }

    fn forward_with(
        &self,
        input: Tensor<B, 4>,
        mut dropout: impl FnMut(Tensor<B, 2>) -> Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let mut x = input;
        for conv in &self.convs {
            let bias = conv
                .bias
                .as_ref()
                .expect("conv layers are built with a bias");
            let (input, weight, bias) = (
                x.into_primitive().tensor(),
                conv.weight.val().into_primitive().tensor(),
                bias.val().into_primitive().tensor(),
            );
            x = if matches!(self.activation, ActivationLayer::Relu(_)) {
                // One fused op: the block's largest tensors never exist on their own.
                Tensor::from_primitive(TensorPrimitive::Float(B::conv_relu_pool(
                    input, weight, bias,
                )))
            } else {
                let y = Tensor::from_primitive(TensorPrimitive::Float(B::conv2d_same(
                    input, weight, bias,
                )));
                self.pool.forward(self.activation.forward(y))
            };
        }
        let mut x: Tensor<B, 2> = x.flatten(1, 3);
        if !self.convs.is_empty() {
            x = dropout(x);
        }
        for layer in &self.dense {
            x = dropout(self.activation.forward(layer.forward(x)));
        }
        self.output.forward(x)
    }
}
