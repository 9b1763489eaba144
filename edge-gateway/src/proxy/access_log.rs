//! What every request leaves behind once it is done: the request counter and latency
//! histogram, one `access` log line, and the SERVER span over OTLP (`gateway.otlp`).

use std::time::Duration;

use pingora::{Error, proxy::Session};

use super::{GatewayProxy, RequestCtx};
use crate::{
    protocol::Protocol,
    telemetry::{ServerSpan, SpanExport},
};

/// The route label of metrics and logs. Unmatched REST paths share one label so clients cannot
/// blow up metric cardinality.
fn route_label(route: &str, protocol: Protocol, status: u16) -> &str {
    if route.is_empty() || (status == 404 && protocol == Protocol::Rest) {
        "unmatched"
    } else {
        route
    }
}

/// Filter attributes as one JSON object for the access log.
fn attributes_json(attributes: &[(String, String)]) -> Option<String> {
    if attributes.is_empty() {
        return None;
    }
    let object: serde_json::Map<String, serde_json::Value> = attributes
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    Some(serde_json::Value::Object(object).to_string())
}

impl GatewayProxy {
    pub(super) fn log_request(&self, session: &Session, error: Option<&Error>, ctx: &RequestCtx) {
        let status = if ctx.status == 0 {
            session.response_written().map_or(0, |r| r.status.as_u16())
        } else {
            ctx.status
        };
        let latency = ctx.start.elapsed();
        let route_label = route_label(&ctx.route, ctx.protocol, status);
        let protocol = ctx.protocol.as_str();
        // Every real status reads as its static digits (no String per request); 0 (nothing
        // was answered) is the only one formatted.
        let code = http::StatusCode::from_u16(status).ok();
        let formatted;
        let status_label = match &code {
            Some(code) => code.as_str(),
            None => {
                formatted = status.to_string();
                &formatted
            }
        };
        self.state
            .metrics
            .requests
            .with_label_values(&[route_label, protocol, status_label])
            .inc();
        self.state
            .metrics
            .latency
            .with_label_values(&[route_label, protocol])
            .observe(latency.as_secs_f64());
        let trace_id = ctx.trace.as_ref().map_or("", |t| t.trace_id.as_str());
        let span_id = ctx.trace.as_ref().map_or("", |t| t.span_id.as_str());
        tracing::info!(
            target: "access",
            trace_id,
            span_id,
            method = %session.req_header().method,
            path = session.req_header().uri.path(),
            route = route_label,
            grpc_method = ctx.grpc_method.as_str(),
            protocol,
            http_version = if session.is_http2() { "h2" } else { "http/1.1" },
            status,
            grpc_status = ctx.grpc_status,
            upstream = ctx.upstream.map(|a| a.to_string()),
            latency_ms = latency.as_secs_f64() * 1000.0,
            filter_attributes = attributes_json(&ctx.filter_attributes),
            error = error.map(|e| e.to_string()),
            "request"
        );
        if let Some(spans) = &self.state.spans {
            export_span(spans, session, ctx, status, route_label, latency, error);
        }
    }
}

/// The request's SERVER span over OTLP (`gateway.otlp`); probes and `/openapi.json` are not traced.
fn export_span(
    spans: &SpanExport,
    session: &Session,
    ctx: &RequestCtx,
    http_status: u16,
    route: &str,
    latency: Duration,
    error: Option<&Error>,
) {
    let Some(trace) = &ctx.trace else {
        return;
    };
    if ctx.protocol == Protocol::Admin {
        return;
    }
    let end = std::time::SystemTime::now();
    let error = error.map(ToString::to_string);
    spans.record(&ServerSpan {
        trace,
        start: end.checked_sub(latency).unwrap_or(end),
        end,
        http_method: session.req_header().method.as_str(),
        path: session.req_header().uri.path(),
        protocol: ctx.protocol,
        route,
        grpc_method: &ctx.grpc_method,
        http_status,
        grpc_status: ctx.grpc_status,
        http_version: if session.is_http2() { "2" } else { "1.1" },
        upstream: ctx.upstream,
        filter_attributes: &ctx.filter_attributes,
        error: error.as_deref(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmatched_rest_paths_share_one_label() {
        assert_eq!(
            route_label("GET /v1/users/{id}", Protocol::Rest, 200),
            "GET /v1/users/{id}"
        );
        assert_eq!(route_label("", Protocol::Rest, 200), "unmatched");
        // A matched route answering 404 (user not found) is labelled like a miss.
        assert_eq!(
            route_label("GET /v1/users/{id}", Protocol::Rest, 404),
            "unmatched"
        );
        // gRPC labels are bounded by the descriptors: their 404s keep the label.
        assert_eq!(
            route_label("/user.UserService/GetUser", Protocol::GrpcWeb, 404),
            "/user.UserService/GetUser"
        );
    }

    #[test]
    fn filter_attributes_are_one_json_object() {
        assert_eq!(attributes_json(&[]), None);
        let attributes = [("meshgate.grpc_method".to_owned(), "/p.S/M".to_owned())];
        assert_eq!(
            attributes_json(&attributes).as_deref(),
            Some(r#"{"meshgate.grpc_method":"/p.S/M"}"#)
        );
    }
}
