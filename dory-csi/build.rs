//! Compiles `proto/csi.proto` with protox (a protobuf compiler in Rust, so no
//! system `protoc` is needed) and generates the tonic servers and clients.
//! The compiled descriptor is also written to `$OUT_DIR/csi.v1.bin`, so a
//! test can hold its field numbers against the spec's.

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    let descriptors = protox::compile(["proto/csi.proto"], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("csi.v1.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(descriptors)?;
    Ok(())
}
