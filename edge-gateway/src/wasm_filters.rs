//! The istio-filters filters behind the gateway's filter seam ([`crate::hooks`]), with the same
//! pluginConfig JSON as the mesh's WasmPlugins: the built-in filters natively (the same
//! `meshgate-filter-core` code the `.wasm` modules wrap, Envoy's "null VM"), any proxy-wasm
//! module (ours included) on wasmtime — per filter, `runtime: native | wasm` in the config.
//! Both run on `meshgate-filter-host` with the same stream state and shared-data store, and
//! the gateway's parity suite checks that they answer alike.
//!
//! The filters run as one [`Chain`] (request phase in config order, response phase reversed),
//! so one [`Exchange`] carries a request's streams to its response. Filter calls take
//! microseconds, so they run inline on pingora's threads; `workers` per filter (VMs, or native
//! roots) keep those threads from waiting on each other. `Exchange` is `Send`, so it lives in
//! the proxy's per-request context across awaits.
//!
//! A filter that fails (a trapping guest, a panicking native filter) gets its `failStrategy`,
//! as in the mesh: `FAIL_CLOSE` (the default) answers 503 / `UNAVAILABLE` in the client's
//! protocol, `FAIL_OPEN` lets the request go on without the filter; a trapped VM is rebuilt
//! before its next request (Envoy's reload). A response already streamed to the client (gRPC,
//! gRPC-web) cannot be replaced, so there a failure is only logged and counted. The filters'
//! counters (and `meshgate_filter_failures` / `meshgate_filter_vm_reloads`) are served on the
//! metrics port under the names the filters define, labelled with the filter's name.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use meshgate_filter_host::{Chain, Exchange, LoadError, Plugin, PluginOptions, Request, Response};
use meshgate_wire::{grpc, grpc_headers};
use prometheus::IntCounterVec;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use crate::{
    config::{FilterRuntime, FilterSpec},
    hooks::{
        Decision, Filter, FilterChain, FilterRequest, FilterResponse, LocalReply, PendingResponse,
    },
    protocol::Protocol,
};

/// A filter that could not be started; names the config entry.
#[derive(Debug, thiserror::Error)]
pub enum FilterLoadError {
    #[error("wasm runtime: {0}")]
    Runtime(String),
    #[error("gateway.filters[{index}] ({name}, {runs}): {source}")]
    Plugin {
        index: usize,
        name: String,
        /// `native <builtin>` or the module's path.
        runs: String,
        source: Box<LoadError>,
    },
}

/// Loads every configured filter (configuring native roots, compiling modules and starting
/// their VMs) into the chain the proxy runs, and serves their counters. No filters: an empty
/// chain; no wasm filter: no wasm runtime is created.
pub fn load(specs: &[FilterSpec]) -> Result<FilterChain, FilterLoadError> {
    if specs.is_empty() {
        return Ok(FilterChain::default());
    }
    let mut wasm_runtime = None;
    let mut plugins = Vec::with_capacity(specs.len());
    for (index, spec) in specs.iter().enumerate() {
        let options = PluginOptions {
            workers: spec.workers,
            fail_strategy: spec.fail_strategy,
            ..Default::default()
        };
        let (loaded, runs) = match &spec.runtime {
            FilterRuntime::Native(builtin) => (
                Plugin::load_native(&spec.name, *builtin, &spec.config_json, options),
                format!("native {}", builtin.name()),
            ),
            FilterRuntime::Wasm { module } => {
                let runtime = match &wasm_runtime {
                    Some(runtime) => runtime,
                    None => wasm_runtime.insert(
                        meshgate_filter_host::Runtime::new()
                            .map_err(|e| FilterLoadError::Runtime(e.to_string()))?,
                    ),
                };
                (
                    Plugin::load_file(runtime, &spec.name, module, &spec.config_json, options),
                    module.display().to_string(),
                )
            }
        };
        let plugin = loaded.map_err(|source| FilterLoadError::Plugin {
            index,
            name: spec.name.clone(),
            runs,
            source: Box::new(source),
        })?;
        plugins.push(Arc::new(plugin));
    }
    Ok(FilterChain::new(vec![Arc::new(IstioFilters {
        chain: Chain::new(plugins),
    })]))
}

/// The configured filters as one seam filter.
pub struct IstioFilters {
    chain: Chain,
}

impl IstioFilters {
    pub fn plugins(&self) -> &[Arc<Plugin>] {
        self.chain.plugins()
    }
}

impl Filter for IstioFilters {
    fn metrics(&self) -> Option<Box<dyn Collector>> {
        Some(Box::new(FilterMetrics::new(self.chain.plugins())))
    }

    fn on_request(&self, request: &mut FilterRequest<'_>) -> Decision {
        let exchange = self.chain.on_request(to_host_request(request));
        for error in exchange.failures() {
            tracing::warn!(%error, "filter failed on the request");
        }
        if let Some(reply) = exchange.local_reply() {
            let mut reply = local_reply(reply);
            reply.attributes = exchange.attributes();
            return Decision::Respond(reply);
        }
        // The filters see the authority as `:authority`; the hop keeps its Host header.
        let host = request.headers.get(http::header::HOST).cloned();
        replace_headers(request.headers, &exchange.request().headers);
        if let Some(host) = host {
            request.headers.insert(http::header::HOST, host);
        }
        Decision::Track(Box::new(PendingExchange {
            exchange,
            protocol: request.protocol,
        }))
    }
}

/// The filters' counters (`meshgate_rate_limit_allowed`, ...) with a `filter` label, read from
/// the filters' stores at each scrape.
struct FilterMetrics {
    plugins: Vec<Arc<Plugin>>,
    /// One family per counter name, refilled at each scrape (the lock keeps scrapes apart).
    families: Mutex<Vec<(String, IntCounterVec)>>,
    descs: Vec<Desc>,
}

impl FilterMetrics {
    fn new(plugins: &[Arc<Plugin>]) -> Self {
        let mut names: Vec<String> = plugins
            .iter()
            .flat_map(|plugin| plugin.counters().into_iter().map(|(name, _)| name))
            .collect();
        names.sort();
        names.dedup();
        let families: Vec<(String, IntCounterVec)> = names
            .into_iter()
            .filter_map(|name| {
                let opts = prometheus::Opts::new(
                    name.clone(),
                    "A counter an istio-filters filter defines, summed over its workers.",
                );
                let family = IntCounterVec::new(opts, &["filter"]).ok()?;
                Some((name, family))
            })
            .collect();
        let descs = families
            .iter()
            .flat_map(|(_, family)| family.desc().into_iter().cloned())
            .collect();
        Self {
            plugins: plugins.to_vec(),
            families: Mutex::new(families),
            descs,
        }
    }
}

impl Collector for FilterMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let families = self
            .families
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (_, family) in families.iter() {
            family.reset();
        }
        for plugin in &self.plugins {
            for (name, value) in plugin.counters() {
                if let Some((_, family)) = families.iter().find(|(n, _)| *n == name) {
                    family
                        .with_label_values(&[plugin.name()])
                        .inc_by(u64::try_from(value).unwrap_or(0));
                }
            }
        }
        families
            .iter()
            .flat_map(|(_, family)| family.collect())
            .collect()
    }
}

/// One request's stream contexts, waiting for the response.
struct PendingExchange {
    exchange: Exchange,
    protocol: Protocol,
}

impl PendingResponse for PendingExchange {
    fn on_response(self: Box<Self>, response: &mut FilterResponse<'_>) {
        let host_response = to_host_response(self.protocol, response);
        let completed = self.exchange.on_response(host_response);
        for failure in &completed.failures {
            tracing::warn!(error = %failure, "filter failed on the response");
        }
        response.attributes.extend(completed.attributes);
        // Only a buffered response can change; a streamed one has already been sent as is.
        if completed.failed_closed
            && let Some(body) = response.body.as_deref_mut()
        {
            // Written as the gateway writes its own errors: google.rpc.Status JSON.
            let reply = local_reply(&completed.response);
            let code = reply
                .grpc_status
                .unwrap_or_else(|| crate::status::grpc_code_for_http(reply.http_status) as i32);
            *response.http_status = reply.http_status;
            response.headers.clear();
            response.headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            *body = Bytes::from(crate::status::status_json(
                &prost_reflect::DescriptorPool::global(),
                code,
                &reply.message,
                None,
            ));
            return;
        }
        if let Some(body) = response.body.as_deref_mut() {
            *response.http_status = completed.response.status;
            replace_headers(response.headers, &completed.response.headers);
            *body = Bytes::from(completed.response.body);
        }
    }
}

/// The request as a proxy-wasm filter in Envoy would see it.
fn to_host_request(request: &FilterRequest<'_>) -> Request {
    let mut host = Request::new(request.http_method, request.uri);
    host.scheme = "http".to_owned();
    if let Some(authority) = request.headers.get("host").and_then(|v| v.to_str().ok()) {
        host.authority = authority.to_owned();
    }
    host.headers = request
        .headers
        .iter()
        .filter(|(name, _)| name.as_str() != "host")
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    if let Some(body) = request.body {
        host.body = body.to_vec();
    }
    host.source_address = request.client_addr.map(str::to_owned);
    host
}

/// The response as Envoy would hand it to the filters: REST whole, gRPC and gRPC-web (already
/// streamed to the client) with their status in the trailers, for the enrichment to read.
fn to_host_response(protocol: Protocol, response: &FilterResponse<'_>) -> Response {
    let mut host = Response::new(*response.http_status);
    host.headers = response
        .headers
        .iter()
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    match response.body.as_deref() {
        Some(body) => host.body = body.to_vec(),
        None => {
            let content_type = match protocol {
                Protocol::GrpcWeb => "application/grpc-web+proto",
                // The filters only run on REST, gRPC-web and gRPC calls.
                Protocol::Grpc
                | Protocol::Rest
                | Protocol::Static
                | Protocol::Admin
                | Protocol::Preflight => "application/grpc",
            };
            if !host.headers.iter().any(|(name, _)| name == "content-type") {
                host.headers
                    .push(("content-type".to_owned(), content_type.to_owned()));
            }
            if let Some(message) = response.message {
                host.body = grpc::message_frame(message);
            }
            host.trailers
                .push(("grpc-status".to_owned(), response.grpc_status.to_string()));
        }
    }
    host
}

/// Headers the gateway sets itself when it writes a local reply in the client's protocol.
const SHAPED_BY_THE_GATEWAY: &[&str] = &[
    "content-type",
    "content-length",
    "grpc-status",
    "grpc-message",
];

/// A filter's local reply (already in Envoy's shape for the request's protocol) as the seam's
/// [`LocalReply`]; the proxy writes it in the client's protocol, with CORS and trace headers.
pub fn local_reply(reply: &Response) -> LocalReply {
    let grpc_status = reply
        .header_value("grpc-status")
        .and_then(|v| v.trim().parse::<i32>().ok());
    let message = match reply.header_value("grpc-message") {
        // Percent-encoded on the wire; the proxy encodes it again when writing.
        Some(message) => grpc_headers::decode_message(message),
        None => reply_message(&reply.body),
    };
    let http_status = match grpc_status {
        Some(code) if reply.status == 200 => crate::status::http_status_for(code),
        _ => reply.status,
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &reply.headers {
        if SHAPED_BY_THE_GATEWAY.contains(&name.as_str()) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    LocalReply {
        http_status,
        grpc_status,
        message,
        headers,
        attributes: Vec::new(),
    }
}

/// The `message` of a JSON reply body (`{"error":..,"message":..}`), else the body as text.
fn reply_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|json| json.get("message")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

fn replace_headers(target: &mut HeaderMap, pairs: &[(String, String)]) {
    target.clear();
    for (name, value) in pairs {
        if name.starts_with(':') {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            target.append(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_reply_keeps_status_headers_and_json_message() {
        let reply = Response::new(429)
            .header("content-type", "application/json")
            .header("retry-after", "3")
            .header("ratelimit-policy", "\"users\";q=2;w=60")
            .body(r#"{"error":"RESOURCE_EXHAUSTED","message":"rate limited by rule users"}"#);
        let local = local_reply(&reply);
        assert_eq!(local.http_status, 429);
        assert_eq!(local.grpc_status, None);
        assert_eq!(local.message, "rate limited by rule users");
        assert_eq!(local.headers["retry-after"], "3");
        assert!(local.headers.get("content-type").is_none());
    }

    #[test]
    fn grpc_trailers_only_reply_becomes_status_and_message() {
        let reply = Response::new(200)
            .header("content-type", "application/grpc-web+proto")
            .header("grpc-status", "8")
            .header("grpc-message", "rate%20limited %E2%9C%93")
            .header("retry-after", "1");
        let local = local_reply(&reply);
        assert_eq!(local.grpc_status, Some(8));
        assert_eq!(local.http_status, 429);
        assert_eq!(local.message, "rate limited ✓");
        assert!(local.headers.get("grpc-status").is_none());
        assert_eq!(local.headers["retry-after"], "1");
    }

    #[test]
    fn replace_headers_skips_pseudo_headers_and_bad_values() {
        let mut headers = HeaderMap::new();
        headers.insert("old", HeaderValue::from_static("x"));
        replace_headers(
            &mut headers,
            &[
                (":status".into(), "200".into()),
                ("etag".into(), "\"abc\"".into()),
                ("bad".into(), "a\nb".into()),
            ],
        );
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["etag"], "\"abc\"");
    }
}
