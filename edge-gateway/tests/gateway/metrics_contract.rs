//! Drift guard: every edge-gateway row of deploy/observability/METRICS.md (the series the alerts,
//! dashboards and canary analysis query) is scraped from the real /metrics, labels and all. Each
//! gateway has its own registry, so the values are this test's: a request is counted once,
//! under its route, protocol and status.

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
    config.upstream.targets.push(
        edge_gateway::discovery::UpstreamTarget::parse(&format!("contract.metrics.test:{port}"))
            .unwrap(),
    );
    config.upstream.dns.nameservers = vec![dns.addr];
    config.upstream.dns.search = Some(Vec::new());
    // Only passive ejection may notice the killed upstream here (the outlier series).
    config.upstream.health_interval = std::time::Duration::from_secs(60);
    config.metrics_listen = Some(ANY_PORT);
    let gw = spawn_gateway_with(config, Default::default()).await;
    let client = h1();
    assert_eq!(
        get_status(&client, gw.url("/healthz")).await,
        StatusCode::OK
    );
    eventually("the name to resolve", || async {
        gw.metric(
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
            gw.metric(
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
        gw.metric(
            "meshgate_gateway_outlier_ejections_total",
            &[("upstream", &killed)],
        ) >= 1.0
    })
    .await;
    let scrape = gw.scrape_metrics_port().await;
    let problems = contract::check("edge-gateway", &scrape);
    assert!(problems.is_empty(), "{problems:#?}\n{scrape}");
    drop(two);
}

/// The sum of every `name` sample of a scrape.
fn total(scrape: &str, name: &str) -> f64 {
    contract::parse_exposition(scrape)
        .1
        .iter()
        .filter(|sample| sample.name == name)
        .map(|sample| sample.value)
        .sum()
}

#[tokio::test]
async fn each_request_is_counted_once_by_route_protocol_and_status() {
    let backend = Backend::start("counted").await;
    let gw = spawn_gateway(&[backend.addr]).await;
    // A second gateway in the same process: none of the first one's requests are its own.
    let other = spawn_gateway(&[backend.addr]).await;
    let client = h1();
    let sink = kitchen::Sink {
        id: "counted".into(),
        ..Default::default()
    };

    let rest = client
        .get(gw.url("/v1/sinks/counted"))
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), StatusCode::OK);
    let unrouted = client.get(gw.url("/v1/nowhere")).send().await.unwrap();
    assert_eq!(unrouted.status(), StatusCode::NOT_FOUND);
    let web = client
        .post(gw.url("/kitchen.v1.KitchenService/Query"))
        .header("content-type", "application/grpc-web+proto")
        .body(grpc_web_request(&sink, false))
        .send()
        .await
        .unwrap();
    assert_eq!(web.status(), StatusCode::OK);
    assert_eq!(
        parse_grpc_web(&web.bytes().await.unwrap(), false).trailers["grpc-status"],
        "0"
    );
    kitchen_client(gw.addr).await.query(sink).await.unwrap();

    // A request is counted when it is logged, after its response went out.
    eventually("the four requests to be counted", || async {
        total(&gw.scrape(), "meshgate_gateway_requests_total") >= 4.0
    })
    .await;
    let counted = |route: &str, protocol: &str, status: &str| {
        gw.metric(
            "meshgate_gateway_requests_total",
            &[("route", route), ("protocol", protocol), ("status", status)],
        )
    };
    const QUERY: &str = "/kitchen.v1.KitchenService/Query";
    assert_eq!(counted("GET /v1/sinks/{id}", "rest", "200"), 1.0);
    assert_eq!(counted("unmatched", "rest", "404"), 1.0);
    assert_eq!(counted(QUERY, "grpc-web", "200"), 1.0);
    assert_eq!(counted(QUERY, "grpc", "200"), 1.0);
    let scrape = gw.scrape();
    assert_eq!(
        total(&scrape, "meshgate_gateway_requests_total"),
        4.0,
        "{scrape}"
    );
    // One latency observation per request, under the same route and protocol.
    assert_eq!(
        gw.metric(
            "meshgate_gateway_request_duration_seconds_count",
            &[("route", "GET /v1/sinks/{id}"), ("protocol", "rest")],
        ),
        1.0
    );
    assert_eq!(
        total(&scrape, "meshgate_gateway_request_duration_seconds_count"),
        4.0
    );
    assert_eq!(
        total(&other.scrape(), "meshgate_gateway_requests_total"),
        0.0
    );
}
