//! Compiles the contract with protox (no `protoc` binary), writes the encoded
//! FileDescriptorSet for reflection and transcoding, and generates prost types
//! (plus tonic stubs when the `grpc` feature is on).

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "user.proto",
    "meshgate/api/options.proto",
    "buf/validate/validate.proto",
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
    let encoded = compiler.encode_file_descriptor_set();
    fs::write(
        out_dir.join("meshgate_descriptor.bin"),
        strip_source_info(&encoded, "buf/validate/")?,
    )?;
    let mut descriptors = compiler.file_descriptor_set();
    // buf.validate only annotates the contract (read through reflection): no Rust types for it.
    descriptors
        .file
        .retain(|file| !file.name().starts_with("buf/validate/"));

    let grpc = env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        .build_transport(grpc)
        .include_file("_includes.rs")
        .compile_fds(descriptors)?;
    Ok(())
}

/// Drops `source_code_info` (the comments, ~200 KB for buf/validate) from the files under
/// `prefix`: every consumer of the set (the gateway, the wasm filters, reflection) decodes it,
/// and only the contract's own comments are worth carrying. Works on the encoded bytes, so the
/// options stay exactly as protox encoded them.
fn strip_source_info(set: &[u8], prefix: &str) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    use prost::encoding::{WireType, decode_key, decode_varint, encode_key, encode_varint};
    // FileDescriptorSet.file = 1; FileDescriptorProto.name = 1, .source_code_info = 9.
    fn fields(mut bytes: &[u8]) -> Result<Vec<(u32, &[u8], &[u8])>, Box<dyn std::error::Error>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let start = bytes;
            let (number, wire_type) = decode_key(&mut bytes)?;
            let value: &[u8] = match wire_type {
                WireType::LengthDelimited => {
                    let len = decode_varint(&mut bytes)? as usize;
                    let (value, rest) = bytes
                        .split_at_checked(len)
                        .ok_or("truncated descriptor set")?;
                    bytes = rest;
                    value
                }
                WireType::Varint => {
                    decode_varint(&mut bytes)?;
                    &[]
                }
                other => {
                    return Err(
                        format!("unexpected wire type {other:?} in a descriptor set").into(),
                    );
                }
            };
            let raw = &start[..start.len() - bytes.len()];
            out.push((number, value, raw));
        }
        Ok(out)
    }
    let mut out = Vec::with_capacity(set.len());
    for (number, file, raw) in fields(set)? {
        let file_fields = fields(file)?;
        let stripped = number == 1
            && file_fields
                .iter()
                .any(|(n, value, _)| *n == 1 && value.starts_with(prefix.as_bytes()));
        if !stripped {
            out.extend_from_slice(raw);
            continue;
        }
        let kept: Vec<u8> = file_fields
            .iter()
            .filter(|(n, _, _)| *n != 9)
            .flat_map(|(_, _, raw)| raw.iter().copied())
            .collect();
        encode_key(1, WireType::LengthDelimited, &mut out);
        encode_varint(kept.len() as u64, &mut out);
        out.extend_from_slice(&kept);
    }
    Ok(out)
}
