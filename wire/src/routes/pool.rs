//! The route table of a `prost-reflect` descriptor pool: the gateway's, which transcodes with
//! the routes' method descriptors.

use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
    ReflectMessage, Value,
};

use super::{
    FieldShape, HttpRuleSpec, MethodRules, RouteBuildError, RouteOf, RouterOf, RuleSource, Side,
};
use crate::grpc::split_path;

pub type Route = RouteOf<MethodDescriptor>;
pub type Router = RouterOf<MethodDescriptor>;

impl RouteOf<MethodDescriptor> {
    pub fn input(&self) -> MessageDescriptor {
        self.method.input()
    }

    pub fn output(&self) -> MessageDescriptor {
        self.method.output()
    }

    pub fn server_streaming(&self) -> bool {
        self.method.is_server_streaming()
    }
}

impl RouterOf<MethodDescriptor> {
    /// Builds routes for every method of every service in the pool that carries a
    /// `google.api.http` rule (additional bindings included).
    pub fn from_pool(pool: &DescriptorPool) -> Result<Self, RouteBuildError> {
        let Some(http) = pool.get_extension_by_name("google.api.http") else {
            return Ok(Self::default());
        };
        let rest = pool.get_extension_by_name("meshgate.api.rest");
        let mut methods = Vec::new();
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
                let mut rules = vec![rule_spec(rule)];
                if let Some(Value::List(extra)) = rule
                    .get_field_by_name("additional_bindings")
                    .map(|v| v.into_owned())
                {
                    rules.extend(extra.iter().filter_map(Value::as_message).map(rule_spec));
                }
                let rest = match &rest {
                    Some(rest) if options.has_extension(rest) => {
                        let value = options.get_extension(rest);
                        value.as_message().map(|options| {
                            let code = options
                                .get_field_by_name("success_code")
                                .and_then(|v| v.as_u32())
                                .unwrap_or(0);
                            (code, string_field(options, "location"))
                        })
                    }
                    _ => None,
                };
                methods.push(MethodRules {
                    full_name: method.full_name().to_owned(),
                    grpc_path: format!("/{}/{}", service.full_name(), method.name()),
                    input_name: method.input().full_name().to_owned(),
                    output_name: method.output().full_name().to_owned(),
                    method,
                    rules,
                    rest,
                });
            }
        }
        Self::build(&PoolRules, methods)
    }
}

/// Answers the route builder's questions from the methods' descriptors.
struct PoolRules;

impl RuleSource for PoolRules {
    type Method = MethodDescriptor;

    fn input_path(&self, method: &MethodDescriptor, path: &str) -> Option<FieldShape> {
        let field = resolve_field_path(&method.input(), path)?;
        Some(if field.is_list() || field.is_map() {
            FieldShape::Repeated
        } else if matches!(field.kind(), Kind::Message(_)) {
            FieldShape::Message
        } else {
            FieldShape::Scalar
        })
    }

    fn has_field(&self, method: &MethodDescriptor, side: Side, name: &str) -> bool {
        let message = match side {
            Side::Input => method.input(),
            Side::Output => method.output(),
        };
        message.get_field_by_name(name).is_some()
    }
}

fn rule_spec(rule: &DynamicMessage) -> HttpRuleSpec {
    let custom = rule
        .get_field_by_name("custom")
        .and_then(|v| v.as_message().cloned())
        .and_then(|custom| {
            Some((
                string_field(&custom, "kind")?,
                string_field(&custom, "path")?,
            ))
        });
    HttpRuleSpec {
        get: string_field(rule, "get"),
        put: string_field(rule, "put"),
        post: string_field(rule, "post"),
        delete: string_field(rule, "delete"),
        patch: string_field(rule, "patch"),
        custom,
        body: string_field(rule, "body"),
        response_body: string_field(rule, "response_body"),
    }
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
            Kind::Message(inner) if !field.is_list() => current = inner,
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    use crate::routes::{BodyTarget, RouteMiss};

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
