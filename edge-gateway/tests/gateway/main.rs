//! End-to-end tests: the real gateway (pingora, in process, on a free port) in front of real
//! tonic servers, driven by real HTTP/1.1, HTTP/2 and gRPC clients.

mod dns_server;
mod helpers;

mod admin;
mod api_versions;
mod auth;
mod connections;
mod contract;
mod cors;
mod discovery;
mod faults;
mod filter_lifecycle;
mod filter_parity;
mod grpc_native;
mod grpc_web;
mod grpc_web_compression;
mod metrics_contract;
mod real_user_service;
mod rest_kitchen;
mod rest_user;
mod static_files;
mod tls;
mod upstreams;
mod wasm_filters;
mod watch;
