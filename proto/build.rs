//! Compiles the contract with protox (no `protoc` binary), writes the encoded
//! FileDescriptorSet for reflection and transcoding, and generates prost types
//! (plus tonic stubs when the `grpc` feature is on).

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "user.proto",
    "user/v2/user.proto",
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
        slim_files(&encoded, "buf/validate/", "google/")?,
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

/// Slims the vendored files in the encoded set: every consumer decodes it (the gateway,
/// reflection, and the wasm filters, which embed it and must stay small), and none needs their
/// comments (`source_code_info`): the files under `rules_prefix` (buf/validate) and under
/// `comments_prefix` (google/: api, rpc, and the well-known types) lose them; the files under
/// `rules_prefix` also lose the options on the rule messages' own fields
/// (`buf.validate.predefined`: the CEL a CEL-based runtime would evaluate; the gateway
/// evaluates the standard rules natively). The messages, fields, enums and extensions stay, so
/// `(buf.validate.field)` options decode exactly as written. Works on the encoded bytes, so
/// every other file (the contracts, with their comments) stays exactly as protox encoded it.
fn slim_files(
    set: &[u8],
    rules_prefix: &str,
    comments_prefix: &str,
) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    use prost::encoding::{WireType, decode_key, decode_varint, encode_key, encode_varint};
    type Fields<'a> = Vec<(u32, &'a [u8], &'a [u8])>;
    /// (field number, payload of a length-delimited field, the whole encoded field).
    fn fields(mut bytes: &[u8]) -> Result<Fields<'_>, Box<dyn std::error::Error>> {
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
    fn nested(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
        encode_key(number, WireType::LengthDelimited, out);
        encode_varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }
    // DescriptorProto.field = 2 (FieldDescriptorProto.options = 8), .nested_type = 3.
    fn message(bytes: &[u8]) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        let mut out = Vec::with_capacity(bytes.len());
        for (number, value, raw) in fields(bytes)? {
            match number {
                2 => {
                    let kept: Vec<u8> = fields(value)?
                        .iter()
                        .filter(|(n, _, _)| *n != 8)
                        .flat_map(|(_, _, raw)| raw.iter().copied())
                        .collect();
                    nested(&mut out, 2, &kept);
                }
                3 => nested(&mut out, 3, &message(value)?),
                _ => out.extend_from_slice(raw),
            }
        }
        Ok(out)
    }
    // FileDescriptorSet.file = 1; FileDescriptorProto.name = 1, .message_type = 4,
    // .source_code_info = 9.
    let mut out = Vec::with_capacity(set.len());
    for (number, file, raw) in fields(set)? {
        let file_fields = fields(file)?;
        let named = |prefix: &str| {
            number == 1
                && file_fields
                    .iter()
                    .any(|(n, value, _)| *n == 1 && value.starts_with(prefix.as_bytes()))
        };
        let (rules, comments) = (named(rules_prefix), named(comments_prefix));
        if !rules && !comments {
            out.extend_from_slice(raw);
            continue;
        }
        let mut kept = Vec::with_capacity(file.len());
        for (number, value, raw) in file_fields {
            match number {
                9 => {}
                4 if rules => nested(&mut kept, 4, &message(value)?),
                _ => kept.extend_from_slice(raw),
            }
        }
        nested(&mut out, 1, &kept);
    }
    Ok(out)
}
