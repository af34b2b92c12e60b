//! Arrow record batches ↔ `tf.train.Example`s, and schema inference from Examples. The mapping
//! is documented on the module [`crate::tfrecord`].

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, Float32Builder, Int64Builder, ListBuilder,
    RecordBatch, RecordBatchOptions,
};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, Float32Type, Int64Type, Schema, SchemaRef};
use datafusion::common::{exec_err, plan_err};
use datafusion::error::Result;
use prost::Message;
use quiver_engine::image::{ImageArray, is_image_type};

use super::example::{BytesList, Example, Feature, Features, FloatList, Int64List, feature::Kind};
use crate::image::kernels::{self, EncodeFormat};
use datafusion::common::exec_datafusion_err;

/// How image struct columns are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageEncoding {
    /// Lossless PNG (the default).
    #[default]
    Png,
    /// JPEG at quality 90.
    Jpeg,
    /// The raw HWC bytes.
    Raw,
}

impl ImageEncoding {
    /// Parses `png`, `jpeg`/`jpg` or `raw`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "png" => Ok(Self::Png),
            "jpeg" | "jpg" => Ok(Self::Jpeg),
            "raw" => Ok(Self::Raw),
            other => plan_err!(
                "TFRECORD option image_format: expected 'png', 'jpeg' or 'raw', got '{other}'"
            ),
        }
    }
}

/// The three feature kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FeatureKind {
    Bytes,
    Float,
    Int64,
}

impl FeatureKind {
    fn of(kind: &Kind) -> Self {
        match kind {
            Kind::BytesList(_) => Self::Bytes,
            Kind::FloatList(_) => Self::Float,
            Kind::Int64List(_) => Self::Int64,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Bytes => "bytes_list",
            Self::Float => "float_list",
            Self::Int64 => "int64_list",
        }
    }

    /// The kind that stores `dt` (a scalar type), if any.
    fn for_type(dt: &DataType) -> Option<Self> {
        match dt {
            DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_)
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View => Some(Self::Bytes),
            DataType::Float16 | DataType::Float32 | DataType::Float64 => Some(Self::Float),
            dt if dt.is_integer() || dt == &DataType::Boolean => Some(Self::Int64),
            _ => None,
        }
    }

    fn natural_type(self) -> DataType {
        match self {
            Self::Bytes => DataType::Binary,
            Self::Float => DataType::Float32,
            Self::Int64 => DataType::Int64,
        }
    }
}

fn strict() -> CastOptions<'static> {
    CastOptions {
        safe: false,
        ..Default::default()
    }
}

/// How one column is turned into features.
enum ColumnWriter<'a> {
    Scalar(FeatureKind, ArrayRef),
    List(FeatureKind, ArrayRef),
    Image(ImageArray<'a>),
}

fn list_inner(dt: &DataType) -> Option<&DataType> {
    match dt {
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::FixedSizeList(f, _)
        | DataType::ListView(f) => Some(f.data_type()),
        _ => None,
    }
}

fn column_writer<'a>(name: &str, array: &'a ArrayRef) -> Result<ColumnWriter<'a>> {
    let dt = array.data_type();
    if is_image_type(dt) {
        return Ok(ColumnWriter::Image(ImageArray::try_new(array.as_ref())?));
    }
    if let Some(kind) = FeatureKind::for_type(dt) {
        return Ok(ColumnWriter::Scalar(
            kind,
            cast_with_options(array, &kind.natural_type(), &strict())?,
        ));
    }
    if let Some(kind) = list_inner(dt).and_then(FeatureKind::for_type) {
        let target = DataType::List(Arc::new(Field::new_list_field(kind.natural_type(), true)));
        return Ok(ColumnWriter::List(
            kind,
            cast_with_options(array, &target, &strict())?,
        ));
    }
    plan_err!(
        "column '{name}' of type {dt} has no TFRecord feature mapping (see the TFRECORD format docs)"
    )
}

fn feature_from(kind: FeatureKind, values: &dyn Array) -> Feature {
    let kind = match kind {
        FeatureKind::Bytes => Kind::BytesList(BytesList {
            value: values
                .as_binary::<i32>()
                .iter()
                .map(|v| v.unwrap_or_default().to_vec())
                .collect(),
        }),
        FeatureKind::Float => Kind::FloatList(FloatList {
            value: values
                .as_primitive::<Float32Type>()
                .iter()
                .map(|v| v.unwrap_or(f32::NAN))
                .collect(),
        }),
        FeatureKind::Int64 => Kind::Int64List(Int64List {
            value: values
                .as_primitive::<Int64Type>()
                .iter()
                .map(|v| v.unwrap_or(0))
                .collect(),
        }),
    };
    Feature { kind: Some(kind) }
}

fn int_feature(v: i64) -> Feature {
    Feature {
        kind: Some(Kind::Int64List(Int64List { value: vec![v] })),
    }
}

/// Serializes each row of `batch` as a `tf.train.Example`.
pub fn batch_to_examples(batch: &RecordBatch, images: ImageEncoding) -> Result<Vec<Vec<u8>>> {
    let schema = batch.schema();
    let writers = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, a)| Ok((f.name().as_str(), column_writer(f.name(), a)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let mut features = BTreeMap::new();
        for (name, writer) in &writers {
            match writer {
                ColumnWriter::Scalar(kind, array) => {
                    if array.is_valid(row) {
                        features
                            .insert(name.to_string(), feature_from(*kind, &array.slice(row, 1)));
                    }
                }
                ColumnWriter::List(kind, array) => {
                    if array.is_valid(row) {
                        let list = array.as_list::<i32>();
                        features.insert(
                            name.to_string(),
                            feature_from(*kind, list.value(row).as_ref()),
                        );
                    }
                }
                ColumnWriter::Image(images_array) => {
                    let Some(img) = images_array.get(row)? else {
                        continue;
                    };
                    let bytes = match images {
                        ImageEncoding::Raw => Ok(img.data.to_vec()),
                        ImageEncoding::Png => kernels::encode(img, EncodeFormat::Png),
                        ImageEncoding::Jpeg => kernels::encode(img, EncodeFormat::Jpeg(90)),
                    }
                    .map_err(|e| exec_datafusion_err!("column '{name}', row {row}: {e}"))?;
                    features.insert(
                        name.to_string(),
                        Feature {
                            kind: Some(Kind::BytesList(BytesList { value: vec![bytes] })),
                        },
                    );
                    features.insert(format!("{name}/height"), int_feature(img.height as i64));
                    features.insert(format!("{name}/width"), int_feature(img.width as i64));
                    features.insert(format!("{name}/channels"), int_feature(img.channels as i64));
                }
            }
        }
        let example = Example {
            features: Some(Features { feature: features }),
        };
        out.push(example.encode_to_vec());
    }
    Ok(out)
}

/// What was seen of one feature while inferring a schema.
struct Seen {
    kind: FeatureKind,
    scalar: bool,
    text: bool,
}

fn is_text(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes)
        .is_ok_and(|s| s.chars().all(|c| !c.is_control() || c.is_whitespace()))
}

/// Infers a schema from Examples: columns sorted by feature name, all nullable.
pub fn infer_schema<'a>(examples: impl IntoIterator<Item = &'a Example>) -> Result<Schema> {
    let mut seen: BTreeMap<&str, Seen> = BTreeMap::new();
    for example in examples {
        let Some(features) = &example.features else {
            continue;
        };
        for (name, feature) in &features.feature {
            let Some(kind) = &feature.kind else { continue };
            let (len, text) = match kind {
                Kind::BytesList(l) => (l.value.len(), l.value.iter().all(|v| is_text(v))),
                Kind::FloatList(l) => (l.value.len(), false),
                Kind::Int64List(l) => (l.value.len(), false),
            };
            let k = FeatureKind::of(kind);
            let entry = seen.entry(name).or_insert(Seen {
                kind: k,
                scalar: true,
                text: true,
            });
            if entry.kind != k {
                return plan_err!(
                    "feature '{name}' is a {} in one record and a {} in another",
                    entry.kind.name(),
                    k.name()
                );
            }
            entry.scalar &= len == 1;
            entry.text &= text;
        }
    }
    let fields: Vec<Field> = seen
        .into_iter()
        .map(|(name, s)| {
            let scalar = match s.kind {
                FeatureKind::Bytes if s.text => DataType::Utf8,
                k => k.natural_type(),
            };
            let dt = if s.scalar {
                scalar
            } else {
                DataType::List(Arc::new(Field::new_list_field(scalar, true)))
            };
            Field::new(name, dt, true)
        })
        .collect();
    Ok(Schema::new(fields))
}

/// Builds one column of `examples` as the natural type of `kind`.
fn build_column(
    name: &str,
    kind: FeatureKind,
    list: bool,
    examples: &[Example],
    first_record: u64,
) -> Result<ArrayRef> {
    let values_of = |i: usize| -> Result<Option<&Kind>> {
        let Some(feature) = examples[i]
            .features
            .as_ref()
            .and_then(|f| f.feature.get(name))
        else {
            return Ok(None);
        };
        match &feature.kind {
            Some(k) if FeatureKind::of(k) == kind => Ok(Some(k)),
            Some(k) => exec_err!(
                "record {}: feature '{name}' is a {} but the column expects a {}",
                first_record + i as u64,
                FeatureKind::of(k).name(),
                kind.name()
            ),
            None => Ok(None),
        }
    };
    let scalar_check = |i: usize, len: usize| -> Result<()> {
        if len > 1 {
            return exec_err!(
                "record {}: feature '{name}' has {len} values but column '{name}' is not a list",
                first_record + i as u64
            );
        }
        Ok(())
    };
    macro_rules! build {
        ($builder:expr, $variant:ident, $append:expr) => {{
            if list {
                let mut b = ListBuilder::new($builder);
                for i in 0..examples.len() {
                    match values_of(i)? {
                        Some(Kind::$variant(l)) => {
                            for v in &l.value {
                                $append(b.values(), v);
                            }
                            b.append(true);
                        }
                        _ => b.append(false),
                    }
                }
                Arc::new(b.finish()) as ArrayRef
            } else {
                let mut b = $builder;
                for i in 0..examples.len() {
                    match values_of(i)? {
                        Some(Kind::$variant(l)) if !l.value.is_empty() => {
                            scalar_check(i, l.value.len())?;
                            $append(&mut b, &l.value[0]);
                        }
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish()) as ArrayRef
            }
        }};
    }
    Ok(match kind {
        FeatureKind::Bytes => build!(
            BinaryBuilder::new(),
            BytesList,
            |b: &mut BinaryBuilder, v: &Vec<u8>| b.append_value(v)
        ),
        FeatureKind::Float => build!(
            Float32Builder::new(),
            FloatList,
            |b: &mut Float32Builder, v: &f32| b.append_value(*v)
        ),
        FeatureKind::Int64 => build!(
            Int64Builder::new(),
            Int64List,
            |b: &mut Int64Builder, v: &i64| b.append_value(*v)
        ),
    })
}

/// Builds a batch of `schema` from `examples`; `first_record` numbers records in errors.
pub fn examples_to_batch(
    examples: &[Example],
    schema: &SchemaRef,
    first_record: u64,
) -> Result<RecordBatch> {
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let dt = field.data_type();
        let (kind, list) = match (
            FeatureKind::for_type(dt),
            list_inner(dt).and_then(FeatureKind::for_type),
        ) {
            (Some(k), _) => (k, false),
            (None, Some(k)) => (k, true),
            _ => {
                return plan_err!(
                    "column '{}' of type {dt} cannot be read from TFRecord features",
                    field.name()
                );
            }
        };
        let natural = build_column(field.name(), kind, list, examples, first_record)?;
        columns.push(cast_with_options(&natural, dt, &strict()).map_err(|e| {
            exec_datafusion_err!(
                "feature '{}' does not fit column type {dt}: {e}",
                field.name()
            )
        })?);
    }
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(examples.len())),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        BooleanArray, Float64Array, Int32Array, StringArray, UInt8Array,
    };
    use datafusion::arrow::datatypes::Int32Type;
    use quiver_engine::image::{ImageArrayBuilder, ImageRef};

    #[test]
    fn round_trip_scalars_lists_and_nulls() {
        let list =
            datafusion::arrow::array::ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
                Some(vec![Some(1), Some(2), Some(3)]),
                Some(vec![]),
                None,
            ]);
        let batch = RecordBatch::try_from_iter(vec![
            (
                "label",
                Arc::new(StringArray::from(vec![Some("hot_dog"), None, Some("x")])) as ArrayRef,
            ),
            ("n", Arc::new(Int32Array::from(vec![1, -2, 3]))),
            ("f", Arc::new(Float64Array::from(vec![0.5, 1.5, 2.5]))),
            ("b", Arc::new(BooleanArray::from(vec![true, false, true]))),
            ("u", Arc::new(UInt8Array::from(vec![255, 0, 1]))),
            ("l", Arc::new(list)),
        ])
        .unwrap();
        let records = batch_to_examples(&batch, ImageEncoding::Png).unwrap();
        let examples: Vec<Example> = records
            .iter()
            .map(|r| Example::decode(r.as_slice()).unwrap())
            .collect();
        let schema = Arc::new(infer_schema(&examples).unwrap());
        let names: Vec<_> = schema
            .fields()
            .iter()
            .map(|f| (f.name().as_str(), f.data_type().clone()))
            .collect();
        assert_eq!(names[0], ("b", DataType::Int64));
        assert_eq!(names[1], ("f", DataType::Float32));
        assert!(matches!(names[2].1, DataType::List(_)), "{names:?}");
        assert_eq!(names[3], ("label", DataType::Utf8));
        let back = examples_to_batch(&examples, &schema, 0).unwrap();
        assert_eq!(back.num_rows(), 3);
        let labels = back.column_by_name("label").unwrap().as_string::<i32>();
        assert_eq!(
            labels.iter().collect::<Vec<_>>(),
            vec![Some("hot_dog"), None, Some("x")]
        );
        let n = back
            .column_by_name("n")
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!(n.values().to_vec(), vec![1, -2, 3]);
        let l = back.column_by_name("l").unwrap().as_list::<i32>();
        assert_eq!(
            l.value(0).as_primitive::<Int64Type>().values().to_vec(),
            vec![1, 2, 3]
        );
        assert_eq!(l.value(1).len(), 0);
        assert!(l.is_null(2));
    }

    #[test]
    fn images_become_encoded_bytes_and_shape() {
        let mut b = ImageArrayBuilder::with_capacity(1);
        let pixels: Vec<u8> = (0..4 * 3 * 3).map(|i| i as u8 * 5).collect();
        b.append(ImageRef {
            width: 4,
            height: 3,
            channels: 3,
            data: &pixels,
        });
        let batch = RecordBatch::try_from_iter(vec![("image", b.finish())]).unwrap();
        for enc in [ImageEncoding::Png, ImageEncoding::Raw] {
            let records = batch_to_examples(&batch, enc).unwrap();
            let ex = Example::decode(records[0].as_slice()).unwrap();
            let f = &ex.features.unwrap().feature;
            assert_eq!(f["image/height"], int_feature(3));
            assert_eq!(f["image/width"], int_feature(4));
            assert_eq!(f["image/channels"], int_feature(3));
            let Some(Kind::BytesList(bytes)) = &f["image"].kind else {
                panic!()
            };
            let pixels_back = match enc {
                ImageEncoding::Raw => bytes.value[0].clone(),
                _ => kernels::decode(&bytes.value[0]).unwrap().data,
            };
            assert_eq!(pixels_back, pixels);
        }
    }

    #[test]
    fn mismatches_are_errors() {
        let a = Example {
            features: Some(Features {
                feature: BTreeMap::from([("x".to_string(), int_feature(1))]),
            }),
        };
        let b = Example {
            features: Some(Features {
                feature: BTreeMap::from([(
                    "x".to_string(),
                    Feature {
                        kind: Some(Kind::FloatList(FloatList { value: vec![1.0] })),
                    },
                )]),
            }),
        };
        assert!(
            infer_schema([&a, &b])
                .unwrap_err()
                .to_string()
                .contains("feature 'x'")
        );
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        let err = examples_to_batch(&[a, b], &schema, 10)
            .unwrap_err()
            .to_string();
        assert!(err.contains("record 11"), "{err}");
    }
}
