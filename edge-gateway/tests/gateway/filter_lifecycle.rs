//! Istio's plugin lifecycle in the gateway binary: a real proxy-wasm guest that traps on demand
//! (test-support's `trapping_guest.wat`, `runtime: wasm`) in front of a backend. FAIL_CLOSE
//! answers 503 / UNAVAILABLE in each client protocol, FAIL_OPEN lets the request through, a
//! trapped VM is rebuilt for the next request, and traps and reloads are counted on the
//! metrics port.

use std::path::PathBuf;

use meshgate_proto::user;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::wasm_filters::GatewayProcess;

/// The guest written to a file for the gateway's config; removed on drop.
struct GuestFile(PathBuf);

impl GuestFile {
    fn write() -> Self {
        let path =
            std::env::temp_dir().join(format!("trapping-guest-{}.wasm", uuid::Uuid::new_v4()));
        std::fs::write(&path, meshgate_test_support::wasm::trapping_guest()).unwrap();
        Self(path)
    }
}

impl Drop for GuestFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One worker, so every request meets the same VM and the instance count it reports is exact.
async fn gateway(backend: &Backend, guest: &GuestFile, strategy: &str) -> GatewayProcess {
    let filters = json!([{
        "name": "trap",
        "module": guest.0.display().to_string(),
        "runtime": "wasm",
        "workers": 1,
        "failStrategy": strategy,
    }]);
    GatewayProcess::start_with(backend.addr, filters, true).await
}

/// A REST CreateUser (headers and a body), trapping where `trap` says.
async fn create(gw: &GatewayProcess, trap: Option<&str>) -> reqwest::Response {
    let email = format!("t-{}@example.com", uuid::Uuid::new_v4());
    let mut request = h1()
        .post(gw.url("/v1/users"))
        .json(&json!({"name": "Trap", "email": email, "age": 30}));
    if let Some(phase) = trap {
        request = request.header("x-trap", phase);
    }
    request.send().await.unwrap()
}

/// The request count the guest's instance reports on a response it served.
fn served_count(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("x-trap-guest")
        .map(|v| v.to_str().unwrap().to_owned())
}

async fn counter(gw: &GatewayProcess, name: &str) -> String {
    let text = gw.scrape_metrics().await;
    let series = format!("{name}{{filter=\"trap\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .to_owned()
}

async fn grpc_get(gw: &GatewayProcess, trap: &str) -> Result<(), tonic::Status> {
    let mut client =
        user::user_service_client::UserServiceClient::connect(format!("http://{}", gw.addr))
            .await
            .unwrap();
    let mut request = tonic::Request::new(user::GetUserRequest { id: "x".into() });
    request
        .metadata_mut()
        .insert("x-trap", trap.parse().unwrap());
    match client.get_user(request).await {
        Ok(_) => Ok(()),
        // The backend knows no user "x": the call got through the filter.
        Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
        Err(status) => Err(status),
    }
}

async fn grpc_web_get(gw: &GatewayProcess, trap: &str) -> reqwest::Response {
    h1().post(gw.url("/user.UserService/GetUser"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-trap", trap)
        .body(grpc_web_request(
            &user::GetUserRequest {
                id: "00000000-0000-0000-0000-000000000001".into(),
            },
            false,
        ))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_trapping_filter_fails_closed_and_its_vm_is_reloaded() {
    let backend = Backend::start("users").await;
    let guest = GuestFile::write();
    let gw = gateway(&backend, &guest, "FAIL_CLOSE").await;

    let served = create(&gw, None).await;
    assert_eq!(served.status(), StatusCode::CREATED);
    assert_eq!(served_count(&served).as_deref(), Some("1"));

    for (phase, failures) in [
        ("request-headers", 1),
        ("request-body", 2),
        ("response-headers", 3),
        ("response-body", 4),
    ] {
        let failed = create(&gw, Some(phase)).await;
        assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE, "{phase}");
        assert_eq!(served_count(&failed), None, "{phase}");
        let body: Value = failed.json().await.unwrap();
        assert_eq!(body["code"], 14, "{phase}: {body}");
        assert_eq!(body["message"], "filter trap is unavailable", "{phase}");
        assert_eq!(
            counter(&gw, "meshgate_filter_failures").await,
            failures.to_string()
        );
        // The next request meets a fresh instance: its count starts again.
        let next = create(&gw, None).await;
        assert_eq!(next.status(), StatusCode::CREATED, "{phase}");
        assert_eq!(served_count(&next).as_deref(), Some("1"), "{phase}");
        assert_eq!(
            counter(&gw, "meshgate_filter_vm_reloads").await,
            failures.to_string()
        );
    }

    let status = grpc_get(&gw, "request-headers").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "filter trap is unavailable");

    let web = grpc_web_get(&gw, "request-headers").await;
    assert_eq!(web.headers()["grpc-status"], "14");

    // And the gateway serves on, from a fresh instance.
    let last = create(&gw, None).await;
    assert_eq!(last.status(), StatusCode::CREATED);
    assert_eq!(served_count(&last).as_deref(), Some("1"));
    assert_eq!(counter(&gw, "meshgate_filter_failures").await, "6");
    assert_eq!(counter(&gw, "meshgate_filter_vm_reloads").await, "6");
}

#[tokio::test]
async fn a_trapping_filter_fails_open_and_the_request_passes_untouched() {
    let backend = Backend::start("users").await;
    let guest = GuestFile::write();
    let gw = gateway(&backend, &guest, "FAIL_OPEN").await;

    for phase in [
        "request-headers",
        "request-body",
        "response-headers",
        "response-body",
    ] {
        let passed = create(&gw, Some(phase)).await;
        assert_eq!(passed.status(), StatusCode::CREATED, "{phase}");
        // The trapped guest's own change (a response header) is not on the response.
        assert_eq!(served_count(&passed), None, "{phase}");
        let body: Value = passed.json().await.unwrap();
        assert_eq!(body["name"], "Trap", "{phase}: {body}");
        let next = create(&gw, None).await;
        assert_eq!(served_count(&next).as_deref(), Some("1"), "{phase}");
    }
    grpc_get(&gw, "request-headers").await.unwrap();
    let web = grpc_web_get(&gw, "request-headers").await;
    assert_eq!(web.status(), StatusCode::OK);
    assert_ne!(
        web.headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        Some("14")
    );
    assert_eq!(counter(&gw, "meshgate_filter_failures").await, "6");
    assert_eq!(counter(&gw, "meshgate_filter_vm_reloads").await, "5");
}
