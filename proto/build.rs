//! Compiles the contract with protox (no `protoc` binary), writes the encoded
//! FileDescriptorSet for reflection and transcoding, and generates prost types
//! (plus tonic stubs when the `grpc` feature is on).

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "user.proto",
    "meshgate/api/options.proto",
    "google/api/annotations.proto",
    "google/api/http.proto",
    "google/rpc/status.proto",
    "google/rpc/code.proto",
    "google/rpc/error_details.proto",
];
const INCLUDES: &[&str] = &["."];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for dir in INCLUDES {
        println!("cargo:rerun-if-changed={dir}");
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new(INCLUDES)?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?;
    // Encoded through the compiler's own pool: prost_types would drop the custom options
    // (google.api.http) as unknown fields.
    fs::write(
        out_dir.join("meshgate_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let descriptors = compiler.file_descriptor_set();

    let grpc = env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        .build_transport(grpc)
        .include_file("_includes.rs")
        .compile_fds(descriptors)?;
    Ok(())
}
