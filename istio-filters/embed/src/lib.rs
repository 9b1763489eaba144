//! Runs the meshgate proxy-wasm filters in the edge gateway and the tests: the `.wasm` modules
//! on `proxy-wasm-host` (wasmtime), or the same filters natively (Envoy's "null VM"), with the
//! same pluginConfig JSON, the same stream state and the same shared-data store either way.
//!
//! ```text
//! Runtime::new()                       one wasmtime engine + linked ABI per process
//! Plugin::load(&rt, name, wasm, json, PluginOptions { workers, clock, .. })
//!                                      N worker VMs ("Envoy worker threads") sharing one
//!                                      shared-data store; refused config -> LoadError::Refused
//! Plugin::load_native(name, BuiltIn::Bundle, json, PluginOptions { .. })
//!                                      the same filter natively: N configured roots, one store
//! Chain::new(vec![plugins..])          filters in order (request in order, response reversed)
//! chain.on_request(Request) -> Exchange
//!     exchange.local_reply()           Some(response): send it, skip upstream
//!     exchange.request()               the request to forward (headers mutated by filters)
//! exchange.on_response(Response) -> Completed { response, attributes }
//! ```
//! Attributes are the filter state the filters set (`meshgate.grpc_method`, ...): what the
//! gateway puts on its own span.
//!
//! # Layout
//! - [`error`]: load and request errors; `lifecycle`: [`FailStrategy`] and the failure counters.
//! - `engine`: the wasmtime engine and module cache, the clocks.
//! - `pool`: [`Plugin`], its workers (wasm VMs or native roots) and how a stream runs on them.
//! - `native`: [`BuiltIn`] and the host the native filters call.
//! - `request`: [`Request`] / [`Response`]; `chain`: [`Chain`] / [`Exchange`].
//! - `stream_state`: one exchange's state as both runtimes see it.
//! - `shared`: shared data and readable metrics; `logs`: the bounded log buffer.
#![forbid(unsafe_code)]

mod chain;
mod engine;
pub mod error;
mod lifecycle;
mod logs;
mod native;
mod pool;
mod request;
mod shared;
mod stream_state;

use std::sync::{Mutex, MutexGuard, PoisonError};

pub use chain::{Chain, Completed, Exchange};
pub use engine::{ManualClock, Runtime};
pub use error::{Failure, FilterError, LoadError};
pub use lifecycle::{FAILURES_COUNTER, FailStrategy, RELOADS_COUNTER};
pub use native::BuiltIn;
pub use pool::{Plugin, PluginOptions};
pub use request::{Request, Response};

// The gateway moves exchanges across tasks and shares chains between threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    const fn assert_send<T: Send>() {}
    assert_send_sync::<Chain>();
    assert_send_sync::<Plugin>();
    assert_send::<Exchange>();
};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
