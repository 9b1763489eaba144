//! The wire formats meshgate speaks, written once for the edge gateway, the proxy-wasm filters,
//! the load generator and the fuzz targets. Pure: no I/O, no runtime; builds for wasm32-wasip1.
//!
//! # Layout
//! - [`percent`]: percent-decoding of path segments (strict) and query strings.
//! - [`path_template`]: `google.api.http` path templates (parse, match, specificity).
//! - [`routes`]: the REST route table of `google.api.http` rules, from a prost-reflect pool
//!   (feature `descriptors`) or a [`schema`] (feature `schema`).
//! - [`schema`] (feature `schema`): a compact schema of a descriptor set and a protobuf wire
//!   reader (check a message, read a scalar at a field path).
//! - [`grpc`]: 5-byte message frames, trailer blocks, `/Service/Method` paths, status names,
//!   the streaming message-size guard.
//! - [`grpc_web`]: gRPC-web content types, grpc-web-text base64 (padding anywhere), and with
//!   feature `stream` the streaming request decoder and response encoder.
//! - [`grpc_headers`]: `grpc-timeout`, `grpc-message`, `grpc-status(-details-bin)` values.
//! - [`content_type`]: media types and which gRPC protocol a `content-type` names.
//! - [`trace`]: W3C `traceparent` and B3 parsing; with feature `trace-ids` a fresh context.
//! - [`etag`]: `If-None-Match` evaluation.
//! - [`hex`]: lower-case hex of ids and digests.
//! - [`sse`]: Server-Sent Events (`text/event-stream`) events and comments.
//!
//! Invariant: nothing here panics on input.
#![forbid(unsafe_code)]
// The .wasm filters call this crate: a panic would abort the proxy's Wasm VM. Tests may unwrap
// (clippy.toml: allow-*-in-tests).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod content_type;
pub mod etag;
pub mod grpc;
pub mod grpc_headers;
pub mod grpc_web;
pub mod hex;
pub mod path_template;
pub mod percent;
#[cfg(any(feature = "descriptors", feature = "schema"))]
pub mod routes;
#[cfg(feature = "schema")]
pub mod schema;
pub mod sse;
pub mod trace;
