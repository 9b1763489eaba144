//! Probes and lifecycle hooks: their handler (httpGet, grpc, tcpSocket, exec) with named ports
//! resolved, and their timings.

use super::*;

pub(super) fn parse_probe(probe: &Value, ports: &[(Option<String>, u16)]) -> anyhow::Result<Probe> {
    let action = parse_action(probe, ports)?;
    let number = |name: &str, default: u64| probe[name].as_u64().unwrap_or(default);
    Ok(Probe {
        action,
        initial_delay_seconds: number("initialDelaySeconds", 0),
        period_seconds: number("periodSeconds", 10),
        timeout_seconds: number("timeoutSeconds", 1),
        success_threshold: number("successThreshold", 1) as u32,
        failure_threshold: number("failureThreshold", 3) as u32,
    })
}

/// A `lifecycle.preStop`/`postStart` handler: a probe-like action or the kubelet's own sleep.
pub(super) fn parse_hook(hook: &Value, ports: &[(Option<String>, u16)]) -> anyhow::Result<Hook> {
    if let Some(seconds) = hook["sleep"]["seconds"].as_u64() {
        return Ok(Hook::Sleep { seconds });
    }
    parse_action(hook, ports).map(Hook::Action)
}

/// The handler of a probe or hook (httpGet, grpc, tcpSocket, exec), ports resolved.
pub(super) fn parse_action(
    probe: &Value,
    ports: &[(Option<String>, u16)],
) -> anyhow::Result<ProbeAction> {
    let port = |value: &Value| -> anyhow::Result<u16> {
        if let Some(number) = value.as_u64() {
            return u16::try_from(number).map_err(|_| anyhow!("port {number} out of range"));
        }
        let name = value.as_str().unwrap_or("");
        if let Ok(number) = name.parse() {
            return Ok(number);
        }
        ports
            .iter()
            .find(|(n, _)| n.as_deref() == Some(name))
            .map(|(_, number)| *number)
            .ok_or_else(|| anyhow!("port {name:?} is not a named port of the container"))
    };
    let action = if let Some(http) = probe.get("httpGet") {
        ProbeAction::Http {
            path: http["path"].as_str().unwrap_or("/").to_owned(),
            port: port(&http["port"])?,
            scheme: http["scheme"].as_str().unwrap_or("HTTP").to_owned(),
            headers: http["httpHeaders"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|h| {
                    (
                        h["name"].as_str().unwrap_or("").to_owned(),
                        h["value"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect(),
        }
    } else if let Some(grpc) = probe.get("grpc") {
        // The API server accepts only a number here.
        let number = grpc["port"]
            .as_u64()
            .ok_or_else(|| anyhow!("grpc.port must be a number (named ports are not allowed)"))?;
        ProbeAction::Grpc {
            port: u16::try_from(number).map_err(|_| anyhow!("grpc.port out of range"))?,
            service: grpc["service"].as_str().map(str::to_owned),
        }
    } else if let Some(tcp) = probe.get("tcpSocket") {
        ProbeAction::Tcp {
            port: port(&tcp["port"])?,
        }
    } else if let Some(exec) = probe.get("exec") {
        ProbeAction::Exec {
            command: exec["command"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect(),
        }
    } else {
        bail!("no handler (httpGet, grpc, tcpSocket or exec)");
    };
    Ok(action)
}
