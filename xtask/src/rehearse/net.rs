//! The rehearsal's network, made with iproute2 and never touching the host's own namespace:
//!
//! - a "node" network namespace holding a bridge (the pod network's gateway), the Service
//!   virtual IPs and the cluster DNS address; the rehearsal's kubelet, kube-proxy and DNS run
//!   in it (the orchestrating thread enters it with `setns`);
//! - one network namespace per pod, joined to the bridge by a veth pair (`eth0` inside), with
//!   `/etc/netns/<ns>/resolv.conf` and `hosts` as the kubelet writes them.
//!
//! The node namespace has no route out: nothing in the rehearsal can reach another machine.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

/// The pod network (`/24`; `.1` is the bridge) and the Service network.
pub const POD_NETWORK: [u8; 3] = [10, 244, 0];
pub const SERVICE_NETWORK: [u8; 3] = [10, 96, 0];
/// kube-dns's conventional ClusterIP.
pub const DNS_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const BRIDGE: &str = "br0";
/// The bridge's own MAC address, set when it is made (locally administered, from the gateway's
/// IP). Without it Linux gives a bridge the lowest MAC of its ports and changes it whenever a
/// pod's veth with a lower one joins: every pod then sends to the gateway's old MAC, which the
/// bridge no longer accepts, until its ARP entry expires (15–45 s, plus 5 s of delay probes).
/// Pod → Service and pod → DNS traffic stalled that long, at random, with each later pod.
const BRIDGE_MAC: &str = "02:00:0a:f4:00:01";
const NETNS_PREFIX: &str = "mgrh";

pub fn gateway_address() -> Ipv4Addr {
    Ipv4Addr::new(POD_NETWORK[0], POD_NETWORK[1], POD_NETWORK[2], 1)
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Fails with a clear message when network namespaces cannot be made here.
pub fn preflight() -> anyhow::Result<()> {
    let probe = format!("{NETNS_PREFIX}{}-preflight", std::process::id());
    ip(&["netns", "add", &probe]).context(
        "`ip netns add` failed: the rehearsal needs root and iproute2 with network namespace \
         support (Debian: apt-get install iproute2)",
    )?;
    let _ = ip(&["netns", "del", &probe]);
    Ok(())
}

/// Removes what an earlier rehearsal killed with SIGKILL left behind (its pid is gone).
pub fn sweep_stale() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if pid.is_empty() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("removing network namespace {name} left by rehearsal {pid}");
        let _ = ip(&["netns", "del", name]);
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{name}"));
    }
}

#[derive(Debug)]
pub struct PodNetwork {
    pub netns: String,
    pub ip: Ipv4Addr,
    pub etc_dir: PathBuf,
}

/// The namespaces and addresses made so far; [`Network::teardown`] removes all of them.
#[derive(Debug)]
pub struct Network {
    prefix: String,
    pub node: String,
    next_pod: u8,
    next_service: u8,
    made: Vec<String>,
}

impl Network {
    pub fn create() -> anyhow::Result<Self> {
        let prefix = format!("{NETNS_PREFIX}{}", std::process::id());
        let node = format!("{prefix}-node");
        let mut network = Self {
            prefix,
            node: node.clone(),
            next_pod: 10,
            next_service: 100,
            made: Vec::new(),
        };
        ip(&["netns", "add", &node])?;
        network.made.push(node.clone());
        let gateway = format!("{}/24", gateway_address());
        ip(&["-n", &node, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &node, "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge",
        ])?;
        ip(&["-n", &node, "addr", "add", &gateway, "dev", BRIDGE])?;
        ip(&["-n", &node, "link", "set", BRIDGE, "up"])?;
        network.add_local_address(DNS_ADDRESS)?;
        Ok(network)
    }

    /// A new Service virtual IP, local to the node (where the rehearsal's kube-proxy listens).
    pub fn allocate_service_ip(&mut self) -> anyhow::Result<Ipv4Addr> {
        let octet = self.next_service;
        self.next_service = self
            .next_service
            .checked_add(1)
            .context("out of Service IPs")?;
        let [a, b, c] = SERVICE_NETWORK;
        let address = Ipv4Addr::new(a, b, c, octet);
        self.add_local_address(address)?;
        Ok(address)
    }

    fn add_local_address(&self, address: Ipv4Addr) -> anyhow::Result<()> {
        ip(&[
            "-n",
            &self.node,
            "addr",
            "add",
            &format!("{address}/32"),
            "dev",
            "lo",
        ])
    }

    /// A pod's namespace, address, veth and DNS files.
    pub fn add_pod(&mut self, name: &str, dns_namespace: &str) -> anyhow::Result<PodNetwork> {
        let index = self.next_pod;
        self.next_pod = self
            .next_pod
            .checked_add(1)
            .filter(|n| *n < 255)
            .context("out of pod IPs")?;
        let netns = format!("{}-{index}", self.prefix);
        ip(&["netns", "add", &netns])?;
        self.made.push(netns.clone());
        let [a, b, c] = POD_NETWORK;
        let address = Ipv4Addr::new(a, b, c, index);
        let veth = format!("veth{index}");
        ip(&[
            "-n", &self.node, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
            "netns", &netns,
        ])?;
        ip(&[
            "-n", &self.node, "link", "set", &veth, "master", BRIDGE, "up",
        ])?;
        self.check_bridge_address(&veth)?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            &netns,
            "route",
            "add",
            "default",
            "via",
            &gateway_address().to_string(),
        ])?;
        let etc_dir = PathBuf::from(format!("/etc/netns/{netns}"));
        std::fs::create_dir_all(&etc_dir)?;
        std::fs::write(
            etc_dir.join("resolv.conf"),
            super::dns::resolv_conf(dns_namespace, DNS_ADDRESS),
        )?;
        std::fs::write(etc_dir.join("hosts"), super::dns::hosts_file(name, address))?;
        Ok(PodNetwork {
            netns,
            ip: address,
            etc_dir,
        })
    }

    /// Fails when the bridge's MAC is no longer [`BRIDGE_MAC`] after `veth` joined it (the
    /// kernel's choice replaced the address set at creation): the pods' ARP entries for the
    /// gateway would go stale.
    fn check_bridge_address(&self, veth: &str) -> anyhow::Result<()> {
        let output = Command::new("ip")
            .args(["-n", &self.node, "-o", "link", "show", BRIDGE])
            .output()
            .context("running ip (iproute2)")?;
        let text = String::from_utf8_lossy(&output.stdout);
        let address = bridge_address(&text);
        if address != Some(BRIDGE_MAC) {
            bail!(
                "the bridge's MAC address changed to {} when {veth} joined (set: {BRIDGE_MAC}): \
                 the pods' cached gateway address would go stale",
                address.unwrap_or("?")
            );
        }
        Ok(())
    }

    /// Deletes every namespace (their veths go with them) and `/etc/netns` directory made.
    pub fn teardown(&mut self) {
        for netns in self.made.drain(..).rev() {
            let _ = ip(&["netns", "del", &netns]);
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{netns}"));
        }
    }
}

/// The `link/ether` address in `ip -o link show` output.
fn bridge_address(text: &str) -> Option<&str> {
    let mut words = text.split_whitespace();
    words.find(|w| *w == "link/ether")?;
    words.next()
}

impl Drop for Network {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bridge_address_is_read_from_ip_link() {
        let line = "3: br0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP \
                    mode DEFAULT group default qlen 1000\\    link/ether 02:00:0a:f4:00:01 brd \
                    ff:ff:ff:ff:ff:ff";
        assert_eq!(bridge_address(line), Some(BRIDGE_MAC));
        assert_eq!(bridge_address("3: br0: <UP> mtu 1500"), None);
    }
}
