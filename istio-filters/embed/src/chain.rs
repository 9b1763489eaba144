//! The filters of one listener in order, and one request/response through them.

use std::sync::Arc;

use proxy_wasm_host::abi::v0_2_1::LocalResponse;

use crate::error::FilterError;
use crate::pool::{Plugin, ResponseShape, StreamHandle};
use crate::request::{Request, Response};
use crate::stream_state::ExchangeState;

/// The filters of one listener, in order (request in order, response reversed).
#[derive(Clone)]
pub struct Chain {
    plugins: Vec<Arc<Plugin>>,
}

struct StreamRef {
    plugin: Arc<Plugin>,
    stream: StreamHandle,
}

/// One request/response through the chain. Dropping it without [`Exchange::on_response`]
/// still ends the filters' streams.
pub struct Exchange {
    streams: Vec<StreamRef>,
    state: ExchangeState,
    request: Request,
    local_reply: Option<Response>,
}

/// The outcome of a whole exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    pub response: Response,
    /// Filter state set by the filters, in order (`meshgate.grpc_method` → `GetUser`, ...).
    pub attributes: Vec<(String, String)>,
}

impl Chain {
    pub fn new(plugins: Vec<Arc<Plugin>>) -> Self {
        Self { plugins }
    }

    pub fn plugins(&self) -> &[Arc<Plugin>] {
        &self.plugins
    }

    /// Runs the request phase on the calling thread's worker of each plugin.
    pub fn on_request(&self, request: Request) -> Result<Exchange, FilterError> {
        self.on_request_at(None, request)
    }

    /// Runs the request phase on a chosen worker (`worker % workers`), as tests need.
    pub fn on_request_on_worker(
        &self,
        worker: usize,
        request: Request,
    ) -> Result<Exchange, FilterError> {
        self.on_request_at(Some(worker), request)
    }

    fn on_request_at(
        &self,
        worker: Option<usize>,
        request: Request,
    ) -> Result<Exchange, FilterError> {
        let mut exchange = Exchange {
            streams: Vec::with_capacity(self.plugins.len()),
            state: ExchangeState::for_request(&request),
            request,
            local_reply: None,
        };
        for plugin in &self.plugins {
            let index = worker.unwrap_or_else(|| plugin.pick_worker()) % plugin.workers().max(1);
            // On an error the exchange is dropped, which ends the streams opened so far.
            let stream = plugin.request_phase(index, &mut exchange.state)?;
            exchange.streams.push(StreamRef {
                plugin: Arc::clone(plugin),
                stream,
            });
            if let Some(local) = exchange.state.local.take() {
                exchange.local_reply = Some(local_to_response(local, &exchange.request));
                break;
            }
        }
        exchange.state.apply_to(&mut exchange.request);
        Ok(exchange)
    }
}

/// Envoy's local-reply shape: a gRPC status on a gRPC request becomes a trailers-only
/// response (`grpc-status` and the body as `grpc-message` in the headers).
fn local_to_response(local: LocalResponse<'static>, request: &Request) -> Response {
    let mut headers: Vec<(String, String)> = local
        .headers
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).to_ascii_lowercase(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect();
    let is_grpc = request.header_value("content-type").is_some_and(|ct| {
        ct.starts_with("application/grpc") && !ct.starts_with("application/grpc-web")
    });
    match local.grpc_status {
        Some(code) if is_grpc => {
            headers.insert(0, ("content-type".into(), "application/grpc".into()));
            headers.push(("grpc-status".into(), code.to_string()));
            if !local.body.is_empty() {
                headers.push((
                    "grpc-message".into(),
                    String::from_utf8_lossy(&local.body).into_owned(),
                ));
            }
            Response {
                status: 200,
                headers,
                body: Vec::new(),
                trailers: Vec::new(),
            }
        }
        _ => Response {
            status: u16::try_from(local.status_code).unwrap_or(500),
            headers,
            body: local.body.into_owned(),
            trailers: Vec::new(),
        },
    }
}

impl Exchange {
    /// The request to forward upstream, with the filters' header changes.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The response a filter sent instead of forwarding (429, RESOURCE_EXHAUSTED, ...).
    pub fn local_reply(&self) -> Option<&Response> {
        self.local_reply.as_ref()
    }

    /// Filter state set so far.
    pub fn attributes(&self) -> Vec<(String, String)> {
        self.state.attributes()
    }

    /// Runs the response phase (filters in reverse order) and ends the streams. With a local
    /// reply, pass that reply (the response phase is skipped, as filters already answered).
    pub fn on_response(mut self, response: Response) -> Result<Completed, FilterError> {
        if self.local_reply.is_some() {
            return Ok(Completed {
                response,
                attributes: self.state.attributes(),
            });
        }
        self.state.set_response(&response);
        let shape = ResponseShape {
            has_body: !response.body.is_empty(),
            has_trailers: !response.trailers.is_empty(),
        };
        // The response phase and the stream's end, in one call per plugin (a wasm plugin's
        // call takes its worker's lock and lends the state to the guest).
        while let Some(StreamRef { plugin, stream }) = self.streams.pop() {
            plugin.response_phase(stream, &mut self.state, shape)?;
        }
        Ok(Completed {
            response: self.state.response(),
            attributes: self.state.attributes(),
        })
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        for StreamRef { plugin, stream } in self.streams.drain(..) {
            plugin.end(stream, &mut self.state);
        }
    }
}
