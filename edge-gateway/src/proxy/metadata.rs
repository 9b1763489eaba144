//! Header policy for terminated calls (REST, gRPC-web): which client headers become the
//! upstream call's metadata (after the filters' request phase), which upstream metadata goes
//! back to gRPC-web clients.

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use meshgate_wire::trace::TraceContext;
use pingora::proxy::Session;

use super::{GatewayProxy, RequestCtx, client_addr, request_uri};

use crate::{
    auth::{ForwardedClaims, policy::FORWARDED_PREFIX},
    error::GatewayError,
    hooks::{Decision, FilterRequest},
    protocol::Protocol,
};

/// Whether a client request header is about the call (forwarded as metadata) rather than this
/// hop. A `match` on the names compiles to a length switch and a few compares, not a scan of
/// every name per header. `x-jwt-*` is the edge's to set (verified claims): never the client's.
fn is_forwarded(name: &HeaderName) -> bool {
    !name.as_str().starts_with(FORWARDED_PREFIX)
        && !matches!(
            name.as_str(),
            "host"
                | "content-type"
                | "content-length"
                // Connection-specific: HTTP/2 forbids them (the h2 client refuses a request
                // carrying one, which would fail the call).
                | "connection"
                | "keep-alive"
                | "proxy-connection"
                | "te"
                | "transfer-encoding"
                | "upgrade"
                | "accept"
                | "accept-encoding"
                | "origin"
                | "referer"
                | "x-grpc-web"
                | "x-user-agent"
                | "grpc-timeout"
                | "grpc-encoding"
                | "grpc-accept-encoding"
                // The upstream response's fields, never a request's (tonic's client dropped
                // them too).
                | "grpc-status"
                | "grpc-message"
                | "grpc-message-type"
                | "user-agent"
                | "traceparent"
                | "tracestate"
                | "b3"
                | "x-b3-traceid"
                | "x-b3-spanid"
                | "x-b3-parentspanid"
                | "x-b3-sampled"
                | "x-b3-flags"
                | "cookie"
                | "access-control-request-method"
                | "access-control-request-headers"
                | "sec-fetch-mode"
                | "sec-fetch-site"
                | "sec-fetch-dest"
        )
}

/// Whether an upstream response header goes back to a gRPC-web client.
pub(super) fn is_returned(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "content-type"
            | "content-length"
            | "date"
            | "server"
            | "grpc-status"
            | "grpc-message"
            | "grpc-status-details-bin"
            // The messages are sent as the gateway decoded them, uncompressed; what the
            // upstream accepts is not what the gateway accepts.
            | "grpc-encoding"
            | "grpc-accept-encoding"
    )
}

/// The client's call headers plus the gateway's trace context and the verified claims, as
/// upstream metadata (request headers).
fn metadata_from(
    headers: &HeaderMap,
    trace: &TraceContext,
    claims: Option<&ForwardedClaims>,
) -> HeaderMap {
    let mut forwarded = HeaderMap::with_capacity(headers.len() + 6);
    for (name, value) in headers {
        if is_forwarded(name) {
            forwarded.append(name.clone(), value.clone());
        }
    }
    for (name, value) in trace.upstream_headers() {
        if let Some(value) = TraceContext::unindexed(&value) {
            forwarded.insert(HeaderName::from_static(name), value);
        }
    }
    for (name, value) in claims.into_iter().flat_map(ForwardedClaims::headers) {
        forwarded.insert(HeaderName::from_static(name), value.clone());
    }
    forwarded
}

impl GatewayProxy {
    /// The metadata for the upstream call of a terminated (REST or gRPC-web) request, after the
    /// filters' request phase, which may answer instead. Without filters the client's headers
    /// are read in place, not copied.
    pub(super) fn upstream_metadata(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        message: &Bytes,
        body: &Bytes,
    ) -> Result<HeaderMap, GatewayError> {
        let trace = ctx
            .trace
            .clone()
            .unwrap_or_else(|| TraceContext::from_headers(|_| None));
        if self.state.filters.is_empty() {
            return Ok(metadata_from(
                &session.req_header().headers,
                &trace,
                ctx.forwarded.as_ref(),
            ));
        }
        let protocol = ctx.protocol;
        let mut headers = session.req_header().headers.clone();
        let uri = match protocol {
            Protocol::Rest => request_uri(session),
            _ => ctx.grpc_method.clone(),
        };
        let client = client_addr(session);
        let decision = self.state.filters.on_request(
            &mut FilterRequest {
                protocol,
                grpc_method: &ctx.grpc_method,
                route: (protocol == Protocol::Rest).then_some(ctx.route.as_str()),
                http_method: session.req_header().method.as_str(),
                uri: &uri,
                client_addr: client.as_deref(),
                headers: &mut headers,
                message: Some(message),
                body: Some(body),
            },
            &mut ctx.filters,
        );
        if let Decision::Respond(reply) = decision {
            return Err(ctx.filtered(reply));
        }
        Ok(metadata_from(&headers, &trace, ctx.forwarded.as_ref()))
    }
}

/// Makes the forwarded request headers what the filters left (added, changed, removed).
pub(super) fn replace_request_headers(
    request: &mut pingora::http::RequestHeader,
    headers: &HeaderMap,
) -> pingora::Result<()> {
    let current: Vec<HeaderName> = request.headers.keys().cloned().collect();
    for name in current {
        if !headers.contains_key(&name) {
            request.remove_header(&name);
        }
    }
    for name in headers.keys() {
        let mut values = headers.get_all(name).iter();
        if let Some(first) = values.next() {
            request.insert_header(name.clone(), first.clone())?;
            for value in values {
                request.append_header(name.clone(), value.clone())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn only_call_headers_and_the_gateways_trace_context_go_upstream() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer t"),
            ("x-request-id", "r1"),
            ("cookie", "session=secret"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("content-type", "application/json"),
            ("grpc-timeout", "1S"),
            ("grpc-status", "0"),
            ("proxy-connection", "keep-alive"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        let trace =
            TraceContext::from_headers(|name| headers.get(name).and_then(|v| v.to_str().ok()));
        let metadata = metadata_from(&headers, &trace, None);
        assert_eq!(metadata["authorization"], "Bearer t");
        assert_eq!(metadata["x-request-id"], "r1");
        for hop in [
            "cookie",
            "content-type",
            "grpc-timeout",
            "grpc-status",
            "proxy-connection",
        ] {
            assert!(!metadata.contains_key(hop), "{hop} forwarded");
        }
        // The gateway's own span, a child of the caller's, not the caller's header.
        let traceparent = metadata["traceparent"].to_str().unwrap();
        assert!(traceparent.contains("0af7651916cd43dd8448eb211c80319c"));
        assert!(!traceparent.contains("b7ad6b7169203331"), "{traceparent}");
    }

    #[test]
    fn client_claim_headers_are_dropped_and_verified_claims_added() {
        let mut headers = HeaderMap::new();
        headers.insert("x-jwt-sub", HeaderValue::from_static("admin"));
        headers.insert("x-jwt-claims", HeaderValue::from_static("e30"));
        headers.insert("x-jwt-role", HeaderValue::from_static("root"));
        headers.insert("x-request-id", HeaderValue::from_static("r1"));
        let trace = TraceContext::from_headers(|_| None);
        let without = metadata_from(&headers, &trace, None);
        assert!(
            without
                .keys()
                .all(|name| !name.as_str().starts_with("x-jwt-")),
            "{without:?}"
        );
        assert_eq!(without["x-request-id"], "r1");
        let verified = ForwardedClaims {
            subject: Some(HeaderValue::from_static("user-7")),
            claims: HeaderValue::from_static("eyJzdWIiOiJ1c2VyLTcifQ"),
        };
        let with = metadata_from(&headers, &trace, Some(&verified));
        assert_eq!(with["x-jwt-sub"], "user-7");
        assert_eq!(with["x-jwt-claims"], "eyJzdWIiOiJ1c2VyLTcifQ");
        assert_eq!(with.get_all("x-jwt-sub").iter().count(), 1);
        assert!(!with.contains_key("x-jwt-role"));
    }

    #[test]
    fn grpc_status_and_encoding_are_not_returned_as_headers() {
        for name in [
            "grpc-status",
            "grpc-message",
            "grpc-encoding",
            "content-type",
        ] {
            assert!(!is_returned(&HeaderName::from_static(name)), "{name}");
        }
        assert!(is_returned(&HeaderName::from_static("x-custom-bin")));
    }
}
