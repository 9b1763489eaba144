//! The gateway's own answers that reach no upstream: `/livez`, `/healthz`, `/readyz`,
//! `/openapi.json`, and files from `static_dir` for GET/HEAD paths no API route claims.

use bytes::Bytes;
use pingora::{http::ResponseHeader, proxy::Session};

use super::{GatewayProxy, RequestCtx, classify::AdminEndpoint, header_str};
use crate::{protocol::Protocol, static_files::StaticResponse};

/// `/readyz`: ready unless draining or no upstream endpoint is known yet. Upstream *health* is
/// deliberately not part of it: every edge replica shares the same upstreams, so going unready
/// with them would take the whole site down, including what the service can still answer (its
/// cache) and the edge itself (static page, OpenAPI). Unhealthy upstreams are the balancer's
/// business (panic routing); the body says how many are healthy.
fn readiness(draining: bool, endpoints: usize, healthy: usize) -> (u16, Bytes) {
    if draining {
        (503, Bytes::from_static(b"not ready: draining\n"))
    } else if endpoints == 0 {
        (
            503,
            Bytes::from_static(b"not ready: no upstream endpoint resolved yet\n"),
        )
    } else {
        (
            200,
            format!("ready: {healthy} of {endpoints} upstream endpoint(s) healthy\n").into(),
        )
    }
}

/// `/healthz`: the replaced facade's health body. `status` is the gateway's own (it answered);
/// `grpc_user_status` is the upstreams' grpc.health.v1 state as the active health checks last
/// saw it (`healthy` while at least one upstream is).
fn health(healthy_upstreams: usize) -> Bytes {
    serde_json::to_vec(&serde_json::json!({
        "status": "healthy",
        "service": "meshgate edge-gateway",
        "version": env!("CARGO_PKG_VERSION"),
        "grpc_user_status": if healthy_upstreams > 0 { "healthy" } else { "unhealthy" },
    }))
    .expect("a JSON value always serializes")
    .into()
}

impl GatewayProxy {
    pub(super) async fn admin(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        endpoint: AdminEndpoint,
    ) -> pingora::Result<()> {
        let (status, content_type, body) = match endpoint {
            // The process only: nothing here waits on an upstream.
            AdminEndpoint::Livez => (200, "text/plain", Bytes::from_static(b"ok\n")),
            AdminEndpoint::Healthz => (
                200,
                "application/json",
                health(self.state.upstreams.pool().healthy_count()),
            ),
            AdminEndpoint::Readyz => {
                let pool = self.state.upstreams.pool();
                let (status, body) = readiness(
                    self.state.lifecycle.is_draining(),
                    pool.len(),
                    pool.healthy_count(),
                );
                (status, "text/plain", body)
            }
            AdminEndpoint::OpenApi => (200, "application/json", self.state.openapi.clone()),
        };
        ctx.route = endpoint.path().to_owned();
        self.write_simple(session, ctx, status, content_type, body, &[])
            .await
    }

    /// The file from `static_dir` for a request classified as a static candidate, if one
    /// matches.
    pub(super) async fn static_file(&self, session: &Session) -> Option<StaticResponse> {
        let files = self.state.static_files.as_ref()?;
        let request = session.req_header();
        files
            .serve(
                &request.method,
                request.uri.path(),
                header_str(session, "if-none-match"),
            )
            .await
    }

    pub(super) async fn write_static(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        file: StaticResponse,
    ) -> pingora::Result<()> {
        ctx.protocol = Protocol::Static;
        ctx.route = "static".to_owned();
        let mut response = ResponseHeader::build(file.status, Some(file.headers.len() + 4))?;
        for (name, value) in file.headers {
            response.insert_header(name, value)?;
        }
        self.cors_headers(ctx, &mut response);
        self.trace_header(ctx, &mut response);
        ctx.status = file.status.as_u16();
        let end = file.body.is_empty();
        session
            .write_response_header(Box::new(response), end)
            .await?;
        if !end {
            session.write_response_body(Some(file.body), true).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_unless_draining_or_nothing_resolved() {
        assert_eq!(
            readiness(false, 3, 2),
            (
                200,
                Bytes::from_static(b"ready: 2 of 3 upstream endpoint(s) healthy\n")
            )
        );
        // No healthy upstream: still ready (the balancer routes in panic; the site stays up).
        assert_eq!(readiness(false, 3, 0).0, 200);
        assert_eq!(readiness(false, 0, 0).0, 503);
        assert_eq!(readiness(true, 3, 3).0, 503);
    }

    #[test]
    fn health_is_the_facade_body() {
        let body: serde_json::Value = serde_json::from_slice(&health(1)).unwrap();
        assert_eq!(body["status"], "healthy");
        assert_eq!(body["grpc_user_status"], "healthy");
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
        let body: serde_json::Value = serde_json::from_slice(&health(0)).unwrap();
        assert_eq!(body["grpc_user_status"], "unhealthy");
    }
}
