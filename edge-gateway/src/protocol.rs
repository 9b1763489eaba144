//! The one protocol type: how a request is served, decided once per request by
//! [`crate::proxy::classify`]. It labels metrics, the access log and the server span, picks the
//! shape of error responses, and tells the filters ([`crate::hooks`]) what they are looking at.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// REST/JSON transcoded from `google.api.http` rules (also the gateway's 404/405).
    Rest,
    /// gRPC-web (binary or text), terminated by the gateway.
    GrpcWeb,
    /// Native gRPC, proxied by pingora to an upstream.
    Grpc,
    /// A file from `static_dir`.
    Static,
    /// The gateway's own endpoints (`/livez`, `/healthz`, `/readyz`, `/openapi.json`).
    Admin,
    /// A CORS preflight, answered by the gateway.
    Preflight,
}

impl Protocol {
    /// The label in metrics, the access log and the span's `meshgate.protocol`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rest => "rest",
            Self::GrpcWeb => "grpc-web",
            Self::Grpc => "grpc",
            Self::Static => "static",
            Self::Admin => "admin",
            Self::Preflight => "preflight",
        }
    }

    /// gRPC or gRPC-web: errors travel as `grpc-status`, not as HTTP statuses.
    pub fn is_grpc(self) -> bool {
        matches!(self, Self::Grpc | Self::GrpcWeb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_ones_dashboards_use() {
        let all = [
            (Protocol::Rest, "rest", false),
            (Protocol::GrpcWeb, "grpc-web", true),
            (Protocol::Grpc, "grpc", true),
            (Protocol::Static, "static", false),
            (Protocol::Admin, "admin", false),
            (Protocol::Preflight, "preflight", false),
        ];
        for (protocol, label, grpc) in all {
            assert_eq!(protocol.as_str(), label);
            assert_eq!(protocol.is_grpc(), grpc, "{label}");
        }
    }
}
