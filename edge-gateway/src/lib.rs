//! meshgate edge gateway on Pingora: REST/JSON transcoded from `google.api.http` annotations,
//! gRPC-web (binary and text) and native gRPC pass-through, all on one port.
//!
//! # Layout
//! - The wire formats (HttpRule templates and the route table, gRPC and gRPC-web framing,
//!   `grpc-*` header values, W3C/B3 trace context, content types, percent-encoding, ETag
//!   matching) are the `meshgate_wire` crate's, shared with the filters and the load generator.
//! - [`transcode`]: path/query/JSON body → request message, response message → JSON (pure).
//! - [`status`], [`error`]: gRPC ↔ HTTP status and the one place errors become responses
//!   (pure); [`protocol`]: the one protocol type (labels, error shape, what filters see).
//! - [`grpc_compression`]: `grpc-encoding` and size-bounded gzip decompression (pure).
//! - [`cors`]: edge policy (pure); [`openapi`]: OpenAPI 3.1 from the descriptors
//!   (pure).
//! - [`validate`]: `buf.validate` field rules from the descriptors, checked on REST and
//!   gRPC-web requests (pure).
//! - [`balance`] (health thresholds, outlier ejection, panic routing), [`discovery`] (upstream
//!   targets, TTL refresh, endpoint set changes), [`conn_limits`] (connection caps, header
//!   deadline): resilience policy (pure).
//! - [`auth`]: JWT bearer tokens required per method or route (`gateway.auth`): the policy
//!   and the key set (pure), verification and the key refresh.
//! - [`config`]: YAML + flags/env → one validated [`config::GatewayConfig`] (pure schema,
//!   overrides and checks; its `load` reads the YAML file and the TLS files it names).
//! - [`state`]: what every request shares, built once from the config (loads descriptor sets).
//! - [`upstream`]: endpoints, tonic channels, gRPC health checks, load balancing, retries;
//!   [`dns`]: the resolver behind upstream names.
//! - [`listener`]: the connection gate in front of pingora's HTTP handling (caps, header
//!   deadline); [`lifecycle`]: draining, in-flight requests, drain-aware shutdown.
//! - [`hooks`]: the request/response filter seam; [`wasm_filters`]: the istio-filters `.wasm`
//!   modules (`gateway.filters`) behind it.
//! - [`static_files`]: the web page from `static_dir` for paths no API route claims (reads
//!   files; its path resolution is pure).
//! - [`proxy`]: the single `ProxyHttp` impl, one module per concern under it ([`proxy::classify`]
//!   decides each request's kind, purely); [`server`]: pingora wiring, one single-threaded
//!   service per worker ([`workers`]: which worker a thread is); [`telemetry`]: the server
//!   span exported over OTLP (`gateway.otlp`); [`metrics`]: the Prometheus series; [`tls`]: the
//!   TLS listener's certificate (cargo feature `rustls`, on by default).
// `deny`, not `forbid`: one function (`server::duplicate`) duplicates a listening socket that
// pingora's table of inherited sockets holds as a raw descriptor, which needs `unsafe`.
#![deny(unsafe_code)]

pub mod auth;
pub mod balance;
pub mod config;
pub mod conn_limits;
pub mod cors;
pub mod discovery;
pub mod dns;
pub mod error;
pub mod grpc_compression;
pub mod hooks;
pub mod lifecycle;
pub mod listener;
pub mod metrics;
pub mod openapi;
pub mod protocol;
pub mod proxy;
pub mod server;
pub mod state;
pub mod static_files;
pub mod status;
pub mod telemetry;
#[cfg(feature = "rustls")]
pub mod tls;
pub mod transcode;
pub mod upstream;
pub mod validate;
pub mod wasm_filters;
pub mod workers;
