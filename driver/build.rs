//! Compiles the vendored TensorFlow Serving protos with protox (no `protoc` needed) and tonic.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/tensorflow.proto", "proto/tensorflow_serving.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    let mut builder = tonic_prost_build::configure();
    // tf.train.Example is the TFRecord writer's own prost type.
    for message in [
        "Example",
        "Features",
        "Feature",
        "BytesList",
        "FloatList",
        "Int64List",
    ] {
        builder = builder.extern_path(
            format!(".tensorflow.{message}"),
            format!("::quiver_operators::tfrecord::{message}"),
        );
    }
    builder.compile_fds(descriptors)?;
    Ok(())
}
