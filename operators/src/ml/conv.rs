//! The classifiers' convolutions: square kernels with any stride and zero padding (the CNN's
//! are stride 1 with 'same' padding, a ResNet's also stride 2 and 1x1).
//!
//! On the CPU, Burn flex's generic convolution spends most of a training step in its backward
//! pass permuting tensors element by element (the weight gradient swaps the batch and channel
//! axes of both operands). Here forward and backward are gemm calls on im2col buffers, parallel
//! over the images of a batch, with the backward pass registered as a custom autodiff op. An
//! image with few output pixels (a ResNet's later stages) shares its gemm with other images,
//! side by side, so that the gemm is wide enough for its fast kernels. With ReLU, the CNN's
//! whole block (convolution, ReLU, 2x2 max pooling) is one op whose convolution output lives
//! only in a per-thread buffer; the pooling keeps each output's winning window position for the
//! backward pass. Other backends (CUDA) use Burn's own ops.

use burn::backend::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::{ConvOptions, FloatTensor};
use burn::tensor::{DType, Tensor, TensorMetadata, TensorPrimitive};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::Arc;

use super::norm::{Normalized, burn_batch_norm, flex_batch_norm, tensor, tracked_batch_norm};
use super::pool::{burn_max_pool, flex_max_pool, tracked_max_pool};

/// Backends that run the classifiers' convolutions, pools and batch norms
/// ([`ConvBackend::conv`], [`ConvBackend::conv_relu_pool`], [`ConvBackend::max_pool`],
/// [`ConvBackend::batch_norm`]) as ops of their own; the defaults are Burn's ops.
pub trait ConvBackend: Backend {
    /// `x` `[n, c, h, w]` convolved with `weight` `[f, c, k, k]` at `stride` with zero padding
    /// `pad` on every side, plus `bias` `[f]`: `[n, f, (h + 2 pad - k) / stride + 1, ..]`.
    fn conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        pad: usize,
    ) -> FloatTensor<Self> {
        burn_conv2d::<Self>(x, weight, bias, stride, pad)
    }

    /// The CNN's block with ReLU: 2x2 max pooling (stride 2) of `relu(conv(x, weight, bias,
    /// 1, k / 2))` for an odd `k`, `[n, f, h / 2, w / 2]`.
    fn conv_relu_pool(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        burn_conv_relu_pool::<Self>(x, weight, bias)
    }

    /// Max pooling of `x` `[n, c, h, w]` over `k` x `k` windows at `stride`, padded by `pad`
    /// on every side (at most `k / 2`; padding never wins).
    fn max_pool(x: FloatTensor<Self>, k: usize, stride: usize, pad: usize) -> FloatTensor<Self> {
        burn_max_pool::<Self>(x, k, stride, pad)
    }

    /// Batch normalisation of `x` `[n, c, h, w]` with the batch's own per-channel statistics,
    /// scaled by `gamma` `[c]` and shifted by `beta` `[c]`: the output, and the batch's mean
    /// and biased variance (untracked).
    fn batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> Normalized<Self> {
        burn_batch_norm::<Self>(x, gamma, beta, epsilon)
    }
}

/// [`ConvBackend::conv`] through Burn's own convolution.
fn burn_conv2d<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
    stride: usize,
    pad: usize,
) -> FloatTensor<B> {
    B::conv2d(
        x,
        weight,
        Some(bias),
        ConvOptions::new([stride, stride], [pad, pad], [1, 1], 1),
    )
}

/// [`ConvBackend::conv_relu_pool`] as three separate ops.
fn burn_conv_relu_pool<B: ConvBackend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
) -> FloatTensor<B> {
    let pad = weight.shape().dims::<4>()[2] / 2;
    let y =
        Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(B::conv(x, weight, bias, 1, pad)));
    max_pool2d(relu(y), [2, 2], [2, 2], [0, 0], [1, 1], false)
        .into_primitive()
        .tensor()
}

impl ConvBackend for Flex {
    fn batch_norm(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> Normalized<Self> {
        flex_batch_norm(x, gamma, beta, epsilon)
    }

    fn max_pool(x: FlexTensor, k: usize, stride: usize, pad: usize) -> FlexTensor {
        flex_max_pool(x, k, stride, pad)
    }

    fn conv(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        stride: usize,
        pad: usize,
    ) -> FlexTensor {
        match Shapes::of(&x, &weight, stride, pad) {
            Some(shapes) => forward(&shapes, &x, &weight, &bias),
            None => burn_conv2d::<Self>(x, weight, bias, stride, pad),
        }
    }

    fn conv_relu_pool(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        match Shapes::same(&x, &weight).filter(Shapes::poolable) {
            Some(shapes) => pooled_forward(&shapes, &x, &weight, &bias).0,
            None => burn_conv_relu_pool::<Self>(x, weight, bias),
        }
    }
}

/// The backward step of [`ConvBackend::conv`] and, with the pooling's winners,
/// [`ConvBackend::conv_relu_pool`] on flex.
#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 3> for ConvBackward {
    type State = (NodeId, NodeId, Shapes, Option<Arc<Vec<u8>>>);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (x_state, weight_state, shapes, winners) = ops.state;
        let upstream = match &winners {
            Some(winners) => Upstream::Pooled {
                grad: grad.storage(),
                winners,
            },
            None => Upstream::Conv(grad.storage()),
        };
        let [node_x, node_weight, node_bias] = ops.parents.map(|p| p.map(|n| n.id));
        let x: FlexTensor = checkpointer.retrieve_node_output(x_state);
        let weight: FlexTensor = checkpointer.retrieve_node_output(weight_state);
        let (dx, dweight, dbias) = backward(&shapes, &x, &weight, &upstream, node_x.is_some());
        if let (Some(id), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(id, dx);
        }
        if let Some(id) = node_weight {
            grads.register::<Flex>(id, dweight);
        }
        if let Some(id) = node_bias {
            grads.register::<Flex>(id, dbias);
        }
    }
}

/// `output`, computed from x, the weight and the bias, as an autodiff tensor whose backward
/// step is [`ConvBackward`] (keeping x and the weight).
fn tracked<C: CheckpointStrategy>(
    [x, weight, bias]: [&FloatTensor<Autodiff<Flex, C>>; 3],
    shapes: Shapes,
    winners: Option<Vec<u8>>,
    output: FlexTensor,
) -> FloatTensor<Autodiff<Flex, C>> {
    match ConvBackward
        .prepare::<C>([x.node.clone(), weight.node.clone(), bias.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let x_state = prep.checkpoint(x);
            let weight_state = prep.checkpoint(weight);
            let state = (x_state, weight_state, shapes, winners.map(Arc::new));
            prep.finish(state, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

impl<C: CheckpointStrategy> ConvBackend for Autodiff<Flex, C> {
    fn batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> Normalized<Self> {
        tracked_batch_norm::<C>(x, gamma, beta, epsilon)
    }

    fn max_pool(x: FloatTensor<Self>, k: usize, stride: usize, pad: usize) -> FloatTensor<Self> {
        tracked_max_pool::<C>(x, k, stride, pad)
    }

    fn conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        pad: usize,
    ) -> FloatTensor<Self> {
        let Some(shapes) = Shapes::of(&x.primitive, &weight.primitive, stride, pad) else {
            return burn_conv2d::<Self>(x, weight, bias, stride, pad);
        };
        let output = forward(&shapes, &x.primitive, &weight.primitive, &bias.primitive);
        tracked::<C>([&x, &weight, &bias], shapes, None, output)
    }

    fn conv_relu_pool(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let Some(shapes) = Shapes::same(&x.primitive, &weight.primitive).filter(Shapes::poolable)
        else {
            return burn_conv_relu_pool::<Self>(x, weight, bias);
        };
        let (output, winners) =
            pooled_forward(&shapes, &x.primitive, &weight.primitive, &bias.primitive);
        tracked::<C>([&x, &weight, &bias], shapes, Some(winners), output)
    }
}

#[cfg(feature = "cuda")]
impl ConvBackend for burn::backend::Cuda {}

#[cfg(feature = "cuda")]
impl<C: CheckpointStrategy> ConvBackend for Autodiff<burn::backend::Cuda, C> {}

/// The sizes of one convolution; `None` where this kernel does not apply (not f32, channel
/// mismatch, not square, no output), and Burn's convolution runs instead.
#[derive(Debug, Clone, Copy)]
struct Shapes {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    f: usize,
    k: usize,
    stride: usize,
    pad: usize,
    /// Output height and width.
    ho: usize,
    wo: usize,
}

impl Shapes {
    fn of(x: &FlexTensor, weight: &FlexTensor, stride: usize, pad: usize) -> Option<Self> {
        if x.dtype() != DType::F32 || weight.dtype() != DType::F32 || stride == 0 {
            return None;
        }
        let [n, c, h, w] = x.shape().dims::<4>();
        let [f, wc, k, k2] = weight.shape().dims::<4>();
        let out = |side: usize| (side + 2 * pad).checked_sub(k).map(|d| d / stride + 1);
        let (ho, wo) = (out(h)?, out(w)?);
        (wc == c && k == k2).then_some(Self {
            n,
            c,
            h,
            w,
            f,
            k,
            stride,
            pad,
            ho,
            wo,
        })
    }

    /// Stride 1 and 'same' padding with an odd kernel.
    fn same(x: &FlexTensor, weight: &FlexTensor) -> Option<Self> {
        let k = weight.shape().dims::<4>()[2];
        Self::of(x, weight, 1, k / 2).filter(|_| k % 2 == 1)
    }

    /// Stride 1 and an output the size of the input: each im2col row is the input plane
    /// shifted.
    fn is_same(&self) -> bool {
        self.stride == 1 && self.k % 2 == 1 && self.pad == self.k / 2
    }

    /// A 1x1 convolution at stride 1 without padding: the im2col matrix is the image.
    fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }

    /// The output columns whose input column at kernel column `kx`, `ox * stride + kx - pad`,
    /// lies inside the image, and the input column that the first of them reads.
    fn columns(&self, kx: usize) -> (Range<usize>, usize) {
        let lo = self
            .pad
            .saturating_sub(kx)
            .div_ceil(self.stride)
            .min(self.wo);
        let hi = (self.w + self.pad)
            .saturating_sub(kx)
            .div_ceil(self.stride)
            .clamp(lo, self.wo);
        (
            lo..hi,
            (lo * self.stride + kx).saturating_sub(self.pad).min(self.w),
        )
    }

    /// Rows of an image's im2col matrix: one per (channel, kernel row, kernel column).
    fn ckk(&self) -> usize {
        self.c * self.k * self.k
    }

    /// Input pixels per channel.
    fn hw(&self) -> usize {
        self.h * self.w
    }

    /// Output pixels per channel: columns of the im2col matrix.
    fn out(&self) -> usize {
        self.ho * self.wo
    }

    /// Whether the output is at least 2x2, so that pooling leaves something.
    fn poolable(&self) -> bool {
        self.ho >= 2 && self.wo >= 2
    }

    /// Pooled outputs per channel.
    fn pooled(&self) -> usize {
        (self.ho / 2) * (self.wo / 2)
    }
}

/// The convolution of one image, bias included when `bias` is given: `z[f, hw]`.
fn convolve(
    s: &Shapes,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    cols: &mut [f32],
    z: &mut [f32],
) {
    let (hw, ckk) = (s.out(), s.ckk());
    im2col(s, x, cols);
    // z[f, hw] = weight[f, ckk] · cols[ckk, hw]
    matmul(z, s.f, hw, ckk, (weight, ckk, 1), (cols, hw, 1), false);
    if let Some(bias) = bias {
        add_bias(z, bias, hw);
    }
}

/// Adds each filter's bias to its `hw` outputs in `z` `[f, hw]`.
fn add_bias(z: &mut [f32], bias: &[f32], hw: usize) {
    for (row, b) in z.chunks_mut(hw).zip(bias) {
        row.iter_mut().for_each(|v| *v += b);
    }
}

/// Splits a batch's images over the run's threads: one chunk of images per thread.
fn images_per_thread(s: &Shapes) -> usize {
    s.n.div_ceil(rayon::current_num_threads())
}

/// Output columns one gemm should have at least: where an image has fewer output pixels (a
/// ResNet's last stages), several images share a gemm, whose wide microkernels then fill.
const GEMM_COLUMNS: usize = 256;

/// Images per gemm: enough for [`GEMM_COLUMNS`], at most a thread's share of the batch.
fn images_per_gemm(s: &Shapes) -> usize {
    GEMM_COLUMNS
        .div_ceil(s.out().max(1))
        .clamp(1, images_per_thread(s))
}

/// Copies image `i`'s `[rows, hw]` matrix `one` into `wide`, a `[rows, m * hw]` matrix
/// holding `m` images side by side.
fn gather(wide: &mut [f32], one: &[f32], rows: usize, hw: usize, i: usize) {
    let width = wide.len() / rows;
    for (r, row) in one.chunks(hw).take(rows).enumerate() {
        wide[r * width + i * hw..][..hw].copy_from_slice(row);
    }
}

/// The inverse of [`gather`]: image `i`'s matrix out of `wide` into `one`.
fn scatter(wide: &[f32], one: &mut [f32], rows: usize, hw: usize, i: usize) {
    let width = wide.len() / rows;
    for (r, row) in one.chunks_mut(hw).take(rows).enumerate() {
        row.copy_from_slice(&wide[r * width + i * hw..][..hw]);
    }
}

/// Per-thread buffers: one image's im2col matrix, and for a group of `m` images their im2col
/// matrices side by side (`[ckk, m * hw]`) and their outputs or gradients (`[f, m * hw]`).
struct Buffers {
    cols: Vec<f32>,
    wide: Vec<f32>,
    z: Vec<f32>,
}

impl Buffers {
    fn new(s: &Shapes) -> Self {
        let (g, hw) = (images_per_gemm(s), s.out());
        let grouped = |rows: usize| vec![0.0; if g > 1 { rows * hw * g } else { 0 }];
        Self {
            cols: vec![0.0; s.ckk() * hw],
            wide: grouped(s.ckk()),
            z: grouped(s.f),
        }
    }
}

/// The im2col matrices of the `m` images `x` side by side in `wide` (`[ckk, m * hw]`), through
/// `cols`; returns the filled part.
fn im2col_group<'w>(s: &Shapes, x: &[f32], cols: &mut [f32], wide: &'w mut [f32]) -> &'w mut [f32] {
    let (chw, ckk) = (s.c * s.hw(), s.ckk());
    let wide = &mut wide[..ckk * s.out() * (x.len() / chw)];
    for (i, x) in x.chunks(chw).enumerate() {
        im2col(s, x, cols);
        gather(wide, cols, ckk, s.out(), i);
    }
    wide
}

fn forward(s: &Shapes, x: &FlexTensor, weight: &FlexTensor, bias: &FlexTensor) -> FlexTensor {
    let [x, weight, bias] = [x, weight, bias].map(FlexTensor::to_contiguous);
    let (x, weight, bias): (&[f32], &[f32], &[f32]) =
        (x.storage(), weight.storage(), bias.storage());
    let (chw, fhw, hw, ckk) = (s.c * s.hw(), s.f * s.out(), s.out(), s.ckk());
    let g = images_per_gemm(s);
    let mut out = vec![0.0f32; s.n * fhw];
    out.par_chunks_mut(g * fhw)
        .zip(x.par_chunks(g * chw))
        .with_min_len(images_per_thread(s).div_ceil(g))
        .for_each_init(
            || Buffers::new(s),
            |Buffers { cols, wide, z }, (out, x)| {
                let m = x.len() / chw;
                if m == 1 {
                    return convolve(s, x, weight, Some(bias), cols, out);
                }
                let width = m * hw;
                let cols = im2col_group(s, x, cols, wide);
                let z = &mut z[..s.f * width];
                // z[f, m * hw] = weight[f, ckk] · cols[ckk, m * hw]
                matmul(
                    z,
                    s.f,
                    width,
                    ckk,
                    (weight, ckk, 1),
                    (cols, width, 1),
                    false,
                );
                for (i, out) in out.chunks_mut(fhw).enumerate() {
                    scatter(z, out, s.f, hw, i);
                    add_bias(out, bias, hw);
                }
            },
        );
    tensor(out, vec![s.n, s.f, s.ho, s.wo])
}

/// Added to a pooled output's winner where its ReLU is zero: no gradient flows back through
/// it (winners of 4 and above match no window position).
const NO_WINNER: u8 = 4;

/// Max pooling 2x2 (stride 2) of `relu(z + bias)` for one image, with the window position
/// (0..4, row-major) of each output's maximum, plus [`NO_WINNER`] where the ReLU is zero.
fn relu_pool(s: &Shapes, z: &[f32], bias: &[f32], out: &mut [f32], winners: &mut [u8]) {
    let (wo, ho) = (s.wo / 2, s.ho / 2);
    let per_channel = wo * ho;
    let outputs = out
        .chunks_mut(per_channel)
        .zip(winners.chunks_mut(per_channel));
    for ((zf, &b), (out, winners)) in z.chunks(s.out()).zip(bias).zip(outputs) {
        for oy in 0..ho {
            let top = &zf[2 * oy * s.wo..][..2 * wo];
            let bottom = &zf[(2 * oy + 1) * s.wo..][..2 * wo];
            let out = &mut out[oy * wo..][..wo];
            let winners = &mut winners[oy * wo..][..wo];
            // Arithmetic rather than branches (the winners are unpredictable); ties go to the
            // first position.
            for ox in 0..wo {
                let (a, b2) = (top[2 * ox], top[2 * ox + 1]);
                let (c, d) = (bottom[2 * ox], bottom[2 * ox + 1]);
                let (i1, i2) = (u8::from(b2 > a), 2 + u8::from(d > c));
                let (m1, m2) = (a.max(b2), c.max(d));
                let lower = u8::from(m2 > m1);
                let v = m1.max(m2) + b;
                out[ox] = v.max(0.0);
                // i1 or i2, plus NO_WINNER where the ReLU is zero.
                winners[ox] = i1 + lower * (i2 - i1) + NO_WINNER * u8::from(v <= 0.0);
            }
        }
    }
}

/// [`ConvBackend::conv_relu_pool`]'s output `[n, f, h/2, w/2]` and the winner of each output
/// (see [`relu_pool`]), which the backward pass routes gradients by.
fn pooled_forward(
    s: &Shapes,
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
) -> (FlexTensor, Vec<u8>) {
    let [x, weight, bias] = [x, weight, bias].map(FlexTensor::to_contiguous);
    let (x, weight, bias): (&[f32], &[f32], &[f32]) =
        (x.storage(), weight.storage(), bias.storage());
    let (chw, pooled) = (s.c * s.hw(), s.f * s.pooled());
    let mut out = vec![0.0f32; s.n * pooled];
    let mut winners = vec![NO_WINNER; s.n * pooled];
    out.par_chunks_mut(pooled)
        .zip(winners.par_chunks_mut(pooled))
        .zip(x.par_chunks(chw))
        .with_min_len(images_per_thread(s))
        .for_each_init(
            || (vec![0.0f32; s.ckk() * s.out()], vec![0.0f32; s.f * s.out()]),
            |(cols, z), ((out, winners), x)| {
                convolve(s, x, weight, None, cols, z);
                relu_pool(s, z, bias, out, winners);
            },
        );
    (tensor(out, vec![s.n, s.f, s.ho / 2, s.wo / 2]), winners)
}

/// The gradient arriving at a convolution.
enum Upstream<'a> {
    /// At its output `[n, f, h, w]`.
    Conv(&'a [f32]),
    /// At its pooled ReLU output `[n, f, h/2, w/2]`, with each output's winner.
    Pooled { grad: &'a [f32], winners: &'a [u8] },
}

impl Upstream<'_> {
    /// Image `i`'s gradient at the convolution's output, `[f, hw]`, unpooled into `scratch`
    /// where needed.
    fn image<'s>(&'s self, s: &Shapes, i: usize, scratch: &'s mut [f32]) -> &'s [f32] {
        match self {
            Self::Conv(grad) => &grad[i * s.f * s.out()..][..s.f * s.out()],
            Self::Pooled { grad, winners } => {
                let pooled = s.f * s.pooled();
                let (grad, winners) = (&grad[i * pooled..][..pooled], &winners[i * pooled..]);
                let (wo, ho) = (s.wo / 2, s.ho / 2);
                scratch.fill(0.0);
                let planes = grad.chunks(wo * ho).zip(winners.chunks(wo * ho));
                for (plane, (grad, winners)) in scratch.chunks_mut(s.out()).zip(planes) {
                    for (at, (&g, &winner)) in grad.iter().zip(winners).enumerate() {
                        // Without branches (winners are unpredictable): a zero ReLU stores 0.
                        let p = usize::from(winner & 3);
                        let (y, x) = (2 * (at / wo) + p / 2, 2 * (at % wo) + p % 2);
                        plane[y * s.wo + x] = g * f32::from(u8::from(winner < NO_WINNER));
                    }
                }
                scratch
            }
        }
    }
}

/// Gradients for x (when `need_dx`), the weight and the bias.
fn backward(
    s: &Shapes,
    x: &FlexTensor,
    weight: &FlexTensor,
    upstream: &Upstream,
    need_dx: bool,
) -> (Option<FlexTensor>, FlexTensor, FlexTensor) {
    let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
    let (x, weight): (&[f32], &[f32]) = (x.storage(), weight.storage());
    let (chw, hw, ckk) = (s.c * s.hw(), s.out(), s.ckk());
    let g = images_per_gemm(s);
    let mut dx = vec![0.0f32; if need_dx { s.n * chw } else { 0 }];
    let dx_chunks: Vec<Option<&mut [f32]>> = if need_dx {
        dx.chunks_mut(g * chw).map(Some).collect()
    } else {
        (0..s.n.div_ceil(g)).map(|_| None).collect()
    };
    // Per thread: weight and bias gradients, the group's buffers and an unpooling buffer.
    let zero = || {
        (
            vec![0.0f32; s.f * ckk],
            vec![0.0f32; s.f],
            Buffers::new(s),
            vec![0.0f32; s.f * hw],
        )
    };
    let (dweight, dbias, _, _) = dx_chunks
        .into_par_iter()
        .zip(x.par_chunks(g * chw))
        .enumerate()
        // One accumulator per thread rather than per split.
        .with_min_len(images_per_thread(s).div_ceil(g))
        .fold(
            zero,
            |(mut dw, mut db, mut buffers, mut scratch), (group, (dx, x))| {
                let (m, Buffers { cols, wide, z }) = (x.len() / chw, &mut buffers);
                let width = m * hw;
                // dy[f, m * hw]: the group's upstream gradients side by side.
                let dy: &[f32] = if m == 1 {
                    upstream.image(s, group * g, &mut scratch)
                } else {
                    let z = &mut z[..s.f * width];
                    for i in 0..m {
                        gather(
                            z,
                            upstream.image(s, group * g + i, &mut scratch),
                            s.f,
                            hw,
                            i,
                        );
                    }
                    z
                };
                for (b, row) in db.iter_mut().zip(dy.chunks(width)) {
                    *b += row.iter().sum::<f32>();
                }
                let all = if m == 1 {
                    im2col(s, x, cols);
                    &mut cols[..]
                } else {
                    im2col_group(s, x, cols, wide)
                };
                // dw[f, ckk] += dy[f, m * hw] · cols[ckk, m * hw]ᵀ
                matmul(
                    &mut dw,
                    s.f,
                    ckk,
                    width,
                    (dy, width, 1),
                    (all, 1, width),
                    true,
                );
                if let Some(dx) = dx {
                    // dcols[ckk, m * hw] = weight[f, ckk]ᵀ · dy[f, m * hw]
                    matmul(
                        all,
                        ckk,
                        width,
                        s.f,
                        (weight, 1, ckk),
                        (dy, width, 1),
                        false,
                    );
                    if m == 1 {
                        col2im(s, all, dx);
                    } else {
                        for (i, dx) in dx.chunks_mut(chw).enumerate() {
                            scatter(&wide[..ckk * width], cols, ckk, hw, i);
                            col2im(s, cols, dx);
                        }
                    }
                }
                (dw, db, buffers, scratch)
            },
        )
        .reduce(zero, |(mut a, mut b, buffers, scratch), (c, d, _, _)| {
            a.iter_mut().zip(c).for_each(|(a, c)| *a += c);
            b.iter_mut().zip(d).for_each(|(b, d)| *b += d);
            (a, b, buffers, scratch)
        });
    (
        need_dx.then(|| tensor(dx, vec![s.n, s.c, s.h, s.w])),
        tensor(dweight, vec![s.f, s.c, s.k, s.k]),
        tensor(dbias, vec![s.f]),
    )
}

/// For each im2col row of a 'same' convolution (channel c, kernel offset ky, kx): its index,
/// the channel, the output range `[lo, hi)` that reads inside the channel's plane when the plane is read as one flat
/// array shifted by `shift`, and the output columns of each row that such a flat read would
/// take from the neighbouring image row (they read padding instead).
fn for_each_row(
    s: &Shapes,
    mut visit: impl FnMut(usize, usize, usize, usize, isize, Range<usize>),
) {
    let (hw, pad) = (s.hw() as isize, (s.k / 2) as isize);
    for c in 0..s.c {
        for ky in 0..s.k {
            for kx in 0..s.k {
                let (dy, dx) = (ky as isize - pad, kx as isize - pad);
                // Output j reads input j + shift; vertical overruns fall outside [0, hw).
                let shift = dy * s.w as isize + dx;
                let lo = (-shift).clamp(0, hw) as usize;
                let hi = (hw - shift).clamp(lo as isize, hw) as usize;
                // Columns whose horizontal neighbour lies outside the row.
                let wrapped = if dx < 0 {
                    0..(-dx as usize).min(s.w)
                } else {
                    s.w.saturating_sub(dx as usize)..s.w
                };
                visit((c * s.k + ky) * s.k + kx, c, lo, hi, shift, wrapped);
            }
        }
    }
}

/// cols[(c, ky, kx), (oy, ox)] = x[c, oy * stride + ky - pad, ox * stride + kx - pad], zero
/// outside the image.
fn im2col(s: &Shapes, x: &[f32], cols: &mut [f32]) {
    if s.is_pointwise() {
        cols.copy_from_slice(x);
    } else if s.is_same() {
        im2col_same(s, x, cols);
    } else {
        for_each_line(s, |line, c, iy, kx| {
            let out = &mut cols[line * s.wo..][..s.wo];
            match iy {
                Some(iy) => {
                    let row = &x[(c * s.h + iy) * s.w..][..s.w];
                    let (inside, first) = s.columns(kx);
                    out[..inside.start].fill(0.0);
                    let read = row[first..].iter().step_by(s.stride);
                    out[inside.clone()]
                        .iter_mut()
                        .zip(read)
                        .for_each(|(v, x)| *v = *x);
                    out[inside.end..].fill(0.0);
                }
                None => out.fill(0.0),
            }
        });
    }
}

/// The adjoint of [`im2col`]: adds each column entry back onto the input pixel it was read
/// from (`cols` may be overwritten).
fn col2im(s: &Shapes, cols: &mut [f32], dx: &mut [f32]) {
    if s.is_pointwise() {
        dx.iter_mut().zip(cols.iter()).for_each(|(d, c)| *d += c);
    } else if s.is_same() {
        col2im_same(s, cols, dx);
    } else {
        for_each_line(s, |line, c, iy, kx| {
            let Some(iy) = iy else { return };
            let from = &cols[line * s.wo..][..s.wo];
            let row = &mut dx[(c * s.h + iy) * s.w..][..s.w];
            let (inside, first) = s.columns(kx);
            let written = row[first..].iter_mut().step_by(s.stride);
            written.zip(&from[inside]).for_each(|(d, v)| *d += v);
        });
    }
}

/// For each line of the im2col matrix (row (c, ky, kx), output row oy): its index, the
/// channel, the input row it reads (`None` in the padding) and the kernel column.
fn for_each_line(s: &Shapes, mut visit: impl FnMut(usize, usize, Option<usize>, usize)) {
    for c in 0..s.c {
        for ky in 0..s.k {
            for kx in 0..s.k {
                let row = (c * s.k + ky) * s.k + kx;
                for oy in 0..s.ho {
                    let iy = (oy * s.stride + ky)
                        .checked_sub(s.pad)
                        .filter(|&iy| iy < s.h);
                    visit(row * s.ho + oy, c, iy, kx);
                }
            }
        }
    }
}

/// [`im2col`] at stride 1 with 'same' padding: one flat copy per row, then the wrapped
/// columns zeroed.
fn im2col_same(s: &Shapes, x: &[f32], cols: &mut [f32]) {
    let hw = s.hw();
    for_each_row(s, |row, c, lo, hi, shift, wrapped| {
        let out = &mut cols[row * hw..][..hw];
        let plane = &x[c * hw..][..hw];
        out[..lo].fill(0.0);
        if lo < hi {
            let from = (lo as isize + shift) as usize;
            out[lo..hi].copy_from_slice(&plane[from..from + (hi - lo)]);
        }
        out[hi..].fill(0.0);
        for line in out.chunks_mut(s.w) {
            line[wrapped.clone()].fill(0.0);
        }
    });
}

/// [`col2im`] at stride 1 with 'same' padding. Zeroes the wrapped columns of `cols` (which
/// read padding) on the way.
fn col2im_same(s: &Shapes, cols: &mut [f32], dx: &mut [f32]) {
    let hw = s.hw();
    for_each_row(s, |row, c, lo, hi, shift, wrapped| {
        let from = &mut cols[row * hw..][..hw];
        for line in from.chunks_mut(s.w) {
            line[wrapped.clone()].fill(0.0);
        }
        if lo < hi {
            let at = (lo as isize + shift) as usize;
            let to = &mut dx[c * hw..][at..at + (hi - lo)];
            to.iter_mut().zip(&from[lo..hi]).for_each(|(t, f)| *t += f);
        }
    });
}

/// `dst[m×n] (+)= a[m×k] · b[k×n]`; `dst` is row-major, `a` and `b` are `(values, row
/// stride, column stride)`.
fn matmul(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    a: (&[f32], usize, usize),
    b: (&[f32], usize, usize),
    accumulate: bool,
) {
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        }
    };
    assert!(dst.len() >= m * n, "gemm destination too small");
    assert!(a.0.len() >= last(m, k, a.1, a.2), "gemm lhs too small");
    assert!(b.0.len() >= last(k, n, b.1, b.2), "gemm rhs too small");
    // SAFETY: the asserts above keep every index gemm reads or writes inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.0.as_ptr(),
            a.2 as isize,
            a.1 as isize,
            b.0.as_ptr(),
            b.2 as isize,
            b.1 as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    type Ad = Autodiff<Flex>;

    /// Checks the forward pass and all three gradients against Burn's own convolution at
    /// stride 1 with 'same' padding, and with `pooled` the fused block against Burn's
    /// convolution, ReLU and max pooling.
    fn compare(pooled: bool, n: usize, c: usize, h: usize, w: usize, f: usize, k: usize) {
        compare_strided(pooled, [n, c, h, w, f, k], 1, k / 2);
    }

    /// [`compare`] at any stride and padding.
    fn compare_strided(pooled: bool, [n, c, h, w, f, k]: [usize; 6], stride: usize, pad: usize) {
        let device = Default::default();
        let x = Tensor::<Ad, 4>::random([n, c, h, w], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let weight = Tensor::<Ad, 4>::random([f, c, k, k], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let bias =
            Tensor::<Ad, 1>::random([f], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let [xp, wp] = [x.clone(), weight.clone()].map(|t| t.into_primitive().tensor());
        let ours = Tensor::<Ad, 4>::from_primitive(TensorPrimitive::Float(if pooled {
            Ad::conv_relu_pool(xp, wp, bias.clone().into_primitive().tensor())
        } else {
            Ad::conv(xp, wp, bias.clone().into_primitive().tensor(), stride, pad)
        }));
        let mut burn = burn::tensor::module::conv2d(
            x.clone(),
            weight.clone(),
            Some(bias.clone()),
            ConvOptions::new([stride, stride], [pad, pad], [1, 1], 1),
        );
        if pooled {
            burn = max_pool2d(relu(burn), [2, 2], [2, 2], [0, 0], [1, 1], false);
        }
        let upstream =
            Tensor::<Ad, 4>::random(burn.dims(), Distribution::Normal(0.0, 1.0), &device);
        let close = |a: Tensor<Flex, 4>, b: Tensor<Flex, 4>, what: &str| {
            let diff = (a - b).abs().max().into_scalar();
            assert!(
                diff < 1e-3,
                "{what} differs by {diff} for pooled {pooled} n{n} c{c} {h}x{w} f{f} k{k}"
            );
        };
        close(ours.clone().inner(), burn.clone().inner(), "output");

        let g_ours = (ours * upstream.clone()).sum().backward();
        let g_burn = (burn * upstream).sum().backward();
        close(x.grad(&g_ours).unwrap(), x.grad(&g_burn).unwrap(), "dx");
        close(
            weight.grad(&g_ours).unwrap(),
            weight.grad(&g_burn).unwrap(),
            "dweight",
        );
        let (b_ours, b_burn) = (bias.grad(&g_ours).unwrap(), bias.grad(&g_burn).unwrap());
        let diff = (b_ours - b_burn).abs().max().into_scalar();
        assert!(diff < 1e-3, "dbias differs by {diff}");
    }

    #[test]
    fn matches_burn_convolution_and_its_gradients() {
        for pooled in [false, true] {
            compare(pooled, 3, 1, 28, 28, 8, 3);
            compare(pooled, 2, 5, 7, 9, 4, 3);
            compare(pooled, 2, 3, 6, 5, 2, 5);
            compare(pooled, 1, 2, 2, 3, 3, 5);
            compare(pooled, 2, 2, 4, 4, 3, 1);
        }
        // A ResNet's: the 7x7 stem, strided 3x3 and 1x1 projections, 1x1 at stride 1.
        compare_strided(false, [2, 3, 17, 16, 4, 7], 2, 3);
        compare_strided(false, [2, 3, 9, 8, 5, 3], 2, 1);
        compare_strided(false, [2, 4, 9, 9, 6, 1], 2, 0);
        compare_strided(false, [2, 4, 5, 6, 3, 1], 1, 0);
        compare_strided(false, [1, 2, 1, 1, 3, 3], 2, 1);
        compare_strided(false, [2, 2, 7, 8, 3, 5], 3, 3);
        compare_strided(false, [1, 2, 2, 2, 3, 5], 3, 4);
        // Small outputs, several images per gemm (9 images: a group of 5 and one of 4).
        compare_strided(false, [9, 4, 3, 3, 5, 3], 1, 1);
        compare_strided(false, [9, 3, 4, 5, 6, 3], 2, 1);
        compare_strided(false, [8, 4, 2, 2, 3, 1], 1, 0);
        compare(true, 9, 2, 4, 4, 3, 3);
    }

    #[test]
    fn the_fused_block_without_autodiff_matches_the_tracked_one() {
        let device = Default::default();
        let x = Tensor::<Flex, 4>::random([2, 3, 9, 8], Distribution::Normal(0.0, 1.0), &device);
        let weight =
            Tensor::<Flex, 4>::random([4, 3, 3, 3], Distribution::Normal(0.0, 1.0), &device);
        let bias = Tensor::<Flex, 1>::random([4], Distribution::Normal(0.0, 1.0), &device);
        let plain = Flex::conv_relu_pool(
            x.clone().into_primitive().tensor(),
            weight.clone().into_primitive().tensor(),
            bias.clone().into_primitive().tensor(),
        );
        let composed = max_pool2d(
            relu(burn::tensor::module::conv2d(
                x,
                weight,
                Some(bias),
                ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
            )),
            [2, 2],
            [2, 2],
            [0, 0],
            [1, 1],
            false,
        );
        let plain = Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(plain));
        assert_eq!(plain.dims(), [2, 4, 4, 4]);
        let diff = (plain - composed).abs().max().into_scalar();
        assert!(diff < 1e-4, "differs by {diff}");
    }
}
