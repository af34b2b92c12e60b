//! Batch normalisation with the batch's statistics (a ResNet's training step) as one op on the
//! CPU, forward and backward: Burn's broadcasting ops took more than half of a ResNet-18
//! training step in strided passes over the activations.

use std::sync::Arc;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData, TensorMetadata, TensorPrimitive};
use rayon::prelude::*;

/// The output of [`crate::ml::conv::ConvBackend::batch_norm`], and the batch's per-channel
/// mean and biased variance.
pub type Normalized<B> = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

/// Batch normalisation with Burn's ops: the default for other backends.
pub fn burn_batch_norm<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    epsilon: f64,
) -> Normalized<B> {
    let x = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(x));
    let c = x.dims()[1];
    let channel =
        |t| Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t)).reshape([1, c, 1, 1]);
    let per_channel = |t: Tensor<B, 4>| t.mean_dim(3).mean_dim(2).mean_dim(0);
    let mean = per_channel(x.clone());
    let centered = x - mean.clone();
    let var = per_channel(centered.clone().square());
    let y = centered * (channel(gamma) / var.clone().add_scalar(epsilon).sqrt()) + channel(beta);
    let flat = |t: Tensor<B, 4>| t.reshape([c]).into_primitive().tensor();
    (y.into_primitive().tensor(), flat(mean), flat(var))
}

/// A flex tensor of `shape` holding `values`.
pub(super) fn tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

fn f32s(t: FlexTensor) -> Vec<f32> {
    t.to_contiguous().storage::<f32>().to_vec()
}

/// Per-channel sums over a `[n, c, hw]` array `x` of `f(x, other)`, in f64.
fn channel_sums(
    x: &[f32],
    other: &[f32],
    [n, c, hw]: [usize; 3],
    f: impl Fn(f32, f32) -> f64 + Sync,
) -> Vec<f64> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            (0..n)
                .map(|i| {
                    let at = (i * c + ch) * hw;
                    x[at..at + hw]
                        .iter()
                        .zip(&other[at..at + hw])
                        .map(|(&a, &b)| f(a, b))
                        .sum::<f64>()
                })
                .sum()
        })
        .collect()
}

/// What the backward step needs: the normalised input, each channel's 1 / sqrt(var + eps),
/// gamma, and the input's shape.
#[derive(Debug, Clone)]
struct Saved {
    xhat: Arc<Vec<f32>>,
    inv_std: Arc<Vec<f32>>,
    gamma: Arc<Vec<f32>>,
    shape: [usize; 4],
}

/// The forward pass on flex: output, mean, variance and what the backward step needs.
fn forward(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    epsilon: f64,
) -> (Normalized<Flex>, Saved) {
    let shape = x.shape().dims::<4>();
    let [n, c, h, w] = shape;
    let dims = [n, c, h * w];
    let (x, gamma, beta) = (f32s(x), f32s(gamma), f32s(beta));
    let count = (n * h * w).max(1) as f64;
    let mean: Vec<f64> = channel_sums(&x, &x, dims, |a, _| a as f64)
        .into_iter()
        .map(|s| s / count)
        .collect();
    let mean_f32: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    // The variance from the centred values, as Burn's ops compute it.
    let mut xhat = x;
    xhat.par_chunks_mut(dims[2].max(1))
        .enumerate()
        .for_each(|(plane, v)| v.iter_mut().for_each(|v| *v -= mean_f32[plane % c]));
    let var: Vec<f32> = channel_sums(&xhat, &xhat, dims, |a, _| (a as f64) * (a as f64))
        .into_iter()
        .map(|s| (s / count) as f32)
        .collect();
    let inv_std: Vec<f32> = var
        .iter()
        .map(|&v| 1.0 / (v + epsilon as f32).sqrt())
        .collect();
    let mut y = vec![0.0f32; xhat.len()];
    xhat.par_chunks_mut(dims[2].max(1))
        .zip(y.par_chunks_mut(dims[2].max(1)))
        .enumerate()
        .for_each(|(plane, (xh, y))| {
            let ch = plane % c;
            let (s, g, b) = (inv_std[ch], gamma[ch], beta[ch]);
            for (xh, y) in xh.iter_mut().zip(y) {
                *xh *= s;
                *y = *xh * g + b;
            }
        });
    let normalized = (
        tensor(y, shape.to_vec()),
        tensor(mean_f32, vec![c]),
        tensor(var, vec![c]),
    );
    let saved = Saved {
        xhat: Arc::new(xhat),
        inv_std: Arc::new(inv_std),
        gamma: Arc::new(gamma),
        shape,
    };
    (normalized, saved)
}

/// Batch normalisation on flex without autodiff.
pub fn flex_batch_norm(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    epsilon: f64,
) -> Normalized<Flex> {
    forward(x, gamma, beta, epsilon).0
}

#[derive(Debug)]
struct NormBackward;

impl Backward<Flex, 3> for NormBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = f32s(grads.consume::<Flex>(&ops.node));
        let Saved {
            xhat,
            inv_std,
            gamma,
            shape,
        } = ops.state;
        let [n, c, h, w] = shape;
        let (hw, dims) = (h * w, [n, c, h * w]);
        let count = (n * hw).max(1) as f64;
        let dbeta = channel_sums(&dy, &dy, dims, |g, _| g as f64);
        let dgamma = channel_sums(&dy, &xhat, dims, |g, x| g as f64 * x as f64);
        let [node_x, node_gamma, node_beta] = ops.parents.map(|p| p.map(|n| n.id));
        if let Some(id) = node_x {
            // dx = gamma / std * (dy - mean(dy) - xhat * mean(dy * xhat))
            let mut dx = dy;
            dx.par_chunks_mut(hw.max(1))
                .zip(xhat.par_chunks(hw.max(1)))
                .enumerate()
                .for_each(|(plane, (dx, xh))| {
                    let ch = plane % c;
                    let scale = gamma[ch] * inv_std[ch];
                    let (mean_dy, mean_dyx) =
                        ((dbeta[ch] / count) as f32, (dgamma[ch] / count) as f32);
                    for (d, &x) in dx.iter_mut().zip(xh) {
                        *d = scale * (*d - mean_dy - x * mean_dyx);
                    }
                });
            grads.register::<Flex>(id, tensor(dx, shape.to_vec()));
        }
        let to_f32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<_>>();
        if let Some(id) = node_gamma {
            grads.register::<Flex>(id, tensor(to_f32(dgamma), vec![c]));
        }
        if let Some(id) = node_beta {
            grads.register::<Flex>(id, tensor(to_f32(dbeta), vec![c]));
        }
    }
}

/// Batch normalisation on flex under autodiff, with [`NormBackward`] as its backward step.
pub fn tracked_batch_norm<C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<Flex, C>>,
    gamma: FloatTensor<Autodiff<Flex, C>>,
    beta: FloatTensor<Autodiff<Flex, C>>,
    epsilon: f64,
) -> Normalized<Autodiff<Flex, C>> {
    let ((y, mean, var), saved) = forward(
        x.primitive.clone(),
        gamma.primitive.clone(),
        beta.primitive.clone(),
        epsilon,
    );
    let y = match NormBackward
        .prepare::<C>([x.node.clone(), gamma.node.clone(), beta.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(saved, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    let untracked = |t: FlexTensor| {
        <Autodiff<Flex, C> as burn::tensor::backend::AutodiffBackend>::from_inner(t)
    };
    (y, untracked(mean), untracked(var))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    type Ad = Autodiff<Flex>;

    /// The fused op's output, statistics and gradients against Burn's ops.
    #[test]
    fn matches_burn_s_batch_norm_and_its_gradients() {
        let device = Default::default();
        // Inputs from a seeded generator of the test's own: Burn's is shared by the tests
        // running alongside.
        let mut rng = StdRng::seed_from_u64(7);
        let mut uniform = |shape: Vec<usize>, low: f32, high: f32| {
            let values = (0..shape.iter().product::<usize>())
                .map(|_| rng.random_range(low..high))
                .collect::<Vec<f32>>();
            TensorData::new(values, shape)
        };
        for [n, c, h, w] in [[4, 3, 5, 6], [2, 5, 1, 1], [7, 2, 3, 2]] {
            let x = Tensor::<Ad, 4>::from_data(uniform(vec![n, c, h, w], -3.0, 5.0), &device)
                .require_grad();
            let gamma =
                Tensor::<Ad, 1>::from_data(uniform(vec![c], 0.5, 1.5), &device).require_grad();
            let beta =
                Tensor::<Ad, 1>::from_data(uniform(vec![c], -1.0, 1.0), &device).require_grad();
            let upstream =
                Tensor::<Ad, 4>::from_data(uniform(vec![n, c, h, w], -1.0, 1.0), &device);
            let run = |fused: bool| {
                let (xp, gp, bp) = (
                    x.clone().into_primitive().tensor(),
                    gamma.clone().into_primitive().tensor(),
                    beta.clone().into_primitive().tensor(),
                );
                let (y, mean, var) = if fused {
                    <Ad as crate::ml::conv::ConvBackend>::batch_norm(xp, gp, bp, 1e-5)
                } else {
                    burn_batch_norm::<Ad>(xp, gp, bp, 1e-5)
                };
                let y = Tensor::<Ad, 4>::from_primitive(TensorPrimitive::Float(y));
                let grads = (y.clone() * upstream.clone()).sum().backward();
                let stats = [mean, var]
                    .map(|t| Tensor::<Ad, 1>::from_primitive(TensorPrimitive::Float(t)).inner());
                let [dx, dg, db] = [
                    x.grad(&grads).unwrap().flatten::<1>(0, 3),
                    gamma.grad(&grads).unwrap(),
                    beta.grad(&grads).unwrap(),
                ];
                [
                    y.inner().flatten::<1>(0, 3),
                    stats[0].clone(),
                    stats[1].clone(),
                    dx,
                    dg,
                    db,
                ]
            };
            let (ours, burn) = (run(true), run(false));
            for (what, (a, b)) in ["output", "mean", "var", "dx", "dgamma", "dbeta"]
                .iter()
                .zip(ours.into_iter().zip(burn))
            {
                // Relative to the values' size: with two values per channel, 1/std is large.
                let scale = b.clone().abs().max().into_scalar().max(1.0);
                let diff = (a - b).abs().max().into_scalar() / scale;
                assert!(
                    diff < 1e-4,
                    "{what} differs by {diff} (relative) for {n}x{c}x{h}x{w}"
                );
            }
        }
    }
}
