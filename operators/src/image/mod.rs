//! Images: reading folders of image files (`read_images`), the per-image kernels (decode with
//! DCT-domain downscaling, resize, crop, flip, rotate, grayscale, encode), seeded augmentation,
//! the SQL functions that map them over batches (`image_decode`, `image_resize`,
//! `image_augment`, ...), and the analyzer rule that lets a decode error name the file its
//! bytes came from.
//!
//! Exports the table function and its file source, the UDFs with their `expr_fn` builders, the
//! analyzer rule, the kernels for callers outside SQL (TFRecord image features, serving), and
//! the augmentation options and draws that training applies.

mod augment;
mod jpeg;
pub mod kernels;
mod paths;
mod read;
mod udfs;

pub use augment::{Augment, AugmentOptions, example_rng};
pub use paths::ImageSourcePaths;
pub use read::{ReadImagesFunc, ReadImagesSource, ReadImagesTable, read_images_schema};
pub use udfs::{ImageFunc, ImageOp, expr_fn};
