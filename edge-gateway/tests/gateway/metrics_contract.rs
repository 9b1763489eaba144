//! Drift guard: every edge-gateway row of deploy/observability/METRICS.md (the series the alerts,
//! dashboards and canary analysis query) is scraped from the real /metrics, labels and all.

use reqwest::StatusCode;

use crate::{dns_server::TestDns, helpers::*};

use meshgate_test_support::metrics_contract as contract;

#[tokio::test]
async fn metrics_contract_rows_are_all_exported() {
    // One upstream by address, one by name (the DNS series).
    let dns = TestDns::start(30).await;
    let mut one = Backend::start("one").await;
    let (port, two) = Backend::start_on_ips(&["two"], &["127.0.0.9".parse().unwrap()]).await;
    dns.set("contract.metrics.test", &["127.0.0.9".parse().unwrap()]);
    let mut config = test_config(&[one.addr]);
    config.upstreams.push(
        edge_gateway::discovery::UpstreamTarget::parse(&format!("contract.metrics.test:{port}"))
            .unwrap(),
    );
    config.dns.nameservers = vec![dns.addr];
    config.dns.search = Some(Vec::new());
    // Only passive ejection may notice the killed upstream here (the outlier series).
    config.health_interval = std::time::Duration::from_secs(60);
    config.metrics_listen = Some(free_addr());
    let gw = spawn_gateway_with(config, Default::default()).await;
    let client = h1();
    assert_eq!(
        client
            .get(gw.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    eventually("the name to resolve", || async {
        metric_value(
            "meshgate_gateway_dns_lookups_total",
            &[
                ("target", &format!("contract.metrics.test:{port}")),
                ("outcome", "resolved"),
            ],
        ) >= 1.0
    })
    .await;
    // A discovered endpoint takes traffic once its first health check passes: until then the
    // failover below would have nowhere to go.
    let discovered = format!("127.0.0.9:{port}");
    eventually(
        "the discovered endpoint to pass its first check",
        || async {
            metric_value(
                "meshgate_gateway_upstream_healthy",
                &[("upstream", &discovered)],
            ) >= 1.0
        },
    )
    .await;
    // Killing one upstream makes the next calls to it fail over to the other (the retry
    // series) until consecutive connect failures eject it (the outlier series).
    one.stop().await;
    let killed = one.addr.to_string();
    eventually("the killed upstream to be ejected", || async {
        let response = client
            .get(gw.url("/v1/sinks/contract"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        metric_value(
            "meshgate_gateway_outlier_ejections_total",
            &[("upstream", &killed)],
        ) >= 1.0
    })
    .await;
    let metrics_url = format!("http://{}/metrics", gw.metrics_addr.unwrap());
    let mut scrape = String::new();
    // The metrics service starts on its own thread; give it a moment.
    for _ in 0..50 {
        if let Ok(response) = client.get(&metrics_url).send().await {
            scrape = response.text().await.unwrap();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let problems = contract::check("edge-gateway", &scrape);
    assert!(problems.is_empty(), "{problems:#?}\n{scrape}");
    drop(two);
}
