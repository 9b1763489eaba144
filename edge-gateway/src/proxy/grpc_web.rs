//! gRPC-web (binary and text), terminated here: one request message decoded from the body
//! ([`meshgate_wire::grpc_web`], [`crate::grpc_compression`]), one upstream call, the response
//! messages streamed back as frames as they arrive (through the bounded relay of
//! [`crate::upstream::stream`]: a client that stops reading is cut off, one that leaves cancels
//! the upstream call), the status in the closing trailer frame.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method};
use meshgate_wire::grpc::COMPRESSED_FLAG;
use meshgate_wire::grpc_headers;
use meshgate_wire::grpc_web::{Mode, RequestDecoder, ResponseEncoder};
use meshgate_wire::routes::{self, grpc_route_label};
use pingora::{Error, http::ResponseHeader, proxy::Session};

use super::streaming::{StreamStep, frame_streamed_body, next_step};
use super::{GatewayProxy, RequestCtx, header_str, metadata, respond::grpc_status_fields};

use crate::upstream::stream::{
    self as upstream_stream, Relayed, STREAM_BUFFER_MESSAGES, StreamEnd,
};
use crate::{
    error::GatewayError, grpc_compression::Encoding, hooks::FilterResponse, protocol::Protocol,
    transcode::TranscodeError,
};

impl GatewayProxy {
    pub(super) async fn handle_grpc_web(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        mode: Mode,
    ) -> Result<(), GatewayError> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_owned();
        ctx.grpc_method = path.clone();
        ctx.route = grpc_route_label(&self.state.pool, &path);
        if method != Method::POST {
            return Err(GatewayError::MethodNotAllowed {
                method,
                path,
                allow: vec![Method::POST],
            });
        }
        self.authenticate(session, ctx).await?;
        // An encoding the gateway cannot decode is refused before the body is read (grpc-go).
        let encoding = Encoding::from_header(header_str(session, "grpc-encoding"))?;
        let body = self.read_body(session).await?;
        let mut decoder = RequestDecoder::new(mode, self.state.config.max_body_bytes);
        let mut frames = Vec::new();
        decoder.push(&body, &mut frames)?;
        decoder.finish(&mut frames)?;
        let messages: Vec<_> = frames.into_iter().filter(|f| !f.is_trailers()).collect();
        if messages.len() != 1 {
            return Err(GatewayError::GrpcWebMessageCount(messages.len()));
        }
        // Forwarded uncompressed; inflating stops at max_body_bytes (gzip bombs).
        let message = encoding.decode_message(
            messages[0].flags & COMPRESSED_FLAG != 0,
            messages[0].payload.clone(),
            self.state.config.max_body_bytes,
        )?;
        // The method's buf.validate rules, with protobuf presence (messages the gateway cannot
        // read are left to the service to refuse).
        let violations =
            self.state
                .validators
                .check_grpc_request(&self.state.pool, &path, &message);
        if !violations.is_empty() {
            return Err(TranscodeError::from_violations(violations).into());
        }
        let metadata = self.upstream_metadata(session, ctx, &message, &body)?;
        // The client's deadline, if shorter than the configured one, bounds reaching the
        // upstream's answer; a server stream then runs until it ends, the client leaves, or the
        // client's own deadline passes.
        let client_timeout =
            header_str(session, "grpc-timeout").and_then(grpc_headers::parse_timeout);
        let configured = self.state.config.timeout_for(None, &path);
        let timeout = client_timeout.map_or(configured, |client| client.min(configured));
        let (upstream, response) = self
            .state
            .upstreams
            .call(&path, &message, &metadata, timeout, false)
            .await?;
        ctx.upstream = Some(upstream);
        let (response_headers, mut stream) = response.into_parts();
        let encoder = ResponseEncoder::new(mode);
        let mut head = ResponseHeader::build_no_case(200, Some(8))
            .map_err(|e| GatewayError::Internal(e.to_string()))?;
        let _ = head.insert_header("content-type", mode.content_type());
        for (name, value) in &response_headers {
            if metadata::is_returned(name) {
                let _ = head.append_header(name.clone(), value.clone());
            }
        }
        self.cors_headers(ctx, &mut head);
        self.trace_header(ctx, &mut head);
        ctx.status = 200;
        // Only filters read the sent headers and the first message back.
        let filtered = !self.state.filters.is_empty();
        let mut sent_headers = if filtered {
            head.headers.clone()
        } else {
            HeaderMap::new()
        };
        let mut first_message: Option<Bytes> = None;
        let write_error =
            |e: Box<Error>| GatewayError::Internal(format!("writing gRPC-web response: {e}"));
        // A unary answer goes out as the header and one body chunk (its message and trailer
        // frames), written together once the upstream has finished; a stream is written as it
        // arrives.
        let unary = routes::grpc_method(&self.state.pool, &path)
            .is_some_and(|method| !method.is_server_streaming());
        let mut head = Some(Box::new(head));
        let mut unary_body = BytesMut::new();
        let (status, mut trailers) = if unary {
            let deadline = tokio::time::Instant::now() + timeout;
            let status = loop {
                match tokio::time::timeout_at(deadline, stream.message()).await {
                    Ok(Ok(Some(message))) => {
                        if filtered && first_message.is_none() {
                            first_message = Some(message.clone());
                        }
                        unary_body.extend_from_slice(&encoder.message(&message));
                    }
                    Ok(Ok(None)) => break tonic::Status::ok(""),
                    Ok(Err(status)) => break status,
                    Err(_) => break tonic::Status::deadline_exceeded("upstream deadline exceeded"),
                }
            };
            let mut trailers = HeaderMap::new();
            if status.code() == tonic::Code::Ok
                && let Ok(Some(upstream_trailers)) = stream.trailers().await
            {
                trailers = upstream_trailers;
            }
            (status, trailers)
        } else {
            if let Some(mut head) = head.take() {
                frame_streamed_body(session, &mut head);
                session
                    .write_response_header(head, false)
                    .await
                    .map_err(write_error)?;
            }
            let mut reader = upstream_stream::relay(stream, STREAM_BUFFER_MESSAGES);
            let deadline = client_timeout.map(|client| tokio::time::Instant::now() + client);
            loop {
                match next_step(session, &mut reader, deadline).await {
                    StreamStep::Relayed(Relayed::Message(message)) => {
                        if filtered && first_message.is_none() {
                            first_message = Some(message.clone());
                        }
                        session
                            .write_response_body(Some(encoder.message(&message)), false)
                            .await
                            .map_err(write_error)?;
                    }
                    StreamStep::Relayed(Relayed::End(StreamEnd::Finished(trailers))) => {
                        break (tonic::Status::ok(""), trailers);
                    }
                    StreamStep::Relayed(Relayed::End(StreamEnd::Failed(status))) => {
                        break (status, HeaderMap::new());
                    }
                    StreamStep::Timer => {
                        break (
                            tonic::Status::deadline_exceeded("deadline exceeded"),
                            HeaderMap::new(),
                        );
                    }
                    StreamStep::ClientGone => {
                        // Dropping the reader cancels the upstream call.
                        ctx.grpc_status = Some(tonic::Code::Cancelled as i32);
                        session.set_keepalive(None);
                        return Ok(());
                    }
                }
            }
        };
        let rescued = if status.code() == tonic::Code::Ok {
            None
        } else {
            Some(GatewayError::from_upstream(status).rescue())
        };
        let code = rescued
            .as_ref()
            .map_or(tonic::Code::Ok as i32, |r| r.grpc_code);
        trailers.insert("grpc-status", HeaderValue::from(code));
        for (name, value) in rescued.iter().flat_map(grpc_status_fields) {
            if let Ok(value) = HeaderValue::from_str(&value) {
                trailers.insert(name, value);
            }
        }
        ctx.grpc_status = Some(code);
        // The head is decided (for a stream it has gone out): the filters only record attributes.
        let mut http_status = 200;
        if filtered {
            self.state.filters.on_response(
                &mut ctx.filters,
                &mut FilterResponse {
                    protocol: Protocol::GrpcWeb,
                    grpc_method: &path,
                    grpc_status: code,
                    http_status: &mut http_status,
                    headers: &mut sent_headers,
                    message: first_message.as_ref(),
                    body: None,
                    attributes: &mut ctx.filter_attributes,
                },
            );
        }
        let trailer_frame = encoder.trailers(&trailers);
        let Some(mut head) = head else {
            return session
                .write_response_body(Some(trailer_frame), true)
                .await
                .map_err(write_error);
        };
        unary_body.extend_from_slice(&trailer_frame);
        // The whole answer is known: its length frames it, and an HTTP/1.1 connection serves
        // the next call (a body without one is delimited by closing the connection).
        let _ = head.insert_header("content-length", unary_body.len().to_string());
        session
            .write_response_header(head, false)
            .await
            .map_err(write_error)?;
        session
            .write_response_body(Some(unary_body.freeze()), true)
            .await
            .map_err(write_error)
    }
}
