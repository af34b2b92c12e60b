//! The classifiers as Burn modules: a DNN or CNN ([`Layers`]) or a [`ResNet`], built from an
//! [`Architecture`] and an [`InputSpec`].

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::nn::activation::{Activation as ActivationLayer, ActivationConfig};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn_store::ModuleSnapshot;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::{HashMap, HashSet};

use super::conv::ConvBackend;
use super::resnet::{Mode, ResNet, Running};

use super::MlError;
use super::spec::{Activation, Architecture, Initializer, InputSpec};
use quiver_engine::{bail, err};

/// A classifier producing one logit per class. Its weights are saved without the variant's
/// name, so that a ResNet's carry torchvision's names.
// Moved once per training step, next to a step's megabytes of tensors.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Classifier<B: Backend> {
    /// A DNN or CNN.
    Layers(Layers<B>),
    /// A residual network with batch normalisation.
    ResNet(ResNet<B>),
}

/// A DNN or CNN: convolution blocks, then dense layers.
#[derive(Module, Debug)]
pub struct Layers<B: Backend> {
    convs: Vec<Conv2d<B>>,
    pool: MaxPool2d,
    dense: Vec<Linear<B>>,
    output: Linear<B>,
    dropout: Dropout,
    activation: ActivationLayer<B>,
}

impl<B: Backend> Classifier<B> {
    /// Builds a classifier with weights drawn by `initializer` from `seed` (the model's own
    /// generator, so that models built concurrently each get the weights of their seed) and
    /// zero biases.
    pub fn new(
        architecture: &Architecture,
        input: &InputSpec,
        classes: usize,
        device: &B::Device,
        seed: u64,
        initializer: Initializer,
    ) -> Result<Self, MlError> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut weights = |shape: Vec<usize>, fan_in: usize, fan_out: usize| {
            let values = initializer.draw(shape.iter().product(), fan_in, fan_out, &mut rng);
            TensorData::new(values, shape)
        };
        if classes < 2 {
            bail!(
                MlError::Option,
                "a classifier needs at least 2 classes (got {classes})"
            );
        }
        if let Architecture::ResnetClassifier { depth } = architecture {
            let [channels, ..] = chw(architecture, input)?;
            return Ok(Self::ResNet(ResNet::new(
                *depth,
                channels,
                classes,
                &mut weights,
                device,
            )));
        }
        Layers::new(architecture, input, classes, device, &mut weights).map(Self::Layers)
    }

    /// The names of the classification head's tensors.
    pub fn head(&self) -> &'static [&'static str] {
        match self {
            Self::Layers(_) => &["output.weight", "output.bias"],
            Self::ResNet(_) => &["fc.weight", "fc.bias"],
        }
    }

    /// The trained tensors of the modules `freeze` names (by their tensors' names: `layer1`
    /// covers `layer1.0.conv1.weight`; [`BACKBONE`]: all but the head), by id. A name that
    /// matches no tensor is refused.
    pub fn frozen(&self, freeze: &[String]) -> Result<HashSet<ParamId>, MlError> {
        struct Trained(HashSet<ParamId>);
        impl<B: Backend> ModuleVisitor<B> for Trained {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                if param.is_require_grad() {
                    self.0.insert(param.id);
                }
            }
        }
        let mut trained = Trained(HashSet::new());
        self.visit(&mut trained);
        let tensors: Vec<(String, ParamId)> = self
            .collect(None, None, true)
            .into_iter()
            .filter_map(|t| Some((t.full_path(), t.tensor_id?)))
            .collect();
        let head = self.head();
        let mut frozen = HashSet::new();
        for module in freeze {
            let covered: Vec<ParamId> = tensors
                .iter()
                .filter(|(path, _)| match module.as_str() {
                    BACKBONE => !head.contains(&path.as_str()),
                    m => path == m || path.strip_prefix(m).is_some_and(|r| r.starts_with('.')),
                })
                .map(|(_, id)| *id)
                .collect();
            if covered.is_empty() {
                let mut modules: Vec<&str> = tensors
                    .iter()
                    .map(|(path, _)| path.split('.').next().unwrap_or(path))
                    .collect();
                modules.dedup();
                bail!(
                    MlError::Option,
                    "freeze names '{module}', which is no module of the model (its modules: {})",
                    modules.join(", ")
                );
            }
            frozen.extend(covered.into_iter().filter(|id| trained.0.contains(id)));
        }
        Ok(frozen)
    }

    /// The model with the tensors `ids` trained (`true`) or left as they are.
    pub fn with_trained(self, ids: &HashSet<ParamId>, trained: bool) -> Self {
        struct Set<'a>(&'a HashSet<ParamId>, bool);
        impl<B: Backend> ModuleMapper<B> for Set<'_> {
            fn map_float<const D: usize>(
                &mut self,
                param: Param<Tensor<B, D>>,
            ) -> Param<Tensor<B, D>> {
                if self.0.contains(&param.id) {
                    let trained = self.1;
                    param.map(|t| t.set_require_grad(trained))
                } else {
                    param
                }
            }
        }
        self.map(&mut Set(ids, trained))
    }

    /// The running averages of batch normalisation (none without it).
    pub fn running(&self) -> Running<B> {
        match self {
            Self::Layers(_) => Vec::new(),
            Self::ResNet(net) => net.running(),
        }
    }

    /// The model with the running averages of a training-mode pass.
    pub fn with_running(self, running: Running<B>) -> Self {
        if running.is_empty() {
            return self;
        }
        struct Replace<B: Backend>(HashMap<burn::module::ParamId, Tensor<B, 1>>);
        impl<B: Backend> ModuleMapper<B> for Replace<B> {
            fn map_float<const D: usize>(
                &mut self,
                param: Param<Tensor<B, D>>,
            ) -> Param<Tensor<B, D>> {
                match self.0.remove(&param.id) {
                    Some(value) => {
                        param.map(|old| value.reshape(old.dims()).set_require_grad(false))
                    }
                    None => param,
                }
            }
        }
        self.map(&mut Replace(running.into_iter().collect()))
    }
}

/// The `freeze` value for every tensor but the classification head's.
pub const BACKBONE: &str = "backbone";

/// `(channels, height, width)` of the input of a convolutional `architecture`.
fn chw(architecture: &Architecture, input: &InputSpec) -> Result<[usize; 3], MlError> {
    input.chw().ok_or_else(|| {
        err!(
            MlError::Option,
            "{} needs an image or a [height, width, channels] tensor input; column '{}' has \
             shape {:?} (set input_shape)",
            architecture.model_type(),
            input.column,
            input.shape
        )
    })
}

impl<B: Backend> Layers<B> {
    fn new(
        architecture: &Architecture,
        input: &InputSpec,
        classes: usize,
        device: &B::Device,
        weights: &mut impl FnMut(Vec<usize>, usize, usize) -> TensorData,
    ) -> Result<Self, MlError> {
        let (convs, flat, dense_units, activation, dropout) = match architecture {
            Architecture::DnnClassifier {
                hidden_units,
                activation,
                dropout,
            } => (Vec::new(), input.len(), hidden_units, activation, dropout),
            Architecture::ResnetClassifier { .. } => unreachable!("built by Classifier::new"),
            Architecture::CnnClassifier {
                conv_filters,
                kernel_size,
                dense_units,
                activation,
                dropout,
            } => {
                let [mut channels, mut h, mut w] = chw(architecture, input)?;
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
                    let k = *kernel_size;
                    let mut conv = Conv2dConfig::new([channels, filters], [k, k])
                        .with_padding(PaddingConfig2d::Same)
                        .init(device);
                    let shape = vec![filters, channels, k, k];
                    conv.weight = param(weights(shape, channels * k * k, filters * k * k), device);
                    conv.bias = Some(param(TensorData::zeros::<f32, _>([filters]), device));
                    convs.push(conv);
                    channels = filters;
                    h /= 2;
                    w /= 2;
                }
                (convs, channels * h * w, dense_units, activation, dropout)
            }
        };
        if flat == 0 {
            bail!(MlError::Option, "a classifier needs a non-empty input");
        }
        let mut linear = |inputs: usize, outputs: usize| {
            let mut layer = LinearConfig::new(inputs, outputs).init(device);
            layer.weight = param(weights(vec![inputs, outputs], inputs, outputs), device);
            layer.bias = Some(param(TensorData::zeros::<f32, _>([outputs]), device));
            layer
        };
        let mut dense = Vec::with_capacity(dense_units.len());
        let mut width = flat;
        for &units in dense_units {
            dense.push(linear(width, units));
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
            output: linear(width, classes),
            dropout: DropoutConfig::new(*dropout).init(),
            activation: activation.init(device),
        })
    }
}

/// A parameter holding `data`.
fn param<B: Backend, const D: usize>(data: TensorData, device: &B::Device) -> Param<Tensor<B, D>> {
    Param::from_tensor(Tensor::from_data(data, device))
}

impl<B: ConvBackend> Classifier<B> {
    /// Logits `[batch, classes]` for a batch `[batch, channels, height, width]` (DNNs flatten
    /// it) in inference mode: no dropout, batch normalisation with the running averages.
    pub fn forward(&self, input: Tensor<B, 4>) -> Tensor<B, 2> {
        match self {
            Self::Layers(layers) => layers.forward_with(input, |x| x),
            Self::ResNet(net) => net.forward(input, &mut Mode::Inference),
        }
    }

    /// Logits in training mode, and the running averages that the pass updated (apply them
    /// with [`Self::with_running`]): dropout masks drawn from `rng` (the run's own generator,
    /// so that concurrent runs stay reproducible), batch normalisation with the batch's
    /// statistics.
    pub fn forward_train(
        &self,
        input: Tensor<B, 4>,
        rng: &mut StdRng,
    ) -> (Tensor<B, 2>, Running<B>) {
        match self {
            Self::Layers(layers) => (layers.forward_train(input, rng), Vec::new()),
            Self::ResNet(net) => {
                let mut running = Vec::new();
                let logits = net.forward(input, &mut Mode::Training(&mut running));
                (logits, running)
            }
        }
    }
}

impl<B: ConvBackend> Layers<B> {
    fn forward_train(&self, input: Tensor<B, 4>, rng: &mut StdRng) -> Tensor<B, 2> {
        let p = self.dropout.prob;
        if p <= 0.0 {
            return self.forward_with(input, |x| x);
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
                let pad = conv.kernel_size[0] / 2;
                let y = Tensor::from_primitive(TensorPrimitive::Float(B::conv(
                    input, weight, bias, 1, pad,
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
