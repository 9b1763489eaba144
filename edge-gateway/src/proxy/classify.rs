//! What a request is, decided once from its method, path and a few headers (pure): the
//! [`RequestKind`] that [`super::GatewayProxy`]'s `request_filter` dispatches on.

use http::Method;
use meshgate_wire::content_type::Protocol as ContentProtocol;
use meshgate_wire::grpc_web::Mode;
use meshgate_wire::routes::{RouteMiss, Router};

use crate::{
    cors::{CorsPolicy, Preflight},
    protocol::Protocol,
};

/// The parts of a request that decide its kind.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    /// `content-type`, empty when absent.
    pub content_type: &'a str,
    pub origin: Option<&'a str>,
    /// `access-control-request-method` and `-headers` (CORS preflight).
    pub preflight_method: Option<&'a str>,
    pub preflight_headers: Option<&'a str>,
}

/// How the gateway answers a request, in the order the checks run.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// A CORS preflight from an allowed origin: 204 with these headers.
    PreflightAllowed(Vec<(&'static str, String)>),
    /// A CORS preflight from an origin the policy does not allow: 403.
    PreflightRejected,
    /// `GET` on one of the gateway's own endpoints.
    Admin(AdminEndpoint),
    /// gRPC-web, terminated by the gateway.
    GrpcWeb(Mode),
    /// Native gRPC (`application/grpc...`), proxied by pingora.
    Grpc,
    /// A `GET`/`HEAD` no API route claims, with `static_dir` configured: a file if one
    /// matches, else answered as REST (its 404).
    StaticFile,
    /// REST/JSON, including paths no route claims (404/405 in JSON).
    Rest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminEndpoint {
    Livez,
    Healthz,
    Readyz,
    OpenApi,
}

impl AdminEndpoint {
    fn from_path(path: &str) -> Option<Self> {
        match path {
            "/livez" => Some(Self::Livez),
            "/healthz" => Some(Self::Healthz),
            "/readyz" => Some(Self::Readyz),
            "/openapi.json" => Some(Self::OpenApi),
            _ => None,
        }
    }

    /// The path, which is also the endpoint's route label.
    pub fn path(self) -> &'static str {
        match self {
            Self::Livez => "/livez",
            Self::Healthz => "/healthz",
            Self::Readyz => "/readyz",
            Self::OpenApi => "/openapi.json",
        }
    }
}

impl RequestKind {
    /// The protocol the request is labelled with. A [`Self::StaticFile`] is REST until a file
    /// is found.
    pub fn protocol(&self) -> Protocol {
        match self {
            Self::PreflightAllowed(_) | Self::PreflightRejected => Protocol::Preflight,
            Self::Admin(_) => Protocol::Admin,
            Self::GrpcWeb(_) => Protocol::GrpcWeb,
            Self::Grpc => Protocol::Grpc,
            Self::StaticFile | Self::Rest => Protocol::Rest,
        }
    }
}

/// Classifies a request. CORS preflights come first (answered before anything can fail), then
/// the admin endpoints, then the content type (gRPC-web, gRPC); what is left is REST, or a
/// static file where no API route claims the path.
pub fn classify(
    head: &RequestHead<'_>,
    cors: &CorsPolicy,
    router: &Router,
    serves_static: bool,
) -> RequestKind {
    match cors.preflight(
        head.method,
        head.origin,
        head.preflight_method,
        head.preflight_headers,
    ) {
        Preflight::NotPreflight => {}
        Preflight::Allowed(headers) => return RequestKind::PreflightAllowed(headers),
        Preflight::Rejected => return RequestKind::PreflightRejected,
    }
    if *head.method == Method::GET
        && let Some(endpoint) = AdminEndpoint::from_path(head.path)
    {
        return RequestKind::Admin(endpoint);
    }
    if let Some(mode) = Mode::from_content_type(head.content_type) {
        return RequestKind::GrpcWeb(mode);
    }
    // Any other gRPC content type (another codec, or gRPC-web that is not protobuf) goes to
    // the upstream as it is.
    if ContentProtocol::from_content_type(Some(head.content_type)).is_grpc_family() {
        return RequestKind::Grpc;
    }
    let static_candidate = serves_static
        && (*head.method == Method::GET || *head.method == Method::HEAD)
        && matches!(
            router.lookup(head.method, head.path),
            Err(RouteMiss::NotFound)
        );
    if static_candidate {
        RequestKind::StaticFile
    } else {
        RequestKind::Rest
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn router() -> Router {
        Router::from_pool(meshgate_proto::descriptor_pool()).unwrap()
    }

    fn cors() -> CorsPolicy {
        CorsPolicy::new(
            vec!["https://app.example".to_owned()],
            false,
            Duration::from_secs(600),
        )
    }

    fn head<'a>(method: &'a Method, path: &'a str, content_type: &'a str) -> RequestHead<'a> {
        RequestHead {
            method,
            path,
            content_type,
            origin: None,
            preflight_method: None,
            preflight_headers: None,
        }
    }

    fn kind(head: &RequestHead<'_>, serves_static: bool) -> RequestKind {
        classify(head, &cors(), &router(), serves_static)
    }

    #[test]
    fn preflights_come_first() {
        let options = Method::OPTIONS;
        let mut preflight = head(&options, "/healthz", "application/grpc");
        preflight.origin = Some("https://app.example");
        preflight.preflight_method = Some("POST");
        let allowed = kind(&preflight, true);
        assert!(
            matches!(&allowed, RequestKind::PreflightAllowed(headers)
                if headers.contains(&("access-control-allow-origin", "https://app.example".to_owned()))),
            "{allowed:?}"
        );
        assert_eq!(allowed.protocol(), Protocol::Preflight);
        preflight.origin = Some("https://evil.example");
        assert_eq!(kind(&preflight, true), RequestKind::PreflightRejected);
        // OPTIONS without Access-Control-Request-Method is an ordinary request.
        preflight.preflight_method = None;
        assert_eq!(kind(&preflight, false), RequestKind::Grpc);
    }

    #[test]
    fn admin_endpoints_answer_get_only() {
        for endpoint in [
            AdminEndpoint::Livez,
            AdminEndpoint::Healthz,
            AdminEndpoint::Readyz,
            AdminEndpoint::OpenApi,
        ] {
            let kind = kind(&head(&Method::GET, endpoint.path(), ""), true);
            assert_eq!(kind, RequestKind::Admin(endpoint));
            assert_eq!(kind.protocol(), Protocol::Admin);
        }
        assert_eq!(
            kind(&head(&Method::POST, "/healthz", ""), false),
            RequestKind::Rest
        );
        assert_eq!(
            kind(&head(&Method::GET, "/healthz/", ""), false),
            RequestKind::Rest
        );
    }

    #[test]
    fn content_type_picks_grpc_web_or_grpc() {
        let path = "/user.v1.UserService/GetUser";
        for (content_type, expected) in [
            ("application/grpc-web", RequestKind::GrpcWeb(Mode::Binary)),
            (
                "application/grpc-web+proto",
                RequestKind::GrpcWeb(Mode::Binary),
            ),
            (
                "Application/GRPC-Web-Text; charset=utf-8",
                RequestKind::GrpcWeb(Mode::Text),
            ),
            ("application/grpc", RequestKind::Grpc),
            ("application/grpc+proto", RequestKind::Grpc),
            // Media types are case-insensitive; a longer subtype is not gRPC.
            ("Application/gRPC", RequestKind::Grpc),
            ("application/grpcx", RequestKind::Rest),
            // gRPC-web with another codec is not terminated here: it goes upstream as it is.
            ("application/grpc-web+json", RequestKind::Grpc),
            ("application/json", RequestKind::Rest),
            ("", RequestKind::Rest),
        ] {
            let kind = kind(&head(&Method::POST, path, content_type), false);
            assert_eq!(kind, expected, "{content_type}");
        }
        // Admin paths carrying a gRPC content type are still the admin endpoint on GET.
        assert_eq!(
            kind(&head(&Method::GET, "/readyz", "application/grpc"), false),
            RequestKind::Admin(AdminEndpoint::Readyz)
        );
        assert_eq!(
            kind(
                &head(&Method::POST, "/x", "application/grpc-web-text"),
                false
            )
            .protocol(),
            Protocol::GrpcWeb
        );
        assert_eq!(
            kind(&head(&Method::POST, "/x", "application/grpc"), false).protocol(),
            Protocol::Grpc
        );
    }

    #[test]
    fn static_files_take_only_unclaimed_get_and_head() {
        let unclaimed = "/index.html";
        for method in [Method::GET, Method::HEAD] {
            let kind = kind(&head(&method, unclaimed, ""), true);
            assert_eq!(kind, RequestKind::StaticFile, "{method}");
            assert_eq!(kind.protocol(), Protocol::Rest);
        }
        // Without static_dir, or for other methods, the path is REST's (404/405).
        assert_eq!(
            kind(&head(&Method::GET, unclaimed, ""), false),
            RequestKind::Rest
        );
        assert_eq!(
            kind(&head(&Method::POST, unclaimed, ""), true),
            RequestKind::Rest
        );
        // A path an API route claims is never a file, even for another method (405).
        let claimed = "/v1/users/5";
        assert_eq!(
            kind(&head(&Method::GET, claimed, ""), true),
            RequestKind::Rest
        );
        assert_eq!(
            kind(&head(&Method::HEAD, claimed, ""), true),
            RequestKind::Rest
        );
    }
}
