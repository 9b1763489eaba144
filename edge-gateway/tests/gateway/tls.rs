//! The TLS listener (`gateway.tls`, rustls): native gRPC over h2 (ALPN) with a tonic client and
//! REST over HTTP/1.1 and h2 with reqwest, all trusting only a CA made at test time.

use std::net::SocketAddr;

use edge_gateway::hooks::FilterChain;
use meshgate_proto::user::{self, user_service_client::UserServiceClient};
use prost::Message;
use reqwest::{StatusCode, Version};
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::helpers::*;

async fn tls_gateway(backend: &Backend, pki: &TestPki) -> (TestGateway, SocketAddr) {
    let mut config = test_config(&[backend.addr]);
    config.tls = Some((ANY_PORT, pki.cert_path.clone(), pki.key_path.clone()));
    let gateway = spawn_gateway_with(config, FilterChain::default()).await;
    let tls_addr = gateway.tls_addr.expect("started with TLS");
    (gateway, tls_addr)
}

/// A tonic channel over TLS to `addr`, verifying the server as `localhost` against the test CA.
async fn tls_channel(addr: SocketAddr, ca_pem: &str) -> tonic::transport::Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A reqwest client trusting only the test CA; `localhost` resolves to the TLS listener.
fn https_client(ca_pem: &str, tls_addr: SocketAddr, http1_only: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .resolve("localhost", tls_addr);
    if http1_only {
        builder = builder.http1_only();
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn grpc_over_tls_answers_ok_and_errors_with_details() {
    let backend = Backend::start("tls").await;
    let pki = TestPki::generate();
    let (_gateway, tls_addr) = tls_gateway(&backend, &pki).await;
    let channel = tls_channel(tls_addr, &pki.ca_pem).await;
    let mut users = UserServiceClient::new(channel.clone());

    let created = users
        .create_user(user::CreateUserRequest {
            name: "Tls Client".into(),
            email: "tls@example.com".into(),
            age: 40,
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let fetched = users
        .get_user(user::GetUserRequest {
            id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.user.unwrap().email, "tls@example.com");

    // An error status with google.rpc.Status details, through the TLS hop intact.
    let status = users
        .create_user(user::CreateUserRequest {
            name: "No Email".into(),
            email: "nope".into(),
            age: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "invalid email");
    let details = meshgate_proto::google::rpc::Status::decode(status.details()).unwrap();
    assert_eq!(details.code, 3);
    let status = users
        .get_user(user::GetUserRequest {
            id: "user-unknown".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    // A status that follows a message can only travel in HTTP/2 trailers.
    let mut kitchen = kitchen::kitchen_service_client::KitchenServiceClient::new(channel);
    let mut stream = kitchen
        .count(kitchen::CountRequest { n: 2, fail_code: 9 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.next().await.unwrap().unwrap().index, 0);
    assert_eq!(stream.next().await.unwrap().unwrap().index, 1);
    let status = stream.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(status.message(), "stream failed");
}

#[tokio::test]
async fn rest_over_https_negotiates_http1_and_h2() {
    let backend = Backend::start("tls").await;
    let pki = TestPki::generate();
    let (gateway, tls_addr) = tls_gateway(&backend, &pki).await;
    let base = format!("https://localhost:{}", tls_addr.port());

    let h2 = https_client(&pki.ca_pem, tls_addr, false);
    let created = h2
        .post(format!("{base}/v1/users"))
        .json(&json!({"name": "Over H2", "email": "h2@example.com", "age": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.version(), Version::HTTP_2, "ALPN should pick h2");
    assert_eq!(created.status(), StatusCode::CREATED);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = created.json().await.unwrap();
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/users/{id}"));

    let https_h1 = https_client(&pki.ca_pem, tls_addr, true);
    let fetched = https_h1
        .get(format!("{base}{location}"))
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.version(), Version::HTTP_11);
    assert_eq!(fetched.status(), StatusCode::OK);
    assert!(fetched.headers().contains_key("traceparent"));
    let body: Value = fetched.json().await.unwrap();
    assert_eq!(body["email"], "h2@example.com");

    // Errors keep their REST shape over TLS too.
    let missing = h2
        .get(format!("{base}/v1/users/{}", uuid::Uuid::new_v4()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.version(), Version::HTTP_2);
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["code"], 5);

    // A client that does not trust the CA is refused at the handshake.
    let untrusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .resolve("localhost", tls_addr)
        .build()
        .unwrap();
    let refused = untrusting.get(format!("{base}/healthz")).send().await;
    assert!(refused.is_err(), "{refused:?}");

    // The plaintext listener keeps serving next to the TLS one.
    let plain = h1()
        .get(gateway.url(&format!("/v1/users/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::OK);
}
