//! `gateway.auth` on each kind of call: the rule that covers it ([`crate::auth::policy`]), the
//! token checked before the body is read, the verified claims kept for the upstream request.
//! Without `gateway.auth` every check is one `None` test. Client-sent `x-jwt-*` headers are
//! dropped on every call either way (`metadata::is_forwarded`, [`strip_client_claims`]).

use pingora::proxy::Session;

use super::{GatewayProxy, RequestCtx};

use crate::{auth::policy::FORWARDED_PREFIX, error::GatewayError, protocol::Protocol};

impl GatewayProxy {
    /// REST (after the route lookup) and gRPC-web: refuses the call, or keeps the verified
    /// claims in `ctx.forwarded`.
    pub(super) async fn authenticate(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        let Some(auth) = &self.state.auth else {
            return Ok(());
        };
        let route = (ctx.protocol == Protocol::Rest).then_some(ctx.route.as_str());
        let Some(rule) = auth.policy().rule_for(&ctx.grpc_method, route) else {
            return Ok(());
        };
        let authorization = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes);
        ctx.forwarded = Some(auth.authenticate(rule, authorization).await?);
        Ok(())
    }

    /// Native gRPC, on the request headers before the filters and the proxy phases.
    pub(super) async fn authenticate_grpc(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        if self.state.auth.is_none() {
            return Ok(());
        }
        let path = session.req_header().uri.path();
        ctx.route = meshgate_wire::routes::grpc_route_label(&self.state.pool, path);
        ctx.grpc_method = path.to_owned();
        self.authenticate(session, ctx).await
    }
}

/// Drops client-sent `x-jwt-*` headers from a proxied gRPC request, then adds the verified
/// claims. Nothing is allocated unless the client sent such a header.
pub(super) fn strip_client_claims(
    upstream_request: &mut pingora::http::RequestHeader,
    ctx: &RequestCtx,
) -> pingora::Result<()> {
    let spoofed = |name: &http::HeaderName| name.as_str().starts_with(FORWARDED_PREFIX);
    if upstream_request.headers.keys().any(spoofed) {
        let names: Vec<http::HeaderName> = upstream_request
            .headers
            .keys()
            .filter(|name| spoofed(name))
            .cloned()
            .collect();
        for name in names {
            upstream_request.remove_header(&name);
        }
    }
    if let Some(forwarded) = &ctx.forwarded {
        for (name, value) in forwarded.headers() {
            upstream_request.insert_header(name, value.clone())?;
        }
    }
    Ok(())
}
