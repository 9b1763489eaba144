//! The upstream side. Every `upstreams` entry is an `IP:port` or a `host:port` whose A/AAAA
//! records are resolved again as their TTL runs out ([`crate::discovery`], [`crate::dns`]);
//! each address is an [`Endpoint`] with a lazily made HTTP/2 (h2c, multiplexed) connection for
//! traffic per proxy worker ([`crate::workers`]), re-made after it closed (the `h2` crate's
//! client; a call is one request carrying its message frame, its response decoded here with
//! `meshgate_wire`'s framing: no tonic client, no `Buffer` or hyper dispatch task per call),
//! and a tonic `Channel` for `grpc.health.v1` checks. Endpoints come and go without a restart;
//! a removed one is no longer picked, and calls under way keep its connection until they finish
//! (drained). Picking, health thresholds, passive ejection and panic routing are
//! [`crate::balance`]; retries spend tower's `TpsBudget`, except failovers of attempts that
//! provably sent nothing (connect failures), which are free for any method.
//!
//! pingora's `LoadBalancer` + `ServiceDiscovery` was the obvious seam but does not fit: its
//! discovery runs on one fixed `update_frequency` shared with the health checks (no per-name
//! TTL), new backends start healthy, and selection has no hook for ejection or panic routing.
//! The background work here still runs as a pingora background service.
//!
//! - `pool`: the endpoint set (an [`Endpoint`] per address, its connections and health) and
//!   picking from it.
//! - `client`: the traffic connection per endpoint and the HTTP/2 request of a call.
//! - `call`: a call over the pool, with free failovers, retries and the deadline.
//! - `response`: a call's response: headers, then messages read from the body, then trailers.
//! - `decode`: the pure part of reading a response (the head's outcome, message framing across
//!   chunks, the status in the trailers).
//! - `maintenance`: the background service (DNS refreshes, active health checks).
//! - `stream`: a server stream relayed to a client through a bounded buffer.

mod call;
mod client;
mod decode;
mod maintenance;
mod pool;
mod response;
pub mod stream;

pub use self::{
    call::{Upstreams, sent_nothing},
    client::ConnectError,
    maintenance::UpstreamMaintenance,
    pool::{Endpoint, UpstreamPool},
    response::{Messages, UpstreamResponse},
};
pub use crate::config::UpstreamSettings;

/// How an attempt on an endpoint went, for passive health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered (any status).
    Answered,
    /// Connect failure, reset, broken connection.
    TransportFailure,
}
