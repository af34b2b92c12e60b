//! Compiles Quiver's cluster services (`proto/cluster.proto`) with protox and tonic.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/cluster.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure().compile_fds(protox::compile([proto], ["proto"])?)?;
    Ok(())
}
