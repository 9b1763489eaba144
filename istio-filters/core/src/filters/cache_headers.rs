//! cache-headers: `Cache-Control`, `Vary` and a strong `ETag` per gRPC method or REST route,
//! and `If-None-Match` → 304 without the body.
//!
//! Rules: caching directives only on cacheable statuses (`no-store` policies apply to any);
//! an upstream `no-store` is left alone unless the policy says `overrideUpstreamNoStore`; an
//! upstream ETag is kept (and used for 304s); ETag and 304 only for REST GET/HEAD 200s
//! (a 304 would break gRPC and gRPC-web clients, who get `Cache-Control`/`Vary` only).

use std::sync::Arc;

use meshgate_wire::content_type::Protocol;
use meshgate_wire::etag::if_none_match_hits;
use meshgate_wire::path_template::PathTemplate;
use serde::Deserialize;

use crate::catalog::{Catalog, MethodId};
use crate::filter::{self, ConfigError, Filter, Stream};
use crate::host::{Action, Counters, Host};
use crate::http_cache::{self, CacheControl};
use crate::inspect::RequestTarget;

// === config ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CacheHeadersConfig {
    pub descriptor_set: Option<String>,
    /// Responses larger than this get no ETag (they pass through unhashed, counted).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u32,
    pub policies: Vec<PolicyConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyConfig {
    pub name: String,
    /// `package.Service/Method`: matches gRPC, gRPC-web and REST calls of the method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// `VERB /path/{template}` for REST routes outside the descriptors.
    #[serde(default)]
    pub routes: Vec<String>,
    pub cache_control: CacheControlConfig,
    #[serde(default)]
    pub vary: Vec<String>,
    #[serde(default)]
    pub etag: bool,
    #[serde(default)]
    pub override_upstream_no_store: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CacheControlConfig {
    #[serde(default)]
    pub no_store: bool,
    #[serde(default)]
    pub no_cache: bool,
    pub scope: Option<Scope>,
    pub max_age: Option<u32>,
    pub s_maxage: Option<u32>,
    #[serde(default)]
    pub must_revalidate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Scope {
    Public,
    Private,
}

fn default_max_body() -> u32 {
    1024 * 1024
}

// === compiled ===

#[derive(Debug)]
struct Policy {
    /// Resolved once: a request's method is compared by id, not by name.
    methods: Vec<MethodId>,
    routes: Vec<(String, PathTemplate)>,
    cache_control: CacheControl,
    /// `cache_control` rendered once, at configure time.
    cache_control_value: String,
    vary: Vec<String>,
    etag: bool,
    override_no_store: bool,
}

pub struct CacheHeaders {
    catalog: Arc<Catalog>,
    max_body: usize,
    policies: Vec<Policy>,
    counters: Counters,
}

const COUNTERS: &[&str] = &[
    "applied",
    "etag",
    "not_modified",
    "upstream_no_store",
    "body_skipped",
];

impl CacheHeaders {
    pub fn compile(config: CacheHeadersConfig, host: &mut dyn Host) -> Result<Self, ConfigError> {
        let catalog = Catalog::shared(config.descriptor_set.as_deref())
            .map_err(|e| ConfigError::at("descriptorSet", e))?;
        let max_body = filter::check_max_body(config.max_body_bytes)?;
        if config.policies.is_empty() {
            return Err(ConfigError::at(
                "policies",
                "at least one policy is required",
            ));
        }
        let mut names: Vec<String> = Vec::new();
        let mut policies = Vec::new();
        for (i, policy) in config.policies.into_iter().enumerate() {
            let at = |field: &str| format!("policies[{i}].{field}");
            if policy.name.is_empty() || names.contains(&policy.name) {
                return Err(ConfigError::at(at("name"), "must be non-empty and unique"));
            }
            names.push(policy.name.clone());
            if policy.methods.is_empty() && policy.routes.is_empty() {
                return Err(ConfigError::at(
                    at("methods"),
                    "a policy needs `methods` or `routes`",
                ));
            }
            let mut methods = Vec::new();
            for method in &policy.methods {
                let Some(id) = catalog.method_by_name(method) else {
                    return Err(ConfigError::at(
                        at("methods"),
                        format!("unknown method {method:?}"),
                    ));
                };
                methods.push(id);
            }
            let mut routes = Vec::new();
            for route in &policy.routes {
                let (verb, path) = route.split_once(' ').ok_or_else(|| {
                    ConfigError::at(at("routes"), format!("{route:?} is not `VERB /path`"))
                })?;
                let template = PathTemplate::parse(path.trim())
                    .map_err(|e| ConfigError::at(at("routes"), e))?;
                routes.push((verb.to_ascii_uppercase(), template));
            }
            let cc = &policy.cache_control;
            if cc.no_store
                && (cc.max_age.is_some()
                    || cc.s_maxage.is_some()
                    || cc.scope.is_some()
                    || policy.etag)
            {
                return Err(ConfigError::at(
                    at("cacheControl.noStore"),
                    "noStore excludes maxAge, sMaxage, scope and etag",
                ));
            }
            if !cc.no_store && cc.max_age.is_none() && cc.s_maxage.is_none() && !cc.no_cache {
                return Err(ConfigError::at(
                    at("cacheControl"),
                    "set noStore, noCache, maxAge or sMaxage",
                ));
            }
            for name in &policy.vary {
                filter::check_header_name(&at("vary"), name)?;
            }
            let cache_control = CacheControl {
                no_store: cc.no_store,
                no_cache: cc.no_cache,
                public: cc.scope == Some(Scope::Public),
                private: cc.scope == Some(Scope::Private),
                max_age: cc.max_age,
                s_maxage: cc.s_maxage,
                must_revalidate: cc.must_revalidate,
            };
            policies.push(Policy {
                methods,
                routes,
                cache_control_value: cache_control.render(),
                cache_control,
                vary: policy.vary,
                etag: policy.etag,
                override_no_store: policy.override_upstream_no_store,
            });
        }
        Ok(Self {
            catalog,
            max_body,
            policies,
            counters: Counters::define(host, Self::NAME, COUNTERS),
        })
    }

    fn policy_for(&self, target: &RequestTarget) -> Option<usize> {
        self.policies.iter().position(|p| {
            target.method.is_some_and(|m| p.methods.contains(&m))
                || (target.protocol == Protocol::Http
                    && p.routes.iter().any(|(verb, t)| {
                        verb.eq_ignore_ascii_case(&target.http_method)
                            && t.matches(&target.path).is_some()
                    }))
        })
    }
}

impl Filter for CacheHeaders {
    type Stream = CacheHeadersStream;
    const NAME: &'static str = "meshgate_cache_headers";

    fn configure(config: &[u8], host: &mut dyn Host) -> Result<Self, ConfigError> {
        Self::compile(filter::parse_config(config)?, host)
    }

    fn new_stream(self: &Arc<Self>) -> CacheHeadersStream {
        CacheHeadersStream {
            root: Arc::clone(self),
            policy: None,
            conditional: None,
            etag_eligible: false,
            is_head: false,
            hashing: false,
        }
    }
}

// === stream ===

pub struct CacheHeadersStream {
    root: Arc<CacheHeaders>,
    policy: Option<usize>,
    /// The request's `If-None-Match` (REST GET/HEAD only).
    conditional: Option<String>,
    etag_eligible: bool,
    is_head: bool,
    /// Response headers are held until the body is hashed.
    hashing: bool,
}

impl Stream for CacheHeadersStream {
    fn on_request_headers(&mut self, host: &mut dyn Host, _end_of_stream: bool) -> Action {
        let target = RequestTarget::identify(&self.root.catalog, host);
        self.policy = self.root.policy_for(&target);
        let rest = target.protocol == Protocol::Http;
        // HEAD carries no body to hash: only an upstream ETag can answer its conditionals.
        self.is_head = rest && target.http_method == "HEAD";
        self.etag_eligible = rest && (target.http_method == "GET" || self.is_head);
        if self.etag_eligible {
            self.conditional = target.header("if-none-match").map(str::to_owned);
        }
        Action::Continue
    }

    fn on_response_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Action {
        let Some(policy) = self.policy.and_then(|i| self.root.policies.get(i)) else {
            return Action::Continue;
        };
        let root = Arc::clone(&self.root);
        let status: u16 = host
            .response_header(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let upstream_cc = host.response_header("cache-control");
        if upstream_cc.as_deref().is_some_and(http_cache::has_no_store) && !policy.override_no_store
        {
            root.counters.increment(host, "upstream_no_store");
            return Action::Continue;
        }
        if policy.cache_control.no_store {
            host.set_response_header("cache-control", Some("no-store"));
            root.counters.increment(host, "applied");
            return Action::Continue;
        }
        if !http_cache::is_cacheable_status(status) {
            return Action::Continue;
        }
        host.set_response_header("cache-control", Some(&policy.cache_control_value));
        if let Some(vary) =
            http_cache::merge_vary(host.response_header("vary").as_deref(), &policy.vary)
        {
            host.set_response_header("vary", Some(&vary));
        }
        root.counters.increment(host, "applied");
        if !(policy.etag && self.etag_eligible && status == 200) {
            return Action::Continue;
        }
        if let Some(upstream) = host.response_header("etag") {
            self.answer_conditional(host, &upstream, None);
            return Action::Continue;
        }
        if self.is_head {
            return Action::Continue;
        }
        if end_of_stream {
            let etag = http_cache::strong_etag(b"");
            host.set_response_header("etag", Some(&etag));
            root.counters.increment(host, "etag");
            self.answer_conditional(host, &etag, None);
            return Action::Continue;
        }
        self.hashing = true;
        Action::Pause
    }

    fn on_response_body(
        &mut self,
        host: &mut dyn Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        if !self.hashing {
            return Action::Continue;
        }
        if body_size > self.root.max_body {
            self.hashing = false;
            self.root.counters.increment(host, "body_skipped");
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.hashing = false;
        let Some(body) = host.response_body(0, body_size) else {
            return Action::Continue;
        };
        let etag = http_cache::strong_etag(&body);
        host.set_response_header("etag", Some(&etag));
        self.root.counters.increment(host, "etag");
        self.answer_conditional(host, &etag, Some(body_size));
        Action::Continue
    }
}

impl CacheHeadersStream {
    /// Turns the response into a 304 when the client already holds `etag`.
    fn answer_conditional(&self, host: &mut dyn Host, etag: &str, buffered: Option<usize>) {
        let hit = self
            .conditional
            .as_deref()
            .is_some_and(|header| if_none_match_hits(header, etag));
        if !hit {
            return;
        }
        host.set_response_header(":status", Some("304"));
        for name in [
            "content-length",
            "content-type",
            "content-encoding",
            "transfer-encoding",
        ] {
            host.set_response_header(name, None);
        }
        if let Some(size) = buffered {
            host.clear_response_body(0, size);
        }
        self.root.counters.increment(host, "not_modified");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_host::TestHost;

    const CONFIG: &str = r#"{"policies":[
        {"name":"read","methods":["user.UserService/GetUser"],"cacheControl":{"scope":"private","maxAge":60},"vary":["authorization"],"etag":true},
        {"name":"writes","methods":["user.UserService/CreateUser","user.UserService/DeleteUser"],"cacheControl":{"noStore":true}},
        {"name":"health","routes":["GET /healthz"],"cacheControl":{"noCache":true}}
    ]}"#;

    struct Exchange {
        host: TestHost,
        action: Action,
    }

    fn exchange(
        request: &[(&str, &str)],
        status: &str,
        upstream: &[(&str, &str)],
        body: &[u8],
    ) -> Exchange {
        let mut host = TestHost::with_request(request);
        let root = Arc::new(CacheHeaders::configure(CONFIG.as_bytes(), &mut host).unwrap());
        let mut stream = root.new_stream();
        stream.on_request_headers(&mut host, true);
        host.response_headers = vec![(":status".into(), status.into())];
        host.response_headers.extend(
            upstream
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        host.response_body = body.to_vec();
        let mut action = stream.on_response_headers(&mut host, body.is_empty());
        if action == Action::Pause {
            action = stream.on_response_body(&mut host, body.len(), true);
        }
        Exchange { host, action }
    }

    const GET: &[(&str, &str)] = &[(":method", "GET"), (":path", "/v1/users/1")];

    #[test]
    fn read_policy_sets_headers_and_a_stable_etag() {
        let first = exchange(GET, "200", &[("vary", "accept")], b"{\"id\":\"1\"}");
        let second = exchange(GET, "200", &[], b"{\"id\":\"1\"}");
        assert_eq!(first.action, Action::Continue);
        let h = &first.host;
        assert_eq!(
            h.response_header("cache-control").as_deref(),
            Some("private, max-age=60")
        );
        assert_eq!(
            h.response_header("vary").as_deref(),
            Some("accept, authorization")
        );
        let etag = h.response_header("etag").unwrap();
        assert_eq!(Some(etag.clone()), second.host.response_header("etag"));
        assert_eq!(h.response_body, b"{\"id\":\"1\"}");

        let mut conditional = GET.to_vec();
        conditional.push(("if-none-match", &etag));
        let hit = exchange(
            &conditional,
            "200",
            &[("content-length", "10")],
            b"{\"id\":\"1\"}",
        );
        assert_eq!(hit.host.response_header(":status").as_deref(), Some("304"));
        assert!(hit.host.response_body.is_empty());
        assert_eq!(hit.host.response_header("content-length"), None);
        assert_eq!(hit.host.counter("meshgate_cache_headers_not_modified"), 1);

        let mut stale = GET.to_vec();
        stale.push(("if-none-match", "\"old\""));
        let miss = exchange(&stale, "200", &[], b"{\"id\":\"1\"}");
        assert_eq!(miss.host.response_header(":status").as_deref(), Some("200"));
        assert_eq!(miss.host.response_body, b"{\"id\":\"1\"}");
    }

    #[test]
    fn head_requests_get_no_etag_of_their_empty_body() {
        let head = exchange(
            &[(":method", "HEAD"), (":path", "/v1/users/1")],
            "200",
            &[],
            b"",
        );
        assert_eq!(
            head.host.response_header("cache-control").as_deref(),
            Some("private, max-age=60")
        );
        assert_eq!(head.host.response_header("etag"), None);
        let upstream = exchange(
            &[
                (":method", "HEAD"),
                (":path", "/v1/users/1"),
                ("if-none-match", "\"v1\""),
            ],
            "200",
            &[("etag", "\"v1\"")],
            b"",
        );
        assert_eq!(
            upstream.host.response_header(":status").as_deref(),
            Some("304")
        );
    }

    #[test]
    fn uncacheable_statuses_and_upstream_no_store_are_left_alone() {
        let error = exchange(GET, "500", &[], b"oops");
        assert_eq!(error.host.response_header("cache-control"), None);
        assert_eq!(error.host.response_header("etag"), None);
        let no_store = exchange(GET, "200", &[("cache-control", "no-store")], b"x");
        assert_eq!(
            no_store.host.response_header("cache-control").as_deref(),
            Some("no-store")
        );
        assert_eq!(no_store.host.response_header("etag"), None);
    }

    #[test]
    fn writes_get_no_store_and_grpc_gets_no_etag() {
        let post = exchange(
            &[(":method", "POST"), (":path", "/v1/users")],
            "201",
            &[],
            b"{}",
        );
        assert_eq!(
            post.host.response_header("cache-control").as_deref(),
            Some("no-store")
        );
        let grpc = exchange(
            &[
                (":method", "POST"),
                (":path", "/user.UserService/GetUser"),
                ("content-type", "application/grpc"),
            ],
            "200",
            &[],
            b"\0\0\0\0\0",
        );
        assert_eq!(
            grpc.host.response_header("cache-control").as_deref(),
            Some("private, max-age=60")
        );
        assert_eq!(grpc.host.response_header("etag"), None);
        let health = exchange(
            &[(":method", "GET"), (":path", "/healthz")],
            "200",
            &[],
            b"ok",
        );
        assert_eq!(
            health.host.response_header("cache-control").as_deref(),
            Some("no-cache")
        );
    }

    #[test]
    fn rejects_bad_configs() {
        let cases = [
            (r#"{"policies":[]}"#, "policies: at least one"),
            (
                r#"{"policies":[{"name":"a","methods":["user.UserService/GetUser"],"cacheControl":{"noStore":true,"maxAge":1}}]}"#,
                "noStore excludes",
            ),
            (
                r#"{"policies":[{"name":"a","cacheControl":{"maxAge":1}}]}"#,
                "needs `methods` or `routes`",
            ),
            (
                r#"{"policies":[{"name":"a","routes":["/x"],"cacheControl":{"maxAge":1}}]}"#,
                "is not `VERB /path`",
            ),
            (
                r#"{"policies":[{"name":"a","methods":["user.UserService/GetUser"],"cacheControl":{}}]}"#,
                "set noStore",
            ),
            (
                r#"{"policies":[{"name":"a","methods":["user.UserService/GetUser"],"cacheControl":{"maxAge":-1}}]}"#,
                "invalid value",
            ),
            (
                r#"{"policies":[{"name":"a","methods":["user.UserService/GetUser"],"cacheControl":{"maxAge":1,"ttl":2}}]}"#,
                "unknown field `ttl`",
            ),
            (
                r#"{"policies":[{"name":"a","methods":["user.UserService/GetUser"],"cacheControl":{"scope":"shared","maxAge":1}}]}"#,
                "unknown variant",
            ),
            (
                r#"{"policies":[{"name":"a","methods":["user.UserService/GetUser"],"vary":["Accept"],"cacheControl":{"maxAge":1}}]}"#,
                "lower-case header",
            ),
        ];
        for (json, expected) in cases {
            let error = CacheHeaders::configure(json.as_bytes(), &mut TestHost::default())
                .err()
                .unwrap_or_else(|| panic!("accepted {json}"));
            assert!(error.0.contains(expected), "{json}: {error}");
        }
    }
}
