//! Loads a ResNet from a safetensors file in torchvision's layout and prints its logits for a
//! batch of images, in inference mode and in training mode, with the running averages that
//! the training-mode pass computed (the reference tests compare them with onnxruntime):
//!
//! ```text
//! cargo run --example resnet_logits -- DEPTH CLASSES WEIGHTS.safetensors IMAGES.f32 N C H W
//! ```
//!
//! `IMAGES.f32` holds `N*C*H*W` little-endian floats, NCHW. Prints one JSON object:
//! `{"inference": [[..]], "training": [[..]], "running": {"bn1.running_mean": [..], ..}}`.

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use quiver_operators::ml::model::Classifier;
use quiver_operators::ml::spec::{Architecture, InputKind, InputSpec};
use quiver_operators::ml::train::load_weights;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [depth, classes, weights, images, n, c, h, w] = &args[..] else {
        eprintln!("usage: resnet_logits DEPTH CLASSES WEIGHTS IMAGES N C H W");
        std::process::exit(2);
    };
    let number = |s: &String| -> usize { s.parse().expect("a whole number") };
    let shape = [number(n), number(c), number(h), number(w)];
    let input = InputSpec {
        column: "image".into(),
        kind: InputKind::Tensor,
        shape: vec![shape[2], shape[3], shape[1]],
        scale: 1.0,
        normalize: None,
    };
    let architecture = Architecture::ResnetClassifier {
        depth: number(depth),
    };
    let device = Default::default();
    let model = Classifier::<Flex>::new(
        &architecture,
        &input,
        number(classes),
        &device,
        0,
        Default::default(),
    )
    .and_then(|m| {
        load_weights(
            m,
            std::fs::read(weights).expect("the weights file"),
            weights,
        )
    })
    .unwrap_or_else(|e| fail(e));
    let values = floats(&std::fs::read(images).expect("the images file"));
    let x = Tensor::<Flex, 4>::from_data(TensorData::new(values, shape), &device);
    let rows = |t: Tensor<Flex, 2>| -> Vec<Vec<f32>> {
        let [_, k] = t.dims();
        let flat: Vec<f32> = t.into_data().to_vec().expect("f32 logits");
        flat.chunks(k).map(<[f32]>::to_vec).collect()
    };
    let inference = rows(model.forward(x.clone()));
    let (training, running) = model.forward_train(x, &mut StdRng::seed_from_u64(0));
    let trained = model.with_running(running);
    let names = quiver_operators::ml::train::weights_bytes(&trained)
        .and_then(|bytes| running_of(&bytes))
        .unwrap_or_else(|e| fail(e));
    println!(
        "{}",
        serde_json::json!({
            "inference": inference,
            "training": rows(training),
            "running": names,
        })
    );
}

/// The running averages in safetensors `bytes`, by name.
fn running_of(
    bytes: &[u8],
) -> Result<serde_json::Map<String, serde_json::Value>, quiver_operators::ml::MlError> {
    let tensors = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| quiver_operators::ml::MlError::Checkpoint(e.to_string()))?;
    Ok(tensors
        .tensors()
        .into_iter()
        .filter(|(name, _)| name.contains("running_"))
        .map(|(name, view)| (name, serde_json::json!(floats(view.data()))))
        .collect())
}

/// Little-endian f32 values.
fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn fail(error: impl std::fmt::Display) -> ! {
    eprintln!("resnet_logits: {error}");
    std::process::exit(1)
}
