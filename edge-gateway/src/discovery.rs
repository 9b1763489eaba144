//! Upstream discovery, host-independent: what an `upstreams` entry names ([`UpstreamTarget`]),
//! when a name is resolved again ([`refresh_delay`], [`retry_delay`]), which lookups replace
//! the endpoint set ([`accept_lookup`]) and how the union of every target's addresses changes
//! ([`Membership`]). The resolver itself is in [`crate::dns`], the endpoints in
//! [`crate::upstream`].

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

/// One `upstreams` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTarget {
    /// `IP:port` (`[v6]:port`): one endpoint, never resolved.
    Address(SocketAddr),
    /// `host:port`: every A/AAAA record of `host` is an endpoint on `port`. A Kubernetes
    /// headless Service gives one per ready pod (the edge balances them); a ClusterIP Service
    /// gives its one virtual IP (the mesh sidecar balances behind it).
    Name { host: String, port: u16 },
}

impl UpstreamTarget {
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if let Ok(addr) = value.parse::<SocketAddr>() {
            return Ok(Self::Address(addr));
        }
        let Some((host, port)) = value.rsplit_once(':') else {
            return Err(format!("{value:?} is not host:port or IP:port"));
        };
        let port = match port.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return Err(format!("{value:?}: port {port:?} is not 1-65535")),
        };
        if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
            return Err(format!("{value:?} is not a valid IP:port address"));
        }
        let host = host.strip_suffix('.').unwrap_or(host);
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        // A numeric last label is a mistyped address, not a name (no TLD is numeric).
        let numeric_tld = host
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()));
        if host.is_empty() || host.len() > 253 || numeric_tld || !host.split('.').all(label_ok) {
            return Err(format!("{value:?}: {host:?} is not a DNS name"));
        }
        Ok(Self::Name {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// As configured, for logs and metric labels.
    pub fn label(&self) -> String {
        match self {
            Self::Address(addr) => addr.to_string(),
            Self::Name { host, port } => format!("{host}:{port}"),
        }
    }
}

/// When to resolve a name again after an answer valid for `ttl`: at expiry, kept within
/// `[floor, ceiling]` so a TTL of 0 cannot spin and a day-long TTL cannot hide a change.
pub fn refresh_delay(ttl: Duration, floor: Duration, ceiling: Duration) -> Duration {
    ttl.clamp(floor, ceiling.max(floor))
}

/// When to try again after `consecutive_failures` failed lookups: from the floor, doubling, up
/// to the ceiling.
pub fn retry_delay(consecutive_failures: u32, floor: Duration, ceiling: Duration) -> Duration {
    let doublings = consecutive_failures.saturating_sub(1).min(20);
    floor.saturating_mul(1 << doublings).min(ceiling.max(floor))
}

/// A lookup's result as discovery sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Resolved {
        addresses: BTreeSet<IpAddr>,
        ttl: Duration,
    },
    /// SERVFAIL, timeout, NXDOMAIN, no records: a name the edge routes to never legitimately
    /// has no address, so these are failures.
    Failed(String),
}

/// The endpoint set a lookup gives, or `None` to keep the last good one.
pub fn accept_lookup(lookup: &Lookup, port: u16) -> Option<BTreeSet<SocketAddr>> {
    match lookup {
        Lookup::Resolved { addresses, .. } if !addresses.is_empty() => Some(
            addresses
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect(),
        ),
        _ => None,
    }
}

/// Endpoints to add and remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    pub added: Vec<SocketAddr>,
    pub removed: Vec<SocketAddr>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// The endpoint set: the union of every target's current addresses (two targets naming one
/// address give one endpoint).
#[derive(Debug, Clone, Default)]
pub struct Membership {
    by_target: Vec<BTreeSet<SocketAddr>>,
}

impl Membership {
    pub fn new(targets: usize) -> Self {
        Self {
            by_target: vec![BTreeSet::new(); targets],
        }
    }

    pub fn all(&self) -> BTreeSet<SocketAddr> {
        self.by_target.iter().flatten().copied().collect()
    }

    /// Replaces one target's addresses; returns what changed in the union.
    pub fn set(&mut self, target: usize, addresses: BTreeSet<SocketAddr>) -> Change {
        let before = self.all();
        self.by_target[target] = addresses;
        let after = self.all();
        Change {
            added: after.difference(&before).copied().collect(),
            removed: before.difference(&after).copied().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_addresses_or_names() {
        assert_eq!(
            UpstreamTarget::parse("127.0.0.1:50051").unwrap(),
            UpstreamTarget::Address("127.0.0.1:50051".parse().unwrap())
        );
        assert_eq!(
            UpstreamTarget::parse("[::1]:50051").unwrap(),
            UpstreamTarget::Address("[::1]:50051".parse().unwrap())
        );
        assert_eq!(
            UpstreamTarget::parse("User-Service.meshgate.svc.cluster.local.:50051").unwrap(),
            UpstreamTarget::Name {
                host: "user-service.meshgate.svc.cluster.local".into(),
                port: 50051
            }
        );
        assert_eq!(
            UpstreamTarget::parse("localhost:50051").unwrap().label(),
            "localhost:50051"
        );
        for bad in [
            "localhost",
            "x",
            "host:0",
            "host:99999",
            "host:port",
            ":50051",
            "-bad.example:1",
            "a..b:1",
            "under score ok?:1",
            "300.1.1.1:80",
            "[::1:80",
            "::1:80",
        ] {
            assert!(UpstreamTarget::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn refresh_follows_the_ttl_within_floor_and_ceiling() {
        let floor = Duration::from_secs(1);
        let ceiling = Duration::from_secs(30);
        assert_eq!(
            refresh_delay(Duration::from_secs(5), floor, ceiling),
            Duration::from_secs(5)
        );
        assert_eq!(refresh_delay(Duration::ZERO, floor, ceiling), floor);
        assert_eq!(
            refresh_delay(Duration::from_secs(86_400), floor, ceiling),
            ceiling
        );
        // A ceiling below the floor is the floor (config validation refuses it anyway).
        assert_eq!(
            refresh_delay(Duration::from_secs(5), floor, Duration::ZERO),
            floor
        );
    }

    #[test]
    fn failed_lookups_back_off_from_floor_to_ceiling() {
        let floor = Duration::from_millis(500);
        let ceiling = Duration::from_secs(3);
        let delays: Vec<u128> = (1..=5)
            .map(|n| retry_delay(n, floor, ceiling).as_millis())
            .collect();
        assert_eq!(delays, [500, 1000, 2000, 3000, 3000]);
        assert_eq!(retry_delay(u32::MAX, floor, ceiling), ceiling);
    }

    #[test]
    fn failed_or_empty_lookups_keep_the_last_set() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let resolved = Lookup::Resolved {
            addresses: [ip("10.0.0.2"), ip("fd00::1")].into(),
            ttl: Duration::from_secs(5),
        };
        let set = accept_lookup(&resolved, 50051).unwrap();
        assert_eq!(
            set,
            [
                "10.0.0.2:50051".parse().unwrap(),
                "[fd00::1]:50051".parse().unwrap()
            ]
            .into()
        );
        let empty = Lookup::Resolved {
            addresses: BTreeSet::new(),
            ttl: Duration::from_secs(5),
        };
        assert_eq!(accept_lookup(&empty, 1), None);
        assert_eq!(accept_lookup(&Lookup::Failed("SERVFAIL".into()), 1), None);
    }

    #[test]
    fn membership_changes_are_diffs_of_the_union() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let mut membership = Membership::new(2);
        let change = membership.set(0, [a("10.0.0.1:1"), a("10.0.0.2:1")].into());
        assert_eq!(change.added, [a("10.0.0.1:1"), a("10.0.0.2:1")]);
        assert!(change.removed.is_empty());
        // The second target shares one address: only the new one is added.
        let change = membership.set(1, [a("10.0.0.2:1"), a("10.0.0.3:1")].into());
        assert_eq!(change.added, [a("10.0.0.3:1")]);
        // The first target loses 10.0.0.2, which the second still names: nothing removed there.
        let change = membership.set(0, [a("10.0.0.1:1")].into());
        assert!(change.is_empty(), "{change:?}");
        let change = membership.set(1, [a("10.0.0.4:1")].into());
        assert_eq!(change.added, [a("10.0.0.4:1")]);
        assert_eq!(change.removed, [a("10.0.0.2:1"), a("10.0.0.3:1")]);
        assert_eq!(membership.all(), [a("10.0.0.1:1"), a("10.0.0.4:1")].into());
    }
}
