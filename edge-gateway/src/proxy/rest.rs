//! REST/JSON, terminated here: route lookup, JSON → request message ([`crate::transcode`]),
//! one upstream call with the gateway's gRPC client, the messages → JSON with the route's
//! success status (or the error's status once grpc-status is known).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use meshgate_wire::content_type::media_type;
use meshgate_wire::routes::{Route, RouteMiss};
use meshgate_wire::sse;
use pingora::{http::ResponseHeader, proxy::Session};
use prost_reflect::DynamicMessage;

use super::streaming::{StreamStep, frame_streamed_body, next_step};
use super::{GatewayProxy, RequestCtx, header_str};

use crate::upstream::Messages;
use crate::upstream::stream::{
    self as upstream_stream, Relayed, STREAM_BUFFER_MESSAGES, StreamEnd,
};
use crate::{
    error::{GatewayError, rest_error_body},
    hooks::FilterResponse,
    protocol::Protocol,
    transcode,
};

/// How long an event stream may stay silent before it gets a comment line, so proxies and load
/// balancers between the gateway and the client do not close it as idle.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// A body's content type the REST API accepts: none, `application/json` or `*+json`.
fn is_json(content_type: &str) -> bool {
    let essence = media_type(content_type);
    essence.is_empty() || essence == "application/json" || essence.ends_with("+json")
}

/// Whether the client asked for Server-Sent Events (`Accept: text/event-stream`, as
/// `EventSource` sends it).
fn wants_event_stream(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| {
        accept
            .split(',')
            .any(|range| media_type(range) == "text/event-stream")
    })
}

/// An upstream message as the route's JSON response (and the decoded message, for `Location`).
fn render(
    proxy: &GatewayProxy,
    route: &Route,
    bytes: &Bytes,
) -> Result<(DynamicMessage, Vec<u8>), GatewayError> {
    let decoded = transcode::decode_response(&route.output(), bytes)
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
    let json = transcode::render_response(route, &decoded, proxy.state.json)
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
    Ok((decoded, json))
}

impl GatewayProxy {
    pub(super) async fn handle_rest(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        let method = session.req_header().method.clone();
        let uri = session.req_header().uri.clone();
        let path = uri.path().to_owned();
        let (route, bindings) =
            self.state
                .router
                .lookup(&method, &path)
                .map_err(|miss| match miss {
                    RouteMiss::NotFound => GatewayError::NotFound {
                        method: method.clone(),
                        path: path.clone(),
                    },
                    RouteMiss::MethodNotAllowed(allow) => GatewayError::MethodNotAllowed {
                        method: method.clone(),
                        path: path.clone(),
                        allow,
                    },
                })?;
        ctx.route = route.label();
        ctx.grpc_method = route.grpc_path.clone();
        // Before the body is read: a refused call costs no upload.
        self.authenticate(session, ctx).await?;
        let body = self.read_body(session).await?;
        if !body.is_empty() {
            let content_type = header_str(session, "content-type").unwrap_or("");
            if !is_json(content_type) {
                return Err(GatewayError::UnsupportedMediaType(content_type.to_owned()));
            }
        }
        let request = transcode::build_request(
            &route,
            &bindings,
            uri.query(),
            &body,
            self.state.json,
            &self.state.validators,
        )?;
        let message = transcode::encode(&request);
        let metadata = self.upstream_metadata(session, ctx, &message, &body)?;
        let timeout = self
            .state
            .config
            .timeout_for(Some(&ctx.route), &route.grpc_path);
        let (upstream, response) = self
            .state
            .upstreams
            .call(
                &route.grpc_path,
                &message,
                &metadata,
                timeout,
                route.idempotent(),
            )
            .await?;
        ctx.upstream = Some(upstream);
        if route.server_streaming() && wants_event_stream(header_str(session, "accept")) {
            return self
                .write_event_stream(session, ctx, &route, response.into_messages())
                .await;
        }
        let mut stream = response.into_messages();
        let collect = async {
            let mut messages = Vec::new();
            // Read to the end so a non-OK status in the trailers is seen.
            while let Some(message) = stream.message().await? {
                messages.push(message);
            }
            Ok::<_, tonic::Status>(messages)
        };
        let messages = match tokio::time::timeout(timeout, collect).await {
            Ok(Ok(messages)) => messages,
            Ok(Err(status)) => return Err(GatewayError::from_upstream(status)),
            Err(_) => return Err(GatewayError::UpstreamTimeout),
        };
        let first = messages.first().cloned().unwrap_or_default();
        let (decoded, mut json) = render(self, &route, &first)?;
        if route.server_streaming() {
            // A server stream over REST without `Accept: text/event-stream` is answered as one
            // JSON array of the messages, once the stream has ended.
            let mut array = b"[".to_vec();
            for (index, message) in messages.iter().enumerate() {
                if index > 0 {
                    array.push(b',');
                }
                array.extend_from_slice(&render(self, &route, message)?.1);
            }
            array.push(b']');
            json = array;
        }
        let mut response_headers = HeaderMap::new();
        response_headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let mut http_status = route.success_code;
        let mut body = Bytes::from(json);
        self.state.filters.on_response(
            &mut ctx.filters,
            &mut FilterResponse {
                protocol: Protocol::Rest,
                grpc_method: &route.grpc_path,
                grpc_status: tonic::Code::Ok as i32,
                http_status: &mut http_status,
                headers: &mut response_headers,
                message: Some(&first),
                body: Some(&mut body),
                attributes: &mut ctx.filter_attributes,
            },
        );
        // What the filters added (cache headers, ...), then `Location` for created resources.
        let mut extra: Vec<(&str, String)> = response_headers
            .iter()
            .filter(|(n, _)| *n != http::header::CONTENT_TYPE && *n != http::header::CONTENT_LENGTH)
            .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?.to_owned())))
            .collect();
        if let Some(template) = &route.location
            && let Some(location) = transcode::fill_location(template, &decoded)
        {
            extra.push(("location", location));
        }
        ctx.grpc_status = Some(tonic::Code::Ok as i32);
        self.write_simple(session, ctx, http_status, "application/json", body, &extra)
            .await
            .map_err(|e| GatewayError::Internal(format!("writing response: {e}")))
    }
}

impl GatewayProxy {
    /// A server stream as Server-Sent Events: each message an event (`id:` counting from 1,
    /// `data:` the message in the route's JSON mapping), comments while idle, and a failure
    /// after the start as an `error` event carrying the `google.rpc.Status` JSON. Messages
    /// pass the bounded relay of [`crate::upstream::stream`].
    async fn write_event_stream(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        stream: Messages,
    ) -> Result<(), GatewayError> {
        let write_error =
            |e: Box<pingora::Error>| GatewayError::Internal(format!("writing event stream: {e}"));
        let mut head = ResponseHeader::build_no_case(200, Some(8))
            .map_err(|e| GatewayError::Internal(e.to_string()))?;
        let _ = head.insert_header("content-type", sse::CONTENT_TYPE);
        let _ = head.insert_header("cache-control", "no-cache");
        // nginx-style proxies buffer responses unless told otherwise.
        let _ = head.insert_header("x-accel-buffering", "no");
        frame_streamed_body(session, &mut head);
        self.cors_headers(ctx, &mut head);
        self.trace_header(ctx, &mut head);
        let sent_headers = head.headers.clone();
        ctx.status = 200;
        session
            .write_response_header(Box::new(head), false)
            .await
            .map_err(write_error)?;
        // Something on the wire at once: clients see the stream open before the first event.
        session
            .write_response_body(Some(sse::comment("stream open").into()), false)
            .await
            .map_err(write_error)?;
        let mut reader = upstream_stream::relay(stream, STREAM_BUFFER_MESSAGES);
        let mut sent = 0u64;
        let mut first_message: Option<Bytes> = None;
        let outcome = loop {
            let heartbeat = tokio::time::Instant::now() + HEARTBEAT;
            let chunk = match next_step(session, &mut reader, Some(heartbeat)).await {
                StreamStep::Relayed(Relayed::Message(message)) => {
                    let json = match render(self, route, &message) {
                        Ok((_, json)) => json,
                        Err(error) => break Err(error),
                    };
                    sent += 1;
                    if first_message.is_none() {
                        first_message = Some(message);
                    }
                    sse::event(None, Some(sent), &String::from_utf8_lossy(&json))
                }
                StreamStep::Timer => sse::comment("keep-alive"),
                StreamStep::Relayed(Relayed::End(StreamEnd::Finished(_))) => break Ok(()),
                StreamStep::Relayed(Relayed::End(StreamEnd::Failed(status))) => {
                    break Err(GatewayError::from_upstream(status));
                }
                StreamStep::ClientGone => {
                    // Dropping the reader cancels the upstream call.
                    ctx.grpc_status = Some(tonic::Code::Cancelled as i32);
                    session.set_keepalive(None);
                    return Ok(());
                }
            };
            session
                .write_response_body(Some(chunk.into()), false)
                .await
                .map_err(write_error)?;
        };
        let (code, last) = match &outcome {
            Ok(()) => (tonic::Code::Ok as i32, None),
            Err(error) => {
                let rescued = error.rescue();
                if let GatewayError::Internal(detail) = error {
                    tracing::error!(detail, "internal gateway error in an event stream");
                }
                let (_, body) = rest_error_body(
                    &self.state.pool,
                    self.state.json.error_detail,
                    error,
                    &rescued,
                );
                let event = sse::event(Some("error"), None, &String::from_utf8_lossy(&body));
                (rescued.grpc_code, Some(Bytes::from(event)))
            }
        };
        ctx.grpc_status = Some(code);
        // The head has gone out: the filters only record attributes.
        if !self.state.filters.is_empty() {
            let mut http_status = 200;
            let mut headers = sent_headers;
            self.state.filters.on_response(
                &mut ctx.filters,
                &mut FilterResponse {
                    protocol: Protocol::Rest,
                    grpc_method: &route.grpc_path,
                    grpc_status: code,
                    http_status: &mut http_status,
                    headers: &mut headers,
                    message: first_message.as_ref(),
                    body: None,
                    attributes: &mut ctx.filter_attributes,
                },
            );
        }
        // The error event ends the body itself: over HTTP/2 its DATA frame carries END_STREAM,
        // rather than an empty DATA frame after it that clients read as one more chunk.
        session
            .write_response_body(last, true)
            .await
            .map_err(write_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_streams_are_asked_for_by_accept() {
        for asked in [
            "text/event-stream",
            "Text/Event-Stream; charset=utf-8",
            "application/json, text/event-stream;q=0.9",
        ] {
            assert!(wants_event_stream(Some(asked)), "{asked}");
        }
        for not_asked in ["application/json", "*/*", "text/*", "text/plain"] {
            assert!(!wants_event_stream(Some(not_asked)), "{not_asked}");
        }
        assert!(!wants_event_stream(None));
    }

    #[test]
    fn json_bodies_only() {
        for accepted in [
            "",
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
        ] {
            assert!(is_json(accepted), "{accepted}");
        }
        for refused in ["text/plain", "application/x-www-form-urlencoded", "json"] {
            assert!(!is_json(refused), "{refused}");
        }
    }
}
