//! The filters of one listener in order, and one request/response through them.

use std::sync::Arc;

use proxy_wasm_host::abi::v0_2_1::LocalResponse;

use crate::error::FilterError;
use crate::lifecycle::{FailStrategy, fail_closed_reply};
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
    /// Filters that failed on this exchange, whatever their `failStrategy` made of it.
    failures: Vec<FilterError>,
}

/// The outcome of a whole exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    pub response: Response,
    /// Filter state set by the filters, in order (`meshgate.grpc_method` → `GetUser`, ...).
    pub attributes: Vec<(String, String)>,
    /// The filters that failed on the exchange (request and response), as log lines.
    pub failures: Vec<String>,
    /// `response` is the 503 / UNAVAILABLE reply of a filter that failed closed in the
    /// response phase (an embedder writes it as its own error, in the client's protocol).
    pub failed_closed: bool,
}

impl Chain {
    pub fn new(plugins: Vec<Arc<Plugin>>) -> Self {
        Self { plugins }
    }

    pub fn plugins(&self) -> &[Arc<Plugin>] {
        &self.plugins
    }

    /// Runs the request phase on the calling thread's worker of each plugin. A filter's failure
    /// is not an error of the call: its `failStrategy` decides (see [`Exchange::failures`]).
    pub fn on_request(&self, request: Request) -> Exchange {
        self.on_request_at(None, request)
    }

    /// Runs the request phase on a chosen worker (`worker % workers`), as tests need.
    pub fn on_request_on_worker(&self, worker: usize, request: Request) -> Exchange {
        self.on_request_at(Some(worker), request)
    }

    /// A filter that fails gets its plugin's `failStrategy`: FAIL_CLOSE answers the request
    /// (see [`Exchange::local_reply`]), FAIL_OPEN goes on without the filter. Either way the
    /// failure is in [`Exchange::failures`] and the filter's VM is rebuilt before its next call.
    fn on_request_at(&self, worker: Option<usize>, request: Request) -> Exchange {
        let mut exchange = Exchange {
            streams: Vec::with_capacity(self.plugins.len()),
            state: ExchangeState::for_request(&request),
            request,
            local_reply: None,
            failures: Vec::new(),
        };
        for plugin in &self.plugins {
            let index = worker.unwrap_or_else(|| plugin.pick_worker()) % plugin.workers().max(1);
            // Failing open drops what the failed callbacks changed, so keep what they got.
            let before =
                (plugin.fail_strategy() == FailStrategy::FailOpen).then(|| exchange.state.clone());
            match plugin.request_phase(index, &mut exchange.state) {
                Ok(stream) => exchange.streams.push(StreamRef {
                    plugin: Arc::clone(plugin),
                    stream,
                }),
                Err(error) => {
                    plugin.log_failure(format!("{error} (request); {}", outcome(plugin)));
                    exchange.failures.push(error);
                    match before {
                        Some(before) => {
                            exchange.state = before;
                            continue;
                        }
                        None => {
                            let grpc = is_native_grpc(&exchange.request);
                            exchange.state.local = Some(fail_closed_reply(plugin.name(), grpc))
                        }
                    }
                }
            }
            if let Some(local) = exchange.state.local.take() {
                exchange.local_reply = Some(local_to_response(local, &exchange.request));
                break;
            }
        }
        exchange.state.apply_to(&mut exchange.request);
        exchange
    }
}

fn outcome(plugin: &Plugin) -> String {
    let strategy = plugin.fail_strategy();
    match strategy {
        FailStrategy::FailClose => format!("{}: answered 503 / UNAVAILABLE", strategy.name()),
        FailStrategy::FailOpen => format!("{}: passed on without the filter", strategy.name()),
    }
}

/// Envoy's local-reply shape: a gRPC status on a gRPC request becomes a trailers-only
/// response (`grpc-status` and the body as `grpc-message` in the headers).
/// Native gRPC (not gRPC-web): a local reply's body becomes its `grpc-message`.
fn is_native_grpc(request: &Request) -> bool {
    request.header_value("content-type").is_some_and(|ct| {
        ct.starts_with("application/grpc") && !ct.starts_with("application/grpc-web")
    })
}

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
    match local.grpc_status {
        Some(code) if is_native_grpc(request) => {
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

    /// The filters that failed on this exchange so far (each got its `failStrategy`).
    pub fn failures(&self) -> &[FilterError] {
        &self.failures
    }

    /// Filter state set so far.
    pub fn attributes(&self) -> Vec<(String, String)> {
        self.state.attributes()
    }

    fn completed(&self, response: Response) -> Completed {
        Completed {
            response,
            attributes: self.state.attributes(),
            failures: self.failures.iter().map(ToString::to_string).collect(),
            failed_closed: false,
        }
    }

    /// Runs the response phase (filters in reverse order) and ends the streams. With a local
    /// reply, pass that reply (the response phase is skipped, as filters already answered).
    /// A filter's failure is not an error of the call: see [`Completed::failed_closed`].
    pub fn on_response(mut self, response: Response) -> Completed {
        if self.local_reply.is_some() {
            return self.completed(response);
        }
        self.state.set_response(&response);
        let shape = ResponseShape {
            has_body: !response.body.is_empty(),
            has_trailers: !response.trailers.is_empty(),
        };
        // The response phase and the stream's end, in one call per plugin (a wasm plugin's
        // call takes its worker's lock and lends the state to the guest).
        while let Some(StreamRef { plugin, stream }) = self.streams.pop() {
            let before =
                (plugin.fail_strategy() == FailStrategy::FailOpen).then(|| self.state.clone());
            if let Err(error) = plugin.response_phase(stream, &mut self.state, shape) {
                plugin.log_failure(format!("{error} (response); {}", outcome(&plugin)));
                self.failures.push(error);
                match before {
                    Some(before) => self.state = before,
                    // The filters before it do not see the reply (their streams just end),
                    // as Envoy's local reply skips the rest of the encoder chain.
                    None => {
                        let reply = local_to_response(
                            fail_closed_reply(plugin.name(), is_native_grpc(&self.request)),
                            &self.request,
                        );
                        let mut completed = self.completed(reply);
                        completed.failed_closed = true;
                        return completed;
                    }
                }
            }
        }
        let response = self.state.response();
        self.completed(response)
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        for StreamRef { plugin, stream } in self.streams.drain(..) {
            plugin.end(stream, &mut self.state);
        }
    }
}
