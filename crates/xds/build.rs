//! Compile the protobuf definitions with a pure-Rust compiler (protox), so a fresh machine
//! needs nothing beyond cargo: no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/zmesh/ca/v1/ca.proto",
        "proto/zmesh/config/v1/config.proto",
        // Envoy's external authorization API (Istio's CUSTOM action): the proxy calls it, the
        // CEL authorizer serves it, and both interoperate with any Envoy-compatible peer.
        "proto/envoy/service/auth/v3/external_auth.proto",
    ];
    for dir in ["proto/zmesh", "proto/envoy", "proto/google"] {
        println!("cargo:rerun-if-changed={dir}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    // The well-known types (Struct, Timestamp, Any, BoolValue) are generated here rather than
    // taken from prost-types, so the crate needs no extra dependency and every message an
    // authorizer sends has one home: `zmesh_xds::google::protobuf`.
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_well_known_types(true)
        .compile_fds(descriptors)?;
    Ok(())
}
