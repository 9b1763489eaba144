//! The protobuf descriptors a filter knows: the built-in meshgate contract or a
//! FileDescriptorSet from config, as `meshgate_wire`'s compact [`Schema`] (no reflection
//! library in the modules), plus the REST routes of their `google.api.http` rules (the
//! gateway's route builder, `meshgate_wire::routes`, so both map a REST request to the same
//! method).

use std::cell::RefCell;
use std::sync::{Arc, Weak};

use base64::Engine as _;
use meshgate_wire::routes::{Bindings, RouteOf, RouterOf, Side};
pub use meshgate_wire::schema::{MessageId, MethodId, Schema};

/// A REST route; its method is an index into the catalog's [`Schema::methods`].
pub type Route = RouteOf<MethodId>;

#[derive(Debug, Clone)]
pub struct Catalog {
    schema: Schema,
    router: RouterOf<MethodId>,
    /// Each method's `package.Service/Method`, spelled once (requests name their method often).
    qualified: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("descriptorSet is not valid base64")]
    Base64,
    #[error("descriptorSet is not a valid FileDescriptorSet: {0}")]
    Descriptors(String),
    /// A `google.api.http` rule the route table refuses (e.g. a path variable that is not a
    /// field of the request message).
    #[error("{0}")]
    Rule(String),
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
        let schema =
            Schema::decode(&bytes).map_err(|e| CatalogError::Descriptors(e.to_string()))?;
        let router = schema
            .router()
            .map_err(|e| CatalogError::Rule(e.to_string()))?;
        let qualified = schema.methods.iter().map(|m| m.qualified_name()).collect();
        Ok(Self {
            schema,
            router,
            qualified,
        })
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        self.router.routes()
    }

    /// Looks up `package.Service/Method` (the config spelling and the gRPC path).
    pub fn method(&self, service: &str, method: &str) -> Option<MethodId> {
        self.schema.method(service, method)
    }

    /// Looks up the config spelling `package.Service/Method`.
    pub fn method_by_name(&self, qualified: &str) -> Option<MethodId> {
        let (service, method) = qualified.split_once('/')?;
        self.method(service, method)
    }

    /// The route of a REST request, as the gateway picks it (the most specific template of the
    /// request's method), with the path bindings. HEAD is served by the GET binding, as HTTP
    /// defines it.
    pub fn route(&self, http_method: &str, path: &str) -> Option<(Arc<Route>, Bindings)> {
        let method = match http_method {
            "HEAD" => http::Method::GET,
            other => http::Method::from_bytes(other.as_bytes()).ok()?,
        };
        self.router.lookup(&method, path).ok()
    }

    /// `package.Service/Method`, the spelling used in configs and span tags.
    pub fn qualified_name(&self, method: MethodId) -> &str {
        self.qualified.get(method).map_or("", String::as_str)
    }

    /// A method's request (input) or response (output) message.
    pub fn message_of(&self, method: MethodId, side: Side) -> MessageId {
        let method = &self.schema.methods[method];
        match side {
            Side::Input => method.input,
            Side::Output => method.output,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_contract_maps_rest_to_grpc() {
        let catalog = Catalog::load(None).unwrap();
        let (route, bindings) = catalog.route("GET", "/v1/users/42").unwrap();
        assert_eq!(
            catalog.qualified_name(route.method),
            "user.UserService/GetUser"
        );
        assert_eq!(bindings, vec![("id".to_owned(), "42".to_owned())]);
        let (head, _) = catalog.route("HEAD", "/v1/users/42").unwrap();
        assert_eq!(
            catalog.qualified_name(head.method),
            "user.UserService/GetUser"
        );

        let (list, _) = catalog.route("GET", "/v1/users?page=2").unwrap();
        assert_eq!(
            catalog.qualified_name(list.method),
            "user.UserService/ListUsers"
        );
        // Methods are case-sensitive (RFC 9110 §9.1), as the gateway routes them.
        assert!(catalog.route("get", "/v1/users").is_none());
        let (create, _) = catalog.route("POST", "/v1/users").unwrap();
        assert_eq!(
            catalog.qualified_name(create.method),
            "user.UserService/CreateUser"
        );
        assert_eq!(create.body, meshgate_wire::routes::BodyTarget::Whole);
        assert!(catalog.route("PATCH", "/v1/users/1").is_none());
        assert!(catalog.route("GET", "/v3/users").is_none());
        // Every annotated service of the set is routed: user.v2 beside user.
        let (v2, _) = catalog.route("GET", "/v2/users").unwrap();
        assert_eq!(
            catalog.qualified_name(v2.method),
            "user.v2.UserService/ListUsers"
        );
        assert!(
            catalog
                .method_by_name("user.v2.UserService/GetUser")
                .is_some()
        );
        assert!(catalog.route("GET\n", "/v1/users").is_none());
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
