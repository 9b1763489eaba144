//! The rehearsal's cluster DNS (what CoreDNS's kubernetes plugin answers): an authoritative
//! `cluster.local` zone served by hickory-server over UDP and TCP, with
//! `<service>.<namespace>.svc.cluster.local` A records — the ClusterIP for a ClusterIP Service,
//! the ready pods' IPs for a headless one — updated as readiness changes. Names outside the
//! zone are refused: the rehearsal has no upstream.

use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hickory_server::Server;
use hickory_server::proto::rr::rdata::{A, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};

pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// CoreDNS's kubernetes plugin answers with a 5 s TTL by default.
const RECORD_TTL: u32 = 5;

pub struct ClusterDns {
    zone: Arc<InMemoryZoneHandler>,
    _server: Server<Catalog>,
}

impl ClusterDns {
    /// Serves the zone on `addr` (UDP and TCP), which must be a local address.
    pub async fn start(addr: SocketAddr) -> anyhow::Result<Self> {
        let origin = Name::from_str(&format!("{CLUSTER_DOMAIN}.")).context("zone name")?;
        let mut zone =
            InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = SOA::new(
            Name::from_str(&format!("ns.dns.{CLUSTER_DOMAIN}."))?,
            Name::from_str(&format!("hostmaster.{CLUSTER_DOMAIN}."))?,
            1,
            7200,
            1800,
            86400,
            RECORD_TTL,
        );
        zone.upsert_mut(
            Record::from_rdata(origin.clone(), RECORD_TTL, RData::SOA(soa)),
            1,
        );
        let zone = Arc::new(zone);
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![zone.clone()]);
        let mut server = Server::new(catalog);
        let udp = tokio::net::UdpSocket::bind(addr)
            .await
            .with_context(|| format!("DNS on udp {addr}"))?;
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("DNS on tcp {addr}"))?;
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64);
        Ok(Self {
            zone,
            _server: server,
        })
    }

    /// Sets the A records of `fqdn` (without the trailing dot); no addresses removes the name
    /// (NXDOMAIN), as for a headless Service with no ready pod.
    pub async fn set(&self, fqdn: &str, addresses: &[Ipv4Addr]) -> anyhow::Result<()> {
        let name = Name::from_str(&format!("{fqdn}."))?;
        let key = RrKey::new(LowerName::new(&name), RecordType::A);
        let mut records = self.zone.records_mut().await;
        if addresses.is_empty() {
            records.remove(&key);
            return Ok(());
        }
        let mut set = RecordSet::new(name.clone(), RecordType::A, 1);
        for address in addresses {
            set.insert(
                Record::from_rdata(name.clone(), RECORD_TTL, RData::A(A(*address))),
                1,
            );
        }
        records.insert(key, Arc::new(set));
        Ok(())
    }
}

/// `<name>.<namespace>.svc.cluster.local`.
pub fn service_fqdn(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}")
}

/// A pod's `/etc/resolv.conf`, as the kubelet writes it for `dnsPolicy: ClusterFirst`.
pub fn resolv_conf(namespace: &str, nameserver: Ipv4Addr) -> String {
    format!(
        "search {namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n\
         nameserver {nameserver}\n\
         options ndots:5\n"
    )
}

/// A pod's `/etc/hosts`, as the kubelet writes it.
pub fn hosts_file(pod_name: &str, pod_ip: Ipv4Addr) -> String {
    format!(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n\
         {pod_ip}\t{pod_name}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_dns_files_follow_the_kubelet() {
        let resolv = resolv_conf("meshgate", Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(
            resolv,
            "search meshgate.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        assert!(hosts_file("api-0", Ipv4Addr::new(10, 244, 0, 9)).ends_with("10.244.0.9\tapi-0\n"));
        assert_eq!(
            service_fqdn("valkey", "meshgate"),
            "valkey.meshgate.svc.cluster.local"
        );
    }
}
