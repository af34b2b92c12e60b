//! Adam and AdamW with Burn's math and state (so checkpoints hold the same records), updating
//! each parameter in one pass over its values on the CPU, where Burn's Adam makes about a dozen
//! passes (one per tensor op). Other backends run Burn's Adam.

use burn::backend::flex::{Flex, FlexTensor};
use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{
    Adam, AdamConfig, AdamState, AdaptiveMomentumState, LearningRate, SimpleOptimizer,
};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorPrimitive};
use rayon::prelude::*;

/// Adam's hyperparameters, as Burn's `AdamConfig` defaults them (beta 0.9 and 0.999).
#[derive(Clone)]
pub struct FastAdam {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    /// Added to the gradients times the weights (an L2 penalty).
    l2: f32,
    /// The weights shrink by the learning rate times this before each step (AdamW).
    decoupled: f32,
    /// Burn's Adam with the same hyperparameters (the L2 penalty too), for backends without a
    /// fused step.
    burn: Adam,
}

impl FastAdam {
    /// Adam with `epsilon` added to the root of the second moment.
    pub fn new(epsilon: f32) -> Self {
        Self::with_decay(epsilon, 0.0, 0.0)
    }

    /// Adam with an L2 penalty `l2` on the gradients and a `decoupled` weight decay (AdamW's).
    pub fn with_decay(epsilon: f32, l2: f32, decoupled: f32) -> Self {
        let decay = (l2 > 0.0).then(|| WeightDecayConfig::new(l2));
        Self {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon,
            l2,
            decoupled,
            burn: AdamConfig::new()
                .with_epsilon(epsilon)
                .with_weight_decay(decay)
                .build(),
        }
    }

    /// Burn's step, after AdamW's decay of the weights as Burn's AdamW applies it.
    fn burn_step<B: Backend, const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<AdamState<B, D>>,
    ) -> (Tensor<B, D>, Option<AdamState<B, D>>) {
        let rate = lr * self.decoupled as f64;
        let tensor = if rate == 0.0 {
            tensor
        } else {
            tensor.mul_scalar(1.0 - rate)
        };
        self.burn.step(lr, tensor, grad, state)
    }

    /// The optimizer for a module on an autodiff backend.
    pub fn init<B, M>(self) -> OptimizerAdaptor<Self, M, B>
    where
        B: AutodiffBackend<InnerBackend: AdamBackend>,
        M: AutodiffModule<B>,
    {
        OptimizerAdaptor::from(self)
    }
}

/// Backends with an Adam step of their own; the default is Burn's.
pub trait AdamBackend: Backend {
    /// One Adam step of `tensor` with `grad`: the new value and state.
    fn adam_step<const D: usize>(
        adam: &FastAdam,
        lr: LearningRate,
        tensor: Tensor<Self, D>,
        grad: Tensor<Self, D>,
        state: Option<AdamState<Self, D>>,
    ) -> (Tensor<Self, D>, Option<AdamState<Self, D>>) {
        adam.burn_step(lr, tensor, grad, state)
    }
}

impl<B: AdamBackend> SimpleOptimizer<B> for FastAdam {
    type State<const D: usize> = AdamState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        B::adam_step(self, lr, tensor, grad, state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        <Adam as SimpleOptimizer<B>>::to_device(state, device)
    }
}

/// A tensor's values as a flex tensor whose storage is exactly its values (flex copies only
/// views; the moved-in original is dropped, so the result stays uniquely owned).
fn contiguous<const D: usize>(tensor: Tensor<Flex, D>) -> FlexTensor {
    tensor.into_primitive().tensor().to_contiguous()
}

fn wrap<const D: usize>(t: FlexTensor) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

impl AdamBackend for Flex {
    fn adam_step<const D: usize>(
        adam: &FastAdam,
        lr: LearningRate,
        tensor: Tensor<Self, D>,
        grad: Tensor<Self, D>,
        state: Option<AdamState<Self, D>>,
    ) -> (Tensor<Self, D>, Option<AdamState<Self, D>>) {
        if tensor.dtype() != burn::tensor::DType::F32 {
            return adam.burn_step(lr, tensor, grad, state);
        }
        let (time, moments) = match state {
            Some(s) => (
                s.momentum.time + 1,
                (
                    contiguous(s.momentum.moment_1),
                    contiguous(s.momentum.moment_2),
                ),
            ),
            // Burn's first step starts both moments from zero too.
            None => (
                1,
                (contiguous(grad.zeros_like()), contiguous(grad.zeros_like())),
            ),
        };
        let (mut param, grad, (mut m1, mut m2)) = (contiguous(tensor), contiguous(grad), moments);
        let (b1, b2, l2) = (adam.beta_1, adam.beta_2, adam.l2);
        let decay = (1.0 - lr * adam.decoupled as f64) as f32;
        let lr = lr as f32;
        // The same f32 arithmetic, in the same order, as Burn's AdaptiveMomentum.
        let bias_correction2_sqrt = (1.0 - b2.powi(time as i32)).sqrt();
        let combined = bias_correction2_sqrt / (1.0 - b1.powi(time as i32));
        let epsilon = adam.epsilon * bias_correction2_sqrt;
        let (p, g, m1s, m2s): (&mut [f32], &[f32], &mut [f32], &mut [f32]) = (
            param.storage_mut(),
            grad.storage(),
            m1.storage_mut(),
            m2.storage_mut(),
        );
        const CHUNK: usize = 1 << 14;
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m1s.par_chunks_mut(CHUNK).zip(m2s.par_chunks_mut(CHUNK)))
            .for_each(|((p, g), (m1, m2))| {
                // Equal lengths up front: an indexed loop the compiler vectorises.
                let n = p.len();
                let (g, m1, m2) = (&g[..n], &mut m1[..n], &mut m2[..n]);
                for i in 0..n {
                    // Without decay, `+ p * 0` and `* 1` leave the values as they are.
                    let g = p[i] * l2 + g[i];
                    m1[i] = m1[i] * b1 + g * (1.0 - b1);
                    m2[i] = m2[i] * b2 + (g * g) * (1.0 - b2);
                    p[i] = p[i] * decay - (m1[i] * combined / (m2[i].sqrt() + epsilon)) * lr;
                }
            });
        let momentum = AdaptiveMomentumState {
            time,
            moment_1: wrap(m1),
            moment_2: wrap(m2),
            max_moment_2: None,
        };
        (wrap(param), Some(AdamState::new(momentum)))
    }
}

#[cfg(feature = "cuda")]
impl AdamBackend for burn::backend::Cuda {}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::AdamWConfig;
    use burn::tensor::{Distribution, Tolerance};

    /// Five steps of the fused update against Burn's Adam (with its L2 penalty) and AdamW,
    /// from the same start, at a changing rate.
    #[test]
    fn matches_burns_adam_and_adamw() {
        let device = Default::default();
        for (l2, decoupled) in [(0.0, 0.0), (0.05, 0.0), (0.0, 0.3)] {
            let start =
                Tensor::<Flex, 2>::random([37, 11], Distribution::Normal(0.0, 1.0), &device);
            let adam = FastAdam::with_decay(1e-7, l2, decoupled);
            let adamw = AdamWConfig::new()
                .with_epsilon(1e-7)
                .with_weight_decay(decoupled)
                .build();
            let (mut ours, mut theirs, mut generic) = (start.clone(), start.clone(), start);
            let mut generic_state = None;
            let (mut our_state, mut their_state, mut their_w_state) = (None, None, None);
            for step in 0..5 {
                let lr = 0.01 * (step + 1) as f64;
                let grad =
                    Tensor::<Flex, 2>::random([37, 11], Distribution::Normal(0.0, 1.0), &device);
                (ours, our_state) = Flex::adam_step(&adam, lr, ours, grad.clone(), our_state);
                // Other backends' path, here on flex too.
                (generic, generic_state) = adam.burn_step(lr, generic, grad.clone(), generic_state);
                if decoupled > 0.0 {
                    (theirs, their_w_state) = adamw.step(lr, theirs, grad, their_w_state);
                    their_state = their_w_state.clone().map(|s| AdamState::new(s.momentum));
                } else {
                    (theirs, their_state) = adam.burn.step(lr, theirs, grad, their_state);
                }
            }
            ours.to_data()
                .assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-6));
            generic
                .to_data()
                .assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-6));
            let (a, b) = (our_state.unwrap().momentum, their_state.unwrap().momentum);
            assert_eq!(a.time, b.time);
            a.moment_2
                .to_data()
                .assert_approx_eq::<f32>(&b.moment_2.to_data(), Tolerance::absolute(1e-6));
        }
    }
}
