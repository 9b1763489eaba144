//! Compiles the test-only proto (tests/proto/kitchen.proto: every field kind, every HttpRule
//! shape) with protox: its descriptor set feeds the gateway in the integration tests, and its
//! tonic stubs serve it. Nothing of it ends up in the library.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=tests/proto");
    println!("cargo:rerun-if-changed=../proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut compiler = protox::Compiler::new(["tests/proto", "../proto"])?;
    compiler
        .include_imports(true)
        .open_files(["kitchen/v1/kitchen.proto"])?;
    fs::write(
        out_dir.join("kitchen_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    // A rule the gateway refuses (tests: it must not start on it).
    let mut unsupported = protox::Compiler::new(["tests/proto", "../proto"])?;
    unsupported
        .include_imports(true)
        .open_files(["unsupported/v1/rules.proto"])?;
    fs::write(
        out_dir.join("unsupported_descriptor.bin"),
        unsupported.encode_file_descriptor_set(),
    )?;
    let mut descriptors = compiler.file_descriptor_set();
    descriptors
        .file
        .retain(|file| !file.name().starts_with("buf/validate/"));
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .include_file("kitchen_includes.rs")
        .compile_fds(descriptors)?;
    Ok(())
}
