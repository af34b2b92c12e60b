//! The classifiers as Burn modules: one module type for DNNs and CNNs, built from an
//! [`Architecture`] and an [`InputSpec`].

use burn::module::Module;
use burn::nn::activation::{Activation as ActivationLayer, ActivationConfig};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

use super::conv::ConvBackend;

use super::MlError;
use super::spec::{Activation, Architecture, InputSpec};

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

impl<B: Backend> Classifier<B> {
    /// Builds a freshly initialised classifier (weights from the backend's seeded RNG).
    pub fn new(
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
                    MlError::Option(format!(
                        "cnn_classifier needs an image or a [height, width, channels] tensor \
                         input; column '{}' has shape {:?} (set input_shape)",
                        input.column, input.shape
                    ))
                })?;
                let mut convs = Vec::with_capacity(conv_filters.len());
                for &filters in conv_filters {
                    if h < 2 || w < 2 {
                        return Err(MlError::Option(format!(
                            "{} convolution blocks pool a {:?} input down to nothing: use fewer \
                             conv_filters or a larger image",
                            conv_filters.len(),
                            input.shape
                        )));
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
            return Err(MlError::Option(format!(
                "a classifier needs a non-empty input and at least 2 classes (got {flat} \
                 inputs, {classes} classes)"
            )));
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

impl<B: ConvBackend> Classifier<B> {
    /// Logits `[batch, classes]` for a batch `[batch, channels, height, width]` (DNNs flatten
    /// it).
    pub fn forward(&self, input: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = input;
        for conv in &self.convs {
            let bias = conv
                .bias
                .as_ref()
                .expect("conv layers are built with a bias");
            let y = B::conv2d_same(
                x.into_primitive().tensor(),
                conv.weight.val().into_primitive().tensor(),
                bias.val().into_primitive().tensor(),
            );
            x = Tensor::from_primitive(TensorPrimitive::Float(y));
            x = self.pool.forward(self.activation.forward(x));
        }
        let mut x: Tensor<B, 2> = x.flatten(1, 3);
        if !self.convs.is_empty() {
            x = self.dropout.forward(x);
        }
        for layer in &self.dense {
            x = self
                .dropout
                .forward(self.activation.forward(layer.forward(x)));
        }
        self.output.forward(x)
    }
}
