//! /healthz, /readyz, /openapi.json, /metrics, trace propagation, the filter seam.

use std::sync::Arc;

use edge_gateway::hooks::{
    Decision, Filter, FilterChain, FilterRequest, FilterResponse, LocalReply,
};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn health_readiness_openapi_and_metrics() {
    let backend = Backend::start("adm").await;
    let mut config = test_config(&[backend.addr]);
    config.metrics_listen = Some(ANY_PORT);
    let gw = spawn_gateway_with(config, FilterChain::default()).await;
    let client = h1();
    assert_eq!(
        get_status(&client, gw.url("/healthz")).await,
        StatusCode::OK
    );
    assert_eq!(get_status(&client, gw.url("/readyz")).await, StatusCode::OK);

    let doc: Value = get_json(&client, gw.url("/openapi.json")).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/users/{id}"]["get"].is_object());
    assert!(
        doc["paths"]["/v1/sinks"]["post"].is_object(),
        "configured descriptor sets are documented"
    );
    assert!(doc["paths"]["/v1/users"]["post"]["responses"]["201"].is_object());

    assert_eq!(
        get_status(&client, gw.url("/v1/sinks/m")).await,
        StatusCode::OK
    );
    let text = gw.scrape_metrics_port().await;
    assert!(text.contains("meshgate_gateway_requests_total{protocol=\"rest\",route=\"GET /v1/sinks/{id}\",status=\"200\"}"), "{text}");
    assert!(text.contains("meshgate_gateway_request_duration_seconds_bucket"));
    assert!(text.contains("meshgate_gateway_upstream_healthy"));
    validate_openapi(&doc);
}

#[tokio::test]
async fn w3c_and_b3_context_is_propagated_upstream() {
    let backend = Backend::start("t").await;
    let gw = spawn_gateway(&[backend.addr]).await;
    let client = h1();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let sink: Value = client
        .get(gw.url("/v1/sinks/trace"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let upstream = sink["text"].as_str().unwrap();
    assert!(
        upstream.starts_with(&format!("00-{trace_id}-")),
        "{upstream}"
    );
    assert!(
        !upstream.contains("00f067aa0ba902b7"),
        "the gateway's own span is the parent"
    );

    let b3_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let response = client
        .get(gw.url("/v1/sinks/trace"))
        .header("b3", format!("{b3_trace}-e457b5a2e4d86bd1-1"))
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["traceparent"]
            .to_str()
            .unwrap()
            .contains(b3_trace)
    );
    let sink: Value = response.json().await.unwrap();
    assert!(sink["text"].as_str().unwrap().contains(b3_trace));
}

struct DenyBlocked;

impl Filter for DenyBlocked {
    fn on_request(&self, request: &mut FilterRequest<'_>) -> Decision {
        if request.headers.contains_key("x-blocked") {
            return Decision::Respond(LocalReply::new(
                429,
                format!("blocked {}", request.grpc_method),
            ));
        }
        request
            .headers
            .insert("x-custom", "from-filter".parse().unwrap());
        Decision::Continue
    }

    fn on_response(&self, response: &mut FilterResponse<'_>) {
        response
            .headers
            .insert("cache-control", "max-age=5".parse().unwrap());
    }
}

#[tokio::test]
async fn filter_hooks_see_requests_and_responses() {
    let backend = Backend::start("f").await;
    let filters = FilterChain::new(vec![Arc::new(DenyBlocked)]);
    let gw = spawn_gateway_with(test_config(&[backend.addr]), filters).await;
    let client = h1();
    let blocked = client
        .get(gw.url("/v1/sinks/x"))
        .header("x-blocked", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(blocked.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        blocked.json::<Value>().await.unwrap()["message"],
        "blocked /kitchen.v1.KitchenService/Query"
    );
    let passed = client.get(gw.url("/v1/sinks/x")).send().await.unwrap();
    assert_eq!(passed.headers()["cache-control"], "max-age=5");
    let sink: Value = passed.json().await.unwrap();
    assert_eq!(sink["tags"][0], "x-custom=from-filter");

    let mut grpc = kitchen_client(gw.addr).await;
    let mut request = tonic::Request::new(kitchen::Sink::default());
    request
        .metadata_mut()
        .insert("x-blocked", "1".parse().unwrap());
    let status = grpc.query(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
}

/// Runs the reference OpenAPI validator (Python `openapi-spec-validator`, 3.1 schema) on the
/// served document.
pub(crate) fn validate_openapi(doc: &Value) {
    let path = std::env::temp_dir().join(format!(
        "edge-gateway-openapi-{}.json",
        uuid::Uuid::new_v4()
    ));
    std::fs::write(&path, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    // scripts/test points MESHGATE_PYTHON at a venv that has openapi-spec-validator.
    let python = std::env::var("MESHGATE_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let output = std::process::Command::new(&python)
        .args([
            "-m",
            "openapi_spec_validator",
            "--schema",
            "3.1",
            "--errors",
            "all",
        ])
        .arg(&path)
        .output()
        .expect(
            "python3 with openapi-spec-validator is needed (./scripts/test sets it up; or pip install openapi-spec-validator)",
        );
    let _ = std::fs::remove_file(&path);
    assert!(
        output.status.success(),
        "openapi-spec-validator rejected /openapi.json (pip install openapi-spec-validator if missing):\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
