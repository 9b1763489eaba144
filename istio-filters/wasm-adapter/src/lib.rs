//! The proxy-wasm side of the meshgate filters: [`WasmHost`] implements the core
//! [`Host`] trait with proxy-wasm host calls, and [`register`] installs a
//! [`Filter`] as the module's root context. A filter cdylib is one `register` call.
//!
//! Every host call's `Result` is handled here (absent value or logged no-op), so the filter
//! logic never sees a host status. (The SDK itself still traps on statuses the ABI does not
//! allow for a call; those mean a broken host, not bad traffic.)
// `deny`, not `forbid`: the allocator (`size_classes`) and the direct host calls (`raw_calls`)
// are the modules allowed unsafe code.
#![deny(unsafe_code)]
// A panic in a filter aborts the proxy's Wasm VM and fails every request it serves. Tests may
// unwrap (clippy.toml: allow-*-in-tests).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(unsafe_code)]
mod raw_calls;
#[allow(unsafe_code)]
mod size_classes;

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use meshgate_filter_core::filter::{self, Filter, Stream};
use meshgate_filter_core::host::{self, Host, LocalReply, MetricId, SharedEntry, SharedWriteError};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{
    Action, BufferType, ContextType, GrpcStatusCode, LogLevel, MapType, MetricType, Status,
};

/// Every filter module allocates through size classes (see `size_classes` for why).
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: size_classes::SizeClasses = size_classes::SizeClasses::new();

/// Installs the panic hook (logs at critical through the host) and `F` as the root context.
pub fn register<F: Filter>() {
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("{}: panic: {info}", F::NAME));
    }));
    proxy_wasm::set_root_context(new_root::<F>);
}

fn new_root<F: Filter>(_context_id: u32) -> Box<dyn RootContext> {
    Box::new(Root::<F> { filter: None })
}

/// The proxy, through proxy-wasm host calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct WasmHost;

fn to_level(level: host::LogLevel) -> LogLevel {
    match level {
        host::LogLevel::Trace => LogLevel::Trace,
        host::LogLevel::Debug => LogLevel::Debug,
        host::LogLevel::Info => LogLevel::Info,
        host::LogLevel::Warn => LogLevel::Warn,
        host::LogLevel::Error => LogLevel::Error,
        host::LogLevel::Critical => LogLevel::Critical,
    }
}

impl Host for WasmHost {
    fn request_header(&self, name: &str) -> Option<String> {
        hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
    }
    fn request_headers(&self) -> Vec<(String, String)> {
        raw_calls::header_map(MapType::HttpRequestHeaders)
    }
    fn set_request_header(&mut self, name: &str, value: Option<&str>) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value);
    }
    fn response_header(&self, name: &str) -> Option<String> {
        hostcalls::get_map_value(MapType::HttpResponseHeaders, name)
            .ok()
            .flatten()
    }
    fn response_headers(&self) -> Vec<(String, String)> {
        raw_calls::header_map(MapType::HttpResponseHeaders)
    }
    fn set_response_header(&mut self, name: &str, value: Option<&str>) {
        let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, value);
    }
    fn response_trailer(&self, name: &str) -> Option<String> {
        hostcalls::get_map_value(MapType::HttpResponseTrailers, name)
            .ok()
            .flatten()
    }
    fn request_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpRequestBody, start, size)
            .ok()
            .flatten()
    }
    fn response_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpResponseBody, start, size)
            .ok()
            .flatten()
    }
    fn clear_response_body(&mut self, start: usize, size: usize) {
        let _ = hostcalls::set_buffer(BufferType::HttpResponseBody, start, size, &[]);
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }
    fn set_property(&mut self, path: &[&str], value: &[u8]) {
        match path {
            [key] => raw_calls::set_property(key, value),
            _ => {
                let _ = hostcalls::set_property(path.to_vec(), Some(value));
            }
        }
    }
    fn shared_data(&self, key: &str) -> SharedEntry {
        match hostcalls::get_shared_data(key) {
            Ok((value, cas)) => SharedEntry { value, cas },
            Err(_) => SharedEntry::default(),
        }
    }
    fn set_shared_data(
        &mut self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedWriteError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SharedWriteError::CasMismatch),
            Err(_) => Err(SharedWriteError::Refused),
        }
    }
    fn now_nanos(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            // Whole seconds and the rest: `as_nanos` is a u128, a library call in wasm32.
            .map_or(0, |d| {
                d.as_secs()
                    .saturating_mul(1_000_000_000)
                    .saturating_add(u64::from(d.subsec_nanos()))
            })
    }
    fn send_local_reply(&mut self, reply: LocalReply) {
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let sent = match reply.grpc_status {
            Some(code) => {
                let metadata: Vec<(&str, &[u8])> =
                    headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
                let message = String::from_utf8_lossy(&reply.body);
                hostcalls::send_grpc_response(grpc_code(code), Some(&message), metadata)
            }
            None => hostcalls::send_http_response(reply.status, headers, Some(&reply.body)),
        };
        if sent.is_err() {
            let _ = hostcalls::log(LogLevel::Error, "the proxy refused a local reply");
        }
    }
    fn define_counter(&mut self, name: &str) -> Option<MetricId> {
        hostcalls::define_metric(MetricType::Counter, name)
            .ok()
            .map(MetricId)
    }
    fn increment_counter(&mut self, metric: MetricId, delta: i64) {
        let _ = hostcalls::increment_metric(metric.0, delta);
    }
    fn log(&self, level: host::LogLevel, message: &str) {
        let _ = hostcalls::log(to_level(level), message);
    }
}

fn grpc_code(code: u32) -> GrpcStatusCode {
    match code {
        0 => GrpcStatusCode::Ok,
        1 => GrpcStatusCode::Cancelled,
        3 => GrpcStatusCode::InvalidArgument,
        4 => GrpcStatusCode::DeadlineExceeded,
        5 => GrpcStatusCode::NotFound,
        6 => GrpcStatusCode::AlreadyExists,
        7 => GrpcStatusCode::PermissionDenied,
        8 => GrpcStatusCode::ResourceExhausted,
        9 => GrpcStatusCode::FailedPrecondition,
        10 => GrpcStatusCode::Aborted,
        11 => GrpcStatusCode::OutOfRange,
        12 => GrpcStatusCode::Unimplemented,
        13 => GrpcStatusCode::Internal,
        14 => GrpcStatusCode::Unavailable,
        15 => GrpcStatusCode::DataLoss,
        16 => GrpcStatusCode::Unauthenticated,
        _ => GrpcStatusCode::Unknown,
    }
}

fn to_action(action: host::Action) -> Action {
    match action {
        host::Action::Continue => Action::Continue,
        host::Action::Pause => Action::Pause,
    }
}

// === root context ===

struct Root<F: Filter> {
    filter: Option<Arc<F>>,
}

impl<F: Filter> Context for Root<F> {}

impl<F: Filter> RootContext for Root<F> {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        WasmHost.log(host::LogLevel::Info, &filter::started_line(F::NAME));
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut host = WasmHost;
        match F::configure(&config, &mut host) {
            Ok(filter) => {
                self.filter = Some(Arc::new(filter));
                true
            }
            Err(error) => {
                host.log(
                    host::LogLevel::Error,
                    &filter::refusal_line(F::NAME, &error),
                );
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let stream = self.filter.as_ref().map(Filter::new_stream);
        Some(Box::new(Http::<F> {
            stream,
            _filter: PhantomData,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

// === http context ===

struct Http<F: Filter> {
    /// `None` when the root is unconfigured: the stream passes everything through.
    stream: Option<F::Stream>,
    _filter: PhantomData<F>,
}

impl<F: Filter> Context for Http<F> {}

impl<F: Filter> HttpContext for Http<F> {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.stream.as_mut().map_or(Action::Continue, |s| {
            to_action(s.on_request_headers(&mut WasmHost, end_of_stream))
        })
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.stream.as_mut().map_or(Action::Continue, |s| {
            to_action(s.on_request_body(&mut WasmHost, body_size, end_of_stream))
        })
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.stream.as_mut().map_or(Action::Continue, |s| {
            to_action(s.on_response_headers(&mut WasmHost, end_of_stream))
        })
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.stream.as_mut().map_or(Action::Continue, |s| {
            to_action(s.on_response_body(&mut WasmHost, body_size, end_of_stream))
        })
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.stream.as_mut().map_or(Action::Continue, |s| {
            to_action(s.on_response_trailers(&mut WasmHost))
        })
    }
}
