//! The REST route table, built from the `google.api.http` annotations of every service in a
//! descriptor set, and matched per request: the gateway transcodes with it, the filters name
//! a REST request's gRPC method with it, so both pick the same route for the same request.
//! Rules are checked as they are read (path variables and body fields must exist), and the
//! most specific template wins (`/v1/users/me` before `/v1/users/{id}`).
//!
//! The table is generic over what a route names its method with: the gateway builds it from a
//! `prost-reflect` pool (feature `descriptors`, [`Router`]), the .wasm filters from the compact
//! [`crate::schema::Schema`] (feature `schema`), which keeps prost-reflect out of the modules.
//! Both go through [`RouterOf::build`], so a rule means the same thing in both.

use std::sync::Arc;

use http::Method;

use crate::path_template::{PathTemplate, TemplateError, request_segments};

#[cfg(feature = "descriptors")]
mod pool;
#[cfg(feature = "descriptors")]
pub use self::pool::{Route, Router, grpc_method, grpc_route_label, resolve_field_path};

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

/// One REST binding of a method; `M` is how the descriptor source names the method.
#[derive(Debug, Clone)]
pub struct RouteOf<M> {
    pub http_method: Method,
    pub template: PathTemplate,
    pub method: M,
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

impl<M> RouteOf<M> {
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

/// What a field is, as far as a rule's path variables care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldShape {
    Scalar,
    Message,
    /// A repeated or map field.
    Repeated,
}

/// Which message of a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Input,
    Output,
}

/// The questions the route builder asks a descriptor source about a method's messages.
pub trait RuleSource {
    type Method;
    /// The field at a dotted path (proto or JSON names) of the method's input message.
    fn input_path(&self, method: &Self::Method, path: &str) -> Option<FieldShape>;
    /// Whether the input or output message has a top-level field of this proto name.
    fn has_field(&self, method: &Self::Method, side: Side, name: &str) -> bool;
}

/// A `google.api.http` rule as written (empty strings already read as unset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpRuleSpec {
    pub get: Option<String>,
    pub put: Option<String>,
    pub post: Option<String>,
    pub delete: Option<String>,
    pub patch: Option<String>,
    /// `custom { kind, path }`, when both are set.
    pub custom: Option<(String, String)>,
    pub body: Option<String>,
    pub response_body: Option<String>,
}

/// A method with its rules, as a descriptor source reads them.
#[derive(Debug, Clone)]
pub struct MethodRules<M> {
    pub method: M,
    /// `package.Service.Method`, the name errors give.
    pub full_name: String,
    /// `/package.Service/Method`.
    pub grpc_path: String,
    pub input_name: String,
    pub output_name: String,
    /// The rule, then its `additional_bindings`.
    pub rules: Vec<HttpRuleSpec>,
    /// `meshgate.api.rest`: `success_code` (0: unset) and `location`.
    pub rest: Option<(u32, Option<String>)>,
}

#[derive(Debug, Clone)]
pub struct RouterOf<M> {
    routes: Vec<Arc<RouteOf<M>>>,
}

impl<M> Default for RouterOf<M> {
    fn default() -> Self {
        Self { routes: Vec::new() }
    }
}

impl<M: Clone> RouterOf<M> {
    /// Builds the routes of every method that carries rules, checking each rule against the
    /// method's messages.
    pub fn build<S: RuleSource<Method = M>>(
        source: &S,
        methods: impl IntoIterator<Item = MethodRules<M>>,
    ) -> Result<Self, RouteBuildError> {
        let mut routes: Vec<Arc<RouteOf<M>>> = Vec::new();
        for method in methods {
            let (success_code, location) = rest_options(&method)?;
            for rule in &method.rules {
                if let Some(route) =
                    build_route(source, &method, rule, success_code, location.clone())?
                {
                    // Most specific first, so `/v1/users/me` wins over `/v1/users/{id}`;
                    // equally specific ones in declaration order. Inserted in place rather
                    // than sorted after: a generic sort would grow every .wasm module.
                    let specificity = route.template.specificity();
                    let at = routes.partition_point(|r: &Arc<RouteOf<M>>| {
                        r.template.specificity() >= specificity
                    });
                    routes.insert(at, Arc::new(route));
                }
            }
        }
        Ok(Self { routes })
    }
}

impl<M> RouterOf<M> {
    pub fn routes(&self) -> &[Arc<RouteOf<M>>] {
        &self.routes
    }

    /// The first (most specific) route of `method` whose template matches `path`, with its
    /// bindings; on a miss, whether other methods would have matched (405) or none (404).
    pub fn lookup(
        &self,
        method: &Method,
        path: &str,
    ) -> Result<(Arc<RouteOf<M>>, Bindings), RouteMiss> {
        // Templates of the request's method first: a hit matches no other route's template
        // (this runs per request, in the gateway and in every filter VM).
        // Templates of another length are passed over without a look at their segments.
        let segments = request_segments(path).ok_or(RouteMiss::NotFound)?;
        for route in self
            .routes
            .iter()
            .filter(|r| r.http_method == *method && r.template.accepts_segments(segments))
        {
            if let Some(bindings) = route.template.matches(path) {
                return Ok((Arc::clone(route), bindings));
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

fn rest_options<M>(method: &MethodRules<M>) -> Result<(u16, Option<String>), RouteBuildError> {
    let Some((code, location)) = &method.rest else {
        return Ok((200, None));
    };
    let code = match *code {
        0 => 200,
        200..=299 => *code as u16,
        other => {
            return Err(RouteBuildError::Invalid {
                method: method.full_name.clone(),
                reason: format!("meshgate.api.rest success_code {other} is not a 2xx status"),
            });
        }
    };
    Ok((code, location.clone().filter(|s| !s.is_empty())))
}

fn build_route<S: RuleSource>(
    source: &S,
    method: &MethodRules<S::Method>,
    rule: &HttpRuleSpec,
    success_code: u16,
    location: Option<String>,
) -> Result<Option<RouteOf<S::Method>>, RouteBuildError>
where
    S::Method: Clone,
{
    let name = &method.full_name;
    let invalid = |reason: String| RouteBuildError::Invalid {
        method: name.clone(),
        reason,
    };
    let mut pattern = None;
    for (path, http_method) in [
        (&rule.get, Method::GET),
        (&rule.put, Method::PUT),
        (&rule.post, Method::POST),
        (&rule.delete, Method::DELETE),
        (&rule.patch, Method::PATCH),
    ] {
        if let Some(path) = path.as_ref().filter(|p| !p.is_empty()) {
            pattern = Some((http_method, path.clone()));
        }
    }
    if let Some((kind, path)) = &rule.custom
        && !kind.is_empty()
        && !path.is_empty()
    {
        let http_method = Method::from_bytes(kind.as_bytes())
            .map_err(|_| invalid(format!("custom kind {kind:?} is not an HTTP method")))?;
        pattern = Some((http_method, path.clone()));
    }
    let Some((http_method, path)) = pattern else {
        return Ok(None);
    };
    let template = PathTemplate::parse(&path).map_err(|source| RouteBuildError::Template {
        method: name.clone(),
        source,
    })?;
    for field_path in template.field_paths() {
        match source.input_path(&method.method, field_path) {
            None => {
                return Err(invalid(format!(
                    "path variable {field_path} is not a field of {}",
                    method.input_name
                )));
            }
            Some(FieldShape::Scalar) => {}
            Some(FieldShape::Message | FieldShape::Repeated) => {
                return Err(invalid(format!(
                    "path variable {field_path} must be a singular scalar field"
                )));
            }
        }
    }
    let body = match rule.body.as_deref().filter(|b| !b.is_empty()) {
        None => BodyTarget::None,
        Some("*") => BodyTarget::Whole,
        Some(field) => {
            if !source.has_field(&method.method, Side::Input, field) {
                return Err(invalid(format!(
                    "body field {field} is not a field of {}",
                    method.input_name
                )));
            }
            BodyTarget::Field(field.to_owned())
        }
    };
    let response_body = rule.response_body.clone().filter(|s| !s.is_empty());
    if let Some(field) = &response_body
        && !source.has_field(&method.method, Side::Output, field)
    {
        return Err(invalid(format!(
            "response_body {field} is not a field of {}",
            method.output_name
        )));
    }
    Ok(Some(RouteOf {
        http_method,
        template,
        grpc_path: method.grpc_path.clone(),
        method: method.method.clone(),
        body,
        response_body,
        success_code,
        location,
    }))
}
