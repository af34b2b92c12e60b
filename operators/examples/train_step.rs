//! Times training steps (forward, backward, Adam) of the benchmark DNN, CNN and ResNets on the
//! CPU, on random images (28x28x1 unless given): the kernels alone, without Quiver's input
//! pipeline, for profiling (`perf record`) next to `benches/train/run.sh`.
//!
//!     cargo run --example train_step -- [dnn|cnn|resnet18|resnet50] [batch] [steps] [side] [channels]

use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::{Int, Tensor, TensorData};
use quiver_operators::ml::adam::FastAdam;
use quiver_operators::ml::model::Classifier;
use quiver_operators::ml::spec::{Activation, Architecture, InputKind, InputSpec};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type B = Autodiff<Flex>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model_type = args.first().map_or("cnn", String::as_str);
    let batch: usize = args.get(1).map_or(64, |b| b.parse().expect("batch size"));
    let steps: usize = args.get(2).map_or(50, |s| s.parse().expect("step count"));
    let side: usize = args.get(3).map_or(28, |s| s.parse().expect("image side"));
    let channels: usize = args.get(4).map_or(1, |s| s.parse().expect("channels"));
    let architecture = match model_type {
        "dnn" => Architecture::DnnClassifier {
            hidden_units: vec![512, 256, 128],
            activation: Activation::Relu,
            dropout: 0.2,
        },
        "cnn" => Architecture::CnnClassifier {
            conv_filters: vec![32, 64],
            kernel_size: 3,
            dense_units: vec![128],
            activation: Activation::Relu,
            dropout: 0.2,
        },
        "resnet18" | "resnet34" | "resnet50" => Architecture::ResnetClassifier {
            depth: model_type[6..].parse().expect("a depth"),
        },
        _ if model_type.starts_with("conv") => Architecture::DnnClassifier {
            hidden_units: vec![],
            activation: Activation::Relu,
            dropout: 0.0,
        },
        other => panic!("model type '{other}' is not dnn, cnn or resnet18/34/50"),
    };
    let input = InputSpec {
        column: "image".into(),
        kind: InputKind::Image,
        shape: vec![side, side, channels],
        scale: 1.0 / 255.0,
        normalize: None,
    };
    let device = Default::default();
    let mut model =
        Classifier::<B>::new(&architecture, &input, 10, &device, 42, Default::default())
            .expect("a valid model");
    let mut optimizer = FastAdam::new(1e-7).init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut rng = StdRng::seed_from_u64(7);
    let shape = [batch, channels, side, side];
    let warmup = 3;
    let mut started = Instant::now();
    for step in 0..warmup + steps {
        if step == warmup {
            started = Instant::now();
        }
        let x = Tensor::<B, 4>::from_data(random_images(&mut rng, shape), &device);
        let labels: Vec<i64> = (0..batch).map(|_| rng.random_range(0..10)).collect();
        let y = Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [batch]), &device);
        let (logits, running) = model.forward_train(x, &mut rng);
        let loss = loss_fn.forward(logits, y);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(0.001, model, grads).with_running(running);
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{model_type} batch {batch}: {:.2} ms/step, {:.1} images/s ({} threads)",
        seconds * 1e3 / steps as f64,
        (steps * batch) as f64 / seconds,
        rayon::current_num_threads()
    );
    // Inference (as predict() runs it: no autodiff, batch norm on running averages).
    let model = model.valid();
    let x = Tensor::<Flex, 4>::from_data(random_images(&mut rng, shape), &device);
    let mut started = Instant::now();
    for step in 0..warmup + steps {
        if step == warmup {
            started = Instant::now();
        }
        model.forward(x.clone()).into_data();
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{model_type} inference batch {batch}: {:.1} images/s",
        (steps * batch) as f64 / seconds
    );
}

/// Uniform random pixels in [0, 1) for a batch of `shape` (NCHW).
fn random_images(rng: &mut StdRng, shape: [usize; 4]) -> TensorData {
    let pixels = (0..shape.iter().product()).map(|_| rng.random()).collect();
    TensorData::new::<f32, _>(pixels, shape)
}
