//! Compiles `proto/csi.proto` with protox (a protobuf compiler in Rust, so no
//! system `protoc` is needed) and generates the tonic servers and clients.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    let descriptors = protox::compile(["proto/csi.proto"], ["proto"])?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(descriptors)?;
    Ok(())
}
