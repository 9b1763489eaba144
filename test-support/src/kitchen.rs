//! The test protos (`test-support/proto/`), compiled by this crate's build script.

/// The kitchen descriptor set (with imports), as a file: the gateway reads descriptor sets from
/// paths (`gateway.descriptor_sets`).
pub const DESCRIPTOR_SET_PATH: &str = concat!(env!("OUT_DIR"), "/kitchen_descriptor.bin");

/// The kitchen descriptor set's bytes.
pub const DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kitchen_descriptor.bin"));

/// A descriptor set with a `buf.validate` rule the gateway refuses, as a file.
pub const UNSUPPORTED_RULES_PATH: &str = concat!(env!("OUT_DIR"), "/unsupported_descriptor.bin");

/// Its bytes.
pub const UNSUPPORTED_RULES: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/unsupported_descriptor.bin"));

/// The generated prost messages and tonic client and server of `kitchen.v1`.
#[cfg(feature = "grpc")]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/kitchen_includes.rs"));
}
