//! The filter seam: hooks the proxy pipeline runs on every transcoded (REST, gRPC-web) request
//! and response, and on the headers of native gRPC requests. The wasm filters (istio-filters)
//! plug in here through an implementation of [`Filter`]; the gateway itself knows nothing of wasm.
//!
//! A filter that needs per-request state between request and response (the proxy-wasm stream
//! contexts do) answers [`Decision::Track`] with a handle; the proxy keeps the handles in its
//! per-request context ([`PendingFilters`]) and hands them the response.

use bytes::Bytes;
use http::HeaderMap;

use crate::protocol::Protocol;

/// What a filter sees of a request.
#[derive(Debug)]
pub struct FilterRequest<'a> {
    /// REST, gRPC-web or gRPC: the filters run on API calls only.
    pub protocol: Protocol,
    /// `/package.Service/Method`.
    pub grpc_method: &'a str,
    /// REST route label (`GET /v1/users/{id}`), if REST.
    pub route: Option<&'a str>,
    /// The HTTP method and the path with query, as the client sent them.
    pub http_method: &'a str,
    pub uri: &'a str,
    /// The client's address (`ip:port`), if known.
    pub client_addr: Option<&'a str>,
    /// Request headers; changes are forwarded upstream as metadata.
    pub headers: &'a mut HeaderMap,
    /// The encoded request message; `None` for native gRPC (streamed, not buffered).
    pub message: Option<&'a Bytes>,
    /// The request body as the client sent it (JSON, gRPC-web frames); `None` for native gRPC.
    pub body: Option<&'a Bytes>,
}

/// What a filter sees of a response.
#[derive(Debug)]
pub struct FilterResponse<'a> {
    pub protocol: Protocol,
    pub grpc_method: &'a str,
    /// The grpc-status, as on the wire.
    pub grpc_status: i32,
    /// The HTTP status the client will get; a filter may change it (304 Not Modified).
    pub http_status: &'a mut u16,
    /// Response headers the client will get; filters may add (cache headers, ...).
    pub headers: &'a mut HeaderMap,
    /// The first response message, if any.
    pub message: Option<&'a Bytes>,
    /// The body the client will get, when the gateway buffers it (REST); a filter may replace
    /// it (empty for a 304). `None` when the body streams (gRPC, gRPC-web).
    pub body: Option<&'a mut Bytes>,
    /// Attributes for the gateway's request span and access log (`meshgate.grpc_method`, ...).
    pub attributes: &'a mut Vec<(String, String)>,
}

/// A local reply that ends the request (e.g. 429 from a rate limit).
#[derive(Debug, Clone)]
pub struct LocalReply {
    pub http_status: u16,
    /// The gRPC status for gRPC and gRPC-web clients; `None`: derived from `http_status`.
    pub grpc_status: Option<i32>,
    pub message: String,
    /// Extra headers for the client (`retry-after`, ...); the proxy shapes the rest per protocol.
    pub headers: HeaderMap,
    /// Attributes for the gateway's request span, as far as the filters got.
    pub attributes: Vec<(String, String)>,
}

impl LocalReply {
    pub fn new(http_status: u16, message: impl Into<String>) -> Self {
        Self {
            http_status,
            grpc_status: None,
            message: message.into(),
            headers: HeaderMap::new(),
            attributes: Vec::new(),
        }
    }
}

pub enum Decision {
    Continue,
    /// Continue, and give this handle the response: per-request state lives in it.
    Track(Box<dyn PendingResponse>),
    Respond(LocalReply),
}

/// A filter's state for one request, from its request phase to its response phase. Dropping
/// it without a response (errors, cancelled requests) must release whatever it holds.
pub trait PendingResponse: Send {
    fn on_response(self: Box<Self>, response: &mut FilterResponse<'_>);
}

pub trait Filter: Send + Sync {
    fn on_request(&self, request: &mut FilterRequest<'_>) -> Decision;
    /// The response phase of a filter that answered [`Decision::Continue`].
    fn on_response(&self, _response: &mut FilterResponse<'_>) {}
    /// The filter's own counters, served with the gateway's metrics on `/metrics`.
    fn metrics(&self) -> Option<Box<dyn prometheus::core::Collector>> {
        None
    }
}

/// The handles of one request, one slot per filter. pingora needs its per-request context to
/// be `Sync`; the mutex provides that and is only reached through `&mut` (never locked).
#[derive(Default)]
pub struct PendingFilters(std::sync::Mutex<Vec<Option<Box<dyn PendingResponse>>>>);

impl PendingFilters {
    fn slots(&mut self) -> &mut Vec<Option<Box<dyn PendingResponse>>> {
        self.0
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
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

    /// The filters' own counters, for the gateway's registry.
    pub fn metrics(&self) -> impl Iterator<Item = Box<dyn prometheus::core::Collector>> + '_ {
        self.filters.iter().filter_map(|filter| filter.metrics())
    }

    /// Runs the request phase in order; handles of tracking filters go to `pending`. Returns
    /// `Continue` or the first `Respond`.
    pub fn on_request(
        &self,
        request: &mut FilterRequest<'_>,
        pending: &mut PendingFilters,
    ) -> Decision {
        let slots = pending.slots();
        slots.clear();
        for filter in &self.filters {
            match filter.on_request(request) {
                Decision::Continue => slots.push(None),
                Decision::Track(handle) => slots.push(Some(handle)),
                Decision::Respond(reply) => return Decision::Respond(reply),
            }
        }
        Decision::Continue
    }

    /// Runs the response phase in reverse order (as Envoy does), consuming the handles.
    pub fn on_response(&self, pending: &mut PendingFilters, response: &mut FilterResponse<'_>) {
        let mut slots = std::mem::take(pending.slots());
        for (index, filter) in self.filters.iter().enumerate().rev() {
            match slots.get_mut(index).and_then(Option::take) {
                Some(handle) => handle.on_response(response),
                None => filter.on_response(response),
            }
        }
    }
}

impl std::fmt::Debug for FilterChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FilterChain({} filters)", self.filters.len())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records its phases in a shared journal; tracks or stays stateless.
    struct Journal {
        name: &'static str,
        tracks: bool,
        journal: Arc<Mutex<Vec<String>>>,
    }

    struct Handle {
        name: &'static str,
        seen_method: String,
        journal: Arc<Mutex<Vec<String>>>,
    }

    impl PendingResponse for Handle {
        fn on_response(self: Box<Self>, response: &mut FilterResponse<'_>) {
            self.journal
                .lock()
                .unwrap()
                .push(format!("{} tracked {}", self.name, self.seen_method));
            *response.http_status = 304;
            response
                .attributes
                .push((format!("{}.method", self.name), self.seen_method.clone()));
        }
    }

    impl Filter for Journal {
        fn on_request(&self, request: &mut FilterRequest<'_>) -> Decision {
            self.journal
                .lock()
                .unwrap()
                .push(format!("{} request", self.name));
            if self.tracks {
                Decision::Track(Box::new(Handle {
                    name: self.name,
                    seen_method: request.grpc_method.to_owned(),
                    journal: self.journal.clone(),
                }))
            } else {
                Decision::Continue
            }
        }

        fn on_response(&self, _response: &mut FilterResponse<'_>) {
            self.journal
                .lock()
                .unwrap()
                .push(format!("{} response", self.name));
        }
    }

    fn request_through(chain: &FilterChain, pending: &mut PendingFilters) -> Decision {
        let mut headers = HeaderMap::new();
        chain.on_request(
            &mut FilterRequest {
                protocol: Protocol::Rest,
                grpc_method: "/p.S/M",
                route: Some("GET /m"),
                http_method: "GET",
                uri: "/m",
                client_addr: None,
                headers: &mut headers,
                message: None,
                body: None,
            },
            pending,
        )
    }

    fn response_through(
        chain: &FilterChain,
        pending: &mut PendingFilters,
    ) -> (u16, Vec<(String, String)>) {
        let mut status = 200;
        let mut headers = HeaderMap::new();
        let mut attributes = Vec::new();
        chain.on_response(
            pending,
            &mut FilterResponse {
                protocol: Protocol::Rest,
                grpc_method: "/p.S/M",
                grpc_status: 0,
                http_status: &mut status,
                headers: &mut headers,
                message: None,
                body: None,
                attributes: &mut attributes,
            },
        );
        (status, attributes)
    }

    #[test]
    fn handles_carry_request_state_and_responses_run_in_reverse() {
        let journal = Arc::new(Mutex::new(Vec::new()));
        let filter = |name, tracks| -> Arc<dyn Filter> {
            Arc::new(Journal {
                name,
                tracks,
                journal: journal.clone(),
            })
        };
        let chain = FilterChain::new(vec![filter("a", false), filter("b", true)]);
        let mut pending = PendingFilters::default();
        assert!(matches!(
            request_through(&chain, &mut pending),
            Decision::Continue
        ));
        let (status, attributes) = response_through(&chain, &mut pending);
        assert_eq!(status, 304);
        assert_eq!(
            attributes,
            vec![("b.method".to_owned(), "/p.S/M".to_owned())]
        );
        assert_eq!(
            *journal.lock().unwrap(),
            ["a request", "b request", "b tracked /p.S/M", "a response"]
        );
        // The handles are consumed: a second response phase only reaches stateless filters.
        journal.lock().unwrap().clear();
        response_through(&chain, &mut pending);
        assert_eq!(*journal.lock().unwrap(), ["b response", "a response"]);
    }

    #[test]
    fn the_first_local_reply_stops_the_request_phase() {
        struct Deny;
        impl Filter for Deny {
            fn on_request(&self, _: &mut FilterRequest<'_>) -> Decision {
                Decision::Respond(LocalReply::new(429, "no"))
            }
        }
        let journal = Arc::new(Mutex::new(Vec::new()));
        let chain = FilterChain::new(vec![
            Arc::new(Deny),
            Arc::new(Journal {
                name: "after",
                tracks: true,
                journal: journal.clone(),
            }),
        ]);
        let mut pending = PendingFilters::default();
        match request_through(&chain, &mut pending) {
            Decision::Respond(reply) => assert_eq!(reply.http_status, 429),
            _ => panic!("expected the local reply"),
        }
        assert!(journal.lock().unwrap().is_empty());
    }
}
