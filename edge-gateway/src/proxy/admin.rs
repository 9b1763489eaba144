//! The gateway's own answers that reach no upstream: `/healthz`, `/readyz`, `/openapi.json`,
//! and files from `static_dir` for GET/HEAD paths no API route claims.

use bytes::Bytes;
use pingora::{http::ResponseHeader, proxy::Session};

use super::{GatewayProxy, RequestCtx, classify::AdminEndpoint, header_str};
use crate::{protocol::Protocol, static_files::StaticResponse};

/// `/readyz`: ready while at least one upstream passes its health checks.
fn readiness(healthy: usize) -> (u16, Bytes) {
    if healthy > 0 {
        (
            200,
            format!("ready: {healthy} healthy upstream(s)\n").into(),
        )
    } else {
        (503, Bytes::from_static(b"not ready: no healthy upstream\n"))
    }
}

impl GatewayProxy {
    pub(super) async fn admin(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        endpoint: AdminEndpoint,
    ) -> pingora::Result<()> {
        let (status, content_type, body) = match endpoint {
            AdminEndpoint::Healthz => (200, "text/plain", Bytes::from_static(b"ok\n")),
            AdminEndpoint::Readyz => {
                let (status, body) = readiness(self.state.upstreams.healthy_count());
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
    fn ready_with_one_healthy_upstream() {
        assert_eq!(
            readiness(2),
            (200, Bytes::from_static(b"ready: 2 healthy upstream(s)\n"))
        );
        assert_eq!(readiness(0).0, 503);
    }
}
