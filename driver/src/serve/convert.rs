//! Request tensors (gRPC `TensorProto`s, REST JSON, `tf.train.Example` features) to model-ready
//! values, and predictions back to output tensors.

use quiver_operators::image::kernels;
use quiver_operators::ml::data::push_model_values;
use quiver_operators::ml::spec::{InputKind, InputSpec};
use serde::Serialize;

use super::ServeError;
use super::proto::tensorflow::{DataType, TensorProto, TensorShapeProto, tensor_shape_proto};
use quiver_engine::err;

/// One request input before it meets the model.
#[derive(Debug, Clone)]
pub enum InputTensor {
    /// Encoded images (PNG, JPEG, ...), one per example.
    Encoded(Vec<Vec<u8>>),
    /// Numbers, row-major, with the first dimension the examples.
    Numbers {
        /// The values.
        values: Vec<f32>,
        /// The shape; `shape[0]` is the number of examples.
        shape: Vec<usize>,
        /// The type the client sent, for logs.
        dtype: &'static str,
    },
}

/// What a request's input looked like, for the prediction log.
#[derive(Debug, Clone, Serialize)]
pub struct InputSummary {
    /// `encoded_image` or the numeric type the client sent.
    pub dtype: String,
    /// The request's shape.
    pub shape: Vec<usize>,
    /// Encoded bytes (0 for numeric inputs).
    pub encoded_bytes: usize,
    /// Mean, standard deviation, minimum and maximum of the model-ready values.
    pub mean: f32,
    /// See `mean`.
    pub std: f32,
    /// See `mean`.
    pub min: f32,
    /// See `mean`.
    pub max: f32,
}

/// Model-ready values for a forward pass.
#[derive(Debug)]
pub struct Prepared {
    /// `rows` examples laid out as the model takes them.
    pub values: Vec<f32>,
    /// The number of examples.
    pub rows: usize,
    /// For the prediction log.
    pub summary: InputSummary,
}

fn shape_text<T: ToString>(shape: &[T]) -> String {
    format!(
        "[{}]",
        shape
            .iter()
            .map(T::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The shape a request's input must have (`-1` examples).
pub fn expected_shape(spec: &InputSpec) -> Vec<i64> {
    std::iter::once(-1)
        .chain(spec.shape.iter().map(|&d| d as i64))
        .collect()
}

impl InputTensor {
    /// The number of examples.
    pub fn rows(&self) -> usize {
        match self {
            Self::Encoded(images) => images.len(),
            Self::Numbers { shape, .. } => shape.first().copied().unwrap_or(0),
        }
    }

    /// The shape the client sent.
    pub fn shape(&self) -> Vec<usize> {
        match self {
            Self::Encoded(images) => vec![images.len()],
            Self::Numbers { shape, .. } => shape.clone(),
        }
    }
}

impl InputSummary {
    /// The summary of a whole request of `shape` from the summaries of its passes.
    pub fn merge(parts: &[InputSummary], shape: Vec<usize>) -> Option<InputSummary> {
        let first = parts.first()?;
        let rows = |s: &InputSummary| s.shape.first().copied().unwrap_or(0) as f64;
        let n: f64 = parts.iter().map(rows).sum::<f64>().max(1.0);
        let mean = parts.iter().map(|s| rows(s) * s.mean as f64).sum::<f64>() / n;
        let square = parts
            .iter()
            .map(|s| rows(s) * ((s.std as f64).powi(2) + (s.mean as f64).powi(2)))
            .sum::<f64>()
            / n;
        Some(InputSummary {
            dtype: first.dtype.clone(),
            shape,
            encoded_bytes: parts.iter().map(|s| s.encoded_bytes).sum(),
            mean: mean as f32,
            std: (square - mean * mean).max(0.0).sqrt() as f32,
            min: parts.iter().map(|s| s.min).fold(f32::INFINITY, f32::min),
            max: parts
                .iter()
                .map(|s| s.max)
                .fold(f32::NEG_INFINITY, f32::max),
        })
    }
}

/// Checks the examples `range` of `input` (named `name`) against the model's input and makes
/// them model-ready; a large request is prepared and run one range at a time.
pub fn prepare(
    spec: &InputSpec,
    name: &str,
    input: &InputTensor,
    range: std::ops::Range<usize>,
) -> Result<Prepared, ServeError> {
    let bad = |why: String| err!(ServeError::InvalidArgument, "input '{name}': {why}");
    let want = spec.len();
    let (values, rows, dtype, shape, encoded_bytes) = match input {
        InputTensor::Encoded(images) => {
            let first = range.start;
            let images = &images[range];
            if spec.kind != InputKind::Image {
                return Err(bad(format!(
                    "the model takes a float tensor of shape {} and cannot decode images",
                    shape_text(&spec.shape)
                )));
            }
            let mut values = Vec::with_capacity(images.len() * want);
            let mut bytes = 0;
            for (i, encoded) in images.iter().enumerate() {
                let i = first + i;
                bytes += encoded.len();
                let image = kernels::decode(encoded)
                    .map_err(|e| bad(format!("example {i}: undecodable image: {e}")))?;
                let got = [
                    image.height as usize,
                    image.width as usize,
                    image.channels as usize,
                ];
                if got[..] != spec.shape[..] {
                    return Err(bad(format!(
                        "example {i}: the image is {}x{}x{} but the model takes {}x{}x{} \
                         (height x width x channels)",
                        got[0], got[1], got[2], spec.shape[0], spec.shape[1], spec.shape[2]
                    )));
                }
                push_model_values(&mut values, &image.data, spec);
            }
            let rows = images.len();
            (values, rows, "encoded_image".to_string(), vec![rows], bytes)
        }
        InputTensor::Numbers {
            values: raw,
            shape,
            dtype,
        } => {
            let rows = shape.first().copied().unwrap_or(0);
            let shape = shape.clone();
            let per_row: usize = shape.iter().skip(1).product();
            let fits = shape.len() >= 2
                && per_row == want
                && (shape[1..] == spec.shape[..]
                    || shape.len() == 2
                    || (spec.kind == InputKind::Image
                        && spec.shape[2] == 1
                        && shape[1..] == spec.shape[..2]));
            if !fits {
                return Err(bad(format!(
                    "shape {} does not fit the model's input {} ({} values per example{})",
                    shape_text(&shape),
                    shape_text(&expected_shape(spec)),
                    want,
                    if spec.kind == InputKind::Image {
                        ", pixel values 0-255; or send encoded images as strings"
                    } else {
                        ""
                    }
                )));
            }
            if raw.len() != rows * want {
                return Err(bad(format!(
                    "shape {} needs {} values but the tensor has {}",
                    shape_text(&shape),
                    rows * want,
                    raw.len()
                )));
            }
            let part = &raw[range.start * want..range.end * want];
            let mut values = Vec::with_capacity(part.len());
            for example in part.chunks(want) {
                push_model_values(&mut values, example, spec);
            }
            let mut shape = shape;
            shape[0] = range.len();
            (values, range.len(), dtype.to_string(), shape, 0)
        }
    };
    if rows == 0 {
        return Err(bad("the request has no examples".into()));
    }
    let n = values.len().max(1) as f64;
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = values
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    let summary = InputSummary {
        dtype,
        shape,
        encoded_bytes,
        mean: mean as f32,
        std: var.sqrt() as f32,
        min: values.iter().copied().fold(f32::INFINITY, f32::min),
        max: values.iter().copied().fold(f32::NEG_INFINITY, f32::max),
    };
    Ok(Prepared {
        values,
        rows,
        summary,
    })
}

fn dims(t: &TensorProto) -> Result<Vec<usize>, String> {
    let shape = t
        .tensor_shape
        .as_ref()
        .map(|s| s.dim.as_slice())
        .unwrap_or(&[]);
    shape
        .iter()
        .map(|d| usize::try_from(d.size).map_err(|_| format!("dimension {} is not a size", d.size)))
        .collect()
}

/// Reads a little-endian `tensor_content` as `width`-byte numbers.
fn content<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32) -> Result<Vec<f32>, String> {
    if !bytes.len().is_multiple_of(N) {
        return Err(format!(
            "tensor_content has {} bytes, not a multiple of {N}",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunk of N")))
        .collect())
}

/// A gRPC input tensor.
pub fn from_tensor_proto(name: &str, t: &TensorProto) -> Result<InputTensor, ServeError> {
    let bad = |why: String| err!(ServeError::InvalidArgument, "input '{name}': {why}");
    let shape = dims(t).map_err(bad)?;
    let dtype = DataType::try_from(t.dtype).unwrap_or(DataType::DtInvalid);
    if dtype == DataType::DtString {
        if shape.len() > 1 {
            return Err(bad(format!(
                "encoded images must be a 1-D string tensor, one image per example, not shape {}",
                shape_text(&shape)
            )));
        }
        return Ok(InputTensor::Encoded(t.string_val.clone()));
    }
    let packed = !t.tensor_content.is_empty();
    let c = &t.tensor_content;
    let (values, dtype_name) = match dtype {
        DataType::DtFloat if packed => (content::<4>(c, f32::from_le_bytes), "float32"),
        DataType::DtFloat => (Ok(t.float_val.clone()), "float32"),
        DataType::DtDouble if packed => {
            (content::<8>(c, |b| f64::from_le_bytes(b) as f32), "float64")
        }
        DataType::DtDouble => (
            Ok(t.double_val.iter().map(|&v| v as f32).collect()),
            "float64",
        ),
        DataType::DtUint8 if packed => (Ok(c.iter().map(|&v| v as f32).collect()), "uint8"),
        DataType::DtInt8 if packed => (Ok(c.iter().map(|&v| v as i8 as f32).collect()), "int8"),
        DataType::DtInt16 if packed => (content::<2>(c, |b| i16::from_le_bytes(b) as f32), "int16"),
        DataType::DtInt32 if packed => (content::<4>(c, |b| i32::from_le_bytes(b) as f32), "int32"),
        DataType::DtUint8 | DataType::DtInt8 | DataType::DtInt16 | DataType::DtInt32 => {
            (Ok(t.int_val.iter().map(|&v| v as f32).collect()), "int32")
        }
        DataType::DtInt64 if packed => (content::<8>(c, |b| i64::from_le_bytes(b) as f32), "int64"),
        DataType::DtInt64 => (Ok(t.int64_val.iter().map(|&v| v as f32).collect()), "int64"),
        other => {
            return Err(bad(format!(
                "type {} is not accepted: send DT_STRING (encoded images) or a numeric tensor \
                 (DT_FLOAT, DT_DOUBLE, DT_UINT8, DT_INT8, DT_INT16, DT_INT32, DT_INT64)",
                other.as_str_name()
            )));
        }
    };
    Ok(InputTensor::Numbers {
        values: values.map_err(bad)?,
        shape,
        dtype: dtype_name,
    })
}

/// A shape as a proto (`-1` for an unknown size).
pub fn tensor_shape(dims: &[i64]) -> TensorShapeProto {
    TensorShapeProto {
        dim: dims
            .iter()
            .map(|&size| tensor_shape_proto::Dim {
                size,
                name: String::new(),
            })
            .collect(),
        unknown_rank: false,
    }
}

/// The outputs of every prediction.
pub const OUTPUTS: [&str; 4] = ["label", "probability", "class_id", "probabilities"];

/// A dtype and shape for each output, in [`OUTPUTS`] order (`-1` examples).
pub fn output_specs(classes: usize) -> [(DataType, Vec<i64>); 4] {
    [
        (DataType::DtString, vec![-1]),
        (DataType::DtFloat, vec![-1]),
        (DataType::DtInt64, vec![-1]),
        (DataType::DtFloat, vec![-1, classes as i64]),
    ]
}

/// The best class of each example: (index, probability).
pub fn best(probs: &[Vec<f32>]) -> Vec<(usize, f32)> {
    probs
        .iter()
        .map(|p| {
            p.iter().enumerate().fold(
                (0, f32::MIN),
                |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
            )
        })
        .collect()
}

/// The output tensor `output` (one of [`OUTPUTS`]) for `probs`, typed and shaped as
/// [`output_specs`] says.
pub fn output_tensor(output: &str, probs: &[Vec<f32>], labels: &[String]) -> Option<TensorProto> {
    let index = OUTPUTS.iter().position(|o| *o == output)?;
    let (dtype, dims) = &output_specs(labels.len())[index];
    let rows = probs.len() as i64;
    let dims: Vec<i64> = dims.iter().map(|&d| if d < 0 { rows } else { d }).collect();
    let mut t = TensorProto {
        dtype: *dtype as i32,
        tensor_shape: Some(tensor_shape(&dims)),
        ..Default::default()
    };
    let best = best(probs);
    match output {
        "label" => {
            t.string_val = best
                .iter()
                .map(|&(i, _)| labels[i].as_bytes().to_vec())
                .collect();
        }
        "probability" => t.float_val = best.iter().map(|&(_, p)| p).collect(),
        "class_id" => t.int64_val = best.iter().map(|&(i, _)| i as i64).collect(),
        // "probabilities"
        _ => t.float_val = probs.iter().flatten().copied().collect(),
    }
    Some(t)
}

/// Examples given one at a time (REST instances, `Classify` examples; numeric ones with shape
/// `[1, ...]`) as one input of all of them.
pub fn stack(name: &str, parts: Vec<InputTensor>) -> Result<InputTensor, ServeError> {
    let bad = |why: String| err!(ServeError::InvalidArgument, "input '{name}': {why}");
    let rows = parts.len();
    let mut encoded = Vec::new();
    let mut values = Vec::new();
    let mut row_shape: Option<Vec<usize>> = None;
    let mut dtype = "float32";
    for (i, part) in parts.into_iter().enumerate() {
        match part {
            InputTensor::Encoded(mut images) if row_shape.is_none() => encoded.append(&mut images),
            InputTensor::Numbers {
                values: v,
                shape,
                dtype: d,
            } if encoded.is_empty() => {
                let row = shape[1..].to_vec();
                match &row_shape {
                    Some(first) if *first != row => {
                        return Err(bad(format!(
                            "example {i} has shape {} but example 0 has {}",
                            shape_text(&row),
                            shape_text(first)
                        )));
                    }
                    _ => row_shape = Some(row),
                }
                values.extend(v);
                dtype = d;
            }
            _ => {
                return Err(bad(format!(
                    "example {i} mixes encoded images and numbers; send one kind per request"
                )));
            }
        }
    }
    Ok(match row_shape {
        Some(row) => InputTensor::Numbers {
            values,
            shape: std::iter::once(rows).chain(row).collect(),
            dtype,
        },
        None => InputTensor::Encoded(encoded),
    })
}

/// Class indices and probabilities, most probable first.
pub fn ranked(probs: &[f32]) -> Vec<(usize, f32)> {
    let mut ranked: Vec<(usize, f32)> = probs.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(spec: &InputSpec, input: InputTensor) -> Result<Prepared, ServeError> {
        prepare(spec, "image", &input, 0..input.rows())
    }

    #[test]
    fn large_requests_are_prepared_in_ranges_with_one_summary() {
        let flat = spec(InputKind::Tensor, vec![2]);
        let input = InputTensor::Numbers {
            values: (0..10).map(|v| v as f32).collect(),
            shape: vec![5, 2],
            dtype: "float32",
        };
        let all = whole(
            &flat,
            InputTensor::Numbers {
                values: (0..10).map(|v| v as f32).collect(),
                shape: vec![5, 2],
                dtype: "float32",
            },
        )
        .unwrap();
        let parts: Vec<Prepared> = [0..2, 2..4, 4..5]
            .into_iter()
            .map(|r| prepare(&flat, "x", &input, r).unwrap())
            .collect();
        let values: Vec<f32> = parts.iter().flat_map(|p| p.values.clone()).collect();
        assert_eq!(values, all.values);
        let summaries: Vec<InputSummary> = parts.iter().map(|p| p.summary.clone()).collect();
        let merged = InputSummary::merge(&summaries, input.shape()).unwrap();
        assert_eq!(merged.shape, vec![5, 2]);
        for (a, b) in [
            (merged.mean, all.summary.mean),
            (merged.std, all.summary.std),
            (merged.min, all.summary.min),
            (merged.max, all.summary.max),
        ] {
            assert!((a - b).abs() < 1e-4, "{merged:?} vs {:?}", all.summary);
        }
    }

    fn spec(kind: InputKind, shape: Vec<usize>) -> InputSpec {
        InputSpec {
            column: "image".into(),
            kind,
            shape,
            scale: 1.0 / 255.0,
            normalize: None,
        }
    }

    #[test]
    fn numeric_inputs_are_checked_and_reordered() {
        let rgb = spec(InputKind::Image, vec![1, 2, 3]);
        let input = InputTensor::Numbers {
            values: (0..12).map(|v| v as f32 * 255.0).collect(),
            shape: vec![2, 1, 2, 3],
            dtype: "float32",
        };
        let p = whole(&rgb, input).unwrap();
        assert_eq!(p.rows, 2);
        // HWC [[0,1,2],[3,4,5]] becomes CHW [0,3,1,4,2,5], scaled by 1/255.
        let want = [0.0, 3.0, 1.0, 4.0, 2.0, 5.0];
        assert!(
            p.values.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5),
            "{:?}",
            &p.values[..6]
        );
        let wrong = InputTensor::Numbers {
            values: vec![0.0; 8],
            shape: vec![2, 4],
            dtype: "float32",
        };
        let e = whole(&rgb, wrong).unwrap_err().to_string();
        assert!(e.contains("input 'image': shape [2, 4]"), "{e}");
        let short = InputTensor::Numbers {
            values: vec![0.0; 5],
            shape: vec![1, 6],
            dtype: "float32",
        };
        let e = whole(&rgb, short).unwrap_err().to_string();
        assert!(e.contains("needs 6 values but the tensor has 5"), "{e}");
    }

    #[test]
    fn undecodable_and_wrong_size_images_name_the_example() {
        let gray = spec(InputKind::Image, vec![2, 2, 1]);
        let png = kernels::encode(
            quiver_engine::image::ImageRef {
                width: 3,
                height: 2,
                channels: 1,
                data: &[0, 1, 2, 3, 4, 5],
            },
            kernels::EncodeFormat::Png,
        )
        .unwrap();
        let e = whole(&gray, InputTensor::Encoded(vec![png]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("example 0: the image is 2x3x1"), "{e}");
        let e = whole(&gray, InputTensor::Encoded(vec![b"nope".to_vec()]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("example 0: undecodable image"), "{e}");
    }
}
