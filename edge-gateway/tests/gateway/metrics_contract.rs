//! Drift guard: every edge-gateway row of deploy/observability/METRICS.md (the series the alerts,
//! dashboards and canary analysis query) is scraped from the real /metrics, labels and all.

use reqwest::StatusCode;

use crate::helpers::*;

#[path = "../../../deploy/observability/metrics_contract.rs"]
mod contract;

#[tokio::test]
async fn metrics_contract_rows_are_all_exported() {
    let mut one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let mut config = test_config(&[one.addr, two.addr]);
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
    // Killing one upstream before a health check notices makes the next calls retry on the
    // other: that is what creates the retry series.
    one.stop().await;
    for _ in 0..20 {
        let response = client
            .get(gw.url("/v1/sinks/contract"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
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
}
