//! span-enrichment's stream: forged `x-meshgate-*` headers removed, the trace context, the
//! gRPC service and method and the request's fields written on the request; the response's
//! fields and gRPC status (headers, trailers or the gRPC-web trailer frame) to filter state.

use std::sync::Arc;

use meshgate_wire::content_type::Protocol;
use meshgate_wire::grpc::{self, status};
use meshgate_wire::{grpc_web, trace};

use super::values::{METHOD_HEADER, SERVICE_HEADER, emit, redact};
use super::{Direction, HEADER_PREFIX, SpanEnrichment};
use crate::catalog::MethodId;
use crate::filter::Stream;
use crate::host::{Action, Host, LogLevel};
use crate::inspect::{Decoded, RequestTarget};

pub struct SpanEnrichmentStream {
    root: Arc<SpanEnrichment>,
    target: Option<Arc<RequestTarget>>,
    waiting_for_request: bool,
    /// A copy of the response body (the response itself streams on unheld).
    response_body: Vec<u8>,
    response_skipped: bool,
    status_recorded: bool,
}

impl SpanEnrichmentStream {
    pub(super) fn new(root: Arc<SpanEnrichment>) -> Self {
        Self {
            root,
            target: None,
            waiting_for_request: false,
            response_body: Vec::new(),
            response_skipped: false,
            status_recorded: false,
        }
    }
}

impl Stream for SpanEnrichmentStream {
    fn on_request_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Action {
        let target = RequestTarget::identify(&self.root.catalog, host);
        let forged: Vec<&str> = target
            .headers()
            .map(|(name, _)| name)
            .filter(|name| {
                name.get(..HEADER_PREFIX.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(HEADER_PREFIX))
            })
            .collect();
        for name in forged {
            host.set_request_header(name, None);
        }
        if let Some(found) = trace::incoming(|name| target.header(name)) {
            host.set_property(&["meshgate.trace_id"], found.trace_id.as_bytes());
            host.set_property(&["meshgate.trace_format"], found.format.as_str().as_bytes());
        }
        let Some(method_id) = target.method else {
            return Action::Continue;
        };
        if let Some((service, method)) = self.root.method_values.get(method_id) {
            emit(host, SERVICE_HEADER, "meshgate.grpc_service", service);
            emit(host, METHOD_HEADER, "meshgate.grpc_method", method);
        }
        self.root.counters.increment(host, "enriched");
        let wants_body = self
            .root
            .fields_for(method_id, Direction::Request)
            .next()
            .is_some()
            && target.message_in_body();
        // Only a request whose body is read needs its announced length.
        let fits = !wants_body
            || target
                .content_length()
                .is_none_or(|len| len <= self.root.max_body);
        self.target = Some(target);
        if wants_body && !end_of_stream && fits {
            self.waiting_for_request = true;
            return Action::Pause;
        }
        if wants_body && !fits {
            self.root.counters.increment(host, "body_skipped");
        }
        self.emit_request_fields(host, &Decoded::Nothing);
        Action::Continue
    }

    fn on_request_body(
        &mut self,
        host: &mut dyn Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        if !self.waiting_for_request {
            return Action::Continue;
        }
        if body_size > self.root.max_body {
            self.waiting_for_request = false;
            self.root.counters.increment(host, "body_skipped");
            self.emit_request_fields(host, &Decoded::Nothing);
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.waiting_for_request = false;
        let decoded = match (&self.target, host.request_body(0, body_size)) {
            (Some(target), Some(body)) => target.decode_request(&body).unwrap_or_else(|problem| {
                self.root.counters.increment(host, "body_skipped");
                host.log(
                    LogLevel::Debug,
                    &format!("span-enrichment: request body passed through: {problem}"),
                );
                Decoded::Nothing
            }),
            _ => Decoded::Nothing,
        };
        self.emit_request_fields(host, &decoded);
        Action::Continue
    }

    fn on_response_headers(&mut self, host: &mut dyn Host, _end_of_stream: bool) -> Action {
        // Trailers-only responses carry grpc-status in the headers.
        if let Some(code) = host.response_header("grpc-status") {
            self.record_status(host, &code);
        }
        Action::Continue
    }

    fn on_response_body(
        &mut self,
        host: &mut dyn Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        let Some(target) = &self.target else {
            return Action::Continue;
        };
        let Some(method) = target.method else {
            return Action::Continue;
        };
        // gRPC-web carries its status in a trailer frame at the end of the body.
        let web = matches!(target.protocol, Protocol::GrpcWeb | Protocol::GrpcWebText);
        let wants_fields = self
            .root
            .fields_for(method, Direction::Response)
            .next()
            .is_some();
        if self.response_skipped || !(wants_fields || web) {
            return Action::Continue;
        }
        // body_size is this chunk when the proxy is not buffering (we never pause here).
        if self.response_body.len() + body_size > self.root.max_body {
            self.response_skipped = true;
            self.response_body = Vec::new();
            self.root.counters.increment(host, "body_skipped");
            return Action::Continue;
        }
        if let Some(chunk) = host.response_body(0, body_size) {
            if self.response_body.is_empty() {
                self.response_body = chunk;
            } else {
                self.response_body.extend_from_slice(&chunk);
            }
        }
        if end_of_stream {
            if web {
                self.record_web_status(host);
            }
            if wants_fields {
                self.emit_response_fields(host, method);
            }
        }
        Action::Continue
    }

    fn on_response_trailers(&mut self, host: &mut dyn Host) -> Action {
        if let Some(code) = host.response_trailer("grpc-status") {
            self.record_status(host, &code);
        }
        if let Some(method) = self.target.as_ref().and_then(|t| t.method)
            && !self.response_skipped
            && !self.response_body.is_empty()
        {
            self.emit_response_fields(host, method);
        }
        Action::Continue
    }
}

impl SpanEnrichmentStream {
    fn emit_request_fields(&self, host: &mut dyn Host, decoded: &Decoded) {
        let (Some(target), root) = (&self.target, &self.root) else {
            return;
        };
        let Some(method) = target.method else {
            return;
        };
        for field in root.fields_for(method, Direction::Request) {
            let Some(value) = target.read_request_field(decoded, &field.path) else {
                continue;
            };
            let Some(value) = redact(field.redact, value) else {
                continue;
            };
            emit(host, &field.header_name, &field.state_key, &value);
            root.counters.increment(host, "fields");
        }
    }

    fn emit_response_fields(&mut self, host: &mut dyn Host, method: MethodId) {
        let body = std::mem::take(&mut self.response_body);
        let Some(target) = &self.target else {
            return;
        };
        let fields = || self.root.fields_for(method, Direction::Response);
        let values = match target.read_response_fields(&body, fields().map(|f| &f.path)) {
            Ok(values) => values,
            Err(problem) => {
                self.root.counters.increment(host, "body_skipped");
                host.log(
                    LogLevel::Debug,
                    &format!("span-enrichment: response body passed through: {problem}"),
                );
                return;
            }
        };
        for (field, value) in fields().zip(values) {
            if let Some(value) = value.and_then(|v| redact(field.redact, v)) {
                host.set_property(&[&field.state_key], value.as_bytes());
                self.root.counters.increment(host, "fields");
            }
        }
    }

    fn record_web_status(&mut self, host: &mut dyn Host) {
        let text_body;
        let body = match self.target.as_ref().map(|t| t.protocol) {
            Some(Protocol::GrpcWebText) => {
                let Ok(decoded) = grpc_web::decode_text(&self.response_body) else {
                    return;
                };
                text_body = decoded;
                &text_body
            }
            _ => &self.response_body,
        };
        if let Some(code) = grpc::trailer_frame_status(body) {
            self.record_status(host, &code.to_string());
        }
    }

    fn record_status(&mut self, host: &mut dyn Host, code: &str) {
        if self.status_recorded {
            return;
        }
        if let Ok(code) = code.trim().parse::<u32>() {
            self.status_recorded = true;
            host.set_property(&["meshgate.grpc_status"], status::name(code).as_bytes());
            host.set_property(&["meshgate.grpc_status_code"], code.to_string().as_bytes());
        }
    }
}
