//! The REST route table, built from the `google.api.http` annotations of every service in a
//! descriptor pool, and matched per request: the gateway transcodes with it, the filters name
//! a REST request's gRPC method with it, so both pick the same route for the same request.
//! Rules are checked as they are read (path variables and body fields must exist), and the
//! most specific template wins (`/v1/users/me` before `/v1/users/{id}`).

use std::sync::Arc;

use http::Method;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, MessageDescriptor, MethodDescriptor,
    ReflectMessage, Value,
};

use crate::grpc::split_path;
use crate::path_template::{PathTemplate, TemplateError};

/// Where the HTTP body goes in the request message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyTarget {
    /// No body; every field not bound by the path comes from the query string.
    None,
    /// `body: "*"`: the whole request message; the query string is not used.
    Whole,
    /// `body: "field"`: one top-level field.
    Field(String),
}

#[derive(Debug, Clone)]
pub struct Route {
    pub http_method: Method,
    pub template: PathTemplate,
    pub method: MethodDescriptor,
    /// `/package.Service/Method`, the gRPC request path.
    pub grpc_path: String,
    pub body: BodyTarget,
    /// `response_body`: a top-level response field to answer with instead of the whole message.
    pub response_body: Option<String>,
    /// From `meshgate.api.rest`, else 200.
    pub success_code: u16,
    /// `Location` template from `meshgate.api.rest`, `{field.path}` filled from the response.
    pub location: Option<String>,
}

impl Route {
    pub fn input(&self) -> MessageDescriptor {
        self.method.input()
    }

    pub fn output(&self) -> MessageDescriptor {
        self.method.output()
    }

    pub fn server_streaming(&self) -> bool {
        self.method.is_server_streaming()
    }

    /// Only safe methods are retried on UNAVAILABLE.
    pub fn idempotent(&self) -> bool {
        self.http_method == Method::GET
    }

    /// A short label for logs and metrics, e.g. `GET /v1/users/{id}`.
    pub fn label(&self) -> String {
        format!("{} {}", self.http_method, self.template)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RouteBuildError {
    #[error("{method}: {source}")]
    Template {
        method: String,
        source: TemplateError,
    },
    #[error("{method}: {reason}")]
    Invalid { method: String, reason: String },
}

#[derive(Debug, PartialEq, Eq)]
pub enum RouteMiss {
    NotFound,
    MethodNotAllowed(Vec<Method>),
}

pub type Bindings = Vec<(String, String)>;

#[derive(Debug, Default, Clone)]
pub struct Router {
    routes: Vec<Arc<Route>>,
}

impl Router {
    /// Builds routes for every method of every service in the pool that carries a
    /// `google.api.http` rule (additional bindings included).
    pub fn from_pool(pool: &DescriptorPool) -> Result<Self, RouteBuildError> {
        let Some(http) = pool.get_extension_by_name("google.api.http") else {
            return Ok(Self::default());
        };
        let rest = pool.get_extension_by_name("meshgate.api.rest");
        let mut routes = Vec::new();
        for service in pool.services() {
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(&http) {
                    continue;
                }
                let rule = options.get_extension(&http);
                let Some(rule) = rule.as_message() else {
                    continue;
                };
                let (success_code, location) = match &rest {
                    Some(rest) if options.has_extension(rest) => {
                        let value = options.get_extension(rest);
                        rest_options(&method, value.as_message())?
                    }
                    _ => (200, None),
                };
                let mut push = |rule: &DynamicMessage| -> Result<(), RouteBuildError> {
                    if let Some(route) = build_route(&method, rule, success_code, location.clone())?
                    {
                        // Most specific first, so `/v1/users/me` wins over `/v1/users/{id}`;
                        // equally specific ones in declaration order. Inserted in place rather
                        // than sorted after: a generic sort would grow every .wasm module.
                        let specificity = route.template.specificity();
                        let at = routes.partition_point(|r: &Arc<Route>| {
                            r.template.specificity() >= specificity
                        });
                        routes.insert(at, Arc::new(route));
                    }
                    Ok(())
                };
                push(rule)?;
                if let Some(Value::List(extra)) = rule
                    .get_field_by_name("additional_bindings")
                    .map(|v| v.into_owned())
                {
                    for binding in extra {
                        if let Value::Message(binding) = binding {
                            push(&binding)?;
                        }
                    }
                }
            }
        }
        Ok(Self { routes })
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The first (most specific) route of `method` whose template matches `path`, with its
    /// bindings; on a miss, whether other methods would have matched (405) or none (404).
    pub fn lookup(&self, method: &Method, path: &str) -> Result<(Arc<Route>, Bindings), RouteMiss> {
        // Templates of the request's method first: a hit matches no other route's template
        // (this runs per request, in the gateway and in every filter VM).
        for route in self.routes.iter().filter(|r| r.http_method == *method) {
            if let Some(bindings) = route.template.matches(path) {
                return Ok((route.clone(), bindings));
            }
        }
        let mut allowed: Vec<Method> = Vec::new();
        for route in &self.routes {
            if !allowed.contains(&route.http_method) && route.template.matches(path).is_some() {
                allowed.push(route.http_method.clone());
            }
        }
        if allowed.is_empty() {
            Err(RouteMiss::NotFound)
        } else {
            allowed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            Err(RouteMiss::MethodNotAllowed(allowed))
        }
    }
}

fn rest_options(
    method: &MethodDescriptor,
    options: Option<&DynamicMessage>,
) -> Result<(u16, Option<String>), RouteBuildError> {
    let Some(options) = options else {
        return Ok((200, None));
    };
    let code = options
        .get_field_by_name("success_code")
        .and_then(|v| v.as_u32())
        .unwrap_or(0);
    let code = match code {
        0 => 200,
        200..=299 => code as u16,
        other => {
            return Err(RouteBuildError::Invalid {
                method: method.full_name().to_owned(),
                reason: format!("meshgate.api.rest success_code {other} is not a 2xx status"),
            });
        }
    };
    let location = options
        .get_field_by_name("location")
        .and_then(|v| v.as_str().map(str::to_owned))
        .filter(|s| !s.is_empty());
    Ok((code, location))
}

fn string_field(message: &DynamicMessage, name: &str) -> Option<String> {
    let field = message.descriptor().get_field_by_name(name)?;
    if !message.has_field(&field) {
        return None;
    }
    message
        .get_field(&field)
        .as_str()
        .map(str::to_owned)
        .filter(|s| !s.is_empty())
}

fn build_route(
    method: &MethodDescriptor,
    rule: &DynamicMessage,
    success_code: u16,
    location: Option<String>,
) -> Result<Option<Route>, RouteBuildError> {
    let name = method.full_name().to_owned();
    let invalid = |reason: String| RouteBuildError::Invalid {
        method: name.clone(),
        reason,
    };
    let mut pattern = None;
    for (verb, http_method) in [
        ("get", Method::GET),
        ("put", Method::PUT),
        ("post", Method::POST),
        ("delete", Method::DELETE),
        ("patch", Method::PATCH),
    ] {
        if let Some(path) = string_field(rule, verb) {
            pattern = Some((http_method, path));
        }
    }
    if let Some(custom) = rule
        .get_field_by_name("custom")
        .and_then(|v| v.as_message().cloned())
        && let (Some(kind), Some(path)) =
            (string_field(&custom, "kind"), string_field(&custom, "path"))
    {
        let http_method = Method::from_bytes(kind.as_bytes())
            .map_err(|_| invalid(format!("custom kind {kind:?} is not an HTTP method")))?;
        pattern = Some((http_method, path));
    }
    let Some((http_method, path)) = pattern else {
        return Ok(None);
    };
    let template = PathTemplate::parse(&path).map_err(|source| RouteBuildError::Template {
        method: name.clone(),
        source,
    })?;
    let input = method.input();
    for field_path in template.field_paths() {
        let field = resolve_field_path(&input, field_path).ok_or_else(|| {
            invalid(format!(
                "path variable {field_path} is not a field of {}",
                input.full_name()
            ))
        })?;
        if field.is_list()
            || field.is_map()
            || matches!(field.kind(), prost_reflect::Kind::Message(_))
        {
            return Err(invalid(format!(
                "path variable {field_path} must be a singular scalar field"
            )));
        }
    }
    let body = match string_field(rule, "body").as_deref() {
        None => BodyTarget::None,
        Some("*") => BodyTarget::Whole,
        Some(field) => {
            if input.get_field_by_name(field).is_none() {
                return Err(invalid(format!(
                    "body field {field} is not a field of {}",
                    input.full_name()
                )));
            }
            BodyTarget::Field(field.to_owned())
        }
    };
    let response_body = string_field(rule, "response_body");
    if let Some(field) = &response_body
        && method.output().get_field_by_name(field).is_none()
    {
        return Err(invalid(format!(
            "response_body {field} is not a field of {}",
            method.output().full_name()
        )));
    }
    Ok(Some(Route {
        http_method,
        template,
        grpc_path: format!("/{}/{}", method.parent_service().full_name(), method.name()),
        method: method.clone(),
        body,
        response_body,
        success_code,
        location,
    }))
}

/// The method a gRPC request path `/package.Service/Method` calls, if the pool has it.
pub fn grpc_method(pool: &DescriptorPool, path: &str) -> Option<MethodDescriptor> {
    let (service, method) = split_path(path)?;
    pool.get_service_by_name(service)?
        .methods()
        .find(|m| m.name() == method)
}

/// The metric/log label of a gRPC or gRPC-web call: its path when the method is in the loaded
/// descriptors, else `unmatched`, so clients cannot grow label cardinality with made-up paths.
pub fn grpc_route_label(pool: &DescriptorPool, path: &str) -> String {
    if grpc_method(pool, path).is_some() {
        path.to_owned()
    } else {
        "unmatched".to_owned()
    }
}

/// Resolves `a.b.c` (proto or JSON names) to the leaf field.
pub fn resolve_field_path(message: &MessageDescriptor, path: &str) -> Option<FieldDescriptor> {
    let mut current = message.clone();
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let field = current
            .get_field_by_name(part)
            .or_else(|| current.get_field_by_json_name(part))?;
        if parts.peek().is_none() {
            return Some(field);
        }
        match field.kind() {
            prost_reflect::Kind::Message(inner) if !field.is_list() => current = inner,
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        Router::from_pool(meshgate_proto::descriptor_pool()).unwrap()
    }

    #[test]
    fn user_routes_come_from_annotations() {
        let router = router();
        let labels: Vec<_> = router.routes().iter().map(|r| r.label()).collect();
        for expected in [
            "POST /v1/users",
            "GET /v1/users/{id}",
            "PUT /v1/users/{id}",
            "DELETE /v1/users/{id}",
            "GET /v1/users",
            "GET /v1/test-error/{status_code}",
        ] {
            assert!(
                labels.contains(&expected.to_owned()),
                "{expected} missing from {labels:?}"
            );
        }
    }

    #[test]
    fn grpc_route_label_keeps_known_methods_only() {
        let pool = meshgate_proto::descriptor_pool();
        assert_eq!(
            grpc_route_label(pool, "/user.UserService/GetUser"),
            "/user.UserService/GetUser"
        );
        for path in [
            "/user.UserService/Nope",
            "/nope.Service/GetUser",
            "/x",
            "",
            "//",
        ] {
            assert_eq!(grpc_route_label(pool, path), "unmatched", "{path}");
        }
    }

    #[test]
    fn lookup_binds_and_distinguishes_405_from_404() {
        let router = router();
        let (route, bindings) = router.lookup(&Method::GET, "/v1/users/abc").unwrap();
        assert_eq!(route.grpc_path, "/user.UserService/GetUser");
        assert_eq!(bindings, vec![("id".to_owned(), "abc".to_owned())]);
        assert_eq!(
            router.lookup(&Method::PATCH, "/v1/users/abc").unwrap_err(),
            RouteMiss::MethodNotAllowed(vec![Method::DELETE, Method::GET, Method::PUT])
        );
        assert_eq!(
            router.lookup(&Method::GET, "/v2/nothing").unwrap_err(),
            RouteMiss::NotFound
        );
    }

    #[test]
    fn lookup_ignores_the_query_and_methods_are_case_sensitive() {
        let router = router();
        let (route, bindings) = router.lookup(&Method::GET, "/v1/users?page=2").unwrap();
        assert_eq!(route.grpc_path, "/user.UserService/ListUsers");
        assert!(bindings.is_empty());
        // RFC 9110 §9.1: the method token is case-sensitive; `get` is not GET.
        let lower = Method::from_bytes(b"get").unwrap();
        assert!(matches!(
            router.lookup(&lower, "/v1/users"),
            Err(RouteMiss::MethodNotAllowed(_))
        ));
    }

    #[test]
    fn grpc_methods_are_found_by_their_path() {
        let pool = meshgate_proto::descriptor_pool();
        let method = grpc_method(pool, "/user.UserService/GetUser").unwrap();
        assert_eq!(method.full_name(), "user.UserService.GetUser");
        assert!(grpc_method(pool, "/user.UserService/GetUser/x").is_none());
        assert!(grpc_method(pool, "/v1/users/1").is_none());
    }

    #[test]
    fn create_user_carries_rest_options() {
        let router = router();
        let (route, _) = router.lookup(&Method::POST, "/v1/users").unwrap();
        assert_eq!(route.success_code, 201);
        assert_eq!(route.location.as_deref(), Some("/v1/users/{user.id}"));
        assert_eq!(route.body, BodyTarget::Whole);
        assert!(!route.idempotent());
    }
}
