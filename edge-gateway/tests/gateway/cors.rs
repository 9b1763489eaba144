//! CORS: preflight at the edge, headers on real responses and on gateway-made errors.

use reqwest::StatusCode;

use crate::helpers::*;

#[tokio::test]
async fn preflight_and_actual_requests() {
    let backend = Backend::start("c").await;
    let gw = spawn_gateway(&[backend.addr]).await;
    let client = h1();
    let preflight = client
        .request(reqwest::Method::OPTIONS, gw.url("/v1/users"))
        .header("origin", ORIGIN)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type, x-grpc-web")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
    assert_eq!(preflight.headers()["access-control-allow-origin"], ORIGIN);
    assert_eq!(
        preflight.headers()["access-control-allow-headers"],
        "content-type, x-grpc-web"
    );
    assert!(
        preflight.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );

    let rejected = client
        .request(reqwest::Method::OPTIONS, gw.url("/v1/users"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(rejected.status(), StatusCode::FORBIDDEN);
    assert!(
        rejected
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    let actual = client
        .get(gw.url("/v1/users"))
        .header("origin", ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(actual.status(), StatusCode::OK);
    assert_eq!(actual.headers()["access-control-allow-origin"], ORIGIN);
    let expose = actual.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(expose.contains(name), "{expose}");
    }

    // Errors the gateway writes itself carry CORS headers too.
    let missing = client
        .get(gw.url("/nowhere"))
        .header("origin", ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing.headers()["access-control-allow-origin"], ORIGIN);
    let other = client
        .get(gw.url("/v1/users"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn cors_on_upstream_failures() {
    let nothing_listens = ClosedPort::new();
    let gw = spawn_gateway(&[nothing_listens.addr]).await;
    let response = h2()
        .get(gw.url("/v1/users/3f0c6a0e-9a51-4d2e-8f7a-1b2c3d4e5f60"))
        .header("origin", ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["access-control-allow-origin"], ORIGIN);
}
