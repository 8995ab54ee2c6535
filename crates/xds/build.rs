//! Compile the protobuf definitions with a pure-Rust compiler (protox), so a fresh machine
//! needs nothing beyond cargo: no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/zmesh/ca/v1/ca.proto", "proto/zmesh/config/v1/config.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(descriptors)?;
    Ok(())
}
