//! The image functions as DataFusion scalar UDFs: `image_decode`, `image_decode_resize`,
//! `image_resize`, `image_center_crop`, `image_crop`, `image_flip`, `image_rotate`,
//! `image_to_grayscale`, `image_encode`, `image_width`, `image_height`, `image_channels`.
//!
//! One [`ImageFunc`] serves them all: each [`ImageOp`] declares its arguments, its return type
//! and its per-row kernel from [`super::kernels`]. Arguments may be columns or literals; a
//! NULL argument gives a NULL result.
//!
//! `image_resize(image_decode(b), w, h)` and
//! `image_resize(image_center_crop(image_decode(b) [, cw, ch]), w, h)` are rewritten at planning
//! time into `image_decode_resize`, which decodes JPEGs at a reduced DCT scale.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, StringArray, UInt32Builder, new_null_array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{exec_err, plan_err};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::lit;
use quiver_engine::Progress;
use quiver_engine::image::{Image, ImageArray, ImageArrayBuilder, image_type, is_image_type};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::augment::AugmentOptions;
use super::kernels::{self, Crop, EncodeFormat, ImageError};
use quiver_engine::{bail, err};

/// What an argument must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Arg {
    /// The image struct.
    Image,
    /// Encoded bytes (Binary).
    Bytes,
    /// The image struct or encoded bytes.
    ImageOrBytes,
    /// Any integer type.
    Int,
    /// A string.
    Str,
}

impl Arg {
    fn accepts(self, dt: &DataType) -> bool {
        let bytes = matches!(
            dt,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView
        );
        match self {
            Arg::Image => is_image_type(dt),
            Arg::Bytes => bytes,
            Arg::ImageOrBytes => bytes || is_image_type(dt),
            Arg::Int => dt.is_integer(),
            Arg::Str => matches!(
                dt,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Arg::Image => "an image (from image_decode)",
            Arg::Bytes => "encoded image bytes (Binary)",
            Arg::ImageOrBytes => "an image or encoded image bytes",
            Arg::Int => "an integer",
            Arg::Str => "a string",
        }
    }
}

/// The image operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageOp {
    /// `image_decode(bytes [, on_error [, source]])`; `on_error` is `'error'` (default) or
    /// `'null'`; `source` names where the bytes came from in messages (the planner fills it in
    /// with `read_images`' path: the `paths` module).
    Decode,
    /// `image_decode_resize(bytes, on_error, width, height, crop_width, crop_height [,
    /// source])`: decode, centre-crop (`0, 0`: no crop; `-1, -1`: largest square) and resize in
    /// one step.
    DecodeResize,
    /// `image_resize(image, width, height)`.
    Resize,
    /// `image_center_crop(image [, width, height])`; without a size, the largest square.
    CenterCrop,
    /// `image_crop(image, x, y, width, height)`.
    Crop,
    /// `image_flip(image, 'horizontal' | 'vertical')`.
    Flip,
    /// `image_rotate(image, degrees)`, counter-clockwise, multiples of 90.
    Rotate,
    /// `image_to_grayscale(image)`.
    Grayscale,
    /// `image_encode(image, 'jpeg' | 'png' [, quality])`.
    Encode,
    /// `image_width(image or bytes)`.
    Width,
    /// `image_height(image or bytes)`.
    Height,
    /// `image_channels(image)`.
    Channels,
    /// `image_augment(image, options_json, seed)`: the augmentation of `CREATE MODEL`'s
    /// `augment_*` options, drawn from `seed`.
    Augment,
}

impl ImageOp {
    /// Every operation, for registration.
    pub const ALL: [ImageOp; 13] = [
        ImageOp::Decode,
        ImageOp::DecodeResize,
        ImageOp::Resize,
        ImageOp::CenterCrop,
        ImageOp::Crop,
        ImageOp::Flip,
        ImageOp::Rotate,
        ImageOp::Grayscale,
        ImageOp::Encode,
        ImageOp::Width,
        ImageOp::Height,
        ImageOp::Channels,
        ImageOp::Augment,
    ];

    /// The SQL name.
    pub fn name(self) -> &'static str {
        match self {
            ImageOp::Decode => "image_decode",
            ImageOp::DecodeResize => "image_decode_resize",
            ImageOp::Resize => "image_resize",
            ImageOp::CenterCrop => "image_center_crop",
            ImageOp::Crop => "image_crop",
            ImageOp::Flip => "image_flip",
            ImageOp::Rotate => "image_rotate",
            ImageOp::Grayscale => "image_to_grayscale",
            ImageOp::Encode => "image_encode",
            ImageOp::Width => "image_width",
            ImageOp::Height => "image_height",
            ImageOp::Channels => "image_channels",
            ImageOp::Augment => "image_augment",
        }
    }

    fn usage(self) -> &'static str {
        match self {
            ImageOp::Decode => "image_decode(bytes [, 'error' | 'null' [, source]])",
            ImageOp::DecodeResize => {
                "image_decode_resize(bytes, 'error' | 'null', width, height, crop_width, crop_height [, source])"
            }
            ImageOp::Resize => "image_resize(image, width, height)",
            ImageOp::CenterCrop => "image_center_crop(image [, width, height])",
            ImageOp::Crop => "image_crop(image, x, y, width, height)",
            ImageOp::Flip => "image_flip(image, 'horizontal' | 'vertical')",
            ImageOp::Rotate => "image_rotate(image, degrees)",
            ImageOp::Grayscale => "image_to_grayscale(image)",
            ImageOp::Encode => "image_encode(image, 'jpeg' | 'png' [, quality])",
            ImageOp::Width => "image_width(image or bytes)",
            ImageOp::Height => "image_height(image or bytes)",
            ImageOp::Channels => "image_channels(image)",
            ImageOp::Augment => "image_augment(image, options_json, seed)",
        }
    }

    /// The accepted argument lists.
    fn arities(self) -> &'static [&'static [Arg]] {
        use Arg::*;
        match self {
            ImageOp::Decode => &[&[Bytes], &[Bytes, Str], &[Bytes, Str, Str]],
            ImageOp::DecodeResize => &[
                &[Bytes, Str, Int, Int, Int, Int],
                &[Bytes, Str, Int, Int, Int, Int, Str],
            ],
            ImageOp::Resize => &[&[Image, Int, Int]],
            ImageOp::CenterCrop => &[&[Image], &[Image, Int, Int]],
            ImageOp::Crop => &[&[Image, Int, Int, Int, Int]],
            ImageOp::Flip => &[&[Image, Str]],
            ImageOp::Rotate => &[&[Image, Int]],
            ImageOp::Grayscale => &[&[Image]],
            ImageOp::Encode => &[&[Image, Str], &[Image, Str, Int]],
            ImageOp::Width | ImageOp::Height => &[&[ImageOrBytes]],
            ImageOp::Channels => &[&[Image]],
            ImageOp::Augment => &[&[Image, Str, Int]],
        }
    }

    /// The position of the `source` argument in a call with `n` arguments, if it has one.
    fn source_arg(self, n: usize) -> Option<usize> {
        match (self, n) {
            (ImageOp::Decode, 3) | (ImageOp::DecodeResize, 7) => Some(n - 1),
            _ => None,
        }
    }

    fn output(self) -> DataType {
        match self {
            ImageOp::Encode => DataType::Binary,
            ImageOp::Width | ImageOp::Height => DataType::UInt32,
            ImageOp::Channels => DataType::UInt8,
            _ => image_type(),
        }
    }
}

/// A scalar UDF running one [`ImageOp`] over batches.
#[derive(Debug)]
pub struct ImageFunc {
    op: ImageOp,
    signature: Signature,
    progress: Option<Arc<Progress>>,
}

impl PartialEq for ImageFunc {
    fn eq(&self, other: &Self) -> bool {
        self.op == other.op
    }
}

impl Eq for ImageFunc {}

impl Hash for ImageFunc {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.op.hash(state);
    }
}

impl ImageFunc {
    /// The UDF for `op`; skipped undecodable images are counted in `progress`.
    pub fn new(op: ImageOp, progress: Option<Arc<Progress>>) -> Self {
        Self {
            op,
            signature: Signature::variadic_any(Volatility::Immutable),
            progress,
        }
    }

    /// All image UDFs.
    pub fn all(progress: Option<Arc<Progress>>) -> Vec<ScalarUDF> {
        ImageOp::ALL
            .iter()
            .map(|&op| ScalarUDF::new_from_impl(Self::new(op, progress.clone())))
            .collect()
    }

    fn check(&self, types: &[DataType]) -> Result<()> {
        let arities = self.op.arities();
        let Some(expected) = arities.iter().find(|a| a.len() == types.len()) else {
            return plan_err!(
                "{}: wrong number of arguments ({}); usage: {}",
                self.op.name(),
                types.len(),
                self.op.usage()
            );
        };
        for (i, (arg, dt)) in expected.iter().zip(types).enumerate() {
            if !arg.accepts(dt) && !dt.is_null() {
                return plan_err!(
                    "{}: argument {} must be {}, got {dt}; usage: {}",
                    self.op.name(),
                    i + 1,
                    arg.describe(),
                    self.op.usage()
                );
            }
        }
        Ok(())
    }
}

/// Evaluated arguments of one batch, with typed per-row access.
struct Args {
    arrays: Vec<ArrayRef>,
    /// The statement skipped images are filed under.
    statement: String,
}

impl Args {
    fn int(&self, i: usize, row: usize) -> Option<i64> {
        let a = self.arrays[i].as_primitive::<Int64Type>();
        a.is_valid(row).then(|| a.value(row))
    }
    /// `None` for a NULL or an absent optional argument.
    fn str(&self, i: usize, row: usize) -> Option<&str> {
        let a = self.arrays.get(i)?.as_any().downcast_ref::<StringArray>()?;
        a.is_valid(row).then(|| a.value(row))
    }
    fn bytes(&self, i: usize, row: usize) -> Option<&[u8]> {
        let a = self.arrays[i].as_binary::<i32>();
        a.is_valid(row).then(|| a.value(row))
    }
}

fn to_u32(op: ImageOp, what: &str, v: i64) -> std::result::Result<u32, ImageError> {
    u32::try_from(v).map_err(|_| {
        err!(
            ImageError::Argument,
            "{}: {what} must be between 0 and {}, got {v}",
            op.name(),
            u32::MAX
        )
    })
}

enum Output {
    Image(Box<ImageArrayBuilder>),
    Bytes(BinaryBuilder),
    U32(UInt32Builder),
    U8(datafusion::arrow::array::UInt8Builder),
}

impl ScalarUDFImpl for ImageFunc {
    fn name(&self) -> &str {
        self.op.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.check(arg_types)?;
        Ok(self.op.output())
    }

    fn simplify(&self, args: Vec<Expr>, _info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        if self.op != ImageOp::Resize {
            return Ok(ExprSimplifyResult::Original(args));
        }
        // image_resize(X, w, h) where X is image_decode(b [, p]) or
        // image_center_crop(image_decode(b [, p]) [, cw, ch]).
        let (decode, crop_w, crop_h) = match &args[0] {
            Expr::ScalarFunction(f) if f.func.name() == ImageOp::Decode.name() => {
                (f, lit(0i64), lit(0i64))
            }
            Expr::ScalarFunction(f) if f.func.name() == ImageOp::CenterCrop.name() => {
                match &f.args[0] {
                    Expr::ScalarFunction(d) if d.func.name() == ImageOp::Decode.name() => {
                        match f.args.len() {
                            1 => (d, lit(-1i64), lit(-1i64)),
                            _ => (d, f.args[1].clone(), f.args[2].clone()),
                        }
                    }
                    _ => return Ok(ExprSimplifyResult::Original(args)),
                }
            }
            _ => return Ok(ExprSimplifyResult::Original(args)),
        };
        let on_error = decode.args.get(1).cloned().unwrap_or_else(|| lit("error"));
        let fused =
            ScalarUDF::new_from_impl(Self::new(ImageOp::DecodeResize, self.progress.clone()));
        let mut fused_args = vec![
            decode.args[0].clone(),
            on_error,
            args[1].clone(),
            args[2].clone(),
            crop_w,
            crop_h,
        ];
        fused_args.extend(decode.args.get(2).cloned());
        Ok(ExprSimplifyResult::Simplified(fused.call(fused_args)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let types: Vec<DataType> = args
            .arg_fields
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        self.check(&types)?;
        let arities = self.op.arities();
        let expected = arities
            .iter()
            .find(|a| a.len() == types.len())
            .expect("checked");
        let mut arrays = ColumnarValue::values_to_arrays(&args.args)?;
        for (array, arg) in arrays.iter_mut().zip(expected.iter()) {
            let target = match arg {
                Arg::Int => Some(DataType::Int64),
                Arg::Str => Some(DataType::Utf8),
                Arg::Bytes => Some(DataType::Binary),
                Arg::ImageOrBytes if !is_image_type(array.data_type()) => Some(DataType::Binary),
                _ => None,
            };
            if array.data_type().is_null() {
                *array = new_null_array(target.as_ref().unwrap_or(&image_type()), rows);
            } else if let Some(target) = target {
                *array = cast(array, &target)?;
            }
        }
        let statement = quiver_engine::session::statement_id(&args.config_options).to_string();
        let args = Args { arrays, statement };
        let images = match expected[0] {
            Arg::Image => Some(ImageArray::try_new(args.arrays[0].as_ref())?),
            Arg::ImageOrBytes if is_image_type(args.arrays[0].data_type()) => {
                Some(ImageArray::try_new(args.arrays[0].as_ref())?)
            }
            _ => None,
        };
        let mut out = match self.op.output() {
            DataType::Binary => Output::Bytes(BinaryBuilder::with_capacity(rows, 0)),
            DataType::UInt32 => Output::U32(UInt32Builder::with_capacity(rows)),
            DataType::UInt8 => {
                Output::U8(datafusion::arrow::array::UInt8Builder::with_capacity(rows))
            }
            _ => Output::Image(Box::new(ImageArrayBuilder::with_capacity(rows))),
        };
        let source = self.op.source_arg(types.len());
        for row in 0..rows {
            let result = self.eval_row(&args, images.as_ref(), row).map_err(|e| {
                let name = self.op.name();
                DataFusionError::Execution(match source.and_then(|i| args.str(i, row)) {
                    Some(file) => format!("{name} failed on '{file}': {e}"),
                    None => format!("{name} failed on row {row} of a batch: {e}"),
                })
            })?;
            match (&mut out, result) {
                (Output::Image(b), Some(Value::Image(img))) => b.append(img.as_ref()),
                (Output::Image(b), None) => b.append_null(),
                (Output::Bytes(b), Some(Value::Bytes(v))) => b.append_value(v),
                (Output::Bytes(b), None) => b.append_null(),
                (Output::U32(b), Some(Value::U32(v))) => b.append_value(v),
                (Output::U32(b), None) => b.append_null(),
                (Output::U8(b), Some(Value::U32(v))) => b.append_value(v as u8),
                (Output::U8(b), None) => b.append_null(),
                _ => return exec_err!("{}: internal error: output kind mismatch", self.op.name()),
            }
        }
        let array: ArrayRef = match out {
            Output::Image(b) => (*b).finish(),
            Output::Bytes(mut b) => Arc::new(b.finish()),
            Output::U32(mut b) => Arc::new(b.finish()),
            Output::U8(mut b) => Arc::new(b.finish()),
        };
        Ok(ColumnarValue::Array(array))
    }
}

enum Value {
    Image(Image),
    Bytes(Vec<u8>),
    U32(u32),
}

impl ImageFunc {
    /// One row; `Ok(None)` is a NULL result.
    fn eval_row(
        &self,
        args: &Args,
        images: Option<&ImageArray<'_>>,
        row: usize,
    ) -> std::result::Result<Option<Value>, ImageError> {
        let op = self.op;
        let image = match images.map(|a| a.get(row)) {
            Some(Ok(Some(img))) => Some(img),
            Some(Ok(None)) => return Ok(None),
            Some(Err(e)) => return Err(ImageError::Argument(e.to_string())),
            None => None,
        };
        let n = args.arrays.len();
        let source = op.source_arg(n);
        // Any NULL argument gives NULL (an unknown source is only left out of messages).
        if (0..n).any(|i| Some(i) != source && args.arrays[i].is_null(row)) {
            return Ok(None);
        }
        let int = |i: usize| args.int(i, row).expect("checked for NULL");
        let dim = |i: usize, what: &str| to_u32(op, what, int(i));
        let value = match op {
            ImageOp::Decode | ImageOp::DecodeResize => {
                let bytes = args.bytes(0, row).expect("checked for NULL");
                let skip_errors = match args.str(1, row).unwrap_or("error") {
                    "error" => false,
                    "null" => true,
                    other => {
                        bail!(
                            ImageError::Argument,
                            "on_error must be 'error' or 'null', got '{other}'"
                        );
                    }
                };
                let decoded = if op == ImageOp::Decode {
                    kernels::decode(bytes)
                } else {
                    let crop = match (int(4), int(5)) {
                        (0, 0) => Crop::None,
                        (-1, -1) => Crop::CenterSquare,
                        _ => Crop::Center(dim(4, "crop width")?, dim(5, "crop height")?),
                    };
                    kernels::decode_resize(bytes, crop, dim(2, "width")?, dim(3, "height")?)
                };
                match decoded {
                    Ok(img) => Value::Image(img),
                    Err(e @ ImageError::Decode { .. }) if skip_errors => {
                        if let Some(p) = &self.progress {
                            let file = source.and_then(|i| args.str(i, row));
                            p.add_image_skipped(&args.statement, file, &e.to_string());
                        }
                        return Ok(None);
                    }
                    Err(ImageError::Decode { len, head, reason }) => {
                        return Err(ImageError::Decode {
                            len,
                            head,
                            reason: format!(
                                "{reason} (use {}(bytes, 'null') to skip undecodable images)",
                                ImageOp::Decode.name()
                            ),
                        });
                    }
                    Err(e) => return Err(e),
                }
            }
            ImageOp::Width | ImageOp::Height => {
                let (w, h) = match image {
                    Some(img) => (img.width, img.height),
                    None => kernels::image_dimensions(args.bytes(0, row).expect("checked"))?,
                };
                Value::U32(if op == ImageOp::Width { w } else { h })
            }
            _ => {
                let img = image.expect("image argument");
                match op {
                    ImageOp::Resize => {
                        Value::Image(kernels::resize(img, dim(1, "width")?, dim(2, "height")?)?)
                    }
                    ImageOp::CenterCrop => {
                        let size = if n == 3 {
                            Some((dim(1, "width")?, dim(2, "height")?))
                        } else {
                            None
                        };
                        Value::Image(kernels::center_crop(img, size)?)
                    }
                    ImageOp::Crop => Value::Image(kernels::crop(
                        img,
                        dim(1, "x")?,
                        dim(2, "y")?,
                        dim(3, "width")?,
                        dim(4, "height")?,
                    )?),
                    ImageOp::Flip => {
                        let horizontal = match args.str(1, row).expect("checked") {
                            d if d.eq_ignore_ascii_case("horizontal") => true,
                            d if d.eq_ignore_ascii_case("vertical") => false,
                            other => {
                                bail!(
                                    ImageError::Argument,
                                    "direction must be 'horizontal' or 'vertical', got '{other}'"
                                );
                            }
                        };
                        Value::Image(kernels::flip(img, horizontal))
                    }
                    ImageOp::Rotate => Value::Image(kernels::rotate(img, int(1))?),
                    ImageOp::Grayscale => Value::Image(kernels::to_grayscale(img)),
                    ImageOp::Encode => {
                        let mut format = EncodeFormat::parse(args.str(1, row).expect("checked"))?;
                        if n == 3 {
                            let q = int(2);
                            if !(1..=100).contains(&q) {
                                bail!(
                                    ImageError::Argument,
                                    "quality must be between 1 and 100, got {q}"
                                );
                            }
                            if let EncodeFormat::Jpeg(quality) = &mut format {
                                *quality = q as u8;
                            }
                        }
                        Value::Bytes(kernels::encode(img, format)?)
                    }
                    ImageOp::Channels => Value::U32(img.channels as u32),
                    ImageOp::Augment => {
                        let options = args.str(1, row).expect("checked for NULL");
                        let options =
                            AugmentOptions::from_json(options).map_err(ImageError::Argument)?;
                        let mut rng = StdRng::seed_from_u64(int(2) as u64);
                        Value::Image(match options.augment() {
                            Some(augment) => augment.apply(img, &mut rng),
                            None => img.to_image(),
                        })
                    }
                    _ => unreachable!("handled above"),
                }
            }
        };
        Ok(Some(value))
    }
}

/// Expression builders for the image functions, for DataFrame code.
pub mod expr_fn {
    use datafusion::logical_expr::{Expr, ScalarUDF};
    use datafusion::prelude::lit;

    use super::{ImageFunc, ImageOp};

    fn call(op: ImageOp, args: Vec<Expr>) -> Expr {
        ScalarUDF::new_from_impl(ImageFunc::new(op, None)).call(args)
    }

    /// `image_decode(bytes)`: fails on undecodable bytes.
    pub fn image_decode(bytes: Expr) -> Expr {
        call(ImageOp::Decode, vec![bytes])
    }

    /// `image_decode(bytes, 'null')`: NULL for undecodable bytes.
    pub fn image_decode_or_null(bytes: Expr) -> Expr {
        call(ImageOp::Decode, vec![bytes, lit("null")])
    }

    /// `image_resize(image, width, height)`.
    pub fn image_resize(image: Expr, width: u32, height: u32) -> Expr {
        call(
            ImageOp::Resize,
            vec![image, lit(width as i64), lit(height as i64)],
        )
    }

    /// `image_center_crop(image)`: the largest centred square.
    pub fn image_center_crop(image: Expr) -> Expr {
        call(ImageOp::CenterCrop, vec![image])
    }

    /// `image_flip(image, 'horizontal' | 'vertical')`.
    pub fn image_flip(image: Expr, direction: &str) -> Expr {
        call(ImageOp::Flip, vec![image, lit(direction)])
    }

    /// `image_to_grayscale(image)`.
    pub fn image_to_grayscale(image: Expr) -> Expr {
        call(ImageOp::Grayscale, vec![image])
    }

    /// `image_encode(image, 'jpeg' | 'png')`.
    pub fn image_encode(image: Expr, format: &str) -> Expr {
        call(ImageOp::Encode, vec![image, lit(format)])
    }

    /// `image_augment(image, options_json, seed)`.
    pub fn image_augment(image: Expr, options_json: &str, seed: u64) -> Expr {
        call(
            ImageOp::Augment,
            vec![image, lit(options_json), lit(seed as i64)],
        )
    }
}
