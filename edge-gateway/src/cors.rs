//! CORS decisions from an origin allow-list. Pure: headers in, headers out.

use std::time::Duration;

/// Headers browsers may read from responses: gRPC-web clients need the gRPC status ones.
pub const EXPOSE_HEADERS: &str =
    "grpc-status, grpc-message, grpc-status-details-bin, location, traceparent";
const ALLOW_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";
const DEFAULT_ALLOW_HEADERS: &str = "content-type, authorization, x-grpc-web, x-user-agent, grpc-timeout, traceparent, tracestate, b3";

#[derive(Debug, Clone)]
pub struct CorsPolicy {
    origins: Vec<String>,
    any_origin: bool,
    allow_credentials: bool,
    max_age: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Preflight {
    /// Not a preflight request.
    NotPreflight,
    /// Answer 204 with these headers.
    Allowed(Vec<(&'static str, String)>),
    /// Answer 403 without CORS headers: the browser will block the call.
    Rejected,
}

impl CorsPolicy {
    pub fn new(origins: Vec<String>, allow_credentials: bool, max_age: Duration) -> Self {
        let any_origin = origins.iter().any(|o| o == "*");
        Self {
            origins,
            any_origin,
            allow_credentials,
            max_age,
        }
    }

    fn allow_origin_value(&self, origin: &str) -> Option<String> {
        if self.any_origin && !self.allow_credentials {
            Some("*".to_owned())
        } else if self.any_origin || self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            Some(origin.to_owned())
        } else {
            None
        }
    }

    /// `OPTIONS` with `Origin` and `Access-Control-Request-Method` is a preflight.
    pub fn preflight(
        &self,
        method: &http::Method,
        origin: Option<&str>,
        request_method: Option<&str>,
        request_headers: Option<&str>,
    ) -> Preflight {
        let (Some(origin), Some(_)) = (origin, request_method) else {
            return Preflight::NotPreflight;
        };
        if method != http::Method::OPTIONS {
            return Preflight::NotPreflight;
        }
        let Some(allow_origin) = self.allow_origin_value(origin) else {
            return Preflight::Rejected;
        };
        let mut headers = vec![
            ("access-control-allow-origin", allow_origin),
            ("access-control-allow-methods", ALLOW_METHODS.to_owned()),
            (
                "access-control-allow-headers",
                // Echoing the request list lets custom metadata through, as Envoy's filter does.
                request_headers
                    .filter(|h| !h.trim().is_empty())
                    .unwrap_or(DEFAULT_ALLOW_HEADERS)
                    .to_owned(),
            ),
            ("access-control-max-age", self.max_age.as_secs().to_string()),
            ("vary", "Origin".to_owned()),
        ];
        if self.allow_credentials {
            headers.push(("access-control-allow-credentials", "true".to_owned()));
        }
        Preflight::Allowed(headers)
    }

    /// Headers for an actual (non-preflight) response, including gateway-made errors.
    pub fn response_headers(&self, origin: Option<&str>) -> Vec<(&'static str, String)> {
        let Some(allow_origin) = origin.and_then(|o| self.allow_origin_value(o)) else {
            return Vec::new();
        };
        let mut headers = vec![
            ("access-control-allow-origin", allow_origin),
            ("access-control-expose-headers", EXPOSE_HEADERS.to_owned()),
            ("vary", "Origin".to_owned()),
        ];
        if self.allow_credentials {
            headers.push(("access-control-allow-credentials", "true".to_owned()));
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;

    fn policy() -> CorsPolicy {
        CorsPolicy::new(
            vec!["https://app.example".into()],
            false,
            Duration::from_secs(60),
        )
    }

    #[test]
    fn preflight_for_listed_origin() {
        let Preflight::Allowed(headers) = policy().preflight(
            &Method::OPTIONS,
            Some("https://app.example"),
            Some("POST"),
            Some("x-custom"),
        ) else {
            panic!("expected an allowed preflight");
        };
        assert!(headers.contains(&("access-control-allow-origin", "https://app.example".into())));
        assert!(headers.contains(&("access-control-allow-headers", "x-custom".into())));
        assert!(headers.contains(&("access-control-max-age", "60".into())));
    }

    #[test]
    fn preflight_rejected_for_other_origins_and_ignored_otherwise() {
        let policy = policy();
        assert_eq!(
            policy.preflight(
                &Method::OPTIONS,
                Some("https://evil.example"),
                Some("GET"),
                None
            ),
            Preflight::Rejected
        );
        assert_eq!(
            policy.preflight(&Method::OPTIONS, None, Some("GET"), None),
            Preflight::NotPreflight
        );
        assert_eq!(
            policy.preflight(&Method::GET, Some("https://app.example"), Some("GET"), None),
            Preflight::NotPreflight
        );
    }

    #[test]
    fn actual_response_exposes_grpc_headers() {
        let headers = policy().response_headers(Some("https://app.example"));
        let expose = &headers
            .iter()
            .find(|(n, _)| *n == "access-control-expose-headers")
            .unwrap()
            .1;
        for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
            assert!(expose.contains(name));
        }
        assert!(
            policy()
                .response_headers(Some("https://evil.example"))
                .is_empty()
        );
        assert!(policy().response_headers(None).is_empty());
    }

    #[test]
    fn wildcard_echoes_origin_only_with_credentials() {
        let any = CorsPolicy::new(vec!["*".into()], false, Duration::ZERO);
        assert_eq!(any.response_headers(Some("https://x.example"))[0].1, "*");
        let creds = CorsPolicy::new(vec!["*".into()], true, Duration::ZERO);
        assert_eq!(
            creds.response_headers(Some("https://x.example"))[0].1,
            "https://x.example"
        );
    }
}
