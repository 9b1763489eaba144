//! The filter seam: hooks the proxy pipeline runs on every transcoded (REST, gRPC-web) request
//! and response, and on the headers of native gRPC requests. The wasm filters (istio-filters)
//! plug in here through an implementation of [`Filter`]; the gateway itself knows nothing of wasm.

use bytes::Bytes;
use http::HeaderMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Rest,
    GrpcWeb,
    Grpc,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rest => "rest",
            Self::GrpcWeb => "grpc-web",
            Self::Grpc => "grpc",
        }
    }
}

/// What a filter sees of a request.
#[derive(Debug)]
pub struct FilterRequest<'a> {
    pub protocol: Protocol,
    /// `/package.Service/Method`.
    pub grpc_method: &'a str,
    /// REST route label (`GET /v1/users/{id}`), if REST.
    pub route: Option<&'a str>,
    /// Request headers; changes are forwarded upstream as metadata.
    pub headers: &'a mut HeaderMap,
    /// The encoded request message; `None` for native gRPC (streamed, not buffered).
    pub message: Option<&'a Bytes>,
}

/// What a filter sees of a response.
#[derive(Debug)]
pub struct FilterResponse<'a> {
    pub protocol: Protocol,
    pub grpc_method: &'a str,
    pub grpc_status: i32,
    /// Response headers the client will get; filters may add (cache headers, ...).
    pub headers: &'a mut HeaderMap,
    /// The first response message, if any.
    pub message: Option<&'a Bytes>,
}

/// A local reply that ends the request (e.g. 429 from a rate limit).
#[derive(Debug, Clone)]
pub struct LocalReply {
    pub http_status: u16,
    pub message: String,
    pub headers: HeaderMap,
}

pub enum Decision {
    Continue,
    Respond(LocalReply),
}

pub trait Filter: Send + Sync {
    fn on_request(&self, request: &mut FilterRequest<'_>) -> Decision;
    fn on_response(&self, _response: &mut FilterResponse<'_>) {}
}

/// Filters in configuration order; the first local reply wins.
#[derive(Default, Clone)]
pub struct FilterChain {
    filters: Vec<std::sync::Arc<dyn Filter>>,
}

impl FilterChain {
    pub fn new(filters: Vec<std::sync::Arc<dyn Filter>>) -> Self {
        Self { filters }
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    pub fn on_request(&self, request: &mut FilterRequest<'_>) -> Decision {
        for filter in &self.filters {
            if let Decision::Respond(reply) = filter.on_request(request) {
                return Decision::Respond(reply);
            }
        }
        Decision::Continue
    }

    pub fn on_response(&self, response: &mut FilterResponse<'_>) {
        for filter in &self.filters {
            filter.on_response(response);
        }
    }
}

impl std::fmt::Debug for FilterChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FilterChain({} filters)", self.filters.len())
    }
}
