//! Flag and environment overrides (clap fills both from the command line and the process
//! environment in `main`); applied over the file's `gateway` section. Precedence: flag > env >
//! file. Pure: this module only moves values.

use std::path::PathBuf;

use super::schema::GatewaySection;

/// Overrides from flags and environment (clap fills both).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// Main listener (REST, gRPC-web, gRPC).
    #[arg(long, env = "GATEWAY_LISTEN")]
    pub listen: Option<String>,
    /// Metrics listener.
    #[arg(long, env = "GATEWAY_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Upstream gRPC services, comma-separated `host:port` (resolved, every A/AAAA record an
    /// endpoint) or `IP:port`.
    #[arg(long = "upstream", env = "GATEWAY_UPSTREAMS", value_delimiter = ',')]
    pub upstreams: Vec<String>,
    /// DNS servers (`IP:port`, comma-separated) for upstream names; default: /etc/resolv.conf.
    #[arg(
        long = "dns-nameserver",
        env = "GATEWAY_DNS_NAMESERVERS",
        value_delimiter = ','
    )]
    pub dns_nameservers: Vec<String>,
    /// CORS allowed origins, comma-separated.
    #[arg(
        long = "cors-origin",
        env = "GATEWAY_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// Directory served at `/` for paths no API route claims (the built web page).
    #[arg(long, env = "GATEWAY_STATIC_DIR")]
    pub static_dir: Option<PathBuf>,
    /// OTLP/gRPC endpoint for the gateway's spans (http://collector:4317); empty: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// service.name of the exported spans.
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub service_name: Option<String>,
}
impl Overrides {
    /// Replaces what the file says with every override that is set.
    pub(super) fn apply(&self, gateway: &mut GatewaySection) {
        if let Some(listen) = &self.listen {
            gateway.listen = listen.clone();
        }
        if let Some(listen) = &self.metrics_listen {
            gateway.metrics_listen = listen.clone();
        }
        if !self.upstreams.is_empty() {
            gateway.upstreams = self.upstreams.clone();
        }
        if !self.dns_nameservers.is_empty() {
            gateway.dns.nameservers = self.dns_nameservers.clone();
        }
        if !self.cors_origins.is_empty() {
            gateway.cors.allowed_origins = self.cors_origins.clone();
        }
        if let Some(dir) = &self.static_dir {
            gateway.static_dir = Some(dir.clone());
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            gateway.otlp.endpoint = endpoint.clone();
        }
        if let Some(name) = &self.service_name {
            gateway.otlp.service_name = name.clone();
        }
    }
}
