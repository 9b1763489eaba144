//! REST/JSON, terminated here: route lookup, JSON → request message ([`crate::transcode`]),
//! one upstream call with the gateway's gRPC client, the messages → JSON with the route's
//! success status (or the error's status once grpc-status is known).

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use meshgate_wire::content_type::media_type;
use meshgate_wire::routes::{Route, RouteMiss};
use pingora::proxy::Session;
use prost_reflect::DynamicMessage;

use super::{GatewayProxy, RequestCtx, header_str};

use crate::{error::GatewayError, hooks::FilterResponse, protocol::Protocol, transcode};

/// A body's content type the REST API accepts: none, `application/json` or `*+json`.
fn is_json(content_type: &str) -> bool {
    let essence = media_type(content_type);
    essence.is_empty() || essence == "application/json" || essence.ends_with("+json")
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
                message,
                &metadata,
                timeout,
                route.idempotent(),
            )
            .await?;
        ctx.upstream = Some(upstream);
        let mut stream = response.into_inner();
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
            // A server stream over REST is answered as one JSON array of the messages.
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

#[cfg(test)]
mod tests {
    use super::*;

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
