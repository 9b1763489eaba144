//! Upstream failure modes: down, slow, restarted, one of two killed; health and retries.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn upstream_down_is_503_and_slow_is_504() {
    let nothing_listens = ClosedPort::new();
    let gw = spawn_gateway(&[nothing_listens.addr]).await;
    let down = h1()
        .get(gw.url("/v1/users/3f0c6a0e-9a51-4d2e-8f7a-1b2c3d4e5f60"))
        .send()
        .await
        .unwrap();
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = down.json().await.unwrap();
    assert_eq!(body["code"], 14);
    assert!(
        !body["message"].as_str().unwrap().contains("127.0.0.1"),
        "no internals leak: {body}"
    );

    let backend = Backend::start("slow").await;
    let mut config = test_config(&[backend.addr]);
    config
        .route_timeouts
        .insert("GET /v1/slow/{millis}".into(), Duration::from_millis(300));
    let gw = spawn_gateway_with(config, Default::default()).await;
    let slow = h1().get(gw.url("/v1/slow/3000")).send().await.unwrap();
    assert_eq!(slow.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(slow.json::<Value>().await.unwrap()["code"], 4);
    let fast = h1().get(gw.url("/v1/slow/1")).send().await.unwrap();
    assert_eq!(fast.status(), StatusCode::OK);
}

#[tokio::test]
async fn restarted_upstream_is_used_again() {
    let mut backend = Backend::start("first").await;
    let addr = backend.addr;
    let gw = spawn_gateway(&[addr]).await;
    let client = h1();
    assert_eq!(
        get_status(&client, gw.url("/v1/sinks/a")).await,
        StatusCode::OK
    );
    backend.stop().await;
    eventually("the gateway to notice the upstream is gone", || async {
        get_status(&client, gw.url("/v1/sinks/a")).await == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    // Readiness does not follow upstream health (that would take every edge replica out
    // together): still ready, and the body says none is healthy.
    eventually("readyz to report no healthy upstream", || async {
        let response = client.get(gw.url("/readyz")).send().await.unwrap();
        response.status() == StatusCode::OK
            && response
                .text()
                .await
                .unwrap()
                .contains("0 of 1 upstream endpoint(s) healthy")
    })
    .await;
    let _restarted = Backend::start_at("second", addr).await;
    eventually("the restarted upstream to serve again", || async {
        let response = client.get(gw.url("/v1/sinks/a")).send().await.unwrap();
        response.status() == StatusCode::OK
            && response.json::<Value>().await.unwrap()["servedBy"] == "second"
    })
    .await;
}

#[tokio::test]
async fn gets_keep_succeeding_when_one_of_two_upstreams_is_killed() {
    let mut one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let gw = spawn_gateway(&[one.addr, two.addr]).await;
    let client = h1();
    // Both serve. Sampled until both answered rather than in a fixed ten requests: on a loaded
    // machine one active check can time out and take an upstream out for a few intervals.
    let served = std::sync::Mutex::new(std::collections::HashSet::new());
    eventually("round robin to reach both upstreams", || async {
        let sink: Value = get_json(&client, gw.url("/v1/sinks/lb")).await;
        let mut served = served.lock().unwrap();
        served.insert(sink["servedBy"].as_str().unwrap().to_owned());
        served.len() == 2
    })
    .await;
    one.stop().await;
    // Right after the kill (before any health check notices) GETs are retried on the survivor.
    for _ in 0..50 {
        let response = client.get(gw.url("/v1/sinks/lb")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let sink: Value = response.json().await.unwrap();
        assert_eq!(sink["servedBy"], "two");
    }
    // Native gRPC keeps working too (connection failures move to the next upstream).
    let mut grpc = kitchen_client(gw.addr).await;
    for _ in 0..10 {
        let sink = grpc
            .query(kitchen::Sink::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(sink.served_by, "two");
    }
}

#[tokio::test]
async fn not_serving_upstream_is_taken_out_of_rotation() {
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let gw = spawn_gateway(&[one.addr, two.addr]).await;
    one.health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let client = h1();
    eventually("only the serving upstream to answer", || async {
        let mut all_two = true;
        for _ in 0..6 {
            let sink: Value = get_json(&client, gw.url("/v1/sinks/h")).await;
            all_two &= sink["servedBy"] == "two";
        }
        all_two
    })
    .await;
    assert_eq!(get_status(&client, gw.url("/readyz")).await, StatusCode::OK);
}
