//! Quiver's operators: image functions, `read_images`, and the TFRecord file format.

pub mod image_ops;
pub mod image_udfs;
pub mod read_images;
pub mod tfrecord;

pub use image_udfs::{ImageFunc, ImageOp};
pub use read_images::{ReadImagesFunc, ReadImagesTable};
pub use tfrecord::{TfRecordFormat, TfRecordFormatFactory, TfRecordOptions};
