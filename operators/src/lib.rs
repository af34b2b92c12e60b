//! Quiver's operators: image functions, `read_images`, the TFRecord file format, and machine
//! learning (models, training, evaluation, the registry, `predict`), and feature statistics.

mod computed;
pub mod experiment;
pub mod image_ops;
pub mod image_udfs;
pub mod jobs;
pub mod ml;
pub mod read_images;
pub mod stats;
pub mod tfrecord;

pub use image_udfs::{ImageFunc, ImageOp};
pub use read_images::{ReadImagesFunc, ReadImagesSource, ReadImagesTable, read_images_schema};
pub use tfrecord::{TfRecordFormat, TfRecordFormatFactory, TfRecordOptions};
