//! What the rehearsal proves once synced: traffic through the edge by its Service name, a
//! database outage that liveness does not follow, and no restarts.

use super::*;

impl<'a> Rehearsal<'a> {
    /// The client pod drives the three protocols through the edge's Service name.
    pub(super) async fn drive_traffic(&mut self, when: &str) {
        let Some(edge) = self.edge_address() else {
            self.fail(
                "no Service routes to an edge-gateway pod: nothing to drive traffic through".into(),
            );
            return;
        };
        println!("\n== traffic {when}: client pod in namespace {CLIENT_NAMESPACE} → {edge}");
        let result = async {
            let network = self.network.add_pod("rehearsal-client", CLIENT_NAMESPACE)?;
            let mut child = tokio::process::Command::new("ip")
                .args(["netns", "exec", &network.netns])
                .arg(std::env::current_exe()?)
                .args(["rehearsal-client", "--edge", &edge])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()?;
            let mut lines =
                tokio::io::BufReader::new(child.stdout.take().context("client stdout")?).lines();
            let mut failed = Vec::new();
            let read = async {
                while let Ok(Some(line)) = lines.next_line().await {
                    println!("  client: {line}");
                    if line.starts_with("FAIL") {
                        failed.push(line);
                    }
                }
                child.wait().await
            };
            let status = tokio::time::timeout(Duration::from_secs(90), read)
                .await
                .context("the client took longer than 90 s")??;
            if !status.success() || !failed.is_empty() {
                bail!(
                    "traffic {when}: {}",
                    if failed.is_empty() {
                        format!("client exited {status}")
                    } else {
                        failed.join("; ")
                    }
                );
            }
            Ok(())
        }
        .await;
        if let Err(error) = result {
            for tail in self.log_tails() {
                println!("  log {tail}");
            }
            self.fail(format!("{error:#}"));
        }
    }

    /// `<service>.<namespace>:<port>` of the Service whose pods run the edge-gateway image.
    pub(super) fn edge_address(&self) -> Option<String> {
        let board = self.shared.board();
        let edge_pods: Vec<&PodState> = board
            .pods
            .iter()
            .filter(|p| p.binaries.iter().any(|b| b == EDGE_BINARY))
            .collect();
        board.services.iter().find_map(|service| {
            let selects = edge_pods.iter().any(|p| {
                p.namespace == service.namespace && selector_matches(&service.selector, &p.labels)
            });
            let port = service
                .ports
                .iter()
                .find(|p| p.name == "http")
                .or(service.ports.first())?;
            selects.then(|| format!("{}.{}:{}", service.name, service.namespace, port.port))
        })
    }

    /// PostgreSQL stops: pods whose readiness follows it leave the endpoints, but no liveness
    /// probe may fail (the kubelet would restart every pod during a failover). Then it comes
    /// back, everything must be Ready again and serve.
    pub(super) async fn database_outage(&mut self) -> anyhow::Result<()> {
        let (db_pod, name) = {
            let (pod, server) = &self.postgres[0];
            (*pod, server.cluster.cluster.clone())
        };
        println!("\n== dependency outage: PostgreSQL {name} stopped");
        let restarts_before = self.shared.board().restarts.len();
        // Each liveness probe must run past its failure threshold while the database is down.
        let baseline: BTreeMap<(usize, String, ProbeKind), (u64, u32)> = self
            .shared
            .board()
            .trackers
            .iter()
            .filter(|(k, _)| k.2 == ProbeKind::Liveness)
            .map(|(k, t)| (k.clone(), (t.checks, t.probe.failure_threshold)))
            .collect();
        self.postgres[0].1.stop().await?;
        self.shared.board().pods[db_pod].fixed_ready = Some(false);
        self.shared.notify();
        let observed = self
            .shared
            .wait_for(
                "every liveness probe checked past its failure threshold during the outage",
                HEALTH_LIMIT,
                |board| {
                    baseline.iter().all(|(key, (checks, threshold))| {
                        board
                            .trackers
                            .get(key)
                            .is_none_or(|t| t.checks > checks + u64::from(*threshold))
                    })
                },
            )
            .await;
        let unready: Vec<String> = {
            let board = self.shared.board();
            board
                .pods
                .iter()
                .enumerate()
                .filter(|(i, p)| *i != db_pod && p.long_running && !p.ready)
                .map(|(_, p)| p.name.clone())
                .collect()
        };
        self.shared.log(format!(
            "during the outage: NotReady (left the endpoints): {}",
            if unready.is_empty() {
                "none".into()
            } else {
                unready.join(", ")
            }
        ));
        if unready.is_empty() {
            self.note("no pod's readiness followed the database: traffic kept reaching pods that cannot serve it".into());
        }
        observed?;
        let new_restarts: Vec<String> = self.shared.board().restarts[restarts_before..].to_vec();
        for restart in new_restarts {
            self.fail(format!(
                "while PostgreSQL was down: {restart} (liveness must not follow a dependency)"
            ));
        }
        println!("\n== dependency outage: PostgreSQL {name} started again");
        self.postgres[0].1.start().await?;
        self.shared.board().pods[db_pod].fixed_ready = Some(true);
        self.shared.notify();
        let all = self.shared.board().pods.len();
        let recovered = self
            .shared
            .wait_for("every pod Ready again", HEALTH_LIMIT, |board| {
                (0..all).all(|p| board.pods[p].ready || !board.pods[p].long_running)
            })
            .await;
        if let Err(error) = recovered {
            let board = self.shared.board();
            let unready: Vec<String> = (0..all)
                .filter(|p| !board.pods[*p].ready && board.pods[*p].long_running)
                .map(|p| describe_unready(&board, p))
                .collect();
            drop(board);
            self.fail(format!(
                "after PostgreSQL came back: {error:#}: {}",
                unready.join("; ")
            ));
            return Ok(());
        }
        self.shared.log("every pod Ready again");
        self.drive_traffic("after the outage").await;
        Ok(())
    }

    pub(super) fn check_no_restarts(&mut self) {
        let board = self.shared.board();
        let restarts = board.restarts.clone();
        let crashed: Vec<String> = board
            .exits
            .iter()
            .filter(|((pod, name), exit)| {
                // Init containers exit by design; the main containers of a Deployment must not.
                !exit.expected
                    && board.pods[*pod].long_running
                    && board.pods[*pod].containers.contains(name)
            })
            .map(|((pod, name), exit)| {
                format!(
                    "pod {} container {name} exited ({})",
                    board.pods[*pod].name, exit.text
                )
            })
            .collect();
        drop(board);
        for restart in restarts {
            if !self.failures.iter().any(|f| f.contains(&restart)) {
                self.fail(restart);
            }
        }
        for crash in crashed {
            self.fail(crash);
        }
    }
}
