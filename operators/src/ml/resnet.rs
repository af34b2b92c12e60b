//! ResNet-18, -34 and -50 as torchvision builds them (v1.5: a bottleneck strides on its 3x3
//! convolution), with torchvision's parameter names and layouts (`conv1.weight`,
//! `bn1.running_mean`, `layer1.0.downsample.1.weight`, `fc.weight` as `[classes, features]`),
//! so that a torchvision state dict saved as safetensors loads as it is.
//!
//! Batch normalisation has two modes: training (batch statistics; the running averages are
//! returned as [`Running`] for the caller to apply after the step) and inference (the running
//! averages). Nothing in a forward pass mutates the module.

use burn::module::{Module, Param, ParamId};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};

use super::conv::ConvBackend;

/// torchvision's batch-norm epsilon.
const EPSILON: f64 = 1e-5;
/// torchvision's batch-norm momentum: the weight of a batch in the running averages.
const MOMENTUM: f64 = 0.1;

/// New running averages from a training-mode pass: `(id of the running tensor, value)`.
pub type Running<B> = Vec<(ParamId, Tensor<B, 1>)>;

/// How batch normalisation normalises.
pub enum Mode<'a, B: Backend> {
    /// With the running averages.
    Inference,
    /// With the batch's statistics; the updated running averages are pushed here.
    Training(&'a mut Running<B>),
}

/// torchvision's `BatchNorm2d`: per-channel normalisation, then scale and shift.
#[derive(Module, Debug)]
pub struct Norm<B: Backend> {
    weight: Param<Tensor<B, 1>>,
    bias: Param<Tensor<B, 1>>,
    running_mean: Param<Tensor<B, 1>>,
    running_var: Param<Tensor<B, 1>>,
}

impl<B: Backend> Norm<B> {
    fn new(channels: usize, device: &B::Device) -> Self {
        let constant = |value: f32, trained: bool| {
            Param::from_tensor(Tensor::full([channels], value, device)).set_require_grad(trained)
        };
        Self {
            weight: constant(1.0, true),
            bias: constant(0.0, true),
            running_mean: constant(0.0, false),
            running_var: constant(1.0, false),
        }
    }
}

impl<B: ConvBackend> Norm<B> {
    /// Normalises `x` with the batch's statistics and pushes the updated running averages to
    /// `running`.
    fn normalize_batch(&self, x: Tensor<B, 4>, running: &mut Running<B>) -> Tensor<B, 4> {
        let [n, _, h, w] = x.dims();
        let float = |t| Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t));
        let (y, mean, var) = B::batch_norm(
            x.into_primitive().tensor(),
            self.weight.val().into_primitive().tensor(),
            self.bias.val().into_primitive().tensor(),
            EPSILON,
        );
        // The running variance is unbiased, as torch keeps it.
        let count = (n * h * w) as f64;
        let unbiased = count / (count - 1.0).max(1.0);
        let update = |old: Tensor<B, 1>, batch: Tensor<B, 1>, factor: f64| {
            old.mul_scalar(1.0 - MOMENTUM) + batch.detach().mul_scalar(MOMENTUM * factor)
        };
        running.push((
            self.running_mean.id,
            update(self.running_mean.val(), float(mean), 1.0),
        ));
        running.push((
            self.running_var.id,
            update(self.running_var.val(), float(var), unbiased),
        ));
        Tensor::from_primitive(TensorPrimitive::Float(y))
    }
}

impl<B: Backend> Norm<B> {
    /// With the running averages, the norm as a per-channel `(scale, shift)`.
    fn affine(&self) -> (Tensor<B, 1>, Tensor<B, 1>) {
        let scale = self.weight.val() / self.running_var.val().add_scalar(EPSILON).sqrt();
        let shift = self.bias.val() - self.running_mean.val() * scale.clone();
        (scale, shift)
    }

    /// Whether training leaves this norm as it is (`freeze`): its scale does not track
    /// gradients. Without autodiff nothing does, and every norm trains.
    fn frozen(&self) -> bool {
        B::ad_enabled(&self.weight.device()) && !self.weight.is_require_grad()
    }

    /// The running averages' ids and values.
    fn running(&self, out: &mut Running<B>) {
        // As a training-mode pass: a frozen norm has none.
        if self.frozen() {
            return;
        }
        for p in [&self.running_mean, &self.running_var] {
            out.push((p.id, p.val()));
        }
    }
}

/// A convolution without bias, `k` x `k`, stride `stride`, padding `k / 2`, its weights drawn
/// by `draw(shape, fan_in, fan_out)`.
fn conv<B: Backend>(
    (inputs, outputs): (usize, usize),
    k: usize,
    stride: usize,
    draw: &mut impl FnMut(Vec<usize>, usize, usize) -> TensorData,
    device: &B::Device,
) -> Conv2d<B> {
    let p = k / 2;
    let mut conv = Conv2dConfig::new([inputs, outputs], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_bias(false)
        .init(device);
    conv.weight = Param::from_tensor(Tensor::from_data(
        draw(vec![outputs, inputs, k, k], inputs * k * k, outputs * k * k),
        device,
    ));
    conv
}

/// `conv` (no bias, padding k / 2) applied to `x` through [`ConvBackend::conv`].
fn convolve<B: ConvBackend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let bias = Tensor::<B, 1>::zeros([conv.weight.dims()[0]], &x.device());
    convolve_with(conv, conv.weight.val(), bias, x)
}

/// `conv`'s geometry with `weight` and `bias` applied to `x` through [`ConvBackend::conv`].
fn convolve_with<B: ConvBackend>(
    conv: &Conv2d<B>,
    weight: Tensor<B, 4>,
    bias: Tensor<B, 1>,
    x: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let k = weight.dims()[2];
    Tensor::from_primitive(TensorPrimitive::Float(B::conv(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        bias.into_primitive().tensor(),
        conv.stride[0],
        k / 2,
    )))
}

/// `norm` after `conv`. Where the norm uses its running averages (inference, and a frozen norm
/// in training) it is folded into the convolution (each filter scaled, the shift as its bias):
/// one pass over the output, not two.
fn convolve_norm<B: ConvBackend>(
    conv: &Conv2d<B>,
    norm: &Norm<B>,
    x: Tensor<B, 4>,
    mode: &mut Mode<B>,
) -> Tensor<B, 4> {
    match mode {
        Mode::Training(running) if !norm.frozen() => {
            norm.normalize_batch(convolve(conv, x), running)
        }
        _ => {
            let (scale, shift) = norm.affine();
            let weight = conv.weight.val() * scale.unsqueeze_dims::<4>(&[1, 2, 3]);
            convolve_with(conv, weight, shift, x)
        }
    }
}

/// One layer of torchvision's `downsample` sequence: the 1x1 convolution, then its norm.
#[derive(Module, Debug)]
pub enum Shortcut<B: Backend> {
    /// `downsample.0`.
    Conv(Conv2d<B>),
    /// `downsample.1`.
    Norm(Norm<B>),
}

/// A basic block (two 3x3 convolutions) or a bottleneck (1x1, 3x3, 1x1 with four times the
/// width), with the identity or a projection as shortcut.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    conv1: Conv2d<B>,
    bn1: Norm<B>,
    conv2: Conv2d<B>,
    bn2: Norm<B>,
    conv3: Option<Conv2d<B>>,
    bn3: Option<Norm<B>>,
    /// Empty for the identity, else `[Conv, Norm]`.
    downsample: Vec<Shortcut<B>>,
}

impl<B: ConvBackend> Block<B> {
    fn forward(&self, x: Tensor<B, 4>, mode: &mut Mode<B>) -> Tensor<B, 4> {
        let mut y = relu(convolve_norm(&self.conv1, &self.bn1, x.clone(), mode));
        y = convolve_norm(&self.conv2, &self.bn2, y, mode);
        if let (Some(conv3), Some(bn3)) = (&self.conv3, &self.bn3) {
            y = convolve_norm(conv3, bn3, relu(y), mode);
        }
        let shortcut = match self.downsample.as_slice() {
            [] => x,
            [Shortcut::Conv(conv), Shortcut::Norm(norm)] => convolve_norm(conv, norm, x, mode),
            _ => unreachable!("a downsample is a convolution and its norm"),
        };
        relu(y + shortcut)
    }
}

impl<B: Backend> Block<B> {
    fn norms(&self) -> impl Iterator<Item = &Norm<B>> {
        let shortcut = self.downsample.iter().filter_map(|l| match l {
            Shortcut::Norm(n) => Some(n),
            Shortcut::Conv(_) => None,
        });
        [&self.bn1, &self.bn2]
            .into_iter()
            .chain(self.bn3.as_ref())
            .chain(shortcut)
    }
}

/// The classification head, torchvision's `fc`: `weight` is `[classes, features]`.
#[derive(Module, Debug)]
pub struct Head<B: Backend> {
    weight: Param<Tensor<B, 2>>,
    bias: Param<Tensor<B, 1>>,
}

/// A residual network: a 7x7 stride-2 stem with 3x3 max pooling, four stages of blocks (the
/// last three halve the resolution), global average pooling and the head.
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    conv1: Conv2d<B>,
    bn1: Norm<B>,
    layer1: Vec<Block<B>>,
    layer2: Vec<Block<B>>,
    layer3: Vec<Block<B>>,
    layer4: Vec<Block<B>>,
    fc: Head<B>,
}

/// The depths torchvision builds: blocks per stage and whether they are bottlenecks.
pub const DEPTHS: &[usize] = &[18, 34, 50];

impl<B: ConvBackend> ResNet<B> {
    /// Logits `[batch, classes]` of images `[batch, channels, height, width]`.
    pub fn forward(&self, x: Tensor<B, 4>, mode: &mut Mode<B>) -> Tensor<B, 2> {
        let x = relu(convolve_norm(&self.conv1, &self.bn1, x, mode));
        let x = B::max_pool(x.into_primitive().tensor(), 3, 2, 1);
        let mut x = Tensor::from_primitive(TensorPrimitive::Float(x));
        for block in self.blocks() {
            x = block.forward(x, mode);
        }
        let features: Tensor<B, 2> = x.mean_dim(3).mean_dim(2).flatten(1, 3);
        features.matmul(self.fc.weight.val().transpose()) + self.fc.bias.val().unsqueeze()
    }
}

impl<B: Backend> ResNet<B> {
    /// A ResNet of `depth` (18, 34 or 50) for `channels`-channel images and `classes` classes;
    /// the convolutions' and head's weights drawn by `draw(shape, fan_in, fan_out)`, norms at
    /// scale 1 and shift 0, the head's bias zero.
    pub fn new(
        depth: usize,
        channels: usize,
        classes: usize,
        draw: &mut impl FnMut(Vec<usize>, usize, usize) -> TensorData,
        device: &B::Device,
    ) -> Self {
        let (blocks, bottleneck) = match depth {
            18 => ([2, 2, 2, 2], false),
            34 => ([3, 4, 6, 3], false),
            _ => ([3, 4, 6, 3], true),
        };
        let expansion = if bottleneck { 4 } else { 1 };
        let conv1 = conv((channels, 64), 7, 2, draw, device);
        let mut inputs = 64;
        let mut stage = |width: usize, count: usize, stride: usize| -> Vec<Block<B>> {
            (0..count)
                .map(|i| {
                    let stride = if i == 0 { stride } else { 1 };
                    let outputs = width * expansion;
                    let downsample = if stride != 1 || inputs != outputs {
                        vec![
                            Shortcut::Conv(conv((inputs, outputs), 1, stride, draw, device)),
                            Shortcut::Norm(Norm::new(outputs, device)),
                        ]
                    } else {
                        Vec::new()
                    };
                    let block = if bottleneck {
                        Block {
                            conv1: conv((inputs, width), 1, 1, draw, device),
                            bn1: Norm::new(width, device),
                            conv2: conv((width, width), 3, stride, draw, device),
                            bn2: Norm::new(width, device),
                            conv3: Some(conv((width, outputs), 1, 1, draw, device)),
                            bn3: Some(Norm::new(outputs, device)),
                            downsample,
                        }
                    } else {
                        Block {
                            conv1: conv((inputs, width), 3, stride, draw, device),
                            bn1: Norm::new(width, device),
                            conv2: conv((width, width), 3, 1, draw, device),
                            bn2: Norm::new(width, device),
                            conv3: None,
                            bn3: None,
                            downsample,
                        }
                    };
                    inputs = outputs;
                    block
                })
                .collect()
        };
        let layer1 = stage(64, blocks[0], 1);
        let layer2 = stage(128, blocks[1], 2);
        let layer3 = stage(256, blocks[2], 2);
        let layer4 = stage(512, blocks[3], 2);
        let features = 512 * expansion;
        Self {
            conv1,
            bn1: Norm::new(64, device),
            layer1,
            layer2,
            layer3,
            layer4,
            fc: Head {
                weight: Param::from_tensor(Tensor::from_data(
                    draw(vec![classes, features], features, classes),
                    device,
                )),
                bias: Param::from_tensor(Tensor::zeros([classes], device)),
            },
        }
    }

    fn blocks(&self) -> impl Iterator<Item = &Block<B>> {
        [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
            .into_iter()
            .flatten()
    }

    /// The running averages of every norm, in a fixed order.
    pub fn running(&self) -> Running<B> {
        let mut out = Vec::new();
        self.bn1.running(&mut out);
        for norm in self.blocks().flat_map(Block::norms) {
            norm.running(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::train::weights_bytes;
    use burn::backend::Flex;

    fn resnet(depth: usize) -> ResNet<Flex> {
        let mut zeros = |shape: Vec<usize>, _, _| {
            let n = shape.iter().product();
            TensorData::new(vec![0f32; n], shape)
        };
        ResNet::new(depth, 3, 10, &mut zeros, &Default::default())
    }

    /// Every tensor of torchvision's state dict but `num_batches_tracked` (122 - 20 for
    /// ResNet-18, 320 - 53 for ResNet-50), under its name and in its shape.
    #[test]
    fn the_weights_have_torchvision_s_names_and_shapes() {
        for (depth, count, shapes) in [
            (
                18,
                102,
                vec![
                    ("conv1.weight", vec![64, 3, 7, 7]),
                    ("bn1.running_mean", vec![64]),
                    ("layer1.1.conv2.weight", vec![64, 64, 3, 3]),
                    ("layer2.0.downsample.0.weight", vec![128, 64, 1, 1]),
                    ("layer2.0.downsample.1.running_var", vec![128]),
                    ("layer4.1.bn2.bias", vec![512]),
                    ("fc.weight", vec![10, 512]),
                    ("fc.bias", vec![10]),
                ],
            ),
            (
                50,
                267,
                vec![
                    ("layer1.0.conv1.weight", vec![64, 64, 1, 1]),
                    ("layer1.0.downsample.0.weight", vec![256, 64, 1, 1]),
                    ("layer2.0.conv2.weight", vec![128, 128, 3, 3]),
                    ("layer3.5.bn3.weight", vec![1024]),
                    ("layer4.2.conv3.weight", vec![2048, 512, 1, 1]),
                    ("fc.weight", vec![10, 2048]),
                ],
            ),
        ] {
            let model = crate::ml::model::Classifier::ResNet(resnet(depth));
            let bytes = weights_bytes(&model).unwrap();
            let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            assert_eq!(file.len(), count, "ResNet-{depth}: {:?}", file.names());
            for (name, shape) in shapes {
                let tensor = file.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(tensor.shape(), &shape[..], "{name}");
            }
        }
    }

    /// Training mode normalises with the batch's mean and biased variance and moves the
    /// running averages a tenth of the way to the batch's mean and unbiased variance;
    /// inference mode normalises with the running averages.
    #[test]
    fn batch_norm_trains_on_batch_statistics_and_infers_on_running_averages() {
        let device = Default::default();
        let norm = Norm::<Flex>::new(1, &device);
        // One channel, values 1, 2, 3, 6: mean 3, biased variance 3.5, unbiased 14/3.
        let x = Tensor::<Flex, 4>::from_data(
            TensorData::new(vec![1f32, 2.0, 3.0, 6.0], [2, 1, 1, 2]),
            &device,
        );
        let mut running = Vec::new();
        let y = norm.normalize_batch(x.clone(), &mut running);
        let values = |t: Tensor<Flex, 4>| t.into_data().to_vec::<f32>().unwrap();
        let std = (3.5f32 + 1e-5).sqrt();
        for (got, v) in values(y).iter().zip([1f32, 2.0, 3.0, 6.0]) {
            assert!((got - (v - 3.0) / std).abs() < 1e-6);
        }
        let running: Vec<f32> = running
            .iter()
            .map(|(_, t)| t.clone().into_scalar())
            .collect();
        let expected = [0.1 * 3.0, 0.9 + 0.1 * 14.0 / 3.0];
        for (got, want) in running.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{running:?}");
        }
        // Through a 1x1 convolution of weight 1, as the norm runs after one in the network.
        let identity = conv(
            (1, 1),
            1,
            1,
            &mut |shape, _, _| TensorData::new(vec![1f32], shape),
            &device,
        );
        let y = convolve_norm(&identity, &norm, x, &mut Mode::Inference);
        for (got, v) in values(y).iter().zip([1f32, 2.0, 3.0, 6.0]) {
            assert!((got - v / (1.0f32 + 1e-5).sqrt()).abs() < 1e-6);
        }
    }
}
