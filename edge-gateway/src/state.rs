//! Service-wide state shared by every request: built once from the validated config.

use std::{path::Path, sync::Arc};

use bytes::Bytes;
use meshgate_wire::routes::{RouteBuildError, Router};
use prost_reflect::DescriptorPool;

use crate::{
    auth::Authenticator,
    config::GatewayConfig,
    cors::CorsPolicy,
    hooks::FilterChain,
    lifecycle::Lifecycle,
    listener::ConnectionTracker,
    metrics::Metrics,
    openapi,
    static_files::StaticFiles,
    telemetry::SpanExport,
    transcode::JsonOptions,
    upstream::Upstreams,
    validate::{RuleError, Validators},
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read descriptor set {path}: {source}")]
    ReadDescriptors {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid descriptor set {path}: {reason}")]
    Descriptors { path: String, reason: String },
    #[error("invalid google.api.http rule in {0}")]
    Routes(#[from] RouteBuildError),
    #[error("buf.validate rules in {0}")]
    Rules(RuleError),
    #[error("upstreams: {0}")]
    Upstreams(String),
    #[error("invalid pingora server config: {0}")]
    Server(String),
    /// `gateway.tls`: the certificate or key cannot be used.
    #[error("{0}")]
    Tls(String),
    /// `gateway.auth`: the key file cannot be used, or a rule names what is not served.
    #[error("{0}")]
    Auth(String),
    #[error("gateway.static_dir {path}: {source}")]
    StaticDir {
        path: String,
        source: std::io::Error,
    },
    /// A configured address cannot be listened on (in use, not local, not permitted).
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

pub struct GatewayState {
    pub config: GatewayConfig,
    pub pool: DescriptorPool,
    pub router: Router,
    pub json: JsonOptions,
    /// The `buf.validate` rules REST and gRPC-web requests are checked against.
    pub validators: Validators,
    pub cors: CorsPolicy,
    pub upstreams: Upstreams,
    pub openapi: Bytes,
    pub filters: FilterChain,
    /// The web page, when `static_dir` is configured.
    pub static_files: Option<StaticFiles>,
    /// OTLP span export, when `gateway.otlp` is configured.
    pub spans: Option<SpanExport>,
    /// Draining and in-flight requests (`/readyz`, shutdown).
    pub lifecycle: Arc<Lifecycle>,
    /// Open downstream connections (header deadline, caps).
    pub connections: Arc<ConnectionTracker>,
    /// This gateway's metrics (its own registry).
    pub metrics: Arc<Metrics>,
    /// Token checks, when `gateway.auth` is configured.
    pub auth: Option<Arc<Authenticator>>,
}

/// The built-in contract plus every configured descriptor set (files already present are skipped).
pub fn load_pool(config: &GatewayConfig) -> Result<DescriptorPool, StartError> {
    let mut pool = if config.skip_builtin_descriptors {
        DescriptorPool::new()
    } else {
        meshgate_proto::descriptor_pool().clone()
    };
    for path in &config.descriptor_sets {
        let display = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| StartError::ReadDescriptors {
            path: display.clone(),
            source,
        })?;
        add_descriptor_set(&mut pool, &bytes).map_err(|reason| StartError::Descriptors {
            path: display,
            reason,
        })?;
    }
    Ok(pool)
}

pub fn add_descriptor_set(pool: &mut DescriptorPool, bytes: &[u8]) -> Result<(), String> {
    pool.decode_file_descriptor_set(bytes)
        .map_err(|e| e.to_string())
}

impl GatewayState {
    pub fn new(
        config: GatewayConfig,
        pool: DescriptorPool,
        upstreams: Upstreams,
        filters: FilterChain,
        connections: Arc<ConnectionTracker>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, StartError> {
        let router = Router::from_pool(&pool)?;
        let json = config.json;
        let validators = Validators::from_pool(&pool).map_err(StartError::Rules)?;
        let mut document = openapi::document(&router, "meshgate edge gateway", json);
        let cors = CorsPolicy::new(
            config.cors_origins.clone(),
            config.cors_allow_credentials,
            config.cors_max_age,
        );
        let static_files = match &config.static_dir {
            Some(dir) => Some(
                StaticFiles::new(dir).map_err(|source| StartError::StaticDir {
                    path: dir.display().to_string(),
                    source,
                })?,
            ),
            None => None,
        };
        let spans = config.otlp.as_ref().map(SpanExport::new);
        let auth = match &config.auth {
            Some(settings) => {
                let auth = Authenticator::new(settings.clone(), metrics.clone())
                    .map_err(StartError::Auth)?;
                check_auth_rules(&auth, &pool, &router)?;
                Some(Arc::new(auth))
            }
            None => None,
        };
        if let Some(auth) = &auth {
            openapi::require_bearer(&mut document, &router, auth.policy());
        }
        let openapi = serde_json::to_vec_pretty(&document)
            .expect("a JSON value always serializes")
            .into();
        Ok(Arc::new(Self {
            config,
            pool,
            router,
            json,
            validators,
            cors,
            upstreams,
            openapi,
            filters,
            static_files,
            spans,
            lifecycle: Arc::new(Lifecycle::new(metrics.draining.clone())),
            connections,
            metrics,
            auth,
        }))
    }
}

/// Every method and route a rule names is served: a misspelt one would leave its calls open.
fn check_auth_rules(
    auth: &Authenticator,
    pool: &DescriptorPool,
    router: &Router,
) -> Result<(), StartError> {
    let policy = auth.policy();
    if let Some(method) = policy
        .named_methods()
        .find(|method| meshgate_wire::routes::grpc_method(pool, method).is_none())
    {
        return Err(StartError::Auth(format!(
            "invalid config key `gateway.auth.rules`: method {method} is not in the loaded \
             descriptors"
        )));
    }
    if let Some(route) = policy
        .named_routes()
        .find(|label| !router.routes().iter().any(|r| r.label() == *label))
    {
        return Err(StartError::Auth(format!(
            "invalid config key `gateway.auth.rules`: no REST route {route:?} (routes are \
             named `POST /v1/users`, `PUT /v1/users/{{id}}`, as in the access log)"
        )));
    }
    Ok(())
}

impl GatewayState {
    /// Exports the queued spans and stops the exporter; call once the server has stopped.
    pub fn flush_spans(&self) {
        if let Some(spans) = &self.spans {
            spans.shutdown();
        }
    }
}

/// Helper for callers holding a path.
pub fn descriptor_file(path: &Path) -> Result<Vec<u8>, std::io::Error> {
    std::fs::read(path)
}
