//! The protobuf descriptors a filter knows: the built-in meshgate contract or a
//! FileDescriptorSet from config, plus the REST routes of their `google.api.http` rules.

use std::cell::RefCell;
use std::sync::{Arc, Weak};

use base64::Engine as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, ReflectMessage, Value};

use crate::http_rule::PathTemplate;

/// A REST binding of one gRPC method.
#[derive(Debug, Clone)]
pub struct Route {
    pub http_method: String,
    pub template: PathTemplate,
    /// The `body` of the rule: `""` (none), `"*"` (whole message) or a field name.
    pub body: String,
    /// The `response_body` of the rule: `""` (the whole message) or the field REST answers with.
    pub response_body: String,
    pub method: MethodDescriptor,
}

/// A request path resolved to its gRPC method.
#[derive(Debug, Clone)]
pub struct RestMatch {
    pub route_index: usize,
    pub bindings: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct Catalog {
    pool: DescriptorPool,
    routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("descriptorSet is not valid base64")]
    Base64,
    #[error("descriptorSet is not a valid FileDescriptorSet: {0}")]
    Descriptors(String),
    #[error("method {0:?}: {1}")]
    Rule(String, String),
}

impl Catalog {
    /// [`Catalog::load`], shared: filters of one VM configured with the same descriptors (the
    /// built-in set, or the same base64 text) get the same catalog, so the bundle's members
    /// can share what one of them worked out about a request (and the VM keeps one pool).
    pub fn shared(descriptor_set_base64: Option<&str>) -> Result<Arc<Self>, CatalogError> {
        thread_local! {
            static LOADED: RefCell<Vec<(Option<String>, Weak<Catalog>)>> =
                const { RefCell::new(Vec::new()) };
        }
        let key = descriptor_set_base64.map(str::to_owned);
        if let Some(catalog) = LOADED.with_borrow_mut(|loaded| {
            loaded.retain(|(_, weak)| weak.strong_count() > 0);
            loaded
                .iter()
                .find(|(k, _)| *k == key)
                .and_then(|(_, weak)| weak.upgrade())
        }) {
            return Ok(catalog);
        }
        let catalog = Arc::new(Self::load(descriptor_set_base64)?);
        LOADED.with_borrow_mut(|loaded| loaded.push((key, Arc::downgrade(&catalog))));
        Ok(catalog)
    }

    /// The built-in contract (`meshgate_proto::FILE_DESCRIPTOR_SET`) or a base64 set from config.
    pub fn load(descriptor_set_base64: Option<&str>) -> Result<Self, CatalogError> {
        let bytes = match descriptor_set_base64 {
            Some(text) => base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| CatalogError::Base64)?,
            None => meshgate_proto::FILE_DESCRIPTOR_SET.to_vec(),
        };
        let pool = DescriptorPool::decode(bytes.as_slice())
            .map_err(|e| CatalogError::Descriptors(e.to_string()))?;
        let routes = collect_routes(&pool)?;
        Ok(Self { pool, routes })
    }

    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Looks up `package.Service/Method` (the config spelling and the gRPC path).
    pub fn method(&self, service: &str, method: &str) -> Option<MethodDescriptor> {
        self.pool
            .get_service_by_name(service)?
            .methods()
            .find(|m| m.name() == method)
    }

    /// Looks up the config spelling `package.Service/Method`.
    pub fn method_by_name(&self, qualified: &str) -> Option<MethodDescriptor> {
        let (service, method) = qualified.split_once('/')?;
        self.method(service, method)
    }

    /// The first route whose verb and template match (rules are tried in declaration order).
    /// HEAD is served by the GET binding, as HTTP defines it.
    pub fn route(&self, http_method: &str, path: &str) -> Option<RestMatch> {
        let http_method = if http_method.eq_ignore_ascii_case("HEAD") {
            "GET"
        } else {
            http_method
        };
        self.routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.http_method.eq_ignore_ascii_case(http_method))
            .find_map(|(route_index, r)| {
                r.template.matches(path).map(|bindings| RestMatch {
                    route_index,
                    bindings,
                })
            })
    }
}

/// `package.Service/Method`, the spelling used in configs and span tags.
pub fn qualified_name(method: &MethodDescriptor) -> String {
    format!("{}/{}", method.parent_service().full_name(), method.name())
}

fn collect_routes(pool: &DescriptorPool) -> Result<Vec<Route>, CatalogError> {
    let Some(http) = pool.get_extension_by_name("google.api.http") else {
        return Ok(Vec::new());
    };
    let mut routes = Vec::new();
    for service in pool.services() {
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&http) {
                continue;
            }
            let value = options.get_extension(&http);
            if let Value::Message(rule) = value.as_ref() {
                push_rule(rule, &method, &mut routes)?;
                if let Some(Value::List(extra)) =
                    rule.get_field_by_name("additional_bindings").as_deref()
                {
                    for binding in extra {
                        if let Value::Message(binding) = binding {
                            push_rule(binding, &method, &mut routes)?;
                        }
                    }
                }
            }
        }
    }
    Ok(routes)
}

fn push_rule(
    rule: &DynamicMessage,
    method: &MethodDescriptor,
    routes: &mut Vec<Route>,
) -> Result<(), CatalogError> {
    let text = |msg: &DynamicMessage, name: &str| {
        msg.get_field_by_name(name)
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let mut pattern = None;
    for verb in ["get", "put", "post", "delete", "patch"] {
        let has = rule
            .descriptor()
            .get_field_by_name(verb)
            .is_some_and(|f| rule.has_field(&f));
        if has {
            pattern = Some((verb.to_ascii_uppercase(), text(rule, verb)));
        }
    }
    if pattern.is_none()
        && let Some(Value::Message(custom)) = rule.get_field_by_name("custom").as_deref()
    {
        pattern = Some((
            text(custom, "kind").to_ascii_uppercase(),
            text(custom, "path"),
        ));
    }
    let Some((http_method, path)) = pattern else {
        return Ok(());
    };
    let template = PathTemplate::parse(&path)
        .map_err(|e| CatalogError::Rule(qualified_name(method), e.to_string()))?;
    routes.push(Route {
        http_method,
        template,
        body: text(rule, "body"),
        response_body: text(rule, "response_body"),
        method: method.clone(),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_contract_maps_rest_to_grpc() {
        let catalog = Catalog::load(None).unwrap();
        let get = catalog.route("GET", "/v1/users/42").unwrap();
        let route = &catalog.routes()[get.route_index];
        assert_eq!(qualified_name(&route.method), "user.UserService/GetUser");
        assert_eq!(get.bindings, vec![("id".to_owned(), "42".to_owned())]);

        let list = catalog.route("get", "/v1/users?page=2").unwrap();
        assert_eq!(
            qualified_name(&catalog.routes()[list.route_index].method),
            "user.UserService/ListUsers"
        );
        let create = catalog.route("POST", "/v1/users").unwrap();
        let route = &catalog.routes()[create.route_index];
        assert_eq!(qualified_name(&route.method), "user.UserService/CreateUser");
        assert_eq!(route.body, "*");
        assert!(catalog.route("PATCH", "/v1/users/1").is_none());
        assert!(catalog.route("GET", "/v2/users").is_none());
    }

    #[test]
    fn looks_up_methods_by_qualified_name() {
        let catalog = Catalog::load(None).unwrap();
        assert!(catalog.method_by_name("user.UserService/GetUser").is_some());
        assert!(catalog.method_by_name("user.UserService/Nope").is_none());
        assert!(catalog.method_by_name("GetUser").is_none());
    }

    #[test]
    fn accepts_a_descriptor_set_from_config_and_rejects_garbage() {
        use base64::engine::general_purpose::STANDARD;
        let encoded = STANDARD.encode(meshgate_proto::FILE_DESCRIPTOR_SET);
        assert!(Catalog::load(Some(&encoded)).is_ok());
        assert_eq!(
            Catalog::load(Some("not base64!")).unwrap_err(),
            CatalogError::Base64
        );
        assert!(matches!(
            Catalog::load(Some(&STANDARD.encode([0xff, 0xff, 0xff]))).unwrap_err(),
            CatalogError::Descriptors(_)
        ));
    }
}
