//! Evaluation: loss, accuracy, per-class precision/recall/F1 and the confusion matrix of a
//! model over any query.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use datafusion::dataframe::DataFrame;
use serde::{Deserialize, Serialize};

use super::MlError;
use super::conv::ConvBackend;
use super::data::{BatchStream, batch_dims};
use super::model::Classifier;
use super::spec::{InputSpec, LabelMap};
use quiver_engine::err;

/// Precision, recall and F1 of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// The class's label.
    pub label: String,
    /// Of the examples predicted as this class, the fraction that are.
    pub precision: f64,
    /// Of the examples of this class, the fraction predicted as it.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Examples of this class.
    pub support: u64,
}

/// The result of evaluating a model on a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Mean cross-entropy loss.
    pub loss: f64,
    /// Fraction of examples classified correctly.
    pub accuracy: f64,
    /// Examples evaluated.
    pub examples: u64,
    /// Metrics of each class, in label-map order.
    pub classes: Vec<ClassMetrics>,
    /// `confusion[actual][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

/// Evaluates `model` (in inference mode) over every row of `frame`.
pub async fn evaluate_model<B: ConvBackend>(
    model: &Classifier<B>,
    frame: &DataFrame,
    input: &InputSpec,
    labels: &LabelMap,
    batch_size: usize,
) -> Result<Evaluation, MlError> {
    let device = model.devices().into_iter().next().unwrap_or_default();
    let classes = labels.labels.len();
    let [c, h, w] = batch_dims(input);
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut confusion = vec![vec![0u64; classes]; classes];
    let (mut loss_sum, mut examples) = (0.0f64, 0u64);
    let mut batches = BatchStream::start(frame, input, labels, batch_size, None).await?;
    while let Some(batch) = batches.next_batch().await? {
        let n = batch.len;
        let actual = batch.labels.clone();
        let x = Tensor::<B, 4>::from_data(TensorData::new(batch.features, [n, c, h, w]), &device);
        let y = Tensor::<B, 1, Int>::from_data(TensorData::new(batch.labels, [n]), &device);
        let (loss, predicted) = tokio::task::block_in_place(|| {
            let logits = model.forward(x);
            let loss = loss_fn
                .forward(logits.clone(), y)
                .into_scalar()
                .elem::<f64>();
            let predicted = logits.argmax(1).into_data().convert::<i64>();
            (loss, predicted)
        });
        let predicted = predicted
            .into_vec::<i64>()
            .map_err(|e| err!(MlError::Training, "{e:?}"))?;
        for (a, p) in actual.iter().zip(predicted) {
            confusion[*a as usize][p as usize] += 1;
        }
        loss_sum += loss * n as f64;
        examples += n as u64;
    }
    if examples == 0 {
        return Err(MlError::Input(
            "the evaluation query returned no rows".into(),
        ));
    }
    let correct: u64 = (0..classes).map(|i| confusion[i][i]).sum();
    let classes = (0..classes)
        .map(|k| {
            let tp = confusion[k][k] as f64;
            let predicted: u64 = confusion.iter().map(|row| row[k]).sum();
            let support: u64 = confusion[k].iter().sum();
            let precision = if predicted > 0 {
                tp / predicted as f64
            } else {
                0.0
            };
            let recall = if support > 0 {
                tp / support as f64
            } else {
                0.0
            };
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            ClassMetrics {
                label: labels.labels[k].clone(),
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    Ok(Evaluation {
        loss: loss_sum / examples as f64,
        accuracy: correct as f64 / examples as f64,
        examples,
        classes,
        confusion,
    })
}
