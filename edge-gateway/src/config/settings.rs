//! The `gateway` section (overrides applied) checked into the [`GatewayConfig`] the gateway runs
//! on: addresses parsed, durations positive, ranges and combinations checked, each failure
//! naming its key. Pure: what needs the file system or pingora (the static directory, the TLS
//! files, pingora's `server` section) is checked by [`super::load`].

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use super::{
    ConfigError, DnsSettings, GatewayConfig, UpstreamSettings,
    auth::auth_settings,
    filters::filter_specs,
    invalid,
    schema::{ConnectionsSection, DnsSection, GatewaySection, OtlpSection, OutlierSection},
};
use crate::{
    balance::{HealthThresholds, OutlierSettings},
    conn_limits::ConnectionSettings,
    discovery::UpstreamTarget,
    telemetry::OtlpSettings,
};

/// Longest accepted `drain_delay_ms`: beyond it a rolling update would stall.
const MAX_DRAIN_DELAY_MS: u64 = 300_000;

/// Checks the section; `server` is pingora's section as YAML, already checked by pingora.
/// The TLS files `tls` names are not read here.
pub(super) fn gateway_config(
    gateway: GatewaySection,
    server: Option<String>,
) -> Result<GatewayConfig, ConfigError> {
    let addr = |key: &str, value: &str| -> Result<SocketAddr, ConfigError> {
        value
            .parse()
            .map_err(|_| invalid(key, format!("{value:?} is not an IP:port address")))
    };
    let listen = addr("gateway.listen", &gateway.listen)?;
    let metrics_listen = if gateway.metrics_listen.is_empty() {
        None
    } else {
        Some(addr("gateway.metrics_listen", &gateway.metrics_listen)?)
    };
    if gateway.upstreams.is_empty() {
        return Err(invalid(
            "gateway.upstreams",
            "at least one upstream address is required",
        ));
    }
    let upstreams = gateway
        .upstreams
        .iter()
        .enumerate()
        .map(|(i, value)| {
            UpstreamTarget::parse(value).map_err(|reason| {
                invalid(
                    &format!("gateway.upstreams[{i}]"),
                    format!("{reason} (also --upstream / GATEWAY_UPSTREAMS)"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut route_timeouts = BTreeMap::new();
    for (route, ms) in &gateway.route_timeouts_ms {
        route_timeouts.insert(
            route.clone(),
            millis(&format!("gateway.route_timeouts_ms.{route}"), *ms)?,
        );
    }
    if gateway.max_body_bytes == 0 {
        return Err(invalid("gateway.max_body_bytes", "must be greater than 0"));
    }
    if gateway.retry.max_attempts == 0 {
        return Err(invalid("gateway.retry.max_attempts", "must be at least 1"));
    }
    if !(0.0..=1.0).contains(&gateway.retry.budget_ratio) {
        return Err(invalid(
            "gateway.retry.budget_ratio",
            "must be between 0 and 1",
        ));
    }
    if !(1..=60).contains(&gateway.retry.budget_window_secs) {
        return Err(invalid(
            "gateway.retry.budget_window_secs",
            "must be between 1 and 60",
        ));
    }
    if i32::try_from(gateway.retry.min_retries_per_second).is_err() {
        return Err(invalid(
            "gateway.retry.min_retries_per_second",
            "is too large",
        ));
    }
    let dns = dns_settings(gateway.dns)?;
    let health_thresholds = HealthThresholds {
        unhealthy: at_least_one(
            "gateway.health_check.unhealthy_threshold",
            gateway.health_check.unhealthy_threshold,
        )?,
        healthy: at_least_one(
            "gateway.health_check.healthy_threshold",
            gateway.health_check.healthy_threshold,
        )?,
    };
    if gateway.load_balancing.panic_threshold_percent > 100 {
        return Err(invalid(
            "gateway.load_balancing.panic_threshold_percent",
            "must be between 0 and 100",
        ));
    }
    let outlier = outlier_settings(&gateway.outlier_detection)?;
    if gateway.shutdown.drain_delay_ms > MAX_DRAIN_DELAY_MS {
        return Err(invalid(
            "gateway.shutdown.drain_delay_ms",
            format!("must be at most {MAX_DRAIN_DELAY_MS}"),
        ));
    }
    let connections = connection_settings(&gateway.connections)?;
    for (i, origin) in gateway.cors.allowed_origins.iter().enumerate() {
        if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
            return Err(invalid(
                &format!("gateway.cors.allowed_origins[{i}]"),
                format!("{origin:?} must be `*` or an http(s):// origin"),
            ));
        }
    }
    if gateway.cors.allow_credentials && gateway.cors.allowed_origins.iter().any(|o| o == "*") {
        return Err(invalid(
            "gateway.cors.allow_credentials",
            "cannot be combined with origin `*`",
        ));
    }
    let tls = match gateway.tls {
        Some(tls) => {
            let tls_listen = addr("gateway.tls.listen", &tls.listen)?;
            // Port 0 asks the kernel for a free port per socket: the same `IP:0` twice is two
            // listeners, as tests and local stacks use it.
            if tls_listen == listen && listen.port() != 0 {
                return Err(invalid(
                    "gateway.tls.listen",
                    format!("{tls_listen} is already gateway.listen (plaintext)"),
                ));
            }
            Some((tls_listen, tls.cert_path, tls.key_path))
        }
        None => None,
    };
    let filters = filter_specs(gateway.filters)?;
    let auth = gateway.auth.map(auth_settings).transpose()?;
    let otlp = otlp_settings(gateway.otlp)?;
    // Before the upstream timeouts: of several bad keys, `gateway.timeout_ms` is named first.
    let timeout = millis("gateway.timeout_ms", gateway.timeout_ms)?;
    Ok(GatewayConfig {
        server,
        listen,
        metrics_listen,
        upstream: UpstreamSettings {
            targets: upstreams,
            dns,
            connect_timeout: millis("gateway.connect_timeout_ms", gateway.connect_timeout_ms)?,
            health_interval: millis(
                "gateway.health_check.interval_ms",
                gateway.health_check.interval_ms,
            )?,
            health_timeout: millis(
                "gateway.health_check.timeout_ms",
                gateway.health_check.timeout_ms,
            )?,
            health_service: gateway.health_check.service,
            health_thresholds,
            panic_threshold_percent: gateway.load_balancing.panic_threshold_percent,
            outlier,
            retry_max_attempts: gateway.retry.max_attempts,
            retry_budget_ratio: gateway.retry.budget_ratio,
            retry_min_per_second: gateway.retry.min_retries_per_second,
            retry_budget_window: Duration::from_secs(gateway.retry.budget_window_secs),
        },
        descriptor_sets: gateway.descriptor_sets,
        skip_builtin_descriptors: gateway.skip_builtin_descriptors,
        json: gateway.json.options(),
        max_body_bytes: gateway.max_body_bytes,
        timeout,
        route_timeouts,
        h2_streams_per_connection: gateway.h2_streams_per_connection.max(1),
        drain_delay: Duration::from_millis(gateway.shutdown.drain_delay_ms),
        connections,
        cors_origins: gateway.cors.allowed_origins,
        cors_allow_credentials: gateway.cors.allow_credentials,
        cors_max_age: Duration::from_secs(gateway.cors.max_age_secs),
        tls,
        otlp,
        static_dir: gateway.static_dir,
        filters,
        auth,
    })
}

fn at_least_one(key: &str, value: u32) -> Result<u32, ConfigError> {
    if value == 0 {
        Err(invalid(key, "must be at least 1"))
    } else {
        Ok(value)
    }
}

fn millis(key: &str, value: u64) -> Result<Duration, ConfigError> {
    if value == 0 {
        Err(invalid(key, "must be greater than 0"))
    } else {
        Ok(Duration::from_millis(value))
    }
}

fn dns_settings(section: DnsSection) -> Result<DnsSettings, ConfigError> {
    let nameservers = section
        .nameservers
        .iter()
        .enumerate()
        .map(|(i, value)| {
            value.trim().parse::<SocketAddr>().map_err(|_| {
                invalid(
                    &format!("gateway.dns.nameservers[{i}]"),
                    format!(
                        "{value:?} is not an IP:port address (also --dns-nameserver / \
                         GATEWAY_DNS_NAMESERVERS)"
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(search) = &section.search {
        for (i, domain) in search.iter().enumerate() {
            let probe = format!("{}:1", domain.trim_end_matches('.'));
            if !matches!(
                UpstreamTarget::parse(&probe),
                Ok(UpstreamTarget::Name { .. })
            ) {
                return Err(invalid(
                    &format!("gateway.dns.search[{i}]"),
                    format!("{domain:?} is not a DNS domain"),
                ));
            }
        }
    }
    if let Some(ndots) = section.ndots
        && ndots > 15
    {
        return Err(invalid("gateway.dns.ndots", "must be at most 15"));
    }
    let min_refresh = millis("gateway.dns.min_refresh_ms", section.min_refresh_ms)?;
    let max_refresh = millis("gateway.dns.max_refresh_ms", section.max_refresh_ms)?;
    if max_refresh < min_refresh {
        return Err(invalid(
            "gateway.dns.max_refresh_ms",
            "must not be below gateway.dns.min_refresh_ms",
        ));
    }
    Ok(DnsSettings {
        nameservers,
        search: section.search,
        ndots: section.ndots,
        timeout: millis("gateway.dns.timeout_ms", section.timeout_ms)?,
        min_refresh,
        max_refresh,
    })
}

fn outlier_settings(section: &OutlierSection) -> Result<OutlierSettings, ConfigError> {
    let base_ejection = millis(
        "gateway.outlier_detection.base_ejection_ms",
        section.base_ejection_ms,
    )?;
    let max_ejection = millis(
        "gateway.outlier_detection.max_ejection_ms",
        section.max_ejection_ms,
    )?;
    if max_ejection < base_ejection {
        return Err(invalid(
            "gateway.outlier_detection.max_ejection_ms",
            "must not be below gateway.outlier_detection.base_ejection_ms",
        ));
    }
    Ok(OutlierSettings {
        consecutive_failures: section.consecutive_failures,
        base_ejection,
        max_ejection,
    })
}

fn connection_settings(section: &ConnectionsSection) -> Result<ConnectionSettings, ConfigError> {
    if section.max == 0 {
        return Err(invalid("gateway.connections.max", "must be at least 1"));
    }
    if section.max_per_client_ip > section.max {
        return Err(invalid(
            "gateway.connections.max_per_client_ip",
            "must not exceed gateway.connections.max (0 turns the per-client cap off)",
        ));
    }
    let idle_timeout = millis(
        "gateway.connections.idle_timeout_ms",
        section.idle_timeout_ms,
    )?;
    if idle_timeout < Duration::from_secs(1) {
        // pingora's HTTP/1.1 keep-alive timeout has whole seconds.
        return Err(invalid(
            "gateway.connections.idle_timeout_ms",
            "must be at least 1000",
        ));
    }
    Ok(ConnectionSettings {
        header_read_timeout: millis(
            "gateway.connections.header_read_timeout_ms",
            section.header_read_timeout_ms,
        )?,
        idle_timeout,
        max: section.max,
        max_per_client_ip: section.max_per_client_ip,
    })
}

fn otlp_settings(section: OtlpSection) -> Result<Option<OtlpSettings>, ConfigError> {
    let endpoint = section.endpoint.trim();
    if endpoint.is_empty() {
        return Ok(None);
    }
    const KEY: &str = "gateway.otlp.endpoint";
    let uri: http::Uri = endpoint.parse().map_err(|e| {
        invalid(
            KEY,
            format!("{endpoint:?} is not a URL (also OTEL_EXPORTER_OTLP_ENDPOINT): {e}"),
        )
    })?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(invalid(
            KEY,
            format!(
                "{endpoint:?} must be http://host:port (OTLP/gRPC in plaintext, e.g. to a \
                 collector agent next to the gateway; also OTEL_EXPORTER_OTLP_ENDPOINT)"
            ),
        ));
    }
    let service_name = section.service_name.trim();
    if service_name.is_empty() {
        return Err(invalid(
            "gateway.otlp.service_name",
            "must not be empty (also OTEL_SERVICE_NAME)",
        ));
    }
    Ok(Some(OtlpSettings {
        endpoint: endpoint.to_owned(),
        service_name: service_name.to_owned(),
    }))
}
