//! After the traffic: the writes' events took the deployed path, outbox → the relay of one
//! user-service replica → NATS JetStream (the StatefulSet, stood in by the host's nats-server) →
//! the worker Deployment. Read from the pods' own `/metrics` (every ready pod's `http-metrics`
//! port), as Prometheus would: a relay holds the lease, the outbox is empty again and the
//! workers applied events. An environment without the outbox's metrics is not checked.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

use super::Rehearsal;

/// How long the events may take to drain through the relay and the worker after the traffic.
const FLOW_LIMIT: Duration = Duration::from_secs(60);

/// The series of the alerts (`deploy/observability/prometheusrules/meshgate-events.yaml`),
/// aggregated over the scraped pods as those rules do.
#[derive(Debug, Default, PartialEq)]
pub struct EventFlow {
    /// Some pod exports `user_outbox_backlog` (a user-service).
    pub outbox: bool,
    /// Max over the replicas (each reports the same table).
    pub backlog: f64,
    /// Replicas whose relay holds the lease.
    pub relay_leaders: f64,
    /// `user_worker_events_total{result="applied"}` summed over the workers.
    pub applied: f64,
}

impl EventFlow {
    pub fn drained(&self) -> bool {
        self.relay_leaders == 1.0 && self.backlog == 0.0 && self.applied > 0.0
    }
}

/// Reads the flow from Prometheus text expositions (one per pod).
pub fn read_flow(scrapes: &[String]) -> EventFlow {
    let mut flow = EventFlow::default();
    for text in scrapes {
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            match series {
                "user_outbox_backlog" => {
                    flow.outbox = true;
                    flow.backlog = flow.backlog.max(value);
                }
                "user_outbox_relay_leader" => flow.relay_leaders += value,
                r#"user_worker_events_total{result="applied"}"# => flow.applied += value,
                _ => {}
            }
        }
    }
    flow
}

async fn scrape(address: SocketAddr) -> anyhow::Result<String> {
    let stream = tokio::net::TcpStream::connect(address).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::get("/metrics")
        .header("host", address.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

impl Rehearsal<'_> {
    /// Waits (at most [`FLOW_LIMIT`]) for the events of the traffic to drain to the workers.
    pub(super) async fn check_event_flow(&mut self) {
        println!("\n== events: outbox → relay → NATS JetStream → worker, from the pods' /metrics");
        let deadline = tokio::time::Instant::now() + FLOW_LIMIT;
        let mut flow;
        loop {
            let targets: Vec<SocketAddr> = {
                let board = self.shared.board();
                board
                    .pods
                    .iter()
                    .filter(|p| p.long_running && p.ready)
                    .flat_map(|p| {
                        p.ports
                            .iter()
                            .filter(|(name, _)| name.as_deref() == Some("http-metrics"))
                            .map(move |(_, port)| SocketAddr::from((p.ip, *port)))
                    })
                    .collect()
            };
            let mut scrapes = Vec::new();
            for target in targets {
                if let Ok(Ok(text)) =
                    tokio::time::timeout(Duration::from_secs(2), scrape(target)).await
                {
                    scrapes.push(text);
                }
            }
            flow = read_flow(&scrapes);
            if !flow.outbox {
                self.note(
                    "no pod exports user_outbox_backlog: the event path is not checked".into(),
                );
                return;
            }
            if flow.drained() || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if flow.drained() {
            println!(
                "  ok: one relay leader, outbox empty, {} event(s) applied by the worker(s)",
                flow.applied
            );
        } else {
            self.fail(format!(
                "the writes' events did not reach the worker within {FLOW_LIMIT:?}: relay leaders {}, \
                 outbox backlog {}, events applied {} (user-service NATS_URL, the nats StatefulSet, \
                 the worker's logs)",
                flow.relay_leaders, flow.backlog, flow.applied
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flow_is_read_as_the_alerts_aggregate_it() {
        let leader =
            "# TYPE user_outbox_backlog gauge\nuser_outbox_backlog 0\nuser_outbox_relay_leader 1\n";
        let standby = "user_outbox_backlog 2\nuser_outbox_relay_leader 0\n";
        let worker = "user_worker_events_total{result=\"applied\"} 7\nuser_worker_events_total{result=\"duplicate\"} 3\n";
        let flow = read_flow(&[leader.into(), standby.into(), worker.into()]);
        assert_eq!(
            flow,
            EventFlow {
                outbox: true,
                backlog: 2.0,
                relay_leaders: 1.0,
                applied: 7.0
            }
        );
        assert!(!flow.drained());
        let flow = read_flow(&[leader.into(), worker.into()]);
        assert!(flow.drained());
        assert!(!read_flow(&["edge_requests 1\n".into()]).outbox);
    }
}
