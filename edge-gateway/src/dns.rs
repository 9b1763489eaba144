//! The resolver behind upstream names: hickory-resolver configured from `/etc/resolv.conf`
//! (nameservers, `search`, `ndots`, as Kubernetes writes them) or from `gateway.dns`
//! (explicit `IP:port` nameservers; `search`/`ndots` overrides). A and AAAA are both asked; the
//! answer's TTL decides the next lookup ([`crate::discovery::refresh_delay`]).

use std::{collections::BTreeSet, net::IpAddr, time::Instant};

use hickory_resolver::{
    TokioResolver,
    config::{ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts},
    net::runtime::TokioRuntimeProvider,
    proto::rr::Name,
    system_conf::read_system_conf,
};

use crate::{config::DnsSettings, discovery::Lookup};

/// A configured resolver (cheap to clone, safe to share between tasks).
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

/// Why the resolver cannot be built, naming the setting to fix.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ResolverError {
    pub key: &'static str,
    pub reason: String,
}

/// The resolver configuration (no sockets yet): also what `edge-gateway --test` checks.
pub fn resolver_config(
    settings: &DnsSettings,
) -> Result<(ResolverConfig, ResolverOpts), ResolverError> {
    let system = read_system_conf();
    let (system_config, mut options) = match (&system, settings.nameservers.is_empty()) {
        (Ok((config, options)), _) => (Some(config.clone()), options.clone()),
        (Err(error), true) => {
            return Err(ResolverError {
                key: "gateway.dns.nameservers",
                reason: format!(
                    "the system resolver configuration (/etc/resolv.conf) is unusable ({error}); \
                     name the DNS servers in gateway.dns.nameservers"
                ),
            });
        }
        (Err(_), false) => (None, ResolverOpts::default()),
    };
    let (domain, system_search, system_servers) = system_config
        .map(ResolverConfig::into_parts)
        .unwrap_or_default();
    let nameservers = if settings.nameservers.is_empty() {
        system_servers
    } else {
        settings
            .nameservers
            .iter()
            .map(|addr| {
                let connection = |mut connection: ConnectionConfig| {
                    connection.port = addr.port();
                    connection
                };
                NameServerConfig::new(
                    addr.ip(),
                    true,
                    vec![
                        connection(ConnectionConfig::udp()),
                        connection(ConnectionConfig::tcp()),
                    ],
                )
            })
            .collect()
    };
    let search = match &settings.search {
        Some(domains) => domains
            .iter()
            .map(|domain| {
                Name::from_str_relaxed(domain).map_err(|e| ResolverError {
                    key: "gateway.dns.search",
                    reason: format!("{domain:?}: {e}"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => system_search,
    };
    if let Some(ndots) = settings.ndots {
        options.ndots = ndots;
    }
    options.timeout = settings.timeout;
    // Every A and AAAA record is an endpoint.
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // The resolver's cache may not hold an answer past the refresh ceiling, nor a failure past
    // the floor: discovery decides when to look again, and then it must really ask.
    options.positive_max_ttl = Some(settings.max_refresh);
    options.negative_max_ttl = Some(settings.min_refresh);
    Ok((
        ResolverConfig::from_parts(domain, search, nameservers),
        options,
    ))
}

impl Resolver {
    pub fn new(settings: &DnsSettings) -> Result<Self, ResolverError> {
        let (config, options) = resolver_config(settings)?;
        let inner = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .map_err(|e| ResolverError {
                key: "gateway.dns",
                reason: e.to_string(),
            })?;
        Ok(Self { inner })
    }

    /// Every address of `host` now, with how long the answer is valid.
    pub async fn lookup(&self, host: &str) -> Lookup {
        match self.inner.lookup_ip(host).await {
            Ok(answer) => {
                let ttl = answer
                    .valid_until()
                    .saturating_duration_since(Instant::now());
                let addresses: BTreeSet<IpAddr> = answer.iter().collect();
                if addresses.is_empty() {
                    Lookup::Failed("no A/AAAA records".to_owned())
                } else {
                    Lookup::Resolved { addresses, ttl }
                }
            }
            Err(error) => Lookup::Failed(error.to_string()),
        }
    }
}
