//! The built-in filters run natively: the `meshgate-filter-core` roots and streams the `.wasm`
//! modules wrap, called directly (what Envoy calls the null VM). They get the same
//! pluginConfig, run against the same [`ExchangeState`] and the same shared-data store as the
//! wasm guests, and this host answers every call as the proxy-wasm SDK over the ABI would
//! (header maps, empty buffers as absent, CAS numbers, log levels), so a policy behaves the
//! same in the edge and in a sidecar; the gateway's parity suite checks that it does.

use std::sync::Arc;

use meshgate_filter_core::filter::{self, ConfigError, Filter, Stream};
use meshgate_filter_core::filters::{
    bundle::Bundle, cache_headers::CacheHeaders, rate_limit::RateLimit,
    span_enrichment::SpanEnrichment,
};
use meshgate_filter_core::host::{self, Host, LocalReply, MetricId, SharedEntry, SharedWriteError};
use proxy_wasm_host::abi::v0_2_1::types::{LogLevel, MetricType, Status};
use proxy_wasm_host::abi::v0_2_1::{
    Clock, ContextId, GuestId, HeaderPairs, Invocation, LocalResponse, SharedServices,
};
use proxy_wasm_host::{Buffer, HeaderMap, VecHeaderMap};

use crate::logs::LogBuffer;
use crate::shared::MeteredStore;
use crate::stream_state::{ExchangeState, from_map};

/// A filter of `meshgate-filter-core` that the gateway can run natively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltIn {
    SpanEnrichment,
    RateLimit,
    CacheHeaders,
    /// The three in one stream context (`meshgate_filters.wasm`).
    Bundle,
}

impl BuiltIn {
    pub const ALL: [Self; 4] = [
        Self::SpanEnrichment,
        Self::RateLimit,
        Self::CacheHeaders,
        Self::Bundle,
    ];

    /// The name configs use: `span-enrichment`, `rate-limit`, `cache-headers`, `bundle`.
    pub fn name(self) -> &'static str {
        match self {
            Self::SpanEnrichment => "span-enrichment",
            Self::RateLimit => "rate-limit",
            Self::CacheHeaders => "cache-headers",
            Self::Bundle => "bundle",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|builtin| builtin.name() == name)
    }

    /// The module built from the same code, without `.wasm` (`meshgate_rate_limit`).
    pub fn module(self) -> &'static str {
        match self {
            Self::SpanEnrichment => "meshgate_span_enrichment",
            Self::RateLimit => "meshgate_rate_limit",
            Self::CacheHeaders => "meshgate_cache_headers",
            Self::Bundle => "meshgate_filters",
        }
    }

    /// Configures one root (one worker's, as one VM's `on_configure`); `Err` is the line the
    /// module would log when refusing the config.
    pub(crate) fn configure(
        self,
        config: &[u8],
        host: &mut NativeHost<'_>,
    ) -> Result<Box<dyn NativeRoot>, String> {
        match self {
            Self::SpanEnrichment => configure::<SpanEnrichment>(config, host),
            Self::RateLimit => configure::<RateLimit>(config, host),
            Self::CacheHeaders => configure::<CacheHeaders>(config, host),
            Self::Bundle => configure::<Bundle>(config, host),
        }
    }
}

fn configure<F: Filter>(
    config: &[u8],
    host: &mut NativeHost<'_>,
) -> Result<Box<dyn NativeRoot>, String> {
    host.log(host::LogLevel::Info, &filter::started_line(F::NAME));
    F::configure(config, host)
        .map(|root| Box::new(Arc::new(root)) as Box<dyn NativeRoot>)
        .map_err(|error: ConfigError| filter::refusal_line(F::NAME, &error))
}

/// A configured root of any built-in filter: hands out its streams.
pub(crate) trait NativeRoot: Send + Sync {
    fn new_stream(&self) -> Box<dyn Stream + Send>;
}

impl<F: Filter> NativeRoot for Arc<F> {
    fn new_stream(&self) -> Box<dyn Stream + Send> {
        Box::new(F::new_stream(self))
    }
}

/// What a plugin's native workers share: the store, the logs and the clock of the plugin, under
/// the VM id its wasm VMs would use.
pub(crate) struct NativeServices {
    pub(crate) store: Arc<MeteredStore>,
    pub(crate) logs: Arc<LogBuffer>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) vm_id: Vec<u8>,
    /// The store takes the caller; a native worker is one guest with one root context.
    call: Invocation,
}

impl NativeServices {
    pub(crate) fn new(
        store: Arc<MeteredStore>,
        logs: Arc<LogBuffer>,
        clock: Arc<dyn Clock>,
        vm_id: Vec<u8>,
    ) -> Self {
        let root = ContextId::try_from(1).unwrap_or_else(|_| unreachable!("1 is a context id"));
        Self {
            store,
            logs,
            clock,
            vm_id,
            call: Invocation::new(GuestId::next(), root),
        }
    }
}

/// The proxy as a native filter sees it: one exchange's state and the plugin's services.
pub(crate) struct NativeHost<'a> {
    services: &'a NativeServices,
    state: &'a mut ExchangeState,
}

impl<'a> NativeHost<'a> {
    pub(crate) fn new(services: &'a NativeServices, state: &'a mut ExchangeState) -> Self {
        Self { services, state }
    }

    /// A filter sent a local reply on this exchange.
    pub(crate) fn replied(&self) -> bool {
        self.state.local.is_some()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn map_value(map: &VecHeaderMap, name: &str) -> Option<String> {
    map.get(name.as_bytes()).map(|value| text(&value))
}

/// Sets (`Some`, replacing in place as the ABI's replace does) or removes a header.
fn set_map_value(map: &mut VecHeaderMap, name: &str, value: Option<&str>) {
    // A `VecHeaderMap` allows every change.
    let _ = match value {
        Some(value) => map.set(name.as_bytes(), value.as_bytes()),
        None => map.remove(name.as_bytes()),
    };
}

/// `size` bytes from `start`, as the SDK returns them: an empty range is `None`, and so is a
/// start past the end (the ABI refuses it).
fn buffer_range(buffer: &Vec<u8>, start: usize, size: usize) -> Option<Vec<u8>> {
    if start > buffer.len() {
        return None;
    }
    let bytes = buffer.copy_range(start, size);
    (!bytes.is_empty()).then_some(bytes)
}

fn abi_level(level: host::LogLevel) -> LogLevel {
    match level {
        host::LogLevel::Trace => LogLevel::Trace,
        host::LogLevel::Debug => LogLevel::Debug,
        host::LogLevel::Info => LogLevel::Info,
        host::LogLevel::Warn => LogLevel::Warn,
        host::LogLevel::Error => LogLevel::Error,
        host::LogLevel::Critical => LogLevel::Critical,
    }
}

impl Host for NativeHost<'_> {
    fn request_header(&self, name: &str) -> Option<String> {
        map_value(&self.state.request_headers, name)
    }
    fn request_headers(&self) -> Vec<(String, String)> {
        from_map(&self.state.request_headers)
    }
    fn set_request_header(&mut self, name: &str, value: Option<&str>) {
        set_map_value(&mut self.state.request_headers, name, value);
    }
    fn response_header(&self, name: &str) -> Option<String> {
        map_value(&self.state.response_headers, name)
    }
    fn response_headers(&self) -> Vec<(String, String)> {
        from_map(&self.state.response_headers)
    }
    fn set_response_header(&mut self, name: &str, value: Option<&str>) {
        set_map_value(&mut self.state.response_headers, name, value);
    }
    fn response_trailer(&self, name: &str) -> Option<String> {
        map_value(&self.state.response_trailers, name)
    }
    fn request_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        buffer_range(&self.state.request_body, start, size)
    }
    fn response_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        buffer_range(&self.state.response_body, start, size)
    }
    fn clear_response_body(&mut self, start: usize, size: usize) {
        // A `Vec` buffer allows every change.
        let _ = self.state.response_body.replace(start, size, &[]);
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        let key = path.join(".");
        self.state
            .property_value(&key)
            .filter(|value| !value.is_empty())
            .map(<[u8]>::to_vec)
    }
    fn set_property(&mut self, path: &[&str], value: &[u8]) {
        self.state.set_filter_state(path.join("."), value);
    }
    fn shared_data(&self, key: &str) -> SharedEntry {
        let services = self.services;
        match services
            .store
            .get_shared_data(services.call, &services.vm_id, key.as_bytes())
        {
            Ok(shared) => SharedEntry {
                value: (!shared.bytes.is_empty()).then_some(shared.bytes),
                cas: Some(shared.cas.get()),
            },
            Err(_) => SharedEntry::default(),
        }
    }
    fn set_shared_data(
        &mut self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedWriteError> {
        let services = self.services;
        // The ABI reads a CAS of 0 as "no comparison".
        let cas = cas.filter(|cas| *cas != 0);
        match services.store.set_shared_data(
            services.call,
            &services.vm_id,
            key.as_bytes(),
            value,
            cas,
        ) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SharedWriteError::CasMismatch),
            Err(_) => Err(SharedWriteError::Refused),
        }
    }
    fn now_nanos(&self) -> u64 {
        self.services.clock.realtime_nanos()
    }
    fn send_local_reply(&mut self, reply: LocalReply) {
        let headers: HeaderPairs<'static> = reply
            .headers
            .into_iter()
            .map(|(k, v)| (k.into_bytes().into(), v.into_bytes().into()))
            .collect();
        // The SDK's two calls: a gRPC reply is status 200 with the message as its body.
        let response = match reply.grpc_status {
            Some(code) => LocalResponse::new(200)
                .with_body(
                    String::from_utf8_lossy(&reply.body)
                        .into_owned()
                        .into_bytes(),
                )
                .with_headers(headers)
                .with_grpc_status(host::grpc_status_on_wire(code)),
            None => LocalResponse::new(reply.status)
                .with_body(reply.body)
                .with_headers(headers),
        };
        self.state.local = Some(response);
    }
    fn define_counter(&mut self, name: &str) -> Option<MetricId> {
        let services = self.services;
        services
            .store
            .define_metric(
                services.call,
                &services.vm_id,
                MetricType::Counter,
                name.as_bytes(),
            )
            .ok()
            .map(|id| MetricId(id.get()))
    }
    fn increment_counter(&mut self, metric: MetricId, delta: i64) {
        if let Ok(id) = metric.0.try_into() {
            let _ = self
                .services
                .store
                .increment_metric(self.services.call, id, delta);
        }
    }
    fn log(&self, level: host::LogLevel, message: &str) {
        self.services
            .logs
            .push(abi_level(level), message.to_owned());
    }
}
