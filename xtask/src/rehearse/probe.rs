//! The kubelet's probes: each declared probe run against the pod IP from the node (HTTP GET
//! 200–399, gRPC health SERVING, TCP connect, exec in the container's namespaces), with the
//! kubelet's thresholds (a startup probe gates the others; readiness starts failed, liveness
//! starts passing; `failureThreshold` consecutive failures flip it). Periods and initial delays
//! are scaled down by [`TIME_SCALE`] to keep the rehearsal short; timeouts are kept, since they
//! bound how long the program may take to answer.

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Empty;

use crate::workload::{Probe, ProbeAction};

/// Declared periods and delays are multiplied by this.
pub const TIME_SCALE: f64 = 0.1;
const MIN_PERIOD: Duration = Duration::from_millis(100);

pub fn scaled(seconds: u64) -> Duration {
    Duration::from_secs_f64(seconds as f64 * TIME_SCALE).max(if seconds == 0 {
        Duration::ZERO
    } else {
        MIN_PERIOD
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Startup => "startupProbe",
            Self::Liveness => "livenessProbe",
            Self::Readiness => "readinessProbe",
        })
    }
}

/// One probe's result as the kubelet tracks it.
#[derive(Debug, Clone)]
pub struct Tracker {
    pub kind: ProbeKind,
    pub probe: Probe,
    successes: u32,
    failures: u32,
    /// `None` until decided (startup), else passing or failed.
    pub state: Option<bool>,
    pub checks: u64,
    pub failed_checks: u64,
    pub last_error: Option<String>,
}

impl Tracker {
    pub fn new(kind: ProbeKind, probe: Probe) -> Self {
        let state = match kind {
            ProbeKind::Startup => None,
            ProbeKind::Liveness => Some(true),
            ProbeKind::Readiness => Some(false),
        };
        Self {
            kind,
            probe,
            successes: 0,
            failures: 0,
            state,
            checks: 0,
            failed_checks: 0,
            last_error: None,
        }
    }

    /// Records one check; returns the new state when it changed.
    pub fn record(&mut self, result: Result<(), String>) -> Option<bool> {
        self.checks += 1;
        match result {
            Ok(()) => {
                self.failures = 0;
                self.successes += 1;
                if self.successes >= self.probe.success_threshold.max(1) && self.state != Some(true)
                {
                    self.state = Some(true);
                    return Some(true);
                }
            }
            Err(error) => {
                self.failed_checks += 1;
                self.last_error = Some(error);
                self.successes = 0;
                self.failures += 1;
                if self.failures >= self.probe.failure_threshold.max(1) && self.state != Some(false)
                {
                    self.state = Some(false);
                    return Some(false);
                }
            }
        }
        None
    }

    /// `readinessProbe httpGet :8080/readyz every 0.5 s (declared 5 s), timeout 2 s, failure ×2`.
    pub fn describe(&self) -> String {
        let p = &self.probe;
        format!(
            "{} {} every {:?} (declared {} s), timeout {} s, success ×{}, failure ×{}",
            self.kind,
            describe_action(&p.action),
            scaled(p.period_seconds),
            p.period_seconds,
            p.timeout_seconds,
            p.success_threshold,
            p.failure_threshold
        )
    }
}

pub fn describe_action(action: &ProbeAction) -> String {
    match action {
        ProbeAction::Http {
            path, port, scheme, ..
        } => format!("httpGet {scheme} :{port}{path}"),
        ProbeAction::Grpc { port, service } => {
            format!(
                "grpc :{port} service {:?}",
                service.as_deref().unwrap_or("")
            )
        }
        ProbeAction::Tcp { port } => format!("tcpSocket :{port}"),
        ProbeAction::Exec { command } => format!("exec {}", command.join(" ")),
    }
}

/// Where a probe is run: the pod IP, and for exec probes the container's process, user and
/// environment.
#[derive(Debug, Clone)]
pub struct Target {
    pub ip: Ipv4Addr,
    pub pid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    pub env: std::sync::Arc<Vec<(String, String)>>,
}

/// One check, bounded by the probe's timeout.
pub async fn check(action: &ProbeAction, target: &Target, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, run_check(action, target)).await {
        Ok(result) => result.map_err(|e| format!("{e:#}")),
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}

async fn run_check(action: &ProbeAction, target: &Target) -> anyhow::Result<()> {
    match action {
        ProbeAction::Tcp { port } => {
            tokio::net::TcpStream::connect((target.ip, *port)).await?;
            Ok(())
        }
        ProbeAction::Http {
            path,
            port,
            scheme,
            headers,
        } => {
            if scheme != "HTTP" {
                bail!("scheme {scheme}: only HTTP probes are modelled");
            }
            let stream = tokio::net::TcpStream::connect((target.ip, *port)).await?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let mut request = http::Request::get(path.as_str())
                .header("host", format!("{}:{port}", target.ip))
                .header("user-agent", "kube-probe/1.31")
                .header("accept", "*/*");
            for (name, value) in headers {
                request = request.header(name.as_str(), value.as_str());
            }
            let response = sender
                .send_request(request.body(Empty::<Bytes>::new())?)
                .await?;
            let status = response.status().as_u16();
            if (200..400).contains(&status) {
                Ok(())
            } else {
                bail!("HTTP probe failed with statuscode: {status}")
            }
        }
        ProbeAction::Grpc { port, service } => {
            use tonic_health::pb::health_check_response::ServingStatus;
            let channel =
                tonic::transport::Endpoint::from_shared(format!("http://{}:{port}", target.ip))?
                    .connect()
                    .await?;
            let response = tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.clone().unwrap_or_default(),
                })
                .await
                .map_err(|status| {
                    anyhow::anyhow!("rpc error: {:?}: {}", status.code(), status.message())
                })?;
            let status = response.into_inner().status();
            if status == ServingStatus::Serving {
                Ok(())
            } else {
                bail!("service unhealthy (responded with {status:?})")
            }
        }
        ProbeAction::Exec { command } => {
            let pid = target.pid.context("the container is not running")?;
            let output = tokio::process::Command::new("nsenter")
                .arg(format!("--target={pid}"))
                .args(["--mount", "--uts", "--ipc", "--net", "--root", "--wd"])
                .arg(format!("--setuid={}", target.uid))
                .arg(format!("--setgid={}", target.gid))
                .arg("--")
                .args(command)
                .env_clear()
                .envs(target.env.iter().map(|(k, v)| (k, v)))
                .kill_on_drop(true)
                .output()
                .await
                .context("running nsenter (util-linux)")?;
            if output.status.success() {
                Ok(())
            } else {
                bail!(
                    "command exited {:?}: {}",
                    output.status.code(),
                    String::from_utf8_lossy(&output.stderr).trim()
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(success: u32, failure: u32) -> Probe {
        Probe {
            action: ProbeAction::Tcp { port: 1 },
            initial_delay_seconds: 0,
            period_seconds: 10,
            timeout_seconds: 1,
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn readiness_starts_failed_and_flips_after_the_thresholds() {
        let mut tracker = Tracker::new(ProbeKind::Readiness, probe(2, 3));
        assert_eq!(tracker.state, Some(false));
        assert_eq!(tracker.record(Ok(())), None);
        assert_eq!(tracker.record(Ok(())), Some(true));
        assert_eq!(tracker.record(Err("a".into())), None);
        assert_eq!(tracker.record(Err("b".into())), None);
        assert_eq!(
            tracker.record(Ok(())),
            None,
            "a success resets the failure count"
        );
        for _ in 0..2 {
            assert_eq!(tracker.record(Err("c".into())), None);
        }
        assert_eq!(tracker.record(Err("d".into())), Some(false));
        assert_eq!((tracker.checks, tracker.failed_checks), (8, 5));
        assert_eq!(tracker.last_error.as_deref(), Some("d"));
    }

    #[test]
    fn liveness_starts_passing_and_startup_undecided() {
        let mut liveness = Tracker::new(ProbeKind::Liveness, probe(1, 1));
        assert_eq!(liveness.state, Some(true));
        assert_eq!(liveness.record(Err("x".into())), Some(false));
        let mut startup = Tracker::new(ProbeKind::Startup, probe(1, 30));
        assert_eq!(startup.state, None);
        assert_eq!(startup.record(Ok(())), Some(true));
    }

    #[test]
    fn periods_scale_down_with_a_floor() {
        assert_eq!(scaled(10), Duration::from_secs(1));
        assert_eq!(scaled(0), Duration::ZERO);
        assert_eq!(scaled(1), Duration::from_millis(100));
    }
}
