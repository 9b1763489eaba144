//! Shared helpers: locating the built modules, loading plugins, building gRPC bodies.

use std::sync::{Arc, LazyLock};

use meshgate_filter_host::{
    Chain, Completed, LoadError, ManualClock, Plugin, PluginOptions, Request, Runtime,
};
use prost::Message;

pub const RATE_LIMIT: &str = "meshgate_rate_limit";
pub const CACHE_HEADERS: &str = "meshgate_cache_headers";
pub const SPAN_ENRICHMENT: &str = "meshgate_span_enrichment";
/// The three in one module and one stream context (`meshgate-filters`).
pub const BUNDLE: &str = "meshgate_filters";

/// Epoch nanoseconds the manual clocks start at (any fixed instant works).
pub const START: u64 = 1_800_000_000_000_000_000;
pub const SECOND: u64 = 1_000_000_000;

static RUNTIME: LazyLock<Runtime> =
    LazyLock::new(|| Runtime::new().unwrap_or_else(|e| panic!("wasmtime runtime: {e}")));

pub use meshgate_test_support::wasm::module_bytes;

pub fn try_load(
    module: &str,
    config: &str,
    workers: usize,
    clock: Arc<ManualClock>,
) -> Result<Plugin, LoadError> {
    Plugin::load(
        &RUNTIME,
        module,
        &module_bytes(module),
        config,
        PluginOptions {
            workers,
            clock,
            ..PluginOptions::default()
        },
    )
}

pub fn load(module: &str, config: &str, workers: usize, clock: Arc<ManualClock>) -> Arc<Plugin> {
    Arc::new(try_load(module, config, workers, clock).unwrap_or_else(|e| panic!("{e}")))
}

pub fn chain(module: &str, config: &str, workers: usize) -> (Chain, Arc<Plugin>, Arc<ManualClock>) {
    let clock = ManualClock::new(START);
    let plugin = load(module, config, workers, Arc::clone(&clock));
    (Chain::new(vec![Arc::clone(&plugin)]), plugin, clock)
}

/// A gRPC frame of `message`.
pub fn frame(message: &impl Message) -> Vec<u8> {
    meshgate_wire::grpc::message_frame(&message.encode_to_vec())
}

pub fn grpc(method: &str, body: Vec<u8>) -> Request {
    Request::new("POST", &format!("/user.UserService/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
}

pub fn grpc_web(method: &str, body: Vec<u8>) -> Request {
    Request::new("POST", &format!("/user.UserService/{method}"))
        .header("content-type", "application/grpc-web+proto")
        .body(body)
}

pub fn grpc_web_text(method: &str, body: &[u8]) -> Request {
    use base64::Engine as _;
    Request::new("POST", &format!("/user.UserService/{method}"))
        .header("content-type", "application/grpc-web-text")
        .body(
            base64::engine::general_purpose::STANDARD
                .encode(body)
                .into_bytes(),
        )
}

pub fn get_user(id: &str) -> meshgate_proto::user::GetUserRequest {
    meshgate_proto::user::GetUserRequest { id: id.to_owned() }
}

/// Filter state a completed exchange carries (`meshgate.grpc_method`, ...).
pub fn attribute<'a>(done: &'a Completed, key: &str) -> Option<&'a str> {
    done.attributes
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Runs `per_worker` requests on each of `workers` VMs at once (a thread each, as Envoy's
/// worker threads would) and returns how many went through without a local reply.
pub fn allowed_across_workers(
    chain: &Arc<Chain>,
    workers: usize,
    per_worker: usize,
    request: fn() -> Request,
) -> usize {
    let handles: Vec<_> = (0..workers)
        .map(|worker| {
            let chain = Arc::clone(chain);
            std::thread::spawn(move || {
                (0..per_worker)
                    .filter(|_| {
                        let exchange = chain.on_request_on_worker(worker, request());
                        exchange.local_reply().is_none()
                    })
                    .count()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).sum()
}
