//! Max pooling over square windows (a ResNet's 3x3 stem pool at stride 2) as one op on the CPU,
//! forward and backward: Burn flex pools through a generic 3-d loop with 64-bit indices, which
//! took 15% of ResNet-18's inference at 224 px.

use std::ops::Range;
use std::sync::Arc;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::backend::Backend;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorMetadata, TensorPrimitive};
use rayon::prelude::*;

use super::norm::tensor;

/// Max pooling with Burn's op: the default for other backends.
pub fn burn_max_pool<B: Backend>(
    x: FloatTensor<B>,
    k: usize,
    stride: usize,
    pad: usize,
) -> FloatTensor<B> {
    let x = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(x));
    max_pool2d(x, [k, k], [stride, stride], [pad, pad], [1, 1], false)
        .into_primitive()
        .tensor()
}

/// The sizes of one pooling; `None` where this op does not apply (not f32, padding over half
/// the window, no output), and Burn's runs instead.
#[derive(Debug, Clone, Copy)]
struct Pool {
    planes: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Pool {
    fn of(x: &FlexTensor, k: usize, stride: usize, pad: usize) -> Option<Self> {
        if x.dtype() != DType::F32 || stride == 0 || k == 0 || pad > k / 2 {
            return None;
        }
        let [n, c, h, w] = x.shape().dims::<4>();
        let out = |side: usize| (side + 2 * pad).checked_sub(k).map(|d| d / stride + 1);
        let (ho, wo) = (out(h)?, out(w)?);
        Some(Self {
            planes: n * c,
            h,
            w,
            k,
            stride,
            pad,
            ho,
            wo,
        })
    }

    /// The input rows (or columns, of a `side`) that output row `o`'s window covers: never
    /// empty, as the padding is at most half the window.
    fn window(&self, o: usize, side: usize) -> Range<usize> {
        let start = o * self.stride;
        start.saturating_sub(self.pad)..(start + self.k - self.pad).min(side)
    }
}

/// Each output's maximum and the index in its plane of the first input that holds it, in
/// row-major order within the window (as Burn picks, so gradients go where Burn's go).
fn forward(p: &Pool, x: &[f32]) -> (Vec<f32>, Vec<u32>) {
    let (plane_in, plane_out) = (p.h * p.w, p.ho * p.wo);
    let mut out = vec![0.0; p.planes * plane_out];
    let mut winners = vec![0u32; p.planes * plane_out];
    let columns: Vec<Range<usize>> = (0..p.wo).map(|ox| p.window(ox, p.w)).collect();
    out.par_chunks_mut(plane_out.max(1))
        .zip(winners.par_chunks_mut(plane_out.max(1)))
        .zip(x.par_chunks(plane_in.max(1)))
        .for_each(|((out, winners), x)| {
            for oy in 0..p.ho {
                let rows = p.window(oy, p.h);
                for (ox, cols) in columns.iter().enumerate() {
                    let (mut best, mut at) = (f32::NEG_INFINITY, rows.start * p.w + cols.start);
                    for iy in rows.clone() {
                        for ix in cols.clone() {
                            let v = x[iy * p.w + ix];
                            if v > best {
                                (best, at) = (v, iy * p.w + ix);
                            }
                        }
                    }
                    out[oy * p.wo + ox] = x[at];
                    winners[oy * p.wo + ox] = at as u32;
                }
            }
        });
    (out, winners)
}

/// Max pooling of `x` `[n, c, h, w]` on flex.
pub fn flex_max_pool(x: FlexTensor, k: usize, stride: usize, pad: usize) -> FlexTensor {
    let Some(p) = Pool::of(&x, k, stride, pad) else {
        return burn_max_pool::<Flex>(x, k, stride, pad);
    };
    let [n, c, ..] = x.shape().dims::<4>();
    let (out, _) = forward(&p, x.to_contiguous().storage());
    tensor(out, vec![n, c, p.ho, p.wo])
}

/// The backward step of [`tracked_max_pool`]: each output's gradient goes to its winner.
#[derive(Debug)]
struct PoolBackward;

impl Backward<Flex, 1> for PoolBackward {
    type State = (Pool, [usize; 4], Arc<Vec<u32>>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (p, shape, winners) = ops.state;
        let [node] = ops.parents.map(|p| p.map(|n| n.id));
        let Some(id) = node else { return };
        let (plane_in, plane_out) = (p.h * p.w, p.ho * p.wo);
        let mut dx = vec![0.0f32; p.planes * plane_in];
        dx.par_chunks_mut(plane_in.max(1))
            .zip(grad.storage::<f32>().par_chunks(plane_out.max(1)))
            .zip(winners.par_chunks(plane_out.max(1)))
            .for_each(|((dx, grad), winners)| {
                for (g, &at) in grad.iter().zip(winners) {
                    dx[at as usize] += g;
                }
            });
        grads.register::<Flex>(id, tensor(dx, shape.to_vec()));
    }
}

/// Max pooling on flex under autodiff, with [`PoolBackward`] as its backward step.
pub fn tracked_max_pool<C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<Flex, C>>,
    k: usize,
    stride: usize,
    pad: usize,
) -> FloatTensor<Autodiff<Flex, C>> {
    let Some(p) = Pool::of(&x.primitive, k, stride, pad) else {
        return burn_max_pool::<Autodiff<Flex, C>>(x, k, stride, pad);
    };
    let shape = x.primitive.shape().dims::<4>();
    let (out, winners) = forward(&p, x.primitive.to_contiguous().storage());
    let out = tensor(out, vec![shape[0], shape[1], p.ho, p.wo]);
    match PoolBackward
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((p, shape, Arc::new(winners)), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    type Ad = Autodiff<Flex>;

    /// The op's output and gradient against Burn's max pooling, with ties (values drawn from a
    /// few levels) so that the winner's choice matters.
    #[test]
    fn matches_burn_s_max_pooling_and_its_gradient() {
        let device = Default::default();
        let mut rng = StdRng::seed_from_u64(3);
        for ([n, c, h, w], k, stride, pad) in [
            ([2, 3, 9, 8], 3, 2, 1),
            ([1, 2, 7, 7], 3, 2, 0),
            ([2, 2, 6, 5], 2, 2, 0),
            ([1, 1, 1, 1], 3, 2, 1),
            ([1, 2, 5, 6], 3, 1, 1),
            ([1, 1, 8, 9], 5, 3, 2),
        ] {
            let values = (0..n * c * h * w)
                .map(|_| rng.random_range(-4..4) as f32)
                .collect::<Vec<_>>();
            let x = Tensor::<Ad, 4>::from_data(TensorData::new(values, [n, c, h, w]), &device)
                .require_grad();
            let run = |ours: bool| {
                let xp = x.clone().into_primitive().tensor();
                let y = if ours {
                    <Ad as crate::ml::conv::ConvBackend>::max_pool(xp, k, stride, pad)
                } else {
                    burn_max_pool::<Ad>(xp, k, stride, pad)
                };
                let y = Tensor::<Ad, 4>::from_primitive(TensorPrimitive::Float(y));
                let upstream = Tensor::<Ad, 4>::from_data(
                    TensorData::new(
                        (0..y.shape().num_elements())
                            .map(|i| i as f32 + 1.0)
                            .collect::<Vec<_>>(),
                        y.dims(),
                    ),
                    &device,
                );
                let grads = (y.clone() * upstream).sum().backward();
                (y.inner().into_data(), x.grad(&grads).unwrap().into_data())
            };
            let case = format!("{n}x{c}x{h}x{w}, k {k}, stride {stride}, pad {pad}");
            let ((y, dx), (by, bdx)) = (run(true), run(false));
            assert_eq!(y, by, "output differs for {case}");
            assert_eq!(dx, bdx, "gradient differs for {case}");
            let inferred = <Flex as crate::ml::conv::ConvBackend>::max_pool(
                x.clone().inner().into_primitive().tensor(),
                k,
                stride,
                pad,
            );
            assert_eq!(
                Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(inferred)).into_data(),
                by,
                "output without autodiff differs for {case}"
            );
        }
    }
}
