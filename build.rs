//! Generates the protocol code from `proto/` with a pure-Rust protobuf
//! compiler, so a machine with only cargo builds it (no system `protoc`).

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/missioncontrol/lifecycle/v1/lifecycle.proto",
    "proto/missioncontrol/lifecycle/v1/gateways.proto",
    "proto/missioncontrol/lifecycle/v1/rollouts.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;

    // Server reflection serves this set, so grpcurl can `list` and `describe`.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("lifecycle_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    // Our codec: prost's, except that a message that does not decode is the
    // caller's INVALID_ARGUMENT rather than the server's INTERNAL.
    tonic_prost_build::configure()
        .codec_path("crate::codec::ProtoCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
