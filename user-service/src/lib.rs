//! The meshgate user service: `user.UserService` over gRPC (tonic), users stored in PostgreSQL
//! (sqlx) or an embedded SQLite file, read through a Valkey/Redis or in-process cache.
//!
//! # Layout
//!
//! - [`domain`]: users, parsed values (`Email`, `Name`, `Age`), the [`domain::UserStore`] port
//!   and its errors: the `meshgate-user-domain` crate, which depends on no transport or storage
//!   crate.
//! - [`repair`]: the rules that repair stored rows breaking the input rules (contract phase).
//! - [`store`]: the PostgreSQL and SQLite implementations of the port, and the migration runner.
//! - [`cache`]: the read-through cache decorator (Redis or in-process).
//! - [`events`]: user change events: the outbox's records, the relay to NATS JetStream and the
//!   worker.
//! - [`grpc`]: the thin tonic adapter (wire ↔ domain, errors → status codes): `user.UserService`
//!   and, in `grpc::v2`, `user.v2.UserService`, both over the same domain and store.
//! - [`page_token`]: user.v2 ListUsers' signed, opaque page tokens (pure).
//! - [`health`]: liveness and readiness (`grpc.health.v1`), the K-consecutive readiness rule.
//! - [`config`], [`telemetry`], [`metrics`]: settings, logs/traces, Prometheus.
//! - [`startup`]: [`Application`], which wires the above; `main.rs` only parses and runs it.
#![forbid(unsafe_code)]

pub mod cache;
pub mod config;
pub mod events;
pub mod grpc;
pub mod health;
pub mod idempotency;
pub mod metrics;
pub mod page_token;
pub mod repair;
pub mod startup;
pub mod store;
pub mod telemetry;

pub use config::{Config, ConfigError};
pub use meshgate_user_domain as domain;
pub use startup::Application;
