//! TFRecord, TensorFlow's record format, as a DataFusion file format in both directions.
//!
//! A file is a sequence of records, each `u64 length | u32 masked_crc32c(length) | data |
//! u32 masked_crc32c(data)` (little-endian), optionally gzip-compressed as a whole. Each record
//! holds one serialized `tf.train.Example`. Both CRCs of every record are verified on read.
//!
//! Column ↔ feature mapping (written by `COPY ... STORED AS TFRECORD`, inferred on read):
//!
//! | Arrow column | `tf.train.Feature` |
//! |---|---|
//! | Binary, Utf8 (all sizes and views) | `bytes_list` with one value |
//! | Int8..Int64, UInt8..UInt64, Boolean | `int64_list` with one value |
//! | Float16, Float32, Float64 | `float_list` with one value (as f32) |
//! | List/LargeList/FixedSizeList of the above | the matching list with all values |
//! | the image struct, column `c` | `c`: the encoded image (`image_format` 'png' default, 'jpeg') or the raw HWC bytes ('raw'); `c/height`, `c/width`, `c/channels`: int64 |
//! | NULL | the feature is left out |
//!
//! On read, a feature with exactly one value in every sampled record becomes a scalar column,
//! otherwise a list; `bytes_list` becomes Utf8 when every sampled value is printable UTF-8,
//! otherwise Binary. Declare the schema in `CREATE EXTERNAL TABLE` to override the inference.

mod convert;
mod example;
mod files;
mod format;
mod options;
mod record;
mod sink;
mod source;
pub mod staging;

pub use convert::{ImageEncoding, batch_to_examples, examples_to_batch, infer_schema};
pub use example::{BytesList, Example, Feature, Features, FloatList, Int64List, feature};
pub use format::{TfRecordFormat, TfRecordFormatFactory};
pub use options::TfRecordOptions;
pub use record::{RecordError, RecordReader, masked_crc32c, write_record};
pub use sink::{TfRecordSinkExec, TfRecordWrite, TfRecordWriterExec, plan_write};
pub use source::TfRecordSource;
