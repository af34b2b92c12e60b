//! The CNN's convolution: stride 1, 'same' padding, odd square kernels.
//!
//! On the CPU, Burn flex's generic convolution spends most of a training step in its backward
//! pass permuting tensors element by element (the weight gradient swaps the batch and channel
//! axes of both operands). Here forward and backward are gemm calls on per-image im2col buffers,
//! parallel over the images of a batch, with the backward pass registered as a custom autodiff
//! op. Other backends (CUDA) use Burn's own convolution.

use burn::backend::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::backend::Backend;
use burn::tensor::ops::{ConvOptions, FloatTensor};
use burn::tensor::{DType, TensorData, TensorMetadata};
use rayon::prelude::*;

/// Backends that run [`ConvBackend::conv2d_same`]; the default is Burn's convolution.
pub trait ConvBackend: Backend {
    /// `x` `[n, c, h, w]` convolved with `weight` `[f, c, k, k]` (k odd, zero padding k/2,
    /// stride 1) plus `bias` `[f]`: `[n, f, h, w]`.
    fn conv2d_same(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        burn_conv2d_same::<Self>(x, weight, bias)
    }
}

/// [`ConvBackend::conv2d_same`] through Burn's own convolution.
fn burn_conv2d_same<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
) -> FloatTensor<B> {
    let pad = weight.shape().dims::<4>()[2] / 2;
    B::conv2d(
        x,
        weight,
        Some(bias),
        ConvOptions::new([1, 1], [pad, pad], [1, 1], 1),
    )
}

impl ConvBackend for Flex {
    fn conv2d_same(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        match Shapes::of(&x, &weight) {
            Some(shapes) => forward(&shapes, &x, &weight, &bias),
            None => burn_conv2d_same::<Self>(x, weight, bias),
        }
    }
}

/// The backward step of [`ConvBackend::conv2d_same`] on flex.
#[derive(Debug)]
struct ConvSameBackward;

impl Backward<Flex, 3> for ConvSameBackward {
    type State = (NodeId, NodeId, Shapes);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (x_state, weight_state, shapes) = ops.state;
        let x: FlexTensor = checkpointer.retrieve_node_output(x_state);
        let weight: FlexTensor = checkpointer.retrieve_node_output(weight_state);
        let (dx, dweight, dbias) = backward(&shapes, &x, &weight, &grad, node_x.is_some());
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, dx);
        }
        if let Some(node) = node_weight {
            grads.register::<Flex>(node.id, dweight);
        }
        if let Some(node) = node_bias {
            grads.register::<Flex>(node.id, dbias);
        }
    }
}

impl<C: CheckpointStrategy> ConvBackend for Autodiff<Flex, C> {
    fn conv2d_same(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let Some(shapes) = Shapes::of(&x.primitive, &weight.primitive) else {
            return burn_conv2d_same::<Self>(x, weight, bias);
        };
        let output = forward(&shapes, &x.primitive, &weight.primitive, &bias.primitive);
        match ConvSameBackward
            .prepare::<C>([x.node.clone(), weight.node.clone(), bias.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                prep.finish((x_state, weight_state, shapes), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

#[cfg(feature = "cuda")]
impl ConvBackend for burn::backend::Cuda {}

#[cfg(feature = "cuda")]
impl<C: CheckpointStrategy> ConvBackend for Autodiff<burn::backend::Cuda, C> {}

/// The sizes of one convolution; `None` where this kernel does not apply (not f32, even
/// kernel, channel mismatch), and Burn's convolution runs instead.
#[derive(Debug, Clone, Copy)]
struct Shapes {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    f: usize,
    k: usize,
}

impl Shapes {
    fn of(x: &FlexTensor, weight: &FlexTensor) -> Option<Self> {
        if x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
            return None;
        }
        let [n, c, h, w] = x.shape().dims::<4>();
        let [f, wc, k, k2] = weight.shape().dims::<4>();
        (wc == c && k == k2 && k % 2 == 1).then_some(Self { n, c, h, w, f, k })
    }

    /// Rows of an image's im2col matrix: one per (channel, kernel row, kernel column).
    fn ckk(&self) -> usize {
        self.c * self.k * self.k
    }

    fn hw(&self) -> usize {
        self.h * self.w
    }
}

fn tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

fn forward(s: &Shapes, x: &FlexTensor, weight: &FlexTensor, bias: &FlexTensor) -> FlexTensor {
    let (x, weight, bias) = (
        x.to_contiguous(),
        weight.to_contiguous(),
        bias.to_contiguous(),
    );
    let (x, weight, bias): (&[f32], &[f32], &[f32]) =
        (x.storage(), weight.storage(), bias.storage());
    let (chw, fhw, hw, ckk) = (s.c * s.hw(), s.f * s.hw(), s.hw(), s.ckk());
    let mut out = vec![0.0f32; s.n * fhw];
    out.par_chunks_mut(fhw)
        .zip(x.par_chunks(chw))
        .with_min_len(s.n.div_ceil(rayon::current_num_threads()))
        .for_each_init(
            || vec![0.0f32; ckk * hw],
            |cols, (out, x)| {
                im2col(s, x, cols);
                // out[f, hw] = weight[f, ckk] · cols[ckk, hw]
                matmul(out, s.f, hw, ckk, (weight, ckk, 1), (cols, hw, 1), false);
                for (row, b) in out.chunks_mut(hw).zip(bias) {
                    row.iter_mut().for_each(|v| *v += b);
                }
            },
        );
    tensor(out, vec![s.n, s.f, s.h, s.w])
}

/// Gradients for x (when `need_dx`), the weight and the bias.
fn backward(
    s: &Shapes,
    x: &FlexTensor,
    weight: &FlexTensor,
    grad: &FlexTensor,
    need_dx: bool,
) -> (Option<FlexTensor>, FlexTensor, FlexTensor) {
    let (x, weight, grad) = (
        x.to_contiguous(),
        weight.to_contiguous(),
        grad.to_contiguous(),
    );
    let (x, weight, grad): (&[f32], &[f32], &[f32]) =
        (x.storage(), weight.storage(), grad.storage());
    let (chw, fhw, hw, ckk) = (s.c * s.hw(), s.f * s.hw(), s.hw(), s.ckk());
    let mut dx = vec![0.0f32; if need_dx { s.n * chw } else { 0 }];
    let dx_chunks: Vec<Option<&mut [f32]>> = if need_dx {
        dx.chunks_mut(chw).map(Some).collect()
    } else {
        (0..s.n).map(|_| None).collect()
    };
    let zero = || {
        (
            vec![0.0f32; s.f * ckk],
            vec![0.0f32; s.f],
            vec![0.0f32; ckk * hw],
        )
    };
    let (dweight, dbias, _) = dx_chunks
        .into_par_iter()
        .zip(x.par_chunks(chw))
        .zip(grad.par_chunks(fhw))
        // One accumulator per thread rather than per split: each holds a weight gradient and
        // an im2col buffer.
        .with_min_len(s.n.div_ceil(rayon::current_num_threads()))
        .fold(zero, |(mut dw, mut db, mut cols), ((dx, x), dy)| {
            im2col(s, x, &mut cols);
            // dw[f, ckk] += dy[f, hw] · cols[ckk, hw]ᵀ
            matmul(&mut dw, s.f, ckk, hw, (dy, hw, 1), (&cols, 1, hw), true);
            for (b, row) in db.iter_mut().zip(dy.chunks(hw)) {
                *b += row.iter().sum::<f32>();
            }
            if let Some(dx) = dx {
                // dcols[ckk, hw] = weight[f, ckk]ᵀ · dy[f, hw]
                matmul(
                    &mut cols,
                    ckk,
                    hw,
                    s.f,
                    (weight, 1, ckk),
                    (dy, hw, 1),
                    false,
                );
                col2im(s, &cols, dx);
            }
            (dw, db, cols)
        })
        .reduce(zero, |(mut a, mut b, cols), (c, d, _)| {
            a.iter_mut().zip(c).for_each(|(a, c)| *a += c);
            b.iter_mut().zip(d).for_each(|(b, d)| *b += d);
            (a, b, cols)
        });
    (
        need_dx.then(|| tensor(dx, vec![s.n, s.c, s.h, s.w])),
        tensor(dweight, vec![s.f, s.c, s.k, s.k]),
        tensor(dbias, vec![s.f]),
    )
}

/// For each im2col row (channel c, kernel offset dy, dx) and output row `oy`: the output
/// columns `[lo, hi)` that read inside the image, and the input row and column shift.
fn for_each_window(
    s: &Shapes,
    mut visit: impl FnMut(usize, usize, usize, Option<(usize, usize, usize)>),
) {
    let pad = s.k / 2;
    for c in 0..s.c {
        for ky in 0..s.k {
            for kx in 0..s.k {
                let row = (c * s.k + ky) * s.k + kx;
                // Output column ox reads input column ox + kx - pad.
                let lo = pad.saturating_sub(kx).min(s.w);
                let hi = (s.w + pad).saturating_sub(kx).min(s.w).max(lo);
                for oy in 0..s.h {
                    let iy = (oy + ky).checked_sub(pad).filter(|&iy| iy < s.h);
                    visit(row, c, oy, iy.map(|iy| (iy, lo, hi)));
                }
            }
        }
    }
}

/// cols[(c, ky, kx), (oy, ox)] = x[c, oy + ky - pad, ox + kx - pad], zero outside the image.
fn im2col(s: &Shapes, x: &[f32], cols: &mut [f32]) {
    let (hw, pad) = (s.hw(), s.k / 2);
    for_each_window(s, |row, c, oy, window| {
        let out = &mut cols[row * hw + oy * s.w..][..s.w];
        match window {
            Some((iy, lo, hi)) => {
                let kx = row % s.k;
                let input = &x[(c * s.h + iy) * s.w..][..s.w];
                out[..lo].fill(0.0);
                out[lo..hi].copy_from_slice(&input[lo + kx - pad..hi + kx - pad]);
                out[hi..].fill(0.0);
            }
            None => out.fill(0.0),
        }
    });
}

/// The adjoint of [`im2col`]: adds each column entry back onto the input pixel it was read from.
fn col2im(s: &Shapes, cols: &[f32], dx: &mut [f32]) {
    let (hw, pad) = (s.hw(), s.k / 2);
    for_each_window(s, |row, c, oy, window| {
        if let Some((iy, lo, hi)) = window {
            let kx = row % s.k;
            let from = &cols[row * hw + oy * s.w..][lo..hi];
            let to = &mut dx[(c * s.h + iy) * s.w..][lo + kx - pad..hi + kx - pad];
            to.iter_mut().zip(from).for_each(|(t, f)| *t += f);
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
    use burn::tensor::{Distribution, Tensor, TensorPrimitive};

    type Ad = Autodiff<Flex>;

    /// Checks the forward pass and all three gradients against Burn's own convolution.
    fn compare(n: usize, c: usize, h: usize, w: usize, f: usize, k: usize) {
        let device = Default::default();
        let x = Tensor::<Ad, 4>::random([n, c, h, w], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let weight = Tensor::<Ad, 4>::random([f, c, k, k], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let bias =
            Tensor::<Ad, 1>::random([f], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let upstream =
            Tensor::<Ad, 4>::random([n, f, h, w], Distribution::Normal(0.0, 1.0), &device);

        let ours = Tensor::<Ad, 4>::from_primitive(TensorPrimitive::Float(Ad::conv2d_same(
            x.clone().into_primitive().tensor(),
            weight.clone().into_primitive().tensor(),
            bias.clone().into_primitive().tensor(),
        )));
        let pad = k / 2;
        let burn = burn::tensor::module::conv2d(
            x.clone(),
            weight.clone(),
            Some(bias.clone()),
            ConvOptions::new([1, 1], [pad, pad], [1, 1], 1),
        );
        let close = |a: Tensor<Flex, 4>, b: Tensor<Flex, 4>, what: &str| {
            let diff = (a - b).abs().max().into_scalar();
            assert!(
                diff < 1e-3,
                "{what} differs by {diff} for n{n} c{c} {h}x{w} f{f} k{k}"
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
        compare(3, 1, 28, 28, 8, 3);
        compare(2, 5, 7, 9, 4, 3);
        compare(2, 3, 6, 5, 2, 5);
        compare(1, 2, 2, 3, 3, 5);
        compare(2, 2, 4, 4, 3, 1);
    }
}
