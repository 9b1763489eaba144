//! Test harnesses shared across meshgate's crates, so that each exists once. Dev-only: no
//! shipped crate depends on it.
//!
//! - [`kitchen`]: the test-only `kitchen.proto` (every field kind and HttpRule shape) and a
//!   proto with a rule the gateway refuses, compiled once here (descriptor sets; tonic stubs with
//!   the `grpc` feature).
//! - [`wasm`]: where the built `.wasm` filter modules are; a guest that traps on demand
//!   (feature `trapping-guest`).
//! - [`metrics_contract`]: the drift guard between `deploy/observability/METRICS.md` and a
//!   real `/metrics` scrape.
//! - [`wait`] (feature `wait`): waiting on a condition instead of sleeping; a port held closed.
//! - [`process`] (feature `process`): the gateway binary's log lines and the ports it bound.
//! - [`user_service`] (feature `user-service`): the real user-service in process.
//! - [`otlp`] (feature `otlp`): an OTLP/gRPC trace collector the test reads from.
#![forbid(unsafe_code)]

pub mod kitchen;
pub mod metrics_contract;
#[cfg(feature = "otlp")]
pub mod otlp;
#[cfg(feature = "process")]
pub mod process;
#[cfg(feature = "user-service")]
pub mod user_service;
#[cfg(feature = "wait")]
pub mod wait;
pub mod wasm;
