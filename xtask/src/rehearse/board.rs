//! What the kubelet knows (probe results, exits) and what routing needs: the [`Board`] shared
//! by the probe loops, the reconciler (readiness → endpoints, headless DNS records) and the
//! steps that wait on it.

use super::*;

#[derive(Debug, Clone)]
pub(super) enum TargetPort {
    Number(u16),
    Name(String),
}

pub(super) struct ServicePort {
    pub(super) name: String,
    pub(super) port: u16,
    pub(super) target: TargetPort,
    pub(super) endpoints: Arc<Endpoints>,
}

pub(super) struct ServiceState {
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) selector: BTreeMap<String, String>,
    pub(super) headless: bool,
    pub(super) ports: Vec<ServicePort>,
    pub(super) published: Option<Vec<Ipv4Addr>>,
}

pub(super) struct PodState {
    pub(super) name: String,
    pub(super) namespace: String,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) ip: Ipv4Addr,
    pub(super) ports: Vec<(Option<String>, u16)>,
    /// Containers that must be running and ready (init containers excluded).
    pub(super) containers: Vec<String>,
    /// Readiness not decided by probes (the database stand-in): up or down.
    pub(super) fixed_ready: Option<bool>,
    /// A Deployment's pod (must stay up), not a Job's.
    pub(super) long_running: bool,
    /// Its containers are being started (their probes not registered yet): not Ready.
    pub(super) starting: bool,
    /// Our binaries it runs (`edge-gateway`...).
    pub(super) binaries: Vec<String>,
    pub(super) ready: bool,
}

#[derive(Default)]
pub(super) struct Board {
    pub(super) trackers: BTreeMap<(usize, String, ProbeKind), Tracker>,
    /// (pod, container) → how it ended.
    pub(super) exits: BTreeMap<(usize, String), ExitRecord>,
    pub(super) pods: Vec<PodState>,
    pub(super) services: Vec<ServiceState>,
    /// Liveness/startup failures: each one a restart by the kubelet.
    pub(super) restarts: Vec<String>,
    /// Pods being stopped at teardown (their exits and probe failures are expected).
    pub(super) stopping: BTreeSet<usize>,
}

#[derive(Debug, Clone)]
pub(super) struct ExitRecord {
    pub(super) code: Option<i32>,
    pub(super) text: String,
    /// At teardown, after the SIGTERM.
    pub(super) expected: bool,
}

impl Board {
    pub(super) fn container_ready(&self, pod: usize, container: &str) -> bool {
        if self.exits.contains_key(&(pod, container.to_owned())) {
            return false;
        }
        let state = |kind| {
            self.trackers
                .get(&(pod, container.to_owned(), kind))
                .map(|t| t.state)
        };
        match state(ProbeKind::Readiness) {
            Some(ready) => ready == Some(true),
            None => !matches!(state(ProbeKind::Startup), Some(None | Some(false))),
        }
    }

    /// A startup or liveness probe of the pod failed: the kubelet restarts its container.
    pub(super) fn restarting(&self, pod: usize) -> bool {
        self.trackers.iter().any(|((p, _, kind), tracker)| {
            *p == pod && *kind != ProbeKind::Readiness && tracker.state == Some(false)
        })
    }

    pub(super) fn pod_ready(&self, pod: usize) -> bool {
        let state = &self.pods[pod];
        if self.stopping.contains(&pod) {
            return false;
        }
        state.fixed_ready.unwrap_or_else(|| {
            !state.starting
                && !state.containers.is_empty()
                && state
                    .containers
                    .iter()
                    .all(|c| self.container_ready(pod, c))
        })
    }
}

pub(super) struct Shared {
    pub(super) board: Mutex<Board>,
    pub(super) changed: watch::Sender<u64>,
    pub(super) dns: dns::ClusterDns,
    pub(super) started: Instant,
}

impl Shared {
    pub(super) fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn log(&self, line: impl AsRef<str>) {
        println!(
            "  +{:>6.2}s {}",
            self.started.elapsed().as_secs_f64(),
            line.as_ref()
        );
    }

    pub(super) fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Recomputes pod readiness, endpoints and headless DNS records after a change.
    pub(super) async fn reconcile(&self) {
        let mut dns_updates = Vec::new();
        {
            let mut board = self.board();
            for index in 0..board.pods.len() {
                let ready = board.pod_ready(index);
                if board.pods[index].ready != ready {
                    board.pods[index].ready = ready;
                    if !board.pods[index].long_running {
                        continue;
                    }
                    self.log(format!(
                        "pod {} {}",
                        board.pods[index].name,
                        if ready { "Ready" } else { "NotReady" }
                    ));
                }
            }
            let board = &mut *board;
            for service in &mut board.services {
                let members: Vec<&PodState> = board
                    .pods
                    .iter()
                    .filter(|p| {
                        p.ready
                            && p.namespace == service.namespace
                            && selector_matches(&service.selector, &p.labels)
                    })
                    .collect();
                for port in &service.ports {
                    let addresses: Vec<SocketAddr> = members
                        .iter()
                        .filter_map(|pod| {
                            let number = match &port.target {
                                TargetPort::Number(n) => Some(*n),
                                TargetPort::Name(name) => pod
                                    .ports
                                    .iter()
                                    .find(|(n, _)| n.as_deref() == Some(name.as_str()))
                                    .map(|(_, number)| *number),
                            }?;
                            Some(SocketAddr::from((pod.ip, number)))
                        })
                        .collect();
                    port.endpoints.set(addresses);
                }
                if service.headless {
                    let ips: Vec<Ipv4Addr> = members.iter().map(|p| p.ip).collect();
                    if service.published.as_ref() != Some(&ips) {
                        service.published = Some(ips.clone());
                        dns_updates
                            .push((dns::service_fqdn(&service.name, &service.namespace), ips));
                    }
                }
            }
        }
        for (fqdn, ips) in dns_updates {
            if let Err(error) = self.dns.set(&fqdn, &ips).await {
                self.log(format!("DNS update of {fqdn} failed: {error:#}"));
            }
        }
    }

    /// Waits until `done` holds (re-checked on every change), at most `limit`.
    pub(super) async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&Board) -> bool,
    ) -> anyhow::Result<()> {
        let mut changes = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if done(&self.board()) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                bail!("{what}: not within {limit:?}");
            }
        }
    }
}

pub(super) fn describe_unready(board: &Board, pod: usize) -> String {
    let state = &board.pods[pod];
    let reasons: Vec<String> = board
        .trackers
        .iter()
        .filter(|((p, _, _), t)| {
            *p == pod && t.state != Some(true) && t.kind != ProbeKind::Liveness
        })
        .map(|((_, c, _), t)| {
            format!(
                "{c} {} {} ({} checks, last error: {})",
                t.kind,
                probe::describe_action(&t.probe.action),
                t.checks,
                t.last_error.as_deref().unwrap_or("none")
            )
        })
        .collect();
    format!(
        "{} NotReady: {}",
        state.name,
        if reasons.is_empty() {
            "no probe result yet".into()
        } else {
            reasons.join(", ")
        }
    )
}
