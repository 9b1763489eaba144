//! The targets run against two descriptor pools: the real contract (meshgate-proto) and the
//! gateway's test proto `edge-gateway/tests/proto/kitchen/v1/kitchen.proto`, which has every
//! field kind (enums, maps, oneofs, nested and repeated messages, well-known types) and every
//! HttpRule shape (`body: "field"`, `response_body`, `**`, verbs, custom methods).

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../tests/proto");
    println!("cargo:rerun-if-changed=../../proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut compiler = protox::Compiler::new(["../tests/proto", "../../proto"])?;
    compiler
        .include_imports(true)
        .open_files(["kitchen/v1/kitchen.proto"])?;
    fs::write(
        out_dir.join("kitchen_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    Ok(())
}
