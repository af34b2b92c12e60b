//! Hot-dog-style image ETL as a Rust DataFrame program:
//! `cargo run --release --example hotdog_etl -- <image folder> <output folder>`
//!
//! Reads `<image folder>/{train,test}/<label>/*.jpg`, decodes, centre-crops to a square,
//! resizes to 200x200 and writes JPEG-encoded `tf.train.Example`s as TFRecord shards to
//! `<output folder>/{train,test}/`.

use datafusion::prelude::col;
use quiver_engine::SessionOptions;
use quiver_operators::TfRecordOptions;
use quiver_operators::image::expr_fn::{image_center_crop, image_decode, image_resize};
use quiver_operators::tfrecord::ImageEncoding;
use quiver_sql::{DataFrameExt, SessionExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(input), Some(output)) = (args.next(), args.next()) else {
        return Err("usage: hotdog_etl <image folder> <output folder>".into());
    };
    let session = quiver_sql::session(SessionOptions::default())?;
    for split in ["train", "test"] {
        let images = session.read_images(&format!("{input}/{split}/")).await?;
        let prepared = images.select(vec![
            col("path"),
            col("label"),
            image_resize(image_center_crop(image_decode(col("content"))), 200, 200).alias("image"),
        ])?;
        let options = TfRecordOptions {
            image_format: ImageEncoding::Jpeg,
            ..Default::default()
        };
        let target = format!("{output}/{split}/");
        let rows = prepared.write_tfrecord(&target, options).await?;
        println!("{split}: wrote {rows} images to {target}");
    }
    Ok(())
}
