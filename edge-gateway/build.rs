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
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .include_file("kitchen_includes.rs")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
