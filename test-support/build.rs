//! Compiles the test-only protos once for every crate that tests with them: `kitchen.proto`
//! (every field kind, every HttpRule shape) and `unsupported/v1/rules.proto` (a buf.validate
//! rule the gateway refuses). Descriptor sets always; tonic stubs with the `grpc` feature.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=../proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let include = ["proto", "../proto"];

    let mut kitchen = protox::Compiler::new(include)?;
    kitchen
        .include_imports(true)
        .open_files(["kitchen/v1/kitchen.proto"])?;
    fs::write(
        out_dir.join("kitchen_descriptor.bin"),
        kitchen.encode_file_descriptor_set(),
    )?;

    let mut unsupported = protox::Compiler::new(include)?;
    unsupported
        .include_imports(true)
        .open_files(["unsupported/v1/rules.proto"])?;
    fs::write(
        out_dir.join("unsupported_descriptor.bin"),
        unsupported.encode_file_descriptor_set(),
    )?;

    #[cfg(feature = "grpc")]
    {
        let mut descriptors = kitchen.file_descriptor_set();
        // The stubs need none of buf.validate's own messages.
        descriptors
            .file
            .retain(|file| !file.name().starts_with("buf/validate/"));
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(true)
            .include_file("kitchen_includes.rs")
            .compile_fds(descriptors)?;
    }
    Ok(())
}
